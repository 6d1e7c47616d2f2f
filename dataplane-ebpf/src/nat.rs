//! Published ports: destination NAT on the way in (XDP), the reverse on the way out (TC).

use aya_ebpf::{
    bindings::{BPF_F_PSEUDO_HDR, TC_ACT_OK, TC_ACT_SHOT, xdp_action},
    helpers::bpf_redirect,
    programs::{TcContext, XdpContext},
};
use dataplane_common::{
    FlowKey, FlowOrigin, IPPROTO_UDP, NodeAddrKey, PortKey, PortTarget, csum,
    parse::{
        ETH_HLEN, Frame as _, IPV4_CHECK_OFF, IPV4_DST_OFF, IPV4_SRC_OFF, IPV4_TTL_OFF, Ipv4, L4,
        L4_DPORT_OFF, L4_SPORT_OFF, Malformed, Parsed, parse,
    },
    stats::Stat,
};

use crate::{
    fib,
    frame::{TcFrame, XdpFrame},
    maps::{NAT_FLOWS, NODE_ADDRS, PUBLISHED_PORTS},
};

/// Headers the TC program wants in the linear part of the skb: Ethernet, IPv4 with the
/// longest options, and a TCP header.
const MAX_HEADERS: u32 = (ETH_HLEN + 60 + 60) as u32;

/// The port mapping that a packet to `dst:port` hits: one bound to that exact address first,
/// then one bound to every node address.
#[inline(always)]
fn published_target(dst_be: u32, port_be: u16, proto: u8) -> Option<PortTarget> {
    let exact = PortKey {
        host_ip_be: dst_be,
        host_port_be: port_be,
        proto,
        _pad: 0,
    };
    // SAFETY: values are plain data copied out at once.
    if let Some(target) = unsafe { PUBLISHED_PORTS.get(&exact) } {
        return Some(*target);
    }
    // SAFETY: as above.
    unsafe { NODE_ADDRS.get(&NodeAddrKey { addr_be: dst_be }) }?;
    let any = PortKey {
        host_ip_be: 0,
        ..exact
    };
    // SAFETY: as above.
    unsafe { PUBLISHED_PORTS.get(&any) }.copied()
}

/// The TTL/protocol word of the IPv4 header with the TTL decremented, for the checksum.
#[inline(always)]
fn ttl_words(ip: &Ipv4) -> (u16, u16) {
    let old = u16::from_ne_bytes([ip.ttl, ip.protocol]);
    let new = u16::from_ne_bytes([ip.ttl - 1, ip.protocol]);
    (old, new)
}

pub fn uplink_ingress(ctx: &XdpContext, len: usize) -> (u32, Stat) {
    let frame = XdpFrame(ctx);
    let (ip, l4) = match parse(&frame, len) {
        Err(_) => return (xdp_action::XDP_DROP, Stat::UplinkDropMalformed),
        Ok(Parsed::NotIpv4) => return (xdp_action::XDP_PASS, Stat::UplinkPassNotIpv4),
        Ok(Parsed::Fragment(_)) => return (xdp_action::XDP_PASS, Stat::UplinkPassFragment),
        Ok(Parsed::OtherProtocol(_)) => {
            return (xdp_action::XDP_PASS, Stat::UplinkPassNotTcpUdp);
        }
        Ok(Parsed::Transport(ip, l4)) => (ip, l4),
    };
    let Some(target) = published_target(ip.dst_be, l4.dport_be, ip.protocol) else {
        return (xdp_action::XDP_PASS, Stat::UplinkPassNotPublished);
    };
    // We forward the packet, so we act as a router: an expiring TTL ends here.
    if ip.ttl <= 1 {
        return (xdp_action::XDP_DROP, Stat::UplinkDropTtlExpired);
    }
    if rewrite_destination(&frame, &ip, &l4, &target).is_none() {
        return (xdp_action::XDP_DROP, Stat::UplinkDropMalformed);
    }
    let flow = FlowKey {
        container_ip_be: target.container_ip_be,
        remote_ip_be: ip.src_be,
        container_port_be: target.container_port_be,
        remote_port_be: l4.sport_be,
        proto: ip.protocol,
        _pad: [0; 3],
    };
    let origin = FlowOrigin {
        host_ip_be: ip.dst_be,
        host_port_be: l4.dport_be,
        _pad: 0,
    };
    if NAT_FLOWS.insert(&flow, &origin, 0).is_err() {
        return (xdp_action::XDP_DROP, Stat::UplinkDropFlowTableFull);
    }
    // SAFETY: a plain helper call.
    let verdict = unsafe { bpf_redirect(target.host_veth_ifindex, 0) } as u32;
    (verdict, Stat::UplinkRedirectDnat)
}

