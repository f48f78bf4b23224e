//! Frames for the packet tests, built and verified with etherparse: an implementation of the
//! checksums independent of the one under test.

use std::net::SocketAddrV4;

use etherparse::{Icmpv4Type, IpNumber, Ipv4Header, NetSlice, SlicedPacket, TcpHeader, TransportSlice, UdpHeader};

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

pub const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0, 0xaa];
pub const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0, 0xbb];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L4 {
    Tcp,
    Udp,
    /// ICMP echo; its id is the source port of a request, the destination port of a reply
    /// (hairpin's own convention, so that translations read the same as for TCP/UDP).
    Echo {
        reply: bool,
    },
    /// An ICMP error (type, code) quoting [`Pkt::quoted`]; ports are not used.
    IcmpError(u8, u8),
}

pub const ICMP_DEST_UNREACH: u8 = 3;
pub const ICMP_TIME_EXCEEDED: u8 = 11;

/// An IPv4 TCP/UDP/ICMP packet as the tests think of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pkt {
    pub l4: L4,
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
    pub ip_options: Vec<u8>,
    pub payload: Vec<u8>,
    /// UDP sent without a checksum (field 0).
    pub no_udp_csum: bool,
    /// TCP flags byte (default ACK).
    pub tcp_flags: u8,
    /// TCP sequence and acknowledgment numbers (default 1000 and 77; the latter sent only
    /// with ACK).
    pub tcp_nums: (u32, u32),
    /// The quoted bytes of an ICMP error (an IPv4 packet, possibly truncated).
    pub quoted: Vec<u8>,
    pub ttl: u8,
    /// Destination and source MAC addresses.
    pub macs: ([u8; 6], [u8; 6]),
    /// An 802.1Q tag's control field (priority, DEI, VLAN ID), if tagged.
    pub vlan: Option<u16>,
}

impl Pkt {
    pub fn tcp(src: &str, dst: &str) -> Self {
        Self::new(L4::Tcp, src, dst)
    }
    pub fn udp(src: &str, dst: &str) -> Self {
        Self::new(L4::Udp, src, dst)
    }
    /// An echo request with id `src`'s port (`dst`'s port is 0).
    pub fn ping(src: &str, dst: &str) -> Self {
        Self::new(L4::Echo { reply: false }, src, dst)
    }
    /// An echo reply with id `dst`'s port (`src`'s port is 0).
    pub fn pong(src: &str, dst: &str) -> Self {
        Self::new(L4::Echo { reply: true }, src, dst)
    }
    /// An ICMP error from `src` to `dst` (addresses only) quoting the first `quote_len` bytes
    /// of `about`'s IPv4 packet (all of it if longer).
    pub fn icmp_error(ty: u8, code: u8, src: &str, dst: &str, about: &Pkt, quote_len: usize) -> Self {
        let ip = about.build().split_off(14);
        Self::icmp_error_quoting(ty, code, src, dst, &ip[..quote_len.min(ip.len())])
    }
    /// An ICMP error from `src` to `dst` (addresses only) quoting `quoted` (an IPv4 packet's
    /// first bytes, as they are).
    pub fn icmp_error_quoting(ty: u8, code: u8, src: &str, dst: &str, quoted: &[u8]) -> Self {
        let mut p = Self::new(L4::IcmpError(ty, code), &format!("{src}:0"), &format!("{dst}:0"));
        p.payload = Vec::new();
        p.quoted = quoted.to_vec();
        p
    }
    fn new(l4: L4, src: &str, dst: &str) -> Self {
        Self {
            l4,
            src: src.parse().expect("src"),
            dst: dst.parse().expect("dst"),
            ip_options: Vec::new(),
            payload: b"hairpin test payload: 0123456789".to_vec(),
            no_udp_csum: false,
            tcp_flags: TCP_ACK,
            tcp_nums: (1000, 77),
            quoted: Vec::new(),
            ttl: 64,
            macs: (MAC_B, MAC_A),
            vlan: None,
        }
    }
    /// The same packet as a router sends it on: TTL one less, new MAC addresses.
    pub fn forwarded(&self, dst_mac: [u8; 6], src_mac: [u8; 6]) -> Self {
        Self { ttl: self.ttl - 1, macs: (dst_mac, src_mac), ..self.clone() }
    }
    pub fn ttl(mut self, ttl: u8) -> Self {
        self.ttl = ttl;
        self
    }
    pub fn payload_len(mut self, len: usize) -> Self {
        self.payload = (0..len).map(|i| i as u8).collect();
        self
    }
    /// A packet of the same protocol in the other direction (addresses and ports swapped).
    pub fn reply_to(&self) -> Self {
        Self { src: self.dst, dst: self.src, ..self.clone() }
    }
    /// Its conntrack tuple (TCP and UDP), as the dataplane keys it.
    pub fn key(&self) -> hairpin_common::FlowKey {
        let ep = |sa: std::net::SocketAddrV4| {
            hairpin_common::Endpoint::new(
                hairpin_common::Ipv4Be::from_octets(sa.ip().octets()),
                hairpin_common::PortBe::from_host(sa.port()),
            )
        };
        hairpin_common::FlowKey::new(crate::dp::proto(self.l4), ep(self.src), ep(self.dst))
    }
    /// The same packet with other addresses (what a translation should produce).
    pub fn with(&self, src: &str, dst: &str) -> Self {
        Self { src: src.parse().expect("src"), dst: dst.parse().expect("dst"), ..self.clone() }
    }
    pub fn options(mut self, opts: &[u8]) -> Self {
        self.ip_options = opts.to_vec();
        self
    }
    pub fn flags(mut self, tcp_flags: u8) -> Self {
        self.tcp_flags = tcp_flags;
        self
    }
    /// TCP sequence and acknowledgment numbers.
    pub fn nums(mut self, seq: u32, ack: u32) -> Self {
        self.tcp_nums = (seq, ack);
        self
    }
    /// The same packet in an 802.1Q tag with control field `tci` (VLAN ID in the low 12 bits).
    pub fn vlan(mut self, tci: u16) -> Self {
        self.vlan = Some(tci);
        self
    }
    pub fn without_udp_checksum(mut self) -> Self {
        self.no_udp_csum = true;
        self
    }

