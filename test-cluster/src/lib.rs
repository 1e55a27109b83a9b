//! A private Kubernetes control plane for integration tests, optionally with the local node.
//!
//! ```ignore
//! let cluster = test_cluster::Cluster::start_with(test_cluster::Options::with_local_node())?;
//! let client = cluster.client().await;          // a kube::Client for *this* tokio runtime
//! test_cluster::apply_yaml(&client, YAML, Some("default")).await?;
//! // Drop (also on panic) runs `hack/cluster.sh down`: control plane, node, pod processes.
//! ```
//!
//! Each cluster runs `hack/cluster.sh up` with its own state dir and free ports, so test
//! binaries (and people) do not collide. A watchdog process runs `hack/cluster.sh down` when the
//! test process exits, so a cluster kept in a `static` ([`Cluster::shared`]) or a test binary
//! killed with SIGKILL leaves nothing behind either.
//!
//! The control plane binaries are built by hack/build-control-plane.sh if missing (a cold
//! build takes ~20 min; afterwards `up` takes a few seconds).
//!
//! Logs (control plane, local-node, pod processes) are copied to `<state dir>-logs` when a test
//! panics while owning a [`Cluster`], or always with `TEST_CLUSTER_KEEP_LOGS=1`.

pub mod podman;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use kube::Client;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::discovery::Scope;

/// The workspace root (where hack/cluster.sh lives).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// The inference-server binary: `$INFERENCE_SERVER_BIN` or `<workspace>/target/release/inference-server`.
/// Panics with instructions when it is missing.
pub fn inference_server_bin() -> PathBuf {
    let p = std::env::var_os("INFERENCE_SERVER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/release/inference-server"));
    assert!(
        p.is_file(),
        "inference-server binary not found at {}: run `cargo build --release -p inference-server` \
         (or set INFERENCE_SERVER_BIN to the binary)",
        p.display()
    );
    p
}

/// The local-node binary: `$LOCAL_NODE_BIN`, else `cargo build -p local-node` into
/// `<target>/test-cluster` (a separate target dir, so it does not wait on the running build).
/// local-node's own tests pass `env!("CARGO_BIN_EXE_local-node")` instead.
pub fn local_node_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("LOCAL_NODE_BIN") {
            return PathBuf::from(p);
        }
        // <target>/<profile>/deps/<test-binary>
        let exe = std::env::current_exe().expect("current exe");
        let target = exe
            .ancestors()
            .nth(3)
            .map(Path::to_path_buf)
            .unwrap_or_else(|| workspace_root().join("target"));
        let target_dir = target.join("test-cluster");
        eprintln!(
            "test-cluster: building local-node into {} (set LOCAL_NODE_BIN to skip)",
            target_dir.display()
        );
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-p", "local-node"])
            .env("CARGO_TARGET_DIR", &target_dir)
            .current_dir(workspace_root())
            .status()
            .expect("running cargo");
        assert!(status.success(), "cargo build -p local-node failed");
        target_dir.join("debug/local-node")
    })
    .clone()
}

/// How to run the local node in the cluster.
#[derive(Clone, Debug)]
pub struct LocalNode {
    pub local_node_bin: PathBuf,
    pub inference_server_bin: PathBuf,
    /// Node name (default `local-node`).
    pub name: String,
    /// Extra local-node flags, e.g. `["--crashloop-backoff-max-seconds", "2"]`.
    pub args: Vec<String>,
}

impl LocalNode {
    /// [`local_node_bin`] and [`inference_server_bin`], a 2 s crash-loop back-off cap.
    pub fn new() -> Self {
        Self::with_bin(local_node_bin())
    }

    pub fn with_bin(local_node_bin: impl Into<PathBuf>) -> Self {
        Self {
            local_node_bin: local_node_bin.into(),
            inference_server_bin: inference_server_bin(),
            name: "local-node".into(),
            args: vec!["--crashloop-backoff-max-seconds".into(), "2".into()],
        }
    }
}

impl Default for LocalNode {
    fn default() -> Self {
        Self::new()
    }
}

#[derive(Clone, Debug, Default)]
pub struct Options {
    pub local_node: Option<LocalNode>,
    /// Parent of the state dir; default `$CARGO_TARGET_TMPDIR` if set, else the temp dir.
    pub state_root: Option<PathBuf>,
    /// Extra kube-apiserver flags (e.g. an audit log for a benchmark).
    pub apiserver_args: Vec<String>,
    /// A real node instead (hack/real-node.sh: containerd, kubelet, kube-proxy in a network
    /// namespace, kube-scheduler), with these images imported from buildah's storage. One per
    /// machine: its namespace and addresses are fixed.
    pub real_node: Option<RealNode>,
}

