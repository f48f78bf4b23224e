//! The fast path: a packet of a known flow is translated whole (source and destination at
//! once, from the one conntrack entry) and sent out by the hook itself, with the next hop's MAC
//! addresses and the TTL decremented as the kernel would: to the other interface, or back out of
//! the same one when hairpinned. XDP sends with a redirect through the device map or XDP_TX, TC
//! with `bpf_redirect` (see `ctx::Packet::redirect`); the code is one. Whatever it cannot do
//! exactly as the kernel would is left to the slow path, counted by [`Slow`].

use hairpin_common::{
    Config, Counter, FlowKey, NextHop, Reason, Slow,
    consts::IPPROTO_TCP,
    csum::{self, CsumDelta},
};

use crate::{
    cache,
    ct::Found,
    ctx::{Packet, ptr_at},
    fwd,
    parse::Parsed,
    rewrite::rewrite,
    stats,
};

/// Offset of the TTL (and protocol, the other half of its checksum word) in the IPv4 header.
const IP_TTL_OFF: usize = core::mem::offset_of!(network_types::ip::Ipv4Hdr, ttl);
/// An IPv4 header without options.
const IPV4_HDR_LEN: usize = network_types::ip::Ipv4Hdr::LEN;
/// The TCP ACK flag, and the acknowledgment number's offset in the TCP header.
const TCP_ACK: u8 = 0x10;
const TCP_ACK_OFF: usize = 8;

/// Forwards `p`, of the flow direction `found`, and copies what it was sent with into the
/// flow cache; the verdict, or why the kernel must forward it.
///
/// The next hop comes from the entry's cache when it is fresh (the entry's last-seen time was
/// refreshed less than a second ago, see `ct::Found`) and has passed a packet this long;
/// otherwise from `bpf_fib_lookup`, which also checks the egress MTU, and is cached. Two CPUs
/// revalidating at once write the same values.
#[inline(always)]
pub fn forward(
    pkt: &impl Packet,
    cfg: &Config,
    p: &Parsed,
    found: &Found,
    epoch: &cache::Epoch,
) -> Result<Reason, Slow> {
    let ttl = Ttl::check(pkt, p)?;
    // A GSO super-packet (TC only) fits a hop by its segments' size: its total length neither
    // passes the FIB's check nor raises the cached bound.
    let gso = pkt.gso();
    // SAFETY: the entry pointer comes from a successful lookup (see `ct::lookup_refresh`).
    let hop = unsafe {
        let e = found.entry;
        let cached = (*e).hop;
        if !found.stale && cached.ifindex != 0 && pkt.fits(cached.ifindex, p.tot_len, cached.len_ok) {
            cached
        } else {
            let mut next = fwd::next_hop(pkt, &found.xlate, if gso { 0 } else { p.tot_len })?;
            // The FIB judged a GSO super-packet by nothing: its segments must fit the hop.
            if gso && !pkt.fits(next.ifindex, p.tot_len, 0) {
                return Err(Slow::FragNeeded);
            }
            // The largest length the FIB has passed for this hop; a new hop starts afresh.
            let same = !found.stale && cached.ifindex == next.ifindex;
            next.len_ok = match (same, gso) {
                (true, true) => cached.len_ok,
                (true, false) => p.tot_len.max(cached.len_ok),
                (false, true) => 0,
                (false, false) => p.tot_len,
            };
            (*e).hop = next;
            // The LRU may have recycled the entry for another flow since the lookup: that flow
            // must not inherit this hop. Its translation says whose the entry is now; if not
            // this flow's, the hop is taken back (resolved again by its own next packet).
            if (*e).xlate != found.xlate {
                (*e).hop.ifindex = 0;
            }
            next
        }
    };
    // Copied before sending, so that the hop need not outlive `send` (the program's stack is
    // near the verifier's limit). What the packet is sent with, not the shared entry read
    // again: another CPU may be rewriting it, or (LRU) recycling it for another flow. Should
    // the send fail (an interface hairpin does not serve), the copy fails the same way and
    // conntrack's path decides again.
    // SAFETY: the entry pointer comes from a successful lookup.
    let flags = unsafe { (*found.entry).flags };
    cache::fill(&p.key, &found.xlate, &hop, flags, epoch, found.entry);
    let verdict = send(pkt, cfg, p, ttl, &found.xlate, &hop)?;
    stats::bump(Counter::CacheMiss, 1);
    Ok(verdict)
}

