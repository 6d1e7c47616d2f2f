//! IPv6 masquerade, as Docker 27 does it with ip6tables: a container's TCP or UDP flow or
//! ICMPv6 echo (by identifier, as IPv4's pings) to the outside of a masquerading network
//! leaves with the IPv6 address of the interface the route picks (MASQUERADE_SOURCES6) and
//! a source port picked as conntrack.rs picks IPv4's (the container's own when free, else
//! random probes of the same range, never one a node socket holds); its replies, and the
//! ICMPv6 errors about it, go straight back to the container's veth from the uplink.
//! Flows live in CONNTRACK6, a second [`CtTable`](crate::flowtable::CtTable) with IPv4's
//! states, early drop and idle expiry.
//!
//! At a container's veth masquerade runs in a program of its own, `container_masquerade6`,
//! which `container_ingress6` reaches by tail call (through `CONTAINER6_PROGRAMS`), and
//! which parses the packet again: `container_ingress6` uses over 400 of its 512 bytes of
//! stack for parsing, published-port replies and policy, and the port
//! search with its socket lookups, FIB lookups and early drop needs more than the rest.
//! On the uplinks the replies and errors are translated in programs of their own as well
//! (`uplink_masquerade6`, `uplink_masquerade6_tc`, `uplink_masquerade6_l3`), reached from
//! the uplinks' IPv6 programs, which have no stack left for it. Keys and entries are built
//! in the per-CPU [`CONNTRACK6_SCRATCH`], never on the stack: with 16-byte addresses a
//! flow's two keys and two entries come to 176 bytes.

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    helpers::{bpf_get_prandom_u32, bpf_sk_lookup_tcp, bpf_sk_lookup_udp, bpf_sk_release},
    programs::TcContext,
};
use dataplane_common::{
    CT_CLOSING, CT_NEW, CT_ORIGINAL, CT_REPLY, CtEntry6, CtKey6, IPPROTO_ICMPV6, IPPROTO_TCP,
    IPPROTO_UDP, NodeConfig, PortTarget6,
    parse::{
        Frame, L4, Quoted,
        ipv6::{
            ICMPV6_DEST_UNREACH, ICMPV6_ECHO_REPLY, ICMPV6_PARAMETER_PROBLEM, Ipv6, Parsed6,
            icmp6_echo, parse_ipv6,
        },
    },
    stats::Stat,
};

use crate::{
    conntrack::{PORT_TRIES, Seen, port_range, seen},
    flowtable::{self, Conntrack6, InsertError},
    frag6,
    frame::{Action, Packet, TcFrame},
    icmp6, ipv6,
    maps::{CONNTRACK6, CONNTRACK6_SCRATCH, Conntrack6Record, MASQUERADE_SOURCES6, NODE_CONFIG},
    nat::now_ns,
    policy,
};

/// [`CONNTRACK6_SCRATCH`]'s slot for the containers' veths and for the uplinks.
const CONTAINER_SLOT: u32 = 0;
const UPLINK_SLOT: u32 = 1;

/// This CPU's scratch record for `slot` (of [`CONNTRACK6_SCRATCH`]), its key set to the
/// packet's tuple; link6.rs's too.
#[inline(always)]
pub(crate) fn record_for(slot: u32, ip: &Ipv6, l4: &L4) -> Option<&'static mut Conntrack6Record> {
    let record = CONNTRACK6_SCRATCH.get_ptr_mut(slot)?;
    // SAFETY: a map value of plain data, ours alone on this CPU while the program runs.
    let record = unsafe { &mut *record };
    // Field by field: a whole key built first would be built on the stack.
    let key = &mut record.key;
    key.src_ip = ip.src;
    key.dst_ip = ip.dst;
    key.sport_be = l4.sport_be;
    key.dport_be = l4.dport_be;
    key.proto = ip.protocol;
    key._pad = [0; 3];
    Some(record)
}

