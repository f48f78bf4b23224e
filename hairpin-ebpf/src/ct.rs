//! Conntrack: finding a flow, refreshing its state, inserting a planned flow's both directions
//! (and their egress entries) together or not at all, and confirming it. What a new flow's
//! source becomes (bindings, port choice) is `snat.rs`'s, as Cilium keeps NAT apart from
//! conntrack.
//!
//! A flow is created in `CT_NEW` and moved to `CT` once the kernel has forwarded it both ways
//! ([`confirm`]): each table is an LRU of its own, so that flows that never confirm (a flood
//! of SYNs at a forward, a scan) evict only each other, never a confirmed flow. The fast path
//! serves flows found in `CT` only.

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST},
    helpers::{bpf_jiffies64, bpf_ktime_get_boot_ns},
};
use hairpin_common::{
    CT_F_ACK_NUM, CT_F_CONFIRMED, CT_F_LEFT, CT_F_REPLY, CT_F_SPORT_AT_INGRESS, CT_S_FIN, CT_S_RST, Counter, CtEntry,
    EgressEntry, FlowKey,
    nat::{FlowPlan, egress, leaving_ingress, rst_in_window},
};

use crate::{
    maps::{CLOCK, CT, CT_NEW, EGRESS, EGRESS_NEW, EGRESS_SCRATCH},
    stats,
};

/// How long before `now` the time `then` was, both from [`now_ns`]: none for a time another
/// CPU stamped within the jiffy, ahead of this one's clock (not a wrapped, huge age).
#[inline(always)]
pub fn age_ns(now: u64, then: u64) -> u64 {
    now.saturating_sub(then)
}

/// `bpf_map_update_elem`'s error for an existing key under `BPF_NOEXIST`.
pub const EEXIST: i32 = -17;

/// `bpf_ktime_get_boot_ns`, read at most once a jiffy per CPU: reading the clock source
/// (the TSC, slow in a VM) for every packet was a visible share of the fast path, and
/// timeouts in seconds need no better than a jiffy. Boot time keeps counting across suspend,
/// so idle timeouts stay honest. A time another CPU stamped may be up to a jiffy ahead of it:
/// ages are taken with [`age_ns`].
#[inline(always)]
pub fn now_ns() -> u64 {
    // SAFETY: helpers without preconditions; the per-CPU slot has no other writer while the
    // program runs on this CPU.
    unsafe {
        let jiffies = bpf_jiffies64();
        match CLOCK.get_ptr_mut(0) {
            Some(c) if (*c)[0] == jiffies => (*c)[1],
            Some(c) => {
                let now = bpf_ktime_get_boot_ns();
                *c = [jiffies, now];
                now
            }
            None => bpf_ktime_get_boot_ns(),
        }
    }
}

/// Last-seen times are written at most this often: a write per packet would bounce the
/// entry's cache line between CPUs for a precision no timeout needs.
pub const REFRESH_NS: u64 = 1_000_000_000;

/// A flow direction found by [`lookup_refresh`].
pub struct Found {
    /// The whole translation.
    pub xlate: FlowKey,
    /// The entry itself, for the fast path's next-hop cache.
    pub entry: *mut CtEntry,
    /// Its last-seen time was a second old or more (and is refreshed now): anything cached in
    /// it is to be checked again.
    pub stale: bool,
    /// The kernel has forwarded the flow both ways (found in `CT`, not `CT_NEW`): the fast
    /// path may serve it.
    pub confirmed: bool,
    /// Its `CT_F_SPORT_AT_INGRESS` flag, for [`leaving_ingress`].
    pub sport_flag: u32,
}

impl Found {
    /// The tuple its packets leave ingress with on the slow path.
    #[inline(always)]
    pub fn leaving_ingress(&self, key: &FlowKey) -> FlowKey {
        leaving_ingress(key, &self.xlate, self.sport_flag)
    }
}

/// A TCP segment's numbers, for [`lookup_refresh`].
pub struct Tcp {
    /// Its sequence and acknowledgment numbers, in the packet (bounds checked).
    pub nums: *const [u8; 8],
    /// Byte 13 of its header.
    pub flags: u8,
}

const TCP_ACK: u8 = 0x10;