/// Forwards `p` as the flow cache's slot says (see `cache::lookup` for when it may), and
/// counts it there (a TCP segment's acknowledgment too: see `cache::count`).
#[inline(always)]
pub fn forward_cached(pkt: &impl Packet, cfg: &Config, p: &Parsed, hit: &cache::Hit) -> Result<Reason, Slow> {
    let ttl = Ttl::check(pkt, p)?;
    // SAFETY: the slot pointer comes from a successful lookup; read in place (the program's
    // stack is near its limit), only this CPU writes it.
    let s = unsafe { &*hit.slot };
    let verdict = send(pkt, cfg, p, ttl, &s.xlate, &s.hop)?;
    let tcp_ack = p.key.proto == IPPROTO_TCP && p.tcp_flags & TCP_ACK != 0;
    // SAFETY: bounds checked by ptr_at.
    let ack = tcp_ack
        .then(|| ptr_at::<[u8; 4]>(pkt, p.l4_off + TCP_ACK_OFF).ok())
        .flatten()
        .map(|a| u32::from_be_bytes(unsafe { *a }));
    cache::count(hit.index, &p.key, pkt.segs(), p.tot_len, ack);
    Ok(verdict)
}

/// The packet's TTL, more than 1 (the kernel answers the others with time-exceeded), in a
/// header the kernel would forward as the fast path does: without options (netfilter's
/// flowtable leaves those to the stack too) and with a valid checksum, which the kernel checks
/// first and drops the packet for (RFC 1812 5.2.2: a router must).
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
        if p.l4_off != p.l3_off + IPV4_HDR_LEN {
            return Err(Slow::Header);
        }
        let header = ptr_at::<[u32; 5]>(pkt, p.l3_off).map_err(|_| Slow::Route)?;
        // SAFETY: as above; raw words, as the checksum is summed (see `csum`).
        let w = unsafe { header.read_unaligned() };
        let sum = w[0] as u64 + w[1] as u64 + w[2] as u64 + w[3] as u64 + w[4] as u64;
        if csum::fold(csum::fold64(sum)) != 0xffff {
            return Err(Slow::Header);
        }
        Ok(Self { word, ttl, proto })
    }
}

/// Sends `p` to `hop` (back out of the ingress interface if it says so), translated to
/// `xlate`, its TTL decremented. Fails, changing nothing, only when the hop's interface is
/// none the fast path may send to from this hook. Always inlined: it takes more than five
/// arguments.
#[inline(always)]
fn send(pkt: &impl Packet, cfg: &Config, p: &Parsed, ttl: Ttl, xlate: &FlowKey, hop: &NextHop) -> Result<Reason, Slow> {
    let tx = hop.tx != 0;
    if !pkt.redirect(cfg, hop.ifindex, tx) {
        return Err(Slow::Route);
    }
    let verdict = if tx { Reason::FastTx } else { Reason::FastRedirect };
    // Committed: nothing below can fail on a packet that parsed. Both ends and the TTL go
    // into one checksum update.
    let Ttl { word, ttl, proto } = ttl;
    let ttl_delta = CsumDelta::ttl_decrement(ttl, proto);
    // SAFETY: bounds checked by ptr_at in `Ttl::check`; both hooks may write packet memory.
    unsafe { *word = [ttl - 1, proto] };
    rewrite(pkt, p, xlate, ttl_delta).map_err(|_| Slow::Route)?;
    let eth = ptr_at::<[u8; 12]>(pkt, 0).map_err(|_| Slow::Route)?;
    // SAFETY: as above.
    unsafe { *eth = hop.macs };
    Ok(verdict)
}
