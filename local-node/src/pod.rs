//! One pod bound to this node: IP, work dir, its containers, its status, its deletion.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::events::EventType;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::Ctx;
use crate::container::{self, Stop};

/// What the containers of a pod need to know; fixed for the pod's life.
pub struct Info {
    pub key: String,
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub pod_ref: ObjectReference,
    pub ip: Ipv4Addr,
    pub dir: PathBuf,
    pub grace_seconds: i64,
    pub restart_policy: String,
    pub containers: Vec<Container>,
    pub start_time: Timestamp,
    /// `local://<inference-server path>`
    pub image_id: String,
    /// The latest pod object (None once it is gone).
    pub pod: watch::Receiver<Option<Pod>>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum State {
    Waiting {
        reason: String,
        message: String,
    },
    Running {
        started_at: Timestamp,
    },
    Terminated {
        exit_code: i32,
        reason: String,
        started_at: Timestamp,
        finished_at: Timestamp,
        container_id: String,
    },
}

#[derive(Clone, Debug)]
pub struct CState {
    /// Bumped at each start and exit: the prober of an older instance must not write.
    pub instance: u64,
    pub restart_count: i32,
    pub state: State,
    pub last_state: Option<State>,
    pub started: bool,
    pub ready: bool,
    pub container_id: Option<String>,
}

#[derive(Clone, Debug, Default)]
pub struct Runtime {
    pub containers: Vec<CState>,
    /// Set once the pod is done (all containers stopped for good).
    pub phase: Option<String>,
}

pub fn deleting(p: &Option<Pod>) -> bool {
    p.as_ref()
        .is_none_or(|p| p.metadata.deletion_timestamp.is_some())
}

/// Why local-node cannot run this pod: (reason, message).
pub fn unsupported(pod: &Pod) -> Option<(String, String)> {
    let spec = pod.spec.as_ref()?;
    if spec.init_containers.as_ref().is_some_and(|c| !c.is_empty()) {
        return Some((
            "UnsupportedPod".into(),
            "local-node does not run init containers".into(),
        ));
    }
    for c in &spec.containers {
        let image = c.image.as_deref().unwrap_or("");
        if !image.contains("inference-server") {
            return Some((
                "UnsupportedImage".into(),
                format!(
                    "local-node only runs the inference-server image (an image whose name contains \"inference-server\"); container {} has image \"{image}\"",
                    c.name
                ),
            ));
        }
    }
    None
}

pub async fn run(ctx: Arc<Ctx>, mut pod_rx: watch::Receiver<Option<Pod>>) {
    let Some(pod) = pod_rx.borrow_and_update().clone() else {
        return;
    };
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let key = format!("{ns}/{name}");
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let pod_ref = crate::scheduler::pod_ref(&pod);
    let old_status = pod.status.clone().unwrap_or_default();

    if matches!(old_status.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return wait_for_deletion(&ctx, &api, &name, &uid, &mut pod_rx).await;
    }
    if let Some((reason, message)) = unsupported(&pod) {
        tracing::info!(pod = %key, %reason, %message, "marking the pod Failed");
        ctx.event(
            pod_ref,
            EventType::Warning,
            &reason,
            "Admitting",
            message.clone(),
        );
        let now = Time(Timestamp::now());
        let cond = |t: &str, s: &str| json!({"type": t, "status": s, "reason": reason, "message": message, "lastTransitionTime": now});
        let patch = json!({
            "metadata": { "uid": uid },
            "status": {
                "phase": "Failed", "reason": reason, "message": message,
                "hostIP": crate::node::HOST_IP, "hostIPs": [{"ip": crate::node::HOST_IP}], "startTime": now,
                "conditions": [cond("Ready", "False"), cond("ContainersReady", "False")],
            }
        });
        if let Err(e) = api
            .patch_status(&name, &PatchParams::default(), &Patch::Strategic(patch))
            .await
        {
            tracing::warn!(pod = %key, error = %e, "could not mark the pod Failed");
        }
        return wait_for_deletion(&ctx, &api, &name, &uid, &mut pod_rx).await;
    }

    if pod.metadata.deletion_timestamp.is_some() {
        // deleted while no local-node ran: its processes are gone already
        remove_object(&api, &name, &uid).await;
        return;
    }
    let spec = pod.spec.clone().unwrap_or_default();
    // --- an IP, added to the pod network namespace
    let preferred = old_status.pod_ip.as_deref().and_then(|s| s.parse().ok());
    let mut warned = false;
    let ip = loop {
        let err = match ctx.allocate_ip(preferred) {
            Ok(ip) => break ip,
            Err(e) => e,
        };
        if !warned {
            warned = true;
            tracing::warn!(pod = %key, error = %format!("{err:#}"), "no pod IP");
            ctx.event(
                pod_ref.clone(),
                EventType::Warning,
                "FailedCreatePodSandBox",
                "Starting",
                format!("no pod IP: {err:#}; retrying"),
            );
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            _ = ctx.shutdown.cancelled() => return,
            r = pod_rx.changed() => if r.is_err() || deleting(&pod_rx.borrow()) {
                if pod_rx.borrow().is_some() { remove_object(&api, &name, &uid).await; }
                return;
            }
        }
    };

    let dir = ctx
        .state_dir
        .join("pods")
        .join(format!("{ns}_{name}_{uid}"));
    if let Err(e) = std::fs::create_dir_all(dir.join("tmp")) {
        tracing::error!(pod = %key, error = %e, "cannot create the pod dir");
    }
    let info = Arc::new(Info {
        key: key.clone(),
        namespace: ns.clone(),
        name: name.clone(),
        uid: uid.clone(),
        pod_ref: pod_ref.clone(),
        ip,
        dir,
        grace_seconds: spec.termination_grace_period_seconds.unwrap_or(30),
        restart_policy: spec
            .restart_policy
            .clone()
            .unwrap_or_else(|| "Always".into()),
        containers: spec.containers.clone(),
        start_time: old_status
            .start_time
            .as_ref()
            .map(|t| t.0)
            .unwrap_or_else(Timestamp::now),
        image_id: format!("local://{}", ctx.server_bin.display()),
        pod: pod_rx.clone(),
    });
    tracing::info!(pod = %key, %ip, "starting pod");

    // --- containers: continue restart counts of an earlier local-node run
    let containers = spec
        .containers
        .iter()
        .map(|c| {
            let old = old_status
                .container_statuses
                .iter()
                .flatten()
                .find(|s| s.name == c.name);
            let ran = old.is_some_and(|o| o.container_id.is_some());
            CState {
                instance: 0,
                restart_count: old.map(|o| o.restart_count).unwrap_or(0) + i32::from(ran),
                state: State::Waiting {
                    reason: "ContainerCreating".into(),
                    message: String::new(),
                },
                last_state: None,
                started: false,
                ready: false,
                container_id: None,
            }
        })
        .collect();
    let rt = Arc::new(watch::Sender::new(Runtime {
        containers,
        phase: None,
    }));
    let times = Arc::new(Mutex::new(CondTimes::from_pod(&pod)));
    let writer_done = CancellationToken::new();
    let writer = tokio::spawn(status_writer(
        ctx.clone(),
        info.clone(),
        rt.subscribe(),
        times.clone(),
        writer_done.clone(),
    ));

    let (stop_tx, stop_rx) = watch::channel::<Option<Stop>>(None);
    let handles: Vec<_> = (0..info.containers.len())
        .map(|i| {
            tokio::spawn(container::run(
                ctx.clone(),
                info.clone(),
                i,
                rt.clone(),
                stop_rx.clone(),
            ))
        })
        .collect();
    let mut all_done = std::pin::pin!(futures::future::join_all(handles));

    #[derive(PartialEq)]
    enum End {
        Completed,
        Deleted,
        Gone,
        Shutdown,
    }
    let mut end = End::Completed;
    let mut deletion_seen: Option<Instant> = None;
    let codes = loop {
        tokio::select! {
            codes = &mut all_done => break codes,
            r = pod_rx.changed(), if end != End::Gone && end != End::Shutdown => {
                let p = if r.is_ok() { pod_rx.borrow_and_update().clone() } else { None };
                match p {
                    None => {
                        tracing::info!(pod = %key, "pod object gone: stopping its containers");
                        end = End::Gone;
                        let deadline = Instant::now() + Duration::from_secs(2);
                        stop_tx.send_replace(Some(Stop { deadline, pre_stop: false }));
                    }
                    Some(p) if p.metadata.deletion_timestamp.is_some() => {
                        let grace = p.metadata.deletion_grace_period_seconds.unwrap_or(info.grace_seconds).max(0) as u64;
                        let now = Instant::now();
                        let first = *deletion_seen.get_or_insert(now);
                        let mut deadline = first + Duration::from_secs(grace);
                        // a second delete may shorten the grace period, never extend it
                        if let Some(old) = *stop_tx.borrow() {
                            deadline = deadline.min(old.deadline).min(now + Duration::from_secs(grace));
                        }
                        if end != End::Deleted {
                            tracing::info!(pod = %key, grace_s = grace, "pod deleted: stopping its containers");
                        }
                        end = End::Deleted;
                        if stop_tx.borrow().is_none_or(|s| s.deadline != deadline) {
                            stop_tx.send_replace(Some(Stop { deadline, pre_stop: true }));
                        }
                    }
                    Some(_) => {}
                }
            }
            _ = ctx.shutdown.cancelled(), if end == End::Completed => {
                end = End::Shutdown;
                let grace = Duration::from_secs(info.grace_seconds.clamp(0, 10) as u64);
                stop_tx.send_replace(Some(Stop { deadline: Instant::now() + grace, pre_stop: false }));
            }
        }
    };
    let codes: Vec<Option<i32>> = codes.into_iter().map(|r| r.ok().flatten()).collect();
    writer_done.cancel();
    let _ = writer.await;

    let all_zero = codes.iter().all(|c| *c == Some(0));
    match end {
        End::Gone => {}
        End::Shutdown => {
            // Containers are down; the pod stays bound here and is restarted when local-node
            // comes back. Best effort: the control plane may be going away too.
            let st = compute_status(&info, &rt.borrow(), pod_rx.borrow().as_ref(), &times);
            let _ =
                tokio::time::timeout(Duration::from_secs(3), write_status(&api, &name, st)).await;
        }
        End::Deleted => {
            rt.send_modify(|r| {
                r.phase = Some(if all_zero { "Succeeded" } else { "Failed" }.into())
            });
            let st = compute_status(&info, &rt.borrow(), pod_rx.borrow().as_ref(), &times);
            let _ = write_status(&api, &name, st).await;
            remove_object(&api, &name, &uid).await;
            tracing::info!(pod = %key, "pod removed");
        }
        End::Completed => {
            // restartPolicy Never/OnFailure and every container is done
            rt.send_modify(|r| {
                r.phase = Some(if all_zero { "Succeeded" } else { "Failed" }.into())
            });
            let st = compute_status(&info, &rt.borrow(), pod_rx.borrow().as_ref(), &times);
            let _ = write_status(&api, &name, st).await;
            ctx.release_ip(ip);
            return wait_for_deletion(&ctx, &api, &name, &uid, &mut pod_rx).await;
        }
    }
    ctx.release_ip(ip);
}

/// A terminal pod: nothing runs; remove the object once it is deleted.
async fn wait_for_deletion(
    ctx: &Ctx,
    api: &Api<Pod>,
    name: &str,
    uid: &str,
    pod_rx: &mut watch::Receiver<Option<Pod>>,
) {
    loop {
        if deleting(&pod_rx.borrow()) {
            if pod_rx.borrow().is_some() {
                remove_object(api, name, uid).await;
            }
            return;
        }
        tokio::select! {
            r = pod_rx.changed() => if r.is_err() { return },
            _ = ctx.shutdown.cancelled() => return,
        }
    }
}

/// Final removal, as the kubelet does: grace period 0 with a uid precondition.
async fn remove_object(api: &Api<Pod>, name: &str, uid: &str) {
    let dp = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions {
            uid: Some(uid.to_string()),
            resource_version: None,
        }),
        ..Default::default()
    };
    match api.delete(name, &dp).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
        Err(e) => tracing::warn!(pod = name, error = %e, "could not remove the pod object"),
    }
}

