//! Pure builders: `fn(&InferenceService, &Config, ..) -> child object`. No client, no clock.
//!
//! Every child is named like the InferenceService, lives in its namespace, carries the
//! `app.kubernetes.io/*` labels and a controller owner reference, and is applied with
//! server-side apply under one field manager ([`MANAGER`]).

pub mod bluegreen;
pub mod deployment;
pub mod hpa;
pub mod pdb;
pub mod service;

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use kube::{Resource, ResourceExt};

use crate::crd::{
    AutoscalingSpec, ComputeResources, InferenceService, ResourcesSpec, RolloutSpec,
    SchedulingSpec, ServerSpec, ServiceSpec, TerminationSpec,
};

/// Server-side apply field manager, and the value of `app.kubernetes.io/managed-by`.
pub const MANAGER: &str = "inference-operator";
/// `app.kubernetes.io/name` of every child: the application the pods run.
pub const APP_NAME: &str = "inference-server";
/// `app.kubernetes.io/component` of every child.
pub const COMPONENT: &str = "predictor";
/// Name of the server container.
pub const CONTAINER_NAME: &str = "server";
/// The init container that downloads `spec.model.uri`.
pub const FETCH_CONTAINER_NAME: &str = "fetch-model";
/// Where a downloaded model lives in the pod (an emptyDir at /models).
pub const FETCHED_MODEL_PATH: &str = "/models/model.safetensors";
/// Name of the server's container port; the Service targets it by name.
pub const PORT_NAME: &str = "http";

pub const LABEL_NAME: &str = "app.kubernetes.io/name";
pub const LABEL_INSTANCE: &str = "app.kubernetes.io/instance";
pub const LABEL_COMPONENT: &str = "app.kubernetes.io/component";
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const LABEL_VERSION: &str = "app.kubernetes.io/version";
/// The pod selector's only key: in our API group, so that no other release or chart that uses
/// the common `app.kubernetes.io/*` labels can select our pods or have its pods selected.
pub const LABEL_SELECTOR: &str = "serving.inference-server.dev/inferenceservice";

/// Operator-wide settings that the builders need.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Image used when `spec.image` is absent.
    pub default_image: String,
    /// Cluster DNS domain, for `status.url`.
    pub cluster_domain: String,
}

/// The default inference image: our own image at the operator's version.
pub fn default_image() -> String {
    format!(
        "ghcr.io/inference-server/inference-server:{}",
        env!("CARGO_PKG_VERSION")
    )
}

impl Default for Config {
    fn default() -> Self {
        Self {
            default_image: default_image(),
            cluster_domain: "cluster.local".into(),
        }
    }
}

/// Name of every child object.
pub fn child_name(isvc: &InferenceService) -> String {
    isvc.name_any()
}

/// Labels the pod selector uses. They never change over an InferenceService's life, because a
/// Deployment's selector is immutable.
pub fn selector_labels(isvc: &InferenceService) -> BTreeMap<String, String> {
    BTreeMap::from([(LABEL_SELECTOR.to_string(), isvc.name_any())])
}

