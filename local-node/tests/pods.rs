//! local-node against a real control plane (one per test binary, shared by these tests; each
//! test works in its own namespace). Needs the inference-server binary: see
//! test_cluster::inference_server_bin.

mod common;

use std::time::{Duration, Instant};

use common::*;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use serde_json::json;
use test_cluster::{apply_yaml, create_namespace, wait_for};

#[tokio::test]
async fn node_is_registered_ready_with_a_lease() {
    let cluster = cluster();
    let client = cluster.client().await;
    let node = Api::<Node>::all(client.clone())
        .get("local-node")
        .await
        .unwrap();
    let labels = node.metadata.labels.clone().unwrap();
    assert_eq!(labels["kubernetes.io/hostname"], "local-node");
    assert_eq!(labels["topology.kubernetes.io/zone"], "local-a");
    assert_eq!(labels["kubernetes.io/os"], "linux");
    let st = node.status.unwrap();
    let ready = st
        .conditions
        .unwrap()
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert_eq!(ready.status, "True");
    let cap = st.capacity.unwrap();
    assert_eq!(cap["cpu"].0, "2");
    assert_eq!(cap["pods"].0, "110");
    assert!(!cap.contains_key("nvidia.com/gpu"));
    assert_eq!(st.addresses.unwrap()[0].address, "127.0.0.1");
    let lease = Api::<Lease>::namespaced(client, "kube-node-lease")
        .get("local-node")
        .await
        .unwrap();
    assert_eq!(
        lease.spec.unwrap().holder_identity.as_deref(),
        Some("local-node")
    );
}

/// Pod → Running + Ready with a pod IP, in the EndpointSlice of its Service, answers /predict.
#[tokio::test]
async fn inference_pod_runs_is_ready_in_endpoints_and_serves() {
    let cluster = cluster();
    let client = cluster.client().await;
    let ns = create_namespace(&client, "serve").await.unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    apply_yaml(
        &client,
        "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  selector: {app: web}\n  ports: [{port: 80, targetPort: http}]\n",
        Some(&ns),
    )
    .await
    .unwrap();
    let t0 = Instant::now();
    create(&pods, &pod("web", json!({}), json!({}))).await;
    let p = wait_ready(&pods, "web").await;
    eprintln!("pod Ready after {:.1}s", t0.elapsed().as_secs_f32());

    let spec = p.spec.as_ref().unwrap();
    assert_eq!(spec.node_name.as_deref(), Some("local-node"));
    let st = p.status.as_ref().unwrap();
    let ip = st.pod_ip.clone().expect("podIP");
    assert_eq!(st.pod_ips.as_ref().unwrap()[0].ip, ip);
    assert_eq!(st.host_ip.as_deref(), Some("127.0.0.1"));
    assert!(st.start_time.is_some());
    let conds = st.conditions.as_ref().unwrap();
    for t in ["PodScheduled", "Initialized", "ContainersReady", "Ready"] {
        let c = conds
            .iter()
            .find(|c| c.type_ == t)
            .unwrap_or_else(|| panic!("condition {t}"));
        assert_eq!(c.status, "True", "{t}");
        assert!(c.last_transition_time.is_some());
    }
    let cs = &st.container_statuses.as_ref().unwrap()[0];
    assert_eq!(
        (cs.ready, cs.started, cs.restart_count),
        (true, Some(true), 0)
    );
    assert_eq!(cs.image, IMAGE);
    assert!(cs.state.as_ref().unwrap().running.is_some());

    // the process got the pod's env, with HOST/PORT set to the pod's address
    let env = environ(pid(&p));
    let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    assert_eq!(get("HOST"), Some(ip.clone()));
    assert_eq!(get("PORT").as_deref(), Some("8080"));
    assert_eq!(get("POD_NAME").as_deref(), Some("web"));
    assert_eq!(get("POD_IP"), Some(ip.clone()));
    assert_eq!(get("GREETING").as_deref(), Some("hello web"));
    assert!(
        get("KUBECONFIG").is_none(),
        "local-node's own env must not leak"
    );

    // EndpointSlice (needs a non-loopback pod IP: see local-node/README.md)
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), &ns);
    let lp = ListParams::default().labels("kubernetes.io/service-name=web");
    wait_for(
        "EndpointSlice of Service web with the pod IP, ready",
        Duration::from_secs(30),
        || async {
            let list = slices.list(&lp).await.ok()?;
            list.items
                .iter()
                .flat_map(|s| s.endpoints.iter())
                .any(|e| {
                    e.addresses.contains(&ip)
                        && e.conditions.as_ref().and_then(|c| c.ready) == Some(true)
                })
                .then_some(())
        },
    )
    .await;

    // a real prediction
    let jpeg = std::fs::read(test_cluster::workspace_root().join("../shared/images/cat.jpg"))
        .or_else(|_| std::fs::read("/work/shared/images/cat.jpg"))
        .expect("cat.jpg");
    let url = format!("http://{ip}:8080/predict");
    let body: serde_json::Value = tokio::task::spawn_blocking(move || {
        ureq::post(&url)
            .header("Content-Type", "image/jpeg")
            .send(&jpeg[..])
            .expect("POST /predict")
            .body_mut()
            .read_json()
    })
    .await
    .unwrap()
    .expect("JSON");
    assert!(
        body["predictions"]
            .as_array()
            .is_some_and(|p| !p.is_empty()),
        "{body}"
    );
}

