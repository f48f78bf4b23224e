//! Ethernet/IPv4/TCP/UDP/ICMP parsing into a [`FlowKey`] plus the offsets the rewrite needs.
//! Shared by the XDP and TC programs through [`Packet`].
//!
//! ICMP echo takes part in NAT with its identifier in the place of a port: a request carries it
//! as its source "port" (destination 0), a reply as its destination "port" (source 0), so a
//! request's tuple reversed is its reply's, as for TCP and UDP. ICMP errors are parsed down to
//! the packet they quote, which is translated with the flow it belongs to (RFC 5508).

use hairpin_common::{
    Endpoint, FlowKey, Ipv4Be, PortBe, Reason,
    consts::{IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP},
    tcp_flags_valid,
};
use network_types::{eth::EthHdr, ip::Ipv4Hdr, tcp::TcpHdr, udp::UdpHdr};

use crate::ctx::{Packet, ptr_at};

const ETH_P_IP_BE: u16 = 0x0800u16.to_be();
/// 802.1Q and 802.1ad (QinQ service) VLAN tags.
const ETH_P_8021Q_BE: u16 = 0x8100u16.to_be();
const ETH_P_8021AD_BE: u16 = 0x88a8u16.to_be();
/// A VLAN tag: tag control (priority, DEI, VLAN ID) and the type it encloses.
const VLAN_TAG_LEN: usize = 4;
const VLAN_VID_MASK: u16 = 0x0fff;
/// More-fragments flag and fragment offset, in the raw (network order) `frags` word.
const IP_MF_OFFSET_MASK_BE: u16 = 0x3fffu16.to_be();
/// Fragment offset alone: non-zero means the L4 header is in another fragment.
const IP_OFFSET_MASK_BE: u16 = 0x1fffu16.to_be();

const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_SOURCE_QUENCH: u8 = 4;
const ICMP_REDIRECT: u8 = 5;
const ICMP_ECHO: u8 = 8;
const ICMP_TIME_EXCEEDED: u8 = 11;
const ICMP_PARAMETER_PROBLEM: u8 = 12;
/// The ICMP header: type, code, checksum, and four bytes (echo id + sequence, or unused).
pub const ICMP_HDR_LEN: usize = 8;
/// Offset of the echo identifier within the ICMP header: the first half of its rest.
pub const ICMP_ID_OFF: usize = core::mem::offset_of!(network_types::icmp::Icmpv4Hdr, data);

/// Where the fields hairpin rewrites live, and the tuple they form.
///
/// Laid out so that no run of constant bytes starts at an odd offset: the programs are built
/// allowing misaligned access (see `build.rs`), so LLVM writes such a run (a UDP packet's zero
/// flags, say, with the padding after them) with one wide store, and a misaligned store to
/// the stack is what the verifier rejects. Hence `repr(C)`, the flags first, and explicit
/// padding in naturally aligned pieces.
#[repr(C)]
pub struct Parsed {
    pub key: FlowKey,
    /// Offset of the IPv4 header.
    pub l3_off: usize,
    /// Offset of the TCP/UDP/ICMP header (after IPv4 options, if any).
    pub l4_off: usize,
    /// TCP flags (byte 13 of the header), 0 for other protocols.
    pub tcp_flags: u8,
    /// 1: an ICMP echo request, which may open a flow (its id stands in the source "port"; a
    /// request with id 0 and a reply look alike by the tuple alone).
    pub echo_request: u8,
    /// IPv4 total length.
    pub tot_len: u16,
    /// 1: the first fragment of a datagram (its L4 header is the datagram's; the rest of the
    /// datagram follows in fragments without one). A whole word, so that the struct has no
    /// padding: constant padding bytes get merged into stores at odd offsets.
    pub first_fragment: u32,
}

/// What follows an IPv4 header that hairpin translates.
pub enum L4 {
    /// A TCP, UDP or ICMP echo packet: a flow of its own.
    Flow(Parsed),
    /// An ICMP error (destination unreachable, source quench, redirect, time exceeded,
    /// parameter problem): the packet it quotes, parsed as it sits inside the error. Only its first 8 L4 bytes are sure to be there.
    IcmpError(Parsed),
}

