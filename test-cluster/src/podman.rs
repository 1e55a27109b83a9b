//! podman for the image tests (`inference/tests/image.rs`, `operator/tests/image.rs`). Std
//! only: the inference crate's tests include this file by path (`#[path]`) rather than depend on
//! this crate and its Kubernetes client.

use std::ffi::OsString;
use std::path::Path;
use std::process::{Command, Output, Stdio};

/// `podman run` flags for the restrictions the operator's pod spec sets (read-only root, user
/// 65532, no capabilities, no privilege escalation), with rlimits within the sandbox's.
pub const RESTRICTED: &[&str] = &[
    "--read-only",
    "--user",
    "65532:65532",
    "--cap-drop",
    "ALL",
    "--security-opt",
    "no-new-privileges",
    "--ulimit",
    "nofile=1024:1024",
    "--ulimit",
    "nproc=1024:1024",
];

/// The project's podman settings (runc, rlimits within the sandbox's, networks in 198.18/15),
/// unless the caller chose others. Every crate that includes this file sits one level below the
/// workspace root.
pub fn containers_conf() -> OsString {
    std::env::var_os("CONTAINERS_CONF").unwrap_or_else(|| {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../hack/containers/containers.conf")
            .into()
    })
}

/// Runs podman with the project's settings; a refused rlimit is explained, not just reported.
pub fn podman(args: &[&str]) -> Output {
    let out = Command::new("podman")
        .args(args)
        .env("CONTAINERS_CONF", containers_conf())
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("podman cannot run ({e}): `make deps` installs it"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !err.contains("error setting rlimit"),
        "podman refused the container's rlimits: this sandbox cannot raise them, so every \
         container must ask for limits within the machine's (--ulimit nofile=1024:1024 \
         --ulimit nproc=1024:1024): {err}"
    );
    out
}

/// Output bytes as trimmed text.
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).trim().to_string()
}

/// Removes the named container (and its logs) when dropped, also when the test fails.
pub struct Removed(pub String);

impl Drop for Removed {
    fn drop(&mut self) {
        let _ = podman(&["rm", "-f", "-t", "0", &self.0]);
    }
}
