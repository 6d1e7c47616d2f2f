//! Published ports, complete: every `-p` form over TCP and UDP from the world namespace,
//! dynamic ports, address binding, loopback-only ports, hairpin, source filters, and what
//! removal and disconnection leave.

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use bpfbridge_tests::{
    Agent, NODE_IP, Topology, WORLD_IP, ebpf_checks, packet::Packet, request, request_from,
    serve_once, udp_request, udp_serve_once,
};

fn node(port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(NODE_IP, port)
}

/// A TCP round trip from `client_ns` to `to`, served in `server_ns` on `container_port`;
/// returns the client address the server saw.
fn tcp_via(
    client_ns: &Path,
    server_ns: &Path,
    to: SocketAddrV4,
    container_port: u16,
) -> Result<SocketAddr> {
    let server = serve_once(server_ns, container_port);
    let answer = request(client_ns, to, "ping\n").with_context(|| format!("TCP to {to}"));
    if answer.is_err() {
        // Let the server's accept end.
        let _ = request(
            server_ns,
            SocketAddrV4::new(Ipv4Addr::LOCALHOST, container_port),
            "x",
        );
    }
    let answer = answer?;
    let peer = server.join().expect("server thread")?;
    ensure!(answer == "pong ping\n", "answer {answer:?}");
    Ok(peer)
}

/// A UDP round trip; returns (client address the server saw, address the answer came from).
fn udp_via(
    client_ns: &Path,
    server_ns: &Path,
    to: SocketAddrV4,
    container_port: u16,
) -> Result<(SocketAddr, SocketAddr)> {
    let server = udp_serve_once(server_ns, container_port);
    let (answer, from) =
        udp_request(client_ns, to, "ping").with_context(|| format!("UDP to {to}"))?;
    let peer = server.join().expect("server thread")?;
    ensure!(answer == "pong ping", "answer {answer:?}");
    Ok((peer, from))
}

fn port_lines(agent: &Agent, args: &[&str]) -> Result<Vec<String>> {
    let out = agent.cli(args)?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?
        .lines()
        .map(str::to_string)
        .collect())
}

fn refused(agent: &Agent, args: &[&str], expected: &str) -> Result<()> {
    let out = agent.cli(args)?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success(), "{args:?} must fail");
    ensure!(
        stderr.contains(expected),
        "{args:?}: expected {expected:?} in {stderr:?}"
    );
    Ok(())
}

#[test]
fn every_publish_form_from_the_world() -> Result<()> {
    let topology = Topology::new()?;
    let agent = Agent::start_with(&topology, &["--port-range", "41000-41010"])?;
    let world = topology.world.path();
    let (_, ns) = agent.create_container(&[
        "web",
        "-p",
        "8080:80",
        "-p",
        "198.51.100.1:8082:82",
        "-p",
        "127.0.0.1:8081:81",
        "-p",
        "83",
        "-p",
        "198.51.100.1::84",
        "-p",
        "9000-9001:90-91",
        "-p",
        "9100-9110:92",
        "-p",
        "5353:53/udp",
        "-p",
        "5354:54/udp",
    ])?;
    let lines = port_lines(&agent, &["port", "web"])?;
    assert_eq!(
        lines,
        [
            "53/udp -> 0.0.0.0:5353",
            "54/udp -> 0.0.0.0:5354",
            "80/tcp -> 0.0.0.0:8080",
            "81/tcp -> 127.0.0.1:8081",
            "82/tcp -> 198.51.100.1:8082",
            "83/tcp -> 0.0.0.0:41000",
            "84/tcp -> 198.51.100.1:41001",
            "90/tcp -> 0.0.0.0:9000",
            "91/tcp -> 0.0.0.0:9001",
            "92/tcp -> 0.0.0.0:9100",
        ]
    );
    assert_eq!(
        port_lines(&agent, &["port", "web", "80"])?,
        ["0.0.0.0:8080"]
    );
    refused(
        &agent,
        &["port", "web", "99/tcp"],
        "No public port '99/tcp' published for web",
    )?;

    for (host, ctr) in [
        (8080, 80),
        (8082, 82),
        (41000, 83),
        (41001, 84),
        (9000, 90),
        (9001, 91),
        (9100, 92),
    ] {
        let peer = tcp_via(&world, &ns, node(host), ctr)?;
        assert_eq!(
            peer.ip(),
            WORLD_IP,
            "{host}->{ctr}: the container sees the real client"
        );
    }
    for (host, ctr) in [(5353, 53), (5354, 54)] {
        let (peer, from) = udp_via(&world, &ns, node(host), ctr)?;
        assert_eq!(peer.ip(), WORLD_IP);
        assert_eq!(
            from,
            SocketAddr::from(node(host)),
            "UDP replies come from the published address"
        );
    }
    // Bound to 127.0.0.1 only: never from the world.
    let err = request(&world, node(8081), "x").expect_err("loopback-only port");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    Ok(())
}

