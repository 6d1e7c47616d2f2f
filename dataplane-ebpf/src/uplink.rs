//! What the program on an uplink does with a frame, whichever hook runs it (XDP, or TC
//! where frames may carry partial checksums): replies of masqueraded flows and ICMP errors
//! about translated flows go back to their containers, connections to published ports go
//! to theirs, fragments follow their first fragment, the rest is the node's. IPv6 frames go
//! to the IPv6 programs (uplink6.rs), which do the same for IPv6 (ipv6.rs).

use aya_ebpf::programs::TcContext;
use dataplane_common::{
    parse::{ETH_HLEN, Parsed, icmp_echo, parse},
    stats::Stat,
};

use crate::{
    conntrack, frag,
    frame::{Action, Packet},
    icmp, nat, policy, uplink6,
};

/// Headers the uplink's logic may read or rewrite: Ethernet, IPv4 with the longest
/// options, and an ICMP error's quote (which covers a TCP header without options too).
const MAX_HEADERS: usize = ETH_HLEN + 60 + 8 + 60 + 8;

// Inlined into each entry point: as a BPF subprogram its stack would add to the entry
// point's. `ipv6` hands an IPv6 frame to the entry point's IPv6 program (uplink6.rs).
#[inline(always)]
pub fn ingress<P: Packet>(
    packet: &P,
    len: usize,
    ipv6: impl FnOnce() -> (Action, Stat),
) -> (Action, Stat) {
    let (ip, l4) = match parse(packet, len) {
        Err(_) => return (Action::Drop, Stat::UplinkDropMalformed),
        Ok(Parsed::NotIpv4) if uplink6::is_ipv6(packet) => return ipv6(),
        Ok(Parsed::NotIpv4) => return (Action::Pass, Stat::UplinkPassNotIpv4),
        // A fragment after the first follows its first fragment, or goes to the node.
        Ok(Parsed::Fragment(ip)) => return frag::uplink_following(packet, &ip),
        Ok(Parsed::OtherProtocol(ip)) => {
            // An echo reply to a masqueraded ping goes back to its container.
            if let Some(echo) = icmp_echo(packet, &ip, false)
                && let Some(verdict) = conntrack::masquerade_reply(packet, &ip, &echo)
            {
                return verdict;
            }
            if let Some(verdict) = icmp::uplink_error(packet, &ip) {
                return verdict;
            }
            if !policy::direct_access_allowed(&ip, None, packet.ingress_ifindex()) {
                return (Action::Drop, Stat::UplinkDropDirectAccess);
            }
            return (Action::Pass, Stat::UplinkPassNotTcpUdp);
        }
        Ok(Parsed::Transport(ip, l4)) => (ip, l4),
    };
    if let Some(verdict) = conntrack::masquerade_reply(packet, &ip, &l4) {
        return verdict;
    }
    nat::from_outside(packet, &ip, &l4, len)
}

/// At TC the headers may sit partly outside the skb's linear area (a GRO'd or offloaded
/// frame): pulls in what the logic may touch. A failed pull leaves the frame as it is, and
/// the parser then finds it truncated or finds no ICMP error, as for a short frame.
#[inline(always)]
pub fn linearize(ctx: &TcContext) {
    let len = ctx.len() as usize;
    let want = if len < MAX_HEADERS { len } else { MAX_HEADERS };
    if ctx.data_end() - ctx.data() < want {
        let _ = ctx.pull_data(want as u32);
    }
}
