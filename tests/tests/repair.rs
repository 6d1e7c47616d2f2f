//! Live repair: a container whose node-side veth is deleted under a running agent gets a
//! new one, with its address, MAC, published ports and way out, within a repair pass; one
//! that cannot be repaired (its namespace is gone) says so in `State.Error`, and the agent
//! keeps serving without spinning. The rest of what the agent owns is put back the same
//! way: the bridge (deleted, down, its gateway address removed), ip_forward, the eBPF
//! dataplane's programs and pinned maps' entries, the iptables dataplane's rules; each
//! repair counted by kind and sent to `monitor`, its latency recorded as a figure.

use std::{
    io::{BufRead as _, BufReader},
    net::SocketAddrV4,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use bpfbridge_tests::{
    Agent, Echo, NODE_IP, Netns, Topology, WORLD_IP, bpfbridge_bin, figures, links, request,
    serve_once, skip_unless_ebpf, tcp_reaches,
};
use serde_json::{Value, json};

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

/// `bpfbridge monitor`'s events, read on a thread as they come.
struct Monitor {
    child: Child,
    events: mpsc::Receiver<Value>,
}

impl Monitor {
    fn start(agent: &Agent) -> Result<Self> {
        let mut child = Command::new(bpfbridge_bin())
            .arg("--socket")
            .arg(&agent.socket)
            .arg("monitor")
            .stdout(Stdio::piped())
            .spawn()?;
        let stdout = child.stdout.take().context("monitor's stdout")?;
        let (sender, events) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(event) = serde_json::from_str(&line)
                    && sender.send(event).is_err()
                {
                    return;
                }
            }
        });
        // Let it subscribe before the drift is made.
        thread::sleep(Duration::from_millis(300));
        Ok(Monitor { child, events })
    }

    /// The first repair event of `reason` within the repair wait.
    fn repair_event(&self, reason: &str) -> Option<Value> {
        let deadline = Instant::now() + REPAIR_WAIT;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            let event = self.events.recv_timeout(left).ok()?;
            if event["Kind"] == "repair" && event["Reason"] == reason {
                return Some(event);
            }
        }
        None
    }

    /// The repair events that came so far.
    fn repairs_so_far(&self) -> Vec<Value> {
        self.events
            .try_iter()
            .filter(|e| e["Kind"] == "repair")
            .collect()
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A count of `info`'s `Repairs`.
fn repair_count(agent: &Agent, kind: &str) -> Result<u64> {
    Ok(repairs(agent)?[kind].as_u64().unwrap_or(0))
}

/// The default network's bridge, as the agent names it.
const BRIDGE: &str = bpfbridge::service::DEFAULT_BRIDGE;

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
    // `info` shows it too, with everything else that could not be repaired.
    let unrepaired = agent.cli_json(&["info"])?["Unrepaired"].clone();
    assert_eq!(unrepaired, json!([format!("container lost: {error}")]));

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

impl Web {
    /// Makes a drift under the running agent, then waits for `kind`'s counter to move, a
    /// `monitor` event of `reason` and the published port to answer; records how long each
    /// took as the figures of `figure`. Nothing may be left unrepaired.
    fn repaired_after(
        &self,
        figure: &str,
        kind: &str,
        reason: &str,
        drift: impl FnOnce() -> Result<()>,
    ) -> Result<()> {
        let agent = &self.agent;
        let monitor = Monitor::start(agent)?;
        let before = repair_count(agent, kind)?;
        let start = Instant::now();
        drift()?;
        within_repair_wait(|| Ok(repair_count(agent, kind)? > before))?.with_context(|| {
            format!(
                "{kind} did not move within {REPAIR_WAIT:?}: {}\n{}",
                repairs(agent).unwrap_or_default(),
                agent.log_tail(30)
            )
        })?;
        let repaired = start.elapsed();
        let event = monitor
            .repair_event(reason)
            .with_context(|| format!("no {reason} event from monitor"))?;
        ensure!(
            event["Destination"].as_str().is_some_and(|d| !d.is_empty()),
            "the event names what was repaired: {event}"
        );
        let answered = within_repair_wait(|| {
            Ok(tcp_reaches(
                &self.world,
                self.published,
                Duration::from_millis(500),
            ))
        })?;
        ensure!(
            answered.is_some(),
            "the published port does not answer again\n{}",
            agent.log_tail(30)
        );
        let answered = start.elapsed();
        eprintln!(
            "{figure}: {kind} counted after {repaired:?}, the port answered after {answered:?}"
        );
        figures::record(
            figure,
            json!({
                "kind": kind,
                "repaired_ms": repaired.as_millis() as u64,
                "answered_ms": answered.as_millis() as u64,
            }),
        )?;
        let info = agent.cli_json(&["info"])?;
        ensure!(info.get("Unrepaired").is_none(), "{}", info["Unrepaired"]);
        ensure!(info["Repairs"]["Failed"] == 0, "{}", info["Repairs"]);
        Ok(())
    }
}

#[test]
fn an_agent_left_alone_repairs_nothing() -> Result<()> {
    let web = Web::start()?;
    let monitor = Monitor::start(&web.agent)?;
    // Two passes at least, on a node where nothing drifts.
    thread::sleep(bpfbridge::service::REPAIR_INTERVAL * 2 + Duration::from_millis(500));
    let info = web.agent.cli_json(&["info"])?;
    let counts = info["Repairs"].as_object().context("Repairs")?;
    for (kind, count) in counts {
        ensure!(count == 0, "{kind} is {count}: {}", web.agent.log_tail(30));
    }
    ensure!(info.get("Unrepaired").is_none(), "{}", info["Unrepaired"]);
    let events = monitor.repairs_so_far();
    ensure!(events.is_empty(), "{events:?}");
    Ok(())
}

#[test]
fn a_deleted_bridge_is_made_again_and_its_veth_put_back() -> Result<()> {
    let web = Web::start()?;
    let node = &web.topology.node;
    web.repaired_after(
        "repair_bridge_deleted",
        "BridgeRecreated",
        "bridge_recreated",
        || node.ip(&["link", "del", BRIDGE]).map(drop),
    )?;
    assert_eq!(repair_count(&web.agent, "VethReattached")?, 1);
    let veths = node_veths(&web.topology)?;
    let shown = node.ip(&["-o", "link", "show", "master", BRIDGE])?;
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(shown.contains(&veths[0]), "{shown}");
    Ok(())
}

#[test]
fn a_bridge_set_down_is_set_up() -> Result<()> {
    let web = Web::start()?;
    let node = &web.topology.node;
    web.repaired_after("repair_bridge_down", "BridgeSetUp", "bridge_set_up", || {
        node.ip(&["link", "set", BRIDGE, "down"]).map(drop)
    })
}

#[test]
fn a_removed_gateway_address_is_given_back() -> Result<()> {
    let web = Web::start()?;
    let node = &web.topology.node;
    let shown = node.ip(&["-o", "-4", "addr", "show", "dev", BRIDGE])?;
    let gateway = String::from_utf8_lossy(&shown.stdout)
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .context("the bridge's address")?
        .to_string();
    web.repaired_after(
        "repair_gateway_address",
        "BridgeAddressRestored",
        "bridge_address_restored",
        || node.ip(&["addr", "del", &gateway, "dev", BRIDGE]).map(drop),
    )?;
    let shown = node.ip(&["-o", "-4", "addr", "show", "dev", BRIDGE])?;
    assert!(String::from_utf8_lossy(&shown.stdout).contains(&gateway));
    Ok(())
}

/// The route to the default network's subnet on its bridge, as `ip -o route` shows it.
fn subnet_route(node: &Netns) -> Result<Option<String>> {
    let shown = node.ip(&["-o", "-4", "route", "show", "dev", BRIDGE])?;
    Ok(String::from_utf8_lossy(&shown.stdout)
        .lines()
        .find(|line| line.contains("proto kernel"))
        .map(|line| line.trim().to_string()))
}

#[test]
fn a_deleted_subnet_route_is_added_again() -> Result<()> {
    let web = Web::start()?;
    let node = &web.topology.node;
    let before = subnet_route(node)?.context("the bridge's subnet route")?;
    let subnet = before
        .split_whitespace()
        .next()
        .context("the route's destination")?
        .to_string();
    web.repaired_after(
        "repair_subnet_route",
        "SubnetRouteRestored",
        "subnet_route_restored",
        || node.ip(&["route", "del", &subnet, "dev", BRIDGE]).map(drop),
    )?;
    // As the kernel made it: same destination, scope, source.
    assert_eq!(subnet_route(node)?, Some(before));
    // And the node reaches the container again.
    let inspected = web.agent.cli_json(&["container", "inspect", "web"])?;
    // One container's inspection, or a list of them as Docker prints it.
    let container = inspected.get(0).unwrap_or(&inspected);
    let container_ip = container["NetworkSettings"]["IPAddress"]
        .as_str()
        .with_context(|| format!("the container's address in {inspected}"))?
        .parse()?;
    ensure!(tcp_reaches(
        &node.path(),
        SocketAddrV4::new(container_ip, 80),
        Duration::from_secs(2)
    ));
    Ok(())
}

#[test]
fn ip_forward_turned_off_is_turned_on() -> Result<()> {
    let web = Web::start()?;
    let node = &web.topology.node;
    web.repaired_after(
        "repair_ip_forward",
        "SysctlRestored",
        "sysctl_restored",
        || {
            node.exec("sysctl", &["-qw", "net.ipv4.ip_forward=0"])
                .map(drop)
        },
    )?;
    let value = node.exec("sysctl", &["-n", "net.ipv4.ip_forward"])?;
    assert_eq!(String::from_utf8_lossy(&value.stdout).trim(), "1");
    Ok(())
}

/// The pin of the TC link on the container's node-side veth.
fn tc_link_pin(web: &Web) -> Result<PathBuf> {
    let veths = node_veths(&web.topology)?;
    ensure!(veths.len() == 1, "one node-side veth: {veths:?}");
    let pin = web
        .agent
        .pin_dir
        .join("links")
        .join(format!("tc_{}", veths[0]));
    ensure!(pin.exists(), "{} is pinned", pin.display());
    Ok(pin)
}

#[test]
fn a_deleted_tc_link_pin_is_attached_again() -> Result<()> {
    if skip_unless_ebpf("the TC link pins are the eBPF dataplane's") {
        return Ok(());
    }
    let web = Web::start()?;
    let pin = tc_link_pin(&web)?;
    deleted_link_pin_is_pinned_again(&web, &pin, "repair_tc_link_pin_deleted")
}

#[test]
fn a_detached_container_program_is_attached_again() -> Result<()> {
    if skip_unless_ebpf("the TC links are the eBPF dataplane's") {
        return Ok(());
    }
    let web = Web::start()?;
    let pin = tc_link_pin(&web)?;
    let pin_arg = pin.display().to_string();
    web.repaired_after(
        "repair_tc_link_detached",
        "ProgramReattached",
        "program_reattached",
        || {
            let out = Command::new("bpftool")
                .args(["link", "detach", "pinned", &pin_arg])
                .output()
                .context("running bpftool")?;
            ensure!(
                out.status.success(),
                "bpftool link detach: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            Ok(())
        },
    )
}

/// An emptied IPv6 slot of the container program arrays (as `bpftool map delete` leaves
/// it) would make every container's IPv6 (or its masquerade, its links through
/// `icc=false`, its errors and fragmented replies) a counted drop: each slot gets its
/// program back.
#[test]
fn an_emptied_ipv6_program_slot_is_filled_again() -> Result<()> {
    use aya::maps::{Map, MapData, ProgramArray};
    use dataplane_common::{
        CONTAINER_IPV6_SLOT, CONTAINER_PROGRAMS, CONTAINER6_LINK_SLOT, CONTAINER6_MASQUERADE_SLOT,
        CONTAINER6_PROGRAMS, CONTAINER6_REPLY_SLOT,
    };
    if skip_unless_ebpf("the container program array is the eBPF dataplane's") {
        return Ok(());
    }
    let web = Web::start()?;
    let slots = [
        (CONTAINER_PROGRAMS, CONTAINER_IPV6_SLOT),
        (CONTAINER6_PROGRAMS, CONTAINER6_MASQUERADE_SLOT),
        (CONTAINER6_PROGRAMS, CONTAINER6_REPLY_SLOT),
        (CONTAINER6_PROGRAMS, CONTAINER6_LINK_SLOT),
    ];
    web.repaired_after(
        "repair_ipv6_program_slot_emptied",
        "ProgramReattached",
        "program_reattached",
        || {
            for (array, slot) in slots {
                let map = MapData::from_pin(web.agent.pin_dir.join(array))?;
                let mut programs = ProgramArray::try_from(Map::ProgramArray(map))?;
                programs.clear_index(&slot)?;
            }
            Ok(())
        },
    )?;
    for (array, slot) in slots {
        let map = MapData::from_pin(web.agent.pin_dir.join(array))?;
        ensure!(
            program_in_slot(&map, slot)?.is_some(),
            "{array}'s slot {slot} is filled again"
        );
    }
    Ok(())
}

/// The id of the program in `slot` of a pinned program array (what the kernel returns for
/// a lookup from user space), `None` for an empty slot.
fn program_in_slot(map: &aya::maps::MapData, slot: u32) -> Result<Option<u32>> {
    use std::os::fd::{AsFd as _, AsRawFd as _};
    /// `union bpf_attr` as BPF_MAP_LOOKUP_ELEM reads it.
    #[repr(C)]
    struct LookupAttr {
        map_fd: u32,
        _pad: u32,
        key: u64,
        value: u64,
        flags: u64,
    }
    const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
    let mut id = 0u32;
    let attr = LookupAttr {
        map_fd: map.fd().as_fd().as_raw_fd() as u32,
        _pad: 0,
        key: &slot as *const u32 as u64,
        value: &mut id as *mut u32 as u64,
        flags: 0,
    };
    // SAFETY: the attribute points at live key and value buffers of the map's sizes.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_LOOKUP_ELEM,
            &attr as *const LookupAttr,
            std::mem::size_of::<LookupAttr>(),
        )
    };
    match ret {
        0 => Ok(Some(id)),
        _ if std::io::Error::last_os_error().raw_os_error() == Some(libc::ENOENT) => Ok(None),
        _ => Err(std::io::Error::last_os_error().into()),
    }
}