/// The flow `key` belongs to, with its last-seen time refreshed and the packet's state bits
/// (`ct_state_bits`) recorded. For a TCP segment (`tcp`), its acknowledgment number is kept
/// if it advances (`CtEntry::ack`), and an RST outside the window of what its receiver has
/// acknowledged counts for nothing but the packet it is (`TcpRstOutOfWindow`): forwarded, but
/// the flow stays as it was, as netfilter ignores one.
///
/// An original-direction entry whose reply entry has gone (LRU eviction) is removed instead of
/// used: the reply entry was the claim on the flow's public tuple, and a newer flow may hold it
/// now (then the entry found there leads elsewhere). The packet then starts a flow afresh.
/// (An orphaned reply entry still holds its claim and still leads to its client; the
/// controller sweeps it.) The twin is checked when the entry is stale (see [`Found`]), not on
/// every packet: a second lookup per packet would cost the fast path a fifth of its budget, and
/// eviction of a live flow's reply entry is rare. (With the flow cache, a flow is looked up
/// here only every `flow_cache::fresh_ns`, so that is also how long an orphan can go unseen.)
/// Removing one bumps the generation: no CPU's cached copy of it serves again. Should two
/// CPUs both find the orphan, the later removal may take the flow the earlier one re-created;
/// its own creation right after restores it.
#[inline(always)]
pub fn lookup_refresh(key: &FlowKey, now: u64, seen: u32, tcp: Option<Tcp>, packets: u32, bytes: u16) -> Option<Found> {
    let (entry, confirmed) = match CT.get_ptr_mut(key) {
        Some(e) => (e, true),
        None => (CT_NEW.get_ptr_mut(key)?, false),
    };
    // SAFETY: the pointer comes from a successful lookup; a racing delete can only make us
    // write into a recycled element, which the next packet rewrites anyway.
    unsafe {
        let stale = age_ns(now, (*entry).last_seen_ns) >= REFRESH_NS;
        if stale {
            if (*entry).flags & CT_F_REPLY == 0 && !twin_of(key, &(*entry).xlate) {
                let (xlate, flags) = ((*entry).xlate, (*entry).flags);
                remove_egress(key, &xlate, flags);
                remove_entry(key);
                crate::cache::invalidate_all();
                return None;
            }
            (*entry).last_seen_ns = now;
        }
        let mut seen = seen;
        if let Some(Tcp { nums, flags }) = tcp {
            let [s0, s1, s2, s3, a0, a1, a2, a3] = *nums;
            let (seq, ack) = (u32::from_be_bytes([s0, s1, s2, s3]), u32::from_be_bytes([a0, a1, a2, a3]));
            if seen & CT_S_RST != 0 && !rst_counts(key, &(*entry).xlate, seq) {
                seen &= !CT_S_RST;
                stats::bump(Counter::TcpRstOutOfWindow, 1);
            }
            if flags & TCP_ACK != 0 {
                (*entry).record_ack(ack);
            }
        }
        // Bits only ever get set, and rarely: test first to keep the line shared. Only this
        // direction's packets write this entry; should two CPUs race and lose a bit, the next
        // packet that carries it sets it again (Rust has no atomic RMW for the BPF target).
        if (*entry).flags & seen != seen {
            (*entry).flags |= seen;
        }
        // Every packet: the line is this direction's, written by the CPU its packets arrive on.
        (*entry).packets += u64::from(packets);
        (*entry).bytes += u64::from(bytes);
        let sport_flag = (*entry).flags & CT_F_SPORT_AT_INGRESS;
        Some(Found { xlate: (*entry).xlate, entry, stale, confirmed, sport_flag })
    }
}

/// Whether the reply entry of the original direction `key` (translated to `xlate`) is there
/// and still this flow's.
#[inline(always)]
fn twin_of(key: &FlowKey, xlate: &FlowKey) -> bool {
    // SAFETY: read through a pointer from a successful lookup.
    find(&xlate.reversed()).is_some_and(|twin| unsafe { (*twin).xlate } == key.reversed())
}

/// Whether an RST with sequence number `seq` in the flow direction `key` (translated to
/// `xlate`) counts: its receiver (the twin) has acknowledged nothing yet, or near it.
#[inline(always)]
fn rst_counts(key: &FlowKey, xlate: &FlowKey, seq: u32) -> bool {
    // SAFETY: read through a pointer from a successful lookup.
    let twin = find(&xlate.reversed()).filter(|t| unsafe { (**t).xlate } == key.reversed());
    twin.is_none_or(|t| unsafe { (*t).flags & CT_F_ACK_NUM == 0 || rst_in_window(seq, (*t).ack) })
}

