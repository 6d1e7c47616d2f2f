//! Addresses that change while the agent runs (a DHCP renewal, a cloud address
//! reassigned, an address added): ports published on 0.0.0.0 answer on the node's
//! addresses of the moment and masquerade leaves with the uplink's, within a second, as
//! Docker's rules (`--dst-type LOCAL`, MASQUERADE) follow them.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddrV4},
    path::Path,
    time::Duration,
};

use anyhow::{Result, bail, ensure};
use bpfbridge_tests::{
    Agent, Echo, NODE_IP, Topology, UPLINK, WORLD_IP, request, serve_once, tcp_reaches,
};

const HOST_PORT: u16 = 8080;
const CONTAINER_PORT: u16 = 80;
const WORLD_PORT: u16 = 7400;
/// The bound on how long the agent may take to follow a change (it aims at a second).
const FOLLOWS_WITHIN: Duration = Duration::from_secs(5);
/// How long one attempt waits for an answer.
const ATTEMPT: Duration = Duration::from_millis(500);

fn published_on(ip: Ipv4Addr) -> SocketAddrV4 {
    SocketAddrV4::new(ip, HOST_PORT)
}

/// Tries `condition` until it holds, for at most [`FOLLOWS_WITHIN`]; returns how long that
/// took, or `None`.
fn within_bound(condition: impl FnMut() -> bool) -> Option<Duration> {
    bpfbridge_tests::time_until(FOLLOWS_WITHIN, condition)
}

/// Waits until the published port answers the world on `ip` (`what` says which address),
/// for at most [`FOLLOWS_WITHIN`]; says and returns how long that took.
fn answers_within_bound(
    topology: &Topology,
    agent: &Agent,
    ip: Ipv4Addr,
    what: &str,
) -> Result<Duration> {
    let world = topology.world.path();
    let Some(took) = within_bound(|| tcp_reaches(&world, published_on(ip), ATTEMPT)) else {
        bail!(
            "the published port does not answer on {what} {ip} within {FOLLOWS_WITHIN:?}: {}",
            agent.log_tail(20)
        );
    };
    eprintln!("the published port answered on {what} {ip} after {took:?}");
    Ok(took)
}

/// Records how long the agent took to follow a change, for docs/reliability.md.
fn record_ms(name: &str, durations: &[(&str, Duration)]) -> Result<()> {
    let figures: serde_json::Map<_, _> = durations
        .iter()
        .map(|(what, took)| (format!("{what}_ms"), serde_json::json!(took.as_millis())))
        .collect();
    bpfbridge_tests::figures::record(name, figures.into())
}

/// The node's address that the world sees on a new connection from the container.
fn masqueraded_as(topology: &Topology, container_ns: &Path) -> Result<IpAddr> {
    let server = serve_once(&topology.world.path(), WORLD_PORT);
    let answer = request(
        container_ns,
        SocketAddrV4::new(WORLD_IP, WORLD_PORT),
        "hi\n",
    )?;
    ensure!(answer == "pong hi\n", "unexpected answer {answer:?}");
    Ok(server.join().expect("server thread")?.ip())
}

/// An agent with a container that publishes 8080:80 and serves it; the port answers on the
/// node's uplink address from the start.
fn publishing_agent(topology: &Topology) -> Result<(Agent, std::path::PathBuf, Echo)> {
    let agent = Agent::start(topology)?;
    let (_, netns) = agent.create_container(&[
        "--name",
        "web",
        "-p",
        &format!("{HOST_PORT}:{CONTAINER_PORT}"),
    ])?;
    let echo = Echo::start(&netns, CONTAINER_PORT)?;
    ensure!(
        tcp_reaches(&topology.world.path(), published_on(NODE_IP), ATTEMPT),
        "the published port does not answer on the uplink's address at start: {}",
        agent.log_tail(20)
    );
    Ok((agent, netns, echo))
}

#[test]
fn a_replaced_uplink_address_takes_over_published_ports_and_masquerade() -> Result<()> {
    let topology = Topology::new()?;
    let (agent, container_ns, _echo) = publishing_agent(&topology)?;
    let world = topology.world.path();
    assert_eq!(masqueraded_as(&topology, &container_ns)?, NODE_IP);

    // A renewal that hands the node another address: the old one goes, the new one comes,
    // and the world's route to the node follows.
    let new_ip = topology.uplink.host(7);
    topology.node.ip_batch(&format!(
        "addr del {NODE_IP}/24 dev {UPLINK}\naddr add {new_ip}/24 dev {UPLINK}\n"
    ))?;
    topology
        .world
        .ip(&["route", "replace", "default", "via", &new_ip.to_string()])?;

    let took = answers_within_bound(&topology, &agent, new_ip, "the new address")?;
    ensure!(
        !tcp_reaches(&world, published_on(NODE_IP), ATTEMPT),
        "the published port still answers on the former address {NODE_IP}"
    );
    assert_eq!(
        masqueraded_as(&topology, &container_ns)?,
        new_ip,
        "a new connection leaves with the new address"
    );
    record_ms(
        "addresses_replaced",
        &[("answered_on_the_new_address_after", took)],
    )
}

#[test]
fn a_second_uplink_address_answers_until_it_is_removed() -> Result<()> {
    let topology = Topology::new()?;
    let (agent, container_ns, _echo) = publishing_agent(&topology)?;
    let world = topology.world.path();

    let second = topology.uplink.host(9);
    topology
        .node
        .ip(&["addr", "add", &format!("{second}/24"), "dev", UPLINK])?;
    let took = answers_within_bound(&topology, &agent, second, "the added address")?;
    ensure!(
        tcp_reaches(&world, published_on(NODE_IP), ATTEMPT),
        "the first address stopped answering"
    );
    // The uplink's first address stays the masquerade source, as MASQUERADE picks the
    // primary address of the way out.
    assert_eq!(masqueraded_as(&topology, &container_ns)?, NODE_IP);

    topology
        .node
        .ip(&["addr", "del", &format!("{second}/24"), "dev", UPLINK])?;
    ensure!(
        within_bound(|| !tcp_reaches(&world, published_on(second), ATTEMPT)).is_some(),
        "the published port still answers on the removed address {second}"
    );
    ensure!(
        tcp_reaches(&world, published_on(NODE_IP), ATTEMPT),
        "the first address stopped answering"
    );
    record_ms(
        "addresses_second",
        &[("answered_on_the_added_address_after", took)],
    )
}

#[test]
fn an_address_added_on_another_interface_answers() -> Result<()> {
    let topology = Topology::new()?;
    let (agent, _container_ns, _echo) = publishing_agent(&topology)?;

    // A service address on an interface of its own (a veth: dummy may not be built), which
    // the world routes through the uplink.
    let service_ip = Ipv4Addr::new(203, 0, 113, 5);
    topology.node.ip_batch(&format!(
        "link add svc0 type veth peer name svc1\naddr add {service_ip}/32 dev svc0\n\
         link set svc0 up\nlink set svc1 up\n"
    ))?;
    topology.world.ip(&[
        "route",
        "add",
        &format!("{service_ip}/32"),
        "via",
        &NODE_IP.to_string(),
    ])?;
    let took = answers_within_bound(&topology, &agent, service_ip, "another interface's address")?;
    record_ms("addresses_another_interface", &[("answered_after", took)])
}
