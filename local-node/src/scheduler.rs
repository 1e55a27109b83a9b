//! The scheduler for a one-node cluster: every pending pod of the default scheduler is bound to
//! this node through the `pods/binding` subresource, unless it cannot run here.
//!
//! Deliberately loose: taints do not exist on this node, so tolerations never matter; affinity,
//! topology spread constraints and cpu/memory requests are ignored (the single node fits all).
//! In `nodeSelector` only `kubernetes.io/hostname`, `kubernetes.io/os` and `kubernetes.io/arch`
//! are checked; other keys (zones, GPU product labels, ...) are ignored. Pods that request an
//! extended resource the node does not have (e.g. `nvidia.com/gpu`) stay Pending with
//! PodScheduled=False/Unschedulable, as on a real cluster without GPUs.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Binding, ObjectReference, Pod};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::events::EventType;
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;

use crate::Ctx;

pub async fn run(ctx: Arc<Ctx>) {
    let api: Api<Pod> = Api::all(ctx.client.clone());
    let cfg = watcher::Config::default().fields("spec.nodeName=");
    let mut stream = watcher(api, cfg).default_backoff().boxed();
    while let Some(ev) = stream.next().await {
        match ev {
            Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) => {
                schedule(&ctx, pod).await
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "scheduler: watching pending pods failed"),
        }
    }
}

fn wants_us(pod: &Pod) -> bool {
    let Some(spec) = &pod.spec else { return false };
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    spec.node_name.as_deref().unwrap_or("").is_empty()
        && matches!(
            spec.scheduler_name.as_deref(),
            None | Some("default-scheduler")
        )
        && pod.metadata.deletion_timestamp.is_none()
        && !matches!(phase, Some("Succeeded" | "Failed"))
        && spec.scheduling_gates.as_ref().is_none_or(|g| g.is_empty())
}

/// Why the pod cannot run on this node, in the default scheduler's words.
pub fn unfit(pod: &Pod, node_name: &str) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    let labels = crate::node::labels(node_name);
    for (k, v) in spec.node_selector.iter().flatten() {
        if matches!(
            k.as_str(),
            "kubernetes.io/hostname" | "kubernetes.io/os" | "kubernetes.io/arch"
        ) && labels[k].as_str() != Some(v.as_str())
        {
            return Some(
                "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector."
                    .into(),
            );
        }
    }
    let containers = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten());
    for c in containers {
        let res = c.resources.as_ref();
        let keys = res
            .into_iter()
            .flat_map(|r| r.limits.iter().flatten().chain(r.requests.iter().flatten()))
            .filter(|(_, q)| crate::env::parse_quantity(&q.0).is_some_and(|n| n > 0.0))
            .map(|(k, _)| k.as_str());
        for k in keys {
            if k.contains('/') && !k.starts_with("kubernetes.io/") {
                return Some(format!("0/1 nodes are available: 1 Insufficient {k}."));
            }
        }
    }
    None
}

pub fn pod_ref(pod: &Pod) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        name: pod.metadata.name.clone(),
        namespace: pod.metadata.namespace.clone(),
        uid: pod.metadata.uid.clone(),
        resource_version: None,
        field_path: None,
    }
}

async fn schedule(ctx: &Arc<Ctx>, pod: Pod) {
    if !wants_us(&pod) {
        return;
    }
    let name = pod.metadata.name.clone().unwrap_or_default();
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    if let Some(why) = unfit(&pod, &ctx.node_name) {
        let already = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| {
                cs.iter()
                    .any(|c| c.type_ == "PodScheduled" && c.message.as_deref() == Some(&why))
            });
        if !already {
            tracing::info!(pod = %format!("{ns}/{name}"), %why, "pod cannot be scheduled");
            let patch = json!({ "status": { "conditions": [{
                "type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": why,
                "lastTransitionTime": k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now()),
            }]}});
            let _ = api
                .patch_status(&name, &PatchParams::default(), &Patch::Strategic(patch))
                .await;
            ctx.event(
                pod_ref(&pod),
                EventType::Warning,
                "FailedScheduling",
                "Scheduling",
                why,
            );
        }
        return;
    }
    let binding = Binding {
        metadata: kube::api::ObjectMeta {
            name: Some(name.clone()),
            uid: pod.metadata.uid.clone(),
            ..Default::default()
        },
        target: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Node".into()),
            name: Some(ctx.node_name.clone()),
            ..Default::default()
        },
    };
    for attempt in 0..5 {
        match api
            .create_subresource::<_, serde_json::Value>(
                "binding",
                &name,
                &PostParams::default(),
                &binding,
            )
            .await
        {
            Ok(_) => {
                tracing::info!(pod = %format!("{ns}/{name}"), node = %ctx.node_name, "bound");
                ctx.event(
                    pod_ref(&pod),
                    EventType::Normal,
                    "Scheduled",
                    "Binding",
                    format!("Successfully assigned {ns}/{name} to {}", ctx.node_name),
                );
                return;
            }
            // already bound or gone: nothing to do
            Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => return,
            Err(e) => {
                tracing::warn!(pod = %format!("{ns}/{name}"), error = %e, attempt, "binding failed");
                tokio::time::sleep(Duration::from_millis(500 << attempt)).await;
            }
        }
    }
}
