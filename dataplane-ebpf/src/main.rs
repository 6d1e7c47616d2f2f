//! bpfbridge's eBPF programs. One thin entry point per attach point; the logic lives in a
//! module per concern.
#![no_std]
#![no_main]

mod fib;
mod frame;
mod maps;
mod nat;
mod policy;
mod stats;

use aya_ebpf::{
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};

/// XDP on the node's uplink: translates connections to published ports and hands them
/// straight to the container's veth.
#[xdp]
pub fn uplink_ingress(ctx: XdpContext) -> u32 {
    let len = ctx.data_end() - ctx.data();
    let (verdict, stat) = nat::uplink_ingress(&ctx, len);
    stats::count(stat, len);
    verdict
}

/// TC ingress on the node-side end of each container's veth (what the container sends):
/// translates replies of published-port flows back and sends them out of the uplink.
#[classifier]
pub fn container_ingress(ctx: TcContext) -> i32 {
    let len = ctx.len() as usize;
    let (verdict, stat) = nat::container_ingress(&ctx);
    stats::count(stat, len);
    verdict
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
