//! The pod network: a network namespace of our own, joined to the host by a veth pair.
//!
//! ```text
//!  host                                     netns ln-<8 hex>
//!  ln-<8 hex>  <prefix>.1/24  <── veth ──>  eth0  <pod IP>/32 ... (one per running pod), lo up
//! ```
//!
//! Every pod process runs inside the namespace (setns(2) before exec, see procs.rs) and binds its
//! pod IP there; probes, hooks and clients on the host reach it through the veth (the connected
//! /24 route of the host side). The namespace has no default route: pods reach the host's
//! gateway address and each other, nothing else. Pod IPs are kept out of 127.0.0.0/8 because the
//! apiserver refuses loopback addresses in EndpointSlices.
//!
//! The name is derived from the state dir and the node name, so two clusters on one machine do
//! not collide and a restarted local-node finds (and replaces) what a killed one left. It is
//! written to `<state>/netns` so that `hack/cluster.sh node-down` can delete the namespace and
//! the veth if local-node was killed. Needs root (CAP_NET_ADMIN + CAP_SYS_ADMIN); there is no
//! fallback.

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Interface name of the pod side, inside the namespace.
pub const POD_IF: &str = "eth0";

pub struct PodNet {
    /// Name of the namespace and of the host side of the veth.
    name: String,
    prefix: [u8; 3],
    /// `/run/netns/<name>`, open: what setns(2) takes.
    fd: OwnedFd,
    marker: PathBuf,
    removed: std::sync::atomic::AtomicBool,
}

