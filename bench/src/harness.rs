//! The run of `cargo xtask bench`: the head-to-head benchmark of the eBPF dataplane against
//! the iptables dataplane (Docker 20.10's rules) and against plain routing (`direct`).
//!
//! It builds its own lab out of network namespaces, and never touches the root namespace:
//!
//! ```text
//!                      we0 198.51.100.2 (+ .3) <-veth-> up0 198.51.100.1  node "ebpf"
//!   world (clients) <                                   agent --dataplane ebpf, bip 172.26.0.1/16
//!                      wi0 203.0.113.2   <-veth-> up0 203.0.113.1   node "iptables"
//!                                                       agent --dataplane iptables, bip 172.27.0.1/16
//! ```
//!
//! Both nodes run at once, each with a container `bench` publishing 8080->80/tcp and
//! 8082->82/udp served by `bpfbridge-loadgen serve`. The paths measured:
//! - `ebpf`: 198.51.100.2 -> 198.51.100.1:8080 (XDP translation);
//! - `iptables`: 203.0.113.2 -> 203.0.113.1:8080 (DNAT by the iptables rules);
//! - `direct`: 198.51.100.3 -> the ebpf container's own address, port 80, routed by the ebpf
//!   node with no translation (the XDP program looks the packet up and passes it on).
//!
//! With `--with-docker` a third node runs real Docker (the lab crate's `Dockerd`): world interface
//! wd0 192.0.2.2 <-veth-> up0 192.0.2.1, dockerd with bip 172.28.0.1/16, the same container
//! `bench` (`docker run -p 8080:80 -p 8082:82/udp`) and server, and the path
//! - `docker`: 192.0.2.2 -> 192.0.2.1:8080 (DNAT by dockerd's own rules).
//!
//! Both agent nodes' uplinks also carry a /64 of 2001:db8::/32; `connrate-ipv6` measures the
//! same three paths over IPv6, to a container `bench6` on a dual-stack network of each agent
//! node (published port 8086; `direct` to its IPv6 address), made when it first runs.
//!
//! Each path has its own client address (a TIME_WAIT left by one path never meets another's
//! SYN). Points are repeated and the paths interleaved within each repetition. Everything the
//! bench makes is removed by `Lab`'s `Drop` (module `lab`), also on error, panic and Ctrl-C.

use std::{
    fs,
    path::PathBuf,
    process::Command,
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Result, ensure};

use bpfbridge_lab::{catch_stop_signals, check_stop, cmd, docker, stop_requested};

use crate::{
    lab::{
        Lab, OUTSIDE_MANY, OUTSIDE_MANY_COUNT, OUTSIDE_ONE, OUTSIDE_PORT, PREFIX, PUBLISHED6_TCP,
    },
    report,
    results::{Machine, Mode, PathDescriptions, Plan, Results, SCHEMA, Sample, Scenario},
    scenarios::{self, flows},
};

/// What `cargo xtask bench` asked for.
#[derive(Clone, Debug)]
pub struct Options {
    pub quick: bool,
    pub smoke: bool,
    /// Only these scenarios (all when empty).
    pub scenarios: Vec<Scenario>,
    /// Also measure real Docker (dockerd), when docker.io is installed.
    pub with_docker: bool,
    /// Where results.json, report.md and the plots go.
    pub out_dir: PathBuf,
    /// The binaries to run, built beforehand (release ones for measurements).
    pub bins: Bins,
    /// The repository measured, for the commit in the machine facts.
    pub repo_root: PathBuf,
}

/// The binaries a bench runs.
#[derive(Clone, Debug)]
pub struct Bins {
    pub bpfbridge: PathBuf,
    pub loadgen: PathBuf,
    /// A `bpfbridge` of the previous map layout, for the restart scenario's upgrade variant
    /// (none: the variant is left out, as in smoke runs).
    pub upgrade_from: Option<PathBuf>,
}

impl Options {
    fn mode(&self) -> Mode {
        match (self.smoke, self.quick) {
            (true, _) => Mode::Smoke,
            (false, true) => Mode::Quick,
            (false, false) => Mode::Full,
        }
    }
}

