//! Upgrades across map layout changes: an agent that finds maps pinned with an earlier
//! layout migrates their entries under established connections, swaps the programs through
//! the pinned links and removes the earlier pins; an agent that finds a newer layout (a
//! downgrade) refuses to start, says what to do, and leaves the pins alone.
//!
//! The earlier layout's pins are made the cheap way: a current agent sets the connections
//! up and is killed, then its NAT_FLOWS pin is replaced by a map of the previous layout
//! (`dataplane_common::layout::v1`) holding the same flows, and the layout record is
//! removed, which is what an agent from before versioned layouts leaves behind. The
//! programs still attached keep serving the connections from the map they hold, so only a
//! correct migration of the v1 entries lets the new agent's programs carry them on.
//!
//! The iptables dataplane pins no maps: the tests are skipped there.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use aya::maps::{HashMap, Map, MapData};
use bpfbridge_tests::{Agent, NODE_IP, Topology, WORLD_IP, figures, in_netns, skip_unless_ebpf};
use dataplane_common::{
    CONNTRACK, CONTAINER6_MASQUERADE_SLOT, CONTAINER6_PROGRAMS, CONTAINER6_PROGRAMS_MAX,
    CONTAINER6_REPLY_SLOT, FlowKey, NAT_FLOWS, NatFlow,
    layout::{self, LAYOUT, LayoutKey, v1},
};

/// The flag the object's hash maps are made with.
const BPF_F_NO_PREALLOC: u32 = 1;
const NO_MAPS: &str = "the iptables dataplane pins no maps";
const PUBLISHED_PORT: u16 = 8080;
const WORLD_PORT: u16 = 7500;

fn open_map(path: &Path) -> Result<Map> {
    let data = MapData::from_pin(path).with_context(|| format!("opening {}", path.display()))?;
    Ok(Map::from_map_data(data)?)
}

/// The kernel's id of the map pinned at `path`: the same id is the same map.
fn map_id(path: &Path) -> Result<u32> {
    Ok(MapData::from_pin(path)?.info()?.id())
}

/// The value size of the map pinned at `path`.
fn value_size(path: &Path) -> Result<u32> {
    Ok(MapData::from_pin(path)?.info()?.value_size())
}

/// Replaces the NAT_FLOWS pin with a map of layout v1 holding the same flows and removes
/// the layout record, as an agent from before versioned layouts pinned them. Returns the
/// number of flows.
fn pin_previous_layout(pin_dir: &Path) -> Result<usize> {
    let max_entries = MapData::from_pin(pin_dir.join(NAT_FLOWS))?
        .info()?
        .max_entries();
    let current = open_map(&pin_dir.join(NAT_FLOWS))?;
    let current: HashMap<&MapData, FlowKey, NatFlow> = HashMap::try_from(&current)?;
    let flows: Vec<(FlowKey, NatFlow)> = current.iter().collect::<Result<_, _>>()?;
    let mut previous =
        HashMap::<MapData, FlowKey, v1::NatFlow>::create(max_entries, BPF_F_NO_PREALLOC)?;
    for (key, flow) in &flows {
        let old = v1::NatFlow {
            frontend_ip_be: flow.frontend_ip_be,
            frontend_port_be: flow.frontend_port_be,
            state: flow.state,
            _pad0: 0,
            client_ip_be: flow.client_ip_be,
            client_port_be: flow.client_port_be,
            _pad1: 0,
            last_seen_ns: flow.last_seen_ns,
        };
        previous.insert(key, old, 0)?;
    }
    std::fs::remove_file(pin_dir.join(NAT_FLOWS))?;
    previous.pin(pin_dir.join(NAT_FLOWS))?;
    std::fs::remove_file(pin_dir.join(LAYOUT))?;
    Ok(flows.len())
}

/// A TCP connection kept open through the dataplane.
struct Connection {
    client: TcpStream,
    server: TcpStream,
}

impl Connection {
    fn open(
        client_ns: &Path,
        server_ns: &Path,
        listen: SocketAddrV4,
        to: SocketAddrV4,
    ) -> Result<Self> {
        let listener = in_netns(server_ns, || TcpListener::bind(listen))?;
        let client = in_netns(client_ns, || {
            TcpStream::connect_timeout(&to.into(), Duration::from_secs(3))
        })
        .with_context(|| format!("connecting to {to}"))?;
        let (server, _) = listener.accept()?;
        for stream in [&client, &server] {
            stream.set_read_timeout(Some(Duration::from_secs(3)))?;
        }
        Ok(Connection { client, server })
    }

    /// One byte each way: whether the connection still carries data.
    fn carries(&mut self) -> bool {
        let mut byte = [0u8; 1];
        self.client.write_all(b"x").is_ok()
            && self.server.read_exact(&mut byte).is_ok()
            && self.server.write_all(b"y").is_ok()
            && self.client.read_exact(&mut byte).is_ok()
    }
}

