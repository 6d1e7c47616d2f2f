//! What the XDP program on the uplink does with a frame: replies of masqueraded flows and
//! ICMP errors about translated flows go back to their containers, connections to
//! published ports go to theirs, fragments follow their first fragment, the rest is the
//! node's.

use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use dataplane_common::{
    parse::{Parsed, icmp_echo, parse},
    stats::Stat,
};

use crate::{conntrack, frag, frame::XdpFrame, icmp, nat, policy};

pub fn ingress(ctx: &XdpContext, len: usize) -> (u32, Stat) {
    let frame = XdpFrame(ctx);
    let (ip, l4) = match parse(&frame, len) {
        Err(_) => return (xdp_action::XDP_DROP, Stat::UplinkDropMalformed),
        Ok(Parsed::NotIpv4) => return (xdp_action::XDP_PASS, Stat::UplinkPassNotIpv4),
        // A fragment after the first follows its first fragment, or goes to the node.
        Ok(Parsed::Fragment(ip)) => return frag::uplink_following(&frame, &ip),
        Ok(Parsed::OtherProtocol(ip)) => {
            // An echo reply to a masqueraded ping goes back to its container.
            if let Some(echo) = icmp_echo(&frame, &ip, false)
                && let Some(verdict) = conntrack::masquerade_reply(&frame, &ip, &echo)
            {
                return verdict;
            }
            if let Some(verdict) = icmp::uplink_error(&frame, &ip) {
                return verdict;
            }
            if !policy::direct_access_allowed(&ip, None, frame.ingress_ifindex()) {
                return (xdp_action::XDP_DROP, Stat::UplinkDropDirectAccess);
            }
            return (xdp_action::XDP_PASS, Stat::UplinkPassNotTcpUdp);
        }
        Ok(Parsed::Transport(ip, l4)) => (ip, l4),
    };
    if let Some(verdict) = conntrack::masquerade_reply(&frame, &ip, &l4) {
        return verdict;
    }
    nat::from_outside(&frame, &ip, &l4, len)
}
