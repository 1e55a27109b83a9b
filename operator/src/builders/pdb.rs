//! The PodDisruptionBudget, present at every replica count.

use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{child_meta, label_selector};
use crate::crd::InferenceService;

/// Builds the PDB: at most one pod voluntarily evicted at a time. `maxUnavailable: 1` never
/// blocks a drain, even at one replica, so the budget exists at every count: an autoscaled
/// service with `minReplicas: 1` scaled out to 20 is protected too (a budget made only from
/// `minReplicas` ≥ 2 left it without one). Pods that are not ready (e.g. crash-looping) may
/// always be evicted, so a broken rollout never blocks a node drain.
pub fn build(isvc: &InferenceService) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: child_meta(isvc),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            min_available: None,
            selector: Some(label_selector(isvc)),
            unhealthy_pod_eviction_policy: Some("AlwaysAllow".into()),
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builders::test_support::{fixture, from_yaml};

    /// One replica gets the budget too: maxUnavailable 1 lets its pod be evicted.
    #[test]
    fn a_single_replica_has_a_budget_that_never_blocks_a_drain() {
        let pdb = build(&fixture("minimal.yaml"));
        assert_eq!(pdb.spec.unwrap().max_unavailable, Some(IntOrString::Int(1)));
    }

    #[test]
    fn pdb_from_fixed_replicas_or_min_replicas() {
        let fixed = from_yaml(
            r#"
apiVersion: serving.inference-server.dev/v1alpha1
kind: InferenceService
metadata: {name: a}
spec:
  model: {name: resnet50}
  replicas: 3
"#,
        );
        let pdb = build(&fixed);
        let spec = pdb.spec.unwrap();
        assert_eq!(spec.max_unavailable, Some(IntOrString::Int(1)));
        assert_eq!(
            spec.unhealthy_pod_eviction_policy.as_deref(),
            Some("AlwaysAllow")
        );
        assert_eq!(spec.selector.unwrap(), label_selector(&fixed));
        assert!(pdb.metadata.owner_references.is_some());
        // autoscaling.minReplicas 2
        assert!(build(&fixture("autoscaling.yaml")).spec.is_some());
    }
}
