//! The server Deployment.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource, EnvVar,
    EnvVarSource, HTTPGetAction, KeyToPath, Lifecycle, LifecycleHandler,
    PersistentVolumeClaimVolumeSource, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    ResourceRequirements, SeccompProfile, SecretKeySelector, SecurityContext, SleepAction,
    Toleration, TopologySpreadConstraint, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{
    CONTAINER_NAME, Config, FETCH_CONTAINER_NAME, FETCHED_MODEL_PATH, LABEL_VERSION, PORT_NAME,
    child_meta, gpus, image, label_selector, labels, non_empty, replicas, resources, rollout,
    scheduling, selector_labels, server, termination,
};
use crate::crd::{Device, InferenceService, SERVER_PORT};
use crate::quantity;

/// The extended resource a GPU request uses, and the taint GPU node pools carry.
pub const GPU_RESOURCE: &str = "nvidia.com/gpu";
/// Unprivileged uid/gid the server runs as (distroless `nonroot`).
pub const RUN_AS_USER: i64 = 65532;
/// Seconds the server gets after SIGTERM when the grace period leaves less.
const MIN_SHUTDOWN_GRACE: i64 = 1;
/// Margin between the server's drain deadline and the kubelet's SIGKILL.
const SHUTDOWN_MARGIN: i64 = 5;

/// Builds the Deployment.
pub fn build(isvc: &InferenceService, cfg: &Config) -> Deployment {
    let rollout = rollout(isvc);
    let mut metadata = child_meta(isvc);
    if isvc.spec.image.is_none() {
        metadata.annotations = Some(BTreeMap::from([(
            ANNOTATION_DEFAULT_IMAGE.to_string(),
            cfg.default_image.clone(),
        )]));
    }
    Deployment {
        metadata,
        spec: Some(DeploymentSpec {
            replicas: Some(replicas(isvc)),
            selector: label_selector(isvc),
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(rollout.max_surge.clone()),
                    max_unavailable: Some(rollout.max_unavailable.clone()),
                }),
            }),
            progress_deadline_seconds: Some(rollout.progress_deadline_seconds),
            revision_history_limit: Some(5),
            template: pod_template(isvc, cfg),
            ..Default::default()
        }),
        status: None,
    }
}

/// Annotation on the Deployment when its image is the operator's default (no `spec.image`): the
/// default it resolved to, so that an operator upgrade does not move it (see [`pinned_config`]).
pub const ANNOTATION_DEFAULT_IMAGE: &str = "serving.inference-server.dev/default-image";

/// The config to build with: `cfg`, except that an InferenceService without `spec.image` keeps
/// the default image it already runs while nothing else in its pod template changes. Without
/// this, upgrading the operator (whose default image is its own version) would roll out every
/// such InferenceService at once. `upgrade_default_image` (an operator flag) moves them all.
pub fn pinned_config(
    isvc: &InferenceService,
    cfg: &Config,
    live: Option<&Deployment>,
    upgrade_default_image: bool,
) -> Config {
    let Some(live) = live.filter(|_| isvc.spec.image.is_none() && !upgrade_default_image) else {
        return cfg.clone();
    };
    let Some(running) = live
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_DEFAULT_IMAGE))
        .filter(|img| **img != cfg.default_image && server_image(live).as_ref() == Some(*img))
    else {
        return cfg.clone();
    };
    let pinned = Config {
        default_image: running.clone(),
        ..cfg.clone()
    };
    let candidate = build(isvc, &pinned);
    let template = |d: &Deployment| {
        d.spec
            .as_ref()
            .map(|s| serde_json::to_value(&s.template).unwrap_or_default())
    };
    match (template(live), template(&candidate)) {
        (Some(have), Some(want)) if crate::diff::contains(&have, &want) => pinned,
        _ => cfg.clone(),
    }
}

/// The image of the server container of a Deployment (as built, or as stored).
pub fn server_image(d: &Deployment) -> Option<String> {
    d.spec
        .as_ref()?
        .template
        .spec
        .as_ref()?
        .containers
        .iter()
        .find(|c| c.name == CONTAINER_NAME)?
        .image
        .clone()
}

/// The replica count a stored Deployment asks for (Kubernetes' default 1 when unset).
pub fn spec_replicas(d: &Deployment) -> i32 {
    d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
}

/// The Deployment controller's verdict that the rollout is stuck (Progressing False,
/// ProgressDeadlineExceeded), with its message.
pub fn deadline_exceeded(d: &Deployment) -> Option<String> {
    d.status
        .as_ref()?
        .conditions
        .iter()
        .flatten()
        .find(|c| {
            c.type_ == "Progressing"
                && c.status == "False"
                && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
        })
        .map(|c| c.message.clone().unwrap_or_default())
}

