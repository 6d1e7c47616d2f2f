//! Docker 28's bridge semantics: what a world host with a route to the container subnets
//! via the node reaches at the containers' own addresses in each gateway mode (moby#49325:
//! nothing in `nat` mode), isolated networks, the choice of the default gateway among
//! several networks by `--gw-priority`, and options Docker's bridge driver ignores.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream},
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use bpfbridge_tests::{
    Agent, Echo, NODE_IP, NODE_IPV6, Topology, UPLINK, WORLD_IP, WORLD_IPV6, ebpf_checks, in_netns,
    ping_reaches, request, run, serve_once, serve_once_v6, skip_without_dataplane_ipv6,
    tcp_reaches, udp_reaches,
};
use serde_json::Value;

const WAIT: Duration = Duration::from_millis(800);
/// IPv6's first exchange may wait for neighbour discovery on the bridge.
const WAIT6: Duration = Duration::from_secs(3);

/// Runs the CLI and expects success; returns stdout and stderr.
fn ok(agent: &Agent, args: &[&str]) -> Result<(String, String)> {
    let out = agent.cli(args)?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    ensure!(
        out.status.success(),
        "bpfbridge {}: {stderr}",
        args.join(" ")
    );
    Ok((String::from_utf8(out.stdout)?, stderr))
}

fn ip_on(container: &Value, network: &str) -> Result<Ipv4Addr> {
    container["NetworkSettings"]["Networks"][network]["IPAddress"]
        .as_str()
        .with_context(|| format!("no address on {network}: {container}"))?
        .parse()
        .context("address")
}

/// What the world reaches at a container's own address: its published container port
/// (TCP and UDP), an unpublished one, and ping.
#[derive(Debug, PartialEq, Eq)]
struct Reach {
    published: bool,
    published_udp: bool,
    unpublished: bool,
    ping: bool,
}

impl Reach {
    const NOTHING: Reach = Reach {
        published: false,
        published_udp: false,
        unpublished: false,
        ping: false,
    };
    const EVERYTHING: Reach = Reach {
        published: true,
        published_udp: true,
        unpublished: true,
        ping: true,
    };
    const PUBLISHED: Reach = Reach {
        published: true,
        published_udp: true,
        unpublished: false,
        ping: false,
    };
}

/// A container on `network` publishing its port 80 (TCP and UDP) on `host_port`, with echo
/// servers on 80 and 22: what the world reaches at its address, and whether the published
/// host port answers through the node.
fn probe(agent: &Agent, topology: &Topology, network: &str, host_port: u16) -> Result<Reach> {
    let name = format!("c-{network}");
    let publish_tcp = format!("{host_port}:80");
    let publish_udp = format!("{host_port}:80/udp");
    let (json, netns) = agent.create_container(&[
        &name,
        "--network",
        network,
        "-p",
        &publish_tcp,
        "-p",
        &publish_udp,
    ])?;
    let ip = ip_on(&json, network)?;
    let _servers = (Echo::start(&netns, 80)?, Echo::start(&netns, 22)?);
    let world = topology.world.path();
    ensure!(
        tcp_reaches(&world, SocketAddrV4::new(NODE_IP, host_port), WAIT),
        "{network}: the published host port answers through the node"
    );
    Ok(Reach {
        published: tcp_reaches(&world, SocketAddrV4::new(ip, 80), WAIT),
        published_udp: udp_reaches(&world, SocketAddrV4::new(ip, 80), WAIT),
        unpublished: tcp_reaches(&world, SocketAddrV4::new(ip, 22), WAIT),
        ping: ping_reaches(&world, ip),
    })
}

/// Gives the world a route to every bridge network (Docker's pools and the subnets the
/// tests choose) through the node, as a LAN host that routes the container subnets via
/// the node has.
fn route_pools_via_node(topology: &Topology) -> Result<()> {
    for pool in ["172.16.0.0/12", "192.168.0.0/16", "10.0.0.0/8"] {
        // The topology may already route some of them through the node: replace.
        topology
            .world
            .ip(&["route", "replace", pool, "via", &NODE_IP.to_string()])?;
    }
    Ok(())
}

