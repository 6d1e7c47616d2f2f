//! macvlan and ipvlan networks: containers straight on the node's uplink (the parent), with
//! their own addresses on the world's L2 segment; no bridge, no NAT, no published port.
//! The world namespace plays a LAN host with an address in the containers' subnet (and a
//! VLAN peer), so the containers and the LAN reach each other directly. The dataplane
//! plays no part: the same expectations hold on both.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream},
    path::Path,
    process::Command,
    thread,
    time::Duration,
};

use anyhow::{Context as _, Result, ensure};
use bpfbridge_tests::{
    Agent, Echo, Topology, UPLINK, WORLD_LINK, accept_within, enter_netns_on_this_thread, in_netns,
    links, ping_reaches, tcp_reaches,
};
use serde_json::Value;

const WAIT: Duration = Duration::from_millis(800);
/// The containers' subnet (TEST-NET-3), and the LAN host's address in it: the gateway.
const LAN_SUBNET: &str = "203.0.113.0/24";
const LAN_HOST: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 254);
/// The VLAN's subnet (TEST-NET-1) and its host on the world's side.
const VLAN_SUBNET: &str = "192.0.2.0/24";
const VLAN_HOST: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 254);

/// Whether the kernel makes links of `kind` (`vlan`, `ipvlan`, `dummy`): some kernels are
/// built without them (macvlan is what the suite needs at least). Probed in the world
/// namespace, on its uplink end; a kernel without one skips what needs it and says so.
fn kernel_has(topology: &Topology, kind: &str) -> bool {
    let probe = format!("probe-{kind}");
    let args: Vec<&str> = match kind {
        "vlan" => vec![
            "link", "add", "link", WORLD_LINK, "name", &probe, "type", "vlan", "id", "4000",
        ],
        "ipvlan" => vec![
            "link", "add", "link", WORLD_LINK, "name", &probe, "type", "ipvlan",
        ],
        _ => vec!["link", "add", &probe, "type", kind],
    };
    let made = topology.world.ip(&args).is_ok();
    if made {
        let _ = topology.world.ip(&["link", "del", &probe]);
    } else {
        println!("skipped: this kernel has no {kind} links (CONFIG_* not set)");
    }
    made
}

/// Runs the CLI and expects success; returns stdout and stderr.
fn ok(agent: &Agent, args: &[&str]) -> Result<(String, String)> {
    let out = agent.cli(args)?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    ensure!(
        out.status.success(),
        "bpfbridge {}: {stderr}",
        args.join(" ")
    );
    Ok((String::from_utf8(out.stdout)?, stderr))
}

/// `network create -d DRIVER --subnet LAN_SUBNET --gateway LAN_HOST -o parent=PARENT
/// EXTRA... NAME`: a network on the LAN whose host is the world; returns the CLI's stdout
/// (the id) and stderr (warnings).
fn lan_network(
    agent: &Agent,
    driver: &str,
    parent: &str,
    extra: &[&str],
    name: &str,
) -> Result<(String, String)> {
    let gateway = LAN_HOST.to_string();
    let parent = format!("parent={parent}");
    let options = [&["--gateway", gateway.as_str(), "-o", &parent], extra].concat();
    ok(agent, &network_create(driver, LAN_SUBNET, &options, name))
}

/// The CLI's arguments for `network create -d DRIVER --subnet SUBNET OPTIONS... NAME`.
fn network_create<'a>(
    driver: &'a str,
    subnet: &'a str,
    options: &[&'a str],
    name: &'a str,
) -> Vec<&'a str> {
    let mut args = vec!["network", "create", "-d", driver, "--subnet", subnet];
    args.extend_from_slice(options);
    args.push(name);
    args
}

/// Runs the CLI and expects a one-line refusal; returns it.
fn refused(agent: &Agent, args: &[&str]) -> Result<String> {
    let out = agent.cli(args)?;
    let stderr = String::from_utf8(out.stderr)?;
    ensure!(!out.status.success(), "{args:?} must fail");
    ensure!(
        stderr.trim_end().lines().count() == 1 && stderr.starts_with("Error: "),
        "one line: {stderr}"
    );
    Ok(stderr)
}

fn ip_on(container: &Value, network: &str) -> Result<Ipv4Addr> {
    container["NetworkSettings"]["Networks"][network]["IPAddress"]
        .as_str()
        .with_context(|| format!("no address on {network}: {container}"))?
        .parse()
        .context("address")
}

/// Gives the world (the LAN host) `address` in `subnet`'s prefix on `link`.
fn lan_address(topology: &Topology, link: &str, address: Ipv4Addr, prefix: u8) -> Result<()> {
    topology
        .world
        .ip(&["addr", "add", &format!("{address}/{prefix}"), "dev", link])?;
    Ok(())
}

