//! The real node (hack/real-node.sh: kubelet, containerd and runc, kube-proxy, kube-scheduler)
//! for the tests that run pods: one per machine, so one per test binary, started with the images
//! these tests run (`make images`; tools/test.sh builds them first).

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use test_cluster::{Cluster, Options, RealNode};

use super::{http_agent, repo_file, tmp_dir};

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The node's name (hack/real-node.sh).
pub const NODE: &str = "inference-node";

/// The preStop sleep and grace period of the test InferenceServices (the server drains for
/// 15 - 3 - 5 = 7 s).
pub const PRE_STOP: u64 = 3;
pub const GRACE: u64 = 15;

/// The spec the real-node tests start from: two small pods of `image` serving model `resnet50`
/// at `version`, its weights at `path` (else the image's own), a short preStop sleep and grace.
pub fn two_pods(image: &str, version: &str, path: Option<&str>) -> serde_json::Value {
    let mut model = serde_json::json!({"name": "resnet50", "version": version});
    if let Some(path) = path {
        model["path"] = serde_json::json!(path);
    }
    serde_json::json!({
        "model": model,
        "image": image,
        "replicas": 2,
        "resources": {"requests": {"cpu": "250m", "memory": "512Mi"},
                      "limits": {"cpu": "1", "memory": "1Gi"}},
        "termination": {"preStopDelaySeconds": PRE_STOP, "gracePeriodSeconds": GRACE},
    })
}

/// A tag of this workspace's images (`make images`).
pub fn image(name: &str) -> String {
    format!("ghcr.io/inference-server/{name}:{VERSION}")
}

fn run_ok(cmd: &str, args: &[&str]) -> bool {
    Command::new(cmd)
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Why a real node cannot run here with these images, if it cannot.
fn missing(images: &[String]) -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root".into());
    }
    for tool in ["containerd", "buildah", "runc"] {
        if !run_ok("sh", &["-c", &format!("command -v {tool}")]) {
            return Some(format!("{tool} is not installed (make deps)"));
        }
    }
    for tag in images {
        if !run_ok("buildah", &["inspect", "--type", "image", tag]) {
            return Some(format!("image {tag} is not built (make images)"));
        }
    }
    None
}

/// This binary's real node with `images` in its containerd (and CoreDNS and metrics-server
/// unless `no_addons`). None, with a SKIPPED line, where a real node cannot run; under CI that
/// fails the test instead.
pub fn real_cluster(images: Vec<String>, no_addons: bool) -> Option<&'static Cluster> {
    if let Some(why) = missing(&images) {
        assert!(
            std::env::var_os("CI").is_none(),
            "a real node cannot run: {why}"
        );
        eprintln!("SKIPPED: a real node cannot run: {why}");
        return None;
    }
    Some(Cluster::shared(move || Options {
        state_root: Some(tmp_dir()),
        real_node: Some(RealNode { images, no_addons }),
        ..Default::default()
    }))
}

/// `to`, a second tag of the image `from` in buildah's storage: a new tag to roll out to
/// without a second build.
pub fn tag_image(from: &str, to: &str) {
    assert!(
        run_ok("buildah", &["tag", from, to]),
        "buildah tag {from} {to}"
    );
}

pub fn cat_jpg() -> Vec<u8> {
    std::fs::read(repo_file("inference/tests/fixtures/images/cat.jpg")).unwrap()
}

/// What a load run saw: every request's outcome.
#[derive(Debug, Default)]
pub struct LoadReport {
    pub ok: u32,
    /// "t=12.3s status 503: …" or "t=… error: …", in the order they happened per worker.
    pub failures: Vec<String>,
    /// `model_version` of the 200 answers, per worker, in order, without repeats.
    pub versions: Vec<Vec<String>>,
}

/// A steady stream of real photos: `workers` clients, each POSTing /predict back to back on
/// its own keep-alive connection (or, [`Load::start_with`], a new connection per request, so
/// kube-proxy picks a pod for every request), until stopped.
pub struct Load {
    stop: Arc<AtomicBool>,
    /// One report per worker (its `versions` has one entry).
    workers: Vec<std::thread::JoinHandle<LoadReport>>,
}

impl Load {
    pub fn start(url: &str, workers: usize) -> Load {
        Self::start_with(url, workers, false)
    }

    pub fn start_with(url: &str, workers: usize, connection_per_request: bool) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let t0 = Instant::now();
        let workers = (0..workers)
            .map(|_| {
                let (stop, url) = (stop.clone(), url.to_string());
                std::thread::spawn(move || {
                    let agent = http_agent(Duration::from_secs(30));
                    let photo = cat_jpg();
                    let (mut ok, mut failures, mut versions) = (0u32, Vec::new(), Vec::new());
                    while !stop.load(Ordering::Relaxed) {
                        let at = t0.elapsed().as_secs_f32();
                        let mut request = agent.post(&url).header("Content-Type", "image/jpeg");
                        if connection_per_request {
                            request = request.header("Connection", "close");
                        }
                        match request.send(&photo[..]) {
                            Ok(mut r) if r.status() == 200 => {
                                ok += 1;
                                let body = r.body_mut().read_to_string().unwrap_or_default();
                                let v: serde_json::Value =
                                    serde_json::from_str(&body).unwrap_or_default();
                                let v = v["model_version"].as_str().unwrap_or("?").to_string();
                                if versions.last() != Some(&v) {
                                    versions.push(v);
                                }
                            }
                            Ok(mut r) => {
                                let body = r.body_mut().read_to_string().unwrap_or_default();
                                failures.push(format!("t={at:.1}s status {}: {body}", r.status()));
                            }
                            Err(e) => failures.push(format!("t={at:.1}s error: {e}")),
                        }
                    }
                    LoadReport {
                        ok,
                        failures,
                        versions: vec![versions],
                    }
                })
            })
            .collect();
        Load { stop, workers }
    }

    pub fn stop(self) -> LoadReport {
        self.stop.store(true, Ordering::Relaxed);
        let mut report = LoadReport::default();
        for w in self.workers {
            let one = w.join().unwrap();
            report.ok += one.ok;
            report.failures.extend(one.failures);
            report.versions.extend(one.versions);
        }
        report
    }
}