#[test]
fn dynamic_ports_publish_all_and_clashes() -> Result<()> {
    let topology = Topology::new()?;
    let agent = Agent::start_with(&topology, &["--port-range", "42000-42003"])?;
    // A socket already listening on the node takes its port out of the dynamic range.
    let listener = topology
        .node
        .run(|| std::net::TcpListener::bind("0.0.0.0:42000"))?;
    let (c, ns) =
        agent.create_container(&["app", "--expose", "7000", "--expose", "7001/udp", "-P"])?;
    assert_eq!(
        c["NetworkSettings"]["Ports"]["7000/tcp"][0]["HostPort"],
        "42001"
    );
    assert_eq!(
        c["NetworkSettings"]["Ports"]["7001/udp"][0]["HostPort"],
        "42002"
    );
    assert_eq!(
        tcp_via(&topology.world.path(), &ns, node(42001), 7000)?.ip(),
        WORLD_IP
    );
    assert_eq!(
        udp_via(&topology.world.path(), &ns, node(42002), 7001)?
            .0
            .ip(),
        WORLD_IP
    );

    // Same port and protocol on overlapping addresses: refused, naming the owner.
    agent.create_container(&["one", "-p", "7777:80"])?;
    refused(
        &agent,
        &["container", "create", "two", "-p", "198.51.100.1:7777:80"],
        "already published by container one",
    )?;
    // Another protocol, or a different address, may share the port number.
    agent.create_container(&["two", "-p", "7777:80/udp"])?;
    agent.create_container(&["three", "-p", "127.0.0.1:7778:80"])?;
    agent.create_container(&["four", "-p", "198.51.100.1:7778:80"])?;
    // The node's own listening socket and foreign addresses are refused.
    refused(
        &agent,
        &["container", "create", "five", "-p", "42000:80"],
        "already in use on the node",
    )?;
    refused(
        &agent,
        &["container", "create", "five", "-p", "203.0.113.5:8080:80"],
        "not an address of the node",
    )?;
    refused(
        &agent,
        &["container", "create", "five", "-p", "80:"],
        "invalid port mapping",
    )?;
    refused(
        &agent,
        &["container", "create", "five", "-p", "70000"],
        "must be between 1 and 65535",
    )?;
    refused(
        &agent,
        &["container", "create", "five", "-p", "8010-8000:80"],
        "end is before the start",
    )?;
    refused(
        &agent,
        &["container", "create", "five", "-p", "8000-8005:80-81"],
        "different lengths",
    )?;
    refused(
        &agent,
        &["container", "create", "five", "-p", "8000:80/sctp"],
        "unknown protocol",
    )?;
    let published: Vec<serde_json::Value> = serde_json::from_value(agent.cli_json(&["ports"])?)?;
    assert_eq!(published.len(), 6, "nothing half-published: {published:?}");
    // TCP ports left in the range: 42002 (only UDP uses it) and 42003; a third is too many.
    refused(
        &agent,
        &[
            "container",
            "create",
            "six",
            "-p",
            "80",
            "-p",
            "81",
            "-p",
            "82",
        ],
        "no free host port in 42000-42003",
    )?;
    let (six, _) = agent.create_container(&["six", "-p", "80", "-p", "81"])?;
    assert_eq!(
        six["NetworkSettings"]["Ports"]["80/tcp"][0]["HostPort"],
        "42003"
    );
    assert_eq!(
        six["NetworkSettings"]["Ports"]["81/tcp"][0]["HostPort"],
        "42002"
    );
    drop(listener);
    Ok(())
}

