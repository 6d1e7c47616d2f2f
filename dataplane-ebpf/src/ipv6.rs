//! IPv6 frames, on the uplinks and at the containers' veths: parsed by the shared parser
//! (extension headers walked), a malformed one dropped and counted as IPv4's are.
//! Connections to IPv6 published ports are translated to their container (TCP and UDP,
//! the client's address kept) and the container's replies back, with the flow states and
//! counters of IPv4's (nat.rs); flows live in NAT_FLOWS6. What containers send otherwise
//! is judged by the networks' IPv6 policy (isolation, icc and links, internal). On the uplink,
//! fragments after the first follow their first fragment (frag6.rs) and ICMPv6 errors
//! about published-port flows go to their container (icmp6.rs). A masquerading network's
//! TCP, UDP and ICMPv6 echoes to the outside are masqueraded, and their replies and the
//! ICMPv6 errors about them translated back on the uplink, in programs of their own
//! (masquerade6.rs). The rest passes untouched: neighbour discovery, other ICMPv6, and
//! what the parser does not walk into. At a container's veth the published-port errors
//! and fragments go the other way, in a program of their own (`container_reply6`,
//! reached by tail call: `container_ingress6` has no stack left for them): a container's
//! ICMPv6 errors about published-port flows leave as the client knows the flow
//! (icmp6.rs), and the fragments of a fragmented reply follow its first fragment
//! (frag6.rs). No IPv6 hairpin yet.
//!
//! IPv6 has no header checksum: a rewrite updates the transport checksum only, whose
//! pseudo-header covers both addresses. A UDP datagram without a checksum (0) is invalid
//! on IPv6 (RFC 8200) and is dropped, counted, rather than translated.

use core::{mem::size_of, ptr};

use aya_ebpf::{
    bindings::{
        BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, BPF_FIB_LKUP_RET_NO_NEIGH,
        BPF_FIB_LKUP_RET_SUCCESS, BPF_NOEXIST, TC_ACT_OK, TC_ACT_SHOT, bpf_fib_lookup,
    },
    helpers::{bpf_fib_lookup as fib_lookup, bpf_redirect, bpf_redirect_neigh},
    maps::lpm_trie::Key,
    programs::TcContext,
};
use dataplane_common::{
    CONTAINER6_LINK_SLOT, CONTAINER6_MASQUERADE_SLOT, CONTAINER6_REPLY_SLOT, CT_NEW, FILTER_DENY,
    FILTER_SCOPE_BITS, FilterKey6, FlowKey6, IPPROTO_ICMPV6, IPPROTO_UDP, NETWORK_ICC,
    NETWORK_INTERNAL, NETWORK_MASQUERADE, NatFlow6, NetworkKey6, NodeAddrKey6, PortKey6,
    PortTarget6, csum,
    parse::{
        ETH_HLEN, Frame, ICMP_ID_OFF, L4, L4_DPORT_OFF, L4_SPORT_OFF, Malformed,
        ipv6::{
            FRAGMENT_HLEN, IPV6_DST_OFF, IPV6_HLEN, IPV6_HOP_LIMIT_OFF, IPV6_SRC_OFF, Ipv6,
            Parsed6, icmp6_echo, parse_ipv6,
        },
    },
    stats::Stat,
};

use crate::{
    flowtable::EEXIST,
    frag6,
    frame::{Action, L4Change, Packet, TcFrame},
    icmp6,
    maps::{
        FIB_SCRATCH, FILTER_RULES6, NAT_FLOWS6, NETWORKS6, NODE_ADDRS6, PUBLISHED_PORTS6,
        hand_over_container6,
    },
    masquerade6,
    nat::{next_state, now_ns},
    policy::{self, DirectFlow6},
    stats::count_filter_hit,
};

const AF_INET6: u8 = 10;
/// `::1`: never a published address from the wire.
const LOOPBACK: [u8; 16] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];

/// What a container's IPv6 packet may need in the linear area: Ethernet, IPv6, a few
/// extension headers and a TCP header with options.
const MAX_HEADERS: usize = ETH_HLEN + IPV6_HLEN + 3 * 8 + FRAGMENT_HLEN + 60;

/// Whether a frame that parsed as truncated is longer than the bytes the program sees:
/// its headers lie past TC's linear area, not past its end. Such a frame is not ours to
/// judge and passes.
#[inline(always)]
fn headers_beyond_linear<F: Frame + ?Sized>(frame: &F, len: usize) -> bool {
    len > 0 && frame.load::<u8>(len - 1).is_none()
}