/// The lab's topology, its world a LAN host (`LAN_HOST` on its uplink end), and an agent.
fn lan_and_agent() -> Result<(Topology, Agent)> {
    let topology = Topology::new()?;
    lan_address(&topology, WORLD_LINK, LAN_HOST, 24)?;
    let agent = Agent::start(&topology)?;
    Ok((topology, agent))
}

/// Whether both reach each other: ping, and TCP to an echo server on each side.
fn reach_both_ways(from: &Path, to: &Path, to_ip: Ipv4Addr, from_ip: Ipv4Addr) -> Result<bool> {
    let _servers = (Echo::start(from, 7)?, Echo::start(to, 7)?);
    Ok(ping_reaches(from, to_ip)
        && ping_reaches(to, from_ip)
        && tcp_reaches(from, SocketAddrV4::new(to_ip, 7), WAIT)
        && tcp_reaches(to, SocketAddrV4::new(from_ip, 7), WAIT))
}

#[test]
fn macvlan_containers_are_on_the_lan_with_their_own_addresses_and_macs() -> Result<()> {
    let (topology, agent) = lan_and_agent()?;
    let gateway = LAN_HOST.to_string();
    let (_, warning) = lan_network(
        &agent,
        "macvlan",
        UPLINK,
        &["--aux-address", "printer=203.0.113.1"],
        "lan",
    )?;
    ensure!(warning.is_empty(), "no warning: {warning}");
    let inspect = &agent.cli_json(&["network", "inspect", "lan"])?[0];
    ensure!(inspect["Driver"] == "macvlan", "{inspect}");
    ensure!(inspect["Options"]["parent"] == UPLINK, "{inspect}");
    ensure!(inspect["Options"]["macvlan_mode"] == "bridge", "{inspect}");
    let ipam = &inspect["IPAM"]["Config"][0];
    ensure!(
        ipam["Subnet"] == LAN_SUBNET && ipam["Gateway"] == gateway.as_str(),
        "{inspect}"
    );
    ensure!(
        ipam["AuxiliaryAddresses"]["printer"] == "203.0.113.1",
        "{inspect}"
    );

    // -p is discarded with a warning, as Docker maps no port on macvlan.
    let node_links = links(&topology.node)?;
    let (web, web_ns) = agent.create_container(&["web", "--network", "lan", "-p", "8080:80"])?;
    let web_ip = ip_on(&web, "lan")?;
    ensure!(
        web_ip == Ipv4Addr::new(203, 0, 113, 2),
        "the gateway and the aux address are never handed out: {web}"
    );
    ensure!(
        web["Warnings"].to_string().contains("discarded"),
        "a warning for -p: {web}"
    );
    ensure!(
        agent
            .cli_json(&["ports"])?
            .as_array()
            .is_none_or(|p| p.is_empty()),
        "nothing published"
    );
    ensure!(
        links(&topology.node)? == node_links,
        "no bridge and no veth on the node"
    );

    // The LAN host and the container reach each other directly, and the LAN sees the
    // container's own MAC.
    let world = topology.world.path();
    ensure!(
        reach_both_ways(&web_ns, &world, LAN_HOST, web_ip)?,
        "web <-> LAN host"
    );
    let neighbour = topology.world.ip(&["neigh", "show", &web_ip.to_string()])?;
    let mac = web["NetworkSettings"]["Networks"]["lan"]["MacAddress"]
        .as_str()
        .context("MacAddress")?;
    ensure!(
        String::from_utf8_lossy(&neighbour.stdout).contains(mac),
        "the LAN host learnt {mac}: {}",
        String::from_utf8_lossy(&neighbour.stdout)
    );

    // Two containers of a bridge-mode network reach each other; by name too (DNS).
    let (db, db_ns) = agent.create_container(&["db", "--network", "lan"])?;
    let db_ip = ip_on(&db, "lan")?;
    ensure!(
        reach_both_ways(&web_ns, &db_ns, db_ip, web_ip)?,
        "web <-> db"
    );
    let answer = bpfbridge_tests::dns_lookup(&web_ns, "db", Duration::from_secs(2))?;
    ensure!(
        answer == Some(vec![db_ip]),
        "the embedded DNS answers db on a macvlan network: {answer:?}"
    );

    // disconnect takes the interface out of the container, connect puts one back.
    ok(&agent, &["network", "disconnect", "lan", "db"])?;
    ensure!(!ping_reaches(&web_ns, db_ip), "db is off the LAN");
    ok(
        &agent,
        &["network", "connect", "lan", "db", "--ip", "203.0.113.50"],
    )?;
    ensure!(
        ping_reaches(&web_ns, Ipv4Addr::new(203, 0, 113, 50)),
        "db is back at the address it asked for"
    );

    ensure!(
        refused(&agent, &["network", "rm", "lan"])?.contains("active endpoints"),
        "a network in use stays"
    );
    ok(&agent, &["container", "rm", "web", "db"])?;
    ok(&agent, &["network", "rm", "lan"])?;
    ensure!(
        links(&topology.node)? == node_links,
        "the parent is left as it was"
    );
    Ok(())
}

