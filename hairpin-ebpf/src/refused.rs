//! XDP frames the kernel refused to transmit. The fast path counts a frame as sent when it hands
//! it to XDP_TX or a redirect; the driver transmits it later, in a batch, and may refuse it (a
//! veth whose peer lost its XDP program, a driver out of ring space). The kernel reports that
//! through tracepoints, which these programs count per interface (LAN, WAN), so that `stats`
//! shows refused frames beside those sent and `run` stops sending XDP frames into an interface
//! that refuses them.
//!
//! Interface indices are per network namespace and the tracepoints fire for every XDP program
//! on the host: a gateway in another namespace with the same indices adds to these counters.
//! They can only over-report, which errs towards the slow path.

use aya_ebpf::programs::TracePointContext;
use hairpin_common::{Counter, Side};

use crate::{maps, stats};

/// Offsets in the tracepoints' records (`/sys/kernel/tracing/events/xdp/*/format`), stable
/// since they were added (4.13-5.8).
const BULK_TX_IFINDEX: usize = 8;
const BULK_TX_DROPS: usize = 16;
const DEVMAP_XMIT_TO_IFINDEX: usize = 16;
const DEVMAP_XMIT_DROPS: usize = 20;
const REDIRECT_ERR_TO_IFINDEX: usize = 24;

/// `xdp:xdp_bulk_tx`: an XDP_TX batch of `ifindex`, some of it dropped.
#[inline(always)]
pub fn bulk_tx(ctx: &TracePointContext) {
    // SAFETY: offsets of this tracepoint's record.
    if let (Ok(ifindex), Ok(drops)) =
        unsafe { (ctx.read_at::<i32>(BULK_TX_IFINDEX), ctx.read_at::<i32>(BULK_TX_DROPS)) }
    {
        count(ifindex, drops);
    }
}

/// `xdp:xdp_devmap_xmit`: a batch redirected through a device map into `to_ifindex`.
#[inline(always)]
pub fn devmap_xmit(ctx: &TracePointContext) {
    // SAFETY: as above.
    if let (Ok(ifindex), Ok(drops)) =
        unsafe { (ctx.read_at::<i32>(DEVMAP_XMIT_TO_IFINDEX), ctx.read_at::<i32>(DEVMAP_XMIT_DROPS)) }
    {
        count(ifindex, drops);
    }
}

/// `xdp:xdp_redirect_err`: one frame whose redirect into `to_ifindex` failed outright (the
/// device takes no XDP frames). A device map's redirect failures (the fast path redirects
/// through `HP_DEVICES`) come here too: the kernel traces them with this event
/// (`_trace_xdp_redirect_map_err` in include/trace/events/xdp.h); `xdp_redirect_map_err` was
/// kept for old programs but never fired, and is gone from recent kernels (6.18 has none).
#[inline(always)]
pub fn redirect_err(ctx: &TracePointContext) {
    // SAFETY: as above.
    if let Ok(ifindex) = unsafe { ctx.read_at::<i32>(REDIRECT_ERR_TO_IFINDEX) } {
        count(ifindex, 1);
    }
}

#[inline(always)]
fn count(ifindex: i32, frames: i32) {
    if frames <= 0 {
        return;
    }
    let Some(cfg) = maps::config() else { return };
    let side = match ifindex as u32 {
        i if i == 0 => return,
        i if i == cfg.ifindex_of(Side::Lan) => Side::Lan,
        i if i == cfg.ifindex_of(Side::Wan) => Side::Wan,
        _ => return,
    };
    stats::bump(Counter::xdp_refused(side), frames as u64);
}
