//! `cargo xtask test`'s full run: one cargo build of every binary and test target, then the
//! test executables run directly: all of them on the ebpf dataplane and, beside that pass, the
//! behaviour suites again on the iptables dataplane.
//!
//! Why not `cargo test`: cargo resolves features per invocation, and `cargo build --bins`,
//! `cargo test` and `cargo test -p bpfbridge-tests` each resolved the host dependencies of the
//! agent's build script differently, so each rebuilt the BPF object from scratch (`core`
//! included): minutes of a CI run each time.

use std::{
    fmt::Write as _,
    io::BufReader,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::Instant,
};

use anyhow::{Context as _, Result, bail, ensure};
use bpfbridge_lab::cmd;

use crate::reliability;
use cargo_metadata::{Message, TargetKind};

/// The integration suites about what a Docker user sees, which hold for both dataplanes.
pub const BEHAVIOUR_SUITES: &[&str] = &[
    "published_port",
    "ports",
    "isolation",
    "masquerade",
    "networks",
    "dns",
    "dns_resolver",
    "daemon",
    "bad_input",
    "fragments",
    "metrics",
    "exposure",
    "repair",
    "addresses",
    // Skipped, and says why, on the iptables dataplane: it pins no maps.
    "upgrade",
    "interfaces",
    "faults",
    "gateway_modes",
    "macvlan",
    "ipv6",
    "cni",
    "cni_containerd",
    "cni_podman",
    "cni_multinode",
    "docker",
];

/// A test executable cargo built.
struct TestBinary {
    /// `bpfbridge-tests: published_port (test)`, say.
    label: String,
    /// The target is one of the behaviour suites.
    behaviour_suite: bool,
    path: PathBuf,
    /// The package's directory, where `cargo test` runs its tests.
    dir: PathBuf,
}

impl TestBinary {
    fn command(&self) -> Command {
        let mut command = Command::new(&self.path);
        command.current_dir(&self.dir).stdin(Stdio::null());
        command
    }
}

/// Builds, then runs every test; fails if any failed, after all have run. Renders the
/// reliability report from the figures this run's tests recorded, pass or fail.
pub fn run_all() -> Result<()> {
    let started = Instant::now();
    let binaries = build()?;
    reliability::clear_figures()?;
    let built = started.elapsed();
    let suites = binaries.iter().filter(|b| b.behaviour_suite).count();
    ensure!(
        suites == BEHAVIOUR_SUITES.len(),
        "cargo built {suites} of the {} behaviour suites",
        BEHAVIOUR_SUITES.len()
    );
    // The tests mostly wait on sockets, timers and child processes, so the iptables pass runs
    // beside the ebpf one: on CI's two cores that nearly halves the test time. Each test's
    // namespaces, pins and cgroups have unique names, so the passes do not meet.
    let (ebpf_failed, iptables) = thread::scope(|scope| {
        let iptables = scope.spawn(|| iptables_pass(&binaries));
        let ebpf_failed = ebpf_pass(&binaries);
        let iptables = iptables
            .join()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("the iptables pass panicked")));
        (ebpf_failed, iptables)
    });
    let (report, iptables_failed) = iptables?;
    print!("{report}");
    reliability::render_to(&reliability::figures_dir().join("reliability.md"))?;
    // Where a CI run's time goes, for whoever has to make it shorter.
    println!(
        "test times: build {:.0} s, both passes {:.0} s",
        built.as_secs_f64(),
        (started.elapsed() - built).as_secs_f64()
    );
    let ebpf_failed = ebpf_failed?;
    if ebpf_failed.is_empty() && iptables_failed.is_empty() {
        return Ok(());
    }
    bail!(
        "failed: {}",
        ebpf_failed
            .iter()
            .map(|label| label.to_string())
            .chain(iptables_failed.iter().map(|s| format!("{s} on iptables")))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// `cargo build --bins --tests`: the binaries the tests spawn and every test target, in one
/// feature resolution.
fn build() -> Result<Vec<TestBinary>> {
    let tests_manifest = crate::repo_root().join("tests").join("Cargo.toml");
    let mut cargo = crate::cargo();
    cargo
        .args([
            "build",
            "--bins",
            "--tests",
            "--message-format=json-render-diagnostics",
        ])
        .stdout(Stdio::piped());
    let mut child = cargo
        .spawn()
        .with_context(|| format!("running {}", cmd::display(&cargo)))?;
    let stdout = child.stdout.take().context("cargo's stdout")?;
    let mut binaries = Vec::new();
    for message in Message::parse_stream(BufReader::new(stdout)) {
        let Message::CompilerArtifact(artifact) = message.context("reading cargo's messages")?
        else {
            continue;
        };
        let Some(path) = artifact.executable.filter(|_| artifact.profile.test) else {
            continue;
        };
        let manifest = artifact.manifest_path.as_std_path();
        let kind = artifact.target.kind.first().map(ToString::to_string);
        let name = &artifact.target.name;
        let behaviour_suite = manifest == tests_manifest
            && artifact.target.kind.contains(&TargetKind::Test)
            && BEHAVIOUR_SUITES.contains(&name.as_str());
        binaries.push(TestBinary {
            label: format!(
                "{}: {name} ({})",
                package_name(manifest),
                kind.as_deref().unwrap_or("?")
            ),
            behaviour_suite,
            path: path.into_std_path_buf(),
            dir: manifest.parent().unwrap_or(manifest).to_path_buf(),
        });
    }
    let status = child.wait().context("waiting for cargo build")?;
    ensure!(
        status.success(),
        "{} failed: {status}",
        cmd::display(&cargo)
    );
    Ok(binaries)
}

/// The package's directory name (`tests`, `agent`...), which is enough to tell them apart.
fn package_name(manifest: &Path) -> String {
    manifest
        .parent()
        .and_then(Path::file_name)
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Every test executable on the ebpf dataplane (the default), its output as it comes; returns
/// the ones that failed.
fn ebpf_pass(binaries: &[TestBinary]) -> Result<Vec<&str>> {
    let mut failed = Vec::new();
    for binary in binaries {
        println!("     Running {}", binary.label);
        let status = binary
            .command()
            .status()
            .with_context(|| format!("running {}", binary.path.display()))?;
        if !status.success() {
            failed.push(binary.label.as_str());
        }
    }
    Ok(failed)
}

/// The behaviour suites against the iptables dataplane with the same expectations, one at a
/// time, output captured: returns a report (each suite's summary line and what its tests left
/// out there; everything of a suite that failed) and the suites that failed.
fn iptables_pass(binaries: &[TestBinary]) -> Result<(String, Vec<&str>)> {
    let mut report = String::from("again on the iptables dataplane:\n");
    let mut failed = Vec::new();
    for binary in binaries.iter().filter(|b| b.behaviour_suite) {
        let output = binary
            .command()
            .env("BPFBRIDGE_TEST_DATAPLANE", "iptables")
            .output()
            .with_context(|| format!("running {}", binary.path.display()))?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        if !output.status.success() {
            let _ = write!(report, "{stdout}{stderr}");
            failed.push(binary.label.as_str());
            continue;
        }
        for line in stdout.lines().filter(|l| l.starts_with("test result:")) {
            let _ = writeln!(report, "  {}: {line}", binary.label);
        }
        for line in stderr
            .lines()
            .filter(|l| l.ends_with("(not on the iptables dataplane)"))
        {
            let _ = writeln!(report, "    {line}");
        }
    }
    Ok((report, failed))
}
