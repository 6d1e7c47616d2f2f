//! Fragmented IPv6 datagrams, as frag.rs does for IPv4: the first fragment carries the
//! transport header and is translated like a whole packet; its translation is kept in
//! `FRAGMENTS6` under RFC 8200's reassembly key (source, destination, identification),
//! and the fragments that follow get the same addresses, hop limit and next hop. Their
//! data needs no change (the transport checksum, in the first fragment, covers the whole
//! datagram) and IPv6 has no header checksum, so a following fragment's rewrite is plain
//! stores.
//!
//! Published-port flows and masquerade both remember their first fragments: on the
//! uplink with the container's veth and MACs (`uplink_ingress6` for a published port,
//! `uplink_masquerade6` for a masqueraded flow's reply), at a container's veth as routed
//! (no veth to hand to: the FIB picks the way out; `container_reply6` for a reply of a
//! published-port flow, `container_masquerade6` for a masqueraded packet), and the
//! fragments that follow go the same way.
//!
//! A fragment that arrives on the uplink before its first fragment passes to the node's
//! stack, for IPv4's reasons (frag.rs). At a container's veth one without a translation
//! meets the networks' policy, which drops it to the outside of a masquerading network
//! when its protocol is one masquerade translates (`container_ingress.drop.fragment_untracked`)
//! rather than let it leave with the container's own address, as frag.rs does for IPv4.

use aya_ebpf::{bindings::TC_ACT_SHOT, helpers::bpf_ktime_get_ns, programs::TcContext};
use dataplane_common::{
    FRAGMENT_TIMEOUT_NS, FragmentEntry6, FragmentKey6, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP,
    parse::{
        ETH_HLEN,
        ipv6::{IPV6_DST_OFF, IPV6_HOP_LIMIT_OFF, IPV6_SRC_OFF, Ipv6},
    },
    stats::Stat,
};

use crate::{
    frame::{Action, Packet, TcFrame},
    ipv6::forward,
    maps::{FRAGMENT6_SCRATCH, FRAGMENTS6},
};

/// The protocols whose datagrams masquerade translates (ICMPv6: echo), so whose fragments
/// must never leave untranslated, as frag.rs's for IPv4.
#[inline(always)]
pub fn is_translated_protocol(ip: &Ipv6) -> bool {
    matches!(ip.protocol, IPPROTO_TCP | IPPROTO_UDP | IPPROTO_ICMPV6)
}

#[inline(always)]
fn now_ns() -> u64 {
    // SAFETY: plain helper call.
    unsafe { bpf_ktime_get_ns() }
}

#[inline(always)]
fn key_of(ip: &Ipv6) -> FragmentKey6 {
    FragmentKey6 {
        src_ip: ip.src,
        dst_ip: ip.dst,
        id_be: ip.id_be,
    }
}

/// After a packet was translated to `src` → `dst`: when it is a first fragment, remembers
/// that for the fragments that follow, with the veth (`ifindex`) and MACs (`macs`:
/// destination, source) it was handed to, or `ifindex` 0 when it was routed by a FIB
/// lookup. Key and entry are built in a scratch map: the uplink program's stack has no
/// room for them.
#[inline(always)]
pub fn remember(ip: &Ipv6, src: &[u8; 16], dst: &[u8; 16], ifindex: u32, macs: [&[u8; 6]; 2]) {
    if !ip.is_first_fragment() {
        return;
    }
    let Some(record) = FRAGMENT6_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: a map value of the right type, ours alone on this CPU while the program runs.
    let record = unsafe { &mut *record };
    record.key.src_ip = ip.src;
    record.key.dst_ip = ip.dst;
    record.key.id_be = ip.id_be;
    record.entry.src_ip = *src;
    record.entry.dst_ip = *dst;
    record.entry.ifindex = ifindex;
    record.entry.dst_mac = *macs[0];
    record.entry.src_mac = *macs[1];
    record.entry.first_seen_ns = now_ns();
    // An LRU map makes room by itself; an entry that still cannot be stored costs this
    // datagram's other fragments, which then go as unmatched ones.
    let _ = FRAGMENTS6.insert(&record.key, &record.entry, 0);
}

/// No MACs to remember for a routed datagram: its fragments take the FIB's way out.
const ROUTED: [u8; 6] = [0; 6];

/// [`remember`] for a packet translated at a container's veth and routed by the FIB (a
/// reply of a published-port flow, a masqueraded packet): the fragments that follow take
/// the FIB's way out too.
#[inline(always)]
pub fn remember_routed(ip: &Ipv6, src: &[u8; 16], dst: &[u8; 16]) {
    remember(ip, src, dst, 0, [&ROUTED; 2]);
}

/// The translation of a fragment's datagram, while its receiver may still be reassembling
/// it: past that, the identification may have come round to a new datagram.
#[inline(always)]
fn lookup(ip: &Ipv6) -> Option<&'static FragmentEntry6> {
    // SAFETY: a live map value of plain data, read in place.
    let entry = unsafe { FRAGMENTS6.get(&key_of(ip)) }?;
    if now_ns().wrapping_sub(entry.first_seen_ns) > FRAGMENT_TIMEOUT_NS {
        return None;
    }
    Some(entry)
}

/// On the uplink: a fragment after the first, to a container when its first fragment was
/// translated there, else to the node's stack.
#[inline(always)]
pub fn uplink_following<P: Packet>(packet: &P, ip: &Ipv6) -> (Action, Stat) {
    // Entries made at the containers' veths are routed ones (`ifindex` 0) and name another
    // direction; only a veth to hand the frame to will do here.
    let Some(entry) = lookup(ip).filter(|e| e.ifindex != 0) else {
        return (Action::Pass, Stat::UplinkPassFragment);
    };
    if ip.hop_limit <= 1 {
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

/// The first fragment's addresses and MACs, the hop limit down; the payload is left alone.
#[inline(always)]
fn rewrite_following<P: Packet>(packet: &P, ip: &Ipv6, entry: &FragmentEntry6) -> Option<()> {
    readdress(packet, ip, entry)?;
    packet.store(0, entry.dst_mac)?;
    packet.store(6, entry.src_mac)
}

/// The first fragment's addresses, the hop limit down.
#[inline(always)]
fn readdress<P: Packet>(packet: &P, ip: &Ipv6, entry: &FragmentEntry6) -> Option<()> {
    packet.store(ETH_HLEN + IPV6_HOP_LIMIT_OFF, ip.hop_limit - 1)?;
    packet.store(ETH_HLEN + IPV6_SRC_OFF, entry.src_ip)?;
    packet.store(ETH_HLEN + IPV6_DST_OFF, entry.dst_ip)
}

/// At a container's veth: a fragment after the first leaves the way its first fragment
/// did, readdressed as it was, routed by the FIB. `None`: no translation.
#[inline(always)]
pub fn container_following(ctx: &TcContext, ip: &Ipv6) -> Option<(i32, Stat)> {
    // Entries made on the uplink hand frames to a veth and name the other direction.
    let entry = lookup(ip).filter(|e| e.ifindex == 0)?;
    if ip.hop_limit <= 1 {
        return Some((TC_ACT_SHOT, Stat::ContainerDropTtlExpired));
    }
    if readdress(&TcFrame(ctx), ip, entry).is_none() {
        return Some((TC_ACT_SHOT, Stat::ContainerDropRewriteFailed));
    }
    let stats = (
        Stat::ContainerRedirectFragment,
        Stat::ContainerRedirectFragmentNeigh,
    );
    Some(forward(
        ctx,
        &entry.src_ip,
        &entry.dst_ip,
        ip.protocol,
        stats,
    ))
}
