//! The operator image that `make images` builds from `Dockerfile.operator`: it runs as user
//! 65532 with a read-only root filesystem and no capabilities, a kubeconfig mounted read-only,
//! and reconciles a minimal InferenceService on the local control plane.
//!
//! `make test` builds the image first (`hack/images.sh`, cached); run alone, set OPERATOR_IMAGE
//! or run `make images`.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use test_cluster::podman::{RESTRICTED, Removed, podman, text};

fn image() -> String {
    std::env::var("OPERATOR_IMAGE").unwrap_or_else(|_| {
        format!(
            "ghcr.io/inference-server/inference-operator:{}",
            env!("CARGO_PKG_VERSION")
        )
    })
}

#[tokio::test]
async fn the_operator_image_reconciles_as_non_root() {
    let image = image();
    assert!(
        podman(&["image", "exists", &image]).status.success(),
        "image {image} is not in podman's store: run `make images` (or set OPERATOR_IMAGE)"
    );
    let env = Env::new(cluster(), "image").await;

    // The cluster's kubeconfig carries its certificates inline; a copy the container's user
    // may read (the original is the admin's, mode 0600).
    let kubeconfig = tmp_dir().join(format!("image-test-kubeconfig-{}", std::process::id()));
    std::fs::copy(env.cluster.kubeconfig(), &kubeconfig).unwrap();
    std::fs::set_permissions(
        &kubeconfig,
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    let name = format!("operator-image-test-{}", std::process::id());
    let listen = format!("127.0.0.1:{}", free_port());
    let mount = format!(
        "{}:/etc/inference-operator/kubeconfig:ro",
        kubeconfig.display()
    );
    let _ = podman(&["rm", "-f", &name]);
    // Host network: the control plane listens on loopback. Nothing is published.
    let mut args = vec!["run", "-d", "--name", &name, "--network", "host"];
    args.extend(RESTRICTED);
    args.extend([
        "-v",
        &mount,
        "-e",
        "KUBECONFIG=/etc/inference-operator/kubeconfig",
        &image,
        "--namespace",
        &env.ns,
        "--listen",
        &listen,
        "--log-format",
        "text",
        "--leader-election",
        "false",
        "--default-image",
        DEFAULT_IMAGE,
    ]);
    let out = podman(&args);
    assert!(out.status.success(), "podman run: {}", text(&out.stderr));
    let container = Removed(name.clone());
    let logs = || {
        let o = podman(&["logs", &name]);
        format!("{}\n{}", text(&o.stdout), text(&o.stderr))
    };

    // Runs as 65532, not root: read from the kernel, not from the image's config.
    let pid = text(&podman(&["inspect", "--format", "{{.State.Pid}}", &name]).stdout);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("the operator is not running ({e}):\n{}", logs()));
    let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert_eq!(uid.split_whitespace().nth(1), Some("65532"), "{uid}");

    env.apply_isvc("resnet", json!({"model": {"name": "resnet50"}}))
        .await;
    env.wait_reconciled("resnet", Duration::from_secs(60)).await;

    let health = ureq::get(format!("http://{listen}/healthz")).call();
    assert!(health.is_ok_and(|r| r.status() == 200), "{}", logs());
    let log = logs();
    assert!(!log.to_lowercase().contains("forbidden"), "{log}");
    assert!(
        podman(&["image", "inspect", "--format", "{{.Config.User}}", &image])
            .stdout
            .starts_with(b"65532"),
    );

    // SIGTERM: a clean exit.
    let t0 = Instant::now();
    assert!(podman(&["stop", "-t", "20", &name]).status.success());
    let code = text(&podman(&["inspect", "--format", "{{.State.ExitCode}}", &name]).stdout);
    assert_eq!(code, "0", "after {:?}:\n{}", t0.elapsed(), logs());
    drop(container);
    let _ = std::fs::remove_file(&kubeconfig);
    env.finish().await;
}

/// `ARG VERSION=` in Dockerfile.operator is the workspace version, and so is the tag of the
/// default inference image the operator puts in pods: one number for both images.
#[test]
fn the_default_inference_image_has_the_images_version() {
    let dockerfile =
        std::fs::read_to_string(test_cluster::workspace_root().join("Dockerfile.operator"))
            .unwrap();
    let version = dockerfile
        .lines()
        .find_map(|l| l.strip_prefix("ARG VERSION="))
        .expect("ARG VERSION= in Dockerfile.operator");
    assert_eq!(version, env!("CARGO_PKG_VERSION"));
    assert_eq!(
        inference_operator::builders::default_image(),
        format!("ghcr.io/inference-server/inference-server:{version}")
    );
}
