//! IPv6 dual stack (`--ipv6` networks), on a topology whose uplink carries 2001:db8:1::/64
//! beside its IPv4 subnet: addresses and inspect fields, container to container, the
//! world through the node's IPv6 address (masquerade, and its flows ended when that
//! address goes), published ports on `[::]` with the client's address preserved, both
//! kinds of IPv6 flow in `conntrack ls` and `monitor`, `monitor`'s IPv6 drops, `[::1]`
//! from the node, `icc=false`, AAAA answers, IPv6-only networks (Docker 28's `--ipv4=false`), and the
//! refusals (an IPv6 port for a container without IPv6, an IPv4 one for a container
//! without IPv4, a network without a family); and an IPv6 `--peer-node` route.
//!
//! What needs the dataplane to handle IPv6 traffic (translation, masquerade, policy) is
//! skipped, with the reason, on a dataplane whose `info` says `DataplaneIPv6: false`.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use bpfbridge_tests::{
    Agent, NODE_IP, NODE_IPV6, Topology, UPLINK, WORLD_IP, WORLD_IPV6, ebpf_checks,
    enter_netns_on_this_thread, in_netns, nettool, skip_without_dataplane_ipv6,
};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(3);

fn ok(agent: &Agent, args: &[&str]) -> Result<String> {
    let out = agent.cli(args)?;
    ensure!(
        out.status.success(),
        "bpfbridge {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

fn refused(agent: &Agent, args: &[&str]) -> Result<String> {
    let out = agent.cli(args)?;
    ensure!(
        !out.status.success(),
        "bpfbridge {} was accepted",
        args.join(" ")
    );
    Ok(String::from_utf8(out.stderr)?)
}

/// The container's IPv6 address on `network`, from its inspect JSON.
fn ipv6_on(json: &Value, network: &str) -> Result<Ipv6Addr> {
    json["NetworkSettings"]["Networks"][network]["GlobalIPv6Address"]
        .as_str()
        .context("GlobalIPv6Address")?
        .parse()
        .context("an IPv6 address")
}

/// A TCP server on `[::]:port` (both families) in a namespace: answers `pong LINE` to each
/// connection and reports the peers it saw, until dropped.
struct Server {
    stop: Arc<AtomicBool>,
    peers: Arc<std::sync::Mutex<Vec<SocketAddr>>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Server {
    fn start(netns: &Path, port: u16) -> Result<Self> {
        let listener = in_netns(netns, || TcpListener::bind(("::", port)))?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let peers = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (flag, seen) = (stop.clone(), peers.clone());
        let deadline = Instant::now() + Duration::from_secs(120);
        let thread = thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) && Instant::now() < deadline {
                match listener.accept() {
                    Ok((mut stream, peer)) => {
                        seen.lock().expect("peers").push(peer);
                        let _ = stream.set_nonblocking(false);
                        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
                        let mut buf = [0u8; 256];
                        if let Ok(n) = stream.read(&mut buf) {
                            let _ = stream.write_all(b"pong ");
                            let _ = stream.write_all(&buf[..n]);
                        }
                    }
                    Err(_) => thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Ok(Server {
            stop,
            peers,
            thread: Some(thread),
        })
    }

    fn last_peer(&self) -> Option<SocketAddr> {
        self.peers.lock().expect("peers").last().copied()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One exchange with `to` from `netns`: `Some(answer)`, or `None` when it fails in `WAIT`.
fn exchange(netns: &Path, to: SocketAddr) -> Option<String> {
    let netns = netns.to_path_buf();
    thread::spawn(move || -> Option<String> {
        enter_netns_on_this_thread(&netns).ok()?;
        let mut stream = TcpStream::connect_timeout(&to, WAIT).ok()?;
        stream.set_read_timeout(Some(WAIT)).ok()?;
        stream.write_all(b"hi").ok()?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer).ok()?;
        Some(answer)
    })
    .join()
    .ok()
    .flatten()
}

/// Runs `ip ARGS` in the namespace at `netns`; its stdout.
fn ip_in(netns: &Path, args: &[&str]) -> Result<String> {
    let out = in_netns(netns, || {
        std::process::Command::new("ip").args(args).output()
    })?;
    ensure!(out.status.success(), "ip {}: {:?}", args.join(" "), out);
    Ok(String::from_utf8(out.stdout)?)
}

/// A dual-stack topology, an agent, and a network `v6` on `10.66.0.0/24` and
/// `fd00:66::/64` (icc per `icc`).
fn dual_stack(icc: bool) -> Result<(Topology, Agent)> {
    let topology = Topology::new()?.with_ipv6()?;
    let agent = Agent::start(&topology)?;
    let icc_option = format!("com.docker.network.bridge.enable_icc={icc}");
    ok(
        &agent,
        &[
            "network",
            "create",
            "v6",
            "--ipv6",
            "--subnet",
            "10.66.0.0/24",
            "--subnet",
            "fd00:66::/64",
            "-o",
            &icc_option,
        ],
    )?;
    Ok((topology, agent))
}

#[test]
fn ipv6_networks_give_addresses_and_inspect_shows_them() -> Result<()> {
    let (_topology, agent) = dual_stack(true)?;
    let network = &agent.cli_json(&["network", "inspect", "v6"])?[0];
    assert_eq!(network["EnableIPv6"], true);
    let configs = network["IPAM"]["Config"].as_array().context("Config")?;
    let subnets: Vec<&str> = configs
        .iter()
        .filter_map(|c| c["Subnet"].as_str())
        .collect();
    assert_eq!(subnets, ["10.66.0.0/24", "fd00:66::/64"]);
    assert_eq!(configs[1]["Gateway"], "fd00:66::1");

    let (a, _) = agent.create_container(&["a", "--network", "v6"])?;
    let (b, _) = agent.create_container(&["b", "--network", "v6", "--ip6", "fd00:66::99"])?;
    let settings = &a["NetworkSettings"]["Networks"]["v6"];
    assert_eq!(settings["GlobalIPv6Address"], "fd00:66::2");
    assert_eq!(settings["GlobalIPv6PrefixLen"], 64);
    assert_eq!(settings["IPv6Gateway"], "fd00:66::1");
    assert_eq!(a["NetworkSettings"]["LinkLocalIPv6Address"], "");
    assert_eq!(ipv6_on(&b, "v6")?, "fd00:66::99".parse::<Ipv6Addr>()?);
    let network = &agent.cli_json(&["network", "inspect", "v6"])?[0];
    let shown: Vec<&str> = network["Containers"]
        .as_object()
        .context("Containers")?
        .values()
        .filter_map(|c| c["IPv6Address"].as_str())
        .collect();
    assert!(shown.contains(&"fd00:66::99/64"), "{shown:?}");

    // network connect --ip6.
    agent.create_container(&["late"])?;
    ok(
        &agent,
        &["network", "connect", "v6", "late", "--ip6", "fd00:66::77"],
    )?;
    let late = &agent.cli_json(&["container", "inspect", "late"])?[0];
    assert_eq!(ipv6_on(late, "v6")?, "fd00:66::77".parse::<Ipv6Addr>()?);
    assert_eq!(
        late["NetworkSettings"]["Networks"]["v6"]["IPAMConfig"]["IPv6Address"],
        "fd00:66::77"
    );

    // Without a subnet, a /64 of the agent's unique local /48 (Docker 27's pool).
    ok(&agent, &["network", "create", "auto6", "--ipv6"])?;
    let auto = &agent.cli_json(&["network", "inspect", "auto6"])?[0];
    let subnet = auto["IPAM"]["Config"][1]["Subnet"]
        .as_str()
        .context("an IPv6 subnet")?;
    assert!(
        subnet.starts_with("fd") && subnet.ends_with("::/64"),
        "{subnet}"
    );

    // What cannot be: --ip6 outside the IPv6 subnet, a network without any family.
    let error = refused(
        &agent,
        &[
            "container",
            "create",
            "c",
            "--network",
            "auto6",
            "--ip6",
            "fd00:66::5",
        ],
    )?;
    assert!(error.contains("not a usable address"), "{error}");
    let error = refused(&agent, &["network", "create", "nofamily", "--ipv4=false"])?;
    assert!(error.contains("IPv4 or IPv6 must be enabled"), "{error}");
    Ok(())
}

#[test]
fn containers_reach_each_other_and_the_world_over_ipv6() -> Result<()> {
    let (topology, agent) = dual_stack(true)?;
    let (_, a_ns) = agent.create_container(&["a", "--network", "v6"])?;
    let (b, b_ns) = agent.create_container(&["b", "--network", "v6"])?;
    let b_ip = ipv6_on(&b, "v6")?;
    let _server = Server::start(&b_ns, 7600)?;
    assert_eq!(
        exchange(&a_ns, SocketAddr::new(b_ip.into(), 7600)).as_deref(),
        Some("pong hi"),
        "a container reaches another over IPv6 on their bridge"
    );

    if skip_without_dataplane_ipv6(&agent, "IPv6 masquerade to the world")? {
        return Ok(());
    }
    let world = Server::start(&topology.world.path(), 7601)?;
    assert_eq!(
        exchange(&a_ns, SocketAddr::new(WORLD_IPV6.into(), 7601)).as_deref(),
        Some("pong hi")
    );
    assert_eq!(
        world.last_peer().map(|p| p.ip()),
        Some(IpAddr::V6(NODE_IPV6)),
        "the world sees the node's IPv6 address"
    );
    Ok(())
}

/// A masquerading network's pings to the world leave with the node's IPv6 address (the
/// world counts them by source) and their replies come back, and the world's "port
/// unreachable" about a masqueraded UDP flow reaches the container's socket as a refusal
/// (ip6tables' MASQUERADE and its RELATED errors, on both dataplanes).
#[test]
fn pings_and_icmpv6_errors_are_masqueraded_over_ipv6() -> Result<()> {
    let (topology, agent) = dual_stack(true)?;
    if skip_without_dataplane_ipv6(&agent, "ICMPv6 through IPv6 masquerade")? {
        return Ok(());
    }
    let (_, ns) = agent.create_container(&["a", "--network", "v6"])?;
    let world = &topology.world;
    let from_node = NODE_IPV6.to_string();
    let counted = [
        "INPUT",
        "-p",
        "icmpv6",
        "--icmpv6-type",
        "echo-request",
        "-s",
        &from_node,
        "-j",
        "ACCEPT",
    ];
    let mut rule = vec!["-w", "-A"];
    rule.extend(counted);
    ensure!(
        world.exec("ip6tables", &rule)?.status.success(),
        "ip6tables in the world"
    );
    let pings = 3;
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net={}", ns.display()))
        .args(["busybox", "ping", "-c", &pings.to_string(), "-W", "2"])
        .arg(WORLD_IPV6.to_string())
        .output()?;
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        report.contains(&format!(
            "{pings} packets transmitted, {pings} packets received"
        )),
        "every echo reply comes back: {report}"
    );
    let listed = world.exec("ip6tables", &["-w", "-L", "INPUT", "-v", "-n", "-x"])?;
    let listed = String::from_utf8(listed.stdout)?;
    let seen: u64 = listed
        .lines()
        .find(|line| line.contains(&from_node))
        .and_then(|line| line.split_whitespace().next()?.parse().ok())
        .context("the world's counting rule")?;
    assert_eq!(
        seen, pings,
        "the world sees the pings from the node's address: {listed}"
    );

    // Nothing listens on this world port: its "port unreachable" goes to the node's
    // address and must reach the container's socket.
    let refused = in_netns(&ns, || -> std::io::Result<()> {
        let socket = std::net::UdpSocket::bind("[::]:0")?;
        socket.connect(SocketAddr::new(WORLD_IPV6.into(), 7399))?;
        socket.set_read_timeout(Some(WAIT))?;
        socket.send(b"anyone?")?;
        let mut buf = [0u8; 16];
        socket.recv(&mut buf).map(drop)
    });
    let err = refused.expect_err("no answer can come");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
    if bpfbridge_tests::ebpf_checks("the masquerade and ICMPv6 error counters") {
        assert!(agent.counter("uplink_ingress.redirect.masquerade_reply")? >= pings);
        assert!(agent.counter("uplink_ingress.redirect.icmp_error")? >= 1);
    }
    Ok(())
}

/// On a dataplane whose `info` says `DataplaneIPv6: false` (said, with `what` it skips):
/// checks that a container on `network` publishing `publish` is refused for want of IPv6,
/// the answer until then, and returns true for the test to stop there.
fn publishing_refused_without_dataplane_ipv6(
    agent: &Agent,
    what: &str,
    network: &str,
    publish: &str,
) -> Result<bool> {
    if !skip_without_dataplane_ipv6(agent, what)? {
        return Ok(false);
    }
    let error = refused(
        agent,
        &[
            "container",
            "create",
            "w",
            "--network",
            network,
            "-p",
            publish,
        ],
    )?;
    assert!(error.contains("IPv6"), "{error}");
    Ok(true)
}

#[test]
fn published_ports_answer_on_ipv6() -> Result<()> {
    let (topology, agent) = dual_stack(true)?;
    let world_ns = topology.world.path();
    if publishing_refused_without_dataplane_ipv6(
        &agent,
        "published ports on IPv6 addresses",
        "v6",
        "[::1]:8601:80",
    )? {
        return Ok(());
    }
    let (web, web_ns) = agent.create_container(&[
        "web",
        "--network",
        "v6",
        "-p",
        "8600:80",
        "-p",
        "[::1]:8601:80",
    ])?;
    let ports = &web["NetworkSettings"]["Ports"]["80/tcp"];
    let bound: Vec<String> = ports
        .as_array()
        .context("Ports")?
        .iter()
        .map(|b| format!("{}:{}", b["HostIp"].as_str().unwrap_or(""), b["HostPort"]))
        .collect();
    for expected in ["0.0.0.0:\"8600\"", ":::\"8600\"", "::1:\"8601\""] {
        assert!(
            bound.contains(&expected.to_string()),
            "{expected} in {bound:?}"
        );
    }
    let lines = ok(&agent, &["port", "web"])?;
    assert!(lines.contains("80/tcp -> [::]:8600"), "{lines}");
    assert!(lines.contains("80/tcp -> 0.0.0.0:8600"), "{lines}");

    let server = Server::start(&web_ns, 80)?;
    assert_eq!(
        exchange(&world_ns, SocketAddr::new(NODE_IPV6.into(), 8600)).as_deref(),
        Some("pong hi"),
        "the world reaches [node]:8600"
    );
    assert_eq!(
        server.last_peer().map(|p| p.ip()),
        Some(IpAddr::V6(WORLD_IPV6)),
        "the container sees the client's own address"
    );
    // From a process in the agent's cgroup, where the eBPF dataplane's socket hooks act
    // (as for node-local IPv4 access).
    let local = nettool(
        &topology.node.path(),
        Some(agent.cgroup.as_path()),
        &["tcp", "[::1]:8601", "hi"],
    )?;
    assert_eq!(local["answer"], "pong hi", "[::1]:8601 answers on the node");
    assert_eq!(
        exchange(&world_ns, SocketAddr::new(NODE_IPV6.into(), 8601)),
        None,
        "a port on ::1 is not reachable from the wire"
    );

    // A source filter with an IPv6 source (DOCKER-USER of ip6tables on that dataplane).
    let added = ok(
        &agent,
        &[
            "filter",
            "add",
            "--source",
            &format!("{WORLD_IPV6}/128"),
            "--port",
            "8600",
            "--action",
            "deny",
        ],
    )?;
    assert_eq!(
        exchange(&world_ns, SocketAddr::new(NODE_IPV6.into(), 8600)),
        None,
        "the world's IPv6 address is filtered: {added}"
    );

    // host_binding_ipv4 set to an IPv6 address: the default host address of the network.
    ok(
        &agent,
        &[
            "network",
            "create",
            "hb",
            "--ipv6",
            "-o",
            &format!("com.docker.network.bridge.host_binding_ipv4={NODE_IPV6}"),
        ],
    )?;
    let (bound, _) = agent.create_container(&["bound", "--network", "hb", "-p", "8610:80"])?;
    let hosts: Vec<&str> = bound["NetworkSettings"]["Ports"]["80/tcp"]
        .as_array()
        .context("Ports")?
        .iter()
        .filter_map(|b| b["HostIp"].as_str())
        .collect();
    assert_eq!(hosts, [NODE_IPV6.to_string().as_str()]);

    // An IPv6 port for a container without IPv6 is refused, not proxied.
    let error = refused(
        &agent,
        &["container", "create", "v4only", "-p", "[::]:8602:80"],
    )?;
    assert!(error.contains("no IPv6 address"), "{error}");
    Ok(())
}

/// A TCP connection from `client_ns` to `to`, accepted by `listener` and held open by both
/// ends while they live: (the client's end, the server's end).
fn held_connection(
    client_ns: &Path,
    listener: &TcpListener,
    to: SocketAddr,
) -> Result<(TcpStream, TcpStream)> {
    let client = in_netns(client_ns, || TcpStream::connect_timeout(&to, WAIT))
        .with_context(|| format!("connecting to {to}"))?;
    let (server, _) = listener.accept().context("accepting")?;
    Ok((client, server))
}

/// `bpfbridge monitor`'s events of one kind (`new-flow`, `drop`), read on a thread as
/// they come, until dropped.
struct MonitorEvents {
    child: std::process::Child,
    events: std::sync::mpsc::Receiver<Value>,
}

impl MonitorEvents {
    fn start(agent: &Agent, kind: &'static str) -> Result<Self> {
        use std::io::BufRead as _;
        let mut child = std::process::Command::new(bpfbridge_tests::bpfbridge_bin())
            .arg("--socket")
            .arg(&agent.socket)
            .arg("monitor")
            .stdout(std::process::Stdio::piped())
            .spawn()?;
        let stdout = child.stdout.take().context("monitor's stdout")?;
        let (sender, events) = std::sync::mpsc::channel();
        thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if let Ok(event) = serde_json::from_str::<Value>(&line)
                    && event["Kind"] == kind
                    && sender.send(event).is_err()
                {
                    return;
                }
            }
        });
        // Let it subscribe before the packets are sent.
        thread::sleep(Duration::from_millis(300));
        Ok(MonitorEvents { child, events })
    }

    /// The event of reason `reason`, within `WAIT`.
    fn of(&self, reason: &str) -> Option<Value> {
        let deadline = Instant::now() + WAIT;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            let event = self.events.recv_timeout(left).ok()?;
            if event["Reason"] == reason {
                return Some(event);
            }
        }
        None
    }
}

