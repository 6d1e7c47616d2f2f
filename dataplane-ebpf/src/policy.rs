//! The networks' policy: source filters on published ports (what Docker users put in
//! DOCKER-USER: the longest matching prefix decides, rules scoped to the published port
//! first, then rules for every published port; no matching rule allows), direct access to
//! containers' own addresses from the outside (Docker 28's gateway modes, decided alike for
//! both families), and where a container's packet is going (isolation, icc, internal
//! networks).

use aya_ebpf::maps::lpm_trie::Key;
use dataplane_common::{
    BackendKey, FILTER_DENY, FILTER_SCOPE_BITS, FilterKey, FlowKey, IPPROTO_ICMP,
    NETWORK_DIRECT_ANY, NETWORK_DIRECT_ICMP, NETWORK_DIRECT_PUBLISHED, NETWORK_INTERNAL,
    NetworkInfo, NetworkKey, NodeAddrKey, TrustedIfaceKey,
    parse::{Ipv4, L4, ipv6::Ipv6},
};

use crate::{
    maps::{
        DIRECT_ACCESS6_SCRATCH, DirectAccessRecord6, FILTER_RULES, NETWORKS, NODE_ADDRS,
        PUBLISHED_BACKENDS, PUBLISHED_BACKENDS6, ROUTED_FLOWS, ROUTED_FLOWS6, TRUSTED_IFACES,
    },
    stats::count_filter_hit,
};

/// Whether a packet from `src_be` to published `host_port_be`/`proto` may pass. Counts the
/// hit on the rule that decided.
#[inline(always)]
pub fn source_allowed(src_be: u32, host_port_be: u16, proto: u8, bytes: usize) -> bool {
    let full = FILTER_SCOPE_BITS + 32;
    let scoped = Key::new(
        full,
        FilterKey {
            host_port_be,
            proto,
            _pad: 0,
            src_ip_be: src_be,
        },
    );
    let global = Key::new(
        full,
        FilterKey {
            host_port_be: 0,
            proto: 0,
            _pad: 0,
            src_ip_be: src_be,
        },
    );
    let rule = FILTER_RULES
        .get(&scoped)
        .or_else(|| FILTER_RULES.get(&global));
    match rule {
        Some(rule) => {
            count_filter_hit(rule.rule_id, bytes);
            rule.action != FILTER_DENY
        }
        None => true,
    }
}

/// Whether a frame from the outside that arrived on `ingress_ifindex` may reach `ip`'s
/// destination directly (not through a published host port), as [`network_allows_direct`]
/// decides. `l4` is the frame's ports where its protocol has them. The node's own
/// addresses (gateways included) and addresses on no bridge network are not ours to judge.
#[inline(always)]
pub fn direct_access_allowed(ip: &Ipv4, l4: Option<&L4>, ingress_ifindex: u32) -> bool {
    // The network first: the node's uplink addresses are in none, so the common case costs
    // one lookup; only a gateway address is in both.
    let Some(network) = NETWORKS.get(&Key::new(32, NetworkKey { addr_be: ip.dst_be })) else {
        return true;
    };
    // SAFETY: the value is only tested for presence.
    if unsafe { NODE_ADDRS.get(&NodeAddrKey { addr_be: ip.dst_be }) }.is_some() {
        return true;
    }
    let flow = l4.map(|l4| DirectFlow4 {
        key: direct_flow(ip.dst_be, ip.src_be, l4.dport_be, l4.sport_be, ip.protocol),
    });
    network_allows_direct(
        network,
        ingress_ifindex,
        flow.as_ref(),
        ip.protocol == IPPROTO_ICMP,
    )
}

/// A flow between the outside and a container's own address, as one family keeps it: in
/// its `ROUTED_FLOWS` map, with its container end possibly in its `PUBLISHED_BACKENDS`.
pub trait DirectFlow {
    /// Whether the container end is a published container port.
    fn to_published_backend(&self) -> bool;
    /// Whether the flow is remembered (opened directly, or by the container itself).
    fn is_remembered(&self) -> bool;
    /// Remembers the flow, so that its packets both ways pass (see [`ROUTED_FLOWS`]).
    fn remember(&self);
}