fn pod_template(isvc: &InferenceService, cfg: &Config) -> PodTemplateSpec {
    // User labels first, ours on top: the selector labels must not be overridden.
    let mut pod_labels = isvc.spec.pod_labels.clone();
    pod_labels.extend(labels(isvc));
    if let Some(v) = &isvc.spec.model.version {
        pod_labels.insert(LABEL_VERSION.into(), v.clone());
    }
    // Our Prometheus annotations first, the user's on top.
    let mut annotations = BTreeMap::from([
        ("prometheus.io/scrape".to_string(), "true".to_string()),
        ("prometheus.io/port".to_string(), SERVER_PORT.to_string()),
        ("prometheus.io/path".to_string(), "/metrics".to_string()),
        (
            "kubectl.kubernetes.io/default-container".to_string(),
            CONTAINER_NAME.to_string(),
        ),
    ]);
    annotations.extend(isvc.spec.pod_annotations.clone());

    let sched = scheduling(isvc);
    let term = termination(isvc);
    let mut volumes = vec![Volume {
        name: "tmp".into(),
        empty_dir: Some(EmptyDirVolumeSource {
            size_limit: Some(Quantity("1Gi".into())),
            medium: None,
        }),
        ..Default::default()
    }];
    if let Some(pvc) = &isvc.spec.model.pvc {
        volumes.push(Volume {
            name: "model".into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: pvc.claim_name.clone(),
                read_only: Some(true),
            }),
            ..Default::default()
        });
    }
    if isvc.spec.model.uri.is_some() {
        // The download lands here (ResNet50 is ~100 MB; the `.part` file is renamed, never
        // copied, so one file's size is what it takes).
        volumes.push(Volume {
            name: "model".into(),
            empty_dir: Some(EmptyDirVolumeSource {
                size_limit: Some(Quantity(FETCH_SIZE_LIMIT.into())),
                medium: None,
            }),
            ..Default::default()
        });
    }
    if let Some(ca) = &isvc.spec.model.ca_config_map {
        volumes.push(Volume {
            name: FETCH_CA_VOLUME.into(),
            config_map: Some(ConfigMapVolumeSource {
                name: ca.name.clone(),
                items: Some(vec![KeyToPath {
                    key: ca.key.clone(),
                    path: FETCH_CA_FILE_NAME.into(),
                    mode: None,
                }]),
                optional: Some(false),
                default_mode: None,
            }),
            ..Default::default()
        });
    }

    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(pod_labels),
            annotations: Some(annotations),
            ..Default::default()
        }),
        spec: Some(PodSpec {
            init_containers: isvc
                .spec
                .model
                .uri
                .as_ref()
                .map(|uri| vec![fetch_container(isvc, cfg, uri)]),
            containers: vec![container(isvc, cfg)],
            volumes: Some(volumes),
            image_pull_secrets: non_empty(isvc.spec.image_pull_secrets.clone()),
            service_account_name: isvc.spec.service_account_name.clone(),
            // The server never talks to the API server: no token unless a ServiceAccount was
            // chosen on purpose (e.g. for cloud credentials).
            automount_service_account_token: if isvc.spec.service_account_name.is_none() {
                Some(false)
            } else {
                None
            },
            enable_service_links: Some(false),
            termination_grace_period_seconds: Some(term.grace_period_seconds),
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                run_as_user: Some(RUN_AS_USER),
                run_as_group: Some(RUN_AS_USER),
                fs_group: Some(RUN_AS_USER),
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".into(),
                    localhost_profile: None,
                }),
                ..Default::default()
            }),
            node_selector: non_empty(sched.node_selector.clone()),
            tolerations: non_empty(tolerations(isvc)),
            affinity: sched.affinity.clone(),
            topology_spread_constraints: match &sched.topology_spread_constraints {
                Some(list) => non_empty(list.clone()),
                None => Some(default_topology_spread(isvc)),
            },
            priority_class_name: sched.priority_class_name.clone(),
            ..Default::default()
        }),
    }
}

fn container(isvc: &InferenceService, cfg: &Config) -> Container {
    let term = termination(isvc);
    let probes = isvc.spec.probes.clone().unwrap_or_default();
    let mut mounts = vec![VolumeMount {
        name: "tmp".into(),
        mount_path: "/tmp".into(),
        ..Default::default()
    }];
    if let Some(pvc) = &isvc.spec.model.pvc {
        mounts.push(VolumeMount {
            name: "model".into(),
            mount_path: pvc.mount_path.clone(),
            sub_path: pvc.sub_path.clone(),
            read_only: Some(true),
            ..Default::default()
        });
    }
    if isvc.spec.model.uri.is_some() {
        mounts.push(VolumeMount {
            name: "model".into(),
            mount_path: "/models".into(),
            read_only: Some(true),
            ..Default::default()
        });
    }
    Container {
        name: CONTAINER_NAME.into(),
        image: Some(image(isvc, cfg)),
        image_pull_policy: isvc.spec.image_pull_policy.map(|p| p.as_str().to_string()),
        ports: Some(vec![ContainerPort {
            name: Some(PORT_NAME.into()),
            container_port: SERVER_PORT,
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        env: Some(env(isvc)),
        resources: Some(resource_requirements(isvc)),
        startup_probe: Some(probes.startup.unwrap_or_else(default_startup_probe)),
        liveness_probe: Some(probes.liveness.unwrap_or_else(default_liveness_probe)),
        readiness_probe: Some(probes.readiness.unwrap_or_else(default_readiness_probe)),
        lifecycle: (term.pre_stop_delay_seconds > 0).then(|| Lifecycle {
            pre_stop: Some(LifecycleHandler {
                sleep: Some(SleepAction {
                    seconds: term.pre_stop_delay_seconds,
                }),
                ..Default::default()
            }),
            post_start: None,
            stop_signal: None,
        }),
        security_context: Some(restricted()),
        volume_mounts: Some(mounts),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Default::default()
    }
}

/// The restricted Pod Security profile, for every container of the pod.
fn restricted() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            add: None,
        }),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            localhost_profile: None,
        }),
        ..Default::default()
    }
}

/// Size limit of the emptyDir a downloaded model lands in.
pub const FETCH_SIZE_LIMIT: &str = "2Gi";

/// The volume and file of `spec.model.caConfigMap` in the download's init container.
const FETCH_CA_VOLUME: &str = "model-ca";
const FETCH_CA_DIR: &str = "/etc/inference-server/model-ca";
const FETCH_CA_FILE_NAME: &str = "ca.crt";

