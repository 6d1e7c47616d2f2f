//! Fault injection: the agent is killed with SIGKILL (as `kill -9` would) at every crash
//! point of network create and rm, container create (with published ports) and rm, network
//! connect and disconnect, and filter add and rm (`bpfbridge debug crash-points` lists the
//! points; a point no operation here reaches fails the test). After a restart nothing is
//! left half made: no orphaned veth, bridge, address, namespace, map entry, TC link pin,
//! iptables rule or record; the operation can be done (again), and every delete, done
//! twice, succeeds and then answers not found, as Docker does.

use std::{
    collections::BTreeSet,
    fs,
    net::{IpAddr, Ipv4Addr, SocketAddrV4},
    path::PathBuf,
    sync::Mutex,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use aya::maps::{HashMap, Map, MapData, lpm_trie::LpmTrie};
use bpfbridge::{
    client::Client,
    model::{ContainerInspect, FilterInfo, NetworkInspect, PublishedPort},
};
use bpfbridge_tests::{
    Agent, Echo, NODE_IP, Topology, UPLINK, dataplane, ebpf_checks, figures, links, tcp_reaches,
};
use dataplane_common::{
    BackendKey, ENDPOINTS, EndpointInfo, EndpointKey, FILTER_RULES, FilterKey, FilterRule,
    PUBLISHED_BACKENDS,
};
use ipnet::Ipv4Net;

/// A user-defined network every operation's container may join.
const USER_NET: (&str, &str) = ("fnet", "10.77.0.0/24");
/// An internal one: a container only on it publishes nothing until it is connected to a
/// way out.
const INTERNAL_NET: (&str, &str) = ("fint", "10.78.0.0/24");
/// The network the network operations create and remove.
const NEW_NET: (&str, &str) = ("fa", "10.79.0.0/24");
const CONTAINER: &str = "fc";
const PUBLISHED_TCP: u16 = 18080;
const FILTER_SOURCE: &str = "192.0.2.0/24";

#[derive(Clone, Copy, Debug)]
enum Operation {
    NetworkCreate,
    NetworkRemove,
    ContainerCreate,
    ContainerRemove,
    Connect,
    Disconnect,
    FilterAdd,
    FilterRemove,
}

const OPERATIONS: [Operation; 8] = [
    Operation::NetworkCreate,
    Operation::NetworkRemove,
    Operation::ContainerCreate,
    Operation::ContainerRemove,
    Operation::Connect,
    Operation::Disconnect,
    Operation::FilterAdd,
    Operation::FilterRemove,
];

const ENDPOINT_STEPS: [(&str, u32); 5] = [
    ("endpoint:veth-made", 1),
    ("endpoint:veth-on-bridge", 1),
    ("endpoint:attached", 1),
    ("endpoint:moved", 1),
    ("endpoint:configured", 1),
];

impl Operation {
    /// The crash points the operation reaches, each with how many times it does: the test
    /// crashes it at each of them, every time.
    fn points(self) -> Vec<(&'static str, u32)> {
        use Operation::*;
        match self {
            NetworkCreate => vec![
                ("network-create:recorded", 1),
                ("network-create:bridge-made", 1),
                ("network-create:saved", 1),
            ],
            // The bridge, then the record.
            NetworkRemove => vec![
                ("network-remove:marked", 1),
                ("network-remove:policy-gone", 1),
                ("teardown:step-done", 2),
            ],
            ContainerCreate => [
                ("container-create:recorded", 1),
                ("container-create:netns-made", 1),
            ]
            .into_iter()
            .chain(ENDPOINT_STEPS)
            .chain([
                ("container-create:endpoints-made", 1),
                ("port:published", 2),
                ("container-create:saved", 1),
            ])
            .collect(),
            // Two ports, the endpoint's dataplane hold and veth, the namespace, the record.
            ContainerRemove => vec![("container-remove:marked", 1), ("teardown:step-done", 6)],
            Connect => [("connect:recorded", 1)]
                .into_iter()
                .chain(ENDPOINT_STEPS)
                .chain([("connect:saved", 1), ("port:published", 1)])
                .collect(),
            // The port, the endpoint's dataplane hold and veth.
            Disconnect => vec![
                ("disconnect:marked", 1),
                ("teardown:step-done", 3),
                ("disconnect:saved", 1),
            ],
            FilterAdd => vec![("filter-add:applied", 1)],
            FilterRemove => vec![("filter-remove:recorded", 1)],
        }
    }
}

/// What the agent's records say, as its API shows them.
struct Records {
    networks: Vec<NetworkInspect>,
    containers: Vec<ContainerInspect>,
    ports: Vec<PublishedPort>,
    filters: Vec<FilterInfo>,
}

impl Records {
    /// Our bridge networks (not `host` and `none`).
    fn bridges(&self) -> impl Iterator<Item = &NetworkInspect> {
        self.networks.iter().filter(|n| n.driver == "bridge")
    }

    fn network(&self, name: &str) -> Option<&NetworkInspect> {
        self.bridges().find(|n| n.name == name)
    }

    fn container(&self, name: &str) -> Option<&ContainerInspect> {
        self.containers
            .iter()
            .find(|c| c.name.trim_start_matches('/') == name)
    }

    /// Each endpoint: its node-side veth's name and its address.
    fn endpoints(&self) -> Vec<(String, Ipv4Addr)> {
        self.bridges()
            .flat_map(|n| n.containers.values())
            .map(|e| {
                let ip = e.ipv4_address.split('/').next().unwrap_or_default();
                (
                    format!("veth{}", &e.endpoint_id[..7]),
                    ip.parse().unwrap_or(Ipv4Addr::UNSPECIFIED),
                )
            })
            .collect()
    }
}

/// A network's bridge: the name its options give, else the agent's naming.
fn bridge_name(n: &NetworkInspect) -> String {
    match n.options.get("com.docker.network.bridge.name") {
        Some(name) => name.clone(),
        None => format!("bpfbr-{}", &n.id[..9]),
    }
}

fn gateway_cidr(n: &NetworkInspect) -> Result<String> {
    let config = n.ipam.config.first().context("an IPAM config")?;
    let subnet: Ipv4Net = config.subnet.as_deref().context("a subnet")?.parse()?;
    let gateway = config.gateway.as_deref().context("a gateway")?;
    Ok(format!("{gateway}/{}", subnet.prefix_len()))
}

fn subnet_of(n: &NetworkInspect) -> Option<Ipv4Net> {
    n.ipam.config.first()?.subnet.as_deref()?.parse().ok()
}

/// One operation's world: a topology, its agent and the flags it runs with unarmed.
struct World {
    topology: Topology,
    agent: Agent,
    flags: Vec<String>,
    runtime: tokio::runtime::Runtime,
    /// How long each restart after a crash took until the API answered.
    restarts: Vec<Duration>,
}

impl World {
    fn start() -> Result<Self> {
        let topology = Topology::new()?;
        let agent = Agent::start(&topology)?;
        let flags = agent.args().to_vec();
        let world = World {
            topology,
            agent,
            flags,
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?,
            restarts: Vec::new(),
        };
        for (name, subnet) in [USER_NET, INTERNAL_NET] {
            let mut args = vec!["network", "create", "--subnet", subnet, name];
            if name == INTERNAL_NET.0 {
                args.insert(2, "--internal");
            }
            world.ok(&args)?;
        }
        Ok(world)
    }

    /// Runs the CLI; its stdout, or an error with its stderr.
    fn ok(&self, args: &[&str]) -> Result<String> {
        let out = self.agent.cli(args)?;
        ensure!(
            out.status.success(),
            "bpfbridge {}: {}\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr),
            self.agent.log_tail(20)
        );
        Ok(String::from_utf8(out.stdout)?)
    }

    /// Runs the CLI expecting it to fail with a not-found answer, as a delete of what is
    /// gone does.
    fn not_found(&self, args: &[&str]) -> Result<()> {
        let out = self.agent.cli(args)?;
        let stderr = String::from_utf8_lossy(&out.stderr).to_lowercase();
        ensure!(
            !out.status.success()
                && ["not found", "no such", "is not connected"]
                    .iter()
                    .any(|m| stderr.contains(m)),
            "a second `bpfbridge {}` must answer not found; it said ({}): {stderr}",
            args.join(" "),
            out.status
        );
        Ok(())
    }

    fn records(&self) -> Result<Records> {
        let client = Client::new(&self.agent.socket);
        self.runtime.block_on(async {
            Ok(Records {
                networks: client.get("/networks").await?,
                containers: client.get("/containers").await?,
                ports: client.get("/ports").await?,
                filters: client.get("/filters").await?,
            })
        })
    }

    /// Makes the state the operation starts from (with an unarmed agent).
    fn prepare(&self, op: Operation) -> Result<()> {
        use Operation::*;
        match op {
            NetworkCreate | ContainerCreate | FilterAdd => Ok(()),
            NetworkRemove => self.run(Operation::NetworkCreate),
            ContainerRemove => self.run(Operation::ContainerCreate),
            Connect => self.create_internal_container(),
            Disconnect => {
                self.create_internal_container()?;
                self.run(Operation::Connect)
            }
            FilterRemove => self.run(Operation::FilterAdd),
        }
    }

    /// A container only on the internal network, with a port to publish once it has a
    /// way out.
    fn create_internal_container(&self) -> Result<()> {
        let port = format!("{PUBLISHED_TCP}:80");
        self.ok(&[
            "container",
            "create",
            "--name",
            CONTAINER,
            "--network",
            INTERNAL_NET.0,
            "-p",
            &port,
        ])
        .map(drop)
    }

    fn command(&self, op: Operation) -> Result<Vec<String>> {
        use Operation::*;
        let args: Vec<String> = match op {
            NetworkCreate => ["network", "create", "--subnet", NEW_NET.1, NEW_NET.0]
                .map(String::from)
                .into(),
            NetworkRemove => ["network", "rm", NEW_NET.0].map(String::from).into(),
            ContainerCreate => vec![
                "container".into(),
                "create".into(),
                "--name".into(),
                CONTAINER.into(),
                "--network".into(),
                USER_NET.0.into(),
                "-p".into(),
                format!("{PUBLISHED_TCP}:80"),
                "-p".into(),
                format!("{}:81/udp", PUBLISHED_TCP + 1),
            ],
            ContainerRemove => ["container", "rm", CONTAINER].map(String::from).into(),
            Connect => ["network", "connect", USER_NET.0, CONTAINER]
                .map(String::from)
                .into(),
            Disconnect => ["network", "disconnect", USER_NET.0, CONTAINER]
                .map(String::from)
                .into(),
            FilterAdd => [
                "filter",
                "add",
                "--source",
                FILTER_SOURCE,
                "--action",
                "deny",
            ]
            .map(String::from)
            .into(),
            FilterRemove => vec!["filter".into(), "rm".into(), self.filter_id()?],
        };
        Ok(args)
    }

    fn filter_id(&self) -> Result<String> {
        let records = self.records()?;
        let rule = records.filters.first().context("a filter rule")?;
        Ok(rule.id.to_string())
    }

    fn run(&self, op: Operation) -> Result<()> {
        let args = self.command(op)?;
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.ok(&args).map(drop)
    }

    /// Whether the operation's effect is in place.
    fn done(&self, op: Operation) -> Result<bool> {
        use Operation::*;
        let records = self.records()?;
        let on_user_net = || {
            records
                .container(CONTAINER)
                .is_some_and(|c| c.network_settings.networks.contains_key(USER_NET.0))
        };
        Ok(match op {
            NetworkCreate => records.network(NEW_NET.0).is_some(),
            NetworkRemove => records.network(NEW_NET.0).is_none(),
            ContainerCreate => records.container(CONTAINER).is_some(),
            ContainerRemove => records.container(CONTAINER).is_none(),
            Connect => on_user_net(),
            Disconnect => !on_user_net(),
            FilterAdd => !records.filters.is_empty(),
            FilterRemove => records.filters.is_empty(),
        })
    }

    /// After the operation is done: what it made works.
    fn check_effect(&self, op: Operation) -> Result<()> {
        if !matches!(op, Operation::ContainerCreate | Operation::Connect) {
            return Ok(());
        }
        let inspect = self.agent.cli_json(&["container", "inspect", CONTAINER])?;
        let netns: PathBuf = inspect[0]["NetworkSettings"]["SandboxKey"]
            .as_str()
            .context("SandboxKey")?
            .into();
        let _echo = Echo::start(&netns, 80)?;
        let published = SocketAddrV4::new(NODE_IP, PUBLISHED_TCP);
        ensure!(
            tcp_reaches(
                &self.topology.world.path(),
                published,
                Duration::from_secs(3)
            ),
            "{published} does not answer after {op:?}\n{}",
            self.agent.log_tail(20)
        );
        Ok(())
    }

    /// Undoes the operation's effect and what `prepare` made, each delete twice: the second
    /// must answer not found.
    fn clean_up(&self, op: Operation) -> Result<()> {
        use Operation::*;
        let twice = |args: &[&str]| -> Result<()> {
            self.ok(args)?;
            self.not_found(args)
        };
        match op {
            NetworkCreate => twice(&["network", "rm", NEW_NET.0]),
            NetworkRemove => self.not_found(&["network", "rm", NEW_NET.0]),
            ContainerCreate => twice(&["container", "rm", CONTAINER]),
            ContainerRemove => self.not_found(&["container", "rm", CONTAINER]),
            Connect => {
                twice(&["network", "disconnect", USER_NET.0, CONTAINER])?;
                twice(&["container", "rm", CONTAINER])
            }
            Disconnect => {
                self.not_found(&["network", "disconnect", USER_NET.0, CONTAINER])?;
                twice(&["container", "rm", CONTAINER])
            }
            FilterAdd => {
                let id = self.filter_id()?;
                twice(&["filter", "rm", &id])
            }
            FilterRemove => self.not_found(&["filter", "rm", "0"]),
        }
    }

    /// Restarts the agent with `flags`, killed first (as a crash would) if it runs.
    fn restart(&mut self, flags: &[String]) -> Result<Duration> {
        self.agent.kill();
        self.agent.set_args(flags);
        let start = Instant::now();
        self.agent.spawn()?;
        Ok(start.elapsed())
    }

    /// Runs `op` on an agent armed at `point`'s `nth` time; the agent must die there.
    fn crash(&mut self, op: Operation, point: &str, nth: u32) -> Result<()> {
        let mut armed = self.flags.clone();
        armed.extend(["--crash-at".to_string(), format!("{point}:{nth}")]);
        self.restart(&armed)?;
        let args = self.command(op)?;
        let out = self
            .agent
            .cli(&args.iter().map(String::as_str).collect::<Vec<_>>())?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.agent.exited()?.is_none() {
            ensure!(
                Instant::now() < deadline,
                "{op:?} did not reach crash point {point}:{nth} (the command {}: {})",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
            thread::sleep(Duration::from_millis(10));
        }
        ensure!(
            self.agent
                .log()
                .contains(&format!("crash point {point} reached ({nth})")),
            "the agent died elsewhere than at {point}:{nth}\n{}",
            self.agent.log_tail(20)
        );
        Ok(())
    }

    /// Crashes `op` at `point`'s `nth` time, restarts, and checks that nothing leaked,
    /// that the operation can be finished, and that its deletes are idempotent.
    fn try_point(&mut self, op: Operation, point: &str, nth: u32) -> Result<()> {
        self.prepare(op)?;
        self.check_no_leaks()
            .context("before the crash (an earlier point's leftovers?)")?;
        self.crash(op, point, nth)?;
        let flags = self.flags.clone();
        let took = self.restart(&flags)?;
        self.restarts.push(took);
        self.check_no_leaks().context("after the restart")?;
        if !self.done(op)? {
            self.run(op).context("doing the operation again")?;
            self.check_no_leaks()
                .context("after doing the operation again")?;
        }
        self.check_effect(op)?;
        self.clean_up(op)?;
        self.check_no_leaks().context("after the clean-up")
    }

    /// What is on the node matches the records: links, addresses, namespaces, the
    /// dataplane's entries and pins (eBPF) or rules (iptables).
    fn check_no_leaks(&self) -> Result<()> {
        let records = self.records()?;
        let node = &self.topology.node;
        let bridges: BTreeSet<String> = records.bridges().map(bridge_name).collect();
        let endpoints = records.endpoints();
        let veths: BTreeSet<String> = endpoints.iter().map(|(v, _)| v.clone()).collect();
        let ips: BTreeSet<Ipv4Addr> = endpoints.iter().map(|(_, ip)| *ip).collect();

        let node_links = links(node)?;
        let on_node = |prefix: &str| -> BTreeSet<String> {
            node_links
                .iter()
                .filter(|l| l.starts_with(prefix))
                .cloned()
                .collect()
        };
        ensure!(
            on_node("bpfbr") == bridges,
            "bridges on the node {:?}, networks' {bridges:?}",
            on_node("bpfbr")
        );
        ensure!(
            on_node("veth") == veths,
            "veths on the node {:?}, endpoints' {veths:?}",
            on_node("veth")
        );
        ensure!(
            on_node("bpfc").is_empty(),
            "container-side veths left on the node: {:?}",
            on_node("bpfc")
        );

        let out = node.ip(&["-o", "-4", "addr", "show"])?;
        let addresses: BTreeSet<(String, String)> = String::from_utf8(out.stdout)?
            .lines()
            .filter_map(|l| {
                let mut words = l.split_whitespace();
                let link = words.nth(1)?.to_string();
                let cidr = words.nth(1)?.to_string();
                Some((link, cidr))
            })
            .filter(|(link, _)| link != "lo" && link != UPLINK)
            .collect();
        let wanted: BTreeSet<(String, String)> = records
            .bridges()
            .map(|n| Ok((bridge_name(n), gateway_cidr(n)?)))
            .collect::<Result<_>>()?;
        ensure!(
            addresses == wanted,
            "addresses on the node {addresses:?}, networks' {wanted:?}"
        );

        let sandboxes: BTreeSet<PathBuf> = records
            .containers
            .iter()
            .map(|c| PathBuf::from(&c.network_settings.sandbox_key))
            .collect();
        let namespaces: BTreeSet<PathBuf> = match fs::read_dir(&self.agent.netns_dir) {
            Ok(entries) => entries.flatten().map(|e| e.path()).collect(),
            Err(_) => BTreeSet::new(),
        };
        ensure!(
            namespaces == sandboxes,
            "namespaces {namespaces:?}, containers' {sandboxes:?}"
        );

        // Ports are published by the containers with a way out (a non-internal network).
        let mut wanted_ports = BTreeSet::new();
        for c in &records.containers {
            let way_out = c
                .network_settings
                .networks
                .keys()
                .any(|name| records.network(name).is_some_and(|n| !n.internal));
            if way_out {
                for b in bpfbridge::model::bindings_from_port_map(&c.network_settings.ports)? {
                    wanted_ports.insert((
                        b.host_port,
                        b.proto.as_str().to_string(),
                        b.container_port,
                    ));
                }
            }
        }
        let published: BTreeSet<(u16, String, u16)> = records
            .ports
            .iter()
            .map(|p| (p.host_port, p.proto.clone(), p.container_port))
            .collect();
        ensure!(
            published == wanted_ports,
            "published ports {published:?}, containers' {wanted_ports:?}"
        );
        for p in &records.ports {
            ensure!(
                matches!(p.container_ip, IpAddr::V4(ip) if ips.contains(&ip)),
                "port {} goes to {}, no endpoint's address",
                p.host_port,
                p.container_ip
            );
        }

        if dataplane() == "iptables" {
            self.check_rules(&records, &ips)
        } else if ebpf_checks("map entries and pins") {
            self.check_maps(&records, &veths, &ips)
        } else {
            Ok(())
        }
    }

    /// eBPF: the endpoint and backend maps, the TC link pins and the filter rules hold
    /// what the records say, nothing more.
    fn check_maps(
        &self,
        records: &Records,
        veths: &BTreeSet<String>,
        ips: &BTreeSet<Ipv4Addr>,
    ) -> Result<()> {
        let pin_dir = &self.agent.pin_dir;
        let open = |name: &str| -> Result<Map> {
            let data = MapData::from_pin(pin_dir.join(name))
                .with_context(|| format!("opening pinned map {name}"))?;
            Ok(Map::from_map_data(data)?)
        };
        let endpoints: HashMap<MapData, EndpointKey, EndpointInfo> =
            HashMap::try_from(open(ENDPOINTS)?)?;
        let in_map: BTreeSet<Ipv4Addr> = endpoints
            .keys()
            .map(|k| Ok(Ipv4Addr::from(u32::from_be(k?.ip_be))))
            .collect::<Result<_>>()?;
        ensure!(
            &in_map == ips,
            "ENDPOINTS holds {in_map:?}, the endpoints are {ips:?}"
        );

        let backends: HashMap<MapData, BackendKey, u32> =
            HashMap::try_from(open(PUBLISHED_BACKENDS)?)?;
        let in_map: BTreeSet<(IpAddr, u16)> = backends
            .keys()
            .map(|k| {
                let k = k?;
                Ok((
                    Ipv4Addr::from(u32::from_be(k.container_ip_be)).into(),
                    u16::from_be(k.container_port_be),
                ))
            })
            .collect::<Result<_>>()?;
        let wanted: BTreeSet<(IpAddr, u16)> = records
            .ports
            .iter()
            .map(|p| (p.container_ip, p.container_port))
            .collect();
        ensure!(
            in_map == wanted,
            "PUBLISHED_BACKENDS holds {in_map:?}, the published ports go to {wanted:?}"
        );

        let pins: BTreeSet<String> = fs::read_dir(pin_dir.join("links"))?
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.strip_prefix("tc_").map(str::to_string)
            })
            .collect();
        ensure!(
            &pins == veths,
            "TC link pins for {pins:?}, the veths are {veths:?}"
        );

        let rules: LpmTrie<MapData, FilterKey, FilterRule> =
            LpmTrie::try_from(open(FILTER_RULES)?)?;
        let count = rules.keys().count();
        ensure!(
            count == records.filters.len(),
            "FILTER_RULES holds {count} rules, the records {}",
            records.filters.len()
        );
        Ok(())
    }

    /// iptables: every container address, subnet, bridge and filter source in the node's
    /// rules belongs to a record.
    fn check_rules(&self, records: &Records, ips: &BTreeSet<Ipv4Addr>) -> Result<()> {
        let out = self.topology.node.exec("iptables-save", &[])?;
        ensure!(out.status.success(), "iptables-save failed");
        let rules = String::from_utf8(out.stdout)?;
        let subnets: BTreeSet<Ipv4Net> = records.bridges().filter_map(subnet_of).collect();
        let gateways: BTreeSet<Ipv4Addr> = records
            .bridges()
            .filter_map(|n| n.ipam.config.first()?.gateway.as_deref()?.parse().ok())
            .collect();
        let bridges: BTreeSet<String> = records.bridges().map(bridge_name).collect();
        // Addresses of our networks, those gone included.
        let ours: Vec<Ipv4Net> = [USER_NET.1, INTERNAL_NET.1, NEW_NET.1]
            .iter()
            .map(|s| s.parse())
            .chain(records.network("bridge").and_then(subnet_of).map(Ok))
            .collect::<Result<_, _>>()?;
        for line in rules.lines() {
            for word in line.split_whitespace() {
                if word == "bpfbr0" || word.starts_with("bpfbr-") {
                    ensure!(
                        bridges.contains(word),
                        "a rule for bridge {word}, which no network owns: {line}"
                    );
                }
                if word == FILTER_SOURCE {
                    ensure!(
                        !records.filters.is_empty(),
                        "a rule for filter source {word}, which no filter owns: {line}"
                    );
                }
                let address = word.split(':').next().unwrap_or(word);
                let (ip, prefix) = match address.split_once('/') {
                    Some((ip, prefix)) => (ip, prefix.parse::<u8>().ok()),
                    None => (address, Some(32)),
                };
                let (Ok(ip), Some(prefix)) = (ip.parse::<Ipv4Addr>(), prefix) else {
                    continue;
                };
                if !ours.iter().any(|net| net.contains(&ip)) {
                    continue;
                }
                let owned = match prefix {
                    32 => ips.contains(&ip) || gateways.contains(&ip),
                    _ => Ipv4Net::new(ip, prefix).is_ok_and(|net| subnets.contains(&net)),
                };
                ensure!(owned, "a rule for {address}, which no record owns: {line}");
            }
        }
        Ok(())
    }
}

