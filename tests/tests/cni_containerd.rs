//! The CNI plugin under a real client: Debian's containerd 1.6, its CRI plugin driven over
//! gRPC as kubelet drives it, in the test's node namespace with a `bin_dir` and `conf_dir`
//! of its own. RunPodSandbox with a port mapping gives the pod an address from the agent and
//! publishes its hostPort; StopPodSandbox and RemovePodSandbox take it away; an agent killed
//! between the two leaves nothing behind after its restart.

use std::net::{IpAddr, SocketAddr, SocketAddrV4};

use anyhow::{Context as _, Result, ensure};
use bpfbridge_tests::{
    Agent, NODE_IP, NODE_IPV6, Topology, WORLD_IP, WORLD_IPV6,
    cni::plugin_bin,
    cri::{self, Containerd},
    request, serve_once, serve_once_v6, skip_without_dataplane_ipv6,
};
use serde_json::{Value, json};

/// containerd 1.6 vendors libcni 1.1, which speaks CNI up to 1.0.0.
fn conflist(agent: &Agent) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": "pods",
        "plugins": [{
            "type": "bpfbridge-cni",
            "subnet": "10.244.1.0/24",
            "agentSocket": agent.socket,
            "stateDir": agent.dir.path().join("cni-state"),
            "capabilities": {"portMappings": true},
        }],
    })
}

fn skip() -> bool {
    if cri::available() {
        return false;
    }
    eprintln!(
        "skipped: containerd is not installed ({} and its runc shim; `cargo xtask setup` installs docker.io, which brings it)",
        cri::CONTAINERD
    );
    true
}

/// The namespace the agent attached for the sandbox, by the pod's address.
fn pod_netns(agent: &Agent, ip: &str) -> Result<std::path::PathBuf> {
    let out = agent.cli(&["container", "ls", "--format", "json"])?;
    for line in String::from_utf8(out.stdout)?.lines() {
        let container: Value = serde_json::from_str(line)?;
        if container["NetworkSettings"]["Networks"]["pods"]["IPAddress"] == ip {
            return Ok(container["NetworkSettings"]["SandboxKey"]
                .as_str()
                .context("SandboxKey")?
                .into());
        }
    }
    anyhow::bail!("no attachment with address {ip}")
}

fn round_trip(topology: &Topology, netns: &std::path::Path, host_port: u16) -> Result<()> {
    let server = serve_once(netns, 80);
    let answer = request(
        &topology.world.path(),
        SocketAddrV4::new(NODE_IP, host_port),
        "ping\n",
    )
    .context("world client")?;
    let peer = server.join().expect("server thread")?;
    ensure!(answer == "pong ping\n", "unexpected answer {answer:?}");
    ensure!(peer.ip() == WORLD_IP, "the client's address was {peer}");
    Ok(())
}

fn port_is_closed(topology: &Topology, host_port: u16) -> bool {
    request(
        &topology.world.path(),
        SocketAddrV4::new(NODE_IP, host_port),
        "ping\n",
    )
    .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused)
}

fn attachments(agent: &Agent) -> Result<usize> {
    let out = agent.cli(&["container", "ls", "--format", "json"])?;
    Ok(String::from_utf8(out.stdout)?.lines().count())
}