/// The entry of the flow direction `key`, confirmed or not.
#[inline(always)]
fn find(key: &FlowKey) -> Option<*mut CtEntry> {
    CT.get_ptr_mut(key).or_else(|| CT_NEW.get_ptr_mut(key))
}

/// Removes the entry of the flow direction `key` from whichever table has it.
#[inline(always)]
fn remove_entry(key: &FlowKey) {
    let _ = CT.remove(key);
    let _ = CT_NEW.remove(key);
}

/// The entry of the flow direction `key`, without counting it as traffic (an ICMP error about
/// a flow does not keep it alive).
#[inline(always)]
pub fn lookup(key: &FlowKey) -> Option<CtEntry> {
    // SAFETY: a plain copy out of the map value.
    find(key).map(|e| unsafe { *e })
}

/// Why a planned flow was not inserted.
pub enum InsertError {
    /// Its reply tuple belongs to another flow: another source port may do.
    TupleTaken,
    /// Its packets would leave ingress with another live flow's tuple: the source port
    /// written at ingress, or another, may do.
    EgressTaken,
    /// A map operation failed; nothing of the flow is left behind.
    Failed,
}

/// Inserts a planned flow (unconfirmed, into `CT_NEW`): reply entry (claiming the reply
/// tuple), original entry, egress rewrites. On failure, whatever this call inserted is removed
/// again, and only that.
#[inline(always)]
pub fn insert(plan: &FlowPlan) -> Result<FlowKey, InsertError> {
    // A reply entry may already be there for this very flow: confirmed, left by its original
    // (evicted), which the flow makes again, unconfirmed; or made by a packet of it on another
    // CPU. Any other owner has the tuple.
    // SAFETY (both closures): reads through pointers from successful lookups.
    let same = |e: *mut CtEntry| unsafe { (*e).xlate } == plan.reply.xlate;
    if let Some(e) = CT.get_ptr_mut(&plan.reply_key) {
        if !same(e) {
            return Err(InsertError::TupleTaken);
        }
        let _ = CT.remove(&plan.reply_key);
    }
    // Whether the reply entry is this call's to remove on failure.
    let ours = match CT_NEW.insert(&plan.reply_key, &plan.reply, BPF_NOEXIST as u64) {
        Ok(()) => true,
        Err(EEXIST) if CT_NEW.get_ptr_mut(&plan.reply_key).is_some_and(same) => false,
        Err(EEXIST) => return Err(InsertError::TupleTaken),
        Err(_) => return Err(InsertError::Failed),
    };
    let undo_reply = || {
        if ours {
            let _ = CT_NEW.remove(&plan.reply_key);
        }
    };
    if let Err(e) = CT_NEW.insert(&plan.orig_key, &plan.orig, BPF_NOEXIST as u64) {
        // Lost a race for the original direction: the winner's flow stands (its packets keep
        // it fresh; this one is translated by it).
        // SAFETY: a plain copy out of the map value.
        let winner = if e == EEXIST { unsafe { CT_NEW.get(&plan.orig_key) }.map(|w| w.xlate) } else { None };
        return match winner {
            Some(w) => {
                if w != plan.orig.xlate {
                    undo_reply();
                }
                Ok(w)
            }
            None => {
                undo_reply();
                Err(InsertError::Failed)
            }
        };
    }
    // Each egress entry is removed again only if this call made it.
    let mut egress = insert_egress(&plan.orig_key, &plan.orig);
    if egress.is_ok() {
        egress = insert_egress(&plan.reply_key, &plan.reply);
        if egress.is_err() {
            remove_egress(&plan.orig_key, &plan.orig.xlate, plan.orig.flags);
        }
    }
    if let Err(e) = egress {
        let _ = CT_NEW.remove(&plan.orig_key);
        undo_reply();
        return Err(e);
    }
    // The tuples are this flow's now: this CPU's copies of flows that held them before (and
    // were evicted by the LRU, unseen by any generation) must not serve it.
    crate::cache::forget(&plan.orig_key);
    if ours {
        crate::cache::forget(&plan.reply_key);
    }
    Ok(plan.orig.xlate)
}

