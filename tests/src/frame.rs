//! Frames for the packet tests, built and verified with etherparse: an implementation of the
//! checksums independent of the one under test.

use std::net::SocketAddrV4;

use etherparse::{IpNumber, Ipv4Header, NetSlice, SlicedPacket, TcpHeader, TransportSlice, UdpHeader};

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
}

/// An IPv4 TCP/UDP packet as the tests think of it.
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
}

impl Pkt {
    pub fn tcp(src: &str, dst: &str) -> Self {
        Self::new(L4::Tcp, src, dst)
    }
    pub fn udp(src: &str, dst: &str) -> Self {
        Self::new(L4::Udp, src, dst)
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
        }
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
    pub fn without_udp_checksum(mut self) -> Self {
        self.no_udp_csum = true;
        self
    }

    /// Ethernet + IPv4 (+ options) + TCP/UDP + payload, every checksum computed from scratch.
    pub fn build(&self) -> Vec<u8> {
        let (proto, l4_len) = match self.l4 {
            L4::Tcp => (IpNumber::TCP, TcpHeader::MIN_LEN),
            L4::Udp => (IpNumber::UDP, UdpHeader::LEN),
        };
        let mut ip = Ipv4Header::new(
            (l4_len + self.payload.len()) as u16,
            64,
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
        let mut out = eth(0x0800);
        out.extend_from_slice(&ip.to_bytes());
        match self.l4 {
            L4::Tcp => {
                let mut tcp = TcpHeader::new(self.src.port(), self.dst.port(), 1000, 64240);
                tcp.fin = self.tcp_flags & TCP_FIN != 0;
                tcp.syn = self.tcp_flags & TCP_SYN != 0;
                tcp.rst = self.tcp_flags & TCP_RST != 0;
                tcp.ack = self.tcp_flags & TCP_ACK != 0;
                tcp.acknowledgment_number = if tcp.ack { 77 } else { 0 };
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
        }
        out.extend_from_slice(&self.payload);
        out
    }
}

/// An Ethernet header carrying `ether_type`.
pub fn eth(ether_type: u16) -> Vec<u8> {
    let mut v = MAC_B.to_vec();
    v.extend_from_slice(&MAC_A);
    v.extend_from_slice(&ether_type.to_be_bytes());
    v
}

/// Parses a frame and checks the IPv4 header checksum and the TCP/UDP checksum from scratch.
/// Returns a description of what is wrong, naming the header.
pub fn verify_checksums(frame: &[u8]) -> Result<(), String> {
    let p = SlicedPacket::from_ethernet(frame).map_err(|e| format!("unparsable frame: {e}"))?;
    let Some(NetSlice::Ipv4(ip)) = p.net else { return Err("not IPv4".into()) };
    let h = ip.header().to_header();
    if h.header_checksum != h.calc_header_checksum() {
        return Err(format!("IPv4 checksum {:#06x}, expected {:#06x}", h.header_checksum, h.calc_header_checksum()));
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
        _ => return Err("no TCP/UDP header".into()),
    }
    Ok(())
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
