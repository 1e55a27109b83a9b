//! The Node object: registration, status (Ready), heartbeats through a Lease in kube-node-lease.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;

use crate::Ctx;

pub const HOST_IP: &str = "127.0.0.1";
pub const ZONE: &str = "local-a";
pub const MAX_PODS: u32 = 110;
const LEASE_SECONDS: i32 = 40;
const LEASE_RENEW: Duration = Duration::from_secs(10);
const STATUS_EVERY: Duration = Duration::from_secs(60);

pub fn labels(node: &str) -> serde_json::Value {
    json!({
        "kubernetes.io/hostname": node,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": arch(),
        "topology.kubernetes.io/zone": ZONE,
        "node.kubernetes.io/instance-type": "local",
    })
}

fn annotations(ctx: &Ctx) -> serde_json::Value {
    json!({
        "local-node/pod-ip-range": format!("{}.2-254", ctx.ips.prefix()),
        "local-node/netns": ctx.net.name(),
    })
}

fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

pub fn mem_total_bytes() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(8 << 30)
}

fn read_trim(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

fn os_image() -> String {
    read_trim("/etc/os-release")
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("PRETTY_NAME=")
                    .map(|v| v.trim_matches('"').to_string())
            })
        })
        .unwrap_or_else(|| "Linux".into())
}

fn status(ctx: &Ctx, kubelet_version: &str, ready: bool) -> serde_json::Value {
    let now = Time(Timestamp::now());
    let machine_id = read_trim("/etc/machine-id").unwrap_or_else(|| ctx.node_name.clone());
    let resources = json!({
        "cpu": ctx.cpus.to_string(),
        "memory": format!("{}Ki", ctx.memory_bytes / 1024),
        "pods": MAX_PODS.to_string(),
    });
    let cond = |type_: &str, status: bool, reason: &str, message: &str| {
        json!({
            "type": type_, "status": if status { "True" } else { "False" }, "reason": reason, "message": message,
            "lastHeartbeatTime": now, "lastTransitionTime": now,
        })
    };
    json!({
        "capacity": resources,
        "allocatable": resources,
        "conditions": [
            if ready { cond("Ready", true, "KubeletReady", "local-node is posting ready status") }
            else { cond("Ready", false, "KubeletNotReady", "local-node stopped") },
            cond("MemoryPressure", false, "KubeletHasSufficientMemory", "local-node has sufficient memory available"),
            cond("DiskPressure", false, "KubeletHasNoDiskPressure", "local-node has no disk pressure"),
            cond("PIDPressure", false, "KubeletHasSufficientPID", "local-node has sufficient PID available"),
        ],
        "addresses": [
            {"type": "InternalIP", "address": HOST_IP},
            {"type": "Hostname", "address": ctx.node_name},
        ],
        "nodeInfo": {
            "architecture": arch(),
            "bootID": read_trim("/proc/sys/kernel/random/boot_id").unwrap_or_default(),
            "containerRuntimeVersion": format!("local-node://{}", env!("CARGO_PKG_VERSION")),
            "kernelVersion": read_trim("/proc/sys/kernel/osrelease").unwrap_or_default(),
            "kubeProxyVersion": "",
            "kubeletVersion": kubelet_version,
            "machineID": machine_id,
            "operatingSystem": "linux",
            "osImage": os_image(),
            "systemUUID": machine_id,
        },
    })
}

/// Keeps `lastTransitionTime` of conditions whose status did not change.
fn keep_transition_times(new: &mut serde_json::Value, old: Option<&Node>) {
    let old_conds = old
        .and_then(|n| n.status.as_ref())
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    if let Some(conds) = new.get_mut("conditions").and_then(|c| c.as_array_mut()) {
        for c in conds {
            let t = c["type"].as_str().unwrap_or_default().to_string();
            if let Some(o) = old_conds.iter().find(|o| o.type_ == t)
                && Some(o.status.as_str()) == c["status"].as_str()
                && let Some(ltt) = &o.last_transition_time
            {
                c["lastTransitionTime"] = json!(ltt);
            }
        }
    }
}

async fn kubelet_version(ctx: &Ctx) -> String {
    match ctx.client.apiserver_version().await {
        Ok(v) => v.git_version,
        Err(_) => "v0.0.0-local".into(),
    }
}

