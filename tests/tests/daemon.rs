//! The daemon: settings from flags and a config file, crash safety of its state, and who
//! may use its socket.

use std::{
    collections::BTreeSet,
    os::unix::{fs::PermissionsExt as _, process::CommandExt as _},
    thread,
    time::Duration,
};

use anyhow::{Result, ensure};
use bpfbridge::dataplane::ebpf::{PROGRAMS, VERIFIER_INSTRUCTION_LIMIT};
use bpfbridge_tests::{Agent, Netns, Topology, bpfbridge_bin, ebpf_checks};
use serde_json::Value;

fn containers(agent: &Agent) -> Result<Vec<Value>> {
    let out = agent.cli(&["container", "ls", "--format", "json"])?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?)
}

/// Veths enslaved to the default bridge in the node namespace.
fn bridge_ports(topology: &Topology) -> Result<usize> {
    let out = topology
        .node
        .ip(&["-o", "link", "show", "master", "bpfbr0"])?;
    Ok(String::from_utf8(out.stdout)?.lines().count())
}

#[test]
fn kill_9_during_a_batch_of_creates_leaks_nothing() -> Result<()> {
    let topology = Topology::new()?;
    let mut agent = Agent::start(&topology)?;
    let mut recorded_after_restart = Vec::new();
    for round in 0..2 {
        let socket = agent.socket.clone();
        let batch = thread::spawn(move || {
            for i in 0..25 {
                let name = format!("r{round}c{i}");
                let port = format!("{}:80", 9000 + round * 100 + i);
                let _ = std::process::Command::new(bpfbridge_bin())
                    .arg("--socket")
                    .arg(&socket)
                    .args(["container", "create", &name, "-p", &port])
                    .output();
            }
        });
        thread::sleep(Duration::from_millis(250 + 150 * round as u64));
        agent.kill();
        batch.join().expect("batch thread");
        agent.spawn()?;

        let listed = containers(&agent)?;
        let ips: BTreeSet<String> = listed
            .iter()
            .map(|c| {
                c["NetworkSettings"]["IPAddress"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            })
            .collect();
        assert_eq!(ips.len(), listed.len(), "addresses are unique");
        assert_eq!(
            bridge_ports(&topology)?,
            listed.len(),
            "one veth per recorded container, none leaked"
        );
        let published: Vec<Value> = serde_json::from_value(agent.cli_json(&["ports"])?)?;
        let with_ports = listed
            .iter()
            .filter(|c| {
                c["NetworkSettings"]["Ports"]
                    .as_object()
                    .is_some_and(|p| !p.is_empty())
            })
            .count();
        assert_eq!(
            published.len(),
            with_ports,
            "one mapping per recorded published port"
        );
        let namespaces = std::fs::read_dir(&agent.netns_dir)?.count();
        assert_eq!(namespaces, listed.len(), "no namespace leaked");
        for c in &listed {
            let key = c["NetworkSettings"]["SandboxKey"].as_str().unwrap();
            assert!(std::path::Path::new(key).exists(), "{key}");
        }
        // A new container gets an address nobody has.
        let (fresh, _) = agent.create_container(&[&format!("fresh{round}")])?;
        let ip = fresh["NetworkSettings"]["IPAddress"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(!ips.contains(&ip), "{ip} handed out twice");
        recorded_after_restart.push(listed.len());
    }
    // Every leak checked above is 0, or the test would have stopped.
    bpfbridge_tests::figures::record(
        "daemon_kill_9",
        serde_json::json!({
            "kills": 2, "containers_recorded_after_restart": recorded_after_restart,
            "leaked_veths": 0, "leaked_namespaces": 0, "orphan_port_mappings": 0,
        }),
    )
}

#[test]
fn truncated_state_database_stops_the_agent_and_names_the_file() -> Result<()> {
    let topology = Topology::new()?;
    let mut agent = Agent::start(&topology)?;
    agent.create_container(&["web"])?;
    agent.stop();
    let db = agent.state_dir().join("bpfbridge.redb");
    let len = std::fs::metadata(&db)?.len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&db)?
        .set_len(len / 3)?;
    let error = agent.spawn_expecting_failure()?;
    assert!(error.contains("bpfbridge.redb"), "{error}");
    assert!(
        std::fs::metadata(&db)?.len() > 0,
        "the damaged file is left for inspection"
    );
    Ok(())
}

#[test]
fn daemon_flags_shape_the_default_network_and_info() -> Result<()> {
    let topology = Topology::new()?;
    let agent = Agent::start_with(
        &topology,
        &[
            "--bip",
            "10.99.0.1/24",
            "--mtu",
            "1400",
            "--ip-forward=false",
            "--icc=false",
            "--ip-masq=false",
            "--default-address-pool",
            "base=10.123.0.0/16,size=24",
            "--ip",
            "127.0.0.1",
        ],
    )?;
    let info = agent.cli_json(&["info"])?;
    assert_eq!(info["Dataplane"], bpfbridge_tests::dataplane());
    assert_eq!(
        info["IPForwardEnabled"], false,
        "--ip-forward=false leaves the sysctl alone (off in a new namespace)"
    );
    assert_eq!(info["Settings"]["ip-forward"], false);
    assert_eq!(info["Settings"]["icc"], false);
    assert_eq!(info["Settings"]["mtu"], 1400);
    assert!(info["Version"].as_str().is_some_and(|v| !v.is_empty()));
    assert!(
        info["KernelVersion"]
            .as_str()
            .is_some_and(|v| !v.is_empty())
    );

    let bridge = agent.cli_json(&["network", "inspect", "bridge"])?[0].clone();
    assert_eq!(bridge["IPAM"]["Config"][0]["Subnet"], "10.99.0.0/24");
    assert_eq!(bridge["IPAM"]["Config"][0]["Gateway"], "10.99.0.1");
    assert_eq!(
        bridge["Options"]["com.docker.network.bridge.enable_icc"],
        "false"
    );
    assert_eq!(
        bridge["Options"]["com.docker.network.bridge.enable_ip_masquerade"],
        "false"
    );
    assert_eq!(
        bridge["Options"]["com.docker.network.bridge.host_binding_ipv4"],
        "127.0.0.1"
    );
    assert_eq!(bridge["Options"]["com.docker.network.driver.mtu"], "1400");
    let link = topology.node.ip(&["-o", "link", "show", "bpfbr0"])?;
    assert!(String::from_utf8_lossy(&link.stdout).contains("mtu 1400"));
    let forward = topology
        .node
        .exec("sysctl", &["-n", "net.ipv4.ip_forward"])?;
    assert_eq!(String::from_utf8_lossy(&forward.stdout).trim(), "0");

    let out = agent.cli(&["network", "create", "pooled"])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pooled = agent.cli_json(&["network", "inspect", "pooled"])?[0].clone();
    assert_eq!(
        pooled["IPAM"]["Config"][0]["Subnet"], "10.123.0.0/24",
        "from --default-address-pool"
    );
    let (web, web_netns) = agent.create_container(&["web", "-p", "8080:80"])?;
    // Both ends of a container's veth follow the network's MTU.
    let eth0 = Netns::borrowed(web_netns).ip(&["-o", "link", "show", "eth0"])?;
    let eth0 = String::from_utf8_lossy(&eth0.stdout);
    assert!(eth0.contains("mtu 1400"), "{eth0}");
    assert_eq!(
        web["NetworkSettings"]["Ports"]["80/tcp"][0]["HostIp"], "127.0.0.1",
        "--ip is the default host address"
    );
    let info = agent.cli_json(&["info"])?;
    assert_eq!(
        (
            info["Networks"].as_u64(),
            info["Containers"].as_u64(),
            info["PublishedPorts"].as_u64()
        ),
        (Some(2), Some(1), Some(1))
    );
    Ok(())
}

#[test]
fn config_file_then_flags() -> Result<()> {
    let topology = Topology::new()?;
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("bpfbridge.toml");
    std::fs::write(&config, "icc = false\nmtu = 1300\nip = \"127.0.0.1\"\n")?;
    let config_arg = config.to_str().unwrap();
    let agent = Agent::start_with(&topology, &["--config", config_arg, "--mtu", "1280"])?;
    let settings = agent.cli_json(&["info"])?["Settings"].clone();
    assert_eq!(settings["icc"], false, "from the file");
    assert_eq!(settings["mtu"], 1280, "the flag wins over the file");
    assert_eq!(settings["ip"], "127.0.0.1");
    drop(agent);

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "no-such-setting = true\n")?;
    let mut agent = Agent::start_with(&topology, &["--config", "/nonexistent/x.toml"])
        .err()
        .map(|e| e.to_string());
    assert!(
        agent
            .take()
            .is_some_and(|e| e.contains("/nonexistent/x.toml"))
    );
    let error = Agent::start_with(&topology, &["--config", bad.to_str().unwrap()])
        .err()
        .map(|e| e.to_string());
    assert!(
        error
            .as_deref()
            .is_some_and(|e| e.contains("bad.toml") && e.contains("no-such-setting")),
        "{error:?}"
    );
    Ok(())
}