async fn write_status(api: &Api<Pod>, name: &str, patch: Value) -> kube::Result<()> {
    match api
        .patch_status(name, &PatchParams::default(), &Patch::Strategic(&patch))
        .await
    {
        Ok(_) => Ok(()),
        // gone, or replaced by a pod of the same name (uid precondition)
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
        Err(e) => Err(e),
    }
}

/// Writes the pod status whenever what we know changes.
async fn status_writer(
    ctx: Arc<Ctx>,
    info: Arc<Info>,
    mut rt: watch::Receiver<Runtime>,
    times: Arc<Mutex<CondTimes>>,
    done: CancellationToken,
) {
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &info.namespace);
    let mut pod_rx = info.pod.clone();
    let mut last: Option<Value> = None;
    loop {
        let st = {
            let r = rt.borrow_and_update().clone();
            let p = pod_rx.borrow_and_update().clone();
            compute_status(&info, &r, p.as_ref(), &times)
        };
        if last.as_ref() != Some(&st) {
            match write_status(&api, &info.name, st.clone()).await {
                Ok(()) => last = Some(st),
                Err(e) => {
                    tracing::warn!(pod = %info.key, error = %e, "writing the pod status failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        _ = done.cancelled() => return,
                    }
                }
            }
        }
        tokio::select! {
            r = rt.changed() => if r.is_err() { return },
            r = pod_rx.changed() => if r.is_err() { return },
            _ = done.cancelled() => return,
        }
        // coalesce bursts of changes
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `lastTransitionTime` per condition type: changes only when the status flips.
pub struct CondTimes(HashMap<String, (String, Timestamp)>);

impl CondTimes {
    fn from_pod(pod: &Pod) -> Self {
        let mut m = HashMap::new();
        for c in pod
            .status
            .iter()
            .flat_map(|s| s.conditions.iter().flatten())
        {
            if let Some(t) = &c.last_transition_time {
                m.insert(c.type_.clone(), (c.status.clone(), t.0));
            }
        }
        Self(m)
    }

    fn cond(
        &mut self,
        type_: &str,
        ok: bool,
        reason: Option<&str>,
        message: Option<String>,
    ) -> Value {
        let status = if ok { "True" } else { "False" };
        let entry = self
            .0
            .entry(type_.to_string())
            .or_insert_with(|| (status.to_string(), Timestamp::now()));
        if entry.0 != status {
            *entry = (status.to_string(), Timestamp::now());
        }
        // (strategic merge: null removes a reason/message of an earlier status)
        json!({ "type": type_, "status": status, "lastTransitionTime": Time(entry.1), "reason": reason, "message": message })
    }
}

fn state_json(s: &State) -> Value {
    match s {
        State::Waiting { reason, message } if message.is_empty() => {
            json!({ "waiting": { "reason": reason } })
        }
        State::Waiting { reason, message } => {
            json!({ "waiting": { "reason": reason, "message": message } })
        }
        State::Running { started_at } => json!({ "running": { "startedAt": Time(*started_at) } }),
        State::Terminated {
            exit_code,
            reason,
            started_at,
            finished_at,
            container_id,
        } => json!({ "terminated": {
            "exitCode": exit_code, "reason": reason, "startedAt": Time(*started_at), "finishedAt": Time(*finished_at),
            "containerID": container_id,
        }}),
    }
}

/// The status patch (strategic merge: conditions merge by type, so PodScheduled and readiness
/// gate conditions written by others stay).
pub fn compute_status(
    info: &Info,
    rt: &Runtime,
    pod: Option<&Pod>,
    times: &Mutex<CondTimes>,
) -> Value {
    let mut times = times.lock().unwrap();
    let ever_ran = rt
        .containers
        .iter()
        .any(|c| c.container_id.is_some() || c.restart_count > 0);
    let phase = rt
        .phase
        .clone()
        .unwrap_or_else(|| if ever_ran { "Running" } else { "Pending" }.into());
    let terminal = matches!(phase.as_str(), "Succeeded" | "Failed");
    let unready: Vec<&str> = info
        .containers
        .iter()
        .zip(&rt.containers)
        .filter(|(_, s)| !s.ready)
        .map(|(c, _)| c.name.as_str())
        .collect();
    let containers_ready = unready.is_empty() && !terminal;
    let gates_missing: Vec<String> = pod
        .and_then(|p| p.spec.as_ref())
        .and_then(|s| s.readiness_gates.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|g| g.condition_type)
        .filter(|t| {
            !pod.and_then(|p| p.status.as_ref())
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| &c.type_ == t && c.status == "True"))
        })
        .collect();
    let ready = containers_ready && gates_missing.is_empty();
    let not_ready_reason = if terminal {
        "PodCompleted"
    } else {
        "ContainersNotReady"
    };
    let unready_msg = (!unready.is_empty())
        .then(|| format!("containers with unready status: [{}]", unready.join(" ")));
    let conditions = vec![
        times.cond("PodReadyToStartContainers", !terminal, None, None),
        times.cond("Initialized", true, None, None),
        times.cond(
            "ContainersReady",
            containers_ready,
            (!containers_ready).then_some(not_ready_reason),
            (!containers_ready && !terminal)
                .then(|| unready_msg.clone())
                .flatten(),
        ),
        if ready {
            times.cond("Ready", true, None, None)
        } else if !containers_ready {
            times.cond(
                "Ready",
                false,
                Some(not_ready_reason),
                if terminal { None } else { unready_msg.clone() },
            )
        } else {
            times.cond(
                "Ready",
                false,
                Some("ReadinessGatesNotReady"),
                Some(format!(
                    "corresponding condition of pod readiness gate {:?} does not exist.",
                    gates_missing
                )),
            )
        },
    ];
    let statuses: Vec<Value> = info
        .containers
        .iter()
        .zip(&rt.containers)
        .map(|(c, s)| {
            let mut v = json!({
                "name": c.name,
                "image": c.image.clone().unwrap_or_default(),
                "imageID": info.image_id,
                "ready": s.ready,
                "started": s.started,
                "restartCount": s.restart_count,
                "state": state_json(&s.state),
            });
            if let Some(id) = &s.container_id {
                v["containerID"] = json!(id);
            }
            if let Some(l) = &s.last_state {
                v["lastState"] = state_json(l);
            }
            v
        })
        .collect();
    let ip = info.ip.to_string();
    json!({
        "metadata": { "uid": info.uid },
        "status": {
            "phase": phase,
            "hostIP": crate::node::HOST_IP,
            "hostIPs": [{ "ip": crate::node::HOST_IP }],
            "podIP": ip,
            // (strategic merge would append to the list: replace it)
            "podIPs": [{ "$patch": "replace" }, { "ip": ip }],
            "startTime": Time(info.start_time),
            "conditions": conditions,
            "containerStatuses": statuses,
        }
    })
}
