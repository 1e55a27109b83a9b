//! Pure validation of an InferenceService, before anything is built or applied.
//!
//! It repeats the schema's CEL rules (defence in depth: an older CRD may be installed) and adds
//! what the schema cannot express: parsed quantities, requests against limits, autoscaling
//! targets that need requests. A failure here sets `Degraded=True` (reason `InvalidSpec`), emits
//! a Warning event and waits for the next spec change: no crash, no retry loop.

use std::fmt;

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use crate::builders::{resources, rollout, service_spec, termination};
use crate::crd::{ComputeResources, Device, InferenceService, ServiceType};
use crate::quantity;

/// One problem with the spec, phrased for the user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Issue {
    /// JSON path of the field, e.g. `spec.autoscaling.minReplicas`.
    pub field: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl fmt::Display for Issue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// What the cluster's administrator lets InferenceServices use (operator flags; empty lists
/// allow everything). Whoever may create an InferenceService may in effect create Deployments:
/// these lists bound the image and the pods' API identity.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    /// Prefixes that `spec.image` must start with, e.g. `123456789012.dkr.ecr.us-east-1.amazonaws.com/`.
    pub allowed_image_prefixes: Vec<String>,
    /// Names `spec.serviceAccountName` may take (the namespace's `default` is always allowed).
    pub allowed_service_accounts: Vec<String>,
}

/// Checks the spec against the administrator's [`Policy`] (reason `NotAllowed`).
pub fn check_policy(isvc: &InferenceService, policy: &Policy) -> Result<(), Vec<Issue>> {
    let mut issues = Vec::new();
    if let Some(image) = &isvc.spec.image
        && !policy.allowed_image_prefixes.is_empty()
        && !policy
            .allowed_image_prefixes
            .iter()
            .any(|p| image.starts_with(p.as_str()))
    {
        issues.push(Issue {
            field: "spec.image".into(),
            message: format!(
                "{image} is not from an allowed registry (the operator allows: {})",
                policy.allowed_image_prefixes.join(", ")
            ),
        });
    }
    if let Some(sa) = &isvc.spec.service_account_name
        && sa != "default"
        && !policy.allowed_service_accounts.is_empty()
        && !policy.allowed_service_accounts.contains(sa)
    {
        issues.push(Issue {
            field: "spec.serviceAccountName".into(),
            message: format!(
                "{sa} is not an allowed ServiceAccount (the operator allows: default, {})",
                policy.allowed_service_accounts.join(", ")
            ),
        });
    }
    if issues.is_empty() {
        Ok(())
    } else {
        Err(issues)
    }
}

