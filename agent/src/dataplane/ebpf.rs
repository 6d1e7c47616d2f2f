//! The eBPF dataplane: XDP or TC on the uplinks, TC (TCX) on each container's node-side veth, maps
//! and links pinned under the pin directory so that a restarted agent re-adopts them with
//! no gap in service.

use std::{
    collections::{BTreeMap, HashSet},
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{
        Array, HashMap, IterableMap as _, MapData, PerCpuArray, PerCpuValues, ProgramArray,
        RingBuf,
        lpm_trie::{Key, LpmTrie},
    },
    programs::{
        CgroupAttachMode, CgroupSockAddr, SchedClassifier, TcAttachType, Xdp,
        links::{FdLink, PinnedLink},
        tc::SchedClassifierLink,
    },
};
use dataplane_common::{
    BackendKey, CONNTRACK, CONNTRACK6, CONTAINER_IPV6_SLOT, CONTAINER_PROGRAMS,
    CONTAINER6_MASQUERADE_SLOT, CONTAINER6_PROGRAMS, Counter, CtEntry, CtEntry6, CtKey, CtKey6,
    ENDPOINTS, EVENT_DROP, EVENT_DROP6, EVENT_NEW_FLOW6, EVENTS, EndpointInfo, EndpointKey, Event,
    Event6, FILTER_ALLOW, FILTER_DENY, FILTER_HITS, FILTER_RULES, FILTER_SCOPE_BITS, FilterKey,
    FilterRule, FlowKey, IPPROTO_TCP, LINKS, LinkKey, MASQUERADE_SOURCES, MASQUERADE_SOURCES6,
    NAT_FLOWS, NETWORK_DIRECT_ANY, NETWORK_DIRECT_ICMP, NETWORK_DIRECT_PUBLISHED, NETWORK_ICC,
    NETWORK_INTERNAL, NETWORK_MASQUERADE, NETWORKS, NODE_ADDRS, NODE_CONFIG, NatFlow, NetworkInfo,
    NetworkKey, NodeAddr, NodeAddrKey, NodeConfig, PUBLISHED_BACKENDS, PUBLISHED_PORTS, PortKey,
    PortTarget, ROUTED_FLOWS, STATS, TRUSTED_IFACES, TrustedIfaceKey, UPLINK_IPV6_SLOT,
    UPLINK_L3_IPV6_SLOT, UPLINK_TC_PROGRAMS, UPLINK_XDP_PROGRAMS, UPLINK6_L3_MASQUERADE_SLOT,
    UPLINK6_MASQUERADE_SLOT, UPLINK6_TC_PROGRAMS, UPLINK6_XDP_PROGRAMS, ct::TrackedEntry as _,
    stats::Stat,
};
use dataplane_common::{
    BackendKey6, CONTAINER6_LINK_SLOT, CONTAINER6_REPLY_SLOT, FILTER_RULES6, FilterKey6, FlowKey6,
    LINKS6, LinkKey6, NAT_FLOWS6, NETWORKS6, NODE_ADDRS6, NatFlow6, NetworkKey6, NodeAddrKey6,
    PUBLISHED_BACKENDS6, PUBLISHED_PORTS6, PortKey6, PortTarget6, ROUTED_FLOWS6,
};

use super::{
    Capabilities, Dataplane, DirectAccess, Endpoint, FilterHits, FlowLister, FlowTimeouts,
    Intended, LinkRule, NetworkPolicy, Repaired,
    flow_gc::FlowGc,
    flows::{self, is_missing_key},
    migrate,
    uplinks::{self, Framing, Hook, UplinkLink},
};
use crate::{
    Error, Result,
    config::{FlowTableSizes, UplinkHook},
    model::{
        FilterAction, FilterRecord, FlowInfo, FlowTableInfo, FlowTablesInfo, MonitorEvent,
        PortBinding, ProgramInfo, PublishedPort, RepairKind, StatCounter, UplinkInfo,
    },
};

/// The compiled programs, built by build.rs.
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bpfbridge-dataplane"));

pub const UPLINK_PROGRAM: &str = "uplink_ingress";
/// The uplink program at TC, for uplinks where XDP is not safe (see [`uplinks`]).
pub const UPLINK_TC_PROGRAM: &str = "uplink_ingress_tc";
/// The uplink program for layer-3 devices, whose frames start at the IP header.
pub const UPLINK_L3_PROGRAM: &str = "uplink_ingress_l3";
pub const CONTAINER_PROGRAM: &str = "container_ingress";
/// The container side's IPv6 program, which [`CONTAINER_PROGRAM`] tail-calls (through the
/// `CONTAINER_PROGRAMS` program array) and which is never attached itself.
pub const CONTAINER6_PROGRAM: &str = "container_ingress6";
/// The program [`CONTAINER6_PROGRAM`] tail-calls (through `CONTAINER6_PROGRAMS`) for the
/// IPv6 packets it masquerades; never attached itself.
pub const CONTAINER_MASQUERADE6_PROGRAM: &str = "container_masquerade6";
/// The program [`CONTAINER6_PROGRAM`] tail-calls (through `CONTAINER6_PROGRAMS`) for a
/// container's ICMPv6 errors and the fragments of its IPv6 replies; never attached itself.
pub const CONTAINER_REPLY6_PROGRAM: &str = "container_reply6";
/// The program [`CONTAINER6_PROGRAM`] tail-calls (through `CONTAINER6_PROGRAMS`) for the
/// IPv6 packets between two containers of an `icc=false` network (`--link`); never
/// attached itself.
pub const CONTAINER_LINK6_PROGRAM: &str = "container_link6";
/// The uplink programs' IPv6 programs, which [`UPLINK_PROGRAM`], [`UPLINK_TC_PROGRAM`] and
/// [`UPLINK_L3_PROGRAM`] tail-call (through `UPLINK_XDP_PROGRAMS` and `UPLINK_TC_PROGRAMS`)
/// and which are never attached themselves.
pub const UPLINK6_PROGRAM: &str = "uplink_ingress6";
pub const UPLINK6_TC_PROGRAM: &str = "uplink_ingress6_tc";
pub const UPLINK6_L3_PROGRAM: &str = "uplink_ingress6_l3";
/// The programs the uplinks' IPv6 programs tail-call (through `UPLINK6_XDP_PROGRAMS` and
/// `UPLINK6_TC_PROGRAMS`) for replies of masqueraded IPv6 flows; never attached themselves.
pub const UPLINK_MASQUERADE6_PROGRAM: &str = "uplink_masquerade6";
pub const UPLINK_MASQUERADE6_TC_PROGRAM: &str = "uplink_masquerade6_tc";
pub const UPLINK_MASQUERADE6_L3_PROGRAM: &str = "uplink_masquerade6_l3";
/// The cgroup socket-address programs, by name.
pub const SOCKET_PROGRAMS: [&str; 8] = [
    "sock_connect4",
    "sock_sendmsg4",
    "sock_recvmsg4",
    "sock_getpeername4",
    "sock_connect6",
    "sock_sendmsg6",
    "sock_recvmsg6",
    "sock_getpeername6",
];
const LINKS_DIR: &str = "links";
/// Every program of the object, by name.
pub const PROGRAMS: [&str; 22] = [
    UPLINK_PROGRAM,
    UPLINK_TC_PROGRAM,
    UPLINK_L3_PROGRAM,
    UPLINK6_PROGRAM,
    UPLINK6_TC_PROGRAM,
    UPLINK6_L3_PROGRAM,
    UPLINK_MASQUERADE6_PROGRAM,
    UPLINK_MASQUERADE6_TC_PROGRAM,
    UPLINK_MASQUERADE6_L3_PROGRAM,
    CONTAINER_PROGRAM,
    CONTAINER6_PROGRAM,
    CONTAINER_MASQUERADE6_PROGRAM,
    CONTAINER_REPLY6_PROGRAM,
    CONTAINER_LINK6_PROGRAM,
    SOCKET_PROGRAMS[0],
    SOCKET_PROGRAMS[1],
    SOCKET_PROGRAMS[2],
    SOCKET_PROGRAMS[3],
    SOCKET_PROGRAMS[4],
    SOCKET_PROGRAMS[5],
    SOCKET_PROGRAMS[6],
    SOCKET_PROGRAMS[7],
];
/// The verifier's complexity limit: instructions it may process for one program
/// (`BPF_COMPLEXITY_LIMIT_INSNS`).
pub const VERIFIER_INSTRUCTION_LIMIT: u32 = 1_000_000;

/// The verifier's figures of each loaded program of `ebpf`, in [`PROGRAMS`] order; a
/// program not loaded is an error.
pub fn loaded_programs(ebpf: &Ebpf) -> Result<Vec<ProgramInfo>> {
    PROGRAMS
        .iter()
        .map(|name| {
            let program = ebpf
                .program(name)
                .ok_or_else(|| Error::dataplane("program lookup")(MissingMap(name.to_string())))?;
            let info = program
                .info()
                .map_err(Error::dataplane(format!("reading {name}'s info")))?;
            Ok(ProgramInfo {
                name: name.to_string(),
                verified_instructions: info.verified_instruction_count(),
            })
        })
        .collect()
}

/// The programs `container_ingress6` tail-calls, with their slots of `CONTAINER6_PROGRAMS`.
const CONTAINER6_TAIL_CALLS: [(&str, u32); 3] = [
    (CONTAINER_MASQUERADE6_PROGRAM, CONTAINER6_MASQUERADE_SLOT),
    (CONTAINER_LINK6_PROGRAM, CONTAINER6_LINK_SLOT),
    (CONTAINER_REPLY6_PROGRAM, CONTAINER6_REPLY_SLOT),
];

/// Loads the container programs, each tail-called one first and put in its slot before
/// the program that tail-calls it can run: `container_masquerade6`, `container_link6` and `container_reply6`
/// in `CONTAINER6_PROGRAMS`, then `container_ingress6` in `CONTAINER_PROGRAMS`, then
/// `container_ingress`. The program arrays are pinned: they keep the earlier agent's
/// programs until this call replaces them, so that the IPv6 frames of containers meet a
/// program through a restart or an upgrade.
pub fn load_container_programs(ebpf: &mut Ebpf) -> Result<()> {
    for (name, slot) in CONTAINER6_TAIL_CALLS {
        let tail_called: &mut SchedClassifier = program(ebpf, name)?;
        tail_called
            .load()
            .map_err(Error::dataplane(format!("loading {name}")))?;
        let fd = program_fd(tail_called.fd())?;
        fill_program_array(ebpf, CONTAINER6_PROGRAMS, slot, &fd)?;
    }
    let ipv6: &mut SchedClassifier = program(ebpf, CONTAINER6_PROGRAM)?;
    ipv6.load()
        .map_err(Error::dataplane("loading the container's IPv6 TC program"))?;
    let fd = ipv6
        .fd()
        .map_err(Error::dataplane("the container's IPv6 TC program"))?
        .try_clone()
        .map_err(Error::io("duplicating a program descriptor"))?;
    let map = ebpf
        .map_mut(CONTAINER_PROGRAMS)
        .ok_or_else(|| Error::dataplane("map lookup")(MissingMap(CONTAINER_PROGRAMS.into())))?;
    let mut slots: ProgramArray<&mut MapData> =
        ProgramArray::try_from(map).map_err(Error::dataplane(CONTAINER_PROGRAMS))?;
    slots
        .set(CONTAINER_IPV6_SLOT, &fd, 0)
        .map_err(Error::dataplane("filling the container program array"))?;
    let tc: &mut SchedClassifier = program(ebpf, CONTAINER_PROGRAM)?;
    tc.load()
        .map_err(Error::dataplane("loading the TC program"))
}

/// Loads the uplink programs, their IPv6 programs first, each put in the slot its uplink
/// program tail-calls before that can run (program arrays pinned as `CONTAINER_PROGRAMS`
/// is: see [`load_container_programs`]).
pub fn load_uplink_programs(ebpf: &mut Ebpf) -> Result<()> {
    let xdp_masquerade6: &mut Xdp = program(ebpf, UPLINK_MASQUERADE6_PROGRAM)?;
    xdp_masquerade6.load().map_err(Error::dataplane(
        "loading the uplink's IPv6 masquerade XDP program",
    ))?;
    let xdp_masquerade6 = program_fd(xdp_masquerade6.fd())?;
    let mut tc_masquerade6 = Vec::new();
    for name in [UPLINK_MASQUERADE6_TC_PROGRAM, UPLINK_MASQUERADE6_L3_PROGRAM] {
        let tc: &mut SchedClassifier = program(ebpf, name)?;
        tc.load().map_err(Error::dataplane(
            "loading an uplink's IPv6 masquerade TC program",
        ))?;
        tc_masquerade6.push(program_fd(tc.fd())?);
    }
    for (array, slot, fd) in [
        (
            UPLINK6_XDP_PROGRAMS,
            UPLINK6_MASQUERADE_SLOT,
            &xdp_masquerade6,
        ),
        (
            UPLINK6_TC_PROGRAMS,
            UPLINK6_MASQUERADE_SLOT,
            &tc_masquerade6[0],
        ),
        (
            UPLINK6_TC_PROGRAMS,
            UPLINK6_L3_MASQUERADE_SLOT,
            &tc_masquerade6[1],
        ),
    ] {
        fill_program_array(ebpf, array, slot, fd)?;
    }
    let xdp6: &mut Xdp = program(ebpf, UPLINK6_PROGRAM)?;
    xdp6.load()
        .map_err(Error::dataplane("loading the uplink's IPv6 XDP program"))?;
    let xdp6 = program_fd(xdp6.fd())?;
    let mut tc6 = Vec::new();
    for name in [UPLINK6_TC_PROGRAM, UPLINK6_L3_PROGRAM] {
        let tc: &mut SchedClassifier = program(ebpf, name)?;
        tc.load()
            .map_err(Error::dataplane("loading an uplink's IPv6 TC program"))?;
        tc6.push(program_fd(tc.fd())?);
    }
    for (array, slot, fd) in [
        (UPLINK_XDP_PROGRAMS, UPLINK_IPV6_SLOT, &xdp6),
        (UPLINK_TC_PROGRAMS, UPLINK_IPV6_SLOT, &tc6[0]),
        (UPLINK_TC_PROGRAMS, UPLINK_L3_IPV6_SLOT, &tc6[1]),
    ] {
        fill_program_array(ebpf, array, slot, fd)?;
    }
    let xdp: &mut Xdp = program(ebpf, UPLINK_PROGRAM)?;
    xdp.load()
        .map_err(Error::dataplane("loading the XDP program"))?;
    let uplink_tc: &mut SchedClassifier = program(ebpf, UPLINK_TC_PROGRAM)?;
    uplink_tc
        .load()
        .map_err(Error::dataplane("loading the uplink's TC program"))?;
    let uplink_l3: &mut SchedClassifier = program(ebpf, UPLINK_L3_PROGRAM)?;
    uplink_l3
        .load()
        .map_err(Error::dataplane("loading the layer-3 uplinks' TC program"))
}