#[test]
fn flow_timeouts_and_table_sizes_show_in_info_and_bad_ones_are_refused() -> Result<()> {
    let topology = Topology::new()?;
    let agent = Agent::start_with(
        &topology,
        &[
            "--tcp-unreplied-timeout",
            "5",
            "--udp-stream-timeout",
            "60",
            "--conntrack-max",
            "4096",
            "--nat-flows-max",
            "2048",
        ],
    )?;
    let info = agent.cli_json(&["info"])?;
    let settings = &info["Settings"];
    assert_eq!(settings["tcp-unreplied-timeout"], 5);
    assert_eq!(settings["udp-stream-timeout"], 60);
    assert_eq!(
        settings["tcp-idle-timeout"], 432_000,
        "nf_conntrack's default"
    );
    assert_eq!(settings["tcp-closing-timeout"], 10);
    assert_eq!(settings["udp-idle-timeout"], 30);
    assert_eq!(settings["conntrack-max"], 4096);
    if ebpf_checks("the flow tables' sizes and memory and the programs' verifier figures in info") {
        let tables = &info["FlowTables"]["Tables"];
        let sizes: Vec<(&str, u64)> = tables
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| Some((t["Name"].as_str()?, t["MaxEntries"].as_u64()?)))
            .collect();
        assert_eq!(
            sizes,
            [("CONNTRACK", 4096), ("NAT_FLOWS", 2048)],
            "{tables}"
        );
        let memory = info["FlowTables"]["MapMemoryBytes"].as_u64().unwrap_or(0);
        assert!(memory > 0, "{info}");
        let verified: Vec<(&str, u64)> = info["Programs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| Some((p["Name"].as_str()?, p["VerifiedInstructions"].as_u64()?)))
            .collect();
        assert_eq!(verified.len(), PROGRAMS.len(), "{info}");
        assert!(
            verified
                .iter()
                .all(|(_, n)| *n > 0 && *n <= u64::from(VERIFIER_INSTRUCTION_LIMIT / 2)),
            "{verified:?}"
        );
    }
    drop(agent);

    let dir = tempfile::tempdir()?;
    let config = dir.path().join("bpfbridge.toml");
    std::fs::write(&config, "udp-stream-timeout = 0\n")?;
    let config = config.to_str().unwrap();
    for (args, expected) in [
        (
            &["--tcp-closing-timeout", "0"][..],
            "--tcp-closing-timeout 0: must be between 1 and 4294967295 seconds",
        ),
        (
            &["--config", config],
            "--udp-stream-timeout 0: must be between 1 and 4294967295 seconds",
        ),
        (
            &["--conntrack-max", "1"],
            "--conntrack-max 1: must be between 2 and 16777216",
        ),
        (
            &["--nat-flows-max", "0"],
            "--nat-flows-max 0: must be between 1 and 16777216",
        ),
        (
            &["--tcp-idle-timeout=-1"],
            "invalid value '-1' for '--tcp-idle-timeout",
        ),
    ] {
        let error = Agent::start_with(&topology, args)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(error.contains(expected), "{args:?}: {error}");
    }
    Ok(())
}