/// The world's route to the IPv6 pools (ULA, fd00::/8) through the node's IPv6 address.
fn route_ula_via_node(topology: &Topology) -> Result<()> {
    topology.world.ip(&[
        "-6",
        "route",
        "replace",
        "fd00::/8",
        "via",
        &NODE_IPV6.to_string(),
    ])?;
    Ok(())
}

#[test]
fn direct_access_by_gateway_mode() -> Result<()> {
    let topology = Topology::new()?;
    route_pools_via_node(&topology)?;
    let agent = Agent::start(&topology)?;
    let cases = [
        ("natnet", vec![], Reach::NOTHING),
        (
            "routednet",
            vec!["com.docker.network.bridge.gateway_mode_ipv4=routed"],
            Reach {
                ping: true,
                ..Reach::PUBLISHED
            },
        ),
        (
            "opennet",
            vec!["com.docker.network.bridge.gateway_mode_ipv4=nat-unprotected"],
            Reach::EVERYTHING,
        ),
        (
            "nomasq",
            vec!["com.docker.network.bridge.enable_ip_masquerade=false"],
            Reach::NOTHING,
        ),
    ];
    let trusted = format!("com.docker.network.bridge.trusted_host_interfaces=lo:{UPLINK}");
    let cases = cases
        .into_iter()
        .chain([("trustednet", vec![trusted.as_str()], Reach::PUBLISHED)]);
    for (i, (network, options, expected)) in cases.enumerate() {
        let mut args = vec!["network", "create", network];
        for option in &options {
            args.extend(["-o", option]);
        }
        ok(&agent, &args)?;
        let reach = probe(&agent, &topology, network, 8100 + i as u16)?;
        assert_eq!(reach, expected, "{network} {options:?}");
    }
    if ebpf_checks("the direct-access drop counter") {
        ensure!(agent.counter("uplink_ingress.drop.direct_access")? >= 4);
    }
    Ok(())
}

