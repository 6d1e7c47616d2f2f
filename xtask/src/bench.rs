//! `cargo xtask bench`: the head-to-head benchmark of the eBPF dataplane against the iptables
//! dataplane (Docker 20.10's rules) and against plain routing (`direct`).
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
//! With `--with-docker` a third node runs real Docker ([`bench_docker`]): world interface
//! wd0 192.0.2.2 <-veth-> up0 192.0.2.1, dockerd with bip 172.28.0.1/16, the same container
//! `bench` (`docker run -p 8080:80 -p 8082:82/udp`) and server, and the path
//! - `docker`: 192.0.2.2 -> 192.0.2.1:8080 (DNAT by dockerd's own rules).
//!
//! Each path has its own client address (a TIME_WAIT left by one path never meets another's
//! SYN). Points are repeated and the paths interleaved within each repetition. Everything the
//! bench makes is removed by [`Lab`]'s `Drop`, also on error, panic and Ctrl-C.

use std::{
    fs,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{Ipv4Addr, SocketAddrV4, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result, bail, ensure};
use nix::sys::signal::{self, SaFlags, SigAction, SigHandler, SigSet, Signal};
use serde_json::{Value, json};

use crate::{bench_docker::Dockerd, bench_report, cmd};

mod flows;
use flows::{conntrack_scale, egress, flood};

/// Everything the bench makes is named `bpfb-bench-PID-...`.
pub const PREFIX: &str = "bpfb-bench";
const WORLD_EBPF_IF: &str = "we0";
const WORLD_IPT_IF: &str = "wi0";
const WORLD_DOCKER_IF: &str = "wd0";
const UPLINK: &str = "up0";
const BENCH_TCP: u16 = 80;
const BENCH_UDP: u16 = 82;
const PUBLISHED_TCP: u16 = 8080;
const PUBLISHED_UDP: u16 = 8082;
/// Host ports of the "other" mappings (conn-rate) and of the programming scenario.
const FILL_BASE: u16 = 20000;
const PROGRAM_BASE: u16 = 40000;
/// The outside servers of the egress scenarios: addresses of the world namespace inside each
/// node's uplink subnet (the host part below), all served by one `bpfbridge-loadgen serve`
/// on this port. Containers reach them only through their node's masquerade: the world has
/// no route to the iptables and docker nodes' container subnets, and the server checks the
/// source it sees ([`Lab::check_masquerade`]).
const OUTSIDE_PORT: u16 = 9000;
/// The one server of `egress-one`.
const OUTSIDE_ONE: u8 = 10;
/// The address the masquerade check talks to: no load goes there, so egress-one's closing
/// flows never leave it without a source port.
const OUTSIDE_CHECK: u8 = 11;
/// The first of the servers of `egress-many` (.64 to .127).
const OUTSIDE_MANY: u8 = 64;
const OUTSIDE_MANY_COUNT: u8 = 64;
/// Destination ports of conntrack-scale's UDP flows, on each of the egress-many addresses:
/// 64 x 16 destinations, so that no one destination's masquerade ports run short.
const FLOW_PORT: u16 = 10000;
const FLOW_PORTS: u16 = 16;
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn catch_stop_signals() -> Result<()> {
    let action = SigAction::new(
        SigHandler::Handler(on_stop_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic.
        unsafe { signal::sigaction(sig, &action) }.context("installing a signal handler")?;
    }
    Ok(())
}

fn check_stop() -> Result<()> {
    ensure!(!STOP.load(Ordering::SeqCst), "interrupted");
    Ok(())
}

/// The scenarios, in the order they run.
/// `restart` comes before `connrate`, whose other mappings (in iptables mode loaded behind
/// the agent's back) a restarted iptables agent would first remove, one rule at a time.
/// The egress scenarios come before `connrate` too, so that they run without its mappings;
/// `conntrack-scale` and `flood` come last: they restart the ebpf agent on tables of their
/// own size.
pub const SCENARIOS: [&str; 10] = [
    "programming",
    "latency",
    "udp",
    "bulk",
    "restart",
    "egress-one",
    "egress-many",
    "connrate",
    "conntrack-scale",
    "flood",
];

#[derive(Clone, Debug)]
pub struct Options {
    pub quick: bool,
    pub smoke: bool,
    pub scenarios: Vec<String>,
    /// Also measure real Docker (dockerd), when docker.io is installed.
    pub with_docker: bool,
    /// Where results.json, report.md and the plots go.
    pub out_dir: PathBuf,
}

/// How much of everything to do.
#[derive(Clone, Debug)]
struct Plan {
    mode: &'static str,
    reps: usize,
    /// Seconds per conn-rate point.
    connrate_seconds: f64,
    /// Seconds per latency, UDP and bulk point.
    short_seconds: f64,
    concurrency: usize,
    fill: Vec<usize>,
    program: Vec<usize>,
    /// The longest the iptables dataplane may be expected to take for one programming point.
    program_budget: Duration,
    restart_seconds: f64,
    /// Seconds and repetitions per egress point.
    egress_seconds: f64,
    egress_reps: usize,
    /// conntrack-scale: the flow counts, how long the API is sampled at each, and the
    /// longest one API call may take.
    scale_flows: Vec<u64>,
    scale_window: Duration,
    api_timeout: Duration,
    /// SYNs of the flood scenario.
    flood_syns: u64,
}

impl Plan {
    fn new(opts: &Options) -> Self {
        if opts.smoke {
            Plan {
                mode: "smoke",
                reps: 1,
                connrate_seconds: 0.5,
                short_seconds: 0.3,
                concurrency: 4,
                fill: vec![1],
                program: vec![10],
                program_budget: Duration::from_secs(10),
                restart_seconds: 2.0,
                egress_seconds: 1.0,
                egress_reps: 1,
                scale_flows: vec![1000],
                scale_window: Duration::from_millis(500),
                api_timeout: Duration::from_secs(5),
                flood_syns: 8192,
            }
        } else if opts.quick {
            Plan {
                mode: "quick",
                reps: 3,
                connrate_seconds: 3.0,
                short_seconds: 2.0,
                concurrency: 16,
                fill: vec![1, 100, 1000],
                program: vec![100, 1000],
                program_budget: Duration::from_secs(60),
                restart_seconds: 4.0,
                egress_seconds: 10.0,
                egress_reps: 3,
                scale_flows: vec![10_000, 100_000, 262_144],
                scale_window: Duration::from_secs(3),
                api_timeout: Duration::from_secs(10),
                flood_syns: flows::FLOOD_SYNS,
            }
        } else {
            Plan {
                mode: "full",
                reps: 5,
                connrate_seconds: 10.0,
                short_seconds: 5.0,
                concurrency: 16,
                fill: vec![1, 100, 1000, 10000],
                program: vec![100, 1000, 10000],
                program_budget: Duration::from_secs(300),
                restart_seconds: 6.0,
                // 30 s points, 3 repetitions: 5 would add 7 minutes per path.
                egress_seconds: 30.0,
                egress_reps: 3,
                scale_flows: vec![10_000, 100_000, 262_144],
                scale_window: Duration::from_secs(10),
                api_timeout: Duration::from_secs(10),
                flood_syns: flows::FLOOD_SYNS,
            }
        }
    }
}

/// `cargo xtask bench`: build, measure, report.
pub fn run(opts: &Options) -> Result<()> {
    for s in &opts.scenarios {
        ensure!(
            SCENARIOS.contains(&s.as_str()),
            "unknown scenario {s:?} (one of {})",
            SCENARIOS.join(", ")
        );
    }
    let started = Instant::now();
    cmd::run(crate::cargo().args(["build", "--release", "--bins"]))?;
    let release = crate::target_dir().join("release");
    let bins = Bins {
        bpfbridge: release.join("bpfbridge"),
        loadgen: release.join("bpfbridge-loadgen"),
    };
    catch_stop_signals()?;
    let plan = Plan::new(opts);
    let wanted = |s: &str| opts.scenarios.is_empty() || opts.scenarios.iter().any(|w| w == s);
    let mut samples: Vec<Value> = Vec::new();
    let mut notes: Vec<String> = Vec::new();
    let facts = machine_facts(&bins);
    let prefix = format!("{PREFIX}-{}", std::process::id());
    let with_docker = opts.with_docker && !opts.smoke && crate::bench_docker::available();
    if opts.with_docker && !with_docker {
        let note = match opts.smoke {
            true => "--with-docker: not in a smoke run",
            false => "--with-docker: skipped, docker.io is not installed (/usr/sbin/dockerd)",
        };
        eprintln!("bench: {note}");
        notes.push(note.to_string());
    }
    {
        let mut lab = Lab::new(&prefix, &bins, with_docker)?;
        eprintln!("bench: lab {prefix} ready ({} mode)", plan.mode);
        let mut run_one = |name: &str, lab: &mut Lab, samples: &mut Vec<Value>| -> Result<()> {
            if !wanted(name) {
                return Ok(());
            }
            check_stop()?;
            let t = Instant::now();
            let before = samples.len();
            match name {
                "programming" => programming(lab, &plan, samples, &mut notes)?,
                "latency" => latency(lab, &plan, samples)?,
                "udp" => udp(lab, &plan, samples)?,
                "bulk" => bulk(lab, &plan, samples)?,
                "connrate" => connrate(lab, &plan, samples)?,
                "restart" => restart(lab, &plan, samples)?,
                "egress-one" => egress(lab, &plan, samples, "egress-one", 1)?,
                "egress-many" => egress(lab, &plan, samples, "egress-many", OUTSIDE_MANY_COUNT)?,
                "conntrack-scale" => conntrack_scale(lab, &plan, samples, &mut notes)?,
                "flood" => flood(lab, &plan, samples)?,
                _ => unreachable!(),
            }
            eprintln!(
                "bench: {name}: {} samples in {:.1} s",
                samples.len() - before,
                t.elapsed().as_secs_f64()
            );
            Ok(())
        };
        let mut failures = Vec::new();
        for name in SCENARIOS {
            // A failed scenario is reported and the others still run (not in smoke runs,
            // whose point is to fail loudly).
            if let Err(e) = run_one(name, &mut lab, &mut samples) {
                if plan.mode == "smoke" || STOP.load(Ordering::SeqCst) {
                    return Err(e);
                }
                eprintln!("bench: {name} failed: {e:#}");
                failures.push(format!("scenario {name} failed: {e:#}"));
            }
        }
        notes.extend(failures);
        lab.teardown()?;
    }
    let leftovers = leftover_namespaces(&prefix)?;
    ensure!(
        leftovers.is_empty(),
        "namespaces left behind: {leftovers:?}"
    );
    let results = json!({
        "schema": 1,
        "mode": plan.mode,
        "started_unix": SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        "duration_seconds": started.elapsed().as_secs_f64(),
        "plan": {
            "reps": plan.reps,
            "connrate_seconds": plan.connrate_seconds,
            "short_seconds": plan.short_seconds,
            "concurrency": plan.concurrency,
            "other_mappings": plan.fill,
            "programming_n": plan.program,
            "restart_seconds": plan.restart_seconds,
            "egress_seconds": plan.egress_seconds,
            "egress_reps": plan.egress_reps,
            "scale_flows": plan.scale_flows,
            "scale_window_seconds": plan.scale_window.as_secs_f64(),
            "api_timeout_seconds": plan.api_timeout.as_secs_f64(),
            "flood_syns": plan.flood_syns,
            "flood_conntrack_max": flows::FLOOD_CONNTRACK_MAX,
            "flood_nat_flows_max": flows::FLOOD_NAT_FLOWS_MAX,
            "flood_held_connections": flows::HELD,
        },
        "paths": {
            "ebpf": "198.51.100.2 -> 198.51.100.1:8080, XDP translation",
            "iptables": "203.0.113.2 -> 203.0.113.1:8080, Docker 20.10 rules (DNAT)",
            "direct": "198.51.100.3 -> the ebpf container's address:80, routed, no translation",
            "docker": with_docker.then_some(
                "192.0.2.2 -> 192.0.2.1:8080, dockerd 20.10's own rules (DNAT), --userland-proxy=false"
            ),
            "egress": format!(
                "the node's container `bench` -> outside servers in the world namespace, \
                 NODE_SUBNET.{OUTSIDE_ONE}:{OUTSIDE_PORT} (egress-one) or NODE_SUBNET.{OUTSIDE_MANY}-.{}:{OUTSIDE_PORT} \
                 (egress-many), through the node's masquerade (ebpf: the TC program; iptables: Docker's \
                 MASQUERADE rule; docker: dockerd's)",
                OUTSIDE_MANY + OUTSIDE_MANY_COUNT - 1
            ),
        },
        "machine": facts,
        "notes": notes,
        "samples": samples,
    });
    fs::create_dir_all(&opts.out_dir)?;
    let path = opts.out_dir.join("results.json");
    fs::write(&path, serde_json::to_string_pretty(&results)?)?;
    bench_report::write(&results, &opts.out_dir)?;
    eprintln!(
        "bench: done in {:.0} s: {} and report.md in {}",
        started.elapsed().as_secs_f64(),
        path.display(),
        opts.out_dir.display()
    );
    Ok(())
}

/// Network namespaces whose name starts with `prefix`.
pub fn leftover_namespaces(prefix: &str) -> Result<Vec<String>> {
    let out = cmd::output(Command::new("ip").args(["netns", "list"]))?;
    Ok(out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(prefix))
        .map(String::from)
        .collect())
}

struct Bins {
    bpfbridge: PathBuf,
    loadgen: PathBuf,
}

fn machine_facts(bins: &Bins) -> Value {
    let text = |cmd: &mut Command| {
        cmd::output_timeout(cmd, Duration::from_secs(10))
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|e| format!("unknown ({e})"))
    };
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string());
    let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .map(|m| m.trim().to_string());
    let root = crate::repo_root();
    json!({
        "kernel": text(Command::new("uname").arg("-r")),
        "cpus": thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu_model": model,
        "memory": mem,
        "iptables": text(Command::new("iptables").arg("--version")),
        "rustc": text(Command::new("rustc").arg("--version")),
        "bpfbridge": text(Command::new(&bins.bpfbridge).arg("--version")),
        "dockerd": crate::bench_docker::version(),
        "git_commit": text(Command::new("git").arg("-C").arg(&root).args(["rev-parse", "HEAD"])),
        "git_dirty": !text(Command::new("git").arg("-C").arg(&root).args(["status", "--porcelain", "--untracked-files=no"])).is_empty(),
    })
}

