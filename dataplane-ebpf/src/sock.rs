//! Node-local access to published ports without a userland proxy: cgroup socket-address
//! hooks translate at the socket. `connect4`/`sendmsg4` send to the container instead of
//! 127.0.0.1 or a node address; `recvmsg4`/`getpeername4` show the address the application
//! used, so UDP replies come from where the request went.

use aya_ebpf::{
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    programs::SockAddrContext,
};
use dataplane_common::{SockNatKey, SockNatValue, stats::Stat};

use crate::{
    maps::{NODE_CONFIG, SOCK_NAT},
    nat::published_target,
    stats::count,
};

/// What the hooks return to let the syscall go on.
pub const ALLOW: i32 = 1;

/// Only sockets of the namespace the agent manages are translated; the cgroup may hold
/// processes of other namespaces.
#[inline(always)]
fn in_managed_netns(ctx: &SockAddrContext) -> bool {
    // SAFETY: plain helper call on our context.
    let cookie = unsafe { bpf_get_netns_cookie(ctx.sock_addr.cast()) };
    NODE_CONFIG
        .get(0)
        .is_some_and(|c| c.netns_cookie != 0 && c.netns_cookie == cookie)
}

/// `connect4` and `sendmsg4`: a published address becomes the container's.
#[inline(always)]
pub fn to_backend(ctx: &SockAddrContext) -> i32 {
    if !in_managed_netns(ctx) {
        return ALLOW;
    }
    let sa = ctx.sock_addr;
    // SAFETY: the context fields the verifier lets these hooks read.
    let (ip_be, port_be, proto) =
        unsafe { ((*sa).user_ip4, (*sa).user_port as u16, (*sa).protocol as u8) };
    let Some(target) = published_target(ip_be, port_be, proto, true) else {
        return ALLOW;
    };
    // SAFETY: plain helper call on our context.
    let cookie = unsafe { bpf_get_socket_cookie(sa.cast()) };
    let key = SockNatKey {
        socket_cookie: cookie,
        backend_ip_be: target.container_ip_be,
        backend_port_be: target.container_port_be,
        _pad: 0,
    };
    let value = SockNatValue {
        frontend_ip_be: ip_be,
        frontend_port_be: port_be,
        _pad: 0,
    };
    if SOCK_NAT.insert(&key, &value, 0).is_err() {
        // Without the record a reply could not be translated back: leave the call alone.
        return ALLOW;
    }
    // SAFETY: these hooks may write the destination.
    unsafe {
        (*sa).user_ip4 = target.container_ip_be;
        (*sa).user_port = u32::from(target.container_port_be);
    }
    count(Stat::SocketTranslated, 0);
    ALLOW
}

/// `recvmsg4` and `getpeername4`: the container's address shows as the published one the
/// socket used.
#[inline(always)]
pub fn to_frontend(ctx: &SockAddrContext) -> i32 {
    if !in_managed_netns(ctx) {
        return ALLOW;
    }
    let sa = ctx.sock_addr;
    // SAFETY: plain helper call and context reads.
    let key = unsafe {
        SockNatKey {
            socket_cookie: bpf_get_socket_cookie(sa.cast()),
            backend_ip_be: (*sa).user_ip4,
            backend_port_be: (*sa).user_port as u16,
            _pad: 0,
        }
    };
    // SAFETY: plain data copied out at once.
    if let Some(front) = unsafe { SOCK_NAT.get(&key) }.copied() {
        // SAFETY: these hooks may write the address.
        unsafe {
            (*sa).user_ip4 = front.frontend_ip_be;
            (*sa).user_port = u32::from(front.frontend_port_be);
        }
    }
    ALLOW
}