impl Drop for MonitorEvents {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The lines of `bpfbridge conntrack ls` that begin with `prefix`.
fn conntrack_lines(agent: &Agent, prefix: &str) -> Result<Vec<String>> {
    Ok(ok(agent, &["conntrack", "ls"])?
        .lines()
        .filter(|line| line.starts_with(prefix))
        .map(str::to_string)
        .collect())
}

#[test]
fn conntrack_ls_and_monitor_show_ipv6_flows_with_their_addresses() -> Result<()> {
    let (topology, agent) = dual_stack(true)?;
    if !ebpf_checks("IPv6 flows in `conntrack ls`: the iptables dataplane lists no flows") {
        // As for IPv4: the kernel's conntrack holds them, and `conntrack ls` says so.
        let error = refused(&agent, &["conntrack", "ls"])?;
        assert!(error.contains("not supported"), "{error}");
        return Ok(());
    }
    let world_ns = topology.world.path();
    let (a, a_ns) = agent.create_container(&["a", "--network", "v6"])?;
    let (web, web_ns) = agent.create_container(&["web", "--network", "v6", "-p", "8620:80"])?;
    let (a_ip, web_ip) = (ipv6_on(&a, "v6")?, ipv6_on(&web, "v6")?);
    let new_flows = MonitorEvents::start(&agent, "new-flow")?;

    // Masqueraded: the container to the world, through the node's IPv6 address.
    let world = in_netns(&world_ns, || TcpListener::bind((WORLD_IPV6, 7620)))?;
    let to_world = SocketAddr::new(WORLD_IPV6.into(), 7620);
    let (out_client, out_server) = held_connection(&a_ns, &world, to_world)?;
    let container_end = out_client.local_addr()?;
    let seen_by_world = out_server.peer_addr()?;
    assert_eq!(container_end.ip(), IpAddr::V6(a_ip));
    assert_eq!(seen_by_world.ip(), IpAddr::V6(NODE_IPV6));

    // Published: the world to [node]:8620, to the container's port 80.
    let backend = in_netns(&web_ns, || TcpListener::bind(("::", 80)))?;
    let published = SocketAddr::new(NODE_IPV6.into(), 8620);
    let (in_client, in_server) = held_connection(&world_ns, &backend, published)?;
    let world_end = in_client.local_addr()?;
    assert_eq!(
        in_server.peer_addr()?,
        world_end,
        "the client's own address"
    );

    let masquerade = conntrack_lines(&agent, "masquerade tcp src=[")?;
    let expected = format!(
        "masquerade tcp src={container_end} dst={to_world} backend={to_world} \
         seen-as={seen_by_world} idle="
    );
    assert!(
        masquerade.len() == 1 && masquerade[0].starts_with(&expected),
        "the masqueraded IPv6 flow: {masquerade:?}, expected {expected}..."
    );
    let dnat = conntrack_lines(&agent, "dnat tcp src=[")?;
    let expected = format!(
        "dnat tcp src={world_end} dst={published} backend=[{web_ip}]:80 seen-as={world_end} \
         idle="
    );
    assert!(
        dnat.len() == 1 && dnat[0].starts_with(&expected) && dnat[0].contains(" packets="),
        "the published-port IPv6 flow: {dnat:?}, expected {expected}..."
    );

    // Each flow's first packet is a `monitor` event, with its IPv6 addresses.
    let event = new_flows
        .of("container_ingress.redirect.masquerade")
        .context("the masqueraded flow's event")?;
    assert_eq!(
        (&event["Proto"], &event["Source"], &event["Destination"]),
        (
            &Value::from(6),
            &Value::from(container_end.to_string()),
            &Value::from(to_world.to_string())
        ),
        "{event}"
    );
    let event = new_flows
        .of("uplink_ingress.redirect.dnat")
        .context("the published-port flow's event")?;
    assert_eq!(
        (&event["Proto"], &event["Source"], &event["Destination"]),
        (
            &Value::from(6),
            &Value::from(world_end.to_string()),
            &Value::from(published.to_string())
        ),
        "{event}"
    );

    // `conntrack flush` forgets them with IPv4's.
    ok(&agent, &["conntrack", "flush"])?;
    assert_eq!(conntrack_lines(&agent, "")?, Vec::<String>::new());
    drop((out_client, out_server, in_client, in_server));
    Ok(())
}

/// `monitor`'s `drop` events from the IPv6 programs carry the packet's IPv6 addresses and
/// ports: a datagram between two containers of an `icc=false` network (dropped at the
/// sender's veth) and one from the world straight to a container's address on a `nat`
/// network (dropped on the uplink: Docker 28's direct-access drop).
#[test]
fn monitor_shows_ipv6_drops_with_their_addresses() -> Result<()> {
    let (topology, agent) = dual_stack(false)?;
    if !ebpf_checks("`monitor`'s drop events: the iptables dataplane has none") {
        return Ok(());
    }
    let world_ns = topology.world.path();
    topology.world.ip(&[
        "-6",
        "route",
        "replace",
        "fd00:66::/64",
        "via",
        &NODE_IPV6.to_string(),
    ])?;
    let (a, a_ns) = agent.create_container(&["a", "--network", "v6"])?;
    let (b, _) = agent.create_container(&["b", "--network", "v6"])?;
    let (a_ip, b_ip) = (ipv6_on(&a, "v6")?, ipv6_on(&b, "v6")?);
    let drops = MonitorEvents::start(&agent, "drop")?;
    // One datagram from `netns` to `to`; the address it leaves from.
    let send = |netns: &Path, from: Ipv6Addr, to: SocketAddr| -> Result<SocketAddr> {
        let socket = in_netns(netns, || UdpSocket::bind((from, 0)))?;
        socket.send_to(b"dropped", to)?;
        Ok(socket.local_addr()?)
    };
    let expect = |event: &Value, from: SocketAddr, to: SocketAddr| {
        assert_eq!(
            (&event["Proto"], &event["Source"], &event["Destination"]),
            (
                &Value::from(17),
                &Value::from(from.to_string()),
                &Value::from(to.to_string())
            ),
            "{event}"
        );
    };

    let to_b = SocketAddr::new(b_ip.into(), 7640);
    let from_a = send(&a_ns, a_ip, to_b)?;
    let event = drops
        .of("container_ingress.drop.policy_icc")
        .context("the icc drop's event")?;
    expect(&event, from_a, to_b);

    let direct = SocketAddr::new(b_ip.into(), 7641);
    let from_world = send(&world_ns, WORLD_IPV6, direct)?;
    let event = drops
        .of("uplink_ingress.drop.direct_access")
        .context("the direct-access drop's event")?;
    expect(&event, from_world, direct);
    Ok(())
}

/// When the node's IPv6 address that masquerades a flow goes, the flow ends with it (as
/// MASQUERADE ends it, and as IPv4's end): the container's next datagram on the same
/// socket leaves with the address that took over, not the former one.
#[test]
fn a_removed_ipv6_masquerade_source_ends_its_flows() -> Result<()> {
    let (topology, agent) = dual_stack(true)?;
    if skip_without_dataplane_ipv6(&agent, "IPv6 masquerade")? {
        return Ok(());
    }
    let (_, a_ns) = agent.create_container(&["a", "--network", "v6"])?;
    let world = in_netns(&topology.world.path(), || {
        UdpSocket::bind((WORLD_IPV6, 7630))
    })?;
    world.set_read_timeout(Some(Duration::from_millis(500)))?;
    let container = in_netns(&a_ns, || UdpSocket::bind(("::", 0)))?;
    let to_world = SocketAddr::new(WORLD_IPV6.into(), 7630);
    // The source the world sees on the container's next datagram, if it arrives.
    let seen_by_world = || -> Result<Option<IpAddr>> {
        container.send_to(b"hi", to_world)?;
        let mut buf = [0u8; 16];
        Ok(world.recv_from(&mut buf).ok().map(|(_, from)| from.ip()))
    };
    assert_eq!(seen_by_world()?, Some(IpAddr::V6(NODE_IPV6)));
    let tracked = |address: Ipv6Addr| -> Result<bool> {
        Ok(conntrack_lines(&agent, "masquerade udp src=[")?
            .iter()
            .any(|line| line.contains(&format!("seen-as=[{address}]"))))
    };
    if ebpf_checks("the masqueraded IPv6 flow in `conntrack ls`") {
        assert!(tracked(NODE_IPV6)?, "the flow is tracked with {NODE_IPV6}");
    }

    // The node's address is replaced by another of the same prefix.
    let replacement = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 7);
    topology.node.ip(&[
        "-6",
        "addr",
        "add",
        &format!("{replacement}/64"),
        "dev",
        UPLINK,
        "nodad",
    ])?;
    topology.node.ip(&[
        "-6",
        "addr",
        "del",
        &format!("{NODE_IPV6}/64"),
        "dev",
        UPLINK,
    ])?;
    let started = Instant::now();
    let mut after = seen_by_world()?;
    while after != Some(IpAddr::V6(replacement)) && started.elapsed() < Duration::from_secs(5) {
        thread::sleep(Duration::from_millis(100));
        after = seen_by_world()?;
    }
    assert_eq!(
        after,
        Some(IpAddr::V6(replacement)),
        "the same socket's datagrams leave with the address that took over"
    );
    if ebpf_checks("the former source's flow gone from `conntrack ls`") {
        assert!(!tracked(NODE_IPV6)?, "no flow is left on {NODE_IPV6}");
        assert!(tracked(replacement)?, "the new flow is on {replacement}");
    }
    Ok(())
}