/// Headers hairpin may need to pull into the linear area: Ethernet, IPv4 with the longest
/// options, a TCP header.
pub const MAX_HDR_LEN: u32 = (EthHdr::LEN + 60 + TcpHdr::LEN) as u32;
/// As [`MAX_HDR_LEN`], for an ICMP error: the quoted IPv4 header and L4 header after it (of
/// which only the first 8 bytes are sure to be quoted).
pub const MAX_ICMP_ERROR_HDR_LEN: u32 = (EthHdr::LEN + 60 + ICMP_HDR_LEN + 60 + TcpHdr::LEN) as u32;

/// The IPv4 header of a packet: what the security checks need, for every protocol.
pub struct Ip {
    pub src: Ipv4Be,
    pub dst: Ipv4Be,
    pub proto: u8,
    pub l3_off: usize,
    pub l4_off: usize,
    pub tot_len: usize,
    /// The IPv4 identification (raw), which a datagram's fragments share.
    pub id: u16,
    /// The flags and fragment offset word (raw). Kept whole rather than as two flags: LLVM
    /// would merge the two byte stores into one at an odd stack offset (see `Parsed`).
    pub frags: u16,
}

impl Ip {
    /// A fragment, first or later: a flow's ports are not in every packet of it.
    #[inline(always)]
    pub fn fragment(&self) -> bool {
        self.frags & IP_MF_OFFSET_MASK_BE != 0
    }

    /// A fragment other than the first: it has no L4 header at all.
    #[inline(always)]
    pub fn later_fragment(&self) -> bool {
        self.frags & IP_OFFSET_MASK_BE != 0
    }
}

/// Parses Ethernet and IPv4. Non-IPv4 is an `Err` to pass; a bad IPv4 header one to drop.
///
/// A frame of a VLAN (a tag with an ID other than 0, or two tags; in the frame, or already
/// taken out of it into the skb, as TC sees it) belongs to the VLAN's own interface: an `Err`
/// to pass. A priority tag (ID 0) is looked past: the kernel delivers such a frame on this
/// interface, so it is translated (and its boundary checked) like an untagged one.
#[inline(always)]
pub fn parse_ip(pkt: &impl Packet) -> Result<Ip, Reason> {
    if pkt.vlan_id() != 0 {
        return Err(Reason::PassVlan);
    }
    let eth = ptr_at::<EthHdr>(pkt, 0).map_err(|_| Reason::PassNotIpv4)?;
    // SAFETY: ptr_at checked the bounds; headers are read unaligned (network-types fields are
    // byte arrays).
    let mut ether_type = unsafe { (*eth).ether_type };
    let mut l3_off = EthHdr::LEN;
    if ether_type == ETH_P_8021Q_BE || ether_type == ETH_P_8021AD_BE {
        let tag = ptr_at::<[u16; 2]>(pkt, EthHdr::LEN)?;
        // SAFETY: as above.
        let [tci, inner] = unsafe { tag.read_unaligned() };
        if u16::from_be(tci) & VLAN_VID_MASK != 0 || inner == ETH_P_8021Q_BE || inner == ETH_P_8021AD_BE {
            return Err(Reason::PassVlan);
        }
        (ether_type, l3_off) = (inner, EthHdr::LEN + VLAN_TAG_LEN);
    }
    if ether_type != ETH_P_IP_BE {
        return Err(Reason::PassNotIpv4);
    }
    let (ip, ihl) = ipv4_at(pkt, l3_off)?;
    if ip.tot_len < ihl {
        return Err(Reason::DropMalformed);
    }
    Ok(ip)
}

/// The frame's destination MAC address.
#[inline(always)]
pub fn eth_dst(pkt: &impl Packet) -> Result<[u8; 6], Reason> {
    let dst = ptr_at::<[u8; 6]>(pkt, 0)?;
    // SAFETY: bounds checked by ptr_at.
    Ok(unsafe { dst.read_unaligned() })
}

