//! One container of a pod: the inference-server process, its probes and hooks, restarts with
//! the kubelet's back-off, and graceful stop.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::runtime::events::EventType;
use tokio::process::Child;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::Ctx;
use crate::pod::{CState, Info, Runtime, State};
use crate::probe::{self, Kind};
use crate::procs;

/// A request to stop the container for good (pod deleted, object gone, node shutdown).
#[derive(Clone, Copy, Debug)]
pub struct Stop {
    /// SIGKILL at this instant.
    pub deadline: Instant,
    /// Run the preStop hook first (pod deletion only).
    pub pre_stop: bool,
}

/// The kubelet's crash-loop back-off: the first restart is immediate, then 10 s, 20 s, 40 s, ...
/// up to the max; it starts over when the container ran for more than twice the max.
pub struct Backoff {
    initial: Duration,
    max: Duration,
    current: Option<Duration>,
    last_exit: Option<Instant>,
}

impl Backoff {
    pub fn new(max: Duration) -> Self {
        Self {
            initial: Duration::from_secs(10).min(max),
            max,
            current: None,
            last_exit: None,
        }
    }

    /// The delay before restarting a container that exited at `exited`.
    pub fn next(&mut self, exited: Instant) -> Duration {
        let expired = self
            .last_exit
            .is_none_or(|last| exited.duration_since(last) > self.max * 2);
        let delay = match self.current {
            Some(cur) if !expired => {
                self.current = Some((cur * 2).min(self.max));
                cur
            }
            _ => {
                self.current = Some(self.initial);
                Duration::ZERO
            }
        };
        self.last_exit = Some(exited);
        delay
    }
}

/// A request from the prober to kill the container (startup/liveness failure, postStart failure).
struct Kill {
    message: String,
    grace: Option<i64>,
}

enum Outcome {
    Exited(std::process::ExitStatus),
    /// killed on request of the prober; the container is restarted
    Killed(std::process::ExitStatus),
    /// stopped for good
    Stopped(Option<std::process::ExitStatus>),
}

fn exit_code(st: &std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    st.code().unwrap_or_else(|| 128 + st.signal().unwrap_or(9))
}

