//! IPv6 on the uplinks, in programs of their own (`uplink_ingress6`, `uplink_ingress6_tc`,
//! `uplink_ingress6_l3`) that the uplink programs reach by tail call, as `container_ingress`
//! reaches `container_ingress6`: with IPv6's 16-byte addresses (published ports, ICMPv6
//! errors, fragments) beside IPv4's paths, one program's stack would pass the verifier's
//! 512 bytes. A tail call gives the IPv6 path a stack and a verifier budget of its own.

use aya_ebpf::{EbpfContext, maps::ProgramArray};
use dataplane_common::{
    parse::{Frame, ipv6::ETH_P_IPV6},
    stats::Stat,
};

use crate::frame::Action;

/// Offset of the Ethernet type (on a layer-3 uplink, of the header the logic sees).
const ETHERTYPE_OFF: usize = 12;

/// Whether a frame the IPv4 parser found not to be IPv4 is IPv6.
#[inline(always)]
pub fn is_ipv6<F: Frame>(frame: &F) -> bool {
    frame.load::<u16>(ETHERTYPE_OFF) == Some(ETH_P_IPV6.to_be())
}

/// Hands an IPv6 frame to the program in `slot` of `programs`, which counts its own
/// verdict: the uplink programs' IPv6 frames to the IPv6 programs, and those programs'
/// candidate replies of masqueraded flows to the masquerade programs (masquerade6.rs; the
/// IPv6 programs have no stack left for the translation). Returns only if the tail call
/// failed (no program there: an agent that has not filled the slot yet): the frame then
/// passes to the node's stack, counted, as every IPv6 frame did before the uplinks
/// translated IPv6 (dropped, it would cut the node's own IPv6 off, neighbour discovery
/// included).
#[inline(always)]
pub fn hand_over<C: EbpfContext>(ctx: &C, programs: &ProgramArray, slot: u32) -> (Action, Stat) {
    // SAFETY: a tail call returns only when it failed; the context is the program's own.
    let _ = unsafe { programs.tail_call(ctx, slot) };
    (Action::Pass, Stat::UplinkPassIpv6ProgramMissing)
}