/// Puts the program `fd` in `slot` of program array `array`.
fn fill_program_array(
    ebpf: &mut Ebpf,
    array: &str,
    slot: u32,
    fd: &aya::programs::ProgramFd,
) -> Result<()> {
    let map = ebpf
        .map_mut(array)
        .ok_or_else(|| Error::dataplane("map lookup")(MissingMap(array.into())))?;
    let mut slots: ProgramArray<&mut MapData> =
        ProgramArray::try_from(map).map_err(Error::dataplane(array))?;
    slots
        .set(slot, fd, 0)
        .map_err(Error::dataplane(format!("filling program array {array}")))
}

/// A loaded program's descriptor, owned (to put in a program array while the program is
/// borrowed no more).
fn program_fd(
    fd: std::result::Result<&aya::programs::ProgramFd, aya::programs::ProgramError>,
) -> Result<aya::programs::ProgramFd> {
    fd.map_err(Error::dataplane("a loaded program"))?
        .try_clone()
        .map_err(Error::io("duplicating a program descriptor"))
}

/// Loads the eBPF object with its maps pinned under `pin_dir` (re-adopting pinned ones), the
/// flow tables of the given sizes (when the tables are made, not when an earlier agent's
/// pinned ones are re-adopted: `info` shows the sizes in force). For a caller that attaches
/// nothing: maps pinned with an earlier layout are migrated at once.
pub fn load_object_with(pin_dir: &Path, sizes: FlowTableSizes) -> Result<Ebpf> {
    let (mut ebpf, mut migration) = load_object_migrating(pin_dir, sizes)?;
    migration.copy()?;
    migration.finish(&mut ebpf, CONTAINER_PROGRAM)?;
    Ok(ebpf)
}

/// [`load_object_with`], leaving the migration of maps pinned with an earlier layout (see
/// [`migrate`]) to the caller: its entries are to be copied once the programs are loaded,
/// and the migration finished once they are attached; until then the earlier programs
/// still run on the earlier maps.
pub fn load_object_migrating(
    pin_dir: &Path,
    sizes: FlowTableSizes,
) -> Result<(Ebpf, migrate::Migration)> {
    fs::create_dir_all(pin_dir)
        .map_err(Error::io(format!("creating pin dir {}", pin_dir.display())))?;
    let migration = migrate::prepare(pin_dir)?;
    let ebpf = EbpfLoader::new()
        .default_map_pin_directory(pin_dir)
        .map_max_entries(CONNTRACK, sizes.conntrack)
        .map_max_entries(CONNTRACK6, sizes.conntrack)
        .map_max_entries(NAT_FLOWS, sizes.nat_flows)
        .map_max_entries(NAT_FLOWS6, sizes.nat_flows)
        .load(EBPF_OBJECT)
        .map_err(Error::dataplane("loading the eBPF object"))?;
    Ok((ebpf, migration))
}

pub struct EbpfDataplane {
    ebpf: Ebpf,
    pin_dir: PathBuf,
    links_dir: PathBuf,
    /// Idle-flow cleanup, on a thread of its own.
    gc: FlowGc,
    /// What NODE_CONFIG holds (written whole).
    node_config: NodeConfig,
    /// Events read from the ring buffer, for `bpfbridge monitor`.
    events: tokio::sync::broadcast::Sender<MonitorEvent>,
    /// `--uplink-hook`.
    uplink_hook: UplinkHook,
    /// The uplinks this agent attached (or adopted): name → (index, hook).
    uplinks: BTreeMap<String, (u32, Hook)>,
    /// What MASQUERADE_SOURCES holds: interface index → address.
    masquerade_sources: BTreeMap<u32, Ipv4Addr>,
    /// What MASQUERADE_SOURCES6 holds.
    masquerade_sources6: BTreeMap<u32, Ipv6Addr>,
}

/// An IPv4 address in network order, for the maps that hold IPv4 only (published ports): the
/// callers pass IPv6 elsewhere, so an IPv6 one is a fault of the agent, refused rather
/// than written as a wrong key.
fn ipv4_be(ip: IpAddr) -> Result<u32> {
    match ip {
        IpAddr::V4(ip) => Ok(u32::from(ip).to_be()),
        IpAddr::V6(ip) => Err(Error::Internal(format!(
            "IPv6 address {ip} handed to an IPv4 map of the ebpf dataplane"
        ))),
    }
}

/// The IPv6 addresses among `addresses`.
fn ipv6_only(addresses: &[(u32, IpAddr)]) -> Vec<(u32, Ipv6Addr)> {
    addresses
        .iter()
        .filter_map(|(index, ip)| match ip {
            IpAddr::V6(ip) => Some((*index, *ip)),
            IpAddr::V4(_) => None,
        })
        .collect()
}

/// The key of an IPv6 binding on `host_ip` (`::`: every IPv6 node address).
fn port_key6(host_ip: Ipv6Addr, port: &PortBinding) -> PortKey6 {
    PortKey6 {
        host_ip: host_ip.octets(),
        host_port_be: port.host_port.to_be(),
        proto: port.proto.ip_proto(),
        _pad: 0,
    }
}

/// Where an IPv6 binding leads: the endpoint's IPv6 address; `None` for an endpoint
/// without one (an IPv6 client reaching an IPv4-only container would need Docker's
/// userland proxy: not published on IPv6, as Docker does without it).
fn port_target6(endpoint: &Endpoint, port: &PortBinding) -> Option<PortTarget6> {
    Some(PortTarget6 {
        container_ip: endpoint.container_ipv6?.octets(),
        container_port_be: port.container_port.to_be(),
        _pad0: 0,
        host_veth_ifindex: endpoint.host_veth_ifindex,
        container_mac: endpoint.container_mac,
        host_veth_mac: endpoint.host_veth_mac,
    })
}

/// The IPv6 bindings of `wanted` that have an endpoint address to lead to.
fn ports6(wanted: &[(Endpoint, PortBinding)]) -> std::collections::HashMap<PortKey6, PortTarget6> {
    wanted
        .iter()
        .filter_map(|(endpoint, port)| match port.host_ip {
            IpAddr::V6(host_ip) => Some((port_key6(host_ip, port), port_target6(endpoint, port)?)),
            IpAddr::V4(_) => None,
        })
        .collect()
}

/// The IPv4 bindings of `wanted`, keyed for PUBLISHED_PORTS.
fn ports4(
    wanted: &[(Endpoint, PortBinding)],
) -> Result<std::collections::HashMap<PortKey, PortTarget>> {
    wanted
        .iter()
        .filter(|(_, port)| port.host_ip.is_ipv4())
        .filter_map(|(endpoint, port)| {
            let target = port_target(endpoint, port)?;
            Some(port_key(port).map(|key| (key, target)))
        })
        .collect()
}

/// The IPv4 addresses among `addresses` (see [`ipv4_be`]).
fn ipv4_only(addresses: &[(u32, IpAddr)]) -> Vec<(u32, Ipv4Addr)> {
    addresses
        .iter()
        .filter_map(|(index, ip)| match ip {
            IpAddr::V4(ip) => Some((*index, *ip)),
            IpAddr::V6(_) => None,
        })
        .collect()
}

fn port_key(port: &PortBinding) -> Result<PortKey> {
    Ok(PortKey {
        host_ip_be: ipv4_be(port.host_ip)?,
        host_port_be: port.host_port.to_be(),
        proto: port.proto.ip_proto(),
        _pad: 0,
    })
}

/// The container end that published port `key` leads to.
fn backend_of(key: &PortKey, target: &PortTarget) -> BackendKey {
    BackendKey {
        container_ip_be: target.container_ip_be,
        container_port_be: target.container_port_be,
        proto: key.proto,
        _pad: 0,
    }
}

/// The container end that IPv6 published port `key` leads to.
fn backend_of6(key: &PortKey6, target: &PortTarget6) -> BackendKey6 {
    BackendKey6 {
        container_ip: target.container_ip,
        container_port_be: target.container_port_be,
        proto: key.proto,
        _pad: 0,
    }
}

/// A key of a family's published backends (`PUBLISHED_BACKENDS`, `PUBLISHED_BACKENDS6`):
/// a container end of published ports, its value the count of host ports leading there.
trait Backend: aya::Pod + Eq + std::hash::Hash {
    /// The map that holds it.
    const MAP: &'static str;
}

impl Backend for BackendKey {
    const MAP: &'static str = PUBLISHED_BACKENDS;
}

impl Backend for BackendKey6 {
    const MAP: &'static str = PUBLISHED_BACKENDS6;
}

/// How many of `ports` lead to each container end.
fn backend_counts<K, V, B: Backend>(
    ports: &std::collections::HashMap<K, V>,
    backend_of: fn(&K, &V) -> B,
) -> std::collections::HashMap<B, u32> {
    let mut backends = std::collections::HashMap::new();
    for (key, target) in ports {
        *backends.entry(backend_of(key, target)).or_default() += 1;
    }
    backends
}

/// Where an IPv4 binding leads: the endpoint's IPv4 address; `None` for an endpoint on an
/// IPv6-only network (the service publishes only IPv6 ports for it).
fn port_target(endpoint: &Endpoint, port: &PortBinding) -> Option<PortTarget> {
    Some(PortTarget {
        container_ip_be: u32::from(endpoint.container_ip?).to_be(),
        container_port_be: port.container_port.to_be(),
        _pad0: 0,
        host_veth_ifindex: endpoint.host_veth_ifindex,
        container_mac: endpoint.container_mac,
        host_veth_mac: endpoint.host_veth_mac,
    })
}

/// The trie entry of a network's IPv4 policy; none for an IPv6-only network.
fn network_entry(n: &NetworkPolicy) -> Option<(Key<NetworkKey>, NetworkInfo)> {
    let subnet = n.subnet?;
    let flags = if n.icc { NETWORK_ICC } else { 0 }
        | if n.internal { NETWORK_INTERNAL } else { 0 }
        | if n.masquerade { NETWORK_MASQUERADE } else { 0 }
        | direct_access_flags(n.direct_access);
    let key = Key::new(
        u32::from(subnet.prefix_len()),
        NetworkKey {
            addr_be: u32::from(subnet.network()).to_be(),
        },
    );
    Some((
        key,
        NetworkInfo {
            index: n.index,
            flags,
        },
    ))
}

/// The links of each family, in `LINKS` and `LINKS6` by their keys.
fn link_keys(
    links: &[LinkRule],
) -> (
    std::collections::HashMap<LinkKey, u32>,
    std::collections::HashMap<LinkKey6, u32>,
) {
    let (mut v4, mut v6) = (
        std::collections::HashMap::new(),
        std::collections::HashMap::new(),
    );
    for l in links {
        match (l.from, l.to) {
            (IpAddr::V4(from), IpAddr::V4(to)) => {
                v4.insert(link_key(from, to, l), 1);
            }
            (IpAddr::V6(from), IpAddr::V6(to)) => {
                v6.insert(link_key6(from, to, l), 1);
            }
            // The service pairs addresses of one family; a mixed pair opens nothing.
            _ => {}
        }
    }
    (v4, v6)
}

/// The NETWORKS6 entry of a network with an IPv6 subnet: its IPv6 masquerade setting and
/// direct access (its IPv6 gateway mode's, as the iptables dataplane's ip6tables rules
/// follow them) in place of the IPv4 ones.
fn network_entry6(n: &NetworkPolicy) -> Option<(Key<NetworkKey6>, NetworkInfo)> {
    let subnet = n.subnet_ipv6?;
    let flags = if n.icc { NETWORK_ICC } else { 0 }
        | if n.internal { NETWORK_INTERNAL } else { 0 }
        | if n.masquerade_ipv6 {
            NETWORK_MASQUERADE
        } else {
            0
        }
        | direct_access_flags(n.direct_access_ipv6);
    let key = Key::new(
        u32::from(subnet.prefix_len()),
        NetworkKey6 {
            addr: subnet.network().octets(),
        },
    );
    Some((
        key,
        NetworkInfo {
            index: n.index,
            flags,
        },
    ))
}

/// The allow-list key of an IPv4 `--link` rule.
fn link_key(from: Ipv4Addr, to: Ipv4Addr, l: &LinkRule) -> LinkKey {
    LinkKey {
        src_ip_be: u32::from(from).to_be(),
        dst_ip_be: u32::from(to).to_be(),
        dport_be: l.port.to_be(),
        proto: l.proto.ip_proto(),
        _pad: 0,
    }
}

