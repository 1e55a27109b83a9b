//! The `InferenceService` custom resource (`serving.inference-server.dev/v1alpha1`).
//!
//! Every field carries a doc comment: it becomes the `description` that `kubectl explain` shows.
//! Rules that the API server can check are in the schema (`minimum`, `maximum`, `pattern`, CEL
//! `x-kubernetes-validations`); what only the operator can find wrong is in [`crate::validate`].
//!
//! Defaults: small scalar defaults live in the schema (so `kubectl get -o yaml` shows them) and
//! in the matching `Default` impls (so the operator sees the same values when a block is absent).

// Each `printcolumn(...)` repeats the same keys; clippy takes that for duplicated attributes.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscalerBehavior;
use k8s_openapi::api::core::v1::{
    Affinity, EnvVar, LocalObjectReference, Probe, Toleration, TopologySpreadConstraint,
};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, ValidationRule,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{CustomResource, CustomResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The API group, under a domain the project owns (not KServe's `serving.kserve.io`).
pub const GROUP: &str = "serving.inference-server.dev";
/// The only served and stored version.
pub const VERSION: &str = "v1alpha1";
/// `kubectl get infsvc` (KServe uses `isvc`; we must not collide with it).
pub const SHORT_NAME: &str = "infsvc";

/// Default container port of the inference server (container port name `http`).
pub const SERVER_PORT: i32 = 8080;

/// Default HPA Pods metric for `autoscaling.targetRequestsPerSecond`. A custom-metrics adapter
/// (for example prometheus-adapter) derives it from the server's `ml_inference_requests_total`
/// counter as `rate(ml_inference_requests_total[1m])` per pod.
pub const DEFAULT_RPS_METRIC: &str = "ml_inference_requests_per_second";

/// Serve a ResNet50-style image classification model with an autoscaled, zone-spread Deployment,
/// a Service, an optional HorizontalPodAutoscaler and a PodDisruptionBudget.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "serving.inference-server.dev",
    version = "v1alpha1",
    kind = "InferenceService",
    namespaced,
    status = "InferenceServiceStatus",
    shortname = "infsvc",
    category = "inference",
    derive = "PartialEq",
    derive = "Default",
    doc = "InferenceService runs an image classification model server (ResNet50) as a Deployment with a Service, \
           optional autoscaling and a disruption budget. The operator owns the child objects: edit this object, not them.",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "Whether the current spec is rolled out and serving"
    ),
    printcolumn(
        name = "Replicas",
        type_ = "integer",
        json_path = ".status.readyReplicas",
        description = "Ready server pods"
    ),
    printcolumn(
        name = "Active",
        type_ = "string",
        json_path = ".status.blueGreen.activeColor",
        description = "The colour serving traffic (rollout.strategy BlueGreen)"
    ),
    printcolumn(
        name = "URL",
        type_ = "string",
        json_path = ".status.url",
        description = "In-cluster URL of the service"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason",
        priority = "1",
        description = "Why the service is (not) ready"
    ),
    printcolumn(
        name = "Model",
        type_ = "string",
        json_path = ".spec.model.name",
        priority = "1",
        description = "Model name"
    )
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "!has(self.env) || self.env.all(e, !(e.name in ['PORT', 'HOST']))",
        "message": "spec.env must not set PORT or HOST: the operator sets them so that the probes and the Service reach the server"
    },
    {
        "rule": "!has(self.gpu) || self.gpu == 0 || !has(self.server) || !has(self.server.device) || self.server.device != 'cpu'",
        "message": "spec.server.device is 'cpu' but spec.gpu requests GPUs: set device to 'cuda' or 'auto', or remove spec.gpu"
    }
]))]
pub struct InferenceServiceSpec {
    /// The model the server loads: its name and version (reported by the server and used in its
    /// `/v2/models/<name>` routes) and where the weights are.
    pub model: ModelSpec,

    /// Container image of the inference server. Defaults to the operator's own inference image at
    /// the operator's version (operator flag `--default-image`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub image: Option<String>,