/// Refreshes the flow whose entry `key` found (at `entry`) for a packet, and returns what
/// the packet did to the flow.
#[inline(always)]
fn touch(key: &CtKey6, entry: *mut CtEntry6, l4: &L4) -> Seen {
    // SAFETY: a pointer to a live map value; fields are plain data.
    let (state, direction) = unsafe {
        (*entry).last_seen_ns = now_ns();
        ((*entry).state, (*entry).direction)
    };
    let what = seen(state, direction, key.proto, l4);
    if let Seen::State(next) = what {
        flowtable::ct_set_state::<Conntrack6>(key, entry, next);
    }
    what
}

/// `container_masquerade6`: masquerades the packet `container_ingress6` handed over (TCP,
/// UDP or an ICMPv6 echo request), parsed again (the verifier trusts offsets into the
/// packet only from its own bounds checks; `container_ingress6` has pulled the headers
/// into the linear area).
#[inline(always)]
pub fn container_masquerade(ctx: &TcContext) -> (i32, Stat) {
    let frame = TcFrame(ctx);
    let (ip, l4) = match parse_ipv6(&frame, ctx.len() as usize) {
        Ok(Parsed6::Transport(ip, l4)) => (ip, l4),
        Ok(Parsed6::OtherProtocol(ip)) => match icmp6_echo(&frame, &ip, true) {
            Some(echo) => (ip, echo),
            None => return (TC_ACT_SHOT, Stat::ContainerDropMalformed),
        },
        _ => return (TC_ACT_SHOT, Stat::ContainerDropMalformed),
    };
    masquerade(ctx, &ip, &l4)
}

/// Masquerades a container's TCP or UDP packet or ICMPv6 echo request (its identifier
/// taking the source port's place, as IPv4's pings) to the outside and forwards it by the
/// FIB.
/// Its addresses are read from `record.key` once it is made, never from `ip`: kept in
/// registers across the helper calls, their 32 bytes would be spilled one by one.
#[inline(always)]
fn masquerade(ctx: &TcContext, ip: &Ipv6, l4: &L4) -> (i32, Stat) {
    // A flow the outside opened to the container's own address (gateway modes, trusted
    // interfaces) is answered from that address. Checked here, not before the hand-over
    // as IPv4's is: `container_ingress6` and `container_reply6` have no stack left for it.
    if ip.protocol != IPPROTO_ICMPV6 && policy::is_direct_reply6(ip, l4) {
        return (TC_ACT_OK, Stat::ContainerPassOutside);
    }
    let Some(config) = NODE_CONFIG.get(0) else {
        return (TC_ACT_OK, Stat::ContainerPassOutside);
    };
    if config.masquerade_port_max < config.masquerade_port_min {
        return (TC_ACT_OK, Stat::ContainerPassOutside);
    }
    if ip.protocol == IPPROTO_UDP && l4.check == 0 {
        return (TC_ACT_SHOT, Stat::ContainerDropUdpZeroChecksum);
    }
    if ip.hop_limit <= 1 {
        return (TC_ACT_SHOT, Stat::ContainerDropTtlExpired);
    }
    let Some(record) = record_for(CONTAINER_SLOT, ip, l4) else {
        return (TC_ACT_SHOT, Stat::ContainerDropRewriteFailed);
    };
    let what = match CONNTRACK6.get_ptr_mut(&record.key) {
        Some(entry) => {
            let what = touch(&record.key, entry, l4);
            // SAFETY: a pointer to a live map value of plain data.
            record.original = unsafe { *entry };
            what
        }
        // Only a SYN opens a TCP flow. A segment from a published container port answers
        // a connection the outside opened to the container's own address (its flow
        // evicted from ROUTED_FLOWS6): routed as it is, as IPv4's. Any other belongs to a
        // flow forgotten (evicted while closing, or expired): dropped rather than sent
        // out with the container's own address, as IPv4's are.
        None if ip.protocol == IPPROTO_TCP && !l4.is_tcp_syn() => {
            if policy::from_published_backend6(ip, l4) {
                return (TC_ACT_OK, Stat::ContainerPassOutside);
            }
            return (TC_ACT_SHOT, Stat::ContainerDropUntracked);
        }
        None => match open_flow(ctx, ip, l4, record, config) {
            Ok(()) => {
                crate::events::new_flow6(
                    Stat::ContainerRedirectMasquerade,
                    record.key.proto,
                    &record.key.src_ip,
                    &record.key.dst_ip,
                    crate::events::ports(record.key.sport_be, record.key.dport_be),
                );
                Seen::Packet
            }
            Err(stat) => return (TC_ACT_SHOT, stat),
        },
    };
    let rewritten = ipv6::rewrite_source(
        ctx,
        ip,
        l4,
        &record.key.src_ip,
        &record.original.nat_ip,
        record.original.nat_port_be,
    );
    if what == Seen::Reset {
        flowtable::ct_remove::<Conntrack6>(&record.key, &record.original);
    }
    if rewritten.is_err() {
        return (TC_ACT_SHOT, Stat::ContainerDropRewriteFailed);
    }
    // The fragments that follow a first fragment leave the same way (frag6.rs): routed.
    frag6::remember_routed(ip, &record.original.nat_ip, &record.key.dst_ip);
    let stats = (
        Stat::ContainerRedirectMasquerade,
        Stat::ContainerRedirectMasqueradeNeigh,
    );
    ipv6::forward(
        ctx,
        &record.original.nat_ip,
        &record.key.dst_ip,
        ip.protocol,
        stats,
    )
}

