//! The reconcile loop: validate → build → apply → status (the Stackable pipeline), on
//! kube-runtime's `Controller`, watching InferenceServices and the children they own.
//!
//! - Valid spec: server-side apply of Deployment, Service, HPA and PDB under one field manager,
//!   with `force` (the operator is the only owner of those fields: hand edits are reverted).
//!   The HPA and PDB are deleted when no longer wanted. Deleting the InferenceService removes
//!   the children through their owner references (garbage collection).
//! - Invalid spec, or a child the operator does not control: `Degraded=True` with a reason, a
//!   Warning event, and no retry until the object changes (or a slow requeue).
//! - API errors: exponential backoff per object (5s … 5min).

use std::collections::HashMap;
use std::fmt::Debug;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ObjectReference, Pod, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::core::error_boundary::DeserializeGuard;
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::builders::{self, Config, LABEL_MANAGED_BY, MANAGER};
use crate::crd::{InferenceService, InferenceServiceStatus};
use crate::metrics::Metrics;
use crate::status::{self, DEGRADED, Observed, Problem, READY};
use crate::validate;

/// Requeue when everything is fine: a safety net against missed events.
const STEADY_REQUEUE: Duration = Duration::from_secs(300);
/// Requeue while not ready: pod states (crash loops) change without Deployment events.
const NOT_READY_REQUEUE: Duration = Duration::from_secs(30);
/// Requeue while a child the operator does not control blocks it.
const CONFLICT_REQUEUE: Duration = Duration::from_secs(120);
const BACKOFF_BASE: Duration = Duration::from_secs(5);
const BACKOFF_MAX: Duration = Duration::from_secs(300);

#[derive(thiserror::Error, Debug)]
pub enum Error {
    #[error("reading {what}: {source}")]
    Read { what: String, source: kube::Error },
    #[error("applying {what}: {source}")]
    Apply { what: String, source: kube::Error },
    #[error("deleting {what}: {source}")]
    Delete { what: String, source: kube::Error },
    #[error("writing the status: {0}")]
    Status(kube::Error),
}

impl Error {
    /// Label for `inference_operator_reconcile_errors_total{reason}`.
    pub fn metric_reason(&self) -> String {
        let (step, source) = match self {
            Error::Read { source, .. } => ("read", source),
            Error::Apply { source, .. } => ("apply", source),
            Error::Delete { source, .. } => ("delete", source),
            Error::Status(source) => ("status", source),
        };
        format!("{step}_{}", api_error_class(source))
    }
}

/// Short class of a kube error: `conflict`, `invalid`, `forbidden`, `not_found`, `api_<code>`,
/// or `transport`.
pub fn api_error_class(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => match s.code {
            409 => "conflict".into(),
            400 | 422 => "invalid".into(),
            401 | 403 => "forbidden".into(),
            404 => "not_found".into(),
            c => format!("api_{c}"),
        },
        _ => "transport".into(),
    }
}

/// True for errors that retrying will not fix: the API server rejected what we sent.
fn is_rejection(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 400 || s.code == 422)
}

/// Shared state of all reconciles.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    pub config: Config,
    /// Consecutive failures per object, for the error backoff.
    failures: Mutex<HashMap<String, u32>>,
}

impl Context {
    pub fn new(client: Client, config: Config, metrics: Arc<Metrics>, instance: String) -> Self {
        let reporter = Reporter {
            controller: MANAGER.into(),
            instance: Some(instance),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
            config,
            failures: Mutex::default(),
        }
    }