#[test]
fn socket_is_for_root_only() -> Result<()> {
    let topology = Topology::new()?;
    let agent = Agent::start(&topology)?;
    let mode = std::fs::metadata(&agent.socket)?.permissions().mode() & 0o777;
    assert_eq!(mode, 0o660);
    // Let anyone reach the socket's directory, so that only the socket's own mode decides.
    std::fs::set_permissions(agent.dir.path(), std::fs::Permissions::from_mode(0o755))?;
    let out = std::process::Command::new(bpfbridge_bin())
        .arg("--socket")
        .arg(&agent.socket)
        .arg("info")
        .uid(65534)
        .gid(65534)
        .output()?;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Permission denied"), "{stderr}");
    Ok(())
}

#[test]
fn restart_recreates_what_is_missing_and_removes_what_no_record_owns() -> Result<()> {
    let topology = Topology::new()?;
    let mut agent = Agent::start(&topology)?;
    let (_, web_ns) = agent.create_container(&["web", "-p", "8080:80"])?;
    assert!(agent.cli(&["network", "create", "kept"])?.status.success());
    agent.stop();
    // While the agent is away: the container's veth disappears, and a bridge named like
    // the agent's but owned by no network appears.
    let veth = String::from_utf8(
        topology
            .node
            .ip(&["-o", "link", "show", "master", "bpfbr0"])?
            .stdout,
    )?
    .split(": ")
    .nth(1)
    .and_then(|n| n.split('@').next())
    .map(str::to_string)
    .expect("web's veth");
    topology.node.ip(&["link", "del", &veth])?;
    topology
        .node
        .ip(&["link", "add", "bpfbr-junk0001", "type", "bridge"])?;
    agent.spawn()?;

    let names = bpfbridge_tests::links(&topology.node)?;
    assert!(names.contains(&veth), "veth recreated: {names:?}");
    assert!(
        !names.contains(&"bpfbr-junk0001".to_string()),
        "unowned bridge removed"
    );
    assert_eq!(
        agent.cli_json(&["network", "inspect", "kept"])?[0]["Name"],
        "kept"
    );
    assert_eq!(bridge_ports(&topology)?, 1);
    // And the published port answers again through the recreated veth.
    let server = bpfbridge_tests::serve_once(&web_ns, 80);
    let to = std::net::SocketAddrV4::new(bpfbridge_tests::NODE_IP, 8080);
    let answer = bpfbridge_tests::request(&topology.world.path(), to, "ping\n")?;
    assert_eq!(answer, "pong ping\n");
    assert_eq!(
        server.join().expect("server")?.ip(),
        bpfbridge_tests::WORLD_IP
    );
    Ok(())
}

#[test]
fn internal_network_gives_no_default_route_and_publishes_nothing() -> Result<()> {
    let topology = Topology::new()?;
    let agent = Agent::start(&topology)?;
    assert!(
        agent
            .cli(&["network", "create", "inner", "--internal"])?
            .status
            .success()
    );
    assert_eq!(
        agent.cli_json(&["network", "inspect", "inner"])?[0]["Internal"],
        true
    );
    let (_, ns) = agent.create_container(&["db", "--network", "inner", "-p", "5432:5432"])?;
    let routes = bpfbridge_tests::Netns::borrowed(ns).ip(&["route", "show", "default"])?;
    assert!(
        routes.stdout.is_empty(),
        "no way out: {}",
        String::from_utf8_lossy(&routes.stdout)
    );
    assert_eq!(agent.cli_json(&["ports"])?, serde_json::json!([]));
    Ok(())
}
