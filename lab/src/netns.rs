//! Network namespaces: named ones the lab makes (`ip netns add`, deleted on drop) or ones
//! someone else made (a container's), and running code or programs inside one and only one
//! of them, the network namespace, so that bpffs and cgroup2 stay the host's.

use std::{
    fs,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
};

use anyhow::{Context as _, Result, anyhow, ensure};
use nix::sched::{CloneFlags, setns};

use crate::cmd;

/// Where `ip netns` keeps named namespaces.
pub const NETNS_RUN_DIR: &str = "/run/netns";

/// A name no other lab user on this machine (test, test run, demo) uses at the same time:
/// `bpfbt-PID-N-ROLE`.
pub fn unique(role: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "bpfbt-{}-{}-{role}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// The path of the namespace `ip netns` knows as `name`.
pub fn netns_path(name: &str) -> PathBuf {
    Path::new(NETNS_RUN_DIR).join(name)
}

/// The `ip netns` name of a namespace mounted in /run/netns; `None` for any other path.
pub fn netns_name(path: &Path) -> Option<String> {
    if path.parent() != Some(Path::new(NETNS_RUN_DIR)) {
        return None;
    }
    Some(path.file_name()?.to_str()?.to_string())
}

/// Whether a device's TX checksum offload is on or off (`ethtool -K DEV tx on|off`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxOffload {
    On,
    Off,
}

impl TxOffload {
    fn ethtool_word(self) -> &'static str {
        match self {
            TxOffload::On => "on",
            TxOffload::Off => "off",
        }
    }
}

/// A network namespace: one the lab made (deleted on drop), or one made by someone else and
/// only used here.
pub struct Netns {
    /// The `ip netns` name; empty for a borrowed namespace outside /run/netns.
    pub name: String,
    /// Where a borrowed namespace is pinned.
    path: Option<PathBuf>,
}

impl Netns {
    /// A new namespace with a [`unique`] name, its loopback up.
    pub fn new(role: &str) -> Result<Self> {
        Self::named(&unique(role))
    }

    /// A new namespace called `name`, its loopback up; fails if one of that name exists
    /// (left over from an earlier run, say).
    pub fn named(name: &str) -> Result<Self> {
        ensure!(
            !netns_path(name).exists(),
            "network namespace {name} already exists (left over from an earlier run?); \
             remove it with `ip netns del {name}`"
        );
        cmd::run_program("ip", &["netns", "add", name])?;
        let ns = Netns {
            name: name.to_string(),
            path: None,
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// A namespace pinned at `path` by someone else (e.g. the agent); not deleted on drop.
    pub fn borrowed(path: PathBuf) -> Self {
        Netns {
            name: netns_name(&path).unwrap_or_default(),
            path: Some(path),
        }
    }

    pub fn path(&self) -> PathBuf {
        self.path.clone().unwrap_or_else(|| netns_path(&self.name))
    }

    /// `ip ARGS` inside the namespace.
    pub fn ip(&self, args: &[&str]) -> Result<Output> {
        let net = format!("--net={}", self.path().display());
        let mut full = vec![net.as_str(), "ip"];
        full.extend_from_slice(args);
        cmd::run_program("nsenter", &full)
    }

    /// `ip -batch -` inside the namespace: many commands, one process.
    pub fn ip_batch(&self, commands: &str) -> Result<()> {
        cmd::run_with_input(
            Command::new("nsenter")
                .arg(format!("--net={}", self.path().display()))
                .args(["ip", "-batch", "-"]),
            commands,
        )
    }

    /// Runs a program inside the namespace (`ip netns exec`: a private /sys, fine for tools
    /// that only need the network, such as sysctl and ethtool).
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<Output> {
        let mut full = vec!["netns", "exec", self.name.as_str(), program];
        full.extend_from_slice(args);
        cmd::run_program("ip", &full)
    }

    /// Sets a device's TX checksum offload.
    pub fn set_tx_offload(&self, device: &str, offload: TxOffload) -> Result<()> {
        self.exec("ethtool", &["-K", device, "tx", offload.ethtool_word()])
            .map(drop)
    }

    /// Runs `f` on a thread inside this namespace.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        in_netns(&self.path(), f)
    }

    /// Deletes a namespace the lab made, reporting failure (drop deletes it silently).
    pub fn delete(mut self) -> Result<()> {
        let name = std::mem::take(&mut self.name);
        if self.path.is_some() {
            return Ok(());
        }
        cmd::run_program("ip", &["netns", "del", &name]).map(drop)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if self.path.is_none() && !self.name.is_empty() {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.name])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Runs `f` on a thread that entered the network namespace at `path` (and only that);
/// panics if the namespace cannot be entered.
pub fn in_netns<T: Send>(path: &Path, f: impl FnOnce() -> T + Send) -> T {
    try_in_netns(path, f).unwrap_or_else(|e| panic!("{e:#}"))
}

/// Like [`in_netns`], with a failure to enter the namespace (or a panic of `f`) as an error.
pub fn try_in_netns<T: Send>(path: &Path, f: impl FnOnce() -> T + Send) -> Result<T> {
    thread::scope(|scope| {
        scope
            .spawn(|| -> Result<T> {
                let file =
                    fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
                setns(&file, CloneFlags::CLONE_NEWNET)
                    .with_context(|| format!("entering network namespace {}", path.display()))?;
                Ok(f())
            })
            .join()
            .map_err(|_| anyhow!("the thread in {} panicked", path.display()))?
    })
}

/// Makes `command` enter the network namespace at `netns`, and no other, before it runs, as
/// `nsenter --net` does (`ip netns exec` would also give it a private /sys without the
/// host's bpffs and cgroups).
pub fn enter_netns(command: &mut Command, netns: &Path) -> Result<()> {
    let netns = fs::File::open(netns).with_context(|| format!("opening {}", netns.display()))?;
    // SAFETY: setns is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        command.pre_exec(move || {
            setns(&netns, CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)
        });
    }
    Ok(())
}

/// Spawns `command` in the network namespace at `netns` and no other (see [`enter_netns`]).
pub fn spawn_in_netns(command: &mut Command, netns: &Path) -> Result<Child> {
    enter_netns(command, netns)?;
    cmd::spawn(command)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netns_names_only_for_run_netns() {
        assert_eq!(
            netns_name(Path::new("/run/netns/bpfb-web")).as_deref(),
            Some("bpfb-web")
        );
        assert_eq!(netns_name(Path::new("/proc/123/ns/net")), None);
        assert_eq!(netns_name(Path::new("/run/netns")), None);
    }

    #[test]
    fn unique_names_differ() {
        assert_ne!(unique("x"), unique("x"));
        assert!(unique("node").ends_with("-node"));
    }
}