/// All issues in one line, for a condition message or an event note.
pub fn summarize(issues: &[Issue]) -> String {
    issues
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Checks the spec. `Ok(())` when the operator can build the children.
pub fn validate(isvc: &InferenceService) -> Result<(), Vec<Issue>> {
    let mut issues = Vec::new();
    let mut issue = |field: &str, message: String| {
        issues.push(Issue {
            field: field.into(),
            message,
        })
    };
    let spec = &isvc.spec;

    let name = isvc.name_any();
    if !is_dns1035_label(&name) {
        issue(
            "metadata.name",
            format!(
                "{name:?} must be a DNS-1035 label (at most 63 lowercase letters, digits and '-', starting with a letter): it also names the Service"
            ),
        );
    }

    if spec.model.name.trim().is_empty() {
        issue("spec.model.name", "must not be empty".into());
    }
    if let Some(path) = &spec.model.path
        && !path.starts_with('/')
    {
        issue(
            "spec.model.path",
            format!("{path:?} must be an absolute path"),
        );
    }
    if let Some(pvc) = &spec.model.pvc {
        match &spec.model.path {
            Some(path) if path.starts_with(&format!("{}/", pvc.mount_path)) => {}
            _ => issue(
                "spec.model.path",
                format!(
                    "must be set to a file inside model.pvc.mountPath ({}) when model.pvc is set",
                    pvc.mount_path
                ),
            ),
        }
        if let Some(sub) = &pvc.sub_path
            && (sub.starts_with('/') || sub.contains(".."))
        {
            issue(
                "spec.model.pvc.subPath",
                format!("{sub:?} must be a relative path without '..'"),
            );
        }
    }

    if let Some(uri) = &spec.model.uri {
        if spec.model.path.is_some() || spec.model.pvc.is_some() {
            issue(
                "spec.model.uri",
                "cannot be combined with model.path or model.pvc: the weights come from one place"
                    .into(),
            );
        }
        if !["https://", "hf://", "s3://"]
            .iter()
            .any(|s| uri.starts_with(s))
        {
            issue(
                "spec.model.uri",
                format!("{uri:?} must start with https://, hf:// or s3://"),
            );
        }
    }
    if spec.model.sha256.is_some() && spec.model.uri.is_none() {
        issue(
            "spec.model.sha256",
            "checks a download: it needs model.uri".into(),
        );
    }
    if spec.model.hf_token_secret.is_some()
        && !spec
            .model
            .uri
            .as_deref()
            .is_some_and(|u| u.starts_with("hf://"))
    {
        issue("spec.model.hfTokenSecret", "is for hf:// URIs".into());
    }
    if spec.model.ca_config_map.is_some() && spec.model.uri.is_none() {
        issue(
            "spec.model.caConfigMap",
            "verifies the server of a download: it needs model.uri".into(),
        );
    }

    if spec.image.as_deref().is_some_and(|i| i.trim().is_empty()) {
        issue(
            "spec.image",
            "must not be empty; remove it to use the default image".into(),
        );
    }
    if spec.replicas < 0 {
        issue(
            "spec.replicas",
            format!("{} must not be negative", spec.replicas),
        );
    }
    if let Some(probes) = &spec.probes {
        for (name, probe) in [
            ("liveness", &probes.liveness),
            ("readiness", &probes.readiness),
            ("startup", &probes.startup),
        ] {
            let Some(p) = probe else { continue };
            let http_host = p.http_get.as_ref().and_then(|h| h.host.as_ref());
            let tcp_host = p.tcp_socket.as_ref().and_then(|t| t.host.as_ref());
            if http_host.or(tcp_host).is_some() {
                issue(
                    &format!("spec.probes.{name}"),
                    "must not set httpGet.host or tcpSocket.host: the kubelet probes the pod's own IP".into(),
                );
            }
        }
    }
    if let Some(g) = spec.gpu
        && g < 0
    {
        issue("spec.gpu", format!("{g} must not be negative"));
    }
    let spreads = spec.scheduling.as_ref();
    for (i, c) in spreads
        .and_then(|s| s.topology_spread_constraints.as_deref())
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        if c.max_skew < 1 {
            issue(
                &format!("spec.scheduling.topologySpreadConstraints[{i}].maxSkew"),
                format!("{} must be at least 1", c.max_skew),
            );
        }
    }
    if spec.gpu.unwrap_or(0) > 0 && spec.server.as_ref().and_then(|s| s.device) == Some(Device::Cpu)
    {
        issue(
            "spec.server.device",
            "is 'cpu' but spec.gpu requests GPUs: set 'cuda' or 'auto', or remove spec.gpu".into(),
        );
    }

    // Resources: parseable, requests within limits.
    let res = resources(isvc);
    let parsed = |c: Option<&ComputeResources>, which: &str, issues: &mut Vec<Issue>| {
        let mut out = (None, None);
        if let Some(c) = c {
            for (kind, q, slot) in [
                ("cpu", &c.cpu, &mut out.0),
                ("memory", &c.memory, &mut out.1),
            ] {
                if let Some(q) = q {
                    match quantity::parse_quantity(q) {
                        Some(v) if v > 0.0 => *slot = Some(v),
                        Some(_) => issues.push(Issue {
                            field: format!("spec.resources.{which}.{kind}"),
                            message: format!("{:?} must be greater than zero", q.0),
                        }),
                        None => issues.push(Issue {
                            field: format!("spec.resources.{which}.{kind}"),
                            message: format!(
                                "{:?} is not a quantity (e.g. 500m, 2, 512Mi, 2Gi)",
                                q.0
                            ),
                        }),
                    }
                }
            }
        }
        out
    };
    let (req_cpu, req_mem) = parsed(res.requests.as_ref(), "requests", &mut issues);
    let (lim_cpu, lim_mem) = parsed(res.limits.as_ref(), "limits", &mut issues);
    for (kind, req, lim) in [("cpu", req_cpu, lim_cpu), ("memory", req_mem, lim_mem)] {
        if let (Some(r), Some(l)) = (req, lim)
            && r > l
        {
            issues.push(Issue {
                field: format!("spec.resources.requests.{kind}"),
                message: format!("must be less than or equal to spec.resources.limits.{kind}"),
            });
        }
    }
    let mut issue = |field: &str, message: String| {
        issues.push(Issue {
            field: field.into(),
            message,
        })
    };

    if let Some(auto) = &spec.autoscaling {
        if auto.min_replicas < 1 {
            issue(
                "spec.autoscaling.minReplicas",
                format!("{} must be at least 1", auto.min_replicas),
            );
        }
        if auto.max_replicas < auto.min_replicas {
            issue(
                "spec.autoscaling.maxReplicas",
                format!(
                    "{} must be greater than or equal to minReplicas ({})",
                    auto.max_replicas, auto.min_replicas
                ),
            );
        }
        for (field, v) in [
            (
                "spec.autoscaling.targetCPUUtilizationPercentage",
                auto.target_cpu_utilization_percentage,
            ),
            (
                "spec.autoscaling.targetMemoryUtilizationPercentage",
                auto.target_memory_utilization_percentage,
            ),
        ] {
            if let Some(v) = v
                && !(1..=100).contains(&v)
            {
                issue(field, format!("{v} must be between 1 and 100"));
            }
        }
        if let Some(v) = auto.target_requests_per_second
            && v < 1
        {
            issue(
                "spec.autoscaling.targetRequestsPerSecond",
                format!("{v} must be at least 1"),
            );
        }
        let cpu_target = auto.target_cpu_utilization_percentage.is_some()
            || (auto.target_memory_utilization_percentage.is_none()
                && auto.target_requests_per_second.is_none());
        let has_cpu_request = res.requests.as_ref().and_then(|r| r.cpu.as_ref()).is_some();
        if cpu_target && !has_cpu_request {
            issue(
                "spec.resources.requests.cpu",
                "is required for CPU utilisation autoscaling (the HPA measures utilisation against the request)".into(),
            );
        }
        let has_mem_request = res
            .requests
            .as_ref()
            .and_then(|r| r.memory.as_ref())
            .is_some();
        if auto.target_memory_utilization_percentage.is_some() && !has_mem_request {
            issue(
                "spec.resources.requests.memory",
                "is required for memory utilisation autoscaling (the HPA measures utilisation against the request)".into(),
            );
        }
    }

    let svc = service_spec(isvc);
    if !(1..=65535).contains(&svc.port) {
        issue(
            "spec.service.port",
            format!("{} must be between 1 and 65535", svc.port),
        );
    }
    if let Some(np) = svc.node_port {
        if svc.type_ == ServiceType::ClusterIP {
            issue(
                "spec.service.nodePort",
                "can only be set when service.type is NodePort or LoadBalancer".into(),
            );
        }
        if !(1..=65535).contains(&np) {
            issue(
                "spec.service.nodePort",
                format!("{np} must be between 1 and 65535"),
            );
        }
    }
    if svc.type_ != ServiceType::LoadBalancer
        && (svc.load_balancer_class.is_some() || svc.load_balancer_source_ranges.is_some())
    {
        issue(
            "spec.service",
            "loadBalancerClass and loadBalancerSourceRanges need service.type LoadBalancer".into(),
        );
    }

    let ro = rollout(isvc);
    let surge = int_or_percent(&ro.max_surge);
    let unavailable = int_or_percent(&ro.max_unavailable);
    match (surge, unavailable) {
        (None, _) => issue(
            "spec.rollout.maxSurge",
            "must be a number of pods (e.g. 1) or a percentage (e.g. '25%')".into(),
        ),
        (_, None) => issue(
            "spec.rollout.maxUnavailable",
            "must be a number of pods (e.g. 1) or a percentage (e.g. '25%')".into(),
        ),
        (Some(s), Some(u)) => {
            if s.0 == 0 && u.0 == 0 {
                issue(
                    "spec.rollout",
                    "maxSurge and maxUnavailable cannot both be 0".into(),
                );
            }
            if u.1 && u.0 > 100 {
                issue("spec.rollout.maxUnavailable", "must not exceed 100%".into());
            }
        }
    }
    if ro.blue_green.is_some() && ro.strategy != crate::crd::RolloutStrategy::BlueGreen {
        issue(
            "spec.rollout.blueGreen",
            "needs rollout.strategy: BlueGreen".into(),
        );
    }
    if ro
        .blue_green
        .as_ref()
        .is_some_and(|b| b.scale_down_delay_seconds < 0)
    {
        issue(
            "spec.rollout.blueGreen.scaleDownDelaySeconds",
            "must not be negative".into(),
        );
    }

    let term = termination(isvc);
    if term.pre_stop_delay_seconds < 0 {
        issue(
            "spec.termination.preStopDelaySeconds",
            "must not be negative".into(),
        );
    }
    if term.grace_period_seconds <= term.pre_stop_delay_seconds {
        issue(
            "spec.termination.gracePeriodSeconds",
            format!(
                "{} must be greater than preStopDelaySeconds ({}), so the server has time to finish requests after SIGTERM",
                term.grace_period_seconds, term.pre_stop_delay_seconds
            ),
        );
    }

    for e in &spec.env {
        if e.name == "PORT" || e.name == "HOST" {
            issue(
                "spec.env",
                format!(
                    "must not set {}: the operator sets it so the probes and the Service reach the server",
                    e.name
                ),
            );
        }
    }

    if issues.is_empty() {
        Ok(())
    } else {
        Err(issues)
    }
}

