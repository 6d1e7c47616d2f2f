//! Isolation in the dataplane: between networks, `icc=false`, `--internal`; written as a
//! reachability matrix and compared cell by cell for TCP, UDP and ICMP.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    path::PathBuf,
    time::Duration,
};

use anyhow::{Result, ensure};
use bpfbridge_tests::{
    Agent, Echo, Topology, WORLD_IP, ebpf_checks, ping_reaches, skip_unless_ebpf, tcp_reaches,
    udp_reaches,
};
use serde_json::Value;

const PORT: u16 = 7100;
const WAIT: Duration = Duration::from_millis(800);

struct Container {
    name: &'static str,
    netns: PathBuf,
    json: Value,
}

impl Container {
    fn ip_on(&self, network: &str) -> Option<Ipv4Addr> {
        self.json["NetworkSettings"]["Networks"][network]["IPAddress"]
            .as_str()?
            .parse()
            .ok()
    }
}

#[test]
fn reachability_matrix_tcp_udp_icmp() -> Result<()> {
    let topology = Topology::new()?;
    let agent = Agent::start(&topology)?;
    for args in [
        &["network", "create", "open", "--subnet", "10.61.0.0/24"][..],
        &[
            "network",
            "create",
            "quiet",
            "--subnet",
            "10.62.0.0/24",
            "-o",
            "com.docker.network.bridge.enable_icc=false",
        ],
        &[
            "network",
            "create",
            "inner",
            "--subnet",
            "10.63.0.0/24",
            "--internal",
        ],
    ] {
        let out = agent.cli(args)?;
        ensure!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut containers = Vec::new();
    // b exposes the test port; c links to b, which opens b's exposed ports to c through
    // icc=false (but not ICMP, and not the other way round).
    for (name, networks, extra) in [
        ("a", &["open"][..], &[][..]),
        (
            "b",
            &["open", "quiet"],
            &["--expose", "7100", "--expose", "7100/udp"],
        ),
        ("c", &["quiet"], &["--link", "b:bee"]),
        ("d", &["inner"], &[]),
        ("e", &["inner"], &[]),
    ] {
        let mut args = vec![name];
        for n in networks {
            args.extend(["--network", n]);
        }
        args.extend(extra);
        let (json, netns) = agent.create_container(&args)?;
        containers.push(Container { name, netns, json });
    }
    let _echo: Vec<Echo> = containers
        .iter()
        .map(|c| Echo::start(&c.netns, PORT))
        .collect::<Result<_>>()?;
    let world_echo = Echo::start(&topology.world.path(), PORT)?;

    // (from, to, network of the target address or "world", [tcp, udp, icmp] reachable)
    const ALL: [bool; 3] = [true, true, true];
    const NONE: [bool; 3] = [false, false, false];
    let expected: &[(&str, &str, &str, [bool; 3])] = &[
        ("a", "b", "open", ALL),
        ("b", "a", "open", ALL),
        ("b", "c", "quiet", NONE),                // icc=false
        ("c", "b", "quiet", [true, true, false]), // the link: exposed ports only
        ("a", "c", "quiet", NONE),                // another network
        ("c", "a", "open", NONE),
        ("a", "d", "inner", NONE),
        ("d", "a", "open", NONE),
        ("d", "e", "inner", ALL), // internal networks still talk inside
        ("e", "d", "inner", ALL),
        ("b", "d", "inner", NONE),
        ("d", "world", "world", NONE), // internal: no way out
        ("a", "world", "world", ALL),
    ];
    let by_name = |n: &str| containers.iter().find(|c| c.name == n).expect("container");
    let mut mismatches = Vec::new();
    for &(from, to, network, wants) in expected {
        let target = if to == "world" {
            WORLD_IP
        } else {
            by_name(to).ip_on(network).expect("address")
        };
        let source = &by_name(from).netns;
        let addr = SocketAddrV4::new(target, PORT);
        let got = [
            ("tcp", tcp_reaches(source, addr, WAIT)),
            ("udp", udp_reaches(source, addr, WAIT)),
            ("icmp", ping_reaches(source, target)),
        ];
        for ((proto, reached), want) in got.into_iter().zip(wants) {
            if reached != want {
                mismatches.push(format!(
                    "{from} -> {to} ({network}) {proto}: expected {want}, got {reached}"
                ));
            }
        }
    }
    drop(world_echo);
    assert!(
        mismatches.is_empty(),
        "reachability differs:\n{}",
        mismatches.join("\n")
    );
    if ebpf_checks("the TC program's drop counters") {
        assert!(agent.counter("container_ingress.drop.policy_icc")? > 0);
        assert!(agent.counter("container_ingress.drop.isolation")? > 0);
    }
    // An internal network's containers have no default route, so their packets to the
    // world never reach the dataplane; the drop reason is covered by the test-run cases.
    Ok(())
}

#[test]
fn link_opens_exposed_ports_through_icc_false_one_way() -> Result<()> {
    let topology = Topology::new()?;
    let agent = Agent::start(&topology)?;
    let out = agent.cli(&[
        "network",
        "create",
        "quiet",
        "-o",
        "com.docker.network.bridge.enable_icc=false",
    ])?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (db, db_ns) = agent.create_container(&[
        "db",
        "--network",
        "quiet",
        "--expose",
        "5432",
        "--expose",
        "5432/udp",
    ])?;
    let (app, app_ns) =
        agent.create_container(&["app", "--network", "quiet", "--link", "db:database"])?;
    let (_, other_ns) = agent.create_container(&["other", "--network", "quiet"])?;
    let ip = |c: &Value| -> Ipv4Addr {
        c["NetworkSettings"]["Networks"]["quiet"]["IPAddress"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap()
    };
    let (db_ip, app_ip) = (ip(&db), ip(&app));
    let _db_exposed = Echo::start(&db_ns, 5432)?;
    let _db_other = Echo::start(&db_ns, PORT)?;
    let _app_echo = Echo::start(&app_ns, PORT)?;

    assert!(
        tcp_reaches(&app_ns, SocketAddrV4::new(db_ip, 5432), WAIT),
        "linked: exposed TCP port"
    );
    assert!(
        udp_reaches(&app_ns, SocketAddrV4::new(db_ip, 5432), WAIT),
        "linked: exposed UDP port"
    );
    assert!(
        !tcp_reaches(&app_ns, SocketAddrV4::new(db_ip, PORT), WAIT),
        "a port db does not expose"
    );
    assert!(
        !ping_reaches(&app_ns, db_ip),
        "nothing but the exposed ports"
    );
    assert!(
        !tcp_reaches(&db_ns, SocketAddrV4::new(app_ip, PORT), WAIT),
        "the reverse direction stays closed"
    );
    assert!(!udp_reaches(&db_ns, SocketAddrV4::new(app_ip, PORT), WAIT));
    assert!(
        !tcp_reaches(&other_ns, SocketAddrV4::new(db_ip, 5432), WAIT),
        "an unlinked container"
    );
    if ebpf_checks("the link flows in the agent's conntrack table and their counters") {
        let flows = String::from_utf8(agent.cli(&["conntrack", "ls"])?.stdout)?;
        assert!(
            flows.contains("link tcp") && flows.contains("link udp"),
            "{flows}"
        );
        assert!(agent.counter("container_ingress.pass.link")? >= 2);
        assert!(agent.counter("container_ingress.pass.tracked_reply")? >= 2);
    }

    // Bad links: a missing container, one on no shared network, an alias given twice.
    let refused = |args: &[&str], expected: &str| -> Result<()> {
        let out = agent.cli(args)?;
        ensure!(
            !out.status.success() && String::from_utf8_lossy(&out.stderr).contains(expected),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    };
    refused(
        &[
            "container",
            "create",
            "x",
            "--network",
            "quiet",
            "--link",
            "nope:n",
        ],
        "could not get container for nope",
    )?;
    refused(
        &["container", "create", "x", "--link", "db:d"],
        "on no network this container joins",
    )?;
    refused(
        &[
            "container",
            "create",
            "x",
            "--network",
            "quiet",
            "--link",
            "db:d",
            "--link",
            "other:d",
        ],
        "given twice",
    )?;
    Ok(())
}

#[test]
fn monitor_streams_drops_and_a_flood_is_rate_limited() -> Result<()> {
    use std::{io::Read as _, process::Stdio, time::Instant};
    if skip_unless_ebpf("`monitor` streams the eBPF programs' ring buffer of drop events") {
        return Ok(());
    }
    let topology = Topology::new()?;
    let agent = Agent::start(&topology)?;
    for (name, subnet) in [("left", "10.71.0.0/24"), ("right", "10.72.0.0/24")] {
        let out = agent.cli(&["network", "create", name, "--subnet", subnet])?;
        ensure!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let (_, x_ns) = agent.create_container(&["x", "--network", "left"])?;
    let (y, _) = agent.create_container(&["y", "--network", "right"])?;
    let y_ip: Ipv4Addr = y["NetworkSettings"]["Networks"]["right"]["IPAddress"]
        .as_str()
        .unwrap()
        .parse()?;

    let mut monitor = std::process::Command::new(bpfbridge_tests::bpfbridge_bin())
        .arg("--socket")
        .arg(&agent.socket)
        .args(["monitor", "--count", "1"])
        .stdout(Stdio::piped())
        .spawn()?;
    std::thread::sleep(Duration::from_millis(300)); // let it subscribe
    assert!(!udp_reaches(
        &x_ns,
        SocketAddrV4::new(y_ip, PORT),
        Duration::from_millis(300)
    ));
    let deadline = Instant::now() + Duration::from_secs(5);
    while monitor.try_wait()?.is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = monitor.kill();
    let mut out = String::new();
    monitor
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut out)?;
    let event: Value = serde_json::from_str(out.lines().next().unwrap_or("null"))?;
    assert_eq!(event["Kind"], "drop", "{out}");
    assert_eq!(event["Reason"], "container_ingress.drop.isolation");
    assert_eq!(event["Destination"], format!("{y_ip}:{PORT}"));

    // A flood of drops: the kernel keeps most of them out of the ring buffer, and the agent
    // stays responsive.
    bpfbridge_tests::in_netns(&x_ns, || -> std::io::Result<()> {
        let socket = std::net::UdpSocket::bind("0.0.0.0:0")?;
        for _ in 0..5000 {
            let _ = socket.send_to(b"flood", SocketAddrV4::new(y_ip, PORT));
        }
        Ok(())
    })?;
    assert!(agent.counter("monitor.events_suppressed")? > 0);
    assert!(agent.cli(&["info"])?.status.success());
    Ok(())
}