/// Tries every crash point of `op`; how many.
fn try_operation(world: &mut World, op: Operation) -> Result<usize> {
    let mut tried = 0;
    for (point, times) in op.points() {
        for nth in 1..=times {
            world
                .try_point(op, point, nth)
                .with_context(|| format!("crashed at {point}:{nth}"))?;
            tried += 1;
        }
    }
    Ok(tried)
}

/// How many worlds try operations side by side: each agent start loads and verifies the
/// programs, which is most of the test's time, and CI has two cores.
const WORKERS: usize = 2;

/// One worker's share: the operations it took from `queue`, each with how many points it
/// tried or why it failed, and the restart times of its agents.
fn work(queue: &Mutex<Vec<Operation>>) -> (Vec<(Operation, Result<usize>)>, Vec<Duration>) {
    let mut results = Vec::new();
    let mut restarts = Vec::new();
    let mut world: Option<World> = None;
    while let Some(op) = queue.lock().expect("queue").pop() {
        let result = match world.as_mut() {
            Some(w) => Ok(w),
            None => World::start().map(|w| world.insert(w)),
        }
        .and_then(|w| try_operation(w, op));
        if result.is_err() {
            // What a failed operation left must not fail the next one: a new world.
            if let Some(w) = world.take() {
                restarts.extend(w.restarts);
            }
        }
        results.push((op, result));
    }
    if let Some(w) = world {
        restarts.extend(w.restarts);
    }
    (results, restarts)
}