/// `inference-server fetch` from the same image: downloads `uri` into the `model` emptyDir,
/// checks it and exits; the server starts only after it succeeded. Its one-line error becomes
/// the container's termination message (FallbackToLogsOnError), which the status reports.
fn fetch_container(isvc: &InferenceService, cfg: &Config, uri: &str) -> Container {
    let model = &isvc.spec.model;
    let mut env = vec![
        env_var("MODEL_URI", uri),
        env_var("MODEL_PATH", FETCHED_MODEL_PATH),
    ];
    if let Some(sum) = &model.sha256 {
        env.push(env_var("MODEL_SHA256", sum));
    }
    let mut mounts = vec![
        VolumeMount {
            name: "model".into(),
            mount_path: "/models".into(),
            ..Default::default()
        },
        VolumeMount {
            name: "tmp".into(),
            mount_path: "/tmp".into(),
            ..Default::default()
        },
    ];
    if model.ca_config_map.is_some() {
        env.push(env_var(
            "FETCH_CA_FILE",
            format!("{FETCH_CA_DIR}/{FETCH_CA_FILE_NAME}"),
        ));
        mounts.push(VolumeMount {
            name: FETCH_CA_VOLUME.into(),
            mount_path: FETCH_CA_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        });
    }
    // The user's variables too (AWS_REGION, AWS_ENDPOINT_URL, credentials from a Secret), but
    // not over the download's own.
    let own: Vec<String> = env
        .iter()
        .map(|e| e.name.clone())
        .chain(["HF_TOKEN".to_string(), "FETCH_CA_FILE".to_string()])
        .collect();
    env.extend(
        isvc.spec
            .env
            .iter()
            .filter(|e| !own.contains(&e.name))
            .cloned(),
    );
    if let Some(secret) = &model.hf_token_secret {
        env.push(EnvVar {
            name: "HF_TOKEN".into(),
            value: None,
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: secret.name.clone(),
                    key: secret.key.clone(),
                    optional: Some(false),
                }),
                ..Default::default()
            }),
        });
    }
    Container {
        name: FETCH_CONTAINER_NAME.into(),
        image: Some(image(isvc, cfg)),
        image_pull_policy: isvc.spec.image_pull_policy.map(|p| p.as_str().to_string()),
        args: Some(vec!["fetch".into()]),
        env: Some(env),
        // The server's resources: an init container's count only while it runs, and the check
        // at the end loads the whole model as the server will. A GPU too: the CUDA build links
        // the driver's libcuda, which the NVIDIA runtime mounts only into GPU containers.
        resources: Some(resource_requirements(isvc)),
        security_context: Some(restricted()),
        volume_mounts: Some(mounts),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Default::default()
    }
}

fn env_var(name: &str, value: impl ToString) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.to_string()),
        value_from: None,
    }
}

/// The server's environment: the operator's variables, then `spec.env` (which overrides them,
/// except PORT and HOST).
pub fn env(isvc: &InferenceService) -> Vec<EnvVar> {
    let spec = &isvc.spec;
    let srv = server(isvc);
    let term = termination(isvc);
    let mut vars = vec![
        env_var("PORT", SERVER_PORT),
        env_var("HOST", "0.0.0.0"),
        env_var("MODEL_NAME", &spec.model.name),
    ];
    if let Some(v) = &spec.model.version {
        vars.push(env_var("MODEL_VERSION", v));
    }
    if let Some(p) = &spec.model.path {
        vars.push(env_var("MODEL_PATH", p));
    }
    if spec.model.uri.is_some() {
        vars.push(env_var("MODEL_PATH", FETCHED_MODEL_PATH));
    }
    let device = srv.device.unwrap_or(if gpus(isvc) > 0 {
        Device::Cuda
    } else {
        Device::Cpu
    });
    vars.push(env_var("DEVICE", device.as_str()));
    if let Some(n) = srv.max_batch_size {
        vars.push(env_var("MAX_BATCH_SIZE", n));
    }
    if let Some(n) = srv.max_queue {
        vars.push(env_var("MAX_QUEUE", n));
    }
    if let Some(n) = srv.threads.or_else(|| default_threads(isvc)) {
        vars.push(env_var("INFERENCE_THREADS", n));
    }
    if let Some(n) = srv.max_body_bytes {
        vars.push(env_var("MAX_BODY_BYTES", n));
    }
    if let Some(mib) = memory_limit_mib(isvc) {
        let (decode, bodies) = memory_budgets_mib(mib);
        vars.push(env_var("DECODE_MEMORY_MB", decode));
        vars.push(env_var("BODY_MEMORY_MB", bodies));
    }
    let grace = (term.grace_period_seconds - term.pre_stop_delay_seconds - SHUTDOWN_MARGIN)
        .max(MIN_SHUTDOWN_GRACE);
    vars.push(env_var("SHUTDOWN_GRACE_SECONDS", grace));
    // After the grace period the listener closes and in-flight requests get the margin, less a
    // second, so the server exits on its own before the kubelet's SIGKILL.
    vars.push(env_var("SHUTDOWN_TIMEOUT_SECONDS", SHUTDOWN_MARGIN - 1));
    if let Some(l) = &srv.log_level {
        vars.push(env_var("RUST_LOG", l));
    }
    for user in &spec.env {
        if user.name == "PORT" || user.name == "HOST" {
            continue;
        }
        match vars.iter_mut().find(|v| v.name == user.name) {
            Some(existing) => *existing = user.clone(),
            None => vars.push(user.clone()),
        }
    }
    vars
}

