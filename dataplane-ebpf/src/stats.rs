use dataplane_common::stats::Stat;

use crate::maps::STATS;

/// Counts one packet of `bytes` under `stat` on this CPU.
#[inline(always)]
pub fn count(stat: Stat, bytes: usize) {
    if let Some(counter) = STATS.get_ptr_mut(stat as u32) {
        // SAFETY: a per-CPU slot is only touched by programs running on this CPU, and BPF
        // programs are not preempted by each other on one CPU.
        unsafe {
            (*counter).packets += 1;
            (*counter).bytes += bytes as u64;
        }
    }
}
