//! Pure status computation: observed children → `InferenceServiceStatus` with conditions
//! Ready / Available / Progressing / Degraded. `lastTransitionTime` moves only when a
//! condition's status flips.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ContainerStatus, Pod, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::ResourceExt;

use crate::builders::{self, Config};
use crate::crd::{InferenceService, InferenceServiceStatus};

pub const READY: &str = "Ready";
pub const AVAILABLE: &str = "Available";
pub const PROGRESSING: &str = "Progressing";
pub const DEGRADED: &str = "Degraded";
/// Degraded's reason when the init container cannot download `spec.model.uri`.
pub const MODEL_FETCH_FAILED: &str = "ModelFetchFailed";

/// Condition messages are capped so a huge container log line cannot bloat the object.
const MAX_MESSAGE: usize = 1024;

/// A problem the operator found itself (invalid spec, a child it may not touch, an apply the
/// API server rejected).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// CamelCase reason, e.g. `InvalidSpec`, `ApplyFailed`, `ChildConflict`.
    pub reason: String,
    pub message: String,
}

impl Problem {
    pub fn new(reason: &str, message: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
            message: message.into(),
        }
    }
}

/// One pod in trouble.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodProblem {
    pub pod: String,
    /// Kubelet or scheduler reason, e.g. `CrashLoopBackOff`, `ImagePullBackOff`, `Unschedulable`.
    pub reason: String,
    pub message: String,
}

/// What the pods say, beyond the Deployment's counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodHealth {
    pub crash_looping: Vec<PodProblem>,
    /// Image pull or container configuration errors: the container cannot start.
    pub cannot_start: Vec<PodProblem>,
    pub unschedulable: Vec<PodProblem>,
}

const CANNOT_START: &[&str] = &[
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "ErrImageNeverPull",
    "CreateContainerConfigError",
    "CreateContainerError",
];

/// Summarises the server pods (those not being deleted).
pub fn pod_health(pods: &[Pod]) -> PodHealth {
    let mut health = PodHealth::default();
    for pod in pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
    {
        let name = pod.name_any();
        let Some(status) = &pod.status else { continue };
        let containers = status
            .init_container_statuses
            .iter()
            .flatten()
            .chain(status.container_statuses.iter().flatten());
        for cs in containers {
            let waiting = cs.state.as_ref().and_then(|s| s.waiting.as_ref());
            let reason = match waiting {
                Some(w) => w.reason.clone().unwrap_or_default(),
                // Between back-offs the kubelet runs a crash-looping container again for a
                // moment: it still crash-loops (else Degraded, and its events, flap with every
                // restart; seen on the real node with a download that keeps failing).
                None if runs_again_after_failures(cs) => "CrashLoopBackOff".into(),
                None => continue,
            };
            if reason == "CrashLoopBackOff" && cs.name == builders::FETCH_CONTAINER_NAME {
                // The model download keeps failing: say so, with fetch's own one-line reason.
                health.crash_looping.push(PodProblem {
                    pod: name.clone(),
                    reason: MODEL_FETCH_FAILED.into(),
                    message: format!("the model download keeps failing{}", last_exit(cs)),
                });
            } else if reason == "CrashLoopBackOff" {
                health.crash_looping.push(PodProblem {
                    pod: name.clone(),
                    reason,
                    message: format!("container {} keeps crashing{}", cs.name, last_exit(cs)),
                });
            } else if CANNOT_START.contains(&reason.as_str()) {
                health.cannot_start.push(PodProblem {
                    pod: name.clone(),
                    reason,
                    message: format!(
                        "container {}: {}",
                        cs.name,
                        waiting.and_then(|w| w.message.clone()).unwrap_or_default()
                    ),
                });
            }
        }
        for cond in status.conditions.iter().flatten() {
            if cond.type_ == "PodScheduled"
                && cond.status == "False"
                && cond.reason.as_deref() == Some("Unschedulable")
            {
                health.unschedulable.push(PodProblem {
                    pod: name.clone(),
                    reason: "Unschedulable".into(),
                    message: cond.message.clone().unwrap_or_default(),
                });
            }
        }
    }
    health
}

/// Running again, not ready, after failing at least twice in a row (its last exit an error).
fn runs_again_after_failures(cs: &ContainerStatus) -> bool {
    let running = cs.state.as_ref().is_some_and(|s| s.running.is_some());
    let last_failed = cs
        .last_state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .is_some_and(|t| t.exit_code != 0);
    running && !cs.ready && last_failed && cs.restart_count >= 2
}

fn last_exit(cs: &ContainerStatus) -> String {
    let Some(t) = cs.last_state.as_ref().and_then(|s| s.terminated.as_ref()) else {
        return String::new();
    };
    let mut s = format!(
        " (last exit: {}, code {}",
        t.reason.as_deref().unwrap_or("unknown"),
        t.exit_code
    );
    if let Some(m) = t
        .message
        .as_deref()
        .map(str::trim)
        .filter(|m| !m.is_empty())
    {
        s.push_str(": ");
        s.push_str(m);
    }
    s.push(')');
    s
}