    async fn event(
        &self,
        reference: &ObjectReference,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) {
        let ev = Event {
            type_,
            reason: reason.into(),
            note: Some(truncate(note, 1000)),
            action: action.into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, reference).await {
            tracing::warn!(error = %e, reason, "publishing an event failed");
        }
    }
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

fn key(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> String {
    format!(
        "{}/{}",
        meta.namespace.as_deref().unwrap_or(""),
        meta.name.as_deref().unwrap_or("")
    )
}

/// Backoff after `failures` consecutive failures: 5s, 10s, 20s, … capped at 5 minutes.
pub fn backoff(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(16);
    (BACKOFF_BASE * 2u32.pow(exp)).min(BACKOFF_MAX)
}

/// Entry point for the Controller.
pub async fn reconcile(
    obj: Arc<DeserializeGuard<InferenceService>>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile_started();
    let isvc = match &obj.0 {
        Ok(isvc) => isvc,
        Err(invalid) => {
            // Only possible when the stored object does not match our types (e.g. an older or
            // hand-edited CRD). Report it and wait for a change; never crash the watch.
            ctx.metrics.error("invalid_object");
            tracing::warn!(object = %key(&invalid.metadata), error = %invalid.error, "cannot parse InferenceService");
            let reference = ObjectReference {
                api_version: Some(InferenceService::api_version(&()).into()),
                kind: Some(InferenceService::kind(&()).into()),
                name: invalid.metadata.name.clone(),
                namespace: invalid.metadata.namespace.clone(),
                uid: invalid.metadata.uid.clone(),
                ..Default::default()
            };
            ctx.event(
                &reference,
                EventType::Warning,
                "InvalidObject",
                "Parse",
                invalid.error.clone(),
            )
            .await;
            return Ok(Action::await_change());
        }
    };
    if isvc.metadata.deletion_timestamp.is_some() {
        // Children go with their owner (garbage collection); nothing to do.
        return Ok(Action::await_change());
    }
    let result = reconcile_valid(isvc, &ctx).await;
    if result.is_ok() {
        ctx.failures.lock().unwrap().remove(&key(&isvc.metadata));
    }
    result
}

/// Backoff on errors, counted per object; each error is also a metric.
pub fn error_policy(
    obj: Arc<DeserializeGuard<InferenceService>>,
    err: &Error,
    ctx: Arc<Context>,
) -> Action {
    let meta = match &obj.0 {
        Ok(i) => &i.metadata,
        Err(invalid) => &invalid.metadata,
    };
    let n = {
        let mut failures = ctx.failures.lock().unwrap();
        let n = failures.entry(key(meta)).or_insert(0);
        *n += 1;
        *n
    };
    ctx.metrics.error(&err.metric_reason());
    let delay = backoff(n);
    tracing::warn!(object = %key(meta), error = %err, retry_in = ?delay, failures = n, "reconcile failed");
    Action::requeue(delay)
}

async fn get_opt<K>(api: &Api<K>, name: &str, what: &str) -> Result<Option<K>, Error>
where
    K: Clone + DeserializeOwned + Debug,
{
    api.get_opt(name).await.map_err(|source| Error::Read {
        what: what.into(),
        source,
    })
}

async fn apply<K>(api: &Api<K>, obj: &K, what: &str) -> Result<K, kube::Error>
where
    K: Resource + Clone + Serialize + DeserializeOwned + Debug,
{
    let name = obj.meta().name.clone().unwrap_or_default();
    tracing::debug!(what, name, "server-side apply");
    api.patch(
        &name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(obj),
    )
    .await
}

/// Deletes `existing` if this InferenceService controls it.
async fn delete_owned<K>(
    api: &Api<K>,
    existing: Option<K>,
    isvc: &InferenceService,
    what: &str,
) -> Result<bool, Error>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    let Some(obj) = existing else {
        return Ok(false);
    };
    if !builders::is_controlled_by(obj.meta(), isvc) {
        return Ok(false);
    }
    match api
        .delete(&obj.name_any(), &DeleteParams::background())
        .await
    {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(false),
        Err(source) => Err(Error::Delete {
            what: what.into(),
            source,
        }),
    }
}

fn conflict<K: Resource<DynamicType = ()>>(
    existing: Option<&K>,
    isvc: &InferenceService,
) -> Option<String> {
    let obj = existing?;
    (!builders::is_controlled_by(obj.meta(), isvc)).then(|| {
        format!(
            "{} {}/{} already exists and is not controlled by this InferenceService: delete or rename it",
            K::kind(&()),
            isvc.namespace().unwrap_or_default(),
            obj.name_any()
        )
    })
}

async fn reconcile_valid(isvc: &InferenceService, ctx: &Context) -> Result<Action, Error> {
    let client = ctx.client.clone();
    let ns = isvc.namespace().unwrap_or_else(|| "default".into());
    let name = builders::child_name(isvc);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), &ns);
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), &ns);
    let reference = isvc.object_ref(&());

    // Observe.
    let existing_dep = get_opt(&deployments, &name, "the Deployment").await?;
    let controlled_dep = existing_dep
        .as_ref()
        .filter(|d| builders::is_controlled_by(&d.metadata, isvc));

    // Validate.
    if let Err(issues) = validate::validate(isvc) {
        ctx.metrics.error("invalid_spec");
        let problem = Problem::new("InvalidSpec", validate::summarize(&issues));
        let pods = list_pods(isvc, ctx, &ns).await?;
        let observed = Observed {
            deployment: controlled_dep,
            pods: status::pod_health(&pods),
            problem: Some(problem),
        };
        write_status(isvc, ctx, &observed).await?;
        // Nothing changes until the spec does.
        return Ok(Action::await_change());
    }

    let existing_svc = get_opt(&services, &name, "the Service").await?;
    let existing_hpa = get_opt(&hpas, &name, "the HorizontalPodAutoscaler").await?;
    let existing_pdb = get_opt(&pdbs, &name, "the PodDisruptionBudget").await?;
    let conflicts: Vec<String> = [
        conflict(existing_dep.as_ref(), isvc),
        conflict(existing_svc.as_ref(), isvc),
        builders::hpa::build(isvc).and(conflict(existing_hpa.as_ref(), isvc)),
        conflict(existing_pdb.as_ref(), isvc),
    ]
    .into_iter()
    .flatten()
    .collect();
    if !conflicts.is_empty() {
        ctx.metrics.error("child_conflict");
        let observed = Observed {
            deployment: controlled_dep,
            pods: Default::default(),
            problem: Some(Problem::new("ChildConflict", conflicts.join("; "))),
        };
        write_status(isvc, ctx, &observed).await?;
        return Ok(Action::requeue(CONFLICT_REQUEUE));
    }

    // Build and apply.
    let cfg = &ctx.config;
    let created = existing_dep.is_none();
    let replicas = builders::deployment::replicas_to_apply(isvc, existing_dep.as_ref());
    let steps = async {
        let dep = apply(
            &deployments,
            &builders::deployment::build(isvc, cfg, replicas),
            "Deployment",
        )
        .await
        .map_err(|e| ("Deployment", e))?;
        let svc = builders::service::build(isvc);
        if let Some(ports) = existing_svc
            .as_ref()
            .and_then(|existing| builders::service::repaired_ports(existing, &svc))
        {
            // A hand edit changed our port's key: replace the list first (a JSON merge patch
            // replaces lists), else the apply below adds a second port of the same name.
            tracing::info!(isvc = %name, "restoring the Service port changed by hand");
            let pp = PatchParams {
                field_manager: Some(MANAGER.into()),
                ..Default::default()
            };
            match services
                .patch(&name, &pp, &Patch::Merge(json!({"spec": {"ports": ports}})))
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(("Service", e)),
            }
        }
        apply(&services, &svc, "Service")
            .await
            .map_err(|e| ("Service", e))?;
        match builders::hpa::build(isvc) {
            Some(hpa) => {
                apply(&hpas, &hpa, "HorizontalPodAutoscaler")
                    .await
                    .map_err(|e| ("HorizontalPodAutoscaler", e))?;
            }
            None => {
                if delete_owned(&hpas, existing_hpa, isvc, "HorizontalPodAutoscaler")
                    .await
                    .map_err(|e| match e {
                        Error::Delete { source, .. } => ("HorizontalPodAutoscaler", source),
                        _ => unreachable!(),
                    })?
                {
                    tracing::info!(isvc = %name, "autoscaling removed: deleted the HorizontalPodAutoscaler");
                }
            }
        }
        apply(&pdbs, &builders::pdb::build(isvc), "PodDisruptionBudget")
            .await
            .map_err(|e| ("PodDisruptionBudget", e))?;
        Ok::<Deployment, (&str, kube::Error)>(dep)
    };
    let dep = match steps.await {
        Ok(dep) => dep,
        Err((what, source)) => {
            if is_rejection(&source) {
                // The API server refused what we built: the user must change the spec.
                let message = match &source {
                    kube::Error::Api(s) => {
                        format!("the API server rejected the {what}: {}", s.message)
                    }
                    other => format!("the API server rejected the {what}: {other}"),
                };
                let observed = Observed {
                    deployment: controlled_dep,
                    pods: Default::default(),
                    problem: Some(Problem::new("ApplyFailed", message)),
                };
                write_status(isvc, ctx, &observed).await?;
            }
            return Err(Error::Apply {
                what: what.into(),
                source,
            });
        }
    };

    let spec_changed =
        isvc.status.as_ref().and_then(|s| s.observed_generation) != isvc.metadata.generation;
    if created {
        let mut kinds = vec!["Deployment", "Service", "PodDisruptionBudget"];
        if builders::hpa::build(isvc).is_some() {
            kinds.push("HorizontalPodAutoscaler");
        }
        ctx.event(
            &reference,
            EventType::Normal,
            "Created",
            "Create",
            format!("created {} {name}", kinds.join(", ")),
        )
        .await;
    } else if spec_changed {
        ctx.event(
            &reference,
            EventType::Normal,
            "Updated",
            "Update",
            "applied the changed spec to the children".into(),
        )
        .await;
    }

    // Status.
    let pods = list_pods(isvc, ctx, &ns).await?;
    let observed = Observed {
        deployment: Some(&dep),
        pods: status::pod_health(&pods),
        problem: None,
    };
    let new = write_status(isvc, ctx, &observed).await?;
    Ok(if status::is_true(Some(&new), READY) {
        Action::requeue(STEADY_REQUEUE)
    } else {
        Action::requeue(NOT_READY_REQUEUE)
    })
}

