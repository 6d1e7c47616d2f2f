//! Drop and new-flow events for `bpfbridge monitor`, through a ring buffer. A per-CPU token
//! bucket limits them in the kernel: past the budget, events are only counted, so a flood
//! of drops costs a counter increment, not the agent's attention.

use aya_ebpf::{helpers::bpf_ktime_get_ns, maps::ring_buf::RingBufEntry};
use dataplane_common::{
    EVENT_DROP, EVENT_DROP6, EVENT_NEW_FLOW, EVENT_NEW_FLOW6, EVENTS_PER_SECOND, Event, Event6,
    IPPROTO_TCP, IPPROTO_UDP,
    parse::{
        ETH_HLEN, Frame, L4_DPORT_OFF, L4_SPORT_OFF, Parsed,
        ipv6::{IPV6_DST_OFF, IPV6_HLEN, IPV6_NEXT_HEADER_OFF, IPV6_SRC_OFF},
        parse,
    },
    stats::Stat,
};

use crate::{
    maps::{EVENT_BUDGET, EVENTS},
    stats::count,
};

const NS_PER_SECOND: u64 = 1_000_000_000;

/// Takes one token from this CPU's budget.
#[inline(always)]
fn take_token() -> bool {
    let Some(budget) = EVENT_BUDGET.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: plain helper call; the per-CPU slot is ours while we run.
    unsafe {
        let now = bpf_ktime_get_ns();
        let elapsed = now.saturating_sub((*budget).refilled_ns);
        let refill = elapsed / (NS_PER_SECOND / EVENTS_PER_SECOND);
        if refill > 0 {
            let tokens = (*budget).tokens + refill;
            (*budget).tokens = if tokens > EVENTS_PER_SECOND {
                EVENTS_PER_SECOND
            } else {
                tokens
            };
            (*budget).refilled_ns = now;
        }
        if (*budget).tokens == 0 {
            return false;
        }
        (*budget).tokens -= 1;
    }
    true
}

#[inline(always)]
fn emit(event: Event) {
    if !take_token() || EVENTS.output::<Event>(&event, 0).is_err() {
        count(Stat::MonitorSuppressed, 0);
    }
}

/// A new translated or tracked flow.
#[inline(always)]
pub fn new_flow(stat: Stat, proto: u8, src_be: u32, dst_be: u32, sport_be: u16, dport_be: u16) {
    emit(Event {
        kind: EVENT_NEW_FLOW,
        stat: stat as u32,
        src_ip_be: src_be,
        dst_ip_be: dst_be,
        sport_be,
        dport_be,
        proto,
        _pad: [0; 3],
    });
}

/// A new IPv6 flow: `src` to `dst` (ports `sport_be`, `dport_be` of `ports`, in that
/// order from the low bits), written straight into the ring buffer: the IPv6 programs
/// have no stack to spare for a 48-byte record, nor for a subprogram's frame.
#[inline(always)]
pub fn new_flow6(stat: Stat, proto: u8, src: &[u8; 16], dst: &[u8; 16], ports: u32) {
    let Some(mut entry) = reserve6() else {
        return;
    };
    let event = entry.as_mut_ptr();
    // SAFETY: the reservation is ours, 48 writable bytes, until submitted.
    unsafe {
        (*event).kind = EVENT_NEW_FLOW6;
        (*event).stat = stat as u32;
        (*event).src_ip = *src;
        (*event).dst_ip = *dst;
        (*event).sport_be = ports as u16;
        (*event).dport_be = (ports >> 16) as u16;
        (*event).proto = proto;
        (*event)._pad = [0; 3];
    }
    entry.submit(0);
}