/// Busy and total CPU time of the whole machine (/proc/stat, in USER_HZ ticks).
fn cpu_ticks() -> (u64, u64) {
    let stat = fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return (0, 0);
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|w| w.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 { hz as f64 } else { 100.0 }
}

/// Runs `f` on a thread that entered the network namespace at `path`.
fn in_netns<T: Send>(path: &Path, f: impl FnOnce() -> T + Send) -> Result<T> {
    thread::scope(|scope| {
        scope
            .spawn(|| -> Result<T> {
                let file = fs::File::open(path)?;
                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)?;
                Ok(f())
            })
            .join()
            .map_err(|_| anyhow::anyhow!("thread in {} panicked", path.display()))?
    })
}

fn netns_path(name: &str) -> PathBuf {
    PathBuf::from("/run/netns").join(name)
}

/// One node: a namespace with an agent (or dockerd) and its private directories.
struct Node {
    /// `ebpf` or `iptables` (agents), or `docker`.
    dataplane: &'static str,
    netns: String,
    node_ip: Ipv4Addr,
    client_ip: Ipv4Addr,
    bip: &'static str,
    dir: PathBuf,
    pin_dir: PathBuf,
    cgroup: PathBuf,
    agent: Option<Child>,
    /// Agent flags of the scenario running, on top of the bench's.
    agent_args: Vec<String>,
    dockerd: Option<Dockerd>,
    /// The measured container: its address and namespace, and its server.
    bench_ip: Option<Ipv4Addr>,
    bench_netns: Option<PathBuf>,
    server: Option<Child>,
    /// The "other" mappings installed so far, and the containers holding them.
    filled: usize,
    fills: Vec<String>,
}