    /// Ethernet + IPv4 (+ options) + TCP/UDP + payload, every checksum computed from scratch.
    pub fn build(&self) -> Vec<u8> {
        let (proto, l4_len) = match self.l4 {
            L4::Tcp => (IpNumber::TCP, TcpHeader::MIN_LEN),
            L4::Udp => (IpNumber::UDP, UdpHeader::LEN),
            L4::Echo { .. } => (IpNumber::ICMP, 8),
            L4::IcmpError(..) => (IpNumber::ICMP, 8 + self.quoted.len()),
        };
        let mut ip = Ipv4Header::new(
            (l4_len + self.payload.len()) as u16,
            self.ttl,
            proto,
            self.src.ip().octets(),
            self.dst.ip().octets(),
        )
        .expect("ipv4 header");
        ip.identification = 0x1234;
        ip.dont_fragment = true;
        ip.options = self.ip_options[..].try_into().expect("options length is a multiple of 4, at most 40");
        ip.set_payload_len(l4_len + self.payload.len()).expect("payload length");
        ip.header_checksum = ip.calc_header_checksum();
        let mut out = self.macs.0.to_vec();
        out.extend_from_slice(&self.macs.1);
        if let Some(tci) = self.vlan {
            out.extend_from_slice(&0x8100u16.to_be_bytes());
            out.extend_from_slice(&tci.to_be_bytes());
        }
        out.extend_from_slice(&0x0800u16.to_be_bytes());
        out.extend_from_slice(&ip.to_bytes());
        match self.l4 {
            L4::Tcp => {
                let mut tcp = TcpHeader::new(self.src.port(), self.dst.port(), self.tcp_nums.0, 64240);
                tcp.fin = self.tcp_flags & TCP_FIN != 0;
                tcp.syn = self.tcp_flags & TCP_SYN != 0;
                tcp.rst = self.tcp_flags & TCP_RST != 0;
                tcp.ack = self.tcp_flags & TCP_ACK != 0;
                tcp.acknowledgment_number = if tcp.ack { self.tcp_nums.1 } else { 0 };
                tcp.checksum = tcp.calc_checksum_ipv4(&ip, &self.payload).expect("tcp checksum");
                out.extend_from_slice(&tcp.to_bytes());
            }
            L4::Udp => {
                let mut udp =
                    UdpHeader::with_ipv4_checksum(self.src.port(), self.dst.port(), &ip, &self.payload).expect("udp");
                if self.no_udp_csum {
                    udp.checksum = 0;
                }
                out.extend_from_slice(&udp.to_bytes());
            }
            L4::Echo { reply } => {
                let id = if reply { self.dst.port() } else { self.src.port() };
                let [a, b] = id.to_be_bytes();
                let ty =
                    Icmpv4Type::Unknown { type_u8: if reply { 0 } else { 8 }, code_u8: 0, bytes5to8: [a, b, 0, 7] };
                out.extend_from_slice(&icmp_header(&ty, &self.payload));
            }
            L4::IcmpError(type_u8, code_u8) => {
                let ty = Icmpv4Type::Unknown { type_u8, code_u8, bytes5to8: [0; 4] };
                out.extend_from_slice(&icmp_header(&ty, &self.quoted));
                out.extend_from_slice(&self.quoted);
            }
        }
        out.extend_from_slice(&self.payload);
        out
    }
}

