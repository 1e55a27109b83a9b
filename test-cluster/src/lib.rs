//! A private Kubernetes control plane for integration tests, optionally with the real node
//! (hack/real-node.sh: kubelet, containerd, kube-proxy, kube-scheduler; one per machine).
//!
//! ```ignore
//! let cluster = test_cluster::Cluster::start()?;
//! let client = cluster.client().await;          // a kube::Client for *this* tokio runtime
//! test_cluster::apply_yaml(&client, YAML, Some("default")).await?;
//! // Drop (also on panic) runs `hack/cluster.sh down`: control plane, node, pods.
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
//! Logs (control plane, real node) are copied to `<state dir>-logs` when a test
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

#[derive(Clone, Debug, Default)]
pub struct Options {
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

pub struct Cluster {
    state_dir: PathBuf,
    env: Vec<(String, String)>,
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

    /// A control plane and, with `opts.real_node`, the real node. Blocks while cluster.sh runs
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
            let mut cluster = Cluster {
                state_dir,
                env,
                watchdog: None,
            };
            cluster.watchdog = Some(cluster.spawn_watchdog()?);
            let t0 = Instant::now();
            match cluster.cluster_sh("up") {
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

    /// A command with this cluster's settings and none inherited (a CLUSTER_NODE=real in the
    /// caller's environment must not give a cluster without `real_node` a node).
    fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(program);
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy();
            if k.starts_with("CLUSTER_") || k.starts_with("REAL_NODE_") {
                cmd.env_remove(&*k);
            }
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    /// Runs `hack/cluster.sh <cmd>` for this cluster.
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
                  mkdir -p "$CLUSTER_STATE_DIR-logs" && cp -r "$CLUSTER_STATE_DIR/logs" "$CLUSTER_STATE_DIR/real-node/logs" "$CLUSTER_STATE_DIR-logs/" 2>/dev/null
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

    /// Logs of etcd, kube-apiserver and kube-controller-manager (the real node's: under
    /// `real-node/logs` in the state dir).
    pub fn logs_dir(&self) -> PathBuf {
        self.state_dir.join("logs")
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
                .arg(self.state_dir.join("real-node/logs"))
                .arg(&keep)
                .status();
            eprintln!("test-cluster: logs kept in {}", keep.display());
        }
        let res = self.cluster_sh("down").map(|_| ());
        let _ = w.kill();
        let _ = w.wait();
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
