//! Networks: create, ls, inspect, rm, prune, connect and disconnect, with Docker's fields,
//! and what they do on the node.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, ensure};
use bpfbridge_tests::{Agent, Netns, Topology, links, request, serve_once};
use serde_json::Value;

/// Runs the CLI and expects success; returns stdout.
fn ok(agent: &Agent, args: &[&str]) -> Result<String> {
    let out = agent.cli(args)?;
    ensure!(
        out.status.success(),
        "bpfbridge {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

/// Runs the CLI and expects a one-line error containing `expected`.
fn refused(agent: &Agent, args: &[&str], expected: &str) -> Result<()> {
    let out = agent.cli(args)?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success(),
        "bpfbridge {} must fail",
        args.join(" ")
    );
    ensure!(
        stderr.contains(expected),
        "bpfbridge {}: expected {expected:?} in {stderr:?}",
        args.join(" ")
    );
    ensure!(stderr.trim_end().lines().count() == 1, "one line: {stderr}");
    Ok(())
}

fn inspect_network(agent: &Agent, name: &str) -> Result<Value> {
    Ok(agent.cli_json(&["network", "inspect", name])?[0].clone())
}

fn ip_on(container: &Value, network: &str) -> Result<Ipv4Addr> {
    container["NetworkSettings"]["Networks"][network]["IPAddress"]
        .as_str()
        .with_context(|| format!("no address on {network}: {container}"))?
        .parse()
        .context("address")
}

/// Whether a TCP connection from `from` to `to:port` (a server in `server_ns`) works.
fn reaches(from: &Path, server_ns: &Path, to: Ipv4Addr, port: u16) -> bool {
    let server = serve_once(server_ns, port);
    let answer = request(from, SocketAddrV4::new(to, port), "hi\n");
    let connected = answer.as_deref().is_ok_and(|a| a == "pong hi\n");
    if !connected {
        // Unblock the server's accept by connecting locally, so the thread ends.
        let _ = request(
            server_ns,
            SocketAddrV4::new(Ipv4Addr::LOCALHOST, port),
            "bye\n",
        );
    }
    let _ = server.join();
    connected
}

#[test]
fn create_inspect_ls_rm_prune() -> Result<()> {
    let topology = Topology::new()?;
    let agent = Agent::start(&topology)?;
    let id = ok(&agent, &["network", "create", "auto"])?;
    assert_eq!(id.trim().len(), 64);
    ok(
        &agent,
        &[
            "network",
            "create",
            "custom",
            "--subnet",
            "10.20.0.0/24",
            "--gateway",
            "10.20.0.254",
            "--ip-range",
            "10.20.0.128/25",
            "-o",
            "com.docker.network.bridge.name=br-custom",
            "-o",
            "com.docker.network.driver.mtu=1400",
            "--label",
            "team=net",
        ],
    )?;

    let auto = inspect_network(&agent, "auto")?;
    assert_eq!(
        auto["IPAM"]["Config"][0]["Subnet"], "172.18.0.0/16",
        "next free pool after the default bridge's"
    );
    assert_eq!(auto["IPAM"]["Config"][0]["Gateway"], "172.18.0.1");
    let custom = inspect_network(&agent, "custom")?;
    assert_eq!(custom["Driver"], "bridge");
    assert_eq!(custom["Scope"], "local");
    assert_eq!(custom["Internal"], false);
    assert_eq!(custom["IPAM"]["Config"][0]["IPRange"], "10.20.0.128/25");
    assert_eq!(custom["IPAM"]["Config"][0]["Gateway"], "10.20.0.254");
    assert_eq!(
        custom["Options"]["com.docker.network.bridge.name"],
        "br-custom"
    );
    assert_eq!(custom["Labels"]["team"], "net");
    let bridge = topology
        .node
        .ip(&["-o", "addr", "show", "dev", "br-custom"])?;
    assert!(String::from_utf8_lossy(&bridge.stdout).contains("10.20.0.254/24"));
    let link = topology.node.ip(&["-o", "link", "show", "br-custom"])?;
    assert!(String::from_utf8_lossy(&link.stdout).contains("mtu 1400"));
    // Inspect by id prefix works too.
    let by_id = inspect_network(&agent, &custom["Id"].as_str().unwrap()[..12])?;
    assert_eq!(by_id["Name"], "custom");

    let ls = ok(&agent, &["network", "ls"])?;
    let names: Vec<&str> = ls
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(1))
        .collect();
    assert_eq!(names, ["auto", "bridge", "custom", "host", "none"]);
    assert!(ls.starts_with("NETWORK ID"));
    let json_lines = ok(&agent, &["network", "ls", "--format", "json"])?;
    let drivers: Vec<Value> = json_lines
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert!(
        drivers
            .iter()
            .any(|d| d["Name"] == "host" && d["Driver"] == "host")
    );
    assert!(
        drivers
            .iter()
            .any(|d| d["Name"] == "none" && d["Driver"] == "null")
    );

    // A container on the network: its address comes from the range, and inspect lists it.
    let (c, _) = agent.create_container(&["web", "--network", "custom"])?;
    let ip = ip_on(&c, "custom")?;
    assert!(
        "10.20.0.128/25".parse::<ipnet::Ipv4Net>()?.contains(&ip),
        "{ip}"
    );
    assert_eq!(
        c["NetworkSettings"]["IPAddress"], "",
        "top-level fields are the default bridge's only, like Docker"
    );
    let custom = inspect_network(&agent, "custom")?;
    let entry = custom["Containers"][c["Id"].as_str().unwrap()].clone();
    assert_eq!(entry["Name"], "web");
    assert_eq!(entry["IPv4Address"], format!("{ip}/24"));
    assert_eq!(
        entry["MacAddress"],
        c["NetworkSettings"]["Networks"]["custom"]["MacAddress"]
    );

    refused(&agent, &["network", "rm", "custom"], "has active endpoints")?;
    for predefined in ["bridge", "host", "none"] {
        refused(
            &agent,
            &["network", "rm", predefined],
            "pre-defined network",
        )?;
    }
    ok(&agent, &["container", "rm", "web"])?;
    ok(&agent, &["network", "rm", "custom"])?;
    assert!(!links(&topology.node)?.contains(&"br-custom".to_string()));
    let pruned = ok(&agent, &["network", "prune", "-f"])?;
    assert_eq!(pruned, "Deleted Networks:\nauto\n");
    let ls = ok(&agent, &["network", "ls"])?;
    assert_eq!(ls.lines().count(), 4, "{ls}");
    Ok(())
}

