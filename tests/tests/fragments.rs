//! Fragmented datagrams and ICMP errors through published ports and masquerade, over IPv4
//! and IPv6. The iptables dataplane gets both from the kernel
//! (reassembly before NAT, conntrack's RELATED errors); the eBPF dataplane must deliver
//! the same.

use std::{
    io::{Read as _, Write as _},
    net::{
        IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket,
    },
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use bpfbridge_tests::{
    Agent, NODE_IP, NODE_IPV6, Netns, Topology, WORLD_IP, WORLD_IPV6, WORLD_LINK, accept_within,
    ebpf_checks, in_netns, skip_without_dataplane_ipv6,
};

/// Datagrams that a 1,500-byte MTU splits into 3 and 7 fragments.
const SIZES: [usize; 2] = [3000, 9000];
const WORLD_PORT: u16 = 7500;

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// A UDP server in a namespace, until dropped (at most a minute): a datagram
/// `size:N` is answered with N patterned bytes, one that starts with `length?` with its
/// length (as text), one that starts with `source?` with its length and the address it
/// came from (`3000 2001:db8:1::1`), any other is echoed whole.
struct UdpServer {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl UdpServer {
    fn start(netns: &Path, port: u16) -> Result<Self> {
        Self::start_on(netns, SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), port))
    }

    fn start_on(netns: &Path, address: SocketAddr) -> Result<Self> {
        let socket = in_netns(netns, || UdpSocket::bind(address))?;
        socket.set_read_timeout(Some(Duration::from_millis(100)))?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut buf = vec![0u8; 65536];
            while !flag.load(Ordering::Relaxed) && Instant::now() < deadline {
                let Ok((n, peer)) = socket.recv_from(&mut buf) else {
                    continue;
                };
                if buf[..n].starts_with(b"length?") {
                    let _ = socket.send_to(n.to_string().as_bytes(), peer);
                    continue;
                }
                if buf[..n].starts_with(b"source?") {
                    let answer = format!("{n} {}", peer.ip());
                    let _ = socket.send_to(answer.as_bytes(), peer);
                    continue;
                }
                let answer = match std::str::from_utf8(&buf[..n])
                    .ok()
                    .and_then(|t| t.strip_prefix("size:"))
                    .and_then(|t| t.parse::<usize>().ok())
                {
                    Some(size) => pattern(size, 1),
                    None => buf[..n].to_vec(),
                };
                let _ = socket.send_to(&answer, peer);
            }
        });
        Ok(UdpServer {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for UdpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Sends `message` from `netns` to `to` and returns the answer; up to three tries of two
/// seconds each, since UDP promises nothing about a single datagram.
fn udp_exchange(netns: &Path, to: impl Into<SocketAddr>, message: &[u8]) -> Result<Vec<u8>> {
    let to = to.into();
    in_netns(netns, || -> Result<Vec<u8>> {
        let any: IpAddr = match to {
            SocketAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
            SocketAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
        };
        let socket = UdpSocket::bind(SocketAddr::new(any, 0))?;
        socket.connect(to)?;
        socket.set_read_timeout(Some(Duration::from_secs(2)))?;
        let mut buf = vec![0u8; 65536];
        let mut last = None;
        for _ in 0..3 {
            socket.send(message)?;
            match socket.recv(&mut buf) {
                Ok(n) => return Ok(buf[..n].to_vec()),
                Err(e) => last = Some(e),
            }
        }
        bail!("no answer from {to} after three tries: {last:?}")
    })
}

/// Through masquerade from the container in `netns` to the world's UDP server at `world`:
/// a small request's `size`-byte answer (fragmented on the way in), then a `size`-byte
/// request echoed back (fragmented both ways), each whole.
fn answer_and_echo_arrive_whole(netns: &Path, world: SocketAddr, size: usize) -> Result<()> {
    let answer = udp_exchange(netns, world, format!("size:{size}").as_bytes())?;
    ensure!(
        answer == pattern(size, 1),
        "a {size}-byte answer, {} bytes came",
        answer.len()
    );
    let message = pattern(size, 2);
    ensure!(
        udp_exchange(netns, world, &message)? == message,
        "a {size}-byte echo"
    );
    Ok(())
}

#[test]
fn large_udp_datagrams_through_masquerade_arrive_whole() -> Result<()> {
    let topology = Topology::new()?;
    let agent = Agent::start(&topology)?;
    let (_, ns) = agent.create_container(&["c"])?;
    let _server = UdpServer::start(&topology.world.path(), WORLD_PORT)?;
    let world = SocketAddrV4::new(WORLD_IP, WORLD_PORT);
    // The world's checksum offload does not matter: a stack that fragments a datagram
    // computes its checksum first.
    for offload in ["off", "on"] {
        topology
            .world
            .exec("ethtool", &["-K", WORLD_LINK, "tx", offload])?;
        for size in SIZES {
            answer_and_echo_arrive_whole(&ns, world.into(), size)
                .with_context(|| format!("tx offload {offload}"))?;
        }
    }
    if ebpf_checks("the fragment counters") {
        // 2 + 6 following fragments each way, size and offload setting.
        assert!(agent.counter("uplink_ingress.redirect.fragment")? >= 32);
        assert!(
            agent.counter("container_ingress.redirect.fragment")?
                + agent.counter("container_ingress.redirect.fragment_resolve_neighbour")?
                >= 16
        );
    }
    Ok(())
}

/// One ping with `size` bytes of data from `netns` to `to`, answered within two seconds.
fn ping(netns: &Path, to: IpAddr, size: usize) -> Result<()> {
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args([
            "busybox",
            "ping",
            "-c",
            "1",
            "-W",
            "2",
            "-s",
            &size.to_string(),
        ])
        .arg(to.to_string())
        .output()?;
    ensure!(
        out.status.success(),
        "a {size}-byte ping to {to}: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    Ok(())
}

#[test]
fn large_pings_through_masquerade_are_answered() -> Result<()> {
    let topology = Topology::new()?;
    let agent = Agent::start(&topology)?;
    let (_, ns) = agent.create_container(&["c"])?;
    for size in SIZES {
        // The echo's identifier is in the first fragment only, both ways.
        ping(&ns, WORLD_IP.into(), size)?;
    }
    Ok(())
}

#[test]
fn large_udp_datagrams_to_a_published_port_arrive_whole() -> Result<()> {
    let topology = Topology::new()?;
    let agent = Agent::start(&topology)?;
    let (_, ns) = agent.create_container(&["web", "-p", "5300:5300/udp"])?;
    let _server = UdpServer::start(&ns, 5300)?;
    let world = topology.world.path();
    // The sender's checksum offload does not matter here: a stack that fragments a
    // datagram computes its checksum first.
    for offload in ["off", "on"] {
        topology
            .world
            .exec("ethtool", &["-K", WORLD_LINK, "tx", offload])?;
        for size in SIZES {
            let message = pattern(size, size as u8);
            let answer = udp_exchange(&world, SocketAddrV4::new(NODE_IP, 5300), &message)
                .with_context(|| format!("tx offload {offload}, {size} bytes"))?;
            ensure!(
                answer == message,
                "tx offload {offload}: {size} bytes sent, {} came back",
                answer.len()
            );
        }
    }
    if ebpf_checks("the fragment counters") {
        assert!(agent.counter("uplink_ingress.redirect.fragment")? >= 16);
    }
    Ok(())
}

#[test]
fn port_unreachable_from_a_container_reaches_the_client() -> Result<()> {
    let topology = Topology::new()?;
    let agent = Agent::start(&topology)?;
    // Published, but nothing listens: the container answers "port unreachable", which
    // must reach the client from the published address it used.
    let _ = agent.create_container(&["web", "-p", "5301:5301/udp"])?;
    let result = in_netns(&topology.world.path(), || -> std::io::Result<usize> {
        let socket = UdpSocket::bind("0.0.0.0:0")?;
        socket.connect(SocketAddrV4::new(NODE_IP, 5301))?;
        socket.set_read_timeout(Some(Duration::from_secs(3)))?;
        socket.send(b"anyone?")?;
        let mut buf = [0u8; 16];
        socket.recv(&mut buf)
    });
    let err = result.expect_err("no answer can come");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
    if ebpf_checks("the ICMP error counter") {
        assert!(
            agent.counter("container_ingress.redirect.icmp_error")?
                + agent.counter("container_ingress.redirect.icmp_error_resolve_neighbour")?
                >= 1
        );
    }
    Ok(())
}

const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
const DOWNLOAD: usize = 200 * 1024;

/// A client behind a router: the world namespace routes 203.0.113.0/24 over a link whose
/// MTU is 1280 on the router's side and 1500 on the client's (a tunnel in the path: the
/// client's MSS does not help). Returns the client's namespace.
fn client_behind_a_small_mtu_hop(topology: &Topology) -> Result<Netns> {
    let client = Netns::new("client")?;
    let world = &topology.world;
    world.ip(&[
        "link",
        "add",
        "rt0",
        "mtu",
        "1280",
        "type",
        "veth",
        "peer",
        "name",
        "cl0",
        "netns",
        &client.name,
    ])?;
    world.ip(&["addr", "add", "203.0.113.1/24", "dev", "rt0"])?;
    world.ip(&["link", "set", "rt0", "up"])?;
    world.exec("sysctl", &["-qw", "net.ipv4.ip_forward=1"])?;
    client.ip(&["link", "set", "cl0", "mtu", "1500", "up"])?;
    client.ip(&["addr", "add", &format!("{CLIENT_IP}/24"), "dev", "cl0"])?;
    client.ip(&["route", "add", "default", "via", "203.0.113.1"])?;
    topology.node.ip(&[
        "route",
        "add",
        "203.0.113.0/24",
        "via",
        &WORLD_IP.to_string(),
    ])?;
    Ok(client)
}

/// A TCP server in a namespace that sends `DOWNLOAD` patterned bytes to its first client
/// and closes; returns how many it wrote.
fn serve_download(netns: PathBuf, address: SocketAddr) -> thread::JoinHandle<Result<usize>> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let handle = thread::spawn(move || -> Result<usize> {
        let listener = in_netns(&netns, || TcpListener::bind(address))?;
        listener.set_nonblocking(true)?;
        let _ = ready_tx.send(());
        let (mut stream, _) = accept_within(&listener, Duration::from_secs(20))?;
        stream.set_write_timeout(Some(Duration::from_secs(20)))?;
        stream.write_all(&pattern(DOWNLOAD, 3))?;
        Ok(DOWNLOAD)
    });
    let _ = ready_rx.recv_timeout(Duration::from_secs(5));
    handle
}

#[test]
fn a_download_across_a_smaller_mtu_hop_completes() -> Result<()> {
    let topology = Topology::new()?;
    let client = client_behind_a_small_mtu_hop(&topology)?;
    let agent = Agent::start(&topology)?;
    let (_, ns) = agent.create_container(&["web", "-p", "8600:8600"])?;
    let server = serve_download(ns, SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 8600));
    // The container's full-size segments stop at the router, whose "fragmentation
    // needed" must reach the container for the rest to come through.
    download(&client, SocketAddr::new(NODE_IP.into(), 8600))?;
    server.join().expect("server")?;
    if ebpf_checks("the ICMP error counter") {
        assert!(agent.counter("uplink_ingress.redirect.icmp_error")? >= 1);
    }
    Ok(())
}

/// Downloads [`DOWNLOAD`] bytes from `from` in the client's namespace and checks them.
fn download(client: &Netns, from: SocketAddr) -> Result<()> {
    let received = in_netns(&client.path(), || -> Result<Vec<u8>> {
        let mut stream = TcpStream::connect_timeout(&from, Duration::from_secs(3))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut received = Vec::with_capacity(DOWNLOAD);
        let mut buf = vec![0u8; 65536];
        while Instant::now() < deadline {
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => received.extend_from_slice(&buf[..n]),
                Err(e) => bail!("after {} bytes: {e}", received.len()),
            }
        }
        Ok(received)
    })?;
    ensure!(
        received.len() == DOWNLOAD,
        "{} of {DOWNLOAD} bytes arrived",
        received.len()
    );
    ensure!(received == pattern(DOWNLOAD, 3), "the bytes differ");
    Ok(())
}

