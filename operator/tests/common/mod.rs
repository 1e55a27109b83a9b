//! Shared helpers of the operator's cluster tests: the private cluster (one per test binary),
//! the CRD, the operator as a child process, namespaces, and waits that dump the relevant objects
//! (and the operator's log) when they time out.
#![allow(dead_code)]

pub mod real;

use std::fmt::Write as _;
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use inference_operator::crd::{self, InferenceService};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use test_cluster::{Cluster, Options};

/// Field manager of the tests' own applies (the "user").
pub const USER: &str = "cluster-test";

pub fn tmp_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
}

/// This binary's private cluster (no node: pods stay Pending), torn down when the process exits.
pub fn cluster() -> &'static Cluster {
    Cluster::shared(|| Options {
        state_root: Some(tmp_dir()),
        ..Default::default()
    })
}

/// Applies the CRD from `crds/` with server-side apply (idempotent, so every test may call it)
/// and waits until the API server serves it.
pub async fn install_crd(client: &Client) {
    let path = test_cluster::workspace_root()
        .join("crds")
        .join(crd::crd_file_name());
    test_cluster::apply_file(client, &path, None)
        .await
        .unwrap_or_else(|e| panic!("applying {}: {e:#}", path.display()));
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let name = "inferenceservices.serving.inference-server.dev";
    let established = test_cluster::wait_for(
        "the InferenceService CRD Established",
        Duration::from_secs(30),
        || async {
            let c = crds.get(name).await.ok()?;
            c.status?
                .conditions?
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
                .then_some(())
        },
    );
    established.await;
    let isvcs: Api<InferenceService> = Api::all(client.clone());
    test_cluster::wait_for(
        "InferenceServices served",
        Duration::from_secs(30),
        || async { isvcs.list(&ListParams::default().limit(1)).await.ok() },
    )
    .await;
}

/// A test's world: a client, its own namespace (deleted by [`Env::finish`]; the whole cluster
/// goes when the test process exits, also after a failure), and the operator processes it runs.
pub struct Env {
    pub cluster: &'static Cluster,
    pub client: Client,
    pub ns: String,
    /// Operator logs to show when a wait fails.
    pub logs: Vec<PathBuf>,
    started: Instant,
}

impl Env {
    /// Cluster (shared), CRD, a fresh namespace `<prefix>-<random>`.
    pub async fn new(cluster: &'static Cluster, prefix: &str) -> Env {
        let client = cluster.client().await;
        install_crd(&client).await;
        let ns = test_cluster::create_namespace(&client, prefix)
            .await
            .expect("creating the test namespace");
        Env {
            cluster,
            client,
            ns,
            logs: Vec::new(),
            started: Instant::now(),
        }
    }

    pub fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = kube::core::NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    pub fn isvcs(&self) -> Api<InferenceService> {
        self.api()
    }

    /// Starts the operator for this namespace (`--namespace`, no leader election).
    pub fn start_operator(&mut self, tag: &str) -> Operator {
        self.start_operator_with(tag, &["--leader-election", "false"])
    }

    /// Starts the operator for this namespace with these flags; its log goes into failure dumps.
    pub fn start_operator_with(&mut self, tag: &str, flags: &[&str]) -> Operator {
        let op = Operator::start(self.cluster, tag, &self.ns, flags);
        self.logs.push(op.log.clone());
        op
    }

    /// Server-side applies an InferenceService (`spec` as JSON) as the user: the whole desired
    /// spec each time, so fields left out are removed.
    pub async fn apply_isvc(&self, name: &str, spec: Value) -> InferenceService {
        self.apply_isvc_full(name, json!({}), spec).await
    }

