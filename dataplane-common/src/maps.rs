//! Map names and the layouts of their keys and values.
//!
//! Rules for every type here: `#[repr(C)]`, plain integers and byte arrays only, padding
//! spelled out as `_pad` fields (so that the kernel never hashes uninitialised bytes), which
//! deriving `bytemuck::Pod` checks at compile time, and a compile-time size check. Fields in network byte order end in `_be`.

use core::mem::size_of;

/// Published ports: `(host address, host port, protocol)` → where to send the connection.
pub const PUBLISHED_PORTS: &str = "PUBLISHED_PORTS";
/// The container ends of published ports, with how many host ports lead to each. Like
/// Docker's FORWARD rules, the outside may reach a container on a masquerading or internal
/// network at its own address only on these.
pub const PUBLISHED_BACKENDS: &str = "PUBLISHED_BACKENDS";
/// Addresses owned by the node; a mapping bound to `0.0.0.0` answers on each of them.
pub const NODE_ADDRS: &str = "NODE_ADDRS";
/// The source of masqueraded traffic by the interface it leaves by (interface index →
/// address, network order): each interface's primary IPv4 address, as MASQUERADE picks
/// the address of the interface the route picks. No entry: no masquerade out of it.
pub const MASQUERADE_SOURCES: &str = "MASQUERADE_SOURCES";
/// Translated flows, keyed as the container sees them, so replies can be translated back.
pub const NAT_FLOWS: &str = "NAT_FLOWS";
/// Per-CPU packet and byte counters, indexed by [`crate::stats::Stat`].
pub const STATS: &str = "STATS";
/// Containers' endpoints by address: where to hand a frame for a local container directly.
pub const ENDPOINTS: &str = "ENDPOINTS";
/// Source filters on published ports (the DOCKER-USER use case), longest prefix first.
pub const FILTER_RULES: &str = "FILTER_RULES";
/// Per-CPU hit counters of the filter rules, indexed by [`FilterRule::rule_id`].
pub const FILTER_HITS: &str = "FILTER_HITS";
/// Translations made at the socket (node-local access to published ports), so that
/// replies and `getpeername` show the address the application used.
pub const SOCK_NAT: &str = "SOCK_NAT";
/// One [`NodeConfig`], set by the agent.
pub const NODE_CONFIG: &str = "NODE_CONFIG";
/// The bridge networks' subnets, longest prefix first: which network an address is on.
pub const NETWORKS: &str = "NETWORKS";
/// Connection tracking of masqueraded flows: one entry per direction. A plain hash map,
/// not an LRU one, so that a full table refuses new flows instead of evicting live ones;
/// the agent removes idle entries.
pub const CONNTRACK: &str = "CONNTRACK";
/// What `--link` allows through `icc=false`: a container to another's exposed port.
pub const LINKS: &str = "LINKS";
/// The interfaces from which a network's containers may be reached at their own address
/// on their published container ports (`com.docker.network.bridge.trusted_host_interfaces`),
/// by network and interface index; the value is unused (presence allows).
pub const TRUSTED_IFACES: &str = "TRUSTED_IFACES";
/// Untranslated flows between the outside and a container's own address, keyed as
/// [`FlowKey`] from the container's side: those the outside opened where direct access is
/// allowed (their replies leave untranslated, not masqueraded) and those containers opened
/// on networks without masquerade (their replies may come back where direct access is
/// otherwise closed, as Docker's `RELATED,ESTABLISHED` rule lets them). An LRU map: a
/// flow evicted while idle costs that flow only. The value is unused.
pub const ROUTED_FLOWS: &str = "ROUTED_FLOWS";
/// Drop and new-flow [`Event`]s for `bpfbridge monitor` (a ring buffer).
pub const EVENTS: &str = "EVENTS";
/// Per-CPU token bucket that limits [`EVENTS`], so a flood cannot swamp the agent.
pub const EVENT_BUDGET: &str = "EVENT_BUDGET";
/// Recently opened flows of [`CONNTRACK`] (their reply keys) and of [`NAT_FLOWS`]: where
/// a full table looks for an unanswered flow to evict (early drop).
pub const CT_UNREPLIED: &str = "CT_UNREPLIED";
pub const NAT_UNREPLIED: &str = "NAT_UNREPLIED";
/// Each ring's cursors: the next slot to write and the next to examine for eviction;
/// [`CT_UNREPLIED`]'s at 0 and 1, [`NAT_UNREPLIED`]'s at 2 and 3.
pub const UNREPLIED_CURSORS: &str = "UNREPLIED_CURSORS";
/// Slots of each early-drop ring (a power of two). Eviction takes the oldest flows of the
/// ring, so a new flow has this many newer ones' time (a fraction of a second under a
/// SYN flood) to complete its handshake before it can be a candidate.
pub const UNREPLIED_RING_LEN: u32 = 16_384;
/// Translations of fragmented datagrams, recorded from their first fragment (the one with
/// the ports) for the fragments that follow. An LRU map: fragments are short-lived, and an
/// evicted entry costs one datagram, never a flow.
pub const FRAGMENTS: &str = "FRAGMENTS";
/// IPv6's published ports, node addresses and translated flows: [`PUBLISHED_PORTS`],
/// [`NODE_ADDRS`] and [`NAT_FLOWS`] with 16-byte addresses (an all-zero host address
/// meaning every IPv6 address of the node).
pub const PUBLISHED_PORTS6: &str = "PUBLISHED_PORTS6";
pub const NODE_ADDRS6: &str = "NODE_ADDRS6";
/// [`PUBLISHED_BACKENDS`] for IPv6: the container ends of the IPv6 published ports, keyed
/// as [`BackendKey6`], each with its count of host ports.
pub const PUBLISHED_BACKENDS6: &str = "PUBLISHED_BACKENDS6";
/// [`ROUTED_FLOWS`] for IPv6, keyed as [`FlowKey6`] from the container's side.
pub const ROUTED_FLOWS6: &str = "ROUTED_FLOWS6";
pub const NAT_FLOWS6: &str = "NAT_FLOWS6";
/// IPv6's source filters: [`FILTER_RULES`] with IPv6 source prefixes (same scopes, rule ids
/// and [`FILTER_HITS`]).
pub const FILTER_RULES6: &str = "FILTER_RULES6";
/// The bridge networks' IPv6 subnets: [`NETWORKS`] for IPv6 (the same [`NetworkInfo`], its
/// masquerade flag the network's IPv6 one).
pub const NETWORKS6: &str = "NETWORKS6";
/// [`SOCK_NAT`] for IPv6 sockets (an IPv4-mapped address for a dual-stack socket's IPv4).
pub const SOCK_NAT6: &str = "SOCK_NAT6";
/// The programs `container_ingress` hands frames to by tail call (a program array): each
/// runs with a stack and a verifier budget of its own. Pinned, so that the programs an
/// agent put there keep serving while it restarts.
pub const CONTAINER_PROGRAMS: &str = "CONTAINER_PROGRAMS";
/// [`CONTAINER_PROGRAMS`]' slot of `container_ingress6`, which takes the IPv6 frames.
pub const CONTAINER_IPV6_SLOT: u32 = 0;
/// Slots of [`CONTAINER_PROGRAMS`].
pub const CONTAINER_PROGRAMS_MAX: u32 = 1;
/// The programs the uplink programs hand IPv6 frames to by tail call, as
/// [`CONTAINER_PROGRAMS`]: one program array per program type, XDP's
/// (`uplink_ingress6` at [`UPLINK_IPV6_SLOT`]) and TC's (`uplink_ingress6_tc` there,
/// `uplink_ingress6_l3` at [`UPLINK_L3_IPV6_SLOT`]).
pub const UPLINK_XDP_PROGRAMS: &str = "UPLINK_XDP_PROGRAMS";
pub const UPLINK_TC_PROGRAMS: &str = "UPLINK_TC_PROGRAMS";
pub const UPLINK_IPV6_SLOT: u32 = 0;
pub const UPLINK_L3_IPV6_SLOT: u32 = 1;
/// Slots of [`UPLINK_XDP_PROGRAMS`] and [`UPLINK_TC_PROGRAMS`].
pub const UPLINK_PROGRAMS_MAX: u32 = 2;
/// [`FRAGMENTS`] for IPv6 datagrams (RFC 8200's reassembly key: addresses and the fragment
/// header's identification), with the same size and timeout.
pub const FRAGMENTS6: &str = "FRAGMENTS6";
/// [`MASQUERADE_SOURCES`] for IPv6: interface index → the IPv6 source of masqueraded
/// traffic leaving by it (its first global address), in memory order.
pub const MASQUERADE_SOURCES6: &str = "MASQUERADE_SOURCES6";
/// [`CONNTRACK`] for IPv6 (masqueraded flows and those of `--link`s, one entry per
/// direction), sized as it, with
/// its own ring of flows recently opened or closing ([`CT_UNREPLIED6`]) and that ring's
/// write and evict cursors ([`UNREPLIED_CURSORS6`] 0 and 1).
pub const CONNTRACK6: &str = "CONNTRACK6";
pub const CT_UNREPLIED6: &str = "CT_UNREPLIED6";
pub const UNREPLIED_CURSORS6: &str = "UNREPLIED_CURSORS6";
/// The programs `container_ingress6` hands a packet to by tail call, as
/// [`CONTAINER_PROGRAMS`]: `container_masquerade6` at [`CONTAINER6_MASQUERADE_SLOT`], where
/// an IPv6 packet to be masqueraded gets a stack of its own, `container_link6` at
/// [`CONTAINER6_LINK_SLOT`], where one between two containers of an `icc=false` network
/// meets the `--link` allow-list ([`LINKS6`]), and `container_reply6` at
/// [`CONTAINER6_REPLY_SLOT`], which translates a container's ICMPv6 errors about
/// published-port flows and the fragments of its replies.
pub const CONTAINER6_PROGRAMS: &str = "CONTAINER6_PROGRAMS";
pub const CONTAINER6_MASQUERADE_SLOT: u32 = 0;
pub const CONTAINER6_LINK_SLOT: u32 = 1;
pub const CONTAINER6_REPLY_SLOT: u32 = 2;
/// Slots of [`CONTAINER6_PROGRAMS`].
pub const CONTAINER6_PROGRAMS_MAX: u32 = 3;
/// [`LINKS`] for IPv6: a container's IPv6 address to another's exposed port, its flows
/// tracked in [`CONNTRACK6`].
pub const LINKS6: &str = "LINKS6";
/// The programs the uplinks' IPv6 programs hand a reply of a masqueraded IPv6 flow to by
/// tail call, one array per program type as [`UPLINK_XDP_PROGRAMS`]:
/// `uplink_masquerade6` at [`UPLINK6_MASQUERADE_SLOT`] of XDP's, `uplink_masquerade6_tc`
/// there and `uplink_masquerade6_l3` at [`UPLINK6_L3_MASQUERADE_SLOT`] of TC's.
pub const UPLINK6_XDP_PROGRAMS: &str = "UPLINK6_XDP_PROGRAMS";
pub const UPLINK6_TC_PROGRAMS: &str = "UPLINK6_TC_PROGRAMS";
pub const UPLINK6_MASQUERADE_SLOT: u32 = 0;
pub const UPLINK6_L3_MASQUERADE_SLOT: u32 = 1;
/// Slots of [`UPLINK6_XDP_PROGRAMS`] and [`UPLINK6_TC_PROGRAMS`].
pub const UPLINK6_PROGRAMS_MAX: u32 = 2;
pub const EVENTS_BYTES: u32 = 256 * 1024;
/// Events per second and CPU that the ring buffer takes; the rest are only counted.
pub const EVENTS_PER_SECOND: u64 = 1000;