#[tokio::test]
async fn killed_process_is_restarted() {
    let client = cluster().client().await;
    let ns = create_namespace(&client, "crash").await.unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    create(&pods, &pod("crash", json!({}), json!({}))).await;
    let p = wait_ready(&pods, "crash").await;
    let first = pid(&p);
    unsafe { libc::kill(first, libc::SIGKILL) };
    // the first restart is immediate (kubelet back-off)
    let second = wait_for("a new process", Duration::from_secs(20), || async {
        let p = pods.get("crash").await.ok()?;
        let cs = &p.status.as_ref()?.container_statuses.as_ref()?[0];
        cs.state.as_ref()?.running.as_ref()?;
        let id = cs.container_id.as_deref()?;
        (id != format!("local://{first}"))
            .then(|| id.strip_prefix("local://").unwrap().parse::<i32>().unwrap())
    })
    .await;
    // a second crash soon after: CrashLoopBackOff (back-off capped at 2 s in the tests)
    unsafe { libc::kill(second, libc::SIGKILL) };
    wait_for("CrashLoopBackOff", Duration::from_secs(20), || async {
        let p = pods.get("crash").await.ok()?;
        let cs = &p.status.as_ref()?.container_statuses.as_ref()?[0];
        (cs.state.as_ref()?.waiting.as_ref()?.reason.as_deref() == Some("CrashLoopBackOff"))
            .then_some(())
    })
    .await;
    let p = wait_for(
        "restartCount 2 and Ready again",
        Duration::from_secs(60),
        || async {
            let p = pods.get("crash").await.ok()?;
            (restart_count(&p) == 2 && is_ready(&p)).then_some(p)
        },
    )
    .await;
    let cs = &p
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
    assert_eq!(last.exit_code, 137);
    assert_eq!(
        last.container_id.as_deref(),
        Some(format!("local://{second}").as_str())
    );
}