/// On an uplink (XDP or TC). `masquerade_reply` hands a reply of a masqueraded flow, an
/// ICMPv6 echo reply, and an ICMPv6 error about no published-port flow, to the program
/// that translates them (masquerade6.rs).
#[inline(always)]
pub fn uplink_ingress<P: Packet>(
    packet: &P,
    len: usize,
    masquerade_reply: impl FnOnce() -> (Action, Stat),
) -> (Action, Stat) {
    match parse_ipv6(packet, len) {
        Err(Malformed::Truncated) if headers_beyond_linear(packet, len) => {
            (Action::Pass, Stat::UplinkPassUnparsedHeaders)
        }
        Err(_) => (Action::Drop, Stat::UplinkDropMalformed),
        Ok(Parsed6::NotIpv6) => (Action::Pass, Stat::UplinkPassNotIpv4),
        // A fragment after the first follows its first fragment, or goes to the node.
        Ok(Parsed6::Fragment(ip)) => frag6::uplink_following(packet, &ip),
        Ok(Parsed6::OtherProtocol(ip)) => {
            match icmp6::uplink_error(packet, &ip, icmp6::published) {
                Some(verdict) => verdict,
                // Echo replies and the other errors are looked up there: this program has no
                // stack left for them.
                None if masquerade6::may_answer(packet, &ip) => masquerade_reply(),
                None => unless_direct_access_refused(packet, &ip, None, Stat::UplinkPassNotTcpUdp),
            }
        }
        // Not a guard: bound by reference there, the headers would be copied to the stack
        // and lose the bounds the verifier knows of their offsets.
        Ok(Parsed6::Transport(ip, l4)) => match masquerade6::is_reply(&ip, &l4) {
            true => masquerade_reply(),
            false => from_outside(packet, &ip, &l4, len),
        },
    }
}

/// The port mapping a packet to `dst`:`port_be` hits: one bound to that exact address
/// first, then one bound to every node address when `dst` is one of them, `[::1]`
/// counting as one when `loopback_is_node` (sockets on the node itself). The target is
/// returned in place in the map: the ICMPv6 errors' path has no stack left for a copy.
#[inline(always)]
pub(crate) fn published_target(
    dst: &[u8; 16],
    port_be: u16,
    proto: u8,
    loopback_is_node: bool,
) -> Option<&'static PortTarget6> {
    // One key, its address cleared for the second lookup: the uplink program is short of
    // stack.
    let mut key = PortKey6 {
        host_ip: *dst,
        host_port_be: port_be,
        proto,
        _pad: 0,
    };
    // SAFETY: map values of plain data, read in place (the agent replaces a target
    // whole, never field by field).
    if let Some(target) = unsafe { PUBLISHED_PORTS6.get(&key) } {
        return Some(target);
    }
    // SAFETY: as above.
    let node_address = unsafe { NODE_ADDRS6.get(&NodeAddrKey6 { addr: *dst }) }.is_some();
    if !node_address && !(loopback_is_node && *dst == LOOPBACK) {
        return None;
    }
    key.host_ip = [0; 16];
    // SAFETY: as above.
    unsafe { PUBLISHED_PORTS6.get(&key) }
}

/// Whether a packet from `src` to published `host_port_be`/`proto` may pass, as
/// policy.rs's `source_allowed` decides for IPv4: the longest IPv6 prefix of a rule scoped
/// to the port, else of a rule for every port. Counts the hit on the rule that decided.
#[inline(always)]
fn source_allowed(src: &[u8; 16], host_port_be: u16, proto: u8, bytes: usize) -> bool {
    // One key, its scope cleared for the second lookup, as in `published_target`.
    let mut key = Key::new(
        FILTER_SCOPE_BITS + 128,
        FilterKey6 {
            host_port_be,
            proto,
            _pad: 0,
            src_ip: *src,
        },
    );
    let mut rule = FILTER_RULES6.get(&key);
    if rule.is_none() {
        key.data.host_port_be = 0;
        key.data.proto = 0;
        rule = FILTER_RULES6.get(&key);
    }
    match rule {
        Some(rule) => {
            count_filter_hit(rule.rule_id, bytes);
            rule.action != FILTER_DENY
        }
        None => true,
    }
}

/// The translation record of a packet of a published-port flow from the client.
#[inline(always)]
fn nat_flow_of(ip: &Ipv6, l4: &L4) -> NatFlow6 {
    NatFlow6 {
        frontend_ip: ip.dst,
        client_ip: ip.src,
        frontend_port_be: l4.dport_be,
        client_port_be: l4.sport_be,
        state: CT_NEW,
        _pad: [0; 3],
        last_seen_ns: now_ns(),
        packets: 1,
        bytes: packet_bytes(ip),
    }
}

