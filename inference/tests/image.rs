//! The inference image that `make images` builds from `Dockerfile.inference`, run with podman
//! under the restrictions the operator's pod spec sets: read-only root filesystem, user 65532,
//! every capability dropped, no privilege escalation; weights mounted read-only; published on
//! loopback only, from a podman network inside 198.18.0.0/15.
//!
//! `make test` builds the image first (`hack/images.sh`, cached); run alone, set INFERENCE_IMAGE
//! or run `make images`. The Dockerfile checks at the end need no image.

mod common;
#[path = "../../test-cluster/src/podman.rs"]
mod podman;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use podman::{RESTRICTED, Removed, containers_conf, podman, text};

const NETWORK: &str = "inference-image-test";
const SUBNET: &str = "198.18.254.0/24";

fn image() -> String {
    std::env::var("INFERENCE_IMAGE").unwrap_or_else(|_| {
        format!(
            "ghcr.io/inference-server/inference-server:{}",
            env!("CARGO_PKG_VERSION")
        )
    })
}

/// The image exists (built by `make images`) and the test network is there.
fn setup() -> String {
    let image = image();
    let out = podman(&["image", "exists", &image]);
    assert!(
        out.status.success(),
        "image {image} is not in podman's store: run `make images` (or set INFERENCE_IMAGE)"
    );
    if !podman(&["network", "exists", NETWORK]).status.success() {
        // Racing test threads may both create it: the loser's error is fine if it now exists.
        let out = podman(&["network", "create", "--subnet", SUBNET, NETWORK]);
        assert!(
            out.status.success() || podman(&["network", "exists", NETWORK]).status.success(),
            "podman network create: {}",
            text(&out.stderr)
        );
    }
    image
}

/// A detached container, removed (with its logs) on drop, also when the test fails.
struct Container {
    name: String,
    port: u16,
    _removed: Removed,
}

