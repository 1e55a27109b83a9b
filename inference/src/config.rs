//! Command line and environment: every setting has a flag and an env var (the operator sets env).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "inference-server",
    version,
    about = "ResNet50 image classification over HTTP"
)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Serve predictions over HTTP (the default).
    Serve(ServeArgs),
    /// Write deterministic random ResNet50 weights (torchvision names) for tests and demos.
    /// They are marked as random in the file's metadata and the server warns when it serves them.
    GenerateWeights {
        /// Seed: the same seed always gives byte-identical weights.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Output safetensors file.
        #[arg(long)]
        out: PathBuf,
    },
    /// Ask a running server whether it is healthy: exit 0 on a 2xx answer, 1 otherwise (with
    /// the reason on stderr). For container health checks (Docker `HEALTHCHECK`, ECS) in images
    /// that have no curl.
    Probe(ProbeArgs),
    /// Download the weights from a URI (https://, hf://) to a local file, checked (length,
    /// sha256, ResNet50 safetensors) before it is put in place: for an init container.
    Fetch(FetchArgs),
}

/// `inference-server fetch` (src/fetch.rs).
#[derive(Args, Debug, Clone)]
pub struct FetchArgs {
    /// `https://…` or `hf://org/repo[@revision]/file.safetensors`.
    #[arg(long, env = "MODEL_URI")]
    pub uri: String,
    /// Where the file goes; its directory must exist.
    #[arg(
        long,
        env = "MODEL_PATH",
        default_value = "/models/resnet50.safetensors"
    )]
    pub out: PathBuf,
    /// The file's expected sha256, hex.
    #[arg(long, env = "MODEL_SHA256")]
    pub sha256: Option<String>,
    /// Tries in all for network errors and 5xx/429 answers.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub attempts: u32,
    /// Pause after the first failed try; doubled after each, at most 60 s.
    #[arg(long, default_value_t = 2.0)]
    pub backoff_seconds: f64,
    /// Connecting and receiving the answer's headers, per try.
    #[arg(long, default_value_t = 30.0)]
    pub connect_timeout_seconds: f64,
    /// Receiving the whole body, per try (100 MB at 1 MB/s takes 100 s).
    #[arg(long, default_value_t = 1800.0)]
    pub transfer_timeout_seconds: f64,
    /// PEM file of the CA certificates to trust instead of the built-in web roots (a private
    /// mirror behind an internal CA).
    #[arg(long, env = "FETCH_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// Base URL for `hf://` (a mirror, or a test server).
    #[arg(long, env = "HF_ENDPOINT", default_value = "https://huggingface.co")]
    pub hf_endpoint: String,
}

#[derive(Args, Debug, Clone)]
pub struct ProbeArgs {
    /// `/health` (alive: restart when it fails) or `/ready` (serving: route traffic).
    #[arg(long, default_value = "/health")]
    pub path: String,
    /// The server's port (the same `PORT` variable the server reads).
    #[arg(long, env = "PORT", default_value_t = 8080)]
    pub port: u16,
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// The whole check must answer within this.
    #[arg(long, default_value_t = 3.0, value_parser = positive_seconds)]
    pub timeout_seconds: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, ValueEnum)]
pub enum DevicePref {
    Auto,
    Cpu,
    Cuda,
}

/// JPEG decoding at a reduced size in libjpeg's DCT, for large photos.
#[derive(Clone, Copy, Debug, PartialEq, ValueEnum)]
pub enum DctScaling {
    On,
    /// Pixels as PIL's, torchvision's parity kept.
    Off,
}

/// Which implementation runs the network on a GPU.
#[derive(Clone, Copy, Debug, PartialEq, ValueEnum)]
pub enum GpuEngine {
    Auto,
    Cudnn,
    Candle,
}

/// Precision of the convolutions on a GPU (the CPU network is always f32).
#[derive(Clone, Copy, Debug, PartialEq, ValueEnum)]
pub enum GpuDtype {
    /// Half precision: keeps torchvision's top-5 on the parity photos (max |Δlogit| 7e-3).
    F16,
    F32,
}

#[derive(Clone, Copy, Debug, PartialEq, ValueEnum)]
pub enum LogFormat {
    Json,
    Text,
}

