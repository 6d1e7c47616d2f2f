//! The agent of the previous map layout, for the upgrade variant of the bench's restart
//! scenario: built once from a fixed commit into target/bench/upgrade-from/ (its own
//! source tree and target dir, a few GB), and reused while that commit stays the same.

use std::{
    fs,
    io::Write as _,
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, ensure};
use bpfbridge_lab::cmd;

use crate::{cargo, repo_root, target_dir};

/// The last commit whose pinned maps have the previous layout (NAT_FLOWS v1, without the
/// per-flow counters). The next layout change moves it to the commit just before itself.
pub const COMMIT: &str = "fc87b7eae35f99d01b80a4d026c6a663c2b93bea";

/// The release `bpfbridge` of [`COMMIT`], built if it is not there yet.
pub fn build() -> Result<PathBuf> {
    let dir = target_dir().join("bench").join("upgrade-from");
    let bin = dir.join("target").join("release").join("bpfbridge");
    let stamp = dir.join("commit");
    if bin.exists() && fs::read_to_string(&stamp).ok().as_deref() == Some(COMMIT) {
        return Ok(bin);
    }
    let src = dir.join("src");
    if src.exists() {
        fs::remove_dir_all(&src).with_context(|| format!("removing {}", src.display()))?;
    }
    fs::create_dir_all(&src).with_context(|| format!("creating {}", src.display()))?;
    let archive = Command::new("git")
        .current_dir(repo_root())
        .args(["archive", "--format=tar", COMMIT])
        .output()
        .context("git archive")?;
    ensure!(
        archive.status.success(),
        "git archive {COMMIT}: {}",
        String::from_utf8_lossy(&archive.stderr)
    );
    let mut tar = Command::new("tar")
        .arg("-x")
        .arg("-C")
        .arg(&src)
        .stdin(Stdio::piped())
        .spawn()
        .context("tar")?;
    tar.stdin
        .take()
        .context("tar's stdin")?
        .write_all(&archive.stdout)
        .context("extracting the source")?;
    ensure!(tar.wait()?.success(), "tar failed extracting {COMMIT}");
    eprintln!("bench: building the agent of {COMMIT} (the previous map layout) once");
    let mut build = cargo();
    build
        .current_dir(&src)
        .args(["build", "--release", "--bin", "bpfbridge", "--target-dir"])
        .arg(dir.join("target"));
    cmd::run(&mut build)?;
    fs::write(&stamp, COMMIT).with_context(|| format!("writing {}", stamp.display()))?;
    Ok(bin)
}
