//! The reconcile loop: validate → build → apply → status (the Stackable pipeline), on
//! kube-runtime's `Controller`.
//!
//! - Watches: InferenceServices (a reconcile only when the spec or annotations change, not on
//!   our own status writes), the four child kinds and the server pods (by label, into
//!   [`children::Stores`]). Reads come from those stores; see [`children`].
//! - Valid spec: every wanted child is applied where the stored copy differs (server-side apply,
//!   one field manager, `force`: hand edits are reverted), then every child this object controls
//!   but no longer wants is deleted. Deleting the InferenceService removes the children through
//!   their owner references (garbage collection).
//! - A spec problem (invalid spec, an image or ServiceAccount the policy refuses, a child the
//!   operator does not control, an apply the API server rejects): `Degraded=True` with a reason,
//!   one Warning event, and no retry until the object changes (or a slow requeue).
//! - API errors: exponential backoff per object (5s … 5min).

mod bluegreen;
pub mod children;
mod events;

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ObjectReference, Pod, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::core::error_boundary::DeserializeGuard;
use kube::runtime::controller::{self, Action, Config as ControllerConfig, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use tracing::Instrument;

use self::children::{Child, Stores, delete_unwanted, ensure};
pub use self::events::status_events;
use crate::builders::bluegreen as bluegreen_builders;
use crate::builders::{self, Config, LABEL_MANAGED_BY, LABEL_SELECTOR, MANAGER};
use crate::crd::{InferenceService, InferenceServiceStatus};
use crate::http::Health;
use crate::metrics::Metrics;
use crate::status::{self, DEGRADED, Observed, Problem, READY};
use crate::validate::{self, Policy};

/// Requeue when nothing changes: a safety net against missed events (cheap: reads are cached).
const STEADY_REQUEUE: Duration = Duration::from_secs(300);
/// Requeue while a child the operator does not control blocks it.
const CONFLICT_REQUEUE: Duration = Duration::from_secs(120);
const BACKOFF_BASE: Duration = Duration::from_secs(5);
const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// Events that arrive within this window after one another make one reconcile.
const DEBOUNCE: Duration = Duration::from_millis(200);
/// For this long after writing a status, a stored object that does not show it yet is taken to
/// be behind (a busy API server delivers watch events seconds late), not changed by someone else.
const CACHE_LAG_TRUST: Duration = Duration::from_secs(30);

/// Condition reasons of the problems the operator finds itself.
pub const INVALID_SPEC: &str = "InvalidSpec";
pub const NOT_ALLOWED: &str = "NotAllowed";
pub const CHILD_CONFLICT: &str = "ChildConflict";
pub const APPLY_FAILED: &str = "ApplyFailed";
pub const INVALID_OBJECT: &str = "InvalidObject";

#[derive(thiserror::Error, Debug)]
pub enum Error {
    #[error("reading {what}: {source}")]
    Read { what: String, source: kube::Error },
    #[error("applying the {what}: {source}")]
    Apply { what: String, source: kube::Error },
    #[error("deleting the {what}: {source}")]
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

/// Operator-wide settings of the reconciles.
#[derive(Clone, Debug, Default)]
pub struct Settings {
    pub config: Config,
    pub policy: Policy,
    /// Move InferenceServices without `spec.image` to a new default image at once (see
    /// [`builders::deployment::pinned_config`]).
    pub upgrade_default_image: bool,
}

/// Shared state of all reconciles.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    pub settings: Settings,
    pub stores: Stores,
    /// Consecutive failures per object, for the error backoff.
    failures: Mutex<HashMap<String, u32>>,
    /// Each object's status as this operator last wrote it, and when: a store still behind our
    /// own write must not make us write the same status again.
    status_written: Mutex<HashMap<String, (std::time::Instant, InferenceServiceStatus)>>,
}

impl Context {
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

/// Entry point for the Controller: one span per reconcile with the object's identity.
pub async fn reconcile(
    obj: Arc<DeserializeGuard<InferenceService>>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let meta = obj.meta();
    let span = tracing::info_span!(
        "reconcile",
        namespace = meta.namespace.as_deref().unwrap_or(""),
        name = meta.name.as_deref().unwrap_or(""),
        generation = meta.generation.unwrap_or(0),
    );
    reconcile_inner(obj.clone(), ctx).instrument(span).await
}

async fn reconcile_inner(
    obj: Arc<DeserializeGuard<InferenceService>>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile_started();
    let isvc = match &obj.0 {
        Ok(isvc) => isvc,
        Err(invalid) => {
            // Only possible when the stored object does not match our types (e.g. an older or
            // hand-edited CRD). Report it and wait for a change; never crash the watch.
            ctx.metrics.spec_problem(INVALID_OBJECT);
            tracing::warn!(error = %invalid.error, "cannot parse InferenceService");
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
                INVALID_OBJECT,
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
    let meta = obj.meta();
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

/// The child of kind `K` with our name: from the store, else (the store has not finished its
/// first list) from the API server, so that a child we do not control is found before an apply
/// would take it over.
async fn observe<K: Child>(ctx: &Context, isvc: &InferenceService) -> Result<Option<K>, Error> {
    observe_named(ctx, isvc, &builders::child_name(isvc)).await
}

/// [`observe`] for a child of another name (the blue/green colours and preview Service).
async fn observe_named<K: Child>(
    ctx: &Context,
    isvc: &InferenceService,
    name: &str,
) -> Result<Option<K>, Error> {
    if let Some(found) = ctx.stores.lookup_named::<K>(isvc, name) {
        return Ok(found);
    }
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &isvc.namespace().unwrap_or_default());
    api.get_opt(name).await.map_err(|source| Error::Read {
        what: format!("the {}", K::kind(&())),
        source,
    })
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

/// The problem the operator has with this spec before building anything, if any.
fn spec_problem(isvc: &InferenceService, policy: &Policy) -> Option<Problem> {
    if let Err(issues) = validate::validate(isvc) {
        return Some(Problem::new(INVALID_SPEC, validate::summarize(&issues)));
    }
    if let Err(issues) = validate::check_policy(isvc, policy) {
        return Some(Problem::new(NOT_ALLOWED, validate::summarize(&issues)));
    }
    None
}

async fn reconcile_valid(isvc: &InferenceService, ctx: &Context) -> Result<Action, Error> {
    let client = &ctx.client;
    let name = builders::child_name(isvc);
    let reference = isvc.object_ref(&());
    let wanted_hpa = builders::hpa::build(isvc);

    // Observe.
    let dep: Option<Deployment> = observe(ctx, isvc).await?;
    let svc: Option<Service> = observe(ctx, isvc).await?;
    let pdb: Option<PodDisruptionBudget> = observe(ctx, isvc).await?;
    let hpa: Option<HorizontalPodAutoscaler> = observe(ctx, isvc).await?;
    let our_pods = ctx.stores.pods_of(isvc);
    let pods = status::pod_health(&our_pods);
    let controlled_dep = dep
        .clone()
        .filter(|d| builders::is_controlled_by(&d.metadata, isvc));
    let controlled_svc = svc
        .clone()
        .filter(|s| builders::is_controlled_by(&s.metadata, isvc));

    // The blue/green children (the colours and the preview Service), in either strategy: a
    // switch back to RollingUpdate retires them.
    let blue_green = bluegreen_builders::is_blue_green(isvc);
    let colors = bluegreen::observe(ctx, isvc).await?;
    let our_colors = colors.controlled_by(isvc);
    let colored = controlled_svc
        .as_ref()
        .and_then(bluegreen_builders::selected_color);
    // The Deployment that serves: with blue/green, the colour the Service selects.
    let serving_dep = colored
        .and_then(|c| our_colors.of(c).cloned())
        .or_else(|| controlled_dep.clone());

    // Validate.
    let mut conflicts: Vec<String> = [
        conflict(svc.as_ref(), isvc),
        wanted_hpa.as_ref().and(conflict(hpa.as_ref(), isvc)),
        conflict(pdb.as_ref(), isvc),
    ]
    .into_iter()
    .flatten()
    .collect();
    if blue_green {
        conflicts.extend(
            [
                conflict(colors.blue.as_ref(), isvc),
                conflict(colors.green.as_ref(), isvc),
                conflict(colors.preview.as_ref(), isvc),
            ]
            .into_iter()
            .flatten(),
        );
    } else {
        conflicts.extend(conflict(dep.as_ref(), isvc));
    }
    let problem = spec_problem(isvc, &ctx.settings.policy).or_else(|| {
        (!conflicts.is_empty()).then(|| Problem::new(CHILD_CONFLICT, conflicts.join("; ")))
    });
    if let Some(problem) = problem {
        let requeue = if problem.reason == CHILD_CONFLICT {
            Action::requeue(CONFLICT_REQUEUE)
        } else {
            // Nothing changes until the spec does.
            Action::await_change()
        };
        let observed = Observed {
            deployment: serving_dep.as_ref(),
            service: controlled_svc.as_ref(),
            pods,
            problem: Some(problem),
            blue_green: None,
        };
        write_status(isvc, ctx, &observed).await?;
        return Ok(requeue);
    }

    if blue_green {
        let inputs = bluegreen::Inputs {
            stored: our_colors,
            plain: controlled_dep,
            service: controlled_svc,
            hpa,
            pdb,
            wanted_hpa,
            pods,
            plain_pods_hash: bluegreen_builders::plain_pods_hash(&our_pods),
        };
        return bluegreen::reconcile(isvc, ctx, inputs).await;
    }

    // Build.
    let s = &ctx.settings;
    let cfg = builders::deployment::pinned_config(
        isvc,
        &s.config,
        controlled_dep.as_ref(),
        s.upgrade_default_image,
    );
    let created = dep.is_none();

    // Apply what differs, then delete what is no longer wanted.
    let mut applied: Vec<&str> = Vec::new();
    let steps = async {
        let dep = ensure(
            client,
            dep.as_ref(),
            &builders::deployment::build(isvc, &cfg),
        )
        .await
        .map_err(|e| ("Deployment", e))?;
        applied.extend(dep.applied.then_some("Deployment"));
        // Switching back from blue/green: the Service keeps selecting the serving colour until
        // this Deployment has all its pods ready, then selects every pod (the idle colour has
        // none by then; the serving colour is deleted next).
        let desired_svc = match colored {
            Some(c) if !bluegreen_builders::rolled_out(&dep.object) => bluegreen_builders::service(
                isvc,
                Some(c),
                svc.as_ref().and_then(bluegreen_builders::promoted_at),
            ),
            _ => builders::service::build(isvc),
        };
        let svc = ensure_service(client, isvc, svc, &desired_svc)
            .await
            .map_err(|e| ("Service", e))?;
        applied.extend(svc.applied.then_some("Service"));
        if let Some(desired) = &wanted_hpa {
            let hpa = ensure(client, hpa.as_ref(), desired)
                .await
                .map_err(|e| ("HorizontalPodAutoscaler", e))?;
            applied.extend(hpa.applied.then_some("HorizontalPodAutoscaler"));
        }
        let pdb = ensure(client, pdb.as_ref(), &builders::pdb::build(isvc))
            .await
            .map_err(|e| ("PodDisruptionBudget", e))?;
        applied.extend(pdb.applied.then_some("PodDisruptionBudget"));
        Ok::<_, (&str, kube::Error)>((dep.object, svc.object))
    };
    let (dep, svc) = match steps.await {
        Ok(objects) => objects,
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
                    deployment: serving_dep.as_ref(),
                    service: controlled_svc.as_ref(),
                    pods,
                    problem: Some(Problem::new(APPLY_FAILED, message)),
                    blue_green: None,
                };
                write_status(isvc, ctx, &observed).await?;
            }
            return Err(Error::Apply {
                what: what.into(),
                source,
            });
        }
    };
    // Switching back from blue/green: the colours stay while the Service still selects one;
    // the idle colour goes to 0 at once, so that the Service's switch to every pod never
    // reaches a preview that was not promoted.
    let still_colored = bluegreen_builders::selected_color(&svc);
    let (mut wanted_deps, mut wanted_svcs) = (vec![name.clone()], vec![name.clone()]);
    if let Some(active) = still_colored {
        let idle = our_colors.of(active.other());
        if idle.is_some_and(|d| builders::deployment::spec_replicas(d) > 0) {
            let idle_name = bluegreen_builders::deployment_name(isvc, active.other());
            bluegreen::scale(ctx, isvc, &idle_name, 0).await?;
        }
        wanted_deps = bluegreen_builders::wanted_deployments(isvc, true);
        wanted_svcs.push(bluegreen_builders::preview_name(isvc));
    }
    let deleted =
        delete_unwanted_children(ctx, isvc, &wanted_deps, &wanted_svcs, wanted_hpa.is_some())
            .await?;

    if created {
        let mut kinds = vec!["Deployment", "Service", "PodDisruptionBudget"];
        if wanted_hpa.is_some() {
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
    } else {
        announce_changes(ctx, isvc, &applied, &deleted).await;
    }

    // Status.
    let observed = Observed {
        deployment: Some(&dep),
        service: Some(&svc),
        pods,
        problem: None,
        blue_green: None,
    };
    write_status(isvc, ctx, &observed).await?;
    Ok(Action::requeue(STEADY_REQUEUE))
}

/// Applies the Service, first repairing a port whose key a hand edit changed: server-side apply
/// would add a second port of the same name next to it (see `service::repaired_ports`).
async fn ensure_service(
    client: &Client,
    isvc: &InferenceService,
    mut svc: Option<Service>,
    desired: &Service,
) -> Result<children::Ensured<Service>, kube::Error> {
    if let Some(ports) = svc
        .as_ref()
        .and_then(|existing| builders::service::repaired_ports(existing, desired))
    {
        // A JSON merge patch replaces lists.
        tracing::info!("restoring the Service port changed by hand");
        let api: Api<Service> =
            Api::namespaced(client.clone(), &isvc.namespace().unwrap_or_default());
        let pp = PatchParams {
            field_manager: Some(MANAGER.into()),
            ..Default::default()
        };
        match api
            .patch(
                &desired.name_any(),
                &pp,
                &Patch::Merge(json!({"spec": {"ports": ports}})),
            )
            .await
        {
            Ok(patched) => svc = Some(patched),
            Err(kube::Error::Api(s)) if s.code == 404 => svc = None,
            Err(e) => return Err(e),
        }
    }
    // A key added to the selector by hand is "contained" too, and the selector then matches no
    // pod: compare selectors exactly (the field is atomic, so the apply replaces it whole).
    let selector = |s: &Service| s.spec.as_ref().and_then(|s| s.selector.clone());
    let stored = svc.filter(|have| selector(have) == selector(desired));
    ensure(client, stored.as_ref(), desired).await
}

/// [`ensure_service`] for the blue/green path: the stored object back, `Service` noted in
/// `applied` when a request was made.
async fn apply_service(
    ctx: &Context,
    isvc: &InferenceService,
    svc: Option<Service>,
    desired: &Service,
    applied: &mut Vec<String>,
) -> Result<Service, Error> {
    let done = ensure_service(&ctx.client, isvc, svc, desired)
        .await
        .map_err(|source| Error::Apply {
            what: "Service".into(),
            source,
        })?;
    if done.applied {
        applied.push(format!("Service/{}", desired.name_any()));
    }
    Ok(done.object)
}

/// Deletes the children this InferenceService controls but no longer wants: Deployments and
/// Services not named in the lists, the HPA unless `hpa`, the PDB only if renamed. Returns
/// `Kind/name` of each.
async fn delete_unwanted_children(
    ctx: &Context,
    isvc: &InferenceService,
    deployments: &[String],
    services: &[String],
    hpa: bool,
) -> Result<Vec<String>, Error> {
    let name = builders::child_name(isvc);
    let one = std::slice::from_ref(&name);
    let mut deleted = Vec::new();
    delete_each::<Deployment>(ctx, isvc, deployments, &mut deleted).await?;
    delete_each::<Service>(ctx, isvc, services, &mut deleted).await?;
    delete_each::<HorizontalPodAutoscaler>(ctx, isvc, if hpa { one } else { &[] }, &mut deleted)
        .await?;
    delete_each::<PodDisruptionBudget>(ctx, isvc, one, &mut deleted).await?;
    Ok(deleted)
}

/// Logs "applied A, B; deleted Kind/c" and sends it as an Updated event (what `kubectl describe`
/// shows a spec change did), on both reconcile paths; nothing when nothing changed.
async fn announce_changes<S: AsRef<str>>(
    ctx: &Context,
    isvc: &InferenceService,
    applied: &[S],
    deleted: &[String],
) {
    let applied: Vec<&str> = applied.iter().map(AsRef::as_ref).collect();
    let mut note = Vec::new();
    if !applied.is_empty() {
        note.push(format!("applied {}", applied.join(", ")));
    }
    if !deleted.is_empty() {
        note.push(format!("deleted {}", deleted.join(", ")));
    }
    if note.is_empty() {
        return;
    }
    let note = note.join("; ");
    tracing::info!(changes = %note, "updated the children");
    ctx.event(
        &isvc.object_ref(&()),
        EventType::Normal,
        "Updated",
        "Update",
        note,
    )
    .await;
}

/// Deletes the children of kind `K` that are not `wanted`, adding `Kind/name` to `deleted`.
async fn delete_each<K: Child>(
    ctx: &Context,
    isvc: &InferenceService,
    wanted: &[String],
    deleted: &mut Vec<String>,
) -> Result<(), Error> {
    let names = delete_unwanted::<K>(&ctx.client, &ctx.stores, isvc, wanted)
        .await
        .map_err(|source| Error::Delete {
            what: K::kind(&()).into(),
            source,
        })?;
    deleted.extend(names.into_iter().map(|n| format!("{}/{n}", K::kind(&()))));
    Ok(())
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
    let new = status::compute(isvc, &ctx.settings.config, observed, now());
    let old = isvc.status.as_ref();
    let key = key(&isvc.metadata);
    if already_written(ctx.status_written.lock().unwrap().get(&key), &new) {
        // Our own write of exactly this has not reached the store yet: under load the watch
        // lags seconds behind, and writing it again only adds to the API server's load (at 1000
        // new InferenceServices this was 0.7 extra status writes each).
        return Ok(new);
    }
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
        let mut written = ctx.status_written.lock().unwrap();
        if written.len() > 4096 {
            written.retain(|_, (at, _)| at.elapsed() < CACHE_LAG_TRUST);
        }
        written.insert(key, (std::time::Instant::now(), new.clone()));
    }
    ctx.metrics.set_conditions(
        &isvc.namespace().unwrap_or_default(),
        &isvc.name_any(),
        status::is_true(Some(&new), READY),
        status::is_true(Some(&new), DEGRADED),
    );
    for event in status_events(old, &new) {
        if event.spec_problem {
            ctx.metrics.spec_problem(&event.reason);
        }
        ctx.event(
            &isvc.object_ref(&()),
            event.type_,
            &event.reason,
            event.action,
            event.note,
        )
        .await;
    }
    Ok(new)
}

/// True when `new` is what this operator wrote last for the object, within [`CACHE_LAG_TRUST`].
fn already_written(
    last: Option<&(std::time::Instant, InferenceServiceStatus)>,
    new: &InferenceServiceStatus,
) -> bool {
    last.is_some_and(|(at, written)| written == new && at.elapsed() < CACHE_LAG_TRUST)
}

/// Options of the controller loop.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Watch one namespace only; all namespaces when `None`.
    pub namespace: Option<String>,
    pub concurrency: u16,
}

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

/// A watch of `K` feeding `writer`: `managedFields` stripped (they are most of an object's size
/// and the operator never reads them), failures reported to `health`.
fn watch<K>(
    api: Api<K>,
    config: watcher::Config,
    writer: reflector::store::Writer<K>,
    health: Health,
) -> impl Stream<Item = Result<K, watcher::Error>> + Send + 'static
where
    K: Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let plural = K::plural(&()).into_owned().leak() as &'static str;
    watcher(api, config)
        .default_backoff()
        .modify(|o: &mut K| o.managed_fields_mut().clear())
        .reflect(writer)
        .inspect(move |r| match r {
            Ok(_) => health.watch_result(plural, None),
            Err(e) => health.watch_result(plural, Some(e)),
        })
        .applied_objects()
}