/// Whether a frame from the outside that arrived on `ingress_ifindex` may reach a
/// container of `network` at its own address, for either family, as Docker 28 decides:
/// its raw-table drop of every frame to a container's address from outside its bridge
/// (moby#49325), which `nat-unprotected` and `routed` networks, `--allow-direct-routing`
/// and the network's trusted interfaces skip, then its FORWARD rules (published container
/// ports, replies of flows the container opened, and ICMP in `routed` mode). `flow` is the
/// frame's flow where its protocol has ports (remembered when allowed, so that the
/// container's replies leave untranslated); `icmp` whether the frame is the family's ICMP.
/// Internal networks are never reached from the outside.
#[inline(always)]
pub fn network_allows_direct<F: DirectFlow>(
    network: &NetworkInfo,
    ingress_ifindex: u32,
    flow: Option<&F>,
    icmp: bool,
) -> bool {
    let flags = network.flags;
    if flags & NETWORK_INTERNAL != 0 {
        return false;
    }
    let allowed = flags & NETWORK_DIRECT_ANY != 0 || {
        let trusted = TrustedIfaceKey {
            network_index: network.index,
            ifindex: ingress_ifindex,
        };
        // SAFETY: the value is only tested for presence.
        let routable = flags & NETWORK_DIRECT_PUBLISHED != 0
            || unsafe { TRUSTED_IFACES.get(&trusted) }.is_some();
        routable
            && match flow {
                Some(flow) => flow.to_published_backend() || flow.is_remembered(),
                None => icmp && flags & NETWORK_DIRECT_ICMP != 0,
            }
    };
    if allowed && let Some(flow) = flow {
        flow.remember();
    }
    allowed
}

/// Whether a container's packet to the outside belongs to a flow with its own address
/// (one the outside opened directly, or one it opened on a network without masquerade):
/// it leaves untranslated.
#[inline(always)]
pub fn is_direct_reply(ip: &Ipv4, l4: &L4) -> bool {
    DirectFlow4 {
        key: direct_flow(ip.src_be, ip.dst_be, l4.sport_be, l4.dport_be, ip.protocol),
    }
    .is_remembered()
}

/// Remembers a flow a container opens to the outside with its own address (a network
/// without masquerade), so that its replies pass [`direct_access_allowed`].
#[inline(always)]
pub fn note_routed_flow(ip: &Ipv4, l4: &L4) {
    DirectFlow4 {
        key: direct_flow(ip.src_be, ip.dst_be, l4.sport_be, l4.dport_be, ip.protocol),
    }
    .remember();
}

#[inline(always)]
fn direct_flow(
    container_ip_be: u32,
    remote_ip_be: u32,
    container_port_be: u16,
    remote_port_be: u16,
    proto: u8,
) -> FlowKey {
    FlowKey {
        container_ip_be,
        remote_ip_be,
        container_port_be,
        remote_port_be,
        proto,
        _pad: [0; 3],
    }
}

/// An IPv4 flow in [`ROUTED_FLOWS`], its key built on the stack.
struct DirectFlow4 {
    key: FlowKey,
}

impl DirectFlow for DirectFlow4 {
    #[inline(always)]
    fn to_published_backend(&self) -> bool {
        is_published_backend(
            self.key.container_ip_be,
            self.key.container_port_be,
            self.key.proto,
        )
    }

    #[inline(always)]
    fn is_remembered(&self) -> bool {
        // SAFETY: the value is only tested for presence.
        unsafe { ROUTED_FLOWS.get(&self.key) }.is_some()
    }

    #[inline(always)]
    fn remember(&self) {
        // SAFETY: only checking presence; a lookup also refreshes the entry's LRU age.
        if unsafe { ROUTED_FLOWS.get(&self.key) }.is_none() {
            // A full map evicts its least recently used flow; nothing to do on failure.
            let _ = ROUTED_FLOWS.insert(&self.key, &0, 0);
        }
    }
}

/// Whether `ip:port` is the container end of a published port.
#[inline(always)]
pub fn is_published_backend(container_ip_be: u32, container_port_be: u16, proto: u8) -> bool {
    let backend = BackendKey {
        container_ip_be,
        container_port_be,
        proto,
        _pad: 0,
    };
    // SAFETY: the value is only tested for presence.
    unsafe { PUBLISHED_BACKENDS.get(&backend) }.is_some()
}

/// IPv6's [`is_direct_reply`].
#[inline(always)]
pub fn is_direct_reply6(ip: &Ipv6, l4: &L4) -> bool {
    container_flow6(ip, l4).is_some_and(|flow| flow.is_remembered())
}

/// IPv6's [`note_routed_flow`].
#[inline(always)]
pub fn note_routed_flow6(ip: &Ipv6, l4: &L4) {
    if let Some(flow) = container_flow6(ip, l4) {
        flow.remember();
    }
}

/// Whether a container's IPv6 packet `ip` leaves from the container end of a published
/// port (`l4`'s source).
#[inline(always)]
pub fn from_published_backend6(ip: &Ipv6, l4: &L4) -> bool {
    container_flow6(ip, l4).is_some_and(|flow| flow.to_published_backend())
}

/// The flow of a container's IPv6 packet `ip` with ports `l4` to the outside.
#[inline(always)]
fn container_flow6(ip: &Ipv6, l4: &L4) -> Option<DirectFlow6> {
    let (sport_be, dport_be) = (l4.sport_be, l4.dport_be);
    DirectFlow6::of(
        CONTAINER_SLOT6,
        &ip.src,
        &ip.dst,
        sport_be,
        dport_be,
        ip.protocol,
    )
}

