//! Fragmented datagrams (RFC 4787 REQ-14, RFC 5508 for ICMP): only the first fragment carries
//! the ports, so the address its flow gave it is remembered per hook (`HP_FRAGS`) and given to
//! the later fragments. Between the hooks the kernel forwards fragments in the order they
//! came, and its own fragmentation (to a smaller MTU, after ingress) emits the first one first.
//!
//! A later fragment that comes before its first one is held at a TC ingress (`HP_FRAG_HELD`,
//! bounded) and appended to the fragment it follows once that one has passed: the datagram
//! goes on whole (or in larger pieces), translated, and the kernel fragments it again for the
//! next hop as it forwards it (the fragments' DF is clear). A first fragment the kernel takes
//! untranslated (the gateway's own datagram) is remembered as the kernel's, so that its later
//! fragments pass, never held. At an XDP ingress, which cannot grow a frame, such a fragment
//! is left untranslated (`pass_fragment`); egress never lets one out on the WAN with a LAN
//! source.

use aya_ebpf::{
    EbpfContext as _,
    bindings::{BPF_ANY, BPF_F_RECOMPUTE_CSUM},
    helpers::{bpf_skb_change_tail, bpf_skb_load_bytes, bpf_skb_store_bytes},
};
use hairpin_common::{
    Counter, FRAG_INGRESS, FragEntry, FragKey, HELD_MAX, HeldKey, Ipv4Be, Reason,
    consts::{FRAG_TIMEOUT_NS, HELD_PER_FRAGMENT},
    csum::CsumDelta,
};

use crate::{
    ct,
    ctx::{Packet, Tc, ptr_at},
    maps::{FRAG_SCRATCH, FRAGS, HELD, HELD_SCRATCH},
    parse::{Ip, Parsed, parse_ip},
    rewrite::{IP_DST_OFF, IP_SRC_OFF, set_addr},
    stats,
};

/// Per CPU: a fragment's key and entry being looked up or written, and where the fragment a
/// TC ingress is deciding sits in its datagram, off the stack (the callers have little of it
/// left).
#[repr(C)]
pub struct Scratch {
    key: FragKey,
    entry: FragEntry,
    arrival: Arrival,
    /// The reason ingress gave, passed through memory (see [`after_ingress`]).
    reason: u32,
    _pad: u32,
}

/// A fragment as it arrived at a TC ingress, noted before ingress translates it.
#[repr(C)]
struct Arrival {
    /// Its datagram, as it arrived.
    key: FragKey,
    /// Where its payload starts and ends in the datagram, in bytes.
    offset: u32,
    end: u32,
    /// Its IPv4 header's offset in the packet, and its payload's.
    l3_off: u32,
    l4_off: u32,
    /// 1: more fragments follow (MF).
    more: u32,
    /// 1: noted for the packet being decided (cleared once read).
    valid: u32,
}

/// Offset of the total length, and of the flags and fragment offset word, in the IPv4 header.
const IP_TOT_LEN_OFF: usize = core::mem::offset_of!(network_types::ip::Ipv4Hdr, tot_len);
const IP_FRAGS_OFF: usize = core::mem::offset_of!(network_types::ip::Ipv4Hdr, frags);
const IP_MF: u16 = 0x2000;
const IP_OFFSET_MASK: u16 = 0x1fff;
const IP_MF_OFFSET_BE: u16 = 0x3fffu16.to_be();
const ETH_P_IP_BE: u16 = 0x0800u16.to_be();
const ETH_P_8021Q_BE: u16 = 0x8100u16.to_be();

/// Offset of the identification in the IPv4 header.
const IP_ID_OFF: usize = core::mem::offset_of!(network_types::ip::Ipv4Hdr, id);