#[test]
fn run_pod_sandbox_publishes_the_host_port_and_remove_takes_it_away() -> Result<()> {
    if skip() {
        return Ok(());
    }
    let topology = Topology::new()?;
    let mut agent = Agent::start(&topology)?;
    let containerd = Containerd::start(&topology.node.path(), &plugin_bin(), &conflist(&agent))?;
    let cri = containerd.client();
    let version = cri.version()?;
    eprintln!(
        "{} {} (CRI {})",
        version.runtime_name, version.runtime_version, version.runtime_api_version
    );

    let pod = containerd.run_pod("web", &[(8080, 80)])?;
    let status = cri.pod_sandbox_status(&pod)?;
    let ip = status
        .status
        .and_then(|s| s.network)
        .map(|n| n.ip)
        .context("the sandbox's network status")?;
    assert_eq!(ip, "10.244.1.2");
    let netns = pod_netns(&agent, &ip)?;
    round_trip(&topology, &netns, 8080)?;

    cri.stop_pod_sandbox(&pod)?;
    assert!(
        port_is_closed(&topology, 8080),
        "the hostPort answers after StopPodSandbox"
    );
    cri.remove_pod_sandbox(&pod)?;
    assert_eq!(attachments(&agent)?, 0);

    // Killed between ADD and DEL: after the restart, StopPodSandbox's DEL cleans up.
    let second = containerd.run_pod("second", &[(8081, 80)])?;
    let ip = cri
        .pod_sandbox_status(&second)?
        .status
        .and_then(|s| s.network)
        .map(|n| n.ip)
        .context("the sandbox's network status")?;
    let netns = pod_netns(&agent, &ip)?;
    agent.kill();
    agent.spawn()?;
    round_trip(&topology, &netns, 8081)?;
    cri.stop_pod_sandbox(&second)?;
    cri.remove_pod_sandbox(&second)?;
    assert!(port_is_closed(&topology, 8081));
    assert_eq!(attachments(&agent)?, 0);
    Ok(())
}

#[test]
fn a_dual_stack_pod_gets_both_addresses_and_its_host_port_on_ipv6() -> Result<()> {
    if skip() {
        return Ok(());
    }
    let topology = Topology::new()?.with_ipv6()?;
    let agent = Agent::start(&topology)?;
    // What a dual-stack node's conflist for the reference bridge plugin has: host-local
    // with an IPv4 and an IPv6 range set.
    let mut conflist = conflist(&agent);
    let plugin = &mut conflist["plugins"][0];
    plugin.as_object_mut().context("a plugin")?.remove("subnet");
    plugin["ipam"] = json!({"type": "host-local", "ranges": [
        [{"subnet": "10.244.1.0/24"}], [{"subnet": "fd00:10:244:1::/64"}]
    ]});
    let containerd = Containerd::start(&topology.node.path(), &plugin_bin(), &conflist)?;
    let cri = containerd.client();
    let pod = containerd.run_pod("web", &[(8080, 80)])?;
    let network = cri
        .pod_sandbox_status(&pod)?
        .status
        .and_then(|s| s.network)
        .context("the sandbox's network status")?;
    assert_eq!(network.ip, "10.244.1.2");
    let additional: Vec<&str> = network
        .additional_ips
        .iter()
        .map(|p| p.ip.as_str())
        .collect();
    assert_eq!(additional, ["fd00:10:244:1::2"], "the pod's IPv6 address");
    let netns = pod_netns(&agent, &network.ip)?;
    round_trip(&topology, &netns, 8080)?;
    let world_to_node = SocketAddr::new(NODE_IPV6.into(), 8080);
    if !skip_without_dataplane_ipv6(&agent, "the hostPort on IPv6")? {
        let server = serve_once_v6(&netns, 80);
        let answer =
            request(&topology.world.path(), world_to_node, "ping\n").context("world client")?;
        let peer = server.join().expect("server thread")?;
        ensure!(answer == "pong ping\n", "unexpected answer {answer:?}");
        assert_eq!(
            peer.ip(),
            IpAddr::V6(WORLD_IPV6),
            "the client's address is kept"
        );
    }
    cri.stop_pod_sandbox(&pod)?;
    assert!(port_is_closed(&topology, 8080));
    assert!(
        request(&topology.world.path(), world_to_node, "ping\n").is_err(),
        "the IPv6 hostPort answers after StopPodSandbox"
    );
    cri.remove_pod_sandbox(&pod)?;
    assert_eq!(attachments(&agent)?, 0);
    Ok(())
}
