//! hairpin's dataplane. Entry points only: each calls a `try_*` function that returns the
//! [`Reason`] for its verdict, and [`fwd::finish`] counts the reason and picks the action.
//!
//! Ingress (XDP on the LAN and WAN interfaces) rewrites destinations: DNAT of new flows that
//! match a port-forward, and restoring the client on replies. Egress (TC on both interfaces)
//! rewrites sources: the hairpin source, and the public address on replies. The kernel routes
//! in between, so it resolves neighbours and never sees one of its own addresses as a source.
//! Known flows skip that detour on the fast path (`fast.rs`). Where XDP cannot serve (veths,
//! bridges, NICs without XDP; the controller decides per interface), ingress runs as TC
//! programs instead: the same code, the fast path included.
//!
//! Calls go one way, down: `hook` (decisions) -> `fast`, `icmp`, `frag` -> `ct` -> `cache` ->
//! `rewrite` -> `fwd`, `csum` -> `parse` -> `ctx`, `maps`.
#![no_std]
#![no_main]

mod cache;
mod csum;
mod ct;
mod ctx;
mod fast;
mod frag;
mod fwd;
mod hook;
mod icmp;
mod maps;
mod parse;
mod refused;
mod rewrite;
mod snat;
mod stats;

use aya_ebpf::{
    macros::{classifier, tracepoint, xdp},
    programs::{TcContext, TracePointContext, XdpContext},
};
use hairpin_common::{Side, consts::Hook};

#[xdp]
pub fn xdp_lan(ctx: XdpContext) -> u32 {
    let reason = hook::ingress(&ctx::Xdp(&ctx), Side::Lan);
    fwd::finish_xdp(Hook::LanIngress, reason)
}

#[xdp]
pub fn xdp_wan(ctx: XdpContext) -> u32 {
    let reason = hook::ingress(&ctx::Xdp(&ctx), Side::Wan);
    fwd::finish_xdp(Hook::WanIngress, reason)
}

#[classifier]
pub fn tc_ingress_lan(ctx: TcContext) -> i32 {
    let reason = hook::ingress_tc(&ctx::Tc(&ctx), Side::Lan);
    fwd::finish_tc(Hook::LanIngress, reason)
}

#[classifier]
pub fn tc_ingress_wan(ctx: TcContext) -> i32 {
    let reason = hook::ingress_tc(&ctx::Tc(&ctx), Side::Wan);
    fwd::finish_tc(Hook::WanIngress, reason)
}

#[classifier]
pub fn tc_egress_lan(ctx: TcContext) -> i32 {
    let reason = hook::egress(&ctx::Tc(&ctx), Side::Lan);
    fwd::finish_tc(Hook::LanEgress, reason)
}

#[classifier]
pub fn tc_egress_wan(ctx: TcContext) -> i32 {
    let reason = hook::egress(&ctx::Tc(&ctx), Side::Wan);
    fwd::finish_tc(Hook::WanEgress, reason)
}

/// The kernel's reports of XDP frames it could not transmit (see `refused.rs`).
#[tracepoint(category = "xdp", name = "xdp_bulk_tx")]
pub fn xdp_bulk_tx(ctx: TracePointContext) -> u32 {
    refused::bulk_tx(&ctx);
    0
}

#[tracepoint(category = "xdp", name = "xdp_devmap_xmit")]
pub fn xdp_devmap_xmit(ctx: TracePointContext) -> u32 {
    refused::devmap_xmit(&ctx);
    0
}

#[tracepoint(category = "xdp", name = "xdp_redirect_err")]
pub fn xdp_redirect_err(ctx: TracePointContext) -> u32 {
    refused::redirect_err(&ctx);
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable: the verifier rejects any program that could get here.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
