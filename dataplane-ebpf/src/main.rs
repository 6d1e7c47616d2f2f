//! bpfbridge's eBPF programs. One thin entry point per attach point; the logic lives in a
//! module per concern.
#![no_std]
#![no_main]

// Layers, lowest first; a module uses only those of lower layers:
// 1. frame, maps, stats, events, fib, rewrite, flowtable, frag: packet access, maps,
//    counters, forwarding, rewrites with their checksums, the flow tables' storage, the
//    translations of fragmented datagrams;
// 2. nat (published ports), conntrack (masquerade, links), policy (isolation, filters),
//    sock (node-local sockets); then icmp (errors about the flows of nat and conntrack),
//    which looks published ports up as nat does;
// 3. uplink, container: what each program does with a frame, over the modules of 2; ipv6:
//    what both do with an IPv6 frame, with frag6 (its fragments) and icmp6 (its ICMPv6
//    errors), which look its published ports and flows up, and masquerade6 (its
//    masquerade, over flowtable's CONNTRACK6), and link6 (its `--link` allow-list, with
//    conntrack's logic over CONNTRACK6); container6 and uplink6: the
//    IPv6 programs of each side, which `container_ingress` and the uplink programs
//    tail-call.
mod conntrack;
mod container;
mod container6;
mod events;
mod fib;
mod flowtable;
mod frag;
mod frag6;
mod frame;
mod icmp;
mod icmp6;
mod ipv6;
mod link6;
mod maps;
mod masquerade6;
mod nat;
mod policy;
mod rewrite;
mod sock;
mod stats;
mod uplink;
mod uplink6;

use aya_ebpf::{
    bindings::TC_ACT_SHOT,
    macros::{cgroup_sock_addr, classifier, xdp},
    programs::{SockAddrContext, TcContext, XdpContext},
};
use dataplane_common::{
    UPLINK_IPV6_SLOT, UPLINK_L3_IPV6_SLOT, UPLINK6_L3_MASQUERADE_SLOT, UPLINK6_MASQUERADE_SLOT,
    parse::{ETH_HLEN, Frame},
    stats::Stat,
};
use frame::{Action, TcFrame, TcL3Frame, XdpFrame};
use maps::{UPLINK_TC_PROGRAMS, UPLINK_XDP_PROGRAMS, UPLINK6_TC_PROGRAMS, UPLINK6_XDP_PROGRAMS};

/// XDP on the node's uplinks: translates connections to published ports and hands them
/// straight to the container's veth. IPv6 frames go to `uplink_ingress6`.
#[xdp]
pub fn uplink_ingress(ctx: XdpContext) -> u32 {
    on_xdp(&ctx, Family::Ipv4, |frame, len| {
        uplink::ingress(frame, len, || {
            uplink6::hand_over(&ctx, &UPLINK_XDP_PROGRAMS, UPLINK_IPV6_SLOT)
        })
    })
}

/// The same on uplinks where XDP is not safe, at TC ingress (TCX): frames from a veth's
/// peer (a node that is itself a container) carry partial checksums, which only the skb
/// knows of. Counted as `uplink_ingress` too. IPv6 frames go to `uplink_ingress6_tc`.
#[classifier]
pub fn uplink_ingress_tc(ctx: TcContext) -> i32 {
    uplink::linearize(&ctx);
    on_tc(&ctx, Family::Ipv4, |frame, len| {
        uplink::ingress(frame, len, || {
            uplink6::hand_over(&ctx, &UPLINK_TC_PROGRAMS, UPLINK_IPV6_SLOT)
        })
    })
}

/// The same on layer-3 uplinks (ipip, GRE, WireGuard, tun), at TC ingress: their frames
/// start at the IP header, which XDP programs of Ethernet frames cannot read. A packet for a
/// container gets an Ethernet header on its way to the container's veth. Counted as
/// `uplink_ingress` too. IPv6 frames go to `uplink_ingress6_l3`.
#[classifier]
pub fn uplink_ingress_l3(ctx: TcContext) -> i32 {
    uplink::linearize(&ctx);
    on_tc_l3(&ctx, Family::Ipv4, |frame, len| {
        uplink::ingress(frame, len, || {
            uplink6::hand_over(&ctx, &UPLINK_TC_PROGRAMS, UPLINK_L3_IPV6_SLOT)
        })
    })
}

/// The IPv6 frames of `uplink_ingress`, reached from it by tail call (uplink6.rs): the
/// same logic for IPv6 (ipv6.rs), with a stack of its own. Counted as `uplink_ingress`.
#[xdp]
pub fn uplink_ingress6(ctx: XdpContext) -> u32 {
    on_xdp(&ctx, Family::Ipv6, |frame, len| {
        ipv6::uplink_ingress(frame, len, || {
            uplink6::hand_over(&ctx, &UPLINK6_XDP_PROGRAMS, UPLINK6_MASQUERADE_SLOT)
        })
    })
}

