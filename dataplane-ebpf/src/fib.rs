//! Forwarding without the node's stack: a FIB lookup and a redirect out of the egress
//! device, with neighbour resolution delegated to the kernel when the MAC is not known yet.

use core::{mem::size_of, ptr};

use aya_ebpf::{
    bindings::{BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, TC_ACT_SHOT, bpf_fib_lookup},
    helpers::{bpf_fib_lookup as fib_lookup, bpf_redirect, bpf_redirect_neigh},
    programs::TcContext,
};
use dataplane_common::{
    parse::{Ipv4, L4},
    stats::Stat,
};

use crate::maps::FIB_SCRATCH;

const AF_INET: u8 = 2;

/// The interface a container's packet to `ip`'s destination would leave by (where the
/// masquerade source comes from); `None` when no route leads out. The lookup's parameter
/// block is a per-CPU map value, not on the stack: the container program's masquerade path
/// has no room left there.
#[inline(always)]
pub fn egress_ifindex(ctx: &TcContext, ip: &Ipv4, l4: &L4) -> Option<u32> {
    let params = FIB_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: a map value of the right type, ours alone on this CPU while the program runs;
    // all-zero is a valid request to fill in.
    unsafe {
        ptr::write_bytes(params, 0, 1);
        (*params).family = AF_INET;
        (*params).l4_protocol = ip.protocol;
        (*params).sport = l4.sport_be;
        (*params).dport = l4.dport_be;
        (*params).ifindex = (*ctx.skb.skb).ifindex;
        (*params).__bindgen_anon_3.ipv4_src = ip.src_be;
        (*params).__bindgen_anon_4.ipv4_dst = ip.dst_be;
    }
    // SAFETY: helper call with a correctly sized parameter block.
    let ret = unsafe {
        fib_lookup(
            ctx.skb.skb.cast(),
            params,
            size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    };
    if ret == i64::from(BPF_FIB_LKUP_RET_SUCCESS) || ret == i64::from(BPF_FIB_LKUP_RET_NO_NEIGH) {
        // SAFETY: as above.
        return Some(unsafe { (*params).ifindex });
    }
    None
}

/// Sends the (already translated, TTL already decremented) packet from `src_be` to `dst_be`.
/// `redirected` and `resolving` name the two successful outcomes for the counters.
#[inline(always)]
pub fn forward(
    ctx: &TcContext,
    ip: &Ipv4,
    l4: &L4,
    src_be: u32,
    dst_be: u32,
    (redirected, resolving): (Stat, Stat),
) -> (i32, Stat) {
    // Every translated packet routed out passes here: a first fragment's translation is
    // remembered for the fragments that follow.
    crate::frag::remember(ip, src_be, dst_be, 0, [0; 6], [0; 6]);
    // SAFETY: an all-zero bpf_fib_lookup is a valid request to fill in.
    let mut params: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    params.family = AF_INET;
    params.l4_protocol = ip.protocol;
    params.sport = l4.sport_be;
    params.dport = l4.dport_be;
    // No length: the kernel then checks the packet against the egress device's MTU only,
    // not against a path MTU the node learnt for its own traffic. Refusing a container's
    // packet for that would be silent (no ICMP error goes back to the container, which then
    // waits on retransmission timeouts); sent on, it meets the router that has the smaller
    // MTU, whose "fragmentation needed" the uplink program translates back to the container.
    params.__bindgen_anon_1.tot_len = 0;
    // SAFETY: reading a field of the context the kernel handed us.
    params.ifindex = unsafe { (*ctx.skb.skb).ifindex };
    params.__bindgen_anon_3.ipv4_src = src_be;
    params.__bindgen_anon_4.ipv4_dst = dst_be;

    // SAFETY: helper call with a correctly sized parameter block.
    let ret = unsafe {
        fib_lookup(
            ctx.skb.skb.cast(),
            &mut params,
            size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    };
    if ret == i64::from(BPF_FIB_LKUP_RET_SUCCESS) {
        if ctx.store(0, &params.dmac, 0).is_err() || ctx.store(6, &params.smac, 0).is_err() {
            return (TC_ACT_SHOT, Stat::ContainerDropRewriteFailed);
        }
        // SAFETY: plain helper call.
        let verdict = unsafe { bpf_redirect(params.ifindex, 0) } as i32;
        return (verdict, redirected);
    }
    if ret == i64::from(BPF_FIB_LKUP_RET_NO_NEIGH) {
        // SAFETY: plain helper call; a null nexthop makes the kernel route the packet itself.
        let verdict = unsafe { bpf_redirect_neigh(params.ifindex, ptr::null_mut(), 0, 0) } as i32;
        return (verdict, resolving);
    }
    (TC_ACT_SHOT, Stat::ContainerDropNoRoute)
}
