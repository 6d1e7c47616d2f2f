//! Masquerade with connection tracking: a container's TCP/UDP/ICMP-echo flow to the
//! outside leaves with the address of the interface the route picks (MASQUERADE_SOURCES)
//! and a source port picked as netfilter's
//! MASQUERADE picks it; its replies are translated back on the uplink. Each flow has two
//! entries in CONNTRACK (one per direction, see flowtable.rs). The same table tracks the
//! flows that `--link` lets through `icc=false`, with logic that IPv6's links share
//! (`linked_flow`, over CONNTRACK6 in link6.rs).

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT, bpf_sock_tuple},
    helpers::{
        bpf_get_prandom_u32, bpf_ktime_get_ns, bpf_sk_lookup_tcp, bpf_sk_lookup_udp, bpf_sk_release,
    },
    programs::TcContext,
};
use dataplane_common::{
    CT_CLOSING, CT_ESTABLISHED, CT_NEW, CT_ORIGINAL, CT_REPLIED, CT_REPLY, CtEntry, CtKey,
    EndpointInfo, EndpointKey, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, LinkKey, NodeConfig,
    ct::{TrackedEntry as _, TrackedKey as _},
    parse::{IPV4_SRC_OFF, Ipv4, L4, L4_SPORT_OFF},
    stats::Stat,
};

use crate::{
    fib,
    flowtable::{self, Conntrack, CtEntryOf, CtTable, InsertError},
    frag,
    frame::{Action, Packet},
    maps::{CONNTRACK, ENDPOINTS, LINKS, MASQUERADE_SOURCES, NODE_CONFIG},
    policy,
    rewrite::{self, Target},
};

/// Ports tried for a new flow (after the container's own) before it is refused as
/// exhausted. Random probes, as the kernel makes: with a range half full, 32 tries all
/// failing has odds of 2^-32.
pub(crate) const PORT_TRIES: u32 = 32;
const TCP_FIN: u8 = 0x01;
const TCP_RST: u8 = 0x04;

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

/// What a packet does to its flow.
#[derive(PartialEq, Eq)]
pub(crate) enum Seen {
    /// Nothing but the flow's last-seen time.
    Packet,
    /// Moves the flow to this state (both entries).
    State(u8),
    /// A TCP reset: the flow ends once this packet is through.
    Reset,
}

/// What a packet in `direction` does to a flow in `state` (nf_conntrack's view, without
/// the sequence windows): a reply answers a new flow (TCP: the opener's ACK of it
/// completes the handshake), a FIN closes, a RST ends, and a SYN from the original side
/// takes a closing flow over as a new one (TIME_WAIT reuse). Both families' (`protocol`).
#[inline(always)]
pub(crate) fn seen(state: u8, direction: u8, protocol: u8, l4: &L4) -> Seen {
    if protocol == IPPROTO_TCP {
        if l4.tcp_flags & TCP_RST != 0 {
            return Seen::Reset;
        }
        if l4.tcp_flags & TCP_FIN != 0 {
            return match state {
                CT_CLOSING => Seen::Packet,
                _ => Seen::State(CT_CLOSING),
            };
        }
        if state == CT_CLOSING && direction == CT_ORIGINAL && l4.is_tcp_syn() {
            return Seen::State(CT_NEW);
        }
    }
    match (state, direction) {
        // TCP waits for the opener's ACK of the SYN-ACK: a SYN never acknowledged stays
        // evictable.
        (CT_NEW, CT_REPLY) if protocol == IPPROTO_TCP => Seen::State(CT_REPLIED),
        (CT_NEW, CT_REPLY) => Seen::State(CT_ESTABLISHED),
        (CT_REPLIED, CT_ORIGINAL) if !l4.is_tcp_syn() => Seen::State(CT_ESTABLISHED),
        _ => Seen::Packet,
    }
}

/// Refreshes the flow of `entry` (at `key`) for a packet; returns a copy of the entry and
/// what the packet did.
#[inline(always)]
fn touch(key: &CtKey, entry: *mut CtEntry, ip: &Ipv4, l4: &L4) -> (CtEntry, Seen) {
    let what = touch_flow::<Conntrack>(key, entry, ip.protocol, l4);
    // SAFETY: a pointer to a live map value of plain data.
    (unsafe { *entry }, what)
}

