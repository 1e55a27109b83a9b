//! Prometheus metrics: the seed's three names (so its dashboards and alarms keep working) plus
//! the queue/batch/stage timings an autoscaler and an operator need (Triton-style split).

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    pub requests: IntCounter,
    pub latency: Histogram,
    pub errors: IntCounter,
    pub errors_by_reason: IntCounterVec,
    pub in_flight: IntGauge,
    pub preprocess_seconds: Histogram,
    pub queue_seconds: Histogram,
    pub model_seconds: Histogram,
    pub batch_size: Histogram,
    pub queue_depth: IntGauge,
    pub rejected: IntCounter,
    pub model_load_seconds: Gauge,
    build_info: IntGaugeVec,
}

fn histogram(registry: &Registry, name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
        .expect("valid histogram");
    registry
        .register(Box::new(h.clone()))
        .expect("unique metric name");
    h
}

fn register<T: prometheus::core::Collector + Clone + 'static>(registry: &Registry, metric: T) -> T {
    registry
        .register(Box::new(metric.clone()))
        .expect("unique metric name");
    metric
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        // process_resident_memory_bytes, process_cpu_seconds_total, open fds, start time.
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("unique metric names");
        let secs = vec![
            0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0,
        ];
        Self {
            requests: register(
                &registry,
                IntCounter::new("ml_inference_requests_total", "Total inference requests").unwrap(),
            ),
            latency: histogram(
                &registry,
                "ml_inference_latency_seconds",
                "Inference latency (request received to response)",
                secs.clone(),
            ),
            errors: register(
                &registry,
                IntCounter::new("ml_inference_errors_total", "Total errors").unwrap(),
            ),
            errors_by_reason: register(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "ml_inference_request_errors_total",
                        "Failed inference requests by reason",
                    ),
                    &["reason"],
                )
                .unwrap(),
            ),
            in_flight: register(
                &registry,
                IntGauge::new(
                    "ml_inference_in_flight_requests",
                    "Inference requests being served now",
                )
                .unwrap(),
            ),
            preprocess_seconds: histogram(
                &registry,
                "ml_inference_preprocess_seconds",
                "Decode + resize + normalise time per image",
                // A small JPEG takes ~1 ms, a 2048² one ~15 ms.
                [&[0.0005, 0.001, 0.0025][..], &secs].concat(),
            ),
            queue_seconds: histogram(
                &registry,
                "ml_inference_queue_seconds",
                "Time a request waited for the model",
                secs.clone(),
            ),
            model_seconds: histogram(
                &registry,
                "ml_inference_model_seconds",
                "Forward pass time per batch",
                secs,
            ),
            batch_size: histogram(
                &registry,
                "ml_inference_batch_size",
                "Images per forward pass",
                // Up to MAX_BATCH_SIZE's largest value.
                vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0],
            ),
            queue_depth: register(
                &registry,
                IntGauge::new(
                    "ml_inference_queue_depth",
                    "Requests admitted and not yet in a forward pass (reading, decoding or queued)",
                )
                .unwrap(),
            ),
            rejected: register(
                &registry,
                IntCounter::new(
                    "ml_inference_rejected_total",
                    "Requests refused because the queue was full",
                )
                .unwrap(),
            ),
            model_load_seconds: register(
                &registry,
                Gauge::new(
                    "ml_inference_model_load_seconds",
                    "Time to load the weights and run the warm-up forward",
                )
                .unwrap(),
            ),
            build_info: register(
                &registry,
                IntGaugeVec::new(
                    Opts::new(
                        "ml_inference_build_info",
                        "1, labelled with what runs: version, device (a CUDA build that fell back to the CPU shows cuda_build=\"true\", device=\"cpu\"), implementation, CPU kernels",
                    ),
                    &["version", "cuda_build", "device", "implementation", "isa"],
                )
                .unwrap(),
            ),
            registry,
        }
    }

    /// Sets `ml_inference_build_info` once the model is loaded.
    pub fn build_info(&self, device: &str, implementation: &str, isa: &str) {
        let cuda = if cfg!(feature = "cuda") {
            "true"
        } else {
            "false"
        };
        self.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION"), cuda, device, implementation, isa])
            .set(1);
    }

    /// Counts a failed prediction in the seed's counter and in the per-reason one.
    pub fn error(&self, reason: &str) {
        self.errors.inc();
        self.errors_by_reason.with_label_values(&[reason]).inc();
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding cannot fail");
        String::from_utf8(buf).expect("prometheus text is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
