//! Drop and new-flow events for `bpfbridge monitor`, through a ring buffer. A per-CPU token
//! bucket limits them in the kernel: past the budget, events are only counted, so a flood
//! of drops costs a counter increment, not the agent's attention.

use aya_ebpf::helpers::bpf_ktime_get_ns;
use dataplane_common::{
    EVENT_DROP, EVENT_NEW_FLOW, EVENT_NEW_FLOW6, EVENTS_PER_SECOND, Event, Event6,
    parse::{Frame, Parsed, parse},
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
    if !take_token() {
        count(Stat::MonitorSuppressed, 0);
        return;
    }
    let Some(mut entry) = EVENTS.reserve::<Event6>(0) else {
        count(Stat::MonitorSuppressed, 0);
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
