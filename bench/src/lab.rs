//! The bench's lab, on the shared lab crate (`bpfbridge-lab`): a world namespace joined to
//! one node per dataplane, an agent (or dockerd) serving each node, the measured containers
//! and their servers; everything it makes goes on teardown (also on error, panic and
//! Ctrl-C, which the bench takes as a stop flag).

use std::{
    io::{BufRead as _, BufReader},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::Duration,
};

use anyhow::{Context as _, Result, bail, ensure};
use bpfbridge_lab::{
    Agent, AgentOptions, DefaultRoute, Dockerd, DockerdOptions, Netns, TxOffload, UPLINK, Uplink,
    cmd,
    netns::{enter_netns, spawn_in_netns},
    stop_child_within,
};
use serde::{Deserialize, de::DeserializeOwned};
use serde_json::Value;

use crate::{Bins, results::Path as BenchPath};

/// Everything the bench makes is named `bpfb-bench-PID-...`.
pub const PREFIX: &str = "bpfb-bench";
const WORLD_EBPF_IF: &str = "we0";
const WORLD_IPT_IF: &str = "wi0";
const WORLD_DOCKER_IF: &str = "wd0";
pub(crate) const BENCH_TCP: u16 = 80;
pub(crate) const BENCH_UDP: u16 = 82;
pub(crate) const PUBLISHED_TCP: u16 = 8080;
pub(crate) const PUBLISHED_UDP: u16 = 8082;
/// Host ports of the "other" mappings (conn-rate).
const FILL_BASE: u16 = 20000;
/// `connrate-ipv6`: the dual-stack network each agent node makes for it (bridge
/// [`IPV6_BRIDGE`]), the port its measured container `bench6` publishes (both families, as
/// `-p 8086:80` does on a network with IPv6), and the host ports of its other mappings
/// (published on `[::]` only, so that they lengthen the IPv6 tables and chains alone).
const IPV6_NETWORK: &str = "bench6";
const IPV6_BRIDGE: &str = "bpfb6";
pub(crate) const PUBLISHED6_TCP: u16 = 8086;
const FILL6_BASE: u16 = 30000;
/// The direct path's IPv6 client address, on the ebpf node's uplink /64.
const DIRECT6_CLIENT: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 3);
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
/// How long a server gets between SIGTERM and SIGKILL.
const SERVER_GRACE: Duration = Duration::from_secs(5);
/// dockerd's image: busybox with `sleep`, imported from a tarball (no registry).
const DOCKER_IMAGE: &str = "bpfb-bench-busybox:latest";
/// What the docker containers run: nothing; the bench's server joins their network
/// namespace.
const DOCKER_IDLE: [&str; 2] = ["/bin/sleep", "86400"];

/// Flags of the bench's that the agent of the previous map layout (`Bins::upgrade_from`)
/// does not know, as they came after it, and whether each takes a value. Without
/// `--uplink-hook` it runs XDP, as the bench's flags ask.
const NOT_IN_PREVIOUS_BUILD: [(&str, bool); 2] =
    [("--allow-direct-routing", false), (UPLINK_HOOK_FLAG, true)];

/// The agent flag that picks the uplink program's hook.
pub(crate) const UPLINK_HOOK_FLAG: &str = "--uplink-hook";

/// Stops a server (or any child of the bench's) with SIGTERM, then SIGKILL.
pub(crate) fn stop_child(child: Child) {
    stop_child_within(child, SERVER_GRACE);
}