/// An ICMP header of type `ty` with its checksum over `payload`.
fn icmp_header(ty: &Icmpv4Type, payload: &[u8]) -> Vec<u8> {
    let Icmpv4Type::Unknown { type_u8, code_u8, bytes5to8 } = *ty else { unreachable!() };
    let mut h = vec![type_u8, code_u8];
    h.extend_from_slice(&ty.calc_checksum(payload).to_be_bytes());
    h.extend_from_slice(&bytes5to8);
    h
}

/// The TCP, UDP or ICMP echo packet a frame carries, as a [`Pkt`] (payload, TCP flags and
/// numbers, MACs kept), if it carries one.
pub fn parse(frame: &[u8]) -> Option<Pkt> {
    let p = SlicedPacket::from_ethernet(frame).ok()?;
    let Some(NetSlice::Ipv4(ip)) = &p.net else { return None };
    let h = ip.header();
    let (src, dst) = (h.source_addr(), h.destination_addr());
    let mut pkt = match p.transport? {
        TransportSlice::Tcp(t) => {
            let mut pkt =
                Pkt::new(L4::Tcp, &format!("{src}:{}", t.source_port()), &format!("{dst}:{}", t.destination_port()));
            pkt.tcp_flags = (u8::from(t.fin()) * TCP_FIN)
                | (u8::from(t.syn()) * TCP_SYN)
                | (u8::from(t.rst()) * TCP_RST)
                | (u8::from(t.ack()) * TCP_ACK);
            pkt.tcp_nums = (t.sequence_number(), t.acknowledgment_number());
            pkt.payload = t.payload().to_vec();
            pkt
        }
        TransportSlice::Udp(u) => {
            let mut pkt =
                Pkt::new(L4::Udp, &format!("{src}:{}", u.source_port()), &format!("{dst}:{}", u.destination_port()));
            pkt.no_udp_csum = u.checksum() == 0;
            pkt.payload = u.payload().to_vec();
            pkt
        }
        TransportSlice::Icmpv4(i) if matches!(i.type_u8(), 0 | 8) => {
            let b = i.bytes5to8();
            let id = u16::from_be_bytes([b[0], b[1]]);
            let reply = i.type_u8() == 0;
            let (s, d) = if reply { (0, id) } else { (id, 0) };
            let mut pkt = Pkt::new(L4::Echo { reply }, &format!("{src}:{s}"), &format!("{dst}:{d}"));
            pkt.payload = i.payload().to_vec();
            pkt
        }
        _ => return None,
    };
    pkt.ttl = h.ttl();
    pkt.macs = (frame[0..6].try_into().ok()?, frame[6..12].try_into().ok()?);
    Some(pkt)
}

/// An Ethernet header carrying `ether_type`.
pub fn eth(ether_type: u16) -> Vec<u8> {
    let mut v = MAC_B.to_vec();
    v.extend_from_slice(&MAC_A);
    v.extend_from_slice(&ether_type.to_be_bytes());
    v
}