/// Rewrites destination address and port to the container's, decrements the TTL, fixes both
/// checksums incrementally and readdresses the Ethernet header to the container's veth.
#[inline(always)]
fn rewrite_destination(frame: &XdpFrame, ip: &Ipv4, l4: &L4, target: &PortTarget) -> Option<()> {
    let (old_ttl, new_ttl) = ttl_words(ip);
    let check: u16 = frame.load(ETH_HLEN + IPV4_CHECK_OFF)?;
    let check = csum::replace2(check, old_ttl, new_ttl);
    let check = csum::replace4(check, ip.dst_be, target.container_ip_be);
    frame.store(ETH_HLEN + IPV4_TTL_OFF, new_ttl)?;
    frame.store(ETH_HLEN + IPV4_DST_OFF, target.container_ip_be)?;
    frame.store(ETH_HLEN + IPV4_CHECK_OFF, check)?;

    // A UDP checksum of zero means "none" and stays so; a computed zero is sent as 0xffff.
    if !(ip.protocol == IPPROTO_UDP && l4.check == csum::UDP_NO_CHECKSUM) {
        let check = csum::replace4(l4.check, ip.dst_be, target.container_ip_be);
        let mut check = csum::replace2(check, l4.dport_be, target.container_port_be);
        if ip.protocol == IPPROTO_UDP && check == 0 {
            check = 0xffff;
        }
        frame.store(l4.check_offset, check)?;
    }
    frame.store(ip.l4_offset() + L4_DPORT_OFF, target.container_port_be)?;
    frame.store(0, target.container_mac)?;
    frame.store(6, target.host_veth_mac)?;
    Some(())
}

pub fn container_ingress(ctx: &TcContext) -> (i32, Stat) {
    let len = ctx.len() as usize;
    let mut parsed = parse(&TcFrame(ctx), len);
    if parsed == Err(Malformed::Truncated) && ctx.data_end() - ctx.data() < len {
        // The headers may sit partly outside the linear area: pull them in and retry.
        let want = if len < MAX_HEADERS as usize {
            len as u32
        } else {
            MAX_HEADERS
        };
        if ctx.pull_data(want).is_ok() {
            parsed = parse(&TcFrame(ctx), len);
        }
    }
    let (ip, l4) = match parsed {
        Err(_) => return (TC_ACT_SHOT, Stat::ContainerDropMalformed),
        Ok(Parsed::NotIpv4) => return (TC_ACT_OK, Stat::ContainerPassNotIpv4),
        Ok(Parsed::Fragment(_)) => return (TC_ACT_OK, Stat::ContainerPassFragment),
        Ok(Parsed::OtherProtocol(_)) => return (TC_ACT_OK, Stat::ContainerPassNotTcpUdp),
        Ok(Parsed::Transport(ip, l4)) => (ip, l4),
    };
    let flow = FlowKey {
        container_ip_be: ip.src_be,
        remote_ip_be: ip.dst_be,
        container_port_be: l4.sport_be,
        remote_port_be: l4.dport_be,
        proto: ip.protocol,
        _pad: [0; 3],
    };
    // SAFETY: plain data copied out at once.
    let Some(origin) = (unsafe { NAT_FLOWS.get(&flow) }).copied() else {
        return (TC_ACT_OK, Stat::ContainerPassNoFlow);
    };
    if ip.ttl <= 1 {
        return (TC_ACT_SHOT, Stat::ContainerDropTtlExpired);
    }
    if rewrite_source(ctx, &ip, &l4, &origin).is_err() {
        return (TC_ACT_SHOT, Stat::ContainerDropRewriteFailed);
    }
    fib::forward(ctx, &ip, &l4, origin.host_ip_be)
}

/// Rewrites source address and port back to the published ones and decrements the TTL.
/// Uses the checksum helpers: packets a container sends often carry only a partial L4
/// checksum (offload), which the helpers know how to adjust.
#[inline(always)]
fn rewrite_source(ctx: &TcContext, ip: &Ipv4, l4: &L4, origin: &FlowOrigin) -> Result<(), i64> {
    let ip_check = ETH_HLEN + IPV4_CHECK_OFF;
    let (old_ttl, new_ttl) = ttl_words(ip);
    ctx.l3_csum_replace(ip_check, u64::from(old_ttl), u64::from(new_ttl), 2)?;
    ctx.store(ETH_HLEN + IPV4_TTL_OFF, &new_ttl, 0)?;
    ctx.l3_csum_replace(
        ip_check,
        u64::from(ip.src_be),
        u64::from(origin.host_ip_be),
        4,
    )?;
    ctx.store(ETH_HLEN + IPV4_SRC_OFF, &origin.host_ip_be, 0)?;
    if !(ip.protocol == IPPROTO_UDP && l4.check == csum::UDP_NO_CHECKSUM) {
        let pseudo = u64::from(BPF_F_PSEUDO_HDR) | 4;
        ctx.l4_csum_replace(
            l4.check_offset,
            u64::from(ip.src_be),
            u64::from(origin.host_ip_be),
            pseudo,
        )?;
        ctx.l4_csum_replace(
            l4.check_offset,
            u64::from(l4.sport_be),
            u64::from(origin.host_port_be),
            2,
        )?;
    }
    ctx.store(ip.l4_offset() + L4_SPORT_OFF, &origin.host_port_be, 0)?;
    Ok(())
}
