//! IPv6 at a container's veth, in a TC program of its own (`container_ingress6`) that
//! `container_ingress` reaches by tail call: the IPv6 path's keys and addresses are four
//! times IPv4's, and with both paths in one program the stack would pass the verifier's
//! 512 bytes. A tail call gives the IPv6 path a stack and a verifier budget of its own.

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    programs::TcContext,
};
use dataplane_common::{
    CONTAINER_IPV6_SLOT,
    parse::{Frame, ipv6::ETH_P_IPV6},
    stats::Stat,
};

use crate::{frame::TcFrame, ipv6, maps::CONTAINER_PROGRAMS};

/// Offset of the Ethernet type.
const ETHERTYPE_OFF: usize = 12;

/// What `container_ingress` does with a frame its IPv4 parser found not to be IPv4: an
/// IPv6 frame goes to `container_ingress6`, which counts its own verdict; anything else
/// (ARP, ...) passes. If the tail call fails (no program in the slot: an agent that has
/// not filled it yet), the IPv6 frame is dropped, counted: passed, it would leave without
/// the networks' IPv6 policy and masquerade.
#[inline(always)]
pub fn hand_over(ctx: &TcContext) -> (i32, Stat) {
    let ethertype: Option<u16> = TcFrame(ctx).load(ETHERTYPE_OFF);
    if ethertype != Some(ETH_P_IPV6.to_be()) {
        return (TC_ACT_OK, Stat::ContainerPassNotIpv4);
    }
    // SAFETY: a tail call returns only when it failed; the context is the program's own.
    unsafe { CONTAINER_PROGRAMS.tail_call(ctx, CONTAINER_IPV6_SLOT) };
    (TC_ACT_SHOT, Stat::ContainerDropIpv6ProgramMissing)
}

/// What `container_ingress6` does with a container's IPv6 frame.
#[inline(always)]
pub fn ingress(ctx: &TcContext) -> (i32, Stat) {
    ipv6::container_ingress(ctx, ctx.len() as usize)
}