impl Node {
    fn socket(&self) -> PathBuf {
        self.dir.join("bpfbridge.sock")
    }

    /// An address of the world namespace in this node's uplink subnet.
    fn outside(&self, host: u8) -> Ipv4Addr {
        let [a, b, c, _] = self.node_ip.octets();
        Ipv4Addr::new(a, b, c, host)
    }

    fn netns_dir(&self) -> PathBuf {
        self.dir.join("netns")
    }

    fn cli(&self, bins: &Bins, args: &[&str], timeout: Duration) -> Result<String> {
        cmd::output_timeout(
            Command::new(&bins.bpfbridge)
                .arg("--socket")
                .arg(self.socket())
                .args(args),
            timeout,
        )
    }

    fn start_agent(&mut self, bins: &Bins) -> Result<()> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("agent.log"))?;
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net={}", netns_path(&self.netns).display()))
            .arg(&bins.bpfbridge)
            .arg("--socket")
            .arg(self.socket())
            .args(["agent", "--uplink", UPLINK, "--dataplane", self.dataplane])
            // Masquerade stays on (the default), as users run it: egress needs it.
            .args(["--bip", self.bip, "--state-dir"])
            .arg(self.dir.join("state"))
            .arg("--pin-dir")
            .arg(&self.pin_dir)
            .arg("--netns-dir")
            .arg(self.netns_dir())
            .arg("--cgroup")
            .arg(&self.cgroup)
            .args(&self.agent_args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = cmd::spawn(&mut command)?;
        // nsenter execs the agent: same process.
        fs::write(self.cgroup.join("cgroup.procs"), child.id().to_string())?;
        self.agent = Some(child);
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if self.cli(bins, &["info"], Duration::from_secs(5)).is_ok() {
                return Ok(());
            }
            if let Some(status) = self
                .agent
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!(
                    "{} agent exited with {status}: {}",
                    self.dataplane,
                    fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
                );
            }
            ensure!(
                Instant::now() < deadline,
                "{} agent not ready",
                self.dataplane
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts what serves this node: dockerd on the docker node, else the agent.
    fn start(&mut self, bins: &Bins) -> Result<()> {
        match self.dataplane {
            "docker" => {
                self.dockerd = Some(Dockerd::start(
                    &netns_path(&self.netns),
                    &self.dir.join("docker"),
                    self.bip,
                )?);
                Ok(())
            }
            _ => self.start_agent(bins),
        }
    }

    fn stop_agent(&mut self) {
        if let Some(child) = self.agent.take() {
            stop_child(child);
        }
    }

    /// Creates a container publishing `ports` (`-p` values), through the agent's API or
    /// dockerd; returns its address and network namespace.
    fn create_container(
        &self,
        bins: &Bins,
        name: &str,
        ports: &[String],
        timeout: Duration,
    ) -> Result<(Ipv4Addr, PathBuf)> {
        if let Some(dockerd) = &self.dockerd {
            dockerd.run(name, ports, timeout)?;
            return dockerd.inspect(name);
        }
        let mut args = vec!["container", "create", name];
        for p in ports {
            args.extend(["-p", p.as_str()]);
        }
        let out = self.cli(bins, &args, timeout)?;
        let json: Value = serde_json::from_str(&out).context("container create output")?;
        let ip: Ipv4Addr = json["NetworkSettings"]["IPAddress"]
            .as_str()
            .context("IPAddress")?
            .parse()?;
        let netns = json["NetworkSettings"]["SandboxKey"]
            .as_str()
            .context("SandboxKey")?;
        Ok((ip, netns.into()))
    }

    fn remove_container(&self, bins: &Bins, name: &str, timeout: Duration) -> Result<()> {
        match &self.dockerd {
            Some(dockerd) => dockerd.rm(name, timeout),
            None => self
                .cli(bins, &["container", "rm", name], timeout)
                .map(drop),
        }
    }
}

