//! Rewriting a packet's tuple: the primitives every translation uses (addresses, ports, and the
//! checksums that cover them, once), on a packet's own headers or on those an ICMP error
//! quotes. They decide nothing; `hook`, `fast` and `icmp` call them.

use core::mem::offset_of;

use hairpin_common::{FlowKey, Reason, consts::IPPROTO_ICMP, csum::CsumDelta};
use network_types::{ip::Ipv4Hdr, tcp::TcpHdr};

use crate::{
    csum,
    ctx::{Packet, ptr_at},
    parse::{ICMP_ID_OFF, Parsed},
};

/// Offsets of the addresses within the IPv4 header.
pub const IP_SRC_OFF: usize = offset_of!(Ipv4Hdr, src_addr);
pub const IP_DST_OFF: usize = offset_of!(Ipv4Hdr, dst_addr);

/// Offsets of the source and destination "ports" within the L4 header: an ICMP echo's id
/// stands for both (see `parse`).
#[inline(always)]
fn port_offs(proto: u8) -> (usize, usize) {
    // TCP and UDP alike: source port, then destination port.
    if proto == IPPROTO_ICMP {
        (ICMP_ID_OFF, ICMP_ID_OFF)
    } else {
        (offset_of!(TcpHdr, source), offset_of!(TcpHdr, dest))
    }
}

/// Writes `value` (an address or port, in network order as read) at `off` in the packet.
#[inline(always)]
pub fn write<T>(pkt: &impl Packet, off: usize, value: T) -> Result<(), Reason> {
    let p = ptr_at::<T>(pkt, off)?;
    // SAFETY: bounds checked by ptr_at; both hooks may write packet memory directly.
    unsafe { p.write_unaligned(value) };
    Ok(())
}

/// Writes the addresses and ports of `to` where they differ from `from`, the tuple of the
/// headers at `l3_off` and `l4_off` (a packet's, or the one an ICMP error quotes), and returns
/// what changed for the checksums: addresses (IPv4 header and pseudo-header), ports (L4 only).
/// An echo's id is one field standing for both "ports", the other being 0 on both sides: it is
/// written only for the end that carries it.
#[inline(always)]
pub fn write_tuple(
    pkt: &impl Packet,
    l3_off: usize,
    l4_off: usize,
    from: &FlowKey,
    to: &FlowKey,
) -> Result<(CsumDelta, CsumDelta), Reason> {
    let (sport_off, dport_off) = port_offs(from.proto);
    let (mut addrs, mut ports) = (CsumDelta::ZERO, CsumDelta::ZERO);
    if from.src != to.src {
        write(pkt, l3_off + IP_SRC_OFF, to.src.0)?;
        addrs = addrs.replace32(from.src.0, to.src.0);
    }
    if from.dst != to.dst {
        write(pkt, l3_off + IP_DST_OFF, to.dst.0)?;
        addrs = addrs.replace32(from.dst.0, to.dst.0);
    }
    if from.sport != to.sport {
        write(pkt, l4_off + sport_off, to.sport.0)?;
        ports = ports.replace16(from.sport.0, to.sport.0);
    }
    if from.dport != to.dport {
        write(pkt, l4_off + dport_off, to.dport.0)?;
        ports = ports.replace16(from.dport.0, to.dport.0);
    }
    Ok((addrs, ports))
}

/// Rewrites one IPv4 address of the header at `l3_off` (at `off` within it) from `from` to
/// `to`, and the header checksum; nothing else covers it (an ICMP error's outer header, a
/// fragment after the first, whose L4 checksum is in the first).
#[inline(always)]
pub fn set_addr(pkt: &impl Packet, l3_off: usize, off: usize, from: u32, to: u32) -> Result<(), Reason> {
    if from == to {
        return Ok(());
    }
    write(pkt, l3_off + off, to)?;
    pkt.update_l3_csum(l3_off + csum::IP_CSUM_OFF, CsumDelta::ZERO.replace32(from, to))
}

/// Rewrites the packet's tuple to `to` and updates every checksum that covers it, once.
/// `l3_other` is any other change to the IPv4 header's words (the fast path's TTL).
#[inline(always)]
pub fn rewrite(pkt: &impl Packet, p: &Parsed, to: &FlowKey, l3_other: CsumDelta) -> Result<(), Reason> {
    let (addrs, ports) = write_tuple(pkt, p.l3_off, p.l4_off, &p.key, to)?;
    if addrs == CsumDelta::ZERO && ports == CsumDelta::ZERO && l3_other == CsumDelta::ZERO {
        return Ok(());
    }
    csum::apply(pkt, p, addrs, ports, l3_other)
}