pub const PUBLISHED_PORTS_MAX: u32 = 65_536;
pub const NODE_ADDRS_MAX: u32 = 256;
pub const MASQUERADE_SOURCES_MAX: u32 = 256;
pub const NAT_FLOWS_MAX: u32 = 262_144;
pub const ENDPOINTS_MAX: u32 = 65_536;
pub const FILTER_RULES_MAX: u32 = 4096;
pub const SOCK_NAT_MAX: u32 = 65_536;
pub const NETWORKS_MAX: u32 = 1024;
pub const CONNTRACK_MAX: u32 = 262_144;
pub const LINKS_MAX: u32 = 65_536;
pub const TRUSTED_IFACES_MAX: u32 = 1024;
pub const ROUTED_FLOWS_MAX: u32 = 16_384;
/// Datagrams in reassembly at once (Cilium's default for its fragment map).
pub const FRAGMENTS_MAX: u32 = 8192;
/// How long a [`FRAGMENTS`] entry is used: the kernel's reassembly timeout (`ipfrag_time`),
/// after which the receiver has given the datagram up and its IP id may come back.
pub const FRAGMENT_TIMEOUT_NS: u64 = 30_000_000_000;

pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_ICMPV6: u8 = 58;

/// Key of [`PUBLISHED_PORTS`]. `host_ip_be == 0` means "every node address".
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, bytemuck::Pod, bytemuck::Zeroable)]
pub struct PortKey {
    pub host_ip_be: u32,
    pub host_port_be: u16,
    pub proto: u8,
    pub _pad: u8,
}