/// A figure of the agent's "migrated the pinned maps" log line, such as `entries`.
fn logged_figure(log: &str, name: &str) -> Option<u64> {
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains("migrated the pinned maps"))?;
    let field = format!(" {name}=");
    let start = line.find(&field)? + field.len();
    line[start..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// A container publishing 8080:80 and another on the default (masquerading) network, with
/// a TCP connection through each that carries bytes; and the first one's namespace.
fn live_connections(topology: &Topology, agent: &Agent) -> Result<([Connection; 2], PathBuf)> {
    let (_, web) = agent.create_container(&["--name", "web", "-p", "8080:80"])?;
    let (_, app) = agent.create_container(&["--name", "app"])?;
    let world = topology.world.path();
    let mut connections = [
        // Through the published port: its state is in NAT_FLOWS.
        Connection::open(
            &world,
            &web,
            SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 80),
            SocketAddrV4::new(NODE_IP, PUBLISHED_PORT),
        )?,
        // Through masquerade: its state is in CONNTRACK.
        Connection::open(
            &app,
            &world,
            SocketAddrV4::new(WORLD_IP, WORLD_PORT),
            SocketAddrV4::new(WORLD_IP, WORLD_PORT),
        )?,
    ];
    for c in &mut connections {
        ensure!(c.carries(), "a connection before the upgrade");
    }
    Ok((connections, web))
}

#[test]
fn an_upgrade_migrates_flows_of_the_previous_layout_under_live_connections() -> Result<()> {
    if skip_unless_ebpf(NO_MAPS) {
        return Ok(());
    }
    let topology = Topology::new()?;
    let mut agent = Agent::start(&topology)?;
    let (mut connections, _) = live_connections(&topology, &agent)?;
    agent.kill();
    let pin_dir = agent.pin_dir.clone();
    let conntrack_before = map_id(&pin_dir.join(CONNTRACK))?;
    let flows = pin_previous_layout(&pin_dir)?;
    ensure!(flows >= 1, "the published-port flow is in NAT_FLOWS");
    ensure!(value_size(&pin_dir.join(NAT_FLOWS))? == 24);
    for c in &mut connections {
        ensure!(c.carries(), "a connection with the agent down");
    }

    let started = Instant::now();
    agent.spawn()?;
    let ready = started.elapsed();
    let lost = connections
        .iter_mut()
        .map(|c| !c.carries() as usize)
        .sum::<usize>();

    let log = agent.log();
    let leftovers = pin_dir.join("retired").exists();
    let nat_flows = open_map(&pin_dir.join(NAT_FLOWS))?;
    let nat_flows: HashMap<&MapData, FlowKey, NatFlow> = HashMap::try_from(&nat_flows)?;
    let migrated = nat_flows.iter().count();
    let record = open_map(&pin_dir.join(LAYOUT))?;
    let record: HashMap<&MapData, LayoutKey, u32> = HashMap::try_from(&record)?;
    let recorded = record.get(&LayoutKey::of(NAT_FLOWS), 0).ok();
    let flows_out = String::from_utf8(agent.cli(&["conntrack", "ls"])?.stdout)?;

    figures::record(
        "upgrade",
        serde_json::json!({
            "connections": connections.len(),
            "connections_lost": lost,
            "entries_migrated": logged_figure(&log, "entries"),
            "migration_ms": logged_figure(&log, "millis"),
            // From the first copy to the last: the programs are swapped in between.
            "swap_ms": logged_figure(&log, "swap_millis"),
            "agent_ready_ms": ready.as_millis() as u64,
        }),
    )?;
    ensure!(
        lost == 0,
        "{lost} connections lost across the upgrade: {log}"
    );
    ensure!(!leftovers, "retired pins left");
    ensure!(
        value_size(&pin_dir.join(NAT_FLOWS))? == 40,
        "NAT_FLOWS in the new layout"
    );
    ensure!(
        migrated >= flows,
        "{migrated} flows after the upgrade, {flows} before"
    );
    ensure!(
        logged_figure(&log, "entries").is_some_and(|n| n >= flows as u64),
        "the agent says it migrated the entries: {log}"
    );
    ensure!(
        recorded == Some(2),
        "the record says NAT_FLOWS is at v2: {recorded:?}"
    );
    ensure!(
        map_id(&pin_dir.join(CONNTRACK))? == conntrack_before,
        "CONNTRACK, whose layout did not change, is the same map"
    );
    // The new layout counts: the published-port flow shows its packets.
    ensure!(
        flows_out.lines().any(|l| l.starts_with("dnat tcp")
            && l.contains("packets=")
            && !l.contains("packets=0 ")),
        "{flows_out}"
    );
    Ok(())
}