async fn list_pods(isvc: &InferenceService, ctx: &Context, ns: &str) -> Result<Vec<Pod>, Error> {
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let lp = ListParams::default().labels(&builders::selector_string(isvc));
    pods.list(&lp)
        .await
        .map(|l| l.items)
        .map_err(|source| Error::Read {
            what: "the pods".into(),
            source,
        })
}

/// Now, to the second (what the API server stores).
fn now() -> Time {
    let s = Timestamp::now().as_second();
    Time(Timestamp::from_second(s).unwrap_or_else(|_| Timestamp::now()))
}

/// Computes the status, writes it if it changed, and emits events for condition changes.
async fn write_status(
    isvc: &InferenceService,
    ctx: &Context,
    observed: &Observed<'_>,
) -> Result<InferenceServiceStatus, Error> {
    let new = status::compute(isvc, &ctx.config, observed, now());
    let old = isvc.status.as_ref();
    if old != Some(&new) {
        let api: Api<InferenceService> =
            Api::namespaced(ctx.client.clone(), &isvc.namespace().unwrap_or_default());
        let patch = json!({
            "apiVersion": InferenceService::api_version(&()),
            "kind": InferenceService::kind(&()),
            "status": new,
        });
        api.patch_status(
            &isvc.name_any(),
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
        .map_err(Error::Status)?;
    }
    for (type_, reason, action, note) in status_events(old, &new) {
        ctx.event(&isvc.object_ref(&()), type_, &reason, action, note)
            .await;
    }
    Ok(new)
}

/// Events for condition changes between two statuses.
pub fn status_events(
    old: Option<&InferenceServiceStatus>,
    new: &InferenceServiceStatus,
) -> Vec<(EventType, String, &'static str, String)> {
    let mut events = Vec::new();
    let old_deg = status::condition(old, DEGRADED);
    let new_deg = status::condition(Some(new), DEGRADED);
    if let Some(nd) = new_deg {
        let was_same = old_deg.is_some_and(|od| od.status == nd.status && od.reason == nd.reason);
        if nd.status == "True" && !was_same {
            events.push((
                EventType::Warning,
                nd.reason.clone(),
                "Reconcile",
                nd.message.clone(),
            ));
        }
        if nd.status == "False" && old_deg.is_some_and(|od| od.status == "True") {
            events.push((
                EventType::Normal,
                "Recovered".into(),
                "Reconcile",
                "no longer degraded".into(),
            ));
        }
    }
    let old_ready = status::condition(old, READY);
    if let Some(nr) = status::condition(Some(new), READY)
        && nr.status == "True"
        && old_ready.is_none_or(|o| o.status != "True")
    {
        events.push((
            EventType::Normal,
            "Ready".into(),
            "Reconcile",
            nr.message.clone(),
        ));
    }
    events
}

/// Options of the controller loop.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Watch one namespace only; all namespaces when `None`.
    pub namespace: Option<String>,
    pub concurrency: u16,
}

