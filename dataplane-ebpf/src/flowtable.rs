//! Storage of the flow tables, below the modules that translate flows: NAT_FLOWS
//! (published ports), CONNTRACK (masquerade and links) and CONNTRACK6 (their IPv6 twins),
//! the last two through [`CtTable`], all plain hash maps.
//!
//! A full table evicts a flow that is not established, the oldest first, before it refuses
//! a new one (the kernel's early_drop): a flood of half-open SYNs, one container opening
//! flows without end, or a burst of closed connections cannot lock everyone else out, and
//! an established flow is never evicted. Candidates come from a ring of flows recently
//! opened or closing; each is checked to be still evictable before it goes.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    maps::{Array, HashMap},
};
use dataplane_common::{
    CT_CLOSING, CT_REPLY, CtEntry, CtEntry6, CtKey, CtKey6, FlowKey, NatFlow, UNREPLIED_RING_LEN,
    ct::{TrackedEntry, TrackedKey},
    ct_evictable,
};

use crate::maps::{
    CONNTRACK, CONNTRACK6, CT_UNREPLIED, CT_UNREPLIED6, NAT_FLOWS, NAT_UNREPLIED, PEER6_SCRATCH,
    UNREPLIED_CURSORS, UNREPLIED_CURSORS6,
};

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

/// The next ring slot to write, advancing the write cursor at `write_cursor` of
/// `cursors`. Two CPUs may get the same slot; one candidate is then lost, which costs
/// nothing but a later eviction.
#[inline(always)]
fn next_slot(cursors: &Array<u32>, write_cursor: u32) -> Option<u32> {
    let at = cursors.get_ptr_mut(write_cursor)?;
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
fn next_candidate(cursors: &Array<u32>, write_cursor: u32) -> Option<u32> {
    let written = cursors.get(write_cursor).copied()?;
    let at = cursors.get_ptr_mut(write_cursor + 1)?;
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

/// A connection-tracking table of one address family (CONNTRACK), with its ring of
/// flows recently opened or closing (by their reply keys) and the ring's cursors.
pub trait CtTable {
    type Key: TrackedKey;
    fn table() -> &'static HashMap<Self::Key, CtEntryOf<Self>>;
    fn ring() -> &'static Array<Self::Key>;
    fn cursors() -> &'static Array<u32>;
    /// The ring's write cursor in [`CtTable::cursors`]; its evict cursor follows it.
    const CURSOR: u32;

    /// Builds the key of the other direction's entry of the flow `entry` (at `key`)
    /// belongs to ([`TrackedKey::peer`]) and hands it to `f`: on the stack, unless the
    /// table's keys are too big for the programs' stack. `None`: there was no room.
    #[inline(always)]
    fn with_peer<R>(
        key: &Self::Key,
        entry: &CtEntryOf<Self>,
        f: impl FnOnce(&Self::Key) -> R,
    ) -> Option<R> {
        Some(f(&key.peer(entry)))
    }
}

/// The entry type of table `T`.
pub type CtEntryOf<T> = <<T as CtTable>::Key as TrackedKey>::Entry;

/// IPv4's table.
pub struct Conntrack;

impl CtTable for Conntrack {
    type Key = CtKey;
    const CURSOR: u32 = 0;

    #[inline(always)]
    fn table() -> &'static HashMap<CtKey, CtEntry> {
        &CONNTRACK
    }
    #[inline(always)]
    fn ring() -> &'static Array<CtKey> {
        &CT_UNREPLIED
    }
    #[inline(always)]
    fn cursors() -> &'static Array<u32> {
        &UNREPLIED_CURSORS
    }
}

/// IPv6's table.
pub struct Conntrack6;

impl CtTable for Conntrack6 {
    type Key = CtKey6;
    const CURSOR: u32 = 0;

    #[inline(always)]
    fn table() -> &'static HashMap<CtKey6, CtEntry6> {
        &CONNTRACK6
    }
    #[inline(always)]
    fn ring() -> &'static Array<CtKey6> {
        &CT_UNREPLIED6
    }
    #[inline(always)]
    fn cursors() -> &'static Array<u32> {
        &UNREPLIED_CURSORS6
    }

    /// In [`PEER6_SCRATCH`]: 40 bytes the IPv6 programs' stack has not got to spare.
    #[inline(always)]
    fn with_peer<R>(key: &CtKey6, entry: &CtEntry6, f: impl FnOnce(&CtKey6) -> R) -> Option<R> {
        let peer = PEER6_SCRATCH.get_ptr_mut(0)?;
        // SAFETY: a map value of plain data, ours alone on this CPU while the program
        // runs; no caller of `with_peer` calls it again inside `f`.
        unsafe {
            *peer = key.peer(entry);
            Some(f(&*peer))
        }
    }
}

/// Removes both entries of a tracked flow.
#[inline(always)]
pub fn ct_remove<T: CtTable>(key: &T::Key, entry: &CtEntryOf<T>) {
    let _ = T::with_peer(key, entry, |peer| T::table().remove(peer));
    let _ = T::table().remove(key);
}