#[test]
fn bad_network_requests_change_nothing() -> Result<()> {
    let topology = Topology::new()?;
    let agent = Agent::start(&topology)?;
    ok(
        &agent,
        &["network", "create", "a", "--subnet", "10.30.0.0/24"],
    )?;
    agent.create_container(&["one", "--network", "a", "--ip", "10.30.0.50"])?;
    let links_before = links(&topology.node)?;
    let cases: &[(&[&str], &str)] = &[
        (&["network", "create", "a"], "already exists"),
        (&["network", "create", "bridge"], "already exists"),
        (&["network", "create", "host"], "already exists"),
        (
            &["network", "create", "b", "--subnet", "10.30.0.128/25"],
            "overlaps with network a",
        ),
        (
            &["network", "create", "b", "--subnet", "198.51.100.0/24"],
            "overlaps with a route on the node",
        ),
        (
            &["network", "create", "b", "--subnet", "10.31.0.0"],
            "invalid subnet",
        ),
        (
            &["network", "create", "b", "--subnet", "10.31.0.1/24"],
            "host bits set",
        ),
        (
            &[
                "network",
                "create",
                "b",
                "--subnet",
                "10.31.0.0/24",
                "--gateway",
                "10.32.0.1",
            ],
            "not a usable address",
        ),
        (
            &[
                "network",
                "create",
                "b",
                "--subnet",
                "10.31.0.0/24",
                "--ip-range",
                "10.32.0.0/25",
            ],
            "not inside subnet",
        ),
        (
            &["network", "create", "b", "--gateway", "10.31.0.1"],
            "need --subnet",
        ),
        (
            &["network", "create", "b", "-o", "bpfbridge.nope=1"],
            "unknown network option",
        ),
        (
            &[
                "network",
                "create",
                "b",
                "-o",
                "com.docker.network.driver.mtu=9",
            ],
            "expected an MTU",
        ),
        (
            &[
                "network",
                "create",
                "b",
                "-o",
                "com.docker.network.bridge.enable_icc=maybe",
            ],
            "expected true or false",
        ),
        (
            &["network", "create", "b", "-d", "overlay"],
            "not supported",
        ),
        (&["network", "create", "bad name"], "invalid network name"),
        (&["network", "rm", "nope"], "network nope not found"),
        (&["network", "inspect", "nope"], "network nope not found"),
        (
            &["container", "create", "two", "--network", "nope"],
            "network nope not found",
        ),
        (
            &[
                "container",
                "create",
                "two",
                "--network",
                "a",
                "--ip",
                "10.30.1.5",
            ],
            "not a usable address",
        ),
        (
            &[
                "container",
                "create",
                "two",
                "--network",
                "a",
                "--ip",
                "10.30.0.50",
            ],
            "already in use",
        ),
        (
            &[
                "container",
                "create",
                "two",
                "--network",
                "a",
                "--ip",
                "10.30.0.1",
            ],
            "already in use",
        ),
        (
            &["container", "create", "two", "--ip", "172.17.0.9"],
            "user defined networks only",
        ),
        (
            &["container", "create", "two", "--alias", "x"],
            "user defined networks only",
        ),
        (
            &["network", "connect", "a", "one"],
            "already exists in network a",
        ),
        (
            &["network", "connect", "a", "nope"],
            "no such container: nope",
        ),
        (
            &["network", "disconnect", "bridge", "one"],
            "is not connected to network bridge",
        ),
    ];
    for (args, expected) in cases {
        refused(&agent, args, expected)?;
    }
    assert_eq!(
        links(&topology.node)?,
        links_before,
        "no half-made bridge or veth"
    );
    let ls = ok(&agent, &["network", "ls"])?;
    assert_eq!(ls.lines().count(), 5, "{ls}");
    Ok(())
}