/// A packet's bytes at the IP level, as the flows count them.
#[inline(always)]
fn packet_bytes(ip: &Ipv6) -> u64 {
    (IPV6_HLEN + usize::from(ip.payload_len)) as u64
}

/// Records a packet of a published-port flow, as nat.rs's `track` does for IPv4: the
/// entry is updated in place (its state and counters kept), field by field (a copy would
/// take stack the uplink program has not got), or inserted. `Err`: the table is full.
#[inline(always)]
fn track(flow: &FlowKey6, ip: &Ipv6, l4: &L4) -> Result<(), ()> {
    if let Some(entry) = NAT_FLOWS6.get_ptr_mut(flow) {
        // SAFETY: a pointer to a live map value of plain data.
        let entry = unsafe { &mut *entry };
        match next_state(entry.state, false, ip.protocol, l4) {
            Some(state) => {
                entry.frontend_ip = ip.dst;
                entry.client_ip = ip.src;
                entry.frontend_port_be = l4.dport_be;
                entry.client_port_be = l4.sport_be;
                entry.state = state;
                entry.last_seen_ns = now_ns();
                entry.packets += 1;
                entry.bytes += packet_bytes(ip);
            }
            None => {
                let _ = NAT_FLOWS6.remove(flow);
            }
        }
        return Ok(());
    }
    match NAT_FLOWS6.insert(flow, &nat_flow_of(ip, l4), u64::from(BPF_NOEXIST)) {
        Err(e) if e != EEXIST => Err(()),
        _ => Ok(()),
    }
}

/// On the uplink: a TCP or UDP packet to an IPv6 published port goes straight to its
/// container, its destination address and port rewritten, the client's address kept.
#[inline(always)]
fn from_outside<P: Packet>(packet: &P, ip: &Ipv6, l4: &L4, len: usize) -> (Action, Stat) {
    if ip.dst == LOOPBACK {
        return (Action::Pass, Stat::UplinkPassLoopbackDestination);
    }
    // A copy: read in place, its fields would leave the verifier no bounds on the offsets
    // this path keeps (the registers are spent differently).
    let Some(&target) = published_target(&ip.dst, l4.dport_be, ip.protocol, false) else {
        return unless_direct_access_refused(packet, ip, Some(l4), Stat::UplinkPassNotPublished);
    };
    if !source_allowed(&ip.src, l4.dport_be, ip.protocol, len) {
        return (Action::Drop, Stat::UplinkDropFilter);
    }
    if ip.protocol == IPPROTO_UDP && l4.check == 0 {
        return (Action::Drop, Stat::UplinkDropUdpZeroChecksum);
    }
    // We forward the packet, so we act as a router: an expiring hop limit ends here.
    if ip.hop_limit <= 1 {
        return (Action::Drop, Stat::UplinkDropTtlExpired);
    }
    let flow = FlowKey6 {
        container_ip: target.container_ip,
        remote_ip: ip.src,
        container_port_be: target.container_port_be,
        remote_port_be: l4.sport_be,
        proto: ip.protocol,
        _pad: [0; 3],
    };
    if track(&flow, ip, l4).is_err() {
        return (Action::Drop, Stat::UplinkDropFlowTableFull);
    }
    if to_target(packet, ip, l4, &target).is_none() {
        return (Action::Drop, Stat::UplinkDropMalformed);
    }
    let macs = [&target.container_mac, &target.host_veth_mac];
    frag6::remember(
        ip,
        &ip.src,
        &target.container_ip,
        target.host_veth_ifindex,
        macs,
    );
    if l4.is_tcp_syn() {
        crate::events::new_flow6(
            Stat::UplinkRedirectDnat,
            ip.protocol,
            &ip.src,
            &ip.dst,
            crate::events::ports(l4.sport_be, l4.dport_be),
        );
    }
    (
        Action::Redirect(target.host_veth_ifindex),
        Stat::UplinkRedirectDnat,
    )
}