/// Remembers that the first fragment `p` (its tuple as it arrived at `hook`) was given `addr`:
/// its destination at ingress, its source at egress. Its identification is read from the
/// packet again rather than kept on the callers' stack, which is near the verifier's limit.
#[inline(always)]
pub fn remember(pkt: &impl Packet, p: &Parsed, hook: u8, addr: Ipv4Be, now: u64) {
    let (Ok(id), Some(s)) = (ptr_at::<u16>(pkt, p.l3_off + IP_ID_OFF), FRAG_SCRATCH.get_ptr_mut(0)) else {
        return;
    };
    // SAFETY: bounds checked by ptr_at; this CPU's scratch slot, which nothing else uses while
    // the program runs here.
    unsafe {
        (*s).key = FragKey { src: p.key.src, dst: p.key.dst, id: id.read_unaligned(), proto: p.key.proto, hook };
        (*s).entry.addr = addr;
        (*s).entry.first_ns = now;
        // Best effort: an LRU makes room; should the update fail, the later fragments pass
        // as before, counted.
        let _ = FRAGS.insert(&(*s).key, &(*s).entry, BPF_ANY as u64);
    }
}

/// Gives the later fragment `ip` the address its first fragment got at `hook`, if that is
/// known and recent. Returns whether it did.
#[inline(always)]
pub fn translate_later(pkt: &impl Packet, ip: &Ip, hook: u8, now: u64) -> Result<bool, Reason> {
    let Some(s) = FRAG_SCRATCH.get_ptr_mut(0) else { return Ok(false) };
    // SAFETY: this CPU's scratch slot, as above.
    let found = unsafe {
        (*s).key = FragKey { src: ip.src, dst: ip.dst, id: ip.id, proto: ip.proto, hook };
        FRAGS.get_ptr(&(*s).key)
    };
    let Some(e) = found else {
        return Ok(false);
    };
    // SAFETY: read through a pointer from a successful lookup (a recycled entry reads as
    // another datagram's, whose time or address then decides).
    let (addr, first_ns) = unsafe { ((*e).addr, (*e).first_ns) };
    // Address 0: the kernel's datagram, which passes untranslated.
    if ct::age_ns(now, first_ns) > FRAG_TIMEOUT_NS || addr.0 == 0 {
        return Ok(false);
    }
    match hook {
        hairpin_common::FRAG_INGRESS => set_addr(pkt, ip.l3_off, IP_DST_OFF, ip.dst.0, addr.0)?,
        _ => set_addr(pkt, ip.l3_off, IP_SRC_OFF, ip.src.0, addr.0)?,
    }
    Ok(true)
}

/// Whether the packet may be an IPv4 fragment, at a glance at its flags and offset word
/// (IPv4 after Ethernet, or after one tag): cheap enough for every packet of the fast path.
/// Asked again after ingress rather than kept: a value carried through ingress would make the
/// verifier walk all of ingress twice.
#[inline(always)]
pub fn may_be_fragment(pkt: &Tc) -> bool {
    const ETH_IP: usize = 14;
    // SAFETY (both): bounds checked by ptr_at.
    let glance = |at: usize| ptr_at::<u16>(pkt, at + IP_FRAGS_OFF).is_ok_and(|w| unsafe { *w } & IP_MF_OFFSET_BE != 0);
    match ptr_at::<u16>(pkt, 12) {
        Ok(t) if unsafe { *t } == ETH_P_IP_BE => glance(ETH_IP),
        Ok(t) if unsafe { *t } == ETH_P_8021Q_BE => glance(ETH_IP + 4),
        _ => false,
    }
}

/// Notes where the packet a TC ingress is about to decide sits in its datagram (for
/// [`after_ingress`]), if it may be a fragment.
#[inline(always)]
pub fn note_arrival(pkt: &Tc) {
    if !may_be_fragment(pkt) {
        return;
    }
    let Some(s) = FRAG_SCRATCH.get_ptr_mut(0) else { return };
    let ip = match parse_ip(pkt) {
        Ok(ip) if ip.fragment() => ip,
        // SAFETY: this CPU's scratch slot, which nothing else uses while the program runs here.
        _ => return unsafe { (*s).arrival.valid = 0 },
    };
    let frags = u16::from_be(ip.frags);
    let offset = u32::from(frags & IP_OFFSET_MASK) << 3;
    let payload = (ip.tot_len - (ip.l4_off - ip.l3_off)) as u32;
    let key = FragKey { src: ip.src, dst: ip.dst, id: ip.id, proto: ip.proto, hook: FRAG_INGRESS };
    // SAFETY: as above.
    unsafe {
        (*s).arrival = Arrival {
            key,
            offset,
            end: offset + payload,
            l3_off: ip.l3_off as u32,
            l4_off: ip.l4_off as u32,
            more: u32::from(frags & IP_MF != 0),
            valid: 1,
        };
    }
}