/// One node: a namespace with an agent (or dockerd), its measured container and server.
pub(crate) struct Node {
    /// `ebpf` or `iptables` (agents), or `docker`.
    pub(crate) dataplane: BenchPath,
    pub(crate) node_ip: Ipv4Addr,
    pub(crate) client_ip: Ipv4Addr,
    pub(crate) bip: &'static str,
    pub(crate) agent: Option<Agent>,
    pub(crate) dockerd: Option<Dockerd>,
    /// The measured container: its address and namespace, and its server.
    pub(crate) bench_ip: Option<Ipv4Addr>,
    pub(crate) bench_netns: Option<PathBuf>,
    pub(crate) server: Option<Child>,
    /// The "other" mappings installed so far, and the containers holding them.
    pub(crate) filled: usize,
    pub(crate) fills: Vec<String>,
    /// The IPv6 side of an agent node (`connrate-ipv6`).
    pub(crate) ipv6: Option<Ipv6Side>,
    /// Last, so that it goes after what runs in it.
    pub(crate) netns: Netns,
}

/// A node's IPv6 side: its uplink /64 (`2001:db8:N::/64`, the node `::1`, the world `::2`),
/// and, from the first `connrate-ipv6` on, the dual-stack network [`IPV6_NETWORK`] with its
/// measured container `bench6` and other mappings.
pub(crate) struct Ipv6Side {
    pub(crate) node_ip: Ipv6Addr,
    pub(crate) client_ip: Ipv6Addr,
    /// The network's subnets: IPv4 (every network has one) and the IPv6 /64.
    subnet_v4: &'static str,
    pub(crate) subnet: &'static str,
    network_made: bool,
    /// The measured container's IPv6 address, and its server.
    pub(crate) bench_ip: Option<Ipv6Addr>,
    server: Option<Child>,
    /// The other IPv6 mappings installed so far.
    filled: usize,
}

impl Node {
    /// An address of the world namespace in this node's uplink subnet.
    pub(crate) fn outside(&self, host: u8) -> Ipv4Addr {
        let [a, b, c, _] = self.node_ip.octets();
        Ipv4Addr::new(a, b, c, host)
    }

    /// The agent of an agent node.
    pub(crate) fn agent(&self) -> Result<&Agent> {
        self.agent
            .as_ref()
            .with_context(|| format!("the {} node runs no agent", self.dataplane))
    }

    /// `bpfbridge ARGS` against this node's agent, within `timeout`.
    pub(crate) fn cli(&self, args: &[&str], timeout: Duration) -> Result<String> {
        self.agent()?.cli_within(args, timeout)
    }

    /// The agent flags of this node, and `extra` on top (an `--uplink-hook` there replaces
    /// the bench's).
    fn agent_args(&self, extra: Vec<String>) -> Vec<String> {
        // Masquerade stays on (the default), as users run it: egress needs it. The world's
        // TX offload is off, so XDP is safe on the veth uplink, where `auto` would take TC:
        // the figures stay those of the XDP path. The `direct` path reaches a container at
        // its own address on its published container port, which Docker 28's `nat` mode
        // drops unless direct routing is allowed (both agents alike, though only the ebpf
        // node's container is reached that way).
        let base = [
            "--dataplane",
            self.dataplane.name(),
            "--bip",
            self.bip,
            "--allow-direct-routing",
        ];
        let hook = match extra.iter().any(|a| a == UPLINK_HOOK_FLAG) {
            true => None,
            false => Some([UPLINK_HOOK_FLAG, "xdp"]),
        };
        base.into_iter()
            .chain(hook.into_iter().flatten())
            .map(String::from)
            .chain(extra)
            .collect()
    }