/// The IPv4 header at `l3_off` (of a packet, or quoted in an ICMP error), and its length.
#[inline(always)]
fn ipv4_at(pkt: &impl Packet, l3_off: usize) -> Result<(Ip, usize), Reason> {
    let ip = ptr_at::<Ipv4Hdr>(pkt, l3_off)?;
    let (vihl, tot_len, id, frags, proto, src, dst) = unsafe {
        let ip = &*ip;
        (
            ip.vihl,
            u16::from_be_bytes(ip.tot_len) as usize,
            u16::from_ne_bytes(ip.id),
            u16::from_ne_bytes(ip.frags),
            ip.proto,
            Ipv4Be(u32::from_ne_bytes(ip.src_addr)),
            Ipv4Be(u32::from_ne_bytes(ip.dst_addr)),
        )
    };
    let ihl = ((vihl & 0x0f) as usize) * 4;
    if vihl >> 4 != 4 || ihl < Ipv4Hdr::LEN {
        return Err(Reason::DropMalformed);
    }
    let ip = Ip { src, dst, proto, l3_off, l4_off: l3_off + ihl, tot_len, id, frags };
    Ok((ip, ihl))
}

/// The source and destination "ports" of an ICMP echo message (see the module doc), or `None`
/// for another type.
#[inline(always)]
fn echo_ports(icmp_type: u8, id: u16) -> Option<(u16, u16)> {
    match icmp_type {
        ICMP_ECHO => Some((id, 0)),
        ICMP_ECHO_REPLY => Some((0, id)),
        _ => None,
    }
}