    /// When the kubelet pulls the image: Always, IfNotPresent or Never. Defaults to Kubernetes'
    /// rule (Always for `:latest`, IfNotPresent otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<ImagePullPolicy>,

    /// Secrets (in this namespace) used to pull the image from a private registry.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub image_pull_secrets: Vec<LocalObjectReference>,

    /// Number of server pods. Defaults to 1. `kubectl scale` sets this field (the scale
    /// subresource). With `autoscaling` the HorizontalPodAutoscaler writes it through the scale
    /// subresource, within [minReplicas, maxReplicas]: leave it out of manifests you re-apply, as
    /// with a Deployment under an HPA. Removing `autoscaling` keeps the last count.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: i32,

    /// CPU and memory requests and limits of the server container. When absent the operator uses
    /// requests cpu=1, memory=1Gi and limit memory=2Gi. When present it is used as given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourcesSpec>,

    /// Number of NVIDIA GPUs per pod. Sets the `nvidia.com/gpu` limit and, unless
    /// `scheduling.gpuToleration` is false, tolerates the `nvidia.com/gpu` NoSchedule taint.
    /// With GPUs the server defaults to `DEVICE=cuda`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 16))]
    pub gpu: Option<i32>,

    /// Horizontal autoscaling. When set, a HorizontalPodAutoscaler (autoscaling/v2) scales this
    /// InferenceService (its `replicas`); when removed, the HPA is deleted and the pods stay at
    /// the last count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<AutoscalingSpec>,

    /// Probe overrides. Defaults: startup HTTP GET /ready (covers loading and warming up the
    /// model, up to 10 minutes), liveness HTTP GET /health, readiness HTTP GET /ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probes: Option<ProbesSpec>,

    /// The Service in front of the pods. Defaults to a ClusterIP Service on port 80.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceSpec>,

    /// Rolling update settings. Defaults to maxSurge 25% and maxUnavailable 0: new pods must be
    /// ready before old ones go.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutSpec>,

    /// Graceful termination: how long a pod keeps serving after it is removed from the Service
    /// endpoints, and how long the server gets to finish requests after SIGTERM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub termination: Option<TerminationSpec>,

    /// Inference server settings, passed to the server as environment variables.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<ServerSpec>,

    /// Extra environment variables for the server container. They override the variables the
    /// operator sets, except PORT and HOST. The model download (`model.uri`) gets them too
    /// (e.g. AWS_REGION, AWS_ENDPOINT_URL), except the variables it sets itself.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub env: Vec<EnvVar>,

    /// Where the pods run: node selector, tolerations, affinity, topology spread and priority.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduling: Option<SchedulingSpec>,

    /// Extra labels for the pods. The operator's `app.kubernetes.io/*` labels take precedence.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pod_labels: BTreeMap<String, String>,

    /// Extra annotations for the pods (they override the operator's Prometheus annotations).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pod_annotations: BTreeMap<String, String>,

    /// ServiceAccount the pods run as. Defaults to the namespace's `default` account, without a
    /// mounted API token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub service_account_name: Option<String>,
}

