//! Per-CPU counters: every verdict, by hook and reason (`count`), and the side counters
//! (`Counter`: slow-path causes, flow cache misses, refused new flows, refused XDP frames).

use hairpin_common::{Counter, Reason, consts::Hook};

use crate::maps::{COUNTERS, STATS};

#[inline(always)]
pub fn count(hook: Hook, reason: Reason) {
    if let Some(c) = STATS.get_ptr_mut(hook.stat_index(reason)) {
        // SAFETY: per-CPU slot; no other writer on this CPU while the program runs.
        unsafe { *c += 1 };
    }
}

/// Adds `n` to a side counter.
#[inline(always)]
pub fn bump(counter: Counter, n: u64) {
    if let Some(c) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: as above.
        unsafe { *c += n };
    }
}