/// Everything [`compute`] looks at.
#[derive(Clone, Debug, Default)]
pub struct Observed<'a> {
    /// The Deployment as the API server has it (after our apply), if it exists.
    pub deployment: Option<&'a Deployment>,
    /// The Service as the API server has it, if it exists.
    pub service: Option<&'a Service>,
    pub pods: PodHealth,
    /// A problem found by the operator; it makes the service Degraded.
    pub problem: Option<Problem>,
    /// With `rollout.strategy: BlueGreen` (then `deployment` is the serving colour's).
    pub blue_green: Option<BlueGreenView<'a>>,
}

/// The blue/green side of [`Observed`].
#[derive(Clone, Debug, Default)]
pub struct BlueGreenView<'a> {
    /// The colour the Service selects, and its Deployment.
    pub active: Option<(&'a str, &'a Deployment)>,
    /// The other colour, while it has pods.
    pub preview: Option<(&'a str, &'a Deployment)>,
    pub promoted_at: Option<String>,
    /// The serving pods' selector (the scale subresource's, which the HPA reads metrics by).
    pub selector: String,
    /// The new spec is not serving yet: why, for Progressing (and Degraded when it is stuck).
    pub pending: Option<Pending>,
}

/// A blue/green rollout in flight.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pending {
    /// Progressing's status: true while it may still finish by itself.
    pub progressing: bool,
    pub reason: String,
    pub message: String,
    /// It will not finish without a change: Degraded with the same reason (Ready stays True:
    /// the serving colour still serves).
    pub degraded: bool,
}

fn color_status(color: &str, d: &Deployment) -> crate::crd::ColorStatus {
    let st = d.status.clone().unwrap_or_default();
    crate::crd::ColorStatus {
        color: color.into(),
        deployment: d.name_any(),
        revision: builders::bluegreen::revision_of(d).map(str::to_string),
        image: builders::deployment::server_image(d),
        replicas: d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0),
        ready_replicas: st.ready_replicas.unwrap_or(0),
    }
}

struct Verdict {
    status: bool,
    reason: String,
    message: String,
}

fn verdict(status: bool, reason: &str, message: impl Into<String>) -> Verdict {
    Verdict {
        status,
        reason: reason.into(),
        message: message.into(),
    }
}

fn first(problems: &[PodProblem]) -> String {
    let p = &problems[0];
    let more = if problems.len() > 1 {
        format!(" (and {} more pods)", problems.len() - 1)
    } else {
        String::new()
    };
    format!("pod {}: {}{more}", p.pod, p.message)
}