#[test]
fn icc_false_refuses_ipv6_between_containers_but_links() -> Result<()> {
    let (_topology, agent) = dual_stack(false)?;
    if skip_without_dataplane_ipv6(&agent, "icc=false and --link for IPv6")? {
        return Ok(());
    }
    let (b, b_ns): (Value, PathBuf) =
        agent.create_container(&["b", "--network", "v6", "--expose", "7602"])?;
    let (_, a_ns) = agent.create_container(&["a", "--network", "v6"])?;
    let (c, linked_ns) = agent.create_container(&["c", "--network", "v6", "--link", "b"])?;
    let _server = Server::start(&b_ns, 7602)?;
    let _not_exposed = Server::start(&b_ns, 7603)?;
    let _linked_server = Server::start(&linked_ns, 7602)?;
    let b_ip: IpAddr = ipv6_on(&b, "v6")?.into();
    let b_port = SocketAddr::new(b_ip, 7602);
    assert_eq!(exchange(&a_ns, b_port), None, "icc=false refuses IPv6 too");
    assert_eq!(
        exchange(&linked_ns, b_port).as_deref(),
        Some("pong hi"),
        "a --link opens the exposed port over IPv6 too"
    );
    assert_eq!(
        exchange(&linked_ns, SocketAddr::new(b_ip, 7603)),
        None,
        "a port b does not expose"
    );
    let c_port = SocketAddr::new(ipv6_on(&c, "v6")?.into(), 7602);
    assert_eq!(
        exchange(&b_ns, c_port),
        None,
        "the reverse direction stays closed"
    );
    if ebpf_checks("the IPv6 link flow's counters") {
        assert!(agent.counter("container_ingress.pass.link")? >= 1);
        assert!(agent.counter("container_ingress.pass.tracked_reply")? >= 1);
    }
    Ok(())
}

