//! Per-CPU reason counters: every verdict is counted here, by hook and reason.

use hairpin_common::{
    Reason, Slow,
    consts::{Hook, exhaustion_index},
};

use crate::maps::{EXHAUSTED, FC_MISSES, SLOW, STATS};

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

/// Counts a packet of a known flow that the fast path left to the kernel, and why.
#[inline(always)]
pub fn count_slow(why: Slow) {
    if let Some(c) = SLOW.get_ptr_mut(why as u32) {
        // SAFETY: as above.
        unsafe { *c += 1 };
    }
}

/// Counts a fast-path packet that the flow cache could not serve (conntrack was looked up).
#[inline(always)]
pub fn count_cache_miss() {
    if let Some(c) = FC_MISSES.get_ptr_mut(0) {
        // SAFETY: as above.
        unsafe { *c += 1 };
    }
}