#[test]
fn private_macvlan_containers_do_not_reach_each_other() -> Result<()> {
    let (_topology, agent) = lan_and_agent()?;
    lan_network(
        &agent,
        "macvlan",
        UPLINK,
        &["-o", "macvlan_mode=private"],
        "private",
    )?;
    let (a, a_ns) = agent.create_container(&["a", "--network", "private"])?;
    let (b, b_ns) = agent.create_container(&["b", "--network", "private"])?;
    let (a_ip, b_ip) = (ip_on(&a, "private")?, ip_on(&b, "private")?);
    ensure!(!ping_reaches(&a_ns, b_ip), "private: a does not reach b");
    ensure!(!ping_reaches(&b_ns, a_ip), "private: b does not reach a");
    ensure!(ping_reaches(&a_ns, LAN_HOST), "private: a reaches the LAN");
    ok(&agent, &["container", "rm", "a", "b"])?;
    ok(&agent, &["network", "rm", "private"])?;
    Ok(())
}

#[test]
fn a_vlan_parent_is_made_and_removed_with_its_networks() -> Result<()> {
    let topology = Topology::new()?;
    if !kernel_has(&topology, "vlan") {
        return Ok(());
    }
    let world_vlan = format!("{WORLD_LINK}.10");
    topology.world.ip(&[
        "link",
        "add",
        "link",
        WORLD_LINK,
        "name",
        &world_vlan,
        "type",
        "vlan",
        "id",
        "10",
    ])?;
    topology.world.ip(&["link", "set", &world_vlan, "up"])?;
    lan_address(&topology, &world_vlan, VLAN_HOST, 24)?;
    let agent = Agent::start(&topology)?;
    let vlan = format!("{UPLINK}.10");
    let parent = format!("parent={vlan}");
    let gateway = VLAN_HOST.to_string();
    ok(
        &agent,
        &network_create(
            "macvlan",
            VLAN_SUBNET,
            &["--gateway", &gateway, "-o", &parent],
            "vlan10",
        ),
    )?;
    let details = topology.node.ip(&["-d", "link", "show", &vlan])?;
    let details = String::from_utf8_lossy(&details.stdout);
    ensure!(
        details.contains("vlan protocol 802.1Q id 10"),
        "{vlan}: {details}"
    );
    // A second network on the same VLAN shares it; a subnet overlapping the first is refused.
    ensure!(
        refused(
            &agent,
            &network_create("macvlan", "192.0.2.128/25", &["-o", &parent], "again"),
        )?
        .contains("overlaps with network vlan10"),
        "overlapping subnets on one parent are refused"
    );
    ok(
        &agent,
        &network_create("macvlan", "198.18.0.0/24", &["-o", &parent], "vlan10b"),
    )?;
    let (c, c_ns) = agent.create_container(&["c", "--network", "vlan10"])?;
    let c_ip = ip_on(&c, "vlan10")?;
    ensure!(
        reach_both_ways(&c_ns, &topology.world.path(), VLAN_HOST, c_ip)?,
        "the container and the VLAN peer reach each other, tagged"
    );
    ok(&agent, &["container", "rm", "c"])?;
    ok(&agent, &["network", "rm", "vlan10"])?;
    ensure!(
        links(&topology.node)?.contains(&vlan),
        "vlan10b still uses {vlan}"
    );
    ok(&agent, &["network", "rm", "vlan10b"])?;
    ensure!(
        !links(&topology.node)?.contains(&vlan),
        "{vlan} goes with the last network on it"
    );
    Ok(())
}