/// The container's memory limit in MiB, when it has one.
fn memory_limit_mib(isvc: &InferenceService) -> Option<u64> {
    let res = resources(isvc);
    let mem = res.limits.as_ref().and_then(|l| l.memory.as_ref())?;
    Some((quantity::parse_quantity(mem)? / (1u64 << 20) as f64) as u64)
}

/// The server's memory budgets (DECODE_MEMORY_MB, BODY_MEMORY_MB) for a memory limit: a quarter
/// of it for images being decoded and an eighth for bodies being received, so that with the
/// idle footprint (~0.4 GiB on a CPU) and a batch's activations the pod stays under its limit
/// whatever clients send. 2Gi (the default limit) gives the server's own defaults, 512 and 256.
pub fn memory_budgets_mib(limit_mib: u64) -> (u64, u64) {
    (
        (limit_mib / 4).clamp(64, 1 << 16),
        (limit_mib / 8).clamp(32, 1 << 15),
    )
}

/// Intra-op threads matching the CPU the pod gets: the CPU limit, else the request, rounded up.
/// `None` (the server's own default) when neither is known.
pub fn default_threads(isvc: &InferenceService) -> Option<i32> {
    let res = resources(isvc);
    let cpu = res
        .limits
        .as_ref()
        .and_then(|l| l.cpu.as_ref())
        .or_else(|| res.requests.as_ref().and_then(|r| r.cpu.as_ref()))?;
    let cores = quantity::parse_quantity(cpu)?;
    Some((cores.ceil() as i32).clamp(1, 1024))
}

/// Requests and limits, plus `nvidia.com/gpu` limits for `spec.gpu`.
pub fn resource_requirements(isvc: &InferenceService) -> ResourceRequirements {
    let res = resources(isvc);
    let to_map = |c: Option<&crate::crd::ComputeResources>| {
        let mut m = BTreeMap::new();
        if let Some(c) = c {
            if let Some(cpu) = &c.cpu {
                m.insert("cpu".to_string(), cpu.clone());
            }
            if let Some(mem) = &c.memory {
                m.insert("memory".to_string(), mem.clone());
            }
        }
        m
    };
    let requests = to_map(res.requests.as_ref());
    let mut limits = to_map(res.limits.as_ref());
    let gpu = gpus(isvc);
    if gpu > 0 {
        limits.insert(GPU_RESOURCE.into(), Quantity(gpu.to_string()));
    }
    ResourceRequirements {
        requests: non_empty(requests),
        limits: non_empty(limits),
        claims: None,
    }
}

fn tolerations(isvc: &InferenceService) -> Vec<Toleration> {
    let sched = scheduling(isvc);
    let mut list = sched.tolerations.clone();
    let gpu_toleration = Toleration {
        key: Some(GPU_RESOURCE.into()),
        operator: Some("Exists".into()),
        effect: Some("NoSchedule".into()),
        ..Default::default()
    };
    if gpus(isvc) > 0 && sched.gpu_toleration && !list.contains(&gpu_toleration) {
        list.push(gpu_toleration);
    }
    list
}

/// Spread over zones, then nodes, as a preference: a single-zone cluster still schedules.
pub fn default_topology_spread(isvc: &InferenceService) -> Vec<TopologySpreadConstraint> {
    let spread = |key: &str| TopologySpreadConstraint {
        topology_key: key.into(),
        max_skew: 1,
        when_unsatisfiable: "ScheduleAnyway".into(),
        label_selector: Some(LabelSelector {
            match_labels: Some(selector_labels(isvc)),
            match_expressions: None,
        }),
        match_label_keys: Some(vec!["pod-template-hash".into()]),
        ..Default::default()
    };
    vec![
        spread("topology.kubernetes.io/zone"),
        spread("kubernetes.io/hostname"),
    ]
}