/// Inserts the egress entry of the flow direction `key`, over one a flow evicted from
/// conntrack left (the sweep has not removed it yet).
/// A LAN host's packets to its own binding (RFC 5780's hairpinning test): translated, they
/// come back to it from its public endpoint, and its tuple reversed is its own, so the flow is
/// one entry that serves both directions (see `nat::is_own`), with its egress entry.
#[inline(always)]
pub fn insert_own(plan: &FlowPlan) -> Result<FlowKey, InsertError> {
    match CT_NEW.insert(&plan.orig_key, &plan.orig, BPF_NOEXIST as u64) {
        Ok(()) => {}
        // Made by a packet on another CPU: the same translation, or another flow's tuple.
        Err(EEXIST) => {
            // SAFETY: a plain copy out of the map value.
            return match unsafe { CT_NEW.get(&plan.orig_key) }.map(|w| w.xlate) {
                Some(w) if w == plan.orig.xlate => Ok(w),
                _ => Err(InsertError::TupleTaken),
            };
        }
        Err(_) => return Err(InsertError::Failed),
    }
    if let Err(e) = insert_egress(&plan.orig_key, &plan.orig) {
        let _ = CT_NEW.remove(&plan.orig_key);
        return Err(e);
    }
    crate::cache::forget(&plan.orig_key);
    Ok(plan.orig.xlate)
}

/// Inserts the egress entry of the (unconfirmed) flow direction `key` into `EGRESS_NEW`. One
/// already there, or in `EGRESS`, is another live flow's (`EgressTaken`: another port may do),
/// or was left by a flow the conntrack LRU evicted (the sweep has not removed it yet), which
/// this one replaces.
#[inline(always)]
fn insert_egress(key: &FlowKey, entry: &CtEntry) -> Result<(), InsertError> {
    // Built in this CPU's scratch slot, not on the stack, which flow creation has little of.
    let s = EGRESS_SCRATCH.get_ptr_mut(0).ok_or(InsertError::Failed)?;
    // SAFETY: this CPU's slot, which nothing else uses while the program runs here; the other
    // entry is read through pointers from successful lookups.
    unsafe {
        ((*s).0, (*s).1) = egress(key, entry);
        let (egress_key, value) = (&(*s).0, &(*s).1);
        // An entry is live while its owner's conntrack entry, in the table of its kind, still
        // holds its translation.
        if let Some(other) = EGRESS.get_ptr(egress_key) {
            let (owner, xlate) = ((*other).ct_key, (*other).xlate(egress_key));
            if owner != *key && CT.get_ptr(&owner).is_some_and(|e| (*e).xlate == xlate) {
                return Err(InsertError::EgressTaken);
            }
        }
        match EGRESS_NEW.insert(egress_key, value, BPF_NOEXIST as u64) {
            Ok(()) => return Ok(()),
            Err(EEXIST) => {}
            Err(_) => return Err(InsertError::Failed),
        }
        if let Some(other) = EGRESS_NEW.get_ptr(egress_key) {
            let (owner, xlate) = ((*other).ct_key, (*other).xlate(egress_key));
            if owner != *key && CT_NEW.get_ptr(&owner).is_some_and(|e| (*e).xlate == xlate) {
                return Err(InsertError::EgressTaken);
            }
        }
        EGRESS_NEW.insert(egress_key, value, BPF_ANY as u64).map_err(|_| InsertError::Failed)
    }
}

/// Removes a flow `insert` made from `plan`: both entries and their egress entries.
#[inline(always)]
pub fn remove_planned(plan: &FlowPlan) {
    remove_egress(&plan.orig_key, &plan.orig.xlate, plan.orig.flags);
    remove_egress(&plan.reply_key, &plan.reply.xlate, plan.reply.flags);
    remove_entry(&plan.orig_key);
    remove_entry(&plan.reply_key);
}

/// Removes the egress entry of the flow direction `key` translated to `xlate` (entry flags
/// `flags`).
#[inline(always)]
fn remove_egress(key: &FlowKey, xlate: &FlowKey, flags: u32) {
    let egress_key = leaving_ingress(key, xlate, flags);
    let _ = EGRESS.remove(&egress_key);
    let _ = EGRESS_NEW.remove(&egress_key);
}

