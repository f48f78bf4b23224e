//! Applies checksum deltas after a rewrite. The arithmetic lives in `hairpin_common::csum`; this
//! module only knows where each checksum is, so rewrite sites never compute offsets.

use hairpin_common::{
    Reason,
    consts::{IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP},
    csum::CsumDelta,
};

use crate::{ctx::Packet, parse::Parsed};

/// Offsets of the checksums within their headers.
pub const IP_CSUM_OFF: usize = 10;
pub const TCP_CSUM_OFF: usize = 16;
pub const UDP_CSUM_OFF: usize = 6;
pub const ICMP_CSUM_OFF: usize = 2;

/// Updates the IPv4 and L4 checksums for changed addresses (`addrs`, which the IPv4 header and
/// the TCP/UDP pseudo-header cover), changed ports or echo id (`ports`, L4 only) and other
/// changed IPv4 header words (`l3_other`, IPv4 only). ICMP has no pseudo-header: its checksum
/// sees only the id.
#[inline(always)]
pub fn apply(
    pkt: &impl Packet,
    p: &Parsed,
    addrs: CsumDelta,
    ports: CsumDelta,
    l3_other: CsumDelta,
) -> Result<(), Reason> {
    pkt.update_l3_csum(p.l3_off + IP_CSUM_OFF, addrs.plus(l3_other))?;
    match p.key.proto {
        IPPROTO_TCP => pkt.update_l4_csum(p.l4_off + TCP_CSUM_OFF, addrs, ports, false),
        IPPROTO_UDP => pkt.update_l4_csum(p.l4_off + UDP_CSUM_OFF, addrs, ports, true),
        IPPROTO_ICMP => apply_icmp(pkt, p.l4_off, ports),
        _ => Ok(()),
    }
}

/// Updates the checksum of the ICMP header at `icmp_off` for a change `delta` of the bytes it
/// covers.
#[inline(always)]
pub fn apply_icmp(pkt: &impl Packet, icmp_off: usize, delta: CsumDelta) -> Result<(), Reason> {
    pkt.update_l4_csum(icmp_off + ICMP_CSUM_OFF, CsumDelta::ZERO, delta, false)
}
