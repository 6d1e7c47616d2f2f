//! The maps. All are pinned by name, so that a restarted agent re-adopts them (and the
//! published ports keep answering while it restarts).

use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, TC_ACT_SHOT, bpf_fib_lookup, bpf_sock_tuple},
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, ProgramArray, RingBuf},
    programs::TcContext,
};
use dataplane_common::{
    BackendKey, BackendKey6, CONNTRACK_MAX, CONTAINER_PROGRAMS_MAX, CONTAINER6_PROGRAMS_MAX,
    Counter, CtEntry, CtEntry6, CtKey, CtKey6, ENDPOINTS_MAX, EVENTS_BYTES, EndpointInfo,
    EndpointKey, EventBudget, FILTER_RULES_MAX, FRAGMENTS_MAX, FilterKey, FilterKey6, FilterRule,
    FlowKey, FlowKey6, FragmentEntry, FragmentEntry6, FragmentKey, FragmentKey6, LINKS_MAX,
    LinkKey, LinkKey6, MASQUERADE_SOURCES_MAX, NAT_FLOWS_MAX, NETWORKS_MAX, NODE_ADDRS_MAX,
    NatFlow, NatFlow6, NetworkInfo, NetworkKey, NetworkKey6, NodeAddr, NodeAddrKey, NodeAddrKey6,
    NodeConfig, PUBLISHED_PORTS_MAX, PortKey, PortKey6, PortTarget, PortTarget6, ROUTED_FLOWS_MAX,
    SOCK_NAT_MAX, SockNatKey, SockNatKey6, SockNatValue, SockNatValue6, TRUSTED_IFACES_MAX,
    TrustedIfaceKey, UNREPLIED_RING_LEN, UPLINK_PROGRAMS_MAX, UPLINK6_PROGRAMS_MAX,
    stats::STATS_LEN, stats::Stat,
};

#[map]
pub static PUBLISHED_PORTS: HashMap<PortKey, PortTarget> =
    HashMap::pinned(PUBLISHED_PORTS_MAX, BPF_F_NO_PREALLOC);

#[map]
pub static PUBLISHED_BACKENDS: HashMap<BackendKey, u32> =
    HashMap::pinned(PUBLISHED_PORTS_MAX, BPF_F_NO_PREALLOC);

#[map]
pub static NODE_ADDRS: HashMap<NodeAddrKey, NodeAddr> =
    HashMap::pinned(NODE_ADDRS_MAX, BPF_F_NO_PREALLOC);

/// Interface index → masquerade source (network order).
#[map]
pub static MASQUERADE_SOURCES: HashMap<u32, u32> =
    HashMap::pinned(MASQUERADE_SOURCES_MAX, BPF_F_NO_PREALLOC);

/// Room for one FIB lookup's parameters, off the stack (fib.rs). Scratch space, so not
/// pinned.
#[map]
pub static FIB_SCRATCH: PerCpuArray<bpf_fib_lookup> = PerCpuArray::with_max_entries(1, 0);

// The flow tables are plain hash maps, allocated per flow, that the agent sizes when it
// loads the object (--conntrack-max, --nat-flows-max; the sizes here are placeholders): a
// full one evicts a flow that is not established (flowtable.rs), and the agent expires
// idle ones. Tables the agent alone writes are allocated per entry too, so that an idle
// node holds little memory.
#[map]
pub static NAT_FLOWS: HashMap<FlowKey, NatFlow> = HashMap::pinned(NAT_FLOWS_MAX, BPF_F_NO_PREALLOC);

#[map]
pub static ENDPOINTS: HashMap<EndpointKey, EndpointInfo> =
    HashMap::pinned(ENDPOINTS_MAX, BPF_F_NO_PREALLOC);

#[map]
pub static FILTER_RULES: LpmTrie<FilterKey, FilterRule> = LpmTrie::pinned(FILTER_RULES_MAX, 0);

#[map]
pub static FILTER_HITS: PerCpuArray<Counter> = PerCpuArray::pinned(FILTER_RULES_MAX, 0);

#[map]
pub static STATS: PerCpuArray<Counter> = PerCpuArray::pinned(STATS_LEN, 0);

#[map]
pub static SOCK_NAT: LruHashMap<SockNatKey, SockNatValue> = LruHashMap::pinned(SOCK_NAT_MAX, 0);

#[map]
pub static NODE_CONFIG: Array<NodeConfig> = Array::pinned(1, 0);

#[map]
pub static NETWORKS: LpmTrie<NetworkKey, NetworkInfo> = LpmTrie::pinned(NETWORKS_MAX, 0);