/// SIGTERM, a grace period of 5 s, then SIGKILL.
fn stop_child(child: Child) {
    stop_child_within(child, Duration::from_secs(5));
}

/// SIGTERM, a grace period, then SIGKILL.
pub fn stop_child_within(mut child: Child, grace: Duration) {
    let _ = signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        Signal::SIGTERM,
    );
    let deadline = Instant::now() + grace;
    while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// The bench's namespaces, agents, containers and servers.
struct Lab {
    prefix: String,
    bins: Bins,
    world: String,
    /// Every namespace this lab added, deleted on teardown.
    namespaces: Vec<String>,
    nodes: Vec<Node>,
    /// The server of the egress scenarios, in the world namespace.
    outside_server: Option<Child>,
    _dir: tempfile::TempDir,
    pin: bool,
}

const EBPF: usize = 0;
const IPTABLES: usize = 1;

impl Lab {
    fn new(prefix: &str, bins: &Bins, with_docker: bool) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("bpfb-bench-").tempdir()?;
        let cgroot = crate::setup::cgroup2_mount()?;
        let node = |dataplane: &'static str, short: &str, node_ip, client_ip, bip| {
            let name = format!("{prefix}-{short}");
            Node {
                dataplane,
                netns: name.clone(),
                node_ip,
                client_ip,
                bip,
                dir: dir.path().join(short),
                pin_dir: PathBuf::from("/sys/fs/bpf").join(&name),
                cgroup: cgroot.join(&name),
                agent: None,
                agent_args: Vec::new(),
                dockerd: None,
                bench_ip: None,
                bench_netns: None,
                server: None,
                filled: 0,
                fills: Vec::new(),
            }
        };
        let mut nodes = vec![
            node(
                "ebpf",
                "ebpf",
                Ipv4Addr::new(198, 51, 100, 1),
                Ipv4Addr::new(198, 51, 100, 2),
                "172.26.0.1/16",
            ),
            node(
                "iptables",
                "ipt",
                Ipv4Addr::new(203, 0, 113, 1),
                Ipv4Addr::new(203, 0, 113, 2),
                "172.27.0.1/16",
            ),
        ];
        if with_docker {
            nodes.push(node(
                "docker",
                "dock",
                Ipv4Addr::new(192, 0, 2, 1),
                Ipv4Addr::new(192, 0, 2, 2),
                "172.28.0.1/16",
            ));
        }
        let mut lab = Lab {
            prefix: prefix.to_string(),
            bins: Bins {
                bpfbridge: bins.bpfbridge.clone(),
                loadgen: bins.loadgen.clone(),
            },
            world: format!("{prefix}-world"),
            namespaces: Vec::new(),
            nodes,
            outside_server: None,
            _dir: dir,
            pin: thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
                >= 2,
        };
        lab.build()?;
        Ok(lab)
    }

    /// The paths measured: every node's published port, and `direct`.
    fn paths(&self) -> Vec<&'static str> {
        let mut paths = vec!["ebpf", "iptables", "direct"];
        paths.extend(self.nodes.iter().skip(2).map(|n| n.dataplane));
        paths
    }

    fn add_netns(&mut self, name: &str) -> Result<()> {
        ensure!(
            !netns_path(name).exists(),
            "namespace {name} exists already"
        );
        cmd::output(Command::new("ip").args(["netns", "add", name]))?;
        self.namespaces.push(name.to_string());
        ip(name, &["link", "set", "lo", "up"])
    }

    fn build(&mut self) -> Result<()> {
        let world = self.world.clone();
        self.add_netns(&world)?;
        // Clients use many ports; this is the world namespace's own setting.
        nsexec(
            &world,
            "sysctl",
            &["-qw", "net.ipv4.ip_local_port_range=1024 65000"],
        )?;
        let world_ifs = [WORLD_EBPF_IF, WORLD_IPT_IF, WORLD_DOCKER_IF];
        for (i, world_if) in world_ifs.into_iter().enumerate().take(self.nodes.len()) {
            let (netns, node_ip, client_ip) = {
                let n = &self.nodes[i];
                (n.netns.clone(), n.node_ip, n.client_ip)
            };
            self.add_netns(&netns)?;
            ip(
                &netns,
                &[
                    "link", "add", UPLINK, "type", "veth", "peer", "name", world_if, "netns",
                    &world,
                ],
            )?;
            ip(
                &netns,
                &["addr", "add", &format!("{node_ip}/24"), "dev", UPLINK],
            )?;
            ip(&netns, &["link", "set", UPLINK, "up"])?;
            ip(
                &world,
                &["addr", "add", &format!("{client_ip}/24"), "dev", world_if],
            )?;
            ip(&world, &["link", "set", world_if, "up"])?;
            // The world side plays remote hosts whose frames carry complete checksums.
            nsexec(&world, "ethtool", &["-K", world_if, "tx", "off"])?;
            // The outside servers, and the node's default route to them, as on a real node.
            let outside: String = [OUTSIDE_ONE, OUTSIDE_CHECK]
                .into_iter()
                .chain(OUTSIDE_MANY..OUTSIDE_MANY + OUTSIDE_MANY_COUNT)
                .map(|host| {
                    format!(
                        "addr add {}/32 dev {world_if}\n",
                        self.nodes[i].outside(host)
                    )
                })
                .collect();
            ip_batch(&world, &outside)?;
            ip(
                &netns,
                &["route", "add", "default", "via", &client_ip.to_string()],
            )?;
            let n = &mut self.nodes[i];
            fs::create_dir_all(&n.dir)?;
            if n.dataplane != "docker" {
                fs::create_dir(&n.cgroup)
                    .with_context(|| format!("creating cgroup {}", n.cgroup.display()))?;
            }
        }
        // The direct path's own client address, and its route to the ebpf node's containers.
        ip(
            &world,
            &["addr", "add", "198.51.100.3/24", "dev", WORLD_EBPF_IF],
        )?;
        ip(
            &world,
            &["route", "add", "172.26.0.0/16", "via", "198.51.100.1"],
        )?;
        for i in 0..self.nodes.len() {
            self.nodes[i].start(&self.bins)?;
            self.create_bench(i)?;
        }
        self.outside_server = Some(self.start_server(&netns_path(&world), OUTSIDE_PORT, None)?);
        Ok(())
    }

    fn taskset(&self, cpu: u32) -> Vec<String> {
        match self.pin {
            true => vec!["taskset".into(), "-c".into(), cpu.to_string()],
            false => vec![],
        }
    }

    /// (Re)creates the measured container `bench` on node `i`, last (so that its rules come
    /// after every other mapping's), and starts its server.
    fn create_bench(&mut self, i: usize) -> Result<()> {
        let bins = &self.bins;
        let node = &mut self.nodes[i];
        if let Some(server) = node.server.take() {
            stop_child(server);
        }
        if node.bench_ip.take().is_some() {
            node.remove_container(bins, "bench", COMMAND_TIMEOUT)?;
        }
        let (ip, netns) = node.create_container(
            bins,
            "bench",
            &[
                format!("{PUBLISHED_TCP}:{BENCH_TCP}"),
                format!("{PUBLISHED_UDP}:{BENCH_UDP}/udp"),
            ],
            COMMAND_TIMEOUT,
        )?;
        node.bench_ip = Some(ip);
        node.bench_netns = Some(netns.clone());
        let server = self.start_server(&netns, BENCH_TCP, Some(BENCH_UDP))?;
        self.nodes[i].server = Some(server);
        Ok(())
    }

    /// `bpfbridge-loadgen serve` in a namespace, pinned to CPU 1; returns once it listens.
    fn start_server(&self, netns: &Path, tcp: u16, udp: Option<u16>) -> Result<Child> {
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net={}", netns.display()))
            .args(self.taskset(1))
            .arg(&self.bins.loadgen)
            // The loadgen's longest: a full run with Docker nears half an hour.
            .args(["serve", "--tcp", &tcp.to_string(), "--seconds", "3600"]);
        if let Some(udp) = udp {
            command.args(["--udp", &udp.to_string()]);
        }
        let mut child = cmd::spawn(
            command
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit()),
        )?;
        let stdout = child.stdout.take().context("server stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        if !line.contains("listening") {
            let _ = child.kill();
            let _ = child.wait();
            bail!("the server in {} did not start", netns.display());
        }
        Ok(child)
    }

    /// Runs `bpfbridge-loadgen ARGS` in the world namespace, pinned to CPU 0, and parses its
    /// JSON line.
    fn client(&self, args: &[String], seconds: f64) -> Result<Value> {
        self.client_runner().run(args, seconds)
    }

    fn client_runner(&self) -> ClientRunner {
        self.runner_in(&netns_path(&self.world))
    }

    /// The load generator in another namespace (a container's), pinned to CPU 0 likewise.
    fn runner_in(&self, netns: &Path) -> ClientRunner {
        ClientRunner {
            netns: netns.to_path_buf(),
            loadgen: self.bins.loadgen.clone(),
            taskset: self.taskset(0),
        }
    }

    /// The client address and target of a path.
    fn path(&self, path: &str, tcp: bool) -> (Ipv4Addr, SocketAddrV4) {
        let port = |published: bool| match (published, tcp) {
            (true, true) => PUBLISHED_TCP,
            (true, false) => PUBLISHED_UDP,
            (false, true) => BENCH_TCP,
            (false, false) => BENCH_UDP,
        };
        match path {
            "direct" => (
                Ipv4Addr::new(198, 51, 100, 3),
                SocketAddrV4::new(
                    self.nodes[EBPF].bench_ip.unwrap_or(Ipv4Addr::UNSPECIFIED),
                    port(false),
                ),
            ),
            _ => {
                let n = &self.nodes[self.path_node(path)];
                (n.client_ip, SocketAddrV4::new(n.node_ip, port(true)))
            }
        }
    }

    /// The node whose container a path reaches (direct goes to the ebpf node's).
    fn path_node(&self, path: &str) -> usize {
        self.nodes
            .iter()
            .position(|n| n.dataplane == path)
            .unwrap_or(EBPF)
    }

    /// Brings node `i` to `n` other published mappings (never fewer than it has).
    fn fill(&mut self, i: usize, n: usize) -> Result<()> {
        let have = self.nodes[i].filled;
        if n <= have {
            return Ok(());
        }
        let (first, last) = (FILL_BASE as usize + have, FILL_BASE as usize + n - 1);
        let name = format!("fill{n}");
        let node = &self.nodes[i];
        match node.dataplane {
            // Through the agent's API, one container holding the range.
            "ebpf" => {
                node.create_container(
                    &self.bins,
                    &name,
                    &[format!("{first}-{last}:{first}-{last}")],
                    Duration::from_secs(600),
                )?;
            }
            // The same rules the iptables dataplane (or dockerd) writes for each port, loaded
            // by one iptables-restore: one rule at a time takes what the programming
            // scenario measures.
            _ => {
                let (ip, _) = node.create_container(&self.bins, &name, &[], COMMAND_TIMEOUT)?;
                let rules = fill_rules(node.dataplane, ip, first..=last);
                cmd::run_with_input(
                    Command::new("nsenter")
                        .arg(format!("--net={}", netns_path(&node.netns).display()))
                        .args(["iptables-restore", "-w", "--noflush"]),
                    &rules,
                )?;
            }
        }
        let node = &mut self.nodes[i];
        node.filled = n;
        node.fills.push(name);
        // The measured mapping goes last again.
        self.create_bench(i)
    }

    fn teardown(&mut self) -> Result<()> {
        let mut errors = Vec::new();
        if let Some(server) = self.outside_server.take() {
            stop_child(server);
        }
        for node in &mut self.nodes {
            if let Some(server) = node.server.take() {
                stop_child(server);
            }
            node.stop_agent();
            if let Some(mut dockerd) = node.dockerd.take()
                && let Err(e) = dockerd.stop()
            {
                errors.push(format!("{e:#}"));
            }
            if node.pin_dir.exists()
                && let Err(e) = fs::remove_dir_all(&node.pin_dir)
            {
                errors.push(format!("removing {}: {e}", node.pin_dir.display()));
            }
            if let Ok(entries) = fs::read_dir(node.netns_dir()) {
                for entry in entries.flatten() {
                    let _ = nix::mount::umount2(&entry.path(), nix::mount::MntFlags::MNT_DETACH);
                    let _ = fs::remove_file(entry.path());
                }
            }
            if node.cgroup.exists()
                && let Err(e) = fs::remove_dir(&node.cgroup)
            {
                errors.push(format!("removing {}: {e}", node.cgroup.display()));
            }
        }
        for name in self.namespaces.drain(..).rev() {
            if let Err(e) = cmd::output(Command::new("ip").args(["netns", "del", &name])) {
                errors.push(format!("{e:#}"));
            }
        }
        ensure!(errors.is_empty(), "teardown: {}", errors.join("; "));
        Ok(())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            eprintln!("bench: {} {e:#}", self.prefix);
        }
    }
}