/// The IPv6 frames of `uplink_ingress_tc` (already pulled into the linear area there).
#[classifier]
pub fn uplink_ingress6_tc(ctx: TcContext) -> i32 {
    on_tc(&ctx, Family::Ipv6, |frame, len| {
        ipv6::uplink_ingress(frame, len, || {
            uplink6::hand_over(&ctx, &UPLINK6_TC_PROGRAMS, UPLINK6_MASQUERADE_SLOT)
        })
    })
}

/// The IPv6 frames of `uplink_ingress_l3`.
#[classifier]
pub fn uplink_ingress6_l3(ctx: TcContext) -> i32 {
    on_tc_l3(&ctx, Family::Ipv6, |frame, len| {
        ipv6::uplink_ingress(frame, len, || {
            uplink6::hand_over(&ctx, &UPLINK6_TC_PROGRAMS, UPLINK6_L3_MASQUERADE_SLOT)
        })
    })
}

/// The replies of masqueraded IPv6 flows (TCP, UDP, ICMPv6 echoes) and the ICMPv6 errors
/// about them, reached by tail call from `uplink_ingress6` (masquerade6.rs), with a stack
/// of their own. Counted as `uplink_ingress`.
#[xdp]
pub fn uplink_masquerade6(ctx: XdpContext) -> u32 {
    on_xdp(&ctx, Family::Ipv6, |frame, len| {
        masquerade6::uplink_masquerade(frame, len)
    })
}

/// The same from `uplink_ingress6_tc`.
#[classifier]
pub fn uplink_masquerade6_tc(ctx: TcContext) -> i32 {
    on_tc(&ctx, Family::Ipv6, |frame, len| {
        masquerade6::uplink_masquerade(frame, len)
    })
}

/// The same from `uplink_ingress6_l3`.
#[classifier]
pub fn uplink_masquerade6_l3(ctx: TcContext) -> i32 {
    on_tc_l3(&ctx, Family::Ipv6, |frame, len| {
        masquerade6::uplink_masquerade(frame, len)
    })
}

/// The family of a program's frames: where its drop events find their addresses.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Family {
    /// Any frame (the IPv4 programs see every frame first); IPv4's addresses are reported.
    Ipv4,
    /// IPv6 frames only: the programs the IPv4 ones hand their IPv6 frames to.
    Ipv6,
}

/// Reports a program's verdict: a drop as an event of its family.
#[inline(always)]
fn report<F: Frame + ?Sized>(frame: &F, len: usize, stat: Stat, dropped: bool, family: Family) {
    match family {
        Family::Ipv4 => events::on_verdict(frame, len, stat, dropped),
        Family::Ipv6 => events::on_verdict6(frame, stat, dropped),
    }
}

/// What an XDP uplink program does around its logic: counts the verdict, reports it.
#[inline(always)]
fn on_xdp(
    ctx: &XdpContext,
    family: Family,
    logic: impl FnOnce(&XdpFrame, usize) -> (Action, Stat),
) -> u32 {
    let len = ctx.data_end() - ctx.data();
    let frame = XdpFrame(ctx);
    let (action, stat) = logic(&frame, len);
    stats::count(stat, len);
    report(&frame, len, stat, action == Action::Drop, family);
    XdpFrame::verdict(action)
}

/// The same for a TC uplink program.
#[inline(always)]
fn on_tc(
    ctx: &TcContext,
    family: Family,
    logic: impl FnOnce(&TcFrame, usize) -> (Action, Stat),
) -> i32 {
    let len = ctx.len() as usize;
    let frame = TcFrame(ctx);
    let (action, stat) = logic(&frame, len);
    stats::count(stat, len);
    report(&frame, len, stat, action == Action::Drop, family);
    TcFrame::verdict(action)
}

/// The same for a layer-3 uplink program: the logic sees the frame as Ethernet, header
/// included, and a frame it redirects gets that header for real.
#[inline(always)]
fn on_tc_l3(
    ctx: &TcContext,
    family: Family,
    logic: impl FnOnce(&TcL3Frame, usize) -> (Action, Stat),
) -> i32 {
    let len = ctx.len() as usize;
    let frame = TcL3Frame::new(ctx);
    let (mut action, mut stat) = logic(&frame, len + ETH_HLEN);
    if matches!(action, Action::Redirect(_)) && frame.push_ethernet().is_none() {
        (action, stat) = (Action::Drop, Stat::UplinkDropEthernetHeaderNotPushed);
    }
    stats::count(stat, len);
    report(&frame, len + ETH_HLEN, stat, action == Action::Drop, family);
    TcFrame::verdict(action)
}

