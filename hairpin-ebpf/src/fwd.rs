//! Verdicts. For now every packet that is not dropped continues into the kernel stack, which
//! routes it; the fast path (XDP redirect) will live here too.

use aya_ebpf::bindings::{TC_ACT_SHOT, tcx_action_base::TCX_NEXT, xdp_action};
use hairpin_common::{Reason, consts::Hook};

use crate::stats;

#[inline(always)]
pub fn finish_xdp(hook: Hook, reason: Reason) -> u32 {
    stats::count(hook, reason);
    if reason.is_drop() { xdp_action::XDP_DROP } else { xdp_action::XDP_PASS }
}

#[inline(always)]
pub fn finish_tc(hook: Hook, reason: Reason) -> i32 {
    stats::count(hook, reason);
    // TCX_NEXT (== TC_ACT_UNSPEC) lets later programs on the hook run; the default is pass.
    if reason.is_drop() { TC_ACT_SHOT as i32 } else { TCX_NEXT }
}