/// `(value, is_percent)` of a maxSurge/maxUnavailable value, `None` when malformed.
fn int_or_percent(v: &IntOrString) -> Option<(i64, bool)> {
    match v {
        IntOrString::Int(i) => (*i >= 0).then_some((i64::from(*i), false)),
        IntOrString::String(s) => match s.strip_suffix('%') {
            Some(n) => n.parse::<u32>().ok().map(|n| (i64::from(n), true)),
            None => s.parse::<u32>().ok().map(|n| (i64::from(n), false)),
        },
    }
}

/// RFC 1035 label: what a Service name must be.
pub fn is_dns1035_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_lowercase()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && *b.last().unwrap() != b'-'
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builders::test_support::{fixture, from_yaml};

    fn fields(isvc: &InferenceService) -> Vec<String> {
        validate(isvc)
            .unwrap_err()
            .into_iter()
            .map(|i| i.field)
            .collect()
    }

    #[test]
    fn valid_fixtures_pass() {
        for f in [
            "minimal.yaml",
            "full.yaml",
            "autoscaling.yaml",
            "loadbalancer.yaml",
        ] {
            assert_eq!(validate(&fixture(f)), Ok(()), "{f}");
        }
    }

    #[test]
    fn request_above_limit_is_reported() {
        let isvc = from_yaml(
            r#"
apiVersion: serving.inference-server.dev/v1alpha1
kind: InferenceService
metadata: {name: a}
spec:
  model: {name: resnet50}
  resources:
    requests: {cpu: "2", memory: 4Gi}
    limits: {cpu: 1500m, memory: 4096Mi}
"#,
        );
        assert_eq!(fields(&isvc), vec!["spec.resources.requests.cpu"]);
        let msg = summarize(&validate(&isvc).unwrap_err());
        assert!(
            msg.contains("less than or equal to spec.resources.limits.cpu"),
            "{msg}"
        );
    }

    #[test]
    fn garbage_quantity_is_reported() {
        let isvc = from_yaml(
            r#"
apiVersion: serving.inference-server.dev/v1alpha1
kind: InferenceService
metadata: {name: a}
spec:
  model: {name: resnet50}
  resources:
    requests: {cpu: lots}
"#,
        );
        let issues = validate(&isvc).unwrap_err();
        assert_eq!(issues[0].field, "spec.resources.requests.cpu");
        assert!(issues[0].message.contains("not a quantity"));
    }

    #[test]
    fn cpu_autoscaling_needs_a_cpu_request() {
        let isvc = from_yaml(
            r#"
apiVersion: serving.inference-server.dev/v1alpha1
kind: InferenceService
metadata: {name: a}
spec:
  model: {name: resnet50}
  resources:
    requests: {memory: 1Gi}
  autoscaling: {maxReplicas: 3, targetMemoryUtilizationPercentage: 80, targetCPUUtilizationPercentage: 60}
"#,
        );
        assert_eq!(fields(&isvc), vec!["spec.resources.requests.cpu"]);
        // With the default resources there is a CPU request.
        let isvc = from_yaml(
            r#"
apiVersion: serving.inference-server.dev/v1alpha1
kind: InferenceService
metadata: {name: a}
spec:
  model: {name: resnet50}
  autoscaling: {maxReplicas: 3}
"#,
        );
        assert_eq!(validate(&isvc), Ok(()));
    }

    #[test]
    fn policy_allows_only_listed_registries_and_accounts() {
        let mut isvc = fixture("minimal.yaml");
        let open = Policy::default();
        let strict = Policy {
            allowed_image_prefixes: vec!["ecr.example/ml/".into()],
            allowed_service_accounts: vec!["inference".into()],
        };
        // No spec.image, no account: the operator's default image and `default` pass.
        assert_eq!(check_policy(&isvc, &strict), Ok(()));
        isvc.spec.image = Some("docker.io/evil/miner:1".into());
        isvc.spec.service_account_name = Some("cluster-admin-sa".into());
        assert_eq!(check_policy(&isvc, &open), Ok(()));
        let issues = check_policy(&isvc, &strict).unwrap_err();
        let fields: Vec<_> = issues.iter().map(|i| i.field.as_str()).collect();
        assert_eq!(fields, ["spec.image", "spec.serviceAccountName"]);
        assert!(issues[0].message.contains("ecr.example/ml/"), "{issues:?}");
        isvc.spec.image = Some("ecr.example/ml/resnet:2".into());
        isvc.spec.service_account_name = Some("inference".into());
        assert_eq!(check_policy(&isvc, &strict), Ok(()));
    }

    #[test]
    fn probe_host_is_refused() {
        let mut isvc = fixture("minimal.yaml");
        let mut probe = crate::builders::deployment::default_liveness_probe();
        probe.http_get.as_mut().unwrap().host = Some("169.254.169.254".into());
        isvc.spec.probes = Some(crate::crd::ProbesSpec {
            liveness: Some(probe),
            ..Default::default()
        });
        assert!(fields(&isvc).contains(&"spec.probes.liveness".to_string()));
    }

    #[test]
    fn dns1035() {
        assert!(is_dns1035_label("resnet50"));
        assert!(is_dns1035_label("a-b-1"));
        for bad in ["", "1abc", "abc-", "ABC", "a_b", &"a".repeat(64)] {
            assert!(!is_dns1035_label(bad), "{bad}");
        }
    }

    #[test]
    fn int_or_percent_parsing() {
        assert_eq!(int_or_percent(&IntOrString::Int(1)), Some((1, false)));
        assert_eq!(
            int_or_percent(&IntOrString::String("25%".into())),
            Some((25, true))
        );
        assert_eq!(
            int_or_percent(&IntOrString::String("3".into())),
            Some((3, false))
        );
        assert_eq!(int_or_percent(&IntOrString::String("x%".into())), None);
        assert_eq!(int_or_percent(&IntOrString::Int(-1)), None);
    }
}