/// Refreshes the flow of table `T` whose entry `key` found (at `entry`) for a packet of
/// `protocol` (the parsed header's, which the verifier knows more of than `key`'s copy),
/// and returns what the packet did to the flow.
#[inline(always)]
fn touch_flow<T: CtTable>(key: &T::Key, entry: *mut CtEntryOf<T>, protocol: u8, l4: &L4) -> Seen {
    // SAFETY: a pointer to a live map value; fields are plain data.
    let (state, direction) = unsafe {
        (*entry).set_last_seen(now_ns());
        ((*entry).state(), (*entry).direction())
    };
    let what = seen(state, direction, protocol, l4);
    if let Seen::State(next) = what {
        flowtable::ct_set_state::<T>(key, entry, next);
    }
    what
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

/// Masquerades a container's TCP or UDP packet (or ICMP echo request) to the outside and
/// forwards it.
#[inline(always)]
pub fn masquerade(ctx: &TcContext, ip: &Ipv4, l4: &L4) -> (i32, Stat) {
    let Some(config) = NODE_CONFIG.get(0).copied() else {
        return (TC_ACT_OK, Stat::ContainerPassOutside);
    };
    if config.masquerade_port_max < config.masquerade_port_min {
        return (TC_ACT_OK, Stat::ContainerPassOutside);
    }
    if ip.ttl <= 1 {
        return (TC_ACT_SHOT, Stat::ContainerDropTtlExpired);
    }
    let key = key_of(ip, l4);
    let (entry, what) = match CONNTRACK.get_ptr_mut(&key) {
        Some(entry) => touch(&key, entry, ip, l4),
        // Only a SYN opens a TCP flow. A segment from a published container port answers
        // a connection the outside opened to the container's own address: routed as it
        // is. Any other belongs to a flow forgotten (evicted while closing, or expired):
        // dropped rather than sent out with the container's private address.
        None if ip.protocol == IPPROTO_TCP && !l4.is_tcp_syn() => {
            if policy::is_published_backend(ip.src_be, l4.sport_be, ip.protocol) {
                return (TC_ACT_OK, Stat::ContainerPassOutside);
            }
            return (TC_ACT_SHOT, Stat::ContainerDropUntracked);
        }
        None => match open_flow(ctx, ip, l4, &key, &config) {
            Ok(entry) => (entry, Seen::Packet),
            Err(stat) => return (TC_ACT_SHOT, stat),
        },
    };
    let rewritten = rewrite::decrement_ttl(ctx, ip)
        .and_then(|()| {
            rewrite::rewrite_address(ctx, ip, l4, IPV4_SRC_OFF, ip.src_be, entry.nat_ip_be)
        })
        .and_then(|()| {
            rewrite::rewrite_port(
                ctx,
                ip,
                l4,
                rewrite::port_field(ip, L4_SPORT_OFF),
                l4.sport_be,
                entry.nat_port_be,
            )
        });
    if what == Seen::Reset {
        flowtable::ct_remove::<Conntrack>(&key, &entry);
    }
    if rewritten.is_err() {
        return (TC_ACT_SHOT, Stat::ContainerDropRewriteFailed);
    }
    let stats = (
        Stat::ContainerRedirectMasquerade,
        Stat::ContainerRedirectMasqueradeNeigh,
    );
    fib::forward(ctx, ip, l4, entry.nat_ip_be, ip.dst_be, stats)
}

/// The source ports a new flow may leave with: `(first, count)`. The configured range,
/// else the kernel's range for the class of the container's own port (an echo
/// identifier's: any; `icmp`, ICMP's or ICMPv6's echo).
#[inline(always)]
pub(crate) fn port_range(config: &NodeConfig, icmp: bool, sport: u16) -> (u32, u32) {
    if config.masquerade_port_max != 0 {
        // At least one port: the verifier must see that the modulo cannot divide by zero
        // (the caller has checked that max >= min).
        let span = config
            .masquerade_port_max
            .wrapping_sub(config.masquerade_port_min);
        return (u32::from(config.masquerade_port_min), u32::from(span) + 1);
    }
    if icmp {
        return (0, 65536);
    }
    match sport {
        0..512 => (1, 511),
        512..1024 => (600, 424),
        _ => (1024, 64512),
    }
}

/// Picks a source port for a new flow and records both directions. The container's own
/// port when its reply tuple is free (so that most flows keep their port, as with
/// netfilter); else random probes of the range. A taken tuple whose flow is closing goes
/// to a new TCP connection (TIME_WAIT reuse); one held by a node socket is never taken. A
/// full table evicts an unanswered flow and the port found is tried once more.
#[inline(always)]
fn open_flow(
    ctx: &TcContext,
    ip: &Ipv4,
    l4: &L4,
    key: &CtKey,
    config: &NodeConfig,
) -> Result<CtEntry, Stat> {
    // SAFETY: plain data copied out at once.
    let Some(endpoint) = (unsafe { ENDPOINTS.get(&EndpointKey { ip_be: ip.src_be }) }).copied()
    else {
        return Err(Stat::ContainerDropNoEndpoint);
    };
    // The source is the address of the interface the route picks, as MASQUERADE's; an
    // interface without an IPv4 address masquerades nothing (MASQUERADE drops too).
    let egress = fib::egress_ifindex(ctx, ip, l4).ok_or(Stat::ContainerDropNoRoute)?;
    // SAFETY: plain data copied out at once.
    let nat_ip_be = unsafe { MASQUERADE_SOURCES.get(&egress) }
        .copied()
        .ok_or(Stat::ContainerDropNoMasqueradeSource)?;
    let flow = NewFlow {
        ip,
        l4,
        key,
        nat_ip_be,
        endpoint: &endpoint,
        now: now_ns(),
    };
    let sport = u16::from_be(l4.sport_be);
    let (first, count) = port_range(config, ip.protocol == IPPROTO_ICMP, sport);
    let own = u32::from(sport);
    let mut full_at = None;
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
        let port_be = (port as u16).to_be();
        let reply_key = flow.reply_key(port_be);
        // SAFETY: plain data copied out at once.
        if let Some(taken) = unsafe { CONNTRACK.get(&reply_key) }.copied() {
            if !(l4.is_tcp_syn() && taken.state == CT_CLOSING) {
                continue;
            }
            flowtable::ct_remove::<Conntrack>(&reply_key, &taken);
        }
        if node_socket_uses(ctx, ip, l4, nat_ip_be, port_be) {
            continue;
        }
        match flow.record(port_be) {
            Ok(entry) => return Ok(entry),
            // Taken meanwhile (another CPU): try another port.
            Err(InsertError::Exists) => continue,
            Err(InsertError::Full) => {
                full_at = Some(port_be);
                break;
            }
        }
    }
    let Some(port_be) = full_at else {
        return Err(Stat::ContainerDropNatExhausted);
    };
    if !flowtable::ct_make_room::<Conntrack>() {
        return Err(Stat::ContainerDropConntrackFull);
    }
    flow.record(port_be)
        .map_err(|_| Stat::ContainerDropConntrackFull)
}