/// An emptied IPv6 slot of the uplink's program array would send the uplink's IPv6 to the
/// node's stack untranslated, and an emptied slot of the arrays the uplinks' IPv6 programs
/// tail-call (`UPLINK6_XDP_PROGRAMS`, `UPLINK6_TC_PROGRAMS`) the replies of masqueraded
/// IPv6 flows: each slot gets its program back.
#[test]
fn an_emptied_uplink_ipv6_program_slot_is_filled_again() -> Result<()> {
    use aya::maps::{Map, MapData, ProgramArray};
    use dataplane_common::{
        UPLINK_IPV6_SLOT, UPLINK_L3_IPV6_SLOT, UPLINK_TC_PROGRAMS, UPLINK_XDP_PROGRAMS,
        UPLINK6_L3_MASQUERADE_SLOT, UPLINK6_MASQUERADE_SLOT, UPLINK6_TC_PROGRAMS,
        UPLINK6_XDP_PROGRAMS,
    };
    if skip_unless_ebpf("the uplink program arrays are the eBPF dataplane's") {
        return Ok(());
    }
    let web = Web::start()?;
    let slots = [
        (UPLINK_XDP_PROGRAMS, UPLINK_IPV6_SLOT),
        (UPLINK_TC_PROGRAMS, UPLINK_IPV6_SLOT),
        (UPLINK_TC_PROGRAMS, UPLINK_L3_IPV6_SLOT),
        (UPLINK6_XDP_PROGRAMS, UPLINK6_MASQUERADE_SLOT),
        (UPLINK6_TC_PROGRAMS, UPLINK6_MASQUERADE_SLOT),
        (UPLINK6_TC_PROGRAMS, UPLINK6_L3_MASQUERADE_SLOT),
    ];
    web.repaired_after(
        "repair_uplink_ipv6_program_slot_emptied",
        "ProgramReattached",
        "program_reattached",
        || {
            for (array, slot) in slots {
                let map = MapData::from_pin(web.agent.pin_dir.join(array))?;
                let mut programs = ProgramArray::try_from(Map::ProgramArray(map))?;
                programs.clear_index(&slot)?;
            }
            Ok(())
        },
    )?;
    // The clears may straddle two repair passes: wait for the second too.
    let filled = |(array, slot): (&str, u32)| -> Result<bool> {
        let map = MapData::from_pin(web.agent.pin_dir.join(array))?;
        Ok(program_in_slot(&map, slot)?.is_some())
    };
    for (array, slot) in slots {
        ensure!(
            within_repair_wait(|| filled((array, slot)))?.is_some(),
            "{array}'s slot {slot} is filled again"
        );
    }
    Ok(())
}

