//! Applies checksum deltas after a rewrite. The arithmetic lives in `hairpin_common::csum`; this
//! module only knows where each checksum is, so rewrite sites never compute offsets.

use core::mem::offset_of;

use hairpin_common::{
    Reason,
    consts::{IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP},
    csum::CsumDelta,
};
use network_types::{icmp::Icmpv4Hdr, ip::Ipv4Hdr, tcp::TcpHdr, udp::UdpHdr};

use crate::{ctx::Packet, parse::Parsed};

/// Offset of the checksum within the IPv4 header.
pub const IP_CSUM_OFF: usize = offset_of!(Ipv4Hdr, check);

/// Where a protocol's checksum sits in its header, and whether it is UDP's (0 means none, and
/// a sum that comes to 0 is sent as 0xffff); `None` for a protocol without one hairpin keeps.
/// The one table every rewrite uses (cf. Cilium's `csum_l4_offset_and_flags`).
#[inline(always)]
pub const fn l4_csum(proto: u8) -> Option<(usize, bool)> {
    match proto {
        IPPROTO_TCP => Some((offset_of!(TcpHdr, check), false)),
        IPPROTO_UDP => Some((offset_of!(UdpHdr, check), true)),
        IPPROTO_ICMP => Some((offset_of!(Icmpv4Hdr, check), false)),
        _ => None,
    }
}

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
    match l4_csum(p.key.proto) {
        // ICMP has no pseudo-header: the addresses are not in its sum.
        Some((off, _)) if p.key.proto == IPPROTO_ICMP => {
            pkt.update_l4_csum(p.l4_off + off, CsumDelta::ZERO, ports, false)
        }
        Some((off, udp)) => pkt.update_l4_csum(p.l4_off + off, addrs, ports, udp),
        None => Ok(()),
    }
}

/// Updates the checksum of the ICMP header at `icmp_off` for a change `delta` of the bytes it
/// covers.
#[inline(always)]
pub fn apply_icmp(pkt: &impl Packet, icmp_off: usize, delta: CsumDelta) -> Result<(), Reason> {
    pkt.update_l4_csum(icmp_off + offset_of!(Icmpv4Hdr, check), CsumDelta::ZERO, delta, false)
}