#[test]
fn ipvlan_l2_and_l3_reach_the_world() -> Result<()> {
    // l2: the containers are on the LAN with the parent's MAC.
    let topology = Topology::new()?;
    if !kernel_has(&topology, "ipvlan") {
        return Ok(());
    }
    lan_address(&topology, WORLD_LINK, LAN_HOST, 24)?;
    let agent = Agent::start(&topology)?;
    let parent = format!("parent={UPLINK}");
    lan_network(&agent, "ipvlan", UPLINK, &[], "l2")?;
    let inspect = &agent.cli_json(&["network", "inspect", "l2"])?[0];
    ensure!(
        inspect["Driver"] == "ipvlan" && inspect["Options"]["ipvlan_mode"] == "l2",
        "{inspect}"
    );
    // One device has macvlan or ipvlan interfaces, not both.
    ensure!(
        refused(
            &agent,
            &network_create("macvlan", "198.18.0.0/24", &["-o", &parent], "mac"),
        )?
        .contains("used by ipvlan network l2"),
        "macvlan beside ipvlan is refused"
    );
    let (c, c_ns) = agent.create_container(&["c", "--network", "l2"])?;
    let c_ip = ip_on(&c, "l2")?;
    let world = topology.world.path();
    ensure!(
        reach_both_ways(&c_ns, &world, LAN_HOST, c_ip)?,
        "l2: container <-> LAN host"
    );
    ok(&agent, &["container", "rm", "c"])?;
    ok(&agent, &["network", "rm", "l2"])?;

    // l3: no gateway; the LAN routes the containers' subnet through the node's address.
    topology.world.ip(&[
        "route",
        "add",
        LAN_SUBNET,
        "via",
        &bpfbridge_tests::NODE_IP.to_string(),
    ])?;
    topology
        .world
        .ip(&["addr", "del", &format!("{LAN_HOST}/24"), "dev", WORLD_LINK])?;
    ok(
        &agent,
        &network_create(
            "ipvlan",
            LAN_SUBNET,
            &["-o", &parent, "-o", "ipvlan_mode=l3"],
            "l3",
        ),
    )?;
    let (c, c_ns) = agent.create_container(&["c3", "--network", "l3"])?;
    let c_ip = ip_on(&c, "l3")?;
    let routes = bpfbridge_tests::run(
        "nsenter",
        &[&format!("--net={}", c_ns.display()), "ip", "route"],
    )?;
    let routes = String::from_utf8_lossy(&routes.stdout);
    ensure!(
        routes.contains("default dev eth0"),
        "l3: default route out of eth0: {routes}"
    );
    let world_ip = bpfbridge_tests::WORLD_IP;
    ensure!(
        reach_both_ways(&c_ns, &world, world_ip, c_ip)?,
        "l3: container <-> world, routed"
    );
    ok(&agent, &["container", "rm", "c3"])?;
    ok(&agent, &["network", "rm", "l3"])?;
    Ok(())
}

#[test]
fn bad_driver_options_are_refused() -> Result<()> {
    let topology = Topology::new()?;
    let agent = Agent::start(&topology)?;
    let node_links = links(&topology.node)?;
    let parent = format!("parent={UPLINK}");
    let create = |extra: &[&str]| -> Vec<String> {
        let mut args: Vec<String> = ["network", "create", "--subnet", LAN_SUBNET]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        args.push("bad".into());
        args
    };
    let cases: &[(&[&str], &str)] = &[
        (&["-d", "overlay"], "not supported"),
        (
            &["-d", "macvlan", "-o", "parent=nope0"],
            "parent interface nope0 was not found",
        ),
        (
            &["-d", "macvlan", "-o", "parent=nope0.10"],
            "not found on the node: nope0",
        ),
        (
            &["-d", "macvlan", "-o", "parent=up0.5000"],
            "vlan id must be between 1-4094",
        ),
        (&["-d", "macvlan", "-o", "parent=lo"], "loopback"),
        (
            &["-d", "macvlan", "-o", &parent, "-o", "macvlan_mode=l2"],
            "macvlan mode 'l2' is not valid",
        ),
        (
            &["-d", "ipvlan", "-o", &parent, "-o", "ipvlan_mode=l4"],
            "ipvlan mode 'l4' is not valid",
        ),
        (
            &["-d", "ipvlan", "-o", &parent, "-o", "ipvlan_flag=loud"],
            "ipvlan flag 'loud' is not valid",
        ),
        (
            &[
                "-d",
                "macvlan",
                "-o",
                &parent,
                "-o",
                "com.docker.network.bridge.enable_icc=false",
            ],
            "not valid on a macvlan network",
        ),
        (
            &["-d", "ipvlan", "-o", &parent, "-o", "macvlan_mode=bridge"],
            "not valid on a ipvlan network",
        ),
        (
            &[
                "-d",
                "macvlan",
                "-o",
                &parent,
                "--aux-address",
                "x=10.0.0.1",
            ],
            "no matching subnet",
        ),
    ];
    for (extra, message) in cases {
        let args = create(extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let error = refused(&agent, &args)?;
        ensure!(error.contains(message), "{extra:?}: {error}");
    }
    ensure!(
        links(&topology.node)? == node_links,
        "nothing made on the node"
    );
    ensure!(
        agent.cli_json(&["network", "inspect", "bad"]).is_err(),
        "no network recorded"
    );

    // --internal, or no parent: a dummy of the network's own, gone with it.
    if !kernel_has(&topology, "dummy") {
        return Ok(());
    }
    let (id, _) = ok(
        &agent,
        &network_create(
            "macvlan",
            LAN_SUBNET,
            &["--internal", "-o", &parent],
            "inner",
        ),
    )?;
    let dummy = format!("dm-{}", &id.trim()[..12]);
    ensure!(
        links(&topology.node)?.contains(&dummy),
        "dummy parent {dummy}"
    );
    let (a, a_ns) = agent.create_container(&["a", "--network", "inner"])?;
    let (b, _) = agent.create_container(&["b", "--network", "inner"])?;
    let _ = a;
    ensure!(
        ping_reaches(&a_ns, ip_on(&b, "inner")?),
        "internal: a reaches b"
    );
    ok(&agent, &["container", "rm", "a", "b"])?;
    ok(&agent, &["network", "rm", "inner"])?;
    ensure!(
        !links(&topology.node)?.contains(&dummy),
        "the dummy parent goes with it"
    );
    Ok(())
}

#[test]
fn a_macvlan_container_survives_kill_9_and_a_deleted_interface() -> Result<()> {
    let (topology, mut agent) = lan_and_agent()?;
    lan_network(&agent, "macvlan", UPLINK, &[], "lan")?;
    let (c, c_ns) = agent.create_container(&["c", "--network", "lan"])?;
    let c_ip = ip_on(&c, "lan")?;
    let world = topology.world.path();

    // The records and the interface outlive the agent; the restarted one re-adopts both.
    agent.kill();
    agent.spawn()?;
    let inspect = &agent.cli_json(&["network", "inspect", "lan"])?[0];
    ensure!(inspect["Driver"] == "macvlan", "{inspect}");
    ensure!(
        ping_reaches(&world, c_ip),
        "reachable after kill -9 and a restart"
    );

    // An interface deleted inside the container is made again by the drift repair.
    bpfbridge_tests::run(
        "nsenter",
        &[
            &format!("--net={}", c_ns.display()),
            "ip",
            "link",
            "del",
            "eth0",
        ],
    )?;
    let repaired =
        bpfbridge_tests::time_until(Duration::from_secs(5), || ping_reaches(&world, c_ip));
    ensure!(repaired.is_some(), "the interface came back within 5 s");
    ok(&agent, &["container", "rm", "c"])?;
    ok(&agent, &["network", "rm", "lan"])?;
    Ok(())
}

/// One operation on macvlan networks and endpoints, the state it starts from, and the crash
/// points it reaches (with how many times), as `tests/tests/faults.rs` has them for bridges:
/// the sub-interface is made at `endpoint:veth-made` and configured at `endpoint:configured`,
/// a parent at `network-create:bridge-made`.
struct CrashCase {
    prepare: &'static [&'static [&'static str]],
    operation: &'static [&'static str],
    points: &'static [(&'static str, u32)],
}

