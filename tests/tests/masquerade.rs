//! Masquerade: containers reach the world with the node's address, keeping their source
//! port where they can (as netfilter does); ports are refused, counted, when a range runs
//! out; a full table evicts unanswered flows, never answered ones; idle flows expire, live
//! ones stay.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use bpfbridge_tests::{
    Agent, Echo, NODE_IP, Topology, WORLD_IP, ebpf_checks, in_netns, request, serve_once,
    skip_unless_ebpf, udp_request, udp_serve_once,
};

/// Why the tests of the agent's own connection tracking do not apply to the iptables
/// dataplane, where the kernel's conntrack does that work with its own settings.
const KERNEL_CONNTRACK: &str = "the iptables dataplane masquerades with the kernel's \
    conntrack, which --masquerade-port-range, --conntrack-max, --udp-idle-timeout and \
    `conntrack ls` do not govern";

const WORLD_PORT: u16 = 7300;

fn world(port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(WORLD_IP, port)
}

#[test]
fn containers_reach_the_world_with_the_node_address() -> Result<()> {
    let topology = Topology::new()?;
    let agent = Agent::start(&topology)?;
    let out = agent.cli(&[
        "network",
        "create",
        "plain",
        "-o",
        "com.docker.network.bridge.gateway_mode_ipv4=routed",
    ])?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, masq_ns) = agent.create_container(&["masq"])?;
    let (plain, plain_ns) = agent.create_container(&["plain", "--network", "plain"])?;
    let world_ns = topology.world.path();

    let server = serve_once(&world_ns, WORLD_PORT);
    assert_eq!(request(&masq_ns, world(WORLD_PORT), "hi\n")?, "pong hi\n");
    let peer = server.join().expect("server")?;
    assert_eq!(peer.ip(), NODE_IP, "the world sees the node's address");

    let server = udp_serve_once(&world_ns, WORLD_PORT + 1);
    let (answer, from) = udp_request(&masq_ns, world(WORLD_PORT + 1), "hi")?;
    assert_eq!(
        (answer.as_str(), from),
        ("pong hi", world(WORLD_PORT + 1).into())
    );
    assert_eq!(server.join().expect("server")?.ip(), NODE_IP);

    if ebpf_checks("the masquerade flows in the agent's table and their counters") {
        let flows = String::from_utf8(agent.cli(&["conntrack", "ls"])?.stdout)?;
        assert!(flows.contains("masquerade udp"), "{flows}");
        assert!(
            agent.counter("container_ingress.redirect.masquerade")?
                + agent.counter("container_ingress.redirect.masquerade_resolve_neighbour")?
                >= 2
        );
        assert!(agent.counter("uplink_ingress.redirect.masquerade_reply")? >= 2);
    }

    // A routed network: the world sees the container's own address, and its replies come
    // back to it.
    let plain_ip: Ipv4Addr = plain["NetworkSettings"]["Networks"]["plain"]["IPAddress"]
        .as_str()
        .unwrap()
        .parse()?;
    let server = serve_once(&world_ns, WORLD_PORT + 2);
    assert_eq!(
        request(&plain_ns, world(WORLD_PORT + 2), "hi\n")?,
        "pong hi\n"
    );
    assert_eq!(server.join().expect("server")?.ip(), plain_ip);
    Ok(())
}

#[test]
fn exhausted_source_ports_refuse_new_flows_and_keep_old_ones() -> Result<()> {
    if skip_unless_ebpf(KERNEL_CONNTRACK) {
        return Ok(());
    }
    let topology = Topology::new()?;
    let agent = Agent::start_with(&topology, &["--masquerade-port-range", "61000-61001"])?;
    let (_, ns) = agent.create_container(&["c"])?;
    let _echo = Echo::start(&topology.world.path(), WORLD_PORT)?;
    // Three UDP flows to the same world service need three source ports; there are two.
    let sockets: Vec<UdpSocket> = in_netns(&ns, || -> std::io::Result<Vec<UdpSocket>> {
        (0..3)
            .map(|_| {
                let s = UdpSocket::bind("0.0.0.0:0")?;
                s.set_read_timeout(Some(Duration::from_millis(800)))?;
                Ok(s)
            })
            .collect()
    })?;
    let exchange = |s: &UdpSocket| -> bool {
        let mut buf = [0u8; 32];
        s.send_to(b"hi", world(WORLD_PORT)).is_ok()
            && matches!(s.recv_from(&mut buf), Ok((n, _)) if &buf[..n] == b"pong hi")
    };
    assert!(
        exchange(&sockets[0]) && exchange(&sockets[1]),
        "two flows fit"
    );
    assert!(!exchange(&sockets[2]), "the third is refused");
    assert!(agent.counter("container_ingress.drop.nat_exhausted")? >= 1);
    assert!(
        exchange(&sockets[0]) && exchange(&sockets[1]),
        "existing flows are intact"
    );
    Ok(())
}