/// The model to serve and where its weights are.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "!has(self.pvc) || (has(self.path) && self.path.startsWith(self.pvc.mountPath + '/'))",
        "message": "model.path must be set to a file inside model.pvc.mountPath when model.pvc is set, e.g. /models/resnet50.safetensors"
    },
    {
        "rule": "!has(self.uri) || (!has(self.path) && !has(self.pvc))",
        "message": "model.uri cannot be combined with model.path or model.pvc: the weights come from one place"
    },
    {
        "rule": "!has(self.uri) || self.uri.startsWith('https://') || self.uri.startsWith('hf://') || self.uri.startsWith('s3://')",
        "message": "model.uri must start with https://, hf:// or s3://"
    },
    {
        "rule": "!has(self.sha256) || has(self.uri)",
        "message": "model.sha256 checks a download: it needs model.uri"
    },
    {
        "rule": "!has(self.hfTokenSecret) || (has(self.uri) && self.uri.startsWith('hf://'))",
        "message": "model.hfTokenSecret is for hf:// URIs"
    },
    {
        "rule": "!has(self.caConfigMap) || has(self.uri)",
        "message": "model.caConfigMap verifies the server of a download: it needs model.uri"
    }
]))]
pub struct ModelSpec {
    /// Model name, reported by the server (MODEL_NAME) and used in its `/v2/models/<name>` routes.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$")
    )]
    pub name: String,

    /// Model version (MODEL_VERSION), e.g. `1` or `2024-06-01`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$")
    )]
    pub version: Option<String>,

    /// Absolute path of the safetensors weights file in the container (MODEL_PATH): a path baked
    /// into the image, or a file inside `pvc.mountPath`. Defaults to the image's built-in model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = 4096), regex(pattern = r"^/"))]
    pub path: Option<String>,

    /// A PersistentVolumeClaim with the weights, mounted read-only at `mountPath`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pvc: Option<ModelPvcSpec>,

    /// Where each pod downloads the weights before the server starts: `https://…`,
    /// `hf://org/repo[@revision]/file.safetensors` or `s3://bucket/key` (the AWS credential
    /// chain: the IAM role of `serviceAccountName` on EKS, else AWS_* variables from `env`, else
    /// the instance profile; `env` also takes AWS_REGION and, for an S3-compatible store,
    /// AWS_ENDPOINT_URL). An init container runs `inference-server fetch` into an emptyDir; the
    /// file is checked (length, `sha256`, every tensor) before the server sees it, and a failed
    /// download shows as `ModelFetchFailed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 8, max = 4096))]
    pub uri: Option<String>,

    /// Expected sha256 of the file at `uri`, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9a-fA-F]{64}$"))]
    pub sha256: Option<String>,

    /// A Secret key holding a Hugging Face token, sent as `HF_TOKEN` for `hf://` URIs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hf_token_secret: Option<SecretKeyRef>,

    /// A ConfigMap key holding PEM CA certificates to trust for `uri` instead of the built-in
    /// web roots: a mirror or an S3-compatible store behind a private CA. Mounted read-only into
    /// the download's init container only (`FETCH_CA_FILE`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_config_map: Option<ConfigMapKeyRef>,
}

/// One key of a ConfigMap in the InferenceService's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConfigMapKeyRef {
    /// Name of the ConfigMap.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub name: String,
    /// Key inside the ConfigMap.
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub key: String,
}

/// One key of a Secret in the InferenceService's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub name: String,
    /// Key inside the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// A PersistentVolumeClaim that holds model weights.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "!has(self.subPath) || (!self.subPath.startsWith('/') && !self.subPath.contains('..'))",
        "message": "model.pvc.subPath must be a relative path without '..'"
    }
]))]
pub struct ModelPvcSpec {
    /// Name of the PersistentVolumeClaim, in the InferenceService's namespace.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub claim_name: String,

    /// Where the claim is mounted in the container.
    #[serde(default = "default_model_mount_path")]
    #[schemars(length(min = 2, max = 1024), regex(pattern = r"^/[^:]*[^/:]$"))]
    pub mount_path: String,

    /// Sub-path inside the volume to mount instead of its root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub sub_path: Option<String>,
}

fn default_replicas() -> i32 {
    1
}

fn default_model_mount_path() -> String {
    "/models".into()
}

impl Default for ModelPvcSpec {
    fn default() -> Self {
        Self {
            claim_name: String::new(),
            mount_path: default_model_mount_path(),
            sub_path: None,
        }
    }
}

/// When the kubelet pulls the image: Always, IfNotPresent or Never. Defaults to Kubernetes' rule
/// (Always for `:latest`, IfNotPresent otherwise).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ImagePullPolicy {
    /// Always pull the image.
    Always,
    /// Pull the image only if it is not on the node.
    IfNotPresent,
    /// Never pull the image.
    Never,
}

impl ImagePullPolicy {
    /// The Kubernetes spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Always => "Always",
            Self::IfNotPresent => "IfNotPresent",
            Self::Never => "Never",
        }
    }
}

