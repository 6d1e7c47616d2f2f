//! ICMP errors about translated flows (destination unreachable, fragmentation needed, time
//! exceeded, parameter problem), both ways, as netfilter's NAT translates them:
//!
//! - on the uplink, an error sent to the node's address about a packet that a container
//!   sent through a published port or masquerade goes back to that container, its quote
//!   translated back too, so that its socket sees "connection refused" and its TCP learns
//!   the path MTU from a router's "fragmentation needed";
//! - at the container's veth, an error that a container sends about a packet it received
//!   through a published port or masquerade leaves from the address the remote end used,
//!   with the quote showing that address, so that the remote socket recognises it.
//!
//! An error that matches no flow is left alone.

use aya_ebpf::{bindings::TC_ACT_SHOT, programs::TcContext};
use dataplane_common::{
    CT_ORIGINAL, CT_REPLY, CtKey, FlowKey, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, csum,
    parse::{
        ETH_HLEN, IPV4_CHECK_OFF, IPV4_DST_OFF, IPV4_SRC_OFF, IPV4_TTL_OFF, IcmpError, Ipv4, L4,
        Quoted, icmp_error,
    },
    stats::Stat,
};

use crate::{
    fib,
    frame::{Action, L4Change, Packet, TcFrame},
    maps::{CONNTRACK, NAT_FLOWS},
    nat, rewrite,
};

/// The headers an ICMP error needs in the linear part of the skb: Ethernet, IPv4 and ICMP,
/// then the quoted IPv4 header (options included) and 8 bytes of its payload.
const ERROR_HEADERS: usize = ETH_HLEN + 60 + 8 + 60 + 8;

/// The container end of a flow that a quote belongs to: its address and port (the echo
/// identifier for pings) and how to hand it a frame. IPv6's (icmp6.rs) has 16-byte
/// addresses.
pub(crate) struct Origin<Addr = u32> {
    pub ip_be: Addr,
    pub port_be: u16,
    pub ifindex: u32,
    pub container_mac: [u8; 6],
    pub host_veth_mac: [u8; 6],
}

/// The tracking key of a packet that answers the quoted one: its addresses and ports
/// swapped.
#[inline(always)]
fn answer_key(q: &Quoted) -> CtKey {
    CtKey {
        src_ip_be: q.dst_be,
        dst_ip_be: q.src_be,
        sport_be: q.dport_be,
        dport_be: q.sport_be,
        proto: q.protocol,
        _pad: [0; 3],
    }
}

/// A masqueraded flow whose packet (node address and port → remote) is quoted.
#[inline(always)]
fn masqueraded(q: &Quoted) -> Option<Origin> {
    // The flow's replies come from the quoted destination.
    // SAFETY: plain data copied out at once.
    let entry = unsafe { CONNTRACK.get(answer_key(q)) }.copied()?;
    // A link's entries translate nothing: their address is the quoted destination's own.
    if entry.direction != CT_REPLY || entry.nat_ip_be == q.dst_be {
        return None;
    }
    Some(Origin {
        ip_be: entry.nat_ip_be,
        port_be: entry.nat_port_be,
        ifindex: entry.host_veth_ifindex,
        container_mac: entry.container_mac,
        host_veth_mac: entry.host_veth_mac,
    })
}

/// A published-port flow whose reply (published address and port → client) is quoted.
#[inline(always)]
fn published(q: &Quoted) -> Option<Origin> {
    if q.protocol != IPPROTO_TCP && q.protocol != IPPROTO_UDP {
        return None;
    }
    let target = nat::published_target(q.src_be, q.sport_be, q.protocol, false)?;
    let flow = FlowKey {
        container_ip_be: target.container_ip_be,
        remote_ip_be: q.dst_be,
        container_port_be: target.container_port_be,
        remote_port_be: q.dport_be,
        proto: q.protocol,
        _pad: [0; 3],
    };
    // SAFETY: plain data copied out at once.
    let nat = unsafe { NAT_FLOWS.get(&flow) }.copied()?;
    // The same container port may be published twice: the flow must be this port's.
    if nat.frontend_ip_be != q.src_be || nat.frontend_port_be != q.sport_be {
        return None;
    }
    Some(Origin {
        ip_be: target.container_ip_be,
        port_be: target.container_port_be,
        ifindex: target.host_veth_ifindex,
        container_mac: target.container_mac,
        host_veth_mac: target.host_veth_mac,
    })
}

