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