/// Picks a source port for a new flow and records both directions in `record` and
/// CONNTRACK6, as conntrack.rs's `open_flow` does for IPv4. The veth and MACs a reply is
/// handed over with are the frame's own (ENDPOINTS knows IPv4 addresses only): the veth
/// it came in by, the container's MAC as its source, the gateway's as its destination.
#[inline(always)]
fn open_flow(
    ctx: &TcContext,
    ip: &Ipv6,
    l4: &L4,
    record: &mut Conntrack6Record,
    config: &NodeConfig,
) -> Result<(), Stat> {
    let egress = ipv6::egress_ifindex(ctx, &record.key.src_ip, &record.key.dst_ip, ip.protocol)
        .ok_or(Stat::ContainerDropNoRoute)?;
    // SAFETY: plain data copied out at once.
    let Some(nat_ip) = (unsafe { MASQUERADE_SOURCES6.get(&egress) }) else {
        return Err(Stat::ContainerDropNoMasqueradeSource);
    };
    let frame = TcFrame(ctx);
    let (Some(gateway_mac), Some(container_mac)) = (frame.load(0), frame.load(6)) else {
        return Err(Stat::ContainerDropMalformed);
    };
    let now = now_ns();
    record.original.nat_ip = *nat_ip;
    record.original.direction = CT_ORIGINAL;
    record.original.state = CT_NEW;
    record.original.last_seen_ns = now;
    record.original.host_veth_ifindex = 0;
    record.original.container_mac = [0; 6];
    record.original.host_veth_mac = [0; 6];
    record.reply.nat_ip = record.key.src_ip;
    record.reply.nat_port_be = l4.sport_be;
    record.reply.direction = CT_REPLY;
    record.reply.state = CT_NEW;
    record.reply.last_seen_ns = now;
    // SAFETY: reading a field of the context the kernel handed us.
    record.reply.host_veth_ifindex = unsafe { (*ctx.skb.skb).ifindex };
    record.reply.container_mac = container_mac;
    record.reply.host_veth_mac = gateway_mac;
    record.reply_key.src_ip = record.key.dst_ip;
    record.reply_key.dst_ip = *nat_ip;
    record.reply_key.sport_be = l4.dport_be;
    record.reply_key.proto = ip.protocol;
    record.reply_key._pad = [0; 3];

    let sport = u16::from_be(l4.sport_be);
    let (first, count) = port_range(config, ip.protocol == IPPROTO_ICMPV6, sport);
    let own = u32::from(sport);
    let mut full = false;
    for i in 0..=PORT_TRIES {
        let port = if i == 0 {
            if own < first || own >= first + count {
                continue;
            }
            own
        } else {
            // SAFETY: plain helper call.
            first + unsafe { bpf_get_prandom_u32() } % count
        };
        match try_port(
            ctx,
            record,
            (port as u16).to_be(),
            l4.is_tcp_syn(),
            ip.protocol,
        ) {
            PortTried::Taken => continue,
            PortTried::Recorded => return Ok(()),
            PortTried::TableFull => {
                full = true;
                break;
            }
        }
    }
    if !full {
        return Err(Stat::ContainerDropNatExhausted);
    }
    if !flowtable::ct_make_room::<Conntrack6>() {
        return Err(Stat::ContainerDropConntrackFull);
    }
    insert(record).map_err(|_| Stat::ContainerDropConntrackFull)
}

