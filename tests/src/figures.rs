//! Figures for docs/reliability.md. A test that measures what the reliability report shows
//! (a repair's latency, connections lost, queries lost, frames dropped) records it here;
//! the report is rendered from these files, never written by hand.
//!
//! Each call writes `target/reliability/NAME.DATAPLANE.json`:
//! `{"name": NAME, "dataplane": "ebpf"|"iptables", "figures": {...}, "recorded_unix": SECONDS,
//! "kernel": RELEASE, "commit": DESCRIBE}`, replacing what an earlier run of the same test on
//! the same dataplane wrote. The last three let the report say which run and which kernel
//! (the verifier's counts and the latencies depend on it) its figures come from.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result};
use serde_json::{Value, json};

/// Where the figures go: `$CARGO_TARGET_DIR/reliability`, else the workspace's
/// `target/reliability`.
pub fn dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("reliability")
}

/// Records `figures` (a JSON object of named numbers, strings or lists) under `name`, for
/// this run's dataplane.
pub fn record(name: &str, figures: Value) -> Result<()> {
    let dir = dir();
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let dataplane = crate::dataplane();
    let path = dir.join(format!("{name}.{dataplane}.json"));
    let body = json!({
        "name": name,
        "dataplane": dataplane,
        "figures": figures,
        "recorded_unix": SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs(),
        "kernel": fs::read_to_string("/proc/sys/kernel/osrelease")?.trim(),
        "commit": commit(),
    });
    fs::write(&path, serde_json::to_vec_pretty(&body)?)
        .with_context(|| format!("writing {}", path.display()))
}

/// The commit the tests were built from, `-dirty` when the work tree has changes; `None`
/// outside a git checkout.
fn commit() -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")))
        .args(["describe", "--always", "--dirty", "--abbrev=12"])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}
