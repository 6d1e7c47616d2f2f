//! `cargo xtask setup`: installs what building and testing bpfbridge needs on a Debian 12 machine.
//!
//! Every step checks first and does nothing when its work is already done, so running setup again
//! takes seconds. Each step prints one line: `ok (already)` or what it did.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use bpfbridge_lab::mounts::{BPFFS, bpffs_mounted, mounts};

use bpfbridge_lab::cmd;

/// Debian packages the build, the tests and the demo use.
const APT_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "rustc-web",
    "cargo-web",
    "rust-web-src",
    "iproute2",
    "iptables",
    "nftables",
    "bpftool",
    "busybox-static",
    "util-linux",
    "procps",
    "ethtool",
    // dockerd 20.10 and its client, for the Docker plugin tests and `bench --with-docker`; they
    // only ever run it inside a test's own network namespace.
    "docker.io",
    // podman 4.3 (and containernetworking-plugins), for the CNI plugin's podman test, run in
    // the test's own namespace with its own storage.
    "podman",
];

/// While this file exists and exits 101, Debian's maintainer scripts start no service: installing
/// docker.io must not start a dockerd in the root network namespace, where it would add a
/// bridge and iptables rules.
const POLICY_RC_D: &str = "/usr/sbin/policy-rc.d";

/// Where Debian's LLVM 22 lives; bpf-linker is built against it.
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

/// The rustup toolchain linked to Debian's rustc in /usr, which agent/build.rs builds the BPF
/// crate with (Debian ships rust-src for it, which -Z build-std needs).
const BPF_TOOLCHAIN: &str = "debian-bpf";
const BPF_TOOLCHAIN_ROOT: &str = "/usr";

const ALREADY: &str = "ok (already)";

pub fn setup() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "`cargo xtask setup` must run as root: it installs packages and mounts bpffs, and the \
             build, tests and demo load BPF programs and create network namespaces"
        );
    }
    step("apt packages", apt_packages)?;
    step("bpf-linker (LLVM 22)", bpf_linker)?;
    step("rustup toolchain debian-bpf", bpf_toolchain)?;
    step("bpffs at /sys/fs/bpf", bpffs)?;
    step("cgroup2 mount", cgroup2)?;
    Ok(())
}

fn step(name: &str, work: impl FnOnce() -> Result<String>) -> Result<()> {
    let done = work().with_context(|| format!("setup step `{name}` failed"))?;
    println!("setup: {name:<28} {done}");
    Ok(())
}

fn apt_packages() -> Result<String> {
    let missing = missing_packages()?;
    if missing.is_empty() {
        return Ok(ALREADY.into());
    }
    println!("setup: installing {}", missing.join(" "));
    cmd::run(Command::new("apt-get").arg("update"))?;
    let _no_service_starts = NoServiceStarts::new()?;
    cmd::run(
        Command::new("apt-get")
            .args(["install", "-y"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    let still = missing_packages()?;
    if !still.is_empty() {
        bail!(
            "apt-get install finished but these are still not installed: {}",
            still.join(" ")
        );
    }
    Ok(format!("installed {}", missing.join(" ")))
}

/// Keeps maintainer scripts from starting services until dropped; an existing policy-rc.d (the
/// machine's own) is left alone.
struct NoServiceStarts {
    created: bool,
}

impl NoServiceStarts {
    fn new() -> Result<Self> {
        use std::os::unix::fs::PermissionsExt;
        let path = std::path::Path::new(POLICY_RC_D);
        if path.exists() {
            return Ok(Self { created: false });
        }
        std::fs::write(path, "#!/bin/sh\nexit 101\n")
            .with_context(|| format!("writing {POLICY_RC_D}"))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))?;
        Ok(Self { created: true })
    }
}

impl Drop for NoServiceStarts {
    fn drop(&mut self) {
        if self.created {
            let _ = std::fs::remove_file(POLICY_RC_D);
        }
    }
}

fn missing_packages() -> Result<Vec<&'static str>> {
    let mut missing = Vec::new();
    for &package in APT_PACKAGES {
        if !package_installed(package)? {
            missing.push(package);
        }
    }
    Ok(missing)
}

fn package_installed(package: &str) -> Result<bool> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .context("could not run dpkg-query (setup supports Debian 12)")?;
    // dpkg-query exits non-zero for a package it has never heard of.
    Ok(out.status.success()
        && String::from_utf8_lossy(&out.stdout).trim() == "install ok installed")
}