/// What trying a source port for a new flow came to.
enum PortTried {
    /// Held by another flow or a node socket: try another.
    Taken,
    /// The flow is recorded with it.
    Recorded,
    /// The table is full of answered flows.
    TableFull,
}

/// Tries source port `port_be` for the new flow in `record`: free when no flow's replies
/// come to it (a closing one gives way to a TCP SYN, as TIME_WAIT reuse) and no node
/// socket takes them (an echo identifier is no socket's port, as for IPv4's pings). A BPF
/// subprogram rather than inlined: the port search's loop is unrolled, and each copy of
/// this body would keep its values in stack slots of its own, past 512 bytes.
#[inline(never)]
fn try_port(
    ctx: &TcContext,
    record: &mut Conntrack6Record,
    port_be: u16,
    syn: bool,
    protocol: u8,
) -> PortTried {
    record.reply_key.dport_be = port_be;
    // SAFETY: reading a live map value's state.
    if let Some(taken) = unsafe { CONNTRACK6.get(&record.reply_key) } {
        if !(syn && taken.state == CT_CLOSING) {
            return PortTried::Taken;
        }
        flowtable::ct_remove::<Conntrack6>(&record.reply_key, taken);
    }
    if protocol != IPPROTO_ICMPV6 && node_socket_uses(ctx, protocol, record) {
        return PortTried::Taken;
    }
    record.original.nat_port_be = port_be;
    match insert(record) {
        Ok(()) => PortTried::Recorded,
        // Taken meanwhile (another CPU).
        Err(InsertError::Exists) => PortTried::Taken,
        Err(InsertError::Full) => PortTried::TableFull,
    }
}

/// Records both entries of the flow in `record`.
#[inline(always)]
fn insert(record: &Conntrack6Record) -> Result<(), InsertError> {
    flowtable::ct_insert::<Conntrack6>(
        &record.key,
        &record.original,
        &record.reply_key,
        &record.reply,
    )
}

/// Whether a socket of the node would take the replies `record.reply_key` names (packets
/// from the flow's remote end to the masquerade source and the port being tried), so the
/// port must not be handed out. The lookup's tuple is built in `record` too.
#[inline(always)]
fn node_socket_uses(ctx: &TcContext, protocol: u8, record: &mut Conntrack6Record) -> bool {
    let reply = &record.reply_key;
    let tuple = &mut record.socket;
    // Writing plain data into a union member; the rest of the tuple is unused.
    tuple.__bindgen_anon_1.ipv6.saddr = ipv6::words(&reply.src_ip);
    tuple.__bindgen_anon_1.ipv6.daddr = ipv6::words(&reply.dst_ip);
    tuple.__bindgen_anon_1.ipv6.sport = reply.sport_be;
    tuple.__bindgen_anon_1.ipv6.dport = reply.dport_be;
    let size = (16 * 2 + 2 * 2) as u32;
    let current_netns = u64::from(u32::MAX);
    // SAFETY: helper calls with a correctly sized tuple; a socket found is released.
    unsafe {
        let sk = if protocol == IPPROTO_UDP {
            bpf_sk_lookup_udp(ctx.skb.skb.cast(), tuple, size, current_netns, 0)
        } else {
            bpf_sk_lookup_tcp(ctx.skb.skb.cast(), tuple, size, current_netns, 0)
        };
        if sk.is_null() {
            return false;
        }
        bpf_sk_release(sk.cast());
        true
    }
}