/// [`DIRECT_ACCESS6_SCRATCH`]'s slot for the containers' veths and for the uplinks.
const CONTAINER_SLOT6: u32 = 0;
pub const UPLINK_SLOT6: u32 = 1;

/// An IPv6 flow in [`ROUTED_FLOWS6`], its keys built in this CPU's scratch record for
/// a side: with 16-byte addresses they would take the IPv6 programs past their stack.
pub struct DirectFlow6 {
    record: &'static DirectAccessRecord6,
}

impl DirectFlow6 {
    /// The flow between `container_ip`:`container_port_be` and `remote_ip`:
    /// `remote_port_be` over `proto`. `slot` is the side's scratch record
    /// ([`UPLINK_SLOT6`], or the containers'); `None` only when it is missing.
    #[inline(always)]
    pub fn of(
        slot: u32,
        container_ip: &[u8; 16],
        remote_ip: &[u8; 16],
        container_port_be: u16,
        remote_port_be: u16,
        proto: u8,
    ) -> Option<Self> {
        let record = DIRECT_ACCESS6_SCRATCH.get_ptr_mut(slot)?;
        // SAFETY: a map value of plain data, ours alone on this CPU while the program runs.
        let record = unsafe { &mut *record };
        // Field by field: a whole key built first would be built on the stack.
        let flow = &mut record.flow;
        flow.container_ip = *container_ip;
        flow.remote_ip = *remote_ip;
        flow.container_port_be = container_port_be;
        flow.remote_port_be = remote_port_be;
        flow.proto = proto;
        flow._pad = [0; 3];
        let backend = &mut record.backend;
        backend.container_ip = *container_ip;
        backend.container_port_be = container_port_be;
        backend.proto = proto;
        backend._pad = 0;
        Some(DirectFlow6 { record })
    }
}

impl DirectFlow for DirectFlow6 {
    #[inline(always)]
    fn to_published_backend(&self) -> bool {
        // SAFETY: the value is only tested for presence.
        unsafe { PUBLISHED_BACKENDS6.get(&self.record.backend) }.is_some()
    }

    #[inline(always)]
    fn is_remembered(&self) -> bool {
        // SAFETY: the value is only tested for presence.
        unsafe { ROUTED_FLOWS6.get(&self.record.flow) }.is_some()
    }

    #[inline(always)]
    fn remember(&self) {
        // SAFETY: only checking presence; a lookup also refreshes the entry's LRU age.
        if unsafe { ROUTED_FLOWS6.get(&self.record.flow) }.is_none() {
            // A full map evicts its least recently used flow; nothing to do on failure.
            let _ = ROUTED_FLOWS6.insert(&self.record.flow, &0, 0);
        }
    }
}

/// Where a container's packet is going, as far as the bridge networks are concerned.
pub enum Destination {
    /// An address of the node itself (its gateways included): allowed, like Docker's INPUT.
    Node,
    /// Another address of the sender's own network.
    SameNetwork { icc: bool },
    /// An address on another bridge network: isolated, like DOCKER-ISOLATION.
    OtherNetwork,
    /// Anything else; `internal` when the sender's network has no way out, `masquerade`
    /// when its traffic leaves with the node's address.
    Outside { internal: bool, masquerade: bool },
}

/// Classifies a packet from a container at `src_be` to `dst_be`. `None`: the sender is
/// not on any network the agent knows (not ours to judge).
#[inline(always)]
pub fn classify(src_be: u32, dst_be: u32) -> Option<Destination> {
    use dataplane_common::{NETWORK_ICC, NETWORK_MASQUERADE};

    let source = NETWORKS.get(&Key::new(32, NetworkKey { addr_be: src_be }))?;
    // SAFETY: only checking presence.
    if unsafe { NODE_ADDRS.get(&NodeAddrKey { addr_be: dst_be }) }.is_some() {
        return Some(Destination::Node);
    }
    // Broadcast and multicast stay on the link; the bridge decides.
    let first_octet = u32::from_be(dst_be) >> 24;
    if dst_be == u32::MAX || (224..240).contains(&first_octet) {
        return Some(Destination::Node);
    }
    match NETWORKS.get(&Key::new(32, NetworkKey { addr_be: dst_be })) {
        Some(dest) if dest.index == source.index => Some(Destination::SameNetwork {
            icc: source.flags & NETWORK_ICC != 0,
        }),
        Some(_) => Some(Destination::OtherNetwork),
        None => Some(Destination::Outside {
            internal: source.flags & NETWORK_INTERNAL != 0,
            masquerade: source.flags & NETWORK_MASQUERADE != 0,
        }),
    }
}