/// Key of [`PUBLISHED_BACKENDS`]; the value is a `u32` count of host ports.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BackendKey {
    pub container_ip_be: u32,
    pub container_port_be: u16,
    pub proto: u8,
    pub _pad: u8,
}

/// Value of [`PUBLISHED_PORTS`]: the container end of a published port and the L2 facts
/// the XDP program needs to hand the frame straight to the container's veth.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct PortTarget {
    pub container_ip_be: u32,
    pub container_port_be: u16,
    pub _pad0: u16,
    /// The node-side end of the container's veth pair.
    pub host_veth_ifindex: u32,
    pub container_mac: [u8; 6],
    pub host_veth_mac: [u8; 6],
}

/// Key of [`NODE_ADDRS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, bytemuck::Pod, bytemuck::Zeroable)]
pub struct NodeAddrKey {
    pub addr_be: u32,
}

/// Value of [`NODE_ADDRS`]: the interface that holds the address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct NodeAddr {
    pub ifindex: u32,
}

/// Key of [`NAT_FLOWS`]: a translated flow as the container sees it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, bytemuck::Pod, bytemuck::Zeroable)]
pub struct FlowKey {
    pub container_ip_be: u32,
    pub remote_ip_be: u32,
    pub container_port_be: u16,
    pub remote_port_be: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}

