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
//    what both do with an IPv6 frame; container6: the container side's IPv6 program, which
//    `container_ingress` tail-calls.
mod conntrack;
mod container;
mod container6;
mod events;
mod fib;
mod flowtable;
mod frag;
mod frame;
mod icmp;
mod ipv6;
mod maps;
mod nat;
mod policy;
mod rewrite;
mod sock;
mod stats;
mod uplink;

use aya_ebpf::{
    bindings::TC_ACT_SHOT,
    macros::{cgroup_sock_addr, classifier, xdp},
    programs::{SockAddrContext, TcContext, XdpContext},
};
use dataplane_common::{parse::ETH_HLEN, stats::Stat};
use frame::{Action, TcFrame, TcL3Frame, XdpFrame};

/// XDP on the node's uplinks: translates connections to published ports and hands them
/// straight to the container's veth.
#[xdp]
pub fn uplink_ingress(ctx: XdpContext) -> u32 {
    let len = ctx.data_end() - ctx.data();
    let frame = XdpFrame(&ctx);
    let (action, stat) = uplink::ingress(&frame, len);
    stats::count(stat, len);
    events::on_verdict(&frame, len, stat, action == Action::Drop);
    XdpFrame::verdict(action)
}

/// The same on uplinks where XDP is not safe, at TC ingress (TCX): frames from a veth's
/// peer (a node that is itself a container) carry partial checksums, which only the skb
/// knows of. Counted as `uplink_ingress` too.
#[classifier]
pub fn uplink_ingress_tc(ctx: TcContext) -> i32 {
    let len = ctx.len() as usize;
    uplink::linearize(&ctx);
    let frame = TcFrame(&ctx);
    let (action, stat) = uplink::ingress(&frame, len);
    stats::count(stat, len);
    events::on_verdict(&frame, len, stat, action == Action::Drop);
    TcFrame::verdict(action)
}

/// The same on layer-3 uplinks (ipip, GRE, WireGuard, tun), at TC ingress: their frames
/// start at the IP header, which XDP programs of Ethernet frames cannot read. A packet for a
/// container gets an Ethernet header on its way to the container's veth. Counted as
/// `uplink_ingress` too.
#[classifier]
pub fn uplink_ingress_l3(ctx: TcContext) -> i32 {
    let len = ctx.len() as usize;
    uplink::linearize(&ctx);
    let frame = TcL3Frame::new(&ctx);
    // The logic sees the frame as Ethernet, header included.
    let (mut action, mut stat) = uplink::ingress(&frame, len + ETH_HLEN);
    if matches!(action, Action::Redirect(_)) && frame.push_ethernet().is_none() {
        (action, stat) = (Action::Drop, Stat::UplinkDropEthernetHeaderNotPushed);
    }
    stats::count(stat, len);
    events::on_verdict(&frame, len + ETH_HLEN, stat, action == Action::Drop);
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
    events::on_verdict(&frame::TcFrame(&ctx), len, stat, verdict == TC_ACT_SHOT);
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