/// Whether a frame from the outside that arrived on `ingress_ifindex` may reach `ip`'s
/// destination directly (not through a published host port), as policy.rs's
/// `network_allows_direct` decides for both families: Docker 28's raw-table drop for IPv6
/// (moby#49325, `-d SUBNET ! -i BRIDGE -j DROP`), which `nat-unprotected`, `routed`,
/// `--allow-direct-routing` and the network's trusted interfaces skip, then its FORWARD
/// rules: the published container ports ([`PUBLISHED_BACKENDS6`]), the flows the
/// container opened with its own address ([`ROUTED_FLOWS6`]) and ICMPv6 in `routed` mode.
/// `l4` is the frame's ports where it is TCP or UDP. The node's own addresses (gateways
/// included) and addresses on no bridge network are not ours to judge.
///
/// [`PUBLISHED_BACKENDS6`]: crate::maps::PUBLISHED_BACKENDS6
/// [`ROUTED_FLOWS6`]: crate::maps::ROUTED_FLOWS6
#[inline(always)]
fn direct_access_allowed(ip: &Ipv6, l4: Option<&L4>, ingress_ifindex: u32) -> bool {
    let Some(network) = NETWORKS6.get(&Key::new(128, NetworkKey6 { addr: ip.dst })) else {
        return true;
    };
    // SAFETY: the value is only tested for presence.
    if unsafe { NODE_ADDRS6.get(&NodeAddrKey6 { addr: ip.dst }) }.is_some() {
        return true;
    }
    let flow = match l4 {
        Some(l4) => match DirectFlow6::of(
            policy::UPLINK_SLOT6,
            &ip.dst,
            &ip.src,
            l4.dport_be,
            l4.sport_be,
            ip.protocol,
        ) {
            Some(flow) => Some(flow),
            None => return false,
        },
        None => None,
    };
    policy::network_allows_direct(
        network,
        ingress_ifindex,
        flow.as_ref(),
        ip.protocol == IPPROTO_ICMPV6,
    )
}

/// What becomes of a frame from the outside that no translation claimed: it passes to the
/// node, counted as `passed`, unless it reaches a container directly where
/// [`direct_access_allowed`] refuses it. `l4`: its ports, where it is TCP or UDP.
#[inline(always)]
pub(crate) fn unless_direct_access_refused<P: Packet>(
    packet: &P,
    ip: &Ipv6,
    l4: Option<&L4>,
    passed: Stat,
) -> (Action, Stat) {
    match direct_access_allowed(ip, l4, packet.ingress_ifindex()) {
        true => (Action::Pass, passed),
        false => (Action::Drop, Stat::UplinkDropDirectAccess),
    }
}

/// The 32-bit words of an IPv6 address as they sit in memory, for checksum updates.
#[inline(always)]
pub(crate) fn words(addr: &[u8; 16]) -> [u32; 4] {
    let mut out = [0u32; 4];
    for (i, w) in out.iter_mut().enumerate() {
        *w = word(addr, i);
    }
    out
}

/// What an IPv6 address's change from `old` to `new` adds to a checksum (`csum::diff4` of
/// its four words). A function of its own, called rather than inlined: its sixteen byte
/// loads then need no room in the caller's stack.
#[inline(never)]
pub(crate) fn address_diff(old: &[u8; 16], new: &[u8; 16]) -> u32 {
    let mut diff = 0;
    for i in 0..4 {
        diff += csum::diff4(word(old, i), word(new, i));
    }
    diff
}

/// Word `i` (0 to 3) of [`words`], without the array.
#[inline(always)]
fn word(addr: &[u8; 16], i: usize) -> u32 {
    u32::from_ne_bytes([
        addr[4 * i],
        addr[4 * i + 1],
        addr[4 * i + 2],
        addr[4 * i + 3],
    ])
}

/// Rewrites destination address and port, decrements the hop limit and readdresses the
/// Ethernet header, through [`Packet`] (incremental checksums at XDP, the kernel's helpers
/// at TC).
#[inline(always)]
pub(crate) fn to_target<P: Packet>(packet: &P, ip: &Ipv6, l4: &L4, to: &PortTarget6) -> Option<()> {
    let udp = ip.protocol == IPPROTO_UDP;
    let address = L4Change {
        size: 0,
        pseudo: true,
        udp,
    };
    let diff = address_diff(&ip.dst, &to.container_ip);
    packet.replace_l4(l4.check_offset, 0, diff, address)?;
    let port = L4Change {
        size: 2,
        pseudo: false,
        udp,
    };
    packet.replace_l4(
        l4.check_offset,
        u32::from(l4.dport_be),
        u32::from(to.container_port_be),
        port,
    )?;
    packet.store(ETH_HLEN + IPV6_HOP_LIMIT_OFF, ip.hop_limit - 1)?;
    packet.store(ETH_HLEN + IPV6_DST_OFF, to.container_ip)?;
    packet.store(port_offset(ip, L4_DPORT_OFF), to.container_port_be)?;
    packet.store(0, to.container_mac)?;
    packet.store(6, to.host_veth_mac)
}