/// A dual-stack topology, an agent, and a network `v6` on `10.66.0.0/24` and
/// `fd00:66::/64`; `None` on a dataplane without IPv6 (after saying why).
fn dual_stack(what: &str) -> Result<Option<(Topology, Agent)>> {
    let topology = Topology::new()?.with_ipv6()?;
    let agent = Agent::start(&topology)?;
    if skip_without_dataplane_ipv6(&agent, what)? {
        return Ok(None);
    }
    let out = agent.cli(&[
        "network",
        "create",
        "v6",
        "--ipv6",
        "--subnet",
        "10.66.0.0/24",
        "--subnet",
        "fd00:66::/64",
    ])?;
    ensure!(
        out.status.success(),
        "network create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(Some((topology, agent)))
}

#[test]
fn large_udp_datagrams_to_an_ipv6_published_port_arrive_whole() -> Result<()> {
    let Some((topology, agent)) = dual_stack("IPv6 fragments to a published port")? else {
        return Ok(());
    };
    let (_, ns) = agent.create_container(&["web", "--network", "v6", "-p", "5300:5300/udp"])?;
    let _server = UdpServer::start_on(&ns, SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), 5300))?;
    let world = topology.world.path();
    let published = SocketAddr::new(NODE_IPV6.into(), 5300);
    for offload in ["off", "on"] {
        topology
            .world
            .exec("ethtool", &["-K", WORLD_LINK, "tx", offload])?;
        for size in SIZES {
            // The world's stack fragments the datagram (IPv6 routers never do); the
            // container answers with the length it received.
            let mut message = b"length?".to_vec();
            message.extend(pattern(size - message.len(), size as u8));
            let answer = udp_exchange(&world, published, &message)
                .with_context(|| format!("tx offload {offload}, {size} bytes"))?;
            ensure!(
                answer == size.to_string().as_bytes(),
                "tx offload {offload}: {size} bytes sent, the container got {}",
                String::from_utf8_lossy(&answer)
            );
        }
    }
    if ebpf_checks("the fragment counters") {
        // 2 + 6 following fragments for each size and offload setting.
        assert!(agent.counter("uplink_ingress.redirect.fragment")? >= 16);
    }
    Ok(())
}