#[test]
fn a_crash_at_any_step_leaves_nothing_half_made() -> Result<()> {
    // Every point the agent has is tried by some operation here.
    let listed = std::process::Command::new(bpfbridge_tests::bpfbridge_bin())
        .args(["debug", "crash-points"])
        .output()?;
    ensure!(listed.status.success(), "bpfbridge debug crash-points");
    let covered: BTreeSet<&str> = OPERATIONS
        .iter()
        .flat_map(|op| op.points())
        .map(|(point, _)| point)
        .collect();
    for point in String::from_utf8(listed.stdout)?.lines() {
        ensure!(
            covered.contains(point),
            "crash point {point} is tried by no operation of this test: add it"
        );
    }

    // The longest operations first (popped from the end), so the workers finish together.
    let mut queue = OPERATIONS.to_vec();
    queue.sort_by_key(|op| op.points().iter().map(|(_, n)| n).sum::<u32>());
    let queue = Mutex::new(queue);
    let shares: Vec<_> = thread::scope(|scope| {
        let workers: Vec<_> = (0..WORKERS).map(|_| scope.spawn(|| work(&queue))).collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("a worker panicked"))
            .collect()
    });
    let mut tried = 0;
    let mut restarts = Vec::new();
    let mut failures = Vec::new();
    for (results, times) in shares {
        restarts.extend(times);
        for (op, result) in results {
            match result {
                Ok(points) => tried += points,
                Err(e) => failures.push(format!("{op:?}: {e:#}")),
            }
        }
    }
    if !failures.is_empty() {
        bail!("{}", failures.join("\n\n"));
    }
    restarts.sort();
    let millis = |d: Duration| d.as_millis() as u64;
    let median = restarts
        .get(restarts.len() / 2)
        .copied()
        .unwrap_or_default();
    let slowest = restarts.last().copied().unwrap_or_default();
    eprintln!(
        "{tried} crash points tried; restart after a crash: median {median:?}, slowest {slowest:?}"
    );
    figures::record(
        "faults",
        serde_json::json!({
            "crash_points_tried": tried,
            "leaks_found": 0,
            "restart_median_ms": millis(median),
            "restart_max_ms": millis(slowest),
        }),
    )
}