fn http_probe(path: &str) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String(PORT_NAME.into()),
            scheme: Some("HTTP".into()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Startup: /ready succeeds once the weights are loaded and warmed up; allow 10 minutes.
pub fn default_startup_probe() -> Probe {
    Probe {
        period_seconds: Some(5),
        timeout_seconds: Some(2),
        failure_threshold: Some(120),
        success_threshold: Some(1),
        ..http_probe("/ready")
    }
}

/// Liveness: /health answers as long as the process is responsive.
pub fn default_liveness_probe() -> Probe {
    Probe {
        period_seconds: Some(10),
        timeout_seconds: Some(5),
        failure_threshold: Some(3),
        success_threshold: Some(1),
        ..http_probe("/health")
    }
}

/// Readiness: /ready is 503 while loading or draining.
pub fn default_readiness_probe() -> Probe {
    Probe {
        period_seconds: Some(5),
        timeout_seconds: Some(2),
        failure_threshold: Some(2),
        success_threshold: Some(1),
        ..http_probe("/ready")
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::builders::test_support::{fixture, from_yaml};

    fn pod_spec(d: &Deployment) -> &PodSpec {
        d.spec.as_ref().unwrap().template.spec.as_ref().unwrap()
    }

    fn env_of(d: &Deployment) -> BTreeMap<String, String> {
        pod_spec(d).containers[0]
            .env
            .iter()
            .flatten()
            .map(|e| (e.name.clone(), e.value.clone().unwrap_or_default()))
            .collect()
    }

    #[test]
    fn minimal_spec_gets_safe_defaults() {
        let isvc = fixture("minimal.yaml");
        let cfg = Config::default();
        let d = build(&isvc, &cfg);
        let spec = d.spec.as_ref().unwrap();
        assert_eq!(d.metadata.name.as_deref(), Some("resnet50"));
        assert_eq!(d.metadata.namespace.as_deref(), Some("ml"));
        assert_eq!(d.metadata.owner_references.as_ref().unwrap().len(), 1);
        assert_eq!(spec.replicas, Some(1));
        assert_eq!(spec.selector.match_labels.as_ref().unwrap().len(), 1);
        let ru = spec
            .strategy
            .as_ref()
            .unwrap()
            .rolling_update
            .as_ref()
            .unwrap();
        assert_eq!(ru.max_surge, Some(IntOrString::String("25%".into())));
        assert_eq!(ru.max_unavailable, Some(IntOrString::Int(0)));
        assert_eq!(spec.progress_deadline_seconds, Some(600));

        let template_labels = spec
            .template
            .metadata
            .as_ref()
            .unwrap()
            .labels
            .as_ref()
            .unwrap();
        for (k, v) in spec.selector.match_labels.as_ref().unwrap() {
            assert_eq!(
                template_labels.get(k),
                Some(v),
                "template must match the selector"
            );
        }

        let pod = pod_spec(&d);
        assert_eq!(pod.termination_grace_period_seconds, Some(45));
        assert_eq!(pod.automount_service_account_token, Some(false));
        assert_eq!(pod.enable_service_links, Some(false));
        let c = &pod.containers[0];
        assert_eq!(c.name, "server");
        assert_eq!(c.image.as_deref(), Some(cfg.default_image.as_str()));
        assert_eq!(c.image_pull_policy, None);
        let port = &c.ports.as_ref().unwrap()[0];
        assert_eq!(
            (port.name.as_deref(), port.container_port),
            (Some("http"), 8080)
        );
        assert_eq!(
            c.lifecycle
                .as_ref()
                .unwrap()
                .pre_stop
                .as_ref()
                .unwrap()
                .sleep
                .as_ref()
                .unwrap()
                .seconds,
            10
        );
        // Probes: startup covers model load, then liveness /health and readiness /ready.
        let path = |p: &Option<Probe>| {
            p.as_ref()
                .unwrap()
                .http_get
                .as_ref()
                .unwrap()
                .path
                .clone()
                .unwrap()
        };
        assert_eq!(path(&c.startup_probe), "/ready");
        assert_eq!(path(&c.liveness_probe), "/health");
        assert_eq!(path(&c.readiness_probe), "/ready");
        let startup = c.startup_probe.as_ref().unwrap();
        assert!(startup.period_seconds.unwrap() * startup.failure_threshold.unwrap() >= 600);
        // Default resources, threads from the CPU request.
        let res = c.resources.as_ref().unwrap();
        assert_eq!(res.requests.as_ref().unwrap()["cpu"], Quantity("1".into()));
        assert_eq!(
            res.requests.as_ref().unwrap()["memory"],
            Quantity("1Gi".into())
        );
        assert_eq!(
            res.limits.as_ref().unwrap()["memory"],
            Quantity("2Gi".into())
        );
        assert!(!res.limits.as_ref().unwrap().contains_key(GPU_RESOURCE));
        let env = env_of(&d);
        assert_eq!(env["PORT"], "8080");
        assert_eq!(env["HOST"], "0.0.0.0");
        assert_eq!(env["MODEL_NAME"], "resnet50");
        assert_eq!(env["DEVICE"], "cpu");
        assert_eq!(env["INFERENCE_THREADS"], "1");
        assert_eq!(env["SHUTDOWN_GRACE_SECONDS"], "30");
        assert_eq!(env["SHUTDOWN_TIMEOUT_SECONDS"], "4");
        // Memory budgets from the 2Gi limit: the server's own defaults.
        assert_eq!(env["DECODE_MEMORY_MB"], "512");
        assert_eq!(env["BODY_MEMORY_MB"], "256");
        assert!(!env.contains_key("MODEL_PATH"));
        assert!(!env.contains_key("MAX_BATCH_SIZE"));
        // Default spread over zones then nodes, soft.
        let tsc = pod.topology_spread_constraints.as_ref().unwrap();
        assert_eq!(tsc[0].topology_key, "topology.kubernetes.io/zone");
        assert_eq!(tsc[0].when_unsatisfiable, "ScheduleAnyway");
        assert_eq!(tsc[1].topology_key, "kubernetes.io/hostname");
        assert!(pod.tolerations.is_none());
    }

    #[test]
    fn pod_security_is_restricted() {
        let isvc = fixture("minimal.yaml");
        let d = build(&isvc, &Config::default());
        let pod = pod_spec(&d);
        let psc = pod.security_context.as_ref().unwrap();
        assert_eq!(psc.run_as_non_root, Some(true));
        assert_ne!(psc.run_as_user, Some(0));
        assert_eq!(
            psc.seccomp_profile.as_ref().unwrap().type_,
            "RuntimeDefault"
        );
        for c in &pod.containers {
            let sc = c.security_context.as_ref().unwrap();
            assert_eq!(sc.allow_privilege_escalation, Some(false));
            assert_eq!(sc.read_only_root_filesystem, Some(true));
            assert_eq!(sc.run_as_non_root, Some(true));
            assert_eq!(
                sc.capabilities.as_ref().unwrap().drop.as_deref(),
                Some(&["ALL".to_string()][..])
            );
            assert!(sc.privileged.is_none());
            // A read-only root needs a writable /tmp.
            assert!(
                c.volume_mounts
                    .iter()
                    .flatten()
                    .any(|m| m.mount_path == "/tmp")
            );
        }
        // Restricted forbids hostPath and host namespaces.
        assert!(pod.volumes.iter().flatten().all(|v| v.host_path.is_none()));
        assert!(pod.host_network.is_none() && pod.host_pid.is_none() && pod.host_ipc.is_none());
    }

    #[test]
    fn model_uri_downloads_in_an_init_container_before_the_server() {
        let isvc = fixture("model-uri.yaml");
        let d = build(&isvc, &Config::default());
        let pod = pod_spec(&d);
        let init = pod.init_containers.as_ref().expect("an init container");
        assert_eq!(init.len(), 1);
        let fetch = &init[0];
        assert_eq!(fetch.name, FETCH_CONTAINER_NAME);
        assert_eq!(
            fetch.image, pod.containers[0].image,
            "the server's own image"
        );
        assert_eq!(fetch.args.as_deref(), Some(&["fetch".to_string()][..]));
        let env: BTreeMap<_, _> = fetch
            .env
            .iter()
            .flatten()
            .map(|e| (e.name.as_str(), e))
            .collect();
        assert_eq!(
            env["MODEL_URI"].value.as_deref(),
            Some("hf://timm/resnet50.tv_in1k/model.safetensors")
        );
        assert_eq!(env["MODEL_PATH"].value.as_deref(), Some(FETCHED_MODEL_PATH));
        assert_eq!(env["MODEL_SHA256"].value.as_deref().map(str::len), Some(64));
        // The token comes from the Secret, never as a literal value.
        let token = env["HF_TOKEN"].value_from.as_ref().unwrap();
        let key = token.secret_key_ref.as_ref().unwrap();
        assert_eq!((key.name.as_str(), key.key.as_str()), ("hf-token", "token"));
        assert!(env["HF_TOKEN"].value.is_none());
        // Restricted like the server; writes only to the model emptyDir (and /tmp).
        let sc = fetch.security_context.as_ref().unwrap();
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        let mount = |c: &Container, path: &str| {
            c.volume_mounts
                .iter()
                .flatten()
                .find(|m| m.mount_path == path)
                .cloned()
        };
        assert_eq!(mount(fetch, "/models").unwrap().read_only, None);
        assert_eq!(
            fetch.termination_message_policy.as_deref(),
            Some("FallbackToLogsOnError")
        );
        // The server reads the same file, read-only.
        let server = &pod.containers[0];
        assert_eq!(mount(server, "/models").unwrap().read_only, Some(true));
        assert_eq!(env_of(&d)["MODEL_PATH"], FETCHED_MODEL_PATH);
        let vol = pod
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == "model")
            .unwrap();
        assert_eq!(
            vol.empty_dir.as_ref().unwrap().size_limit,
            Some(Quantity(FETCH_SIZE_LIMIT.into()))
        );
        // Without a URI: no init container.
        let plain = build(&fixture("minimal.yaml"), &Config::default());
        assert!(pod_spec(&plain).init_containers.is_none());
    }

    #[test]
    fn model_ca_config_map_reaches_the_download_only() {
        let mut isvc = fixture("model-uri.yaml");
        let plain = build(&isvc, &Config::default());
        let fetch_env = |d: &Deployment| -> BTreeMap<String, Option<String>> {
            pod_spec(d).init_containers.as_ref().unwrap()[0]
                .env
                .iter()
                .flatten()
                .map(|e| (e.name.clone(), e.value.clone()))
                .collect()
        };
        assert!(!fetch_env(&plain).contains_key("FETCH_CA_FILE"));
        isvc.spec.model.ca_config_map = Some(crate::crd::ConfigMapKeyRef {
            name: "mirror-ca".into(),
            key: "bundle.pem".into(),
        });
        let d = build(&isvc, &Config::default());
        let pod = pod_spec(&d);
        assert_eq!(
            fetch_env(&d)["FETCH_CA_FILE"].as_deref(),
            Some("/etc/inference-server/model-ca/ca.crt")
        );
        let vol = pod
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == FETCH_CA_VOLUME)
            .expect("the CA volume");
        let cm = vol.config_map.as_ref().unwrap();
        assert_eq!(cm.name, "mirror-ca");
        assert_eq!(
            cm.optional,
            Some(false),
            "a missing ConfigMap holds the pod"
        );
        let item = &cm.items.as_ref().unwrap()[0];
        assert_eq!(
            (item.key.as_str(), item.path.as_str()),
            ("bundle.pem", "ca.crt")
        );
        let fetch = &pod.init_containers.as_ref().unwrap()[0];
        let m = fetch
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| m.name == FETCH_CA_VOLUME)
            .unwrap();
        assert_eq!(
            (m.mount_path.as_str(), m.read_only),
            ("/etc/inference-server/model-ca", Some(true))
        );
        // The user's variables reach the download too, not over its own.
        isvc.spec.env = serde_json::from_value(serde_json::json!([
            {"name": "AWS_REGION", "value": "eu-west-1"},
            {"name": "MODEL_URI", "value": "https://elsewhere.example/w"},
            {"name": "AWS_SECRET_ACCESS_KEY",
             "valueFrom": {"secretKeyRef": {"name": "s3", "key": "secret"}}},
        ]))
        .unwrap();
        let d2 = build(&isvc, &Config::default());
        let env = fetch_env(&d2);
        assert_eq!(env["AWS_REGION"].as_deref(), Some("eu-west-1"));
        assert_eq!(
            env["MODEL_URI"].as_deref(),
            Some("hf://timm/resnet50.tv_in1k/model.safetensors")
        );
        assert!(env.contains_key("AWS_SECRET_ACCESS_KEY"));
        let names: Vec<_> = pod_spec(&d2).init_containers.as_ref().unwrap()[0]
            .env
            .iter()
            .flatten()
            .map(|e| e.name.clone())
            .collect();
        assert_eq!(
            names.iter().filter(|n| *n == "MODEL_URI").count(),
            1,
            "{names:?}"
        );
        // The server never sees it.
        assert!(
            pod.containers[0]
                .volume_mounts
                .iter()
                .flatten()
                .all(|m| m.name != FETCH_CA_VOLUME)
        );
    }

    #[test]
    fn full_spec_maps_every_field() {
        let isvc = fixture("full.yaml");
        let d = build(&isvc, &Config::default());
        let spec = d.spec.as_ref().unwrap();
        let pod = pod_spec(&d);
        let c = &pod.containers[0];
        assert_eq!(
            c.image.as_deref(),
            Some("registry.example.com/ml/inference-server:1.2.3")
        );
        assert_eq!(c.image_pull_policy.as_deref(), Some("Always"));
        assert_eq!(pod.image_pull_secrets.as_ref().unwrap()[0].name, "regcred");
        assert_eq!(pod.service_account_name.as_deref(), Some("inference"));
        assert_eq!(pod.automount_service_account_token, None);
        assert_eq!(pod.priority_class_name.as_deref(), Some("high-priority"));
        assert_eq!(
            pod.node_selector.as_ref().unwrap()["node.kubernetes.io/instance-type"],
            "g5.xlarge"
        );
        assert!(pod.affinity.as_ref().unwrap().node_affinity.is_some());
        // Custom spread replaces the default.
        let tsc = pod.topology_spread_constraints.as_ref().unwrap();
        assert_eq!(tsc.len(), 1);
        assert_eq!(tsc[0].when_unsatisfiable, "DoNotSchedule");
        // User toleration plus the GPU toleration.
        let tol = pod.tolerations.as_ref().unwrap();
        assert_eq!(tol.len(), 2);
        assert!(
            tol.iter()
                .any(|t| t.key.as_deref() == Some("nvidia.com/gpu")
                    && t.effect.as_deref() == Some("NoSchedule"))
        );
        // GPU limit, resources as given.
        let res = c.resources.as_ref().unwrap();
        assert_eq!(
            res.limits.as_ref().unwrap()[GPU_RESOURCE],
            Quantity("1".into())
        );
        assert_eq!(
            res.limits.as_ref().unwrap()["cpu"],
            Quantity("2500m".into())
        );
        assert_eq!(res.requests.as_ref().unwrap()["cpu"], Quantity("2".into()));
        // Model from a PVC, mounted read-only.
        let mount = c
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.name == "model")
            .unwrap();
        assert_eq!(mount.mount_path, "/models");
        assert_eq!(mount.sub_path.as_deref(), Some("resnet50"));
        assert_eq!(mount.read_only, Some(true));
        let vol = pod
            .volumes
            .as_ref()
            .unwrap()
            .iter()
            .find(|v| v.name == "model")
            .unwrap();
        assert_eq!(
            vol.persistent_volume_claim.as_ref().unwrap().claim_name,
            "model-weights"
        );
        // Env: server settings, device from the GPU, user env overriding ours.
        let env = env_of(&d);
        assert_eq!(env["MODEL_NAME"], "resnet50");
        assert_eq!(env["MODEL_VERSION"], "2");
        assert_eq!(env["MODEL_PATH"], "/models/resnet50.safetensors");
        assert_eq!(env["DEVICE"], "cuda");
        assert_eq!(env["MAX_BATCH_SIZE"], "16");
        assert_eq!(env["MAX_QUEUE"], "256");
        assert_eq!(env["INFERENCE_THREADS"], "3");
        assert_eq!(env["MAX_BODY_BYTES"], "20971520");
        assert_eq!(env["RUST_LOG"], "debug");
        assert_eq!(env["SHUTDOWN_GRACE_SECONDS"], "40");
        assert_eq!(env["EXTRA"], "1");
        assert_eq!(memory_budgets_mib(512), (128, 64));
        assert_eq!(
            memory_budgets_mib(100),
            (64, 32),
            "never below a working floor"
        );
        assert_eq!(env["PORT"], "8080");
        // Labels: user labels kept, ours win.
        let labels = spec
            .template
            .metadata
            .as_ref()
            .unwrap()
            .labels
            .as_ref()
            .unwrap();
        assert_eq!(labels["team"], "vision");
        assert_eq!(labels["app.kubernetes.io/instance"], "resnet50");
        assert_eq!(labels["app.kubernetes.io/version"], "2");
        let ann = spec
            .template
            .metadata
            .as_ref()
            .unwrap()
            .annotations
            .as_ref()
            .unwrap();
        assert_eq!(
            ann["prometheus.io/scrape"], "false",
            "user annotations override ours"
        );
        // Rollout and termination.
        let ru = spec
            .strategy
            .as_ref()
            .unwrap()
            .rolling_update
            .as_ref()
            .unwrap();
        assert_eq!(ru.max_surge, Some(IntOrString::Int(1)));
        assert_eq!(ru.max_unavailable, Some(IntOrString::String("10%".into())));
        assert_eq!(spec.progress_deadline_seconds, Some(900));
        assert_eq!(pod.termination_grace_period_seconds, Some(60));
        // Probes: readiness overridden, the others default.
        let rp = c.readiness_probe.as_ref().unwrap();
        assert_eq!(rp.period_seconds, Some(3));
        assert_eq!(
            rp.http_get.as_ref().unwrap().path.as_deref(),
            Some("/v2/health/ready")
        );
        assert_eq!(c.liveness_probe, Some(default_liveness_probe()));
    }

    #[test]
    fn user_env_overrides_operator_env() {
        let isvc = from_yaml(
            r#"
apiVersion: serving.inference-server.dev/v1alpha1
kind: InferenceService
metadata: {name: a}
spec:
  model: {name: resnet50}
  server: {maxBatchSize: 8}
  env:
    - {name: MAX_BATCH_SIZE, value: "4"}
    - {name: HOST, value: "127.0.0.1"}
    - name: FROM_SECRET
      valueFrom: {secretKeyRef: {name: s, key: k}}
"#,
        );
        let env = super::env(&isvc);
        let get = |n: &str| env.iter().filter(|e| e.name == n).collect::<Vec<_>>();
        assert_eq!(get("MAX_BATCH_SIZE").len(), 1);
        assert_eq!(get("MAX_BATCH_SIZE")[0].value.as_deref(), Some("4"));
        assert_eq!(get("HOST")[0].value.as_deref(), Some("0.0.0.0"));
        assert!(get("FROM_SECRET")[0].value_from.is_some());
    }

    #[test]
    fn gpu_toleration_can_be_turned_off() {
        let isvc = from_yaml(
            r#"
apiVersion: serving.inference-server.dev/v1alpha1
kind: InferenceService
metadata: {name: a}
spec:
  model: {name: resnet50}
  gpu: 2
  scheduling: {gpuToleration: false, topologySpreadConstraints: []}
"#,
        );
        let d = build(&isvc, &Config::default());
        let pod = pod_spec(&d);
        assert!(pod.tolerations.is_none());
        assert!(
            pod.topology_spread_constraints.is_none(),
            "an empty list turns spreading off"
        );
        let limits = pod.containers[0]
            .resources
            .as_ref()
            .unwrap()
            .limits
            .clone()
            .unwrap();
        assert_eq!(limits[GPU_RESOURCE], Quantity("2".into()));
        assert_eq!(env_of(&d)["DEVICE"], "cuda");
    }

    #[test]
    fn no_pre_stop_hook_when_delay_is_zero() {
        let isvc = from_yaml(
            r#"
apiVersion: serving.inference-server.dev/v1alpha1
kind: InferenceService
metadata: {name: a}
spec:
  model: {name: resnet50}
  termination: {preStopDelaySeconds: 0, gracePeriodSeconds: 3}
"#,
        );
        let d = build(&isvc, &Config::default());
        assert!(pod_spec(&d).containers[0].lifecycle.is_none());
        assert_eq!(env_of(&d)["SHUTDOWN_GRACE_SECONDS"], "1");
    }

    #[test]
    fn the_default_image_stays_until_the_template_changes() {
        let old = Config {
            default_image: "ghcr.io/x/inference-server:0.1.0".into(),
            ..Config::default()
        };
        let new = Config {
            default_image: "ghcr.io/x/inference-server:0.2.0".into(),
            ..Config::default()
        };
        let isvc = fixture("minimal.yaml");
        let live = build(&isvc, &old);
        assert_eq!(
            live.metadata.annotations.as_ref().unwrap()[ANNOTATION_DEFAULT_IMAGE],
            old.default_image
        );
        let image = |cfg: &Config| {
            build(&isvc, cfg)
                .spec
                .unwrap()
                .template
                .spec
                .unwrap()
                .containers[0]
                .image
                .clone()
        };
        // A new operator with a new default: the running image stays.
        let cfg = pinned_config(&isvc, &new, Some(&live), false);
        assert_eq!(image(&cfg), Some(old.default_image.clone()));
        // Unless the administrator opts in, or there is nothing running yet.
        assert_eq!(pinned_config(&isvc, &new, Some(&live), true), new);
        assert_eq!(pinned_config(&isvc, &new, None, false), new);
        // A spec change that changes the pod template takes the new default with it.
        let mut changed = isvc.clone();
        changed.spec.model.version = Some("2".into());
        assert_eq!(pinned_config(&changed, &new, Some(&live), false), new);
        // spec.image always wins, and a Deployment that ran spec.image is not pinned to it when
        // spec.image is removed.
        let mut explicit = isvc.clone();
        explicit.spec.image = Some("ecr.example/resnet:3".into());
        assert_eq!(pinned_config(&explicit, &new, Some(&live), false), new);
        let ran_explicit = build(&explicit, &old);
        assert!(ran_explicit.metadata.annotations.is_none());
        assert_eq!(pinned_config(&isvc, &new, Some(&ran_explicit), false), new);
    }

    #[test]
    fn replicas_follow_the_spec_within_the_autoscaler_bounds() {
        let count = |yaml: &str| replicas(&from_yaml(yaml));
        let base = "apiVersion: serving.inference-server.dev/v1alpha1\nkind: InferenceService\nmetadata: {name: a}\nspec:\n  model: {name: resnet50}\n";
        // No replicas: the schema's default, 1.
        assert_eq!(count(base), 1);
        assert_eq!(count(&format!("{base}  replicas: 0\n")), 0);
        assert_eq!(count(&format!("{base}  replicas: 7\n")), 7);
        // Autoscaling: the HPA's count (spec.replicas), held in [min, max] until its first write.
        let auto = format!("{base}  autoscaling: {{minReplicas: 2, maxReplicas: 10}}\n");
        assert_eq!(count(&auto), 2);
        assert_eq!(count(&format!("{auto}  replicas: 7\n")), 7);
        assert_eq!(count(&format!("{auto}  replicas: 30\n")), 10);
        assert_eq!(count(&format!("{auto}  replicas: 0\n")), 2);
        let d = build(
            &from_yaml(&format!("{auto}  replicas: 5\n")),
            &Config::default(),
        );
        assert_eq!(d.spec.unwrap().replicas, Some(5));
    }
}