/// The rules of TCP ports `ports` published to the same container port of a container at
/// `ip`, in iptables-restore form, as the `dataplane` node writes them: the iptables
/// dataplane with its userland proxy (DNAT `! -i BRIDGE`), dockerd with
/// `--userland-proxy=false` (DNAT from the bridge too).
fn fill_rules(dataplane: &str, ip: Ipv4Addr, ports: std::ops::RangeInclusive<usize>) -> String {
    let (bridge, dnat_from) = match dataplane {
        "docker" => ("docker0", String::new()),
        _ => ("bpfbr0", "! -i bpfbr0 ".to_string()),
    };
    let mut nat = String::from("*nat\n");
    let mut filter = String::from("*filter\n");
    for port in ports {
        nat.push_str(&format!(
            "-A DOCKER {dnat_from}-p tcp -m tcp --dport {port} -j DNAT --to-destination {ip}:{port}\n\
             -A POSTROUTING -s {ip}/32 -d {ip}/32 -p tcp -m tcp --dport {port} -j MASQUERADE\n"
        ));
        filter.push_str(&format!(
            "-A DOCKER -d {ip}/32 ! -i {bridge} -o {bridge} -p tcp -m tcp --dport {port} -j ACCEPT\n"
        ));
    }
    format!("{nat}COMMIT\n{filter}COMMIT\n")
}

