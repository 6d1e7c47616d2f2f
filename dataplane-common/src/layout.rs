//! Versions of the pinned maps' layouts, so that an agent can tell the maps an earlier
//! build pinned from its own and migrate them instead of refusing to start.
//!
//! Every pinned map has a version here, beside its key and value types. A change to a map's
//! key or value type (a field added, a size changed, a meaning changed) bumps its version in
//! [`CURRENT`], moves the previous types to a frozen module (such as [`v1`]) with their entry
//! in [`PREVIOUS`], and comes with a conversion in the agent. The sizes are taken from the
//! types, and the rules (unique names, a version bump for every earlier layout) are checked
//! at compile time below.
//!
//! The versions the pins were made with are recorded in the pinned [`LAYOUT`] map.

use core::mem::size_of;

use crate::*;

/// The pinned map recording, for each other pinned map, the layout version its pin was
/// made with: [`LayoutKey`] → version (`u32`). Pins made before it existed are at
/// [`UNRECORDED_VERSION`].
pub const LAYOUT: &str = "LAYOUT";
/// Room in [`LAYOUT`]: far more maps than the object has.
pub const LAYOUT_MAX: u32 = 64;
/// The version of a pinned map that [`LAYOUT`] does not mention: one pinned before the
/// layouts were versioned.
pub const UNRECORDED_VERSION: u32 = 1;
/// Longest map name [`LayoutKey`] holds.
pub const MAP_NAME_MAX: usize = 32;

/// Key of [`LAYOUT`]: a map's name, padded with zeros.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, bytemuck::Pod, bytemuck::Zeroable)]
pub struct LayoutKey {
    pub name: [u8; MAP_NAME_MAX],
}

impl LayoutKey {
    /// The key of map `name` (which [`CURRENT`]'s checks keep within [`MAP_NAME_MAX`]).
    pub const fn of(name: &str) -> Self {
        let bytes = name.as_bytes();
        let mut key = [0u8; MAP_NAME_MAX];
        let mut i = 0;
        while i < bytes.len() && i < MAP_NAME_MAX {
            key[i] = bytes[i];
            i += 1;
        }
        LayoutKey { name: key }
    }

    /// The map name, up to the first zero; `None` if it is not UTF-8.
    pub fn name(&self) -> Option<&str> {
        let len = self
            .name
            .iter()
            .position(|b| *b == 0)
            .unwrap_or(MAP_NAME_MAX);
        core::str::from_utf8(&self.name[..len]).ok()
    }
}

/// One version of one pinned map's layout: what the kernel reports of a map made with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapLayout {
    pub name: &'static str,
    pub version: u32,
    pub key_size: u32,
    pub value_size: u32,
    /// The number of entries when the layout fixes it (an array indexed by an enum, as
    /// [`STATS`] by [`Stat`](crate::stats::Stat)), else 0 (sized at load time, as the flow
    /// tables). A pin with another count is migrated into a map of this one.
    pub entries: u32,
}

impl MapLayout {
    /// A hash map (plain or LRU) from `K` to `V`.
    pub const fn hash<K, V>(name: &'static str, version: u32) -> Self {
        Self::sized(name, version, size_of::<K>(), size_of::<V>())
    }

    /// An array (plain or per-CPU) of `V`, indexed by `u32`.
    pub const fn array<V>(name: &'static str, version: u32) -> Self {
        Self::sized(name, version, size_of::<u32>(), size_of::<V>())
    }

    /// A longest-prefix-match trie: its keys are a `u32` prefix length and then `K`.
    pub const fn lpm_trie<K, V>(name: &'static str, version: u32) -> Self {
        Self::sized(
            name,
            version,
            size_of::<u32>() + size_of::<K>(),
            size_of::<V>(),
        )
    }

    /// A ring buffer: no keys or values.
    pub const fn ring_buf(name: &'static str, version: u32) -> Self {
        Self::sized(name, version, 0, 0)
    }

    const fn sized(name: &'static str, version: u32, key_size: usize, value_size: usize) -> Self {
        MapLayout {
            name,
            version,
            key_size: key_size as u32,
            value_size: value_size as u32,
            entries: 0,
        }
    }

    /// This layout with its entry count fixed at `entries`.
    pub const fn with_entries(self, entries: u32) -> Self {
        MapLayout { entries, ..self }
    }
}