/// The same upgrade from a real agent of the previous layout, its own pins and programs,
/// when `BPFBRIDGE_UPGRADE_FROM` names its binary (`cargo xtask bench` builds one, in
/// release, into target/bench/upgrade-from/; building one in CI is too slow, so CI skips
/// this).
#[test]
fn an_upgrade_from_an_agent_of_the_previous_layout() -> Result<()> {
    if skip_unless_ebpf(NO_MAPS) {
        return Ok(());
    }
    let Some(previous) = std::env::var_os("BPFBRIDGE_UPGRADE_FROM") else {
        // Past the harness's capture, like the suite's other skips.
        writeln!(
            std::io::stderr(),
            "an_upgrade_from_an_agent_of_the_previous_layout: skipped: \
             BPFBRIDGE_UPGRADE_FROM names no agent of the previous layout"
        )?;
        return Ok(());
    };
    let topology = Topology::new()?;
    let mut agent = Agent::start(&topology)?;
    // The previous agent from scratch: its own pins, of its own layout.
    agent.kill();
    std::fs::remove_dir_all(&agent.pin_dir)?;
    agent.set_bin(Path::new(&previous));
    agent.spawn()?;
    let pin_dir = agent.pin_dir.clone();
    ensure!(
        value_size(&pin_dir.join(NAT_FLOWS))? == 24 && !pin_dir.join(LAYOUT).exists(),
        "the previous agent pinned the previous layout"
    );
    let (mut connections, web) = live_connections(&topology, &agent)?;
    let conntrack_before = map_id(&pin_dir.join(CONNTRACK))?;

    agent.stop();
    agent.set_bin(&bpfbridge_tests::bpfbridge_bin());
    agent.spawn()?;
    let lost = connections
        .iter_mut()
        .map(|c| !c.carries() as usize)
        .sum::<usize>();
    let log = agent.log();
    figures::record(
        "upgrade_from_previous_agent",
        serde_json::json!({
            "connections": connections.len(),
            "connections_lost": lost,
            "entries_migrated": logged_figure(&log, "entries"),
            "migration_ms": logged_figure(&log, "millis"),
            "swap_ms": logged_figure(&log, "swap_millis"),
        }),
    )?;
    ensure!(
        lost == 0,
        "{lost} connections lost across the upgrade: {log}"
    );
    ensure!(!pin_dir.join("retired").exists(), "retired pins left");
    ensure!(value_size(&pin_dir.join(NAT_FLOWS))? == 40);
    ensure!(map_id(&pin_dir.join(CONNTRACK))? == conntrack_before);
    ensure!(
        logged_figure(&log, "entries").is_some_and(|n| n >= 1),
        "the agent migrated the published-port flow: {log}"
    );
    // A new connection through the published port, opened by the new programs.
    let mut after = Connection::open(
        &topology.world.path(),
        &web,
        SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 80),
        SocketAddrV4::new(NODE_IP, PUBLISHED_PORT),
    )?;
    ensure!(after.carries(), "a new connection after the upgrade");
    Ok(())
}

/// An upgrade killed after it moved the old map aside, before the new one was made: the
/// next start carries the retired map's flows over all the same.
#[test]
fn an_upgrade_that_stopped_half_way_resumes() -> Result<()> {
    if skip_unless_ebpf(NO_MAPS) {
        return Ok(());
    }
    let topology = Topology::new()?;
    let mut agent = Agent::start(&topology)?;
    let (mut connections, _) = live_connections(&topology, &agent)?;
    agent.kill();
    let pin_dir = agent.pin_dir.clone();
    let flows = pin_previous_layout(&pin_dir)?;
    let retired = pin_dir.join("retired").join("v1");
    std::fs::create_dir_all(&retired)?;
    MapData::from_pin(pin_dir.join(NAT_FLOWS))?.pin(retired.join(NAT_FLOWS))?;
    std::fs::remove_file(pin_dir.join(NAT_FLOWS))?;

    agent.spawn()?;
    let lost = connections
        .iter_mut()
        .map(|c| !c.carries() as usize)
        .sum::<usize>();
    ensure!(lost == 0, "{lost} connections lost: {}", agent.log());
    ensure!(!pin_dir.join("retired").exists(), "retired pins left");
    let nat_flows = open_map(&pin_dir.join(NAT_FLOWS))?;
    let nat_flows: HashMap<&MapData, FlowKey, NatFlow> = HashMap::try_from(&nat_flows)?;
    ensure!(
        nat_flows.iter().count() >= flows,
        "the flows were carried over"
    );
    Ok(())
}

