//! `local-node`: a Kubernetes node for a control plane without scheduler and kubelet.
//!
//! It registers a Node (heartbeats through a Lease), binds unscheduled pods to itself (it is
//! its own scheduler) and acts as the kubelet for them: a pod whose image is the
//! inference-server gets an IP in local-node's own network namespace (netns.rs) and runs the
//! local inference-server binary in that namespace as a child process per container, with
//! probes, restarts, hooks and graceful deletion. Pods of any
//! other image are bound and marked Failed (reason `UnsupportedImage`).
//! See README.md in this crate for what is and is not supported.

mod container;
mod env;
mod ipam;
mod kubelet;
mod netns;
mod node;
mod pod;
mod probe;
mod procs;
mod scheduler;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::Client;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use tokio_util::sync::CancellationToken;

#[derive(Parser, Debug)]
#[command(
    name = "local-node",
    version,
    about = "A local Kubernetes node that runs inference-server pods as processes"
)]
pub struct Args {
    /// Name of the Node object (also its kubernetes.io/hostname label).
    #[arg(long, env = "NODE_NAME", default_value = "local-node")]
    pub node_name: String,
    /// Kubeconfig file; without it the usual inference (KUBECONFIG, ~/.kube/config).
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// The inference-server binary that every container runs.
    #[arg(long, env = "INFERENCE_SERVER_BIN")]
    pub inference_server_bin: PathBuf,
    /// Per-pod work dirs and container logs.
    #[arg(long, env = "LOCAL_NODE_STATE_DIR", default_value = ".state/node")]
    pub state_dir: PathBuf,
    /// Pod IPs are <prefix>.2 .. <prefix>.254, on the pod side of a veth inside a network
    /// namespace that local-node creates (needs root) and deletes on exit; the host side gets
    /// <prefix>.1/24. Not loopback: the apiserver refuses loopback addresses in EndpointSlices.
    /// The /24 must not be in use on this machine.
    #[arg(long, env = "LOCAL_NODE_IP_PREFIX", default_value = "198.18.100")]
    pub ip_prefix: String,
    /// Upper bound of the restart back-off (kubelet: 10 s doubling up to 300 s).
    #[arg(
        long,
        env = "LOCAL_NODE_CRASHLOOP_BACKOFF_MAX_SECONDS",
        default_value_t = 300
    )]
    pub crashloop_backoff_max_seconds: u64,
    /// Environment given to every container before its own env (KEY=VALUE, repeatable), e.g.
    /// MODEL_PATH for pods that expect weights baked into the image.
    #[arg(long = "default-env", value_name = "KEY=VALUE", value_parser = parse_kv)]
    pub default_env: Vec<(String, String)>,
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("expected KEY=VALUE, got `{s}`"))?;
    Ok((k.to_string(), v.to_string()))
}

/// Everything the tasks share.
pub struct Ctx {
    pub client: Client,
    pub node_name: String,
    pub server_bin: PathBuf,
    pub state_dir: PathBuf,
    pub ips: ipam::IpPool,
    /// The pod network namespace; pod IPs are added to it while their pod runs.
    pub net: netns::PodNet,
    pub backoff_max: Duration,
    pub default_env: Vec<(String, String)>,
    pub recorder: Recorder,
    pub procs: procs::ProcTable,
    /// Cancelled when local-node shuts down: pod workers stop their processes.
    pub shutdown: CancellationToken,
    /// Node capacity (also used for resourceFieldRef without limits).
    pub memory_bytes: u64,
    pub cpus: u64,
}

impl Ctx {
    /// A free pod IP, added to the pod network namespace.
    pub fn allocate_ip(
        &self,
        preferred: Option<std::net::Ipv4Addr>,
    ) -> anyhow::Result<std::net::Ipv4Addr> {
        let ip = self
            .ips
            .allocate(preferred)
            .ok_or_else(|| anyhow::anyhow!("no free pod IP in {}.0/24", self.ips.prefix()))?;
        if let Err(e) = self.net.add_ip(ip) {
            self.ips.release(ip);
            return Err(e);
        }
        Ok(ip)
    }