/// TC ingress on the node-side end of each container's veth (what the container sends):
/// translates replies of published-port flows back and sends them out of the uplink.
#[classifier]
pub fn container_ingress(ctx: TcContext) -> i32 {
    let len = ctx.len() as usize;
    let (verdict, stat) = container::ingress(&ctx);
    stats::count(stat, len);
    events::on_verdict(&frame::TcFrame(&ctx), len, stat, verdict == TC_ACT_SHOT);
    verdict
}

/// The IPv6 frames of `container_ingress`, reached from it by tail call (container6.rs):
/// the same logic for IPv6, with a stack of its own. Counted as `container_ingress`.
#[classifier]
pub fn container_ingress6(ctx: TcContext) -> i32 {
    let len = ctx.len() as usize;
    let (verdict, stat) = container6::ingress(&ctx);
    stats::count(stat, len);
    events::on_verdict6(&frame::TcFrame(&ctx), stat, verdict == TC_ACT_SHOT);
    verdict
}

/// The IPv6 packets `container_ingress6` masquerades, reached from it by tail call
/// (masquerade6.rs), with a stack of its own. Counted as `container_ingress`.
#[classifier]
pub fn container_masquerade6(ctx: TcContext) -> i32 {
    let len = ctx.len() as usize;
    let (verdict, stat) = masquerade6::container_masquerade(&ctx);
    stats::count(stat, len);
    events::on_verdict6(&frame::TcFrame(&ctx), stat, verdict == TC_ACT_SHOT);
    verdict
}

/// A container's ICMPv6 errors about published-port flows and the fragments of its IPv6
/// replies, reached from `container_ingress6` by tail call (ipv6.rs), with a stack of its
/// own. Counted as `container_ingress`.
#[classifier]
pub fn container_reply6(ctx: TcContext) -> i32 {
    let len = ctx.len() as usize;
    let (verdict, stat) = ipv6::container_reply(&ctx);
    stats::count(stat, len);
    events::on_verdict6(&frame::TcFrame(&ctx), stat, verdict == TC_ACT_SHOT);
    verdict
}

/// The IPv6 packets between two containers of an `icc=false` network, reached from
/// `container_ingress6` by tail call (link6.rs), with a stack of its own: the `--link`
/// allow-list and its tracked flows. Counted as `container_ingress`.
#[classifier]
pub fn container_link6(ctx: TcContext) -> i32 {
    let len = ctx.len() as usize;
    let (verdict, stat) = link6::container_link(&ctx);
    stats::count(stat, len);
    events::on_verdict6(&frame::TcFrame(&ctx), stat, verdict == TC_ACT_SHOT);
    verdict
}

/// Node-local TCP connects and connected UDP sockets to a published address.
#[cgroup_sock_addr(connect4)]
pub fn sock_connect4(ctx: SockAddrContext) -> i32 {
    sock::to_backend(&ctx)
}

/// Node-local UDP datagrams sent to a published address.
#[cgroup_sock_addr(sendmsg4)]
pub fn sock_sendmsg4(ctx: SockAddrContext) -> i32 {
    sock::to_backend(&ctx)
}

/// Replies to node-local UDP sockets: from the published address.
#[cgroup_sock_addr(recvmsg4)]
pub fn sock_recvmsg4(ctx: SockAddrContext) -> i32 {
    sock::to_frontend(&ctx)
}

/// `getpeername` on node-local sockets: the published address.
#[cgroup_sock_addr(getpeername4)]
pub fn sock_getpeername4(ctx: SockAddrContext) -> i32 {
    sock::to_frontend(&ctx)
}

/// The same for IPv6 sockets: `[::1]` and the node's IPv6 addresses, and a dual-stack
/// socket's IPv4-mapped addresses as IPv4's.
#[cgroup_sock_addr(connect6)]
pub fn sock_connect6(ctx: SockAddrContext) -> i32 {
    sock::to_backend6(&ctx)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn sock_sendmsg6(ctx: SockAddrContext) -> i32 {
    sock::to_backend6(&ctx)
}

#[cgroup_sock_addr(recvmsg6)]
pub fn sock_recvmsg6(ctx: SockAddrContext) -> i32 {
    sock::to_frontend6(&ctx)
}

#[cgroup_sock_addr(getpeername6)]
pub fn sock_getpeername6(ctx: SockAddrContext) -> i32 {
    sock::to_frontend6(&ctx)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any reachable panic path, so this is never called.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