/// What identifies a change worth a reconcile of the InferenceService: its spec (generation)
/// and annotations; not our own status writes.
fn spec_or_annotations(obj: &DeserializeGuard<InferenceService>) -> Option<u64> {
    let mut h = DefaultHasher::new();
    obj.meta().generation.hash(&mut h);
    obj.meta().annotations.hash(&mut h);
    obj.meta().uid.hash(&mut h);
    Some(h.finish())
}

/// Runs the controller until `shutdown` completes (in-flight reconciles finish first).
pub async fn run(
    client: Client,
    settings: Settings,
    metrics: Arc<Metrics>,
    health: Health,
    identity: String,
    opts: RunOptions,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let ns = &opts.namespace;
    // Children: every object of the kind, so that a foreign one of our name is seen (see
    // `children`). Pods, by far the most numerous: only ours (the pod template's label).
    let children = watcher::Config::default().any_semantic();
    let our_pods = watcher::Config::default().labels(&format!("{LABEL_MANAGED_BY}={MANAGER}"));
    let (deployments, dep_w) = reflector::store();
    let (services, svc_w) = reflector::store();
    let (hpas, hpa_w) = reflector::store();
    let (pdbs, pdb_w) = reflector::store();
    let (pods, pod_w) = reflector::store();
    let (isvcs, isvc_w) = reflector::store();
    let stores = Stores {
        deployments,
        services,
        hpas,
        pdbs,
        pods,
    };
    let main = watch(
        api::<DeserializeGuard<InferenceService>>(&client, ns),
        watcher::Config::default().any_semantic(),
        isvc_w,
        health.clone(),
    )
    .predicate_filter(spec_or_annotations, Default::default());

    let reporter = Reporter {
        controller: MANAGER.into(),
        instance: Some(identity),
    };
    let ctx = Arc::new(Context {
        recorder: Recorder::new(client.clone(), reporter),
        client: client.clone(),
        metrics: metrics.clone(),
        settings,
        stores,
        failures: Mutex::default(),
        status_written: Mutex::default(),
    });

    // Drop the condition gauges of deleted InferenceServices.
    let gauges = {
        let (metrics, isvcs) = (metrics.clone(), isvcs.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(30));
            loop {
                tick.tick().await;
                let present: BTreeSet<(String, String)> = isvcs
                    .state()
                    .iter()
                    .map(|o: &Arc<DeserializeGuard<InferenceService>>| {
                        (
                            o.meta().namespace.clone().unwrap_or_default(),
                            o.meta().name.clone().unwrap_or_default(),
                        )
                    })
                    .collect();
                metrics
                    .retain_objects(|o| present.contains(&(o.namespace.clone(), o.name.clone())));
            }
        })
    };

    Controller::for_stream(main, isvcs)
        .owns_stream(watch(
            api::<Deployment>(&client, ns),
            children.clone(),
            dep_w,
            health.clone(),
        ))
        .owns_stream(watch(
            api::<Service>(&client, ns),
            children.clone(),
            svc_w,
            health.clone(),
        ))
        .owns_stream(watch(
            api::<HorizontalPodAutoscaler>(&client, ns),
            children.clone(),
            hpa_w,
            health.clone(),
        ))
        .owns_stream(watch(
            api::<PodDisruptionBudget>(&client, ns),
            children,
            pdb_w,
            health.clone(),
        ))
        // Pods belong to ReplicaSets; they name their InferenceService in the selector label.
        .watches_stream(
            watch(api::<Pod>(&client, ns), our_pods, pod_w, health.clone()),
            |pod: Pod| {
                let ns = pod.namespace();
                pod.labels()
                    .get(LABEL_SELECTOR)
                    .map(|name| ObjectRef::new(name).within(ns.as_deref().unwrap_or_default()))
            },
        )
        .with_config(
            ControllerConfig::default()
                .concurrency(opts.concurrency)
                .debounce(DEBOUNCE),
        )
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((obj, _)) => tracing::debug!(object = %obj, "reconciled"),
                // Logged with its backoff by error_policy.
                Err(controller::Error::ReconcilerFailed(..)) => {}
                Err(controller::Error::ObjectNotFound(obj)) => {
                    tracing::debug!(object = %obj, "reconcile of a deleted object skipped")
                }
                Err(e) => tracing::warn!(error = %e, "controller error"),
            }
        })
        .await;
    gauges.abort();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_just_written_is_not_written_again() {
        let written = InferenceServiceStatus {
            observed_generation: Some(1),
            replicas: 1,
            ..Default::default()
        };
        let now = std::time::Instant::now();
        assert!(already_written(Some(&(now, written.clone())), &written));
        // Something changed since: write.
        let changed = InferenceServiceStatus {
            replicas: 2,
            ..written.clone()
        };
        assert!(!already_written(Some(&(now, written.clone())), &changed));
        // Long ago, or never: trust the store.
        let long_ago = now - CACHE_LAG_TRUST - Duration::from_secs(1);
        assert!(!already_written(
            Some(&(long_ago, written.clone())),
            &written
        ));
        assert!(!already_written(None, &written));
    }

    #[test]
    fn backoff_grows_and_caps() {
        assert_eq!(backoff(1), Duration::from_secs(5));
        assert_eq!(backoff(2), Duration::from_secs(10));
        assert_eq!(backoff(4), Duration::from_secs(40));
        assert_eq!(backoff(7), Duration::from_secs(300));
        assert_eq!(backoff(1000), Duration::from_secs(300));
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

    #[test]
    fn status_writes_do_not_retrigger_but_spec_changes_do() {
        let mut isvc = crate::builders::test_support::fixture("minimal.yaml");
        let before = spec_or_annotations(&DeserializeGuard(Ok(isvc.clone())));
        isvc.status = Some(InferenceServiceStatus {
            replicas: 3,
            ..Default::default()
        });
        isvc.metadata.resource_version = Some("999".into());
        assert_eq!(
            spec_or_annotations(&DeserializeGuard(Ok(isvc.clone()))),
            before
        );
        isvc.metadata.generation = Some(2);
        let after_spec = spec_or_annotations(&DeserializeGuard(Ok(isvc.clone())));
        assert_ne!(after_spec, before);
        isvc.metadata.annotations = Some([("a".to_string(), "b".to_string())].into());
        assert_ne!(spec_or_annotations(&DeserializeGuard(Ok(isvc))), after_spec);
    }

    #[test]
    fn spec_problems_name_their_reason() {
        let mut isvc = crate::builders::test_support::fixture("minimal.yaml");
        assert_eq!(spec_problem(&isvc, &Policy::default()), None);
        isvc.spec.image = Some("docker.io/x/y:1".into());
        let strict = Policy {
            allowed_image_prefixes: vec!["ecr.example/".into()],
            ..Default::default()
        };
        assert_eq!(spec_problem(&isvc, &strict).unwrap().reason, NOT_ALLOWED);
        isvc.spec.replicas = -1;
        assert_eq!(spec_problem(&isvc, &strict).unwrap().reason, INVALID_SPEC);
    }
}