/// Value of [`NAT_FLOWS`]: how to translate a reply back. The client connected to
/// `frontend` (a published address and port); when the backend could not see the client's
/// own address (a container reaching its own published port), the client was also
/// translated, and `client` is where the reply really goes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct NatFlow {
    pub frontend_ip_be: u32,
    pub frontend_port_be: u16,
    /// A `CT_*` state: [`CT_NEW`] until the container answers.
    pub state: u8,
    pub _pad0: u8,
    pub client_ip_be: u32,
    pub client_port_be: u16,
    pub _pad1: u16,
    /// `bpf_ktime_get_ns()` of the last packet, for idle timeouts.
    pub last_seen_ns: u64,
    /// Packets of the flow, both directions, since it was opened (or since the agent
    /// migrated it from a layout without counters).
    pub packets: u64,
    /// Their bytes at the IP level (headers included), as conntrack's accounting counts.
    pub bytes: u64,
}

/// Key of [`PUBLISHED_PORTS6`]: [`PortKey`] with an IPv6 host address (all zeros: every
/// IPv6 address of the node). Addresses are in network order, as on the wire.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, bytemuck::Pod, bytemuck::Zeroable)]
pub struct PortKey6 {
    pub host_ip: [u8; 16],
    pub host_port_be: u16,
    pub proto: u8,
    pub _pad: u8,
}

/// Value of [`PUBLISHED_PORTS6`]: [`PortTarget`] with the container's IPv6 address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct PortTarget6 {
    pub container_ip: [u8; 16],
    pub container_port_be: u16,
    pub _pad0: u16,
    pub host_veth_ifindex: u32,
    pub container_mac: [u8; 6],
    pub host_veth_mac: [u8; 6],
}

/// Key of [`NODE_ADDRS6`]; the value is a [`NodeAddr`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, bytemuck::Pod, bytemuck::Zeroable)]
pub struct NodeAddrKey6 {
    pub addr: [u8; 16],
}

/// Key of [`NAT_FLOWS6`]: [`FlowKey`] with IPv6 addresses.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, bytemuck::Pod, bytemuck::Zeroable)]
pub struct FlowKey6 {
    pub container_ip: [u8; 16],
    pub remote_ip: [u8; 16],
    pub container_port_be: u16,
    pub remote_port_be: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}

/// Key of [`PUBLISHED_BACKENDS6`]: [`BackendKey`] with an IPv6 address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BackendKey6 {
    pub container_ip: [u8; 16],
    pub container_port_be: u16,
    pub proto: u8,
    pub _pad: u8,
}