/// `status.selector`, for the scale subresource.
pub fn selector_string(isvc: &InferenceService) -> String {
    selector_labels(isvc)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Labels on every child object (and the pods).
pub fn labels(isvc: &InferenceService) -> BTreeMap<String, String> {
    let mut labels = selector_labels(isvc);
    labels.insert(LABEL_NAME.into(), APP_NAME.into());
    labels.insert(LABEL_INSTANCE.into(), isvc.name_any());
    labels.insert(LABEL_COMPONENT.into(), COMPONENT.into());
    labels.insert(LABEL_MANAGED_BY.into(), MANAGER.into());
    labels
}

/// A selector on [`selector_labels`].
pub fn label_selector(isvc: &InferenceService) -> LabelSelector {
    LabelSelector {
        match_labels: Some(selector_labels(isvc)),
        match_expressions: None,
    }
}

/// A controller owner reference to the InferenceService. `None` when the object has no uid (it
/// was never stored). No `blockOwnerDeletion`: setting it needs `update` on
/// `inferenceservices/finalizers` where OwnerReferencesPermissionEnforcement is on (OpenShift),
/// and a foreground delete of an InferenceService need not wait for its children.
pub fn owner_reference(isvc: &InferenceService) -> Option<OwnerReference> {
    isvc.controller_owner_ref(&())
}

/// Metadata of a child: name, namespace, labels and the owner reference.
pub fn child_meta(isvc: &InferenceService) -> ObjectMeta {
    ObjectMeta {
        name: Some(child_name(isvc)),
        namespace: isvc.namespace(),
        labels: Some(labels(isvc)),
        owner_references: owner_reference(isvc).map(|o| vec![o]),
        ..Default::default()
    }
}

/// True when `meta` has a controller owner reference to this InferenceService.
pub fn is_controlled_by(meta: &ObjectMeta, isvc: &InferenceService) -> bool {
    let uid = isvc.meta().uid.as_deref();
    uid.is_some()
        && meta.owner_references.iter().flatten().any(|o| {
            o.controller == Some(true)
                && Some(o.uid.as_str()) == uid
                && o.kind == "InferenceService"
        })
}

/// The image the pods run.
pub fn image(isvc: &InferenceService, cfg: &Config) -> String {
    isvc.spec
        .image
        .clone()
        .unwrap_or_else(|| cfg.default_image.clone())
}

/// `http://<service>.<namespace>.svc.<domain>[:port]`, the URL the spec asks for.
pub fn url(isvc: &InferenceService, cfg: &Config) -> String {
    url_of(
        &child_name(isvc),
        &isvc.namespace().unwrap_or_else(|| "default".into()),
        service_spec(isvc).port,
        cfg,
    )
}

/// The URL of a Service as it exists: its name, namespace and the port named [`PORT_NAME`].
pub fn service_url(svc: &k8s_openapi::api::core::v1::Service, cfg: &Config) -> String {
    let port = svc
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .and_then(|ports| {
            ports
                .iter()
                .find(|p| p.name.as_deref() == Some(PORT_NAME))
                .or(ports.first())
        })
        .map_or(80, |p| p.port);
    url_of(
        &svc.name_any(),
        &svc.namespace().unwrap_or_else(|| "default".into()),
        port,
        cfg,
    )
}

fn url_of(name: &str, namespace: &str, port: i32, cfg: &Config) -> String {
    let host = format!("{name}.{namespace}.svc.{}", cfg.cluster_domain);
    if port == 80 {
        format!("http://{host}")
    } else {
        format!("http://{host}:{port}")
    }
}

// ---- The spec with the operator's defaults filled in -----------------------------------------

/// Requests and limits when `spec.resources` is absent.
pub fn default_resources() -> ResourcesSpec {
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    ResourcesSpec {
        requests: Some(ComputeResources {
            cpu: Some(Quantity("1".into())),
            memory: Some(Quantity("1Gi".into())),
        }),
        limits: Some(ComputeResources {
            cpu: None,
            memory: Some(Quantity("2Gi".into())),
        }),
    }
}

pub fn resources(isvc: &InferenceService) -> ResourcesSpec {
    isvc.spec
        .resources
        .clone()
        .unwrap_or_else(default_resources)
}

pub fn service_spec(isvc: &InferenceService) -> ServiceSpec {
    isvc.spec.service.clone().unwrap_or_default()
}

pub fn rollout(isvc: &InferenceService) -> RolloutSpec {
    isvc.spec.rollout.clone().unwrap_or_default()
}

pub fn termination(isvc: &InferenceService) -> TerminationSpec {
    isvc.spec.termination.clone().unwrap_or_default()
}

pub fn server(isvc: &InferenceService) -> ServerSpec {
    isvc.spec.server.clone().unwrap_or_default()
}

pub fn scheduling(isvc: &InferenceService) -> SchedulingSpec {
    isvc.spec.scheduling.clone().unwrap_or_default()
}

pub fn gpus(isvc: &InferenceService) -> i32 {
    isvc.spec.gpu.unwrap_or(0).max(0)
}

/// The autoscaling block, when autoscaling is on.
pub fn autoscaling(isvc: &InferenceService) -> Option<&AutoscalingSpec> {
    isvc.spec.autoscaling.as_ref()
}

/// The autoscaler's bounds, `1 <= min <= max`.
pub fn replica_bounds(auto: &AutoscalingSpec) -> (i32, i32) {
    let min = auto.min_replicas.max(1);
    (min, auto.max_replicas.max(min))
}

/// The Deployment's replica count: `spec.replicas`, which the HPA writes through the
/// InferenceService's scale subresource when autoscaling is on. Until its first write (a new
/// object, or autoscaling just turned on) the count is held within the HPA's bounds, as the HPA
/// itself would.
pub fn replicas(isvc: &InferenceService) -> i32 {
    let r = isvc.spec.replicas.max(0);
    match autoscaling(isvc) {
        Some(a) => {
            let (min, max) = replica_bounds(a);
            r.clamp(min, max)
        }
        None => r,
    }
}

/// Puts `v` in `Some` unless it is empty: server-side apply must not claim empty lists or maps.
pub(crate) fn non_empty<T, C: IntoIterator<Item = T> + FromIterator<T>>(c: C) -> Option<C> {
    let mut it = c.into_iter().peekable();
    if it.peek().is_none() {
        None
    } else {
        Some(it.collect())
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    use crate::crd::InferenceService;

    /// Parses a fixture under `tests/fixtures/` and gives it the identity a stored object has.
    pub fn fixture(name: &str) -> InferenceService {
        let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
        let mut isvc: InferenceService =
            serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("parsing {path}: {e}"));
        stored(&mut isvc);
        isvc
    }

    /// Parses inline YAML the same way.
    pub fn from_yaml(text: &str) -> InferenceService {
        let mut isvc: InferenceService =
            serde_saphyr::from_str(text).expect("valid InferenceService YAML");
        stored(&mut isvc);
        isvc
    }

    fn stored(isvc: &mut InferenceService) {
        let meta = &mut isvc.metadata;
        meta.namespace.get_or_insert_with(|| "ml".into());
        meta.uid
            .get_or_insert_with(|| "3f8d5c1e-0000-4000-8000-000000000001".into());
        meta.generation.get_or_insert(1);
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::fixture;
    use super::*;

    #[test]
    fn labels_and_selector_are_stable() {
        let isvc = fixture("minimal.yaml");
        let sel = selector_labels(&isvc);
        assert_eq!(sel.len(), 1);
        assert_eq!(sel[LABEL_SELECTOR], "resnet50");
        let all = labels(&isvc);
        assert_eq!(all[LABEL_NAME], "inference-server");
        assert_eq!(all[LABEL_INSTANCE], "resnet50");
        assert_eq!(all[LABEL_MANAGED_BY], "inference-operator");
        assert_eq!(all[LABEL_COMPONENT], "predictor");
        // Every selector label is on the pods, or the Deployment would select none of them.
        assert!(sel.iter().all(|(k, v)| all.get(k) == Some(v)));
        assert_eq!(
            selector_string(&isvc),
            "serving.inference-server.dev/inferenceservice=resnet50"
        );
    }

    #[test]
    fn owner_reference_is_controller_without_blocking_deletion() {
        let isvc = fixture("minimal.yaml");
        let o = owner_reference(&isvc).unwrap();
        assert_eq!(o.kind, "InferenceService");
        assert_eq!(o.api_version, "serving.inference-server.dev/v1alpha1");
        assert_eq!(o.name, "resnet50");
        assert_eq!(o.controller, Some(true));
        assert_eq!(o.block_owner_deletion, None);
        let meta = child_meta(&isvc);
        assert!(is_controlled_by(&meta, &isvc));
        let mut other = meta.clone();
        other.owner_references.as_mut().unwrap()[0].uid = "someone-else".into();
        assert!(!is_controlled_by(&other, &isvc));
        assert!(!is_controlled_by(&ObjectMeta::default(), &isvc));
    }

    #[test]
    fn url_omits_port_80() {
        let cfg = Config::default();
        let isvc = fixture("minimal.yaml");
        assert_eq!(url(&isvc, &cfg), "http://resnet50.ml.svc.cluster.local");
        let isvc = fixture("loadbalancer.yaml");
        assert_eq!(
            url(&isvc, &cfg),
            "http://resnet50-public.ml.svc.cluster.local:8000"
        );
    }

    /// Server-side apply takes ownership of every field sent: a `null`, `[]` or `{}` would claim
    /// (and clear) fields that the API server or other controllers fill in.
    #[test]
    fn applied_objects_claim_no_empty_fields() {
        fn check(v: &serde_json::Value, path: &str, bad: &mut Vec<String>) {
            match v {
                serde_json::Value::Null => bad.push(format!("{path}: null")),
                serde_json::Value::Array(a) => {
                    if a.is_empty() {
                        bad.push(format!("{path}: []"));
                    }
                    for (i, x) in a.iter().enumerate() {
                        check(x, &format!("{path}[{i}]"), bad);
                    }
                }
                serde_json::Value::Object(o) => {
                    if o.is_empty() {
                        bad.push(format!("{path}: {{}}"));
                    }
                    for (k, x) in o {
                        check(x, &format!("{path}.{k}"), bad);
                    }
                }
                _ => {}
            }
        }
        let cfg = Config::default();
        for f in [
            "minimal.yaml",
            "full.yaml",
            "autoscaling.yaml",
            "loadbalancer.yaml",
        ] {
            let isvc = fixture(f);
            let mut objects = vec![
                serde_json::to_value(deployment::build(&isvc, &cfg)).unwrap(),
                serde_json::to_value(service::build(&isvc)).unwrap(),
                serde_json::to_value(pdb::build(&isvc)).unwrap(),
            ];
            objects.extend(hpa::build(&isvc).map(|h| serde_json::to_value(h).unwrap()));
            for obj in objects {
                assert!(
                    obj["apiVersion"].is_string() && obj["kind"].is_string(),
                    "SSA needs apiVersion and kind"
                );
                assert!(obj.get("status").is_none());
                let mut bad = Vec::new();
                check(&obj, &format!("{f}:{}", obj["kind"]), &mut bad);
                assert!(bad.is_empty(), "{bad:#?}");
            }
        }
    }

    #[test]
    fn default_image_is_ours_at_our_version() {
        let img = default_image();
        assert!(img.contains("inference-server"), "{img}");
        assert!(
            img.ends_with(concat!(":", env!("CARGO_PKG_VERSION"))),
            "{img}"
        );
    }
}
