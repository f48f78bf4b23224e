//! The one test frame both benchmarks send: 64 bytes of Ethernet, IPv4 and UDP.

use std::net::Ipv4Addr;

/// A 64-byte Ethernet/IPv4/UDP frame from `src:sport` to `dst:dport` (TTL 64, UDP checksum 0,
/// 18 bytes of zero payload), with Ethernet addresses `dmac` and `smac`.
pub fn udp(dmac: [u8; 6], smac: [u8; 6], src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> Vec<u8> {
    const PAYLOAD: usize = 18;
    let udp_len = (8 + PAYLOAD) as u16;
    let tot = 20 + udp_len;
    let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0];
    ip[2..4].copy_from_slice(&tot.to_be_bytes());
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let check = hairpin_common::csum::checksum(&ip);
    ip[10..12].copy_from_slice(&check.to_ne_bytes());
    let mut f = [dmac, smac].concat();
    f.extend_from_slice(&[0x08, 0x00]);
    f.extend_from_slice(&ip);
    for w in [sport, dport, udp_len, 0] {
        f.extend_from_slice(&w.to_be_bytes());
    }
    f.extend_from_slice(&[0; PAYLOAD]);
    f
}

#[cfg(test)]
mod tests {
    /// What the two hand-made frames this replaced carried, byte for byte.
    #[test]
    fn frame_bytes() {
        let f = super::udp(
            [2, 0, 0, 0, 2, 1],
            [2, 0, 0, 0, 2, 0xfe],
            [198, 51, 100, 7].into(),
            65000,
            [203, 0, 113, 1].into(),
            9,
        );
        let want: Vec<u8> = [
            &[2, 0, 0, 0, 2, 1, 2, 0, 0, 0, 2, 0xfe, 8, 0][..],
            &[0x45, 0, 0, 46, 0, 0, 0x40, 0, 64, 17, 0xd4, 0x82, 198, 51, 100, 7, 203, 0, 113, 1],
            &[0xfd, 0xe8, 0, 9, 0, 26, 0, 0],
            &[0; 18],
        ]
        .concat();
        assert_eq!(f, want);
    }
}