/// On the uplink: an ICMP error about a packet a container sent goes back to it. `None`:
/// not an ICMP error about one of our flows.
#[inline(always)]
pub fn uplink_error<P: Packet>(packet: &P, ip: &Ipv4) -> Option<(Action, Stat)> {
    let error = icmp_error(packet, ip)?;
    let origin = masqueraded(&error.quoted).or_else(|| published(&error.quoted))?;
    // We forward the error, so we act as a router: an expiring TTL ends here.
    if ip.ttl <= 1 {
        return Some((Action::Drop, Stat::UplinkDropTtlExpired));
    }
    if rewrite_to_origin(packet, ip, &error, &origin).is_none() {
        return Some((Action::Drop, Stat::UplinkDropMalformed));
    }
    Some((
        Action::Redirect(origin.ifindex),
        Stat::UplinkRedirectIcmpError,
    ))
}

/// The quoted transport checksum of `protocol` after the quoted address and port changed,
/// their changes given as `csum::diff4`/`diff2` sums (`address`: one word for IPv4, four
/// for IPv6): UDP's and ICMPv6's cover both (pseudo-header), an ICMP echo's only the
/// identifier. IPv6's errors (icmp6.rs) go through it too.
#[inline(always)]
pub(crate) fn quoted_l4_check(protocol: u8, old: u16, address: u32, port: u32) -> u16 {
    let covers_address = protocol == IPPROTO_UDP || protocol == IPPROTO_ICMPV6;
    let check = csum::apply(old, if covers_address { address + port } else { port });
    // UDP sends a computed zero as 0xffff: zero means "no checksum".
    if protocol == IPPROTO_UDP && check == 0 {
        return 0xffff;
    }
    check
}

/// Outer destination, quoted source (address, port, checksums) back to the container;
/// TTL down; every checksum follows, the ICMP one over the quote included.
#[inline(always)]
fn rewrite_to_origin<P: Packet>(
    packet: &P,
    ip: &Ipv4,
    error: &IcmpError,
    origin: &Origin,
) -> Option<()> {
    let q = &error.quoted;
    let (old_ttl, new_ttl) = rewrite::ttl_words(ip);
    let check = ETH_HLEN + IPV4_CHECK_OFF;
    packet.replace_l3(check, u32::from(old_ttl), u32::from(new_ttl), 2)?;
    packet.replace_l3(check, ip.dst_be, origin.ip_be, 4)?;
    packet.store(ETH_HLEN + IPV4_TTL_OFF, new_ttl)?;
    packet.store(ETH_HLEN + IPV4_DST_OFF, origin.ip_be)?;

    // Each change inside the quote is also a change of the data the ICMP checksum covers
    // (no pseudo-header).
    let icmp = |old: u32, new: u32, size: u8| {
        let change = L4Change {
            size,
            pseudo: false,
            udp: false,
        };
        packet.replace_l4(error.check_offset, old, new, change)
    };
    let ip_check = csum::replace4(q.ip_check, q.src_be, origin.ip_be);
    icmp(q.src_be, origin.ip_be, 4)?;
    icmp(u32::from(q.ip_check), u32::from(ip_check), 2)?;
    icmp(u32::from(q.sport_be), u32::from(origin.port_be), 2)?;
    if let Some((at, old)) = q.l4_check.get() {
        let address = csum::diff4(q.src_be, origin.ip_be);
        let port = csum::diff2(q.sport_be, origin.port_be);
        let new = quoted_l4_check(q.protocol, old, address, port);
        icmp(u32::from(old), u32::from(new), 2)?;
        packet.store(at, new)?;
    }
    packet.store(q.offset + IPV4_SRC_OFF, origin.ip_be)?;
    packet.store(q.offset + IPV4_CHECK_OFF, ip_check)?;
    packet.store(q.port_offset(true), origin.port_be)?;
    packet.store(0, origin.container_mac)?;
    packet.store(6, origin.host_veth_mac)
}

/// What the remote end of a flow knows the container as: the published address and port,
/// or the masquerade address and port. IPv6's (icmp6.rs) has a 16-byte address.
pub(crate) struct Seen<Addr = u32> {
    pub ip_be: Addr,
    pub port_be: u16,
}

