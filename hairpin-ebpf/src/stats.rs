//! Per-CPU reason counters: every verdict is counted here, by hook and reason.

use hairpin_common::{
    Reason,
    consts::{Hook, exhaustion_index},
};

use crate::maps::{EXHAUSTED, STATS};

#[inline(always)]
pub fn count(hook: Hook, reason: Reason) {
    if let Some(c) = STATS.get_ptr_mut(hook.stat_index(reason)) {
        // SAFETY: per-CPU slot; no other writer on this CPU while the program runs.
        unsafe { *c += 1 };
    }
}

/// Counts a new `proto` flow that could not be created for `reason` (no port, no table space).
#[inline(always)]
pub fn count_exhaustion(proto: u8, reason: Reason) {
    if let Some(i) = exhaustion_index(proto, reason)
        && let Some(c) = EXHAUSTED.get_ptr_mut(i)
    {
        // SAFETY: as above.
        unsafe { *c += 1 };
    }
}