#[tokio::test]
async fn failing_liveness_probe_restarts_the_container() {
    let client = cluster().client().await;
    let ns = create_namespace(&client, "live").await.unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    // /nope answers 404: the probe fails from the start; startup probe on /health gates it
    let probes = json!({
        "startupProbe": {"httpGet": {"path": "/health", "port": 8080}, "periodSeconds": 1, "failureThreshold": 60},
        "livenessProbe": {"httpGet": {"path": "/nope", "port": 8080}, "periodSeconds": 1, "failureThreshold": 2},
    });
    create(
        &pods,
        &pod("live", probes, json!({"terminationGracePeriodSeconds": 3})),
    )
    .await;
    let p = wait_for("a liveness restart", Duration::from_secs(90), || async {
        let p = pods.get("live").await.ok()?;
        (restart_count(&p) >= 1).then_some(p)
    })
    .await;
    let cs = &p
        .status
        .as_ref()
        .unwrap()
        .container_statuses
        .as_ref()
        .unwrap()[0];
    assert!(
        cs.last_state
            .as_ref()
            .and_then(|s| s.terminated.as_ref())
            .is_some()
    );
    // the kubelet's events
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), &ns);
    wait_for(
        "Killing event for the liveness failure",
        Duration::from_secs(10),
        || async {
            let list = events.list(&ListParams::default()).await.ok()?;
            list.items
                .iter()
                .any(|e| {
                    e.reason.as_deref() == Some("Killing")
                        && e.note.as_deref().is_some_and(|n| n.contains("liveness"))
                })
                .then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn pod_of_another_image_is_bound_and_failed() {
    let client = cluster().client().await;
    let ns = create_namespace(&client, "other").await.unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let mut p = pod("nginx", json!({}), json!({}));
    p.spec.as_mut().unwrap().containers[0].image = Some("nginx:1.27".into());
    create(&pods, &p).await;
    let p = wait_for("pod Failed", Duration::from_secs(30), || async {
        let p = pods.get("nginx").await.ok()?;
        (p.status.as_ref()?.phase.as_deref() == Some("Failed")).then_some(p)
    })
    .await;
    assert_eq!(
        p.spec.as_ref().unwrap().node_name.as_deref(),
        Some("local-node")
    );
    let st = p.status.unwrap();
    assert_eq!(st.reason.as_deref(), Some("UnsupportedImage"));
    assert!(
        st.message
            .unwrap()
            .contains("only runs the inference-server image")
    );
    // deleting it removes the object (the node confirms the deletion)
    pods.delete("nginx", &DeleteParams::default())
        .await
        .unwrap();
    wait_for("pod gone", Duration::from_secs(20), || async {
        pods.get_opt("nginx").await.ok()?.is_none().then_some(())
    })
    .await;
}

#[tokio::test]
async fn gpu_pod_stays_pending_unschedulable() {
    let client = cluster().client().await;
    let ns = create_namespace(&client, "gpu").await.unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    create(
        &pods,
        &pod(
            "gpu",
            json!({"resources": {"limits": {"nvidia.com/gpu": "1"}}}),
            json!({}),
        ),
    )
    .await;
    let p = wait_for("PodScheduled=False", Duration::from_secs(20), || async {
        let p = pods.get("gpu").await.ok()?;
        let c = p
            .status
            .as_ref()?
            .conditions
            .as_ref()?
            .iter()
            .find(|c| c.type_ == "PodScheduled")?
            .clone();
        (c.status == "False").then_some(c)
    })
    .await;
    assert_eq!(p.reason.as_deref(), Some("Unschedulable"));
    assert!(p.message.unwrap().contains("Insufficient nvidia.com/gpu"));
    assert!(
        pods.get("gpu")
            .await
            .unwrap()
            .spec
            .unwrap()
            .node_name
            .is_none()
    );
}

/// Deletion: preStop hook first (counted in the grace period), then SIGTERM (the server logs
/// it and exits 0), then the object is removed.
#[tokio::test]
async fn deletion_runs_prestop_then_sigterm_and_removes_the_object() {
    let cluster = cluster();
    let client = cluster.client().await;
    let ns = create_namespace(&client, "del").await.unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let hook =
        json!({"lifecycle": {"preStop": {"exec": {"command": ["/bin/sh", "-c", "sleep 3"]}}}});
    create(
        &pods,
        &pod("del", hook, json!({"terminationGracePeriodSeconds": 20})),
    )
    .await;
    let p = wait_ready(&pods, "del").await;
    let (pid, uid) = (pid(&p), p.metadata.uid.clone().unwrap());
    let t0 = Instant::now();
    pods.delete("del", &DeleteParams::default()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert!(
        alive(pid),
        "the process must live while preStop (sleep 3) runs"
    );
    let log = cluster
        .node_dir()
        .join(format!("pods/{ns}_del_{uid}/server/0.log"));
    assert!(
        !std::fs::read_to_string(&log)
            .unwrap()
            .contains("shutdown requested"),
        "SIGTERM before preStop ended"
    );
    wait_for("pod object removed", Duration::from_secs(20), || async {
        pods.get_opt("del").await.ok()?.is_none().then_some(())
    })
    .await;
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_secs(4),
        "preStop 3 s + server shutdown grace 1 s, took {took:?}"
    );
    assert!(
        took < Duration::from_secs(15),
        "SIGKILL deadline not needed, took {took:?}"
    );
    assert!(!alive(pid));
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(
        log.contains("shutdown requested") && log.contains("stopped"),
        "graceful stop after SIGTERM:\n{log}"
    );
}

/// Deployment → Available with EndpointSlices; a rollout replaces the pods; scaling down kills
/// processes; deleting the Deployment leaves none.
#[tokio::test]
async fn deployment_rolls_out_scales_and_cleans_up() {
    let cluster = cluster();
    let client = cluster.client().await;
    let ns = create_namespace(&client, "deploy").await.unwrap();
    let template = pod("x", json!({}), json!({"terminationGracePeriodSeconds": 5}));
    let yaml = serde_json::to_string(&json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "infer"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "infer"}},
            "template": {"metadata": {"labels": {"app": "infer"}}, "spec": template.spec},
        }
    }))
    .unwrap()
        + "\n---\napiVersion: v1\nkind: Service\nmetadata: {name: infer}\nspec:\n  selector: {app: infer}\n  ports: [{port: 80, targetPort: 8080}]\n";
    apply_yaml(&client, &yaml, Some(&ns)).await.unwrap();
    let deploys: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), &ns);
    let rolled_out = |generation_min: i64| {
        let deploys = deploys.clone();
        async move {
            let d = deploys.get("infer").await.ok()?;
            let st = d.status?;
            let want = d.spec?.replicas.unwrap_or(1);
            let available = st
                .conditions?
                .iter()
                .any(|c| c.type_ == "Available" && c.status == "True");
            (available
                && st.observed_generation? >= generation_min
                && st.updated_replicas == Some(want)
                && st.available_replicas == Some(want)
                && st.replicas == Some(want))
            .then_some(())
        }
    };
    let t0 = Instant::now();
    wait_for(
        "Deployment Available with 2 replicas",
        Duration::from_secs(120),
        || rolled_out(1),
    )
    .await;
    eprintln!(
        "Deployment Available after {:.1}s",
        t0.elapsed().as_secs_f32()
    );
    let ready_ips = || async {
        let list = slices
            .list(&ListParams::default().labels("kubernetes.io/service-name=infer"))
            .await
            .ok()?;
        let mut ips: Vec<String> = list
            .items
            .iter()
            .flat_map(|s| s.endpoints.iter())
            .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
            .flat_map(|e| e.addresses.clone())
            .collect();
        ips.sort();
        Some(ips)
    };
    let pod_ips = || async {
        let list = pods.list(&ListParams::default()).await.ok()?;
        let mut ips: Vec<String> = list
            .items
            .iter()
            .filter(|p| is_ready(p) && p.metadata.deletion_timestamp.is_none())
            .filter_map(|p| p.status.as_ref()?.pod_ip.clone())
            .collect();
        ips.sort();
        Some(ips)
    };
    wait_for(
        "EndpointSlice with both pod IPs",
        Duration::from_secs(30),
        || async {
            let (a, b) = (ready_ips().await?, pod_ips().await?);
            (a.len() == 2 && a == b).then_some(())
        },
    )
    .await;

    // rollout: a template change replaces both pods
    let old = pids(&pods).await;
    let patch = json!({"spec": {"template": {"metadata": {"annotations": {"rollout": "2"}}}}});
    deploys
        .patch("infer", &PatchParams::default(), &Patch::Merge(patch))
        .await
        .unwrap();
    let t1 = Instant::now();
    wait_for("rollout to generation 2", Duration::from_secs(120), || {
        rolled_out(2)
    })
    .await;
    wait_for("old pods gone", Duration::from_secs(60), || async {
        (pods.list(&ListParams::default()).await.ok()?.items.len() == 2
            && old.iter().all(|p| !alive(*p)))
        .then_some(())
    })
    .await;
    eprintln!("rollout done after {:.1}s", t1.elapsed().as_secs_f32());

    // scale down: one process goes away
    let before = pids(&pods).await;
    deploys
        .patch(
            "infer",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 1}})),
        )
        .await
        .unwrap();
    wait_for(
        "one of two processes stopped",
        Duration::from_secs(60),
        || async { (before.iter().filter(|p| alive(**p)).count() == 1).then_some(()) },
    )
    .await;
    wait_for(
        "EndpointSlice with one pod IP",
        Duration::from_secs(30),
        || async { (ready_ips().await?.len() == 1).then_some(()) },
    )
    .await;

    // delete: no process of this namespace is left
    let last = pids(&pods).await;
    let dp = DeleteParams {
        propagation_policy: Some(kube::api::PropagationPolicy::Foreground),
        ..Default::default()
    };
    deploys.delete("infer", &dp).await.unwrap();
    wait_for("all pods gone", Duration::from_secs(60), || async {
        pods.list(&ListParams::default())
            .await
            .ok()?
            .items
            .is_empty()
            .then_some(())
    })
    .await;
    assert!(last.iter().all(|p| !alive(*p)));
    let prefix = cluster
        .node_dir()
        .join(format!("pods/{ns}_"))
        .display()
        .to_string();
    let left: Vec<i32> = cluster
        .pod_processes()
        .into_iter()
        .filter(|p| {
            std::fs::read_link(format!("/proc/{p}/cwd"))
                .is_ok_and(|c| c.display().to_string().starts_with(&prefix))
        })
        .collect();
    assert!(left.is_empty(), "processes left: {left:?}");
}

