//! Masquerade with connection tracking: a container's TCP/UDP flow to the outside leaves
//! with the node's address and a source port picked here; its replies are translated back
//! on the uplink. Each flow has two entries (one per direction) in a plain hash map, so a
//! full table refuses new flows rather than evicting live ones.

use aya_ebpf::{
    bindings::{BPF_NOEXIST, TC_ACT_SHOT, bpf_sock_tuple, xdp_action},
    helpers::{
        bpf_ktime_get_ns, bpf_redirect, bpf_sk_lookup_tcp, bpf_sk_lookup_udp, bpf_sk_release,
    },
    programs::TcContext,
};
use dataplane_common::{
    CT_ORIGINAL, CT_REPLY, CT_CLOSING, CT_ESTABLISHED, CT_NEW, CtEntry, CtKey,
    EndpointKey, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, LinkKey, csum,
    parse::{
        ETH_HLEN, Frame, IPV4_CHECK_OFF, IPV4_DST_OFF, IPV4_TTL_OFF, Ipv4, L4, L4_DPORT_OFF,
        L4_SPORT_OFF,
    },
    stats::Stat,
};

use crate::{
    fib,
    frame::XdpFrame,
    maps::{CONNTRACK, ENDPOINTS, LINKS, NODE_CONFIG},
    nat::{decrement_ttl, rewrite_address, rewrite_port},
};

/// ICMP echo request and reply types.
const ICMP_ECHO_REQUEST: u8 = 8;
const ICMP_ECHO_REPLY: u8 = 0;
/// Offset of the identifier in an ICMP echo header.
const ICMP_ID_OFF: usize = 4;

/// An ICMP echo request (`request`) or reply, seen as a flow: its identifier takes the
/// place of the source port (request) or the destination port (reply), so that the same
/// tracking and translation serve pings.
#[inline(always)]
pub fn icmp_echo<F: Frame>(frame: &F, ip: &Ipv4, request: bool) -> Option<L4> {
    if ip.protocol != IPPROTO_ICMP || usize::from(ip.total_len) < ip.header_len + 8 {
        return None;
    }
    let header: [u8; 8] = frame.load(ip.l4_offset())?;
    let wanted = if request {
        ICMP_ECHO_REQUEST
    } else {
        ICMP_ECHO_REPLY
    };
    if header[0] != wanted || header[1] != 0 {
        return None;
    }
    let id_be = u16::from_ne_bytes([header[4], header[5]]);
    Some(L4 {
        sport_be: if request { id_be } else { 0 },
        dport_be: if request { 0 } else { id_be },
        check_offset: ip.l4_offset() + 2,
        check: u16::from_ne_bytes([header[2], header[3]]),
        tcp_flags: 0,
    })
}

/// Where the translated "port" sits: the echo identifier for ICMP, else `port_off`.
#[inline(always)]
fn port_field(ip: &Ipv4, port_off: usize) -> usize {
    if ip.protocol == IPPROTO_ICMP {
        ICMP_ID_OFF
    } else {
        port_off
    }
}

/// Source ports tried for a new flow before it is refused as exhausted.
const PORT_TRIES: u32 = 16;
const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;
/// `-EEXIST` from a map update: the key is taken.
const EEXIST: i64 = -17;

#[inline(always)]
fn now_ns() -> u64 {
    // SAFETY: plain helper call.
    unsafe { bpf_ktime_get_ns() }
}

/// A packet's tracking key, as it is on the wire.
#[inline(always)]
fn key_of(ip: &Ipv4, l4: &L4) -> CtKey {
    CtKey {
        src_ip_be: ip.src_be,
        dst_ip_be: ip.dst_be,
        sport_be: l4.sport_be,
        dport_be: l4.dport_be,
        proto: ip.protocol,
        _pad: [0; 3],
    }
}

/// The TCP state after a packet with `flags` in `direction`.
#[inline(always)]
fn next_tcp_state(state: u8, flags: u8, direction: u8) -> u8 {
    if flags & (TCP_FIN | TCP_RST) != 0 {
        return CT_CLOSING;
    }
    if state == CT_NEW && direction == CT_REPLY && flags & (TCP_SYN | TCP_ACK) != 0 {
        return CT_ESTABLISHED;
    }
    state
}