/// `--peer-node` with an IPv6 CIDR (a dual-stack Kubernetes node's IPv6 pod CIDR) routes
/// it through the peer's IPv6 address, beside an IPv4 one: the node reaches an address of
/// that CIDR on the peer (the world namespace here).
#[test]
fn an_ipv6_peer_node_is_routed_through_its_ipv6_address() -> Result<()> {
    let topology = Topology::new()?.with_ipv6()?;
    let peer_pod = Ipv6Addr::new(0xfd00, 0x10, 0x244, 2, 0, 0, 0, 1);
    topology
        .world
        .ip(&["-6", "addr", "add", &format!("{peer_pod}/128"), "dev", "lo"])?;
    let ipv6_peer = format!("fd00:10:244:2::/64={WORLD_IPV6}");
    let ipv4_peer = format!("10.244.2.0/24={}", WORLD_IP);
    let _agent = Agent::start_with(
        &topology,
        &["--peer-node", &ipv6_peer, "--peer-node", &ipv4_peer],
    )?;
    let node = topology.node.path();
    let routes = ip_in(&node, &["-6", "route"])?;
    assert!(
        routes.contains(&format!("fd00:10:244:2::/64 via {WORLD_IPV6} dev {UPLINK}")),
        "{routes}"
    );
    let routes = ip_in(&node, &["route"])?;
    assert!(
        routes.contains(&format!("10.244.2.0/24 via {} dev {UPLINK}", WORLD_IP)),
        "{routes}"
    );
    let _server = Server::start(&topology.world.path(), 7650)?;
    assert_eq!(
        exchange(&node, SocketAddr::new(peer_pod.into(), 7650)).as_deref(),
        Some("pong hi"),
        "the node reaches the peer's pod CIDR over IPv6"
    );
    Ok(())
}