/// CPU and memory of the server container.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourcesSpec {
    /// What the scheduler reserves for a pod. CPU utilisation autoscaling is relative to
    /// `requests.cpu`, memory utilisation to `requests.memory`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<ComputeResources>,

    /// The most a pod may use. Memory over the limit kills the container (OOMKilled); a CPU limit
    /// throttles it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<ComputeResources>,
}

/// A CPU and memory amount.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "!has(self.cpu) || isQuantity(string(self.cpu))",
        "message": "cpu must be a quantity such as 500m or 2"
    },
    {
        "rule": "!has(self.memory) || isQuantity(string(self.memory))",
        "message": "memory must be a quantity such as 512Mi or 2Gi"
    }
]))]
pub struct ComputeResources {
    /// CPU cores, e.g. `500m`, `2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Quantity>,

    /// Memory, e.g. `1Gi`, `1536Mi`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Quantity>,
}

/// Horizontal autoscaling with a HorizontalPodAutoscaler (autoscaling/v2).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "self.minReplicas <= self.maxReplicas",
        "message": "autoscaling.minReplicas must be less than or equal to autoscaling.maxReplicas"
    }
]))]
pub struct AutoscalingSpec {
    /// Fewest pods the autoscaler keeps. Defaults to 1.
    #[serde(default = "default_min_replicas")]
    #[schemars(range(min = 1, max = 1000))]
    pub min_replicas: i32,

    /// Most pods the autoscaler may run.
    #[schemars(range(min = 1, max = 1000))]
    pub max_replicas: i32,

    /// Target average CPU utilisation, in percent of `resources.requests.cpu`. When no target is
    /// set at all, the operator uses 80.
    #[serde(
        default,
        rename = "targetCPUUtilizationPercentage",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(range(min = 1, max = 100))]
    pub target_cpu_utilization_percentage: Option<i32>,

    /// Target average memory utilisation, in percent of `resources.requests.memory`.
    #[serde(
        default,
        rename = "targetMemoryUtilizationPercentage",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(range(min = 1, max = 100))]
    pub target_memory_utilization_percentage: Option<i32>,

    /// Target requests per second per pod. Becomes an HPA `Pods` metric named
    /// `requestsPerSecondMetric`, which a custom-metrics adapter must serve (derived from the
    /// server's `ml_inference_requests_total` counter).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100000))]
    pub target_requests_per_second: Option<i32>,

    /// Name of the per-pod requests-per-second metric in the custom metrics API.
    #[serde(default = "default_rps_metric")]
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
    )]
    pub requests_per_second_metric: String,

    /// Scale-up and scale-down behaviour (stabilisation windows and rate policies), as in
    /// HorizontalPodAutoscaler `spec.behavior`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub behavior: Option<HorizontalPodAutoscalerBehavior>,
}

fn default_min_replicas() -> i32 {
    1
}

fn default_rps_metric() -> String {
    DEFAULT_RPS_METRIC.into()
}

impl Default for AutoscalingSpec {
    fn default() -> Self {
        Self {
            min_replicas: default_min_replicas(),
            max_replicas: 1,
            target_cpu_utilization_percentage: None,
            target_memory_utilization_percentage: None,
            target_requests_per_second: None,
            requests_per_second_metric: default_rps_metric(),
            behavior: None,
        }
    }
}

/// Overrides for the server container's probes. Each probe given here replaces the default whole.
// A probe `host` would make the kubelet send requests from the node to any address: whoever may
// create an InferenceService could probe (and time) hosts the pod itself cannot reach.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "(!has(self.liveness) || ((!has(self.liveness.httpGet) || !has(self.liveness.httpGet.host)) && (!has(self.liveness.tcpSocket) || !has(self.liveness.tcpSocket.host)))) && (!has(self.readiness) || ((!has(self.readiness.httpGet) || !has(self.readiness.httpGet.host)) && (!has(self.readiness.tcpSocket) || !has(self.readiness.tcpSocket.host)))) && (!has(self.startup) || ((!has(self.startup.httpGet) || !has(self.startup.httpGet.host)) && (!has(self.startup.tcpSocket) || !has(self.startup.tcpSocket.host))))",
        "message": "probes must not set httpGet.host or tcpSocket.host: the kubelet probes the pod's own IP"
    }
]))]
pub struct ProbesSpec {
    /// Liveness probe: failing restarts the container. Default: HTTP GET /health on port `http`
    /// every 10s, 3 failures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub liveness: Option<Probe>,