/// Removes the link pin `pin` (its link's last holder: the program is detached) and checks
/// that the repair attaches the program again, in a link pinned there (figures under
/// `figure`).
fn deleted_link_pin_is_pinned_again(web: &Web, pin: &Path, figure: &str) -> Result<()> {
    ensure!(pin.exists(), "{} is pinned", pin.display());
    web.repaired_after(figure, "ProgramReattached", "program_reattached", || {
        Ok(std::fs::remove_file(pin)?)
    })?;
    ensure!(pin.exists(), "pinned again");
    Ok(())
}

/// Deletes `key` from the pinned map `map_name` under a published port, and checks that the
/// repair writes back the entry it held (figures under `figure`).
fn deleted_entry_is_written_back<K: aya::Pod, V: aya::Pod + PartialEq + std::fmt::Debug>(
    map_name: &str,
    key: K,
    figure: &str,
) -> Result<()> {
    use aya::maps::{HashMap, Map, MapData};
    let web = Web::start()?;
    let open = || -> Result<HashMap<MapData, K, V>> {
        let map = MapData::from_pin(web.agent.pin_dir.join(map_name))?;
        Ok(HashMap::try_from(Map::HashMap(map))?)
    };
    let recorded = open()?.get(&key, 0)?;
    web.repaired_after(figure, "MapEntryRestored", "map_entry_restored", || {
        Ok(open()?.remove(&key)?)
    })?;
    assert_eq!(open()?.get(&key, 0)?, recorded);
    Ok(())
}