/// A program array pinned with fewer slots than this build tail-calls (an agent from before
/// `container_reply6`'s slot of `CONTAINER6_PROGRAMS`) is made anew with this build's
/// slots and filled, under live connections.
#[test]
fn a_program_array_with_fewer_slots_is_made_anew() -> Result<()> {
    if skip_unless_ebpf(NO_MAPS) {
        return Ok(());
    }
    let topology = Topology::new()?;
    let mut agent = Agent::start(&topology)?;
    let (mut connections, _) = live_connections(&topology, &agent)?;
    agent.kill();
    let pin = agent.pin_dir.join(CONTAINER6_PROGRAMS);
    std::fs::remove_file(&pin)?;
    let out = std::process::Command::new("bpftool")
        .args(["map", "create"])
        .arg(&pin)
        .args([
            "type",
            "prog_array",
            "key",
            "4",
            "value",
            "4",
            "entries",
            "1",
            "name",
            "CONTAINER6_PROG",
        ])
        .output()
        .context("running bpftool")?;
    ensure!(
        out.status.success(),
        "bpftool map create: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    agent.spawn()?;
    let lost = connections
        .iter_mut()
        .map(|c| !c.carries() as usize)
        .sum::<usize>();
    ensure!(lost == 0, "{lost} connections lost: {}", agent.log());
    ensure!(!agent.pin_dir.join("retired").exists(), "retired pins left");
    let programs = MapData::from_pin(&pin)?;
    ensure!(
        programs.info()?.max_entries() == CONTAINER6_PROGRAMS_MAX,
        "{CONTAINER6_PROGRAMS} has this build's slots"
    );
    for slot in [CONTAINER6_MASQUERADE_SLOT, CONTAINER6_REPLY_SLOT] {
        // A lookup finds a program in a filled slot only.
        let key = slot.to_le_bytes().map(|b| b.to_string());
        let out = std::process::Command::new("bpftool")
            .args(["map", "lookup", "pinned"])
            .arg(&pin)
            .arg("key")
            .args(key)
            .output()
            .context("running bpftool")?;
        ensure!(
            out.status.success(),
            "{CONTAINER6_PROGRAMS}'s slot {slot} is filled: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

#[test]
fn a_newer_layout_is_refused_with_what_to_do_and_its_pins_kept() -> Result<()> {
    if skip_unless_ebpf(NO_MAPS) {
        return Ok(());
    }
    let topology = Topology::new()?;
    let mut agent = Agent::start(&topology)?;
    agent.create_container(&["--name", "web", "-p", "8080:80"])?;
    agent.kill();
    let pin_dir = agent.pin_dir.clone();
    let newer = layout::current(NAT_FLOWS).context("NAT_FLOWS")?.version + 1;
    {
        let record = open_map(&pin_dir.join(LAYOUT))?;
        let mut record = record;
        let mut record: HashMap<&mut MapData, LayoutKey, u32> = HashMap::try_from(&mut record)?;
        record.insert(LayoutKey::of(NAT_FLOWS), newer, 0)?;
    }
    let nat_flows = map_id(&pin_dir.join(NAT_FLOWS))?;
    let error = agent.spawn_expecting_failure()?;
    ensure!(
        error.contains("newer bpfbridge") && error.contains(&pin_dir.display().to_string()),
        "the error names the cause and the pin dir: {error}"
    );
    ensure!(
        map_id(&pin_dir.join(NAT_FLOWS))? == nat_flows,
        "the newer agent's NAT_FLOWS is left as it was"
    );
    Ok(())
}

/// A map added to the programs needs a layout version (`dataplane_common::layout::CURRENT`),
/// or no upgrade could tell its layouts apart; and every versioned map is pinned.
#[test]
fn every_pinned_map_has_a_layout_version() -> Result<()> {
    if skip_unless_ebpf(NO_MAPS) {
        return Ok(());
    }
    let topology = Topology::new()?;
    let agent = Agent::start(&topology)?;
    let mut pinned: Vec<String> = std::fs::read_dir(&agent.pin_dir)?
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name != LAYOUT)
        .collect();
    pinned.sort();
    let mut versioned: Vec<String> = layout::CURRENT.iter().map(|l| l.name.to_string()).collect();
    versioned.sort();
    ensure!(
        pinned == versioned,
        "pinned maps {pinned:?}, versioned maps {versioned:?}: add a new map to \
         dataplane_common::layout::CURRENT"
    );
    for l in layout::CURRENT {
        let info = MapData::from_pin(agent.pin_dir.join(l.name))?.info()?;
        ensure!(
            (info.key_size(), info.value_size()) == (l.key_size, l.value_size),
            "{}: the kernel has {}-byte keys and {}-byte values, the layout says {} and {}",
            l.name,
            info.key_size(),
            info.value_size(),
            l.key_size,
            l.value_size
        );
    }
    Ok(())
}
