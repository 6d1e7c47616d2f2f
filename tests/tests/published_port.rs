//! End to end in namespaces: a world client reaches a container through a published port
//! on the node's uplink address, served by the XDP and TC programs.

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    path::Path,
    time::Duration,
};

use anyhow::{Context as _, Result, ensure};
use bpfbridge_lab::TxOffload;
use bpfbridge_tests::{
    Agent, Echo, NODE_IP, Netns, Topology, WORLD_IP, ebpf_checks, links, ping_reaches, request,
    run, serve_once, skip_unless_ebpf, tcp_reaches, udp_reaches,
};

/// One pass of the suite: the world side's TX offload, and `--uplink-hook`. With offload
/// on (a veth's default) frames from the world carry partial checksums, which XDP cannot
/// update: `auto` puts the uplink program at TC there. XDP runs with offload off.
#[derive(Clone, Copy, Debug)]
struct Case {
    offload: TxOffload,
    hook: &'static str,
}

const OFFLOAD_ON: Case = Case {
    offload: TxOffload::On,
    hook: "auto",
};
const OFFLOAD_OFF: Case = Case {
    offload: TxOffload::Off,
    hook: "auto",
};
const XDP_OFFLOAD_OFF: Case = Case {
    offload: TxOffload::Off,
    hook: "xdp",
};

impl Case {
    fn topology(self) -> Result<Topology> {
        Topology::builder().world_tx_offload(self.offload).build()
    }

    fn agent(self, topology: &Topology) -> Result<Agent> {
        Agent::start_with(topology, &["--uplink-hook", self.hook])
    }

    /// The hook `auto` or the flag picks for the veth uplink.
    fn uplink_hook(self) -> &'static str {
        match self.hook {
            "xdp" => "xdp",
            _ => "tc",
        }
    }
}

/// Each test of the suite, once per [`Case`].
macro_rules! cases {
    ($($test:ident),+ $(,)?) => {$(
        mod $test {
            use super::*;

            #[test]
            fn offload_on() -> Result<()> {
                super::$test(OFFLOAD_ON)
            }

            #[test]
            fn offload_off() -> Result<()> {
                super::$test(OFFLOAD_OFF)
            }

            #[test]
            fn xdp_offload_off() -> Result<()> {
                super::$test(XDP_OFFLOAD_OFF)
            }
        }
    )+};
}

cases!(
    world_client_reaches_published_port_and_server_sees_its_real_address,
    outside_reaches_a_container_directly_on_no_port,
    container_rm_closes_the_port_and_removes_everything,
    container_in_an_existing_namespace,
    restarted_agent_readopts_the_dataplane_and_keeps_serving,
    node_namespace_has_no_nat_rules,
    restart_removes_a_veth_that_no_container_owns,
);

fn published(port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(NODE_IP, port)
}

/// One request through the published port; returns what the server saw as the client.
fn round_trip(
    topology: &Topology,
    container_ns: &Path,
    host_port: u16,
    container_port: u16,
) -> Result<SocketAddr> {
    let server = serve_once(container_ns, container_port);
    let answer =
        request(&topology.world.path(), published(host_port), "ping\n").context("client")?;
    let peer = server.join().expect("server thread")?;
    ensure!(answer == "pong ping\n", "unexpected answer {answer:?}");
    Ok(peer)
}

fn world_client_reaches_published_port_and_server_sees_its_real_address(case: Case) -> Result<()> {
    let topology = case.topology()?;
    let agent = case.agent(&topology)?;
    let (json, netns) = agent.create_container(&["--name", "web", "-p", "8080:80"])?;
    assert_eq!(
        json["NetworkSettings"]["Ports"]["80/tcp"][0]["HostPort"],
        "8080"
    );
    assert_eq!(json["NetworkSettings"]["IPAddress"], "172.17.0.2");
    assert_eq!(json["NetworkSettings"]["MacAddress"], "02:42:ac:11:00:02");

    let peer = round_trip(&topology, &netns, 8080, 80)?;
    assert_eq!(peer.ip(), WORLD_IP, "no SNAT on the way in");

    // The fast path did the work: the uplink program translated, the veth program replied.
    if ebpf_checks("the XDP and TC programs' counters") {
        assert!(
            agent.counter("uplink_ingress.redirect.dnat")? >= 3,
            "{}",
            agent.log()
        );
        assert!(agent.counter("container_ingress.redirect.reply")? >= 2);
        assert_eq!(agent.counter("uplink_ingress.drop.malformed")?, 0);
    }

    // A second connection works as well (new flow, new source port).
    assert_eq!(round_trip(&topology, &netns, 8080, 80)?.ip(), WORLD_IP);
    Ok(())
}

