//! Storage of the two flow tables, below the modules that translate flows: NAT_FLOWS
//! (published ports) and CONNTRACK (masquerade and links), both plain hash maps.
//!
//! A full table evicts a flow that is not established, the oldest first, before it refuses
//! a new one (the kernel's early_drop): a flood of half-open SYNs, one container opening
//! flows without end, or a burst of closed connections cannot lock everyone else out, and
//! an established flow is never evicted. Candidates come from a ring of flows recently
//! opened or closing; each is checked to be still evictable before it goes.

use aya_ebpf::bindings::BPF_NOEXIST;
use dataplane_common::{
    CT_CLOSING, CT_REPLY, CtEntry, CtKey, FlowKey, NatFlow, UNREPLIED_RING_LEN, ct_evictable,
};

use crate::maps::{CONNTRACK, CT_UNREPLIED, NAT_FLOWS, NAT_UNREPLIED, UNREPLIED_CURSORS};

/// Ring slots looked at for an unanswered flow when a table is full.
const EARLY_DROP_TRIES: u32 = 16;
/// `-EEXIST` from a map update: the key is taken.
pub const EEXIST: i32 = -17;

/// Why a flow could not be recorded.
pub enum InsertError {
    /// The key is taken (by another flow, or by this one on another CPU).
    Exists,
    /// The table is full of answered flows.
    Full,
}

/// The next ring slot to write, advancing the table's write cursor. Two CPUs may get the
/// same slot; one candidate is then lost, which costs nothing but a later eviction.
#[inline(always)]
fn next_slot(write_cursor: u32) -> Option<u32> {
    let at = UNREPLIED_CURSORS.get_ptr_mut(write_cursor)?;
    // SAFETY: a pointer to a live array value of plain data.
    unsafe {
        let slot = *at;
        *at = slot.wrapping_add(1);
        Some(slot & (UNREPLIED_RING_LEN - 1))
    }
}

/// Takes the next ring slot to examine for eviction, oldest first, advancing the table's
/// evict cursor past it: a slot looked at once holds a flow that is gone or answered, or
/// is evicted now, so none is looked at twice. `None`: every slot written has been.
#[inline(always)]
fn next_candidate(write_cursor: u32) -> Option<u32> {
    let written = UNREPLIED_CURSORS.get(write_cursor).copied()?;
    let at = UNREPLIED_CURSORS.get_ptr_mut(write_cursor + 1)?;
    // SAFETY: a pointer to a live array value of plain data.
    unsafe {
        let mut next = *at;
        // Slots overwritten since they were last looked at hold newer flows: start at the
        // oldest one still in the ring.
        if written.wrapping_sub(next) > UNREPLIED_RING_LEN {
            next = written.wrapping_sub(UNREPLIED_RING_LEN);
        }
        if next == written {
            return None;
        }
        *at = next.wrapping_add(1);
        Some(next & (UNREPLIED_RING_LEN - 1))
    }
}

/// The key of the other direction's entry of a CONNTRACK flow. An original entry's `nat`
/// is the source the flow leaves with, a reply entry's is the original source, so either
/// entry alone names its peer.
#[inline(always)]
pub fn ct_peer_key(key: &CtKey, entry: &CtEntry) -> CtKey {
    match entry.direction {
        dataplane_common::CT_ORIGINAL => CtKey {
            src_ip_be: key.dst_ip_be,
            dst_ip_be: entry.nat_ip_be,
            sport_be: key.dport_be,
            dport_be: entry.nat_port_be,
            proto: key.proto,
            _pad: [0; 3],
        },
        _ => CtKey {
            src_ip_be: entry.nat_ip_be,
            dst_ip_be: key.src_ip_be,
            sport_be: entry.nat_port_be,
            dport_be: key.sport_be,
            proto: key.proto,
            _pad: [0; 3],
        },
    }
}

/// Removes both entries of a CONNTRACK flow.
#[inline(always)]
pub fn ct_remove(key: &CtKey, entry: &CtEntry) {
    let _ = CONNTRACK.remove(&ct_peer_key(key, entry));
    let _ = CONNTRACK.remove(key);
}

/// Sets the state of both entries of a CONNTRACK flow.
#[inline(always)]
pub fn ct_set_state(key: &CtKey, entry: *mut CtEntry, state: u8) {
    // SAFETY: a pointer to a live map value of plain data.
    let (peer, direction) = unsafe {
        (*entry).state = state;
        (ct_peer_key(key, &*entry), (*entry).direction)
    };
    if let Some(peer) = CONNTRACK.get_ptr_mut(&peer) {
        // SAFETY: as above.
        unsafe { (*peer).state = state };
    }
    // A closing flow may be evicted again: it goes back on the ring (by its reply key).
    if state == CT_CLOSING {
        let reply_key = if direction == CT_REPLY { key } else { &peer };
        if let Some(slot) = next_slot(Conntrack::CURSOR) {
            let _ = CT_UNREPLIED.set(slot, reply_key, 0);
        }
    }
}

