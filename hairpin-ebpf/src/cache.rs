//! The fast path's flow cache (see `hairpin_common::flow_cache`): a copy of an established
//! flow direction's translation and next hop in one cache line of a per-CPU table, so that
//! its packets skip the conntrack hash lookup. Conntrack stays the truth: a slot is filled
//! only right after conntrack forwarded a packet of the flow on the fast path, serves at most
//! `fresh_ns` (4 s, less under short idle timeouts), and is ignored once the generation moves
//! (flows removed) or a packet brings a state bit it has not recorded. Per CPU, so a slot is
//! never written by two CPUs at once (an XDP program runs to completion on its CPU).

use aya_ebpf::{Global, helpers::bpf_get_smp_processor_id};
use hairpin_common::{
    CT_S_RST, CT_S_SYN, CtEntry, FlowKey, NextHop, Timeouts,
    flow_cache::{
        ACK_REPORT, GEN_DATAPLANE, Slot, WAYS, fresh_ns, generation as combine, serves_at, set_of, slot_index, stamp,
    },
    nat::ack_advances,
};

use crate::{
    ctx::Packet,
    maps::{CT, CT_GEN, FLOW_CACHE, FLOW_COUNTS},
};

/// Sets per CPU, set by the loader to match the map's size; 0 (the default) turns the cache
/// off.
#[unsafe(no_mangle)]
static FLOW_CACHE_SETS: Global<u32> = Global::new(0);

/// The flow table's generation, both writers' counters in one word. Read before conntrack
/// is, so that a slot filled from an entry removed meanwhile carries the generation from
/// before its removal. Without a cache nothing uses it: 0, and no map is read (the verifier
/// drops the reads, `FLOW_CACHE_SETS` being read-only data).
#[inline(always)]
pub fn generation() -> u32 {
    if FLOW_CACHE_SETS.load() == 0 {
        return 0;
    }
    let (Some(ctl), Some(dp)) = (CT_GEN.get(0), CT_GEN.get(GEN_DATAPLANE)) else { return 0 };
    combine(*ctl, *dp)
}

/// The first slot of `key`'s set on this CPU (`None`: no cache).
#[inline(always)]
fn set_base(key: &FlowKey) -> Option<u32> {
    let sets = FLOW_CACHE_SETS.load();
    if sets == 0 {
        return None;
    }
    // SAFETY: a helper without preconditions.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    Some(slot_index(cpu, sets, set_of(key, sets), 0))
}

/// When and under which generation a packet looks its flow up: a slot of generation
/// `generation` whose deadline is after `now` may serve it; a slot filled now serves for
/// `fresh_ns(timeouts)`.
pub struct Epoch<'a> {
    pub now: u64,
    pub generation: u32,
    pub timeouts: &'a Timeouts,
}

impl Epoch<'_> {
    /// Whether `slot` may still serve (its flow aside).
    #[inline(always)]
    fn current(&self, slot: &Slot) -> bool {
        slot.generation == self.generation && serves_at(stamp(self.now), slot.fresh_until)
    }
}

/// A slot that may serve a packet, and its index (where its [`count`]s are kept).
pub struct Hit {
    pub slot: *const Slot,
    pub index: u32,
}

/// The slot for `key` if it may serve this packet: current in `epoch`, with every state bit
/// in `seen` recorded, and a next hop the packet fits (see `Packet::fits`). Never an RST or a
/// SYN, whatever the flow recorded before: conntrack judges an RST against its window (and
/// counts the ones it ignores), and re-opens a closed flow's tuple for a SYN.
#[inline(always)]
pub fn lookup(pkt: &impl Packet, key: &FlowKey, epoch: &Epoch, seen: u32, tot_len: u16) -> Option<Hit> {
    if seen & (CT_S_RST | CT_S_SYN) != 0 {
        return None;
    }
    let base = set_base(key)?;
    let seen = Slot::state_of(seen);
    for way in 0..WAYS {
        let index = base + way;
        let Some(slot) = FLOW_CACHE.get_ptr(index) else { continue };
        // SAFETY: read through a pointer from a successful lookup; only this CPU writes it.
        unsafe {
            if (*slot).key == *key {
                let ok = epoch.current(&*slot)
                    && (*slot).state & seen == seen
                    && pkt.fits((*slot).hop.ifindex, tot_len, (*slot).hop.len_ok);
                return ok.then_some(Hit { slot, index });
            }
        }
    }
    None
}

