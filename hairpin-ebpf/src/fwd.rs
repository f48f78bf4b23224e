//! Verdicts and routing: the FIB chooses NAT (does a LAN packet leave by the WAN?) and, on the
//! fast path, the next hop of a translated packet.

use core::mem::size_of;

use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, BPF_FIB_LOOKUP_SKIP_NEIGH,
        TC_ACT_REDIRECT, TC_ACT_SHOT, bpf_fib_lookup, tcx_action_base::TCX_NEXT, xdp_action,
    },
    helpers::bpf_fib_lookup,
};
use hairpin_common::{FlowKey, NextHop, Reason, Slow, consts::Hook};

use crate::{ctx::Packet, maps::FIB, stats};

const AF_INET: u8 = 2;

#[inline(always)]
pub fn finish_xdp(hook: Hook, reason: Reason) -> u32 {
    stats::count(hook, reason);
    match reason {
        // The redirect target was set by the fast path's bpf_redirect_map.
        Reason::FastRedirect => xdp_action::XDP_REDIRECT,
        Reason::FastTx => xdp_action::XDP_TX,
        r if r.consumes() => xdp_action::XDP_DROP,
        _ => xdp_action::XDP_PASS,
    }
}

#[inline(always)]
pub fn finish_tc(hook: Hook, reason: Reason) -> i32 {
    stats::count(hook, reason);
    match reason {
        // The target was set by the fast path's bpf_redirect.
        Reason::FastRedirect | Reason::FastTx => TC_ACT_REDIRECT as i32,
        r if r.consumes() => TC_ACT_SHOT as i32,
        // TCX_NEXT (== TC_ACT_UNSPEC) lets later programs on the hook run; the default is pass.
        _ => TCX_NEXT,
    }
}

/// Where the kernel would send a packet.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Forwarded out of this interface.
    Out(u32),
    /// Delivered locally, or not forwardable (no route, forwarding off, ...).
    NotForwarded,
}

/// Asks the kernel's FIB how a packet with tuple `key` and IPv4 total length `tot_len`
/// (checked against the egress MTU) is forwarded from the packet's interface. Returns the
/// helper's verdict and the filled parameters, which live in this CPU's scratch slot
/// (`FIB`): 64 bytes the programs' stack cannot spare. `None` if the slot cannot be had.
#[inline(always)]
fn fib(pkt: &impl Packet, key: &FlowKey, tot_len: u16, flags: u32) -> Option<(u32, *const bpf_fib_lookup)> {
    let params = FIB.get_ptr_mut(0)?;
    // SAFETY: this CPU's slot, which nothing else uses while the program runs here; plain
    // data. Every field an IPv4 lookup without flags reads is written (the rest are outputs,
    // or read only under flags not passed): zeroing all 64 bytes calls memset, a byte loop
    // 6.1's verifier walks at every call site, past its million instructions.
    unsafe {
        (*params).__bindgen_anon_2.flowinfo = 0;
        (*params).__bindgen_anon_5.tbid = 0;
        (*params).family = AF_INET;
        (*params).l4_protocol = key.proto;
        (*params).sport = key.sport.0;
        (*params).dport = key.dport.0;
        (*params).__bindgen_anon_1.tot_len = tot_len;
        (*params).ifindex = pkt.ifindex();
        (*params).__bindgen_anon_3.ipv4_src = key.src.0;
        (*params).__bindgen_anon_4.ipv4_dst = key.dst.0;
        let rc = bpf_fib_lookup(pkt.ctx_ptr(), params, size_of::<bpf_fib_lookup>() as i32, flags);
        Some((rc as u32, params))
    }
}

/// Where the kernel would send `key`: to choose NAT, so neighbour resolution is skipped, and
/// the packet's size does not matter: one over the egress MTU is forwarded all the same
/// (fragmented, or answered with fragmentation needed, by the kernel), so it makes its flow
/// and meets the boundary checks like any other.
#[inline(always)]
pub fn route(pkt: &impl Packet, key: &FlowKey) -> Route {
    match fib(pkt, key, 0, BPF_FIB_LOOKUP_SKIP_NEIGH) {
        // In TC, a lookup without a length checks the skb against the route's device, found
        // and filled in: too long is still forwarded there (fragmented, or refused with an
        // ICMP error, by the kernel).
        // SAFETY: the scratch slot, filled by the call.
        Some((BPF_FIB_LKUP_RET_SUCCESS | BPF_FIB_LKUP_RET_FRAG_NEEDED, params)) => {
            Route::Out(unsafe { (*params).ifindex })
        }
        _ => Route::NotForwarded,
    }
}

/// Where the translated packet `key`, `tot_len` long (0: a GSO super-packet, checked by its
/// segments), goes, neighbour included; or why the kernel must forward it instead.
#[inline(always)]
pub fn next_hop(pkt: &impl Packet, key: &FlowKey, tot_len: u16) -> Result<NextHop, Slow> {
    match fib(pkt, key, tot_len, 0) {
        Some((BPF_FIB_LKUP_RET_SUCCESS, params)) => {
            // SAFETY: the scratch slot; on success the kernel filled the MAC addresses of this
            // union member.
            let (m, ifindex) = unsafe { ((*params).__bindgen_anon_6.__bindgen_anon_2, (*params).ifindex) };
            let (d, s) = (m.dmac, m.smac);
            let macs = [d[0], d[1], d[2], d[3], d[4], d[5], s[0], s[1], s[2], s[3], s[4], s[5]];
            // A flow direction's packets arrive on one interface (the FIB answer cached with it
            // assumes so too): reading the ingress interface (three dependent loads through
            // the context) once per resolution is enough.
            let tx = u8::from(ifindex == pkt.ifindex());
            Ok(NextHop { macs, ifindex, len_ok: tot_len, tx, _pad: 0 })
        }
        Some((BPF_FIB_LKUP_RET_NO_NEIGH, _)) => Err(Slow::NoNeighbour),
        Some((BPF_FIB_LKUP_RET_FRAG_NEEDED, _)) => Err(Slow::FragNeeded),
        _ => Err(Slow::Route),
    }
}