const CRASH_CASES: &[CrashCase] = &[
    CrashCase {
        prepare: &[],
        operation: &["container", "create", "c", "--network", "lan"],
        points: &[
            ("container-create:recorded", 1),
            ("container-create:netns-made", 1),
            ("endpoint:veth-made", 1),
            ("endpoint:configured", 1),
            ("container-create:endpoints-made", 1),
            ("container-create:saved", 1),
        ],
    },
    CrashCase {
        prepare: &[&["container", "create", "c", "--network", "lan"]],
        // The interface, the namespace, the record.
        operation: &["container", "rm", "c"],
        points: &[("container-remove:marked", 1), ("teardown:step-done", 3)],
    },
    CrashCase {
        prepare: &[&["container", "create", "c"]],
        operation: &["network", "connect", "lan", "c"],
        points: &[
            ("connect:recorded", 1),
            ("endpoint:veth-made", 1),
            ("endpoint:configured", 1),
            ("connect:saved", 1),
        ],
    },
    CrashCase {
        prepare: &[
            &["container", "create", "c"],
            &["network", "connect", "lan", "c"],
        ],
        operation: &["network", "disconnect", "lan", "c"],
        points: &[
            ("disconnect:marked", 1),
            ("teardown:step-done", 1),
            ("disconnect:saved", 1),
        ],
    },
    CrashCase {
        prepare: &[],
        operation: &[
            "network",
            "create",
            "-d",
            "macvlan",
            "--subnet",
            "198.18.0.0/24",
            "-o",
            "parent=up0",
            "lan2",
        ],
        points: &[
            ("network-create:recorded", 1),
            ("network-create:bridge-made", 1),
            ("network-create:saved", 1),
        ],
    },
    CrashCase {
        prepare: &[&[
            "network",
            "create",
            "-d",
            "macvlan",
            "--subnet",
            "198.18.0.0/24",
            "-o",
            "parent=up0",
            "lan2",
        ]],
        // An existing parent stays: the record is the only step.
        operation: &["network", "rm", "lan2"],
        points: &[
            ("network-remove:marked", 1),
            ("network-remove:policy-gone", 1),
            ("teardown:step-done", 1),
        ],
    },
];

/// After a restart: every container's macvlan endpoint is in its namespace with its address
/// and reachable from the LAN, no namespace is left that no container owns, and nothing was
/// left on the node.
fn consistent(agent: &Agent, topology: &Topology, node_links: &[String]) -> Result<()> {
    // The connect cases' container is on the default bridge too: its veth is expected.
    let mut now = links(&topology.node)?;
    now.retain(|l| !l.starts_with("veth"));
    ensure!(now == node_links, "nothing left on the node: {now:?}");
    let containers = agent.cli_json(&["container", "inspect", "c"]).ok();
    // The directory is made with the first namespace.
    let namespaces = std::fs::read_dir(&agent.netns_dir).map_or(0, |d| d.count());
    ensure!(
        namespaces == usize::from(containers.is_some()),
        "{namespaces} namespaces for {containers:?}"
    );
    let Some(container) = containers.as_ref().map(|c| &c[0]) else {
        return Ok(());
    };
    if container["NetworkSettings"]["Networks"]["lan"].is_null() {
        return Ok(());
    }
    let ip = ip_on(container, "lan")?;
    ensure!(
        ping_reaches(&topology.world.path(), ip),
        "the LAN reaches {ip}: {container}"
    );
    Ok(())
}

