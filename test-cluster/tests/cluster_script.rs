//! hack/cluster.sh's start-up on its own (a control plane without a node): a port already taken
//! is refused before anything starts, naming the port and its user; an `up` that fails half-way
//! stops what it started instead of leaving it for the next attempt to trip over; the same `up`
//! then works, and `down` removes everything.

use std::net::TcpListener;
use std::process::{Command, Output};

fn alive(pid: i32) -> bool {
    // SAFETY: kill with signal 0 only checks that the process exists.
    unsafe { libc::kill(pid, 0) == 0 }
}

fn port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn a_taken_port_or_a_failed_up_leaves_nothing_running() {
    let root = test_cluster::workspace_root();
    let bin = Command::new(root.join("hack/build-control-plane.sh"))
        .arg("--print-bin-dir")
        .output()
        .expect("build-control-plane.sh --print-bin-dir");
    let bin = String::from_utf8(bin.stdout).unwrap().trim().to_string();
    let state = std::env::temp_dir().join(format!("failed-up-{}", std::process::id()));
    let (etcd_port, api_port) = (port(), port());
    let env = [
        ("CLUSTER_STATE_DIR", state.display().to_string()),
        ("CLUSTER_BIN_DIR", bin),
        ("CLUSTER_ETCD_PORT", etcd_port.to_string()),
        ("CLUSTER_ETCD_PEER_PORT", port().to_string()),
        ("CLUSTER_APISERVER_PORT", api_port.to_string()),
        ("CLUSTER_KCM_PORT", port().to_string()),
        ("CLUSTER_START_TIMEOUT", "60".to_string()),
    ];
    let cluster_sh = |cmd: &str, extra: &[(&str, &str)]| -> Output {
        Command::new(root.join("hack/cluster.sh"))
            .arg(cmd)
            .env_remove("CLUSTER_NODE")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .envs(extra.iter().copied())
            .output()
            .expect("run hack/cluster.sh")
    };
    let stderr = |o: &Output| String::from_utf8_lossy(&o.stderr).into_owned();

    // Someone else listens on the API server's port: refused at once, nothing started.
    let squatter = TcpListener::bind(("127.0.0.1", api_port)).unwrap();
    let taken = cluster_sh("up", &[]);
    let err = stderr(&taken);
    assert!(
        !taken.status.success(),
        "up with a taken port succeeded: {err}"
    );
    assert!(
        err.contains(&format!(
            "port 127.0.0.1:{api_port} needed by kube-apiserver is already in use"
        )),
        "{err}"
    );
    assert!(!err.contains("started etcd"), "{err}");
    drop(squatter);

    // The API server refuses a flag after etcd has started: etcd is stopped again.
    let failed = cluster_sh("up", &[("CLUSTER_APISERVER_EXTRA_ARGS", "--no-such-flag")]);
    let err = stderr(&failed);
    assert!(
        !failed.status.success(),
        "up with a bad flag succeeded: {err}"
    );
    assert!(err.contains("kube-apiserver exited"), "{err}");
    assert!(
        err.contains("unknown flag: --no-such-flag"),
        "its log's last lines: {err}"
    );
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

    // The next attempt starts cleanly, and down removes everything.
    let ok = cluster_sh("up", &[]);
    assert!(ok.status.success(), "{}", stderr(&ok));
    let down = cluster_sh("down", &[]);
    assert!(down.status.success(), "{}", stderr(&down));
    assert!(!state.exists(), "down left {}", state.display());
}
