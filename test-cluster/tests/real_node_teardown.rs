//! `hack/cluster.sh up` / `down` with a real node three times in a row, each leaving nothing;
//! then `down` removes everything a real node made (hack/real-node.sh), also after
//! `kill -9` of every component: pod processes and containerd's shims, the network namespace
//! and veth, host routes and FORWARD rules, mounts, the pods' cgroups and the state dir; and
//! the VM-wide sysctls the kubelet changed are back to what they were. Its own test binary: a
//! real node is one per machine. Needs root and containerd (make deps); under CI it must run.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;
use test_cluster::{Cluster, Options, RealNode, create_namespace, wait_for};

const SYSCTLS: [&str; 3] = [
    "vm/overcommit_memory",
    "kernel/panic",
    "kernel/panic_on_oops",
];

fn sysctls() -> Vec<String> {
    SYSCTLS
        .iter()
        .map(|k| std::fs::read_to_string(format!("/proc/sys/{k}")).unwrap())
        .collect()
}

fn sh(script: &str) -> String {
    let out = Command::new("sh").args(["-c", script]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn runnable() -> bool {
    // SAFETY: geteuid has no preconditions.
    let why = if unsafe { libc::geteuid() } != 0 {
        "not root"
    } else if sh("command -v containerd").is_empty() {
        "containerd is not installed (make deps)"
    } else {
        return true;
    };
    assert!(
        std::env::var_os("CI").is_none(),
        "a real node cannot run: {why}"
    );
    eprintln!("SKIPPED: a real node cannot run: {why}");
    false
}

/// What a real node leaves on this machine that names `state` or is fixed by hack/real-node.sh.
fn leftovers(state: &Path) -> Vec<String> {
    let s = state.display().to_string();
    let mut left = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmd) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        let pause = cmd.starts_with("/pause");
        if cmd.contains(&s) || pause {
            left.push(format!(
                "process {}: {cmd}",
                entry.file_name().to_string_lossy()
            ));
        }
    }
    for (what, present) in [
        (
            "network namespace",
            Path::new("/run/netns/inference-node").exists(),
        ),
        ("veth", Path::new("/sys/class/net/inode-host").exists()),
        (
            "pod cgroups",
            Path::new("/sys/fs/cgroup/memory/inference-node").exists(),
        ),
        ("state dir", state.exists()),
        (
            "owner mark",
            Path::new("/run/inference-node.owner").exists(),
        ),
    ] {
        if present {
            left.push(what.to_string());
        }
    }
    let routes = sh("ip route show | grep -E '^198\\.1[89]\\.' || true");
    if !routes.trim().is_empty() {
        left.push(format!("routes: {routes}"));
    }
    let rules = sh("iptables -S FORWARD | grep inference-real-node || true");
    if !rules.trim().is_empty() {
        left.push(format!("FORWARD rules: {rules}"));
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    for m in mounts.lines().filter(|l| l.contains(&s)) {
        left.push(format!("mount: {m}"));
    }
    left
}

#[tokio::test]
async fn up_and_down_in_a_row_then_down_after_kill_9_of_everything_leaves_nothing() {
    if !runnable() {
        return;
    }
    let before = sysctls();
    // Start-up and teardown in a row, each start checked to the node's Ready (the races the
    // retired local node had were in start-up), each teardown to nothing left.
    for round in 1..=3 {
        let t0 = std::time::Instant::now();
        let c = Cluster::start_with(Options {
            real_node: Some(RealNode {
                no_addons: true,
                ..Default::default()
            }),
            ..Default::default()
        })
        .unwrap_or_else(|e| panic!("round {round}: {e:#}"));
        let up = t0.elapsed();
        let state = c.state_dir().to_path_buf();
        c.stop()
            .unwrap_or_else(|e| panic!("round {round} down: {e:#}"));
        let left = leftovers(&state);
        assert!(left.is_empty(), "round {round} left:\n{}", left.join("\n"));
        eprintln!(
            "round {round}: up (node Ready) {:.1}s, down {:.1}s",
            up.as_secs_f32(),
            (t0.elapsed() - up).as_secs_f32()
        );
    }
    assert_eq!(sysctls(), before, "sysctls {SYSCTLS:?} not restored");

    let cluster = Cluster::start_with(Options {
        real_node: Some(RealNode::default()),
        ..Default::default()
    })
    .expect("a control plane with a real node");
    let state = cluster.state_dir().to_path_buf();
    let client = cluster.client().await;
    // The kubelet changed the VM-wide sysctls (README says which).
    assert_ne!(sysctls(), before, "kubelet changed none of {SYSCTLS:?}");

    // Two pods of the pause image (imported at node start) behind a Service.
    let ns = create_namespace(&client, "down").await.unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    for name in ["a", "b"] {
        let pod = json!({
            "metadata": {"name": name, "labels": {"app": "pause"}},
            "spec": {
                "containers": [{"name": "pause", "image": "registry.k8s.io/pause:3.10.1",
                                "imagePullPolicy": "Never"}],
                "terminationGracePeriodSeconds": 30,
            }
        });
        pods.create(
            &PostParams::default(),
            &serde_json::from_value(pod).unwrap(),
        )
        .await
        .unwrap();
    }
    let svc = json!({"metadata": {"name": "pause"},
                     "spec": {"selector": {"app": "pause"}, "ports": [{"port": 80}]}});
    Api::<Service>::namespaced(client.clone(), &ns)
        .create(
            &PostParams::default(),
            &serde_json::from_value(svc).unwrap(),
        )
        .await
        .unwrap();
    wait_for("both pods Running", Duration::from_secs(90), || async {
        let list = pods.list(&ListParams::default()).await.ok()?;
        list.items
            .iter()
            .all(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
            .then_some(())
    })
    .await;
    assert!(
        !sh("pgrep -x pause || true").trim().is_empty(),
        "no pause process runs"
    );

    // A second real node is refused, naming the one that runs (the names are fixed).
    let second = Cluster::start_with(Options {
        real_node: Some(RealNode::default()),
        ..Default::default()
    });
    let err = format!("{:#}", second.err().expect("a second real node started"));
    assert!(
        err.contains("one per machine") && err.contains(&*state.to_string_lossy()),
        "{err}"
    );
    assert!(Path::new("/run/netns/inference-node").exists());

    // kill -9 of the whole set: control plane, containerd, kubelet, kube-proxy, scheduler.
    for f in ["run", "real-node/run"] {
        for entry in std::fs::read_dir(state.join(f)).unwrap().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(Ok(pid)) = name.strip_suffix(".pid").map(|_| {
                std::fs::read_to_string(entry.path())
                    .unwrap()
                    .trim()
                    .parse::<i32>()
            }) {
                // SAFETY: sending a signal has no memory-safety preconditions.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !leftovers(&state).is_empty(),
        "kill -9 alone should leave the node's pieces behind"
    );

    cluster.stop().expect("cluster.sh down");
    let left = leftovers(&state);
    assert!(left.is_empty(), "left behind:\n{}", left.join("\n"));
    assert_eq!(sysctls(), before, "sysctls {SYSCTLS:?} not restored");
}