/// Runs the load generator in a namespace, the world's unless said otherwise.
struct ClientRunner {
    netns: PathBuf,
    loadgen: PathBuf,
    taskset: Vec<String>,
}

impl ClientRunner {
    fn run(&self, args: &[String], seconds: f64) -> Result<Value> {
        let out = cmd::output_timeout(
            Command::new("nsenter")
                .arg(format!("--net={}", self.netns.display()))
                .args(&self.taskset)
                .arg(&self.loadgen)
                .args(args),
            Duration::from_secs_f64(seconds + 30.0),
        )?;
        serde_json::from_str(out.trim()).with_context(|| format!("loadgen output {out:?}"))
    }
}

fn ip(netns: &str, args: &[&str]) -> Result<()> {
    cmd::output(Command::new("ip").arg("-n").arg(netns).args(args)).map(drop)
}

/// `ip -n NETNS -batch -`: many commands, one process.
fn ip_batch(netns: &str, commands: &str) -> Result<()> {
    cmd::run_with_input(
        Command::new("ip").args(["-n", netns, "-batch", "-"]),
        commands,
    )
}

/// A program in a namespace we made (`ip netns exec`).
fn nsexec(netns: &str, program: &str, args: &[&str]) -> Result<String> {
    cmd::output(
        Command::new("ip")
            .args(["netns", "exec", netns, program])
            .args(args),
    )
}

fn path_args(kind: &str, from: Ipv4Addr, to: SocketAddrV4, seconds: f64) -> Vec<String> {
    vec![
        kind.into(),
        "--from".into(),
        from.to_string(),
        "--to".into(),
        to.to_string(),
        "--seconds".into(),
        format!("{seconds}"),
    ]
}