/// Sets the state of a NAT_FLOWS flow; one that starts closing goes back on the ring.
#[inline(always)]
pub fn nat_set_state(key: &FlowKey, flow: *mut NatFlow, state: u8) {
    // SAFETY: a pointer to a live map value of plain data.
    let old = unsafe { core::mem::replace(&mut (*flow).state, state) };
    if state == CT_CLOSING
        && old != CT_CLOSING
        && let Some(slot) = next_slot(NatFlows::CURSOR)
    {
        let _ = NAT_UNREPLIED.set(slot, key, 0);
    }
}

/// One of the two tables, as early drop sees it. A trait rather than function pointers:
/// BPF has no indirect calls, generics leave none.
trait Table {
    type Key;
    type Value;
    /// The table's write cursor in [`UNREPLIED_CURSORS`]; its evict cursor follows it.
    const CURSOR: u32;
    fn insert(key: &Self::Key, value: &Self::Value) -> Result<(), i32>;
    /// Evicts the flow behind ring slot `slot` if it is still unanswered.
    fn evict(slot: u32) -> bool;
}

struct Conntrack;

impl Table for Conntrack {
    type Key = CtKey;
    type Value = CtEntry;
    const CURSOR: u32 = 0;

    #[inline(always)]
    fn insert(key: &CtKey, entry: &CtEntry) -> Result<(), i32> {
        CONNTRACK.insert(key, entry, u64::from(BPF_NOEXIST))
    }

    #[inline(always)]
    fn evict(slot: u32) -> bool {
        // The ring holds reply keys.
        let Some(reply_key) = CT_UNREPLIED.get(slot).copied() else {
            return false;
        };
        // SAFETY: as above.
        let Some(reply) = (unsafe { CONNTRACK.get(&reply_key) }).copied() else {
            return false;
        };
        if !ct_evictable(reply.state) {
            return false;
        }
        ct_remove(&reply_key, &reply);
        true
    }
}

struct NatFlows;

impl Table for NatFlows {
    type Key = FlowKey;
    type Value = NatFlow;
    const CURSOR: u32 = 2;

    #[inline(always)]
    fn insert(key: &FlowKey, flow: &NatFlow) -> Result<(), i32> {
        NAT_FLOWS.insert(key, flow, u64::from(BPF_NOEXIST))
    }

    #[inline(always)]
    fn evict(slot: u32) -> bool {
        let Some(key) = NAT_UNREPLIED.get(slot).copied() else {
            return false;
        };
        // SAFETY: as above.
        match unsafe { NAT_FLOWS.get(&key) } {
            Some(flow) if ct_evictable(flow.state) => NAT_FLOWS.remove(&key).is_ok(),
            _ => false,
        }
    }
}

/// Records a new CONNTRACK flow: its reply entry, which claims the translated tuple, then
/// its original entry. No eviction here: a caller that meets a full table calls
/// [`ct_make_room`] and tries again (once, outside any loop, which keeps the verifier's
/// walk short).
#[inline(always)]
pub fn ct_insert(
    key: &CtKey,
    entry: &CtEntry,
    reply_key: &CtKey,
    reply: &CtEntry,
) -> Result<(), InsertError> {
    insert_one::<Conntrack>(reply_key, reply)?;
    if let Err(e) = insert_one::<Conntrack>(key, entry) {
        let _ = CONNTRACK.remove(reply_key);
        return Err(e);
    }
    if let Some(slot) = next_slot(Conntrack::CURSOR) {
        let _ = CT_UNREPLIED.set(slot, reply_key, 0);
    }
    Ok(())
}

/// Evicts one unanswered CONNTRACK flow, the oldest found; `false` when there is none.
#[inline(always)]
pub fn ct_make_room() -> bool {
    make_room::<Conntrack>()
}

/// Records a new published-port flow; a full table evicts an unanswered one first.
#[inline(always)]
pub fn nat_insert(key: &FlowKey, flow: &NatFlow) -> Result<(), InsertError> {
    insert_with_early_drop::<NatFlows>(key, flow)?;
    if let Some(slot) = next_slot(NatFlows::CURSOR) {
        let _ = NAT_UNREPLIED.set(slot, key, 0);
    }
    Ok(())
}

#[inline(always)]
fn insert_one<T: Table>(key: &T::Key, value: &T::Value) -> Result<(), InsertError> {
    match T::insert(key, value) {
        Ok(()) => Ok(()),
        Err(EEXIST) => Err(InsertError::Exists),
        Err(_) => Err(InsertError::Full),
    }
}

/// Walks the ring from its oldest slot not yet looked at for an unanswered flow, and
/// evicts it (counted).
#[inline(always)]
fn make_room<T: Table>() -> bool {
    for _ in 0..EARLY_DROP_TRIES {
        let Some(slot) = next_candidate(T::CURSOR) else {
            return false;
        };
        if T::evict(slot) {
            crate::stats::count(dataplane_common::stats::Stat::FlowEarlyDrop, 0);
            return true;
        }
    }
    false
}

/// Inserts; a full table makes room first and is tried once more.
#[inline(always)]
fn insert_with_early_drop<T: Table>(key: &T::Key, value: &T::Value) -> Result<(), InsertError> {
    match insert_one::<T>(key, value) {
        Err(InsertError::Full) if make_room::<T>() => insert_one::<T>(key, value),
        result => result,
    }
}