fn bpf_linker() -> Result<String> {
    if bpf_linker_works() {
        return Ok(ALREADY.into());
    }
    println!("setup: building bpf-linker against {LLVM_PREFIX} (takes a minute or two)");
    let path = match std::env::var_os("PATH") {
        Some(path) => {
            let mut dirs = vec![PathBuf::from(LLVM_PREFIX).join("bin")];
            dirs.extend(std::env::split_paths(&path));
            std::env::join_paths(dirs).context("PATH")?
        }
        None => Path::new(LLVM_PREFIX).join("bin").into_os_string(),
    };
    // --debug: the linking work is LLVM's (Debian's optimised libLLVM), so an unoptimised
    // bpf-linker links the BPF object about as fast (measured here: 14 s against 11 s for
    // the whole BPF crate build) and compiles in half the time (246 s against 531 s on a
    // loaded machine), which a fresh CI machine pays on every run.
    cmd::run(
        crate::cargo()
            .args(["install", "--debug", "bpf-linker", "--no-default-features"])
            .args(["--features", "llvm-22"])
            .env("LLVM_PREFIX", LLVM_PREFIX)
            .env("PATH", path),
    )?;
    if !bpf_linker_works() {
        bail!(
            "bpf-linker was installed but `bpf-linker --version` still fails: put cargo's bin \
             directory ($CARGO_HOME/bin, usually ~/.cargo/bin) on PATH"
        );
    }
    Ok("installed bpf-linker with `cargo install`".into())
}

fn bpf_linker_works() -> bool {
    cmd::succeeds(Command::new("bpf-linker").arg("--version"))
}

fn bpf_toolchain() -> Result<String> {
    let list = cmd::output(Command::new("rustup").args(["toolchain", "list"]))
        .context("rustup is needed to build bpfbridge")?;
    if has_toolchain(&list, BPF_TOOLCHAIN) {
        return Ok(ALREADY.into());
    }
    let rustc = Path::new(BPF_TOOLCHAIN_ROOT).join("bin/rustc");
    if !rustc.exists() {
        bail!(
            "{} is missing (it comes with the rustc-web package)",
            rustc.display()
        );
    }
    cmd::run(Command::new("rustup").args([
        "toolchain",
        "link",
        BPF_TOOLCHAIN,
        BPF_TOOLCHAIN_ROOT,
    ]))?;
    Ok(format!("linked {BPF_TOOLCHAIN} to {BPF_TOOLCHAIN_ROOT}"))
}

/// True if `rustup toolchain list` output names `toolchain` (lines look like
/// `stable-x86_64-unknown-linux-gnu (active, default)` or `debian-bpf`).
fn has_toolchain(list: &str, toolchain: &str) -> bool {
    list.lines()
        .any(|line| line.split_whitespace().next() == Some(toolchain))
}

fn bpffs() -> Result<String> {
    if bpffs_mounted()? {
        return Ok(ALREADY.into());
    }
    if !Path::new(BPFFS).is_dir() {
        bail!(
            "{BPFFS} does not exist: is the kernel built with CONFIG_BPF_SYSCALL and sysfs mounted?"
        );
    }
    cmd::output(Command::new("mount").args(["-t", "bpf", "bpf", BPFFS]))?;
    if !bpffs_mounted()? {
        bail!("`mount -t bpf bpf {BPFFS}` succeeded but no bpf filesystem shows at {BPFFS}");
    }
    Ok(format!("mounted bpffs at {BPFFS}"))
}

fn cgroup2() -> Result<String> {
    match mounts()?.into_iter().find(|m| m.fstype == "cgroup2") {
        Some(m) => Ok(format!("{ALREADY}: cgroup2 at {}", m.target.display())),
        None => bail!(
            "no cgroup2 filesystem is mounted (see /proc/self/mounts); bpfbridge needs one, e.g. \
             `mount -t cgroup2 none /sys/fs/cgroup` on a machine that does not mount it itself"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_linked_toolchain() {
        let list = "stable-x86_64-unknown-linux-gnu (active, default)\nnightly-x86_64-unknown-linux-gnu\ndebian-bpf\n";
        assert!(has_toolchain(list, "debian-bpf"));
        assert!(!has_toolchain("debian-bpf-old\n", "debian-bpf"));
        assert!(!has_toolchain("", "debian-bpf"));
    }
}
