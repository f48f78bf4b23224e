//! The fast path: a packet of a known flow is translated whole (source and destination at
//! once, from the one conntrack entry) and sent out by XDP itself: redirected through the
//! device map to the other interface, or back out of the same one (XDP_TX) when hairpinned,
//! with the next hop's MAC addresses and the TTL decremented as the kernel would. Whatever it
//! cannot do exactly as the kernel would is left to the slow path, counted by [`Slow`].

use hairpin_common::{FlowKey, Reason, Slow, csum::CsumDelta, flow_cache::Slot};

use crate::{
    ct::Found,
    ctx::{Packet, ptr_at},
    fwd,
    maps::DEVICES,
    nat::rewrite,
    parse::Parsed,
};

/// Offset of the TTL (and protocol, the other half of its checksum word) in the IPv4 header.
const IP_TTL_OFF: usize = 8;

/// Forwards `p`, of the flow direction `found`; the verdict, or why the kernel must.
///
/// The next hop comes from the entry's cache when it is fresh (the entry's last-seen time was
/// refreshed less than a second ago, see `ct::Found`) and has passed a packet this long;
/// otherwise from `bpf_fib_lookup`, which also checks the egress MTU, and is cached. Two CPUs
/// revalidating at once write the same values.
#[inline(always)]
pub fn forward(pkt: &impl Packet, p: &Parsed, found: &Found) -> Result<Reason, Slow> {
    let ttl = Ttl::check(pkt, p)?;
    // SAFETY: the entry pointer comes from a successful lookup (see `ct::lookup_refresh`).
    let (hop, tx) = unsafe {
        let e = found.entry;
        if !found.stale && (*e).hop_ifindex != 0 && p.tot_len <= (*e).hop_len_ok {
            (fwd::NextHop { ifindex: (*e).hop_ifindex, macs: (*e).hop_macs }, (*e).hop_is_ingress != 0)
        } else {
            let hop = fwd::next_hop(pkt, &found.xlate, p.tot_len)?;
            // The largest length the FIB has passed for this hop; a new hop starts afresh.
            let same = !found.stale && (*e).hop_ifindex == hop.ifindex;
            (*e).hop_len_ok = if same { p.tot_len.max((*e).hop_len_ok) } else { p.tot_len };
            (*e).hop_macs = hop.macs;
            (*e).hop_ifindex = hop.ifindex;
            // A flow direction's packets arrive on one interface (the FIB answer cached with
            // it assumes so too): reading the ingress interface (three dependent loads
            // through the context) once per resolution is enough.
            let tx = hop.ifindex == pkt.ifindex();
            (*e).hop_is_ingress = u16::from(tx);
            (hop, tx)
        }
    };
    send(pkt, p, ttl, &found.xlate, &hop, tx)
}

/// Forwards `p` as the flow cache's `slot` says (see `cache::lookup` for when it may).
#[inline(always)]
pub fn forward_cached(pkt: &impl Packet, p: &Parsed, slot: *const Slot) -> Result<Reason, Slow> {
    let ttl = Ttl::check(pkt, p)?;
    // SAFETY: the slot pointer comes from a successful lookup.
    let (xlate, hop, tx) = unsafe {
        (
            (*slot).xlate,
            fwd::NextHop { ifindex: (*slot).hop_ifindex, macs: (*slot).hop_macs },
            (*slot).hop_is_ingress != 0,
        )
    };
    send(pkt, p, ttl, &xlate, &hop, tx)
}

/// The packet's TTL, more than 1 (the kernel answers the others with time-exceeded).
struct Ttl {
    word: *mut [u8; 2],
    ttl: u8,
    proto: u8,
}

impl Ttl {
    #[inline(always)]
    fn check(pkt: &impl Packet, p: &Parsed) -> Result<Self, Slow> {
        let word = ptr_at::<[u8; 2]>(pkt, p.l3_off + IP_TTL_OFF).map_err(|_| Slow::Route)?;
        // SAFETY: bounds checked by ptr_at.
        let [ttl, proto] = unsafe { *word };
        if ttl <= 1 {
            return Err(Slow::Ttl);
        }
        Ok(Self { word, ttl, proto })
    }
}

/// Sends `p` to `hop` (back out of the ingress interface if `tx`), translated to `xlate`, its
/// TTL decremented. Fails, changing nothing, only when `hop` is no interface hairpin serves.
#[inline(always)]
fn send(
    pkt: &impl Packet,
    p: &Parsed,
    ttl: Ttl,
    xlate: &FlowKey,
    hop: &fwd::NextHop,
    tx: bool,
) -> Result<Reason, Slow> {
    let verdict = if tx {
        Reason::FastTx
    } else {
        // Only to the interfaces hairpin serves: the map lookup fails for any other.
        DEVICES.redirect(hop.ifindex, 0).map_err(|_| Slow::Route)?;
        Reason::FastRedirect
    };
    // Committed: nothing below can fail on a packet that parsed. Both ends and the TTL go
    // into one checksum update.
    let Ttl { word, ttl, proto } = ttl;
    let ttl_delta = CsumDelta::ZERO.replace16(u16::from_ne_bytes([ttl, proto]), u16::from_ne_bytes([ttl - 1, proto]));
    // SAFETY: bounds checked by ptr_at in `Ttl::check`; XDP may write packet memory.
    unsafe { *word = [ttl - 1, proto] };
    rewrite(pkt, p, xlate, ttl_delta).map_err(|_| Slow::Route)?;
    let eth = ptr_at::<[u8; 12]>(pkt, 0).map_err(|_| Slow::Route)?;
    // SAFETY: as above.
    unsafe { *eth = hop.macs };
    Ok(verdict)
}