#[test]
fn a_deleted_published_port_entry_is_written_back() -> Result<()> {
    use dataplane_common::{PUBLISHED_PORTS, PortKey, PortTarget};
    if skip_unless_ebpf("PUBLISHED_PORTS is the eBPF dataplane's map") {
        return Ok(());
    }
    let key = PortKey {
        host_ip_be: 0,
        host_port_be: 8080u16.to_be(),
        proto: 6,
        _pad: 0,
    };
    deleted_entry_is_written_back::<PortKey, PortTarget>(
        PUBLISHED_PORTS,
        key,
        "repair_published_port_entry",
    )
}

/// Without its NODE_ADDRS entry the node's address is no published address: the port on
/// 0.0.0.0 stops answering there until the entry is back.
#[test]
fn a_deleted_node_address_entry_is_written_back() -> Result<()> {
    use dataplane_common::{NODE_ADDRS, NodeAddr, NodeAddrKey};
    if skip_unless_ebpf("NODE_ADDRS is the eBPF dataplane's map") {
        return Ok(());
    }
    let key = NodeAddrKey {
        addr_be: u32::from(NODE_IP).to_be(),
    };
    deleted_entry_is_written_back::<NodeAddrKey, NodeAddr>(
        NODE_ADDRS,
        key,
        "repair_node_address_entry",
    )
}