#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    #[arg(long, env = "HOST", default_value = "0.0.0.0")]
    pub host: String,
    /// 0 picks a free port (it is logged).
    #[arg(long, env = "PORT", default_value_t = 8080)]
    pub port: u16,
    /// ResNet50 weights: safetensors in torchvision `state_dict` names.
    #[arg(
        long,
        env = "MODEL_PATH",
        default_value = "/models/resnet50.safetensors"
    )]
    pub model_path: PathBuf,
    /// Name used in responses and in Open Inference Protocol paths (/v2/models/<name>).
    #[arg(long, env = "MODEL_NAME", default_value = "resnet50")]
    pub model_name: String,
    #[arg(long, env = "MODEL_VERSION", default_value = "1.0")]
    pub model_version: String,
    #[arg(long, env = "DEVICE", value_enum, default_value = "auto")]
    pub device: DevicePref,
    /// Convolution precision on a GPU.
    #[arg(long, env = "GPU_DTYPE", value_enum, default_value = "f16")]
    pub gpu_dtype: GpuDtype,
    /// Most images in one forward pass (default 8 on the CPU, 64 on a GPU).
    #[arg(long, env = "MAX_BATCH_SIZE", value_parser = clap::value_parser!(u32).range(1..=256))]
    pub max_batch_size: Option<u32>,
    /// Most images admitted (decoding or waiting for the model); more are refused with 503 +
    /// Retry-After. A request is admitted once its body has arrived. Default 64 on the CPU,
    /// 512 on a GPU.
    #[arg(long, env = "MAX_QUEUE", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_queue: Option<u32>,
    /// The GPU network: `cudnn` (our NHWC f16 plan of fused cuDNN calls replayed as CUDA
    /// graphs), `candle` (candle's kernels, f16 or f32 by GPU_DTYPE), or `auto` (cudnn, and
    /// candle with a warning where cuDNN cannot start).
    #[arg(long, env = "GPU_ENGINE", value_enum, default_value = "auto")]
    pub gpu_engine: GpuEngine,
    /// Model threads on a GPU, each with its own CUDA stream and buffers: while one waits for
    /// its copies and answers, another's kernels run.
    /// Measured on an H200 (README): two lanes served the mixed photos faster at 64
    /// connections; one lane was 17 % faster with a small photo at 8 connections.
    #[arg(long, env = "GPU_LANES", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=8))]
    pub gpu_lanes: u32,
    /// On a GPU with several model threads: how long a batch short of MAX_BATCH_SIZE waits for
    /// more requests while another thread's batch runs (the GPU is busy anyway).
    #[arg(long, env = "GPU_BATCH_WAIT_MS", default_value_t = 4.0, value_parser = non_negative_ms)]
    pub gpu_batch_wait_ms: f64,
    /// Replay the cudnn engine's forward pass as CUDA graphs (one launch per batch).
    #[arg(long, env = "GPU_GRAPHS", default_value_t = true, action = clap::ArgAction::Set)]
    pub gpu_graphs: bool,
    /// A request that waited this long for the model is refused rather than run late.
    #[arg(long, env = "QUEUE_TIMEOUT_SECONDS", default_value_t = 30.0, value_parser = positive_seconds)]
    pub queue_timeout_seconds: f64,
    /// Threads for the forward pass (0 = one per CPU).
    #[arg(long, env = "INFERENCE_THREADS", default_value_t = 0)]
    pub threads: usize,
    /// HTTP worker threads (0 = one per CPU).
    #[arg(long, env = "HTTP_WORKERS", default_value_t = 0)]
    pub http_workers: usize,
    /// Largest request body; larger ones get 413.
    #[arg(long, env = "MAX_BODY_BYTES", default_value_t = 10 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Memory the request bodies being received may hold together: each is charged its
    /// Content-Length (MAX_BODY_BYTES when it sends none) before it is read; when this is spent,
    /// new uploads get 503 at once.
    #[arg(long, env = "BODY_MEMORY_MB", default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=1 << 22))]
    pub body_memory_mb: u64,
    /// The whole request body must arrive within this: a client that trickles it gets 408.
    #[arg(long, env = "BODY_TIMEOUT_SECONDS", default_value_t = 30.0, value_parser = positive_seconds)]
    pub body_timeout_seconds: f64,
    /// Largest decoded image (width × height); larger ones get 413 before they are decoded.
    #[arg(long, env = "MAX_IMAGE_PIXELS", default_value_t = 40_000_000)]
    pub max_image_pixels: u64,
    /// Decode JPEGs whose shorter side is at least 1024 at 1/2, 1/4 or 1/8 size in the DCT (as
    /// PIL's `draft`), keeping at least 512. On a GPU the decode is what limits throughput with
    /// large photos (+25 % img/s on the benchmark's mix), but the pixels are no longer PIL's:
    /// torchvision's probabilities move by up to 2.3e-3 on a 2048x2048 photo (README).
    #[arg(long, env = "JPEG_DCT_SCALING", value_enum, default_value = "off")]
    pub jpeg_dct_scaling: DctScaling,
    /// Images decoded at once (0 = one per CPU): decoding is CPU work, more at once only queues
    /// inside the kernel's scheduler and holds more memory.
    #[arg(long, env = "DECODE_THREADS", default_value_t = 0)]
    pub decode_threads: usize,
    /// Memory the images being decoded may take together, charged per image from its header
    /// before decoding (a 16-bit RGBA PNG takes 11 bytes a pixel, a JPEG 3, a progressive JPEG
    /// 9). An image that alone needs more gets 413; others wait their turn.
    #[arg(long, env = "DECODE_MEMORY_MB", default_value_t = 512, value_parser = clap::value_parser!(u64).range(16..=1 << 22))]
    pub decode_memory_mb: u64,
    /// Most images in one Open Inference Protocol request.
    #[arg(long, env = "MAX_CLIENT_BATCH", default_value_t = 32)]
    pub max_client_batch: usize,
    /// /health fails (so Kubernetes restarts the pod) after this many forward passes in a row
    /// have failed; it also fails at once when the model thread is gone.
    #[arg(long, env = "UNHEALTHY_AFTER_FAILED_PASSES", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub unhealthy_after_failed_passes: u32,
    /// After SIGTERM: /ready answers 503 at once, requests are still served for this long (so
    /// load balancers stop sending), then the listener closes and in-flight requests finish.
    #[arg(long, env = "SHUTDOWN_GRACE_SECONDS", default_value_t = 5.0, value_parser = seconds)]
    pub shutdown_grace_seconds: f64,
    /// After the grace period the listener closes; requests still in flight get this long to
    /// finish before the process exits anyway (keep it inside the pod's termination grace).
    #[arg(long, env = "SHUTDOWN_TIMEOUT_SECONDS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(0..=3600))]
    pub shutdown_timeout_seconds: u64,
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "json")]
    pub log_format: LogFormat,
}

