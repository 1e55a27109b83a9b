//! Starts the real `inference-server` binary on an ephemeral port with generated weights.
#![allow(dead_code)] // each test binary uses a different part of this helper

pub mod s3;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Both f32 networks the server can run, on the CPU: the CPU network (what CPUs serve) and the
/// candle network (what GPUs serve; here on the CPU, as no GPU is present).
pub fn both_models(
    w: &inference_server::model::weights::Weights,
) -> [inference_server::model::Model; 2] {
    use candle_core::Device;
    use inference_server::model::{Model, ResNet50};
    [
        Model::new(w, &Device::Cpu).unwrap(),
        Model::Candle {
            net: ResNet50::new(w).unwrap(),
            device: Device::Cpu,
        },
    ]
}

pub const BIN: &str = env!("CARGO_BIN_EXE_inference-server");
pub const SEED: u64 = 42;

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Hex sha256 of a file.
pub fn sha256_hex(path: &Path) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(std::fs::read(path).unwrap())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// One run of `inference-server fetch` (tests/fetch.rs, tests/fetch_s3.rs).
pub struct Fetched {
    pub out: std::process::Output,
    /// The `--out` path.
    pub path: PathBuf,
    pub took: Duration,
}

impl Fetched {
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.out.stderr).into_owned()
    }

    /// Failed with `why` in its last line, which names `uri_shown`, leaving neither the file nor
    /// a `.part`.
    pub fn failed_with(&self, uri_shown: &str, why: &str) {
        let err = self.stderr();
        let last = err.lines().last().unwrap_or_default();
        assert_eq!(self.out.status.code(), Some(1), "{err}");
        assert!(
            last.starts_with(&format!("inference-server fetch: {uri_shown}: "))
                && last.contains(why),
            "last line {last:?} lacks {uri_shown:?} / {why:?}"
        );
        assert!(
            !self.path.exists(),
            "a failed fetch left {}",
            self.path.display()
        );
        let part = PathBuf::from(format!("{}.part", self.path.display()));
        assert!(!part.exists(), "a failed fetch left {}", part.display());
    }
}

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

pub fn image(name: &str) -> Vec<u8> {
    std::fs::read(fixture("images").join(name)).unwrap()
}

/// Generated once per test binary with the server's own `generate-weights` command, into one
/// file per seed: written under a per-process name and renamed over it (atomic, so binaries
/// running side by side never read half a file), so runs do not leave 100 MB each behind.
pub fn weights() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
        let path = dir.join(format!("resnet50-seed{SEED}.safetensors"));
        let partial = dir.join(format!(
            "resnet50-seed{SEED}.safetensors.{}",
            std::process::id()
        ));
        let status = Command::new(BIN)
            .args(["generate-weights", "--seed", &SEED.to_string(), "--out"])
            .arg(&partial)
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "generate-weights failed");
        std::fs::rename(&partial, &path).unwrap();
        path
    })
}

/// A directory under the target's temp dir, removed with everything in it when dropped (also
/// when the test fails).
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> Self {
        let dir =
            Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub struct Server {
    pub child: Child,
    pub base: String,
    pub agent: ureq::Agent,
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Server {
    /// Starts the server with extra env and waits until /ready answers 200.
    pub fn start(env: &[(&str, &str)]) -> Server {
        let mut s = Self::spawn(weights(), env);
        s.wait_ready(Duration::from_secs(120));
        s
    }

    pub fn spawn(weights: &Path, env: &[(&str, &str)]) -> Server {
        let mut cmd = Command::new(BIN);
        cmd.env("PORT", "0")
            .env("HOST", "127.0.0.1")
            .env("MODEL_PATH", weights)
            .env("LOG_FORMAT", "text")
            .env("RUST_LOG", "info")
            .env("INFERENCE_THREADS", "2")
            .env("SHUTDOWN_GRACE_SECONDS", "0.5")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let log2 = log.clone();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let (Some(t), Some(i)) = (&tx, line.find("listening on http://")) {
                    let addr = line[i + "listening on http://".len()..]
                        .split_whitespace()
                        .next()
                        .unwrap()
                        .to_string();
                    t.send(addr).unwrap();
                    tx = None;
                }
                log2.lock().unwrap().push(line);
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("server never said where it listens");
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(120)))
            .build()
            .into();
        Server {
            child,
            base: format!("http://{addr}"),
            agent,
            log,
        }
    }

    pub fn wait_ready(&mut self, timeout: Duration) {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("server exited during start-up: {status}");
            }
            if let Ok(r) = self.agent.get(format!("{}/ready", self.base)).call()
                && r.status() == 200
            {
                return;
            }
            assert!(
                start.elapsed() < timeout,
                "server not ready after {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn get(&self, path: &str) -> (u16, String) {
        let mut r = self.agent.get(self.url(path)).call().unwrap();
        (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
    }

    pub fn post(&self, path: &str, content_type: &str, body: &[u8]) -> Reply {
        let mut r = self
            .agent
            .post(self.url(path))
            .header("Content-Type", content_type)
            .send(body)
            .unwrap();
        let retry_after = r
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_string());
        Reply {
            status: r.status().as_u16(),
            body: r.body_mut().read_to_string().unwrap(),
            retry_after,
        }
    }

    pub fn predict_multipart(&self, field: &str, filename: &str, bytes: &[u8]) -> Reply {
        let (ct, body) = multipart(field, filename, bytes);
        self.post("/predict", &ct, &body)
    }

    pub fn logs(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    pub fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: String,
    pub retry_after: Option<String>,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
    pub fn error(&self) -> String {
        self.json()["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no `error` in {}", self.body))
            .to_string()
    }
}

pub fn multipart(field: &str, filename: &str, bytes: &[u8]) -> (String, Vec<u8>) {
    let boundary = "----inference-test-boundary-7MA4YWxkTrZu0gW";
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{filename}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(bytes);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}