/// The allow-list key of an IPv6 `--link` rule.
fn link_key6(from: Ipv6Addr, to: Ipv6Addr, l: &LinkRule) -> LinkKey6 {
    LinkKey6 {
        src_ip: from.octets(),
        dst_ip: to.octets(),
        dport_be: l.port.to_be(),
        proto: l.proto.ip_proto(),
        _pad: 0,
    }
}

/// The cookie of this process's network namespace (`SO_NETNS_COOKIE`), what
/// `bpf_get_netns_cookie` returns for its sockets.
fn netns_cookie() -> Result<u64> {
    const SO_NETNS_COOKIE: libc::c_int = 71;
    let socket = std::net::UdpSocket::bind("127.0.0.1:0")
        .map_err(Error::io("socket for the netns cookie"))?;
    let mut cookie: u64 = 0;
    let mut len = size_of::<u64>() as libc::socklen_t;
    // SAFETY: `cookie` and `len` are valid for the call.
    let rc = unsafe {
        libc::getsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&socket),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(Error::io("reading SO_NETNS_COOKIE")(
            std::io::Error::last_os_error(),
        ));
    }
    Ok(cookie)
}

/// The trie entry of a filter rule: 32 bits of scope, then the source prefix.
/// A filter rule's entry: in FILTER_RULES for an IPv4 source, FILTER_RULES6 for an IPv6
/// one (same scopes, ids and hit counters).
enum FilterEntry {
    V4(Key<FilterKey>, FilterRule),
    V6(Key<FilterKey6>, FilterRule),
}

fn filter_entry(rule: &FilterRecord) -> FilterEntry {
    let (host_port_be, proto) = match rule.scope {
        Some(scope) => (scope.host_port.to_be(), scope.proto.ip_proto()),
        None => (0, 0),
    };
    let action = match rule.action {
        FilterAction::Allow => FILTER_ALLOW,
        FilterAction::Deny => FILTER_DENY,
    };
    let value = FilterRule {
        rule_id: rule.id,
        action,
    };
    let prefix_len = FILTER_SCOPE_BITS + u32::from(rule.source.prefix_len());
    match rule.source.network() {
        IpAddr::V4(source) => FilterEntry::V4(
            Key::new(
                prefix_len,
                FilterKey {
                    host_port_be,
                    proto,
                    _pad: 0,
                    src_ip_be: u32::from(source).to_be(),
                },
            ),
            value,
        ),
        IpAddr::V6(source) => FilterEntry::V6(
            Key::new(
                prefix_len,
                FilterKey6 {
                    host_port_be,
                    proto,
                    _pad: 0,
                    src_ip: source.octets(),
                },
            ),
            value,
        ),
    }
}

/// Entries of FILTER_RULES, and of FILTER_RULES6.
type FilterEntries4 = Vec<(Key<FilterKey>, FilterRule)>;
type FilterEntries6 = Vec<(Key<FilterKey6>, FilterRule)>;

/// The rules' entries, by family.
fn filter_entries(rules: &[FilterRecord]) -> (FilterEntries4, FilterEntries6) {
    let (mut v4, mut v6) = (Vec::new(), Vec::new());
    for rule in rules {
        match filter_entry(rule) {
            FilterEntry::V4(key, value) => v4.push((key, value)),
            FilterEntry::V6(key, value) => v6.push((key, value)),
        }
    }
    (v4, v6)
}

/// Forwards the ring buffer's events to the monitor's subscribers until the agent stops.
async fn read_events(ring: RingBuf<MapData>, events: tokio::sync::broadcast::Sender<MonitorEvent>) {
    // SAFETY: the ring buffer owns its map descriptor, which stays open and the same for
    // as long as the AsyncFd holds the ring buffer.
    let mut ring = match unsafe { tokio::io::unix::AsyncFd::register(ring) } {
        Ok(ring) => ring,
        Err(e) => {
            tracing::warn!("no monitor events: {e}");
            return;
        }
    };
    loop {
        let Ok(mut guard) = ring.readable_mut().await else {
            return;
        };
        while let Some(item) = guard.get_inner_mut().next() {
            if let Some(event) = monitor_event(&item) {
                let _ = events.send(event);
            }
        }
        guard.clear_ready();
    }
}

/// A ring buffer record as `monitor` shows it: an [`Event`] or an [`Event6`], told apart
/// by their `kind`, which both begin with. `None` for a record of neither shape.
fn monitor_event(record: &[u8]) -> Option<MonitorEvent> {
    // An address, with its port when it has one.
    let endpoint = |ip: IpAddr, port_be: u16| match port_be {
        0 => ip.to_string(),
        port => std::net::SocketAddr::new(ip, u16::from_be(port)).to_string(),
    };
    let reason = |stat: u32| {
        Stat::ALL
            .get(stat as usize)
            .map_or("unknown", |s| s.name())
            .to_string()
    };
    let kind = u32::from_ne_bytes(record.get(..4)?.try_into().ok()?);
    if kind == EVENT_NEW_FLOW6 || kind == EVENT_DROP6 {
        let bytes = record.get(..size_of::<Event6>())?;
        // SAFETY: `bytes` holds a whole `Event6`, plain data; read without alignment.
        let event: Event6 = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
        return Some(MonitorEvent {
            kind: if kind == EVENT_DROP6 {
                "drop"
            } else {
                "new-flow"
            }
            .into(),
            reason: reason(event.stat),
            proto: event.proto,
            source: endpoint(Ipv6Addr::from(event.src_ip).into(), event.sport_be),
            destination: endpoint(Ipv6Addr::from(event.dst_ip).into(), event.dport_be),
        });
    }
    let bytes = record.get(..size_of::<Event>())?;
    // SAFETY: `bytes` holds a whole `Event`, plain data; read without alignment.
    let event: Event = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    Some(MonitorEvent {
        kind: if event.kind == EVENT_DROP {
            "drop"
        } else {
            "new-flow"
        }
        .into(),
        reason: reason(event.stat),
        proto: event.proto,
        source: endpoint(ipv4_of(event.src_ip_be).into(), event.sport_be),
        destination: endpoint(ipv4_of(event.dst_ip_be).into(), event.dport_be),
    })
}

fn proto_name(proto: u8) -> String {
    match proto {
        IPPROTO_TCP => "tcp".into(),
        dataplane_common::IPPROTO_UDP => "udp".into(),
        dataplane_common::IPPROTO_ICMP => "icmp".into(),
        other => other.to_string(),
    }
}

/// The flow tables [`list_flows`] reads: published-port flows and tracked flows, of both
/// families.
struct FlowTables {
    nat_flows: HashMap<MapData, FlowKey, NatFlow>,
    nat_flows6: HashMap<MapData, FlowKey6, NatFlow6>,
    conntrack: HashMap<MapData, CtKey, CtEntry>,
    conntrack6: HashMap<MapData, CtKey6, CtEntry6>,
}

/// An address and port as `conntrack ls` prints them: `192.0.2.1:80`, `[2001:db8::1]:80`.
fn socket_text(ip: impl Into<IpAddr>, port_be: u16) -> String {
    std::net::SocketAddr::new(ip.into(), u16::from_be(port_be)).to_string()
}

fn ipv4_of(ip_be: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from_be(ip_be))
}

/// A published-port flow, of either family, in the listing's shape: the table's key and
/// value with their addresses made `IpAddr`s.
struct PublishedFlow {
    proto: u8,
    container: (IpAddr, u16),
    remote: (IpAddr, u16),
    frontend: (IpAddr, u16),
    client: (IpAddr, u16),
    last_seen_ns: u64,
    packets: u64,
    bytes: u64,
}

impl From<(FlowKey, NatFlow)> for PublishedFlow {
    fn from((key, flow): (FlowKey, NatFlow)) -> Self {
        PublishedFlow {
            proto: key.proto,
            container: (ipv4_of(key.container_ip_be).into(), key.container_port_be),
            remote: (ipv4_of(key.remote_ip_be).into(), key.remote_port_be),
            frontend: (ipv4_of(flow.frontend_ip_be).into(), flow.frontend_port_be),
            client: (ipv4_of(flow.client_ip_be).into(), flow.client_port_be),
            last_seen_ns: flow.last_seen_ns,
            packets: flow.packets,
            bytes: flow.bytes,
        }
    }
}

impl From<(FlowKey6, NatFlow6)> for PublishedFlow {
    fn from((key, flow): (FlowKey6, NatFlow6)) -> Self {
        let ip = |octets: [u8; 16]| IpAddr::from(Ipv6Addr::from(octets));
        PublishedFlow {
            proto: key.proto,
            container: (ip(key.container_ip), key.container_port_be),
            remote: (ip(key.remote_ip), key.remote_port_be),
            frontend: (ip(flow.frontend_ip), flow.frontend_port_be),
            client: (ip(flow.client_ip), flow.client_port_be),
            last_seen_ns: flow.last_seen_ns,
            packets: flow.packets,
            bytes: flow.bytes,
        }
    }
}

/// The tracked flows of one family's table in the listing's shape; `ip` makes the table's
/// addresses `IpAddr`s.
fn tracked_flows<K: flows::Tracked>(
    entries: std::collections::HashMap<K, K::Entry>,
    ip: impl Fn(K::Addr) -> IpAddr,
    idle: impl Fn(u64) -> u64,
) -> impl Iterator<Item = FlowInfo> {
    flows::pair_flows(entries)
        .into_iter()
        .filter_map(move |flow| {
            // A reply left alone names no flow; the GC removes it.
            let (key, original) = flow.original?;
            let link = original.nat_ip() == key.src();
            let destination = socket_text(ip(key.dst()), key.dport_be());
            Some(FlowInfo {
                kind: if link { "link" } else { "masquerade" }.into(),
                proto: proto_name(key.proto()),
                client: socket_text(ip(key.src()), key.sport_be()),
                frontend: destination.clone(),
                backend: destination,
                seen_as: socket_text(ip(original.nat_ip()), original.nat_port_be()),
                idle_seconds: idle(flow.last_seen_ns()),
                packets: None,
                bytes: None,
            })
        })
}

/// The translated flows in the four tables, each walked once.
fn list_flows(tables: &FlowTables) -> Result<Vec<FlowInfo>> {
    let now = flows::monotonic_ns()?;
    let idle = |last_seen: u64| now.saturating_sub(last_seen) / 1_000_000_000;
    let published = flows::walk(&tables.nat_flows)
        .into_complete(NAT_FLOWS)?
        .into_iter()
        .map(PublishedFlow::from)
        .chain(
            flows::walk(&tables.nat_flows6)
                .into_complete(NAT_FLOWS6)?
                .into_iter()
                .map(PublishedFlow::from),
        );
    let mut out: Vec<FlowInfo> = published
        .map(|flow| FlowInfo {
            kind: "dnat".into(),
            proto: proto_name(flow.proto),
            client: socket_text(flow.client.0, flow.client.1),
            frontend: socket_text(flow.frontend.0, flow.frontend.1),
            backend: socket_text(flow.container.0, flow.container.1),
            seen_as: socket_text(flow.remote.0, flow.remote.1),
            idle_seconds: idle(flow.last_seen_ns),
            packets: Some(flow.packets),
            bytes: Some(flow.bytes),
        })
        .collect();
    let conntrack = flows::walk(&tables.conntrack).into_complete(CONNTRACK)?;
    out.extend(tracked_flows(
        conntrack,
        |ip_be| ipv4_of(ip_be).into(),
        idle,
    ));
    let conntrack6 = flows::walk(&tables.conntrack6).into_complete(CONNTRACK6)?;
    out.extend(tracked_flows(
        conntrack6,
        |octets| Ipv6Addr::from(octets).into(),
        idle,
    ));
    out.sort_by(|a, b| (&a.backend, &a.client).cmp(&(&b.backend, &b.client)));
    Ok(out)
}

/// Makes `trie` hold exactly `wanted`; returns the indices of the entries it had to write.
fn sync_trie<K: aya::Pod + PartialEq, V: aya::Pod + PartialEq>(
    trie: &mut LpmTrie<&mut MapData, K, V>,
    wanted: &[(Key<K>, V)],
    what: &str,
) -> Result<Vec<usize>> {
    let present: Vec<Key<K>> = trie
        .keys()
        .collect::<Result<_, _>>()
        .map_err(Error::dataplane(format!("listing the {what}s")))?;
    let mut written = Vec::new();
    for (i, (key, value)) in wanted.iter().enumerate() {
        if trie.get(key, 0).ok().as_ref() != Some(value) {
            trie.insert(key, *value, 0)
                .map_err(Error::dataplane(format!("adding a {what}")))?;
            written.push(i);
        }
    }
    for key in present {
        let keep = wanted
            .iter()
            .any(|(k, _)| k.prefix_len() == key.prefix_len() && k.data() == key.data());
        if !keep {
            match trie.remove(&key) {
                Ok(()) => {}
                Err(e) if is_missing_key(&e) => {}
                Err(e) => return Err(Error::dataplane(format!("removing a {what}"))(e)),
            }
        }
    }
    Ok(written)
}

/// Removes `keys` from `map`; a key already gone is fine (removal is idempotent). Returns
/// how many were removed.
fn remove_keys<K: aya::Pod, V: aya::Pod>(
    map: &mut HashMap<&mut MapData, K, V>,
    keys: impl IntoIterator<Item = K>,
    what: &str,
) -> Result<usize> {
    let mut removed = 0;
    for key in keys {
        match map.remove(&key) {
            Ok(()) => removed += 1,
            Err(e) if is_missing_key(&e) => {}
            Err(e) => return Err(Error::dataplane(what.to_string())(e)),
        }
    }
    Ok(removed)
}