/// Runs container `idx` until it is stopped for good (or, with restartPolicy Never/OnFailure,
/// until it is done). Returns the last exit code, if it ran.
pub async fn run(
    ctx: Arc<Ctx>,
    info: Arc<Info>,
    idx: usize,
    rt: Arc<watch::Sender<Runtime>>,
    mut stop: watch::Receiver<Option<Stop>>,
) -> Option<i32> {
    let c = &info.containers[idx];
    let mut backoff = Backoff::new(ctx.backoff_max);
    let mut last_code = None;
    let update = |f: &dyn Fn(&mut CState)| rt.send_modify(|r| f(&mut r.containers[idx]));
    // The container could not be started: Waiting with `reason`, and a Warning event.
    let start_failed = |reason: &str, msg: &str| {
        update(&|s| {
            s.state = State::Waiting {
                reason: reason.into(),
                message: msg.to_string(),
            }
        });
        ctx.event(
            info.pod_ref.clone(),
            EventType::Warning,
            "Failed",
            "Starting",
            format!("Error: {msg}"),
        );
    };
    let config_retry = Duration::from_secs(10).min(ctx.backoff_max);
    loop {
        if stop.borrow().is_some() {
            return last_code;
        }
        // --- environment and command line
        let pod = info.pod.borrow().clone();
        let Some(pod) = pod else { return last_code };
        let ip = info.ip.to_string();
        let mut env = match crate::env::resolve(
            &ctx.client,
            &pod,
            c,
            &ip,
            ctx.cpus,
            ctx.memory_bytes,
        )
        .await
        {
            Ok(env) => env,
            Err(msg) => {
                tracing::warn!(pod = %info.key, container = %c.name, %msg, "cannot build the container's environment");
                start_failed("CreateContainerConfigError", &msg);
                if wait_or_stop(config_retry, &mut stop).await {
                    return last_code;
                }
                continue;
            }
        };
        let args = command_line(&ctx, &info, idx, &env);
        let mut full_env: Vec<(String, String)> = Vec::new();
        for k in ["PATH", "LD_LIBRARY_PATH"] {
            if let Ok(v) = std::env::var(k) {
                full_env.push((k.into(), v));
            }
        }
        full_env.push(("HOSTNAME".into(), info.name.clone()));
        full_env.push(("HOME".into(), info.dir.display().to_string()));
        full_env.push(("TMPDIR".into(), info.dir.join("tmp").display().to_string()));
        full_env.extend(ctx.default_env.iter().cloned());
        full_env.append(&mut env);
        full_env.push(("HOST".into(), ip.clone()));
        if let Some(p) = c.ports.iter().flatten().next() {
            full_env.push(("PORT".into(), p.container_port.to_string()));
        }

        // --- start
        let restart_count = rt.borrow().containers[idx].restart_count;
        let log_path = info.dir.join(&c.name).join(format!("{restart_count}.log"));
        let mut child = match spawn(&ctx, &info, &args, &full_env, &log_path) {
            Ok(child) => child,
            Err(e) => {
                let msg = format!("failed to start {}: {e}", ctx.server_bin.display());
                tracing::warn!(pod = %info.key, container = %c.name, %msg);
                start_failed("RunContainerError", &msg);
                let delay = backoff.next(Instant::now()).max(Duration::from_secs(1));
                if wait_or_stop(delay, &mut stop).await {
                    return last_code;
                }
                continue;
            }
        };
        let pid = child.id().map(|p| p as i32).unwrap_or(0);
        ctx.procs.add(pid, &ctx.server_bin);
        let started_at = Timestamp::now();
        let started = Instant::now();
        let instance = {
            let mut inst = 0;
            rt.send_modify(|r| {
                let s = &mut r.containers[idx];
                s.instance += 1;
                inst = s.instance;
                s.container_id = Some(format!("local://{pid}"));
                s.state = State::Running { started_at };
                s.started = false;
                s.ready = false;
            });
            inst
        };
        tracing::info!(pod = %info.key, container = %c.name, pid, ip = %ip, log = %log_path.display(), "started");
        ctx.event(
            info.pod_ref.clone(),
            EventType::Normal,
            "Started",
            "Started",
            format!("Started container {} (pid {pid})", c.name),
        );

        // --- run until exit, a kill request of the prober, or a stop
        let (kill_tx, mut kill_rx) = mpsc::channel::<Kill>(1);
        let prober = tokio::spawn(probe_loop(
            ctx.clone(),
            info.clone(),
            idx,
            instance,
            rt.clone(),
            kill_tx,
            started,
        ));
        enum Ev {
            Exit(std::process::ExitStatus),
            Kill(Kill),
            Stop,
        }
        let ev = tokio::select! {
            st = child.wait() => Ev::Exit(st.expect("wait")),
            Some(kill) = kill_rx.recv() => Ev::Kill(kill),
            _ = stop_requested(&mut stop) => Ev::Stop,
        };
        let outcome = match ev {
            Ev::Exit(st) => Outcome::Exited(st),
            Ev::Kill(kill) => {
                let grace = kill.grace.unwrap_or(info.grace_seconds).max(0) as u64;
                tracing::info!(pod = %info.key, container = %c.name, pid, reason = %kill.message, "killing");
                ctx.event(
                    info.pod_ref.clone(),
                    EventType::Normal,
                    "Killing",
                    "Killing",
                    kill.message,
                );
                let deadline = Instant::now() + Duration::from_secs(grace);
                Outcome::Killed(terminate(&mut child, pid, deadline, &mut stop).await)
            }
            Ev::Stop => Outcome::Stopped(
                stop_gracefully(&ctx, &info, idx, &mut child, pid, &mut stop).await,
            ),
        };
        prober.abort();
        ctx.procs.remove(pid);
        procs::signal_group(pid, libc::SIGKILL); // stragglers of the group, if any
        let finished_at = Timestamp::now();
        let status = match &outcome {
            Outcome::Exited(st) | Outcome::Killed(st) | Outcome::Stopped(Some(st)) => Some(*st),
            Outcome::Stopped(None) => None,
        };
        let code = status.as_ref().map(exit_code).unwrap_or(137);
        last_code = Some(code);
        tracing::info!(pod = %info.key, container = %c.name, pid, code, "exited");
        let terminated = State::Terminated {
            exit_code: code,
            reason: if code == 0 {
                "Completed".into()
            } else {
                "Error".into()
            },
            started_at,
            finished_at,
            container_id: format!("local://{pid}"),
        };
        rt.send_modify(|r| {
            let s = &mut r.containers[idx];
            s.instance += 1;
            s.state = terminated.clone();
            s.started = false;
            s.ready = false;
        });
        if matches!(outcome, Outcome::Stopped(_)) || stop.borrow().is_some() {
            return last_code;
        }
        match info.restart_policy.as_str() {
            "Never" => return last_code,
            "OnFailure" if code == 0 => return last_code,
            _ => {}
        }

        // --- restart, with back-off
        let delay = backoff.next(Instant::now());
        rt.send_modify(|r| {
            let s = &mut r.containers[idx];
            s.last_state = Some(terminated.clone());
        });
        if !delay.is_zero() {
            let msg = format!(
                "back-off {}s restarting failed container={} pod={}_{}({})",
                delay.as_secs(),
                c.name,
                info.name,
                info.namespace,
                info.uid
            );
            update(&|s| {
                s.state = State::Waiting {
                    reason: "CrashLoopBackOff".into(),
                    message: msg.clone(),
                }
            });
            ctx.event(
                info.pod_ref.clone(),
                EventType::Warning,
                "BackOff",
                "Restarting",
                format!(
                    "Back-off restarting failed container {} in pod {}_{}({})",
                    c.name, info.name, info.namespace, info.uid
                ),
            );
            if wait_or_stop(delay, &mut stop).await {
                return last_code;
            }
        }
        update(&|s| s.restart_count += 1);
    }
}