/// `iptables -S` of both tables in the node's namespace.
fn iptables_rules(node: &Netns) -> Result<Vec<String>> {
    let mut rules = Vec::new();
    for table in ["filter", "nat"] {
        let out = node.exec("iptables", &["-w", "-t", table, "-S"])?;
        rules.extend(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(|l| format!("{table} {l}")),
        );
    }
    Ok(rules)
}

#[test]
fn a_flushed_docker_chain_is_filled_again() -> Result<()> {
    if bpfbridge_tests::dataplane() != "iptables" {
        eprintln!("skipped: Docker's chains are the iptables dataplane's");
        return Ok(());
    }
    let web = Web::start()?;
    let node = &web.topology.node;
    let before = iptables_rules(node)?;
    web.repaired_after(
        "repair_docker_chain_flushed",
        "IptablesRuleRestored",
        "iptables_rule_restored",
        || {
            node.exec("iptables", &["-w", "-F", "DOCKER"])?;
            node.exec("iptables", &["-w", "-t", "nat", "-F", "DOCKER"])
                .map(drop)
        },
    )?;
    // The same rules, in the same order, as Docker's.
    assert_eq!(iptables_rules(node)?, before);
    Ok(())
}

#[test]
fn a_deleted_uplink_link_pin_is_attached_again() -> Result<()> {
    if skip_unless_ebpf("the uplink's link is the eBPF dataplane's") {
        return Ok(());
    }
    let web = Web::start()?;
    let info = web.agent.cli_json(&["info"])?;
    let uplink = &info["Uplinks"][0];
    let name = uplink["Name"].as_str().context("Uplinks[0].Name")?;
    // The hook `--uplink-hook auto` chose: TC on the lab's veth uplink.
    let pin_name = match uplink["Hook"].as_str().context("Uplinks[0].Hook")? {
        "xdp" => format!("xdp_{name}"),
        _ => format!("uplink_tc_{name}"),
    };
    let pin = web.agent.pin_dir.join("links").join(pin_name);
    deleted_link_pin_is_pinned_again(&web, &pin, "repair_uplink_link_pin_deleted")
}

#[test]
fn a_deleted_socket_program_link_pin_is_attached_again() -> Result<()> {
    if skip_unless_ebpf("the cgroup socket programs are the eBPF dataplane's") {
        return Ok(());
    }
    let web = Web::start()?;
    let pin = web.agent.pin_dir.join("links").join("cgroup_sock_connect4");
    deleted_link_pin_is_pinned_again(&web, &pin, "repair_cgroup_link_pin_deleted")
}
