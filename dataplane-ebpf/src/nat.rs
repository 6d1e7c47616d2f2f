//! Published ports: destination NAT of connections from outside (XDP on the uplink) and
//! from containers through the node's address (hairpin, TC), and the reverse translation
//! of their replies (TC).

use aya_ebpf::{
    bindings::{BPF_F_PSEUDO_HDR, TC_ACT_OK, TC_ACT_SHOT, xdp_action},
    helpers::{bpf_ktime_get_ns, bpf_redirect},
    programs::{TcContext, XdpContext},
};
use dataplane_common::{
    EndpointKey, FlowKey, IPPROTO_ICMP, IPPROTO_UDP, NatFlow, NodeAddrKey, PortKey, PortTarget,
    csum,
    parse::{
        ETH_HLEN, Frame as _, IPV4_CHECK_OFF, IPV4_DST_OFF, IPV4_SRC_OFF, IPV4_TTL_OFF, Ipv4, L4,
        L4_DPORT_OFF, L4_SPORT_OFF, Malformed, Parsed, parse,
    },
    stats::Stat,
};

use crate::{
    conntrack, fib,
    frame::{TcFrame, XdpFrame},
    maps::{ENDPOINTS, NAT_FLOWS, NODE_ADDRS, PUBLISHED_PORTS},
    policy::{self, Destination},
};

/// Headers the TC program wants in the linear part of the skb: Ethernet, IPv4 with the
/// longest options, and a TCP header.
const MAX_HEADERS: u32 = (ETH_HLEN + 60 + 60) as u32;

/// 127.0.0.0/8 in network order: never a published address from the wire (moby#45610).
#[inline(always)]
pub(crate) fn is_loopback(ip_be: u32) -> bool {
    u32::from_be(ip_be) >> 24 == 127
}