/// Sleeps `d`; true if a stop came first.
async fn wait_or_stop(d: Duration, stop: &mut watch::Receiver<Option<Stop>>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => {}
        _ = stop_requested(stop) => {}
    }
    stop.borrow().is_some()
}

/// Resolves once a stop is requested (or the pod worker is gone). Never holds the channel's
/// read lock across an await.
async fn stop_requested(stop: &mut watch::Receiver<Option<Stop>>) {
    let _ = stop.wait_for(|s| s.is_some()).await.map(|_| ());
}

/// `args`, with `$(VAR)` expanded. The image's entrypoint is always the inference-server
/// binary: a `command` whose first word names it contributes its other words; any other
/// `command` is ignored (with an event).
fn command_line(ctx: &Ctx, info: &Info, idx: usize, env: &[(String, String)]) -> Vec<String> {
    let c = &info.containers[idx];
    let mut args = Vec::new();
    if let Some(cmd) = c.command.as_ref().filter(|c| !c.is_empty()) {
        if cmd[0]
            .rsplit('/')
            .next()
            .is_some_and(|b| b.contains("inference-server"))
        {
            args.extend(cmd[1..].iter().map(|a| crate::env::expand(a, env)));
        } else {
            ctx.event(
                info.pod_ref.clone(),
                EventType::Warning,
                "CommandIgnored",
                "Starting",
                format!("container {}: command {cmd:?} ignored: local-node always runs the inference-server binary", c.name),
            );
        }
    }
    args.extend(c.args.iter().flatten().map(|a| crate::env::expand(a, env)));
    args
}

fn spawn(
    ctx: &Ctx,
    info: &Info,
    args: &[String],
    env: &[(String, String)],
    log: &PathBuf,
) -> std::io::Result<Child> {
    std::fs::create_dir_all(log.parent().expect("log dir"))?;
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    let err = out.try_clone()?;
    let mut cmd = tokio::process::Command::new(&ctx.server_bin);
    cmd.args(args)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir(&info.dir)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .kill_on_drop(true);
    procs::harden(&mut cmd, Some(ctx.net.fd()));
    cmd.spawn()
}