/// Whether a packet on the uplink (TCP, UDP, an ICMPv6 echo reply) is a reply of a
/// masqueraded flow. A BPF subprogram: inlined, its reads of the parsed headers change how
/// the uplinks' IPv6 programs are compiled enough for the verifier to refuse them (a
/// pointer spilled in part).
#[inline(never)]
pub(crate) fn is_reply(ip: &Ipv6, l4: &L4) -> bool {
    let Some(record) = record_for(UPLINK_SLOT, ip, l4) else {
        return false;
    };
    // SAFETY: only reading the direction of a live map value.
    unsafe { CONNTRACK6.get(&record.key) }.is_some_and(|entry| entry.direction == CT_REPLY)
}

/// Whether an ICMPv6 message on the uplink may answer a masqueraded flow: an echo reply
/// (or the first fragment of a large one, which has its identifier), or an error (which
/// may quote one of its packets). The masquerade program looks them up.
#[inline(always)]
pub(crate) fn may_answer<F: Frame>(frame: &F, ip: &Ipv6) -> bool {
    if ip.protocol != IPPROTO_ICMPV6 {
        return false;
    }
    // Type and code: a one-byte load's bounds check compiles to a form the verifier does
    // not follow (`data + offset >= data_end`).
    matches!(
        frame.load::<[u8; 2]>(ip.l4_offset()),
        Some([
            ICMPV6_DEST_UNREACH..=ICMPV6_PARAMETER_PROBLEM | ICMPV6_ECHO_REPLY,
            _
        ])
    )
}

/// `uplink_masquerade6` and its TC twins: translates the reply or echo reply of a
/// masqueraded flow, or the ICMPv6 error about one (icmp6.rs), that an uplink's IPv6
/// program handed over.
#[inline(always)]
pub fn uplink_masquerade<P: Packet>(packet: &P, len: usize) -> (Action, Stat) {
    // Parsed again, as in `container_masquerade`. A flow gone since the hand-over (on
    // another CPU), or an echo reply to the node's own ping, passes to the node's stack as
    // any unknown packet, unless it is addressed to a container Docker 28's direct-access
    // drop protects.
    let (ip, l4) = match parse_ipv6(packet, len) {
        Ok(Parsed6::Transport(ip, l4)) => (ip, l4),
        Ok(Parsed6::OtherProtocol(ip)) => match icmp6_echo(packet, &ip, false) {
            Some(echo) => (ip, echo),
            None => {
                return icmp6::uplink_error(packet, &ip, masqueraded_origin).unwrap_or_else(|| {
                    ipv6::unless_direct_access_refused(packet, &ip, None, Stat::UplinkPassNotTcpUdp)
                });
            }
        },
        _ => return (Action::Drop, Stat::UplinkDropMalformed),
    };
    // An echo reply's identifier stands for ports in CONNTRACK6, not in direct access.
    let (not_ours, ports) = match ip.protocol {
        IPPROTO_ICMPV6 => (Stat::UplinkPassNotTcpUdp, None),
        _ => (Stat::UplinkPassNotPublished, Some(&l4)),
    };
    reply(packet, &ip, &l4)
        .unwrap_or_else(|| ipv6::unless_direct_access_refused(packet, &ip, ports, not_ours))
}

