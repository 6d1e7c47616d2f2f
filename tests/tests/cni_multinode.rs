//! Two nodes in the host-gw model: each runs an agent with `--peer-node` routes to the other
//! node's pod CIDR, and the CNI plugin driven as containerd drives it. Pods on both reach
//! each other at their own addresses, and a hostPort on each node answers the world.
//!
//! ```text
//!   node1 up0 198.51.100.1 ─┐                        ┌─ up0 198.51.100.2 node2
//!   pods 10.244.1.0/24      └── world br0 .254 ──────┘      pods 10.244.2.0/24
//! ```

use std::net::{Ipv4Addr, SocketAddrV4};

use anyhow::{Context as _, Result, ensure};
use bpfbridge_tests::{Agent, Netns, cni::Plugin, request, serve_once};
use serde_json::json;

const WORLD_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 254);

struct Node {
    netns: Netns,
    agent: Agent,
    plugin: Plugin,
    ip: Ipv4Addr,
    /// The pod CIDR's third byte: 10.244.N.0/24.
    index: u8,
}

impl Node {
    /// A node plugged into the world's bridge, its agent routing `peer`'s pod CIDR.
    fn start(world: &Netns, index: u8, peer: u8) -> Result<Self> {
        let netns = Netns::new("node")?;
        let ip = Ipv4Addr::new(198, 51, 100, index);
        let world_end = format!("wn{index}");
        netns.ip(&[
            "link",
            "add",
            "up0",
            "type",
            "veth",
            "peer",
            "name",
            &world_end,
            "netns",
            &world.name,
        ])?;
        netns.ip(&["addr", "add", &format!("{ip}/24"), "dev", "up0"])?;
        netns.ip(&["link", "set", "up0", "up"])?;
        world.ip(&["link", "set", &world_end, "master", "br0", "up"])?;
        let peer_route = format!("10.244.{peer}.0/24=198.51.100.{peer}");
        let agent = Agent::start_in(&netns, &["up0"], &["--peer-node", &peer_route])?;
        let plugin = Plugin {
            agent_socket: agent.socket.clone(),
            state_dir: agent.dir.path().join("cni-state"),
            runtime_netns: netns.path(),
        };
        Ok(Node {
            netns,
            agent,
            plugin,
            ip,
            index,
        })
    }

    /// ADDs a pod with hostPort 8080 → 80; returns its namespace and address.
    fn add_pod(&self) -> Result<(Netns, Ipv4Addr)> {
        let pod = Netns::new("pod")?;
        let config = self.plugin.config(
            "1.0.0",
            "pods",
            &format!("10.244.{}.0/24", self.index),
            json!({
                // Other nodes reach the pods at their own addresses, unmasqueraded.
                "ipMasq": false,
                "gatewayMode": "nat-unprotected",
                "runtimeConfig": {"portMappings": [{"HostPort": 8080, "ContainerPort": 80, "Protocol": "tcp"}]},
            }),
        );
        let result = self
            .plugin
            .call(
                "ADD",
                &format!("pod{}", self.index),
                &pod.path(),
                "eth0",
                &config,
            )?
            .ok()?;
        let address: Ipv4Addr = result["ips"][0]["address"]
            .as_str()
            .and_then(|a| a.split('/').next())
            .context("the pod's address")?
            .parse()?;
        Ok((pod, address))
    }
}

/// One request from `client` (a namespace) to `to`, served in `server`; the client address
/// the server saw.
fn round_trip(client: &Netns, server: &Netns, to: SocketAddrV4) -> Result<Ipv4Addr> {
    let serving = serve_once(&server.path(), 80);
    let answer = request(&client.path(), to, "ping\n").with_context(|| format!("to {to}"))?;
    let peer = serving.join().expect("server thread")?;
    ensure!(answer == "pong ping\n", "unexpected answer {answer:?}");
    match peer.ip() {
        std::net::IpAddr::V4(ip) => Ok(ip),
        other => anyhow::bail!("an IPv6 peer {other}"),
    }
}

#[test]
fn pods_on_two_nodes_reach_each_other_and_each_host_port() -> Result<()> {
    let world = Netns::new("world")?;
    world.ip(&["link", "add", "br0", "type", "bridge"])?;
    world.ip(&["addr", "add", &format!("{WORLD_IP}/24"), "dev", "br0"])?;
    world.ip(&["link", "set", "br0", "up"])?;
    let one = Node::start(&world, 1, 2)?;
    let two = Node::start(&world, 2, 1)?;
    for (node, peer) in [(&one, 2), (&two, 1)] {
        let routes = String::from_utf8(node.netns.ip(&["route"])?.stdout)?;
        ensure!(
            routes.contains(&format!("10.244.{peer}.0/24 via 198.51.100.{peer} dev up0")),
            "node {}: {routes}",
            node.index
        );
    }
    let (pod1, ip1) = one.add_pod()?;
    let (pod2, ip2) = two.add_pod()?;
    assert_eq!(
        (ip1, ip2),
        (Ipv4Addr::new(10, 244, 1, 2), Ipv4Addr::new(10, 244, 2, 2))
    );

    // Pod to pod across the nodes, both ways, each seeing the other's own address.
    assert_eq!(round_trip(&pod1, &pod2, SocketAddrV4::new(ip2, 80))?, ip1);
    assert_eq!(round_trip(&pod2, &pod1, SocketAddrV4::new(ip1, 80))?, ip2);
    // Each node's hostPort from the world, the client's address kept.
    for (node, pod) in [(&one, &pod1), (&two, &pod2)] {
        assert_eq!(
            round_trip(&world, pod, SocketAddrV4::new(node.ip, 8080))?,
            WORLD_IP,
            "node {}: {}",
            node.index,
            node.agent.log_tail(20)
        );
    }
    // And a pod reaches the other node's hostPort.
    assert!(round_trip(&pod1, &pod2, SocketAddrV4::new(two.ip, 8080)).is_ok());
    Ok(())
}