/// For a TCP SYN (without ACK) of the flow direction `found`: if the connection was closing or
/// closed (a RST either way, or a FIN each way), removes the flow, both entries (the other
/// only if it is still this flow's) and their egress entries, so that the SYN opens a new one
/// without the old state bits, as netfilter re-opens a tuple in TIME_WAIT or CLOSE. Returns
/// whether it did. No CPU's cached copy of the old flow serves again.
#[inline(always)]
pub fn reopen_if_closed(key: &FlowKey, found: &Found) -> bool {
    let xlate = &found.xlate;
    let twin = xlate.reversed();
    // SAFETY: reads through pointers from successful lookups (a recycled entry reads as
    // another flow's, and its translation then tells).
    let (mine, theirs) = unsafe {
        let theirs = find(&twin).filter(|t| (**t).xlate == key.reversed()).map_or(0, |t| (*t).flags);
        ((*found.entry).flags, theirs)
    };
    let closed = (mine | theirs) & CT_S_RST != 0 || mine & theirs & CT_S_FIN != 0;
    if !closed {
        return false;
    }
    if theirs != 0 {
        remove_egress(&twin, &key.reversed(), theirs);
        remove_entry(&twin);
    }
    remove_egress(key, xlate, mine);
    remove_entry(key);
    crate::cache::invalidate_all();
    true
}

/// What egress knows of a packet leaving ingress as `egress_key`: its flow direction's
/// entry, if it has one.
#[inline(always)]
pub fn egress_of(egress_key: &FlowKey) -> Option<EgressEntry> {
    // SAFETY: plain copies out of the map values.
    unsafe { EGRESS.get(egress_key).or_else(|| EGRESS_NEW.get(egress_key)) }.copied()
}

/// Records that a packet of the flow direction `eg` describes has left through the kernel:
/// `CT_F_LEFT` in its entry; once its twin has left too, the flow is confirmed
/// (`CT_F_CONFIRMED` in both) and moved from `CT_NEW` to `CT`, where the fast path finds it.
/// A flow that is its own reply (a LAN host to its own binding: one entry, its own twin) is
/// confirmed when it first leaves.
/// Nothing to do, one lookup (a miss), once the flow is confirmed. `pressure`: `CT` is near
/// full (`CFG_F_CT_PRESSURE`), so the move may evict a confirmed flow that CPUs hold copies of.
///
/// The entries are written only if they still hold this flow's translations, and checked
/// again after the write: should the LRU have recycled one for another flow in between, that
/// flow's bits are taken back, so no flow is confirmed by another's packet. (Two CPUs moving
/// a flow at once copy the same entries; a packet counted in `CT_NEW` meanwhile is lost to
/// the count.)
#[inline(always)]
pub fn confirm(egress_key: &FlowKey, eg: &EgressEntry, pressure: bool) {
    let xlate = eg.xlate(egress_key);
    let Some(entry) = CT_NEW.get_ptr_mut(&eg.ct_key) else { return };
    let (twin_key, back) = (xlate.reversed(), eg.ct_key.reversed());
    // SAFETY: pointers from successful lookups; see above for a recycled entry.
    unsafe {
        if (*entry).xlate != xlate {
            return;
        }
        // The twin is unconfirmed too, or (its original evicted and made again) confirmed.
        let own = twin_key == eg.ct_key;
        let twin = find(&twin_key).filter(|t| (**t).xlate == back && ((**t).flags & CT_F_LEFT != 0 || own));
        let Some(twin) = twin else {
            if (*entry).flags & CT_F_LEFT == 0 {
                (*entry).flags |= CT_F_LEFT;
                if (*entry).xlate != xlate {
                    (*entry).flags &= !CT_F_LEFT;
                }
            }
            return;
        };
        (*entry).flags |= CT_F_LEFT | CT_F_CONFIRMED;
        (*twin).flags |= CT_F_CONFIRMED;
        if (*entry).xlate != xlate || (*twin).xlate != back {
            (*entry).flags &= !(CT_F_LEFT | CT_F_CONFIRMED);
            return;
        }
        // Copied straight from the map values. The twin first: it holds the reply tuple. Then
        // the egress entries: this direction's is at hand, the twin's made in the scratch slot.
        if CT.insert(&twin_key, &*twin, BPF_ANY as u64).is_err()
            || CT.insert(&eg.ct_key, &*entry, BPF_ANY as u64).is_err()
        {
            return;
        }
        let _ = EGRESS.insert(egress_key, eg, BPF_ANY as u64);
        if let Some(s) = EGRESS_SCRATCH.get_ptr_mut(0) {
            ((*s).0, (*s).1) = egress(&twin_key, &*twin);
            let _ = EGRESS.insert(&(*s).0, &(*s).1, BPF_ANY as u64);
            let _ = EGRESS_NEW.remove(&(*s).0);
        }
    }
    let _ = EGRESS_NEW.remove(egress_key);
    let _ = CT_NEW.remove(&eg.ct_key);
    let _ = CT_NEW.remove(&twin_key);
    if pressure {
        crate::cache::invalidate_all();
    }
}
