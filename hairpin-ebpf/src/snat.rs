//! Source NAT of new flows: what a new flow's source becomes (kept, the gateway's LAN address
//! and a free port, or the public address and the LAN host's endpoint-independent binding),
//! the binding's port claimed against forwards, and the flow created through conntrack
//! (`ct.rs`) with its event.

use aya_ebpf::bindings::BPF_NOEXIST;
use hairpin_common::{
    Binding, CT_F_REPLY, CT_F_SPORT_AT_INGRESS, Config, Counter, EVENT_NEW_FLOW, EVENT_REFUSED, Endpoint, Event,
    FlowKey, PortBe, ProtoEndpoint, Reason,
    consts::{IPPROTO_ICMP, PORT_ALLOC_TRIES},
    nat::{candidate_port, leaving_ingress, plan_flow},
};

use crate::{
    ct::{EEXIST, InsertError, REFRESH_NS, age_ns, insert, insert_own, remove_planned},
    maps::{BINDINGS, BOUND_PORTS, EVENTS, FORWARDS, PLAN},
    stats,
};

/// What a new flow's source becomes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum SourceNat {
    /// Kept: a port-forward from the internet (the server sees the real client), or a flow from
    /// the WAN to a binding.
    Keep,
    /// The gateway's LAN address and a port free for the flow's tuple: a flow hairpinned to a
    /// port-forward, whose reply must come back through the gateway.
    Lan,
    /// The public address and the source's endpoint-independent binding (a LAN host reaching
    /// the internet, or another LAN host's binding); an ICMP echo, which has no binding, takes
    /// an id free for its tuple.
    Public,
}

/// What a new flow becomes, beside its packet's tuple. One argument rather than five: a BPF
/// function takes at most five, should the compiler ever not inline one.
pub struct NewFlow {
    /// The destination it is translated to.
    pub dst: Endpoint,
    pub snat: SourceNat,
    /// `CT_F_*` kind flags for both entries.
    pub flags: u32,
    /// State bits of its first packet.
    pub seen: u32,
    pub now: u64,
    /// Its first packet, counted in the original entry: segments and IPv4 total length.
    pub packets: u32,
    pub bytes: u16,
}

/// Creates the flow for `key` as `new` describes, and returns the tuple its packets leave
/// ingress with ([`leaving_ingress`]).
///
/// A port free for the tuple is found by inserting the reply entry (whose key contains it)
/// with `BPF_NOEXIST`, which checks and claims it atomically; a binding's port is claimed the
/// same way in `BOUND_PORTS`. Neither ever takes a public port that a port-forward owns.
#[inline(always)]
pub fn create(cfg: &Config, key: &FlowKey, new: &NewFlow) -> Result<FlowKey, Reason> {
    // Into `CT_NEW`, whose evictions take unconfirmed flows only, which no CPU holds copies of
    // (the fast path serves confirmed flows): `confirm` moves it into `CT`.
    let created = try_create(cfg, key, new);
    // Bounded: when the ring is full the event is lost (counters and conntrack stay exact).
    // Written in place in the ring, not built on this frame's stack.
    let event = match created {
        Ok(xlate) => Event { key: *key, kind: EVENT_NEW_FLOW, detail: new.flags, xlate },
        Err(reason) => {
            if let Some(counter) = Counter::exhausted(key.proto, reason) {
                stats::bump(counter, 1);
            }
            Event { key: *key, kind: EVENT_REFUSED, detail: reason as u32, xlate: FlowKey::default() }
        }
    };
    if let Some(mut slot) = EVENTS.reserve::<Event>(0) {
        slot.write(event);
        slot.submit(0);
    }
    // Whether ingress writes the source port is the last plan's choice (see `try_create`).
    let sport_flag = PLAN.get(0).map_or(0, |p| p.orig.flags & CT_F_SPORT_AT_INGRESS);
    created.map(|xlate| leaving_ingress(key, &xlate, sport_flag))
}