/// Computes the status. `now` stamps conditions that flip.
pub fn compute(
    isvc: &InferenceService,
    cfg: &Config,
    observed: &Observed<'_>,
    now: Time,
) -> InferenceServiceStatus {
    let generation = isvc.metadata.generation;
    let old = isvc
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();

    let dep = observed.deployment;
    let dstatus = dep.and_then(|d| d.status.clone()).unwrap_or_default();
    let desired = dep
        .and_then(|d| d.spec.as_ref())
        .and_then(|s| s.replicas)
        .unwrap_or(1);
    let dep_current = dep.is_some_and(|d| {
        dstatus.observed_generation.unwrap_or(0) >= d.metadata.generation.unwrap_or(0)
    });
    let dep_cond = |t: &str| {
        dstatus
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == t)
            .cloned()
    };
    let stuck = dep.and_then(builders::deployment::deadline_exceeded);
    // The ReplicaSet cannot create pods (missing ServiceAccount or PriorityClass, quota, Pod
    // Security admission, ...): nothing will change until someone acts.
    let replica_failure = dep_cond("ReplicaFailure").filter(|c| c.status == "True");
    let replicas = dstatus.replicas.unwrap_or(0);
    let ready = dstatus.ready_replicas.unwrap_or(0);
    let updated = dstatus.updated_replicas.unwrap_or(0);
    let available = dstatus.available_replicas.unwrap_or(0);
    let rolled_out = dep_current && updated >= desired && replicas <= updated;
    let counts =
        format!("{ready}/{desired} replicas ready, {updated} updated, {available} available");
    let pods = &observed.pods;
    let bg = observed.blue_green.as_ref();
    let pending = bg.and_then(|b| b.pending.as_ref());

    let degraded = if let Some(p) = &observed.problem {
        verdict(true, &p.reason, p.message.clone())
    } else if !pods.crash_looping.is_empty() {
        verdict(
            true,
            &pods.crash_looping[0].reason,
            first(&pods.crash_looping),
        )
    } else if !pods.cannot_start.is_empty() {
        verdict(
            true,
            &pods.cannot_start[0].reason,
            first(&pods.cannot_start),
        )
    } else if let Some(c) = &replica_failure {
        verdict(
            true,
            c.reason.as_deref().unwrap_or("FailedCreate"),
            format!(
                "pods cannot be created: {}",
                c.message.clone().unwrap_or_default()
            ),
        )
    } else if let Some(why) = &stuck {
        verdict(
            true,
            "ProgressDeadlineExceeded",
            format!("the rollout made no progress in time: {why}"),
        )
    } else if let Some(p) = pending.filter(|p| p.degraded) {
        verdict(true, &p.reason, p.message.clone())
    } else {
        verdict(false, "AsExpected", "")
    };

    let available_c = if dep.is_none() {
        verdict(
            false,
            "DeploymentNotFound",
            "the Deployment does not exist yet",
        )
    } else if desired == 0 {
        verdict(false, "ScaledToZero", "replicas is 0")
    } else if available > 0 {
        verdict(true, "ReplicasAvailable", counts.clone())
    } else {
        verdict(false, "NoReplicasAvailable", counts.clone())
    };

    let progressing = match dep {
        Some(_) if pending.is_some() => {
            let p = pending.expect("matched");
            verdict(p.progressing, &p.reason, p.message.clone())
        }
        None => match &observed.problem {
            Some(p) => verdict(
                false,
                &p.reason,
                "nothing is rolled out until the problem is fixed",
            ),
            None => verdict(true, "Creating", "creating the Deployment"),
        },
        Some(_) if stuck.is_some() => {
            verdict(false, "ProgressDeadlineExceeded", degraded.message.clone())
        }
        Some(_) if !dep_current => verdict(
            true,
            "RolloutPending",
            "the Deployment controller has not seen the new spec yet",
        ),
        Some(_) if !rolled_out && !pods.unschedulable.is_empty() => verdict(
            true,
            "RollingOut",
            format!("{counts}; {}", first(&pods.unschedulable)),
        ),
        Some(_) if !rolled_out => verdict(true, "RollingOut", counts.clone()),
        // As Kubernetes defines a complete rollout: every desired replica updated and available
        // (pods still loading the model, e.g. added by the HPA, keep it Progressing).
        Some(_) if available < desired => verdict(true, "WaitingForAvailable", counts.clone()),
        Some(_) => verdict(false, "RolloutComplete", counts.clone()),
    };

    let url = observed.service.map(|svc| builders::service_url(svc, cfg));
    // Ready means "serving": the Service has available pods behind it, of this spec or the
    // previous one, and the operator has no problem with the spec. A rollout (Progressing) or a
    // few broken pods (Degraded) while others serve does not page anyone alerting on Ready.
    let ready_c = if let Some(p) = &observed.problem {
        verdict(false, &p.reason, p.message.clone())
    } else if dep.is_none() {
        verdict(false, &available_c.reason, available_c.message.clone())
    } else if observed.service.is_none() {
        verdict(false, "ServiceNotFound", "the Service does not exist yet")
    } else if desired == 0 {
        verdict(
            false,
            "ScaledToZero",
            "replicas is 0: nothing serves requests",
        )
    } else if available == 0 {
        // Say why nothing serves, the pods' own trouble first.
        if degraded.status {
            verdict(false, &degraded.reason, degraded.message.clone())
        } else if !pods.unschedulable.is_empty() {
            verdict(false, "Unschedulable", first(&pods.unschedulable))
        } else {
            verdict(
                false,
                "NoReplicasAvailable",
                format!("{counts}; the model may still be loading"),
            )
        }
    } else {
        let model = &isvc.spec.model;
        let version = model
            .version
            .as_deref()
            .map(|v| format!(" version {v}"))
            .unwrap_or_default();
        let mut message = format!(
            "{counts}; serving model {}{version} at {}",
            model.name,
            url.as_deref().unwrap_or_default()
        );
        if progressing.status {
            message.push_str(&format!("; rollout: {}", progressing.reason));
        }
        if degraded.status {
            message.push_str(&format!("; degraded: {}", degraded.reason));
        }
        verdict(true, "Serving", message)
    };

    let make = |type_: &str, v: Verdict| {
        let cond = Condition {
            type_: type_.into(),
            status: if v.status {
                "True".into()
            } else {
                "False".into()
            },
            reason: v.reason,
            message: truncate(v.message),
            observed_generation: generation,
            last_transition_time: now.clone(),
        };
        keep_transition_time(old, cond)
    };

    InferenceServiceStatus {
        observed_generation: generation,
        replicas,
        ready_replicas: ready,
        updated_replicas: updated,
        available_replicas: available,
        // What runs, not what the spec asks for: an apply the API server refused leaves the
        // previous Deployment and Service in place.
        url,
        selector: Some(
            bg.map(|b| b.selector.clone())
                .unwrap_or_else(|| builders::selector_string(isvc)),
        ),
        image: dep.and_then(builders::deployment::server_image),
        blue_green: bg.map(|b| crate::crd::BlueGreenStatus {
            active_color: b.active.map(|(c, _)| c.to_string()),
            active: b.active.map(|(c, d)| color_status(c, d)),
            preview: b.preview.map(|(c, d)| color_status(c, d)),
            promoted_at: b.promoted_at.clone(),
        }),
        conditions: vec![
            make(READY, ready_c),
            make(AVAILABLE, available_c),
            make(PROGRESSING, progressing),
            make(DEGRADED, degraded),
        ],
    }
}

/// Keeps the old `lastTransitionTime` when the condition's status did not change.
pub fn keep_transition_time(old: &[Condition], mut new: Condition) -> Condition {
    if let Some(prev) = old.iter().find(|c| c.type_ == new.type_)
        && prev.status == new.status
    {
        new.last_transition_time = prev.last_transition_time.clone();
    }
    new
}