    pub async fn apply_isvc_full(
        &self,
        name: &str,
        metadata: Value,
        spec: Value,
    ) -> InferenceService {
        let mut meta = json!({ "name": name });
        merge(&mut meta, metadata);
        let obj = json!({
            "apiVersion": "serving.inference-server.dev/v1alpha1",
            "kind": "InferenceService",
            "metadata": meta,
            "spec": spec,
        });
        self.isvcs()
            .patch(name, &PatchParams::apply(USER).force(), &Patch::Apply(&obj))
            .await
            .unwrap_or_else(|e| panic!("applying InferenceService {name}: {e}"))
    }

    /// Polls `f` (every 250 ms) until it gives `Some`; after `timeout` panics with `what`, a dump
    /// of the namespace's objects and the tail of the operator logs.
    pub async fn wait<T, F, Fut>(&self, what: &str, timeout: Duration, mut f: F) -> T
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
                let dump = self.dump().await;
                panic!(
                    "timed out after {timeout:?} waiting for {what}\n\
                     ---- namespace {} ----\n{dump}",
                    self.ns
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Waits for the InferenceService's status to satisfy `f`; returns the object.
    pub async fn wait_isvc(
        &self,
        name: &str,
        what: &str,
        timeout: Duration,
        f: impl Fn(&InferenceService) -> bool,
    ) -> InferenceService {
        let api = self.isvcs();
        self.wait(&format!("InferenceService {name}: {what}"), timeout, || {
            let api = api.clone();
            let f = &f;
            async move { api.get(name).await.ok().filter(|i| f(i)) }
        })
        .await
    }

    /// Waits until the object exists and satisfies `f`.
    /// Waits until the operator has made `name`'s Deployment, Service and PDB and written a
    /// current status.
    pub async fn wait_reconciled(&self, name: &str, timeout: Duration) {
        self.wait_obj::<Deployment>(name, "created", timeout, |_| true)
            .await;
        self.wait_obj::<Service>(name, "created", timeout, |_| true)
            .await;
        self.wait_obj::<PodDisruptionBudget>(name, "created", timeout, |_| true)
            .await;
        self.wait_isvc(name, "status written", timeout, observed_current)
            .await;
    }

    pub async fn wait_obj<K>(
        &self,
        name: &str,
        what: &str,
        timeout: Duration,
        f: impl Fn(&K) -> bool,
    ) -> K
    where
        K: Resource<Scope = kube::core::NamespaceResourceScope>
            + Clone
            + DeserializeOwned
            + std::fmt::Debug,
        K::DynamicType: Default,
    {
        let api: Api<K> = self.api();
        let kind = K::kind(&K::DynamicType::default()).to_string();
        self.wait(&format!("{kind} {name}: {what}"), timeout, || {
            let api = api.clone();
            let f = &f;
            async move { api.get_opt(name).await.ok().flatten().filter(|o| f(o)) }
        })
        .await
    }

    /// Waits until the object is gone.
    pub async fn wait_gone<K>(&self, name: &str, timeout: Duration)
    where
        K: Resource<Scope = kube::core::NamespaceResourceScope>
            + Clone
            + DeserializeOwned
            + std::fmt::Debug,
        K::DynamicType: Default,
    {
        let api: Api<K> = self.api();
        let kind = K::kind(&K::DynamicType::default()).to_string();
        self.wait(&format!("{kind} {name} to be gone"), timeout, || {
            let api = api.clone();
            async move { api.get_opt(name).await.ok()?.is_none().then_some(()) }
        })
        .await
    }

    /// Everything worth seeing when a wait fails.
    pub async fn dump(&self) -> String {
        let mut out = String::new();
        section::<InferenceService>(
            &mut out,
            &self.api(),
            |i| json!({"generation": i.metadata.generation, "spec": i.spec, "status": i.status}),
        )
        .await;
        section::<Deployment>(&mut out, &self.api(), |d| {
            let spec = d.spec.as_ref();
            json!({
                "uid": d.metadata.uid,
                "generation": d.metadata.generation,
                "replicas": spec.and_then(|s| s.replicas),
                "image": spec.and_then(|s| s.template.spec.as_ref()).map(|p| p.containers[0].image.clone()),
                "status": d.status,
                "managers": managers(&d.metadata),
            })
        })
        .await;
        section::<ReplicaSet>(
            &mut out,
            &self.api(),
            |r| json!({"replicas": r.spec.as_ref().and_then(|s| s.replicas), "status": r.status}),
        )
        .await;
        section::<Service>(&mut out, &self.api(), |s| json!({"spec": s.spec})).await;
        section::<HorizontalPodAutoscaler>(
            &mut out,
            &self.api(),
            |h| json!({"spec": h.spec, "status": h.status}),
        )
        .await;
        section::<PodDisruptionBudget>(&mut out, &self.api(), |p| json!({"spec": p.spec})).await;
        section::<Pod>(&mut out, &self.api(), |p| {
            let st = p.status.as_ref();
            json!({
                "phase": st.and_then(|s| s.phase.clone()),
                "podIP": st.and_then(|s| s.pod_ip.clone()),
                "deleting": p.metadata.deletion_timestamp.is_some(),
                "containerStatuses": st.and_then(|s| s.container_statuses.clone()),
            })
        })
        .await;
        section::<k8s_openapi::api::events::v1::Event>(&mut out, &self.api(), |e| {
            json!(format!(
                "{} {} {}: {}",
                e.type_.clone().unwrap_or_default(),
                e.regarding
                    .as_ref()
                    .and_then(|r| r.name.clone())
                    .unwrap_or_default(),
                e.reason.clone().unwrap_or_default(),
                e.note.clone().unwrap_or_default()
            ))
        })
        .await;
        for log in &self.logs {
            let _ = writeln!(out, "---- {} (last 60 lines) ----", log.display());
            out.push_str(&tail(log, 60));
        }
        out
    }

    /// Deletes the namespace (at the end of a test that passed; a failed test leaves it for the
    /// cluster teardown, which removes everything).
    /// The operator logs go too, unless TEST_CLUSTER_KEEP_LOGS is set.
    pub async fn finish(self) {
        let nss: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(self.client.clone());
        let _ = nss.delete(&self.ns, &DeleteParams::background()).await;
        eprintln!(
            "namespace {}: passed in {:.1}s",
            self.ns,
            self.started.elapsed().as_secs_f32()
        );
        if std::env::var_os("TEST_CLUSTER_KEEP_LOGS").is_none() {
            for log in &self.logs {
                let _ = std::fs::remove_file(log);
            }
        }
    }
}

async fn section<K>(out: &mut String, api: &Api<K>, f: impl Fn(&K) -> Value)
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
    K::DynamicType: Default,
{
    let kind = K::kind(&K::DynamicType::default()).to_string();
    match api.list(&ListParams::default()).await {
        Ok(list) => {
            for o in &list.items {
                let _ = writeln!(
                    out,
                    "{kind} {}: {}",
                    o.name_any(),
                    serde_json::to_string_pretty(&f(o)).unwrap_or_default()
                );
            }
            if list.items.is_empty() {
                let _ = writeln!(out, "{kind}: none");
            }
        }
        Err(e) => {
            let _ = writeln!(out, "{kind}: cannot list: {e}");
        }
    }
}

/// `manager/operation[/subresource]` of each managedFields entry.
pub fn managers(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Vec<String> {
    meta.managed_fields
        .iter()
        .flatten()
        .map(|m| {
            let mut s = format!(
                "{}/{}",
                m.manager.clone().unwrap_or_default(),
                m.operation.clone().unwrap_or_default()
            );
            if let Some(sub) = m.subresource.as_deref().filter(|s| !s.is_empty()) {
                s.push('/');
                s.push_str(sub);
            }
            s
        })
        .collect()
}

/// The last `n` lines of a file.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let mut s = lines[lines.len().saturating_sub(n)..].join("\n");
    s.push('\n');
    s
}

pub fn merge(a: &mut Value, b: Value) {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(Value::Null), v);
            }
        }
        (a, b) => *a = b,
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// The `inference-operator` binary running as a child process against the test cluster. Killed
/// (SIGKILL) on drop; it also dies with the test thread that started it (PR_SET_PDEATHSIG), so a
/// killed test binary leaves no operator behind.
pub struct Operator {
    child: Child,
    pub log: PathBuf,
    /// `127.0.0.1:<port>` of /healthz, /readyz and /metrics.
    pub listen: String,
}