/// A container's flow on its way out, before its source port is chosen.
struct NewFlow<'a> {
    ip: &'a Ipv4,
    l4: &'a L4,
    key: &'a CtKey,
    nat_ip_be: u32,
    endpoint: &'a EndpointInfo,
    now: u64,
}

impl NewFlow<'_> {
    /// How replies come back when the flow leaves from `port_be`.
    #[inline(always)]
    fn reply_key(&self, port_be: u16) -> CtKey {
        CtKey {
            src_ip_be: self.ip.dst_be,
            dst_ip_be: self.nat_ip_be,
            sport_be: self.l4.dport_be,
            dport_be: port_be,
            proto: self.ip.protocol,
            _pad: [0; 3],
        }
    }

    /// Records both directions with source port `port_be`; returns the original entry.
    #[inline(always)]
    fn record(&self, port_be: u16) -> Result<CtEntry, InsertError> {
        let reply = CtEntry {
            nat_ip_be: self.ip.src_be,
            nat_port_be: self.l4.sport_be,
            direction: CT_REPLY,
            state: CT_NEW,
            last_seen_ns: self.now,
            host_veth_ifindex: self.endpoint.host_veth_ifindex,
            container_mac: self.endpoint.container_mac,
            host_veth_mac: self.endpoint.host_veth_mac,
        };
        let original = CtEntry {
            nat_ip_be: self.nat_ip_be,
            nat_port_be: port_be,
            direction: CT_ORIGINAL,
            state: CT_NEW,
            last_seen_ns: self.now,
            ..CtEntry::default()
        };
        flowtable::ct_insert::<Conntrack>(self.key, &original, &self.reply_key(port_be), &reply)?;
        crate::events::new_flow(
            Stat::ContainerRedirectMasquerade,
            self.ip.protocol,
            self.ip.src_be,
            self.ip.dst_be,
            self.l4.sport_be,
            self.l4.dport_be,
        );
        Ok(original)
    }
}