/// Parses the L4 header after `ip`. Fragments after the first and protocols (or ICMP types)
/// hairpin does not translate are an `Err` to pass; a truncated or inconsistent header one to
/// drop. A first fragment is parsed as a whole datagram's header (lengths that cover the whole
/// datagram aside); an ICMP error in fragments is not translated.
#[inline(always)]
pub fn parse_l4(pkt: &impl Packet, ip: &Ip) -> Result<L4, Reason> {
    if ip.later_fragment() {
        return Err(Reason::PassFragment);
    }
    let (l3_off, l4_off, tot_len) = (ip.l3_off, ip.l4_off, ip.tot_len);
    let ihl = l4_off - l3_off;
    const TCP_DOFF_OFF: usize = 12;
    const TCP_FLAGS_OFF: usize = 13;
    let mut error = false;
    // What netfilter's conntrack would call an invalid header (see `Reason::DropInvalid`).
    let mut invalid = false;
    let mut echo_request = 0;
    let (sport, dport, tcp_flags) = match ip.proto {
        IPPROTO_TCP => {
            if tot_len < ihl + TcpHdr::LEN {
                return Err(Reason::DropMalformed);
            }
            let tcp = ptr_at::<TcpHdr>(pkt, l4_off)?;
            // SAFETY: bounds checked by ptr_at.
            let (sport, dport, doff, flags) = unsafe {
                let b = tcp as *const u8;
                ((*tcp).source, (*tcp).dest, *b.add(TCP_DOFF_OFF), *b.add(TCP_FLAGS_OFF))
            };
            let hdr_len = ((doff >> 4) as usize) * 4;
            invalid = hdr_len < TcpHdr::LEN || ihl + hdr_len > tot_len || !tcp_flags_valid(flags);
            (sport, dport, flags)
        }
        IPPROTO_UDP => {
            if tot_len < ihl + UdpHdr::LEN {
                return Err(Reason::DropMalformed);
            }
            let udp = ptr_at::<UdpHdr>(pkt, l4_off)?;
            // SAFETY: bounds checked by ptr_at.
            let (sport, dport, len) = unsafe { ((*udp).src, (*udp).dst, u16::from_be_bytes((*udp).len) as usize) };
            // A first fragment's UDP length is the whole datagram's.
            invalid = len < UdpHdr::LEN || (!ip.fragment() && ihl + len > tot_len);
            (sport, dport, 0)
        }
        IPPROTO_ICMP => {
            if tot_len < ihl + ICMP_HDR_LEN {
                return Err(Reason::DropMalformed);
            }
            let icmp = ptr_at::<[u8; ICMP_HDR_LEN]>(pkt, l4_off)?;
            let (ty, id) = unsafe { ((*icmp)[0], u16::from_ne_bytes([(*icmp)[4], (*icmp)[5]])) };
            // Every message that quotes a packet: netfilter's conntrack relates the same five.
            match ty {
                ICMP_DEST_UNREACH
                | ICMP_SOURCE_QUENCH
                | ICMP_REDIRECT
                | ICMP_TIME_EXCEEDED
                | ICMP_PARAMETER_PROBLEM => error = true,
                _ => {}
            }
            echo_request = u8::from(ty == ICMP_ECHO);
            match echo_ports(ty, id) {
                Some((s, d)) => (s.to_ne_bytes(), d.to_ne_bytes(), 0),
                None if error => ([0; 2], [0; 2], 0),
                None => return Err(Reason::PassOtherProto),
            }
        }
        _ => return Err(Reason::PassOtherProto),
    };
    // Truncation is checked only now: done before the header accesses above, it would let the
    // compiler prove their bounds checks redundant and drop them, which the verifier rejects.
    if l3_off + tot_len > pkt.len() {
        return Err(Reason::DropMalformed);
    }
    if invalid {
        return Err(Reason::DropInvalid);
    }
    if error {
        if ip.fragment() {
            return Err(Reason::PassFragment);
        }
        let quoted = parse_quoted(pkt, l4_off + ICMP_HDR_LEN)?;
        if quoted.l4_off + 8 > l3_off + tot_len {
            return Err(Reason::DropMalformed);
        }
        return Ok(L4::IcmpError(quoted));
    }
    Ok(L4::Flow(Parsed {
        key: FlowKey::new(
            ip.proto,
            Endpoint::new(ip.src, PortBe(u16::from_ne_bytes(sport))),
            Endpoint::new(ip.dst, PortBe(u16::from_ne_bytes(dport))),
        ),
        l3_off,
        l4_off,
        tot_len: tot_len as u16,
        tcp_flags,
        echo_request,
        first_fragment: u32::from(ip.fragment()),
    }))
}

/// The packet an ICMP error quotes, at `l3_off`: its IPv4 header and the first 8 bytes of its
/// TCP/UDP/ICMP echo header, which hold the ports (or echo id). Anything else passes.
#[inline(always)]
fn parse_quoted(pkt: &impl Packet, l3_off: usize) -> Result<Parsed, Reason> {
    let (ip, _) = ipv4_at(pkt, l3_off)?;
    // A quoted first fragment still has its ports; a later one has none to translate.
    if ip.later_fragment() {
        return Err(Reason::PassFragment);
    }
    let l4 = ptr_at::<[u8; 8]>(pkt, ip.l4_off)?;
    // SAFETY: bounds checked by ptr_at.
    let b = unsafe { *l4 };
    let (sport, dport) = match ip.proto {
        IPPROTO_TCP | IPPROTO_UDP => (u16::from_ne_bytes([b[0], b[1]]), u16::from_ne_bytes([b[2], b[3]])),
        IPPROTO_ICMP => echo_ports(b[0], u16::from_ne_bytes([b[4], b[5]])).ok_or(Reason::PassOtherProto)?,
        _ => return Err(Reason::PassOtherProto),
    };
    Ok(Parsed {
        key: FlowKey::new(ip.proto, Endpoint::new(ip.src, PortBe(sport)), Endpoint::new(ip.dst, PortBe(dport))),
        l3_off,
        l4_off: ip.l4_off,
        tot_len: ip.tot_len as u16,
        tcp_flags: 0,
        echo_request: 0,
        first_fragment: 0,
    })
}