impl Operator {
    /// Starts the operator watching `namespace`, with `extra` flags, as the cluster's admin.
    pub fn start(cluster: &Cluster, tag: &str, namespace: &str, extra: &[&str]) -> Operator {
        Self::start_as(cluster.kubeconfig(), tag, Some(namespace), extra)
    }

    /// Starts the operator with this kubeconfig (e.g. a ServiceAccount's token), watching
    /// `namespace` or (None) every namespace.
    pub fn start_as(
        kubeconfig: PathBuf,
        tag: &str,
        namespace: Option<&str>,
        extra: &[&str],
    ) -> Operator {
        Self::start_bin(None, kubeconfig, tag, namespace, extra)
    }

    /// [`Operator::start_as`] with another operator binary (`None`: this crate's).
    pub fn start_bin(
        bin: Option<PathBuf>,
        kubeconfig: PathBuf,
        tag: &str,
        namespace: Option<&str>,
        extra: &[&str],
    ) -> Operator {
        let listen = format!("127.0.0.1:{}", free_port());
        let log = tmp_dir().join(format!(
            "operator-{}-{tag}-{}.log",
            namespace.unwrap_or("all"),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis()
        ));
        let file = std::fs::File::create(&log).expect("operator log file");
        let mut cmd = Command::new(
            bin.unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_inference-operator"))),
        );
        if let Some(ns) = namespace {
            cmd.args(["--namespace", ns]);
        }
        cmd.args(["--listen", &listen, "--log-format", "text"])
            .args(["--default-image", DEFAULT_IMAGE])
            .args(extra)
            .env("KUBECONFIG", &kubeconfig)
            .env("RUST_LOG", "info,inference_operator=debug")
            // Nothing from the caller's environment may change the flags' defaults.
            .env_remove("WATCH_NAMESPACE")
            .env_remove("POD_NAMESPACE")
            .env_remove("POD_NAME")
            .env_remove("LEADER_ELECTION")
            .env_remove("LEADER_ELECTION_LEASE")
            .env_remove("RECONCILE_CONCURRENCY")
            .env_remove("CLUSTER_DOMAIN")
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file);
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd.spawn().expect("starting inference-operator");
        eprintln!(
            "operator {tag} for {}: pid {}, log {}",
            namespace.unwrap_or("all namespaces"),
            child.id(),
            log.display()
        );
        Operator { child, log, listen }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// SIGKILL, and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM; waits (at most `timeout`) for the exit status.
    pub fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        unsafe { libc::kill(self.pid(), libc::SIGTERM) };
        let t0 = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().expect("waiting for the operator") {
                return st;
            }
            if t0.elapsed() > timeout {
                let log = tail(&self.log, 40);
                self.kill();
                panic!("the operator did not exit within {timeout:?} after SIGTERM:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The exit status, once the process has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("waiting for the operator")
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// GET on the operator's HTTP port: (status code, body), or None if it does not answer.
    pub fn http_get(&self, path: &str) -> Option<(u16, String)> {
        use std::io::{Read, Write};
        let mut s = TcpStream::connect(&self.listen).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.listen
        )
        .ok()?;
        let mut resp = String::new();
        s.read_to_string(&mut resp).ok()?;
        let code = resp.split_whitespace().nth(1)?.parse().ok()?;
        let body = resp.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
        Some((code, body.to_string()))
    }

    /// The value of a metric line without labels, e.g. `inference_operator_leader`.
    pub fn metric(&self, name: &str) -> Option<f64> {
        let (_, body) = self.http_get("/metrics")?;
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
    }

    /// Whether the log contains `needle` (for checks on what the operator did).
    pub fn log_contains(&self, needle: &str) -> bool {
        std::fs::File::open(&self.log)
            .map(|f| {
                BufReader::new(f)
                    .lines()
                    .map_while(Result::ok)
                    .any(|l| l.contains(needle))
            })
            .unwrap_or(false)
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `--default-image` of the operators the tests start (tests on the real node name their image).
pub const DEFAULT_IMAGE: &str = "example.com/ml/inference-server:test";

// ---- Reading objects ------------------------------------------------------------------------

pub fn cond<'a>(isvc: &'a InferenceService, type_: &str) -> Option<&'a Condition> {
    isvc.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
}

/// `(status, reason)` of a condition, `("", "")` if absent.
pub fn cond_of(isvc: &InferenceService, type_: &str) -> (String, String) {
    cond(isvc, type_)
        .map(|c| (c.status.clone(), c.reason.clone()))
        .unwrap_or_default()
}

/// The status describes the current generation (status and every condition).
pub fn observed_current(isvc: &InferenceService) -> bool {
    let g = isvc.metadata.generation;
    isvc.status.as_ref().is_some_and(|s| {
        s.observed_generation == g
            && s.conditions.len() == 4
            && s.conditions.iter().all(|c| c.observed_generation == g)
    })
}

pub fn status_json(isvc: &InferenceService) -> String {
    serde_json::to_string_pretty(&isvc.status).unwrap_or_default()
}

pub fn to_json<T: Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap()
}