/// The answer of the container DNS server of the namespace at `netns` to a query for
/// `name`'s `kind` records.
fn ask_dns(
    netns: &Path,
    name: &str,
    kind: hickory_proto::rr::RecordType,
) -> Result<hickory_proto::op::Message> {
    use hickory_proto::{
        op::{Message, Query},
        rr::Name,
    };
    let mut query = Message::query();
    query.metadata.recursion_desired = true;
    query.add_query(Query::query(Name::from_ascii(name)?, kind));
    let bytes = query.to_vec()?;
    let answer = in_netns(netns, || -> std::io::Result<Vec<u8>> {
        let socket = std::net::UdpSocket::bind(("127.0.0.1", 0))?;
        socket.connect(("127.0.0.11", 53))?;
        socket.set_read_timeout(Some(WAIT))?;
        socket.send(&bytes)?;
        let mut buf = vec![0; 4096];
        let len = socket.recv(&mut buf)?;
        buf.truncate(len);
        Ok(buf)
    })?;
    Ok(Message::from_vec(&answer)?)
}

#[test]
fn aaaa_answers_name_containers_and_aliases() -> Result<()> {
    use hickory_proto::rr::{RData, RecordType};
    let (_topology, agent) = dual_stack(true)?;
    let (_, a_ns) = agent.create_container(&["a", "--network", "v6"])?;
    let (b, _) = agent.create_container(&["b", "--network", "v6", "--alias", "db"])?;
    let b_ip = ipv6_on(&b, "v6")?;
    for name in ["b", "db"] {
        let response = ask_dns(&a_ns, name, RecordType::AAAA)?;
        let addresses: Vec<Ipv6Addr> = response
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::AAAA(aaaa) => Some(aaaa.0),
                _ => None,
            })
            .collect();
        assert_eq!(addresses, [b_ip], "AAAA {name}");
    }
    Ok(())
}

