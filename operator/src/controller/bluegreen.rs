//! The blue/green reconcile: [`bluegreen::plan`] decides, this applies it, smoke-tests a ready
//! preview through the preview Service, promotes, and reports.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Api, Resource, ResourceExt};
use serde_json::json;

use super::children::ensure;
use super::{
    Context, Error, STEADY_REQUEUE, announce_changes, apply_service, delete_unwanted_children,
    observe_named, write_status,
};
use crate::builders::bluegreen::{self, Color, Live, Phase, Plan};
use crate::builders::{self, MANAGER};
use crate::crd::InferenceService;
use crate::smoke;
use crate::status::{BlueGreenView, Observed, Pending, PodHealth};

/// One smoke request may take this long (a CPU pod classifies one photo in well under a second;
/// a cold one may first have to fault its weights in).
const SMOKE_TIMEOUT: Duration = Duration::from_secs(20);
/// Tries before a smoke failure counts: the new pods' endpoints may reach kube-proxy a moment
/// after the Deployment reports them ready.
const SMOKE_TRIES: u32 = 3;
/// Retry a failed smoke request after this long.
const SMOKE_REQUEUE: Duration = Duration::from_secs(10);

/// The children a blue/green InferenceService may have, as stored.
pub(super) struct Stored {
    pub blue: Option<Deployment>,
    pub green: Option<Deployment>,
    pub preview: Option<Service>,
}

impl Stored {
    /// Only the children this InferenceService controls (the others are conflicts).
    pub fn controlled_by(&self, isvc: &InferenceService) -> Stored {
        let ours = |m: &kube::api::ObjectMeta| builders::is_controlled_by(m, isvc);
        Stored {
            blue: self.blue.clone().filter(|d| ours(&d.metadata)),
            green: self.green.clone().filter(|d| ours(&d.metadata)),
            preview: self.preview.clone().filter(|s| ours(&s.metadata)),
        }
    }

    pub fn of(&self, color: Color) -> Option<&Deployment> {
        match color {
            Color::Blue => self.blue.as_ref(),
            Color::Green => self.green.as_ref(),
        }
    }
}

pub(super) async fn observe(ctx: &Context, isvc: &InferenceService) -> Result<Stored, Error> {
    Ok(Stored {
        blue: observe_named(ctx, isvc, &bluegreen::deployment_name(isvc, Color::Blue)).await?,
        green: observe_named(ctx, isvc, &bluegreen::deployment_name(isvc, Color::Green)).await?,
        preview: observe_named(ctx, isvc, &bluegreen::preview_name(isvc)).await?,
    })
}

/// Everything [`reconcile`] starts from: the stored children this InferenceService controls.
pub(super) struct Inputs {
    pub stored: Stored,
    pub plain: Option<Deployment>,
    pub service: Option<Service>,
    pub hpa: Option<HorizontalPodAutoscaler>,
    pub pdb: Option<PodDisruptionBudget>,
    pub wanted_hpa: Option<HorizontalPodAutoscaler>,
    pub pods: PodHealth,
    /// [`bluegreen::plain_pods_hash`] of this InferenceService's pods.
    pub plain_pods_hash: Option<String>,
}

fn apply_error(what: &str, source: kube::Error) -> Error {
    Error::Apply {
        what: what.into(),
        source,
    }
}

pub(super) async fn scale(
    ctx: &Context,
    isvc: &InferenceService,
    name: &str,
    replicas: i32,
) -> Result<(), Error> {
    let api: Api<Deployment> =
        Api::namespaced(ctx.client.clone(), &isvc.namespace().unwrap_or_default());
    let pp = PatchParams {
        field_manager: Some(MANAGER.into()),
        ..Default::default()
    };
    api.patch_scale(
        name,
        &pp,
        &Patch::Merge(json!({"spec": {"replicas": replicas}})),
    )
    .await
    .map(|_| ())
    .map_err(|e| apply_error(&format!("scale of Deployment {name}"), e))
}

/// The preview Service's ClusterIP address.
fn preview_addr(svc: &Service) -> Option<SocketAddr> {
    let spec = svc.spec.as_ref()?;
    let ip: IpAddr = spec.cluster_ip.as_deref()?.parse().ok()?;
    let port = spec.ports.as_ref()?.first()?.port;
    Some(SocketAddr::new(ip, u16::try_from(port).ok()?))
}

