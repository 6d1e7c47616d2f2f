//! ICMP errors about translated flows: translated back to the container that sent the
//! packet they quote.

use aya_ebpf::{bindings::xdp_action, helpers::bpf_redirect};
use dataplane_common::{
    CT_REPLY, CtEntry, CtKey, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, csum,
    parse::{ETH_HLEN, Frame as _, IPV4_CHECK_OFF, IPV4_DST_OFF, IPV4_TTL_OFF, Ipv4, L4_SPORT_OFF},
    stats::Stat,
};

use crate::{frame::XdpFrame, maps::CONNTRACK};

const ICMP_DEST_UNREACHABLE: u8 = 3;
const ICMP_TIME_EXCEEDED: u8 = 11;

/// On the uplink: an ICMP error (unreachable, time exceeded) about a packet we masqueraded
/// goes back to its container, with the quoted packet translated too, so the container's
/// socket sees e.g. "connection refused".
#[inline(always)]
pub fn icmp_error_reply(frame: &XdpFrame, ip: &Ipv4) -> Option<(u32, Stat)> {
    if ip.protocol != IPPROTO_ICMP {
        return None;
    }
    let icmp = ip.l4_offset();
    let head: [u8; 4] = frame.load(icmp)?;
    if head[0] != ICMP_DEST_UNREACHABLE && head[0] != ICMP_TIME_EXCEEDED {
        return None;
    }
    let inner = icmp + 8;
    let inner_ip: [u8; 20] = frame.load(inner)?;
    // The quoted packet is one we sent, without IP options.
    let proto = inner_ip[9];
    if inner_ip[0] != 0x45 || (proto != IPPROTO_TCP && proto != IPPROTO_UDP) {
        return None;
    }
    let inner_src = u32::from_ne_bytes([inner_ip[12], inner_ip[13], inner_ip[14], inner_ip[15]]);
    let inner_dst = u32::from_ne_bytes([inner_ip[16], inner_ip[17], inner_ip[18], inner_ip[19]]);
    let ports: [u8; 4] = frame.load(inner + 20)?;
    let inner_sport = u16::from_ne_bytes([ports[0], ports[1]]);
    let inner_dport = u16::from_ne_bytes([ports[2], ports[3]]);
    let key = CtKey {
        src_ip_be: inner_dst,
        dst_ip_be: inner_src,
        sport_be: inner_dport,
        dport_be: inner_sport,
        proto,
        _pad: [0; 3],
    };
    // SAFETY: plain data copied out at once.
    let entry = unsafe { CONNTRACK.get(&key) }.copied()?;
    if entry.direction != CT_REPLY || entry.nat_ip_be == inner_dst {
        return None;
    }
    if ip.ttl <= 1 {
        return Some((xdp_action::XDP_DROP, Stat::UplinkDropTtlExpired));
    }
    // Checksums from what was read above: reading again at another variable offset is
    // what the verifier cannot follow.
    let quoted = Quoted {
        offset: inner,
        src_be: inner_src,
        sport_be: inner_sport,
        ip_check: u16::from_ne_bytes([inner_ip[10], inner_ip[11]]),
        icmp_check: u16::from_ne_bytes([head[2], head[3]]),
    };
    if rewrite_icmp_error(frame, ip, &quoted, &entry).is_none() {
        return Some((xdp_action::XDP_DROP, Stat::UplinkDropMalformed));
    }
    // SAFETY: plain helper call.
    let verdict = unsafe { bpf_redirect(entry.host_veth_ifindex, 0) } as u32;
    Some((verdict, Stat::UplinkRedirectMasqueradeReply))
}

/// The packet an ICMP error quotes, and the checksums that cover it.
struct Quoted {
    offset: usize,
    src_be: u32,
    sport_be: u16,
    ip_check: u16,
    icmp_check: u16,
}

#[inline(always)]
fn rewrite_icmp_error(frame: &XdpFrame, ip: &Ipv4, quoted: &Quoted, entry: &CtEntry) -> Option<()> {
    let inner = quoted.offset;
    // Outer header: destination back to the container, TTL down.
    let old_ttl = u16::from_ne_bytes([ip.ttl, ip.protocol]);
    let new_ttl = u16::from_ne_bytes([ip.ttl - 1, ip.protocol]);
    let check: u16 = frame.load(ETH_HLEN + IPV4_CHECK_OFF)?;
    let check = csum::replace2(check, old_ttl, new_ttl);
    let check = csum::replace4(check, ip.dst_be, entry.nat_ip_be);
    frame.store(ETH_HLEN + IPV4_TTL_OFF, new_ttl)?;
    frame.store(ETH_HLEN + IPV4_DST_OFF, entry.nat_ip_be)?;
    frame.store(ETH_HLEN + IPV4_CHECK_OFF, check)?;
    // Quoted header: its source back to the container's address and port. The ICMP
    // checksum covers the quote, so it follows every change.
    let new_inner_check = csum::replace4(quoted.ip_check, quoted.src_be, entry.nat_ip_be);
    let icmp_check_at = ip.l4_offset() + 2;
    let icmp_check = csum::replace4(quoted.icmp_check, quoted.src_be, entry.nat_ip_be);
    let icmp_check = csum::replace2(icmp_check, quoted.ip_check, new_inner_check);
    let icmp_check = csum::replace2(icmp_check, quoted.sport_be, entry.nat_port_be);
    frame.store(
        inner + dataplane_common::parse::IPV4_SRC_OFF,
        entry.nat_ip_be,
    )?;
    frame.store(inner + IPV4_CHECK_OFF, new_inner_check)?;
    frame.store(inner + 20 + L4_SPORT_OFF, entry.nat_port_be)?;
    frame.store(icmp_check_at, icmp_check)?;
    frame.store(0, entry.container_mac)?;
    frame.store(6, entry.host_veth_mac)?;
    Some(())
}