#[map]
pub static CONNTRACK: HashMap<CtKey, CtEntry> = HashMap::pinned(CONNTRACK_MAX, BPF_F_NO_PREALLOC);

#[map]
pub static CT_UNREPLIED: Array<CtKey> = Array::pinned(UNREPLIED_RING_LEN, 0);

#[map]
pub static NAT_UNREPLIED: Array<FlowKey> = Array::pinned(UNREPLIED_RING_LEN, 0);

#[map]
pub static UNREPLIED_CURSORS: Array<u32> = Array::pinned(4, 0);

#[map]
pub static LINKS: HashMap<LinkKey, u32> = HashMap::pinned(LINKS_MAX, BPF_F_NO_PREALLOC);

#[map]
pub static TRUSTED_IFACES: HashMap<TrustedIfaceKey, u32> =
    HashMap::pinned(TRUSTED_IFACES_MAX, BPF_F_NO_PREALLOC);

#[map]
pub static ROUTED_FLOWS: LruHashMap<FlowKey, u32> = LruHashMap::pinned(ROUTED_FLOWS_MAX, 0);

#[map]
pub static EVENTS: RingBuf = RingBuf::pinned(EVENTS_BYTES, 0);

#[map]
pub static EVENT_BUDGET: PerCpuArray<EventBudget> = PerCpuArray::pinned(1, 0);

#[map]
pub static FRAGMENTS: LruHashMap<FragmentKey, FragmentEntry> = LruHashMap::pinned(FRAGMENTS_MAX, 0);

#[map]
pub static PUBLISHED_PORTS6: HashMap<PortKey6, PortTarget6> =
    HashMap::pinned(PUBLISHED_PORTS_MAX, BPF_F_NO_PREALLOC);

#[map]
pub static NODE_ADDRS6: HashMap<NodeAddrKey6, NodeAddr> =
    HashMap::pinned(NODE_ADDRS_MAX, BPF_F_NO_PREALLOC);

/// Sized by the agent as NAT_FLOWS is. No early drop yet: a full table refuses new flows.
#[map]
pub static NAT_FLOWS6: HashMap<FlowKey6, NatFlow6> =
    HashMap::pinned(NAT_FLOWS_MAX, BPF_F_NO_PREALLOC);

#[map]
pub static FILTER_RULES6: LpmTrie<FilterKey6, FilterRule> = LpmTrie::pinned(FILTER_RULES_MAX, 0);

#[map]
pub static NETWORKS6: LpmTrie<NetworkKey6, NetworkInfo> = LpmTrie::pinned(NETWORKS_MAX, 0);

#[map]
pub static SOCK_NAT6: LruHashMap<SockNatKey6, SockNatValue6> = LruHashMap::pinned(SOCK_NAT_MAX, 0);

/// The programs `container_ingress` tail-calls (container6.rs); the agent fills it.
#[map]
pub static CONTAINER_PROGRAMS: ProgramArray = ProgramArray::pinned(CONTAINER_PROGRAMS_MAX, 0);

/// The programs the uplink programs tail-call for IPv6 frames (uplink6.rs), one array per
/// program type; the agent fills them.
#[map]
pub static UPLINK_XDP_PROGRAMS: ProgramArray = ProgramArray::pinned(UPLINK_PROGRAMS_MAX, 0);

#[map]
pub static UPLINK_TC_PROGRAMS: ProgramArray = ProgramArray::pinned(UPLINK_PROGRAMS_MAX, 0);

#[map]
pub static FRAGMENTS6: LruHashMap<FragmentKey6, FragmentEntry6> =
    LruHashMap::pinned(FRAGMENTS_MAX, 0);

/// A [`FRAGMENTS6`] key and entry, built here rather than on the stack, which the uplink
/// program has little of (frag6.rs).
#[repr(C)]
pub struct FragmentRecord6 {
    pub key: FragmentKey6,
    pub entry: FragmentEntry6,
}

/// Room for one [`FragmentRecord6`]. Scratch space, so not pinned.
#[map]
pub static FRAGMENT6_SCRATCH: PerCpuArray<FragmentRecord6> = PerCpuArray::with_max_entries(1, 0);

/// Interface index → IPv6 masquerade source (MASQUERADE_SOURCES' IPv6 twin).
#[map]
pub static MASQUERADE_SOURCES6: HashMap<u32, [u8; 16]> =
    HashMap::pinned(MASQUERADE_SOURCES_MAX, BPF_F_NO_PREALLOC);

/// Masqueraded IPv6 flows and those of `--link`s: sized by the agent as CONNTRACK, with
/// the same early drop (flowtable.rs) and idle expiry.
#[map]
pub static CONNTRACK6: HashMap<CtKey6, CtEntry6> =
    HashMap::pinned(CONNTRACK_MAX, BPF_F_NO_PREALLOC);

