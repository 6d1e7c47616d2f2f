//! Every interface of the node, as Docker's rules (which name no interface) see them: a
//! port published on 0.0.0.0 answers on a second interface with its own address, on one
//! that appears while the agent runs (hotplug, a VPN coming up), and no more on one that
//! goes; masquerade leaves by the interface the route picks with that interface's address;
//! an explicit `--uplink` list restricts the eBPF dataplane to those interfaces; an agent
//! restarted on another hook swaps the uplink's program over.
//!
//! The second interface is a veth to a second world (TEST-NET-1, 192.0.2.0/24) with TX
//! offload on, so that its frames carry partial checksums.
//!
//! A layer-3 interface (no Ethernet header: WireGuard, a VPN's tun, ipip, GRE) answers and
//! masquerades too: a tun device on each side (TEST-NET-3, 203.0.113.0/30), joined by a
//! relay in the test as a user-space VPN (wireguard-go, OpenVPN) joins its ends; the
//! kernel under test may lack ipip, GRE and WireGuard, never tun.

use std::{
    fs,
    net::{IpAddr, Ipv4Addr, SocketAddrV4},
    os::fd::{AsRawFd as _, OwnedFd},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use bpfbridge_lab::{TxOffload, Uplink};
use bpfbridge_tests::{
    Agent, Echo, NODE_IP, Netns, Topology, WORLD_IP, ebpf_checks, figures, in_netns, request,
    serve_once, skip_unless_ebpf, tcp_reaches,
};

const HOST_PORT: u16 = 8080;
const CONTAINER_PORT: u16 = 80;
const WORLD_PORT: u16 = 7400;
/// The second interface, on the node's side and the second world's.
const SECOND: &str = "up1";
const SECOND_NODE_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const SECOND_WORLD_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
/// The bound on how long the agent may take to follow an interface (it aims at a second).
const FOLLOWS_WITHIN: Duration = Duration::from_secs(5);
/// How long one attempt waits for an answer.
const ATTEMPT: Duration = Duration::from_millis(500);

/// A second world joined to the node by [`SECOND`]; the namespace goes on drop.
struct SecondWorld {
    world: Netns,
}

impl SecondWorld {
    fn connect(topology: &Topology) -> Result<Self> {
        let world = Netns::new("world2")?;
        let uplink = Uplink {
            node_link: SECOND.into(),
            world_link: "wl1".into(),
            node_ip: SECOND_NODE_IP,
            world_ip: SECOND_WORLD_IP,
            world_tx_offload: TxOffload::On,
            ..Uplink::default()
        };
        uplink.connect(&topology.node, &world)?;
        Ok(SecondWorld { world })
    }

    fn path(&self) -> PathBuf {
        self.world.path()
    }
}

/// The layer-3 interface: a tun device of that name on the node's side and the world's.
const TUNNEL: &str = "vpn0";
const TUNNEL_NODE_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
const TUNNEL_WORLD_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);

/// A layer-3 tunnel between the node and the world: a tun device without packet
/// information (`IFF_TUN | IFF_NO_PI`: ARPHRD_NONE, frames start at the IP header) in each
/// namespace, and a thread each way that copies packets from one to the other. The devices
/// go with their descriptors, on drop.
struct Tunnel {
    stop: Arc<AtomicBool>,
    relays: Vec<thread::JoinHandle<()>>,
}

/// `ifreq` as TUNSETIFF reads it: the name, the flags, and the rest of the union.
#[repr(C)]
struct TunRequest {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _union_rest: [u8; 22],
}

impl Tunnel {
    fn connect(topology: &Topology) -> Result<Self> {
        let node = open_tun(&topology.node, TUNNEL_NODE_IP, TUNNEL_WORLD_IP)?;
        let world = open_tun(&topology.world, TUNNEL_WORLD_IP, TUNNEL_NODE_IP)?;
        let (node, world) = (Arc::new(node), Arc::new(world));
        let stop = Arc::new(AtomicBool::new(false));
        let relays = [(node.clone(), world.clone()), (world, node)]
            .into_iter()
            .map(|(from, to)| {
                let stop = stop.clone();
                thread::spawn(move || relay(&from, &to, &stop))
            })
            .collect();
        Ok(Tunnel { stop, relays })
    }
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for relay in self.relays.drain(..) {
            let _ = relay.join();
        }
    }
}

