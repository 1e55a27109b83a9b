//! moto's S3 server (inference/tests/fixtures/s3_server.py, authentication on) as a child
//! process. Shared by inference/tests/fetch_s3.rs and operator/tests/e2e.rs (included there by
//! path), so the fixture is started, waited for and explained on failure in one place.
#![allow(dead_code)] // e2e.rs reads only the reader's key

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

pub struct S3Server {
    child: Child,
    pub port: u16,
    /// Owned: `bucket/` holds the objects, `server.log` the fixture's stderr; removed on drop.
    pub dir: PathBuf,
    /// A user allowed to read the bucket, and one allowed nothing: (key id, secret).
    pub reader: (String, String),
    pub nobody: (String, String),
}

impl S3Server {
    /// Serves every file of `dir/bucket` as bucket `models` on `host:port`. `python` is a
    /// Command for the venv's interpreter (the caller may tie its lifetime to the test's).
    pub fn start(mut python: Command, dir: PathBuf, host: &str, port: u16) -> S3Server {
        // Both crates sit next to inference/ in the workspace.
        let fixture =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../inference/tests/fixtures/s3_server.py");
        let log = dir.join("server.log");
        let mut child = python
            .arg(fixture)
            .arg(port.to_string())
            .arg(dir.join("bucket"))
            .arg(host)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("server.log"))
            .spawn()
            .expect("start s3_server.py");
        let mut line = String::new();
        let read = BufReader::new(child.stdout.take().unwrap()).read_line(&mut line);
        let k: Vec<String> = line.split_whitespace().map(str::to_string).collect();
        if k.len() != 4 {
            let _ = child.kill();
            let status = child.wait();
            let stderr = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = stderr.lines().rev().take(15).collect();
            panic!(
                "s3_server.py on {host}:{port} printed {line:?} ({read:?}), then {status:?}; its \
                 stderr ends:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        S3Server {
            child,
            port,
            dir,
            reader: (k[0].clone(), k[1].clone()),
            nobody: (k[2].clone(), k[3].clone()),
        }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