/// Makes a hash map hold exactly `wanted`.
fn sync_hash_map<K: aya::Pod + Eq + std::hash::Hash, V: aya::Pod>(
    map: &mut HashMap<&mut MapData, K, V>,
    wanted: &std::collections::HashMap<K, V>,
    what: &str,
) -> Result<()> {
    let present: Vec<K> = map
        .keys()
        .collect::<Result<_, _>>()
        .map_err(Error::dataplane(format!("listing the {what}s")))?;
    let stale = present.into_iter().filter(|k| !wanted.contains_key(k));
    remove_keys(map, stale, &format!("removing a stale {what}"))?;
    for (key, value) in wanted {
        map.insert(key, value, 0)
            .map_err(Error::dataplane(format!("restoring a {what}")))?;
    }
    Ok(())
}

/// The `NETWORK_DIRECT_*` bits of a network's direct access.
fn direct_access_flags(access: DirectAccess) -> u32 {
    match access {
        DirectAccess::None => 0,
        DirectAccess::Published => NETWORK_DIRECT_PUBLISHED,
        DirectAccess::PublishedAndIcmp => NETWORK_DIRECT_PUBLISHED | NETWORK_DIRECT_ICMP,
        DirectAccess::Any => NETWORK_DIRECT_ANY,
    }
}

fn is_not_found(e: &aya::programs::links::LinkError) -> bool {
    matches!(e, aya::programs::links::LinkError::SyscallError(s) if s.io_error.kind() == std::io::ErrorKind::NotFound)
}

impl EbpfDataplane {
    /// Loads the programs, attaches the socket programs to `cgroup`, and starts the
    /// idle-flow cleanup. The uplinks come with [`Dataplane::set_uplinks`], on the hook
    /// `uplink_hook` says; until then the links an earlier agent pinned keep its programs.
    pub fn start(
        pin_dir: &Path,
        uplink_hook: UplinkHook,
        cgroup: &Path,
        sizes: FlowTableSizes,
        timeouts: FlowTimeouts,
    ) -> Result<Self> {
        let (mut ebpf, mut migration) = load_object_migrating(pin_dir, sizes)?;
        // Every program is loaded (verified: the longest step) before the tables are copied,
        // so that in an upgrade the copy, the uplinks' swap and the containers' swap follow
        // each other within microseconds: the earlier uplink program opens flows in the old
        // tables until its swap, and the containers' replies meet the old tables until
        // theirs.
        load_container_programs(&mut ebpf)?;
        load_uplink_programs(&mut ebpf)?;
        let links_dir = pin_dir.join(LINKS_DIR);
        fs::create_dir_all(&links_dir)
            .map_err(Error::io(format!("creating {}", links_dir.display())))?;
        migration.copy()?;
        // The links an earlier agent pinned get the new programs now, right after the
        // tables were copied: from here on no uplink program writes the old tables.
        uplinks::swap_pinned_xdp(program(&mut ebpf, UPLINK_PROGRAM)?, &links_dir)?;
        for (name, hook) in [
            (UPLINK_TC_PROGRAM, Hook::Tc),
            (UPLINK_L3_PROGRAM, Hook::TcL3),
        ] {
            uplinks::swap_pinned_tc(program(&mut ebpf, name)?, &links_dir, hook)?;
        }
        // And the containers' at once: the replies of flows the new uplink program opens
        // are translated from the new tables only.
        migration.swap_containers(&mut ebpf, CONTAINER_PROGRAM)?;
        let (events, _) = tokio::sync::broadcast::channel(1024);
        let ring = ebpf
            .take_map(EVENTS)
            .ok_or_else(|| Error::dataplane("map lookup")(MissingMap(EVENTS.into())))?;
        let ring = RingBuf::try_from(ring).map_err(Error::dataplane(EVENTS))?;
        tokio::spawn(read_events(ring, events.clone()));
        let gc = FlowGc::start(pin_dir, timeouts)?;
        let mut dataplane = EbpfDataplane {
            ebpf,
            pin_dir: pin_dir.to_path_buf(),
            links_dir,
            gc,
            node_config: NodeConfig::default(),
            events,
            uplink_hook,
            uplinks: BTreeMap::new(),
            masquerade_sources: BTreeMap::new(),
            masquerade_sources6: BTreeMap::new(),
        };
        dataplane.set_node_netns()?;
        dataplane.attach_socket_programs(cgroup)?;
        migration.finish(&mut dataplane.ebpf, CONTAINER_PROGRAM)?;
        Ok(dataplane)
    }

    /// Attaches the uplink program to `uplink` on `hook`. A link on the other hook, if any,
    /// goes afterwards ([`Dataplane::set_uplinks`]), so that the interface is never without
    /// the program.
    fn attach_uplink(&mut self, uplink: &UplinkLink, hook: Hook) -> Result<()> {
        match hook {
            Hook::Xdp => uplinks::attach_xdp(
                program(&mut self.ebpf, UPLINK_PROGRAM)?,
                &self.links_dir,
                uplink,
            )?,
            Hook::Tc => uplinks::attach_tc(
                program(&mut self.ebpf, UPLINK_TC_PROGRAM)?,
                &self.links_dir,
                uplink,
                hook,
            )?,
            Hook::TcL3 => uplinks::attach_tc(
                program(&mut self.ebpf, UPLINK_L3_PROGRAM)?,
                &self.links_dir,
                uplink,
                hook,
            )?,
        }
        tracing::info!(uplink = %uplink.name, hook = hook.name(), "attached");
        self.uplinks
            .insert(uplink.name.clone(), (uplink.index, hook));
        Ok(())
    }

    /// Tells the socket programs which namespace is the node's: this process's.
    fn set_node_netns(&mut self) -> Result<()> {
        let value = NodeConfig {
            netns_cookie: netns_cookie()?,
            ..self.node_config
        };
        self.write_node_config(value)
    }

    /// Writes the node's settings; `node_config` holds them once they are in the map.
    fn write_node_config(&mut self, value: NodeConfig) -> Result<()> {
        let mut config: Array<&mut MapData, NodeConfig> =
            Array::try_from(self.map_mut(NODE_CONFIG)?).map_err(Error::dataplane(NODE_CONFIG))?;
        config
            .set(0, value, 0)
            .map_err(Error::dataplane("writing the node's settings"))?;
        self.node_config = value;
        Ok(())
    }

    /// Attaches the cgroup socket-address programs (node-local access to published ports).
    /// A restarted agent attaches its programs next to the old ones first, then drops the
    /// old links, so that node-local connections are translated throughout.
    fn attach_socket_programs(&mut self, cgroup: &Path) -> Result<()> {
        let cgroup_dir = fs::File::open(cgroup)
            .map_err(Error::io(format!("opening cgroup {}", cgroup.display())))?;
        for name in SOCKET_PROGRAMS {
            let program: &mut CgroupSockAddr = program(&mut self.ebpf, name)?;
            program
                .load()
                .map_err(Error::dataplane(format!("loading {name}")))?;
            self.pin_cgroup_link(name, &cgroup_dir, cgroup)?;
        }
        Ok(())
    }

    /// Attaches the (loaded) socket program `name` to `cgroup_dir` in a new link, pinned in
    /// place of the link pinned before (which goes with its pin): until then the old link
    /// still translates, so node-local connections are translated throughout.
    fn pin_cgroup_link(&mut self, name: &str, cgroup_dir: &fs::File, cgroup: &Path) -> Result<()> {
        let pin = self.links_dir.join(format!("cgroup_{name}"));
        let program: &mut CgroupSockAddr = program(&mut self.ebpf, name)?;
        let id = program
            // Link-based attachments always coexist with others; flags must be zero.
            .attach(cgroup_dir, CgroupAttachMode::Single)
            .map_err(Error::dataplane(format!(
                "attaching {name} to {}",
                cgroup.display()
            )))?;
        let link = program
            .take_link(id)
            .map_err(Error::dataplane("taking a cgroup link"))?;
        let fd_link =
            FdLink::try_from(link).map_err(Error::dataplane("cgroup link is not a bpf_link"))?;
        uplinks::remove_pin(&pin)?;
        fd_link
            .pin(&pin)
            .map_err(Error::dataplane(format!("pinning {}", pin.display())))?;
        Ok(())
    }

    /// The kernel memory of every map pinned under the pin directory, in bytes.
    fn map_memory(&self) -> Result<u64> {
        let entries = fs::read_dir(&self.pin_dir)
            .map_err(Error::io(format!("listing {}", self.pin_dir.display())))?;
        let mut total = 0;
        for entry in entries {
            let entry = entry.map_err(Error::io(format!("listing {}", self.pin_dir.display())))?;
            // The links live in a directory of their own; every file here is a map.
            if entry.path() == self.links_dir {
                continue;
            }
            let map = MapData::from_pin(entry.path()).map_err(Error::dataplane(format!(
                "opening {}",
                entry.path().display()
            )))?;
            total += flows::map_memory(&map)?;
        }
        Ok(total)
    }

    fn tc_pin(&self, host_veth: &str) -> PathBuf {
        self.links_dir.join(format!("tc_{host_veth}"))
    }

    fn map_mut(&mut self, name: &str) -> Result<&mut aya::maps::Map> {
        self.ebpf
            .map_mut(name)
            .ok_or_else(|| Error::dataplane("map lookup")(MissingMap(name.to_string())))
    }

    fn map(&self, name: &str) -> Result<&aya::maps::Map> {
        self.ebpf
            .map(name)
            .ok_or_else(|| Error::dataplane("map lookup")(MissingMap(name.to_string())))
    }

    fn ports6_mut(&mut self) -> Result<HashMap<&mut MapData, PortKey6, PortTarget6>> {
        HashMap::try_from(self.map_mut(PUBLISHED_PORTS6)?)
            .map_err(Error::dataplane(PUBLISHED_PORTS6))
    }

    fn ports_mut(&mut self) -> Result<HashMap<&mut MapData, PortKey, PortTarget>> {
        HashMap::try_from(self.map_mut(PUBLISHED_PORTS)?).map_err(Error::dataplane(PUBLISHED_PORTS))
    }

    fn backends_mut<B: Backend>(&mut self) -> Result<HashMap<&mut MapData, B, u32>> {
        HashMap::try_from(self.map_mut(B::MAP)?).map_err(Error::dataplane(B::MAP))
    }

    /// One more host port leads to `key`.
    fn hold_backend<B: Backend>(&mut self, key: B) -> Result<()> {
        let mut map = self.backends_mut()?;
        let count = map.get(&key, 0).unwrap_or(0);
        map.insert(key, count + 1, 0)
            .map_err(Error::dataplane("adding a published backend"))
    }

    /// One host port less leads to `key`; the last one takes it away.
    fn release_backend<B: Backend>(&mut self, key: B) -> Result<()> {
        let mut map = self.backends_mut()?;
        let result = match map.get(&key, 0) {
            Ok(count) if count > 1 => map.insert(key, count - 1, 0),
            Ok(_) => map.remove(&key),
            Err(_) => return Ok(()),
        };
        match result {
            Ok(()) => Ok(()),
            Err(e) if is_missing_key(&e) => Ok(()),
            Err(e) => Err(Error::dataplane("removing a published backend")(e)),
        }
    }

    fn forget_endpoint(&mut self, container_ip: Ipv4Addr) -> Result<()> {
        let mut endpoints: HashMap<&mut MapData, EndpointKey, EndpointInfo> =
            HashMap::try_from(self.map_mut(ENDPOINTS)?).map_err(Error::dataplane(ENDPOINTS))?;
        match endpoints.remove(&EndpointKey {
            ip_be: u32::from(container_ip).to_be(),
        }) {
            Ok(()) => Ok(()),
            Err(e) if is_missing_key(&e) => Ok(()),
            Err(e) => Err(Error::dataplane("removing an endpoint")(e)),
        }
    }

    fn nat_flows_mut(&mut self) -> Result<HashMap<&mut MapData, FlowKey, NatFlow>> {
        HashMap::try_from(self.map_mut(NAT_FLOWS)?).map_err(Error::dataplane(NAT_FLOWS))
    }

    /// Removes the published-port flows that `nat` picks and the tracked flows (both
    /// entries, or the one left) that `ct` picks, walking each table once; returns how
    /// many entries went. A walk that could not read every entry is an error, after what
    /// it read is removed.
    fn remove_flows(
        &mut self,
        nat: impl Fn(&FlowKey, &NatFlow) -> bool,
        ct: impl Fn(&flows::CtFlow) -> bool,
    ) -> Result<usize> {
        let mut nat_flows = self.nat_flows_mut()?;
        let (entries, nat_walk) = flows::walk(&nat_flows).split(NAT_FLOWS);
        let stale = entries
            .into_iter()
            .filter(|(k, v)| nat(k, v))
            .map(|(k, _)| k);
        let mut removed = remove_keys(&mut nat_flows, stale, "removing a flow")?;
        removed += self.remove_tracked::<CtKey>(CONNTRACK, ct)?;
        nat_walk.map(|()| removed)
    }

    /// Removes the flows of the tracking table `name` (CONNTRACK or CONNTRACK6) that
    /// `pick` picks, both entries or the one left, walking it once; returns how many
    /// entries went. A walk that could not read every entry is an error, after what it
    /// read is removed.
    fn remove_tracked<K: flows::Tracked + aya::Pod>(
        &mut self,
        name: &str,
        pick: impl Fn(&flows::CtFlow<K>) -> bool,
    ) -> Result<usize>
    where
        K::Entry: aya::Pod,
    {
        let mut table: HashMap<&mut MapData, K, K::Entry> =
            HashMap::try_from(self.map_mut(name)?).map_err(Error::dataplane(name.to_string()))?;
        let (entries, walked) = flows::walk(&table).split(name);
        let stale = flows::pair_flows(entries)
            .into_iter()
            .filter(|flow| pick(flow))
            .flat_map(|flow| flow.keys());
        let removed = remove_keys(&mut table, stale, &format!("removing a {name} entry"))?;
        walked.map(|()| removed)
    }