    /// Readiness probe: failing takes the pod out of the Service. Default: HTTP GET /ready on
    /// port `http` every 5s, 2 failures (the server answers 503 while loading or draining).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness: Option<Probe>,

    /// Startup probe: holds off the other probes while the model loads and warms up. Default:
    /// HTTP GET /ready every 5s, up to 120 failures (10 minutes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub startup: Option<Probe>,
}

/// Type of the Service.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ServiceType {
    /// Reachable inside the cluster only.
    #[default]
    ClusterIP,
    /// Also exposed on a port of every node.
    NodePort,
    /// Exposed through a cloud load balancer (e.g. an AWS NLB; see `annotations`).
    LoadBalancer,
}

impl ServiceType {
    /// The Kubernetes spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClusterIP => "ClusterIP",
            Self::NodePort => "NodePort",
            Self::LoadBalancer => "LoadBalancer",
        }
    }
}

/// The Service in front of the server pods.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "!has(self.nodePort) || self.type != 'ClusterIP'",
        "message": "service.nodePort can only be set when service.type is NodePort or LoadBalancer"
    },
    {
        "rule": "(!has(self.loadBalancerClass) && !has(self.loadBalancerSourceRanges)) || self.type == 'LoadBalancer'",
        "message": "service.loadBalancerClass and service.loadBalancerSourceRanges need service.type LoadBalancer"
    }
]))]
pub struct ServiceSpec {
    /// ClusterIP (default), NodePort or LoadBalancer.
    #[serde(default, rename = "type")]
    pub type_: ServiceType,

    /// Port the Service listens on; it forwards to the server's `http` port (8080).
    #[serde(default = "default_service_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,

    /// Fixed node port for NodePort and LoadBalancer Services; allocated when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub node_port: Option<i32>,

    /// Annotations for the Service, e.g. for the AWS Load Balancer Controller
    /// (`service.beta.kubernetes.io/aws-load-balancer-scheme: internet-facing`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,

    /// Load balancer implementation, e.g. `service.k8s.aws/nlb` (type LoadBalancer only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub load_balancer_class: Option<String>,

    /// Client CIDRs allowed through the load balancer (type LoadBalancer only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub load_balancer_source_ranges: Option<Vec<String>>,
}

fn default_service_port() -> i32 {
    80
}

impl Default for ServiceSpec {
    fn default() -> Self {
        Self {
            type_: ServiceType::ClusterIP,
            port: default_service_port(),
            node_port: None,
            annotations: BTreeMap::new(),
            load_balancer_class: None,
            load_balancer_source_ranges: None,
        }
    }
}

/// Rolling update settings of the Deployment.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "!(string(self.maxSurge) in ['0', '0%'] && string(self.maxUnavailable) in ['0', '0%'])",
        "message": "rollout.maxSurge and rollout.maxUnavailable cannot both be 0"
    },
    {
        "rule": "string(self.maxSurge).matches('^[0-9]+%?$') && string(self.maxUnavailable).matches('^[0-9]+%?$')",
        "message": "rollout.maxSurge and rollout.maxUnavailable must be a number of pods (e.g. 1) or a percentage (e.g. '25%')"
    },
    {
        "rule": "!string(self.maxUnavailable).endsWith('%') || int(string(self.maxUnavailable).replace('%', '')) <= 100",
        "message": "rollout.maxUnavailable must not exceed 100%"
    },
    {
        "rule": "!has(self.blueGreen) || self.strategy == 'BlueGreen'",
        "message": "rollout.blueGreen needs rollout.strategy: BlueGreen"
    }
]))]
pub struct RolloutSpec {
    /// How a new spec replaces the running pods. `RollingUpdate` (default): one Deployment
    /// replaces its pods a few at a time. `BlueGreen`: two Deployments (`<name>-blue`,
    /// `<name>-green`); a new spec rolls out to the idle colour behind the preview Service
    /// `<name>-preview`, and the Service moves to it only once all its pods are ready and a
    /// prediction through the preview Service succeeds. Switching either way keeps serving.
    #[serde(default)]
    pub strategy: RolloutStrategy,