impl Container {
    /// `podman run -d` with the pod's restrictions; `weights` (if any) mounted read-only.
    fn run(image: &str, tag: &str, weights: Option<&Path>, extra: &[&str]) -> Container {
        let name = format!("inference-image-test-{tag}-{}", std::process::id());
        let port = free_port();
        let publish = format!("127.0.0.1:{port}:8080");
        let mount = weights.map(|w| format!("{}:/models/resnet50.safetensors:ro", w.display()));
        let mut args = vec![
            "run",
            "-d",
            "--name",
            &name,
            "--network",
            NETWORK,
            "-p",
            &publish,
            // No systemd timer here: `podman healthcheck run` runs the check on demand.
            "--health-interval",
            "disable",
            "-e",
            "INFERENCE_THREADS=2",
            "-e",
            "LOG_FORMAT=text",
        ];
        args.extend(RESTRICTED);
        if let Some(m) = &mount {
            args.extend(["-v", m.as_str()]);
        }
        args.extend(extra);
        args.push(image);
        let _ = podman(&["rm", "-f", &name]);
        let out = podman(&args);
        assert!(out.status.success(), "podman run: {}", text(&out.stderr));
        Container {
            _removed: Removed(name.clone()),
            name,
            port,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn logs(&self) -> String {
        let out = podman(&["logs", &self.name]);
        format!("{}{}", text(&out.stdout), text(&out.stderr))
    }

    fn inspect(&self, format: &str) -> String {
        text(&podman(&["inspect", "--format", format, &self.name]).stdout)
    }

    /// Polls /ready through the published port; the time from `since` to the first 200.
    fn wait_ready(&self, since: Instant, timeout: Duration) -> Duration {
        let agent = agent();
        loop {
            if let Ok(r) = agent.get(self.url("/ready")).call()
                && r.status() == 200
            {
                return since.elapsed();
            }
            let running = self.inspect("{{.State.Running}}");
            assert!(
                running == "true",
                "the container stopped before /ready turned 200:\n{}",
                self.logs()
            );
            assert!(
                since.elapsed() < timeout,
                "not ready after {timeout:?}:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into()
}

fn predict(url: &str, photo: &str) -> serde_json::Value {
    let (ct, body) = multipart("file", photo, &common::image(photo));
    let mut r = agent()
        .post(url)
        .header("Content-Type", &ct)
        .send(&body[..])
        .unwrap();
    assert_eq!(r.status(), 200);
    serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap()
}

/// Serves the host binary's exact top-5, passes its HEALTHCHECK, drains and exits 0 on SIGTERM.
#[test]
fn the_image_serves_like_the_host_binary_under_the_pods_restrictions() {
    let image = setup();
    let started = Instant::now();
    let c = Container::run(&image, "serve", Some(weights()), &["--stop-timeout", "30"]);
    let ready = c.wait_ready(started, Duration::from_secs(60));
    eprintln!("container start to /ready (weights mounted): {ready:?}");

    // Exactly what the host binary answers, for several real photos.
    let host = Server::start(&[]);
    for photo in [
        "cat.jpg",
        "coffee.jpg",
        "astronaut-2048.jpg",
        "logo-rgba.png",
    ] {
        let ours = predict(&c.url("/predict"), photo);
        let theirs = predict(&host.url("/predict"), photo);
        assert_eq!(ours["predictions"], theirs["predictions"], "{photo}");
        assert_eq!(ours["predictions"].as_array().unwrap().len(), 5);
    }

    // As configured: the user, the health check, the entrypoint, no shell.
    assert_eq!(c.inspect("{{.Config.User}}"), "65532:65532");
    let out = podman(&["healthcheck", "run", &c.name]);
    assert!(
        out.status.success(),
        "HEALTHCHECK failed: {} {}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let out = podman(&[
        "exec",
        &c.name,
        "/usr/local/bin/inference-server",
        "probe",
        "--path",
        "/nope",
    ]);
    assert_eq!(out.status.code(), Some(1), "the probe must fail on a 404");
    assert!(
        text(&out.stderr).contains("HTTP 404"),
        "{}",
        text(&out.stderr)
    );
    let out = podman(&["exec", &c.name, "/bin/sh", "-c", "true"]);
    assert!(!out.status.success(), "the runtime image has a shell");

    // SIGTERM: /ready goes 503, requests drain, exit 0 well within the grace period.
    let t0 = Instant::now();
    let out = podman(&["stop", "-t", "30", &c.name]);
    assert!(out.status.success(), "podman stop: {}", text(&out.stderr));
    let stopped = t0.elapsed();
    eprintln!("podman stop → exit: {stopped:?}");
    assert_eq!(c.inspect("{{.State.ExitCode}}"), "0", "{}", c.logs());
    assert!(
        stopped < Duration::from_secs(25),
        "SIGKILL'd after the grace period?"
    );
    let logs = c.logs();
    assert!(
        logs.contains("shutdown requested: /ready now 503") && logs.contains("stopped"),
        "{logs}"
    );
}

/// No weights: the server's one-line error and exit 1, not a crash loop of stack traces.
#[test]
fn without_weights_the_container_exits_1_with_one_line() {
    let image = setup();
    let c = Container::run(&image, "noweights", None, &[]);
    let t0 = Instant::now();
    while c.inspect("{{.State.Running}}") == "true" {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "still running: {}",
            c.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(c.inspect("{{.State.ExitCode}}"), "1");
    let err = text(&podman(&["logs", &c.name]).stderr);
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("inference-server: error:")
            && last.contains("/models/resnet50.safetensors"),
        "{err}"
    );
}

/// The image's metadata: labels with the workspace version, the port, the user, the health check.
#[test]
fn the_image_says_what_it_is() {
    let image = setup();
    let get = |f: &str| text(&podman(&["image", "inspect", "--format", f, &image]).stdout);
    assert_eq!(
        get(r#"{{ index .Labels "org.opencontainers.image.version" }}"#),
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(
        get(r#"{{ index .Labels "org.opencontainers.image.licenses" }}"#),
        "Apache-2.0"
    );
    assert_eq!(get("{{.Config.User}}"), "65532:65532");
    assert!(get("{{.Config.ExposedPorts}}").contains("8080"));
    assert!(get("{{.Config.Entrypoint}}").contains("/usr/local/bin/inference-server"));
    assert!(
        get("{{.HealthCheck}}").contains("probe"),
        "{}",
        get("{{.HealthCheck}}")
    );
    assert!(get("{{.Config.Env}}").contains("MODEL_PATH=/models/"));
}

/// What the runtime base gives the binary: a CA bundle (s3:// and other TLS clients that read the
/// system store, SSL_CERT_FILE) and the nonroot user. Read from a created, never started container.
#[test]
fn the_image_has_a_ca_bundle_and_the_nonroot_user() {
    let image = setup();
    let name = format!("inference-image-files-{}", std::process::id());
    let _removed = Removed(name.clone());
    let out = podman(&["create", "--name", &name, &image]);
    assert!(out.status.success(), "podman create: {}", text(&out.stderr));
    let dir = TempDir::new("image-files");
    let file = |path: &str| {
        let local = dir.0.join(path.rsplit('/').next().unwrap());
        let out = podman(&["cp", &format!("{name}:{path}"), local.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "podman cp {path}: {}",
            text(&out.stderr)
        );
        std::fs::read_to_string(local).unwrap()
    };
    let bundle = file("/etc/ssl/certs/ca-certificates.crt");
    let certs = bundle.matches("-----BEGIN CERTIFICATE-----").count();
    assert!(certs >= 100, "{certs} certificates in the CA bundle");
    let passwd = file("/etc/passwd");
    assert!(passwd.contains("nonroot:x:65532:65532:"), "{passwd}");
}

/// `examples/weights-baked/Dockerfile`: the server image plus weights, serving with no mount.
#[test]
fn an_image_with_baked_in_weights_serves_without_a_mount() {
    let base = setup();
    let ctx = TempDir::new("baked-weights-context");
    let w = ctx.0.join("resnet50.safetensors");
    std::fs::hard_link(weights(), &w)
        .or_else(|_| std::fs::copy(weights(), &w).map(|_| ()))
        .unwrap();
    let tag = format!(
        "localhost/inference-server-baked-test:{}",
        std::process::id()
    );
    let dockerfile =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/weights-baked/Dockerfile");
    let out = Command::new("buildah")
        .env("CONTAINERS_CONF", containers_conf())
        .args(["build", "--quiet", "--pull=never", "--format", "docker"])
        .args(["--build-arg", &format!("BASE={base}"), "-t", &tag, "-f"])
        .arg(&dockerfile)
        .arg(&ctx.0)
        .output()
        .expect("buildah cannot run: `make deps` installs it");
    assert!(out.status.success(), "buildah build: {}", text(&out.stderr));
    struct Untag(String);
    impl Drop for Untag {
        fn drop(&mut self) {
            let _ = podman(&["rmi", "-f", &self.0]);
        }
    }
    let _untag = Untag(tag.clone());
    let started = Instant::now();
    let c = Container::run(&tag, "baked", None, &[]);
    c.wait_ready(started, Duration::from_secs(60));
    let reply = predict(&c.url("/predict"), "cat.jpg");
    assert_eq!(reply["predictions"].as_array().unwrap().len(), 5);
}

// ---- The Dockerfile itself (no image needed) ----

fn repo_file(rel: &str) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    std::fs::read_to_string(root.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// `ARG NAME=value` in a Dockerfile.
fn arg_default(dockerfile: &str, name: &str) -> String {
    dockerfile
        .lines()
        .find_map(|l| l.trim().strip_prefix(&format!("ARG {name}=")))
        .unwrap_or_else(|| panic!("no `ARG {name}=` default"))
        .to_string()
}

#[test]
fn dockerfiles_carry_the_workspace_version() {
    for f in ["Dockerfile.inference", "Dockerfile.operator"] {
        assert_eq!(
            arg_default(&repo_file(f), "VERSION"),
            env!("CARGO_PKG_VERSION"),
            "{f}"
        );
    }
    for f in [
        "examples/weights-baked/Dockerfile",
        "hack/demo-image/Dockerfile",
    ] {
        assert_eq!(
            arg_default(&repo_file(f), "BASE"),
            format!(
                "ghcr.io/inference-server/inference-server:{}",
                env!("CARGO_PKG_VERSION")
            ),
            "{f}"
        );
    }
}

/// The CUDA stage builds what `make build-cuda` builds: same cargo command and features, same
/// compute capability and CUDA version by default. Neither can change without the other.
#[test]
fn the_cuda_image_builds_what_make_build_cuda_builds() {
    let dockerfile = repo_file("Dockerfile.inference");
    let makefile = repo_file("Makefile");
    let env = repo_file("tools/cuda-env.sh");
    let cargo_cmd = |text: &str| -> String {
        let i = text
            .find("build --release")
            .expect("a `cargo build --release`");
        text[i..]
            .lines()
            .next()
            .unwrap()
            .trim_end_matches(['\\', '\'', ' '])
            .to_string()
    };
    let make_target = &makefile[makefile.find("\nbuild-cuda:").expect("make build-cuda")..];
    let make_cmd = cargo_cmd(make_target);
    let cuda_stage = &dockerfile[dockerfile
        .find("AS cuda-builder")
        .expect("a cuda-builder stage")..];
    let docker_cmd = cargo_cmd(cuda_stage).replace(" --locked", "");
    assert_eq!(
        docker_cmd, make_cmd,
        "Dockerfile.inference vs make build-cuda"
    );
    assert!(
        make_target.contains("CARGO_TARGET_DIR=target-cuda")
            && cuda_stage.contains("CARGO_TARGET_DIR=target-cuda")
    );

    let env_cap = env
        .split("CUDA_COMPUTE_CAP:-")
        .nth(1)
        .unwrap()
        .split('}')
        .next()
        .unwrap();
    assert_eq!(arg_default(cuda_stage, "CUDA_COMPUTE_CAP"), env_cap);
    let env_ver = env
        .split("CUDA_TOOLKIT_VERSION:-")
        .nth(1)
        .unwrap()
        .split('}')
        .next()
        .unwrap();
    let image_ver = arg_default(&dockerfile, "CUDA_VERSION");
    assert!(
        image_ver.starts_with(&format!("{env_ver}.")),
        "CUDA {image_ver} in the image, {env_ver} in make build-cuda"
    );
}

/// What users pull by default: the public images, not this machine's local bases.
#[test]
fn dockerfiles_default_to_public_base_images() {
    for f in ["Dockerfile.inference", "Dockerfile.operator"] {
        let d = repo_file(f);
        assert!(
            arg_default(&d, "BUILDER_IMAGE").starts_with("docker.io/library/rust:"),
            "{f}"
        );
        assert_eq!(
            arg_default(&d, "RUNTIME_IMAGE"),
            "gcr.io/distroless/cc-debian12:nonroot",
            "{f}"
        );
        assert!(d.contains("USER 65532:65532"), "{f}");
        assert!(!d.contains(":latest"), "{f}");
    }
    let ignore = repo_file(".dockerignore");
    for p in ["target", ".state", ".venv", ".git"] {
        assert!(ignore.lines().any(|l| l == p), ".dockerignore lacks {p}");
    }
}

/// hadolint, the Dockerfile linter, finds nothing at warning level (`.hadolint.yaml` says what is
/// ignored and why). `tools/lint-venv.sh` installs it; HADOLINT points at it.
#[test]
fn dockerfiles_pass_hadolint() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let venv = root.join(".state/venv-lint/bin/hadolint");
    let hadolint = std::env::var("HADOLINT").unwrap_or_else(|_| {
        if venv.exists() {
            venv.display().to_string()
        } else {
            "hadolint".into()
        }
    });
    for f in [
        "Dockerfile.inference",
        "Dockerfile.operator",
        "examples/weights-baked/Dockerfile",
        "hack/demo-image/Dockerfile",
    ] {
        let out = Command::new(&hadolint)
            .current_dir(&root)
            .args(["--config", ".hadolint.yaml", "--no-color", f])
            .output()
            .unwrap_or_else(|e| {
                panic!("hadolint ({hadolint}) cannot run ({e}): tools/lint-venv.sh installs it")
            });
        assert!(out.status.success(), "{f}:\n{}", text(&out.stdout));
    }
}
