//! The maps. All are pinned by name, so that a restarted agent re-adopts them (and the
//! published ports keep answering while it restarts).

use aya_ebpf::{
    macros::map,
    maps::{HashMap, LruHashMap, PerCpuArray},
};
use dataplane_common::{
    Counter, FlowKey, FlowOrigin, NAT_FLOWS_MAX, NODE_ADDRS_MAX, NodeAddr, NodeAddrKey,
    PUBLISHED_PORTS_MAX, PortKey, PortTarget, stats::STATS_LEN,
};

#[map]
pub static PUBLISHED_PORTS: HashMap<PortKey, PortTarget> = HashMap::pinned(PUBLISHED_PORTS_MAX, 0);

#[map]
pub static NODE_ADDRS: HashMap<NodeAddrKey, NodeAddr> = HashMap::pinned(NODE_ADDRS_MAX, 0);

// An LRU map for now: the connection-tracking work (GC that never evicts a live flow)
// replaces it.
#[map]
pub static NAT_FLOWS: LruHashMap<FlowKey, FlowOrigin> = LruHashMap::pinned(NAT_FLOWS_MAX, 0);

#[map]
pub static STATS: PerCpuArray<Counter> = PerCpuArray::pinned(STATS_LEN, 0);