/// Like Docker 28 (moby#49325): on a `nat` network the outside reaches a container at its
/// own address on no port, published or not (tests/tests/gateway_modes.rs covers the other
/// modes).
fn outside_reaches_a_container_directly_on_no_port(case: Case) -> Result<()> {
    let topology = case.topology()?;
    let agent = case.agent(&topology)?;
    let (json, netns) = agent.create_container(&["--name", "web", "-p", "8080:80"])?;
    let ip: Ipv4Addr = json["NetworkSettings"]["IPAddress"]
        .as_str()
        .context("IPAddress")?
        .parse()?;
    let _published = Echo::start(&netns, 80)?;
    let _unpublished = Echo::start(&netns, 22)?;
    let world = topology.world.path();
    let wait = Duration::from_secs(1);
    ensure!(
        !tcp_reaches(&world, SocketAddrV4::new(ip, 80), wait),
        "the published container port, at the container's address"
    );
    ensure!(
        !tcp_reaches(&world, SocketAddrV4::new(ip, 22), wait),
        "an unpublished TCP port"
    );
    ensure!(
        !udp_reaches(&world, SocketAddrV4::new(ip, 22), wait),
        "an unpublished UDP port"
    );
    ensure!(!ping_reaches(&world, ip), "ping");
    if ebpf_checks("the direct-access drop counter") {
        ensure!(agent.counter("uplink_ingress.drop.direct_access")? >= 4);
    }
    Ok(())
}

fn container_rm_closes_the_port_and_removes_everything(case: Case) -> Result<()> {
    let topology = case.topology()?;
    let agent = case.agent(&topology)?;
    let links_before = links(&topology.node)?;
    let (_, netns) = agent.create_container(&["--name", "web", "-p", "8080:80"])?;
    let veths: Vec<String> = links(&topology.node)?
        .into_iter()
        .filter(|l| !links_before.contains(l))
        .collect();
    assert!(
        matches!(veths.as_slice(), [v] if v.starts_with("veth")),
        "{veths:?}"
    );
    round_trip(&topology, &netns, 8080, 80)?;

    let out = agent.cli(&["container", "rm", "web"])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Nothing answers: with no mapping the node's own stack refuses the connection.
    let _server = serve_once(&netns, 80);
    let err = request(&topology.world.path(), published(8080), "ping\n")
        .expect_err("port must be closed");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
    assert_eq!(links(&topology.node)?, links_before, "veth removed");
    assert_eq!(
        agent.cli_json(&["ports"])?,
        serde_json::json!([]),
        "map entries removed"
    );
    assert!(!netns.exists(), "the namespace the agent made is gone");
    let ls = agent.cli(&["container", "ls"])?;
    assert!(!String::from_utf8_lossy(&ls.stdout).contains("web"));
    Ok(())
}

