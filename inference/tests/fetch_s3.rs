//! `inference-server fetch --uri s3://…` against an S3-compatible server on loopback (moto's
//! server mode, tests/fixtures/s3_server.py, with authentication on): signed with the key of a
//! user allowed to read; a wrong checksum; a missing key (404); a user allowed nothing and an
//! unknown key (403); a file that is not the model; a server that is not there, a transfer cut
//! off half-way and a server that stalls mid-body (the last two injected by the fixture into
//! moto's signed 200 answers): retried, then given up. Each failure is one line naming the URI,
//! leaves nothing at the output path and no `.part`, and never shows the secret key.
//!
//! Needs a Python with moto: `S3_PYTHON` (tools/test.sh makes .state/venv-s3 and sets it).
//! Without it the test says so and checks nothing, except under CI, where it fails.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::s3::S3Server;
use common::{Fetched, sha256_hex};
use inference_server::model::weights;

fn start(python: &str) -> S3Server {
    let dir = std::env::temp_dir().join(format!("fetch-s3-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("bucket")).unwrap();
    weights::write_random(&dir.join("bucket/good.safetensors"), 7).unwrap();
    std::fs::write(
        dir.join("bucket/not-a-model.safetensors"),
        vec![0x5au8; 4096],
    )
    .unwrap();
    S3Server::start(Command::new(python), dir, "127.0.0.1", common::free_port())
}

/// [`Fetched::failed_with`], and the secret key is nowhere in the output.
fn failed_with(f: &Fetched, uri: &str, why: &str, secret: &str) {
    assert!(
        !f.stderr().contains(secret),
        "the secret key was printed: {}",
        f.stderr()
    );
    f.failed_with(uri, why);
}

fn fetch(m: &S3Server, port: u16, uri: &str, key: &(String, String), extra: &[&str]) -> Fetched {
    let out_dir = m.dir.join(format!("out-{}", common::free_port()));
    std::fs::create_dir_all(&out_dir).unwrap();
    let path = out_dir.join("resnet50.safetensors");
    let t = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_inference-server"))
        .args(["fetch", "--uri", uri, "--out"])
        .arg(&path)
        .args([
            "--backoff-seconds",
            "0.05",
            "--connect-timeout-seconds",
            "3",
        ])
        .args(extra)
        // Only what the test gives: the AWS chain must not find this machine's own settings.
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", &m.dir)
        .env("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{port}"))
        .env("AWS_ALLOW_HTTP", "true")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", &key.0)
        .env("AWS_SECRET_ACCESS_KEY", &key.1)
        .output()
        .unwrap();
    Fetched {
        out,
        path,
        took: t.elapsed(),
    }
}

#[test]
fn fetch_from_s3_with_the_aws_credential_chain() {
    let Ok(python) = std::env::var("S3_PYTHON") else {
        assert!(std::env::var_os("CI").is_none(), "S3_PYTHON is not set");
        eprintln!("SKIPPED: S3_PYTHON is not set (tools/test.sh sets it)");
        return;
    };
    let m = start(&python);
    let good = m.dir.join("bucket/good.safetensors");
    let sum = sha256_hex(&good);
    let uri = "s3://models/good.safetensors";

    // Signed by a user allowed to read: in place, identical, one line saying so.
    let f = fetch(&m, m.port, uri, &m.reader, &["--sha256", &sum]);
    assert!(f.out.status.success(), "{}", f.stderr());
    assert_eq!(
        std::fs::read(&f.path).unwrap(),
        std::fs::read(&good).unwrap()
    );
    let said = String::from_utf8_lossy(&f.out.stdout).into_owned();
    assert!(
        said.contains(&format!("fetched {uri}")) && said.contains(&sum),
        "{said}"
    );
    assert!(!PathBuf::from(format!("{}.part", f.path.display())).exists());

    let secret = m.reader.1.clone();
    // The right object with the wrong checksum.
    let wrong = "0".repeat(64);
    failed_with(
        &fetch(&m, m.port, uri, &m.reader, &["--sha256", &wrong]),
        uri,
        &format!("sha256 {sum}, expected {wrong}"),
        &secret,
    );
    // No such key.
    let missing = "s3://models/missing.safetensors";
    failed_with(
        &fetch(&m, m.port, missing, &m.reader, &[]),
        missing,
        "S3 404",
        &secret,
    );
    // A user without the right to read, and a key the server does not know: 403 at once.
    let f = fetch(&m, m.port, uri, &m.nobody, &[]);
    failed_with(&f, uri, "S3 403: access denied", &m.nobody.1);
    assert!(
        !f.stderr().contains("try 1"),
        "403 is not retried: {}",
        f.stderr()
    );
    let unknown = (
        "AKIAUNKNOWN000000000".to_string(),
        "not-a-secret-x".to_string(),
    );
    failed_with(
        &fetch(&m, m.port, uri, &unknown, &[]),
        uri,
        "S3 403",
        &unknown.1,
    );
    // An object that is not the model.
    let junk = "s3://models/not-a-model.safetensors";
    failed_with(
        &fetch(&m, m.port, junk, &m.reader, &[]),
        junk,
        "not ResNet50 safetensors",
        &secret,
    );
    // Nobody listening: retried, then given up.
    let f = fetch(
        &m,
        common::free_port(),
        uri,
        &m.reader,
        &["--attempts", "3"],
    );
    failed_with(&f, uri, "(gave up after 3 tries)", &secret);
    assert_eq!(f.stderr().matches("failed (").count(), 2, "{}", f.stderr());
    // The object's real headers (full Content-Length), then half the body and the connection
    // shut: retried, then given up.
    let cut = "s3://models/truncated/good.safetensors";
    let f = fetch(&m, m.port, cut, &m.reader, &["--attempts", "2"]);
    failed_with(&f, cut, "gave up after 2 tries", &secret);
    assert!(f.stderr().contains("try 1 of 2 failed"), "{}", f.stderr());
    assert!(f.stderr().contains("broke off after"), "{}", f.stderr());
    // The headers and a first piece, then a trickle: the transfer timeout cuts each try off.
    let slow = "s3://models/slow/good.safetensors";
    let f = fetch(
        &m,
        m.port,
        slow,
        &m.reader,
        &["--attempts", "2", "--transfer-timeout-seconds", "1"],
    );
    failed_with(&f, slow, "gave up after 2 tries", &secret);
    assert!(f.stderr().contains("try 1 of 2 failed"), "{}", f.stderr());
    assert!(f.stderr().contains("timed out"), "{}", f.stderr());
    assert!(
        f.took < Duration::from_secs(20),
        "the stall was not cut off ({:?})",
        f.took
    );
}