    /// Blue/green settings (with `strategy: BlueGreen`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blue_green: Option<BlueGreenSpec>,

    /// Pods created above the desired count during an update: a number or a percentage.
    /// Default 25%.
    #[serde(default = "default_max_surge")]
    pub max_surge: IntOrString,

    /// Pods that may be unavailable during an update: a number or a percentage. Default 0, so
    /// capacity never drops below the desired count.
    #[serde(default = "default_max_unavailable")]
    pub max_unavailable: IntOrString,

    /// Seconds a rollout may make no progress before it counts as stuck (Ready=False,
    /// reason ProgressDeadlineExceeded). Default 600.
    #[serde(default = "default_progress_deadline")]
    #[schemars(range(min = 30, max = 86400))]
    pub progress_deadline_seconds: i32,
}

/// `spec.rollout.strategy`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum RolloutStrategy {
    #[default]
    RollingUpdate,
    BlueGreen,
}

/// Blue/green promotion settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BlueGreenSpec {
    /// Move the Service to the new colour as soon as it is ready and its smoke request passed.
    /// `false`: wait for the annotation `serving.inference-server.dev/promote` set to the
    /// preview's revision (`status.blueGreen.preview.revision`). Default true.
    #[serde(default = "default_true")]
    pub auto_promote: bool,

    /// Seconds the previous colour keeps running after a promotion, so that re-applying the
    /// previous spec moves traffic back at once. Then it is scaled to 0. Default 30.
    #[serde(default = "default_scale_down_delay")]
    #[schemars(range(min = 0, max = 86400))]
    pub scale_down_delay_seconds: i32,
}

fn default_scale_down_delay() -> i32 {
    30
}

impl Default for BlueGreenSpec {
    fn default() -> Self {
        Self {
            auto_promote: true,
            scale_down_delay_seconds: default_scale_down_delay(),
        }
    }
}

fn default_max_surge() -> IntOrString {
    IntOrString::String("25%".into())
}

fn default_max_unavailable() -> IntOrString {
    IntOrString::Int(0)
}

fn default_progress_deadline() -> i32 {
    600
}

impl Default for RolloutSpec {
    fn default() -> Self {
        Self {
            strategy: RolloutStrategy::default(),
            blue_green: None,
            max_surge: default_max_surge(),
            max_unavailable: default_max_unavailable(),
            progress_deadline_seconds: default_progress_deadline(),
        }
    }
}

/// Graceful termination of a server pod.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "self.gracePeriodSeconds > self.preStopDelaySeconds",
        "message": "termination.gracePeriodSeconds must be greater than termination.preStopDelaySeconds, so the server has time to finish requests after SIGTERM"
    }
]))]
pub struct TerminationSpec {
    /// Seconds the pod keeps serving after it is marked for deletion (a preStop sleep), so that
    /// load balancers and kube-proxy stop sending it traffic before the server gets SIGTERM.
    /// Default 10.
    #[serde(default = "default_pre_stop_delay")]
    #[schemars(range(min = 0, max = 300))]
    pub pre_stop_delay_seconds: i64,

    /// Pod terminationGracePeriodSeconds: the preStop delay plus the time the server gets to
    /// drain in-flight requests (SHUTDOWN_GRACE_SECONDS = this - preStopDelaySeconds - 5).
    /// Default 45.
    #[serde(default = "default_grace_period")]
    #[schemars(range(min = 1, max = 3600))]
    pub grace_period_seconds: i64,
}

fn default_pre_stop_delay() -> i64 {
    10
}

fn default_grace_period() -> i64 {
    45
}

