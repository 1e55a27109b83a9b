//! Shared helpers of the local-node integration tests.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};
use test_cluster::{Cluster, LocalNode, Options};

pub const IMAGE: &str = "example.com/inference-server:dev";

pub fn options() -> Options {
    Options {
        local_node: Some(LocalNode::with_bin(env!("CARGO_BIN_EXE_local-node"))),
        state_root: Some(PathBuf::from(env!("CARGO_TARGET_TMPDIR"))),
        ..Default::default()
    }
}

/// Random ResNet50 weights (seed 42), generated once.
pub fn weights() -> PathBuf {
    static W: OnceLock<PathBuf> = OnceLock::new();
    W.get_or_init(|| {
        let out =
            PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("local-node-test-weights.safetensors");
        if !out.is_file() {
            let tmp = out.with_extension(format!("tmp.{}", std::process::id()));
            let st = std::process::Command::new(test_cluster::inference_server_bin())
                .args(["generate-weights", "--seed", "42", "--out"])
                .arg(&tmp)
                .stdout(std::process::Stdio::null())
                .status()
                .expect("inference-server generate-weights");
            assert!(st.success());
            std::fs::rename(&tmp, &out).unwrap();
        }
        out
    })
    .clone()
}

/// A pod of our image: 1 inference thread, fast shutdown, readiness on /ready every second.
/// `extra` is merged into the container (JSON merge), `pod_extra` into the pod spec.
pub fn pod(name: &str, extra: Value, pod_extra: Value) -> Pod {
    let mut container = json!({
        "name": "server",
        "image": IMAGE,
        "env": [
            {"name": "MODEL_PATH", "value": weights().display().to_string()},
            {"name": "INFERENCE_THREADS", "value": "1"},
            {"name": "SHUTDOWN_GRACE_SECONDS", "value": "1"},
            {"name": "LOG_FORMAT", "value": "text"},
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "GREETING", "value": "hello $(POD_NAME)"},
        ],
        "ports": [{"name": "http", "containerPort": 8080}],
        "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"}, "periodSeconds": 1},
    });
    merge(&mut container, extra);
    let mut spec = json!({ "containers": [container], "terminationGracePeriodSeconds": 10 });
    merge(&mut spec, pod_extra);
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": name, "labels": { "app": name } },
        "spec": spec,
    }))
    .unwrap()
}

fn merge(a: &mut Value, b: Value) {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(Value::Null), v);
            }
        }
        (a, b) => *a = b,
    }
}

pub async fn create(api: &Api<Pod>, pod: &Pod) -> Pod {
    api.create(&PostParams::default(), pod)
        .await
        .expect("create pod")
}

pub fn is_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Waits until the pod is Running and Ready; returns it.
pub async fn wait_ready(api: &Api<Pod>, name: &str) -> Pod {
    test_cluster::wait_for(
        &format!("pod {name} Ready"),
        Duration::from_secs(90),
        || async {
            let p = api.get(name).await.ok()?;
            (p.status.as_ref()?.phase.as_deref() == Some("Running") && is_ready(&p)).then_some(p)
        },
    )
    .await
}

/// The pid in `containerID: local://<pid>` of the first container.
pub fn pid(p: &Pod) -> i32 {
    let id = p
        .status
        .as_ref()
        .unwrap()
        .container_statuses
        .as_ref()
        .unwrap()[0]
        .container_id
        .clone()
        .unwrap();
    id.strip_prefix("local://").unwrap().parse().unwrap()
}

/// The pids of every pod `pods` lists.
pub async fn pids(pods: &Api<Pod>) -> Vec<i32> {
    pods.list(&kube::api::ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(pid)
        .collect()
}

pub fn alive(pid: i32) -> bool {
    // a zombie is as good as gone
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(false)
}

pub fn environ(pid: i32) -> Vec<(String, String)> {
    std::fs::read(format!("/proc/{pid}/environ"))
        .unwrap_or_default()
        .split(|b| *b == 0)
        .filter_map(|kv| {
            let kv = String::from_utf8_lossy(kv);
            kv.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect()
}

pub fn restart_count(p: &Pod) -> i32 {
    p.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .map(|c| c[0].restart_count)
        .unwrap_or(0)
}

pub fn cluster() -> &'static Cluster {
    Cluster::shared(options)
}