    /// [`Dataplane::set_masquerade`]'s IPv6 side: MASQUERADE_SOURCES6 made to hold
    /// `wanted`, and the CONNTRACK6 flows masqueraded with a source that went ended, as
    /// IPv4's are (see there).
    fn set_masquerade_sources6(&mut self, wanted: BTreeMap<u32, Ipv6Addr>) -> Result<()> {
        let mut map: HashMap<&mut MapData, u32, [u8; 16]> =
            HashMap::try_from(self.map_mut(MASQUERADE_SOURCES6)?)
                .map_err(Error::dataplane(MASQUERADE_SOURCES6))?;
        let octets: std::collections::HashMap<u32, [u8; 16]> = wanted
            .iter()
            .map(|(index, ip)| (*index, ip.octets()))
            .collect();
        sync_hash_map(&mut map, &octets, "IPv6 masquerade source")?;
        let gone: Vec<Ipv6Addr> = self
            .masquerade_sources6
            .values()
            .filter(|ip| !wanted.values().any(|w| w == *ip))
            .copied()
            .collect();
        self.masquerade_sources6 = wanted;
        for previous in gone {
            let ended =
                self.remove_tracked::<CtKey6>(CONNTRACK6, |flow| flow.involves(previous.octets()))?;
            tracing::info!(
                source = %previous,
                entries = ended,
                "ended the flows masqueraded with a former source"
            );
        }
        Ok(())
    }

    /// Forgets the IPv6 flows of a container that goes away: its published-port flows, its
    /// tracked ones (masqueraded, or through a `--link`) and its untranslated ones, so that
    /// a container given the address later inherits none.
    fn forget_flows6(&mut self, container_ip: Ipv6Addr) -> Result<()> {
        let ip = container_ip.octets();
        let mut flows: HashMap<&mut MapData, FlowKey6, NatFlow6> =
            HashMap::try_from(self.map_mut(NAT_FLOWS6)?).map_err(Error::dataplane(NAT_FLOWS6))?;
        let (entries, walked) = flows::walk(&flows).split(NAT_FLOWS6);
        let stale = entries.into_keys().filter(|key| key.container_ip == ip);
        remove_keys(&mut flows, stale, "removing an IPv6 flow")?;
        walked?;
        // Its masqueraded and untranslated flows too, as IPv4's: a container given the
        // address later must not inherit them.
        self.remove_tracked::<CtKey6>(CONNTRACK6, |flow| flow.involves(ip))?;
        self.forget_routed_flows(ROUTED_FLOWS6, |key: &FlowKey6| key.container_ip == ip)
    }

    /// Forgets the untranslated flows in `map` (ROUTED_FLOWS, ROUTED_FLOWS6) that
    /// `of_container` picks.
    fn forget_routed_flows<K: aya::Pod>(
        &mut self,
        map: &'static str,
        of_container: impl Fn(&K) -> bool,
    ) -> Result<()> {
        let mut routed: HashMap<&mut MapData, K, u32> =
            HashMap::try_from(self.map_mut(map)?).map_err(Error::dataplane(map))?;
        let stale: Vec<K> = routed
            .keys()
            .filter_map(|key| key.ok())
            .filter(|key| of_container(key))
            .collect();
        remove_keys(&mut routed, stale, "forgetting an untranslated flow").map(drop)
    }

    /// Forgets the flows of a container that goes away.
    fn forget_flows(&mut self, container_ip: Ipv4Addr) -> Result<()> {
        let ip_be = u32::from(container_ip).to_be();
        self.remove_flows(
            // Flows to the container, and hairpin flows it opened as a client.
            |key, flow| key.container_ip_be == ip_be || flow.client_ip_be == ip_be,
            |flow| flow.involves(ip_be),
        )?;
        // Its untranslated flows too: a container given the address later must not inherit
        // them.
        self.forget_routed_flows(ROUTED_FLOWS, |key: &FlowKey| key.container_ip_be == ip_be)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the eBPF object has no map or program named {0}")]
struct MissingMap(String);

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let program = ebpf
        .program_mut(name)
        .ok_or_else(|| Error::dataplane("program lookup")(MissingMap(name.to_string())))?;
    program
        .try_into()
        .map_err(Error::dataplane(format!("program {name}")))
}

impl Dataplane for EbpfDataplane {
    fn name(&self) -> &'static str {
        "ebpf"
    }