fn container_in_an_existing_namespace(case: Case) -> Result<()> {
    let topology = case.topology()?;
    let agent = case.agent(&topology)?;
    let ns = Netns::new("ctr")?;
    let path = ns.path();
    let (json, netns) = agent.create_container(&[
        "--name",
        "app",
        "--netns",
        path.to_str().unwrap(),
        "-p",
        "9000:9000",
    ])?;
    assert_eq!(netns, path);
    let addr = ns.ip(&["-4", "-o", "addr", "show", "dev", "eth0"])?;
    let ip = json["NetworkSettings"]["IPAddress"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(String::from_utf8_lossy(&addr.stdout).contains(&ip));
    assert_eq!(round_trip(&topology, &netns, 9000, 9000)?.ip(), WORLD_IP);

    // Removing the container leaves a namespace it did not create in place, empty.
    agent.cli_json(&["container", "inspect", "app"])?;
    assert!(agent.cli(&["container", "rm", "app"])?.status.success());
    assert!(path.exists());
    assert!(!links(&ns)?.iter().any(|l| l == "eth0"));
    Ok(())
}

fn restarted_agent_readopts_the_dataplane_and_keeps_serving(case: Case) -> Result<()> {
    let topology = case.topology()?;
    let mut agent = case.agent(&topology)?;
    let (_, netns) = agent.create_container(&["--name", "web", "-p", "8080:80"])?;
    round_trip(&topology, &netns, 8080, 80)?;

    agent.stop();
    // With the agent gone, the pinned programs and maps keep the port working.
    round_trip(&topology, &netns, 8080, 80)?;
    agent.spawn()?;
    round_trip(&topology, &netns, 8080, 80)?;
    let ls = agent.cli(&["container", "ls"])?;
    assert!(String::from_utf8_lossy(&ls.stdout).contains("web"));
    // The restarted agent attached no second uplink program, on the hook the case picks.
    if ebpf_checks("the program on the uplink") {
        let info = agent.cli_json(&["info"])?;
        assert_eq!(
            info["Uplinks"],
            serde_json::json!([{"Name": "up0", "Hook": case.uplink_hook()}])
        );
        let link = topology.node.ip(&["-d", "link", "show", "up0"])?;
        let xdp = String::from_utf8_lossy(&link.stdout)
            .matches("prog/xdp")
            .count();
        assert_eq!(xdp, usize::from(case.uplink_hook() == "xdp"));
    }
    // A new container after the restart gets the next address, not a reused one.
    let (json, _) = agent.create_container(&["--name", "second"])?;
    assert_eq!(json["NetworkSettings"]["IPAddress"], "172.17.0.3");
    Ok(())
}

fn node_namespace_has_no_nat_rules(case: Case) -> Result<()> {
    if skip_unless_ebpf("the iptables dataplane is made of NAT rules") {
        return Ok(());
    }
    let topology = case.topology()?;
    let agent = case.agent(&topology)?;
    let (_, netns) = agent.create_container(&["--name", "web", "-p", "8080:80"])?;
    round_trip(&topology, &netns, 8080, 80)?;
    let ruleset = topology.node.exec("nft", &["list", "ruleset"])?;
    let ruleset = String::from_utf8_lossy(&ruleset.stdout);
    assert!(
        ruleset.trim().is_empty(),
        "bpfbridge writes no nftables/iptables rules:\n{ruleset}"
    );
    let saved = run(
        "ip",
        &["netns", "exec", &topology.node.name, "iptables-save"],
    )?;
    assert!(!String::from_utf8_lossy(&saved.stdout).contains("DNAT"));
    // No proxy process either: the only processes in the node's namespace are the agent and
    // its DNS keeper (which holds the containers' DNS sockets across restarts).
    let node_ns = std::fs::metadata(topology.node.path())?;
    let mut in_node = Vec::new();
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let Ok(ns) = std::fs::metadata(entry.path().join("ns/net")) else {
            continue;
        };
        if std::os::unix::fs::MetadataExt::ino(&ns) == std::os::unix::fs::MetadataExt::ino(&node_ns)
        {
            let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
            in_node.push(comm.trim().to_string());
        }
    }
    in_node.sort();
    assert_eq!(
        in_node,
        ["bpfbridge", "bpfbridge-dns"],
        "processes in the node namespace"
    );
    Ok(())
}

fn restart_removes_a_veth_that_no_container_owns(case: Case) -> Result<()> {
    let topology = case.topology()?;
    let mut agent = case.agent(&topology)?;
    agent.create_container(&["--name", "kept"])?;
    agent.stop();
    // What a crash between creating a veth and recording the container leaves behind.
    topology.node.ip(&[
        "link",
        "add",
        "vethorphan",
        "type",
        "veth",
        "peer",
        "name",
        "bpfcorphan",
    ])?;
    topology
        .node
        .ip(&["link", "set", "vethorphan", "master", "bpfbr0"])?;
    agent.spawn()?;
    let names = links(&topology.node)?;
    assert!(!names.iter().any(|l| l.contains("orphan")), "{names:?}");
    let ls = agent.cli(&["container", "ls"])?;
    assert!(String::from_utf8_lossy(&ls.stdout).contains("kept"));
    Ok(())
}