/// A reply of a masqueraded IPv6 flow goes straight back to its container, its
/// destination address and port translated back. `None`: not one of ours.
#[inline(always)]
fn reply<P: Packet>(packet: &P, ip: &Ipv6, l4: &L4) -> Option<(Action, Stat)> {
    let record = record_for(UPLINK_SLOT, ip, l4)?;
    let entry = CONNTRACK6.get_ptr_mut(&record.key)?;
    // SAFETY: a pointer to a live map value of plain data.
    if unsafe { (*entry).direction } != CT_REPLY {
        return None;
    }
    if ip.protocol == IPPROTO_UDP && l4.check == 0 {
        return Some((Action::Drop, Stat::UplinkDropUdpZeroChecksum));
    }
    if ip.hop_limit <= 1 {
        return Some((Action::Drop, Stat::UplinkDropTtlExpired));
    }
    let what = touch(&record.key, entry, l4);
    // SAFETY: a pointer to a live map value of plain data, read before it may be removed.
    let reply = unsafe { &*entry };
    let to = &mut record.target;
    to.container_ip = reply.nat_ip;
    to.container_port_be = reply.nat_port_be;
    to.host_veth_ifindex = reply.host_veth_ifindex;
    to.container_mac = reply.container_mac;
    to.host_veth_mac = reply.host_veth_mac;
    if what == Seen::Reset {
        flowtable::ct_remove::<Conntrack6>(&record.key, reply);
    }
    if ipv6::to_target(packet, ip, l4, &record.target).is_none() {
        return Some((Action::Drop, Stat::UplinkDropMalformed));
    }
    remember_reply(ip, &record.target);
    Some((
        Action::Redirect(record.target.host_veth_ifindex),
        Stat::UplinkRedirectMasqueradeReply,
    ))
}

/// After a reply was translated to `to`: when it is a first fragment, the fragments that
/// follow go to the same veth (frag6.rs). A BPF subprogram: inlined, it takes the uplink
/// masquerade programs past 512 bytes of stack.
#[inline(never)]
fn remember_reply(ip: &Ipv6, to: &PortTarget6) {
    frag6::remember(
        ip,
        &ip.src,
        &to.container_ip,
        to.host_veth_ifindex,
        [&to.container_mac, &to.host_veth_mac],
    );
}

/// The container end of the masqueraded flow whose packet an ICMPv6 error on the uplink
/// quotes (the reply entry of what answers it: the quote's addresses and ports swapped),
/// for icmp6.rs to send the error back to, translated as ip6tables' NAT translates the
/// errors RELATED to a flow: a container's TCP learns the path MTU from a router's
/// "packet too big", its sockets see "connection refused". Built in this CPU's uplink
/// record.
#[inline(always)]
fn masqueraded_origin(q: &Quoted<[u8; 16]>) -> Option<&'static PortTarget6> {
    let record = CONNTRACK6_SCRATCH.get_ptr_mut(UPLINK_SLOT)?;
    // SAFETY: a map value of plain data, ours alone on this CPU while the program runs.
    let record = unsafe { &mut *record };
    let key = &mut record.key;
    key.src_ip = q.dst_be;
    key.dst_ip = q.src_be;
    key.sport_be = q.dport_be;
    key.dport_be = q.sport_be;
    key.proto = q.protocol;
    key._pad = [0; 3];
    // SAFETY: a live map value of plain data, read in place.
    let entry = unsafe { CONNTRACK6.get(&record.key) }?;
    // A flow that translates nothing (its container's own address) is no masquerade's.
    if entry.direction != CT_REPLY || entry.nat_ip == q.dst_be {
        return None;
    }
    let origin = &mut record.target;
    origin.container_ip = entry.nat_ip;
    origin.container_port_be = entry.nat_port_be;
    origin.host_veth_ifindex = entry.host_veth_ifindex;
    origin.container_mac = entry.container_mac;
    origin.host_veth_mac = entry.host_veth_mac;
    Some(origin)
}