/// After a TC ingress decided `reason` for a fragment it noted ([`note_arrival`]), unless it
/// dropped it or it is another host's: holds a later fragment of a datagram not seen (within
/// the reassembly timeout); remembers a first fragment that passed untranslated as the
/// kernel's; and appends to a fragment that passed the held ones that follow it. The reason
/// for the verdict.
#[inline(always)]
pub fn after_ingress(pkt: &Tc, reason: Reason, now: u64) -> Reason {
    let Some(s) = FRAG_SCRATCH.get_ptr_mut(0) else { return reason };
    // Through memory: ingress reaches here with every reason it has, each a constant the
    // verifier would otherwise walk what follows with, one by one (past its million
    // instructions); read back, it is one unknown value.
    // SAFETY: this CPU's scratch slot, as below.
    let reason = unsafe {
        (*s).reason = reason as u32;
        Reason::from_index(core::ptr::read_volatile(&(*s).reason)).unwrap_or(Reason::DropMalformed)
    };
    // SAFETY: this CPU's scratch slot, as above; the arrival is read in place.
    unsafe {
        let a = &(*s).arrival;
        if a.valid == 0 {
            return reason;
        }
        (*s).arrival.valid = 0;
        // Another host's frame is not the gateway's to keep or grow (a bridge forwards it
        // as it came).
        if reason.is_drop() || matches!(reason, Reason::PassOtherHost) {
            return reason;
        }
        // An entry older than the reassembly timeout is another datagram's by now (its
        // identification used again): not this one's first fragment.
        let known = FRAGS.get_ptr(&a.key).is_some_and(|e| ct::age_ns(now, (*e).first_ns) <= FRAG_TIMEOUT_NS);
        if a.offset != 0 && !known {
            return if hold(pkt, a, now) { Reason::HeldFragment } else { reason };
        }
        if a.offset == 0 && !known {
            (*s).key = a.key;
            (*s).entry = FragEntry { addr: Ipv4Be(0), _pad: 0, first_ns: now };
            let _ = FRAGS.insert(&(*s).key, &(*s).entry, BPF_ANY as u64);
        }
        if a.more != 0 {
            release(pkt, a, now);
        }
    }
    reason
}

/// Holds the later fragment `a` (of a datagram whose first fragment has not come): its
/// payload into `HP_FRAG_HELD`. Returns whether it did (if not, it passes as before).
#[inline(always)]
fn hold(pkt: &Tc, a: &Arrival, now: u64) -> bool {
    let Some(s) = HELD_SCRATCH.get_ptr_mut(0) else { return false };
    // SAFETY: this CPU's scratch slot; `len` is within its buffer (checked below), and the
    // helper checks it against the packet.
    unsafe {
        let payload = a.end.wrapping_sub(a.offset);
        if payload == 0 || payload as usize > HELD_MAX {
            return false;
        }
        (*s).len = payload as u16;
        let len = helper_len(&(*s).len);
        let into = (*s).data.as_mut_ptr().cast();
        if bpf_skb_load_bytes(pkt.0.as_ptr().cast(), a.l4_off, into, len) != 0 {
            return false;
        }
        (*s).held_ns = now;
        (*s).more = a.more as u8;
        HELD.insert(&HeldKey { frag: a.key, offset: a.offset as u16, _pad: 0 }, &*s, BPF_ANY as u64).is_ok()
    }
}