/// At a container's veth: a reply of an IPv6 published-port flow leaves from the published
/// address and port again, routed by the FIB; `translated` is told the flow once the
/// packet is rewritten. `None`: no such flow.
#[inline(always)]
fn reply(
    ctx: &TcContext,
    ip: &Ipv6,
    l4: &L4,
    translated: impl FnOnce(&NatFlow6),
) -> Option<(i32, Stat)> {
    let flow = FlowKey6 {
        container_ip: ip.src,
        remote_ip: ip.dst,
        container_port_be: l4.sport_be,
        remote_port_be: l4.dport_be,
        proto: ip.protocol,
        _pad: [0; 3],
    };
    let entry = NAT_FLOWS6.get_ptr_mut(&flow)?;
    // SAFETY: a pointer to a live map value of plain data.
    let nat = unsafe { *entry };
    match next_state(nat.state, true, ip.protocol, l4) {
        // SAFETY: as above.
        Some(state) => unsafe {
            (*entry).state = state;
            (*entry).last_seen_ns = now_ns();
            (*entry).packets += 1;
            (*entry).bytes += (IPV6_HLEN + usize::from(ip.payload_len)) as u64;
        },
        None => {
            let _ = NAT_FLOWS6.remove(&flow);
        }
    }
    if ip.protocol == IPPROTO_UDP && l4.check == 0 {
        return Some((TC_ACT_SHOT, Stat::ContainerDropUdpZeroChecksum));
    }
    if ip.hop_limit <= 1 {
        return Some((TC_ACT_SHOT, Stat::ContainerDropTtlExpired));
    }
    if rewrite_source(ctx, ip, l4, &ip.src, &nat.frontend_ip, nat.frontend_port_be).is_err() {
        return Some((TC_ACT_SHOT, Stat::ContainerDropRewriteFailed));
    }
    translated(&nat);
    let stats = (
        Stat::ContainerRedirectReply,
        Stat::ContainerRedirectReplyNeigh,
    );
    Some(forward(
        ctx,
        &nat.frontend_ip,
        &nat.client_ip,
        ip.protocol,
        stats,
    ))
}

/// Rewrites a container's packet's source address (`old_ip`, as `ip` has it) and port (a
/// reply's to the published ones, a masqueraded packet's to the node's) and decrements the
/// hop limit, with the kernel's checksum helpers (a container's packets often carry a
/// partial checksum).
#[inline(always)]
pub(crate) fn rewrite_source(
    ctx: &TcContext,
    ip: &Ipv6,
    l4: &L4,
    old_ip: &[u8; 16],
    new_ip: &[u8; 16],
    new_port_be: u16,
) -> Result<(), i64> {
    let mut flags = u64::from(BPF_F_PSEUDO_HDR) | 4;
    if ip.protocol == IPPROTO_UDP {
        flags |= u64::from(BPF_F_MARK_MANGLED_0);
    }
    for i in 0..4 {
        let (old, new) = (word(old_ip, i), word(new_ip, i));
        ctx.l4_csum_replace(l4.check_offset, u64::from(old), u64::from(new), flags)?;
    }
    let port_flags = (flags & !(u64::from(BPF_F_PSEUDO_HDR) | 4)) | 2;
    ctx.l4_csum_replace(
        l4.check_offset,
        u64::from(l4.sport_be),
        u64::from(new_port_be),
        port_flags,
    )?;
    ctx.store(ETH_HLEN + IPV6_HOP_LIMIT_OFF, &(ip.hop_limit - 1), 0)?;
    ctx.store(ETH_HLEN + IPV6_SRC_OFF, new_ip, 0)?;
    ctx.store(port_offset(ip, L4_SPORT_OFF), &new_port_be, 0)
}

/// Offset in the frame of the transport port at `field` (source or destination) of a
/// tracked packet; an ICMPv6 echo's identifier, which stands for either.
#[inline(always)]
fn port_offset(ip: &Ipv6, field: usize) -> usize {
    let field = match ip.protocol {
        IPPROTO_ICMPV6 => ICMP_ID_OFF,
        _ => field,
    };
    ip.l4_offset() + field
}