#[map]
pub static CT_UNREPLIED6: Array<CtKey6> = Array::pinned(UNREPLIED_RING_LEN, 0);

#[map]
pub static UNREPLIED_CURSORS6: Array<u32> = Array::pinned(2, 0);

/// The programs `container_ingress6` tail-calls (masquerade6.rs, link6.rs, ipv6.rs's
/// `container_reply6`); the agent fills it.
#[map]
pub static CONTAINER6_PROGRAMS: ProgramArray = ProgramArray::pinned(CONTAINER6_PROGRAMS_MAX, 0);

/// Hands a container's IPv6 packet to the program in `slot` of [`CONTAINER6_PROGRAMS`],
/// which counts its own verdict. If the tail call fails (no program in the slot: an agent
/// that has not filled it yet), the packet is dropped, counted: passed, it could leave
/// untranslated (with the container's own address, or from it where the client expects
/// the published one) or pass where `icc=false` alone would refuse it.
#[inline(always)]
pub fn hand_over_container6(ctx: &TcContext, slot: u32) -> (i32, Stat) {
    // SAFETY: a tail call returns only when it failed; the context is the program's own.
    let _ = unsafe { CONTAINER6_PROGRAMS.tail_call(ctx, slot) };
    (TC_ACT_SHOT, Stat::ContainerDropIpv6ProgramMissing)
}

/// A [`CONNTRACK6`] flow being looked up or recorded: the packet's key, the reply key of a
/// port being tried, and both entries, built here rather than on the stack (with IPv6's
/// 16-byte addresses they would take the IPv6 programs past 512 bytes; masquerade6.rs).
#[repr(C)]
pub struct Conntrack6Record {
    pub key: CtKey6,
    pub reply_key: CtKey6,
    pub original: CtEntry6,
    pub reply: CtEntry6,
    /// A socket lookup's tuple, for the ports a new flow may take.
    pub socket: bpf_sock_tuple,
    /// Where a reply goes, on the uplink.
    pub target: PortTarget6,
}

/// Room for one [`CtKey6`], where flowtable.rs builds a flow's other key. Scratch space, so
/// not pinned.
#[map]
pub static PEER6_SCRATCH: PerCpuArray<CtKey6> = PerCpuArray::with_max_entries(1, 0);

/// The programs the uplinks' IPv6 programs tail-call for replies of masqueraded flows
/// (masquerade6.rs), one array per program type; the agent fills them.
#[map]
pub static UPLINK6_XDP_PROGRAMS: ProgramArray = ProgramArray::pinned(UPLINK6_PROGRAMS_MAX, 0);

#[map]
pub static UPLINK6_TC_PROGRAMS: ProgramArray = ProgramArray::pinned(UPLINK6_PROGRAMS_MAX, 0);

/// Room for one [`Conntrack6Record`] per side: slot 0 for the containers' veths, slot 1
/// for the uplinks. Scratch space, so not pinned.
#[map]
pub static CONNTRACK6_SCRATCH: PerCpuArray<Conntrack6Record> = PerCpuArray::with_max_entries(2, 0);

/// LINKS for IPv6 (link6.rs).
#[map]
pub static LINKS6: HashMap<LinkKey6, u32> = HashMap::pinned(LINKS_MAX, BPF_F_NO_PREALLOC);

/// PUBLISHED_BACKENDS for IPv6: the container ends of the IPv6 published ports.
#[map]
pub static PUBLISHED_BACKENDS6: HashMap<BackendKey6, u32> =
    HashMap::pinned(PUBLISHED_PORTS_MAX, BPF_F_NO_PREALLOC);

/// ROUTED_FLOWS for IPv6.
#[map]
pub static ROUTED_FLOWS6: LruHashMap<FlowKey6, u32> = LruHashMap::pinned(ROUTED_FLOWS_MAX, 0);

/// A [`ROUTED_FLOWS6`] and a [`PUBLISHED_BACKENDS6`] key, built here rather than on the
/// stack, which the IPv6 programs have little of (policy.rs).
#[repr(C)]
pub struct DirectAccessRecord6 {
    pub flow: FlowKey6,
    pub backend: BackendKey6,
}

/// Room for one [`DirectAccessRecord6`] per side: slot 0 for the containers' veths, slot
/// 1 for the uplinks. Scratch space, so not pinned.
#[map]
pub static DIRECT_ACCESS6_SCRATCH: PerCpuArray<DirectAccessRecord6> =
    PerCpuArray::with_max_entries(2, 0);