#[test]
fn the_ipv6_gateway_is_repaired_and_kept_across_restarts() -> Result<()> {
    let (topology, mut agent) = dual_stack(true)?;
    let bridge = agent.cli_json(&["network", "inspect", "v6"])?[0]["Id"]
        .as_str()
        .map(|id| format!("bpfbr-{}", &id[..9]))
        .context("the network's id")?;
    let (b, b_ns) = agent.create_container(&["b", "--network", "v6"])?;
    let b_ip = ipv6_on(&b, "v6")?;
    let node = &topology.node;
    node.ip(&["-6", "addr", "del", "fd00:66::1/64", "dev", &bridge])?;
    let start = Instant::now();
    let given_back = || -> Result<bool> {
        let shown = node.ip(&["-6", "-o", "addr", "show", "dev", &bridge])?;
        Ok(String::from_utf8_lossy(&shown.stdout).contains("fd00:66::1/64"))
    };
    while !given_back()? {
        ensure!(
            start.elapsed() < Duration::from_secs(15),
            "the IPv6 gateway was not given back\n{}",
            agent.log_tail(20)
        );
        thread::sleep(Duration::from_millis(100));
    }

    // A restarted agent loads the IPv6 side from its state and keeps the addresses.
    agent.stop();
    agent.spawn()?;
    let again = agent.cli_json(&["container", "inspect", "b"])?;
    assert_eq!(ipv6_on(&again[0], "v6")?, b_ip);
    let shown = in_netns(&b_ns, || {
        std::process::Command::new("ip")
            .args(["-6", "-o", "addr", "show", "dev", "eth0"])
            .output()
    })?;
    assert!(
        String::from_utf8_lossy(&shown.stdout).contains(&b_ip.to_string()),
        "the container keeps its IPv6 address"
    );
    Ok(())
}