/// Copies the IPv6 address at `offset` of the frame to `to` (zeros if the frame ends
/// before it), eight bytes at a time through registers: a 16-byte value would take stack
/// that the IPv6 programs do not have.
///
/// # Safety
/// `to` must be writable.
#[inline(always)]
unsafe fn copy_address<F: Frame + ?Sized>(frame: &F, offset: usize, to: *mut [u8; 16]) {
    let to = to.cast::<u64>();
    // SAFETY: `to` is 16 writable bytes, the caller says.
    unsafe {
        to.write_unaligned(frame.load::<u64>(offset).unwrap_or(0));
        to.add(1)
            .write_unaligned(frame.load::<u64>(offset + 8).unwrap_or(0));
    }
}

/// A slot of the ring buffer for an [`Event6`], if this CPU's budget and the buffer have
/// room; counted as suppressed if not.
#[inline(always)]
fn reserve6() -> Option<RingBufEntry<Event6>> {
    let entry = match take_token() {
        true => EVENTS.reserve::<Event6>(0),
        false => None,
    };
    if entry.is_none() {
        count(Stat::MonitorSuppressed, 0);
    }
    entry
}

/// The `ports` argument of [`new_flow6`].
#[inline(always)]
pub fn ports(sport_be: u16, dport_be: u16) -> u32 {
    u32::from(sport_be) | (u32::from(dport_be) << 16)
}

/// After a program's verdict: a drop becomes an event, with the packet's addresses when
/// they can be read.
#[inline(always)]
pub fn on_verdict<F: Frame + ?Sized>(frame: &F, len: usize, stat: Stat, dropped: bool) {
    if !dropped {
        return;
    }
    let mut event = Event {
        kind: EVENT_DROP,
        stat: stat as u32,
        ..Event::default()
    };
    match parse(frame, len) {
        Ok(Parsed::Transport(ip, l4)) => {
            event.src_ip_be = ip.src_be;
            event.dst_ip_be = ip.dst_be;
            event.proto = ip.protocol;
            event.sport_be = l4.sport_be;
            event.dport_be = l4.dport_be;
        }
        Ok(Parsed::OtherProtocol(ip)) | Ok(Parsed::Fragment(ip)) => {
            event.src_ip_be = ip.src_be;
            event.dst_ip_be = ip.dst_be;
            event.proto = ip.protocol;
        }
        _ => {}
    }
    emit(event);
}

/// After an IPv6 program's verdict (its frames are IPv6): a drop becomes an [`Event6`],
/// written straight into the ring buffer as [`new_flow6`]'s. The addresses and the next
/// header come from the fixed header, the ports when that next header is TCP or UDP:
/// not from behind extension headers, which would take the parser's walk, inlined once
/// more into programs that are near their verifier budget. What the frame is too short
/// for stays zero.
#[inline(always)]
pub fn on_verdict6<F: Frame + ?Sized>(frame: &F, stat: Stat, dropped: bool) {
    if !dropped {
        return;
    }
    let Some(mut entry) = reserve6() else {
        return;
    };
    let event = entry.as_mut_ptr();
    let proto = frame
        .load::<u8>(ETH_HLEN + IPV6_NEXT_HEADER_OFF)
        .unwrap_or(0);
    let port = |offset: usize| match proto {
        IPPROTO_TCP | IPPROTO_UDP => frame.load::<u16>(ETH_HLEN + IPV6_HLEN + offset),
        _ => None,
    };
    // SAFETY: the reservation is ours, 48 writable bytes, until submitted.
    unsafe {
        (*event).kind = EVENT_DROP6;
        (*event).stat = stat as u32;
        copy_address(frame, ETH_HLEN + IPV6_SRC_OFF, &raw mut (*event).src_ip);
        copy_address(frame, ETH_HLEN + IPV6_DST_OFF, &raw mut (*event).dst_ip);
        (*event).sport_be = port(L4_SPORT_OFF).unwrap_or(0);
        (*event).dport_be = port(L4_DPORT_OFF).unwrap_or(0);
        (*event).proto = proto;
        (*event)._pad = [0; 3];
    }
    entry.submit(0);
}