/// Refreshes an entry for a packet and returns it.
#[inline(always)]
fn touch(entry: *mut CtEntry, ip: &Ipv4, l4: &L4) -> CtEntry {
    // SAFETY: a pointer to a live map value; fields are plain data.
    unsafe {
        (*entry).last_seen_ns = now_ns();
        if ip.protocol == IPPROTO_TCP {
            (*entry).state =
                next_tcp_state((*entry).state, l4.tcp_flags, (*entry).direction);
        }
        *entry
    }
}

/// Whether a socket of the node would take packets to `ip:port` from this flow's remote
/// end, so the port must not be handed out.
#[inline(always)]
fn node_socket_uses(ctx: &TcContext, ip: &Ipv4, l4: &L4, nat_ip_be: u32, port_be: u16) -> bool {
    if ip.protocol == IPPROTO_ICMP {
        return false;
    }
    // SAFETY: an all-zero tuple is valid; we fill the IPv4 part.
    let mut tuple: bpf_sock_tuple = unsafe { core::mem::zeroed() };
    // Writing a union member of plain integers is safe.
    tuple.__bindgen_anon_1.ipv4.saddr = ip.dst_be;
    tuple.__bindgen_anon_1.ipv4.daddr = nat_ip_be;
    tuple.__bindgen_anon_1.ipv4.sport = l4.dport_be;
    tuple.__bindgen_anon_1.ipv4.dport = port_be;
    let size = core::mem::size_of::<u32>() as u32 * 2 + core::mem::size_of::<u16>() as u32 * 2;
    let current_netns = u64::from(u32::MAX);
    // SAFETY: helper calls with a correctly sized tuple; a socket found is released.
    unsafe {
        let sk = if ip.protocol == IPPROTO_UDP {
            bpf_sk_lookup_udp(ctx.skb.skb.cast(), &mut tuple, size, current_netns, 0)
        } else {
            bpf_sk_lookup_tcp(ctx.skb.skb.cast(), &mut tuple, size, current_netns, 0)
        };
        if sk.is_null() {
            return false;
        }
        bpf_sk_release(sk.cast());
        true
    }
}

/// Masquerades a container's TCP or UDP packet to the outside and forwards it.
#[inline(always)]
pub fn masquerade(ctx: &TcContext, ip: &Ipv4, l4: &L4) -> (i32, Stat) {
    let Some(config) = NODE_CONFIG.get(0).copied() else {
        return (aya_ebpf::bindings::TC_ACT_OK, Stat::ContainerPassOutside);
    };
    if config.masquerade_ip_be == 0 || config.masquerade_port_max < config.masquerade_port_min {
        return (aya_ebpf::bindings::TC_ACT_OK, Stat::ContainerPassOutside);
    }
    if ip.ttl <= 1 {
        return (TC_ACT_SHOT, Stat::ContainerDropTtlExpired);
    }
    let key = key_of(ip, l4);
    let entry = match CONNTRACK.get_ptr_mut(&key) {
        Some(entry) => touch(entry, ip, l4),
        // Only a SYN opens a TCP flow: a segment of a connection someone opened to the
        // container's own address is a reply, routed as it is.
        None if ip.protocol == IPPROTO_TCP && !l4.is_tcp_syn() => {
            return (aya_ebpf::bindings::TC_ACT_OK, Stat::ContainerPassOutside);
        }
        None => match open_flow(ctx, ip, l4, &key, &config) {
            Ok(entry) => entry,
            Err(stat) => return (TC_ACT_SHOT, stat),
        },
    };
    let rewritten = decrement_ttl(ctx, ip)
        .and_then(|()| {
            rewrite_address(
                ctx,
                ip,
                l4,
                dataplane_common::parse::IPV4_SRC_OFF,
                ip.src_be,
                entry.nat_ip_be,
            )
        })
        .and_then(|()| {
            rewrite_port(
                ctx,
                ip,
                l4,
                port_field(ip, L4_SPORT_OFF),
                l4.sport_be,
                entry.nat_port_be,
            )
        });
    if rewritten.is_err() {
        return (TC_ACT_SHOT, Stat::ContainerDropRewriteFailed);
    }
    let stats = (
        Stat::ContainerRedirectMasquerade,
        Stat::ContainerRedirectMasqueradeNeigh,
    );
    fib::forward(ctx, ip, l4, entry.nat_ip_be, ip.dst_be, stats)
}