#[test]
fn container_on_two_networks_and_connect_disconnect() -> Result<()> {
    let topology = Topology::new()?;
    let agent = Agent::start(&topology)?;
    ok(
        &agent,
        &["network", "create", "front", "--subnet", "10.40.0.0/24"],
    )?;
    ok(
        &agent,
        &["network", "create", "back", "--subnet", "10.41.0.0/24"],
    )?;
    let (web, web_ns) =
        agent.create_container(&["web", "--network", "front", "--network", "back"])?;
    let (f, f_ns) = agent.create_container(&["f", "--network", "front"])?;
    let (b, b_ns) = agent.create_container(&["b", "--network", "back"])?;

    // As Docker chooses among equal gateway priorities: the network whose name sorts
    // first holds the default route (tests/tests/gateway_modes.rs tries priorities).
    let routes = Netns::at(&web_ns).ip(&["route", "show", "default"])?;
    assert!(
        String::from_utf8_lossy(&routes.stdout).contains("via 10.41.0.1 dev eth1"),
        "the first network by name holds the default route"
    );
    let eth1 = Netns::at(&web_ns).ip(&["-o", "addr", "show", "dev", "eth1"])?;
    assert!(String::from_utf8_lossy(&eth1.stdout).contains(&ip_on(&web, "back")?.to_string()));
    assert!(
        reaches(&f_ns, &web_ns, ip_on(&web, "front")?, 7001),
        "front peer reaches web"
    );
    assert!(
        reaches(&b_ns, &web_ns, ip_on(&web, "back")?, 7002),
        "back peer reaches web"
    );

    // Connect f to back with a fixed address and an alias; then disconnect it again.
    ok(
        &agent,
        &[
            "network",
            "connect",
            "back",
            "f",
            "--ip",
            "10.41.0.77",
            "--alias",
            "fb",
        ],
    )?;
    let f2 = agent.cli_json(&["container", "inspect", "f"])?[0].clone();
    assert_eq!(ip_on(&f2, "back")?, Ipv4Addr::new(10, 41, 0, 77));
    assert_eq!(
        f2["NetworkSettings"]["Networks"]["back"]["IPAMConfig"]["IPv4Address"],
        "10.41.0.77"
    );
    let aliases = f2["NetworkSettings"]["Networks"]["back"]["Aliases"]
        .as_array()
        .unwrap()
        .clone();
    assert!(aliases.contains(&Value::from("fb")));
    assert!(reaches(&b_ns, &f_ns, Ipv4Addr::new(10, 41, 0, 77), 7003));
    ok(&agent, &["network", "disconnect", "back", "f"])?;
    let names = links(&Netns::at(&f_ns))?;
    assert!(!names.contains(&"eth1".to_string()), "{names:?}");
    assert!(!reaches(&b_ns, &f_ns, Ipv4Addr::new(10, 41, 0, 77), 7004));

    // Disconnecting the network of web's default route moves it to the other one.
    ok(&agent, &["network", "disconnect", "back", "web"])?;
    let routes = Netns::at(&web_ns).ip(&["route", "show", "default"])?;
    assert!(
        String::from_utf8_lossy(&routes.stdout).contains("via 10.40.0.1"),
        "{}",
        String::from_utf8_lossy(&routes.stdout)
    );
    let _ = (f, b);
    Ok(())
}