/// Value of [`NAT_FLOWS6`]: [`NatFlow`] with IPv6 addresses, the same states and counters.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct NatFlow6 {
    pub frontend_ip: [u8; 16],
    pub client_ip: [u8; 16],
    pub frontend_port_be: u16,
    pub client_port_be: u16,
    /// A `CT_*` state: [`CT_NEW`] until the container answers.
    pub state: u8,
    pub _pad: [u8; 3],
    pub last_seen_ns: u64,
    pub packets: u64,
    pub bytes: u64,
}

/// Key of [`ENDPOINTS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, bytemuck::Pod, bytemuck::Zeroable)]
pub struct EndpointKey {
    pub ip_be: u32,
}

/// Value of [`ENDPOINTS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct EndpointInfo {
    /// The node-side end of the container's veth.
    pub host_veth_ifindex: u32,
    /// The gateway of the endpoint's network: the source a container sees when it reaches
    /// its own published port (hairpin).
    pub gateway_ip_be: u32,
    pub container_mac: [u8; 6],
    pub host_veth_mac: [u8; 6],
}

/// The data of a [`FILTER_RULES`] key. The trie matches `prefix_len` leading bits of it:
/// 32 bits of scope (a published host port and protocol, or zeros for "every published
/// port") and then up to 32 bits of source address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, bytemuck::Pod, bytemuck::Zeroable)]
pub struct FilterKey {
    pub host_port_be: u16,
    pub proto: u8,
    pub _pad: u8,
    pub src_ip_be: u32,
}

/// The data of a [`FILTER_RULES6`] key: [`FilterKey`] with up to 128 bits of source.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, bytemuck::Pod, bytemuck::Zeroable)]
pub struct FilterKey6 {
    pub host_port_be: u16,
    pub proto: u8,
    pub _pad: u8,
    pub src_ip: [u8; 16],
}

/// Bits of a [`FilterKey`] that are scope, before the source prefix.
pub const FILTER_SCOPE_BITS: u32 = 32;

pub const FILTER_ALLOW: u32 = 1;
pub const FILTER_DENY: u32 = 2;

/// Value of [`FILTER_RULES`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct FilterRule {
    pub rule_id: u32,
    /// [`FILTER_ALLOW`] or [`FILTER_DENY`].
    pub action: u32,
}

/// Key of [`SOCK_NAT`]: a socket and the backend it was sent to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, bytemuck::Pod, bytemuck::Zeroable)]
pub struct SockNatKey {
    pub socket_cookie: u64,
    pub backend_ip_be: u32,
    pub backend_port_be: u16,
    pub _pad: u16,
}

/// Value of [`SOCK_NAT`]: the published address the application asked for.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct SockNatValue {
    pub frontend_ip_be: u32,
    pub frontend_port_be: u16,
    pub _pad: u16,
}

/// Key of [`SOCK_NAT6`]: [`SockNatKey`] with an IPv6 backend address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, bytemuck::Pod, bytemuck::Zeroable)]
pub struct SockNatKey6 {
    pub socket_cookie: u64,
    pub backend_ip: [u8; 16],
    pub backend_port_be: u16,
    pub _pad: [u8; 6],
}

/// Value of [`SOCK_NAT6`]: the published address the application asked for.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct SockNatValue6 {
    pub frontend_ip: [u8; 16],
    pub frontend_port_be: u16,
    pub _pad: u16,
}

/// The data of a [`NETWORKS`] key: an address, matched on the subnet's prefix length.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, bytemuck::Pod, bytemuck::Zeroable)]
pub struct NetworkKey {
    pub addr_be: u32,
}

/// The data of a [`NETWORKS6`] key: an IPv6 address, matched on the subnet's prefix length.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, bytemuck::Pod, bytemuck::Zeroable)]
pub struct NetworkKey6 {
    pub addr: [u8; 16],
}

/// [`NetworkInfo::flags`]: containers on the network may talk to each other.
pub const NETWORK_ICC: u32 = 1;
/// [`NetworkInfo::flags`]: the network has no way out (`--internal`).
pub const NETWORK_INTERNAL: u32 = 2;
/// [`NetworkInfo::flags`]: outgoing traffic is masqueraded.
pub const NETWORK_MASQUERADE: u32 = 4;

