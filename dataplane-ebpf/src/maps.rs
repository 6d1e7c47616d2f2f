//! The maps. All are pinned by name, so that a restarted agent re-adopts them (and the
//! published ports keep answering while it restarts).

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};
use dataplane_common::{
    BackendKey, CONNTRACK_MAX, Counter, CtEntry, CtKey, ENDPOINTS_MAX, EVENTS_BYTES, EndpointInfo,
    EndpointKey, EventBudget, FILTER_RULES_MAX, FilterKey, FilterRule, FlowKey, LINKS_MAX, LinkKey,
    NAT_FLOWS_MAX, NETWORKS_MAX, NODE_ADDRS_MAX, NatFlow, NetworkInfo, NetworkKey, NodeAddr,
    NodeAddrKey, NodeConfig, PUBLISHED_PORTS_MAX, PortKey, PortTarget, SOCK_NAT_MAX, SockNatKey,
    SockNatValue, stats::STATS_LEN,
};

#[map]
pub static PUBLISHED_PORTS: HashMap<PortKey, PortTarget> = HashMap::pinned(PUBLISHED_PORTS_MAX, 0);

#[map]
pub static PUBLISHED_BACKENDS: HashMap<BackendKey, u32> = HashMap::pinned(PUBLISHED_PORTS_MAX, 0);

#[map]
pub static NODE_ADDRS: HashMap<NodeAddrKey, NodeAddr> = HashMap::pinned(NODE_ADDRS_MAX, 0);

// An LRU map for now: the connection-tracking work (GC that never evicts a live flow)
// replaces it. The agent expires idle entries.
#[map]
pub static NAT_FLOWS: LruHashMap<FlowKey, NatFlow> = LruHashMap::pinned(NAT_FLOWS_MAX, 0);

#[map]
pub static ENDPOINTS: HashMap<EndpointKey, EndpointInfo> = HashMap::pinned(ENDPOINTS_MAX, 0);

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
pub static CONNTRACK: HashMap<CtKey, CtEntry> = HashMap::pinned(CONNTRACK_MAX, 0);

#[map]
pub static LINKS: HashMap<LinkKey, u32> = HashMap::pinned(LINKS_MAX, 0);

#[map]
pub static EVENTS: RingBuf = RingBuf::pinned(EVENTS_BYTES, 0);

#[map]
pub static EVENT_BUDGET: PerCpuArray<EventBudget> = PerCpuArray::pinned(1, 0);
