//! `bpfbridge agent --dataplane iptables`: published ports programmed with Docker 20.10's
//! iptables rules in the node namespace, reached from the world namespace.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    time::Duration,
};

use anyhow::{Context as _, Result, ensure};
use bpfbridge_tests::{
    Agent, Echo, NODE_IP, Topology, WORLD_IP, in_netns, request, serve_once, tcp_reaches,
    udp_reaches,
};

/// `iptables-save` of the node namespace (never the root one).
fn node_rules(topology: &Topology) -> Result<String> {
    let out = topology.node.exec("iptables-save", &[])?;
    Ok(String::from_utf8(out.stdout)?)
}

#[test]
fn published_port_through_iptables_rules_and_removed_with_the_container() -> Result<()> {
    let topology = Topology::new()?;
    let agent = Agent::start_with(&topology, &["--dataplane", "iptables"])?;
    let info = agent.cli_json(&["info", "--format", "json"]).or_else(|_| {
        // `info` may print text only; the dataplane name is in it either way.
        let out = agent.cli(&["info"])?;
        Ok::<_, anyhow::Error>(serde_json::Value::String(
            String::from_utf8_lossy(&out.stdout).into_owned(),
        ))
    })?;
    ensure!(info.to_string().contains("iptables"), "info: {info}");

    let (json, netns) =
        agent.create_container(&["--name", "web", "-p", "8080:80", "-p", "5353:53/udp"])?;
    let ip = json["NetworkSettings"]["IPAddress"]
        .as_str()
        .context("IPAddress")?
        .to_string();

    let rules = node_rules(&topology)?;
    for expected in [
        ":DOCKER-ISOLATION-STAGE-1 - [0:0]".to_string(),
        ":DOCKER-USER - [0:0]".to_string(),
        "-A FORWARD -j DOCKER-USER".to_string(),
        "-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER".to_string(),
        "-A OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j DOCKER".to_string(),
        "-A FORWARD -o bpfbr0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT".to_string(),
        format!(
            "-A DOCKER ! -i bpfbr0 -p tcp -m tcp --dport 8080 -j DNAT --to-destination {ip}:80"
        ),
        format!("-A DOCKER -d {ip}/32 ! -i bpfbr0 -o bpfbr0 -p tcp -m tcp --dport 80 -j ACCEPT"),
        format!("-A POSTROUTING -s {ip}/32 -d {ip}/32 -p tcp -m tcp --dport 80 -j MASQUERADE"),
        format!(
            "-A DOCKER ! -i bpfbr0 -p udp -m udp --dport 5353 -j DNAT --to-destination {ip}:53"
        ),
    ] {
        ensure!(
            rules.contains(&expected),
            "{expected:?} missing in\n{rules}"
        );
    }
    let ports = agent.cli(&["ports"])?;
    ensure!(
        String::from_utf8_lossy(&ports.stdout).contains("8080"),
        "ports: {}",
        String::from_utf8_lossy(&ports.stdout)
    );

    // Through the port from the world; the server sees the client's own address.
    let server = serve_once(&netns, 80);
    let answer = request(
        &topology.world.path(),
        SocketAddrV4::new(NODE_IP, 8080),
        "ping\n",
    )
    .context("client")?;
    let peer = server.join().expect("server thread")?;
    ensure!(answer == "pong ping\n", "answer {answer:?}");
    assert_eq!(peer.ip(), WORLD_IP, "no SNAT on the way in");
    // From the node through 127.0.0.1, and from another container through the node's
    // address: the userland proxy (the server sees the proxy's connection).
    let server = serve_once(&netns, 80);
    let answer = request(
        &topology.node.path(),
        SocketAddrV4::new(Ipv4Addr::LOCALHOST, 8080),
        "local\n",
    )
    .context("node-local client")?;
    server.join().expect("server thread")?;
    ensure!(answer == "pong local\n", "answer {answer:?}");
    let (_, other) = agent.create_container(&["--name", "other"])?;
    let server = serve_once(&netns, 80);
    let answer =
        request(&other, SocketAddrV4::new(NODE_IP, 8080), "hairpin\n").context("hairpin client")?;
    server.join().expect("server thread")?;
    ensure!(answer == "pong hairpin\n", "answer {answer:?}");
    {
        let echo = Echo::start(&netns, 53)?;
        // UDP to 5353 lands on 53 in the container.
        let udp = udp_reaches(
            &topology.world.path(),
            SocketAddrV4::new(NODE_IP, 5353),
            Duration::from_secs(2),
        );
        drop(echo);
        ensure!(udp, "UDP through 5353");
    }
    let stats = String::from_utf8(agent.cli(&["stats"])?.stdout)?;
    ensure!(stats.contains("dnat.tcp.0.0.0.0:8080"), "stats: {stats}");

    // A restarted agent reads the rules back and keeps serving.
    let mut agent = agent;
    agent.stop();
    agent.spawn()?;
    let echo = Echo::start(&netns, 80)?;
    ensure!(
        tcp_reaches(
            &topology.world.path(),
            SocketAddrV4::new(NODE_IP, 8080),
            Duration::from_secs(2)
        ),
        "after restart: {}",
        agent.log()
    );
    drop(echo);

    let out = agent.cli(&["container", "rm", "web"])?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rules = node_rules(&topology)?;
    ensure!(
        !rules.contains("--dport 8080") && !rules.contains(&format!("{ip}/32")),
        "rules left behind:\n{rules}"
    );
    ensure!(
        !tcp_reaches(
            &topology.world.path(),
            SocketAddrV4::new(NODE_IP, 8080),
            Duration::from_millis(500)
        ),
        "port 8080 still answers"
    );
    ensure!(
        in_netns(&topology.node.path(), || std::net::TcpStream::connect((
            Ipv4Addr::LOCALHOST,
            8080
        )))
        .is_err(),
        "the userland proxy still listens on 127.0.0.1:8080"
    );
    Ok(())
}