/// Sets the state of both entries of a tracked flow.
#[inline(always)]
pub fn ct_set_state<T: CtTable>(key: &T::Key, entry: *mut CtEntryOf<T>, state: u8) {
    // SAFETY: a pointer to a live map value of plain data.
    let direction = unsafe {
        (*entry).set_state(state);
        (*entry).direction()
    };
    // SAFETY: as above.
    let _ = T::with_peer(key, unsafe { &*entry }, |peer| {
        if let Some(peer_entry) = T::table().get_ptr_mut(peer) {
            // SAFETY: as above.
            unsafe { (*peer_entry).set_state(state) };
        }
        // A closing flow may be evicted again: it goes back on the ring (by its reply key).
        if state == CT_CLOSING {
            let reply_key = if direction == CT_REPLY { key } else { peer };
            if let Some(slot) = next_slot(T::cursors(), T::CURSOR) {
                let _ = T::ring().set(slot, reply_key, 0);
            }
        }
    });
}

/// Sets the state of a NAT_FLOWS flow; one that starts closing goes back on the ring.
#[inline(always)]
pub fn nat_set_state(key: &FlowKey, flow: *mut NatFlow, state: u8) {
    // SAFETY: a pointer to a live map value of plain data.
    let old = unsafe { core::mem::replace(&mut (*flow).state, state) };
    if state == CT_CLOSING
        && old != CT_CLOSING
        && let Some(slot) = next_slot(&UNREPLIED_CURSORS, NatFlows::CURSOR)
    {
        let _ = NAT_UNREPLIED.set(slot, key, 0);
    }
}

/// One of the flow tables, as early drop sees it. A trait rather than function pointers:
/// BPF has no indirect calls, generics leave none.
trait Table {
    type Key;
    type Value;
    /// The ring's cursors, and its write cursor there; its evict cursor follows it.
    fn ring_cursors() -> &'static Array<u32>;
    const WRITE_CURSOR: u32;
    fn insert(key: &Self::Key, value: &Self::Value) -> Result<(), i32>;
    /// Evicts the flow behind ring slot `slot` if it is still unanswered.
    fn evict(slot: u32) -> bool;
}

impl<T: CtTable> Table for T {
    type Key = T::Key;
    type Value = CtEntryOf<T>;
    const WRITE_CURSOR: u32 = T::CURSOR;

    #[inline(always)]
    fn ring_cursors() -> &'static Array<u32> {
        T::cursors()
    }

    #[inline(always)]
    fn insert(key: &T::Key, entry: &CtEntryOf<T>) -> Result<(), i32> {
        T::table().insert(key, entry, u64::from(BPF_NOEXIST))
    }

    #[inline(always)]
    fn evict(slot: u32) -> bool {
        // The ring holds reply keys.
        let Some(reply_key) = T::ring().get(slot).copied() else {
            return false;
        };
        // SAFETY: plain data copied out at once.
        let Some(reply) = (unsafe { T::table().get(&reply_key) }).copied() else {
            return false;
        };
        if !ct_evictable(reply.state()) {
            return false;
        }
        ct_remove::<T>(&reply_key, &reply);
        true
    }
}

struct NatFlows;

impl NatFlows {
    const CURSOR: u32 = 2;
}

impl Table for NatFlows {
    type Key = FlowKey;
    type Value = NatFlow;
    const WRITE_CURSOR: u32 = NatFlows::CURSOR;

    #[inline(always)]
    fn ring_cursors() -> &'static Array<u32> {
        &UNREPLIED_CURSORS
    }

    #[inline(always)]
    fn insert(key: &FlowKey, flow: &NatFlow) -> Result<(), i32> {
        NAT_FLOWS.insert(key, flow, u64::from(BPF_NOEXIST))
    }

    #[inline(always)]
    fn evict(slot: u32) -> bool {
        let Some(key) = NAT_UNREPLIED.get(slot).copied() else {
            return false;
        };
        // SAFETY: plain data copied out at once.
        match unsafe { NAT_FLOWS.get(&key) } {
            Some(flow) if ct_evictable(flow.state) => NAT_FLOWS.remove(&key).is_ok(),
            _ => false,
        }
    }
}

/// Records a new tracked flow: its reply entry, which claims the translated tuple, then
/// its original entry. No eviction here: a caller that meets a full table calls
/// [`ct_make_room`] and tries again (once, outside any loop, which keeps the verifier's
/// walk short).
#[inline(always)]
pub fn ct_insert<T: CtTable>(
    key: &T::Key,
    entry: &CtEntryOf<T>,
    reply_key: &T::Key,
    reply: &CtEntryOf<T>,
) -> Result<(), InsertError> {
    insert_one::<T>(reply_key, reply)?;
    if let Err(e) = insert_one::<T>(key, entry) {
        let _ = T::table().remove(reply_key);
        return Err(e);
    }
    if let Some(slot) = next_slot(T::cursors(), T::CURSOR) {
        let _ = T::ring().set(slot, reply_key, 0);
    }
    Ok(())
}

/// Evicts one unanswered flow of table `T`, the oldest found; `false` when there is none.
#[inline(always)]
pub fn ct_make_room<T: CtTable>() -> bool {
    make_room::<T>()
}

/// Records a new published-port flow; a full table evicts an unanswered one first.
#[inline(always)]
pub fn nat_insert(key: &FlowKey, flow: &NatFlow) -> Result<(), InsertError> {
    insert_with_early_drop::<NatFlows>(key, flow)?;
    if let Some(slot) = next_slot(&UNREPLIED_CURSORS, NatFlows::CURSOR) {
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
        let Some(slot) = next_candidate(T::ring_cursors(), T::WRITE_CURSOR) else {
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
