//! The PodDisruptionBudget, present while the service runs at least 2 replicas.

use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{child_meta, label_selector, min_replicas};
use crate::crd::InferenceService;

/// Builds the PDB, or `None` below 2 replicas (a PDB on one pod would block node drains; the
/// operator deletes any PDB it owns).
///
/// At most one pod is voluntarily evicted at a time. Pods that are not ready (e.g. crash-looping)
/// may always be evicted, so a broken rollout never blocks a node drain.
pub fn build(isvc: &InferenceService) -> Option<PodDisruptionBudget> {
    if min_replicas(isvc) < 2 {
        return None;
    }
    Some(PodDisruptionBudget {
        metadata: child_meta(isvc),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            min_available: None,
            selector: Some(label_selector(isvc)),
            unhealthy_pod_eviction_policy: Some("AlwaysAllow".into()),
        }),
        status: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builders::test_support::{fixture, from_yaml};

    #[test]
    fn no_pdb_for_a_single_replica() {
        assert!(build(&fixture("minimal.yaml")).is_none());
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
        let pdb = build(&fixed).unwrap();
        let spec = pdb.spec.unwrap();
        assert_eq!(spec.max_unavailable, Some(IntOrString::Int(1)));
        assert_eq!(
            spec.unhealthy_pod_eviction_policy.as_deref(),
            Some("AlwaysAllow")
        );
        assert_eq!(spec.selector.unwrap(), label_selector(&fixed));
        assert!(pdb.metadata.owner_references.is_some());
        // autoscaling.minReplicas 2
        assert!(build(&fixture("autoscaling.yaml")).is_some());
    }
}