/// A FIB lookup from `src` to `dst` for a container's packet: the helper's answer, the
/// egress interface and the next hop's MACs. The parameters sit in the per-CPU scratch
/// map, as fib.rs's do: the container program has little stack left.
#[inline(always)]
fn fib_lookup6(
    ctx: &TcContext,
    src: &[u8; 16],
    dst: &[u8; 16],
    protocol: u8,
) -> Option<(i64, u32, [u8; 6], [u8; 6])> {
    let params = FIB_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: a map value of the right type, ours alone on this CPU while the program runs;
    // all-zero is a valid request to fill in.
    unsafe {
        ptr::write_bytes(params, 0, 1);
        (*params).family = AF_INET6;
        (*params).l4_protocol = protocol;
        (*params).ifindex = (*ctx.skb.skb).ifindex;
        (*params).__bindgen_anon_3.ipv6_src = words(src);
        (*params).__bindgen_anon_4.ipv6_dst = words(dst);
    }
    // SAFETY: helper call with a correctly sized parameter block.
    let ret = unsafe {
        fib_lookup(
            ctx.skb.skb.cast(),
            params,
            size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    };
    // SAFETY: as above.
    Some(unsafe { (ret, (*params).ifindex, (*params).dmac, (*params).smac) })
}

/// The interface a container's packet from `src` to `dst` leaves by (whose address it is
/// masqueraded to); `None` when no route leads out.
#[inline(always)]
pub(crate) fn egress_ifindex(
    ctx: &TcContext,
    src: &[u8; 16],
    dst: &[u8; 16],
    protocol: u8,
) -> Option<u32> {
    let (ret, ifindex, _, _) = fib_lookup6(ctx, src, dst, protocol)?;
    let routed =
        ret == i64::from(BPF_FIB_LKUP_RET_SUCCESS) || ret == i64::from(BPF_FIB_LKUP_RET_NO_NEIGH);
    routed.then_some(ifindex)
}

/// Sends a translated packet from `src` to `dst` out of the interface the FIB picks, as
/// fib.rs does for IPv4; `(redirected, resolving)` count the two ways it leaves.
#[inline(always)]
pub(crate) fn forward(
    ctx: &TcContext,
    src: &[u8; 16],
    dst: &[u8; 16],
    protocol: u8,
    (redirected, resolving): (Stat, Stat),
) -> (i32, Stat) {
    let Some((ret, ifindex, dmac, smac)) = fib_lookup6(ctx, src, dst, protocol) else {
        return (TC_ACT_SHOT, Stat::ContainerDropNoRoute);
    };
    if ret == i64::from(BPF_FIB_LKUP_RET_SUCCESS) {
        if ctx.store(0, &dmac, 0).is_err() || ctx.store(6, &smac, 0).is_err() {
            return (TC_ACT_SHOT, Stat::ContainerDropRewriteFailed);
        }
        // SAFETY: plain helper call.
        let verdict = unsafe { bpf_redirect(ifindex, 0) } as i32;
        return (verdict, redirected);
    }
    if ret == i64::from(BPF_FIB_LKUP_RET_NO_NEIGH) {
        // SAFETY: plain helper call; a null nexthop makes the kernel route the packet itself.
        let verdict = unsafe { bpf_redirect_neigh(ifindex, ptr::null_mut(), 0, 0) } as i32;
        return (verdict, resolving);
    }
    (TC_ACT_SHOT, Stat::ContainerDropNoRoute)
}

/// At a container's veth (TC), for a frame the IPv4 parser found not to be IPv4.
#[inline(always)]
pub fn container_ingress(ctx: &TcContext, len: usize) -> (i32, Stat) {
    let mut parsed = parse_ipv6(&TcFrame(ctx), len);
    if parsed == Err(Malformed::Truncated) && ctx.data_end() - ctx.data() < len {
        // The headers may sit partly outside the linear area: pull them in and retry.
        let want = if len < MAX_HEADERS { len } else { MAX_HEADERS };
        if ctx.pull_data(want as u32).is_ok() {
            parsed = parse_ipv6(&TcFrame(ctx), len);
        }
    }
    match parsed {
        Err(Malformed::Truncated) if headers_beyond_linear(&TcFrame(ctx), len) => {
            (TC_ACT_OK, Stat::ContainerPassUnparsedHeaders)
        }
        Err(_) => (TC_ACT_SHOT, Stat::ContainerDropMalformed),
        Ok(Parsed6::NotIpv6) => (TC_ACT_OK, Stat::ContainerPassNotIpv4),
        // A first fragment's translation is remembered for the fragments that follow.
        Ok(Parsed6::Transport(ip, _)) if ip.is_first_fragment() => {
            hand_over_container6(ctx, CONTAINER6_REPLY_SLOT)
        }
        Ok(Parsed6::Transport(ip, l4)) => match reply(ctx, &ip, &l4, |_| {}) {
            Some(verdict) => verdict,
            None => policy(ctx, &ip, Some(&l4), Icmp6Kind::Other, true),
        },
        Ok(Parsed6::Fragment(_)) => hand_over_container6(ctx, CONTAINER6_REPLY_SLOT),
        Ok(Parsed6::OtherProtocol(ip)) if icmp6::may_be_error(&TcFrame(ctx), &ip) => {
            hand_over_container6(ctx, CONTAINER6_REPLY_SLOT)
        }
        Ok(Parsed6::OtherProtocol(ip)) => {
            let kind = if neighbour_discovery(ctx, &ip) {
                Icmp6Kind::NeighbourDiscovery
            } else if icmp6_echo(&TcFrame(ctx), &ip, true).is_some() {
                Icmp6Kind::EchoRequest
            } else {
                Icmp6Kind::Other
            };
            policy(ctx, &ip, None, kind, true)
        }
    }
}

/// The headers a container's ICMPv6 error needs in the linear area: Ethernet, IPv6 with a
/// few extension headers and ICMPv6, then the quoted IPv6 header with as many and 8 bytes
/// of its transport header.
const ERROR_HEADERS: usize = 2 * (IPV6_HLEN + 3 * 8 + FRAGMENT_HLEN) + ETH_HLEN + 8 + 8;

/// `container_reply6`: what `container_ingress6` handed over, parsed again (the verifier
/// trusts offsets into the packet only from its own bounds checks), after pulling an
/// error's quote into the linear area. A container's ICMPv6 error about a published-port
/// flow leaves as the client knows the flow (icmp6.rs); a fragment after the first follows
/// its first fragment (frag6.rs); a first fragment of a reply is translated as a whole
/// reply is and remembered. Anything else meets the networks' policy, as in
/// `container_ingress6`.
#[inline(always)]
pub fn container_reply(ctx: &TcContext) -> (i32, Stat) {
    let len = ctx.len() as usize;
    let want = if len < ERROR_HEADERS {
        len
    } else {
        ERROR_HEADERS
    };
    if ctx.data_end() - ctx.data() < want {
        // A failed pull leaves the quote where it is, and the parser finds no error.
        let _ = ctx.pull_data(want as u32);
    }
    // One inlined copy of the policy for every kind of packet: the stack is nearly full.
    let (ip, l4) = match parse_ipv6(&TcFrame(ctx), len) {
        Ok(Parsed6::Fragment(ip)) => match frag6::container_following(ctx, &ip) {
            Some(verdict) => return verdict,
            None => (ip, None),
        },
        Ok(Parsed6::OtherProtocol(ip)) => match icmp6::container_error(ctx, &ip) {
            Some(verdict) => return verdict,
            None => (ip, None),
        },
        Ok(Parsed6::Transport(ip, l4)) => {
            let remember =
                |nat: &NatFlow6| frag6::remember_routed(&ip, &nat.frontend_ip, &nat.client_ip);
            match reply(ctx, &ip, &l4, remember) {
                Some(verdict) => return verdict,
                None => (ip, Some(l4)),
            }
        }
        // `container_ingress6` parsed it: only a pull gone wrong gets here.
        _ => return (TC_ACT_SHOT, Stat::ContainerDropMalformed),
    };
    // Neither neighbour discovery nor echo requests come here: `container_ingress` judges
    // them, which keeps their checks out of this program's nearly full stack; nor is a
    // first fragment's routed flow remembered here, for the same reason (its datagrams
    // that follow unfragmented remember it).
    policy(ctx, &ip, l4.as_ref(), Icmp6Kind::Other, false)
}

/// What `container_ingress` found a packet that is neither TCP nor UDP to be, for the
/// policy.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Icmp6Kind {
    /// A neighbour solicitation or advertisement ([`neighbour_discovery`]).
    NeighbourDiscovery,
    /// An ICMPv6 echo request, masqueraded as TCP and UDP are.
    EchoRequest,
    /// Anything else (TCP and UDP too).
    Other,
}