    /// Starts what serves this node: dockerd on the docker node, else the agent.
    pub(crate) fn start(&mut self, bins: &Bins) -> Result<()> {
        match self.dataplane {
            BenchPath::Docker => {
                let options = DockerdOptions::new(DOCKER_IMAGE)
                    .empty_config(true)
                    // With the userland proxy dockerd starts one docker-proxy process per
                    // published port, and thousands do not fit the machine; vfs mounts
                    // nothing that teardown could trip over.
                    .flags(["--bip", self.bip, "--userland-proxy=false"])
                    .flags(["--storage-driver", "vfs"])
                    .applets(["sh", "sleep"]);
                self.dockerd = Some(Dockerd::start(&self.netns.path(), options)?);
            }
            _ => {
                let options = AgentOptions::new(&bins.bpfbridge)
                    .name(&self.netns.name)
                    .uplink(UPLINK)
                    .args(self.agent_args(Vec::new()))
                    .env("RUST_LOG", "warn")
                    .dir_prefix("bpfb-bench-")
                    .ready_timeout(Duration::from_secs(120))
                    // The restart scenario times the agent's comeback by these polls.
                    .ready_poll(Duration::from_millis(50));
                self.agent = Some(Agent::start(&self.netns, options)?);
            }
        }
        Ok(())
    }

    /// Stops the agent (SIGTERM, then SIGKILL); its dataplane stays in place.
    pub(crate) fn stop_agent(&mut self) {
        if let Some(agent) = &mut self.agent {
            agent.shut_down();
        }
    }

    /// Starts the stopped agent again and waits until it answers.
    pub(crate) fn start_agent(&mut self) -> Result<()> {
        let dataplane = self.dataplane;
        let agent = self
            .agent
            .as_mut()
            .with_context(|| format!("the {dataplane} node runs no agent"))?;
        agent.spawn()
    }

    /// Stops the agent, removes its pinned maps and links, and starts it again with `args` on
    /// top of the bench's: the new agent makes fresh tables of the size its flags say (a
    /// pinned table is re-adopted as it is) and reattaches its programs.
    pub(crate) fn restart_fresh(&mut self, args: Vec<String>) -> Result<()> {
        let args = self.agent_args(args);
        self.restart_fresh_on(args)
    }

    fn restart_fresh_on(&mut self, args: Vec<String>) -> Result<()> {
        self.stop_agent();
        let agent = self.agent.as_mut().context("no agent to restart")?;
        if agent.pin_dir.exists() {
            std::fs::remove_dir_all(&agent.pin_dir)
                .with_context(|| format!("removing {}", agent.pin_dir.display()))?;
        }
        agent.set_args(args);
        agent.spawn()
    }

    /// Runs `bin` as the node's agent from the next start on.
    pub(crate) fn set_agent_bin(&mut self, bin: &Path) -> Result<()> {
        let dataplane = self.dataplane;
        self.agent
            .as_mut()
            .with_context(|| format!("the {dataplane} node runs no agent"))?
            .set_bin(bin);
        Ok(())
    }

    /// [`Node::restart_fresh`] with the agent `bin` (an earlier build, whose map layout may
    /// differ: its pins are made afresh from the node's records), without the bench's flags
    /// that build does not know, until [`Node::set_bench_args`].
    pub(crate) fn restart_fresh_with(&mut self, bin: &Path) -> Result<()> {
        self.set_agent_bin(bin)?;
        let mut args = Vec::new();
        let mut bench_args = self.agent_args(Vec::new()).into_iter();
        while let Some(arg) = bench_args.next() {
            match NOT_IN_PREVIOUS_BUILD.iter().find(|(flag, _)| *flag == arg) {
                Some((_, takes_value)) if *takes_value => drop(bench_args.next()),
                Some(_) => {}
                None => args.push(arg),
            }
        }
        self.restart_fresh_on(args)
    }

    /// Runs the agent with the bench's flags from the next start on (after
    /// [`Node::restart_fresh_with`]'s earlier build, whose flags were fewer).
    pub(crate) fn set_bench_args(&mut self) -> Result<()> {
        let args = self.agent_args(Vec::new());
        self.agent
            .as_mut()
            .context("no agent to restart")?
            .set_args(args);
        Ok(())
    }