#[inline(always)]
fn try_create(cfg: &Config, key: &FlowKey, new: &NewFlow) -> Result<FlowKey, Reason> {
    let &NewFlow { dst, snat, flags, seen, now, packets, bytes } = new;
    // Planned in this CPU's scratch slot, not on the stack: two entries and their keys are
    // more than the fast path's share of the 512 bytes leaves.
    let slot = PLAN.get_ptr_mut(0).ok_or(Reason::DropFlowInsert)?;
    // The plan is made whole once; each attempt gives it its source and flags only. (Made
    // whole per attempt, its entries are zero-filled by a memset that 6.1's verifier walks
    // byte by byte in every attempt, past its million instructions.)
    // SAFETY: this CPU's slot, which nothing else uses while the program runs here.
    unsafe {
        *slot = plan_flow(key, dst, None, flags, now);
        ((*slot).orig.packets, (*slot).orig.bytes) = (u64::from(packets), u64::from(bytes));
    }
    let plan = |src: Option<Endpoint>, extra| {
        // SAFETY: as above.
        let plan = unsafe { &mut *slot };
        plan.orig.xlate = FlowKey::new(key.proto, src.unwrap_or(key.src_ep()), dst);
        plan.reply_key = plan.orig.xlate.reversed();
        plan.orig.flags = flags | extra | seen;
        plan.reply.flags = flags | extra | CT_F_REPLY;
        &*plan
    };
    let addr = match snat {
        // The client's own port; if another flow has the reply tuple (two forwards to one
        // service, used from one client port), another port, as netfilter's null binding
        // finds one: the server then tells the two flows apart.
        SourceNat::Keep => match insert(plan(None, 0)) {
            Err(InsertError::TupleTaken | InsertError::EgressTaken) => key.src,
            Err(InsertError::Failed) => return Err(Reason::DropFlowInsert),
            Ok(xlate) => return Ok(xlate),
        },
        SourceNat::Public if key.proto != IPPROTO_ICMP => {
            // A binding this packet created stays even if the flow fails: another CPU may
            // already use it. The controller releases bindings no flow holds.
            let port = binding(cfg, key, now)?;
            let src = Endpoint::new(cfg.public_addr, port);
            let planned = plan(Some(src), 0);
            // A LAN host to its own binding: one entry (see `insert_own`). Only here: no other
            // kind of flow can be its own reply.
            let inserted = if planned.reply_key == planned.orig_key { insert_own(planned) } else { insert(planned) };
            let xlate = inserted.map_err(|_| Reason::DropFlowInsert)?;
            // The flow is in, then its binding checked again: `flows flush` releases bindings
            // first and flows after, so a flow made meanwhile on a released port is undone
            // here, and two LAN hosts never share a public port.
            let internal = ProtoEndpoint::new(key.proto, key.src_ep());
            if BINDINGS.get_ptr(&internal).is_none_or(|b| unsafe { (*b).port } != port) {
                // SAFETY: this CPU's plan slot, as above.
                remove_planned(unsafe { &*slot });
                return Err(Reason::DropFlowInsert);
            }
            return Ok(xlate);
        }
        SourceNat::Public => cfg.public_addr,
        SourceNat::Lan => cfg.lan_addr,
    };
    // A forward's flow that needs another port than its client's (attempt 0 found the tuple
    // taken) leaves ingress with it, or it would leave like the flow that has the client's.
    // A constant per kind, not a choice carried through the loop: the verifier walks every
    // attempt, and 6.1's gives up at a million instructions. (A hairpinned flow whose packets
    // would leave ingress like another's is refused, counted: two flows from one LAN client
    // port to two forwards of one service.)
    let extra = if snat == SourceNat::Keep { CT_F_SPORT_AT_INGRESS } else { 0 };
    for attempt in 0..PORT_ALLOC_TRIES {
        let Some(port) = candidate_port(cfg, key, attempt) else {
            break;
        };
        let src = Endpoint::new(addr, PortBe::from_host(port));
        if snat == SourceNat::Public && forwarded(key.proto, src) {
            continue;
        }
        match insert(plan(Some(src), extra)) {
            Err(InsertError::TupleTaken | InsertError::EgressTaken) => {}
            Err(InsertError::Failed) => return Err(Reason::DropFlowInsert),
            Ok(xlate) => return Ok(xlate),
        }
    }
    Err(Reason::DropNoPort)
}

/// Whether a port-forward owns the public endpoint `ep`.
#[inline(always)]
fn forwarded(proto: u8, ep: Endpoint) -> bool {
    FORWARDS.get_ptr(&ProtoEndpoint::new(proto, ep)).is_some()
}

/// The public port bound to the source of `key` (RFC 4787 REQ-1: the same for every
/// destination), found or created.
#[inline(always)]
fn binding(cfg: &Config, key: &FlowKey, now: u64) -> Result<PortBe, Reason> {
    let internal = ProtoEndpoint::new(key.proto, key.src_ep());
    if let Some(b) = BINDINGS.get_ptr_mut(&internal) {
        // SAFETY: pointer from a successful lookup; a torn write of a time is harmless.
        unsafe {
            if age_ns(now, (*b).last_used_ns) >= REFRESH_NS {
                (*b).last_used_ns = now;
            }
            return Ok((*b).port);
        }
    }
    for attempt in 0..PORT_ALLOC_TRIES {
        let Some(port) = candidate_port(cfg, key, attempt) else {
            break;
        };
        let public = Endpoint::new(cfg.public_addr, PortBe::from_host(port));
        if forwarded(key.proto, public) {
            continue;
        }
        let claim = ProtoEndpoint::new(key.proto, public);
        match BOUND_PORTS.insert(&claim, &key.src_ep(), BPF_NOEXIST as u64) {
            Err(EEXIST) => continue,
            Err(_) => return Err(Reason::DropFlowInsert),
            Ok(()) => {}
        }
        // Claimed, then checked again: `map add` inserts its forward, then checks the bound
        // ports, so between the two of them one sees the other, and a port is never both.
        if forwarded(key.proto, public) {
            let _ = BOUND_PORTS.remove(&claim);
            continue;
        }
        let b = Binding { port: public.port, _pad16: 0, _pad32: 0, last_used_ns: now };
        return match BINDINGS.insert(&internal, &b, BPF_NOEXIST as u64) {
            Ok(()) => Ok(public.port),
            // Another CPU bound this endpoint meanwhile: use its port, give ours back.
            Err(e) => {
                let _ = BOUND_PORTS.remove(&claim);
                // SAFETY: a plain copy out of the map value.
                match unsafe { BINDINGS.get(&internal) } {
                    Some(theirs) if e == EEXIST => Ok(theirs.port),
                    _ => Err(Reason::DropFlowInsert),
                }
            }
        };
    }
    Err(Reason::DropNoPort)
}

/// The LAN endpoint holding the public endpoint `ep` for `proto`, if a binding does.
#[inline(always)]
pub fn bound(proto: u8, ep: Endpoint) -> Option<Endpoint> {
    // SAFETY: a plain copy out of the map value.
    unsafe { BOUND_PORTS.get(&ProtoEndpoint::new(proto, ep)) }.copied()
}