/// Counts a packet (`packets` segments, `bytes` long) the slot at `index` served for flow
/// direction `key`, and notes a TCP segment's acknowledgment number `ack`: once that has
/// advanced [`ACK_REPORT`] past what the conntrack entry is known to have, it is written there
/// (where RSTs are judged against it). One lookup of the slot's counts for both.
#[inline(always)]
pub fn count(index: u32, key: &FlowKey, packets: u32, bytes: u16, ack: Option<u32>) {
    let Some(c) = FLOW_COUNTS.get_ptr_mut(index) else { return };
    // SAFETY: pointer from a successful lookup; only this CPU writes this slot's counts. The
    // conntrack entry comes from a successful lookup (a racing delete can only make the write
    // land in a recycled element, which its own next segment corrects).
    unsafe {
        (*c).packets += u64::from(packets);
        (*c).bytes += u64::from(bytes);
        let Some(ack) = ack else { return };
        if !ack_advances(ack, (*c).ack) || ack.wrapping_sub((*c).ack) < ACK_REPORT {
            return;
        }
        (*c).ack = ack;
        if let Some(e) = CT.get_ptr_mut(key) {
            (*e).record_ack(ack);
        }
    }
}

/// Copies what conntrack just forwarded a packet of flow direction `key` with (`xlate`,
/// `hop`; `flags`: the entry's `CT_S_*` bits once this packet's were recorded) into the
/// flow's set: over its own slot, else an empty one or one no longer current. Current slots
/// of other flows stay: with more flows than ways the newcomer is served by conntrack,
/// instead of flows evicting each other on every packet. What the slot served goes into its
/// flow direction's conntrack entry first: `entry` (`key`'s), or the entry of the flow it
/// held (none if that flow was made anew, see [`forget`]).
#[inline(always)]
pub fn fill(key: &FlowKey, xlate: &FlowKey, hop: &NextHop, flags: u32, epoch: &Epoch, entry: *mut CtEntry) {
    let Some(base) = set_base(key) else { return };
    let mut target = None;
    for way in 0..WAYS {
        let index = base + way;
        let Some(slot) = FLOW_CACHE.get_ptr_mut(index) else { continue };
        // SAFETY: as in `lookup`.
        unsafe {
            if (*slot).key == *key {
                target = Some((slot, index));
                break;
            }
            if target.is_none() && ((*slot).key.proto == 0 || !epoch.current(&*slot)) {
                target = Some((slot, index));
            }
        }
    }
    let Some((slot, index)) = target else { return };
    // SAFETY: `slot` as above, its counts likewise; `entry` comes from a successful conntrack
    // lookup, as does the other flow's (a racing delete can only make the add land in a
    // recycled element).
    unsafe {
        let Some(c) = FLOW_COUNTS.get_ptr_mut(index) else { return };
        if (*c).packets != 0 {
            let owner = if (*slot).key == *key {
                Some(entry)
            } else if (*slot).key.proto != 0 {
                CT.get_ptr_mut(&(*slot).key)
            } else {
                None
            };
            if let Some(e) = owner {
                (*e).packets += (*c).packets;
                (*e).bytes += (*c).bytes;
            }
            (*c).packets = 0;
            (*c).bytes = 0;
        }
        // What the entry has now: acknowledgments the slot serves are reported past it.
        (*c).ack = (*entry).ack;
    }
    // SAFETY: `slot` as above. Field by field: a whole `Slot` value would be built on the
    // stack first, and the program's stack is near the verifier's 512-byte limit.
    unsafe {
        (*slot).key = *key;
        (*slot).xlate = *xlate;
        (*slot).hop = *hop;
        (*slot).fresh_until = stamp(epoch.now + fresh_ns(epoch.timeouts));
        (*slot).generation = epoch.generation;
        (*slot).state = Slot::state_of(flags);
    }
}

/// Empties this CPU's slot for `key`, if any: the flow of that tuple was just created anew,
/// so any copy of an earlier one (evicted from conntrack by the kernel's LRU, which no
/// generation records) is wrong. Other CPUs' copies expire within `fresh_ns`; a flow
/// direction's packets normally arrive on one CPU.
#[inline(always)]
pub fn forget(key: &FlowKey) {
    let Some(base) = set_base(key) else { return };
    for way in 0..WAYS {
        let Some(slot) = FLOW_CACHE.get_ptr_mut(base + way) else { continue };
        // SAFETY: as in `lookup`.
        unsafe {
            if (*slot).key == *key {
                // Protocol 0: no packet's key matches it, and `fill` may take it.
                (*slot).key.proto = 0;
            }
        }
    }
}

/// Bumps the dataplane's half of the generation: every CPU's slots stop serving. For
/// removals the dataplane makes itself (rare: an entry orphaned by LRU eviction), and for new
/// flows while conntrack is under pressure. It has its
/// own counter, so that a racing bump by the controller can never move the generation back;
/// two CPUs racing here may bump it once between them, which still moves it.
#[inline(always)]
pub fn invalidate_all() {
    if let Some(g) = CT_GEN.get_ptr_mut(GEN_DATAPLANE) {
        // SAFETY: pointer from a successful lookup of an array element.
        unsafe { *g = (*g).wrapping_add(1) };
    }
}
