//! The bench's lab: network namespaces (a world and one node per dataplane), the agents or
//! dockerd serving the nodes, the measured containers and their servers, and the stop
//! signals; everything it makes goes on teardown (also on error, panic and Ctrl-C).

use std::{
    fs,
    io::{BufRead as _, BufReader},
    net::{Ipv4Addr, SocketAddrV4},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use nix::sys::signal::{self, SaFlags, SigAction, SigHandler, SigSet, Signal};
use serde::{Deserialize, de::DeserializeOwned};

use crate::{Bins, cmd, docker::Dockerd, results::Path as BenchPath};

/// Everything the bench makes is named `bpfb-bench-PID-...`.
pub const PREFIX: &str = "bpfb-bench";
const WORLD_EBPF_IF: &str = "we0";
const WORLD_IPT_IF: &str = "wi0";
const WORLD_DOCKER_IF: &str = "wd0";
const UPLINK: &str = "up0";
pub(crate) const BENCH_TCP: u16 = 80;
pub(crate) const BENCH_UDP: u16 = 82;
pub(crate) const PUBLISHED_TCP: u16 = 8080;
pub(crate) const PUBLISHED_UDP: u16 = 8082;
/// Host ports of the "other" mappings (conn-rate).
const FILL_BASE: u16 = 20000;
/// The outside servers of the egress scenarios: addresses of the world namespace inside each
/// node's uplink subnet (the host part below), all served by one `bpfbridge-loadgen serve`
/// on this port. Containers reach them only through their node's masquerade: the world has
/// no route to the iptables and docker nodes' container subnets, and the server checks the
/// source it sees (`Lab::check_masquerade`).
pub(crate) const OUTSIDE_PORT: u16 = 9000;
/// The one server of `egress-one`.
pub(crate) const OUTSIDE_ONE: u8 = 10;
/// The address the masquerade check talks to: no load goes there, so egress-one's closing
/// flows never leave it without a source port.
pub(crate) const OUTSIDE_CHECK: u8 = 11;
/// The first of the servers of `egress-many` (.64 to .127).
pub(crate) const OUTSIDE_MANY: u8 = 64;
pub(crate) const OUTSIDE_MANY_COUNT: u8 = 64;
pub(crate) const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// SIGINT and SIGTERM set a flag that the bench checks between points (the lab is then
/// torn down as on any error).
pub(crate) fn catch_stop_signals() -> Result<()> {
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

/// Whether SIGINT or SIGTERM arrived.
pub(crate) fn stopping() -> bool {
    STOP.load(Ordering::SeqCst)
}

pub(crate) fn check_stop() -> Result<()> {
    ensure!(!stopping(), "interrupted");
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

/// Runs `f` on a thread that entered the network namespace at `path`.
pub(crate) fn in_netns<T: Send>(path: &Path, f: impl FnOnce() -> T + Send) -> Result<T> {
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

pub(crate) fn netns_path(name: &str) -> PathBuf {
    PathBuf::from("/run/netns").join(name)
}

/// One node: a namespace with an agent (or dockerd) and its private directories.
pub(crate) struct Node {
    /// `ebpf` or `iptables` (agents), or `docker`.
    pub(crate) dataplane: BenchPath,
    pub(crate) netns: String,
    pub(crate) node_ip: Ipv4Addr,
    pub(crate) client_ip: Ipv4Addr,
    pub(crate) bip: &'static str,
    pub(crate) dir: PathBuf,
    pub(crate) pin_dir: PathBuf,
    pub(crate) cgroup: PathBuf,
    pub(crate) agent: Option<Child>,
    /// Agent flags of the scenario running, on top of the bench's.
    pub(crate) agent_args: Vec<String>,
    pub(crate) dockerd: Option<Dockerd>,
    /// The measured container: its address and namespace, and its server.
    pub(crate) bench_ip: Option<Ipv4Addr>,
    pub(crate) bench_netns: Option<PathBuf>,
    pub(crate) server: Option<Child>,
    /// The "other" mappings installed so far, and the containers holding them.
    pub(crate) filled: usize,
    pub(crate) fills: Vec<String>,
}

impl Node {
    pub(crate) fn socket(&self) -> PathBuf {
        self.dir.join("bpfbridge.sock")
    }

    /// An address of the world namespace in this node's uplink subnet.
    pub(crate) fn outside(&self, host: u8) -> Ipv4Addr {
        let [a, b, c, _] = self.node_ip.octets();
        Ipv4Addr::new(a, b, c, host)
    }

    pub(crate) fn netns_dir(&self) -> PathBuf {
        self.dir.join("netns")
    }

    pub(crate) fn cli(&self, bins: &Bins, args: &[&str], timeout: Duration) -> Result<String> {
        cmd::output_timeout(
            Command::new(&bins.bpfbridge)
                .arg("--socket")
                .arg(self.socket())
                .args(args),
            timeout,
        )
    }

    pub(crate) fn start_agent(&mut self, bins: &Bins) -> Result<()> {
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
            .args([
                "agent",
                "--uplink",
                UPLINK,
                "--dataplane",
                self.dataplane.name(),
            ])
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
    pub(crate) fn start(&mut self, bins: &Bins) -> Result<()> {
        match self.dataplane {
            BenchPath::Docker => {
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

    pub(crate) fn stop_agent(&mut self) {
        if let Some(child) = self.agent.take() {
            stop_child(child);
        }
    }

    /// Creates a container publishing `ports` (`-p` values), through the agent's API or
    /// dockerd; returns its address and network namespace.
    pub(crate) fn create_container(
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
        let created: Created = serde_json::from_str(&out).context("container create output")?;
        let settings = created.network_settings;
        Ok((settings.ip_address, settings.sandbox_key))
    }

    pub(crate) fn remove_container(
        &self,
        bins: &Bins,
        name: &str,
        timeout: Duration,
    ) -> Result<()> {
        match &self.dockerd {
            Some(dockerd) => dockerd.rm(name, timeout),
            None => self
                .cli(bins, &["container", "rm", name], timeout)
                .map(drop),
        }
    }
}

/// What the agent's `container create` prints, as far as the bench needs it.
#[derive(Deserialize)]
struct Created {
    #[serde(rename = "NetworkSettings")]
    network_settings: NetworkSettings,
}

#[derive(Deserialize)]
struct NetworkSettings {
    #[serde(rename = "IPAddress")]
    ip_address: Ipv4Addr,
    #[serde(rename = "SandboxKey")]
    sandbox_key: PathBuf,
}

/// SIGTERM, a grace period of 5 s, then SIGKILL.
pub(crate) fn stop_child(child: Child) {
    stop_child_within(child, Duration::from_secs(5));
}

/// SIGTERM, a grace period, then SIGKILL.
pub(crate) fn stop_child_within(mut child: Child, grace: Duration) {
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
pub(crate) struct Lab {
    pub(crate) prefix: String,
    pub(crate) bins: Bins,
    pub(crate) world: String,
    /// Every namespace this lab added, deleted on teardown.
    pub(crate) namespaces: Vec<String>,
    pub(crate) nodes: Vec<Node>,
    /// The server of the egress scenarios, in the world namespace.
    pub(crate) outside_server: Option<Child>,
    _dir: tempfile::TempDir,
    pub(crate) pin: bool,
}

pub(crate) const EBPF: usize = 0;
pub(crate) const IPTABLES: usize = 1;

impl Lab {
    pub(crate) fn new(prefix: &str, bins: &Bins, cgroot: &Path, with_docker: bool) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("bpfb-bench-").tempdir()?;
        let node = |dataplane: BenchPath, short: &str, node_ip, client_ip, bip| {
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
                BenchPath::Ebpf,
                "ebpf",
                Ipv4Addr::new(198, 51, 100, 1),
                Ipv4Addr::new(198, 51, 100, 2),
                "172.26.0.1/16",
            ),
            node(
                BenchPath::Iptables,
                "ipt",
                Ipv4Addr::new(203, 0, 113, 1),
                Ipv4Addr::new(203, 0, 113, 2),
                "172.27.0.1/16",
            ),
        ];
        if with_docker {
            nodes.push(node(
                BenchPath::Docker,
                "dock",
                Ipv4Addr::new(192, 0, 2, 1),
                Ipv4Addr::new(192, 0, 2, 2),
                "172.28.0.1/16",
            ));
        }
        let mut lab = Lab {
            prefix: prefix.to_string(),
            bins: bins.clone(),
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
    pub(crate) fn paths(&self) -> Vec<BenchPath> {
        let mut paths = vec![BenchPath::Ebpf, BenchPath::Iptables, BenchPath::Direct];
        paths.extend(self.nodes.iter().skip(2).map(|n| n.dataplane));
        paths
    }

    pub(crate) fn add_netns(&mut self, name: &str) -> Result<()> {
        ensure!(
            !netns_path(name).exists(),
            "namespace {name} exists already"
        );
        cmd::output(Command::new("ip").args(["netns", "add", name]))?;
        self.namespaces.push(name.to_string());
        ip(name, &["link", "set", "lo", "up"])
    }

    pub(crate) fn build(&mut self) -> Result<()> {
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
            if n.dataplane != BenchPath::Docker {
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

    pub(crate) fn taskset(&self, cpu: u32) -> Vec<String> {
        match self.pin {
            true => vec!["taskset".into(), "-c".into(), cpu.to_string()],
            false => vec![],
        }
    }

    /// (Re)creates the measured container `bench` on node `i`, last (so that its rules come
    /// after every other mapping's), and starts its server.
    pub(crate) fn create_bench(&mut self, i: usize) -> Result<()> {
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
    pub(crate) fn start_server(&self, netns: &Path, tcp: u16, udp: Option<u16>) -> Result<Child> {
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
    pub(crate) fn client<T: DeserializeOwned>(&self, args: &[String], seconds: f64) -> Result<T> {
        self.client_runner().run(args, seconds)
    }

    pub(crate) fn client_runner(&self) -> ClientRunner {
        self.runner_in(&netns_path(&self.world))
    }

    /// The load generator in another namespace (a container's), pinned to CPU 0 likewise.
    pub(crate) fn runner_in(&self, netns: &Path) -> ClientRunner {
        ClientRunner {
            netns: netns.to_path_buf(),
            loadgen: self.bins.loadgen.clone(),
            taskset: self.taskset(0),
        }
    }

    /// The client address and target of a path.
    pub(crate) fn path(&self, path: BenchPath, tcp: bool) -> (Ipv4Addr, SocketAddrV4) {
        let port = |published: bool| match (published, tcp) {
            (true, true) => PUBLISHED_TCP,
            (true, false) => PUBLISHED_UDP,
            (false, true) => BENCH_TCP,
            (false, false) => BENCH_UDP,
        };
        match path {
            BenchPath::Direct => (
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
    pub(crate) fn path_node(&self, path: BenchPath) -> usize {
        self.nodes
            .iter()
            .position(|n| n.dataplane == path)
            .unwrap_or(EBPF)
    }

    /// Brings node `i` to `n` other published mappings (never fewer than it has).
    pub(crate) fn fill(&mut self, i: usize, n: usize) -> Result<()> {
        let have = self.nodes[i].filled;
        if n <= have {
            return Ok(());
        }
        let (first, last) = (FILL_BASE as usize + have, FILL_BASE as usize + n - 1);
        let name = format!("fill{n}");
        let node = &self.nodes[i];
        match node.dataplane {
            // Through the agent's API, one container holding the range.
            BenchPath::Ebpf => {
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

    pub(crate) fn teardown(&mut self) -> Result<()> {
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
fn fill_rules(
    dataplane: BenchPath,
    ip: Ipv4Addr,
    ports: std::ops::RangeInclusive<usize>,
) -> String {
    let (bridge, dnat_from) = match dataplane {
        BenchPath::Docker => ("docker0", String::new()),
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
pub(crate) struct ClientRunner {
    pub(crate) netns: PathBuf,
    pub(crate) loadgen: PathBuf,
    pub(crate) taskset: Vec<String>,
}

impl ClientRunner {
    pub(crate) fn run<T: DeserializeOwned>(&self, args: &[String], seconds: f64) -> Result<T> {
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