/// On the uplink: a reply of a masqueraded flow goes back to the container. `None`: not
/// one of ours.
#[inline(always)]
pub fn masquerade_reply<P: Packet>(packet: &P, ip: &Ipv4, l4: &L4) -> Option<(Action, Stat)> {
    let key = key_of(ip, l4);
    let entry = CONNTRACK.get_ptr_mut(&key)?;
    // SAFETY: a pointer to a live map value of plain data.
    if unsafe { (*entry).direction } != CT_REPLY {
        return None;
    }
    if ip.ttl <= 1 {
        return Some((Action::Drop, Stat::UplinkDropTtlExpired));
    }
    let (entry, what) = touch(&key, entry, ip, l4);
    if what == Seen::Reset {
        flowtable::ct_remove::<Conntrack>(&key, &entry);
    }
    let to = Target {
        ip_be: entry.nat_ip_be,
        port_be: entry.nat_port_be,
        dst_mac: entry.container_mac,
        src_mac: entry.host_veth_mac,
    };
    if rewrite::to_target(packet, ip, l4, &to).is_none() {
        return Some((Action::Drop, Stat::UplinkDropMalformed));
    }
    frag::remember(
        ip,
        ip.src_be,
        entry.nat_ip_be,
        entry.host_veth_ifindex,
        entry.container_mac,
        entry.host_veth_mac,
    );
    Some((
        Action::Redirect(entry.host_veth_ifindex),
        Stat::UplinkRedirectMasqueradeReply,
    ))
}

/// `icc=false` with `--link`: a packet between two containers passes when it belongs to a
/// tracked flow (a reply, or more of a flow the link allowed), or when a link allows it,
/// which starts tracking it. A source port is no proof of a reply; the table is.
#[inline(always)]
pub fn linked(ip: &Ipv4, l4: &L4) -> (i32, Stat) {
    let key = key_of(ip, l4);
    let allowed = || {
        let link = LinkKey {
            src_ip_be: ip.src_be,
            dst_ip_be: ip.dst_be,
            dport_be: l4.dport_be,
            proto: ip.protocol,
            _pad: 0,
        };
        // SAFETY: only checking presence.
        unsafe { LINKS.get(&link) }.is_some()
    };
    let open = || {
        // No translation: both entries' "nat" address is the client's own, which keeps the
        // pair findable from either entry like a masqueraded one.
        let original = CtEntry {
            nat_ip_be: ip.src_be,
            nat_port_be: l4.sport_be,
            direction: CT_ORIGINAL,
            last_seen_ns: now_ns(),
            ..CtEntry::default()
        };
        let reply = CtEntry {
            direction: CT_REPLY,
            ..original
        };
        let reply_key = key.peer(&original);
        flowtable::ct_insert::<Conntrack>(&key, &original, &reply_key, &reply)
    };
    let opened = || {
        crate::events::new_flow(
            Stat::ContainerPassLink,
            ip.protocol,
            ip.src_be,
            ip.dst_be,
            l4.sport_be,
            l4.dport_be,
        )
    };
    linked_flow::<Conntrack>(&key, ip.protocol, l4, allowed, open, opened)
}

/// [`linked`] for the flows of table `T` (either family): a packet of `protocol` whose
/// `key` the table holds refreshes its flow and passes; else one that `allowed` (the
/// family's link allow-list) lets through and that may open a flow (a TCP SYN, any UDP
/// datagram) passes once `open` has recorded both entries of its flow, untranslated, and
/// `opened` has told of it; anything else is refused as `icc=false` refuses it.
#[inline(always)]
pub(crate) fn linked_flow<T: CtTable>(
    key: &T::Key,
    protocol: u8,
    l4: &L4,
    allowed: impl FnOnce() -> bool,
    open: impl Fn() -> Result<(), InsertError>,
    opened: impl FnOnce(),
) -> (i32, Stat) {
    if let Some(entry) = T::table().get_ptr_mut(key) {
        if touch_flow::<T>(key, entry, protocol, l4) == Seen::Reset {
            // SAFETY: a pointer to a live map value of plain data, read before it goes.
            flowtable::ct_remove::<T>(key, unsafe { &*entry });
        }
        return (TC_ACT_OK, Stat::ContainerPassTracked);
    }
    if !allowed() {
        return (TC_ACT_SHOT, Stat::ContainerDropPolicyIcc);
    }
    // Only a TCP SYN (or any UDP datagram) opens a flow.
    if protocol == IPPROTO_TCP && !l4.is_tcp_syn() {
        return (TC_ACT_SHOT, Stat::ContainerDropPolicyIcc);
    }
    let mut recorded = open();
    if matches!(recorded, Err(InsertError::Full)) && flowtable::ct_make_room::<T>() {
        recorded = open();
    }
    match recorded {
        Ok(()) => {}
        // Opened meanwhile on another CPU: the flow is tracked.
        Err(InsertError::Exists) => return (TC_ACT_OK, Stat::ContainerPassTracked),
        Err(InsertError::Full) => return (TC_ACT_SHOT, Stat::ContainerDropConntrackFull),
    }
    opened();
    (TC_ACT_OK, Stat::ContainerPassLink)
}
