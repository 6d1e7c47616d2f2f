//! ICMPv6 errors about translated IPv6 flows (destination unreachable, packet too big, time
//! exceeded, parameter problem), as icmp.rs does for IPv4 and as ip6tables' NAT does:
//!
//! - on the uplink, an error about a packet that a container sent through an IPv6
//!   published port or masquerade goes back to that container, its quote translated back
//!   too, so that its socket sees "connection refused" and its TCP learns the path MTU
//!   from a router's "packet too big" (IPv6 routers never fragment: without this, a
//!   container's full-size segments to a client behind a smaller MTU are lost for good).
//!
//! An error that matches no flow is left alone. The quote is walked as a packet is
//! (`parse::ipv6::icmp6_error`: extension headers included). ICMPv6's checksum covers a
//! pseudo-header, so a change of the outer address updates it as well as every change in
//! the quote does; IPv6 has no header checksum to update.
//!
//! The uplink programs have little stack left: addresses are used where they lie (the
//! packet, the map values), not copied into structures of their own.

use dataplane_common::{
    FlowKey6, IPPROTO_TCP, IPPROTO_UDP, PortTarget6, csum,
    parse::{
        ETH_HLEN, IcmpError, Quoted,
        ipv6::{IPV6_DST_OFF, IPV6_HOP_LIMIT_OFF, IPV6_SRC_OFF, Ipv6, icmp6_error},
    },
    stats::Stat,
};

use crate::{
    frame::{Action, L4Change, Packet},
    icmp::quoted_l4_check,
    ipv6::{address_diff, published_target},
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
/// container; hop limit down; the ICMPv6 checksum follows every change, the outer address
/// through its pseudo-header. The changes are summed up and applied in two steps (one for
/// the pseudo-header, one for the quote), not one per word.
#[inline(always)]
fn rewrite_to_origin<P: Packet>(
    packet: &P,
    ip: &Ipv6,
    error: &IcmpError<Address>,
    origin: &PortTarget6,
) -> Option<()> {
    let q = &error.quoted;
    let outer = address_diff(&ip.dst, &origin.container_ip);
    let address = address_diff(&q.src_be, &origin.container_ip);
    let new_port = origin.container_port_be;
    let port = csum::diff2(q.sport_be, new_port);
    let mut quote = address + port;
    if let Some((at, old)) = q.l4_check {
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
    packet.store(ETH_HLEN + IPV6_DST_OFF, origin.container_ip)?;
    packet.store(q.offset + IPV6_SRC_OFF, origin.container_ip)?;
    packet.store(q.port_offset(true), new_port)?;
    packet.store(0, origin.container_mac)?;
    packet.store(6, origin.host_veth_mac)
}
