//! End to end with the local node (local-node/): the operator's Deployment runs as real
//! inference-server processes, the Service gets EndpointSlices, a photo is classified; then a
//! broken spec makes the new pods crash-loop while the old ones keep serving.
//!
//! Needs the control plane binaries (see test-cluster), `target/release/inference-server`
//! (or INFERENCE_SERVER_BIN) and the local-node binary (LOCAL_NODE_BIN, else test-cluster builds
//! it). Pod IPs must be routable for EndpointSlices (local-node adds a local route: root).

mod common;

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::*;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::events::v1::Event;
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use serde_json::{Value, json};
use test_cluster::{Cluster, LocalNode, Options};

/// Model load and warm-up of two servers on a small machine.
const START: Duration = Duration::from_secs(180);
const REACT: Duration = Duration::from_secs(30);

fn node_cluster() -> &'static Cluster {
    Cluster::shared(|| Options {
        local_node: Some(LocalNode::new()),
        state_root: Some(tmp_dir()),
        ..Default::default()
    })
}

/// Random ResNet50 weights (seed 42), generated once per target dir.
fn weights() -> PathBuf {
    static W: OnceLock<PathBuf> = OnceLock::new();
    W.get_or_init(|| {
        let out = tmp_dir().join("operator-e2e-weights-seed42.safetensors");
        if !out.is_file() {
            let tmp = out.with_extension(format!("tmp.{}", std::process::id()));
            let st = std::process::Command::new(test_cluster::inference_server_bin())
                .args(["generate-weights", "--seed", "42", "--out"])
                .arg(&tmp)
                .stdout(std::process::Stdio::null())
                .status()
                .expect("inference-server generate-weights");
            assert!(st.success(), "generate-weights failed");
            std::fs::rename(&tmp, &out).unwrap();
        }
        out
    })
    .clone()
}

fn cat_jpg() -> Vec<u8> {
    let p = test_cluster::workspace_root().join("inference/tests/fixtures/images/cat.jpg");
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// POST /predict with the image in the multipart field `file`: (status, JSON body).
async fn predict(addr: &str, image: Vec<u8>) -> (u16, Value) {
    let url = format!("http://{addr}/predict");
    tokio::task::spawn_blocking(move || {
        let boundary = "----operator-e2e-boundary-7d1f";
        let mut body = format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"cat.jpg\"\r\n\
             Content-Type: image/jpeg\r\n\r\n"
        )
        .into_bytes();
        body.extend_from_slice(&image);
        body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        let mut resp = http_agent(Duration::from_secs(60))
            .post(&url)
            .header(
                "Content-Type",
                &format!("multipart/form-data; boundary={boundary}"),
            )
            .send(&body[..])
            .unwrap_or_else(|e| panic!("POST {url}: {e}"));
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    })
    .await
    .unwrap()
}

fn is_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// `ip:port` of the ready endpoints of the Service's EndpointSlices, sorted.
async fn ready_endpoints(slices: &Api<EndpointSlice>, service: &str) -> Option<Vec<String>> {
    let list = slices
        .list(&ListParams::default().labels(&format!("kubernetes.io/service-name={service}")))
        .await
        .ok()?;
    let mut out = Vec::new();
    for s in &list.items {
        let port = s
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some("http"))?
            .port?;
        for e in &s.endpoints {
            if e.conditions.as_ref().and_then(|c| c.ready) == Some(true) {
                out.extend(e.addresses.iter().map(|a| format!("{a}:{port}")));
            }
        }
    }
    out.sort();
    Some(out)
}

fn spec(path: &str) -> Value {
    json!({
        "model": {"name": "resnet50", "version": "1", "path": path},
        "replicas": 2,
    })
}

