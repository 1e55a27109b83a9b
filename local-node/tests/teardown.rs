//! No orphan processes: local-node killed with SIGKILL takes its pods along (PR_SET_PDEATHSIG);
//! a restarted local-node restarts the pods bound to it; tearing the cluster down stops
//! everything, including the node's network namespace and veth. Uses its own cluster (not
//! shared), so it can kill and restart the node.

mod common;

use std::time::Duration;

use common::*;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use serde_json::json;
use test_cluster::{Cluster, create_namespace, wait_for};

#[tokio::test]
async fn node_restart_and_teardown_leave_no_processes() {
    let cluster = Cluster::start_with(options()).expect("cluster");
    let client = cluster.client().await;
    let ns = create_namespace(&client, "down").await.unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    for name in ["a", "b"] {
        create(&pods, &pod(name, json!({}), json!({}))).await;
    }
    let a = wait_ready(&pods, "a").await;
    let b = wait_ready(&pods, "b").await;
    let pids = [pid(&a), pid(&b)];
    assert_eq!(cluster.pod_processes().len(), 2);
    // the pods run in the node's own network namespace
    let netns = netns_name(&cluster);
    assert!(netns_exists(&netns), "{netns}");
    for p in pids {
        assert_eq!(
            net_ns_of(&format!("/proc/{p}/ns/net")),
            net_ns_of(&format!("/run/netns/{netns}"))
        );
        assert_ne!(
            net_ns_of(&format!("/proc/{p}/ns/net")),
            net_ns_of("/proc/self/ns/net")
        );
    }

    // SIGKILL local-node: its children die with it
    let node = cluster.node_pid().expect("local-node pid");
    unsafe { libc::kill(node, libc::SIGKILL) };
    wait_for(
        "pod processes gone after local-node was killed",
        Duration::from_secs(5),
        || async { pids.iter().all(|p| !alive(*p)).then_some(()) },
    )
    .await;

    // a new local-node picks the pods up again (same IPs, restartCount + 1)
    cluster.cluster_sh("node-up").expect("node-up");
    for (name, old) in [("a", &a), ("b", &b)] {
        let p = wait_for(
            &format!("pod {name} running again"),
            Duration::from_secs(90),
            || async {
                let p = pods.get(name).await.ok()?;
                (is_ready(&p) && restart_count(&p) == 1).then_some(p)
            },
        )
        .await;
        assert_eq!(
            p.status.as_ref().unwrap().pod_ip,
            old.status.as_ref().unwrap().pod_ip
        );
    }
    let running = cluster.pod_processes();
    assert_eq!(running.len(), 2, "{running:?}");
    let node = cluster.node_pid().unwrap();
    // the restarted node made the same namespace again (same state dir and node name)
    assert_eq!(netns_name(&cluster), netns);
    assert!(netns_exists(&netns), "{netns}");

    // teardown (what Drop does, also on panic): node, pods and control plane are gone
    cluster.stop().expect("teardown");
    assert!(
        running.iter().all(|p| !alive(*p)),
        "pod processes left behind"
    );
    assert!(!alive(node), "local-node left behind");
    assert!(
        !netns_exists(&netns),
        "network namespace or veth {netns} left behind"
    );
    let list = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    let list = String::from_utf8_lossy(&list.stdout);
    assert!(
        !list.contains(&netns),
        "`ip netns list` still shows {netns}:\n{list}"
    );
}

/// The name of the node's network namespace (also the host side of its veth).
fn netns_name(cluster: &Cluster) -> String {
    std::fs::read_to_string(cluster.node_dir().join("netns"))
        .expect("<node dir>/netns")
        .trim()
        .to_string()
}

fn netns_exists(name: &str) -> bool {
    std::path::Path::new("/run/netns").join(name).exists()
        || std::path::Path::new("/sys/class/net").join(name).exists()
}

/// (device, inode) of a network namespace file.
fn net_ns_of(path: &str) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    (m.dev(), m.ino())
}

/// A `cluster.sh up` that fails half-way (here the API server refuses a flag, after etcd has
/// started) stops what it started instead of leaving it for the next attempt to trip over; the
/// same up then works, and `down` removes everything.
#[test]
fn a_failed_up_stops_what_it_started() {
    use std::net::TcpListener;
    use std::process::Command;

    let root = test_cluster::workspace_root();
    let bin = Command::new(root.join("hack/build-control-plane.sh"))
        .arg("--print-bin-dir")
        .output()
        .expect("build-control-plane.sh --print-bin-dir");
    let bin = String::from_utf8(bin.stdout).unwrap().trim().to_string();
    let state = std::env::temp_dir().join(format!("failed-up-{}", std::process::id()));
    let port = || {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let etcd_port = port();
    let env = [
        ("CLUSTER_STATE_DIR", state.display().to_string()),
        ("CLUSTER_BIN_DIR", bin),
        ("CLUSTER_ETCD_PORT", etcd_port.to_string()),
        ("CLUSTER_ETCD_PEER_PORT", port().to_string()),
        ("CLUSTER_APISERVER_PORT", port().to_string()),
        ("CLUSTER_KCM_PORT", port().to_string()),
        ("CLUSTER_START_TIMEOUT", "60".to_string()),
    ];
    let cluster_sh = |cmd: &str, extra: &[(&str, &str)]| {
        Command::new(root.join("hack/cluster.sh"))
            .arg(cmd)
            .env_remove("LOCAL_NODE_BIN")
            .env_remove("INFERENCE_SERVER_BIN")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .envs(extra.iter().copied())
            .output()
            .expect("run hack/cluster.sh")
    };
    let failed = cluster_sh("up", &[("CLUSTER_APISERVER_EXTRA_ARGS", "--no-such-flag")]);
    let err = String::from_utf8_lossy(&failed.stderr).into_owned();
    assert!(
        !failed.status.success(),
        "up with a bad flag succeeded: {err}"
    );
    assert!(err.contains("kube-apiserver exited"), "{err}");
    assert!(
        err.contains("stopping what this attempt started (etcd kube-apiserver)"),
        "{err}"
    );
    let etcd: i32 = std::fs::read_to_string(state.join("run/etcd.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(!alive(etcd), "etcd (pid {etcd}) outlived the failed up");
    assert!(
        TcpListener::bind(("127.0.0.1", etcd_port)).is_ok(),
        "etcd's port {etcd_port} is still taken"
    );
    // The next attempt starts cleanly.
    let ok = cluster_sh("up", &[]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let down = cluster_sh("down", &[]);
    assert!(
        down.status.success(),
        "{}",
        String::from_utf8_lossy(&down.stderr)
    );
    assert!(!state.exists(), "down left {}", state.display());
}