impl Default for TerminationSpec {
    fn default() -> Self {
        Self {
            pre_stop_delay_seconds: default_pre_stop_delay(),
            grace_period_seconds: default_grace_period(),
        }
    }
}

/// Compute device of the server (DEVICE): auto (CUDA when a GPU is visible, else the CPU), cpu
/// or cuda. Defaults to cuda when `gpu` > 0, else cpu.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    /// Use CUDA when a GPU is visible, else the CPU.
    Auto,
    /// Always the CPU.
    Cpu,
    /// Always CUDA; the server fails to start without a GPU.
    Cuda,
}

impl Device {
    /// The server's spelling (`DEVICE` env).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Cpu => "cpu",
            Self::Cuda => "cuda",
        }
    }
}

/// Inference server settings, passed as environment variables. Unset fields keep the server's
/// own defaults.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServerSpec {
    /// Largest batch the server forms from queued requests (MAX_BATCH_SIZE).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1024))]
    pub max_batch_size: Option<i32>,

    /// Most requests waiting for a batch before the server answers 503 (MAX_QUEUE).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000))]
    pub max_queue: Option<i32>,

    /// Intra-op inference threads (INFERENCE_THREADS). Defaults to the CPU limit, or the CPU
    /// request, rounded up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1024))]
    pub threads: Option<i32>,

    /// Largest accepted request body in bytes (MAX_BODY_BYTES).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1024, max = 1073741824))]
    pub max_body_bytes: Option<i64>,

    /// auto, cpu or cuda (DEVICE). Defaults to cuda when `gpu` > 0, else cpu.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<Device>,

    /// Server log filter (RUST_LOG), e.g. `info` or `inference_server=debug,info`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub log_level: Option<String>,
}

/// Where the pods run.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        // The embedded Kubernetes schema has no minimum; the Deployment would be refused later.
        "rule": "!has(self.topologySpreadConstraints) || self.topologySpreadConstraints.all(c, c.maxSkew >= 1)",
        "message": "scheduling.topologySpreadConstraints[].maxSkew must be at least 1"
    }
]))]
pub struct SchedulingSpec {
    /// Node labels a node must have to run the pods.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,

    /// Taints the pods tolerate (in addition to the GPU toleration, see `gpuToleration`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub tolerations: Vec<Toleration>,

    /// Node and pod (anti-)affinity of the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,

    /// How pods spread over failure domains. When absent the pods spread evenly over zones
    /// (`topology.kubernetes.io/zone`) and then nodes, as a preference (ScheduleAnyway). An
    /// empty list turns spreading off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 8))]
    pub topology_spread_constraints: Option<Vec<TopologySpreadConstraint>>,

    /// PriorityClass of the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub priority_class_name: Option<String>,

    /// With `gpu` > 0, tolerate the `nvidia.com/gpu:NoSchedule` taint that GPU node pools
    /// usually carry. Default true.
    #[serde(default = "default_true")]
    pub gpu_toleration: bool,
}

fn default_true() -> bool {
    true
}

impl Default for SchedulingSpec {
    fn default() -> Self {
        Self {
            node_selector: BTreeMap::new(),
            tolerations: Vec::new(),
            affinity: None,
            topology_spread_constraints: None,
            priority_class_name: None,
            gpu_toleration: true,
        }
    }
}

/// Observed state of an InferenceService, written by the operator.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InferenceServiceStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Server pods that exist (any template version).
    #[serde(default)]
    pub replicas: i32,

    /// Server pods that pass their readiness probe.
    #[serde(default)]
    pub ready_replicas: i32,

    /// Server pods running the current template.
    #[serde(default)]
    pub updated_replicas: i32,

    /// Server pods ready for at least minReadySeconds.
    #[serde(default)]
    pub available_replicas: i32,

    /// In-cluster URL of the service: `http://<service>.<namespace>.svc.<cluster domain>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,

    /// Label selector of the server pods, for the scale subresource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,

    /// Image the pods run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,

    /// With `rollout.strategy: BlueGreen`: which colour serves, and the one being rolled out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blue_green: Option<BlueGreenStatus>,

    /// Ready, Available, Progressing and Degraded, each with a reason and message.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// Blue/green state as the operator last saw it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BlueGreenStatus {
    /// The colour the Service sends traffic to: `blue` or `green`. Absent while an
    /// InferenceService switching from RollingUpdate has not promoted its first colour.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_color: Option<String>,

    /// The serving colour.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active: Option<ColorStatus>,

    /// The colour behind `<name>-preview` while it has pods: the new spec before promotion, or
    /// the previous colour during `scaleDownDelaySeconds` after one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preview: Option<ColorStatus>,

    /// When the Service last moved to another colour.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promoted_at: Option<String>,
}