/// The env of the Deployment's server container as name → value.
pub fn env_map(d: &Deployment) -> std::collections::BTreeMap<String, String> {
    container(d)
        .env
        .iter()
        .flatten()
        .map(|e| (e.name.clone(), e.value.clone().unwrap_or_default()))
        .collect()
}

pub fn container(d: &Deployment) -> &k8s_openapi::api::core::v1::Container {
    &d.spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[0]
}

pub fn image_of(d: &Deployment) -> String {
    container(d).image.clone().unwrap_or_default()
}

/// The controller owner reference must point at this InferenceService.
pub fn assert_owned_by(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    isvc: &InferenceService,
    what: &str,
) {
    let refs = meta.owner_references.clone().unwrap_or_default();
    assert_eq!(refs.len(), 1, "{what}: one owner reference: {refs:?}");
    let o = &refs[0];
    assert_eq!(
        o.api_version, "serving.inference-server.dev/v1alpha1",
        "{what}"
    );
    assert_eq!(o.kind, "InferenceService", "{what}");
    assert_eq!(o.name, isvc.name_any(), "{what}");
    assert_eq!(
        Some(&o.uid),
        isvc.metadata.uid.as_ref(),
        "{what}: owner uid"
    );
    assert_eq!(o.controller, Some(true), "{what}: controller=true");
    // Setting it would need `update` on inferenceservices/finalizers (OpenShift).
    assert_eq!(
        o.block_owner_deletion, None,
        "{what}: no blockOwnerDeletion"
    );
}