/// Settings of a real node (see [`Options::real_node`]).
#[derive(Clone, Debug, Default)]
pub struct RealNode {
    /// Image tags to import into the node's containerd (`make images` builds them).
    pub images: Vec<String>,
    /// Without CoreDNS and metrics-server (REAL_NODE_ADDONS=0): a faster start.
    pub no_addons: bool,
}

impl Options {
    pub fn with_local_node() -> Self {
        Self {
            local_node: Some(LocalNode::new()),
            ..Default::default()
        }
    }
}

pub struct Cluster {
    state_dir: PathBuf,
    env: Vec<(String, String)>,
    node: Option<(LocalNode, String)>,
    watchdog: Option<Child>,
}

/// A port free now, below the kernel's range for outgoing connections: a port from that range
/// (what binding port 0 returns) can be taken by any connection, such as the API server's to
/// etcd, between this pick and the component's bind.
fn free_port() -> u16 {
    let first_ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    const LOW: u16 = 10_000;
    if first_ephemeral > LOW + 1000 {
        for _ in 0..100 {
            let port = LOW + (unique() % u64::from(first_ephemeral - LOW)) as u16;
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return port;
            }
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64;
    (t ^ (u64::from(std::process::id()) << 20))
        .wrapping_add(N.fetch_add(1, Ordering::Relaxed).wrapping_mul(0x9E37_79B9))
}

impl Cluster {
    /// A control plane without nodes (pods stay Pending).
    pub fn start() -> anyhow::Result<Cluster> {
        Self::start_with(Options::default())
    }

    /// A control plane and, with `opts.local_node`, the local node. Blocks while cluster.sh runs
    /// (a few seconds when the binaries are built).
    pub fn start_with(opts: Options) -> anyhow::Result<Cluster> {
        let root = opts
            .state_root
            .or_else(|| std::env::var_os("CARGO_TARGET_TMPDIR").map(PathBuf::from))
            .unwrap_or_else(std::env::temp_dir);
        let mut last_err = None;
        for _attempt in 0..3 {
            let id = unique();
            let state_dir = root.join(format!(
                "test-cluster-{}-{:x}",
                std::process::id(),
                id & 0xffff_ffff
            ));
            // A /24 of the pod range 198.18.0.0/16 (198.19.0.0/20 holds the Service ClusterIPs)
            // that no other cluster (nor the default 198.18.100) is likely to use. local-node puts
            // it in a network namespace of its own (veth, host side <prefix>.1/24; needs root) and
            // refuses a /24 in use on this machine ("already in use": retried below with another
            // one).
            let n = match 1 + (id % 254) as u32 {
                100 => 101,
                n => n,
            };
            let ip_prefix = format!("198.18.{n}");
            let mut env = vec![
                (
                    "CLUSTER_STATE_DIR".to_string(),
                    state_dir.display().to_string(),
                ),
                ("CLUSTER_ETCD_PORT".into(), free_port().to_string()),
                ("CLUSTER_ETCD_PEER_PORT".into(), free_port().to_string()),
                ("CLUSTER_APISERVER_PORT".into(), free_port().to_string()),
                ("CLUSTER_KCM_PORT".into(), free_port().to_string()),
                (
                    "CLUSTER_APISERVER_EXTRA_ARGS".into(),
                    opts.apiserver_args.join(" "),
                ),
            ];
            if let Some(r) = &opts.real_node {
                env.push(("CLUSTER_NODE".into(), "real".into()));
                env.push(("REAL_NODE_IMAGES".into(), r.images.join(" ")));
                if r.no_addons {
                    env.push(("REAL_NODE_ADDONS".into(), "0".into()));
                }
            }
            if let Some(n) = &opts.local_node {
                env.push((
                    "LOCAL_NODE_BIN".into(),
                    n.local_node_bin.display().to_string(),
                ));
                env.push((
                    "INFERENCE_SERVER_BIN".into(),
                    n.inference_server_bin.display().to_string(),
                ));
                env.push(("CLUSTER_NODE_NAME".into(), n.name.clone()));
                env.push(("CLUSTER_NODE_IP_PREFIX".into(), ip_prefix.clone()));
                env.push(("CLUSTER_NODE_ARGS".into(), n.args.join(" ")));
            }
            let mut cluster = Cluster {
                state_dir,
                env,
                node: opts.local_node.clone().map(|n| (n, ip_prefix)),
                watchdog: None,
            };
            cluster.watchdog = Some(cluster.spawn_watchdog()?);
            let t0 = Instant::now();
            let res = cluster.cluster_sh("up").and_then(|_| match &cluster.node {
                Some(_) => cluster.cluster_sh("node-up"),
                None => Ok(String::new()),
            });
            match res {
                Ok(_) => {
                    eprintln!(
                        "test-cluster: up in {:.1}s, KUBECONFIG={}",
                        t0.elapsed().as_secs_f32(),
                        cluster.kubeconfig().display()
                    );
                    return Ok(cluster);
                }
                Err(e) => {
                    let retry = format!("{e:#}").contains("already in use");
                    drop(cluster); // tears down what started
                    if !retry {
                        return Err(e);
                    }
                    last_err = Some(e);
                }
            }
        }
        Err(last_err.expect("an error"))
    }

    /// One cluster per test binary, shared by its tests (each test makes its own client with
    /// [`Cluster::client`], since a kube::Client belongs to the tokio runtime that made it).
    /// It is torn down by the watchdog when the test process exits.
    pub fn shared(opts: impl FnOnce() -> Options) -> &'static Cluster {
        static SHARED: OnceLock<Cluster> = OnceLock::new();
        SHARED
            .get_or_init(|| Cluster::start_with(opts()).expect("starting the shared test cluster"))
    }

    /// A command with this cluster's settings and none inherited: `cluster.sh up` starts a node
    /// by itself when LOCAL_NODE_BIN and INFERENCE_SERVER_BIN are set (as `make test` sets them
    /// for the tests), and a cluster without `local_node` must not get one.
    fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(program);
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy();
            if k.starts_with("CLUSTER_")
                || k == "LOCAL_NODE_BIN"
                || k == "INFERENCE_SERVER_BIN"
                || k.starts_with("REAL_NODE_")
            {
                cmd.env_remove(&*k);
            }
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    /// Runs `hack/cluster.sh <cmd>` for this cluster (e.g. `node-up` after killing the node).
    pub fn cluster_sh(&self, cmd: &str) -> anyhow::Result<String> {
        let out = self
            .command(workspace_root().join("hack/cluster.sh"))
            .arg(cmd)
            .stdin(Stdio::null())
            .output()
            .context("running hack/cluster.sh")?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            bail!("hack/cluster.sh {cmd} failed ({}):\n{stderr}", out.status);
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `sh` loop in its own process group: runs `cluster.sh down` once this process is gone.
    fn spawn_watchdog(&self) -> anyhow::Result<Child> {
        use std::os::unix::process::CommandExt;
        let script = workspace_root().join("hack/cluster.sh");
        self.command("sh")
            .arg("-c")
            .arg(
                r#"while kill -0 "$1" 2>/dev/null; do sleep 1; done
                if [ -n "$TEST_CLUSTER_KEEP_LOGS" ]; then
                  mkdir -p "$CLUSTER_STATE_DIR-logs" && cp -r "$CLUSTER_STATE_DIR/logs" "$CLUSTER_STATE_DIR/node" "$CLUSTER_STATE_DIR-logs/" 2>/dev/null
                fi
                exec "$2" down"#,
            )
            .arg("test-cluster-watchdog")
            .arg(std::process::id().to_string())
            .arg(script)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .context("spawning the watchdog")
    }

    /// A new client for the current tokio runtime.
    pub async fn client(&self) -> Client {
        let kc =
            kube::config::Kubeconfig::read_from(self.kubeconfig()).expect("reading the kubeconfig");
        let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .expect("kubeconfig");
        Client::try_from(config).expect("client")
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.state_dir.join("kubeconfig")
    }

    /// Environment for processes that talk to this cluster (e.g. the operator): KUBECONFIG.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![("KUBECONFIG".into(), self.kubeconfig().display().to_string())]
    }

    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// Logs of etcd, kube-apiserver, kube-controller-manager and local-node.
    pub fn logs_dir(&self) -> PathBuf {
        self.state_dir.join("logs")
    }

    /// Where local-node keeps per-pod work dirs: `<node dir>/pods/<ns>_<name>_<uid>/<container>/<restart>.log`.
    pub fn node_dir(&self) -> PathBuf {
        self.state_dir.join("node")
    }

    pub fn node_name(&self) -> Option<&str> {
        self.node.as_ref().map(|(n, _)| n.name.as_str())
    }

    /// Pod IPs are `<prefix>.2` .. `<prefix>.254`, inside the node's network namespace
    /// (reachable from the host through its veth).
    pub fn node_ip_prefix(&self) -> Option<&str> {
        self.node.as_ref().map(|(_, p)| p.as_str())
    }

    /// pid of local-node, if it runs.
    pub fn node_pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.state_dir.join("run/local-node.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Processes of the inference-server binary started by this cluster's node (found by
    /// their working directory under [`Cluster::node_dir`]).
    pub fn pod_processes(&self) -> Vec<i32> {
        let dir = self.node_dir().display().to_string();
        let mut pids = Vec::new();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<i32>().ok())
            else {
                continue;
            };
            if let Ok(cwd) = std::fs::read_link(entry.path().join("cwd"))
                && cwd.to_string_lossy().starts_with(&dir)
            {
                pids.push(pid);
            }
        }
        pids
    }

    /// Tears everything down now (Drop does the same).
    pub fn stop(mut self) -> anyhow::Result<()> {
        self.teardown()
    }

    fn teardown(&mut self) -> anyhow::Result<()> {
        let Some(mut w) = self.watchdog.take() else {
            return Ok(());
        };
        if std::thread::panicking() || std::env::var_os("TEST_CLUSTER_KEEP_LOGS").is_some() {
            let keep = PathBuf::from(format!("{}-logs", self.state_dir.display()));
            let _ = std::fs::create_dir_all(&keep);
            let _ = Command::new("cp")
                .arg("-r")
                .arg(self.logs_dir())
                .arg(self.node_dir())
                .arg(&keep)
                .status();
            eprintln!("test-cluster: logs kept in {}", keep.display());
        }
        // the node's network namespace (`<node dir>/netns`): `down` deletes it, also when
        // local-node was killed; make sure, since the state dir is gone afterwards
        let netns = std::fs::read_to_string(self.node_dir().join("netns")).ok();
        let res = self.cluster_sh("down").map(|_| ());
        let _ = w.kill();
        let _ = w.wait();
        if let Some(ns) = netns
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
        {
            let left = |p: &str| Path::new(p).join(&ns).exists();
            if left("/run/netns") || left("/sys/class/net") {
                eprintln!("test-cluster: network namespace/veth {ns} left behind; deleting it");
                let _ = Command::new("ip").args(["link", "del", &ns]).status();
                let _ = Command::new("ip").args(["netns", "del", &ns]).status();
                if left("/run/netns") || left("/sys/class/net") {
                    return res.and(Err(anyhow::anyhow!("could not delete netns/veth {ns}")));
                }
            }
        }
        res
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            eprintln!("test-cluster: teardown failed: {e:#}");
        }
    }
}

