//! Live repair: a container whose node-side veth is deleted under a running agent gets a
//! new one, with its address, MAC, published ports and way out, within a repair pass; one
//! that cannot be repaired (its namespace is gone) says so in `State.Error`, and the agent
//! keeps serving without spinning.

use std::{
    net::SocketAddrV4,
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use bpfbridge_tests::{
    Agent, Echo, NODE_IP, Netns, Topology, WORLD_IP, links, request, serve_once, tcp_reaches,
};

/// The agent repairs within 2 s; the tests allow for a loaded machine.
const REPAIR_WAIT: Duration = Duration::from_secs(5);

/// Polls `check` until it holds or `REPAIR_WAIT` runs out; returns how long it took.
fn within_repair_wait(mut check: impl FnMut() -> Result<bool>) -> Result<Option<Duration>> {
    let start = Instant::now();
    while start.elapsed() < REPAIR_WAIT {
        if check()? {
            return Ok(Some(start.elapsed()));
        }
        thread::sleep(Duration::from_millis(20));
    }
    Ok(None)
}

/// `ip -o LINK-OR-ADDR show eth0` inside a container's namespace.
fn eth0(netns: &Path, what: &str) -> Result<String> {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args(["ip", "-o", "-4", what, "show", "eth0"])
        .output()?;
    ensure!(
        out.status.success(),
        "ip {what} show eth0: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

/// The node-side veths in the node's namespace.
fn node_veths(topology: &Topology) -> Result<Vec<String>> {
    Ok(links(&topology.node)?
        .into_iter()
        .filter(|l| l.starts_with("veth"))
        .collect())
}

fn repairs(agent: &Agent) -> Result<serde_json::Value> {
    Ok(agent.cli_json(&["info"])?["Repairs"].clone())
}

fn state_error(agent: &Agent, name: &str) -> Result<String> {
    let inspect = agent.cli_json(&["container", "inspect", name])?;
    Ok(inspect[0]["State"]["Error"]
        .as_str()
        .context("State.Error")?
        .to_string())
}

/// The CPU time the agent's cgroup has used.
fn agent_cpu(agent: &Agent) -> Result<Duration> {
    let stat = std::fs::read_to_string(agent.cgroup.join("cpu.stat"))?;
    let micros = stat
        .lines()
        .find_map(|l| l.strip_prefix("usage_usec "))
        .context("usage_usec in cpu.stat")?
        .trim()
        .parse()?;
    Ok(Duration::from_micros(micros))
}

/// A container `web` publishing 8080 to an echo server on 80, answering from the world.
struct Web {
    _echo: Echo,
    netns: PathBuf,
    world: PathBuf,
    published: SocketAddrV4,
    agent: Agent,
    topology: Topology,
}

impl Web {
    fn start() -> Result<Self> {
        let topology = Topology::new()?;
        let agent = Agent::start(&topology)?;
        let (_, netns) = agent.create_container(&["--name", "web", "-p", "8080:80"])?;
        let echo = Echo::start(&netns, 80)?;
        let world = topology.world.path();
        let published = SocketAddrV4::new(NODE_IP, 8080);
        ensure!(
            tcp_reaches(&world, published, Duration::from_secs(2)),
            "the published port answers before the drift"
        );
        Ok(Web {
            _echo: echo,
            netns,
            world,
            published,
            agent,
            topology,
        })
    }
}

#[test]
fn a_deleted_veth_is_made_again_with_the_same_address_mac_and_ports() -> Result<()> {
    let web = Web::start()?;
    let (agent, netns, world, published) = (&web.agent, &web.netns, &web.world, web.published);
    let address = eth0(netns, "addr")?;
    let mac = eth0(netns, "link")?;
    let veths = node_veths(&web.topology)?;
    ensure!(veths.len() == 1, "one node-side veth: {veths:?}");

    web.topology.node.ip(&["link", "del", &veths[0]])?;
    let repaired = within_repair_wait(|| Ok(repairs(agent)?["VethRecreated"] == 1))?;
    let took = repaired
        .with_context(|| format!("no repair within {REPAIR_WAIT:?}\n{}", agent.log_tail(30)))?;
    eprintln!("repaired {took:?} after the veth was deleted");
    let answers =
        within_repair_wait(|| Ok(tcp_reaches(world, published, Duration::from_millis(500))))?;
    ensure!(
        answers.is_some(),
        "the published port does not answer again\n{}",
        agent.log_tail(30)
    );

    // The same interface, address and MAC inside; the same veth name outside.
    let inet = |line: &str| line.split_whitespace().nth(3).map(str::to_string);
    assert_eq!(inet(&eth0(netns, "addr")?), inet(&address));
    let link_mac = |line: &str| {
        line.split_whitespace()
            .skip_while(|w| *w != "link/ether")
            .nth(1)
            .map(str::to_string)
    };
    assert_eq!(link_mac(&eth0(netns, "link")?), link_mac(&mac));
    assert_eq!(node_veths(&web.topology)?, veths);

    // The way out came back with the default route: masquerade with the node's address.
    let server = serve_once(world, 7400);
    assert_eq!(
        request(netns, SocketAddrV4::new(WORLD_IP, 7400), "out\n")?,
        "pong out\n"
    );
    assert_eq!(server.join().expect("server")?.ip(), NODE_IP);

    let repairs = repairs(agent)?;
    assert_eq!(repairs["VethRecreated"], 1, "{repairs}");
    assert_eq!(repairs["Failed"], 0, "{repairs}");
    assert_eq!(state_error(agent, "web")?, "");
    bpfbridge_tests::figures::record(
        "repair_veth_deleted",
        serde_json::json!({
            "repaired_after_ms": took.as_millis(),
            "port_answered_again_after_ms": answers.map(|a| (took + a).as_millis()),
            "veth_recreated": repairs["VethRecreated"], "failed": repairs["Failed"],
        }),
    )
}

#[test]
fn a_veth_taken_off_its_bridge_and_down_is_put_back() -> Result<()> {
    let web = Web::start()?;
    let (agent, world, published) = (&web.agent, &web.world, web.published);
    let veths = node_veths(&web.topology)?;
    ensure!(veths.len() == 1, "one node-side veth: {veths:?}");

    web.topology
        .node
        .ip(&["link", "set", &veths[0], "nomaster", "down"])?;
    let healed =
        within_repair_wait(|| Ok(tcp_reaches(world, published, Duration::from_millis(500))))?;
    ensure!(healed.is_some(), "not repaired\n{}", agent.log_tail(30));
    let repairs = repairs(agent)?;
    assert_eq!(repairs["VethReattached"], 1, "{repairs}");
    assert_eq!(repairs["VethSetUp"], 1, "{repairs}");
    assert_eq!(repairs["VethRecreated"], 0, "{repairs}");
    bpfbridge_tests::figures::record(
        "repair_veth_off_its_bridge",
        serde_json::json!({
            "port_answered_again_after_ms": healed.map(|h| h.as_millis()),
            "veth_reattached": repairs["VethReattached"], "veth_set_up": repairs["VethSetUp"],
        }),
    )
}

#[test]
fn a_container_whose_namespace_is_gone_shows_the_error_and_the_agent_stays_calm() -> Result<()> {
    let topology = Topology::new()?;
    let mut agent = Agent::start(&topology)?;
    let namespace = Netns::new("gone")?;
    let path = namespace.path().display().to_string();
    agent.create_container(&["--name", "lost", "--netns", &path, "-p", "8081:80"])?;
    let (_, kept_ns) = agent.create_container(&["--name", "kept", "-p", "8082:80"])?;
    let _echo = Echo::start(&kept_ns, 80)?;

    // Nothing holds the namespace once it is unnamed: it goes, and its veth pair with it.
    namespace.delete()?;
    let shown = within_repair_wait(|| Ok(!state_error(&agent, "lost")?.is_empty()))?;
    ensure!(
        shown.is_some(),
        "no State.Error within {REPAIR_WAIT:?}\n{}",
        agent.log_tail(30)
    );
    let error = state_error(&agent, "lost")?;
    assert!(error.contains("network namespace"), "{error}");

    // Passes go on (every 2 s), retrying without spinning or logging each time.
    let cpu_before = agent_cpu(&agent)?;
    thread::sleep(Duration::from_secs(5));
    let cpu_used = agent_cpu(&agent)? - cpu_before;
    assert!(cpu_used < Duration::from_millis(500), "{cpu_used:?} of CPU");
    assert!(agent.exited()?.is_none(), "{}", agent.log_tail(30));
    assert_eq!(agent.log().matches("repair failed").count(), 1);
    let repairs = repairs(&agent)?;
    assert_eq!(repairs["Failed"], 1, "{repairs}");
    assert_eq!(repairs["VethRecreated"], 0, "{repairs}");
    assert!(!state_error(&agent, "lost")?.is_empty());

    // The other container is untouched, and removing the lost one clears it all.
    assert_eq!(state_error(&agent, "kept")?, "");
    let world = topology.world.path();
    assert!(tcp_reaches(
        &world,
        SocketAddrV4::new(NODE_IP, 8082),
        Duration::from_secs(2)
    ));
    let removed = agent.cli(&["container", "rm", "lost"])?;
    ensure!(
        removed.status.success(),
        "{}",
        String::from_utf8_lossy(&removed.stderr)
    );
    ensure!(agent.cli_json(&["container", "inspect", "lost"]).is_err());
    bpfbridge_tests::figures::record(
        "repair_namespace_gone",
        serde_json::json!({
            "error_shown_after_ms": shown.map(|s| s.as_millis()),
            "agent_cpu_ms_over_the_next_5_s": cpu_used.as_millis(),
            "failed": repairs["Failed"],
        }),
    )
}