/// The four labels every child carries.
pub fn assert_child_labels(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    name: &str,
    what: &str,
) {
    let l = meta.labels.clone().unwrap_or_default();
    assert_eq!(
        l.get("app.kubernetes.io/name").map(String::as_str),
        Some("inference-server"),
        "{what}: {l:?}"
    );
    assert_eq!(
        l.get("app.kubernetes.io/instance").map(String::as_str),
        Some(name),
        "{what}: {l:?}"
    );
    assert_eq!(
        l.get("app.kubernetes.io/component").map(String::as_str),
        Some("predictor"),
        "{what}: {l:?}"
    );
    assert_eq!(
        l.get("app.kubernetes.io/managed-by").map(String::as_str),
        Some("inference-operator"),
        "{what}: {l:?}"
    );
}

/// The selector labels of an InferenceService's pods.
pub fn selector(name: &str) -> std::collections::BTreeMap<String, String> {
    [(
        "serving.inference-server.dev/inferenceservice".to_string(),
        name.to_string(),
    )]
    .into()
}

/// ReplicaSets controlled by this Deployment (by uid).
pub async fn replica_sets_of(env: &Env, d: &Deployment) -> Vec<ReplicaSet> {
    let rs: Api<ReplicaSet> = env.api();
    let uid = d.metadata.uid.clone();
    rs.list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .into_iter()
        .filter(|r| {
            r.metadata
                .owner_references
                .iter()
                .flatten()
                .any(|o| o.controller == Some(true) && Some(&o.uid) == uid.as_ref())
        })
        .collect()
}