/// Sends a TCP SYN to 127.0.0.1:`port` from the world namespace as a raw Ethernet frame
/// addressed to the node's uplink: what moby#45610 was about.
fn send_syn_to_loopback(topology: &Topology, port: u16) -> Result<()> {
    let link = String::from_utf8(
        topology
            .node
            .ip(&["-o", "link", "show", bpfbridge_tests::UPLINK])?
            .stdout,
    )?;
    let mac_text = link
        .split("link/ether ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .context("uplink MAC")?;
    let mut dst_mac = [0u8; 6];
    for (b, part) in dst_mac.iter_mut().zip(mac_text.split(':')) {
        *b = u8::from_str_radix(part, 16)?;
    }
    let frame = Packet {
        dst_mac,
        ..Packet::tcp_syn(WORLD_IP, 45000, Ipv4Addr::LOCALHOST, port)
    }
    .build();
    topology.world.run(|| -> Result<()> {
        // SAFETY: plain socket calls with correctly sized arguments.
        unsafe {
            let fd = libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW,
                i32::from((libc::ETH_P_ALL as u16).to_be()),
            );
            ensure!(
                fd >= 0,
                "AF_PACKET socket: {}",
                std::io::Error::last_os_error()
            );
            let ifindex = libc::if_nametoindex(c"wl0".as_ptr());
            let mut addr: libc::sockaddr_ll = std::mem::zeroed();
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_ifindex = ifindex as i32;
            addr.sll_halen = 6;
            addr.sll_addr[..6].copy_from_slice(&dst_mac);
            let sent = libc::sendto(
                fd,
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&addr as *const libc::sockaddr_ll).cast(),
                size_of::<libc::sockaddr_ll>() as u32,
            );
            let err = std::io::Error::last_os_error();
            libc::close(fd);
            ensure!(sent == frame.len() as isize, "sendto: {err}");
        }
        Ok(())
    })
}

#[test]
fn loopback_only_ports_are_unreachable_from_the_world_and_containers() -> Result<()> {
    let topology = Topology::new()?;
    let agent = Agent::start(&topology)?;
    let (_, web_ns) = agent.create_container(&["web", "-p", "127.0.0.1:8081:81"])?;
    let (_, other_ns) = agent.create_container(&["other"])?;
    let server = serve_once(&web_ns, 81);
    // Docker 20.10's rules do translate it (nat/PREROUTING matches 127.0.0.1 as a local
    // address; later Docker versions drop such packets in the raw table).
    if ebpf_checks("a world packet to 127.0.0.1 is never translated (Docker 20.10's DNAT takes it)")
    {
        let before = agent.counter("uplink_ingress.pass.loopback_destination")?;
        send_syn_to_loopback(&topology, 8081)?;
        // Nothing arrives: the server gives up accepting (bounded), the counter moved.
        let deadline = Instant::now() + Duration::from_secs(5);
        while agent.counter("uplink_ingress.pass.loopback_destination")? == before
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(
            agent.counter("uplink_ingress.pass.loopback_destination")?,
            before + 1
        );
        assert_eq!(
            agent.counter("uplink_ingress.redirect.dnat")?,
            0,
            "never translated"
        );
    }
    // From a container, neither the node's address nor 127.0.0.1 reach it.
    let err = request(&other_ns, node(8081), "x").expect_err("not published on the node address");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    assert!(request(&other_ns, SocketAddrV4::new(Ipv4Addr::LOCALHOST, 8081), "x").is_err());
    // Unblock and end the server: a local connection inside its own namespace.
    let _ = request(&web_ns, SocketAddrV4::new(Ipv4Addr::LOCALHOST, 81), "bye\n");
    let peer = server.join().expect("server")?;
    assert!(
        peer.ip().is_loopback(),
        "the only connection the server saw was its own: {peer}"
    );
    Ok(())
}

#[test]
fn hairpin_to_own_and_other_containers_published_ports() -> Result<()> {
    let topology = Topology::new()?;
    let agent = Agent::start(&topology)?;
    let (web, web_ns) = agent.create_container(&["web", "-p", "8080:80", "-p", "5353:53/udp"])?;
    let (client, client_ns) = agent.create_container(&["client"])?;
    let client_ip: Ipv4Addr = client["NetworkSettings"]["IPAddress"]
        .as_str()
        .unwrap()
        .parse()?;
    let gateway: Ipv4Addr = web["NetworkSettings"]["Gateway"]
        .as_str()
        .unwrap()
        .parse()?;

    assert_eq!(
        tcp_via(&client_ns, &web_ns, node(8080), 80)?.ip(),
        client_ip,
        "another container: its own address"
    );
    assert_eq!(
        tcp_via(&web_ns, &web_ns, node(8080), 80)?.ip(),
        gateway,
        "its own port: seen from the gateway"
    );
    let (peer, from) = udp_via(&client_ns, &web_ns, node(5353), 53)?;
    assert_eq!((peer.ip(), from), (client_ip.into(), node(5353).into()));
    let (peer, from) = udp_via(&web_ns, &web_ns, node(5353), 53)?;
    assert_eq!((peer.ip(), from), (gateway.into(), node(5353).into()));
    if ebpf_checks("the TC program's hairpin counters") {
        assert!(agent.counter("container_ingress.redirect.hairpin")? >= 4);
        assert!(agent.counter("container_ingress.redirect.reply_to_container")? >= 4);
    }
    Ok(())
}