impl Plan {
    fn new(mode: Mode) -> Self {
        let flood = Plan {
            flood_syns: flows::FLOOD_SYNS,
            flood_conntrack_max: flows::FLOOD_CONNTRACK_MAX,
            flood_nat_flows_max: flows::FLOOD_NAT_FLOWS_MAX,
            flood_held_connections: flows::HELD,
            ..Plan::default()
        };
        match mode {
            Mode::Smoke => Plan {
                reps: 1,
                connrate_seconds: 0.5,
                short_seconds: 0.3,
                concurrency: 4,
                other_mappings: vec![1],
                programming_n: vec![10],
                programming_budget_seconds: 10.0,
                restart_seconds: 2.0,
                egress_seconds: 1.0,
                egress_reps: 1,
                scale_flows: vec![1000],
                scale_window_seconds: 0.5,
                api_timeout_seconds: 5.0,
                flood_syns: 8192,
                ..flood
            },
            Mode::Quick => Plan {
                reps: 3,
                connrate_seconds: 3.0,
                short_seconds: 2.0,
                concurrency: 16,
                other_mappings: vec![1, 100, 1000],
                programming_n: vec![100, 1000],
                programming_budget_seconds: 60.0,
                restart_seconds: 4.0,
                egress_seconds: 10.0,
                egress_reps: 3,
                scale_flows: vec![10_000, 100_000, 262_144],
                scale_window_seconds: 3.0,
                api_timeout_seconds: 10.0,
                ..flood
            },
            Mode::Full => Plan {
                reps: 5,
                connrate_seconds: 10.0,
                short_seconds: 5.0,
                concurrency: 16,
                other_mappings: vec![1, 100, 1000, 10000],
                programming_n: vec![100, 1000, 10000],
                programming_budget_seconds: 300.0,
                restart_seconds: 6.0,
                // 30 s points, 3 repetitions: 5 would add 7 minutes per path.
                egress_seconds: 30.0,
                egress_reps: 3,
                scale_flows: vec![10_000, 100_000, 262_144],
                scale_window_seconds: 10.0,
                api_timeout_seconds: 10.0,
                ..flood
            },
        }
    }

    /// The longest the iptables dataplane may be expected to take for one programming point.
    pub(crate) fn program_budget(&self) -> Duration {
        Duration::from_secs_f64(self.programming_budget_seconds)
    }

    /// How long conntrack-scale samples the API at each point.
    pub(crate) fn scale_window(&self) -> Duration {
        Duration::from_secs_f64(self.scale_window_seconds)
    }

    /// The longest one API call may take.
    pub(crate) fn api_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.api_timeout_seconds)
    }
}

/// `cargo xtask bench` once the binaries are built: measure, write results.json and report.
pub fn run(opts: &Options) -> Result<()> {
    let started = Instant::now();
    catch_stop_signals()?;
    let mode = opts.mode();
    let plan = Plan::new(mode);
    let wanted = |s: Scenario| opts.scenarios.is_empty() || opts.scenarios.contains(&s);
    let mut samples: Vec<Sample> = Vec::new();
    let mut notes: Vec<String> = Vec::new();
    let machine = machine_facts(opts);
    let prefix = format!("{PREFIX}-{}", std::process::id());
    let with_docker = opts.with_docker && !opts.smoke && docker::available();
    if opts.with_docker && !with_docker {
        let note = match opts.smoke {
            true => "--with-docker: not in a smoke run",
            false => "--with-docker: skipped, docker.io is not installed (/usr/sbin/dockerd)",
        };
        eprintln!("bench: {note}");
        notes.push(note.to_string());
    }
    {
        let mut lab = Lab::new(&prefix, &opts.bins, with_docker)?;
        eprintln!("bench: lab {prefix} ready ({mode} mode)");
        let mut failures = Vec::new();
        for scenario in Scenario::ALL.into_iter().filter(|&s| wanted(s)) {
            let t = Instant::now();
            let before = samples.len();
            let ran = check_stop()
                .and_then(|()| scenarios::run(scenario, &mut lab, &plan, &mut samples, &mut notes));
            match ran {
                Ok(()) => eprintln!(
                    "bench: {scenario}: {} samples in {:.1} s",
                    samples.len() - before,
                    t.elapsed().as_secs_f64()
                ),
                // A failed scenario is reported and the others still run (not in smoke
                // runs, whose point is to fail loudly).
                Err(e) if mode == Mode::Smoke || stop_requested() => return Err(e),
                Err(e) => {
                    eprintln!("bench: {scenario} failed: {e:#}");
                    failures.push(format!("scenario {scenario} failed: {e:#}"));
                }
            }
        }
        notes.extend(failures);
        lab.teardown()?;
    }
    let leftovers = bpfbridge_lab::netns::names_with_prefix(&prefix)?;
    ensure!(
        leftovers.is_empty(),
        "namespaces left behind: {leftovers:?}"
    );
    let results = Results {
        schema: SCHEMA,
        mode,
        started_unix: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        duration_seconds: started.elapsed().as_secs_f64(),
        plan,
        paths: path_descriptions(
            with_docker,
            samples
                .iter()
                .any(|s| s.scenario() == Scenario::ConnrateIpv6),
        ),
        machine,
        notes,
        samples,
    };
    fs::create_dir_all(&opts.out_dir)?;
    let path = opts.out_dir.join("results.json");
    fs::write(&path, serde_json::to_string_pretty(&results)?)?;
    report::write(&results, &opts.out_dir)?;
    eprintln!(
        "bench: done in {:.0} s: {} and report.md in {}",
        started.elapsed().as_secs_f64(),
        path.display(),
        opts.out_dir.display()
    );
    Ok(())
}