/// Picks a source port for a new flow and records both directions.
#[inline(always)]
fn open_flow(
    ctx: &TcContext,
    ip: &Ipv4,
    l4: &L4,
    key: &CtKey,
    config: &dataplane_common::NodeConfig,
) -> Result<CtEntry, Stat> {
    // SAFETY: plain data copied out at once.
    let Some(endpoint) = (unsafe { ENDPOINTS.get(&EndpointKey { ip_be: ip.src_be }) }).copied()
    else {
        return Err(Stat::ContainerDropRewriteFailed);
    };
    let now = now_ns();
    let span = u32::from(config.masquerade_port_max - config.masquerade_port_min) + 1;
    // Spread flows over the range so that tries rarely meet a taken port.
    let start = (ip.src_be
        ^ ip.dst_be.rotate_left(7)
        ^ (u32::from(l4.sport_be) << 16)
        ^ u32::from(l4.dport_be))
    .wrapping_mul(0x9e37_79b1)
        % span;
    for i in 0..PORT_TRIES {
        let port = config.masquerade_port_min + ((start + i) % span) as u16;
        let port_be = port.to_be();
        if node_socket_uses(ctx, ip, l4, config.masquerade_ip_be, port_be) {
            continue;
        }
        let reply_key = CtKey {
            src_ip_be: ip.dst_be,
            dst_ip_be: config.masquerade_ip_be,
            sport_be: l4.dport_be,
            dport_be: port_be,
            proto: ip.protocol,
            _pad: [0; 3],
        };
        let reply = CtEntry {
            nat_ip_be: ip.src_be,
            nat_port_be: l4.sport_be,
            direction: CT_REPLY,
            state: CT_NEW,
            last_seen_ns: now,
            host_veth_ifindex: endpoint.host_veth_ifindex,
            container_mac: endpoint.container_mac,
            host_veth_mac: endpoint.host_veth_mac,
        };
        match CONNTRACK.insert(&reply_key, &reply, u64::from(BPF_NOEXIST)) {
            Ok(()) => {}
            Err(e) if i64::from(e) == EEXIST => continue,
            Err(_) => return Err(Stat::ContainerDropConntrackFull),
        }
        let original = CtEntry {
            nat_ip_be: config.masquerade_ip_be,
            nat_port_be: port_be,
            direction: CT_ORIGINAL,
            state: CT_NEW,
            last_seen_ns: now,
            ..CtEntry::default()
        };
        if CONNTRACK
            .insert(key, &original, u64::from(BPF_NOEXIST))
            .is_err()
        {
            let _ = CONNTRACK.remove(&reply_key);
            return Err(Stat::ContainerDropConntrackFull);
        }
        crate::events::new_flow(
            Stat::ContainerRedirectMasquerade,
            ip.protocol,
            ip.src_be,
            ip.dst_be,
            l4.sport_be,
            l4.dport_be,
        );
        return Ok(original);
    }
    Err(Stat::ContainerDropNatExhausted)
}

/// On the uplink: a reply of a masqueraded flow goes back to the container. `None`: not
/// one of ours.
#[inline(always)]
pub fn masquerade_reply(frame: &XdpFrame, ip: &Ipv4, l4: &L4) -> Option<(u32, Stat)> {
    let key = key_of(ip, l4);
    let entry = CONNTRACK.get_ptr_mut(&key)?;
    let entry = touch(entry, ip, l4);
    if entry.direction != CT_REPLY {
        return None;
    }
    if ip.ttl <= 1 {
        return Some((xdp_action::XDP_DROP, Stat::UplinkDropTtlExpired));
    }
    if rewrite_reply(frame, ip, l4, &entry).is_none() {
        return Some((xdp_action::XDP_DROP, Stat::UplinkDropMalformed));
    }
    // SAFETY: plain helper call.
    let verdict = unsafe { bpf_redirect(entry.host_veth_ifindex, 0) } as u32;
    Some((verdict, Stat::UplinkRedirectMasqueradeReply))
}

