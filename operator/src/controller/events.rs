//! Events for condition changes: one per transition, never one per reconcile.

use kube::runtime::events::EventType;

use super::{APPLY_FAILED, CHILD_CONFLICT, INVALID_SPEC, NOT_ALLOWED};
use crate::crd::InferenceServiceStatus;
use crate::status::{self, DEGRADED, READY};

/// One event to publish.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusEvent {
    pub type_: EventType,
    pub reason: String,
    pub action: &'static str,
    pub note: String,
    /// The operator found a problem with the spec (counted in `spec_problems_total`).
    pub spec_problem: bool,
}

/// Events for condition changes between two statuses.
pub fn status_events(
    old: Option<&InferenceServiceStatus>,
    new: &InferenceServiceStatus,
) -> Vec<StatusEvent> {
    let mut events = Vec::new();
    let old_deg = status::condition(old, DEGRADED);
    let new_deg = status::condition(Some(new), DEGRADED);
    if let Some(nd) = new_deg {
        let was_same = old_deg.is_some_and(|od| od.status == nd.status && od.reason == nd.reason);
        if nd.status == "True" && !was_same {
            events.push(StatusEvent {
                type_: EventType::Warning,
                reason: nd.reason.clone(),
                action: "Reconcile",
                note: nd.message.clone(),
                spec_problem: [INVALID_SPEC, NOT_ALLOWED, CHILD_CONFLICT, APPLY_FAILED]
                    .contains(&nd.reason.as_str()),
            });
        }
        if nd.status == "False" && old_deg.is_some_and(|od| od.status == "True") {
            events.push(StatusEvent {
                type_: EventType::Normal,
                reason: "Recovered".into(),
                action: "Reconcile",
                note: "no longer degraded".into(),
                spec_problem: false,
            });
        }
    }
    let old_ready = status::condition(old, READY);
    let new_ready = status::condition(Some(new), READY);
    match new_ready {
        Some(nr) if nr.status == "True" && old_ready.is_none_or(|o| o.status != "True") => {
            events.push(StatusEvent {
                type_: EventType::Normal,
                reason: "Ready".into(),
                action: "Reconcile",
                note: nr.message.clone(),
                spec_problem: false,
            });
        }
        Some(nr) if nr.status == "False" && old_ready.is_some_and(|o| o.status == "True") => {
            events.push(StatusEvent {
                type_: EventType::Warning,
                reason: "NotServing".into(),
                action: "Reconcile",
                note: format!("{}: {}", nr.reason, nr.message),
                spec_problem: false,
            });
        }
        _ => {}
    }
    events
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
    use k8s_openapi::jiff::Timestamp;

    use super::*;

    fn st(ready: &str, degraded: &str, reason: &str) -> InferenceServiceStatus {
        let c = |t: &str, s: &str, r: &str| Condition {
            type_: t.into(),
            status: s.into(),
            reason: r.into(),
            message: format!("{t} {r}"),
            observed_generation: Some(1),
            last_transition_time: Time(Timestamp::UNIX_EPOCH),
        };
        InferenceServiceStatus {
            conditions: vec![c(READY, ready, "x"), c(DEGRADED, degraded, reason)],
            ..Default::default()
        }
    }

    fn reasons(e: &[StatusEvent]) -> Vec<&str> {
        e.iter().map(|e| e.reason.as_str()).collect()
    }

    #[test]
    fn events_only_on_transitions() {
        // First degradation by a spec problem: one warning, counted as a spec problem.
        let e = status_events(None, &st("False", "True", "InvalidSpec"));
        assert_eq!(reasons(&e), ["InvalidSpec"]);
        assert_eq!(e[0].type_, EventType::Warning);
        assert!(e[0].spec_problem);
        // Same degradation again: nothing (no event storm, no double count from requeues).
        let old = st("False", "True", "InvalidSpec");
        assert!(status_events(Some(&old), &st("False", "True", "InvalidSpec")).is_empty());
        // A different reason from the pods: a new warning, not a spec problem.
        let e = status_events(Some(&old), &st("False", "True", "CrashLoopBackOff"));
        assert_eq!(reasons(&e), ["CrashLoopBackOff"]);
        assert!(!e[0].spec_problem);
        // Recovery and readiness.
        let e = status_events(Some(&old), &st("True", "False", "AsExpected"));
        assert_eq!(reasons(&e), ["Recovered", "Ready"]);
        // Steady: nothing.
        let ok = st("True", "False", "AsExpected");
        assert!(status_events(Some(&ok), &ok.clone()).is_empty());
        // Serving stops: a warning.
        let e = status_events(Some(&ok), &st("False", "False", "AsExpected"));
        assert_eq!(reasons(&e), ["NotServing"]);
        assert_eq!(e[0].type_, EventType::Warning);
    }
}
