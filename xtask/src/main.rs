//! bpfbridge's development tasks, run as `cargo xtask <task>` (an alias in .cargo/config.toml).

mod demo;
mod fuzz;
mod image;
mod reliability;
mod setup;
mod test_run;
mod upgrade_from;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{Context as _, Result};
use bpfbridge_bench::{self as bench, Scenario};
use bpfbridge_lab::cmd;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "Development tasks for bpfbridge (run as root)"
)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what the build and tests need (apt packages, bpf-linker, the debian-bpf rustup
    /// toolchain, bpffs); each step is skipped when already done.
    Setup,
    /// Run setup, then build the workspace's binaries (the BPF object is built by agent/build.rs).
    Build {
        /// Build with the release profile.
        #[arg(long)]
        release: bool,
    },
    /// Run setup, build the binaries the integration tests spawn, then run all tests.
    Test {
        /// Also run `cargo fmt --check` and `cargo clippy -D warnings` first.
        #[arg(long)]
        lint: bool,
        /// Extra arguments for `cargo test` (after `--`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Build in release and benchmark the ebpf dataplane against the iptables one and plain
    /// routing in a lab of network namespaces; writes target/bench/{results.json,report.md,*.png}.
    Bench {
        /// The short version (under 5 minutes).
        #[arg(long)]
        quick: bool,
        /// A tiny version (seconds) on the debug build that only checks the harness; writes
        /// target/bench-smoke.
        #[arg(long)]
        smoke: bool,
        /// Only these scenarios (programming, latency, udp, bulk, restart, egress-one, egress-many,
        /// connrate, connrate-ipv6, uplink-hook, conntrack-scale, flood).
        #[arg(long = "scenario", value_name = "NAME")]
        scenarios: Vec<Scenario>,
        /// Also measure real Docker: dockerd 20.10 (docker.io) in a namespace of its own
        /// (skipped, and said so, when docker.io is not installed; never in smoke runs).
        #[arg(long)]
        with_docker: bool,
        /// The `bpfbridge` of the previous map layout for the restart scenario's upgrade
        /// variant, instead of building the one of the commit in xtask/src/upgrade_from.rs
        /// (which quick and full runs do; smoke runs leave the variant out unless given one).
        #[arg(long, value_name = "PATH")]
        upgrade_from: Option<PathBuf>,
    },
    /// Fuzz the shared packet parser (a property test against a reference decoder) for a
    /// while; `test` runs it for a few seconds from a fixed seed.
    Fuzz {
        /// How long to run.
        #[arg(long, default_value_t = 600)]
        seconds: u64,
        /// Start from this seed (a failure prints the one that replays it); random otherwise.
        #[arg(long)]
        seed: Option<u64>,
    },
    /// Render docs/reliability.md from the figures the last test runs recorded in
    /// target/reliability (run `test`, or the tests it describes, first).
    Reliability {
        /// Where to write the report.
        #[arg(long, default_value = "docs/reliability.md")]
        out: PathBuf,
    },
    /// Write the agent's container image (bpfbridge, bpfbridge-cni and a static busybox) as
    /// an OCI tarball for `ctr images import`, `podman load` or `docker load`; builds the
    /// release binaries first unless --debug or --no-build.
    Image {
        /// Use the debug binaries of target/debug (to try the image without a release build).
        #[arg(long)]
        debug: bool,
        /// Use the binaries as they are built.
        #[arg(long)]
        no_build: bool,
        /// The image's NAME:TAG.
        #[arg(long, default_value = concat!("localhost/bpfbridge:", env!("CARGO_PKG_VERSION")))]
        tag: String,
        /// Where to write it [default: target/image/bpfbridge.tar].
        #[arg(long)]
        output: Option<PathBuf>,
    },
    /// Run setup and build, then run `bpfbridge ARGS...`, or with no ARGS the demo: an agent,
    /// a container with a published port, and a client in network namespaces of their own.
    Run {
        /// Arguments for the bpfbridge binary (after `--`), e.g. `agent --uplink eth0`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
}

fn main() -> ExitCode {
    let result = match Cli::parse().task {
        Task::Setup => setup::setup(),
        Task::Build { release } => build(release),
        Task::Test { lint, args } => test(lint, &args),
        Task::Run { args } => run(&args),
        Task::Image {
            debug,
            no_build,
            tag,
            output,
        } => image_task(debug, no_build, tag, output),
        Task::Fuzz { seconds, seed } => fuzz::run(seconds, seed),
        Task::Reliability { out } => reliability::render_to(&repo_root().join(out)),
        Task::Bench {
            quick,
            smoke,
            scenarios,
            with_docker,
            upgrade_from,
        } => bench_task(quick, smoke, scenarios, with_docker, upgrade_from),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn image_task(debug: bool, no_build: bool, tag: String, output: Option<PathBuf>) -> Result<()> {
    if !debug && !no_build {
        cargo_build(true)?;
    }
    let profile = if debug { "debug" } else { "release" };
    let spec = image::ImageSpec {
        bin_dir: target_dir().join(profile),
        busybox: image::busybox()?,
        reference: tag,
        output: output.unwrap_or_else(|| target_dir().join("image/bpfbridge.tar")),
    };
    let written = image::write_image(&spec)?;
    println!(
        "{} ({}, {profile} binaries)",
        written.display(),
        spec.reference
    );
    Ok(())
}

fn build(release: bool) -> Result<()> {
    setup::setup()?;
    cargo_build(release)
}

fn cargo_build(release: bool) -> Result<()> {
    // No --workspace: the default members are every crate but dataplane-ebpf, which only builds
    // for the BPF target (agent/build.rs builds it).
    let mut cargo = cargo();
    cargo.args(["build", "--bins"]);
    if release {
        cargo.arg("--release");
    }
    cmd::run(&mut cargo)
}

fn test(lint: bool, args: &[OsString]) -> Result<()> {
    setup::setup()?;
    if lint {
        cmd::run(cargo().args(["fmt", "--all", "--", "--check"]))?;
        cmd::run(cargo().args(["clippy", "--all-targets", "--", "-D", "warnings"]))?;
    }
    // A run narrowed by extra arguments is someone's targeted run: `cargo test` itself, after
    // the binaries the integration tests spawn (target/debug/bpfbridge, which `cargo test`
    // does not build for another package's tests); no second pass, no bench.
    if !args.is_empty() {
        cargo_build(false)?;
        return cmd::run(cargo().arg("test").args(args));
    }
    test_run::run_all()?;
    // The bench harness, tiny: it runs, reports and cleans up (BPFBRIDGE_SKIP_BENCH_SMOKE=1
    // skips it).
    if std::env::var_os("BPFBRIDGE_SKIP_BENCH_SMOKE").is_none() {
        bench_smoke()?;
    }
    Ok(())
}

fn bench_task(
    quick: bool,
    smoke: bool,
    scenarios: Vec<Scenario>,
    with_docker: bool,
    upgrade_from: Option<PathBuf>,
) -> Result<()> {
    setup::setup()?;
    let out_dir = target_dir().join(if smoke { "bench-smoke" } else { "bench" });
    let release = !smoke;
    cargo_build(release)?;
    let profile_dir = if release { "release" } else { "debug" };
    // The restart scenario's upgrade variant needs an agent of the previous map layout: a
    // build of its own, too slow for smoke runs.
    let restart = scenarios.is_empty() || scenarios.contains(&Scenario::Restart);
    let upgrade_from = match upgrade_from {
        Some(path) => Some(path),
        None if restart && !smoke => Some(upgrade_from::build()?),
        None => None,
    };
    bench::run(&bench_options(
        quick,
        smoke,
        scenarios,
        with_docker,
        out_dir,
        profile_dir,
        upgrade_from,
    ))
}

/// The bench's options, with the binaries of the build in `profile_dir` (`release` for
/// measurements; smoke runs, which only check the harness, take the debug build).
fn bench_options(
    quick: bool,
    smoke: bool,
    scenarios: Vec<Scenario>,
    with_docker: bool,
    out_dir: PathBuf,
    profile_dir: &str,
    upgrade_from: Option<PathBuf>,
) -> bench::Options {
    let bin_dir = target_dir().join(profile_dir);
    bench::Options {
        quick,
        smoke,
        scenarios,
        with_docker,
        out_dir,
        bins: bench::Bins {
            bpfbridge: bin_dir.join("bpfbridge"),
            loadgen: bin_dir.join("bpfbridge-loadgen"),
            upgrade_from,
        },
        repo_root: repo_root(),
    }
}

/// `cargo xtask bench --smoke`, checked: it ran, wrote valid JSON with samples and a report,
/// and left no namespace behind. No timing is asserted.
fn bench_smoke() -> Result<()> {
    let out_dir = target_dir().join("bench-smoke");
    let _ = std::fs::remove_dir_all(&out_dir);
    // On the debug build that the tests have just used: building anything again here would
    // resolve features anew and rebuild the BPF object.
    bench::run(&bench_options(
        true,
        true,
        vec![],
        false,
        out_dir.clone(),
        "debug",
        None,
    ))?;
    let text = std::fs::read_to_string(out_dir.join("results.json"))?;
    let results: bench::Results = serde_json::from_str(&text).context("results.json")?;
    let samples = results.samples.len();
    anyhow::ensure!(samples > 0, "the smoke bench recorded no sample");
    let report = std::fs::read_to_string(out_dir.join("report.md"))?;
    anyhow::ensure!(report.contains("## Targets"), "report.md is incomplete");
    let left = bpfbridge_lab::netns::names_with_prefix(bench::PREFIX)?;
    anyhow::ensure!(left.is_empty(), "the bench left namespaces: {left:?}");
    println!("bench smoke: ok ({samples} samples, report.md written, no namespace left)");
    Ok(())
}

fn run(args: &[OsString]) -> Result<()> {
    setup::setup()?;
    cargo_build(false)?;
    let bpfbridge = target_dir().join("debug").join("bpfbridge");
    if args.is_empty() {
        demo::run(&bpfbridge)
    } else {
        Err(cmd::exec(Command::new(&bpfbridge).args(args)))
    }
}

/// A `cargo` command run from the repository root, using the same cargo that runs xtask.
pub fn cargo() -> Command {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command.current_dir(repo_root());
    command
}

/// The workspace root: xtask lives one level below it.
pub fn repo_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().unwrap_or(manifest_dir).to_path_buf()
}

pub fn target_dir() -> PathBuf {
    // Joining an absolute CARGO_TARGET_DIR replaces the root, as cargo does.
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => repo_root().join(dir),
        _ => repo_root().join("target"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Task {
        Cli::try_parse_from(std::iter::once("xtask").chain(args.iter().copied()))
            .unwrap()
            .task
    }

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn forwards_arguments_after_double_dash() {
        let Task::Run { args } = parse(&["run", "--", "agent", "--uplink", "eth0"]) else {
            panic!("not run");
        };
        assert_eq!(args, ["agent", "--uplink", "eth0"]);

        let Task::Test { lint, args } = parse(&["test", "--", "-p", "agent", "--", "--nocapture"])
        else {
            panic!("not test");
        };
        assert!(!lint);
        assert_eq!(args, ["-p", "agent", "--", "--nocapture"]);

        let Task::Test { lint, args } = parse(&["test", "--lint"]) else {
            panic!("not test");
        };
        assert!(lint);
        assert!(args.is_empty());

        let Task::Run { args } = parse(&["run"]) else {
            panic!("not run");
        };
        assert!(args.is_empty());
    }
}