#[test]
fn a_crash_at_any_step_of_a_macvlan_operation_is_rolled_back_or_finished() -> Result<()> {
    let (topology, mut agent) = lan_and_agent()?;
    let flags = agent.args().to_vec();
    lan_network(&agent, "macvlan", UPLINK, &[], "lan")?;
    let node_links = links(&topology.node)?;
    for case in CRASH_CASES {
        for &(point, times) in case.points {
            for nth in 1..=times {
                let what = format!("{} at {point}:{nth}", case.operation.join(" "));
                for step in case.prepare {
                    ok(&agent, step)?;
                }
                let mut armed = flags.clone();
                armed.extend(["--crash-at".to_string(), format!("{point}:{nth}")]);
                agent.kill();
                agent.set_args(&armed);
                agent.spawn()?;
                let _ = agent.cli(case.operation)?;
                let died = bpfbridge_tests::time_until(Duration::from_secs(10), || {
                    agent.exited().is_ok_and(|e| e.is_some())
                });
                ensure!(died.is_some(), "{what}: the agent did not crash");
                ensure!(
                    agent
                        .log()
                        .contains(&format!("crash point {point} reached ({nth})")),
                    "{what}: died elsewhere\n{}",
                    agent.log_tail(20)
                );
                agent.set_args(&flags);
                agent.spawn()?;
                consistent(&agent, &topology, &node_links).with_context(|| what.clone())?;
                // The operation can be finished, then everything goes.
                let _ = agent.cli(case.operation)?;
                consistent(&agent, &topology, &node_links).with_context(|| what.clone())?;
                let _ = agent.cli(&["container", "rm", "c"])?;
                let _ = agent.cli(&["network", "rm", "lan2"])?;
                ensure!(
                    agent.cli_json(&["container", "inspect", "c"]).is_err(),
                    "{what}: removed"
                );
            }
        }
    }
    ok(&agent, &["network", "rm", "lan"])?;
    Ok(())
}

/// Makes a second link between the node and the world, `up1`/`wl1`, the world's end with
/// the LAN host's address: a parent that can be unplugged without touching the uplink.
fn plug_second_parent(topology: &Topology) -> Result<()> {
    topology.node.ip(&[
        "link",
        "add",
        "up1",
        "type",
        "veth",
        "peer",
        "name",
        "wl1",
        "netns",
        &topology.world.name,
    ])?;
    topology.node.ip(&["link", "set", "up1", "up"])?;
    topology.world.ip(&["link", "set", "wl1", "up"])?;
    lan_address(topology, "wl1", LAN_HOST, 24)
}

