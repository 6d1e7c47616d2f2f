//! Node-local access to published ports without a userland proxy: cgroup socket-address
//! hooks translate at the socket. `connect4`/`sendmsg4` send to the container instead of
//! 127.0.0.1 or a node address; `recvmsg4`/`getpeername4` show the address the application
//! used, so UDP replies come from where the request went. The `6` hooks do the same for
//! `[::1]` and the node's IPv6 addresses (SOCK_NAT6).

use aya_ebpf::{
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    programs::SockAddrContext,
};
use dataplane_common::{SockNatKey, SockNatKey6, SockNatValue, SockNatValue6, stats::Stat};

use crate::{
    ipv6,
    maps::{NODE_CONFIG, SOCK_NAT, SOCK_NAT6},
    nat::published_target,
    stats::count,
};

/// The prefix of an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`), in its first 12 bytes.
const IPV4_MAPPED: [u8; 12] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff];

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

/// The address an IPv6 hook's context holds (`user_ip6`, read as the verifier wants: by
/// 32-bit words).
#[inline(always)]
fn user_ip6(ctx: &SockAddrContext) -> [u8; 16] {
    let mut addr = [0u8; 16];
    for i in 0..4 {
        // SAFETY: a context field these hooks may read.
        let word = unsafe { (*ctx.sock_addr).user_ip6[i] };
        addr[4 * i..4 * i + 4].copy_from_slice(&word.to_ne_bytes());
    }
    addr
}

/// Writes `addr` and `port_be` as the context's address (hooks that may write it).
#[inline(always)]
fn set_user_ip6(ctx: &SockAddrContext, addr: &[u8; 16], port_be: u16) {
    for i in 0..4 {
        let word = u32::from_ne_bytes([
            addr[4 * i],
            addr[4 * i + 1],
            addr[4 * i + 2],
            addr[4 * i + 3],
        ]);
        // SAFETY: a context field these hooks may write.
        unsafe { (*ctx.sock_addr).user_ip6[i] = word };
    }
    // SAFETY: as above.
    unsafe { (*ctx.sock_addr).user_port = u32::from(port_be) };
}

/// The container end of the published port that IPv6 `dst`:`port_be` is, for a node-local
/// socket: an IPv4-mapped address looks in IPv4's ports and gives an IPv4-mapped backend.
#[inline(always)]
fn backend6(dst: &[u8; 16], port_be: u16, proto: u8) -> Option<([u8; 16], u16)> {
    if dst[..12] == IPV4_MAPPED {
        let ip_be = u32::from_ne_bytes([dst[12], dst[13], dst[14], dst[15]]);
        let target = published_target(ip_be, port_be, proto, true)?;
        let mut mapped = *dst;
        mapped[12..].copy_from_slice(&target.container_ip_be.to_ne_bytes());
        return Some((mapped, target.container_port_be));
    }
    let target = ipv6::published_target(dst, port_be, proto, true)?;
    Some((target.container_ip, target.container_port_be))
}

/// `connect6` and `sendmsg6`: a published address becomes the container's.
#[inline(always)]
pub fn to_backend6(ctx: &SockAddrContext) -> i32 {
    if !in_managed_netns(ctx) {
        return ALLOW;
    }
    let sa = ctx.sock_addr;
    let dst = user_ip6(ctx);
    // SAFETY: the context fields the verifier lets these hooks read.
    let (port_be, proto) = unsafe { ((*sa).user_port as u16, (*sa).protocol as u8) };
    let Some((backend_ip, backend_port_be)) = backend6(&dst, port_be, proto) else {
        return ALLOW;
    };
    let key = SockNatKey6 {
        // SAFETY: plain helper call on our context.
        socket_cookie: unsafe { bpf_get_socket_cookie(sa.cast()) },
        backend_ip,
        backend_port_be,
        _pad: [0; 6],
    };
    let value = SockNatValue6 {
        frontend_ip: dst,
        frontend_port_be: port_be,
        _pad: 0,
    };
    if SOCK_NAT6.insert(&key, &value, 0).is_err() {
        // Without the record a reply could not be translated back: leave the call alone.
        return ALLOW;
    }
    set_user_ip6(ctx, &backend_ip, backend_port_be);
    count(Stat::SocketTranslated, 0);
    ALLOW
}

/// `recvmsg6` and `getpeername6`: the container's address shows as the published one the
/// socket used.
#[inline(always)]
pub fn to_frontend6(ctx: &SockAddrContext) -> i32 {
    if !in_managed_netns(ctx) {
        return ALLOW;
    }
    let key = SockNatKey6 {
        // SAFETY: plain helper call on our context.
        socket_cookie: unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) },
        backend_ip: user_ip6(ctx),
        // SAFETY: a context field these hooks may read.
        backend_port_be: unsafe { (*ctx.sock_addr).user_port } as u16,
        _pad: [0; 6],
    };
    // SAFETY: plain data copied out at once.
    if let Some(front) = unsafe { SOCK_NAT6.get(&key) }.copied() {
        set_user_ip6(ctx, &front.frontend_ip, front.frontend_port_be);
    }
    ALLOW
}