#[test]
fn idle_flows_expire_and_active_ones_survive() -> Result<()> {
    if skip_unless_ebpf(KERNEL_CONNTRACK) {
        return Ok(());
    }
    let topology = Topology::new()?;
    let agent = Agent::start_with(
        &topology,
        &["--udp-idle-timeout", "1", "--udp-stream-timeout", "1"],
    )?;
    let (_, ns) = agent.create_container(&["c"])?;
    let _echo = Echo::start(&topology.world.path(), WORLD_PORT)?;
    // A long-lived TCP connection through the masquerade, kept busy.
    let world_ns = topology.world.path();
    let listener = in_netns(&world_ns, || {
        std::net::TcpListener::bind((WORLD_IP, WORLD_PORT + 5))
    })?;
    let mut client = in_netns(&ns, || {
        TcpStream::connect_timeout(&world(WORLD_PORT + 5).into(), Duration::from_secs(3))
    })?;
    let (mut server, _) = listener.accept()?;
    client.set_read_timeout(Some(Duration::from_secs(2)))?;
    server.set_read_timeout(Some(Duration::from_secs(2)))?;
    // An idle UDP flow next to it.
    assert!(bpfbridge_tests::udp_reaches(
        &ns,
        world(WORLD_PORT),
        Duration::from_secs(2)
    ));
    let deadline = Instant::now() + Duration::from_secs(6);
    let mut udp_gone = false;
    while Instant::now() < deadline {
        client.write_all(b"x")?;
        let mut b = [0u8; 1];
        server.read_exact(&mut b)?;
        server.write_all(b"y")?;
        client.read_exact(&mut b)?;
        let flows = String::from_utf8(agent.cli(&["conntrack", "ls"])?.stdout)?;
        ensure!(
            flows.contains("masquerade tcp"),
            "the active TCP flow was removed: {flows}"
        );
        udp_gone |= !flows.contains("masquerade udp");
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(udp_gone, "the idle UDP flow never expired");
    Ok(())
}

#[test]
fn ping_is_masqueraded_by_identifier() -> Result<()> {
    let topology = Topology::new()?;
    let agent = Agent::start(&topology)?;
    let (_, ns) = agent.create_container(&["c"])?;
    assert!(
        bpfbridge_tests::ping_reaches(&ns, WORLD_IP),
        "ping to the world"
    );
    // The echo reply came back to the node's address and was handed to the container.
    if ebpf_checks("the ICMP flow in the agent's table and its counter") {
        assert!(agent.counter("uplink_ingress.redirect.masquerade_reply")? >= 1);
        let flows = String::from_utf8(agent.cli(&["conntrack", "ls"])?.stdout)?;
        assert!(flows.contains("masquerade icmp"), "{flows}");
        assert!(flows.contains("seen-as=198.51.100.1:"), "{flows}");
    }
    Ok(())
}

#[test]
fn icmp_errors_for_masqueraded_flows_are_translated_back() -> Result<()> {
    let topology = Topology::new()?;
    let agent = Agent::start(&topology)?;
    let (_, ns) = agent.create_container(&["c"])?;
    // Nothing listens on this world port: the world answers "port unreachable" to the
    // node's address, which must reach the container's socket as a refusal.
    let result = in_netns(&ns, || -> std::io::Result<()> {
        let socket = UdpSocket::bind("0.0.0.0:0")?;
        socket.connect(world(7399))?;
        socket.set_read_timeout(Some(Duration::from_secs(3)))?;
        socket.send(b"anyone?")?;
        let mut buf = [0u8; 16];
        socket.recv(&mut buf).map(drop)
    });
    let err = result.expect_err("no answer can come");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
    Ok(())
}

#[test]
fn a_full_table_refuses_new_flows_and_gc_never_evicts_a_live_one() -> Result<()> {
    if skip_unless_ebpf(KERNEL_CONNTRACK) {
        return Ok(());
    }
    let topology = Topology::new()?;
    // Eight entries: four flows, two entries each.
    let agent = Agent::start_with(
        &topology,
        &[
            "--conntrack-max",
            "8",
            "--udp-idle-timeout",
            "1",
            "--udp-stream-timeout",
            "1",
        ],
    )?;
    let (_, ns) = agent.create_container(&["c"])?;
    let world_ns = topology.world.path();
    let _echo = Echo::start(&world_ns, WORLD_PORT)?;
    let listener = in_netns(&world_ns, || {
        std::net::TcpListener::bind((WORLD_IP, WORLD_PORT + 5))
    })?;
    let mut client = in_netns(&ns, || {
        TcpStream::connect_timeout(&world(WORLD_PORT + 5).into(), Duration::from_secs(3))
    })?;
    let (mut server, _) = listener.accept()?;
    client.set_read_timeout(Some(Duration::from_secs(2)))?;
    server.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut ping_pong = || -> Result<()> {
        let mut b = [0u8; 1];
        client.write_all(b"x")?;
        server.read_exact(&mut b)?;
        server.write_all(b"y")?;
        client.read_exact(&mut b)?;
        Ok(())
    };
    // Three UDP flows fill the table next to the TCP one; a fifth flow does not fit.
    let udp = |n| -> bool {
        bpfbridge_tests::udp_reaches(&ns, world(WORLD_PORT), Duration::from_millis(n))
    };
    for _ in 0..3 {
        assert!(udp(1500), "a UDP flow that fits");
    }
    assert!(!udp(500), "the table is full");
    assert!(agent.counter("container_ingress.drop.conntrack_full")? >= 1);
    // GC passes run while the TCP flow stays busy: the idle UDP flows go, it stays.
    let deadline = Instant::now() + Duration::from_secs(8);
    let mut room = false;
    while Instant::now() < deadline && !room {
        ping_pong()?;
        std::thread::sleep(Duration::from_millis(300));
        room = udp(500);
    }
    assert!(room, "expired flows made room");
    ping_pong()?;
    Ok(())
}

#[test]
fn replies_of_connections_routed_to_a_container_are_not_masqueraded() -> Result<()> {
    let topology = Topology::new()?;
    // Like Docker 28 with --allow-direct-routing, the outside reaches a container's own
    // address on a published container port only.
    let agent = Agent::start_with(&topology, &["--allow-direct-routing"])?;
    let (c, ns) = agent.create_container(&["c", "-p", "8400:7400"])?;
    let ip: Ipv4Addr = c["NetworkSettings"]["IPAddress"]
        .as_str()
        .unwrap()
        .parse()?;
    // The world reaches the container's own address through the node (routed, not through
    // the published host port): the replies must keep the container's address.
    let server = serve_once(&ns, 7400);
    assert_eq!(
        request(&topology.world.path(), SocketAddrV4::new(ip, 7400), "hi\n")?,
        "pong hi\n"
    );
    assert_eq!(server.join().expect("server")?.ip(), WORLD_IP);
    Ok(())
}

/// A world server that answers every connection with one line and closes first (a service
/// called without connection pooling); returns the peers' addresses when stopped.
struct CloseFirstServer {
    stop: Arc<AtomicBool>,
    thread: thread::JoinHandle<Result<Vec<Ipv4Addr>>>,
}

impl CloseFirstServer {
    fn start(world_ns: &std::path::Path, port: u16) -> Result<Self> {
        let listener = in_netns(world_ns, || TcpListener::bind((WORLD_IP, port)))?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let deadline = Instant::now() + Duration::from_secs(180);
        let thread = thread::spawn(move || -> Result<Vec<Ipv4Addr>> {
            let mut peers = Vec::new();
            while !flag.load(Ordering::Relaxed) && Instant::now() < deadline {
                match listener.accept() {
                    Ok((mut stream, peer)) => {
                        if let SocketAddr::V4(peer) = peer
                            && !peers.contains(peer.ip())
                        {
                            peers.push(*peer.ip());
                        }
                        stream.set_nonblocking(false)?;
                        stream.set_read_timeout(Some(Duration::from_secs(2)))?;
                        let mut b = [0u8; 1];
                        // A client that gave up is its own failure; keep serving.
                        if stream.read_exact(&mut b).is_ok() {
                            let _ = stream.write_all(b"ok\n");
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        thread::sleep(Duration::from_micros(200))
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            Ok(peers)
        });
        Ok(CloseFirstServer { stop, thread })
    }

    fn stop(self) -> Result<Vec<Ipv4Addr>> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("server thread")
    }
}

/// One short connection: connect, one byte, one line back, the server closes first.
fn short_connection(to: SocketAddrV4) -> std::io::Result<()> {
    let mut stream = TcpStream::connect_timeout(&to.into(), Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.write_all(b"x")?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer)?;
    match answer.as_slice() {
        b"ok\n" => Ok(()),
        _ => Err(std::io::Error::other(format!("answer {answer:?}"))),
    }
}

#[test]
fn twenty_thousand_short_connections_to_one_server_all_succeed() -> Result<()> {
    let topology = Topology::new()?;
    let agent = Agent::start(&topology)?;
    let (_, ns) = agent.create_container(&["c"])?;
    let server = CloseFirstServer::start(&topology.world.path(), WORLD_PORT + 20)?;
    const CONNECTIONS: usize = 20_000;
    let deadline = Instant::now() + Duration::from_secs(150);
    let (done, failures) = in_netns(&ns, || {
        let mut failures = Vec::new();
        let mut done = 0;
        while done < CONNECTIONS && Instant::now() < deadline {
            if let Err(e) = short_connection(world(WORLD_PORT + 20)) {
                failures.push(format!("connection {done}: {e}"));
            }
            done += 1;
        }
        (done, failures)
    });
    let peers = server.stop()?;
    assert_eq!(
        done, CONNECTIONS,
        "every connection ran within the time bound"
    );
    assert!(
        failures.is_empty(),
        "{} failed, first: {:?}",
        failures.len(),
        failures.first()
    );
    assert_eq!(peers, [NODE_IP], "the server sees only the node");
    Ok(())
}

#[test]
fn the_same_source_port_from_two_containers_reaches_the_same_server() -> Result<()> {
    let topology = Topology::new()?;
    let agent = Agent::start(&topology)?;
    let (_, first) = agent.create_container(&["first"])?;
    let (_, second) = agent.create_container(&["second"])?;
    let server = in_netns(&topology.world.path(), || {
        UdpSocket::bind((WORLD_IP, WORLD_PORT + 21))
    })?;
    server.set_read_timeout(Some(Duration::from_secs(3)))?;
    const PORT: u16 = 40_000;
    let mut peers = Vec::new();
    for ns in [&first, &second] {
        let socket = in_netns(ns, || UdpSocket::bind((Ipv4Addr::UNSPECIFIED, PORT)))?;
        socket.set_read_timeout(Some(Duration::from_secs(3)))?;
        socket.send_to(b"hi", world(WORLD_PORT + 21))?;
        let mut buf = [0u8; 16];
        let (_, peer) = server.recv_from(&mut buf)?;
        server.send_to(b"back", peer)?;
        let (n, from) = socket.recv_from(&mut buf)?;
        assert_eq!(
            (&buf[..n], from),
            (&b"back"[..], world(WORLD_PORT + 21).into())
        );
        peers.push(peer);
    }
    assert!(peers.iter().all(|p| p.ip() == NODE_IP), "{peers:?}");
    assert_eq!(peers[0].port(), PORT, "the first flow keeps its port");
    assert_ne!(peers[1].port(), PORT, "the second one is remapped");
    Ok(())
}

#[test]
fn a_table_full_of_unanswered_flows_still_takes_new_ones() -> Result<()> {
    if skip_unless_ebpf(KERNEL_CONNTRACK) {
        return Ok(());
    }
    let topology = Topology::new()?;
    // 32 flows of two entries each.
    let agent = Agent::start_with(&topology, &["--conntrack-max", "64"])?;
    let (_, live_ns) = agent.create_container(&["live"])?;
    let (_, flooder_ns) = agent.create_container(&["flooder"])?;
    let (_, newcomer_ns) = agent.create_container(&["newcomer"])?;
    let world_ns = topology.world.path();
    let _echo = Echo::start(&world_ns, WORLD_PORT)?;
    // A live connection, answered, so never evicted.
    let listener = in_netns(&world_ns, || TcpListener::bind((WORLD_IP, WORLD_PORT + 22)))?;
    let mut client = in_netns(&live_ns, || {
        TcpStream::connect_timeout(&world(WORLD_PORT + 22).into(), Duration::from_secs(3))
    })?;
    let (mut server, _) = listener.accept()?;
    client.set_read_timeout(Some(Duration::from_secs(2)))?;
    server.set_read_timeout(Some(Duration::from_secs(2)))?;
    // A sink in the world that never answers: the flooder's flows stay unanswered.
    let _sink = in_netns(&world_ns, || UdpSocket::bind((WORLD_IP, WORLD_PORT + 23)))?;
    // Four times the table's size in flows, from as many source ports.
    in_netns(&flooder_ns, || -> std::io::Result<()> {
        for _ in 0..128 {
            UdpSocket::bind("0.0.0.0:0")?.send_to(b"x", world(WORLD_PORT + 23))?;
        }
        Ok(())
    })?;
    assert!(
        agent.counter("flow_table.evict.unreplied")? >= 64,
        "the flood made room for itself by evicting its own unanswered flows"
    );
    // Another container still gets through, and the live connection still carries data.
    assert_eq!(
        request(&newcomer_ns, world(WORLD_PORT), "hi\n")?,
        "pong hi\n"
    );
    let mut b = [0u8; 1];
    client.write_all(b"x")?;
    server.read_exact(&mut b)?;
    server.write_all(b"y")?;
    client.read_exact(&mut b)?;
    assert_eq!(&b, b"y");
    assert_eq!(agent.counter("container_ingress.drop.conntrack_full")?, 0);
    Ok(())
}

/// Opens `count` UDP flows from the container at `ns` to the world, one datagram each to
/// consecutive world ports from `first_port` (nothing answers them).
fn open_udp_flows(ns: &std::path::Path, first_port: u16, count: u16) -> Result<()> {
    in_netns(ns, || -> std::io::Result<()> {
        let socket = UdpSocket::bind("0.0.0.0:0")?;
        for port in first_port..first_port + count {
            socket.send_to(b"x", world(port))?;
        }
        Ok(())
    })?;
    Ok(())
}

/// The flow GC's counters from `info`.
fn gc_stats(agent: &Agent) -> Result<serde_json::Value> {
    let info = agent.cli_json(&["info"])?;
    Ok(info["FlowTables"]["Gc"].clone())
}

fn count(stats: &serde_json::Value, name: &str) -> Result<u64> {
    stats[name]
        .as_u64()
        .with_context(|| format!("no {name} in {stats}"))
}

#[test]
fn the_api_answers_while_the_gc_walks_thousands_of_flows() -> Result<()> {
    if skip_unless_ebpf(KERNEL_CONNTRACK) {
        return Ok(());
    }
    const FLOWS: u16 = 4000;
    let topology = Topology::new()?;
    let mut agent = Agent::start(&topology)?;
    let (_, ns) = agent.create_container(&["c"])?;
    open_udp_flows(&ns, 20000, FLOWS)?;
    let listed = String::from_utf8(agent.cli(&["conntrack", "ls"])?.stdout)?
        .lines()
        .filter(|l| l.starts_with("masquerade udp"))
        .count() as u64;
    ensure!(listed >= u64::from(FLOWS), "{listed} flows of {FLOWS}");
    // API calls keep answering while passes run over the table.
    let passes_before = count(&gc_stats(&agent)?, "Passes")?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let stats = loop {
        let out = agent.cli(&["network", "ls"])?;
        ensure!(
            out.status.success(),
            "network ls: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stats = gc_stats(&agent)?;
        if count(&stats, "Passes")? >= passes_before + 2 {
            break stats;
        }
        ensure!(Instant::now() < deadline, "no GC pass ran: {stats}");
    };
    // A whole pass ran after the flows were made.
    ensure!(count(&stats, "LastScanned")? >= listed, "{stats}");
    ensure!(count(&stats, "Errors")? == 0, "{stats}");
    let info = agent.cli_json(&["info"])?;
    let conntrack = &info["FlowTables"]["Tables"][0];
    assert_eq!(conntrack["Name"], "CONNTRACK");
    ensure!(
        conntrack["Entries"].as_u64() >= Some(listed),
        "the table's fill: {conntrack}"
    );
    ensure!(conntrack["MemoryBytes"].as_u64() > Some(0), "{conntrack}");
    // The agent stops its GC and exits by itself.
    let status = agent.stop();
    ensure!(
        status.is_some_and(|s| s.success()),
        "exit {status:?}: {}",
        agent.log()
    );
    Ok(())
}

#[test]
fn flows_idle_past_their_timeout_are_removed_and_counted() -> Result<()> {
    if skip_unless_ebpf(KERNEL_CONNTRACK) {
        return Ok(());
    }
    const FLOWS: u16 = 50;
    let topology = Topology::new()?;
    let agent = Agent::start_with(&topology, &["--udp-idle-timeout", "1"])?;
    let (_, ns) = agent.create_container(&["c"])?;
    open_udp_flows(&ns, 21000, FLOWS)?;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let flows = String::from_utf8(agent.cli(&["conntrack", "ls"])?.stdout)?;
        if !flows.contains("masquerade udp") {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "idle flows never expired: {flows}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let stats = gc_stats(&agent)?;
    // Two entries per flow.
    ensure!(count(&stats, "Removed")? >= 2 * u64::from(FLOWS), "{stats}");
    ensure!(count(&stats, "Errors")? == 0, "{stats}");
    Ok(())
}
