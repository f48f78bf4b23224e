//! Applies checksum deltas after a rewrite. The arithmetic lives in `hairpin_common::csum`; this
//! module only knows where each checksum is, so rewrite sites never compute offsets.

use hairpin_common::{
    Reason,
    consts::{IPPROTO_TCP, IPPROTO_UDP},
    csum::CsumDelta,
};

use crate::{ctx::Packet, parse::Parsed};

/// Offset of the IPv4 header checksum within the IPv4 header.
const IP_CSUM_OFF: usize = 10;
const TCP_CSUM_OFF: usize = 16;
const UDP_CSUM_OFF: usize = 6;

/// The L4 checksum's offset in the packet and whether it follows UDP's zero rule.
#[inline(always)]
fn l4_csum_off(p: &Parsed) -> Option<(usize, bool)> {
    match p.key.proto {
        IPPROTO_TCP => Some((p.l4_off + TCP_CSUM_OFF, false)),
        IPPROTO_UDP => Some((p.l4_off + UDP_CSUM_OFF, true)),
        _ => None,
    }
}

/// Updates the IPv4 and L4 checksums for changed addresses (`addrs`, which the IPv4 header and
/// the L4 pseudo-header both cover) and changed ports (`ports`, L4 only).
#[inline(always)]
pub fn apply(pkt: &impl Packet, p: &Parsed, addrs: CsumDelta, ports: CsumDelta) -> Result<(), Reason> {
    pkt.update_l3_csum(p.l3_off + IP_CSUM_OFF, addrs)?;
    match l4_csum_off(p) {
        Some((off, udp)) => pkt.update_l4_csum(off, addrs, ports, udp),
        None => Ok(()),
    }
}
