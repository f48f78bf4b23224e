//! Ethernet/IPv4/TCP/UDP parsing into a [`FlowKey`] plus the offsets the rewrite needs. Shared
//! by the XDP and TC programs through [`Packet`].

use hairpin_common::{
    FlowKey, Ipv4Be, PortBe, Reason,
    consts::{IPPROTO_TCP, IPPROTO_UDP},
};
use network_types::{eth::EthHdr, ip::Ipv4Hdr, tcp::TcpHdr, udp::UdpHdr};

use crate::ctx::{Packet, ptr_at};

const ETH_P_IP_BE: u16 = 0x0800u16.to_be();
/// More-fragments flag and fragment offset, in the raw (network order) `frags` word.
const IP_MF_OFFSET_MASK_BE: u16 = 0x3fffu16.to_be();

/// Where the fields hairpin rewrites live, and the tuple they form.
pub struct Parsed {
    pub key: FlowKey,
    /// Offset of the IPv4 header (after Ethernet).
    pub l3_off: usize,
    /// Offset of the TCP/UDP header (after IPv4 options, if any).
    pub l4_off: usize,
    /// IPv4 total length.
    pub tot_len: u16,
    /// TCP flags (byte 13 of the header), 0 for UDP.
    pub tcp_flags: u8,
}

/// Headers hairpin may need to pull into the linear area: Ethernet, IPv4 with the longest
/// options, a TCP header.
pub const MAX_HDR_LEN: u32 = (EthHdr::LEN + 60 + TcpHdr::LEN) as u32;

/// The IPv4 header of a packet: what the security checks need, for every protocol.
pub struct Ip {
    pub src: Ipv4Be,
    pub dst: Ipv4Be,
    pub proto: u8,
    pub l3_off: usize,
    pub l4_off: usize,
    pub tot_len: usize,
    pub fragment: bool,
}

/// Parses Ethernet and IPv4. Non-IPv4 is an `Err` to pass; a bad IPv4 header one to drop.
#[inline(always)]
pub fn parse_ip(pkt: &impl Packet) -> Result<Ip, Reason> {
    let eth = ptr_at::<EthHdr>(pkt, 0).map_err(|_| Reason::PassNotIpv4)?;
    // SAFETY: ptr_at checked the bounds; headers are read unaligned (network-types fields are
    // byte arrays).
    if unsafe { (*eth).ether_type } != ETH_P_IP_BE {
        return Err(Reason::PassNotIpv4);
    }
    let l3_off = EthHdr::LEN;
    let ip = ptr_at::<Ipv4Hdr>(pkt, l3_off)?;
    let (vihl, tot_len, frags, proto, src, dst) = unsafe {
        let ip = &*ip;
        (
            ip.vihl,
            u16::from_be_bytes(ip.tot_len) as usize,
            u16::from_ne_bytes(ip.frags),
            ip.proto,
            Ipv4Be(u32::from_ne_bytes(ip.src_addr)),
            Ipv4Be(u32::from_ne_bytes(ip.dst_addr)),
        )
    };
    let ihl = ((vihl & 0x0f) as usize) * 4;
    if vihl >> 4 != 4 || ihl < Ipv4Hdr::LEN || tot_len < ihl {
        return Err(Reason::DropMalformed);
    }
    Ok(Ip { src, dst, proto, l3_off, l4_off: l3_off + ihl, tot_len, fragment: frags & IP_MF_OFFSET_MASK_BE != 0 })
}

/// Parses the TCP/UDP header after `ip`. Fragments and other protocols are an `Err` to pass;
/// a truncated or inconsistent header one to drop.
#[inline(always)]
pub fn parse_l4(pkt: &impl Packet, ip: &Ip) -> Result<Parsed, Reason> {
    if ip.fragment {
        return Err(Reason::PassFragment);
    }
    let (l3_off, l4_off, tot_len) = (ip.l3_off, ip.l4_off, ip.tot_len);
    let ihl = l4_off - l3_off;
    const TCP_FLAGS_OFF: usize = 13;
    let (ports, tcp_flags) = match ip.proto {
        IPPROTO_TCP => {
            if tot_len < ihl + TcpHdr::LEN {
                return Err(Reason::DropMalformed);
            }
            let tcp = ptr_at::<TcpHdr>(pkt, l4_off)?;
            unsafe { (((*tcp).source, (*tcp).dest), *(tcp as *const u8).add(TCP_FLAGS_OFF)) }
        }
        IPPROTO_UDP => {
            if tot_len < ihl + UdpHdr::LEN {
                return Err(Reason::DropMalformed);
            }
            let udp = ptr_at::<UdpHdr>(pkt, l4_off)?;
            unsafe { (((*udp).src, (*udp).dst), 0) }
        }
        _ => return Err(Reason::PassOtherProto),
    };
    // Truncation is checked only now: done before the header accesses above, it would let the
    // compiler prove their bounds checks redundant and drop them, which the verifier rejects.
    if l3_off + tot_len > pkt.len() {
        return Err(Reason::DropMalformed);
    }
    Ok(Parsed {
        key: FlowKey {
            src: ip.src,
            dst: ip.dst,
            sport: PortBe(u16::from_ne_bytes(ports.0)),
            dport: PortBe(u16::from_ne_bytes(ports.1)),
            proto: ip.proto,
            _pad: [0; 3],
        },
        l3_off,
        l4_off,
        tot_len: tot_len as u16,
        tcp_flags,
    })
}
