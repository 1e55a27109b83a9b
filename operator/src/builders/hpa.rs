//! The HorizontalPodAutoscaler (autoscaling/v2), present only while `spec.autoscaling` is set.

use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HorizontalPodAutoscaler, HorizontalPodAutoscalerSpec,
    MetricIdentifier, MetricSpec, MetricTarget, PodsMetricSource, ResourceMetricSource,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use kube::Resource;

use super::{autoscaling, child_meta, child_name, replica_bounds};
use crate::crd::InferenceService;

/// CPU utilisation target when `autoscaling` names no target at all.
pub const DEFAULT_CPU_UTILIZATION: i32 = 80;

/// Builds the HPA, or `None` when autoscaling is off (the operator then deletes any HPA it owns).
pub fn build(isvc: &InferenceService) -> Option<HorizontalPodAutoscaler> {
    let auto = autoscaling(isvc)?;
    let (min, max) = replica_bounds(auto);
    let resource = |name: &str, pct: i32| MetricSpec {
        type_: "Resource".into(),
        resource: Some(ResourceMetricSource {
            name: name.into(),
            target: MetricTarget {
                type_: "Utilization".into(),
                average_utilization: Some(pct),
                ..Default::default()
            },
        }),
        ..Default::default()
    };
    let mut metrics = Vec::new();
    let no_target = auto.target_cpu_utilization_percentage.is_none()
        && auto.target_memory_utilization_percentage.is_none()
        && auto.target_requests_per_second.is_none();
    if let Some(pct) = auto
        .target_cpu_utilization_percentage
        .or(no_target.then_some(DEFAULT_CPU_UTILIZATION))
    {
        metrics.push(resource("cpu", pct));
    }
    if let Some(pct) = auto.target_memory_utilization_percentage {
        metrics.push(resource("memory", pct));
    }
    if let Some(rps) = auto.target_requests_per_second {
        metrics.push(MetricSpec {
            type_: "Pods".into(),
            pods: Some(PodsMetricSource {
                metric: MetricIdentifier {
                    name: auto.requests_per_second_metric.clone(),
                    selector: None,
                },
                target: MetricTarget {
                    type_: "AverageValue".into(),
                    average_value: Some(Quantity(rps.to_string())),
                    ..Default::default()
                },
            }),
            ..Default::default()
        });
    }
    Some(HorizontalPodAutoscaler {
        metadata: child_meta(isvc),
        spec: Some(HorizontalPodAutoscalerSpec {
            // The InferenceService itself (its scale subresource), as Argo Rollouts' HPAs target
            // a Rollout: `spec.replicas` stays the one source of the count, so the operator
            // never competes with the HPA for the Deployment's replicas, and removing
            // autoscaling keeps the last count.
            scale_target_ref: CrossVersionObjectReference {
                api_version: Some(InferenceService::api_version(&()).into()),
                kind: InferenceService::kind(&()).into(),
                name: child_name(isvc),
            },
            min_replicas: Some(min),
            max_replicas: max,
            metrics: Some(metrics),
            behavior: auto.behavior.clone(),
        }),
        status: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builders::test_support::{fixture, from_yaml};

    #[test]
    fn no_hpa_without_autoscaling() {
        assert!(build(&fixture("minimal.yaml")).is_none());
    }

    #[test]
    fn autoscaling_maps_to_hpa_v2() {
        let isvc = fixture("autoscaling.yaml");
        let hpa = build(&isvc).unwrap();
        assert_eq!(hpa.metadata.name.as_deref(), Some("resnet50"));
        assert!(hpa.metadata.owner_references.is_some());
        let spec = hpa.spec.unwrap();
        // The HPA scales the InferenceService, not the Deployment (see `build`).
        assert_eq!(spec.scale_target_ref.kind, "InferenceService");
        assert_eq!(spec.scale_target_ref.name, "resnet50");
        assert_eq!(
            spec.scale_target_ref.api_version.as_deref(),
            Some("serving.inference-server.dev/v1alpha1")
        );
        assert_eq!((spec.min_replicas, spec.max_replicas), (Some(2), 10));
        let metrics = spec.metrics.unwrap();
        assert_eq!(metrics.len(), 3);
        let cpu = metrics[0].resource.as_ref().unwrap();
        assert_eq!(
            (cpu.name.as_str(), cpu.target.average_utilization),
            ("cpu", Some(70))
        );
        let mem = metrics[1].resource.as_ref().unwrap();
        assert_eq!(
            (mem.name.as_str(), mem.target.average_utilization),
            ("memory", Some(85))
        );
        let pods = metrics[2].pods.as_ref().unwrap();
        assert_eq!(metrics[2].type_, "Pods");
        assert_eq!(pods.metric.name, "ml_inference_requests_per_second");
        assert_eq!(pods.target.type_, "AverageValue");
        assert_eq!(pods.target.average_value, Some(Quantity("20".into())));
        let behavior = spec.behavior.unwrap();
        assert_eq!(
            behavior.scale_down.unwrap().stabilization_window_seconds,
            Some(300)
        );
    }

    #[test]
    fn default_target_is_cpu_80() {
        let isvc = from_yaml(
            r#"
apiVersion: serving.inference-server.dev/v1alpha1
kind: InferenceService
metadata: {name: a}
spec:
  model: {name: resnet50}
  autoscaling: {maxReplicas: 4}
"#,
        );
        let spec = build(&isvc).unwrap().spec.unwrap();
        assert_eq!((spec.min_replicas, spec.max_replicas), (Some(1), 4));
        let metrics = spec.metrics.unwrap();
        assert_eq!(metrics.len(), 1);
        assert_eq!(
            metrics[0]
                .resource
                .as_ref()
                .unwrap()
                .target
                .average_utilization,
            Some(80)
        );
    }

    #[test]
    fn rps_only_has_no_cpu_metric() {
        let isvc = from_yaml(
            r#"
apiVersion: serving.inference-server.dev/v1alpha1
kind: InferenceService
metadata: {name: a}
spec:
  model: {name: resnet50}
  autoscaling: {minReplicas: 2, maxReplicas: 4, targetRequestsPerSecond: 5, requestsPerSecondMetric: my_rps}
"#,
        );
        let metrics = build(&isvc).unwrap().spec.unwrap().metrics.unwrap();
        assert_eq!(metrics.len(), 1);
        assert_eq!(metrics[0].pods.as_ref().unwrap().metric.name, "my_rps");
    }
}
