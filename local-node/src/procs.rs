//! Child processes: spawning (own process group, PR_SET_PDEATHSIG, the pod network namespace),
//! signalling, and a table of live pids mirrored as files in `<state-dir>/pids/<pid>` (content:
//! the binary path), so that `hack/cluster.sh node-down` can kill leftovers even if local-node
//! itself was killed.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Mutex;

pub struct ProcTable {
    dir: PathBuf,
    live: Mutex<HashSet<i32>>,
}

impl ProcTable {
    pub fn new(dir: PathBuf) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        // Leftovers of an earlier run that was killed: its children died with it
        // (PR_SET_PDEATHSIG); kill any that did not, if they still run our binary.
        for entry in std::fs::read_dir(&dir)?.flatten() {
            if let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<i32>().ok())
            {
                let exe = std::fs::read_to_string(entry.path()).unwrap_or_default();
                if !exe.is_empty() && runs_binary(pid, &exe) {
                    tracing::warn!(pid, "killing a leftover pod process of an earlier run");
                    signal_group(pid, libc::SIGKILL);
                }
            }
            let _ = std::fs::remove_file(entry.path());
        }
        Ok(Self {
            dir,
            live: Mutex::new(HashSet::new()),
        })
    }

    pub fn add(&self, pid: i32, exe: &std::path::Path) {
        self.live.lock().unwrap().insert(pid);
        let _ = std::fs::write(
            self.dir.join(pid.to_string()),
            exe.to_string_lossy().as_bytes(),
        );
    }

    pub fn remove(&self, pid: i32) {
        self.live.lock().unwrap().remove(&pid);
        let _ = std::fs::remove_file(self.dir.join(pid.to_string()));
    }

    /// SIGKILL every process (group) still in the table.
    pub fn kill_all(&self) {
        let pids: Vec<i32> = self.live.lock().unwrap().drain().collect();
        for pid in pids {
            tracing::warn!(pid, "killing pod process");
            signal_group(pid, libc::SIGKILL);
            let _ = std::fs::remove_file(self.dir.join(pid.to_string()));
        }
    }
}

fn runs_binary(pid: i32, exe: &str) -> bool {
    match std::fs::read_link(format!("/proc/{pid}/exe")) {
        // a rebuilt binary shows as "<path> (deleted)"
        Ok(p) => p.to_string_lossy().starts_with(exe),
        Err(_) => false,
    }
}

/// Sends `sig` to the child's process group (the child leads its own group), and to the child.
pub fn signal_group(pid: i32, sig: i32) {
    // SAFETY: plain kill(2) calls.
    unsafe {
        libc::kill(-pid, sig);
        libc::kill(pid, sig);
    }
}

/// Prepares a command: own process group (a Ctrl-C in local-node's terminal does not reach it;
/// we stop children ourselves), SIGKILL when local-node dies, and, with `netns` (an open
/// `/run/netns/<name>`), the network namespace joined before exec (the child is the server
/// itself, no `ip netns exec` in between).
pub fn harden(cmd: &mut tokio::process::Command, netns: Option<i32>) {
    // SAFETY: getpid before fork; in the child only async-signal-safe calls (setns, prctl,
    // getppid, kill).
    let parent = unsafe { libc::getpid() };
    cmd.process_group(0);
    unsafe {
        cmd.pre_exec(move || {
            if let Some(fd) = netns
                && libc::setns(fd, libc::CLONE_NEWNET) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died between fork and prctl.
            if libc::getppid() != parent {
                libc::kill(libc::getpid(), libc::SIGKILL);
            }
            Ok(())
        });
    }
}