#[test]
fn large_udp_replies_from_an_ipv6_published_port_arrive_whole() -> Result<()> {
    let Some((topology, agent)) = dual_stack("IPv6 fragmented replies from a published port")?
    else {
        return Ok(());
    };
    let (_, ns) = agent.create_container(&["web", "--network", "v6", "-p", "5300:5300/udp"])?;
    let _server = UdpServer::start_on(&ns, SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), 5300))?;
    let world = topology.world.path();
    let published = SocketAddr::new(NODE_IPV6.into(), 5300);
    for offload in ["off", "on"] {
        topology
            .world
            .exec("ethtool", &["-K", WORLD_LINK, "tx", offload])?;
        for size in SIZES {
            // A small request; the container's stack fragments the answer, whose later
            // fragments must leave from the published address as the first does.
            let answer = udp_exchange(&world, published, format!("size:{size}").as_bytes())
                .with_context(|| format!("tx offload {offload}, {size} bytes"))?;
            ensure!(
                answer == pattern(size, 1),
                "tx offload {offload}: a {size}-byte answer, {} bytes came",
                answer.len()
            );
        }
    }
    if ebpf_checks("the fragment counters") {
        // 2 + 6 following fragments for each size and offload setting.
        assert!(
            agent.counter("container_ingress.redirect.fragment")?
                + agent.counter("container_ingress.redirect.fragment_resolve_neighbour")?
                >= 16
        );
    }
    Ok(())
}