/// Polls `f` every 250 ms until it returns Some, or panics after `timeout` with `what`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let t0 = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if t0.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Server-side applies every document of a YAML stream (field manager `test-cluster`, forced).
/// Namespaced objects without a namespace go to `namespace` (or the client's default).
pub async fn apply_yaml(
    client: &Client,
    yaml: &str,
    namespace: Option<&str>,
) -> anyhow::Result<Vec<DynamicObject>> {
    apply_yaml_with(client, yaml, namespace, false).await
}

/// [`apply_yaml`] as a server-side dry run: the API server validates and admits every object
/// (schemas, CEL, admission) and stores nothing.
pub async fn dry_run_yaml(
    client: &Client,
    yaml: &str,
    namespace: Option<&str>,
) -> anyhow::Result<Vec<DynamicObject>> {
    apply_yaml_with(client, yaml, namespace, true).await
}

async fn apply_yaml_with(
    client: &Client,
    yaml: &str,
    namespace: Option<&str>,
    dry_run: bool,
) -> anyhow::Result<Vec<DynamicObject>> {
    let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(yaml).context("parsing YAML")?;
    let mut applied = Vec::new();
    for doc in docs.into_iter().filter(|d| !d.is_null()) {
        let obj: DynamicObject = serde_json::from_value(doc).context("not a Kubernetes object")?;
        let tm = obj
            .types
            .clone()
            .context("object without apiVersion/kind")?;
        let gvk = GroupVersionKind::try_from(&tm)?;
        let (ar, caps) = kube::discovery::pinned_kind(client, &gvk).await?;
        let name = obj
            .metadata
            .name
            .clone()
            .context("object without metadata.name")?;
        let api: Api<DynamicObject> = match caps.scope {
            Scope::Namespaced => {
                let ns = obj
                    .metadata
                    .namespace
                    .as_deref()
                    .or(namespace)
                    .unwrap_or(client.default_namespace());
                Api::namespaced_with(client.clone(), ns, &ar)
            }
            Scope::Cluster => Api::all_with(client.clone(), &ar),
        };
        let mut pp = PatchParams::apply("test-cluster").force();
        pp.dry_run = dry_run;
        applied.push(
            api.patch(&name, &pp, &Patch::Apply(&obj))
                .await
                .with_context(|| format!("applying {} {name}", tm.kind))?,
        );
    }
    Ok(applied)
}

/// [`apply_yaml`] on a file.
pub async fn apply_file(
    client: &Client,
    path: impl AsRef<Path>,
    namespace: Option<&str>,
) -> anyhow::Result<Vec<DynamicObject>> {
    let path = path.as_ref();
    let yaml =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    apply_yaml(client, &yaml, namespace).await
}

/// Creates a namespace with a unique name (`<prefix>-<random>`) and returns its name.
pub async fn create_namespace(client: &Client, prefix: &str) -> anyhow::Result<String> {
    let name = format!("{prefix}-{:x}", unique() & 0xffffff);
    let yaml = format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n");
    apply_yaml(client, &yaml, None).await?;
    Ok(name)
}
