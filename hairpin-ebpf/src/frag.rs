//! Fragmented datagrams (RFC 4787 REQ-14, RFC 5508 for ICMP): only the first fragment carries
//! the ports, so the address its flow gave it is remembered per hook (`HP_FRAGS`) and given to
//! the later fragments. Between the hooks the kernel forwards fragments in the order they
//! came, and its own fragmentation (to a smaller MTU, after ingress) emits the first one first.
//! A later fragment that comes before its first, or more than `FRAG_TIMEOUT_NS` after it, is
//! left untranslated (`pass_fragment`); egress never lets one out on the WAN with a LAN
//! source.

use aya_ebpf::bindings::BPF_ANY;
use hairpin_common::{FragEntry, FragKey, Ipv4Be, Reason, consts::FRAG_TIMEOUT_NS};

use crate::{
    ctx::{Packet, ptr_at},
    maps::{FRAG_SCRATCH, FRAGS},
    parse::{Ip, Parsed},
    rewrite::{IP_DST_OFF, IP_SRC_OFF, set_addr},
};

/// Per CPU: a fragment's key and entry being looked up or written, off the stack (the callers
/// have little of it left).
#[repr(C)]
pub struct Scratch {
    key: FragKey,
    entry: FragEntry,
}

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
    if now.wrapping_sub(first_ns) > FRAG_TIMEOUT_NS {
        return Ok(false);
    }
    match hook {
        hairpin_common::FRAG_INGRESS => set_addr(pkt, ip.l3_off, IP_DST_OFF, ip.dst.0, addr.0)?,
        _ => set_addr(pkt, ip.l3_off, IP_SRC_OFF, ip.src.0, addr.0)?,
    }
    Ok(true)
}