#[test]
fn large_udp_datagrams_through_ipv6_masquerade_arrive_whole() -> Result<()> {
    let Some((topology, agent)) = dual_stack("IPv6 fragments through masquerade")? else {
        return Ok(());
    };
    let (_, ns) = agent.create_container(&["c", "--network", "v6"])?;
    let world = SocketAddr::new(WORLD_IPV6.into(), WORLD_PORT);
    let _server = UdpServer::start_on(
        &topology.world.path(),
        SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), WORLD_PORT),
    )?;
    for offload in ["off", "on"] {
        topology
            .world
            .exec("ethtool", &["-K", WORLD_LINK, "tx", offload])?;
        for size in SIZES {
            let context = || format!("tx offload {offload}, {size} bytes");
            // The container's stack fragments the datagram: every fragment must leave
            // with the node's address, or the world cannot put it together.
            let mut message = b"source?".to_vec();
            message.extend(pattern(size - message.len(), size as u8));
            let answer = udp_exchange(&ns, world, &message).with_context(context)?;
            ensure!(
                answer == format!("{size} {NODE_IPV6}").as_bytes(),
                "tx offload {offload}: {size} bytes sent, the world got {}",
                String::from_utf8_lossy(&answer)
            );
            answer_and_echo_arrive_whole(&ns, world, size).with_context(context)?;
        }
    }
    // 2 + 6 following fragments each way, twice each way, per offload setting.
    following_fragments_redirected_both_ways(&agent, 32)
}

