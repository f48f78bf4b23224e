//! The fast path's flow cache (see `hairpin_common::flow_cache`): a copy of an established
//! flow direction's translation and next hop in one cache line of a per-CPU table, so that
//! its packets skip the conntrack hash lookup. Conntrack stays the truth: a slot is filled
//! only right after conntrack forwarded a packet of the flow on the fast path, serves at most
//! `fresh_ns` (4 s, less under short idle timeouts), and is ignored once the generation moves
//! (flows removed) or a packet brings a state bit it has not recorded. Per CPU, so slots are never written by two CPUs at once
//! (an XDP program runs to completion on its CPU).

use aya_ebpf::{Global, helpers::bpf_get_smp_processor_id};
use hairpin_common::{
    CT_S_ALL, CtEntry, FlowKey,
    flow_cache::{STATE_SHIFT, Slot, WAYS, set_of, slot_index},
};

use crate::maps::{CT_GEN, FLOW_CACHE};

/// Sets per CPU, set by the loader to match the map's size; 0 (the default) turns the cache
/// off.
#[unsafe(no_mangle)]
static FLOW_CACHE_SETS: Global<u32> = Global::new(0);

/// The flow table's generation. Read before conntrack is, so that a slot filled from an entry
/// the controller removes meanwhile carries the generation from before its removal.
#[inline(always)]
pub fn generation() -> u32 {
    CT_GEN.get(0).copied().unwrap_or(0)
}

/// The first slot of `key`'s set on this CPU, and the number of sets (0: no cache).
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

/// When and under which generation a packet looks its flow up: a slot checked less than
/// `fresh_ns` before `now`, of generation `generation`, may serve it.
pub struct Epoch {
    pub now: u64,
    pub fresh_ns: u64,
    pub generation: u32,
}

/// The slot for `key` if it may serve this packet: fresh in `epoch`, with every state bit in
/// `seen` recorded, and a next hop that has passed a packet this long.
#[inline(always)]
pub fn lookup(key: &FlowKey, epoch: &Epoch, seen: u32, tot_len: u16) -> Option<*const Slot> {
    let base = set_base(key)?;
    let seen = (seen >> STATE_SHIFT) as u8;
    for way in 0..WAYS {
        let Some(slot) = FLOW_CACHE.get_ptr(base + way) else { continue };
        // SAFETY: read through a pointer from a successful lookup; only this CPU writes it.
        unsafe {
            if (*slot).key == *key {
                let ok = (*slot).generation == epoch.generation
                    && epoch.now.wrapping_sub((*slot).checked_ns) < epoch.fresh_ns
                    && (*slot).state & seen == seen
                    && tot_len <= (*slot).hop_len_ok;
                return ok.then_some(slot);
            }
        }
    }
    None
}

/// Copies the conntrack entry `entry` of `key`, which just forwarded a packet on the fast
/// path, into its set: over its own slot, else an empty or expired one. Fresh slots of other
/// flows stay: with more flows than ways the newcomer is served by conntrack, instead of
/// flows evicting each other on every packet.
#[inline(always)]
pub fn fill(key: &FlowKey, entry: *const CtEntry, epoch: &Epoch) {
    let Some(base) = set_base(key) else { return };
    let mut target = None;
    for way in 0..WAYS {
        let Some(slot) = FLOW_CACHE.get_ptr_mut(base + way) else { continue };
        // SAFETY: as in `lookup`.
        unsafe {
            if (*slot).key == *key {
                target = Some(slot);
                break;
            }
            if target.is_none() && epoch.now.wrapping_sub((*slot).checked_ns) >= epoch.fresh_ns {
                target = Some(slot);
            }
        }
    }
    let Some(slot) = target else { return };
    // SAFETY: `slot` as above; `entry` comes from a successful conntrack lookup.
    unsafe {
        *slot = Slot {
            key: *key,
            xlate: (*entry).xlate,
            hop_macs: (*entry).hop_macs,
            hop_ifindex: (*entry).hop_ifindex,
            checked_ns: epoch.now,
            generation: epoch.generation,
            hop_len_ok: (*entry).hop_len_ok,
            state: (((*entry).flags & CT_S_ALL) >> STATE_SHIFT) as u8,
            hop_is_ingress: (*entry).hop_is_ingress as u8,
        };
    }
}

/// Makes this CPU's slot for `key`, if any, unusable: the flow of that tuple was just
/// created anew, so any copy of an earlier one (evicted from conntrack by the kernel's LRU,
/// which no generation records) is wrong. Other CPUs' copies expire within `fresh_ns`; a
/// flow's packets normally arrive on one CPU.
#[inline(always)]
pub fn forget(key: &FlowKey) {
    let Some(base) = set_base(key) else { return };
    for way in 0..WAYS {
        let Some(slot) = FLOW_CACHE.get_ptr_mut(base + way) else { continue };
        // SAFETY: as in `lookup`.
        unsafe {
            if (*slot).key == *key {
                (*slot).checked_ns = 0;
            }
        }
    }
}

/// Bumps the generation: every CPU's slots stop serving. For removals the dataplane makes
/// itself (rare: an entry orphaned by LRU eviction). Two CPUs racing may bump it once between
/// them; either way it moved.
#[inline(always)]
pub fn invalidate_all() {
    if let Some(g) = CT_GEN.get_ptr_mut(0) {
        // SAFETY: pointer from a successful lookup of an array element.
        unsafe { *g = (*g).wrapping_add(1) };
    }
}