#[test]
fn the_default_bridge_takes_ipv6_from_the_daemon_flags() -> Result<()> {
    let topology = Topology::new()?.with_ipv6()?;
    let agent = Agent::start_with(&topology, &["--ipv6", "--fixed-cidr-v6", "fd00:77::/64"])?;
    let bridge = &agent.cli_json(&["network", "inspect", "bridge"])?[0];
    assert_eq!(bridge["EnableIPv6"], true);
    assert_eq!(bridge["IPAM"]["Config"][1]["Subnet"], "fd00:77::/64");
    let (web, _) = agent.create_container(&["web"])?;
    // Like IPv4, the default bridge's addressing shows at the top too.
    let top = &web["NetworkSettings"];
    assert_eq!(top["GlobalIPv6Address"], "fd00:77::2");
    assert_eq!(top["GlobalIPv6PrefixLen"], 64);
    assert_eq!(top["IPv6Gateway"], "fd00:77::1");
    let forwarding = topology
        .node
        .exec("sysctl", &["-n", "net.ipv6.conf.all.forwarding"])?;
    assert_eq!(String::from_utf8_lossy(&forwarding.stdout).trim(), "1");
    Ok(())
}

/// Docker 28's IPv6-only networks: `--ipv4=false --ipv6` (or the driver option), inspect
/// fields without an IPv4 side, containers with an IPv6 address and default route only,
/// reaching each other and the world over IPv6, ports published on `::` only, and what is
/// refused.
#[test]
fn ipv6_only_network() -> Result<()> {
    let topology = Topology::new()?.with_ipv6()?;
    let agent = Agent::start(&topology)?;
    let world_ns = topology.world.path();

    // What Docker 28 refuses: no family at all, an IPv6-only default bridge (the agent's
    // own, not made by a request), IPv4 settings on a network without IPv4.
    let error = refused(&agent, &["network", "create", "nofamily", "--ipv4=false"])?;
    assert!(error.contains("IPv4 or IPv6 must be enabled"), "{error}");
    let error = refused(
        &agent,
        &[
            "network",
            "create",
            "mixed",
            "--ipv4=false",
            "--ipv6",
            "--subnet",
            "10.67.0.0/24",
        ],
    )?;
    assert!(error.contains("needs IPv4 enabled"), "{error}");

    ok(
        &agent,
        &[
            "network",
            "create",
            "only6",
            "--ipv4=false",
            "--ipv6",
            "--subnet",
            "fd00:67::/64",
        ],
    )?;
    let network = &agent.cli_json(&["network", "inspect", "only6"])?[0];
    assert_eq!(network["EnableIPv4"], false);
    assert_eq!(network["EnableIPv6"], true);
    assert_eq!(
        network["IPAM"]["Config"],
        serde_json::json!([{"Subnet": "fd00:67::/64", "Gateway": "fd00:67::1"}]),
        "the IPv6 entry only"
    );
    // The driver option asks the same, with a subnet from the IPv6 pools.
    ok(
        &agent,
        &[
            "network",
            "create",
            "opt6",
            "--ipv6",
            "-o",
            "com.docker.network.enable_ipv4=false",
        ],
    )?;
    let network = &agent.cli_json(&["network", "inspect", "opt6"])?[0];
    assert_eq!(network["EnableIPv4"], false);
    let configs = network["IPAM"]["Config"].as_array().context("Config")?;
    assert!(
        configs.len() == 1
            && configs[0]["Subnet"]
                .as_str()
                .is_some_and(|s| s.contains(':')),
        "{configs:?}"
    );

    let error = refused(
        &agent,
        &[
            "container",
            "create",
            "x",
            "--network",
            "only6",
            "--ip",
            "10.67.0.5",
        ],
    )?;
    assert!(error.contains("IPv6-only"), "{error}");
    let error = refused(
        &agent,
        &[
            "container",
            "create",
            "y",
            "--network",
            "only6",
            "-p",
            "127.0.0.1:8621:80",
        ],
    )?;
    assert!(error.contains("no IPv4 address"), "{error}");

    let (a, a_ns) = agent.create_container(&["a", "--network", "only6"])?;
    let (b, b_ns) = agent.create_container(&["b", "--network", "only6", "--alias", "db"])?;
    let settings = &a["NetworkSettings"]["Networks"]["only6"];
    assert_eq!(settings["IPAddress"], "");
    assert_eq!(settings["Gateway"], "");
    assert_eq!(settings["IPPrefixLen"], 0);
    assert_eq!(settings["GlobalIPv6Address"], "fd00:67::2");
    assert_eq!(settings["IPv6Gateway"], "fd00:67::1");
    let b_ip = ipv6_on(&b, "only6")?;
    let network = &agent.cli_json(&["network", "inspect", "only6"])?[0];
    let shown: Vec<(&str, &str)> = network["Containers"]
        .as_object()
        .context("Containers")?
        .values()
        .filter_map(|c| Some((c["IPv4Address"].as_str()?, c["IPv6Address"].as_str()?)))
        .collect();
    assert!(shown.contains(&("", "fd00:67::2/64")), "{shown:?}");

    // Inside: no IPv4 address on eth0 and no IPv4 default route; the IPv6 default route
    // through the gateway.
    assert_eq!(
        ip_in(&a_ns, &["-4", "-o", "addr", "show", "dev", "eth0"])?,
        ""
    );
    assert_eq!(ip_in(&a_ns, &["-4", "route", "show", "default"])?, "");
    let route6 = ip_in(&a_ns, &["-6", "route", "show", "default"])?;
    assert!(route6.contains("via fd00:67::1"), "{route6}");

    // Names answer AAAA, and A with an empty answer (the name exists, without IPv4).
    for name in ["b", "db"] {
        let aaaa = ask_dns(&a_ns, name, hickory_proto::rr::RecordType::AAAA)?;
        let addresses: Vec<IpAddr> = aaaa
            .answers
            .iter()
            .filter_map(|r| r.data.ip_addr())
            .collect();
        assert_eq!(addresses, [IpAddr::V6(b_ip)], "AAAA {name}");
        let a_answer = ask_dns(&a_ns, name, hickory_proto::rr::RecordType::A)?;
        assert_eq!(
            a_answer.metadata.response_code,
            hickory_proto::op::ResponseCode::NoError,
            "A {name}"
        );
        assert!(
            a_answer.answers.is_empty(),
            "A {name}: {:?}",
            a_answer.answers
        );
    }

    let _peer = Server::start(&b_ns, 7600)?;
    assert_eq!(
        exchange(&a_ns, SocketAddr::new(b_ip.into(), 7600)).as_deref(),
        Some("pong hi"),
        "a container reaches another over IPv6 on an IPv6-only network"
    );
    no_ipv4_state_for(&topology, &agent, "only6")?;

    // Without IPv6 publishing there is no family left to publish on.
    if publishing_refused_without_dataplane_ipv6(
        &agent,
        "published ports of an IPv6-only network",
        "only6",
        "8620:80",
    )? {
        return Ok(());
    }
    // Published on `::` only: Docker 28 maps a container without IPv4 on IPv6 alone.
    let (web, web_ns) = agent.create_container(&["web", "--network", "only6", "-p", "8620:80"])?;
    let hosts: Vec<&str> = web["NetworkSettings"]["Ports"]["80/tcp"]
        .as_array()
        .context("Ports")?
        .iter()
        .filter_map(|p| p["HostIp"].as_str())
        .collect();
    assert_eq!(hosts, ["::"]);
    let lines = ok(&agent, &["port", "web"])?;
    assert_eq!(lines.trim(), "80/tcp -> [::]:8620");
    // The dataplane holds no IPv4 mapping for it: nothing names an address it lacks.
    let web_ip = ipv6_on(&web, "only6")?.to_string();
    let installed = agent.cli_json(&["ports"])?;
    let installed = installed.as_array().context("ports")?;
    assert!(
        !installed.is_empty()
            && installed
                .iter()
                .all(|p| p["HostIp"] == "::" && p["ContainerIp"] == web_ip.as_str()),
        "{installed:?}"
    );
    let server = Server::start(&web_ns, 80)?;
    assert_eq!(
        exchange(&world_ns, SocketAddr::new(NODE_IPV6.into(), 8620)).as_deref(),
        Some("pong hi"),
        "the world reaches [node]:8620"
    );
    assert_eq!(
        server.last_peer().map(|p| p.ip()),
        Some(IpAddr::V6(WORLD_IPV6)),
        "the container sees the client's own address"
    );
    assert_eq!(
        exchange(&world_ns, SocketAddr::new(NODE_IP.into(), 8620)),
        None,
        "nothing is published on the node's IPv4 address"
    );

    let world = Server::start(&world_ns, 7601)?;
    assert_eq!(
        exchange(&a_ns, SocketAddr::new(WORLD_IPV6.into(), 7601)).as_deref(),
        Some("pong hi")
    );
    assert_eq!(
        world.last_peer().map(|p| p.ip()),
        Some(IpAddr::V6(NODE_IPV6)),
        "the world sees the node's IPv6 address"
    );
    Ok(())
}