/// Creates [`TUNNEL`] in `netns` with `local` and the peer `remote` on it, up.
fn open_tun(netns: &Netns, local: Ipv4Addr, remote: Ipv4Addr) -> Result<OwnedFd> {
    let tun = in_netns(&netns.path(), || -> Result<OwnedFd> {
        // The device belongs to the namespace of the thread that creates it.
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/net/tun")
            .context("opening /dev/net/tun")?;
        let mut request = TunRequest {
            name: [0; libc::IFNAMSIZ],
            flags: (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short,
            _union_rest: [0; 22],
        };
        request.name[..TUNNEL.len()].copy_from_slice(TUNNEL.as_bytes());
        // SAFETY: TUNSETIFF reads and writes an ifreq, which `request` is laid out as.
        let ret = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut request) };
        ensure!(ret == 0, "TUNSETIFF: {}", std::io::Error::last_os_error());
        Ok(file.into())
    })?;
    netns.ip(&[
        "addr",
        "add",
        &format!("{local}/32"),
        "peer",
        &format!("{remote}/32"),
        "dev",
        TUNNEL,
    ])?;
    netns.ip(&["link", "set", TUNNEL, "up"])?;
    Ok(tun)
}

/// Copies packets from `from` to `to` until `stop`.
fn relay(from: &OwnedFd, to: &OwnedFd, stop: &AtomicBool) {
    let mut packet = [0u8; 65536];
    while !stop.load(Ordering::Relaxed) {
        let mut ready = libc::pollfd {
            fd: from.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd, as counted; read and write within `packet`'s bounds on
        // descriptors this relay holds open.
        unsafe {
            if libc::poll(&mut ready, 1, 50) <= 0 {
                continue;
            }
            let n = libc::read(from.as_raw_fd(), packet.as_mut_ptr().cast(), packet.len());
            if n > 0 {
                libc::write(to.as_raw_fd(), packet.as_ptr().cast(), n as usize);
            }
        }
    }
}

fn published_on(ip: Ipv4Addr) -> SocketAddrV4 {
    SocketAddrV4::new(ip, HOST_PORT)
}

/// Tries `condition` until it holds, for at most [`FOLLOWS_WITHIN`]; returns how long that
/// took, or `None`.
fn within_bound(condition: impl FnMut() -> bool) -> Option<Duration> {
    bpfbridge_tests::time_until(FOLLOWS_WITHIN, condition)
}

/// A container that publishes 8080:80 and serves it.
fn publish(agent: &Agent) -> Result<(PathBuf, Echo)> {
    let (_, netns) = agent.create_container(&[
        "--name",
        "web",
        "-p",
        &format!("{HOST_PORT}:{CONTAINER_PORT}"),
    ])?;
    let echo = Echo::start(&netns, CONTAINER_PORT)?;
    Ok((netns, echo))
}

/// The address a server at `world`'s `server_ip` sees on a new connection from the
/// container.
fn masqueraded_as(world: &Path, server_ip: Ipv4Addr, container_ns: &Path) -> Result<IpAddr> {
    let server = serve_once(world, WORLD_PORT);
    let answer = request(
        container_ns,
        SocketAddrV4::new(server_ip, WORLD_PORT),
        "hi\n",
    )?;
    ensure!(answer == "pong hi\n", "unexpected answer {answer:?}");
    Ok(server.join().expect("server thread")?.ip())
}

/// The uplinks `info` shows: `(name, hook)`.
fn uplinks(agent: &Agent) -> Result<Vec<(String, String)>> {
    let info = agent.cli_json(&["info"])?;
    Ok(info["Uplinks"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|u| {
            let field = |key: &str| u[key].as_str().unwrap_or_default().to_string();
            (field("Name"), field("Hook"))
        })
        .collect())
}

/// The pins of the uplink program's links on `interface` under the agent's pin directory.
fn uplink_pins(agent: &Agent, interface: &str) -> Result<Vec<PathBuf>> {
    let info = agent.cli_json(&["info"])?;
    let links = Path::new(info["PinDir"].as_str().unwrap_or_default()).join("links");
    Ok(["xdp_", "uplink_tc_", "uplink_l3_"]
        .into_iter()
        .map(|prefix| links.join(format!("{prefix}{interface}")))
        .filter(|pin| pin.exists())
        .collect())
}

#[test]
fn a_layer3_tunnel_answers_published_ports_and_masquerades_through_it() -> Result<()> {
    let topology = Topology::new()?;
    let _tunnel = Tunnel::connect(&topology)?;
    let agent = Agent::start_on_uplinks(&topology, &[], &[])?;
    let (_, container_ns) = agent.create_container(&[
        "--name",
        "web",
        "-p",
        &format!("{HOST_PORT}:{CONTAINER_PORT}"),
    ])?;
    let world = topology.world.path();

    // From the far end of the tunnel to the port published on 0.0.0.0, at the tunnel's
    // address; the container sees the client's own address.
    let server = serve_once(&container_ns, CONTAINER_PORT);
    let answer = request(&world, published_on(TUNNEL_NODE_IP), "hi\n")
        .with_context(|| format!("through {TUNNEL}: {}", agent.log_tail(20)))?;
    ensure!(answer == "pong hi\n", "unexpected answer {answer:?}");
    let client = server.join().expect("server thread")?.ip();
    assert_eq!(client, TUNNEL_WORLD_IP, "the client's address is preserved");

    // Out through the tunnel, with the tunnel's address.
    assert_eq!(
        masqueraded_as(&world, TUNNEL_WORLD_IP, &container_ns)?,
        TUNNEL_NODE_IP
    );
    if ebpf_checks("the layer-3 uplink's program and counters") {
        assert!(uplinks(&agent)?.contains(&(TUNNEL.into(), "tc".into())));
        let pins: Vec<String> = uplink_pins(&agent, TUNNEL)?
            .iter()
            .filter_map(|pin| Some(pin.file_name()?.to_string_lossy().into_owned()))
            .collect();
        assert_eq!(pins, [format!("uplink_l3_{TUNNEL}")]);
        // The programs did it, not the node's stack.
        assert!(agent.counter("uplink_ingress.redirect.dnat")? >= 1);
        assert!(agent.counter("uplink_ingress.redirect.masquerade_reply")? >= 1);
        assert!(agent.counter("container_ingress.redirect.masquerade")? >= 1);
    }
    Ok(())
}

#[test]
fn xdp_on_a_layer3_uplink_is_refused_in_its_own_error() -> Result<()> {
    if skip_unless_ebpf("the hooks are the eBPF dataplane's") {
        return Ok(());
    }
    let topology = Topology::builder()
        .world_tx_offload(TxOffload::Off)
        .build()?;
    let _tunnel = Tunnel::connect(&topology)?;
    let agent = Agent::start_on_uplinks(&topology, &[], &["--uplink-hook", "xdp"])?;
    let info = agent.cli_json(&["info"])?;
    let uplink = |name: &str| {
        info["Uplinks"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|u| u["Name"] == name)
            .cloned()
            .unwrap_or_default()
    };
    // The Ethernet uplink has its XDP; the tunnel says why it has none.
    assert_eq!(uplink("up0")["Hook"], "xdp");
    let tunnel = uplink(TUNNEL);
    assert_eq!(tunnel["Hook"], "none", "{tunnel}");
    let error = tunnel["Error"].as_str().unwrap_or_default();
    assert!(error.contains("layer-3"), "{tunnel}");
    assert!(uplink_pins(&agent, TUNNEL)?.is_empty());
    Ok(())
}

#[test]
fn a_second_interface_answers_published_ports_and_masquerades_with_its_address() -> Result<()> {
    let topology = Topology::new()?;
    let second = SecondWorld::connect(&topology)?;
    // No --uplink: every interface of the node.
    let agent = Agent::start_on_uplinks(&topology, &[], &[])?;
    let (container_ns, _echo) = publish(&agent)?;

    for (world, ip) in [
        (topology.world.path(), NODE_IP),
        (second.path(), SECOND_NODE_IP),
    ] {
        ensure!(
            tcp_reaches(&world, published_on(ip), ATTEMPT),
            "the published port does not answer on {ip}: {}",
            agent.log_tail(20)
        );
    }
    // Each way out leaves with its own interface's address.
    assert_eq!(
        masqueraded_as(&topology.world.path(), WORLD_IP, &container_ns)?,
        NODE_IP
    );
    assert_eq!(
        masqueraded_as(&second.path(), SECOND_WORLD_IP, &container_ns)?,
        SECOND_NODE_IP
    );
    if ebpf_checks("the uplinks' hooks") {
        let mut hooked = uplinks(&agent)?;
        hooked.sort();
        // Both are veths, whose frames may carry partial checksums: TC.
        assert_eq!(
            hooked,
            [("up0".into(), "tc".into()), (SECOND.into(), "tc".into())]
        );
        assert!(agent.counter("uplink_ingress.redirect.dnat")? >= 2);
    }
    Ok(())
}

#[test]
fn an_interface_that_comes_later_answers_and_one_that_goes_leaves_nothing() -> Result<()> {
    let topology = Topology::new()?;
    let agent = Agent::start_on_uplinks(&topology, &[], &[])?;
    let (container_ns, _echo) = publish(&agent)?;

    let plugged = Instant::now();
    let second = SecondWorld::connect(&topology)?;
    let Some(_) =
        within_bound(|| tcp_reaches(&second.path(), published_on(SECOND_NODE_IP), ATTEMPT))
    else {
        bail!(
            "the published port does not answer on a new interface within {FOLLOWS_WITHIN:?}: {}",
            agent.log_tail(20)
        );
    };
    let answered = plugged.elapsed();
    eprintln!("the published port answered on the new interface after {answered:?}");
    assert_eq!(
        masqueraded_as(&second.path(), SECOND_WORLD_IP, &container_ns)?,
        SECOND_NODE_IP
    );

    let unplugged = Instant::now();
    topology.node.ip(&["link", "del", SECOND])?;
    let mut detached = None;
    if ebpf_checks("the attachment of a removed interface") {
        let gone = within_bound(|| {
            uplinks(&agent).is_ok_and(|u| !u.iter().any(|(name, _)| name == SECOND))
                && uplink_pins(&agent, SECOND).is_ok_and(|pins| pins.is_empty())
        });
        let Some(_) = gone else {
            bail!(
                "{SECOND} is still an uplink after it went: {:?} {:?}",
                uplinks(&agent)?,
                uplink_pins(&agent, SECOND)?
            );
        };
        detached = Some(unplugged.elapsed());
    }
    // The first uplink was never disturbed.
    ensure!(tcp_reaches(
        &topology.world.path(),
        published_on(NODE_IP),
        ATTEMPT
    ));
    figures::record(
        "interfaces",
        serde_json::json!({
            "hotplug_answer_ms": answered.as_millis() as u64,
            "unplug_detach_ms": detached.map(|d| d.as_millis() as u64),
        }),
    )?;
    Ok(())
}

#[test]
fn an_explicit_uplink_list_restricts_published_ports_to_those_interfaces() -> Result<()> {
    if skip_unless_ebpf("Docker's rules match every interface; --uplink restricts the programs") {
        return Ok(());
    }
    let topology = Topology::new()?;
    let second = SecondWorld::connect(&topology)?;
    let agent = Agent::start_on_uplinks(&topology, &["up0"], &[])?;
    let _container = publish(&agent)?;
    assert!(tcp_reaches(
        &topology.world.path(),
        published_on(NODE_IP),
        ATTEMPT
    ));
    assert!(
        !tcp_reaches(&second.path(), published_on(SECOND_NODE_IP), ATTEMPT),
        "the published port answers on an interface not named by --uplink"
    );
    assert_eq!(uplinks(&agent)?, [("up0".into(), "tc".into())]);
    assert!(uplink_pins(&agent, SECOND)?.is_empty());
    Ok(())
}

/// An agent restarted on another hook (an earlier agent's XDP, now `auto`'s TC on a veth)
/// attaches the new hook and drops the old one's link: one program on the uplink, and the
/// published port answers before and after.
#[test]
fn a_restart_on_another_hook_swaps_the_uplinks_program() -> Result<()> {
    if skip_unless_ebpf("the hooks are the eBPF dataplane's") {
        return Ok(());
    }
    // Offload off: XDP is safe there, as it was for agents that knew no other hook.
    let topology = Topology::builder()
        .world_tx_offload(TxOffload::Off)
        .build()?;
    let mut agent = Agent::start_with(&topology, &["--uplink-hook", "xdp"])?;
    let _container = publish(&agent)?;
    let world = topology.world.path();
    assert!(tcp_reaches(&world, published_on(NODE_IP), ATTEMPT));
    assert_eq!(uplinks(&agent)?, [("up0".into(), "xdp".into())]);

    agent.stop();
    agent.set_args(["--uplink-hook", "auto"]);
    agent.spawn()?;
    assert!(tcp_reaches(&world, published_on(NODE_IP), ATTEMPT));
    assert_eq!(uplinks(&agent)?, [("up0".into(), "tc".into())]);
    let pins: Vec<String> = uplink_pins(&agent, "up0")?
        .iter()
        .filter_map(|pin| Some(pin.file_name()?.to_string_lossy().into_owned()))
        .collect();
    assert_eq!(pins, ["uplink_tc_up0"]);
    let link = topology.node.ip(&["-d", "link", "show", "up0"])?;
    assert!(
        !String::from_utf8_lossy(&link.stdout).contains("prog/xdp"),
        "the XDP program stayed on up0"
    );
    Ok(())
}