    /// Everything: the programs do in the kernel what netfilter would, and handle the
    /// hairpin path themselves.
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            endpoint_programs: true,
            hairpin_ports: false,
            node_addresses: true,
            masquerade: true,
            network_policy: true,
            links: true,
            source_filters: true,
            flows: true,
            flow_tables: true,
            monitor_events: true,
            ipv6: true,
        }
    }

    fn set_node_addresses(&mut self, addresses: &[(u32, IpAddr)]) -> Result<()> {
        let wanted6: std::collections::HashMap<NodeAddrKey6, NodeAddr> = ipv6_only(addresses)
            .into_iter()
            .map(|(ifindex, ip)| (NodeAddrKey6 { addr: ip.octets() }, NodeAddr { ifindex }))
            .collect();
        let mut map6: HashMap<&mut MapData, NodeAddrKey6, NodeAddr> =
            HashMap::try_from(self.map_mut(NODE_ADDRS6)?).map_err(Error::dataplane(NODE_ADDRS6))?;
        sync_hash_map(&mut map6, &wanted6, "IPv6 node address")?;
        let addresses = ipv4_only(addresses);
        let mut map: HashMap<&mut MapData, NodeAddrKey, NodeAddr> =
            HashMap::try_from(self.map_mut(NODE_ADDRS)?).map_err(Error::dataplane(NODE_ADDRS))?;
        let wanted: HashSet<u32> = addresses
            .iter()
            .map(|(_, ip)| u32::from(*ip).to_be())
            .collect();
        let present: Vec<NodeAddrKey> = map
            .keys()
            .collect::<Result<_, _>>()
            .map_err(Error::dataplane("listing the node addresses"))?;
        let stale = present.into_iter().filter(|k| !wanted.contains(&k.addr_be));
        for key in stale {
            map.remove(&key)
                .map_err(Error::dataplane("removing a node address"))?;
        }
        for (ifindex, ip) in &addresses {
            map.insert(
                NodeAddrKey {
                    addr_be: u32::from(*ip).to_be(),
                },
                NodeAddr { ifindex: *ifindex },
                0,
            )
            .map_err(Error::dataplane("adding a node address"))?;
        }
        Ok(())
    }

    fn attach_endpoint(&mut self, endpoint: &Endpoint) -> Result<()> {
        // ENDPOINTS is keyed by IPv4 address: an endpoint on an IPv6-only network has no
        // entry, and its program handles its IPv6 traffic by the IPv6 maps.
        if let Some((key, info)) = endpoint_entry(endpoint) {
            let mut endpoints: HashMap<&mut MapData, EndpointKey, EndpointInfo> =
                HashMap::try_from(self.map_mut(ENDPOINTS)?).map_err(Error::dataplane(ENDPOINTS))?;
            endpoints
                .insert(key, info, 0)
                .map_err(Error::dataplane("adding an endpoint"))?;
        }
        let pin = self.tc_pin(&endpoint.host_veth);
        let tc: &mut SchedClassifier = program(&mut self.ebpf, CONTAINER_PROGRAM)?;
        match PinnedLink::from_pin(&pin) {
            Ok(old) => {
                let link = SchedClassifierLink::try_from(FdLink::from(old))
                    .map_err(Error::dataplane("adopting a pinned TC link"))?;
                match tc.attach_to_link(link) {
                    Ok(id) => {
                        // The link stays pinned; dropping our handle only closes a descriptor.
                        drop(tc.take_link(id));
                        return Ok(());
                    }
                    // The veth it was attached to is gone (and now made again): the old
                    // link is severed, so drop its pin and attach afresh below.
                    Err(e) => {
                        tracing::info!(veth = %endpoint.host_veth, "pinned TC link is stale ({e}); attaching anew");
                        fs::remove_file(&pin)
                            .map_err(Error::io(format!("removing {}", pin.display())))?;
                    }
                }
            }
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(Error::dataplane(format!("opening {}", pin.display()))(e)),
        }
        let id = tc
            .attach(&endpoint.host_veth, TcAttachType::Ingress)
            .map_err(Error::dataplane(format!(
                "attaching TC to {}",
                endpoint.host_veth
            )))?;
        let link = tc
            .take_link(id)
            .map_err(Error::dataplane("taking the TC link"))?;
        let fd_link = FdLink::try_from(link).map_err(Error::dataplane(
            "TC link is not a bpf_link (TCX needs kernel >= 6.6)",
        ))?;
        fd_link
            .pin(&pin)
            .map_err(Error::dataplane(format!("pinning {}", pin.display())))?;
        Ok(())
    }

    fn retain_endpoints(&mut self, keep: &[String]) -> Result<()> {
        let entries = fs::read_dir(&self.links_dir)
            .map_err(Error::io(format!("listing {}", self.links_dir.display())))?;
        let mut errors = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(veth) = name.strip_prefix("tc_") else {
                continue;
            };
            if !keep.iter().any(|k| k == veth)
                && let Err(e) = fs::remove_file(entry.path())
            {
                errors.push(Error::io(format!("removing {}", entry.path().display()))(e));
            }
        }
        Error::collect(errors)
    }

    fn detach_endpoint(&mut self, endpoint: &Endpoint) -> Result<()> {
        let mut errors = Vec::new();
        // Removing the pin drops the last reference to the link, which detaches it.
        let pin = self.tc_pin(&endpoint.host_veth);
        if let Err(e) = fs::remove_file(&pin)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            errors.push(Error::io(format!("removing {}", pin.display()))(e));
        }
        if let Some(ip) = endpoint.container_ipv6
            && let Err(e) = self.forget_flows6(ip)
        {
            errors.push(e);
        }
        if let Some(ip) = endpoint.container_ip {
            if let Err(e) = self.forget_flows(ip) {
                errors.push(e);
            }
            if let Err(e) = self.forget_endpoint(ip) {
                errors.push(e);
            }
        }
        Error::collect(errors)
    }

    fn publish(&mut self, endpoint: &Endpoint, port: &PortBinding) -> Result<()> {
        if let IpAddr::V6(host_ip) = port.host_ip {
            let Some(target) = port_target6(endpoint, port) else {
                return Ok(());
            };
            let key = port_key6(host_ip, port);
            let mut ports = self.ports6_mut()?;
            let previous = ports.get(&key, 0).ok();
            ports
                .insert(key, target, 0)
                .map_err(Error::dataplane("adding an IPv6 published port"))?;
            if let Some(previous) = previous {
                self.release_backend(backend_of6(&key, &previous))?;
            }
            return self.hold_backend(backend_of6(&key, &target));
        }
        let Some(target) = port_target(endpoint, port) else {
            return Ok(());
        };
        let key = port_key(port)?;
        let mut ports = self.ports_mut()?;
        let previous = ports.get(&key, 0).ok();
        ports
            .insert(key, target, 0)
            .map_err(Error::dataplane("adding a published port"))?;
        if let Some(previous) = previous {
            self.release_backend(backend_of(&key, &previous))?;
        }
        self.hold_backend(backend_of(&key, &target))
    }

    fn unpublish(&mut self, port: &PortBinding) -> Result<()> {
        if let IpAddr::V6(host_ip) = port.host_ip {
            let key = port_key6(host_ip, port);
            let Ok(previous) = self.ports6_mut()?.get(&key, 0) else {
                return Ok(());
            };
            remove_keys(
                &mut self.ports6_mut()?,
                [key],
                "removing an IPv6 published port",
            )?;
            return self.release_backend(backend_of6(&key, &previous));
        }
        let key = port_key(port)?;
        let Ok(previous) = self.ports_mut()?.get(&key, 0) else {
            return Ok(());
        };
        remove_keys(&mut self.ports_mut()?, [key], "removing a published port")?;
        self.release_backend(backend_of(&key, &previous))
    }

    fn sync_published(&mut self, wanted: &[(Endpoint, PortBinding)]) -> Result<()> {
        let ports6 = ports6(wanted);
        let backends6 = backend_counts(&ports6, backend_of6);
        sync_hash_map(&mut self.ports6_mut()?, &ports6, "IPv6 published port")?;
        sync_hash_map(
            &mut self.backends_mut()?,
            &backends6,
            "IPv6 published backend",
        )?;
        let ports = ports4(wanted)?;
        let backends = backend_counts(&ports, backend_of);
        sync_hash_map(&mut self.ports_mut()?, &ports, "published port")?;
        sync_hash_map(&mut self.backends_mut()?, &backends, "published backend")
    }

    fn published(&self) -> Result<Vec<PublishedPort>> {
        let map: HashMap<&MapData, PortKey, PortTarget> =
            HashMap::try_from(self.map(PUBLISHED_PORTS)?)
                .map_err(Error::dataplane(PUBLISHED_PORTS))?;
        let mut out = Vec::new();
        for entry in map.iter() {
            let (key, target) = entry.map_err(Error::dataplane("reading published ports"))?;
            out.push(PublishedPort {
                host_ip: Ipv4Addr::from(u32::from_be(key.host_ip_be)).into(),
                host_port: u16::from_be(key.host_port_be),
                proto: match key.proto {
                    dataplane_common::IPPROTO_TCP => "tcp".into(),
                    dataplane_common::IPPROTO_UDP => "udp".into(),
                    other => other.to_string(),
                },
                container_ip: Ipv4Addr::from(u32::from_be(target.container_ip_be)).into(),
                container_port: u16::from_be(target.container_port_be),
                host_veth_ifindex: target.host_veth_ifindex,
            });
        }
        let map6: HashMap<&MapData, PortKey6, PortTarget6> =
            HashMap::try_from(self.map(PUBLISHED_PORTS6)?)
                .map_err(Error::dataplane(PUBLISHED_PORTS6))?;
        for entry in map6.iter() {
            let (key, target) = entry.map_err(Error::dataplane("reading published ports"))?;
            out.push(PublishedPort {
                host_ip: Ipv6Addr::from(key.host_ip).into(),
                host_port: u16::from_be(key.host_port_be),
                proto: proto_name(key.proto),
                container_ip: Ipv6Addr::from(target.container_ip).into(),
                container_port: u16::from_be(target.container_port_be),
                host_veth_ifindex: target.host_veth_ifindex,
            });
        }
        out.sort_by_key(|p| (p.host_port, p.host_ip));
        Ok(out)
    }

    fn stats(&self) -> Result<Vec<StatCounter>> {
        let map: PerCpuArray<&MapData, Counter> =
            PerCpuArray::try_from(self.map(STATS)?).map_err(Error::dataplane(STATS))?;
        Stat::ALL
            .iter()
            .map(|stat| {
                let per_cpu = map
                    .get(&(*stat as u32), 0)
                    .map_err(Error::dataplane("reading counters"))?;
                Ok(StatCounter {
                    name: stat.name().to_string(),
                    packets: per_cpu.iter().map(|c| c.packets).sum(),
                    bytes: per_cpu.iter().map(|c| c.bytes).sum(),
                })
            })
            .collect()
    }

    fn set_networks(&mut self, networks: &[NetworkPolicy]) -> Result<()> {
        let wanted: Vec<(Key<NetworkKey>, NetworkInfo)> =
            networks.iter().filter_map(network_entry).collect();
        let mut trie: LpmTrie<&mut MapData, NetworkKey, NetworkInfo> =
            LpmTrie::try_from(self.map_mut(NETWORKS)?).map_err(Error::dataplane(NETWORKS))?;
        sync_trie(&mut trie, &wanted, "network")?;
        let wanted6: Vec<(Key<NetworkKey6>, NetworkInfo)> =
            networks.iter().filter_map(network_entry6).collect();
        let mut trie6: LpmTrie<&mut MapData, NetworkKey6, NetworkInfo> =
            LpmTrie::try_from(self.map_mut(NETWORKS6)?).map_err(Error::dataplane(NETWORKS6))?;
        sync_trie(&mut trie6, &wanted6, "IPv6 network")?;
        // Trusted interfaces by index: one that does not exist now is left out until the
        // networks are synced again (an agent restart, a network created or removed).
        let trusted: std::collections::HashMap<TrustedIfaceKey, u32> = networks
            .iter()
            .flat_map(|n| {
                n.trusted_interfaces.iter().filter_map(|name| {
                    let ifindex = nix::net::if_::if_nametoindex(name.as_str()).ok()?;
                    Some((
                        TrustedIfaceKey {
                            network_index: n.index,
                            ifindex,
                        },
                        1,
                    ))
                })
            })
            .collect();
        let mut map: HashMap<&mut MapData, TrustedIfaceKey, u32> =
            HashMap::try_from(self.map_mut(TRUSTED_IFACES)?)
                .map_err(Error::dataplane(TRUSTED_IFACES))?;
        sync_hash_map(&mut map, &trusted, "trusted interface")
    }

    fn set_filters(&mut self, rules: &[FilterRecord]) -> Result<()> {
        let (wanted, wanted6) = filter_entries(rules);
        let mut trie: LpmTrie<&mut MapData, FilterKey, FilterRule> =
            LpmTrie::try_from(self.map_mut(FILTER_RULES)?)
                .map_err(Error::dataplane(FILTER_RULES))?;
        let mut added: Vec<u32> = sync_trie(&mut trie, &wanted, "filter rule")?
            .into_iter()
            .map(|i| wanted[i].1.rule_id)
            .collect();
        let mut trie6: LpmTrie<&mut MapData, FilterKey6, FilterRule> =
            LpmTrie::try_from(self.map_mut(FILTER_RULES6)?)
                .map_err(Error::dataplane(FILTER_RULES6))?;
        added.extend(
            sync_trie(&mut trie6, &wanted6, "IPv6 filter rule")?
                .into_iter()
                .map(|i| wanted6[i].1.rule_id),
        );
        // A rule id may be a reused one: its counters start from zero.
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| Error::io("counting CPUs")(e))?;
        let mut hits: PerCpuArray<&mut MapData, Counter> =
            PerCpuArray::try_from(self.map_mut(FILTER_HITS)?)
                .map_err(Error::dataplane(FILTER_HITS))?;
        for id in added {
            let zero = PerCpuValues::try_from(vec![Counter::default(); cpus])
                .map_err(|e| Error::io("per-CPU values")(e))?;
            hits.set(id, zero, 0)
                .map_err(Error::dataplane("resetting filter hits"))?;
        }
        Ok(())
    }

    fn filter_hits(&self, rule_id: u32) -> Result<FilterHits> {
        let hits: PerCpuArray<&MapData, Counter> =
            PerCpuArray::try_from(self.map(FILTER_HITS)?).map_err(Error::dataplane(FILTER_HITS))?;
        let per_cpu = hits
            .get(&rule_id, 0)
            .map_err(Error::dataplane("reading filter hits"))?;
        Ok(FilterHits {
            packets: per_cpu.iter().map(|c| c.packets).sum(),
            bytes: per_cpu.iter().map(|c| c.bytes).sum(),
        })
    }

    fn flow_lister(&self) -> Result<FlowLister> {
        // Handles of its own, opened now, so the job needs nothing of the dataplane's.
        let tables = FlowTables {
            nat_flows: flows::open_table(&self.pin_dir, NAT_FLOWS)?,
            nat_flows6: flows::open_table(&self.pin_dir, NAT_FLOWS6)?,
            conntrack: flows::open_table(&self.pin_dir, CONNTRACK)?,
            conntrack6: flows::open_table(&self.pin_dir, CONNTRACK6)?,
        };
        Ok(Box::new(move || list_flows(&tables)))
    }

    fn flush_flows(&mut self) -> Result<usize> {
        let mut flows6: HashMap<&mut MapData, FlowKey6, NatFlow6> =
            HashMap::try_from(self.map_mut(NAT_FLOWS6)?).map_err(Error::dataplane(NAT_FLOWS6))?;
        let (entries, walked) = flows::walk(&flows6).split(NAT_FLOWS6);
        let removed6 = remove_keys(&mut flows6, entries.into_keys(), "removing an IPv6 flow")?;
        walked?;
        let tracked6 = self.remove_tracked::<CtKey6>(CONNTRACK6, |_| true)?;
        Ok(self.remove_flows(|_, _| true, |_| true)? + removed6 + tracked6)
    }

    fn flow_tables(&self) -> Result<FlowTablesInfo> {
        let report = self.gc.report();
        let table = |name: &str, data: &MapData, entries: u64| -> Result<FlowTableInfo> {
            let info = data.info().map_err(Error::dataplane(name))?;
            Ok(FlowTableInfo {
                name: name.into(),
                max_entries: info.max_entries(),
                entries,
                memory_bytes: flows::map_memory(data)?,
            })
        };
        let conntrack: HashMap<&MapData, CtKey, CtEntry> =
            HashMap::try_from(self.map(CONNTRACK)?).map_err(Error::dataplane(CONNTRACK))?;
        let nat_flows: HashMap<&MapData, FlowKey, NatFlow> =
            HashMap::try_from(self.map(NAT_FLOWS)?).map_err(Error::dataplane(NAT_FLOWS))?;
        Ok(FlowTablesInfo {
            tables: vec![
                table(CONNTRACK, conntrack.map(), report.conntrack_entries)?,
                table(NAT_FLOWS, nat_flows.map(), report.nat_flows_entries)?,
            ],
            map_memory_bytes: self.map_memory()?,
            gc: report.stats,
        })
    }

    fn shutdown(&mut self) {
        self.gc.stop();
    }

    fn subscribe(&self) -> Result<tokio::sync::broadcast::Receiver<MonitorEvent>> {
        Ok(self.events.subscribe())
    }

    fn programs(&self) -> Result<Vec<ProgramInfo>> {
        loaded_programs(&self.ebpf)
    }

    fn set_uplinks(&mut self, wanted: &[UplinkLink]) -> Vec<UplinkInfo> {
        let mut infos = Vec::new();
        // Interfaces whose attachment failed keep what an earlier agent pinned on them.
        let mut failed = Vec::new();
        for uplink in wanted {
            let result = match Hook::choose(self.uplink_hook, uplink) {
                Ok(hook) if self.uplinks.get(&uplink.name) == Some(&(uplink.index, hook)) => {
                    Ok(hook)
                }
                Ok(hook) => self.attach_uplink(uplink, hook).map(|()| hook),
                Err(e) => Err(Error::InvalidArgument(e.to_string())),
            };
            let (hook, error) = match result {
                Ok(hook) => (hook.name(), None),
                Err(e) => {
                    tracing::warn!(uplink = %uplink.name, "{e}");
                    self.uplinks.remove(&uplink.name);
                    failed.push(uplink.name.clone());
                    ("none", Some(e.to_string()))
                }
            };
            infos.push(UplinkInfo {
                name: uplink.name.clone(),
                hook: hook.into(),
                error,
            });
        }
        let names: Vec<&String> = wanted.iter().map(|u| &u.name).collect();
        self.uplinks.retain(|name, _| names.contains(&name));
        // Whatever else is pinned (an interface gone, no longer wanted, or on the other
        // hook now) goes.
        let keep: Vec<(&str, Hook)> = self
            .uplinks
            .iter()
            .map(|(name, (_, hook))| (name.as_str(), *hook))
            .collect();
        match uplinks::attached(&self.links_dir) {
            Ok(pinned) => {
                for (name, hook) in pinned {
                    if keep.contains(&(name.as_str(), hook)) || failed.contains(&name) {
                        continue;
                    }
                    match uplinks::detach(&self.links_dir, &name, hook) {
                        Ok(()) => tracing::info!(uplink = %name, hook = hook.name(), "detached"),
                        Err(e) => tracing::warn!(uplink = %name, "{e}"),
                    }
                }
            }
            Err(e) => tracing::warn!("{e}"),
        }
        infos
    }

    fn set_links(&mut self, links: &[LinkRule]) -> Result<()> {
        let (wanted, wanted6) = link_keys(links);
        let mut map: HashMap<&mut MapData, LinkKey, u32> =
            HashMap::try_from(self.map_mut(LINKS)?).map_err(Error::dataplane(LINKS))?;
        sync_hash_map(&mut map, &wanted, "link")?;
        let mut map6: HashMap<&mut MapData, LinkKey6, u32> =
            HashMap::try_from(self.map_mut(LINKS6)?).map_err(Error::dataplane(LINKS6))?;
        sync_hash_map(&mut map6, &wanted6, "IPv6 link")
    }

    fn set_masquerade(
        &mut self,
        sources: &[(u32, IpAddr)],
        ports: Option<(u16, u16)>,
    ) -> Result<()> {
        // Zeros tell the programs to choose as netfilter does.
        let (min, max) = ports.unwrap_or((0, 0));
        let value = NodeConfig {
            masquerade_ip_be: 0,
            masquerade_port_min: min,
            masquerade_port_max: max,
            ..self.node_config
        };
        self.write_node_config(value)?;
        self.set_masquerade_sources6(ipv6_only(sources).into_iter().collect())?;
        let wanted: BTreeMap<u32, Ipv4Addr> = ipv4_only(sources).into_iter().collect();
        if wanted == self.masquerade_sources {
            return Ok(());
        }
        let mut map: HashMap<&mut MapData, u32, u32> =
            HashMap::try_from(self.map_mut(MASQUERADE_SOURCES)?)
                .map_err(Error::dataplane(MASQUERADE_SOURCES))?;
        let wanted_be: std::collections::HashMap<u32, u32> = wanted
            .iter()
            .map(|(index, ip)| (*index, u32::from(*ip).to_be()))
            .collect();
        sync_hash_map(&mut map, &wanted_be, "masquerade source")?;
        // A source that went (an interface's address removed or changed) has no way back:
        // flows translated to it would keep a container's repeated datagrams (same ports,
        // same peer) on it. MASQUERADE ends them too, so that the next packet starts afresh.
        let gone: Vec<u32> = self
            .masquerade_sources
            .values()
            .filter(|ip| !wanted.values().any(|w| w == *ip))
            .map(|ip| u32::from(*ip).to_be())
            .collect();
        self.masquerade_sources = wanted;
        for previous_ip_be in gone {
            let ended = self.remove_flows(|_, _| false, |flow| flow.involves(previous_ip_be))?;
            tracing::info!(
                source = %Ipv4Addr::from(u32::from_be(previous_ip_be)),
                entries = ended,
                "ended the flows masqueraded with a former source"
            );
        }
        Ok(())
    }

    fn repair(&mut self, intended: &Intended, repaired: &mut Vec<Repaired>) -> Result<()> {
        let errors: Vec<Error> = [
            self.repair_uplink_programs(repaired),
            self.repair_socket_programs(intended.cgroup, repaired),
            self.repair_container_programs(repaired),
            self.repair_uplink_program_arrays(repaired),
            self.repair_endpoints(intended.endpoints, repaired),
            self.repair_published(intended.published, repaired),
            self.repair_policy(intended, repaired),
            self.repair_node_addresses(intended.node_addresses, repaired),
        ]
        .into_iter()
        .filter_map(Result::err)
        .collect();
        Error::collect(errors)
    }
}