/// SIGTERM now, SIGKILL at `deadline` (which a stop request may bring forward).
async fn terminate(
    child: &mut Child,
    pid: i32,
    mut deadline: Instant,
    stop: &mut watch::Receiver<Option<Stop>>,
) -> std::process::ExitStatus {
    procs::signal_group(pid, libc::SIGTERM);
    loop {
        tokio::select! {
            st = child.wait() => return st.expect("wait"),
            _ = tokio::time::sleep_until(deadline) => {
                procs::signal_group(pid, libc::SIGKILL);
                return child.wait().await.expect("wait");
            }
            r = stop.changed() => {
                if r.is_err() {
                    // the pod worker is gone: nothing will ask again
                    procs::signal_group(pid, libc::SIGKILL);
                    return child.wait().await.expect("wait");
                }
                if let Some(s) = *stop.borrow() { deadline = deadline.min(s.deadline); }
            }
        }
    }
}

/// Pod deletion / node shutdown: preStop hook, SIGTERM, SIGKILL at the deadline. As in the
/// kubelet, the hook's time counts against the grace period, and SIGTERM gets at least 2 s.
async fn stop_gracefully(
    ctx: &Ctx,
    info: &Info,
    idx: usize,
    child: &mut Child,
    pid: i32,
    stop: &mut watch::Receiver<Option<Stop>>,
) -> Option<std::process::ExitStatus> {
    let c = &info.containers[idx];
    let s = (*stop.borrow()).expect("stop requested");
    if s.pre_stop
        && let Some(h) = c.lifecycle.as_ref().and_then(|l| l.pre_stop.as_ref())
    {
        let hook = probe::hook(c, h, &info.ip.to_string());
        let limit = s.deadline.saturating_duration_since(Instant::now());
        tracing::info!(pod = %info.key, container = %c.name, ?hook, "running preStop hook");
        tokio::select! {
            r = probe::run_hook(&hook, limit) => {
                if let Err(msg) = r {
                    ctx.event(info.pod_ref.clone(), EventType::Warning, "FailedPreStopHook", "Killing",
                        format!("PreStopHook failed: {msg}"));
                }
            }
            st = child.wait() => return st.ok(),
        }
    }
    ctx.event(
        info.pod_ref.clone(),
        EventType::Normal,
        "Killing",
        "Killing",
        format!("Stopping container {}", c.name),
    );
    let deadline = (*stop.borrow())
        .map(|s| s.deadline)
        .unwrap_or(s.deadline)
        .max(Instant::now() + Duration::from_secs(2));
    tracing::info!(pod = %info.key, container = %c.name, pid, grace_s = deadline.saturating_duration_since(Instant::now()).as_secs_f32(), "SIGTERM");
    Some(terminate(child, pid, deadline, stop).await)
}

