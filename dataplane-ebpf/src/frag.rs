//! Fragmented datagrams, both ways, for published ports and masquerade.
//!
//! Only the first fragment carries the transport header, so only it can be matched to a
//! flow: the parser hands it over like a whole packet and it is translated as one. Where it
//! is translated, its translation is remembered in `FRAGMENTS` under RFC 791's reassembly
//! key (source, destination, IP id, protocol), and the fragments that follow get the same
//! addresses, TTL and next hop. Their data needs no change: the transport checksum sits in
//! the first fragment and covers the whole datagram, so its incremental update for the
//! first fragment's new addresses and ports is all the datagram needs.
//!
//! A fragment that arrives before its first fragment finds nothing here:
//!
//! - On the uplink it passes to the node's stack, as every fragment did before (counted as
//!   `uplink_ingress.pass.fragment`). Without ports it cannot be told from the node's own
//!   traffic (a published port and a node socket share the node's address), and dropping
//!   it would break the node's own reordered datagrams. XDP and TC cannot hold a frame back, and
//!   nothing translates after the stack's reassembly, so for a translated flow that
//!   datagram is lost, as if the fragment had been lost on the way (the stack and the
//!   container each time out their half); the sender's next datagram, nearly always in
//!   order, goes through.
//! - At a container's veth it cannot happen by reordering (a container's stack sends a
//!   datagram's fragments in order over the veth): the first fragment was refused (table
//!   full, no port left). To the outside of a masquerading network the rest of a TCP, UDP
//!   or ICMP datagram is dropped, counted as `container_ingress.drop.fragment_untracked`,
//!   rather than leave with the container's own address; elsewhere, and for protocols that
//!   are never translated, the networks' policy decides as for any packet.

use aya_ebpf::{
    bindings::TC_ACT_SHOT,
    helpers::{bpf_ktime_get_ns, bpf_redirect},
    programs::TcContext,
};
use dataplane_common::{
    FRAGMENT_TIMEOUT_NS, FragmentEntry, FragmentKey, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP,
    parse::{ETH_HLEN, IPV4_CHECK_OFF, IPV4_DST_OFF, IPV4_SRC_OFF, IPV4_TTL_OFF, Ipv4, L4},
    stats::Stat,
};

use crate::{
    fib,
    frame::{Action, Packet},
    maps::FRAGMENTS,
    rewrite,
};

/// The protocols whose datagrams the flow modules translate (ICMP: echo), so whose
/// fragments must never leave untranslated.
#[inline(always)]
pub fn is_translated_protocol(ip: &Ipv4) -> bool {
    matches!(ip.protocol, IPPROTO_TCP | IPPROTO_UDP | IPPROTO_ICMP)
}

#[inline(always)]
fn now_ns() -> u64 {
    // SAFETY: plain helper call.
    unsafe { bpf_ktime_get_ns() }
}

#[inline(always)]
fn key_of(ip: &Ipv4) -> FragmentKey {
    FragmentKey {
        src_ip_be: ip.src_be,
        dst_ip_be: ip.dst_be,
        id_be: ip.id_be,
        proto: ip.protocol,
        _pad: 0,
    }
}

/// After a packet was translated to `src_be` → `dst_be`: when it is a first fragment,
/// remembers that for the fragments that follow, with the veth (`ifindex`) and MACs it was
/// handed to, or `ifindex` 0 when it was routed by a FIB lookup.
#[inline(always)]
pub fn remember(
    ip: &Ipv4,
    src_be: u32,
    dst_be: u32,
    ifindex: u32,
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
) {
    if !ip.is_first_fragment() {
        return;
    }
    let entry = FragmentEntry {
        src_ip_be: src_be,
        dst_ip_be: dst_be,
        ifindex,
        dst_mac,
        src_mac,
        first_seen_ns: now_ns(),
    };
    // An LRU map makes room by itself; an entry that still cannot be stored costs this
    // datagram's other fragments, which then go as unmatched ones.
    let _ = FRAGMENTS.insert(&key_of(ip), &entry, 0);
}

/// The translation of a fragment's datagram, while its receiver may still be reassembling
/// it: past that, the IP id may have come round to a new datagram.
#[inline(always)]
fn lookup(ip: &Ipv4) -> Option<FragmentEntry> {
    // SAFETY: plain data copied out at once.
    let entry = unsafe { FRAGMENTS.get(&key_of(ip)) }.copied()?;
    if now_ns().wrapping_sub(entry.first_seen_ns) > FRAGMENT_TIMEOUT_NS {
        return None;
    }
    Some(entry)
}

