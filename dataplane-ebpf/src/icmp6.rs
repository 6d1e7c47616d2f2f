//! ICMPv6 errors about translated IPv6 flows (destination unreachable, packet too big, time
//! exceeded, parameter problem), as icmp.rs does for IPv4 and as ip6tables' NAT does:
//!
//! - on the uplink, an error about a packet that a container sent through an IPv6
//!   published port or masquerade goes back to that container, its quote translated back
//!   too, so that its socket sees "connection refused" and its TCP learns the path MTU
//!   from a router's "packet too big" (IPv6 routers never fragment: without this, a
//!   container's full-size segments to a client behind a smaller MTU are lost for good);
//! - at the container's veth (in `container_reply6`), an error that a container sends about
//!   a packet it received through a published port (its UDP port closed, its own smaller
//!   MTU) leaves from the published address, the quote showing the published address and
//!   port the client sent to, so that the client's socket recognises it.
//!
//! An error that matches no flow is left alone. The quote is walked as a packet is
//! (`parse::ipv6::icmp6_error`: extension headers included). ICMPv6's checksum covers a
//! pseudo-header, so a change of the outer address updates it as well as every change in
//! the quote does; IPv6 has no header checksum to update.
//!
//! The uplink programs have little stack left: addresses are used where they lie (the
//! packet, the map values), not copied into structures of their own.

use aya_ebpf::{bindings::TC_ACT_SHOT, programs::TcContext};
use dataplane_common::{
    FlowKey6, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, NatFlow6, PortTarget6, csum,
    parse::{
        ETH_HLEN, Frame, IcmpError, Quoted,
        ipv6::{
            ICMPV6_ECHO_REQUEST, IPV6_DST_OFF, IPV6_HOP_LIMIT_OFF, IPV6_SRC_OFF, Ipv6, icmp6_error,
        },
    },
    stats::Stat,
};

use crate::{
    frame::{Action, L4Change, Packet, TcFrame},
    icmp::quoted_l4_check,
    ipv6::{address_diff, forward, published_target},
    maps::NAT_FLOWS6,
};

type Address = [u8; 16];

/// The published port whose flow's reply (published address and port → client) is
/// quoted: its container is the flow's.
#[inline(always)]
pub(crate) fn published(q: &Quoted<Address>) -> Option<&'static PortTarget6> {
    if q.protocol != IPPROTO_TCP && q.protocol != IPPROTO_UDP {
        return None;
    }
    let target = published_target(&q.src_be, q.sport_be, q.protocol, false)?;
    let flow = FlowKey6 {
        container_ip: target.container_ip,
        remote_ip: q.dst_be,
        container_port_be: target.container_port_be,
        remote_port_be: q.dport_be,
        proto: q.protocol,
        _pad: [0; 3],
    };
    // SAFETY: a live map value of plain data, read in place.
    let nat = unsafe { NAT_FLOWS6.get(&flow) }?;
    // The same container port may be published twice: the flow must be this port's.
    if nat.frontend_ip != q.src_be || nat.frontend_port_be != q.sport_be {
        return None;
    }
    Some(target)
}

/// On the uplink: an ICMPv6 error about a packet a container sent goes back to it, to the
/// container end `origin_of` finds for the quote: [`published`] (in the uplinks' IPv6
/// programs) or a masqueraded flow's (masquerade6.rs, in the masquerade programs they
/// hand the other errors to). `None`: not an ICMPv6 error about such a flow.
#[inline(always)]
pub fn uplink_error<P: Packet>(
    packet: &P,
    ip: &Ipv6,
    origin_of: impl FnOnce(&Quoted<Address>) -> Option<&'static PortTarget6>,
) -> Option<(Action, Stat)> {
    // Borrowed where the parser left it: moved out, it would take its size again.
    let parsed = icmp6_error(packet, ip);
    let error = parsed.as_ref()?;
    let origin = origin_of(&error.quoted)?;
    // We forward the error, so we act as a router: an expiring hop limit ends here.
    if ip.hop_limit <= 1 {
        return Some((Action::Drop, Stat::UplinkDropTtlExpired));
    }
    if rewrite_to_origin(packet, ip, error, origin).is_none() {
        return Some((Action::Drop, Stat::UplinkDropMalformed));
    }
    Some((
        Action::Redirect(origin.host_veth_ifindex),
        Stat::UplinkRedirectIcmpError,
    ))
}

/// Outer destination, quoted source (address, port, quoted checksum) back to the
/// container ([`rewrite_end`]), and the container's MACs.
#[inline(always)]
fn rewrite_to_origin<P: Packet>(
    packet: &P,
    ip: &Ipv6,
    error: &IcmpError<Address>,
    origin: &PortTarget6,
) -> Option<()> {
    let to = (&origin.container_ip, origin.container_port_be);
    rewrite_end(packet, ip, error, to, ErrorGoes::ToContainer)?;
    packet.store(0, origin.container_mac)?;
    packet.store(6, origin.host_veth_mac)
}

/// Which way a translated ICMPv6 error goes, and so which end of the flow it rewrites.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ErrorGoes {
    /// From the outside to a container: the outer destination and the quote's source.
    ToContainer,
    /// From a container to a client: the outer source and the quote's destination.
    ToClient,
}