/// Parses a frame and checks the IPv4 header checksum and the TCP/UDP/ICMP checksum from
/// scratch; for an ICMP error, also the quoted packet's IPv4 checksum and, if it is quoted
/// whole, its L4 checksum. Returns a description of what is wrong, naming the header.
pub fn verify_checksums(frame: &[u8]) -> Result<(), String> {
    let p = SlicedPacket::from_ethernet(frame).map_err(|e| format!("unparsable frame: {e}"))?;
    verify_ip(p)
}

fn verify_ip(p: SlicedPacket) -> Result<(), String> {
    let Some(NetSlice::Ipv4(ip)) = p.net else { return Err("not IPv4".into()) };
    let h = ip.header().to_header();
    if h.header_checksum != h.calc_header_checksum() {
        return Err(format!("IPv4 checksum {:#06x}, expected {:#06x}", h.header_checksum, h.calc_header_checksum()));
    }
    // A fragment's L4 checksum covers the whole datagram: compared whole, byte for byte,
    // with one built from scratch and fragmented alike (see `fragments`).
    if h.more_fragments || h.fragment_offset.value() != 0 {
        return Ok(());
    }
    match p.transport {
        Some(TransportSlice::Tcp(t)) => {
            let want = t.to_header().calc_checksum_ipv4(&h, t.payload()).map_err(|e| e.to_string())?;
            if t.checksum() != want {
                return Err(format!("TCP checksum {:#06x}, expected {want:#06x}", t.checksum()));
            }
        }
        Some(TransportSlice::Udp(u)) => {
            let want = u.to_header().calc_checksum_ipv4(&h, u.payload()).map_err(|e| e.to_string())?;
            if u.checksum() != 0 && u.checksum() != want {
                return Err(format!("UDP checksum {:#06x}, expected {want:#06x}", u.checksum()));
            }
        }
        Some(TransportSlice::Icmpv4(i)) => {
            let want = i.icmp_type().calc_checksum(i.payload());
            if i.checksum() != want {
                return Err(format!("ICMP checksum {:#06x}, expected {want:#06x}", i.checksum()));
            }
            if matches!(i.type_u8(), ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED) {
                return verify_quoted(i.payload()).map_err(|e| format!("quoted packet: {e}"));
            }
        }
        _ => return Err("no TCP/UDP/ICMP header".into()),
    }
    Ok(())
}

/// The packet an ICMP error quotes: checked whole when it is all there, else its IPv4 header.
fn verify_quoted(quoted: &[u8]) -> Result<(), String> {
    match SlicedPacket::from_ip(quoted) {
        Ok(p) => verify_ip(p),
        Err(_) => {
            let (h, _) = Ipv4Header::from_slice(quoted).map_err(|e| e.to_string())?;
            match h.header_checksum == h.calc_header_checksum() {
                true => Ok(()),
                false => {
                    Err(format!("IPv4 checksum {:#06x}, expected {:#06x}", h.header_checksum, h.calc_header_checksum()))
                }
            }
        }
    }
}

/// A per-header description of where two frames differ, for test failure messages.
pub fn diff(got: &[u8], want: &[u8]) -> String {
    let describe = |f: &[u8]| match SlicedPacket::from_ethernet(f) {
        Ok(p) => format!(
            "{:?}\n    {:?}",
            p.net.as_ref().map(|n| match n {
                NetSlice::Ipv4(ip) => format!("{:?}", ip.header().to_header()),
                other => format!("{other:?}"),
            }),
            p.transport
        ),
        Err(e) => format!("unparsable: {e}"),
    };
    let first = got.iter().zip(want).position(|(a, b)| a != b).unwrap_or(got.len().min(want.len()));
    format!(
        "frames differ from byte {first} (got {} bytes, want {}):\n  got:  {}\n  want: {}",
        got.len(),
        want.len(),
        describe(got),
        describe(want)
    )
}

/// `frame` (Ethernet, IPv4 without VLAN tag, and its payload) as a sender fragments it:
/// payload pieces of `chunk` bytes (a multiple of 8), each with its own IPv4 header (DF clear,
/// identification `id`, more-fragments and offset set, checksum from scratch).
pub fn fragments(frame: &[u8], chunk: usize, id: u16) -> Vec<Vec<u8>> {
    let (eth, ip) = frame.split_at(14);
    hairpin_lab::traffic::ipv4_fragments(ip, id, chunk).into_iter().map(|f| [eth, &f].concat()).collect()
}
