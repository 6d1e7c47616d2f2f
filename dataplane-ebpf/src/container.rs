//! What the TC program on a container's veth does with what the container sends: replies
//! of published-port flows go back to their clients, connections to a published port
//! through the node's address go to its container (hairpin), fragments follow their first
//! fragment, ICMP errors about translated flows leave as the remote end knows the flow, and
//! the rest is judged by the networks' policy, masqueraded on its way out.

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    programs::TcContext,
};
use dataplane_common::{
    parse::{ETH_HLEN, Ipv4, L4, Malformed, Parsed, icmp_echo, parse},
    stats::Stat,
};

use crate::{
    conntrack, container6, frag,
    frame::TcFrame,
    icmp, nat,
    policy::{self, Destination},
};

/// Headers the TC program wants in the linear part of the skb: Ethernet, IPv4 with the
/// longest options, and a TCP header.
const MAX_HEADERS: u32 = (ETH_HLEN + 60 + 60) as u32;

// Inlined into the program: as a BPF subprogram its stack would add to the entry
// point's, past the verifier's 512 bytes for the two together.
#[inline(always)]
pub fn ingress(ctx: &TcContext) -> (i32, Stat) {
    let len = ctx.len() as usize;
    let mut parsed = parse(&TcFrame(ctx), len);
    if parsed == Err(Malformed::Truncated) && ctx.data_end() - ctx.data() < len {
        // The headers may sit partly outside the linear area: pull them in and retry.
        let want = if len < MAX_HEADERS as usize {
            len as u32
        } else {
            MAX_HEADERS
        };
        if ctx.pull_data(want).is_ok() {
            parsed = parse(&TcFrame(ctx), len);
        }
    }
    let (ip, l4) = match parsed {
        Err(_) => return (TC_ACT_SHOT, Stat::ContainerDropMalformed),
        Ok(Parsed::NotIpv4) => return container6::hand_over(ctx),
        // A fragment after the first follows its first fragment; without one, it and other
        // protocols (ICMP, ...) are judged by addresses alone.
        Ok(Parsed::Fragment(ip)) => {
            if let Some(verdict) = frag::container_following(ctx, &ip) {
                return verdict;
            }
            return policy_verdict(ctx, &ip, None, Stat::ContainerPassFragment);
        }
        Ok(Parsed::OtherProtocol(ip)) => {
            if let Some(verdict) = icmp::container_error(ctx, &ip) {
                return verdict;
            }
            return policy_verdict(ctx, &ip, None, Stat::ContainerPassNotTcpUdp);
        }
        Ok(Parsed::Transport(ip, l4)) => (ip, l4),
    };
    // A reply of a translated flow first: a container answering a node-local client (whose
    // ephemeral port may equal some published port) must not be taken for a new hairpin.
    if let Some((flow, entry)) = nat::reply_flow(&ip, &l4) {
        return nat::reply(ctx, &ip, &l4, &flow, entry);
    }
    if !nat::is_loopback(ip.dst_be)
        && let Some(target) = nat::published_target(ip.dst_be, l4.dport_be, ip.protocol, false)
    {
        return nat::hairpin(ctx, &ip, &l4, &target);
    }
    policy_verdict(ctx, &ip, Some(&l4), Stat::ContainerPassNoFlow)
}

/// What the networks' policy says of a packet that is not part of a translated flow:
/// isolation between networks, `icc`, `--internal`. `unknown` counts a sender that is on no
/// network the agent knows.
#[inline(always)]
fn policy_verdict(ctx: &TcContext, ip: &Ipv4, l4: Option<&L4>, unknown: Stat) -> (i32, Stat) {
    match policy::classify(ip.src_be, ip.dst_be) {
        None => (TC_ACT_OK, unknown),
        Some(Destination::Node) => (TC_ACT_OK, Stat::ContainerPassToNode),
        Some(Destination::SameNetwork { icc: true }) => (TC_ACT_OK, Stat::ContainerPassSameNetwork),
        Some(Destination::SameNetwork { icc: false }) => match l4 {
            Some(l4) => conntrack::linked(ip, l4),
            None => (TC_ACT_SHOT, Stat::ContainerDropPolicyIcc),
        },
        Some(Destination::OtherNetwork) => (TC_ACT_SHOT, Stat::ContainerDropIsolation),
        Some(Destination::Outside { internal: true, .. }) => {
            (TC_ACT_SHOT, Stat::ContainerDropInternal)
        }
        Some(Destination::Outside {
            internal: false,
            masquerade: false,
        }) => {
            if let Some(l4) = l4 {
                policy::note_routed_flow(ip, l4);
            }
            (TC_ACT_OK, Stat::ContainerPassOutside)
        }
        Some(Destination::Outside {
            internal: false,
            masquerade: true,
        }) => match l4 {
            // A flow the outside opened to the container's own address (gateway modes,
            // trusted interfaces) is answered from that address.
            Some(l4) if policy::is_direct_reply(ip, l4) => (TC_ACT_OK, Stat::ContainerPassOutside),
            Some(l4) => conntrack::masquerade(ctx, ip, l4),
            // ICMP echo requests are masqueraded by identifier; other protocols leave as
            // they are. A later fragment of a datagram we would have translated, but whose
            // first fragment was not (refused), would leave with the container's own
            // address: dropped.
            None => match icmp_echo(&TcFrame(ctx), ip, true) {
                Some(echo) => conntrack::masquerade(ctx, ip, &echo),
                None if frag::is_translated_protocol(ip) && ip.fragment_offset() != 0 => {
                    (TC_ACT_SHOT, Stat::ContainerDropFragmentUntracked)
                }
                None => (TC_ACT_OK, Stat::ContainerPassOutside),
            },
        },
    }
}