/// env from a ConfigMap that does not exist yet: CreateContainerConfigError, retried until it
/// appears; the value reaches the process.
#[tokio::test]
async fn config_map_env_waits_for_the_config_map() {
    let client = cluster().client().await;
    let ns = create_namespace(&client, "cm").await.unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let env = json!({"envFrom": [{"configMapRef": {"name": "settings"}, "prefix": "CFG_"}]});
    let mut p = pod("cm", env, json!({}));
    let c = &mut p.spec.as_mut().unwrap().containers[0];
    c.env.as_mut().unwrap().push(
        serde_json::from_value(json!(
            {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "mode"}}}
        ))
        .unwrap(),
    );
    create(&pods, &p).await;
    wait_for(
        "CreateContainerConfigError",
        Duration::from_secs(20),
        || async {
            let p = pods.get("cm").await.ok()?;
            let w = p.status?.container_statuses?[0].state.clone()?.waiting?;
            (w.reason.as_deref() == Some("CreateContainerConfigError")).then_some(())
        },
    )
    .await;
    apply_yaml(&client, "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings}\ndata: {mode: fast, level: \"3\"}\n", Some(&ns))
        .await
        .unwrap();
    let p = wait_ready(&pods, "cm").await;
    let env = environ(pid(&p));
    assert!(env.contains(&("MODE".into(), "fast".into())), "{env:?}");
    assert!(env.contains(&("CFG_level".into(), "3".into())), "{env:?}");
}
