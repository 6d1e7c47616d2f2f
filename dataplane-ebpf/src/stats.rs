use dataplane_common::{Counter, stats::Stat};

use crate::maps::{FILTER_HITS, STATS};

#[inline(always)]
fn add(counter: Option<*mut Counter>, bytes: usize) {
    if let Some(counter) = counter {
        // SAFETY: a per-CPU slot is only touched by programs running on this CPU, and BPF
        // programs are not preempted by each other on one CPU.
        unsafe {
            (*counter).packets += 1;
            (*counter).bytes += bytes as u64;
        }
    }
}

/// Counts one packet of `bytes` under `stat` on this CPU.
#[inline(always)]
pub fn count(stat: Stat, bytes: usize) {
    add(STATS.get_ptr_mut(stat as u32), bytes);
}

/// Counts one packet of `bytes` as a hit of filter rule `rule_id`.
#[inline(always)]
pub fn count_filter_hit(rule_id: u32, bytes: usize) {
    add(FILTER_HITS.get_ptr_mut(rule_id), bytes);
}