/// Rewrites one end of an error and of its quote to `to` (address, port): the outer
/// address and the quoted address, port and quoted checksum; hop limit down. The ICMPv6
/// checksum follows every change, the outer address through its pseudo-header; the
/// changes are summed up and applied in two steps (one for the pseudo-header, one for the
/// quote), not one per word (the kernel's checksum helpers keep the skb's checksum state
/// right).
#[inline(always)]
fn rewrite_end<P: Packet>(
    packet: &P,
    ip: &Ipv6,
    error: &IcmpError<Address>,
    (to_ip, to_port_be): (&[u8; 16], u16),
    goes: ErrorGoes,
) -> Option<()> {
    let q = &error.quoted;
    let inbound = goes == ErrorGoes::ToContainer;
    let (outer_ip, outer_off, quoted_ip, quoted_off, quoted_port) = match inbound {
        true => (&ip.dst, IPV6_DST_OFF, &q.src_be, IPV6_SRC_OFF, q.sport_be),
        false => (&ip.src, IPV6_SRC_OFF, &q.dst_be, IPV6_DST_OFF, q.dport_be),
    };
    let outer = address_diff(outer_ip, to_ip);
    let address = address_diff(quoted_ip, to_ip);
    let port = csum::diff2(quoted_port, to_port_be);
    let mut quote = address + port;
    if let Some((at, old)) = q.l4_check.get() {
        let new = quoted_l4_check(q.protocol, old, address, port);
        quote += csum::diff2(old, new);
        packet.store(at, new)?;
    }
    let sum = |pseudo| L4Change {
        size: 0,
        pseudo,
        udp: false,
    };
    packet.replace_l4(error.check_offset, 0, outer, sum(true))?;
    packet.replace_l4(error.check_offset, 0, quote, sum(false))?;
    packet.store(ETH_HLEN + IPV6_HOP_LIMIT_OFF, ip.hop_limit - 1)?;
    packet.store(ETH_HLEN + outer_off, *to_ip)?;
    packet.store(q.offset + quoted_off, *to_ip)?;
    packet.store(q.port_offset(inbound), to_port_be)
}

/// Whether a container's packet (`container_ingress6` parsed it as neither TCP nor UDP) may
/// be an ICMPv6 error, for `container_reply6` to look at: an ICMPv6 message that is no
/// fragment, of an error type (below 128: RFC 4443), or whose type lies beyond the linear
/// area, which `container_reply6` pulls in.
#[inline(always)]
pub fn may_be_error<F: Frame + ?Sized>(frame: &F, ip: &Ipv6) -> bool {
    if ip.protocol != IPPROTO_ICMPV6 || ip.is_fragment() {
        return false;
    }
    frame
        .load::<u8>(ip.l4_offset())
        .is_none_or(|icmp_type| icmp_type < ICMPV6_ECHO_REQUEST)
}

/// The published-port flow whose packet (client → container) a container's error quotes.
#[inline(always)]
fn received(q: &Quoted<Address>) -> Option<&'static NatFlow6> {
    if q.protocol != IPPROTO_TCP && q.protocol != IPPROTO_UDP {
        return None;
    }
    let flow = FlowKey6 {
        container_ip: q.dst_be,
        remote_ip: q.src_be,
        container_port_be: q.dport_be,
        remote_port_be: q.sport_be,
        proto: q.protocol,
        _pad: [0; 3],
    };
    // SAFETY: a live map value of plain data, read in place.
    unsafe { NAT_FLOWS6.get(&flow) }
}

/// At a container's veth: an ICMPv6 error the container sends about a packet of a
/// published-port flow leaves from the published address, routed by the FIB. `None`: not
/// such an error.
#[inline(always)]
pub fn container_error(ctx: &TcContext, ip: &Ipv6) -> Option<(i32, Stat)> {
    let frame = TcFrame(ctx);
    let parsed = icmp6_error(&frame, ip);
    let error = parsed.as_ref()?;
    let nat = received(&error.quoted)?;
    if ip.hop_limit <= 1 {
        return Some((TC_ACT_SHOT, Stat::ContainerDropTtlExpired));
    }
    if rewrite_to_published(&frame, ip, error, nat).is_none() {
        return Some((TC_ACT_SHOT, Stat::ContainerDropRewriteFailed));
    }
    let stats = (
        Stat::ContainerRedirectIcmpError,
        Stat::ContainerRedirectIcmpErrorNeigh,
    );
    Some(forward(
        ctx,
        &nat.frontend_ip,
        &ip.dst,
        IPPROTO_ICMPV6,
        stats,
    ))
}

/// Outer source, quoted destination (address, port, quoted checksum) to the published
/// ones the client used ([`rewrite_end`]).
#[inline(always)]
fn rewrite_to_published<P: Packet>(
    packet: &P,
    ip: &Ipv6,
    error: &IcmpError<Address>,
    nat: &NatFlow6,
) -> Option<()> {
    let to = (&nat.frontend_ip, nat.frontend_port_be);
    rewrite_end(packet, ip, error, to, ErrorGoes::ToClient)
}