/// A TCP server on `[::]:port` in a namespace that answers `pong LINE`, until dropped
/// (the shared `Echo` listens on IPv4 only).
struct Echo6 {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Echo6 {
    fn start(netns: &Path, port: u16) -> Result<Self> {
        let listener = in_netns(netns, || TcpListener::bind(("::", port)))?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let deadline = Instant::now() + Duration::from_secs(120);
        let thread = thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) && Instant::now() < deadline {
                let Ok((mut stream, _)) = listener.accept() else {
                    thread::sleep(Duration::from_millis(10));
                    continue;
                };
                let _ = stream.set_nonblocking(false);
                let _ = stream.set_read_timeout(Some(WAIT));
                let mut buf = [0u8; 64];
                if let Ok(n) = stream.read(&mut buf) {
                    let _ = stream.write_all(b"pong ");
                    let _ = stream.write_all(&buf[..n]);
                }
            }
        });
        Ok(Echo6 {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Echo6 {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Whether a TCP exchange from `netns` to the IPv6 `to` succeeds within [`WAIT6`].
fn tcp6_reaches(netns: &Path, to: SocketAddr) -> bool {
    in_netns(netns, || {
        let Ok(mut stream) = TcpStream::connect_timeout(&to, WAIT6) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(WAIT6));
        let mut answer = String::new();
        stream.write_all(b"hi").is_ok()
            && stream.read_to_string(&mut answer).is_ok()
            && answer == "pong hi"
    })
}

/// Docker 28's direct access for IPv6 (ip6tables' raw-table drop, then the FORWARD rules):
/// a world host with a route to the IPv6 subnets via the node reaches nothing at a
/// container's own IPv6 address on a `nat` network, published container port included,
/// while the published host port answers through the node; on a `routed` network the
/// published container port and ping6 answer at the container's address, an unpublished
/// port does not; from a trusted interface a `nat` network's published container port
/// answers, nothing else. A container's own IPv6 flow to the world gets its replies in
/// every mode (masqueraded, or routed with its own address).
#[test]
fn direct_ipv6_access_by_gateway_mode() -> Result<()> {
    let topology = Topology::new()?.with_ipv6()?;
    route_ula_via_node(&topology)?;
    let agent = Agent::start(&topology)?;
    if skip_without_dataplane_ipv6(&agent, "the IPv6 direct-access drop")? {
        return Ok(());
    }
    // Both families in the same mode: a dual-stack network's direct access is the same
    // whichever family's mode decides it.
    let routed = [
        "com.docker.network.bridge.gateway_mode_ipv4=routed",
        "com.docker.network.bridge.gateway_mode_ipv6=routed",
    ];
    let trusted_option = format!("com.docker.network.bridge.trusted_host_interfaces=lo:{UPLINK}");
    let trusted = [trusted_option.as_str()];
    let routed_reach = Reach {
        ping: true,
        ..Reach::PUBLISHED
    };
    let cases: [(&str, &[&str], Reach); 3] = [
        ("nat6", &[], Reach::NOTHING),
        ("routed6", &routed, routed_reach),
        ("trusted6", &trusted, Reach::PUBLISHED),
    ];
    let world = topology.world.path();
    let world_server_port = 9300;
    let _world_server = Echo6::start(&world, world_server_port)?;
    for (i, (network, options, expected)) in cases.into_iter().enumerate() {
        let subnet4 = format!("10.{}.0.0/24", 81 + i);
        let subnet6 = format!("fd00:{}::/64", 81 + i);
        let mut args = vec![
            "network", "create", network, "--ipv6", "--subnet", &subnet4, "--subnet", &subnet6,
        ];
        for option in options {
            args.extend(["-o", option]);
        }
        ok(&agent, &args)?;
        let host_port = 8200 + i as u16;
        let publish = format!("{host_port}:80");
        let name = format!("c-{network}");
        let (json, netns) =
            agent.create_container(&[&name, "--network", network, "-p", &publish])?;
        let ip: Ipv6Addr = json["NetworkSettings"]["Networks"][network]["GlobalIPv6Address"]
            .as_str()
            .context("GlobalIPv6Address")?
            .parse()?;
        let _servers = (Echo6::start(&netns, 80)?, Echo6::start(&netns, 22)?);
        ensure!(
            tcp6_reaches(&world, SocketAddr::new(NODE_IPV6.into(), host_port)),
            "{network}: the published host port answers through the node over IPv6"
        );
        ensure!(
            tcp6_reaches(
                &netns,
                SocketAddr::new(WORLD_IPV6.into(), world_server_port)
            ),
            "{network}: the container's own IPv6 flow to the world gets its replies"
        );
        // TCP and ping6 (IPv6's UDP meets the same checks as its TCP).
        let reach = (
            tcp6_reaches(&world, SocketAddr::new(ip.into(), 80)),
            tcp6_reaches(&world, SocketAddr::new(ip.into(), 22)),
            ping_reaches(&world, ip),
        );
        assert_eq!(
            reach,
            (expected.published, expected.unpublished, expected.ping),
            "{network}: (published, unpublished, ping6) at [{ip}]"
        );
    }
    if ebpf_checks("the direct-access drop counter") {
        ensure!(agent.counter("uplink_ingress.drop.direct_access")? >= 4);
    }
    Ok(())
}

/// Docker 28 applies each family's gateway mode to that family: on a dual-stack network
/// with `nat` IPv4 and `routed` IPv6 (the common setup), the world reaches the published
/// container port at the container's IPv6 address and not at its IPv4 one, and sees the
/// container's IPv4 flows from the node's address and its IPv6 flows from the container's
/// own; the reverse with `routed` IPv4 and `nat` IPv6.
#[test]
fn each_family_of_a_dual_stack_network_follows_its_own_gateway_mode() -> Result<()> {
    let topology = Topology::new()?.with_ipv6()?;
    route_pools_via_node(&topology)?;
    route_ula_via_node(&topology)?;
    let agent = Agent::start(&topology)?;
    if skip_without_dataplane_ipv6(&agent, "the per-family gateway modes")? {
        return Ok(());
    }
    let world = topology.world.path();
    // (network, IPv4 mode, IPv6 mode)
    let cases = [
        ("nat4routed6", "nat", "routed"),
        ("routed4nat6", "routed", "nat"),
    ];
    for (i, (network, mode4, mode6)) in cases.into_iter().enumerate() {
        let subnet4 = format!("10.{}.0.0/24", 91 + i);
        let subnet6 = format!("fd00:{}::/64", 91 + i);
        let option4 = format!("com.docker.network.bridge.gateway_mode_ipv4={mode4}");
        let option6 = format!("com.docker.network.bridge.gateway_mode_ipv6={mode6}");
        ok(
            &agent,
            &[
                "network", "create", network, "--ipv6", "--subnet", &subnet4, "--subnet", &subnet6,
                "-o", &option4, "-o", &option6,
            ],
        )?;
        let host_port = 8300 + i as u16;
        let publish = format!("{host_port}:80");
        let name = format!("c-{network}");
        let (json, netns) =
            agent.create_container(&[&name, "--network", network, "-p", &publish])?;
        let ip4 = ip_on(&json, network)?;
        let ip6: Ipv6Addr = json["NetworkSettings"]["Networks"][network]["GlobalIPv6Address"]
            .as_str()
            .context("GlobalIPv6Address")?
            .parse()?;
        // One server on [::]:80 answers both families (IPv4 as mapped addresses).
        let _server = Echo6::start(&netns, 80)?;
        ensure!(
            tcp_reaches(&world, SocketAddrV4::new(NODE_IP, host_port), WAIT6),
            "{network}: the published host port answers through the node over IPv4"
        );
        ensure!(
            tcp6_reaches(&world, SocketAddr::new(NODE_IPV6.into(), host_port)),
            "{network}: the published host port answers through the node over IPv6"
        );
        let (routed4, routed6) = (mode4 == "routed", mode6 == "routed");
        assert_eq!(
            tcp_reaches(&world, SocketAddrV4::new(ip4, 80), WAIT6),
            routed4,
            "{network}: the published container port at {ip4}:80 (IPv4 {mode4})"
        );
        assert_eq!(
            tcp6_reaches(&world, SocketAddr::new(ip6.into(), 80)),
            routed6,
            "{network}: the published container port at [{ip6}]:80 (IPv6 {mode6})"
        );
        // The source the world sees for each family's outgoing flow: the node's address
        // where the family masquerades (nat), the container's own where it is routed.
        let server = serve_once(&world, 9300 + i as u16);
        let answer = request(&netns, (WORLD_IP, 9300 + i as u16), "out4")?;
        ensure!(answer == "pong out4", "{network}: IPv4 answer {answer:?}");
        let seen4 = server.join().expect("server thread")?.ip();
        let expected4 = if routed4 { ip4 } else { NODE_IP };
        assert_eq!(seen4, expected4, "{network}: IPv4 source (IPv4 {mode4})");
        let server = serve_once_v6(&world, 9310 + i as u16);
        let answer = request(&netns, (WORLD_IPV6, 9310 + i as u16), "out6")?;
        ensure!(answer == "pong out6", "{network}: IPv6 answer {answer:?}");
        let seen6 = server.join().expect("server thread")?.ip();
        let expected6 = if routed6 { ip6 } else { NODE_IPV6 };
        assert_eq!(seen6, expected6, "{network}: IPv6 source (IPv6 {mode6})");
    }
    if ebpf_checks("the direct-access drop counter") {
        ensure!(agent.counter("uplink_ingress.drop.direct_access")? >= 2);
    }
    Ok(())
}

/// `--allow-direct-routing` opens the published container ports of every nat network.
#[test]
fn allow_direct_routing_opens_published_ports() -> Result<()> {
    let topology = Topology::new()?;
    route_pools_via_node(&topology)?;
    let agent = Agent::start_with(&topology, &["--allow-direct-routing"])?;
    ok(&agent, &["network", "create", "natnet"])?;
    assert_eq!(probe(&agent, &topology, "natnet", 8200)?, Reach::PUBLISHED);
    Ok(())
}

/// The routes inside a container's namespace, as `ip route` prints them.
fn routes(netns: &std::path::Path) -> Result<String> {
    let out = run(
        "nsenter",
        &[&format!("--net={}", netns.display()), "ip", "route"],
    )?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn default_via(netns: &std::path::Path) -> Result<Option<String>> {
    Ok(routes(netns)?
        .lines()
        .find_map(|l| l.strip_prefix("default via "))
        .and_then(|rest| rest.split_whitespace().next())
        .map(String::from))
}

/// The node's addresses of one family (`-4` or `-6`), as `ip -o addr` lists them.
fn node_addresses(topology: &Topology, family: &str) -> Result<String> {
    let out = run(
        "nsenter",
        &[
            &format!("--net={}", topology.node.path().display()),
            "ip",
            family,
            "-o",
            "addr",
        ],
    )?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn isolated_networks_have_no_gateway_and_no_route_out() -> Result<()> {
    let topology = Topology::new()?;
    let agent = Agent::start(&topology)?;
    let refused = agent.cli(&[
        "network",
        "create",
        "notinternal",
        "-o",
        "com.docker.network.bridge.gateway_mode_ipv4=isolated",
    ])?;
    ensure!(!refused.status.success(), "isolated needs --internal");
    ok(
        &agent,
        &[
            "network",
            "create",
            "iso",
            "--internal",
            "--subnet",
            "10.77.0.0/24",
            "-o",
            "com.docker.network.bridge.gateway_mode_ipv4=isolated",
        ],
    )?;
    let (json, netns) = agent.create_container(&["lonely", "--network", "iso"])?;
    ensure!(
        json["NetworkSettings"]["Networks"]["iso"]["Gateway"] == "",
        "no gateway: {json}"
    );
    ensure!(default_via(&netns)?.is_none(), "{}", routes(&netns)?);
    // No address of the node's on the bridge: the node is not reachable from it either.
    let addresses = node_addresses(&topology, "-4")?;
    ensure!(!addresses.contains("10.77.0."), "{addresses}");
    // IPv6's isolated mode leaves the IPv6 gateway address off the bridge as well.
    ok(
        &agent,
        &[
            "network",
            "create",
            "iso6",
            "--internal",
            "--ipv6",
            "--subnet",
            "fd00:77::/64",
            "-o",
            "com.docker.network.bridge.gateway_mode_ipv6=isolated",
        ],
    )?;
    let addresses = node_addresses(&topology, "-6")?;
    ensure!(!addresses.contains("fd00:77::"), "{addresses}");
    let reaches_out = in_netns(&netns, || {
        std::net::TcpStream::connect_timeout(&SocketAddrV4::new(NODE_IP, 22).into(), WAIT)
    });
    ensure!(
        matches!(&reaches_out, Err(e) if e.kind() != std::io::ErrorKind::ConnectionRefused),
        "no way out: {reaches_out:?}"
    );
    Ok(())
}

#[test]
fn gw_priority_chooses_the_default_route_and_reconnecting_changes_it() -> Result<()> {
    let topology = Topology::new()?;
    let agent = Agent::start(&topology)?;
    ok(
        &agent,
        &["network", "create", "alpha", "--subnet", "10.81.0.0/24"],
    )?;
    ok(
        &agent,
        &["network", "create", "beta", "--subnet", "10.82.0.0/24"],
    )?;
    // Equal priorities: the network whose name sorts first, whatever the order given.
    let (_, plain) =
        agent.create_container(&["plain", "--network", "beta", "--network", "alpha"])?;
    assert_eq!(default_via(&plain)?.as_deref(), Some("10.81.0.1"));
    // The highest priority wins.
    let (json, web) = agent.create_container(&[
        "web",
        "--network",
        "name=alpha",
        "--network",
        "name=beta,gw-priority=10",
        "-p",
        "8300:80",
    ])?;
    assert_eq!(default_via(&web)?.as_deref(), Some("10.82.0.1"));
    assert_eq!(
        json["NetworkSettings"]["Networks"]["beta"]["GwPriority"],
        10
    );
    assert_eq!(
        json["NetworkSettings"]["Networks"]["alpha"]["GwPriority"],
        0
    );
    let _server = Echo::start(&web, 80)?;
    let world = topology.world.path();
    ensure!(tcp_reaches(&world, SocketAddrV4::new(NODE_IP, 8300), WAIT));
    // Reconnected with a higher priority, alpha takes the default route and the ports.
    ok(&agent, &["network", "disconnect", "alpha", "web"])?;
    ok(
        &agent,
        &["network", "connect", "alpha", "web", "--gw-priority", "20"],
    )?;
    assert_eq!(default_via(&web)?.as_deref(), Some("10.81.0.1"));
    let json = agent.cli_json(&["container", "inspect", "web"])?[0].clone();
    assert_eq!(
        json["NetworkSettings"]["Networks"]["alpha"]["GwPriority"],
        20
    );
    ensure!(tcp_reaches(&world, SocketAddrV4::new(NODE_IP, 8300), WAIT));
    // A negative priority on the only way out still carries it.
    let (_, low) = agent.create_container(&["low", "--network", "alpha", "--gw-priority", "-5"])?;
    assert_eq!(default_via(&low)?.as_deref(), Some("10.81.0.1"));
    Ok(())
}

#[test]
fn unknown_options_are_accepted_and_reported_but_not_our_own() -> Result<()> {
    let topology = Topology::new()?;
    let agent = Agent::start(&topology)?;
    let (_, stderr) = ok(
        &agent,
        &[
            "network",
            "create",
            "compose",
            "-o",
            "com.docker.network.bridge.gateway_mode_ipv6=routed",
            "-o",
            "com.docker.network.windowsshim.hnsid=1",
            "-o",
            "com.docker.network.container_iface_prefix=app",
        ],
    )?;
    ensure!(
        stderr.contains("com.docker.network.windowsshim.hnsid") && stderr.contains("ignored"),
        "{stderr}"
    );
    ensure!(!stderr.contains("gateway_mode_ipv6"), "{stderr}");
    let network = agent.cli_json(&["network", "inspect", "compose"])?[0].clone();
    assert_eq!(
        network["Options"]["com.docker.network.windowsshim.hnsid"],
        "1"
    );
    let (json, netns) = agent.create_container(&["app", "--network", "compose"])?;
    ensure!(json["NetworkSettings"]["Networks"]["compose"].is_object());
    let links = run(
        "nsenter",
        &[&format!("--net={}", netns.display()), "ip", "-o", "link"],
    )?;
    let links = String::from_utf8_lossy(&links.stdout);
    ensure!(links.contains(" app0"), "{links}");
    ok(&agent, &["network", "create", "second"])?;
    ok(
        &agent,
        &[
            "network",
            "connect",
            "second",
            "app",
            "--driver-opt",
            "com.docker.network.endpoint.ifname=back",
        ],
    )?;
    let links = run(
        "nsenter",
        &[&format!("--net={}", netns.display()), "ip", "-o", "link"],
    )?;
    ensure!(
        String::from_utf8_lossy(&links.stdout).contains(" back"),
        "{}",
        String::from_utf8_lossy(&links.stdout)
    );
    let refused = agent.cli(&["network", "create", "typo", "-o", "bpfbridge.icc=false"])?;
    ensure!(!refused.status.success());
    ensure!(
        String::from_utf8_lossy(&refused.stderr).contains("unknown network option"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    Ok(())
}