/// Every pinned map as this build lays it out.
pub const CURRENT: &[MapLayout] = &[
    MapLayout::hash::<PortKey, PortTarget>(PUBLISHED_PORTS, 1),
    MapLayout::hash::<BackendKey, u32>(PUBLISHED_BACKENDS, 1),
    MapLayout::hash::<NodeAddrKey, NodeAddr>(NODE_ADDRS, 1),
    // 2: per-flow packet and byte counters.
    MapLayout::hash::<FlowKey, NatFlow>(NAT_FLOWS, 2),
    MapLayout::hash::<EndpointKey, EndpointInfo>(ENDPOINTS, 1),
    MapLayout::lpm_trie::<FilterKey, FilterRule>(FILTER_RULES, 1),
    MapLayout::array::<Counter>(FILTER_HITS, 1),
    // Its slots are the `Stat`s, which are only ever appended: a pin with fewer is carried
    // over slot by slot.
    MapLayout::array::<Counter>(STATS, 1).with_entries(crate::stats::STATS_LEN),
    MapLayout::hash::<SockNatKey, SockNatValue>(SOCK_NAT, 1),
    MapLayout::array::<NodeConfig>(NODE_CONFIG, 1),
    MapLayout::lpm_trie::<NetworkKey, NetworkInfo>(NETWORKS, 1),
    MapLayout::hash::<CtKey, CtEntry>(CONNTRACK, 1),
    MapLayout::array::<CtKey>(CT_UNREPLIED, 1),
    MapLayout::array::<FlowKey>(NAT_UNREPLIED, 1),
    MapLayout::array::<u32>(UNREPLIED_CURSORS, 1),
    MapLayout::hash::<LinkKey, u32>(LINKS, 1),
    MapLayout::ring_buf(EVENTS, 1),
    MapLayout::array::<EventBudget>(EVENT_BUDGET, 1),
    MapLayout::hash::<FragmentKey, FragmentEntry>(FRAGMENTS, 1),
    MapLayout::hash::<u32, u32>(MASQUERADE_SOURCES, 1),
    MapLayout::hash::<TrustedIfaceKey, u32>(TRUSTED_IFACES, 1),
    MapLayout::hash::<FlowKey, u32>(ROUTED_FLOWS, 1),
    MapLayout::hash::<PortKey6, PortTarget6>(PUBLISHED_PORTS6, 1),
    MapLayout::hash::<NodeAddrKey6, NodeAddr>(NODE_ADDRS6, 1),
    MapLayout::hash::<FlowKey6, NatFlow6>(NAT_FLOWS6, 1),
    MapLayout::lpm_trie::<FilterKey6, FilterRule>(FILTER_RULES6, 1),
    MapLayout::lpm_trie::<NetworkKey6, NetworkInfo>(NETWORKS6, 1),
    MapLayout::hash::<SockNatKey6, SockNatValue6>(SOCK_NAT6, 1),
    // Program descriptors in, program ids out: 4-byte values either way.
    MapLayout::array::<u32>(CONTAINER_PROGRAMS, 1),
    MapLayout::hash::<FragmentKey6, FragmentEntry6>(FRAGMENTS6, 1),
    MapLayout::array::<u32>(UPLINK_XDP_PROGRAMS, 1),
    MapLayout::array::<u32>(UPLINK_TC_PROGRAMS, 1),
    MapLayout::hash::<u32, [u8; 16]>(MASQUERADE_SOURCES6, 1),
    MapLayout::hash::<CtKey6, CtEntry6>(CONNTRACK6, 1),
    MapLayout::array::<CtKey6>(CT_UNREPLIED6, 1),
    MapLayout::array::<u32>(UNREPLIED_CURSORS6, 1),
    // Its slots are the programs `container_ingress6` tail-calls, added to as they come: a
    // pin with fewer is replaced by an array of today's, which the loader fills.
    MapLayout::array::<u32>(CONTAINER6_PROGRAMS, 1).with_entries(CONTAINER6_PROGRAMS_MAX),
    MapLayout::array::<u32>(UPLINK6_XDP_PROGRAMS, 1),
    MapLayout::array::<u32>(UPLINK6_TC_PROGRAMS, 1),
    MapLayout::hash::<LinkKey6, u32>(LINKS6, 1),
    MapLayout::hash::<BackendKey6, u32>(PUBLISHED_BACKENDS6, 1),
    MapLayout::hash::<FlowKey6, u32>(ROUTED_FLOWS6, 1),
];

/// The earlier layouts this build migrates from, with their types frozen in a module of
/// their version.
pub const PREVIOUS: &[MapLayout] = &[MapLayout::hash::<FlowKey, v1::NatFlow>(NAT_FLOWS, 1)];