/// Smoke-tests the preview: a few tries, a second apart.
async fn smoke_test(preview: &Service) -> Result<smoke::Passed, String> {
    let Some(addr) = preview_addr(preview) else {
        return Err(format!(
            "the preview Service {} has no ClusterIP yet",
            preview.name_any()
        ));
    };
    let mut last = String::new();
    for attempt in 1..=SMOKE_TRIES {
        match smoke::predict(addr, SMOKE_TIMEOUT).await {
            Ok(passed) => return Ok(passed),
            Err(e) => last = e,
        }
        if attempt < SMOKE_TRIES {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    Err(last)
}

fn describe(d: &Deployment) -> String {
    let st = d.status.clone().unwrap_or_default();
    let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
    format!(
        "{}/{want} ready, image {}",
        st.ready_replicas.unwrap_or(0),
        builders::deployment::server_image(d).unwrap_or_default()
    )
}

pub(super) async fn reconcile(
    isvc: &InferenceService,
    ctx: &Context,
    inputs: Inputs,
) -> Result<Action, Error> {
    let client = &ctx.client;
    let name = builders::child_name(isvc);
    let settings = bluegreen::settings(isvc);
    let delay = Duration::from_secs(settings.scale_down_delay_seconds.max(0) as u64);
    let replicas = builders::replicas(isvc);
    let Inputs {
        stored,
        plain,
        service,
        hpa,
        pdb,
        wanted_hpa,
        pods,
        plain_pods_hash,
    } = inputs;

    // Decide.
    let live = Live {
        blue: stored.blue.as_ref(),
        green: stored.green.as_ref(),
        plain: plain.as_ref(),
        service: service.as_ref(),
    };
    let serving_now = service.as_ref().and_then(bluegreen::selected_color);
    let running = serving_now.and_then(|c| live.of(c)).or(plain.as_ref());
    let s = &ctx.settings;
    let cfg =
        builders::deployment::pinned_config(isvc, &s.config, running, s.upgrade_default_image);
    let revision = bluegreen::revision(&builders::deployment::build(isvc, &cfg));
    let plan: Plan = bluegreen::plan(&live, &revision, replicas, delay, Timestamp::now());
    tracing::debug!(?plan, %revision, "blue/green plan");

    // Apply: the colours, then the Services, the HPA and the PDB.
    // The colours as they are after this reconcile's applies.
    let mut after = Stored {
        blue: stored.blue.clone(),
        green: stored.green.clone(),
        preview: None,
    };
    let mut applied: Vec<String> = Vec::new();
    for color in &plan.apply {
        let slot = match color {
            Color::Blue => &mut after.blue,
            Color::Green => &mut after.green,
        };
        let desired = bluegreen::deployment(isvc, &cfg, *color, replicas);
        let done = ensure(client, slot.as_ref(), &desired)
            .await
            .map_err(|e| apply_error("Deployment", e))?;
        if done.applied {
            applied.push(format!("Deployment/{}", desired.name_any()));
        }
        *slot = Some(done.object);
    }
    for (color, n) in &plan.scale {
        let dep_name = bluegreen::deployment_name(isvc, *color);
        scale(ctx, isvc, &dep_name, *n).await?;
        tracing::info!(deployment = %dep_name, replicas = n, "scaled");
        if *n == 0 {
            ctx.event(
                &isvc.object_ref(&()),
                EventType::Normal,
                "ScaledDown",
                "Scale",
                format!("scaled the idle colour {} to 0", color.as_str()),
            )
            .await;
        }
    }
    let promoted_at = service
        .as_ref()
        .and_then(bluegreen::promoted_at)
        .map(str::to_string);
    let mut desired_svc = bluegreen::service(isvc, plan.serving, promoted_at.as_deref());
    if plan.serving.is_none()
        && plan.keep_plain
        && let Some(hash) = &plain_pods_hash
    {
        // Switching from RollingUpdate: only the old pods serve until blue is promoted.
        bluegreen::pin_to_plain_pods(&mut desired_svc, hash);
    }
    let mut svc = apply_service(ctx, isvc, service.clone(), &desired_svc, &mut applied).await?;
    let preview = ensure(
        client,
        stored.preview.as_ref(),
        &bluegreen::preview_service(isvc, plan.idle),
    )
    .await
    .map_err(|e| apply_error("preview Service", e))?;
    if preview.applied {
        applied.push(format!("Service/{}", bluegreen::preview_name(isvc)));
    }
    let preview = preview.object;
    if let Some(desired) = &wanted_hpa {
        let done = ensure(client, hpa.as_ref(), desired)
            .await
            .map_err(|e| apply_error("HorizontalPodAutoscaler", e))?;
        applied.extend(done.applied.then(|| "HorizontalPodAutoscaler".to_string()));
    }
    let done = ensure(client, pdb.as_ref(), &builders::pdb::build(isvc))
        .await
        .map_err(|e| apply_error("PodDisruptionBudget", e))?;
    applied.extend(done.applied.then(|| "PodDisruptionBudget".to_string()));

    // A ready preview: smoke request, then promotion (now, or when the user says so).
    let mut serving = plan.serving;
    let mut pending = None;
    let mut requeue = plan.requeue;
    let serving_label = |c: Option<Color>| c.map_or("the previous Deployment", Color::as_str);
    match &plan.phase {
        Phase::Steady => {}
        Phase::RollingOut(c) => {
            pending = Some(Pending {
                progressing: true,
                reason: "PreviewRollingOut".into(),
                message: format!(
                    "{} is rolling out the new spec ({}); traffic stays on {}",
                    c.as_str(),
                    after.of(*c).map(describe).unwrap_or_default(),
                    serving_label(serving)
                ),
                degraded: false,
            });
        }
        Phase::Stuck(c, why) => {
            pending = Some(Pending {
                progressing: false,
                reason: "ProgressDeadlineExceeded".into(),
                message: format!(
                    "{} did not become ready within progressDeadlineSeconds ({why}); traffic stays on {}: fix the spec, or re-apply the previous one to roll back",
                    c.as_str(),
                    serving_label(serving)
                ),
                degraded: true,
            });
        }
        Phase::Ready(c) => match smoke_test(&preview).await {
            Err(why) => {
                tracing::warn!(color = c.as_str(), error = %why, "smoke request failed");
                pending = Some(Pending {
                    progressing: true,
                    reason: "SmokeTestFailed".into(),
                    message: format!(
                        "{} is ready but its smoke request through {} failed: {why}; traffic stays on {}",
                        c.as_str(),
                        bluegreen::preview_name(isvc),
                        serving_label(serving)
                    ),
                    degraded: true,
                });
                requeue = Some(SMOKE_REQUEUE);
            }
            Ok(passed)
                if settings.auto_promote
                    || bluegreen::promote_annotation(isvc) == Some(revision.as_str()) =>
            {
                let at = Timestamp::from_second(Timestamp::now().as_second())
                    .unwrap_or_else(|_| Timestamp::now())
                    .to_string();
                let desired = bluegreen::service(isvc, Some(*c), Some(&at));
                svc = apply_service(ctx, isvc, Some(svc), &desired, &mut applied).await?;
                let note = format!(
                    "promoted {} ({}): the smoke request answered {} (model version {}); traffic moved from {}",
                    c.as_str(),
                    after.of(*c).map(describe).unwrap_or_default(),
                    passed.top,
                    passed.model_version,
                    serving_label(serving)
                );
                tracing::info!("{note}");
                ctx.event(
                    &isvc.object_ref(&()),
                    EventType::Normal,
                    "Promoted",
                    "Promote",
                    note,
                )
                .await;
                serving = Some(*c);
                requeue = Some(delay + Duration::from_secs(1));
            }
            Ok(passed) => {
                pending = Some(Pending {
                    progressing: true,
                    reason: "AwaitingPromotion".into(),
                    message: format!(
                        "{} is ready and its smoke request answered {}; traffic stays on {} until you promote: {}",
                        c.as_str(),
                        passed.top,
                        serving_label(serving),
                        bluegreen::promote_command(isvc, &revision)
                    ),
                    degraded: false,
                });
            }
        },
    }

    // Delete what is no longer wanted.
    let wanted_deps = bluegreen::wanted_deployments(isvc, plan.keep_plain);
    let wanted_svcs = [name.clone(), bluegreen::preview_name(isvc)];
    let deleted =
        delete_unwanted_children(ctx, isvc, &wanted_deps, &wanted_svcs, wanted_hpa.is_some())
            .await?;
    announce_changes(ctx, isvc, &applied, &deleted).await;

    // Status: the serving colour's Deployment is the one Ready and Available describe.
    let idle = serving.map_or(plan.idle, Color::other);
    let active = serving.and_then(|c| after.of(c).map(|d| (c.as_str(), d)));
    let preview_dep = after
        .of(idle)
        .filter(|d| builders::deployment::spec_replicas(d) > 0)
        .map(|d| (idle.as_str(), d));
    let selector = match serving {
        Some(c) => format!(
            "{},{}={}",
            builders::selector_string(isvc),
            bluegreen::LABEL_COLOR,
            c.as_str()
        ),
        None => builders::selector_string(isvc),
    };
    let promoted_at = bluegreen::promoted_at(&svc).map(str::to_string);
    let deployment = active.map(|(_, d)| d).or(plain.as_ref());
    let observed = Observed {
        deployment,
        service: Some(&svc),
        pods,
        problem: None,
        blue_green: Some(BlueGreenView {
            active,
            preview: preview_dep,
            promoted_at,
            selector,
            pending,
        }),
    };
    write_status(isvc, ctx, &observed).await?;
    Ok(Action::requeue(requeue.unwrap_or(STEADY_REQUEUE)))
}