#[tokio::test]
async fn serves_predictions_then_reports_a_crash_loop_while_old_pods_serve() {
    let cluster = node_cluster();
    let weights = weights();
    let mut env = Env::new(cluster, "e2e").await;
    let _op = env.start_operator("op");
    let name = "resnet50";
    let t0 = Instant::now();
    env.apply_isvc(name, spec(&weights.display().to_string()))
        .await;

    // Ready through the local node: 2 server processes loaded the weights.
    let isvc = env
        .wait_isvc(name, "Ready=True with 2 ready replicas", START, |i| {
            observed_current(i)
                && cond_of(i, "Ready").0 == "True"
                && i.status.as_ref().is_some_and(|s| s.ready_replicas == 2)
        })
        .await;
    eprintln!("Ready after {:.1}s", t0.elapsed().as_secs_f32());
    let st = isvc.status.clone().unwrap();
    assert_eq!(
        (
            st.replicas,
            st.ready_replicas,
            st.updated_replicas,
            st.available_replicas
        ),
        (2, 2, 2, 2),
        "{}",
        status_json(&isvc)
    );
    assert_eq!(cond_of(&isvc, "Ready").1, "Serving");
    assert_eq!(
        cond_of(&isvc, "Available"),
        ("True".into(), "ReplicasAvailable".into())
    );
    assert_eq!(
        cond_of(&isvc, "Progressing"),
        ("False".into(), "RolloutComplete".into())
    );
    assert_eq!(
        cond_of(&isvc, "Degraded"),
        ("False".into(), "AsExpected".into())
    );
    let msg = &cond(&isvc, "Ready").unwrap().message;
    assert!(
        msg.contains("2/2 replicas ready")
            && msg.contains("serving model resnet50 version 1")
            && msg.contains(st.url.as_deref().unwrap()),
        "{msg}"
    );
    let pods: Api<Pod> = env.api();
    let lp = ListParams::default().labels(&format!(
        "serving.inference-server.dev/inferenceservice={name}"
    ));
    let old_pods = pods.list(&lp).await.unwrap().items;
    assert_eq!(old_pods.len(), 2);
    for p in &old_pods {
        assert!(is_ready(p), "pod {} ready", p.name_any());
        assert_eq!(
            p.spec.as_ref().unwrap().node_name.as_deref(),
            cluster.node_name()
        );
        assert_eq!(p.status.as_ref().unwrap().phase.as_deref(), Some("Running"));
    }
    let mut old_ips: Vec<String> = old_pods
        .iter()
        .map(|p| {
            format!(
                "{}:8080",
                p.status.as_ref().unwrap().pod_ip.clone().unwrap()
            )
        })
        .collect();
    old_ips.sort();

    // The Service's EndpointSlices list both pods; a photo through one of them.
    let slices: Api<EndpointSlice> = env.api();
    let endpoints = env
        .wait("EndpointSlices with both pods ready", REACT, || async {
            ready_endpoints(&slices, name)
                .await
                .filter(|e| *e == old_ips)
        })
        .await;
    let (code, body) = predict(&endpoints[0], cat_jpg()).await;
    assert_eq!(code, 200, "{body}");
    let preds = body["predictions"].as_array().expect("predictions");
    assert_eq!(preds.len(), 5, "{body}");
    assert!(
        preds
            .iter()
            .all(|p| p["class"].is_string() && p["confidence"].is_number()),
        "{body}"
    );
    assert_eq!(body["model_version"], "1", "{body}");

    // Break it: weights that do not exist. The new pod's server exits 1 and crash-loops; the
    // rollout is stuck (maxUnavailable 0), the old pods keep serving: Degraded says so, and Ready
    // stays True (nobody alerting on Ready is paged for a bad rollout that serves).
    let t1 = Instant::now();
    env.apply_isvc(name, spec("/nonexistent/resnet50.safetensors"))
        .await;
    let isvc = env
        .wait_isvc(
            name,
            "Degraded=True because of the crash loop, Ready=True",
            Duration::from_secs(120),
            |i| {
                observed_current(i)
                    && i.metadata.generation == Some(2)
                    && cond_of(i, "Degraded") == ("True".into(), "CrashLoopBackOff".into())
            },
        )
        .await;
    assert_eq!(
        cond_of(&isvc, "Ready"),
        ("True".into(), "Serving".into()),
        "{}",
        status_json(&isvc)
    );
    assert!(
        cond(&isvc, "Ready")
            .unwrap()
            .message
            .contains("degraded: CrashLoopBackOff"),
        "{}",
        status_json(&isvc)
    );
    eprintln!(
        "CrashLoopBackOff reported {:.1}s after the update",
        t1.elapsed().as_secs_f32()
    );
    let degraded = cond(&isvc, "Degraded").unwrap();
    assert_eq!(
        (degraded.status.as_str(), degraded.reason.as_str()),
        ("True", "CrashLoopBackOff")
    );
    let all = pods.list(&lp).await.unwrap().items;
    let new_pod = all
        .iter()
        .find(|p| !old_pods.iter().any(|o| o.metadata.uid == p.metadata.uid))
        .expect("a new pod");
    assert!(
        degraded.message.contains(&new_pod.name_any())
            && degraded.message.contains("keeps crashing"),
        "{}",
        degraded.message
    );
    let cs = &new_pod
        .status
        .as_ref()
        .unwrap()
        .container_statuses
        .as_ref()
        .unwrap()[0];
    let last = cs
        .last_state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .expect("lastState.terminated");
    assert_eq!(last.exit_code, 1, "the server exits 1 without weights");
    assert!(cs.restart_count >= 1);
    let st = isvc.status.clone().unwrap();
    assert_eq!(st.available_replicas, 2, "{}", status_json(&isvc));
    assert_eq!(st.updated_replicas, 1, "{}", status_json(&isvc));
    assert_eq!(
        cond_of(&isvc, "Available"),
        ("True".into(), "ReplicasAvailable".into())
    );
    // The old pods are still there, ready, and serve.
    for o in &old_pods {
        let p = pods.get(&o.name_any()).await.unwrap();
        assert_eq!(p.metadata.uid, o.metadata.uid);
        assert!(
            is_ready(&p) && p.metadata.deletion_timestamp.is_none(),
            "old pod {}",
            o.name_any()
        );
    }
    let d: Deployment = env.api().get(name).await.unwrap();
    let dst = d.status.clone().unwrap();
    assert_eq!(
        (dst.available_replicas, dst.updated_replicas),
        (Some(2), Some(1))
    );
    assert_eq!(ready_endpoints(&slices, name).await.unwrap(), old_ips);
    for ep in &old_ips {
        let (code, body) = predict(ep, cat_jpg()).await;
        assert_eq!(code, 200, "old pod {ep}: {body}");
    }

    // Fixed again: the Deployment goes back to the old ReplicaSet; Ready, and a Recovered event.
    env.apply_isvc(name, spec(&weights.display().to_string()))
        .await;
    let isvc = env
        .wait_isvc(name, "Ready=True and no longer Degraded", START, |i| {
            observed_current(i)
                && i.metadata.generation == Some(3)
                && cond_of(i, "Ready").0 == "True"
                && cond_of(i, "Degraded").0 == "False"
                && i.status
                    .as_ref()
                    .is_some_and(|s| s.replicas == 2 && s.ready_replicas == 2)
        })
        .await;
    assert_eq!(
        cond_of(&isvc, "Degraded"),
        ("False".into(), "AsExpected".into())
    );
    let events: Api<Event> = env.api();
    env.wait("a Recovered event", REACT, || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items
            .iter()
            .any(|e| {
                e.reason.as_deref() == Some("Recovered")
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)
            })
            .then_some(())
    })
    .await;
    env.finish().await;
}
