//! The CNI plugin under podman 4.3's CNI backend: `podman run --network NAME -p 8080:80`
//! gets an address from the agent and its published port answers the world namespace
//! through the agent's fast path; `podman rm` takes it away.

use std::net::SocketAddrV4;

use anyhow::{Context as _, Result, ensure};
use bpfbridge_tests::{
    Agent, NODE_IP, Topology, WORLD_IP,
    cni::plugin_bin,
    podman::{self, Podman},
    request, serve_once,
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