/// The paths in a different order each repetition, so that drift hits every path alike.
fn rotation(rep: usize, paths: &[&'static str]) -> Vec<&'static str> {
    let mut order = paths.to_vec();
    order.rotate_left(rep % paths.len().max(1));
    order
}

fn sample(scenario: &str, dataplane: &str, rep: usize, mut value: Value) -> Value {
    value["scenario"] = json!(scenario);
    value["dataplane"] = json!(dataplane);
    value["rep"] = json!(rep);
    value
}

/// Scenario `connrate`: new TCP connections per second through the published port with N
/// other mappings installed.
fn connrate(lab: &mut Lab, plan: &Plan, samples: &mut Vec<Value>) -> Result<()> {
    for &n in &plan.fill {
        for i in 0..lab.nodes.len() {
            lab.fill(i, n)?;
        }
        for rep in 0..plan.reps {
            for path in rotation(rep, &lab.paths()) {
                check_stop()?;
                let (from, to) = lab.path(path, true);
                let mut args = path_args("connrate", from, to, plan.connrate_seconds);
                args.extend(["--concurrency".into(), plan.concurrency.to_string()]);
                let mut v = with_cpu_per_connection(|| lab.client(&args, plan.connrate_seconds))?;
                v["other_mappings"] = json!(n);
                eprintln!(
                    "bench: connrate n={n} {path}: {:.0}/s",
                    v["rate"].as_f64().unwrap_or(0.0)
                );
                samples.push(sample("connrate", path, rep, v));
            }
        }
    }
    Ok(())
}

/// Runs a conn-rate load and adds the CPU time of the whole machine per connection it made
/// (from /proc/stat: on veth the kernel work of a packet runs on the sending CPU).
fn with_cpu_per_connection(run: impl FnOnce() -> Result<Value>) -> Result<Value> {
    let (busy0, _) = cpu_ticks();
    let mut v = run()?;
    let (busy1, _) = cpu_ticks();
    let conns = v["connections"].as_f64().unwrap_or(0.0);
    let cpu_s = (busy1 - busy0) as f64 / ticks_per_second();
    v["cpu_seconds"] = json!(cpu_s);
    v["cpu_us_per_connection"] = json!(if conns > 0.0 {
        cpu_s * 1e6 / conns
    } else {
        0.0
    });
    Ok(v)
}

fn latency(lab: &mut Lab, plan: &Plan, samples: &mut Vec<Value>) -> Result<()> {
    for rep in 0..plan.reps {
        for path in rotation(rep, &lab.paths()) {
            check_stop()?;
            let (from, to) = lab.path(path, true);
            let v = lab.client(
                &path_args("latency", from, to, plan.short_seconds),
                plan.short_seconds,
            )?;
            samples.push(sample("latency", path, rep, v));
        }
    }
    Ok(())
}

fn bulk(lab: &mut Lab, plan: &Plan, samples: &mut Vec<Value>) -> Result<()> {
    for rep in 0..plan.reps {
        for path in rotation(rep, &lab.paths()) {
            check_stop()?;
            let (from, to) = lab.path(path, true);
            let v = lab.client(
                &path_args("bulk", from, to, plan.short_seconds),
                plan.short_seconds,
            )?;
            samples.push(sample("bulk", path, rep, v));
        }
    }
    Ok(())
}

/// UDP datagrams that reached the container's UDP layer (`InDatagrams + InErrors` of its
/// /proc/net/snmp: queued to the socket, or dropped there for want of buffer).
fn udp_arrived(netns: &Path) -> Result<u64> {
    udp_counters(netns, &["InDatagrams", "InErrors"])
}

/// The sum of counters `keys` of the `Udp:` lines of a namespace's /proc/net/snmp.
fn udp_counters(netns: &Path, keys: &[&str]) -> Result<u64> {
    let text = cmd::output(
        Command::new("nsenter")
            .arg(format!("--net={}", netns.display()))
            .args(["cat", "/proc/net/snmp"]),
    )?;
    let mut lines = text.lines().filter(|l| l.starts_with("Udp:"));
    let (names, values) = (
        lines.next().context("Udp header")?,
        lines.next().context("Udp values")?,
    );
    let get = |key: &str| -> Option<u64> {
        let i = names.split_whitespace().position(|w| w == key)?;
        values.split_whitespace().nth(i)?.parse().ok()
    };
    Ok(keys.iter().map(|k| get(k).unwrap_or(0)).sum())
}

fn udp(lab: &mut Lab, plan: &Plan, samples: &mut Vec<Value>) -> Result<()> {
    for rep in 0..plan.reps {
        for path in rotation(rep, &lab.paths()) {
            check_stop()?;
            let (from, to) = lab.path(path, false);
            let netns = lab.nodes[lab.path_node(path)]
                .bench_netns
                .clone()
                .context("bench netns")?;
            let before = udp_arrived(&netns)?;
            let mut args = path_args("udp", from, to, plan.short_seconds);
            args.extend(["--size".into(), "64".into(), "--senders".into(), "2".into()]);
            let mut v = lab.client(&args, plan.short_seconds)?;
            thread::sleep(Duration::from_millis(200));
            let arrived = udp_arrived(&netns)? - before;
            let seconds = v["seconds"].as_f64().unwrap_or(1.0);
            v["arrived"] = json!(arrived);
            v["rate"] = json!(arrived as f64 / seconds);
            samples.push(sample("udp", path, rep, v));
        }
    }
    Ok(())
}

/// One exchange with the server behind `to`, from the world namespace.
fn answers(to: SocketAddrV4) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&to.into(), Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"C probe\n").is_err() {
        return false;
    }
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).is_ok() && answer == b"pong\n"
}

/// Polls from the world namespace until `to` answers (`open`) or stops answering.
fn wait_for(
    world: &Path,
    to: SocketAddrV4,
    open: bool,
    limit: Duration,
) -> Result<Option<Instant>> {
    in_netns(world, || {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if answers(to) == open {
                return Some(Instant::now());
            }
            if STOP.load(Ordering::SeqCst) {
                return None;
            }
            thread::sleep(Duration::from_millis(2));
        }
        None
    })
}