#[test]
fn an_unplugged_parent_neither_stops_the_agent_nor_is_forgotten() -> Result<()> {
    let topology = Topology::new()?;
    plug_second_parent(&topology)?;
    let mut agent = Agent::start(&topology)?;
    lan_network(&agent, "macvlan", "up1", &[], "lan")?;
    let (c, _) = agent.create_container(&["c", "--network", "lan"])?;
    let c_ip = ip_on(&c, "lan")?;
    let world = topology.world.path();
    ensure!(ping_reaches(&world, c_ip), "reachable on up1");

    // The parent goes while the agent is down (its macvlan interfaces go with it): the
    // agent starts, and the container's state says what is missing.
    agent.kill();
    topology.node.ip(&["link", "del", "up1"])?;
    agent.spawn()?;
    let error = || {
        agent
            .cli_json(&["container", "inspect", "c"])
            .map_or(String::new(), |c| {
                c[0]["State"]["Error"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            })
    };
    let shown = bpfbridge_tests::time_until(Duration::from_secs(5), || error().contains("up1"));
    ensure!(
        shown.is_some(),
        "State.Error names the parent: {:?}",
        error()
    );

    // Plugged back, the container's interface is made again.
    plug_second_parent(&topology)?;
    let back = bpfbridge_tests::time_until(Duration::from_secs(5), || ping_reaches(&world, c_ip));
    ensure!(back.is_some(), "reachable again once up1 is back");
    ensure!(error().is_empty(), "State.Error cleared: {:?}", error());
    ok(&agent, &["container", "rm", "c"])?;
    ok(&agent, &["network", "rm", "lan"])?;
    Ok(())
}

#[test]
fn a_macvlan_container_shares_the_uplinks_subnet_but_not_the_node() -> Result<()> {
    use bpfbridge_tests::{NODE_IP, WORLD_IP};
    let topology = Topology::new()?;
    let agent = Agent::start(&topology)?;
    // The parent's own subnet, which the node routes: the LAN's, so it is allowed.
    let subnet = format!("{}/24", Ipv4Addr::from(u32::from(NODE_IP) & !0xff));
    let gateway = WORLD_IP.to_string();
    let parent = format!("parent={UPLINK}");
    ok(
        &agent,
        &network_create(
            "macvlan",
            &subnet,
            &[
                "--gateway",
                &gateway,
                "--ip-range",
                "198.51.100.64/26",
                "-o",
                &parent,
            ],
            "lan",
        ),
    )?;
    let (c, c_ns) = agent.create_container(&["c", "--network", "lan"])?;
    let c_ip = ip_on(&c, "lan")?;
    ensure!(
        c_ip == Ipv4Addr::new(198, 51, 100, 64),
        "from the ip-range: {c_ip}"
    );
    ensure!(
        reach_both_ways(&c_ns, &topology.world.path(), WORLD_IP, c_ip)?,
        "the container and the LAN host reach each other"
    );
    // The kernel's macvlan rule, documented as Docker documents it: the parent's own
    // addresses and the container do not reach each other.
    ensure!(
        !ping_reaches(&c_ns, NODE_IP),
        "the container does not reach the node"
    );
    ensure!(
        !ping_reaches(&topology.node.path(), c_ip),
        "the node does not reach the container"
    );
    ok(&agent, &["container", "rm", "c"])?;
    ok(&agent, &["network", "rm", "lan"])?;
    Ok(())
}

/// One TCP connection from `client` to `to`, accepted on `[::]:PORT` in `server`: the peer
/// the server saw.
fn tcp6_peer(server: &Path, client: &Path, to: SocketAddr) -> Result<SocketAddr> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (server, port) = (server.to_path_buf(), to.port());
    let accepting = thread::spawn(move || -> Result<SocketAddr> {
        enter_netns_on_this_thread(&server)?;
        let listener = TcpListener::bind((Ipv6Addr::UNSPECIFIED, port))?;
        listener.set_nonblocking(true)?;
        let _ = ready_tx.send(());
        let (mut stream, peer) = accept_within(&listener, Duration::from_secs(10))?;
        stream.write_all(b"pong")?;
        Ok(peer)
    });
    let _ = ready_rx.recv_timeout(Duration::from_secs(5));
    let answer = in_netns(client, || -> std::io::Result<String> {
        let mut stream = TcpStream::connect_timeout(&to, Duration::from_secs(3))?;
        stream.set_read_timeout(Some(Duration::from_secs(3)))?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer)?;
        Ok(answer)
    })
    .with_context(|| format!("connecting to {to}"))?;
    let peer = accepting.join().expect("server thread")?;
    ensure!(answer == "pong", "unexpected answer {answer:?}");
    Ok(peer)
}

