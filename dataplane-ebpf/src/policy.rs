//! The networks' policy: source filters on published ports (what Docker users put in
//! DOCKER-USER: the longest matching prefix decides, rules scoped to the published port
//! first, then rules for every published port; no matching rule allows), direct access to
//! containers' own addresses from the outside (Docker 28's gateway modes), and where a
//! container's packet is going (isolation, icc, internal networks).

use aya_ebpf::maps::lpm_trie::Key;
use dataplane_common::{
    BackendKey, FILTER_DENY, FILTER_SCOPE_BITS, FilterKey, FlowKey, IPPROTO_ICMP,
    NETWORK_DIRECT_ANY, NETWORK_DIRECT_ICMP, NETWORK_DIRECT_PUBLISHED, NETWORK_INTERNAL,
    NetworkKey, NodeAddrKey, TrustedIfaceKey,
    parse::{Ipv4, L4},
};

use crate::{
    maps::{FILTER_RULES, NETWORKS, NODE_ADDRS, PUBLISHED_BACKENDS, ROUTED_FLOWS, TRUSTED_IFACES},
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
/// destination directly (not through a published host port), as Docker 28 decides: its
/// raw-table drop of every frame to a container's address from outside its bridge
/// (moby#49325), which `nat-unprotected` and `routed` networks, `--allow-direct-routing`
/// and the network's trusted interfaces skip, then its FORWARD rules (published container
/// ports, replies of flows the container opened, and ICMP in `routed` mode). `l4` is the
/// frame's ports where its protocol has them. The node's own addresses (gateways
/// included) and addresses on no bridge network are not ours to judge.
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
            && match l4 {
                Some(l4) => {
                    is_published_backend(ip.dst_be, l4.dport_be, ip.protocol)
                        || is_direct_flow(
                            ip.dst_be,
                            ip.src_be,
                            l4.dport_be,
                            l4.sport_be,
                            ip.protocol,
                        )
                }
                None => ip.protocol == IPPROTO_ICMP && flags & NETWORK_DIRECT_ICMP != 0,
            }
    };
    if allowed && let Some(l4) = l4 {
        note_direct_flow(ip.dst_be, ip.src_be, l4.dport_be, l4.sport_be, ip.protocol);
    }
    allowed
}

/// Whether a container's packet to the outside belongs to a flow with its own address
/// (one the outside opened directly, or one it opened on a network without masquerade):
/// it leaves untranslated.
#[inline(always)]
pub fn is_direct_reply(ip: &Ipv4, l4: &L4) -> bool {
    is_direct_flow(ip.src_be, ip.dst_be, l4.sport_be, l4.dport_be, ip.protocol)
}

/// Remembers a flow a container opens to the outside with its own address (a network
/// without masquerade), so that its replies pass [`direct_access_allowed`].
#[inline(always)]
pub fn note_routed_flow(ip: &Ipv4, l4: &L4) {
    note_direct_flow(ip.src_be, ip.dst_be, l4.sport_be, l4.dport_be, ip.protocol);
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

#[inline(always)]
fn note_direct_flow(
    container_ip_be: u32,
    remote_ip_be: u32,
    container_port_be: u16,
    remote_port_be: u16,
    proto: u8,
) {
    let flow = direct_flow(
        container_ip_be,
        remote_ip_be,
        container_port_be,
        remote_port_be,
        proto,
    );
    // SAFETY: only checking presence; a lookup also refreshes the entry's LRU age.
    if unsafe { ROUTED_FLOWS.get(&flow) }.is_none() {
        // A full map evicts its least recently used flow; nothing to do on failure.
        let _ = ROUTED_FLOWS.insert(&flow, &0, 0);
    }
}

#[inline(always)]
fn is_direct_flow(
    container_ip_be: u32,
    remote_ip_be: u32,
    container_port_be: u16,
    remote_port_be: u16,
    proto: u8,
) -> bool {
    let flow = direct_flow(
        container_ip_be,
        remote_ip_be,
        container_port_be,
        remote_port_be,
        proto,
    );
    // SAFETY: the value is only tested for presence.
    unsafe { ROUTED_FLOWS.get(&flow) }.is_some()
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