/// Checks that the dataplane holds nothing IPv4 for the IPv6-only network `network` (the
/// agent's only network with containers): on eBPF, no ENDPOINTS entry and no NETWORKS
/// entry but the default bridge's; on iptables, no iptables rule naming its bridge, where
/// ip6tables rules do.
fn no_ipv4_state_for(topology: &Topology, agent: &Agent, network: &str) -> Result<()> {
    let id = agent.cli_json(&["network", "inspect", network])?[0]["Id"]
        .as_str()
        .context("the network's id")?
        .to_string();
    let bridge = format!("bpfbr-{}", &id[..9]);
    if bpfbridge_tests::dataplane() == "iptables" {
        let save = |binary: &str| -> Result<String> {
            let out = topology.node.exec(binary, &[])?;
            ensure!(out.status.success(), "{binary} failed");
            Ok(String::from_utf8(out.stdout)?)
        };
        ensure!(
            !save("iptables-save")?.contains(&bridge),
            "no iptables rule names {bridge}"
        );
        ensure!(
            save("ip6tables-save")?.contains(&bridge),
            "ip6tables rules name {bridge}"
        );
        return Ok(());
    }
    if !bpfbridge_tests::ebpf_checks("ENDPOINTS and NETWORKS entries") {
        return Ok(());
    }
    use aya::maps::{HashMap, Map, MapData, lpm_trie::LpmTrie};
    use dataplane_common::{
        EndpointInfo, EndpointKey, NetworkInfo, NetworkKey,
        maps::{ENDPOINTS, NETWORKS},
    };
    let open = |name: &str| -> Result<Map> {
        let data = MapData::from_pin(agent.pin_dir.join(name))
            .with_context(|| format!("opening pinned map {name}"))?;
        Ok(Map::from_map_data(data)?)
    };
    let endpoints: HashMap<MapData, EndpointKey, EndpointInfo> =
        HashMap::try_from(open(ENDPOINTS)?)?;
    let keys: Vec<EndpointKey> = endpoints.keys().collect::<Result<_, _>>()?;
    ensure!(keys.is_empty(), "ENDPOINTS holds {} entries", keys.len());
    let networks: LpmTrie<MapData, NetworkKey, NetworkInfo> = LpmTrie::try_from(open(NETWORKS)?)?;
    let subnets: Vec<(u32, std::net::Ipv4Addr)> = networks
        .keys()
        .map(|k| k.map(|k| (k.prefix_len(), u32::from_be(k.data().addr_be).into())))
        .collect::<Result<_, _>>()?;
    let default_bridge: ipnet::Ipv4Net =
        agent.cli_json(&["network", "inspect", "bridge"])?[0]["IPAM"]["Config"][0]["Subnet"]
            .as_str()
            .context("the default bridge's subnet")?
            .parse()?;
    ensure!(
        subnets
            == [(
                u32::from(default_bridge.prefix_len()),
                default_bridge.network()
            )],
        "NETWORKS holds the default bridge's subnet ({default_bridge}) only: {subnets:?}"
    );
    Ok(())
}