#[test]
fn a_dual_stack_macvlan_container_is_on_the_lan_over_ipv6() -> Result<()> {
    use bpfbridge_tests::WORLD_IPV6;
    let topology = Topology::new()?.with_ipv6()?;
    lan_address(&topology, WORLD_LINK, LAN_HOST, 24)?;
    let agent = Agent::start(&topology)?;
    // The uplink's own IPv6 subnet, where the node has an address: the LAN's, so it is
    // allowed, as for IPv4; the LAN host (the world) is the IPv6 gateway.
    let ipv6_subnet = "2001:db8:1::/64";
    let (ipv4_gateway, ipv6_gateway) = (LAN_HOST.to_string(), WORLD_IPV6.to_string());
    let parent = format!("parent={UPLINK}");
    ok(
        &agent,
        &network_create(
            "macvlan",
            LAN_SUBNET,
            &[
                "--gateway",
                &ipv4_gateway,
                "--ipv6",
                "--subnet",
                ipv6_subnet,
                "--gateway",
                &ipv6_gateway,
                "--ip-range",
                "2001:db8:1::100/120",
                "-o",
                &parent,
            ],
            "lan6",
        ),
    )?;
    let inspect = &agent.cli_json(&["network", "inspect", "lan6"])?[0];
    ensure!(inspect["EnableIPv6"] == true, "{inspect}");
    ensure!(
        inspect["IPAM"]["Config"][1]["Subnet"] == ipv6_subnet
            && inspect["IPAM"]["Config"][1]["Gateway"] == ipv6_gateway.as_str(),
        "{inspect}"
    );

    let node_links = links(&topology.node)?;
    let (c, c_ns) = agent.create_container(&["c", "--network", "lan6"])?;
    let settings = &c["NetworkSettings"]["Networks"]["lan6"];
    let c_ipv6: Ipv6Addr = settings["GlobalIPv6Address"]
        .as_str()
        .context("GlobalIPv6Address")?
        .parse()?;
    ensure!(
        c_ipv6 == "2001:db8:1::100".parse::<Ipv6Addr>()?,
        "from the ip-range, as the node's own address is not the IPAM's to know: {c_ipv6}"
    );
    ensure!(settings["IPv6Gateway"] == ipv6_gateway.as_str(), "{c}");
    let inside = |args: &[&str]| -> Result<String> {
        let out = in_netns(&c_ns, || Command::new("ip").args(args).output())?;
        Ok(String::from_utf8(out.stdout)?)
    };
    let addresses = inside(&["-6", "-o", "addr", "show", "eth0"])?;
    ensure!(
        addresses.contains(&format!("{c_ipv6}/64")),
        "the address is on the macvlan interface: {addresses}"
    );
    let routes = inside(&["-6", "route"])?;
    ensure!(
        routes.contains(&format!("default via {WORLD_IPV6} dev eth0")),
        "the IPv6 default route goes via the gateway: {routes}"
    );
    ensure!(
        links(&topology.node)? == node_links,
        "no bridge and no veth on the node"
    );

    // The LAN host and the container reach each other over IPv6 at their own addresses:
    // no NAT either way.
    let world = topology.world.path();
    ensure!(ping_reaches(&c_ns, WORLD_IPV6), "c -> LAN host (ICMPv6)");
    ensure!(ping_reaches(&world, c_ipv6), "LAN host -> c (ICMPv6)");
    let seen = tcp6_peer(&world, &c_ns, SocketAddr::new(WORLD_IPV6.into(), 7700))?;
    ensure!(
        seen.ip() == c_ipv6,
        "the LAN host sees the container's own address: {seen}"
    );
    let seen = tcp6_peer(&c_ns, &world, SocketAddr::new(c_ipv6.into(), 7701))?;
    ensure!(
        seen.ip() == WORLD_IPV6,
        "the container sees the LAN host's address: {seen}"
    );
    // IPv4 works beside it.
    let c_ip = ip_on(&c, "lan6")?;
    ensure!(ping_reaches(&c_ns, LAN_HOST), "c -> LAN host (IPv4)");
    ensure!(ping_reaches(&world, c_ip), "LAN host -> c (IPv4)");

    // A restarted agent keeps the IPv6 side; an interface deleted inside the container
    // comes back from the drift repair with its IPv6 address and route.
    let mut agent = agent;
    agent.kill();
    agent.spawn()?;
    ensure!(ping_reaches(&world, c_ipv6), "reachable after kill -9");
    bpfbridge_tests::run(
        "nsenter",
        &[
            &format!("--net={}", c_ns.display()),
            "ip",
            "link",
            "del",
            "eth0",
        ],
    )?;
    let repaired =
        bpfbridge_tests::time_until(Duration::from_secs(5), || ping_reaches(&world, c_ipv6));
    ensure!(repaired.is_some(), "the interface came back within 5 s");
    let routes = inside(&["-6", "route"])?;
    ensure!(
        routes.contains(&format!("default via {WORLD_IPV6} dev eth0")),
        "the IPv6 default route is back: {routes}"
    );

    // ipvlan l3 has no IPv6 yet: refused, and nothing made.
    ensure!(
        refused(
            &agent,
            &network_create(
                "ipvlan",
                "10.30.0.0/24",
                &["--ipv6", "-o", &parent, "-o", "ipvlan_mode=l3"],
                "l3v6",
            ),
        )?
        .contains("not supported yet"),
        "ipvlan l3 with IPv6"
    );

    // An IPv6-only macvlan network (Docker 28's --ipv4=false) beside it on the same parent:
    // the container has its IPv6 address and route only.
    topology.world.ip(&[
        "addr",
        "add",
        "2001:db8:2::fe/64",
        "dev",
        WORLD_LINK,
        "nodad",
    ])?;
    ok(
        &agent,
        &[
            "network",
            "create",
            "-d",
            "macvlan",
            "--ipv4=false",
            "--ipv6",
            "--subnet",
            "2001:db8:2::/64",
            "--gateway",
            "2001:db8:2::fe",
            "-o",
            &parent,
            "only6",
        ],
    )?;
    let (d, d_ns) = agent.create_container(&["d", "--network", "only6"])?;
    let settings = &d["NetworkSettings"]["Networks"]["only6"];
    ensure!(settings["IPAddress"] == "", "no IPv4 address: {d}");
    let d_ipv6: Ipv6Addr = settings["GlobalIPv6Address"]
        .as_str()
        .context("GlobalIPv6Address")?
        .parse()?;
    let lan_host_6: Ipv6Addr = "2001:db8:2::fe".parse()?;
    ensure!(ping_reaches(&d_ns, lan_host_6), "d -> LAN host");
    ensure!(ping_reaches(&world, d_ipv6), "LAN host -> d");

    ok(&agent, &["container", "rm", "c", "d"])?;
    ok(&agent, &["network", "rm", "lan6", "only6"])?;
    ensure!(
        links(&topology.node)? == node_links,
        "the parent is left as it was"
    );
    Ok(())
}