/// On the uplink: a fragment after the first, to a container when its first fragment was
/// translated there, else to the node's stack (see the module's notes).
#[inline(always)]
pub fn uplink_following<P: Packet>(packet: &P, ip: &Ipv4) -> (Action, Stat) {
    // Entries made at the containers' veths are routed ones (`ifindex` 0) and name another
    // direction; only a veth to hand the frame to will do here.
    let Some(entry) = lookup(ip).filter(|e| e.ifindex != 0) else {
        return (Action::Pass, Stat::UplinkPassFragment);
    };
    if ip.ttl <= 1 {
        return (Action::Drop, Stat::UplinkDropTtlExpired);
    }
    if rewrite_following(packet, ip, &entry).is_none() {
        return (Action::Drop, Stat::UplinkDropMalformed);
    }
    (
        Action::Redirect(entry.ifindex),
        Stat::UplinkRedirectFragment,
    )
}

/// The first fragment's addresses and MACs, the TTL down, the IPv4 checksum updated; the
/// payload is left alone.
#[inline(always)]
fn rewrite_following<P: Packet>(packet: &P, ip: &Ipv4, entry: &FragmentEntry) -> Option<()> {
    let (old_ttl, new_ttl) = rewrite::ttl_words(ip);
    let check = ETH_HLEN + IPV4_CHECK_OFF;
    packet.replace_l3(check, u32::from(old_ttl), u32::from(new_ttl), 2)?;
    packet.replace_l3(check, ip.src_be, entry.src_ip_be, 4)?;
    packet.replace_l3(check, ip.dst_be, entry.dst_ip_be, 4)?;
    packet.store(ETH_HLEN + IPV4_TTL_OFF, new_ttl)?;
    packet.store(ETH_HLEN + IPV4_SRC_OFF, entry.src_ip_be)?;
    packet.store(ETH_HLEN + IPV4_DST_OFF, entry.dst_ip_be)?;
    packet.store(0, entry.dst_mac)?;
    packet.store(6, entry.src_mac)
}

/// At a container's veth: a fragment after the first goes where its first fragment went.
/// `None`: no translation, and the networks' policy decides (see the module's notes).
#[inline(always)]
pub fn container_following(ctx: &TcContext, ip: &Ipv4) -> Option<(i32, Stat)> {
    let entry = lookup(ip)?;
    if ip.ttl <= 1 {
        return Some((TC_ACT_SHOT, Stat::ContainerDropTtlExpired));
    }
    let rewritten = rewrite::decrement_ttl(ctx, ip)
        .and_then(|()| set_address(ctx, IPV4_SRC_OFF, ip.src_be, entry.src_ip_be))
        .and_then(|()| set_address(ctx, IPV4_DST_OFF, ip.dst_be, entry.dst_ip_be));
    if rewritten.is_err() {
        return Some((TC_ACT_SHOT, Stat::ContainerDropRewriteFailed));
    }
    if entry.ifindex != 0 {
        if rewrite::set_macs(ctx, &entry.dst_mac, &entry.src_mac).is_err() {
            return Some((TC_ACT_SHOT, Stat::ContainerDropRewriteFailed));
        }
        // SAFETY: plain helper call.
        let verdict = unsafe { bpf_redirect(entry.ifindex, 0) } as i32;
        return Some((verdict, Stat::ContainerRedirectFragment));
    }
    // No ports here: the FIB lookup goes by addresses alone.
    let l4 = L4 {
        sport_be: 0,
        dport_be: 0,
        check_offset: 0,
        check: 0,
        tcp_flags: 0,
    };
    let stats = (
        Stat::ContainerRedirectFragment,
        Stat::ContainerRedirectFragmentNeigh,
    );
    Some(fib::forward(
        ctx,
        ip,
        &l4,
        entry.src_ip_be,
        entry.dst_ip_be,
        stats,
    ))
}

/// Rewrites an IPv4 address of a fragment with no transport header: the IPv4 checksum only.
#[inline(always)]
fn set_address(ctx: &TcContext, field: usize, old: u32, new: u32) -> Result<(), i64> {
    if old == new {
        return Ok(());
    }
    ctx.l3_csum_replace(ETH_HLEN + IPV4_CHECK_OFF, u64::from(old), u64::from(new), 4)?;
    ctx.store(ETH_HLEN + field, &new, 0)
}