/// This build's layout of map `name`.
pub const fn current(name: &str) -> Option<MapLayout> {
    let mut i = 0;
    while i < CURRENT.len() {
        if str_eq(CURRENT[i].name, name) {
            return Some(CURRENT[i]);
        }
        i += 1;
    }
    None
}

/// The layout of map `name` at `version`, this build's or an earlier one it migrates from.
pub fn known(name: &str, version: u32) -> Option<MapLayout> {
    CURRENT
        .iter()
        .chain(PREVIOUS)
        .find(|l| l.name == name && l.version == version)
        .copied()
}

const fn str_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// The rules of the module's documentation, checked when the crate compiles.
const fn layouts_are_consistent() -> bool {
    let mut i = 0;
    while i < CURRENT.len() {
        if CURRENT[i].name.len() > MAP_NAME_MAX || CURRENT[i].version < UNRECORDED_VERSION {
            return false;
        }
        let mut j = i + 1;
        while j < CURRENT.len() {
            if str_eq(CURRENT[i].name, CURRENT[j].name) {
                return false;
            }
            j += 1;
        }
        i += 1;
    }
    let mut i = 0;
    while i < PREVIOUS.len() {
        match current(PREVIOUS[i].name) {
            Some(now) if now.version > PREVIOUS[i].version => {}
            _ => return false,
        }
        i += 1;
    }
    true
}
const _: () = assert!(layouts_are_consistent());
const _: () = assert!(size_of::<LayoutKey>() == 32);

/// The layouts of version 1, as bpfbridge pinned them before [`LAYOUT`] existed: frozen,
/// never to change, for the conversions from them.
pub mod v1 {
    /// [`crate::NatFlow`] without the per-flow counters.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
    pub struct NatFlow {
        pub frontend_ip_be: u32,
        pub frontend_port_be: u16,
        pub state: u8,
        pub _pad0: u8,
        pub client_ip_be: u32,
        pub client_port_be: u16,
        pub _pad1: u16,
        pub last_seen_ns: u64,
    }
    const _: () = assert!(core::mem::size_of::<NatFlow>() == 24);

    /// A flow of version 1 in today's layout: what it was, with its counters at zero (the
    /// earlier layout did not count).
    impl From<NatFlow> for crate::NatFlow {
        fn from(old: NatFlow) -> Self {
            crate::NatFlow {
                frontend_ip_be: old.frontend_ip_be,
                frontend_port_be: old.frontend_port_be,
                state: old.state,
                _pad0: 0,
                client_ip_be: old.client_ip_be,
                client_port_be: old.client_port_be,
                _pad1: 0,
                last_seen_ns: old.last_seen_ns,
                packets: 0,
                bytes: 0,
            }
        }
    }

    #[cfg(feature = "user")]
    aya_pod!(NatFlow);
}

#[cfg(feature = "user")]
aya_pod!(LayoutKey);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_version_1_flow_keeps_everything_and_starts_counting_from_zero() {
        let old = v1::NatFlow {
            frontend_ip_be: 0x0a00_0001,
            frontend_port_be: 8080u16.to_be(),
            state: CT_ESTABLISHED,
            _pad0: 0,
            client_ip_be: 0xc0a8_0001,
            client_port_be: 40000u16.to_be(),
            _pad1: 0,
            last_seen_ns: 123_456_789,
        };
        let new = NatFlow::from(old);
        assert_eq!(
            (
                new.frontend_ip_be,
                new.frontend_port_be,
                new.state,
                new.client_ip_be,
                new.client_port_be,
                new.last_seen_ns
            ),
            (
                old.frontend_ip_be,
                old.frontend_port_be,
                old.state,
                old.client_ip_be,
                old.client_port_be,
                old.last_seen_ns
            )
        );
        assert_eq!((new.packets, new.bytes), (0, 0));
    }

    #[test]
    fn a_layout_key_gives_its_name_back() {
        assert_eq!(
            LayoutKey::of(PUBLISHED_BACKENDS).name(),
            Some(PUBLISHED_BACKENDS)
        );
    }

    #[test]
    fn the_previous_nat_flows_layout_is_24_bytes_and_the_current_40() {
        assert_eq!(known(NAT_FLOWS, 1).map(|l| l.value_size), Some(24));
        assert_eq!(current(NAT_FLOWS).map(|l| l.value_size), Some(40));
        assert_eq!(known(NAT_FLOWS, 3), None);
    }
}