pub fn rs_image(r: &ReplicaSet) -> String {
    r.spec
        .as_ref()
        .and_then(|s| s.template.as_ref())
        .and_then(|t| t.spec.as_ref())
        .and_then(|p| p.containers[0].image.clone())
        .unwrap_or_default()
}

// ---- Running the operator as a ServiceAccount ---------------------------------------------

/// A kubeconfig for the ServiceAccount `operator` of `ns`: the cluster's server and CA, a
/// bound token instead of the admin's client certificate.
pub async fn service_account_kubeconfig(env: &Env) -> PathBuf {
    use k8s_openapi::api::core::v1::ServiceAccount;
    let sas: Api<ServiceAccount> = env.api();
    let sa: ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": "operator"}})).unwrap();
    sas.create(&PostParams::default(), &sa).await.unwrap();
    token_kubeconfig(env, &env.ns, "operator").await
}

/// A kubeconfig for the cluster with a one-hour token of ServiceAccount `sa` in `ns`.
pub async fn token_kubeconfig(env: &Env, ns: &str, sa: &str) -> PathBuf {
    use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
    use k8s_openapi::api::core::v1::ServiceAccount;
    let sas: Api<ServiceAccount> = Api::namespaced(env.client.clone(), ns);
    let tr = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec![],
            expiration_seconds: Some(3600),
            ..Default::default()
        },
        ..Default::default()
    };
    let token = sas
        .create_token_request(sa, &PostParams::default(), &tr)
        .await
        .expect("a token for the ServiceAccount")
        .status
        .expect("token status")
        .token;
    let mut kc = kube::config::Kubeconfig::read_from(env.cluster.kubeconfig()).unwrap();
    for user in &mut kc.auth_infos {
        let auth = user.auth_info.get_or_insert_default();
        *auth = Default::default();
        auth.token = Some(token.clone().into());
    }
    let path = tmp_dir().join(format!("{ns}-{sa}.kubeconfig"));
    std::fs::write(&path, serde_json::to_string(&kc).unwrap()).unwrap();
    path
}

pub fn repo_file(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(rel)
}

pub async fn apply_json(env: &Env, value: serde_json::Value, ns: Option<&str>) {
    test_cluster::apply_yaml(&env.client, &value.to_string(), ns)
        .await
        .unwrap_or_else(|e| panic!("applying {value}: {e:#}"));
}

/// Binds the shipped operator ClusterRole (`rbac/operator-clusterrole.yaml`) cluster-wide to the
/// ServiceAccount `operator` of this test's namespace, as ClusterRoleBinding `name`.
pub async fn grant_cluster_wide(env: &Env, name: &str) {
    test_cluster::apply_file(
        &env.client,
        repo_file("rbac/operator-clusterrole.yaml"),
        None,
    )
    .await
    .unwrap();
    apply_json(
        env,
        binding(
            "ClusterRoleBinding",
            name,
            "ClusterRole",
            inference_operator::rbac::ROLE_NAME,
            &env.ns,
        ),
        None,
    )
    .await;
}

/// The holder of Lease `name`, if it has one.
pub async fn lease_holder(
    leases: &Api<k8s_openapi::api::coordination::v1::Lease>,
    name: &str,
) -> Option<String> {
    leases
        .get_opt(name)
        .await
        .ok()??
        .spec?
        .holder_identity
        .filter(|h| !h.is_empty())
}