/// Runs the controller until `shutdown` completes (in-flight reconciles finish first).
pub async fn run(
    ctx: Arc<Context>,
    opts: RunOptions,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    fn api<K: Resource<Scope = kube::core::NamespaceResourceScope>>(
        client: &Client,
        ns: &Option<String>,
    ) -> Api<K>
    where
        K::DynamicType: Default,
    {
        match ns {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        }
    }
    let ns = &opts.namespace;
    let owned = watcher::Config::default().labels(&format!("{LABEL_MANAGED_BY}={MANAGER}"));
    Controller::new(
        api::<DeserializeGuard<InferenceService>>(&client, ns),
        watcher::Config::default().any_semantic(),
    )
    .owns(api::<Deployment>(&client, ns), owned.clone())
    .owns(api::<Service>(&client, ns), owned.clone())
    .owns(api::<HorizontalPodAutoscaler>(&client, ns), owned.clone())
    .owns(api::<PodDisruptionBudget>(&client, ns), owned)
    .with_config(
        ControllerConfig::default()
            .concurrency(opts.concurrency)
            .debounce(Duration::from_millis(500)),
    )
    .graceful_shutdown_on(shutdown)
    .run(reconcile, error_policy, ctx)
    .for_each(|result| async move {
        match result {
            Ok((obj, _)) => tracing::debug!(object = %obj, "reconciled"),
            Err(e) => tracing::debug!(error = %e, "controller event"),
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        assert_eq!(backoff(1), Duration::from_secs(5));
        assert_eq!(backoff(2), Duration::from_secs(10));
        assert_eq!(backoff(4), Duration::from_secs(40));
        assert_eq!(backoff(7), Duration::from_secs(300));
        assert_eq!(backoff(1000), Duration::from_secs(300));
    }

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

    #[test]
    fn events_only_on_transitions() {
        // First degradation: one warning.
        let e = status_events(None, &st("False", "True", "InvalidSpec"));
        assert_eq!(e.len(), 1);
        assert_eq!(
            (e[0].0, e[0].1.as_str()),
            (EventType::Warning, "InvalidSpec")
        );
        // Same degradation again: nothing (no event storm from requeues).
        let old = st("False", "True", "InvalidSpec");
        assert!(status_events(Some(&old), &st("False", "True", "InvalidSpec")).is_empty());
        // A different reason: a new warning.
        let e = status_events(Some(&old), &st("False", "True", "CrashLoopBackOff"));
        assert_eq!(e[0].1, "CrashLoopBackOff");
        // Recovery and readiness.
        let e = status_events(Some(&old), &st("True", "False", "AsExpected"));
        let reasons: Vec<_> = e.iter().map(|e| e.1.as_str()).collect();
        assert_eq!(reasons, vec!["Recovered", "Ready"]);
        // Steady: nothing.
        let ok = st("True", "False", "AsExpected");
        assert!(status_events(Some(&ok), &ok.clone()).is_empty());
    }

    #[test]
    fn error_classes() {
        let api = |code: u16| {
            kube::Error::Api(Box::new(kube::core::Status {
                code,
                ..Default::default()
            }))
        };
        assert_eq!(api_error_class(&api(409)), "conflict");
        assert_eq!(api_error_class(&api(422)), "invalid");
        assert_eq!(api_error_class(&api(403)), "forbidden");
        assert_eq!(api_error_class(&api(503)), "api_503");
        assert!(is_rejection(&api(422)));
        assert!(!is_rejection(&api(500)));
        let e = Error::Apply {
            what: "Deployment".into(),
            source: api(422),
        };
        assert_eq!(e.metric_reason(), "apply_invalid");
    }
}