#[test]
fn source_filters_longest_prefix_with_counters() -> Result<()> {
    let topology = Topology::new()?;
    topology
        .world
        .ip(&["addr", "add", "198.51.100.3/24", "dev", "wl0"])?;
    let mut agent = Agent::start(&topology)?;
    let (_, ns) = agent.create_container(&["web", "-p", "8080:80", "-p", "8090:90"])?;
    let world = topology.world.path();
    let add = |source: &str, port: Option<&str>, action: &str| -> Result<String> {
        let mut args = vec!["filter", "add", "--source", source, "--action", action];
        if let Some(port) = port {
            args.extend(["--port", port]);
        }
        let out = agent.cli(&args)?;
        ensure!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8(out.stdout)?.trim().to_string())
    };
    let allow_net = add("198.51.100.0/24", Some("8080/tcp"), "allow")?;
    let deny_one = add("198.51.100.3/32", Some("8080/tcp"), "deny")?;
    let default_deny = add("0.0.0.0/0", Some("8080/tcp"), "deny")?;
    refused(
        &agent,
        &[
            "filter",
            "add",
            "--source",
            "198.51.100.3",
            "--port",
            "8080",
            "--action",
            "allow",
        ],
        "exists already",
    )?;
    refused(
        &agent,
        &[
            "filter",
            "add",
            "--source",
            "198.51.100.3/24",
            "--action",
            "allow",
        ],
        "host bits set",
    )?;
    refused(
        &agent,
        &["filter", "add", "--source", "x", "--action", "allow"],
        "invalid source",
    )?;
    refused(&agent, &["filter", "rm", "999"], "no such filter rule")?;

    let server = serve_once(&ns, 80);
    assert_eq!(
        request_from(&world, WORLD_IP, node(8080), "hi\n")?,
        "pong hi\n",
        "inside the allowed /24"
    );
    server.join().expect("server")?;
    let denied = request_from(&world, Ipv4Addr::new(198, 51, 100, 3), node(8080), "hi\n");
    assert!(denied.is_err(), "the denied /32 inside the /24");
    // Other ports have no rules: allowed.
    let server = serve_once(&ns, 90);
    assert_eq!(
        request_from(&world, Ipv4Addr::new(198, 51, 100, 3), node(8090), "hi\n")?,
        "pong hi\n"
    );
    server.join().expect("server")?;

    let ls = String::from_utf8(agent.cli(&["filter", "ls"])?.stdout)?;
    let hits = |id: &str| -> u64 {
        ls.lines()
            .find(|l| l.split_whitespace().next() == Some(id))
            .and_then(|l| l.split_whitespace().nth(4))
            .and_then(|p| p.parse().ok())
            .unwrap_or(0)
    };
    assert!(hits(&allow_net) >= 3, "{ls}");
    assert!(hits(&deny_one) >= 1, "{ls}");
    assert_eq!(hits(&default_deny), 0, "{ls}");
    if ebpf_checks("the XDP program's filter drop counter") {
        assert!(agent.counter("uplink_ingress.drop.filter")? >= 1);
    }

    // Rules survive a restart of the agent.
    agent.stop();
    agent.spawn()?;
    let denied = request_from(&world, Ipv4Addr::new(198, 51, 100, 3), node(8080), "hi\n");
    assert!(denied.is_err(), "still denied after a restart");
    // Removing the deny rule lets .3 in again.
    assert!(agent.cli(&["filter", "rm", &deny_one])?.status.success());
    let server = serve_once(&ns, 80);
    assert_eq!(
        request_from(&world, Ipv4Addr::new(198, 51, 100, 3), node(8080), "hi\n")?,
        "pong hi\n"
    );
    server.join().expect("server")?;
    Ok(())
}

