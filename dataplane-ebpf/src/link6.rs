//! `--link` through `icc=false` over IPv6, as conntrack.rs's `linked` does it for IPv4 and
//! with its logic (`linked_flow`): a container's TCP or UDP packet to another container of
//! its `icc=false` network passes when CONNTRACK6 tracks its flow (a reply, or more of a
//! flow a link allowed), or when LINKS6 allows it (the sender to the other's exposed
//! port), which records both entries of the flow, untranslated. An unlinked connection,
//! from either side, and a segment that no tracked flow explains stay refused
//! (`container_ingress.drop.policy_icc`).
//!
//! It runs in a program of its own, `container_link6`, which `container_ingress6` reaches
//! by tail call (through `CONTAINER6_PROGRAMS`, as `container_masquerade6`), and which
//! parses the packet again: `container_ingress6` has no stack left for a flow's keys and
//! entries. Those are built in the per-CPU `CONNTRACK6_SCRATCH` here too.

use aya_ebpf::{bindings::TC_ACT_SHOT, programs::TcContext};
use dataplane_common::{
    CT_NEW, CT_ORIGINAL, CT_REPLY, CtEntry6, LinkKey6,
    parse::{
        L4,
        ipv6::{Ipv6, Parsed6, parse_ipv6},
    },
    stats::Stat,
};

use crate::{
    conntrack,
    flowtable::{self, Conntrack6},
    frame::TcFrame,
    maps::LINKS6,
    masquerade6,
    nat::now_ns,
};

/// `CONNTRACK6_SCRATCH`'s slot for the containers' veths, which `container_masquerade6`
/// uses too: a packet reaches one of the two programs, never both.
const SCRATCH_SLOT: u32 = 0;

/// `container_link6`: judges the packet `container_ingress6` handed over, parsed again (the
/// verifier trusts offsets into the packet only from its own bounds checks;
/// `container_ingress6` has pulled the headers into the linear area).
#[inline(always)]
pub fn container_link(ctx: &TcContext) -> (i32, Stat) {
    match parse_ipv6(&TcFrame(ctx), ctx.len() as usize) {
        Ok(Parsed6::Transport(ip, l4)) => linked(&ip, &l4),
        _ => (TC_ACT_SHOT, Stat::ContainerDropMalformed),
    }
}

/// Passes or refuses a packet between two containers of an `icc=false` network by its
/// flow and the links.
#[inline(always)]
fn linked(ip: &Ipv6, l4: &L4) -> (i32, Stat) {
    // Never `None`: the array has the slot. Without room the flow cannot be tracked.
    let Some(record) = masquerade6::record_for(SCRATCH_SLOT, ip, l4) else {
        return (TC_ACT_SHOT, Stat::ContainerDropConntrackFull);
    };
    // A new flow's entries, recorded only if the link allows it. No translation: both
    // entries' "nat" address and port are the opener's own (as IPv4's links), which names
    // either entry's peer; no veth or MACs, nothing is redirected.
    let original = &mut record.original;
    original.nat_ip = ip.src;
    original.nat_port_be = l4.sport_be;
    original.direction = CT_ORIGINAL;
    original.state = CT_NEW;
    original._pad = 0;
    original.last_seen_ns = now_ns();
    original.host_veth_ifindex = 0;
    original.container_mac = [0; 6];
    original.host_veth_mac = [0; 6];
    record.reply = CtEntry6 {
        direction: CT_REPLY,
        ..record.original
    };
    let reply_key = &mut record.reply_key;
    reply_key.src_ip = ip.dst;
    reply_key.dst_ip = ip.src;
    reply_key.sport_be = l4.dport_be;
    reply_key.dport_be = l4.sport_be;
    reply_key.proto = ip.protocol;
    reply_key._pad = [0; 3];
    let record = &*record;
    let allowed = || {
        let link = LinkKey6 {
            src_ip: ip.src,
            dst_ip: ip.dst,
            dport_be: l4.dport_be,
            proto: ip.protocol,
            _pad: 0,
        };
        // SAFETY: only checking presence.
        unsafe { LINKS6.get(&link) }.is_some()
    };
    let open = || {
        flowtable::ct_insert::<Conntrack6>(
            &record.key,
            &record.original,
            &record.reply_key,
            &record.reply,
        )
    };
    // No monitor event: `bpfbridge monitor`'s events carry IPv4 addresses only.
    conntrack::linked_flow::<Conntrack6>(&record.key, ip.protocol, l4, allowed, open, || {})
}