    /// Creates a container on the agent's `network` publishing `ports` (`-p` values);
    /// returns its IPv6 address there and its network namespace.
    fn create_container_on(
        &self,
        name: &str,
        network: &str,
        ports: &[String],
        timeout: Duration,
    ) -> Result<(Ipv6Addr, PathBuf)> {
        let mut args = vec!["container", "create", name, "--network", network];
        for p in ports {
            args.extend(["-p", p.as_str()]);
        }
        let out = self.cli(&args, timeout)?;
        let created: Value = serde_json::from_str(&out).context("container create output")?;
        let settings = &created["NetworkSettings"];
        let ip = settings["Networks"][network]["GlobalIPv6Address"]
            .as_str()
            .and_then(|ip| ip.parse().ok())
            .with_context(|| format!("{name} has no IPv6 address on {network}: {out}"))?;
        let netns = settings["SandboxKey"]
            .as_str()
            .context("SandboxKey")?
            .into();
        Ok((ip, netns))
    }

    /// Creates a container publishing `ports` (`-p` values), through the agent's API or
    /// dockerd; returns its address and network namespace.
    pub(crate) fn create_container(
        &self,
        name: &str,
        ports: &[String],
        timeout: Duration,
    ) -> Result<(Ipv4Addr, PathBuf)> {
        if let Some(dockerd) = &self.dockerd {
            dockerd.run(name, ports, &DOCKER_IDLE, timeout)?;
            return dockerd.address_and_netns(name);
        }
        let mut args = vec!["container", "create", name];
        for p in ports {
            args.extend(["-p", p.as_str()]);
        }
        let out = self.cli(&args, timeout)?;
        let created: Created = serde_json::from_str(&out).context("container create output")?;
        let settings = created.network_settings;
        Ok((settings.ip_address, settings.sandbox_key))
    }

