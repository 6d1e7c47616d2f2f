//! Packet rewrites shared by destination NAT (published ports, nat.rs) and source NAT
//! (masquerade, conntrack.rs): addresses, ports, TTL and MACs, each with its checksums.
//! The lowest layer of the flow code: the flow modules use it, it uses none of them.
//!
//! At a container's veth the TC checksum helpers are used, since packets a container sends
//! often carry only a partial L4 checksum (offload) that the helpers know how to adjust. On
//! the uplink the rewrite goes through [`Packet`], which uses the same helpers at TC and
//! updates the checksums incrementally in place at XDP (no helper there).

use aya_ebpf::{bindings::BPF_F_PSEUDO_HDR, programs::TcContext};
use dataplane_common::{
    IPPROTO_ICMP, IPPROTO_UDP, csum,
    parse::{
        ETH_HLEN, ICMP_ID_OFF, IPV4_CHECK_OFF, IPV4_DST_OFF, IPV4_TTL_OFF, Ipv4, L4, L4_DPORT_OFF,
    },
};

use crate::frame::{L4Change, Packet};

/// The TTL/protocol word of the IPv4 header before and after the TTL is decremented, for
/// the checksum.
#[inline(always)]
pub fn ttl_words(ip: &Ipv4) -> (u16, u16) {
    let old = u16::from_ne_bytes([ip.ttl, ip.protocol]);
    let new = u16::from_ne_bytes([ip.ttl - 1, ip.protocol]);
    (old, new)
}

/// Whether the packet's L4 checksum is in use (a UDP checksum of zero means "none").
#[inline(always)]
pub fn has_l4_checksum(ip: &Ipv4, l4: &L4) -> bool {
    !(ip.protocol == IPPROTO_UDP && l4.check == csum::UDP_NO_CHECKSUM)
}

/// Offset, inside the transport header, of the port that `port_off` names: for an ICMP
/// echo flow the identifier stands for either port.
#[inline(always)]
pub fn port_field(ip: &Ipv4, port_off: usize) -> usize {
    if ip.protocol == IPPROTO_ICMP {
        ICMP_ID_OFF
    } else {
        port_off
    }
}

#[inline(always)]
pub fn decrement_ttl(ctx: &TcContext, ip: &Ipv4) -> Result<(), i64> {
    let (old_ttl, new_ttl) = ttl_words(ip);
    ctx.l3_csum_replace(
        ETH_HLEN + IPV4_CHECK_OFF,
        u64::from(old_ttl),
        u64::from(new_ttl),
        2,
    )?;
    ctx.store(ETH_HLEN + IPV4_TTL_OFF, &new_ttl, 0)
}

/// Rewrites the IPv4 address at `field` (source or destination offset in the header) and
/// adjusts both checksums.
#[inline(always)]
pub fn rewrite_address(
    ctx: &TcContext,
    ip: &Ipv4,
    l4: &L4,
    field: usize,
    old: u32,
    new: u32,
) -> Result<(), i64> {
    ctx.l3_csum_replace(ETH_HLEN + IPV4_CHECK_OFF, u64::from(old), u64::from(new), 4)?;
    // ICMP's checksum covers no pseudo-header: an address change leaves it alone.
    if ip.protocol != IPPROTO_ICMP && has_l4_checksum(ip, l4) {
        let pseudo = u64::from(BPF_F_PSEUDO_HDR) | 4;
        ctx.l4_csum_replace(l4.check_offset, u64::from(old), u64::from(new), pseudo)?;
    }
    ctx.store(ETH_HLEN + field, &new, 0)
}

/// Rewrites the port at `field` (an offset inside the transport header; see
/// [`port_field`]) and adjusts the L4 checksum.
#[inline(always)]
pub fn rewrite_port(
    ctx: &TcContext,
    ip: &Ipv4,
    l4: &L4,
    field: usize,
    old: u16,
    new: u16,
) -> Result<(), i64> {
    if has_l4_checksum(ip, l4) {
        ctx.l4_csum_replace(l4.check_offset, u64::from(old), u64::from(new), 2)?;
    }
    ctx.store(ip.l4_offset() + field, &new, 0)
}

/// Readdresses the Ethernet header (at TC).
#[inline(always)]
pub fn set_macs(ctx: &TcContext, dst: &[u8; 6], src: &[u8; 6]) -> Result<(), i64> {
    ctx.store(0, dst, 0)?;
    ctx.store(6, src, 0)
}

/// Where the uplink's logic hands a packet: the new destination address and port, and the
/// Ethernet addresses of the hop (the container's, and the node-side veth's).
pub struct Target {
    pub ip_be: u32,
    pub port_be: u16,
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
}

/// On the uplink (XDP or TC): rewrites destination address and port (the ICMP echo
/// identifier for ICMP), decrements the TTL, fixes the checksums and readdresses the
/// Ethernet header. The caller has checked that the TTL is above 1.
#[inline(always)]
pub fn to_target<P: Packet>(packet: &P, ip: &Ipv4, l4: &L4, to: &Target) -> Option<()> {
    let (old_ttl, new_ttl) = ttl_words(ip);
    let ip_check = ETH_HLEN + IPV4_CHECK_OFF;
    packet.replace_l3(ip_check, u32::from(old_ttl), u32::from(new_ttl), 2)?;
    packet.replace_l3(ip_check, ip.dst_be, to.ip_be, 4)?;
    let udp = ip.protocol == IPPROTO_UDP;
    if ip.protocol == IPPROTO_ICMP {
        // No pseudo-header: only the identifier counts.
        let change = L4Change {
            size: 2,
            pseudo: false,
            udp: false,
        };
        packet.replace_l4(
            l4.check_offset,
            u32::from(l4.dport_be),
            u32::from(to.port_be),
            change,
        )?;
    } else if has_l4_checksum(ip, l4) {
        let address = L4Change {
            size: 4,
            pseudo: true,
            udp,
        };
        packet.replace_l4(l4.check_offset, ip.dst_be, to.ip_be, address)?;
        let port = L4Change {
            size: 2,
            pseudo: false,
            udp,
        };
        packet.replace_l4(
            l4.check_offset,
            u32::from(l4.dport_be),
            u32::from(to.port_be),
            port,
        )?;
    }
    packet.store(ETH_HLEN + IPV4_TTL_OFF, new_ttl)?;
    packet.store(ETH_HLEN + IPV4_DST_OFF, to.ip_be)?;
    let port_at = port_field(ip, L4_DPORT_OFF);
    packet.store(ip.l4_offset() + port_at, to.port_be)?;
    packet.store(0, to.dst_mac)?;
    packet.store(6, to.src_mac)
}