/// `ln-<8 hex>`: FNV-1a of the state dir and the node name (at most 15 bytes: an interface name).
pub fn name_for(state_dir: &Path, node_name: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in state_dir
        .as_os_str()
        .as_encoded_bytes()
        .iter()
        .chain([0u8].iter())
        .chain(node_name.as_bytes())
    {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("ln-{:08x}", (h ^ (h >> 32)) as u32)
}

fn ip(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("ip").args(args).output().map_err(|e| {
        anyhow::anyhow!(
            "running `ip {}`: {e} (iproute2 is required)",
            args.join(" ")
        )
    })?;
    anyhow::ensure!(
        out.status.success(),
        "`ip {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Deletes the veth (both ends, even if processes still hold the namespace) and the namespace.
/// Quiet if they do not exist.
pub fn remove(name: &str) {
    if Path::new("/sys/class/net").join(name).exists() {
        let _ = ip(&["link", "del", name]);
    }
    if Path::new("/run/netns").join(name).exists()
        && let Err(e) = ip(&["netns", "del", name])
    {
        tracing::warn!(netns = name, error = %e, "could not delete the network namespace");
    }
}

/// Serialises the "is the /24 free?" check and the set-up between local-nodes on this machine.
struct Lock {
    _fd: OwnedFd,
}

impl Lock {
    fn take() -> anyhow::Result<Self> {
        use std::os::fd::FromRawFd;
        let path = c"/run/local-node-net.lock";
        // SAFETY: plain open/flock; the fd is owned from here on.
        let fd = unsafe {
            libc::open(
                path.as_ptr(),
                libc::O_RDWR | libc::O_CREAT | libc::O_CLOEXEC,
                0o600,
            )
        };
        anyhow::ensure!(
            fd >= 0,
            "opening /run/local-node-net.lock: {}",
            std::io::Error::last_os_error()
        );
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        if unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_EX) } != 0 {
            anyhow::bail!(
                "locking /run/local-node-net.lock: {}",
                std::io::Error::last_os_error()
            );
        }
        Ok(Self { _fd: fd })
    }
}

impl PodNet {
    /// Creates the namespace `name` and the veth for `<prefix>.0/24` (replacing a leftover of
    /// the same name). Fails if the /24 is in use on this machine already ("already in use":
    /// test-cluster then retries with another prefix), or without root.
    pub fn create(name: &str, prefix: [u8; 3], state_dir: &Path) -> anyhow::Result<Self> {
        let [a, b, c] = prefix;
        let cidr = format!("{a}.{b}.{c}.0/24");
        let gateway = format!("{a}.{b}.{c}.1");
        let no_priv = |e: anyhow::Error| {
            e.context(format!(
                "cannot create the pod network (network namespace {name}, veth, {cidr}): local-node \
                 must run as root (CAP_NET_ADMIN and CAP_SYS_ADMIN); pod IPs live in a network \
                 namespace of its own and there is no fallback"
            ))
        };
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err(no_priv(anyhow::anyhow!("not running as root")));
        }
        // a leftover of a killed local-node with this state dir
        remove(name);
        let _lock = Lock::take()?;
        let used = ip(&["-4", "-o", "route", "show", "table", "all", "root", &cidr])?;
        let used_addrs = ip(&["-4", "-o", "addr", "show", "to", &cidr])?;
        if !used.trim().is_empty() || !used_addrs.trim().is_empty() {
            anyhow::bail!(
                "pod IP range {cidr} is already in use on this machine (another local-node, or a \
                 route); choose another --ip-prefix:\n{}{}",
                used,
                used_addrs
            );
        }
        ip(&["netns", "add", name]).map_err(no_priv)?;
        let net = (|| -> anyhow::Result<Self> {
            ip(&[
                "link", "add", name, "type", "veth", "peer", "name", POD_IF, "netns", name,
            ])?;
            ip(&["addr", "add", &format!("{gateway}/24"), "dev", name])?;
            ip(&["link", "set", name, "up"])?;
            ip(&["-n", name, "link", "set", "lo", "up"])?;
            ip(&["-n", name, "link", "set", POD_IF, "up"])?;
            ip(&["-n", name, "route", "add", &cidr, "dev", POD_IF])?;
            let fd = std::fs::File::open(Path::new("/run/netns").join(name))?.into();
            let marker = state_dir.join("netns");
            std::fs::write(&marker, name)?;
            Ok(Self {
                name: name.to_string(),
                prefix,
                fd,
                marker,
                removed: Default::default(),
            })
        })();
        if net.is_err() {
            remove(name);
        }
        net
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// For setns(2) in a child before exec.
    pub fn fd(&self) -> i32 {
        self.fd.as_raw_fd()
    }

    /// Adds a pod IP to the pod side of the veth.
    pub fn add_ip(&self, addr: Ipv4Addr) -> anyhow::Result<()> {
        anyhow::ensure!(
            addr.octets()[..3] == self.prefix,
            "{addr} is not in the pod range"
        );
        match ip(&[
            "-n",
            &self.name,
            "addr",
            "add",
            &format!("{addr}/32"),
            "dev",
            POD_IF,
        ]) {
            Err(e) if format!("{e:#}").contains("File exists") => Ok(()),
            r => r.map(|_| ()),
        }
    }

    /// Removes a pod IP again (best effort).
    pub fn del_ip(&self, addr: Ipv4Addr) {
        if let Err(e) = ip(&[
            "-n",
            &self.name,
            "addr",
            "del",
            &format!("{addr}/32"),
            "dev",
            POD_IF,
        ]) {
            tracing::debug!(%addr, error = %e, "could not remove the pod IP");
        }
    }

    /// Deletes the namespace and the veth (once; also done on drop).
    pub fn remove(&self) {
        if self.removed.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        remove(&self.name);
        let _ = std::fs::remove_file(&self.marker);
        tracing::info!(netns = %self.name, "removed the pod network namespace and veth");
    }
}

impl Drop for PodNet {
    fn drop(&mut self) {
        self.remove();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_short_stable_and_distinct() {
        let a = name_for(Path::new("/tmp/a/node"), "local-node");
        assert_eq!(a, name_for(Path::new("/tmp/a/node"), "local-node"));
        assert_ne!(a, name_for(Path::new("/tmp/b/node"), "local-node"));
        assert_ne!(a, name_for(Path::new("/tmp/a/node"), "other"));
        assert!(a.starts_with("ln-") && a.len() == 11, "{a}");
    }
}