    pub fn release_ip(&self, ip: std::net::Ipv4Addr) {
        self.net.del_ip(ip);
        self.ips.release(ip);
    }

    /// Publishes an event about an object; best effort, never blocks the caller.
    pub fn event(
        &self,
        regarding: ObjectReference,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) {
        let recorder = self.recorder.clone();
        let ev = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: action.into(),
            secondary: None,
        };
        tokio::spawn(async move {
            if let Err(e) = recorder.publish(&ev, &regarding).await {
                tracing::debug!(error = %e, reason = ev.reason, "could not publish event");
            }
        });
    }
}

fn main() {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,kube=warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    // Children are spawned from the runtime's worker threads; those live as long as the process,
    // which matters for PR_SET_PDEATHSIG (it fires when the spawning *thread* exits).
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let code = match rt.block_on(run(args)) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("local-node: error: {e:#}");
            1
        }
    };
    rt.shutdown_timeout(Duration::from_secs(2));
    std::process::exit(code);
}

async fn run(args: Args) -> anyhow::Result<()> {
    let server_bin = std::fs::canonicalize(&args.inference_server_bin).with_context(|| {
        format!(
            "--inference-server-bin {}",
            args.inference_server_bin.display()
        )
    })?;
    anyhow::ensure!(
        server_bin.is_file(),
        "--inference-server-bin {} is not a file",
        server_bin.display()
    );
    std::fs::create_dir_all(&args.state_dir)
        .with_context(|| format!("creating {}", args.state_dir.display()))?;
    let state_dir = std::fs::canonicalize(&args.state_dir)?;
    let ips = ipam::IpPool::new(&args.ip_prefix)?;
    // first: kill pod processes a killed local-node left (they may hold the old namespace)
    let procs = procs::ProcTable::new(state_dir.join("pids"))?;
    let net = netns::PodNet::create(
        &netns::name_for(&state_dir, &args.node_name),
        ips.octets(),
        &state_dir,
    )?;
    tracing::info!(prefix = %ips.prefix(), netns = net.name(), "pod network: {}.2-254 in netns {}, host side {}.1/24 on veth {}",
        ips.prefix(), net.name(), ips.prefix(), net.name());

    let config = match &args.kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?
        }
        None => kube::Config::infer().await?,
    };
    let client = Client::try_from(config)?;
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "local-node".into(),
            instance: Some(args.node_name.clone()),
        },
    );
    let ctx = Arc::new(Ctx {
        client,
        node_name: args.node_name.clone(),
        server_bin,
        procs,
        state_dir,
        ips,
        net,
        backoff_max: Duration::from_secs(args.crashloop_backoff_max_seconds.max(1)),
        default_env: args.default_env,
        recorder,
        shutdown: CancellationToken::new(),
        memory_bytes: node::mem_total_bytes(),
        cpus: 2,
    });

    node::register(&ctx).await.context("registering the Node")?;
    tracing::info!(node = %ctx.node_name, "node registered and Ready");

    let heartbeat = tokio::spawn(node::heartbeat(ctx.clone()));
    let sched = tokio::spawn(scheduler::run(ctx.clone()));
    let kubelet = tokio::spawn(kubelet::run(ctx.clone()));

    wait_for_signal().await;
    tracing::info!("shutting down: stopping all pod processes");
    ctx.shutdown.cancel();
    sched.abort();
    heartbeat.abort();
    // Pod workers stop their processes (SIGTERM, SIGKILL after at most 10 s). A second signal
    // or a stuck worker: kill whatever is left.
    tokio::select! {
        _ = kubelet => {}
        _ = tokio::time::sleep(Duration::from_secs(20)) => tracing::warn!("pod workers did not finish in 20 s"),
        _ = wait_for_signal() => tracing::warn!("second signal: killing all pod processes now"),
    }
    ctx.procs.kill_all();
    let _ = tokio::time::timeout(Duration::from_secs(3), node::mark_not_ready(&ctx)).await;
    ctx.net.remove();
    tracing::info!("stopped");
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
