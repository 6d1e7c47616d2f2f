//! The CNI plugin under podman 4.3's CNI backend: `podman run --network NAME -p 8080:80`
//! gets an address from the agent and its published port answers the world namespace
//! through the agent's fast path; `podman rm` takes it away. A dual-stack conflist
//! (host-local's IPv6 range set) gives the container an IPv6 address too, which podman
//! shows, and the port answers on the node's IPv6 address.

use std::net::{IpAddr, SocketAddr, SocketAddrV4};

use anyhow::{Context as _, Result, ensure};
use bpfbridge_tests::{
    Agent, NODE_IP, NODE_IPV6, Topology, WORLD_IP, WORLD_IPV6,
    cni::plugin_bin,
    podman::{self, Podman},
    request, serve_once, serve_once_v6, skip_without_dataplane_ipv6,
};
use serde_json::{Value, json};

/// A podman network of the plugin: the conflist's name is the network's.
fn conflist(agent: &Agent) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": "bpfnet",
        "plugins": [{
            "type": "bpfbridge-cni",
            "subnet": "10.89.7.0/24",
            "agentSocket": agent.socket,
            "stateDir": agent.dir.path().join("cni-state"),
            "capabilities": {"portMappings": true},
        }],
    })
}

/// The namespace the agent attached for a podman container: its one CNI attachment.
fn attachment(agent: &Agent) -> Result<Option<(String, std::path::PathBuf)>> {
    let out = agent.cli(&["container", "ls", "--format", "json"])?;
    let Some(line) = String::from_utf8(out.stdout)?
        .lines()
        .next()
        .map(str::to_string)
    else {
        return Ok(None);
    };
    let container: Value = serde_json::from_str(&line)?;
    let settings = &container["NetworkSettings"];
    Ok(Some((
        settings["Networks"]["bpfnet"]["IPAddress"]
            .as_str()
            .context("IPAddress")?
            .to_string(),
        settings["SandboxKey"]
            .as_str()
            .context("SandboxKey")?
            .into(),
    )))
}

#[test]
fn podman_run_publishes_the_port_and_podman_rm_removes_it() -> Result<()> {
    if !podman::available() {
        eprintln!(
            "skipped: podman is not installed ({}; `cargo xtask setup` installs it)",
            podman::PODMAN
        );
        return Ok(());
    }
    let topology = Topology::new()?;
    let agent = Agent::start(&topology)?;
    let podman = Podman::new(&topology.node.path(), &plugin_bin(), &conflist(&agent))?;
    podman.run_container("web", "bpfnet", "8080:80")?;
    let (ip, netns) = attachment(&agent)?.context("no attachment after podman run")?;
    assert_eq!(ip, "10.89.7.2");
    let inspect = podman.run_ok(&[
        "inspect",
        "web",
        "--format",
        "{{.NetworkSettings.Networks.bpfnet.IPAddress}}",
    ])?;
    assert_eq!(inspect.trim(), ip, "podman shows the plugin's address");

    let server = serve_once(&netns, 80);
    let answer = request(
        &topology.world.path(),
        SocketAddrV4::new(NODE_IP, 8080),
        "ping\n",
    )
    .context("world client")?;
    let peer = server.join().expect("server thread")?;
    ensure!(answer == "pong ping\n", "unexpected answer {answer:?}");
    assert_eq!(peer.ip(), WORLD_IP, "the client's address is kept");

    podman.run_ok(&["rm", "-f", "-t", "0", "web"])?;
    assert!(
        attachment(&agent)?.is_none(),
        "podman rm left the attachment"
    );
    let closed = request(
        &topology.world.path(),
        SocketAddrV4::new(NODE_IP, 8080),
        "ping\n",
    )
    .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused);
    assert!(closed, "the port answers after podman rm");
    Ok(())
}

#[test]
fn a_dual_stack_conflist_gives_podman_an_ipv6_address_and_port() -> Result<()> {
    if !podman::available() {
        eprintln!(
            "skipped: podman is not installed ({}; `cargo xtask setup` installs it)",
            podman::PODMAN
        );
        return Ok(());
    }
    let topology = Topology::new()?.with_ipv6()?;
    let agent = Agent::start(&topology)?;
    let mut conflist = conflist(&agent);
    let plugin = &mut conflist["plugins"][0];
    plugin.as_object_mut().context("a plugin")?.remove("subnet");
    plugin["ipam"] = json!({"type": "host-local", "ranges": [
        [{"subnet": "10.89.7.0/24"}], [{"subnet": "fd00:89:7::/64"}]
    ]});
    let podman = Podman::new(&topology.node.path(), &plugin_bin(), &conflist)?;
    podman.run_container("web", "bpfnet", "8080:80")?;
    let (ip, netns) = attachment(&agent)?.context("no attachment after podman run")?;
    assert_eq!(ip, "10.89.7.2");
    let inspect = podman.run_ok(&[
        "inspect",
        "web",
        "--format",
        "{{.NetworkSettings.Networks.bpfnet.GlobalIPv6Address}}",
    ])?;
    assert_eq!(
        inspect.trim(),
        "fd00:89:7::2",
        "podman shows the plugin's IPv6 address"
    );

    if !skip_without_dataplane_ipv6(&agent, "the port on IPv6")? {
        let server = serve_once_v6(&netns, 80);
        let answer = request(
            &topology.world.path(),
            SocketAddr::new(NODE_IPV6.into(), 8080),
            "ping\n",
        )
        .context("world client")?;
        let peer = server.join().expect("server thread")?;
        ensure!(answer == "pong ping\n", "unexpected answer {answer:?}");
        assert_eq!(
            peer.ip(),
            IpAddr::V6(WORLD_IPV6),
            "the client's address is kept"
        );
    }
    podman.run_ok(&["rm", "-f", "-t", "0", "web"])?;
    assert!(
        attachment(&agent)?.is_none(),
        "podman rm left the attachment"
    );
    assert!(
        request(
            &topology.world.path(),
            SocketAddr::new(NODE_IPV6.into(), 8080),
            "ping\n"
        )
        .is_err(),
        "the IPv6 port answers after podman rm"
    );
    Ok(())
}