    pub(crate) fn remove_container(&self, name: &str, timeout: Duration) -> Result<()> {
        match &self.dockerd {
            Some(dockerd) => dockerd.rm(name, timeout),
            None => self.cli(&["container", "rm", name], timeout).map(drop),
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

/// The bench's namespaces, agents, containers and servers.
pub(crate) struct Lab {
    pub(crate) prefix: String,
    pub(crate) bins: Bins,
    pub(crate) nodes: Vec<Node>,
    /// The server of the egress scenarios, in the world namespace.
    outside_server: Option<Child>,
    /// Whether the load generator and the servers are pinned to CPUs of their own.
    pin: bool,
    /// Last, so that it goes after the nodes.
    pub(crate) world: Netns,
}

pub(crate) const EBPF: usize = 0;
pub(crate) const IPTABLES: usize = 1;

impl Lab {
    pub(crate) fn new(prefix: &str, bins: &Bins, with_docker: bool) -> Result<Self> {
        let world = Netns::named(&format!("{prefix}-world"))?;
        // Clients use many ports; this is the world namespace's own setting.
        world.exec(
            "sysctl",
            &["-qw", "net.ipv4.ip_local_port_range=1024 65000"],
        )?;
        let mut lab = Lab {
            prefix: prefix.to_string(),
            bins: bins.clone(),
            nodes: Vec::new(),
            outside_server: None,
            pin: thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
                >= 2,
            world,
        };
        lab.add_node(
            BenchPath::Ebpf,
            "ebpf",
            [198, 51, 100],
            "172.26.0.1/16",
            WORLD_EBPF_IF,
        )?;
        lab.add_ipv6(EBPF, 1, ("172.36.0.0/24", "2001:db8:26::/64"))?;
        lab.add_node(
            BenchPath::Iptables,
            "ipt",
            [203, 0, 113],
            "172.27.0.1/16",
            WORLD_IPT_IF,
        )?;
        lab.add_ipv6(IPTABLES, 2, ("172.37.0.0/24", "2001:db8:27::/64"))?;
        if with_docker {
            lab.add_node(
                BenchPath::Docker,
                "dock",
                [192, 0, 2],
                "172.28.0.1/16",
                WORLD_DOCKER_IF,
            )?;
        }
        // The direct path's own client address, and its route to the ebpf node's containers.
        lab.world
            .ip(&["addr", "add", "198.51.100.3/24", "dev", WORLD_EBPF_IF])?;
        lab.world
            .ip(&["route", "add", "172.26.0.0/16", "via", "198.51.100.1"])?;
        // And over IPv6, to the ebpf node's dual-stack network.
        let ebpf6 = lab.nodes[EBPF]
            .ipv6
            .as_ref()
            .context("the ebpf node's IPv6")?;
        let (direct_route, via) = (ebpf6.subnet, ebpf6.node_ip.to_string());
        lab.world.ip(&[
            "-6",
            "addr",
            "add",
            &format!("{DIRECT6_CLIENT}/64"),
            "dev",
            WORLD_EBPF_IF,
            "nodad",
        ])?;
        lab.world
            .ip(&["-6", "route", "add", direct_route, "via", &via])?;
        for i in 0..lab.nodes.len() {
            lab.nodes[i].start(&lab.bins)?;
            lab.create_bench(i)?;
        }
        lab.outside_server = Some(lab.start_server(&lab.world.path(), OUTSIDE_PORT, None)?);
        Ok(lab)
    }

    /// A node namespace `PREFIX-SHORT` joined to the world: the node is `SUBNET.1` on its
    /// uplink, the world `SUBNET.2` on `world_link`, with the outside servers' addresses, and
    /// the node's default route goes into the world, as on a real node.
    fn add_node(
        &mut self,
        dataplane: BenchPath,
        short: &str,
        [a, b, c]: [u8; 3],
        bip: &'static str,
        world_link: &str,
    ) -> Result<()> {
        let netns = Netns::named(&format!("{}-{short}", self.prefix))?;
        let uplink = Uplink::new(Ipv4Addr::new(a, b, c, 1), Ipv4Addr::new(a, b, c, 2))
            .world_link(world_link)
            .default_route(DefaultRoute::NodeViaWorld)
            // The world side plays remote hosts whose frames carry complete checksums.
            .world_tx_offload(TxOffload::Off);
        let outside = [OUTSIDE_ONE, OUTSIDE_CHECK]
            .into_iter()
            .chain(OUTSIDE_MANY..OUTSIDE_MANY + OUTSIDE_MANY_COUNT)
            .map(|host| uplink.host(host))
            .collect::<Vec<_>>();
        let uplink = uplink.world_hosts(outside);
        uplink.connect(&netns, &self.world)?;
        self.nodes.push(Node {
            dataplane,
            node_ip: uplink.node_ip,
            client_ip: uplink.world_ip,
            bip,
            agent: None,
            dockerd: None,
            bench_ip: None,
            bench_netns: None,
            server: None,
            filled: 0,
            fills: Vec::new(),
            ipv6: None,
            netns,
        });
        Ok(())
    }

    /// Gives node `i`'s uplink the /64 `2001:db8:N::/64` (node `::1`, world `::2`, without
    /// duplicate address detection, so that they are usable at once), and the subnets
    /// `(IPv4, IPv6)` its dual-stack network will have. The node routes to the world's
    /// addresses on the link; the world reaches the node's containers only through published
    /// ports (and the direct path's route).
    fn add_ipv6(
        &mut self,
        i: usize,
        n: u16,
        (subnet_v4, subnet): (&'static str, &'static str),
    ) -> Result<()> {
        let node_ip = Ipv6Addr::new(0x2001, 0xdb8, n, 0, 0, 0, 0, 1);
        let client_ip = Ipv6Addr::new(0x2001, 0xdb8, n, 0, 0, 0, 0, 2);
        let world_link = match self.nodes[i].dataplane {
            BenchPath::Ebpf => WORLD_EBPF_IF,
            _ => WORLD_IPT_IF,
        };
        let node = &mut self.nodes[i];
        for (netns, ip, link) in [
            (&node.netns, node_ip, UPLINK),
            (&self.world, client_ip, world_link),
        ] {
            let address = format!("{ip}/64");
            netns.ip(&["-6", "addr", "add", &address, "dev", link, "nodad"])?;
        }
        node.ipv6 = Some(Ipv6Side {
            node_ip,
            client_ip,
            subnet_v4,
            subnet,
            network_made: false,
            bench_ip: None,
            server: None,
            filled: 0,
        });
        Ok(())
    }

    /// The paths measured: every node's published port, and `direct`.
    pub(crate) fn paths(&self) -> Vec<BenchPath> {
        let mut paths = vec![BenchPath::Ebpf, BenchPath::Iptables, BenchPath::Direct];
        paths.extend(self.nodes.iter().skip(2).map(|n| n.dataplane));
        paths
    }

    /// The CPU a program of the bench is pinned to, when the machine has two or more.
    fn cpu(&self, cpu: u32) -> Option<u32> {
        self.pin.then_some(cpu)
    }

    /// (Re)creates the measured container `bench` on node `i`, last (so that its rules come
    /// after every other mapping's), and starts its server.
    pub(crate) fn create_bench(&mut self, i: usize) -> Result<()> {
        let node = &mut self.nodes[i];
        if let Some(server) = node.server.take() {
            stop_child(server);
        }
        if node.bench_ip.take().is_some() {
            node.remove_container("bench", COMMAND_TIMEOUT)?;
        }
        let (ip, netns) = node.create_container(
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
        let mut command = pinned(self.cpu(1), &self.bins.loadgen);
        // The loadgen's longest: a full run with Docker nears half an hour.
        command.args(["serve", "--tcp", &tcp.to_string(), "--seconds", "3600"]);
        if let Some(udp) = udp {
            command.args(["--udp", &udp.to_string()]);
        }
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = spawn_in_netns(&mut command, netns)?;
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
        self.runner_in(&self.world.path())
    }

    /// The load generator in another namespace (a container's), pinned to CPU 0 likewise.
    pub(crate) fn runner_in(&self, netns: &Path) -> ClientRunner {
        ClientRunner {
            netns: netns.to_path_buf(),
            loadgen: self.bins.loadgen.clone(),
            cpu: self.cpu(0),
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
                    &name,
                    &[format!("{first}-{last}:{first}-{last}")],
                    Duration::from_secs(600),
                )?;
            }
            // The same rules the iptables dataplane (or dockerd) writes for each port, loaded
            // by one iptables-restore: one rule at a time takes what the programming
            // scenario measures.
            _ => {
                let (ip, _) = node.create_container(&name, &[], COMMAND_TIMEOUT)?;
                let bridge = match node.dataplane {
                    BenchPath::Docker => "docker0",
                    _ => "bpfbr0",
                };
                let rules = fill_rules(node.dataplane, bridge, ip.into(), first..=last);
                cmd::run_with_input(
                    &mut command_in(&node.netns.path(), "iptables-restore", &["-w", "--noflush"])?,
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

    /// Makes node `i`'s dual-stack network and its measured container `bench6`, once.
    pub(crate) fn ipv6_ready(&mut self, i: usize) -> Result<()> {
        let node = &self.nodes[i];
        let side = node
            .ipv6
            .as_ref()
            .with_context(|| format!("the {} node has no IPv6 side", node.dataplane))?;
        if side.network_made {
            return Ok(());
        }
        node.cli(
            &[
                "network",
                "create",
                IPV6_NETWORK,
                "--ipv6",
                "--subnet",
                side.subnet_v4,
                "--subnet",
                side.subnet,
                "-o",
                &format!("com.docker.network.bridge.name={IPV6_BRIDGE}"),
            ],
            COMMAND_TIMEOUT,
        )?;
        if let Some(side) = self.nodes[i].ipv6.as_mut() {
            side.network_made = true;
        }
        self.create_bench6(i)
    }

    /// (Re)creates node `i`'s measured container `bench6` on the dual-stack network, last,
    /// and starts its server (IPv4 and IPv6 listeners).
    fn create_bench6(&mut self, i: usize) -> Result<()> {
        let node = &mut self.nodes[i];
        let side = node.ipv6.as_mut().context("no IPv6 side")?;
        if let Some(server) = side.server.take() {
            stop_child(server);
        }
        if side.bench_ip.take().is_some() {
            node.remove_container("bench6", COMMAND_TIMEOUT)?;
        }
        let (ip, netns) = node.create_container_on(
            "bench6",
            IPV6_NETWORK,
            &[format!("{PUBLISHED6_TCP}:{BENCH_TCP}")],
            COMMAND_TIMEOUT,
        )?;
        let server = self.start_server(&netns, BENCH_TCP, None)?;
        let side = self.nodes[i].ipv6.as_mut().context("no IPv6 side")?;
        side.bench_ip = Some(ip);
        side.server = Some(server);
        Ok(())
    }

    /// Brings node `i` to `n` other IPv6 published mappings (`[::]:PORT`) on its
    /// dual-stack network, as [`Lab::fill`] does for IPv4: through the API on the ebpf node,
    /// by one `ip6tables-restore` of the iptables dataplane's rules on the iptables node.
    pub(crate) fn fill6(&mut self, i: usize, n: usize) -> Result<()> {
        self.ipv6_ready(i)?;
        let node = &self.nodes[i];
        let have = node.ipv6.as_ref().map_or(0, |side| side.filled);
        if n <= have {
            return Ok(());
        }
        let (first, last) = (FILL6_BASE as usize + have, FILL6_BASE as usize + n - 1);
        let name = format!("fill6-{n}");
        match node.dataplane {
            BenchPath::Ebpf => {
                node.create_container_on(
                    &name,
                    IPV6_NETWORK,
                    &[format!("[::]:{first}-{last}:{first}-{last}")],
                    Duration::from_secs(600),
                )?;
            }
            _ => {
                let (ip, _) =
                    node.create_container_on(&name, IPV6_NETWORK, &[], COMMAND_TIMEOUT)?;
                let rules = fill_rules(node.dataplane, IPV6_BRIDGE, ip.into(), first..=last);
                cmd::run_with_input(
                    &mut command_in(
                        &node.netns.path(),
                        "ip6tables-restore",
                        &["-w", "--noflush"],
                    )?,
                    &rules,
                )?;
            }
        }
        if let Some(side) = self.nodes[i].ipv6.as_mut() {
            side.filled = n;
        }
        self.create_bench6(i)
    }

    /// The client address and target of a path over IPv6 (TCP): the node's published port
    /// [`PUBLISHED6_TCP`] from the world's address on that uplink, or (`direct`) the ebpf
    /// node's `bench6` at its own IPv6 address, port 80, from [`DIRECT6_CLIENT`].
    pub(crate) fn path6(&self, path: BenchPath) -> Result<(IpAddr, SocketAddr)> {
        let side = |i: usize| {
            self.nodes[i]
                .ipv6
                .as_ref()
                .with_context(|| format!("the {} node has no IPv6 side", self.nodes[i].dataplane))
        };
        Ok(match path {
            BenchPath::Direct => {
                let bench = side(EBPF)?.bench_ip.context("no bench6 container")?;
                (
                    DIRECT6_CLIENT.into(),
                    SocketAddr::new(bench.into(), BENCH_TCP),
                )
            }
            _ => {
                let side = side(self.path_node(path))?;
                (
                    side.client_ip.into(),
                    SocketAddr::new(side.node_ip.into(), PUBLISHED6_TCP),
                )
            }
        })
    }

    /// Stops the servers, the agents (removing their pins, cgroups and container namespaces)
    /// and dockerd; the namespaces themselves go when the lab is dropped.
    pub(crate) fn teardown(&mut self) -> Result<()> {
        let mut errors = Vec::new();
        if let Some(server) = self.outside_server.take() {
            stop_child(server);
        }
        for node in &mut self.nodes {
            if let Some(server) = node.server.take() {
                stop_child(server);
            }
            if let Some(server) = node.ipv6.as_mut().and_then(|side| side.server.take()) {
                stop_child(server);
            }
            if let Some(agent) = &mut node.agent
                && let Err(e) = agent.clean_up()
            {
                errors.push(format!("{} agent: {e:#}", node.dataplane));
            }
            if let Some(mut dockerd) = node.dockerd.take()
                && let Err(e) = dockerd.stop()
            {
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
/// `ip` on `bridge`, in iptables-restore (or, for an IPv6 `ip`, ip6tables-restore) form, as
/// the `dataplane` node writes them: the iptables dataplane with its userland proxy (DNAT
/// `! -i BRIDGE`), dockerd with `--userland-proxy=false` (DNAT from the bridge too).
fn fill_rules(
    dataplane: BenchPath,
    bridge: &str,
    ip: IpAddr,
    ports: std::ops::RangeInclusive<usize>,
) -> String {
    let dnat_from = match dataplane {
        BenchPath::Docker => String::new(),
        _ => format!("! -i {bridge} "),
    };
    let host = match ip {
        IpAddr::V4(_) => format!("{ip}/32"),
        IpAddr::V6(_) => format!("{ip}/128"),
    };
    let mut nat = String::from("*nat\n");
    let mut filter = String::from("*filter\n");
    for port in ports {
        let to = SocketAddr::new(ip, port as u16);
        nat.push_str(&format!(
            "-A DOCKER {dnat_from}-p tcp -m tcp --dport {port} -j DNAT --to-destination {to}\n\
             -A POSTROUTING -s {host} -d {host} -p tcp -m tcp --dport {port} -j MASQUERADE\n"
        ));
        filter.push_str(&format!(
            "-A DOCKER -d {host} ! -i {bridge} -o {bridge} -p tcp -m tcp --dport {port} -j ACCEPT\n"
        ));
    }
    format!("{nat}COMMIT\n{filter}COMMIT\n")
}

/// Runs the load generator in a namespace, the world's unless said otherwise.
pub(crate) struct ClientRunner {
    netns: PathBuf,
    loadgen: PathBuf,
    /// The CPU it is pinned to, on machines with two or more.
    cpu: Option<u32>,
}

impl ClientRunner {
    /// `bpfbridge-loadgen ARGS`, pinned to the runner's CPU, in its namespace.
    pub(crate) fn command(&self, args: &[String]) -> Result<Command> {
        let mut command = pinned(self.cpu, &self.loadgen);
        command.args(args);
        enter_netns(&mut command, &self.netns)?;
        Ok(command)
    }

    /// Runs the load generator and parses its JSON line.
    pub(crate) fn run<T: DeserializeOwned>(&self, args: &[String], seconds: f64) -> Result<T> {
        let out = cmd::output_timeout(
            &mut self.command(args)?,
            Duration::from_secs_f64(seconds + 30.0),
        )?;
        serde_json::from_str(out.trim()).with_context(|| format!("loadgen output {out:?}"))
    }
}

/// `program`, pinned to `cpu` with taskset when there is one.
fn pinned(cpu: Option<u32>, program: &Path) -> Command {
    match cpu {
        Some(cpu) => {
            let mut taskset = Command::new("taskset");
            taskset.args(["-c", &cpu.to_string()]).arg(program);
            taskset
        }
        None => Command::new(program),
    }
}

/// `program ARGS` in the network namespace at `netns` (and no other).
pub(crate) fn command_in(netns: &Path, program: &str, args: &[&str]) -> Result<Command> {
    let mut command = Command::new(program);
    command.args(args);
    enter_netns(&mut command, netns)?;
    Ok(command)
}