fn path_descriptions(with_docker: bool, ipv6: bool) -> PathDescriptions {
    PathDescriptions {
        ebpf: "198.51.100.2 -> 198.51.100.1:8080, XDP translation".into(),
        iptables: "203.0.113.2 -> 203.0.113.1:8080, Docker 20.10 rules (DNAT)".into(),
        direct: "198.51.100.3 -> the ebpf container's address:80, routed, no translation".into(),
        docker: with_docker.then(|| {
            "192.0.2.2 -> 192.0.2.1:8080, dockerd 20.10's own rules (DNAT), --userland-proxy=false"
                .into()
        }),
        egress: format!(
            "the node's container `bench` -> outside servers in the world namespace, \
             NODE_SUBNET.{OUTSIDE_ONE}:{OUTSIDE_PORT} (egress-one) or NODE_SUBNET.{OUTSIDE_MANY}-.{}:{OUTSIDE_PORT} \
             (egress-many), through the node's masquerade (ebpf: the TC program; iptables: Docker's \
             MASQUERADE rule; docker: dockerd's)",
            OUTSIDE_MANY + OUTSIDE_MANY_COUNT - 1
        ),
        ipv6: ipv6.then(|| {
            format!(
                "connrate-ipv6: ebpf [2001:db8:1::2] -> [2001:db8:1::1]:{PUBLISHED6_TCP} (XDP \
                 translation); iptables [2001:db8:2::2] -> [2001:db8:2::1]:{PUBLISHED6_TCP} \
                 (ip6tables DNAT, Docker 27's rules); direct [2001:db8:1::3] -> the ebpf \
                 node's container `bench6` at its IPv6 address, port 80, routed; each node's \
                 container on a dual-stack network (2001:db8:26::/64 and 2001:db8:27::/64), \
                 its other mappings published on [::]"
            )
        }),
    }
}

fn machine_facts(opts: &Options) -> Machine {
    let text = |cmd: &mut Command| {
        cmd::output_timeout(cmd, Duration::from_secs(10))
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|e| format!("unknown ({e})"))
    };
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string());
    let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .map(|m| m.trim().to_string());
    let git = |args: &[&str]| {
        text(
            Command::new("git")
                .arg("-C")
                .arg(&opts.repo_root)
                .args(args),
        )
    };
    Machine {
        kernel: text(Command::new("uname").arg("-r")),
        cpus: thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        cpu_model,
        memory,
        iptables: text(Command::new("iptables").arg("--version")),
        rustc: text(Command::new("rustc").arg("--version")),
        bpfbridge: text(Command::new(&opts.bins.bpfbridge).arg("--version")),
        dockerd: docker::version(),
        git_commit: git(&["rev-parse", "HEAD"]),
        git_dirty: !git(&["status", "--porcelain", "--untracked-files=no"]).is_empty(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_grow_with_the_mode() {
        assert_eq!(Plan::new(Mode::Smoke).other_mappings, [1]);
        assert_eq!(Plan::new(Mode::Quick).other_mappings, [1, 100, 1000]);
        assert_eq!(Plan::new(Mode::Full).other_mappings.last(), Some(&10000));
        assert_eq!(Plan::new(Mode::Full).flood_syns, flows::FLOOD_SYNS);
    }
}