/// What a pinned link is attached to, read from its descriptor's fdinfo: the interface
/// index (XDP, TCX) or the cgroup id (cgroup links); 0 once the link was detached (e.g.
/// `bpftool link detach`). `None` when the pin is gone, which detached it too.
fn pinned_link_target(pin: &Path) -> Result<Option<u64>> {
    use std::os::{fd::FromRawFd as _, unix::ffi::OsStrExt as _};
    /// `union bpf_attr` for `BPF_OBJ_GET`.
    #[repr(C)]
    struct ObjGet {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
    }
    const BPF_OBJ_GET: libc::c_long = 7;
    let context = || format!("opening {}", pin.display());
    let path = std::ffi::CString::new(pin.as_os_str().as_bytes())
        .map_err(|e| Error::io(context())(std::io::Error::other(e)))?;
    let attr = ObjGet {
        pathname: path.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
    };
    // SAFETY: `attr` and the path it points to live through the call; the kernel reads
    // `size_of::<ObjGet>()` bytes of it.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET,
            &attr as *const ObjGet,
            size_of::<ObjGet>(),
        )
    };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        return match e.kind() {
            std::io::ErrorKind::NotFound => Ok(None),
            _ => Err(Error::io(context())(e)),
        };
    }
    // SAFETY: the kernel just gave us this descriptor; nothing else owns it.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) };
    let fdinfo = fs::read_to_string(format!(
        "/proc/self/fdinfo/{}",
        std::os::fd::AsRawFd::as_raw_fd(&fd)
    ))
    .map_err(Error::io(context()))?;
    Ok(Some(link_target_of_fdinfo(&fdinfo).unwrap_or(0)))
}

/// The id of the program in slot `index` of the program array `slots`; `None` when the
/// slot is empty. aya writes program arrays but does not read them.
fn program_array_slot(slots: &MapData, index: u32) -> Result<Option<u32>> {
    use std::os::fd::{AsFd as _, AsRawFd as _};
    /// `union bpf_attr` for `BPF_MAP_LOOKUP_ELEM`.
    #[repr(C)]
    struct MapElem {
        map_fd: u32,
        _pad: u32,
        key: u64,
        value: u64,
        flags: u64,
    }
    const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
    let mut id: u32 = 0;
    let attr = MapElem {
        map_fd: slots.fd().as_fd().as_raw_fd() as u32,
        _pad: 0,
        key: &index as *const u32 as u64,
        value: &mut id as *mut u32 as u64,
        flags: 0,
    };
    // SAFETY: `attr` and the key and value it points to live through the call; the kernel
    // reads `size_of::<MapElem>()` bytes of it and writes 4 bytes (a program array's value,
    // read from userspace, is the program's id) to `value`.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_LOOKUP_ELEM,
            &attr as *const MapElem,
            size_of::<MapElem>(),
        )
    };
    if ret < 0 {
        let e = std::io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENOENT) => Ok(None),
            _ => Err(Error::io(format!("reading {CONTAINER_PROGRAMS}"))(e)),
        };
    }
    Ok(Some(id))
}

/// The `ifindex` or `cgroup_id` line of a link's fdinfo.
fn link_target_of_fdinfo(fdinfo: &str) -> Option<u64> {
    fdinfo.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        matches!(key, "ifindex" | "cgroup_id")
            .then(|| value.trim().parse().ok())
            .flatten()
    })
}

/// The entry of an endpoint in ENDPOINTS; none for an endpoint without IPv4.
fn endpoint_entry(endpoint: &Endpoint) -> Option<(EndpointKey, EndpointInfo)> {
    Some((
        EndpointKey {
            ip_be: u32::from(endpoint.container_ip?).to_be(),
        },
        EndpointInfo {
            host_veth_ifindex: endpoint.host_veth_ifindex,
            gateway_ip_be: u32::from(endpoint.gateway?).to_be(),
            container_mac: endpoint.container_mac,
            host_veth_mac: endpoint.host_veth_mac,
        },
    ))
}

/// Writes each of `wanted` that `map` lacks or holds otherwise; returns the ones written.
/// Entries `map` has beyond them are left: repair puts back, it does not prune.
fn restore_entries<'w, K: aya::Pod, V: aya::Pod + PartialEq>(
    map: &mut HashMap<&mut MapData, K, V>,
    wanted: impl IntoIterator<Item = (&'w K, &'w V)>,
    what: &str,
) -> Result<Vec<&'w K>> {
    let mut restored = Vec::new();
    for (key, value) in wanted {
        if map.get(key, 0).ok().as_ref() != Some(value) {
            map.insert(key, value, 0)
                .map_err(Error::dataplane(format!("restoring a {what}")))?;
            restored.push(key);
        }
    }
    Ok(restored)
}

/// Drift repair ([`Dataplane::repair`]).
impl EbpfDataplane {
    /// Each uplink's link: pinned and attached to its interface, else attached anew on
    /// the same hook.
    fn repair_uplink_programs(&mut self, repaired: &mut Vec<Repaired>) -> Result<()> {
        let attached: Vec<(String, u32, Hook)> = self
            .uplinks
            .iter()
            .map(|(name, (index, hook))| (name.clone(), *index, *hook))
            .collect();
        let mut errors = Vec::new();
        for (name, index, hook) in attached {
            let pin = hook.pin(&self.links_dir, &name);
            match pinned_link_target(&pin) {
                Ok(Some(target)) if target == u64::from(index) => continue,
                Ok(_) => {}
                Err(e) => {
                    errors.push(e);
                    continue;
                }
            }
            let uplink = UplinkLink {
                name: name.clone(),
                index,
                kind: None,
                framing: match hook {
                    Hook::TcL3 => Framing::Ip,
                    Hook::Xdp | Hook::Tc => Framing::Ethernet,
                },
            };
            match uplinks::remove_pin(&pin).and_then(|()| self.attach_uplink(&uplink, hook)) {
                Ok(()) => repaired.push(Repaired {
                    kind: RepairKind::ProgramReattached,
                    what: format!("{} program on {name}", hook.name()),
                }),
                Err(e) => errors.push(e),
            }
        }
        Error::collect(errors)
    }

    /// The slots the container programs tail-call: `container_ingress6` in
    /// `CONTAINER_PROGRAMS`, `container_masquerade6`, `container_link6` and
    /// `container_reply6` in `CONTAINER6_PROGRAMS`, this agent's, put back if a slot was
    /// emptied or given another program (`bpftool map`), which would leave every
    /// container's IPv6 (or its masquerade, its links through `icc=false`, or its errors
    /// and fragmented replies) a counted drop.
    fn repair_container_programs(&mut self, repaired: &mut Vec<Repaired>) -> Result<()> {
        let tail_called = CONTAINER6_TAIL_CALLS
            .iter()
            .map(|(name, slot)| (*name, CONTAINER6_PROGRAMS, *slot));
        let slots = [(CONTAINER6_PROGRAM, CONTAINER_PROGRAMS, CONTAINER_IPV6_SLOT)];
        for (name, array, slot) in slots.into_iter().chain(tail_called) {
            let ours = program::<SchedClassifier>(&mut self.ebpf, name)?
                .info()
                .map_err(Error::dataplane(format!("reading {name}'s info")))?
                .id();
            let aya::maps::Map::ProgramArray(slots) = self.map(array)? else {
                return Err(Error::dataplane("map lookup")(MissingMap(array.into())));
            };
            if program_array_slot(slots, slot)? == Some(ours) {
                continue;
            }
            let fd = program_fd(program::<SchedClassifier>(&mut self.ebpf, name)?.fd())?;
            fill_program_array(&mut self.ebpf, array, slot, &fd)?;
            repaired.push(Repaired {
                kind: RepairKind::ProgramReattached,
                what: format!("{name} in {array}"),
            });
        }
        Ok(())
    }

    /// The slots the uplink programs tail-call for IPv6, and those the uplinks' IPv6
    /// programs tail-call for the replies of masqueraded IPv6 flows, as
    /// [`EbpfDataplane::repair_container_programs`] keeps `container_ingress`'s: an emptied
    /// slot would send every IPv6 frame of those uplinks (or every such reply) to the
    /// node's stack untranslated.
    fn repair_uplink_program_arrays(&mut self, repaired: &mut Vec<Repaired>) -> Result<()> {
        for (array, slot, name) in [
            (UPLINK_XDP_PROGRAMS, UPLINK_IPV6_SLOT, UPLINK6_PROGRAM),
            (UPLINK_TC_PROGRAMS, UPLINK_IPV6_SLOT, UPLINK6_TC_PROGRAM),
            (UPLINK_TC_PROGRAMS, UPLINK_L3_IPV6_SLOT, UPLINK6_L3_PROGRAM),
            (
                UPLINK6_XDP_PROGRAMS,
                UPLINK6_MASQUERADE_SLOT,
                UPLINK_MASQUERADE6_PROGRAM,
            ),
            (
                UPLINK6_TC_PROGRAMS,
                UPLINK6_MASQUERADE_SLOT,
                UPLINK_MASQUERADE6_TC_PROGRAM,
            ),
            (
                UPLINK6_TC_PROGRAMS,
                UPLINK6_L3_MASQUERADE_SLOT,
                UPLINK_MASQUERADE6_L3_PROGRAM,
            ),
        ] {
            let program = self
                .ebpf
                .program(name)
                .ok_or_else(|| Error::dataplane("program lookup")(MissingMap(name.into())))?;
            let ours = program
                .info()
                .map_err(Error::dataplane(format!("reading {name}'s info")))?
                .id();
            let fd = program_fd(program.fd())?;
            let aya::maps::Map::ProgramArray(slots) = self.map(array)? else {
                return Err(Error::dataplane("map lookup")(MissingMap(array.into())));
            };
            if program_array_slot(slots, slot)? == Some(ours) {
                continue;
            }
            let mut slots: ProgramArray<&mut MapData> =
                ProgramArray::try_from(self.map_mut(array)?).map_err(Error::dataplane(array))?;
            slots
                .set(slot, &fd, 0)
                .map_err(Error::dataplane("filling an uplink program array"))?;
            repaired.push(Repaired {
                kind: RepairKind::ProgramReattached,
                what: format!("{name} in {array}"),
            });
        }
        Ok(())
    }

    /// Each socket program's cgroup link: pinned and attached to `cgroup`, else attached
    /// anew.
    fn repair_socket_programs(
        &mut self,
        cgroup: &Path,
        repaired: &mut Vec<Repaired>,
    ) -> Result<()> {
        use std::os::unix::fs::MetadataExt as _;
        let cgroup_dir = fs::File::open(cgroup)
            .map_err(Error::io(format!("opening cgroup {}", cgroup.display())))?;
        // On cgroup v2 a cgroup's id is its directory's inode number.
        let cgroup_id = cgroup_dir
            .metadata()
            .map_err(Error::io(format!("reading cgroup {}", cgroup.display())))?
            .ino();
        for name in SOCKET_PROGRAMS {
            let pin = self.links_dir.join(format!("cgroup_{name}"));
            if pinned_link_target(&pin)? == Some(cgroup_id) {
                continue;
            }
            self.pin_cgroup_link(name, &cgroup_dir, cgroup)?;
            repaired.push(Repaired {
                kind: RepairKind::ProgramReattached,
                what: format!("{name} program on cgroup {}", cgroup.display()),
            });
        }
        Ok(())
    }

    /// Each endpoint's TC link attached to its veth, and its ENDPOINTS entry as recorded.
    fn repair_endpoints(
        &mut self,
        endpoints: &[Endpoint],
        repaired: &mut Vec<Repaired>,
    ) -> Result<()> {
        for endpoint in endpoints {
            // A veth deleted since the pass began is the veth repair's, at the next pass (its
            // deletion's link event starts one): not a failure of this one.
            let veth_is_there = nix::net::if_::if_nametoindex(endpoint.host_veth.as_str())
                .is_ok_and(|index| index == endpoint.host_veth_ifindex);
            if !veth_is_there {
                continue;
            }
            let pin = self.tc_pin(&endpoint.host_veth);
            if pinned_link_target(&pin)? != Some(u64::from(endpoint.host_veth_ifindex)) {
                uplinks::remove_pin(&pin)?;
                self.attach_endpoint(endpoint)?;
                repaired.push(Repaired {
                    kind: RepairKind::ProgramReattached,
                    what: format!("TC program on {}", endpoint.host_veth),
                });
            }
        }
        let wanted: Vec<(EndpointKey, EndpointInfo)> =
            endpoints.iter().filter_map(endpoint_entry).collect();
        let mut map: HashMap<&mut MapData, EndpointKey, EndpointInfo> =
            HashMap::try_from(self.map_mut(ENDPOINTS)?).map_err(Error::dataplane(ENDPOINTS))?;
        for key in restore_entries(&mut map, wanted.iter().map(|(k, v)| (k, v)), "endpoint")? {
            repaired.push(Repaired {
                kind: RepairKind::MapEntryRestored,
                what: format!("{ENDPOINTS} {}", Ipv4Addr::from(u32::from_be(key.ip_be))),
            });
        }
        Ok(())
    }