#[test]
fn disconnect_and_idle_udp_flows_leave_nothing_behind() -> Result<()> {
    let topology = Topology::new()?;
    // The container answers, so the flow has been seen both ways.
    let agent = Agent::start_with(
        &topology,
        &["--udp-idle-timeout", "1", "--udp-stream-timeout", "1"],
    )?;
    let (_, ns) = agent.create_container(&["web", "-p", "5353:53/udp", "-p", "8080:80"])?;
    udp_via(&topology.world.path(), &ns, node(5353), 53)?;
    if ebpf_checks("the agent's flow table and --udp-stream-timeout") {
        let flows = String::from_utf8(agent.cli(&["conntrack", "ls"])?.stdout)?;
        assert!(flows.contains("udp src=198.51.100.2:"), "{flows}");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let flows = String::from_utf8(agent.cli(&["conntrack", "ls"])?.stdout)?;
            if !flows.contains("udp ") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "idle UDP flow never expired: {flows}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    // Disconnecting the container's only network closes its ports at once.
    assert!(
        agent
            .cli(&["network", "disconnect", "bridge", "web"])?
            .status
            .success()
    );
    assert_eq!(agent.cli_json(&["ports"])?, serde_json::json!([]));
    let err = request(&topology.world.path(), node(8080), "x").expect_err("closed");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    Ok(())
}

#[test]
fn node_local_access_without_a_proxy() -> Result<()> {
    use bpfbridge_tests::nettool;
    let topology = Topology::new()?;
    let agent = Agent::start(&topology)?;
    let (web, ns) = agent.create_container(&[
        "web",
        "-p",
        "8080:80",
        "-p",
        "127.0.0.1:8081:81",
        "-p",
        "5353:53/udp",
    ])?;
    let gateway: Ipv4Addr = web["NetworkSettings"]["Gateway"]
        .as_str()
        .unwrap()
        .parse()?;
    let node_ns = topology.node.path();
    let cgroup = Some(agent.cgroup.as_path());

    for (addr, container_port) in [
        ("127.0.0.1:8080", 80),
        ("198.51.100.1:8080", 80),
        ("127.0.0.1:8081", 81),
    ] {
        let server = serve_once(&ns, container_port);
        let out = nettool(&node_ns, cgroup, &["tcp", addr, "ping\n"]);
        if out.is_err() {
            let _ = request(
                &ns,
                SocketAddrV4::new(Ipv4Addr::LOCALHOST, container_port),
                "x",
            );
        }
        let out = out?;
        assert_eq!(out["answer"], "pong ping", "{addr}");
        assert_eq!(
            out["peer"], addr,
            "getpeername shows the address the client used"
        );
        assert_eq!(
            server.join().expect("server")?.ip(),
            gateway,
            "from the node, via the bridge"
        );
    }
    let server = udp_serve_once(&ns, 53);
    let out = nettool(&node_ns, cgroup, &["udp", "127.0.0.1:5353", "ping"])?;
    server.join().expect("server")?;
    assert_eq!(out["answer"], "pong ping");
    assert_eq!(
        out["from"], "127.0.0.1:5353",
        "the UDP reply comes from the address the client used"
    );
    // The socket hooks work per cgroup; iptables' nat/OUTPUT rules cover the whole namespace.
    if ebpf_checks("the socket hooks' counter and their cgroup scope") {
        assert!(agent.counter("sock_addr.translate.node_local")? >= 4);
        // Outside the agent's cgroup nothing is translated.
        let err = nettool(&node_ns, None, &["tcp", "127.0.0.1:8080", "x"])
            .expect_err("not in the cgroup");
        assert!(err.to_string().contains("refused"), "{err}");
    }
    // Nor in another namespace.
    let err = nettool(
        &topology.world.path(),
        cgroup,
        &["tcp", "127.0.0.1:8080", "x"],
    )
    .expect_err("other namespace");
    assert!(err.to_string().contains("refused"), "{err}");
    Ok(())
}

#[test]
fn network_host_binding_option_sets_the_default_address() -> Result<()> {
    let topology = Topology::new()?;
    let agent = Agent::start(&topology)?;
    let out = agent.cli(&[
        "network",
        "create",
        "local",
        "-o",
        "com.docker.network.bridge.host_binding_ipv4=127.0.0.1",
    ])?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (c, _) = agent.create_container(&[
        "web",
        "--network",
        "local",
        "-p",
        "8080:80",
        "-p",
        "198.51.100.1:8081:81",
    ])?;
    assert_eq!(
        c["NetworkSettings"]["Ports"]["80/tcp"][0]["HostIp"], "127.0.0.1",
        "the network's default"
    );
    assert_eq!(
        c["NetworkSettings"]["Ports"]["81/tcp"][0]["HostIp"], "198.51.100.1",
        "an explicit address wins"
    );
    let err =
        request(&topology.world.path(), node(8080), "x").expect_err("loopback-only by default");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    Ok(())
}