/// The port mapping that a packet to `dst:port` hits: one bound to that exact address first,
/// then one bound to every node address, loopback counting as one when `loopback_is_node`
/// (sockets on the node itself).
#[inline(always)]
pub(crate) fn published_target(
    dst_be: u32,
    port_be: u16,
    proto: u8,
    loopback_is_node: bool,
) -> Option<PortTarget> {
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
    let node_address = unsafe { NODE_ADDRS.get(&NodeAddrKey { addr_be: dst_be }) }.is_some();
    if !node_address && !(loopback_is_node && is_loopback(dst_be)) {
        return None;
    }
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

#[inline(always)]
fn now_ns() -> u64 {
    // SAFETY: plain helper call.
    unsafe { bpf_ktime_get_ns() }
}

/// The translation record of a new published-port flow: the client as it came, and the
/// published address it asked for.
#[inline(always)]
fn nat_flow_of(ip: &Ipv4, l4: &L4) -> NatFlow {
    NatFlow {
        frontend_ip_be: ip.dst_be,
        frontend_port_be: l4.dport_be,
        state: dataplane_common::CT_NEW,
        _pad0: 0,
        client_ip_be: ip.src_be,
        client_port_be: l4.sport_be,
        _pad1: 0,
        last_seen_ns: now_ns(),
    }
}

/// Whether the packet's L4 checksum is in use (a UDP checksum of zero means "none").
#[inline(always)]
fn has_l4_checksum(ip: &Ipv4, l4: &L4) -> bool {
    !(ip.protocol == IPPROTO_UDP && l4.check == csum::UDP_NO_CHECKSUM)
}

pub fn uplink_ingress(ctx: &XdpContext, len: usize) -> (u32, Stat) {
    let frame = XdpFrame(ctx);
    let (ip, l4) = match parse(&frame, len) {
        Err(_) => return (xdp_action::XDP_DROP, Stat::UplinkDropMalformed),
        Ok(Parsed::NotIpv4) => return (xdp_action::XDP_PASS, Stat::UplinkPassNotIpv4),
        Ok(Parsed::Fragment(_)) => return (xdp_action::XDP_PASS, Stat::UplinkPassFragment),
        Ok(Parsed::OtherProtocol(ip)) => {
            // An echo reply to a masqueraded ping goes back to its container.
            if let Some(echo) = conntrack::icmp_echo(&frame, &ip, false)
                && let Some(verdict) = conntrack::masquerade_reply(&frame, &ip, &echo)
            {
                return verdict;
            }
            if let Some(verdict) = conntrack::icmp_error_reply(&frame, &ip) {
                return verdict;
            }
            if !policy::direct_access_allowed(ip.dst_be, None) {
                return (xdp_action::XDP_DROP, Stat::UplinkDropDirectAccess);
            }
            return (xdp_action::XDP_PASS, Stat::UplinkPassNotTcpUdp);
        }
        Ok(Parsed::Transport(ip, l4)) => (ip, l4),
    };
    if let Some(verdict) = conntrack::masquerade_reply(&frame, &ip, &l4) {
        return verdict;
    }
    // A frame from the wire addressed to loopback is never translated, whatever is
    // published on 127.0.0.1; the stack drops it as a martian.
    if is_loopback(ip.dst_be) {
        return (xdp_action::XDP_PASS, Stat::UplinkPassLoopbackDestination);
    }
    let Some(target) = published_target(ip.dst_be, l4.dport_be, ip.protocol, false) else {
        if !policy::direct_access_allowed(ip.dst_be, Some((l4.dport_be, ip.protocol))) {
            return (xdp_action::XDP_DROP, Stat::UplinkDropDirectAccess);
        }
        return (xdp_action::XDP_PASS, Stat::UplinkPassNotPublished);
    };
    if !policy::source_allowed(ip.src_be, l4.dport_be, ip.protocol, len) {
        return (xdp_action::XDP_DROP, Stat::UplinkDropFilter);
    }
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
    let nat = nat_flow_of(&ip, &l4);
    if NAT_FLOWS.insert(&flow, &nat, 0).is_err() {
        return (xdp_action::XDP_DROP, Stat::UplinkDropFlowTableFull);
    }
    if l4.is_tcp_syn() {
        crate::events::new_flow(
            Stat::UplinkRedirectDnat,
            ip.protocol,
            ip.src_be,
            ip.dst_be,
            l4.sport_be,
            l4.dport_be,
        );
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
    if has_l4_checksum(ip, l4) {
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
        // Fragments and other protocols (ICMP, ...) are judged by addresses alone.
        Ok(Parsed::Fragment(ip)) => {
            return policy_verdict(ctx, &ip, None, Stat::ContainerPassFragment);
        }
        Ok(Parsed::OtherProtocol(ip)) => {
            return policy_verdict(ctx, &ip, None, Stat::ContainerPassNotTcpUdp);
        }
        Ok(Parsed::Transport(ip, l4)) => (ip, l4),
    };
    // A reply of a translated flow first: a container answering a node-local client (whose
    // ephemeral port may equal some published port) must not be taken for a new hairpin.
    let flow = FlowKey {
        container_ip_be: ip.src_be,
        remote_ip_be: ip.dst_be,
        container_port_be: l4.sport_be,
        remote_port_be: l4.dport_be,
        proto: ip.protocol,
        _pad: [0; 3],
    };
    if let Some(entry) = NAT_FLOWS.get_ptr_mut(&flow) {
        return reply(ctx, &ip, &l4, entry);
    }
    if !is_loopback(ip.dst_be)
        && let Some(target) = published_target(ip.dst_be, l4.dport_be, ip.protocol, false)
    {
        return hairpin(ctx, &ip, &l4, &target);
    }
    policy_verdict(ctx, &ip, Some(&l4), Stat::ContainerPassNoFlow)
}

/// What the networks' policy says of a packet that is not part of a translated flow:
/// isolation between networks, `icc`, `--internal`. `unknown` counts a sender that is on no
/// network the agent knows.
#[inline(always)]
fn policy_verdict(ctx: &TcContext, ip: &Ipv4, l4: Option<&L4>, unknown: Stat) -> (i32, Stat) {
    match policy::classify(ip.src_be, ip.dst_be) {
        None => (TC_ACT_OK, unknown),
        Some(Destination::Node) => (TC_ACT_OK, Stat::ContainerPassToNode),
        Some(Destination::SameNetwork { icc: true }) => (TC_ACT_OK, Stat::ContainerPassSameNetwork),
        Some(Destination::SameNetwork { icc: false }) => match l4 {
            Some(l4) => conntrack::linked(ip, l4),
            None => (TC_ACT_SHOT, Stat::ContainerDropPolicyIcc),
        },
        Some(Destination::OtherNetwork) => (TC_ACT_SHOT, Stat::ContainerDropIsolation),
        Some(Destination::Outside { internal: true, .. }) => {
            (TC_ACT_SHOT, Stat::ContainerDropInternal)
        }
        Some(Destination::Outside {
            internal: false,
            masquerade: false,
        }) => (TC_ACT_OK, Stat::ContainerPassOutside),
        Some(Destination::Outside {
            internal: false,
            masquerade: true,
        }) => match l4 {
            Some(l4) => conntrack::masquerade(ctx, ip, l4),
            // ICMP echo requests are masqueraded by identifier; other protocols leave as
            // they are.
            None => match conntrack::icmp_echo(&TcFrame(ctx), ip, true) {
                Some(echo) => conntrack::masquerade(ctx, ip, &echo),
                None => (TC_ACT_OK, Stat::ContainerPassOutside),
            },
        },
    }
}

/// A container reaching a published port through the node's address: translate to the
/// backend and hand the packet straight to its veth. A container reaching its own port
/// would see a packet from itself, so its source becomes its network's gateway, as Docker's
/// hairpin masquerade does.
#[inline(always)]
fn hairpin(ctx: &TcContext, ip: &Ipv4, l4: &L4, target: &PortTarget) -> (i32, Stat) {
    if ip.ttl <= 1 {
        return (TC_ACT_SHOT, Stat::ContainerDropTtlExpired);
    }
    let mut remote_ip_be = ip.src_be;
    if target.container_ip_be == ip.src_be {
        // SAFETY: plain data copied out at once.
        let Some(source) = (unsafe { ENDPOINTS.get(&EndpointKey { ip_be: ip.src_be }) }) else {
            return (TC_ACT_SHOT, Stat::ContainerDropRewriteFailed);
        };
        remote_ip_be = source.gateway_ip_be;
    }
    let flow = FlowKey {
        container_ip_be: target.container_ip_be,
        remote_ip_be,
        container_port_be: target.container_port_be,
        remote_port_be: l4.sport_be,
        proto: ip.protocol,
        _pad: [0; 3],
    };
    // Only a TCP SYN opens a new hairpin flow; a later segment must belong to one. A
    // container answering a node-local client (whose ephemeral port may equal a published
    // port) is not taken for a new one. Likewise UDP sent to the sender's own gateway,
    // where those clients' datagrams come from, only continues a flow.
    let opens = match ip.protocol {
        IPPROTO_UDP => {
            // SAFETY: plain data copied out at once.
            let source = unsafe { ENDPOINTS.get(&EndpointKey { ip_be: ip.src_be }) };
            source.is_none_or(|s| s.gateway_ip_be != ip.dst_be)
        }
        _ => l4.is_tcp_syn(),
    };
    // SAFETY: only checking presence.
    if !opens && unsafe { NAT_FLOWS.get(&flow) }.is_none() {
        return (TC_ACT_OK, Stat::ContainerPassNoFlow);
    }
    let nat = nat_flow_of(ip, l4);
    if NAT_FLOWS.insert(&flow, &nat, 0).is_err() {
        return (TC_ACT_SHOT, Stat::ContainerDropFlowTableFull);
    }
    let rewritten = decrement_ttl(ctx, ip)
        .and_then(|()| {
            rewrite_address(ctx, ip, l4, IPV4_DST_OFF, ip.dst_be, target.container_ip_be)
        })
        .and_then(|()| {
            rewrite_port(
                ctx,
                ip,
                l4,
                L4_DPORT_OFF,
                l4.dport_be,
                target.container_port_be,
            )
        })
        .and_then(|()| match remote_ip_be == ip.src_be {
            true => Ok(()),
            false => rewrite_address(ctx, ip, l4, IPV4_SRC_OFF, ip.src_be, remote_ip_be),
        })
        .and_then(|()| ctx.store(0, &target.container_mac, 0))
        .and_then(|()| ctx.store(6, &target.host_veth_mac, 0));
    if rewritten.is_err() {
        return (TC_ACT_SHOT, Stat::ContainerDropRewriteFailed);
    }
    // SAFETY: plain helper call.
    let verdict = unsafe { bpf_redirect(target.host_veth_ifindex, 0) } as i32;
    (verdict, Stat::ContainerRedirectHairpin)
}

/// A reply of a translated flow: its source becomes the published address again (and its
/// destination the real client, when that was translated too); then it goes to the client,
/// a local container directly, anything else by the FIB.
#[inline(always)]
fn reply(ctx: &TcContext, ip: &Ipv4, l4: &L4, entry: *mut NatFlow) -> (i32, Stat) {
    // SAFETY: the pointer is to a live map value; fields are plain data.
    let nat = unsafe {
        (*entry).last_seen_ns = now_ns();
        *entry
    };
    if ip.ttl <= 1 {
        return (TC_ACT_SHOT, Stat::ContainerDropTtlExpired);
    }
    let rewritten = decrement_ttl(ctx, ip)
        .and_then(|()| rewrite_address(ctx, ip, l4, IPV4_SRC_OFF, ip.src_be, nat.frontend_ip_be))
        .and_then(|()| rewrite_port(ctx, ip, l4, L4_SPORT_OFF, l4.sport_be, nat.frontend_port_be))
        .and_then(|()| match nat.client_ip_be == ip.dst_be {
            true => Ok(()),
            false => rewrite_address(ctx, ip, l4, IPV4_DST_OFF, ip.dst_be, nat.client_ip_be),
        });
    if rewritten.is_err() {
        return (TC_ACT_SHOT, Stat::ContainerDropRewriteFailed);
    }
    // SAFETY: plain data copied out at once.
    if let Some(local) = unsafe {
        ENDPOINTS.get(&EndpointKey {
            ip_be: nat.client_ip_be,
        })
    } {
        if ctx.store(0, &local.container_mac, 0).is_err()
            || ctx.store(6, &local.host_veth_mac, 0).is_err()
        {
            return (TC_ACT_SHOT, Stat::ContainerDropRewriteFailed);
        }
        // SAFETY: plain helper call.
        let verdict = unsafe { bpf_redirect(local.host_veth_ifindex, 0) } as i32;
        return (verdict, Stat::ContainerRedirectReplyLocal);
    }
    let stats = (
        Stat::ContainerRedirectReply,
        Stat::ContainerRedirectReplyNeigh,
    );
    fib::forward(ctx, ip, l4, nat.frontend_ip_be, nat.client_ip_be, stats)
}

#[inline(always)]
pub(crate) fn decrement_ttl(ctx: &TcContext, ip: &Ipv4) -> Result<(), i64> {
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
/// adjusts both checksums. Uses the checksum helpers: packets a container sends often carry
/// only a partial L4 checksum (offload), which the helpers know how to adjust.
#[inline(always)]
pub(crate) fn rewrite_address(
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

#[inline(always)]
pub(crate) fn rewrite_port(
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