/// A held fragment's length `at` (from 1 to `HELD_MAX`), as the helpers that copy it take it:
/// read as is (volatile, so that LLVM cannot fold it with the checks its writer made) and
/// brought into 1..=HELD_MAX by arithmetic whose bounds every verifier follows (6.1's does not
/// learn "not zero" from a comparison). Callers check it is not 0 themselves.
#[inline(always)]
unsafe fn helper_len(at: *const u16) -> u32 {
    // SAFETY: the caller's pointer into a map value.
    let raw = u64::from(unsafe { core::ptr::read_volatile(at) });
    (raw.wrapping_sub(1).min(HELD_MAX as u64 - 1) + 1) as u32
}

/// Appends to the fragment `a` (which passed) the held fragments that follow it, as many as
/// come one after the other (at most `HELD_PER_FRAGMENT`), and gives its IPv4 header their
/// length and the last one's MF flag. A step that fails leaves the header as it was, and the
/// kernel trims what was appended.
#[inline(always)]
fn release(pkt: &Tc, a: &Arrival, now: u64) {
    // Masked, as `parse` leaves it (Ethernet, at most two tags): the verifier must see the
    // header's offset bounded to grant access through it.
    let (mut end, l3_off) = (a.end, (a.l3_off & 0x3f) as usize);
    for _ in 0..HELD_PER_FRAGMENT {
        let key = HeldKey { frag: a.key, offset: end as u16, _pad: 0 };
        let Some(h) = HELD.get_ptr(&key) else { return };
        // SAFETY: reads through a pointer from a successful lookup; the bytes are copied out
        // by the helper (a recycled entry is another datagram's, which its key then was not).
        let (len, empty, more, held_ns) = unsafe { (helper_len(&(*h).len), (*h).len == 0, (*h).more, (*h).held_ns) };
        if ct::age_ns(now, held_ns) > FRAG_TIMEOUT_NS || empty {
            let _ = HELD.remove(&key);
            return;
        }
        // The header's first eight bytes: total length (2..4), flags and offset (6..8).
        let Ok(head) = ptr_at::<[u8; 8]>(pkt, l3_off) else { return };
        // SAFETY: bounds checked by ptr_at.
        let [_, _, l0, l1, _, _, f0, f1] = unsafe { *head };
        let (old_len, old_frags) = (u16::from_be_bytes([l0, l1]), u16::from_be_bytes([f0, f1]));
        let at = l3_off as u32 + u32::from(old_len);
        let skb = pkt.0.as_ptr().cast();
        // SAFETY: helpers on this program's skb; `len` is within the entry's buffer (checked
        // above).
        let stored = unsafe {
            bpf_skb_change_tail(skb, at + len, 0) == 0
                && bpf_skb_store_bytes(skb, at, (*h).data.as_ptr().cast(), len, BPF_F_RECOMPUTE_CSUM as u64) == 0
        };
        if !stored {
            return;
        }
        let new_len = old_len + len as u16;
        let new_frags = if more != 0 { old_frags | IP_MF } else { old_frags & !IP_MF };
        // The pointer above went with the helpers: the header is found again.
        let Ok(head) = ptr_at::<[u8; 8]>(pkt, l3_off) else { return };
        // SAFETY: bounds checked by ptr_at.
        unsafe {
            let ([l0, l1], [f0, f1]) = (new_len.to_be_bytes(), new_frags.to_be_bytes());
            (*head)[IP_TOT_LEN_OFF] = l0;
            (*head)[IP_TOT_LEN_OFF + 1] = l1;
            (*head)[IP_FRAGS_OFF] = f0;
            (*head)[IP_FRAGS_OFF + 1] = f1;
        }
        let delta =
            CsumDelta::ZERO.replace16(old_len.to_be(), new_len.to_be()).replace16(old_frags.to_be(), new_frags.to_be());
        if pkt.update_l3_csum(l3_off + crate::csum::IP_CSUM_OFF, delta).is_err() {
            return;
        }
        let _ = HELD.remove(&key);
        stats::bump(Counter::FragmentsReleased, 1);
        end += len;
        if more == 0 {
            return;
        }
    }
}