#[inline(always)]
fn rewrite_reply(frame: &XdpFrame, ip: &Ipv4, l4: &L4, entry: &CtEntry) -> Option<()> {
    let old_ttl = u16::from_ne_bytes([ip.ttl, ip.protocol]);
    let new_ttl = u16::from_ne_bytes([ip.ttl - 1, ip.protocol]);
    let check: u16 = frame.load(ETH_HLEN + IPV4_CHECK_OFF)?;
    let check = csum::replace2(check, old_ttl, new_ttl);
    let check = csum::replace4(check, ip.dst_be, entry.nat_ip_be);
    frame.store(ETH_HLEN + IPV4_TTL_OFF, new_ttl)?;
    frame.store(ETH_HLEN + IPV4_DST_OFF, entry.nat_ip_be)?;
    frame.store(ETH_HLEN + IPV4_CHECK_OFF, check)?;
    if ip.protocol == IPPROTO_ICMP {
        // No pseudo-header: only the identifier counts.
        frame.store(
            l4.check_offset,
            csum::replace2(l4.check, l4.dport_be, entry.nat_port_be),
        )?;
    } else if !(ip.protocol == IPPROTO_UDP && l4.check == csum::UDP_NO_CHECKSUM) {
        let check = csum::replace4(l4.check, ip.dst_be, entry.nat_ip_be);
        let mut check = csum::replace2(check, l4.dport_be, entry.nat_port_be);
        if ip.protocol == IPPROTO_UDP && check == 0 {
            check = 0xffff;
        }
        frame.store(l4.check_offset, check)?;
    }
    frame.store(
        ip.l4_offset() + port_field(ip, L4_DPORT_OFF),
        entry.nat_port_be,
    )?;
    frame.store(0, entry.container_mac)?;
    frame.store(6, entry.host_veth_mac)?;
    Some(())
}

/// `icc=false` with `--link`: a packet between two containers passes when it belongs to a
/// tracked flow (a reply, or more of a flow the link allowed), or when a link allows it,
/// which starts tracking it. A source port is no proof of a reply; the table is.
#[inline(always)]
pub fn linked(ip: &Ipv4, l4: &L4) -> (i32, Stat) {
    let key = key_of(ip, l4);
    if let Some(entry) = CONNTRACK.get_ptr_mut(&key) {
        touch(entry, ip, l4);
        return (aya_ebpf::bindings::TC_ACT_OK, Stat::ContainerPassTracked);
    }
    let link = LinkKey {
        src_ip_be: ip.src_be,
        dst_ip_be: ip.dst_be,
        dport_be: l4.dport_be,
        proto: ip.protocol,
        _pad: 0,
    };
    // SAFETY: only checking presence.
    if unsafe { LINKS.get(&link) }.is_none() {
        return (TC_ACT_SHOT, Stat::ContainerDropPolicyIcc);
    }
    // Only a TCP SYN (or any UDP datagram) opens a flow.
    if ip.protocol == IPPROTO_TCP && !l4.is_tcp_syn() {
        return (TC_ACT_SHOT, Stat::ContainerDropPolicyIcc);
    }
    let now = now_ns();
    // No translation: each direction's "nat" address is its own source, which keeps the
    // pair findable by the agent like a masqueraded one.
    let original = CtEntry {
        nat_ip_be: ip.src_be,
        nat_port_be: l4.sport_be,
        direction: CT_ORIGINAL,
        last_seen_ns: now,
        ..CtEntry::default()
    };
    let reply_key = CtKey {
        src_ip_be: ip.dst_be,
        dst_ip_be: ip.src_be,
        sport_be: l4.dport_be,
        dport_be: l4.sport_be,
        proto: ip.protocol,
        _pad: [0; 3],
    };
    let reply = CtEntry {
        nat_ip_be: ip.dst_be,
        nat_port_be: l4.dport_be,
        direction: CT_REPLY,
        last_seen_ns: now,
        ..CtEntry::default()
    };
    if CONNTRACK.insert(&reply_key, &reply, 0).is_err()
        || CONNTRACK.insert(&key, &original, 0).is_err()
    {
        return (TC_ACT_SHOT, Stat::ContainerDropConntrackFull);
    }
    crate::events::new_flow(
        Stat::ContainerPassLink,
        ip.protocol,
        ip.src_be,
        ip.dst_be,
        l4.sport_be,
        l4.dport_be,
    );
    (aya_ebpf::bindings::TC_ACT_OK, Stat::ContainerPassLink)
}

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