pub fn binding(kind: &str, name: &str, role_kind: &str, role: &str, ns: &str) -> serde_json::Value {
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": kind,
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": role},
        "subjects": [{"kind": "ServiceAccount", "name": "operator", "namespace": ns}],
    })
}

// ---- An API server that hangs ----------------------------------------------------------------

/// A TCP proxy to the API server that can be made to hang: while stalled it forwards nothing in
/// either direction and accepts connections without serving them, as a partitioned or overloaded
/// API server looks to a client (TLS passes through untouched).
pub struct StallingProxy {
    pub addr: std::net::SocketAddr,
    stalled: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// Waits while the proxy is stalled.
async fn hold(flag: &std::sync::atomic::AtomicBool) {
    while flag.load(std::sync::atomic::Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Copies `from` to `to` until either side closes, holding each chunk while stalled.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    flag: std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 * 1024];
    while let Ok(n) = from.read(&mut buf).await {
        if n == 0 {
            break;
        }
        hold(&flag).await;
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
}

impl StallingProxy {
    pub async fn start(upstream: std::net::SocketAddr) -> StallingProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stalled = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stalled.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let flag = flag.clone();
                tokio::spawn(async move {
                    hold(&flag).await;
                    let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::join!(pipe(cr, sw, flag.clone()), pipe(sr, cw, flag));
                });
            }
        });
        StallingProxy { addr, stalled }
    }

    pub fn stall(&self, on: bool) {
        self.stalled.store(on, std::sync::atomic::Ordering::SeqCst);
    }

    /// A copy of `kubeconfig` whose server is this proxy.
    pub fn kubeconfig(&self, kubeconfig: &Path, out: &Path) -> PathBuf {
        let mut kc = kube::config::Kubeconfig::read_from(kubeconfig).unwrap();
        for c in &mut kc.clusters {
            if let Some(cluster) = c.cluster.as_mut() {
                cluster.server = Some(format!("https://{}", self.addr));
            }
        }
        std::fs::write(out, serde_json::to_string(&kc).unwrap()).unwrap();
        out.to_path_buf()
    }
}

/// The API server's address from a kubeconfig.
pub fn api_server_addr(kubeconfig: &Path) -> std::net::SocketAddr {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig).unwrap();
    let server = kc.clusters[0]
        .cluster
        .as_ref()
        .unwrap()
        .server
        .clone()
        .unwrap();
    let hostport = server.trim_start_matches("https://").trim_end_matches('/');
    hostport.parse().unwrap_or_else(|e| panic!("{server}: {e}"))
}

/// The path a hack script prints (it fetches or builds the tool once, then answers from cache).
pub fn script_output(script: &str, args: &[&str]) -> PathBuf {
    let out = Command::new(repo_file(script))
        .args(args)
        .output()
        .expect(script);
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// helm as the control plane's build made it (or `HELM`).
pub fn helm_bin() -> PathBuf {
    if let Some(h) = std::env::var_os("HELM") {
        return h.into();
    }
    script_output("hack/build-control-plane.sh", &["--print-bin-dir"]).join("helm")
}

/// helm with its caches and config under the test's temp dir, and this kubeconfig.
pub fn helm(args: &[&str], kubeconfig: Option<&PathBuf>) -> Output {
    let home = tmp_dir().join("helm-home");
    let mut cmd = Command::new(helm_bin());
    cmd.args(args)
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"))
        .env_remove("KUBECONFIG");
    if let Some(k) = kubeconfig {
        cmd.env("KUBECONFIG", k);
    }
    cmd.output().expect("running helm")
}

/// helm's stdout, or a panic with its output when it failed.
pub fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "helm failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An HTTP client for requests to servers in the cluster: statuses are answers, not errors.
pub fn http_agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(timeout))
        .build()
        .into()
}