/// Scenario `programming`: from the API call to traffic flowing through the last of N new
/// mappings, and from the removal call to the last one closing.
fn programming(
    lab: &mut Lab,
    plan: &Plan,
    samples: &mut Vec<Value>,
    notes: &mut Vec<String>,
) -> Result<()> {
    let world = netns_path(&lab.world);
    // Per node, the last point measured: N and the longer of its two times.
    let mut seen: Vec<Option<(usize, f64)>> = vec![None; lab.nodes.len()];
    for &n in &plan.program {
        for (i, last_point) in seen.iter_mut().enumerate() {
            check_stop()?;
            let dataplane = lab.nodes[i].dataplane;
            // Skip what would blow the time budget, judging by the last point (growth
            // taken as N^1.5: every `-C` walks a longer chain).
            if let Some((prev_n, prev_s)) = *last_point {
                let estimate = prev_s * (n as f64 / prev_n as f64).powf(1.5);
                if estimate > plan.program_budget.as_secs_f64() {
                    let note = format!(
                        "programming N={n} on {dataplane}: not run, estimated {estimate:.0} s \
                         from N={prev_n} ({prev_s:.1} s), over the {} s budget",
                        plan.program_budget.as_secs()
                    );
                    eprintln!("bench: {note}");
                    notes.push(note);
                    samples.push(json!({
                        "scenario": "programming", "dataplane": dataplane, "n": n,
                        "rep": 0, "skipped": true, "estimated_publish_seconds": estimate,
                    }));
                    continue;
                }
            }
            let last = PROGRAM_BASE + n as u16 - 1;
            // An agent publishes into a namespace made beforehand, whose server listens
            // already. A docker container's namespace only exists once `docker run` has
            // returned: its server starts then, a few ms inside the measured time.
            let prog_ns = match lab.nodes[i].dockerd {
                Some(_) => None,
                None => {
                    let ns = format!("{}-prog", lab.prefix);
                    lab.add_netns(&ns)?;
                    Some(ns)
                }
            };
            let mut server = match &prog_ns {
                Some(ns) => Some(lab.start_server(&netns_path(ns), last, None)?),
                None => None,
            };
            let node = &lab.nodes[i];
            let to = SocketAddrV4::new(node.node_ip, last);
            let range = format!("{PROGRAM_BASE}-{last}:{PROGRAM_BASE}-{last}");
            let limit = plan.program_budget * 3;
            let t0 = Instant::now();
            let created = match &prog_ns {
                Some(ns) => node
                    .cli(
                        &lab.bins,
                        &[
                            "container",
                            "create",
                            "prog",
                            "--netns",
                            &netns_path(ns).to_string_lossy(),
                            "-p",
                            &range,
                        ],
                        limit,
                    )
                    .map(|_| None),
                None => node
                    .create_container(&lab.bins, "prog", std::slice::from_ref(&range), limit)
                    .map(|(_, netns)| Some(netns)),
            };
            let api = t0.elapsed();
            let created = match created {
                Ok(Some(netns)) => lab.start_server(&netns, last, None).map(|s| {
                    server = Some(s);
                }),
                Ok(None) => Ok(()),
                Err(e) => Err(e),
            };
            let ready = created.as_ref().ok().and_then(|_| {
                wait_for(&world, to, true, Duration::from_secs(10))
                    .ok()
                    .flatten()
            });
            let publish = ready.map(|t| t - t0);
            let t1 = Instant::now();
            let removed = node.remove_container(&lab.bins, "prog", limit);
            let rm_api = t1.elapsed();
            let gone = wait_for(&world, to, false, Duration::from_secs(10))?;
            let remove = gone.map(|t| t - t1);
            if let Some(server) = server {
                stop_child(server);
            }
            if let Some(ns) = prog_ns {
                let _ = cmd::output(Command::new("ip").args(["netns", "del", &ns]));
                lab.namespaces.retain(|x| *x != ns);
            }
            created.context("creating the programming container")?;
            removed.context("removing the programming container")?;
            let (Some(publish), Some(remove)) = (publish, remove) else {
                bail!(
                    "programming N={n} on {dataplane}: the last port never answered or never closed"
                );
            };
            eprintln!(
                "bench: programming N={n} {dataplane}: publish {:.3} s, remove {:.3} s",
                publish.as_secs_f64(),
                remove.as_secs_f64()
            );
            *last_point = Some((n, publish.as_secs_f64().max(remove.as_secs_f64())));
            samples.push(json!({
                "scenario": "programming", "dataplane": dataplane, "n": n, "rep": 0,
                "publish_api_seconds": api.as_secs_f64(),
                "publish_seconds": publish.as_secs_f64(),
                "remove_api_seconds": rm_api.as_secs_f64(),
                "remove_seconds": remove.as_secs_f64(),
            }));
        }
    }
    Ok(())
}

/// Scenario `restart`: connections that fail while the agent restarts under load.
fn restart(lab: &mut Lab, plan: &Plan, samples: &mut Vec<Value>) -> Result<()> {
    for i in [EBPF, IPTABLES] {
        check_stop()?;
        let path = lab.nodes[i].dataplane;
        let (from, to) = lab.path(path, true);
        let mut args = path_args("connrate", from, to, plan.restart_seconds);
        args.extend(["--concurrency".into(), "4".into()]);
        let runner = lab.client_runner();
        let (t0, restarted) = thread::scope(|scope| -> Result<_> {
            let load = scope.spawn(|| runner.run(&args, plan.restart_seconds));
            thread::sleep(Duration::from_secs_f64(plan.restart_seconds / 4.0));
            let t = Instant::now();
            let node = &mut lab.nodes[i];
            node.stop_agent();
            let down = t.elapsed();
            node.start_agent(&lab.bins)?;
            let back = t.elapsed();
            let v = load.join().map_err(|_| anyhow::anyhow!("load thread"))??;
            Ok(((down, back), v))
        })?;
        let mut v = restarted;
        v["agent_stop_seconds"] = json!(t0.0.as_secs_f64());
        v["agent_back_seconds"] = json!(t0.1.as_secs_f64());
        eprintln!("bench: restart {path}: {}", v["errors"]);
        samples.push(sample("restart", path, 0, v));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_puts_every_path_first_once() {
        let paths = ["ebpf", "iptables", "direct", "docker"];
        let firsts: Vec<&str> = (0..4).map(|r| rotation(r, &paths)[0]).collect();
        assert_eq!(firsts, paths);
        assert_eq!(
            rotation(1, &paths),
            ["iptables", "direct", "docker", "ebpf"]
        );
    }

    #[test]
    fn plans_grow_with_the_mode() {
        let opts = |quick, smoke| Options {
            quick,
            smoke,
            scenarios: vec![],
            with_docker: false,
            out_dir: PathBuf::new(),
        };
        assert_eq!(Plan::new(&opts(false, true)).fill, [1]);
        assert_eq!(Plan::new(&opts(true, false)).fill, [1, 100, 1000]);
        assert_eq!(Plan::new(&opts(false, false)).fill.last(), Some(&10000));
    }
}