fn truncate(mut s: String) -> String {
    if s.len() > MAX_MESSAGE {
        let mut cut = MAX_MESSAGE;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

/// The condition of this type, if present.
pub fn condition<'a>(
    status: Option<&'a InferenceServiceStatus>,
    type_: &str,
) -> Option<&'a Condition> {
    status?.conditions.iter().find(|c| c.type_ == type_)
}

/// True when the condition is present with status "True".
pub fn is_true(status: Option<&InferenceServiceStatus>, type_: &str) -> bool {
    condition(status, type_).is_some_and(|c| c.status == "True")
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::apps::v1::{DeploymentCondition, DeploymentSpec, DeploymentStatus};
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateTerminated, ContainerStateWaiting, PodCondition, PodStatus,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use k8s_openapi::jiff::Timestamp;

    use super::*;
    use crate::builders::test_support::fixture;

    fn t(secs: i64) -> Time {
        Time(Timestamp::from_second(1_700_000_000 + secs).unwrap())
    }

    struct Dep {
        desired: i32,
        generation: i64,
        observed: i64,
        replicas: i32,
        ready: i32,
        updated: i32,
        available: i32,
        stuck: bool,
    }

    impl Dep {
        fn steady(n: i32) -> Self {
            Dep {
                desired: n,
                generation: 1,
                observed: 1,
                replicas: n,
                ready: n,
                updated: n,
                available: n,
                stuck: false,
            }
        }
        fn build(&self) -> Deployment {
            let mut conditions = vec![];
            if self.stuck {
                conditions.push(DeploymentCondition {
                    type_: "Progressing".into(),
                    status: "False".into(),
                    reason: Some("ProgressDeadlineExceeded".into()),
                    message: Some("ReplicaSet \"resnet50-abc\" has timed out progressing.".into()),
                    ..Default::default()
                });
            }
            Deployment {
                metadata: ObjectMeta {
                    generation: Some(self.generation),
                    ..Default::default()
                },
                spec: Some(DeploymentSpec {
                    replicas: Some(self.desired),
                    ..Default::default()
                }),
                status: Some(DeploymentStatus {
                    observed_generation: Some(self.observed),
                    replicas: Some(self.replicas),
                    ready_replicas: Some(self.ready),
                    updated_replicas: Some(self.updated),
                    available_replicas: Some(self.available),
                    conditions: Some(conditions),
                    ..Default::default()
                }),
            }
        }
    }

    fn cond<'a>(s: &'a InferenceServiceStatus, type_: &str) -> &'a Condition {
        s.conditions.iter().find(|c| c.type_ == type_).unwrap()
    }

    #[test]
    fn a_stuck_blue_green_preview_degrades_while_the_serving_colour_stays_ready() {
        let isvc = fixture("minimal.yaml");
        let svc = crate::builders::service::build(&isvc);
        let serving = Dep::steady(2).build();
        let mut preview = Dep::steady(2).build();
        preview.status.as_mut().unwrap().ready_replicas = Some(0);
        let selector = "serving.inference-server.dev/inferenceservice=resnet50,serving.inference-server.dev/color=green";
        let view = |pending: Option<Pending>| BlueGreenView {
            active: Some(("green", &serving)),
            preview: Some(("blue", &preview)),
            promoted_at: Some("2026-11-28T06:00:00Z".into()),
            selector: selector.into(),
            pending,
        };
        let run = |pending| {
            compute(
                &isvc,
                &Config::default(),
                &Observed {
                    deployment: Some(&serving),
                    service: Some(&svc),
                    pods: PodHealth::default(),
                    problem: None,
                    blue_green: Some(view(pending)),
                },
                t(0),
            )
        };
        let stuck = run(Some(Pending {
            progressing: false,
            reason: "ProgressDeadlineExceeded".into(),
            message: "blue did not become ready; traffic stays on green".into(),
            degraded: true,
        }));
        assert_eq!(cond(&stuck, READY).status, "True");
        assert_eq!(cond(&stuck, READY).reason, "Serving");
        assert_eq!(
            (
                cond(&stuck, PROGRESSING).status.as_str(),
                cond(&stuck, PROGRESSING).reason.as_str()
            ),
            ("False", "ProgressDeadlineExceeded")
        );
        assert_eq!(
            (
                cond(&stuck, DEGRADED).status.as_str(),
                cond(&stuck, DEGRADED).reason.as_str()
            ),
            ("True", "ProgressDeadlineExceeded")
        );
        assert_eq!(stuck.selector.as_deref(), Some(selector));
        let bg = stuck.blue_green.unwrap();
        assert_eq!(bg.active_color.as_deref(), Some("green"));
        assert_eq!(bg.active.unwrap().ready_replicas, 2);
        assert_eq!(bg.preview.unwrap().ready_replicas, 0);
        // Rolling out: Progressing, nothing wrong.
        let rolling = run(Some(Pending {
            progressing: true,
            reason: "PreviewRollingOut".into(),
            message: "blue is rolling out".into(),
            degraded: false,
        }));
        assert_eq!(cond(&rolling, PROGRESSING).reason, "PreviewRollingOut");
        assert_eq!(cond(&rolling, DEGRADED).status, "False");
        assert!(
            cond(&rolling, READY)
                .message
                .contains("rollout: PreviewRollingOut")
        );
        // Steady: the serving colour's rollout is complete.
        let steady = run(None);
        assert_eq!(cond(&steady, PROGRESSING).reason, "RolloutComplete");
    }

    fn run(
        isvc: &InferenceService,
        dep: Option<&Deployment>,
        pods: PodHealth,
        problem: Option<Problem>,
        now: Time,
    ) -> InferenceServiceStatus {
        let svc = crate::builders::service::build(isvc);
        compute(
            isvc,
            &Config::default(),
            &Observed {
                deployment: dep,
                service: Some(&svc),
                pods,
                problem,
                blue_green: None,
            },
            now,
        )
    }

    #[test]
    fn steady_state_is_ready() {
        let isvc = fixture("minimal.yaml");
        let d = Dep::steady(2).build();
        let s = run(&isvc, Some(&d), PodHealth::default(), None, t(0));
        assert_eq!(s.observed_generation, Some(1));
        assert_eq!(
            (
                s.replicas,
                s.ready_replicas,
                s.updated_replicas,
                s.available_replicas
            ),
            (2, 2, 2, 2)
        );
        assert_eq!(
            s.url.as_deref(),
            Some("http://resnet50.ml.svc.cluster.local")
        );
        assert_eq!(
            s.selector.as_deref(),
            Some("serving.inference-server.dev/inferenceservice=resnet50")
        );
        let ready = cond(&s, READY);
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("True", "Serving")
        );
        assert!(
            ready.message.contains("serving model resnet50"),
            "{}",
            ready.message
        );
        assert_eq!(cond(&s, AVAILABLE).status, "True");
        assert_eq!(
            (
                cond(&s, PROGRESSING).status.as_str(),
                cond(&s, PROGRESSING).reason.as_str()
            ),
            ("False", "RolloutComplete")
        );
        assert_eq!(
            (
                cond(&s, DEGRADED).status.as_str(),
                cond(&s, DEGRADED).reason.as_str()
            ),
            ("False", "AsExpected")
        );
        for c in &s.conditions {
            assert_eq!(c.observed_generation, Some(1));
        }
    }

    #[test]
    fn transition_time_moves_only_on_flip() {
        let mut isvc = fixture("minimal.yaml");
        let rolling = Dep {
            desired: 2,
            replicas: 3,
            ready: 2,
            updated: 1,
            available: 2,
            ..Dep::steady(2)
        }
        .build();
        let s1 = run(&isvc, Some(&rolling), PodHealth::default(), None, t(0));
        // Old pods serve during the rollout: Ready, and Progressing says what is going on.
        assert_eq!(cond(&s1, READY).status, "True");
        assert!(
            cond(&s1, READY).message.contains("rollout: RollingOut"),
            "{}",
            cond(&s1, READY).message
        );
        assert_eq!(cond(&s1, PROGRESSING).status, "True");
        isvc.status = Some(s1.clone());

        // Same statuses later (the message changes): times stay.
        let rolling2 = Dep {
            desired: 2,
            replicas: 3,
            ready: 3,
            updated: 2,
            available: 3,
            ..Dep::steady(2)
        }
        .build();
        let s2 = run(&isvc, Some(&rolling2), PodHealth::default(), None, t(30));
        for ty in [READY, AVAILABLE, PROGRESSING, DEGRADED] {
            assert_eq!(
                cond(&s2, ty).last_transition_time,
                cond(&s1, ty).last_transition_time,
                "{ty}"
            );
        }
        isvc.status = Some(s2.clone());

        // Rollout done: Progressing flips and gets the new time; the others keep theirs.
        let s3 = run(
            &isvc,
            Some(&Dep::steady(2).build()),
            PodHealth::default(),
            None,
            t(60),
        );
        assert_eq!(cond(&s3, READY).status, "True");
        assert_eq!(cond(&s3, READY).last_transition_time, t(0));
        assert_eq!(cond(&s3, PROGRESSING).status, "False");
        assert_eq!(cond(&s3, PROGRESSING).last_transition_time, t(60));
        assert_eq!(cond(&s3, AVAILABLE).last_transition_time, t(0));
        assert_eq!(cond(&s3, DEGRADED).last_transition_time, t(0));
    }

    #[test]
    fn rollout_is_not_complete_until_the_pods_are_available() {
        let isvc = fixture("minimal.yaml");
        // A fresh rollout: every replica updated, none available yet (still loading the model).
        let loading = Dep {
            desired: 2,
            replicas: 2,
            ready: 0,
            updated: 2,
            available: 0,
            ..Dep::steady(2)
        }
        .build();
        let s = run(&isvc, Some(&loading), PodHealth::default(), None, t(0));
        let p = cond(&s, PROGRESSING);
        assert_eq!(
            (p.status.as_str(), p.reason.as_str()),
            ("True", "WaitingForAvailable")
        );
        assert_eq!(cond(&s, READY).status, "False");
    }

    #[test]
    fn stuck_rollout_is_degraded_while_old_pods_serve() {
        let isvc = fixture("minimal.yaml");
        let d = Dep {
            desired: 2,
            replicas: 3,
            ready: 2,
            updated: 1,
            available: 2,
            stuck: true,
            ..Dep::steady(2)
        }
        .build();
        let s = run(&isvc, Some(&d), PodHealth::default(), None, t(0));
        // The old pods serve: Ready stays true and says the service is degraded.
        assert_eq!(cond(&s, READY).status, "True");
        assert!(
            cond(&s, READY)
                .message
                .contains("degraded: ProgressDeadlineExceeded")
        );
        assert_eq!(cond(&s, DEGRADED).status, "True");
        assert_eq!(
            (
                cond(&s, PROGRESSING).status.as_str(),
                cond(&s, PROGRESSING).reason.as_str()
            ),
            ("False", "ProgressDeadlineExceeded")
        );
        // Old pods still serve.
        assert_eq!(cond(&s, AVAILABLE).status, "True");
    }

    fn crashing_pod(name: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            spec: None,
            status: Some(PodStatus {
                container_statuses: Some(vec![ContainerStatus {
                    name: "server".into(),
                    state: Some(ContainerState {
                        waiting: Some(ContainerStateWaiting {
                            reason: Some("CrashLoopBackOff".into()),
                            message: Some("back-off 40s restarting failed container".into()),
                        }),
                        ..Default::default()
                    }),
                    last_state: Some(ContainerState {
                        terminated: Some(ContainerStateTerminated {
                            exit_code: 1,
                            reason: Some("Error".into()),
                            message: Some(
                                "failed to load weights from /models/missing.safetensors".into(),
                            ),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    restart_count: 4,
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn a_crash_loop_stays_one_while_the_container_runs_again_between_back_offs() {
        use k8s_openapi::api::core::v1::ContainerStateRunning;
        let running = |restarts: i32, last_exit: i32| {
            let mut pod = crashing_pod("p");
            let cs = &mut pod
                .status
                .as_mut()
                .unwrap()
                .container_statuses
                .as_mut()
                .unwrap()[0];
            cs.state = Some(ContainerState {
                running: Some(ContainerStateRunning::default()),
                ..Default::default()
            });
            cs.restart_count = restarts;
            cs.last_state
                .as_mut()
                .unwrap()
                .terminated
                .as_mut()
                .unwrap()
                .exit_code = last_exit;
            pod
        };
        // Waiting in back-off, or running again after failing twice: crash looping both times.
        assert_eq!(pod_health(&[crashing_pod("p")]).crash_looping.len(), 1);
        let again = pod_health(&[running(4, 1)]);
        assert_eq!(again.crash_looping.len(), 1);
        assert_eq!(again.crash_looping[0].reason, "CrashLoopBackOff");
        // Not after a single failure (a first restart may just work), nor after a clean exit,
        // nor once it is ready.
        assert!(pod_health(&[running(1, 1)]).crash_looping.is_empty());
        assert!(pod_health(&[running(4, 0)]).crash_looping.is_empty());
        let mut ready = running(4, 1);
        ready
            .status
            .as_mut()
            .unwrap()
            .container_statuses
            .as_mut()
            .unwrap()[0]
            .ready = true;
        assert!(pod_health(&[ready]).crash_looping.is_empty());
    }

    #[test]
    fn a_failing_model_download_is_model_fetch_failed_with_its_reason() {
        let isvc = fixture("model-uri.yaml");
        // The init container keeps failing; the server container waits (PodInitializing).
        let mut pod = crashing_pod("resnet50-hf-1");
        let status = pod.status.as_mut().unwrap();
        let mut fetch = status.container_statuses.take().unwrap().remove(0);
        fetch.name = builders::FETCH_CONTAINER_NAME.into();
        fetch
            .last_state
            .as_mut()
            .unwrap()
            .terminated
            .as_mut()
            .unwrap()
            .message = Some(
            "inference-server fetch: hf://timm/resnet50.tv_in1k/model.safetensors: HTTP 401: access denied"
                .into(),
        );
        status.init_container_statuses = Some(vec![fetch]);
        status.container_statuses = Some(vec![ContainerStatus {
            name: "server".into(),
            state: Some(ContainerState {
                waiting: Some(ContainerStateWaiting {
                    reason: Some("PodInitializing".into()),
                    message: None,
                }),
                ..Default::default()
            }),
            ..Default::default()
        }]);
        let health = pod_health(&[pod]);
        let none = Dep {
            desired: 1,
            replicas: 1,
            ready: 0,
            updated: 1,
            available: 0,
            ..Dep::steady(1)
        }
        .build();
        let s = run(&isvc, Some(&none), health, None, t(0));
        for type_ in [DEGRADED, READY] {
            let c = cond(&s, type_);
            assert_eq!(c.reason, MODEL_FETCH_FAILED, "{type_}");
            assert!(c.message.contains("HTTP 401"), "{type_}: {}", c.message);
            assert!(
                c.message.contains("model download"),
                "{type_}: {}",
                c.message
            );
        }
    }

    #[test]
    fn crash_looping_pods_degrade_and_explain_ready_when_nothing_serves() {
        let isvc = fixture("minimal.yaml");
        // The old pods are still available: serving, but degraded.
        let d = Dep {
            desired: 2,
            replicas: 3,
            ready: 2,
            updated: 1,
            available: 2,
            ..Dep::steady(2)
        }
        .build();
        let health = pod_health(&[
            crashing_pod("resnet50-new-1"),
            crashing_pod("resnet50-new-2"),
        ]);
        assert_eq!(health.crash_looping.len(), 2);
        let s = run(&isvc, Some(&d), health.clone(), None, t(0));
        assert_eq!(cond(&s, READY).status, "True");
        let degraded = cond(&s, DEGRADED);
        assert_eq!(
            (degraded.status.as_str(), degraded.reason.as_str()),
            ("True", "CrashLoopBackOff")
        );
        assert!(degraded.message.contains("failed to load weights"));
        // Nothing available: Ready is false and says why.
        let none = Dep {
            desired: 2,
            replicas: 2,
            ready: 0,
            updated: 2,
            available: 0,
            ..Dep::steady(2)
        }
        .build();
        let s = run(&isvc, Some(&none), health, None, t(0));
        let ready = cond(&s, READY);
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "CrashLoopBackOff")
        );
        assert!(
            ready.message.contains("resnet50-new-1"),
            "{}",
            ready.message
        );
        assert!(
            ready.message.contains("failed to load weights"),
            "{}",
            ready.message
        );
        assert!(ready.message.contains("1 more pods"), "{}", ready.message);
        assert_eq!(
            (
                cond(&s, DEGRADED).status.as_str(),
                cond(&s, DEGRADED).reason.as_str()
            ),
            ("True", "CrashLoopBackOff")
        );
    }

    #[test]
    fn image_pull_errors_and_unschedulable_pods() {
        let mut pull = crashing_pod("p1");
        let cs = &mut pull
            .status
            .as_mut()
            .unwrap()
            .container_statuses
            .as_mut()
            .unwrap()[0];
        cs.state.as_mut().unwrap().waiting = Some(ContainerStateWaiting {
            reason: Some("ImagePullBackOff".into()),
            message: Some("Back-off pulling image".into()),
        });
        let pending = Pod {
            metadata: ObjectMeta {
                name: Some("p2".into()),
                ..Default::default()
            },
            spec: None,
            status: Some(PodStatus {
                conditions: Some(vec![PodCondition {
                    type_: "PodScheduled".into(),
                    status: "False".into(),
                    reason: Some("Unschedulable".into()),
                    message: Some("0/3 nodes are available: 3 Insufficient nvidia.com/gpu.".into()),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        };
        let mut deleting = crashing_pod("p3");
        deleting.metadata.deletion_timestamp = Some(t(0));
        let h = pod_health(&[pull, pending.clone(), deleting]);
        assert_eq!(h.crash_looping.len(), 0, "pods being deleted are ignored");
        assert_eq!(h.cannot_start[0].reason, "ImagePullBackOff");
        assert_eq!(h.unschedulable[0].pod, "p2");

        let isvc = fixture("minimal.yaml");
        let none_available = Dep {
            desired: 1,
            replicas: 1,
            ready: 0,
            updated: 1,
            available: 0,
            ..Dep::steady(1)
        }
        .build();
        let s = run(&isvc, Some(&none_available), h, None, t(0));
        assert_eq!(cond(&s, READY).reason, "ImagePullBackOff");

        // Unschedulable alone is not Degraded (the cluster may be scaling up); one pod serves, and
        // Progressing says why the rest does not run.
        let d = Dep {
            desired: 2,
            replicas: 2,
            ready: 1,
            updated: 1,
            available: 1,
            ..Dep::steady(2)
        }
        .build();
        let s = run(
            &isvc,
            Some(&d),
            pod_health(std::slice::from_ref(&pending)),
            None,
            t(0),
        );
        assert_eq!(cond(&s, DEGRADED).status, "False");
        assert_eq!(cond(&s, READY).status, "True");
        assert!(
            cond(&s, PROGRESSING)
                .message
                .contains("Insufficient nvidia.com/gpu")
        );
        // Nothing scheduled at all: Ready is false and says why.
        let s = run(
            &isvc,
            Some(&none_available),
            pod_health(&[pending]),
            None,
            t(0),
        );
        assert_eq!(cond(&s, READY).reason, "Unschedulable");
    }

    #[test]
    fn pods_that_cannot_be_created_are_degraded() {
        let isvc = fixture("full.yaml");
        let mut d = Dep {
            replicas: 0,
            ready: 0,
            updated: 0,
            available: 0,
            ..Dep::steady(3)
        }
        .build();
        d.status.as_mut().unwrap().conditions.as_mut().unwrap().push(DeploymentCondition {
            type_: "ReplicaFailure".into(),
            status: "True".into(),
            reason: Some("FailedCreate".into()),
            message: Some("pods \"resnet50-6c6584ddd6-\" is forbidden: error looking up service account ml/inference: serviceaccount \"inference\" not found".into()),
            ..Default::default()
        });
        let s = run(&isvc, Some(&d), PodHealth::default(), None, t(0));
        assert_eq!(
            (
                cond(&s, DEGRADED).status.as_str(),
                cond(&s, DEGRADED).reason.as_str()
            ),
            ("True", "FailedCreate")
        );
        assert_eq!(cond(&s, READY).reason, "FailedCreate");
        assert!(
            cond(&s, READY)
                .message
                .contains("serviceaccount \"inference\" not found")
        );
    }

    #[test]
    fn operator_problem_is_degraded() {
        let isvc = fixture("minimal.yaml");
        let p = Problem::new(
            "InvalidSpec",
            "spec.resources.requests.cpu: must be less than or equal to spec.resources.limits.cpu",
        );
        let s = run(&isvc, None, PodHealth::default(), Some(p.clone()), t(0));
        assert_eq!(
            (
                cond(&s, DEGRADED).status.as_str(),
                cond(&s, DEGRADED).reason.as_str()
            ),
            ("True", "InvalidSpec")
        );
        assert_eq!(cond(&s, DEGRADED).message, p.message);
        assert_eq!(
            (
                cond(&s, READY).status.as_str(),
                cond(&s, READY).reason.as_str()
            ),
            ("False", "InvalidSpec")
        );
        assert_eq!(cond(&s, PROGRESSING).status, "False");
        assert_eq!(cond(&s, AVAILABLE).reason, "DeploymentNotFound");
        // The previous Deployment keeps serving: Available stays true.
        let d = Dep::steady(1).build();
        let s = run(&isvc, Some(&d), PodHealth::default(), Some(p), t(0));
        assert_eq!(cond(&s, AVAILABLE).status, "True");
        assert_eq!(cond(&s, READY).status, "False");
    }

    #[test]
    fn new_deployment_and_scale_to_zero() {
        let isvc = fixture("minimal.yaml");
        let s = run(&isvc, None, PodHealth::default(), None, t(0));
        assert_eq!(cond(&s, PROGRESSING).reason, "Creating");
        assert_eq!(cond(&s, READY).status, "False");

        let fresh = Dep {
            generation: 2,
            observed: 1,
            ..Dep::steady(1)
        }
        .build();
        let s = run(&isvc, Some(&fresh), PodHealth::default(), None, t(0));
        assert_eq!(cond(&s, PROGRESSING).reason, "RolloutPending");
        assert_eq!(cond(&s, READY).status, "True");

        let loading = Dep {
            ready: 0,
            available: 0,
            ..Dep::steady(1)
        }
        .build();
        let s = run(&isvc, Some(&loading), PodHealth::default(), None, t(0));
        assert_eq!(cond(&s, READY).reason, "NoReplicasAvailable");

        let zero = Dep::steady(0).build();
        let s = run(&isvc, Some(&zero), PodHealth::default(), None, t(0));
        assert_eq!(cond(&s, READY).reason, "ScaledToZero");
        assert_eq!(cond(&s, AVAILABLE).reason, "ScaledToZero");
        assert_eq!(cond(&s, DEGRADED).status, "False");
    }

    #[test]
    fn scaling_up_keeps_ready() {
        // The HPA added pods that are still loading the model: the service still serves.
        let isvc = fixture("autoscaling.yaml");
        let d = Dep {
            desired: 5,
            replicas: 5,
            ready: 2,
            updated: 5,
            available: 2,
            ..Dep::steady(5)
        }
        .build();
        let s = run(&isvc, Some(&d), PodHealth::default(), None, t(0));
        assert_eq!(cond(&s, READY).status, "True");
        assert!(cond(&s, READY).message.contains("version 1"));
    }

    #[test]
    fn image_and_url_report_what_runs() {
        // The spec asks for a new image and port, but the apply was refused: the old Deployment
        // and Service still run, and the status says so.
        let mut isvc = fixture("minimal.yaml");
        let running = crate::builders::deployment::build(&isvc, &Config::default());
        let svc = crate::builders::service::build(&isvc);
        isvc.spec.image = Some("registry.example/new:2".into());
        isvc.spec.service = Some(crate::crd::ServiceSpec {
            port: 8000,
            ..Default::default()
        });
        let mut dep = Dep::steady(1).build();
        dep.spec.as_mut().unwrap().template = running.spec.unwrap().template;
        let s = compute(
            &isvc,
            &Config::default(),
            &Observed {
                deployment: Some(&dep),
                service: Some(&svc),
                pods: PodHealth::default(),
                problem: Some(Problem::new("ApplyFailed", "rejected")),
                blue_green: None,
            },
            t(0),
        );
        assert_eq!(s.image, Some(Config::default().default_image));
        assert_eq!(
            s.url.as_deref(),
            Some("http://resnet50.ml.svc.cluster.local")
        );
        // Nothing exists yet: nothing to report.
        let s = compute(&isvc, &Config::default(), &Observed::default(), t(0));
        assert_eq!((s.image, s.url), (None, None));
    }

    #[test]
    fn long_messages_are_truncated() {
        let s = truncate("é".repeat(2000));
        assert!(s.len() <= MAX_MESSAGE + '…'.len_utf8());
    }
}