#[test]
fn network_modes_host_none_and_container() -> Result<()> {
    let topology = Topology::new()?;
    let agent = Agent::start(&topology)?;
    let links_before = links(&topology.node)?;

    let out = agent.cli(&[
        "container",
        "create",
        "h",
        "--network",
        "host",
        "-p",
        "8080:80",
    ])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("WARNING: Published ports are discarded")
    );
    let h: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(h["HostConfig"]["NetworkMode"], "host");
    assert!(h["NetworkSettings"]["Networks"]["host"].is_object());
    assert_eq!(
        links(&topology.node)?,
        links_before,
        "host mode makes no veth"
    );
    assert_eq!(agent.cli_json(&["ports"])?, serde_json::json!([]));

    let (n, n_ns) = agent.create_container(&["n", "--network", "none"])?;
    assert_eq!(n["HostConfig"]["NetworkMode"], "none");
    assert_eq!(links(&Netns::at(&n_ns))?, ["lo"]);
    let lo = Netns::at(&n_ns).ip(&["-o", "link", "show", "lo"])?;
    assert!(String::from_utf8_lossy(&lo.stdout).contains("UP"));

    let (web, web_ns) = agent.create_container(&["web", "-p", "8080:80"])?;
    let (side, side_ns) = agent.create_container(&["side", "--network", "container:web"])?;
    assert_eq!(side_ns, web_ns, "joins the other container's namespace");
    assert_eq!(
        side["HostConfig"]["NetworkMode"],
        format!("container:{}", web["Id"].as_str().unwrap())
    );
    assert!(
        links(&Netns::at(&side_ns))?.contains(&"eth0".to_string()),
        "sees its interfaces"
    );
    refused(
        &agent,
        &["container", "rm", "web"],
        "shares its network namespace with side",
    )?;
    refused(
        &agent,
        &["container", "create", "x", "--network", "container:x"],
        "cannot join own network namespace",
    )?;
    refused(
        &agent,
        &["container", "create", "x", "--network", "container:nope"],
        "no such container: nope",
    )?;
    refused(
        &agent,
        &[
            "container",
            "create",
            "x",
            "--network",
            "container:web",
            "-p",
            "9:9",
        ],
        "conflicting options",
    )?;
    ok(&agent, &["container", "rm", "side"])?;
    ok(&agent, &["container", "rm", "web"])?;
    ok(&agent, &["container", "rm", "n", "h"])?;
    assert!(!n_ns.exists());
    Ok(())
}

#[test]
fn link_gives_docker_hosts_lines_and_environment() -> Result<()> {
    let topology = Topology::new()?;
    let agent = Agent::start(&topology)?;
    let (db, _) = agent.create_container(&["db", "--expose", "5432", "--expose", "53/udp"])?;
    let (app, _) = agent.create_container(&["app", "--link", "db:database"])?;
    let db_ip = db["NetworkSettings"]["IPAddress"]
        .as_str()
        .unwrap()
        .to_string();
    let db_short = &db["Id"].as_str().unwrap()[..12];
    let hosts: Vec<String> = serde_json::from_value(app["LinkInfo"]["HostsEntries"].clone())?;
    assert_eq!(hosts[0], format!("{db_ip}\tdatabase {db_short} db"));
    let env: Vec<String> = serde_json::from_value(app["LinkInfo"]["Env"].clone())?;
    let expected: Vec<String> = [
        "DATABASE_NAME=/app/database".to_string(),
        format!("DATABASE_PORT=udp://{db_ip}:53"),
        format!("DATABASE_PORT_53_UDP=udp://{db_ip}:53"),
        format!("DATABASE_PORT_53_UDP_ADDR={db_ip}"),
        "DATABASE_PORT_53_UDP_PORT=53".to_string(),
        "DATABASE_PORT_53_UDP_PROTO=udp".to_string(),
        format!("DATABASE_PORT_5432_TCP=tcp://{db_ip}:5432"),
        format!("DATABASE_PORT_5432_TCP_ADDR={db_ip}"),
        "DATABASE_PORT_5432_TCP_PORT=5432".to_string(),
        "DATABASE_PORT_5432_TCP_PROTO=tcp".to_string(),
    ]
    .into();
    assert_eq!(env, expected);
    refused(
        &agent,
        &["container", "create", "x", "--link", "nope:alias"],
        "could not get container for nope",
    )?;
    Ok(())
}

/// A namespace the agent made, used but not deleted by the test.
trait At {
    fn at(path: &Path) -> Netns;
}

impl At for Netns {
    fn at(path: &Path) -> Netns {
        Netns::borrowed(PathBuf::from(path))
    }
}