/// [`NetworkInfo::flags`]: the outside may reach every port of the network's containers
/// at their own address (`gateway_mode_ipv4=nat-unprotected`).
pub const NETWORK_DIRECT_ANY: u32 = 8;
/// [`NetworkInfo::flags`]: the outside may reach the network's published container ports
/// at the containers' own addresses, from every interface (`gateway_mode_ipv4=routed`, or
/// the agent's `--allow-direct-routing`), and the replies of flows they opened.
pub const NETWORK_DIRECT_PUBLISHED: u32 = 16;
/// [`NetworkInfo::flags`]: ICMP from the outside reaches the containers
/// (`gateway_mode_ipv4=routed`, as Docker's `-o BRIDGE -p icmp -j ACCEPT`).
pub const NETWORK_DIRECT_ICMP: u32 = 32;

/// Value of [`NETWORKS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct NetworkInfo {
    /// A small number naming the network (the agent's choice).
    pub index: u32,
    /// `NETWORK_*` bits.
    pub flags: u32,
}

/// The value of [`NODE_CONFIG`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct NodeConfig {
    /// The network namespace the agent manages: socket programs act only there.
    pub netns_cookie: u64,
    /// Not read any more: masqueraded traffic leaves with the address of the interface the
    /// route picks ([`MASQUERADE_SOURCES`]). Kept, zero, so that pinned maps of an earlier
    /// agent keep their layout.
    pub masquerade_ip_be: u32,
    /// The source ports masquerade hands out, inclusive, in host order. Both zero: keep
    /// the container's port when free, else pick from the kernel's range for its class
    /// (1-511, 600-1023 or 1024-65535), as netfilter's MASQUERADE does.
    pub masquerade_port_min: u16,
    pub masquerade_port_max: u16,
}

/// Key of [`CONNTRACK`]: a packet's 5-tuple as it appears on the wire in one direction.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, bytemuck::Pod, bytemuck::Zeroable)]
pub struct CtKey {
    pub src_ip_be: u32,
    pub dst_ip_be: u32,
    pub sport_be: u16,
    pub dport_be: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}

/// Key of [`CONNTRACK6`]: [`CtKey`] with IPv6 addresses (in memory order).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, bytemuck::Pod, bytemuck::Zeroable)]
pub struct CtKey6 {
    pub src_ip: [u8; 16],
    pub dst_ip: [u8; 16],
    pub sport_be: u16,
    pub dport_be: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}

/// [`Event::kind`].
pub const EVENT_DROP: u32 = 1;
pub const EVENT_NEW_FLOW: u32 = 2;
/// [`Event6::kind`]: a new IPv6 flow.
pub const EVENT_NEW_FLOW6: u32 = 3;
/// [`Event6::kind`]: a dropped IPv6 packet.
pub const EVENT_DROP6: u32 = 4;

/// A record of [`EVENTS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Event {
    pub kind: u32,
    /// The [`crate::stats::Stat`] that counted the packet.
    pub stat: u32,
    pub src_ip_be: u32,
    pub dst_ip_be: u32,
    pub sport_be: u16,
    pub dport_be: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}

/// A record of [`EVENTS`] about an IPv6 flow: [`Event`] with IPv6 addresses. Its `kind`
/// comes first, as [`Event`]'s, so that a reader tells the two apart by it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Event6 {
    pub kind: u32,
    pub stat: u32,
    pub src_ip: [u8; 16],
    pub dst_ip: [u8; 16],
    pub sport_be: u16,
    pub dport_be: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}

/// Value of [`EVENT_BUDGET`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct EventBudget {
    pub tokens: u64,
    pub refilled_ns: u64,
}

/// Key of [`LINKS`]; the value is unused (presence allows).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, bytemuck::Pod, bytemuck::Zeroable)]
pub struct LinkKey {
    pub src_ip_be: u32,
    pub dst_ip_be: u32,
    pub dport_be: u16,
    pub proto: u8,
    pub _pad: u8,
}

/// Key of [`LINKS6`]: [`LinkKey`] with IPv6 addresses (in memory order); the value is
/// unused (presence allows).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, bytemuck::Pod, bytemuck::Zeroable)]
pub struct LinkKey6 {
    pub src_ip: [u8; 16],
    pub dst_ip: [u8; 16],
    pub dport_be: u16,
    pub proto: u8,
    pub _pad: u8,
}

/// Key of [`TRUSTED_IFACES`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, bytemuck::Pod, bytemuck::Zeroable)]
pub struct TrustedIfaceKey {
    /// [`NetworkInfo::index`] of the network.
    pub network_index: u32,
    /// The interface frames arrive on.
    pub ifindex: u32,
}

