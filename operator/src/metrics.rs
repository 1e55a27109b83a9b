//! Prometheus metrics of the operator, served at `/metrics`.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::sync::atomic::AtomicI64;
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// Short error class, e.g. `apply_conflict`, `status_transport`; or a spec problem's
    /// condition reason, e.g. `InvalidSpec`.
    pub reason: String,
}

/// One InferenceService.
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct ObjectLabels {
    pub namespace: String,
    pub name: String,
}

/// All operator metrics, prefixed `inference_operator_`.
pub struct Metrics {
    registry: Registry,
    /// Reconciles started.
    pub reconciles: Counter,
    /// Reconciles that failed on the API (retried with backoff), by reason.
    pub errors: Family<ErrorLabels, Counter>,
    /// Spec problems found, counted once when an InferenceService becomes Degraded by one.
    pub spec_problems: Family<ErrorLabels, Counter>,
    /// Per InferenceService: 1 while its Ready condition is True.
    pub ready: Family<ObjectLabels, Gauge<i64, AtomicI64>>,
    /// Per InferenceService: 1 while its Degraded condition is True.
    pub degraded: Family<ObjectLabels, Gauge<i64, AtomicI64>>,
    /// The label sets of the two gauges above, to drop those of deleted objects.
    objects: Mutex<BTreeSet<ObjectLabels>>,
    /// Reconcile duration in seconds.
    pub duration: Histogram,
    /// 1 while this replica holds the leader lease.
    pub leader: Gauge<i64, AtomicI64>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("inference_operator");
        let reconciles = Counter::default();
        let errors = Family::<ErrorLabels, Counter>::default();
        let duration =
            Histogram::new([0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]);
        let leader = Gauge::<i64, AtomicI64>::default();
        let spec_problems = Family::<ErrorLabels, Counter>::default();
        let ready = Family::<ObjectLabels, Gauge<i64, AtomicI64>>::default();
        let degraded = Family::<ObjectLabels, Gauge<i64, AtomicI64>>::default();
        registry.register(
            "spec_problems",
            "Spec problems (invalid spec, policy, child conflict, rejected apply), counted once each time an InferenceService becomes Degraded by one",
            spec_problems.clone(),
        );
        registry.register(
            "inferenceservice_ready",
            "1 while the InferenceService's Ready condition is True (it serves requests)",
            ready.clone(),
        );
        registry.register(
            "inferenceservice_degraded",
            "1 while the InferenceService's Degraded condition is True",
            degraded.clone(),
        );
        registry.register(
            "reconciles",
            "Reconciles of InferenceServices",
            reconciles.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Reconciles that failed on the Kubernetes API, by step and error class",
            errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Duration of a reconcile",
            duration.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica holds the leader lease",
            leader.clone(),
        );
        Self {
            registry,
            reconciles,
            errors,
            duration,
            leader,
            spec_problems,
            ready,
            degraded,
            objects: Mutex::default(),
        }
    }
}

impl Metrics {
    /// Counts a reconcile and returns a guard that records its duration when dropped.
    pub fn reconcile_started(&self) -> DurationGuard<'_> {
        self.reconciles.inc();
        DurationGuard {
            histogram: &self.duration,
            start: Instant::now(),
        }
    }

    pub fn error(&self, reason: &str) {
        self.errors
            .get_or_create(&ErrorLabels {
                reason: reason.to_string(),
            })
            .inc();
    }

    pub fn spec_problem(&self, reason: &str) {
        self.spec_problems
            .get_or_create(&ErrorLabels {
                reason: reason.to_string(),
            })
            .inc();
    }

    /// Sets the per-object condition gauges.
    pub fn set_conditions(&self, namespace: &str, name: &str, ready: bool, degraded: bool) {
        let labels = ObjectLabels {
            namespace: namespace.into(),
            name: name.into(),
        };
        self.ready.get_or_create(&labels).set(i64::from(ready));
        self.degraded
            .get_or_create(&labels)
            .set(i64::from(degraded));
        self.objects.lock().unwrap().insert(labels);
    }

    /// Drops the gauges of objects for which `exists` is false (deleted InferenceServices).
    pub fn retain_objects(&self, exists: impl Fn(&ObjectLabels) -> bool) {
        let mut objects = self.objects.lock().unwrap();
        objects.retain(|labels| {
            let keep = exists(labels);
            if !keep {
                self.ready.remove(labels);
                self.degraded.remove(labels);
            }
            keep
        });
    }

    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    /// OpenMetrics text.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    pub fn is_leader(&self) -> bool {
        self.leader.get() == 1
    }
}

pub struct DurationGuard<'a> {
    histogram: &'a Histogram,
    start: Instant,
}

impl Drop for DurationGuard<'_> {
    fn drop(&mut self) {
        self.histogram.observe(self.start.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposes_the_documented_series() {
        let m = Metrics::default();
        {
            let _g = m.reconcile_started();
        }
        m.error("apply_conflict");
        m.error("apply_conflict");
        m.spec_problem("InvalidSpec");
        m.set_leader(true);
        m.set_conditions("ml", "a", true, false);
        m.set_conditions("ml", "b", false, true);
        let text = m.encode();
        assert!(
            text.contains("inference_operator_reconciles_total 1"),
            "{text}"
        );
        assert!(
            text.contains("inference_operator_reconcile_errors_total{reason=\"apply_conflict\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("inference_operator_spec_problems_total{reason=\"InvalidSpec\"} 1"),
            "{text}"
        );
        assert!(
            text.contains(
                "inference_operator_inferenceservice_ready{namespace=\"ml\",name=\"a\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "inference_operator_inferenceservice_degraded{namespace=\"ml\",name=\"b\"} 1"
            ),
            "{text}"
        );
        // A deleted object's series go.
        m.retain_objects(|o| o.name == "a");
        let text = m.encode();
        assert!(!text.contains("name=\"b\""), "{text}");
        assert!(text.contains("name=\"a\""), "{text}");
        assert!(
            text.contains("inference_operator_reconcile_duration_seconds_count 1"),
            "{text}"
        );
        assert!(text.contains("inference_operator_leader 1"), "{text}");
        assert!(m.is_leader());
        assert!(text.ends_with("# EOF\n"));
    }
}