/// The address a remote end used for the container whose received packet is quoted
/// (remote → container): a published port's or masquerade's.
#[inline(always)]
fn seen_as(q: &Quoted) -> Option<Seen> {
    let flow = FlowKey {
        container_ip_be: q.dst_be,
        remote_ip_be: q.src_be,
        container_port_be: q.dport_be,
        remote_port_be: q.sport_be,
        proto: q.protocol,
        _pad: [0; 3],
    };
    // SAFETY: plain data copied out at once.
    if let Some(nat) = unsafe { NAT_FLOWS.get(&flow) }.copied() {
        // A client that was translated too (hairpin) is another container: not this way.
        if nat.client_ip_be != q.src_be {
            return None;
        }
        return Some(Seen {
            ip_be: nat.frontend_ip_be,
            port_be: nat.frontend_port_be,
        });
    }
    // The masqueraded flow's packets out, which the quoted reply answers.
    // SAFETY: plain data copied out at once.
    let entry = unsafe { CONNTRACK.get(answer_key(q)) }.copied()?;
    // A link's entries translate nothing.
    if entry.direction != CT_ORIGINAL || entry.nat_ip_be == q.dst_be {
        return None;
    }
    Some(Seen {
        ip_be: entry.nat_ip_be,
        port_be: entry.nat_port_be,
    })
}

/// At a container's veth: an ICMP error the container sends about a packet of a translated
/// flow leaves as the remote end knows the container. `None`: not such an error.
#[inline(always)]
pub fn container_error(ctx: &TcContext, ip: &Ipv4) -> Option<(i32, Stat)> {
    let len = ctx.len() as usize;
    let want = if len < ERROR_HEADERS {
        len
    } else {
        ERROR_HEADERS
    };
    if ctx.data_end() - ctx.data() < want {
        // The quote may sit partly outside the linear area; a failed pull leaves it there
        // and the parser finds no error.
        let _ = ctx.pull_data(want as u32);
    }
    let error = icmp_error(&TcFrame(ctx), ip)?;
    let seen = seen_as(&error.quoted)?;
    if ip.ttl <= 1 {
        return Some((TC_ACT_SHOT, Stat::ContainerDropTtlExpired));
    }
    if rewrite_to_seen(ctx, ip, &error, &seen).is_err() {
        return Some((TC_ACT_SHOT, Stat::ContainerDropRewriteFailed));
    }
    // No ports to hash on: the error takes the path of the flow's remote end by address.
    let l4 = L4 {
        sport_be: 0,
        dport_be: 0,
        check_offset: error.check_offset,
        check: 0,
        tcp_flags: 0,
    };
    let stats = (
        Stat::ContainerRedirectIcmpError,
        Stat::ContainerRedirectIcmpErrorNeigh,
    );
    Some(fib::forward(ctx, ip, &l4, seen.ip_be, ip.dst_be, stats))
}

/// Outer source, quoted destination (address, port, checksums) to what the remote end
/// knows; TTL down. The checksum helpers keep the skb's checksum state right.
#[inline(always)]
fn rewrite_to_seen(ctx: &TcContext, ip: &Ipv4, error: &IcmpError, seen: &Seen) -> Result<(), i64> {
    let q = &error.quoted;
    rewrite::decrement_ttl(ctx, ip)?;
    ctx.l3_csum_replace(
        ETH_HLEN + IPV4_CHECK_OFF,
        u64::from(ip.src_be),
        u64::from(seen.ip_be),
        4,
    )?;
    ctx.store(ETH_HLEN + IPV4_SRC_OFF, &seen.ip_be, 0)?;

    // Each change inside the quote is also a change of the data the ICMP checksum covers.
    let icmp =
        |old: u64, new: u64, size: u64| ctx.l4_csum_replace(error.check_offset, old, new, size);
    let ip_check = csum::replace4(q.ip_check, q.dst_be, seen.ip_be);
    icmp(u64::from(q.dst_be), u64::from(seen.ip_be), 4)?;
    icmp(u64::from(q.ip_check), u64::from(ip_check), 2)?;
    icmp(u64::from(q.dport_be), u64::from(seen.port_be), 2)?;
    if let Some((at, old)) = q.l4_check.get() {
        let address = csum::diff4(q.dst_be, seen.ip_be);
        let port = csum::diff2(q.dport_be, seen.port_be);
        let new = quoted_l4_check(q.protocol, old, address, port);
        icmp(u64::from(old), u64::from(new), 2)?;
        ctx.store(at, &new, 0)?;
    }
    ctx.store(q.offset + IPV4_DST_OFF, &seen.ip_be, 0)?;
    ctx.store(q.offset + IPV4_CHECK_OFF, &ip_check, 0)?;
    ctx.store(q.port_offset(false), &seen.port_be, 0)
}