/// [`CtEntry::direction`]: the container's packets, whose source is translated.
pub const CT_ORIGINAL: u8 = 0;
/// [`CtEntry::direction`]: the replies, whose destination is translated back.
pub const CT_REPLY: u8 = 1;

/// Flow states ([`CtEntry::state`], [`NatFlow::state`]), as nf_conntrack sees them, in the
/// order a flow goes through them; the agent's idle timeouts depend on them. Only flows
/// not established ([`CT_NEW`], [`CT_REPLIED`], [`CT_CLOSING`]) may be evicted for room, as
/// the kernel's early_drop evicts flows that are not ASSURED and TCP flows that are closing.
/// No reply seen yet (TCP: the SYN; UDP and ICMP: datagrams one way).
pub const CT_NEW: u8 = 0;
/// TCP only: the SYN-ACK came back, the opener has not acknowledged it yet (SYN_RECV). A
/// SYN from a spoofed source ends here.
pub const CT_REPLIED: u8 = 1;
/// Both directions seen (TCP: the handshake completed): never evicted for room.
pub const CT_ESTABLISHED: u8 = 2;
/// TCP only: a FIN was seen; a new SYN may take the tuple over (as TIME_WAIT reuse).
pub const CT_CLOSING: u8 = 3;

/// Whether a flow in `state` may give way to a new one when its table is full.
#[inline(always)]
pub const fn ct_evictable(state: u8) -> bool {
    state != CT_ESTABLISHED
}

/// Value of [`CONNTRACK`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct CtEntry {
    /// The address and port that replace the source ([`CT_ORIGINAL`]) or the destination
    /// ([`CT_REPLY`]).
    pub nat_ip_be: u32,
    pub nat_port_be: u16,
    pub direction: u8,
    /// A `CT_*` state, the same in both entries of a flow.
    pub state: u8,
    pub last_seen_ns: u64,
    /// For replies: the container's veth and MACs, to hand the frame straight over.
    pub host_veth_ifindex: u32,
    pub container_mac: [u8; 6],
    pub host_veth_mac: [u8; 6],
}

/// Value of [`CONNTRACK6`]: [`CtEntry`] with an IPv6 address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct CtEntry6 {
    pub nat_ip: [u8; 16],
    pub nat_port_be: u16,
    pub direction: u8,
    pub state: u8,
    pub _pad: u32,
    pub last_seen_ns: u64,
    pub host_veth_ifindex: u32,
    pub container_mac: [u8; 6],
    pub host_veth_mac: [u8; 6],
}

/// Key of [`FRAGMENTS`]: a fragmented datagram as it arrived (RFC 791's reassembly key).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, bytemuck::Pod, bytemuck::Zeroable)]
pub struct FragmentKey {
    pub src_ip_be: u32,
    pub dst_ip_be: u32,
    pub id_be: u16,
    pub proto: u8,
    pub _pad: u8,
}

/// Value of [`FRAGMENTS`]: what the first fragment was translated to, and where it went.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct FragmentEntry {
    pub src_ip_be: u32,
    pub dst_ip_be: u32,
    /// The veth the first fragment was handed to, with the MACs it got; 0: it was
    /// forwarded by a FIB lookup, which each fragment repeats.
    pub ifindex: u32,
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    /// `bpf_ktime_get_ns()` of the first fragment, for [`FRAGMENT_TIMEOUT_NS`].
    pub first_seen_ns: u64,
}

/// Key of [`FRAGMENTS6`]: a fragmented IPv6 datagram as it arrived (RFC 8200's reassembly
/// key: source, destination, identification).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, bytemuck::Pod, bytemuck::Zeroable)]
pub struct FragmentKey6 {
    pub src_ip: [u8; 16],
    pub dst_ip: [u8; 16],
    pub id_be: u32,
}

/// Value of [`FRAGMENTS6`]: [`FragmentEntry`] with IPv6 addresses.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct FragmentEntry6 {
    pub src_ip: [u8; 16],
    pub dst_ip: [u8; 16],
    /// As [`FragmentEntry::ifindex`]: the veth, or 0 for a FIB lookup per fragment.
    pub ifindex: u32,
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    /// `bpf_ktime_get_ns()` of the first fragment, for [`FRAGMENT_TIMEOUT_NS`].
    pub first_seen_ns: u64,
}

