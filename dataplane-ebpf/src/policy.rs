//! Source filters on published ports (what Docker users put in DOCKER-USER): the longest
//! matching prefix decides, rules scoped to the published port first, then rules for every
//! published port; no matching rule allows.

use aya_ebpf::maps::lpm_trie::Key;
use dataplane_common::{BackendKey, FILTER_DENY, FILTER_SCOPE_BITS, FilterKey};

use crate::{
    maps::{FILTER_RULES, PUBLISHED_BACKENDS},
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

/// Whether the outside may reach `dst_be` (with `dport_be`/`proto`, where the protocol has
/// ports) directly, not through a published host port. Like Docker's FORWARD chain with its
/// DROP policy: containers on a masquerading or internal network only at their published
/// container ports. The node's own addresses (gateways included) and other addresses (not
/// ours, or on a network routed without masquerade) are not ours to judge.
#[inline(always)]
pub fn direct_access_allowed(dst_be: u32, ports: Option<(u16, u8)>) -> bool {
    use aya_ebpf::maps::lpm_trie::Key as LpmKey;
    use dataplane_common::{NETWORK_INTERNAL, NETWORK_MASQUERADE, NetworkKey, NodeAddrKey};

    use crate::maps::{NETWORKS, NODE_ADDRS};

    // The network first: the node's uplink addresses are in none, so the common case costs
    // one lookup; only a gateway address is in both.
    let Some(network) = NETWORKS.get(&LpmKey::new(32, NetworkKey { addr_be: dst_be })) else {
        return true;
    };
    if network.flags & (NETWORK_MASQUERADE | NETWORK_INTERNAL) == 0 {
        return true;
    }
    // SAFETY: the value is only tested for presence.
    if unsafe { NODE_ADDRS.get(&NodeAddrKey { addr_be: dst_be }) }.is_some() {
        return true;
    }
    let Some((container_port_be, proto)) = ports else {
        return false;
    };
    is_published_backend(dst_be, container_port_be, proto)
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
    use aya_ebpf::maps::lpm_trie::Key as LpmKey;
    use dataplane_common::{
        NETWORK_ICC, NETWORK_INTERNAL, NETWORK_MASQUERADE, NetworkKey, NodeAddrKey,
    };

    use crate::maps::{NETWORKS, NODE_ADDRS};

    let source = NETWORKS.get(&LpmKey::new(32, NetworkKey { addr_be: src_be }))?;
    // SAFETY: only checking presence.
    if unsafe { NODE_ADDRS.get(&NodeAddrKey { addr_be: dst_be }) }.is_some() {
        return Some(Destination::Node);
    }
    // Broadcast and multicast stay on the link; the bridge decides.
    let first_octet = u32::from_be(dst_be) >> 24;
    if dst_be == u32::MAX || (224..240).contains(&first_octet) {
        return Some(Destination::Node);
    }
    match NETWORKS.get(&LpmKey::new(32, NetworkKey { addr_be: dst_be })) {
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
