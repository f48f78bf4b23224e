//! Per-CPU reason counters: every verdict is counted here, by hook and reason.

use hairpin_common::{Reason, consts::Hook};

use crate::maps::STATS;

#[inline(always)]
pub fn count(hook: Hook, reason: Reason) {
    if let Some(c) = STATS.get_ptr_mut(hook.stat_index(reason)) {
        // SAFETY: per-CPU slot; no other writer on this CPU while the program runs.
        unsafe { *c += 1 };
    }
}