/// Value of [`STATS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

const _: () = assert!(size_of::<PortKey>() == 8);
const _: () = assert!(size_of::<PortTarget>() == 24);
const _: () = assert!(size_of::<BackendKey>() == 8);
const _: () = assert!(size_of::<NodeAddrKey>() == 4);
const _: () = assert!(size_of::<NodeAddr>() == 4);
const _: () = assert!(size_of::<FlowKey>() == 16);
const _: () = assert!(size_of::<NatFlow>() == 40);
const _: () = assert!(size_of::<EndpointKey>() == 4);
const _: () = assert!(size_of::<EndpointInfo>() == 20);
const _: () = assert!(size_of::<FilterKey>() == 8);
const _: () = assert!(size_of::<FilterRule>() == 8);
const _: () = assert!(size_of::<SockNatKey>() == 16);
const _: () = assert!(size_of::<SockNatValue>() == 8);
const _: () = assert!(size_of::<NodeConfig>() == 16);
const _: () = assert!(size_of::<CtKey>() == 16);
const _: () = assert!(size_of::<LinkKey>() == 12);
const _: () = assert!(size_of::<TrustedIfaceKey>() == 8);
const _: () = assert!(size_of::<Event>() == 24);
const _: () = assert!(size_of::<Event6>() == 48);
const _: () = assert!(size_of::<EventBudget>() == 16);
const _: () = assert!(size_of::<CtEntry>() == 32);
const _: () = assert!(size_of::<NetworkKey>() == 4);
const _: () = assert!(size_of::<NetworkInfo>() == 8);
const _: () = assert!(size_of::<Counter>() == 16);
const _: () = assert!(size_of::<PortKey6>() == 20);
const _: () = assert!(size_of::<PortTarget6>() == 36);
const _: () = assert!(size_of::<NodeAddrKey6>() == 16);
const _: () = assert!(size_of::<FlowKey6>() == 40);
const _: () = assert!(size_of::<NatFlow6>() == 64);
const _: () = assert!(size_of::<FilterKey6>() == 20);
const _: () = assert!(size_of::<NetworkKey6>() == 16);
const _: () = assert!(size_of::<SockNatKey6>() == 32);
const _: () = assert!(size_of::<SockNatValue6>() == 20);
const _: () = assert!(size_of::<FragmentKey>() == 12);
const _: () = assert!(size_of::<FragmentEntry>() == 32);
const _: () = assert!(size_of::<FragmentKey6>() == 36);
const _: () = assert!(size_of::<FragmentEntry6>() == 56);
const _: () = assert!(size_of::<CtKey6>() == 40);
const _: () = assert!(size_of::<CtEntry6>() == 48);
const _: () = assert!(size_of::<LinkKey6>() == 36);
const _: () = assert!(size_of::<BackendKey6>() == 20);

/// aya's `Pod` for types whose `bytemuck::Pod` derive proved them free of padding bytes and
/// valid for every bit pattern.
#[cfg(feature = "user")]
macro_rules! aya_pod {
    ($($type:ty),* $(,)?) => {$(
        const _: fn() = || {
            fn is_bytemuck_pod<T: bytemuck::Pod>() {}
            is_bytemuck_pod::<$type>();
        };
        // SAFETY: `bytemuck::Pod`, checked above, promises what `aya::Pod` asks for.
        unsafe impl aya::Pod for $type {}
    )*};
}

#[cfg(feature = "user")]
aya_pod!(
    PortKey,
    PortTarget,
    BackendKey,
    NodeAddrKey,
    NodeAddr,
    FlowKey,
    NatFlow,
    EndpointKey,
    EndpointInfo,
    FilterKey,
    FilterRule,
    SockNatKey,
    SockNatValue,
    NodeConfig,
    CtKey,
    LinkKey,
    TrustedIfaceKey,
    Event,
    EventBudget,
    CtEntry,
    NetworkKey,
    NetworkInfo,
    Counter,
    FragmentKey,
    FragmentEntry,
    PortKey6,
    PortTarget6,
    NodeAddrKey6,
    FlowKey6,
    NatFlow6,
    FilterKey6,
    NetworkKey6,
    SockNatKey6,
    SockNatValue6,
    FragmentKey6,
    FragmentEntry6,
    CtKey6,
    CtEntry6,
    LinkKey6,
    BackendKey6,
);