    /// PUBLISHED_PORTS(6) and their PUBLISHED_BACKENDS(6) counts as recorded.
    fn repair_published(
        &mut self,
        published: &[(Endpoint, PortBinding)],
        repaired: &mut Vec<Repaired>,
    ) -> Result<()> {
        let ports6 = ports6(published);
        for key in restore_entries(&mut self.ports6_mut()?, &ports6, "IPv6 published port")? {
            repaired.push(Repaired {
                kind: RepairKind::MapEntryRestored,
                what: format!(
                    "{PUBLISHED_PORTS6} [{}]:{}/{}",
                    Ipv6Addr::from(key.host_ip),
                    u16::from_be(key.host_port_be),
                    proto_name(key.proto)
                ),
            });
        }
        let backends6 = backend_counts(&ports6, backend_of6);
        for key in restore_entries(
            &mut self.backends_mut()?,
            &backends6,
            "IPv6 published backend",
        )? {
            repaired.push(Repaired {
                kind: RepairKind::MapEntryRestored,
                what: format!(
                    "{PUBLISHED_BACKENDS6} [{}]:{}/{}",
                    Ipv6Addr::from(key.container_ip),
                    u16::from_be(key.container_port_be),
                    proto_name(key.proto)
                ),
            });
        }
        let ports = ports4(published)?;
        let backends = backend_counts(&ports, backend_of);
        for key in restore_entries(&mut self.ports_mut()?, &ports, "published port")? {
            repaired.push(Repaired {
                kind: RepairKind::MapEntryRestored,
                what: format!(
                    "{PUBLISHED_PORTS} {}:{}/{}",
                    Ipv4Addr::from(u32::from_be(key.host_ip_be)),
                    u16::from_be(key.host_port_be),
                    proto_name(key.proto)
                ),
            });
        }
        for key in restore_entries(&mut self.backends_mut()?, &backends, "published backend")? {
            repaired.push(Repaired {
                kind: RepairKind::MapEntryRestored,
                what: format!(
                    "{PUBLISHED_BACKENDS} {}:{}/{}",
                    Ipv4Addr::from(u32::from_be(key.container_ip_be)),
                    u16::from_be(key.container_port_be),
                    proto_name(key.proto)
                ),
            });
        }
        Ok(())
    }

    /// NODE_ADDRS as the agent last wrote it (entries of addresses the node no longer has
    /// go when the addresses change).
    fn repair_node_addresses(
        &mut self,
        addresses: &[(u32, IpAddr)],
        repaired: &mut Vec<Repaired>,
    ) -> Result<()> {
        let wanted: Vec<(NodeAddrKey, NodeAddr)> = ipv4_only(addresses)
            .iter()
            .map(|(ifindex, ip)| {
                let key = NodeAddrKey {
                    addr_be: u32::from(*ip).to_be(),
                };
                (key, NodeAddr { ifindex: *ifindex })
            })
            .collect();
        let mut map: HashMap<&mut MapData, NodeAddrKey, NodeAddr> =
            HashMap::try_from(self.map_mut(NODE_ADDRS)?).map_err(Error::dataplane(NODE_ADDRS))?;
        for key in restore_entries(&mut map, wanted.iter().map(|(k, v)| (k, v)), "node address")? {
            repaired.push(Repaired {
                kind: RepairKind::MapEntryRestored,
                what: format!("{NODE_ADDRS} {}", Ipv4Addr::from(u32::from_be(key.addr_be))),
            });
        }
        Ok(())
    }

    /// The networks' policy, the source filters, the `--link` allow-list and the node's
    /// settings as recorded.
    fn repair_policy(&mut self, intended: &Intended, repaired: &mut Vec<Repaired>) -> Result<()> {
        let networks: Vec<(Key<NetworkKey>, NetworkInfo)> =
            intended.networks.iter().filter_map(network_entry).collect();
        let mut trie: LpmTrie<&mut MapData, NetworkKey, NetworkInfo> =
            LpmTrie::try_from(self.map_mut(NETWORKS)?).map_err(Error::dataplane(NETWORKS))?;
        for i in sync_trie(&mut trie, &networks, "network")? {
            let subnet = networks[i].0.data();
            repaired.push(Repaired {
                kind: RepairKind::MapEntryRestored,
                what: format!(
                    "{NETWORKS} {}/{}",
                    Ipv4Addr::from(u32::from_be(subnet.addr_be)),
                    networks[i].0.prefix_len()
                ),
            });
        }
        let networks6: Vec<(Key<NetworkKey6>, NetworkInfo)> = intended
            .networks
            .iter()
            .filter_map(network_entry6)
            .collect();
        let mut trie6: LpmTrie<&mut MapData, NetworkKey6, NetworkInfo> =
            LpmTrie::try_from(self.map_mut(NETWORKS6)?).map_err(Error::dataplane(NETWORKS6))?;
        for i in sync_trie(&mut trie6, &networks6, "IPv6 network")? {
            let subnet = networks6[i].0.data();
            repaired.push(Repaired {
                kind: RepairKind::MapEntryRestored,
                what: format!(
                    "{NETWORKS6} {}/{}",
                    Ipv6Addr::from(subnet.addr),
                    networks6[i].0.prefix_len()
                ),
            });
        }
        let (filters, filters6) = filter_entries(intended.filters);
        let mut trie: LpmTrie<&mut MapData, FilterKey, FilterRule> =
            LpmTrie::try_from(self.map_mut(FILTER_RULES)?)
                .map_err(Error::dataplane(FILTER_RULES))?;
        for i in sync_trie(&mut trie, &filters, "filter rule")? {
            repaired.push(Repaired {
                kind: RepairKind::MapEntryRestored,
                what: format!("{FILTER_RULES} rule {}", filters[i].1.rule_id),
            });
        }
        let mut trie6: LpmTrie<&mut MapData, FilterKey6, FilterRule> =
            LpmTrie::try_from(self.map_mut(FILTER_RULES6)?)
                .map_err(Error::dataplane(FILTER_RULES6))?;
        for i in sync_trie(&mut trie6, &filters6, "IPv6 filter rule")? {
            repaired.push(Repaired {
                kind: RepairKind::MapEntryRestored,
                what: format!("{FILTER_RULES6} rule {}", filters6[i].1.rule_id),
            });
        }
        let (links, links6) = link_keys(intended.links);
        let mut map: HashMap<&mut MapData, LinkKey, u32> =
            HashMap::try_from(self.map_mut(LINKS)?).map_err(Error::dataplane(LINKS))?;
        for key in restore_entries(&mut map, &links, "link")? {
            repaired.push(Repaired {
                kind: RepairKind::MapEntryRestored,
                what: format!(
                    "{LINKS} {} -> {}:{}",
                    Ipv4Addr::from(u32::from_be(key.src_ip_be)),
                    Ipv4Addr::from(u32::from_be(key.dst_ip_be)),
                    u16::from_be(key.dport_be)
                ),
            });
        }
        let mut map6: HashMap<&mut MapData, LinkKey6, u32> =
            HashMap::try_from(self.map_mut(LINKS6)?).map_err(Error::dataplane(LINKS6))?;
        for key in restore_entries(&mut map6, &links6, "IPv6 link")? {
            repaired.push(Repaired {
                kind: RepairKind::MapEntryRestored,
                what: format!(
                    "{LINKS6} {} -> [{}]:{}",
                    Ipv6Addr::from(key.src_ip),
                    Ipv6Addr::from(key.dst_ip),
                    u16::from_be(key.dport_be)
                ),
            });
        }
        let config: Array<&MapData, NodeConfig> =
            Array::try_from(self.map(NODE_CONFIG)?).map_err(Error::dataplane(NODE_CONFIG))?;
        if config.get(&0, 0).ok() != Some(self.node_config) {
            self.write_node_config(self.node_config)?;
            repaired.push(Repaired {
                kind: RepairKind::MapEntryRestored,
                what: NODE_CONFIG.into(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_links_target_is_its_ifindex_or_cgroup_id() {
        let tcx = "pos:\t0\nflags:\t02000000\nmnt_id:\t15\nino:\t1045\nlink_type:\ttcx\nlink_id:\t7\nprog_tag:\t0123456789abcdef\nprog_id:\t42\nifindex:\t9\nattach_type:\t46 (tcx_ingress)\n";
        assert_eq!(link_target_of_fdinfo(tcx), Some(9));
        let cgroup =
            "link_type:\tcgroup\nlink_id:\t3\nprog_id:\t40\ncgroup_id:\t1234\nattach_type:\t32\n";
        assert_eq!(link_target_of_fdinfo(cgroup), Some(1234));
        // prog_id is not a target, even though it ends like one.
        assert_eq!(
            link_target_of_fdinfo("link_type:\txdp\nprog_id:\t5\n"),
            None
        );
    }

    /// NETWORKS takes the IPv4 gateway mode's direct access and masquerade, NETWORKS6 the
    /// IPv6 one's: `nat` IPv4 with `routed` IPv6, Docker 28's common dual-stack setup.
    #[test]
    fn each_network_trie_takes_its_familys_gateway_mode() {
        let policy = NetworkPolicy {
            index: 7,
            bridge: "br-n".into(),
            subnet: Some("10.1.0.0/24".parse().unwrap()),
            icc: true,
            internal: false,
            masquerade: true,
            gateway: Some("10.1.0.1".parse().unwrap()),
            direct_access: DirectAccess::None,
            trusted_interfaces: Vec::new(),
            subnet_ipv6: Some("fd00:1::/64".parse().unwrap()),
            gateway_ipv6: Some("fd00:1::1".parse().unwrap()),
            masquerade_ipv6: false,
            direct_access_ipv6: DirectAccess::PublishedAndIcmp,
        };
        let (_, ipv4) = network_entry(&policy).unwrap();
        let (_, ipv6) = network_entry6(&policy).unwrap();
        assert_eq!(ipv4.flags, NETWORK_ICC | NETWORK_MASQUERADE);
        assert_eq!(
            ipv6.flags,
            NETWORK_ICC | NETWORK_DIRECT_PUBLISHED | NETWORK_DIRECT_ICMP
        );
        let reversed = NetworkPolicy {
            masquerade: false,
            direct_access: DirectAccess::Any,
            masquerade_ipv6: true,
            direct_access_ipv6: DirectAccess::None,
            ..policy
        };
        let (_, ipv4) = network_entry(&reversed).unwrap();
        let (_, ipv6) = network_entry6(&reversed).unwrap();
        assert_eq!(ipv4.flags, NETWORK_ICC | NETWORK_DIRECT_ANY);
        assert_eq!(ipv6.flags, NETWORK_ICC | NETWORK_MASQUERADE);
    }

    #[test]
    fn ring_buffer_records_of_either_family_become_monitor_events() {
        let drop4 = Event {
            kind: EVENT_DROP,
            stat: Stat::UplinkDropFilter as u32,
            src_ip_be: u32::from(Ipv4Addr::new(198, 51, 100, 2)).to_be(),
            dst_ip_be: u32::from(Ipv4Addr::new(198, 51, 100, 1)).to_be(),
            sport_be: 40000u16.to_be(),
            dport_be: 8080u16.to_be(),
            proto: IPPROTO_TCP,
            _pad: [0; 3],
        };
        let event = monitor_event(record_bytes(&drop4)).unwrap();
        assert_eq!(
            (event.kind.as_str(), event.reason.as_str()),
            ("drop", "uplink_ingress.drop.filter")
        );
        assert_eq!(
            (event.source.as_str(), event.destination.as_str()),
            ("198.51.100.2:40000", "198.51.100.1:8080")
        );
        let flow6 = Event6 {
            kind: EVENT_NEW_FLOW6,
            stat: Stat::ContainerRedirectMasquerade as u32,
            src_ip: "fd00::2".parse::<Ipv6Addr>().unwrap().octets(),
            dst_ip: "2001:db8::2".parse::<Ipv6Addr>().unwrap().octets(),
            sport_be: 41000u16.to_be(),
            dport_be: 443u16.to_be(),
            proto: IPPROTO_TCP,
            _pad: [0; 3],
        };
        let event = monitor_event(record_bytes(&flow6)).unwrap();
        assert_eq!(
            (event.kind.as_str(), event.reason.as_str()),
            ("new-flow", "container_ingress.redirect.masquerade")
        );
        assert_eq!(
            (event.source.as_str(), event.destination.as_str()),
            ("[fd00::2]:41000", "[2001:db8::2]:443")
        );
        let drop6 = Event6 {
            kind: EVENT_DROP6,
            stat: Stat::UplinkDropDirectAccess as u32,
            src_ip: "2001:db8:1::2".parse::<Ipv6Addr>().unwrap().octets(),
            dst_ip: "fd00::2".parse::<Ipv6Addr>().unwrap().octets(),
            sport_be: 0,
            dport_be: 0,
            proto: dataplane_common::IPPROTO_ICMPV6,
            _pad: [0; 3],
        };
        let event = monitor_event(record_bytes(&drop6)).unwrap();
        assert_eq!(
            (event.kind.as_str(), event.reason.as_str(), event.proto),
            (
                "drop",
                "uplink_ingress.drop.direct_access",
                dataplane_common::IPPROTO_ICMPV6
            )
        );
        assert_eq!(
            (event.source.as_str(), event.destination.as_str()),
            ("2001:db8:1::2", "fd00::2"),
            "no ports: an address alone"
        );
        assert!(monitor_event(&[0; 3]).is_none(), "a record too short");
        assert!(
            monitor_event(&record_bytes(&flow6)[..24]).is_none(),
            "an IPv6 record cut short"
        );
    }

    /// The bytes of a plain-data record, as the ring buffer holds it.
    fn record_bytes<T: Copy>(record: &T) -> &[u8] {
        // SAFETY: `Event` and `Event6` are plain data without padding: every byte is set.
        unsafe { std::slice::from_raw_parts((record as *const T).cast::<u8>(), size_of::<T>()) }
    }
}
