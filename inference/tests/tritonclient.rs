//! NVIDIA's own client, `tritonclient[http]` from PyPI, against the real server: health,
//! metadata, BYTES image infer with the classification extension and FP32 infer, in JSON and in
//! the binary tensor data extension, batches over one, the `/versions/` routes, gzip and deflate
//! bodies (`tools/triton_client_check.py` holds the checks).
//!
//! Needs a Python with tritonclient: `TRITON_CLIENT_PYTHON` (tools/test.sh makes a venv and sets
//! it). Without it the test says so and checks nothing, except under CI, where it fails.

mod common;

use common::Server;

#[test]
fn tritonclient_speaks_to_the_server() {
    let Ok(python) = std::env::var("TRITON_CLIENT_PYTHON") else {
        // CI always runs it (tools/test.sh); a bare `cargo test` says it did not.
        assert!(
            std::env::var_os("CI").is_none(),
            "TRITON_CLIENT_PYTHON is not set"
        );
        eprintln!("SKIPPED: TRITON_CLIENT_PYTHON is not set (tools/test.sh sets it)");
        return;
    };
    let s = Server::start(&[("MAX_BATCH_SIZE", "2")]);
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = std::process::Command::new(python)
        .arg(root.join("tools/triton_client_check.py"))
        .args(["--url", s.base.trim_start_matches("http://")])
        .arg("--images")
        .arg(common::fixture("images"))
        .args(["--model-version", "1.0", "--compression"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}{stderr}");
    assert!(out.status.success(), "tritonclient checks failed");
    assert!(
        stdout.lines().any(|l| l.ends_with(" passed, 0 failed")) && !stdout.contains("FAIL"),
        "{stdout}"
    );
}
