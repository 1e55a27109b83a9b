//! `inference-server fetch` against a real HTTPS server on loopback (tests/fixtures/
//! https_server.py, Python's ssl module) with a certificate from a CA made here with the openssl
//! CLI: a good file, a wrong checksum, 404, 403, a cut-off transfer, a server that stalls, a file
//! that is not the model, a server that fails twice then answers, `hf://` with and without its
//! token, and a server whose CA is not trusted. Each failure must be one line naming the URI,
//! leave nothing at the output path and no `.part` file behind.

mod common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Fetched, sha256_hex};
use inference_server::model::weights;

struct Server {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("run openssl");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a server certificate for 127.0.0.1 signed by it, the files, and the server.
fn start() -> Server {
    let dir =
        std::env::temp_dir().join(format!("fetch-test-{}-{}", std::process::id(), rand_tag()));
    std::fs::create_dir_all(dir.join("www")).unwrap();
    let d = |f: &str| dir.join(f);
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    run(Command::new("openssl")
        .args(["req", "-x509", "-days", "2", "-subj", "/CN=fetch-test-ca"])
        .args(ec)
        .arg("-keyout")
        .arg(d("ca.key"))
        .arg("-out")
        .arg(d("ca.pem")));
    run(Command::new("openssl")
        .args(["req", "-subj", "/CN=127.0.0.1"])
        .args(ec)
        .arg("-keyout")
        .arg(d("srv.key"))
        .arg("-out")
        .arg(d("srv.csr")));
    std::fs::write(
        d("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(Command::new("openssl")
        .args(["x509", "-req", "-days", "2", "-CAcreateserial"])
        .arg("-in")
        .arg(d("srv.csr"))
        .arg("-CA")
        .arg(d("ca.pem"))
        .arg("-CAkey")
        .arg(d("ca.key"))
        .arg("-extfile")
        .arg(d("ext.cnf"))
        .arg("-out")
        .arg(d("srv.pem")));
    weights::write_random(&d("www/good.safetensors"), 7).unwrap();
    std::fs::write(d("www/not-a-model.safetensors"), vec![0x5au8; 4096]).unwrap();
    let mut child = Command::new("python3")
        .arg(common::fixture("https_server.py"))
        .arg(d("srv.pem"))
        .arg(d("srv.key"))
        .arg(d("www"))
        .stdout(Stdio::piped())
        .spawn()
        .expect("start python3 https_server.py");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line.trim().parse().expect("the server prints its port");
    Server { child, port, dir }
}

fn rand_tag() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64
}

fn fetch(s: &Server, uri: &str, extra: &[&str], env: &[(&str, &str)]) -> Fetched {
    let out_dir = s.dir.join(format!("out-{}", rand_tag()));
    std::fs::create_dir_all(&out_dir).unwrap();
    let path = out_dir.join("resnet50.safetensors");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_inference-server"));
    cmd.arg("fetch")
        .arg("--uri")
        .arg(uri)
        .arg("--out")
        .arg(&path)
        .arg("--ca-file")
        .arg(s.dir.join("ca.pem"))
        .args(extra);
    // Quick defaults unless the case sets its own.
    for (flag, value) in [
        ("--backoff-seconds", "0.05"),
        ("--connect-timeout-seconds", "3"),
        ("--transfer-timeout-seconds", "3"),
    ] {
        if !extra.contains(&flag) {
            cmd.args([flag, value]);
        }
    }
    cmd.env_remove("HF_TOKEN")
        .env_remove("HF_ENDPOINT")
        .env_remove("MODEL_SHA256")
        .envs(env.iter().copied());
    let t = Instant::now();
    let out = cmd.output().unwrap();
    Fetched {
        out,
        path,
        took: t.elapsed(),
    }
}

#[test]
fn fetch_checks_everything_before_the_file_is_in_place() {
    let s = start();
    let base = format!("https://127.0.0.1:{}", s.port);
    let good = s.dir.join("www/good.safetensors");
    let sum = sha256_hex(&good);

    // A good file with its checksum: in place, identical, no .part left, one line saying so.
    let f = fetch(
        &s,
        &format!("{base}/files/good.safetensors"),
        &["--sha256", &sum],
        &[],
    );
    assert!(f.out.status.success(), "{}", f.stderr());
    assert_eq!(
        std::fs::read(&f.path).unwrap(),
        std::fs::read(&good).unwrap()
    );
    assert!(!PathBuf::from(format!("{}.part", f.path.display())).exists());
    let said = String::from_utf8_lossy(&f.out.stdout).into_owned();
    assert!(said.contains(&sum) && said.contains("fetched"), "{said}");

    // The query string (a pre-signed URL's signature) never shows; the checksum is enforced.
    let f = fetch(
        &s,
        &format!("{base}/files/good.safetensors?X-Amz-Signature=s3cr3t"),
        &["--sha256", &"0".repeat(64)],
        &[],
    );
    f.failed_with(&format!("{base}/files/good.safetensors"), "sha256");
    assert!(!f.stderr().contains("s3cr3t"), "{}", f.stderr());

    // 404 and 403 are final: no second try.
    let f = fetch(
        &s,
        &format!("{base}/status/404"),
        &["--attempts", "5", "--backoff-seconds", "2"],
        &[],
    );
    f.failed_with(&format!("{base}/status/404"), "HTTP 404");
    assert!(
        f.took < Duration::from_secs(2),
        "404 was retried ({:?})",
        f.took
    );
    let f = fetch(&s, &format!("{base}/status/403"), &[], &[]);
    f.failed_with(&format!("{base}/status/403"), "HTTP 403");

    // A cut-off body and a stalled server are retried, then given up.
    let f = fetch(
        &s,
        &format!("{base}/truncated/good.safetensors"),
        &["--attempts", "2"],
        &[],
    );
    f.failed_with(
        &format!("{base}/truncated/good.safetensors"),
        "gave up after 2 tries",
    );
    assert!(f.stderr().contains("try 1 of 2 failed"), "{}", f.stderr());
    let f = fetch(
        &s,
        &format!("{base}/slow/good.safetensors"),
        &["--attempts", "2", "--transfer-timeout-seconds", "1"],
        &[],
    );
    f.failed_with(
        &format!("{base}/slow/good.safetensors"),
        "gave up after 2 tries",
    );
    assert!(
        f.took < Duration::from_secs(20),
        "the stall was not cut off ({:?})",
        f.took
    );

    // Not the model: refused before it is put where the server looks.
    let f = fetch(
        &s,
        &format!("{base}/files/not-a-model.safetensors"),
        &[],
        &[],
    );
    f.failed_with(
        &format!("{base}/files/not-a-model.safetensors"),
        "not ResNet50 safetensors",
    );

    // 503 twice, then the file: retried to success.
    let f = fetch(
        &s,
        &format!("{base}/flaky/2/good.safetensors"),
        &["--attempts", "3"],
        &[],
    );
    assert!(f.out.status.success(), "{}", f.stderr());
    assert_eq!(f.stderr().matches("HTTP 503").count(), 2, "{}", f.stderr());

    // hf:// goes to HF_ENDPOINT's resolve URL with HF_TOKEN, which is never printed.
    let hf_env = [
        ("HF_ENDPOINT", &*format!("{base}/hf")),
        ("HF_TOKEN", "secret-token"),
    ];
    let f = fetch(
        &s,
        "hf://org/repo@v1/good.safetensors",
        &["--sha256", &sum],
        &hf_env,
    );
    assert!(f.out.status.success(), "{}", f.stderr());
    let f = fetch(&s, "hf://org/repo/good.safetensors", &[], &hf_env[..1]);
    f.failed_with("hf://org/repo/good.safetensors", "HTTP 401");
    let f = fetch(
        &s,
        "hf://org/repo/good.safetensors",
        &[],
        &[hf_env[0], ("HF_TOKEN", "wrong-token")],
    );
    f.failed_with("hf://org/repo/good.safetensors", "HTTP 401");
    assert!(!f.stderr().contains("wrong-token"));

    // A server this process has no reason to trust (the built-in web roots): final, at once.
    let mut cmd_args = vec![];
    cmd_args.extend(["--attempts", "3", "--backoff-seconds", "2"]);
    let f = {
        let out_dir = s.dir.join("untrusted");
        std::fs::create_dir_all(&out_dir).unwrap();
        let path = out_dir.join("w.safetensors");
        let t = Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_inference-server"))
            .args([
                "fetch",
                "--uri",
                &format!("{base}/files/good.safetensors"),
                "--out",
            ])
            .arg(&path)
            .args(&cmd_args)
            .env_remove("FETCH_CA_FILE")
            .output()
            .unwrap();
        Fetched {
            out,
            path,
            took: t.elapsed(),
        }
    };
    f.failed_with(&format!("{base}/files/good.safetensors"), "certificate");
    assert!(
        f.took < Duration::from_secs(2),
        "a TLS failure was retried ({:?})",
        f.took
    );

    // Bad set-up: refused before any request.
    let f = fetch(&s, "http://127.0.0.1:1/w.safetensors", &[], &[]);
    f.failed_with("http://127.0.0.1:1/w.safetensors", "plain http is refused");
    let f = fetch(&s, "s3://bucket-without-key", &[], &[]);
    f.failed_with(
        "s3://bucket-without-key",
        "s3:// needs a bucket and an object key",
    );
}