/// Whether an ICMPv6 packet is a neighbour solicitation or advertisement (RFC 4861: hop
/// limit 255, never fragmented). They go to a neighbour's own address too (an
/// advertisement answers a solicitation at its source, a reachability probe is unicast),
/// and are never refused by the networks' policy: without them two containers of an
/// `icc=false` network could not reach each other where a `--link` allows it. The
/// iptables dataplane lets them through `icc=false` as well.
#[inline(always)]
fn neighbour_discovery(ctx: &TcContext, ip: &Ipv6) -> bool {
    const NEIGHBOUR_SOLICITATION: u8 = 135;
    const NEIGHBOUR_ADVERTISEMENT: u8 = 136;
    if ip.protocol != IPPROTO_ICMPV6 || ip.hop_limit != 255 || ip.frag != 0 {
        return false;
    }
    // Type and code together: a one-byte load's bounds check is compiled into a form
    // the verifier does not learn the packet's range from.
    let header: Option<[u8; 2]> = TcFrame(ctx).load(ip.l4_offset());
    matches!(
        header,
        Some([NEIGHBOUR_SOLICITATION | NEIGHBOUR_ADVERTISEMENT, _])
    )
}

/// What the networks' policy says of a container's IPv6 packet that is not part of a
/// translated flow, as policy.rs's `classify` does for IPv4: the node (its addresses,
/// multicast) and neighbour discovery (link-local ICMPv6, and the solicitations and
/// advertisements to any address that `container_ingress` found) pass, the sender's own
/// network as `icc` says, other networks never, the outside unless the network is
/// internal: TCP and UDP (`l4`) and ICMPv6 echo requests (`icmp`) masqueraded when the network's
/// IPv6 masquerades (masquerade6.rs), the rest routed with the container's own address,
/// as IPv4's: their flows remembered in `ROUTED_FLOWS6` when `remember_routed`, so that
/// their replies pass the uplink's direct-access check (a masqueraded network's replies of
/// flows the outside opened directly are told apart in masquerade6.rs). With `icc=false`
/// TCP and UDP between containers meet the `--link` allow-list and its tracked flows
/// (link6.rs); the rest is refused.
#[inline(always)]
fn policy(
    ctx: &TcContext,
    ip: &Ipv6,
    l4: Option<&L4>,
    icmp: Icmp6Kind,
    remember_routed: bool,
) -> (i32, Stat) {
    let Some(source) = NETWORKS6.get(&Key::new(128, NetworkKey6 { addr: ip.src })) else {
        return (TC_ACT_OK, Stat::ContainerPassIpv6);
    };
    let multicast = ip.dst[0] == 0xff;
    let link_local = ip.dst[0] == 0xfe && ip.dst[1] & 0xc0 == 0x80;
    // SAFETY: only checking presence.
    let node = unsafe { NODE_ADDRS6.get(&NodeAddrKey6 { addr: ip.dst }) }.is_some();
    let on_link =
        icmp == Icmp6Kind::NeighbourDiscovery || (link_local && ip.protocol == IPPROTO_ICMPV6);
    if multicast || node || on_link {
        return (TC_ACT_OK, Stat::ContainerPassToNode);
    }
    // Another link-local address is on the same bridge, whatever the subnets say.
    let same_network = match link_local {
        true => Some(true),
        false => NETWORKS6
            .get(&Key::new(128, NetworkKey6 { addr: ip.dst }))
            .map(|dest| dest.index == source.index),
    };
    match same_network {
        Some(true) if source.flags & NETWORK_ICC != 0 => {
            (TC_ACT_OK, Stat::ContainerPassSameNetwork)
        }
        Some(true) => match l4 {
            Some(_) => hand_over_container6(ctx, CONTAINER6_LINK_SLOT),
            None => (TC_ACT_SHOT, Stat::ContainerDropPolicyIcc),
        },
        Some(false) => (TC_ACT_SHOT, Stat::ContainerDropIsolation),
        None if source.flags & NETWORK_INTERNAL != 0 => (TC_ACT_SHOT, Stat::ContainerDropInternal),
        // Its replies may come back where direct access is otherwise closed.
        None if source.flags & NETWORK_MASQUERADE == 0 => {
            if remember_routed && let Some(l4) = l4 {
                policy::note_routed_flow6(ip, l4);
            }
            (TC_ACT_OK, Stat::ContainerPassOutside)
        }
        None if l4.is_some() || icmp == Icmp6Kind::EchoRequest => {
            hand_over_container6(ctx, CONTAINER6_MASQUERADE_SLOT)
        }
        // A later fragment of a datagram masquerade would have translated, but whose first
        // fragment it did not (refused), would leave with the container's own address.
        None if ip.fragment_offset() != 0 && frag6::is_translated_protocol(ip) => {
            (TC_ACT_SHOT, Stat::ContainerDropFragmentUntracked)
        }
        None => (TC_ACT_OK, Stat::ContainerPassOutside),
    }
}