async fn patch_status(ctx: &Ctx, ready: bool, version: &str) -> kube::Result<Node> {
    let nodes: Api<Node> = Api::all(ctx.client.clone());
    let old = nodes.get_opt(&ctx.node_name).await?;
    let mut st = status(ctx, version, ready);
    keep_transition_times(&mut st, old.as_ref());
    nodes
        .patch_status(
            &ctx.node_name,
            &PatchParams::default(),
            &Patch::Strategic(json!({ "status": st })),
        )
        .await
}

/// Creates the Node (or updates its labels) and posts a Ready status.
pub async fn register(ctx: &Ctx) -> anyhow::Result<()> {
    let nodes: Api<Node> = Api::all(ctx.client.clone());
    match nodes.get_opt(&ctx.node_name).await? {
        None => {
            let node: Node = serde_json::from_value(json!({
                "apiVersion": "v1", "kind": "Node",
                "metadata": { "name": ctx.node_name, "labels": labels(&ctx.node_name), "annotations": annotations(ctx) },
                "spec": {},
            }))?;
            nodes.create(&PostParams::default(), &node).await?;
        }
        Some(_) => {
            let patch = json!({ "metadata": { "labels": labels(&ctx.node_name), "annotations": annotations(ctx) } });
            nodes
                .patch(
                    &ctx.node_name,
                    &PatchParams::default(),
                    &Patch::Merge(patch),
                )
                .await?;
        }
    }
    let version = kubelet_version(ctx).await;
    patch_status(ctx, true, &version).await?;
    renew_lease(ctx).await?;
    Ok(())
}

async fn renew_lease(ctx: &Ctx) -> kube::Result<()> {
    let leases: Api<Lease> = Api::namespaced(ctx.client.clone(), "kube-node-lease");
    let now = MicroTime(Timestamp::now());
    if leases.get_opt(&ctx.node_name).await?.is_some() {
        let patch = json!({ "spec": { "holderIdentity": ctx.node_name, "leaseDurationSeconds": LEASE_SECONDS, "renewTime": now } });
        leases
            .patch(
                &ctx.node_name,
                &PatchParams::default(),
                &Patch::Merge(patch),
            )
            .await?;
    } else {
        let node_uid = Api::<Node>::all(ctx.client.clone())
            .get(&ctx.node_name)
            .await?
            .metadata
            .uid;
        let lease: Lease = serde_json::from_value(json!({
            "metadata": {
                "name": ctx.node_name,
                "ownerReferences": [{ "apiVersion": "v1", "kind": "Node", "name": ctx.node_name, "uid": node_uid }],
            },
            "spec": { "holderIdentity": ctx.node_name, "leaseDurationSeconds": LEASE_SECONDS, "renewTime": now },
        }))
        .expect("lease");
        leases.create(&PostParams::default(), &lease).await?;
    }
    Ok(())
}

/// Renews the Lease every 10 s and re-posts the status every minute (and re-creates the Node
/// if someone deleted it).
pub async fn heartbeat(ctx: std::sync::Arc<Ctx>) {
    let version = kubelet_version(&ctx).await;
    let mut last_status = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(LEASE_RENEW).await;
        let nodes: Api<Node> = Api::all(ctx.client.clone());
        if let Ok(None) = nodes.get_opt(&ctx.node_name).await {
            tracing::warn!("the Node object is gone; registering again");
            if let Err(e) = register(&ctx).await {
                tracing::warn!(error = %e, "re-registering the node failed");
            }
            continue;
        }
        if let Err(e) = renew_lease(&ctx).await {
            tracing::warn!(error = %e, "renewing the node lease failed");
        }
        if last_status.elapsed() >= STATUS_EVERY {
            match patch_status(&ctx, true, &version).await {
                Ok(_) => last_status = tokio::time::Instant::now(),
                Err(e) => tracing::warn!(error = %e, "posting the node status failed"),
            }
        }
    }
}

/// On shutdown: Ready=False, so nobody expects pods to run here.
pub async fn mark_not_ready(ctx: &Ctx) {
    let version = kubelet_version(ctx).await;
    if let Err(e) = patch_status(ctx, false, &version).await {
        tracing::warn!(error = %e, "could not mark the node NotReady");
    }
}