#[test]
fn large_pings_through_ipv6_masquerade_are_answered() -> Result<()> {
    let Some((_topology, agent)) = dual_stack("large pings through IPv6 masquerade")? else {
        return Ok(());
    };
    let (_, ns) = agent.create_container(&["c", "--network", "v6"])?;
    for size in SIZES {
        // The echo's identifier is in the first fragment only, both ways.
        ping(&ns, WORLD_IPV6.into(), size)?;
    }
    // 2 + 6 following fragments each way.
    following_fragments_redirected_both_ways(&agent, 8)
}

/// On eBPF: at least `count` following fragments were translated at the uplink (towards
/// the containers) and at the containers' veths (out), through masquerade's records.
fn following_fragments_redirected_both_ways(agent: &Agent, count: u64) -> Result<()> {
    if ebpf_checks("the fragment counters") {
        let inbound = agent.counter("uplink_ingress.redirect.fragment")?;
        let outbound = agent.counter("container_ingress.redirect.fragment")?
            + agent.counter("container_ingress.redirect.fragment_resolve_neighbour")?;
        ensure!(inbound >= count, "{inbound} fragments in, expected {count}");
        ensure!(
            outbound >= count,
            "{outbound} fragments out, expected {count}"
        );
    }
    Ok(())
}

#[test]
fn ipv6_port_unreachable_from_a_container_reaches_the_client() -> Result<()> {
    let Some((topology, agent)) = dual_stack("a container's ICMPv6 errors")? else {
        return Ok(());
    };
    // Published, but nothing listens: the container answers "port unreachable", which
    // must reach the client from the published address and port it used.
    let _ = agent.create_container(&["web", "--network", "v6", "-p", "5301:5301/udp"])?;
    for offload in ["off", "on"] {
        topology
            .world
            .exec("ethtool", &["-K", WORLD_LINK, "tx", offload])?;
        let result = in_netns(&topology.world.path(), || -> std::io::Result<usize> {
            let socket = UdpSocket::bind("[::]:0")?;
            socket.connect(SocketAddr::new(NODE_IPV6.into(), 5301))?;
            socket.set_read_timeout(Some(Duration::from_secs(3)))?;
            socket.send(b"anyone?")?;
            let mut buf = [0u8; 16];
            socket.recv(&mut buf)
        });
        let err = result.expect_err("no answer can come");
        assert_eq!(
            err.kind(),
            std::io::ErrorKind::ConnectionRefused,
            "tx offload {offload}: {err}"
        );
    }
    if ebpf_checks("the ICMP error counter") {
        assert!(
            agent.counter("container_ingress.redirect.icmp_error")?
                + agent.counter("container_ingress.redirect.icmp_error_resolve_neighbour")?
                >= 2
        );
    }
    Ok(())
}