/// A duration in seconds: finite and not negative (`-1`, `NaN` and `inf` are refused, not
/// turned into a queue that expires everything or a drain that never ends).
fn seconds(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if (0.0..=86_400.0).contains(&v) => Ok(v),
        Ok(_) => Err("expected a number of seconds from 0 to 86400".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// As [`seconds`], and more than zero.
fn positive_seconds(s: &str) -> Result<f64, String> {
    match seconds(s)? {
        0.0 => Err("expected more than 0 seconds".into()),
        v => Ok(v),
    }
}

fn non_negative_ms(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if v.is_finite() && (0.0..=1000.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{v} is not between 0 and 1000 ms"))
    }
}

/// The CPUs this process may use: the default for the thread and worker counts.
pub fn num_cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

impl ServeArgs {
    /// MAX_BATCH_SIZE, or the device's default: a GPU needs large batches to fill it.
    pub fn max_batch(&self, gpu: bool) -> usize {
        self.max_batch_size.unwrap_or(if gpu { 64 } else { 8 }) as usize
    }

    /// MAX_QUEUE, or the device's default (8 full batches on a GPU).
    pub fn max_queue(&self, gpu: bool) -> usize {
        self.max_queue.unwrap_or(if gpu { 512 } else { 64 }) as usize
    }
}