/// One colour's Deployment.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ColorStatus {
    /// `blue` or `green`.
    pub color: String,
    /// The colour's Deployment, `<name>-<color>`.
    pub deployment: String,
    /// Hash of the pod template this colour runs (what the promote annotation names).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// Image of its server container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Pods it wants.
    #[serde(default)]
    pub replicas: i32,
    /// Pods that pass their readiness probe.
    #[serde(default)]
    pub ready_replicas: i32,
}

/// Root-level rules; the derive cannot attach them to `metadata`, so [`crd`] adds them.
fn root_validations() -> Vec<ValidationRule> {
    vec![ValidationRule {
        rule: "self.metadata.name.size() <= 63 && self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')".into(),
        message: Some(
            "metadata.name must be a DNS-1035 label (at most 63 lowercase letters, digits and '-', starting with a letter): it also names the Service"
                .into(),
        ),
        ..Default::default()
    }]
}

/// The CustomResourceDefinition, as `crdgen` writes it and as the apiserver should have it.
pub fn crd() -> CustomResourceDefinition {
    let mut crd = InferenceService::crd();
    for version in &mut crd.spec.versions {
        if let Some(schema) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        {
            schema.x_kubernetes_validations = Some(root_validations());
        }
    }
    // Doc comments are wrapped at ~100 columns; `kubectl explain` reflows text itself, so join
    // the wrapped lines (keeping paragraphs and list items).
    let mut value = serde_json::to_value(&crd).expect("the CRD serializes");
    unwrap_descriptions(&mut value);
    serde_json::from_value(value).expect("the CRD deserializes")
}

fn unwrap_descriptions(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, x) in map.iter_mut() {
                match x {
                    serde_json::Value::String(s) if k == "description" => *s = unwrap_lines(s),
                    _ => unwrap_descriptions(x),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(unwrap_descriptions),
        _ => {}
    }
}

/// Joins soft-wrapped lines with a space; keeps blank lines, list items and indented lines.
pub fn unwrap_lines(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut prev: Option<&str> = None;
    for line in s.split('\n') {
        if let Some(p) = prev {
            let soft = !p.trim().is_empty()
                && !line.trim().is_empty()
                && !line.starts_with([' ', '\t', '-', '*', '|'])
                && !p.ends_with(':');
            out.push(if soft { ' ' } else { '\n' });
        }
        out.push_str(line);
        prev = Some(line);
    }
    out
}

/// The CRD as YAML, with a header saying where it comes from.
pub fn crd_yaml() -> String {
    let body = serde_saphyr::to_string(&crd()).expect("the CRD serializes to YAML");
    format!(
        "# Generated by `cargo run -p inference-operator --bin crdgen` from operator/src/crd.rs. Do not edit.\n{body}"
    )
}

/// File name of the CRD under `crds/`.
pub fn crd_file_name() -> String {
    format!("{}.yaml", InferenceService::crd_name())
}

#[cfg(test)]
mod tests {
    use super::unwrap_lines;

    #[test]
    fn wrapped_doc_lines_are_joined() {
        assert_eq!(unwrap_lines("a b\nc d"), "a b c d");
        assert_eq!(unwrap_lines("para one\n\npara two"), "para one\n\npara two");
        assert_eq!(unwrap_lines("list:\n- x\n- y"), "list:\n- x\n- y");
        assert_eq!(unwrap_lines("single"), "single");
    }
}