/// The client behind a small-MTU hop of [`client_behind_a_small_mtu_hop`], over IPv6 too:
/// 2001:db8:2::/64 on the router's link, routed by the node through the world.
fn ipv6_client_behind_a_small_mtu_hop(topology: &Topology) -> Result<Netns> {
    let client = client_behind_a_small_mtu_hop(topology)?;
    let world = &topology.world;
    world.exec("sysctl", &["-qw", "net.ipv6.conf.all.forwarding=1"])?;
    world.ip(&[
        "-6",
        "addr",
        "add",
        "2001:db8:2::1/64",
        "dev",
        "rt0",
        "nodad",
    ])?;
    client.ip(&[
        "-6",
        "addr",
        "add",
        "2001:db8:2::2/64",
        "dev",
        "cl0",
        "nodad",
    ])?;
    client.ip(&["-6", "route", "add", "default", "via", "2001:db8:2::1"])?;
    topology.node.ip(&[
        "-6",
        "route",
        "add",
        "2001:db8:2::/64",
        "via",
        &WORLD_IPV6.to_string(),
    ])?;
    Ok(client)
}

#[test]
fn an_ipv6_download_across_a_smaller_mtu_hop_completes() -> Result<()> {
    let Some((topology, agent)) = dual_stack("ICMPv6 packet too big through a published port")?
    else {
        return Ok(());
    };
    let client = ipv6_client_behind_a_small_mtu_hop(&topology)?;
    let (_, ns) = agent.create_container(&["web", "--network", "v6", "-p", "8600:8600"])?;
    let server = serve_download(ns, SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), 8600));
    // The container's full-size segments stop at the router (IPv6 routers never
    // fragment), whose "packet too big" must reach the container for the rest to come
    // through.
    download(&client, SocketAddr::new(NODE_IPV6.into(), 8600))?;
    server.join().expect("server")?;
    if ebpf_checks("the ICMP error counter") {
        assert!(agent.counter("uplink_ingress.redirect.icmp_error")? >= 1);
    }
    Ok(())
}

/// A TCP server in a namespace that reads its first client's bytes to the end and returns
/// them.
fn receive_upload(netns: PathBuf, address: SocketAddr) -> thread::JoinHandle<Result<Vec<u8>>> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let handle = thread::spawn(move || -> Result<Vec<u8>> {
        let listener = in_netns(&netns, || TcpListener::bind(address))?;
        listener.set_nonblocking(true)?;
        let _ = ready_tx.send(());
        let (mut stream, _) = accept_within(&listener, Duration::from_secs(20))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut received = Vec::with_capacity(DOWNLOAD);
        stream
            .read_to_end(&mut received)
            .with_context(|| format!("after {} bytes", received.len()))?;
        Ok(received)
    });
    let _ = ready_rx.recv_timeout(Duration::from_secs(5));
    handle
}

#[test]
fn a_masqueraded_ipv6_upload_across_a_smaller_mtu_hop_completes() -> Result<()> {
    let Some((topology, agent)) = dual_stack("ICMPv6 packet too big through IPv6 masquerade")?
    else {
        return Ok(());
    };
    let client = ipv6_client_behind_a_small_mtu_hop(&topology)?;
    let (_, ns) = agent.create_container(&["uploader", "--network", "v6"])?;
    let server = SocketAddr::new("2001:db8:2::2".parse::<Ipv6Addr>()?.into(), 7501);
    let receiver = receive_upload(client.path(), server);
    // The container's full-size segments leave with the node's address and stop at the
    // router (IPv6 routers never fragment), whose "packet too big" to the node's address
    // must reach the container for the rest to come through.
    in_netns(&ns, || -> Result<()> {
        let mut stream = TcpStream::connect_timeout(&server, Duration::from_secs(3))?;
        stream.set_write_timeout(Some(Duration::from_secs(20)))?;
        stream.write_all(&pattern(DOWNLOAD, 3))?;
        stream.shutdown(std::net::Shutdown::Write)?;
        Ok(())
    })?;
    let received = receiver.join().expect("receiver")?;
    ensure!(
        received.len() == DOWNLOAD,
        "{} of {DOWNLOAD} bytes arrived",
        received.len()
    );
    ensure!(received == pattern(DOWNLOAD, 3), "the bytes differ");
    if ebpf_checks("the ICMP error counter") {
        assert!(agent.counter("uplink_ingress.redirect.icmp_error")? >= 1);
    }
    Ok(())
}