/// postStart hook, then startup probe, then liveness and readiness; asks for a kill through
/// `kill` when startup or liveness fail for good.
async fn probe_loop(
    ctx: Arc<Ctx>,
    info: Arc<Info>,
    idx: usize,
    instance: u64,
    rt: Arc<watch::Sender<Runtime>>,
    kill: mpsc::Sender<Kill>,
    started: Instant,
) {
    let c = &info.containers[idx];
    let ip = info.ip.to_string();
    // Writes only while this container instance is current.
    let set = |started: Option<bool>, ready: Option<bool>| {
        rt.send_if_modified(|r| {
            let s = &mut r.containers[idx];
            if s.instance != instance {
                return false;
            }
            let before = (s.started, s.ready);
            if let Some(v) = started {
                s.started = v;
            }
            if let Some(v) = ready {
                s.ready = v;
            }
            before != (s.started, s.ready)
        });
    };
    let warn_unsupported = |kind: &str, spec: &probe::Spec| {
        if let probe::Action::Unsupported(m) = &spec.action {
            ctx.event(
                info.pod_ref.clone(),
                EventType::Warning,
                "ProbeUnsupported",
                "Probing",
                format!(
                    "{kind} probe of container {} treated as succeeding: {m}",
                    c.name
                ),
            );
        }
    };

    if let Some(h) = c.lifecycle.as_ref().and_then(|l| l.post_start.as_ref()) {
        let hook = probe::hook(c, h, &ip);
        if let Err(msg) = probe::run_hook(&hook, Duration::from_secs(120)).await {
            ctx.event(
                info.pod_ref.clone(),
                EventType::Warning,
                "FailedPostStartHook",
                "Starting",
                format!("PostStartHook failed: {msg}"),
            );
            let _ = kill
                .send(Kill {
                    message: format!("FailedPostStartHook: {msg}"),
                    grace: None,
                })
                .await;
            return;
        }
    }

    if let Some(p) = &c.startup_probe {
        let spec = probe::spec(c, p, &ip);
        warn_unsupported("Startup", &spec);
        tokio::time::sleep_until(started + spec.initial_delay).await;
        if !probe_until(&ctx, &info, &c.name, &spec, Kind::Startup, &kill).await {
            return;
        }
    }
    set(Some(true), c.readiness_probe.is_none().then_some(true));

    let liveness = async {
        let Some(p) = &c.liveness_probe else { return };
        let spec = probe::spec(c, p, &ip);
        warn_unsupported("Liveness", &spec);
        tokio::time::sleep_until((started + spec.initial_delay).max(Instant::now() + spec.period))
            .await;
        probe_until(&ctx, &info, &c.name, &spec, Kind::Liveness, &kill).await;
    };
    let readiness = async {
        let Some(p) = &c.readiness_probe else { return };
        let spec = probe::spec(c, p, &ip);
        warn_unsupported("Readiness", &spec);
        tokio::time::sleep_until(started + spec.initial_delay).await;
        let (mut ok, mut failed) = (0u32, 0u32);
        loop {
            match probe::run(&spec.action, spec.timeout).await {
                Ok(()) => {
                    ok += 1;
                    failed = 0;
                    if ok >= spec.success_threshold {
                        set(None, Some(true));
                    }
                }
                Err(msg) => {
                    failed += 1;
                    ok = 0;
                    unhealthy(&ctx, &info, Kind::Readiness, &msg);
                    if failed >= spec.failure_threshold {
                        set(None, Some(false));
                    }
                }
            }
            tokio::time::sleep(spec.period).await;
        }
    };
    tokio::join!(liveness, readiness);
}

/// Runs a startup or liveness probe every period. A startup probe returns `true` at its first
/// success; a liveness probe runs until the container goes. After `failureThreshold` failures in
/// a row it asks for a restart through `kill` and returns `false`.
async fn probe_until(
    ctx: &Ctx,
    info: &Info,
    container: &str,
    spec: &probe::Spec,
    kind: Kind,
    kill: &mpsc::Sender<Kill>,
) -> bool {
    let mut failures = 0;
    loop {
        match probe::run(&spec.action, spec.timeout).await {
            Ok(()) if kind == Kind::Startup => return true,
            Ok(()) => failures = 0,
            Err(msg) => {
                failures += 1;
                unhealthy(ctx, info, kind, &msg);
                if failures >= spec.failure_threshold {
                    let message = format!(
                        "Container {container} failed {} probe, will be restarted",
                        kind.name().to_lowercase()
                    );
                    let _ = kill
                        .send(Kill {
                            message,
                            grace: spec.termination_grace,
                        })
                        .await;
                    return false;
                }
            }
        }
        tokio::time::sleep(spec.period).await;
    }
}

fn unhealthy(ctx: &Ctx, info: &Info, kind: Kind, msg: &str) {
    tracing::debug!(pod = %info.key, probe = kind.name(), %msg, "probe failed");
    ctx.event(
        info.pod_ref.clone(),
        EventType::Warning,
        "Unhealthy",
        "Probing",
        format!("{} probe failed: {msg}", kind.name()),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_immediate_then_doubles_up_to_the_max() {
        let mut b = Backoff::new(Duration::from_secs(60));
        let t0 = Instant::now();
        let s = Duration::from_secs;
        assert_eq!(b.next(t0), s(0));
        assert_eq!(b.next(t0 + s(1)), s(10));
        assert_eq!(b.next(t0 + s(12)), s(20));
        assert_eq!(b.next(t0 + s(33)), s(40));
        assert_eq!(b.next(t0 + s(74)), s(60));
        assert_eq!(b.next(t0 + s(135)), s(60));
        // ran for more than 2 × max: start over
        assert_eq!(b.next(t0 + s(400)), s(0));
        let mut low = Backoff::new(s(2));
        assert_eq!(low.next(t0), s(0));
        assert_eq!(low.next(t0 + s(1)), s(2));
    }
}
