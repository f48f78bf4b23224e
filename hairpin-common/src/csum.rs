//! Internet checksum arithmetic (RFC 1071) and incremental update (RFC 1624).
//!
//! Every value here is *raw*: a 16- or 32-bit word exactly as it sits in packet memory, read
//! with a native load. One's complement addition commutes with byte swapping, so a sum of raw
//! words, folded and stored back raw, is the correct network-order checksum on any host. This
//! lets the dataplane update checksums without a single byte swap.
//!
//! A [`CsumDelta`] is the same quantity as the kernel's `__wsum` "diff" (what `bpf_csum_diff`
//! returns), so the TC path can hand it to `bpf_l3_csum_replace`/`bpf_l4_csum_replace` while the
//! XDP path applies it with [`CsumDelta::apply`].

/// One's complement 32-bit addition: the carry out of bit 31 wraps around into bit 0.
#[inline(always)]
pub const fn add32(a: u32, b: u32) -> u32 {
    let (sum, carry) = a.overflowing_add(b);
    sum.wrapping_add(carry as u32)
}

/// Folds a 32-bit one's complement sum to 16 bits (not complemented).
#[inline(always)]
pub const fn fold(sum: u32) -> u16 {
    let s = (sum & 0xffff) + (sum >> 16);
    let s = (s & 0xffff) + (s >> 16);
    s as u16
}

/// Folds a 64-bit one's complement sum to 32 bits (not complemented); 0 only for 0.
#[inline(always)]
pub const fn fold64(sum: u64) -> u32 {
    let s = (sum & 0xffff_ffff) + (sum >> 32);
    ((s & 0xffff_ffff) + (s >> 32)) as u32
}

/// The accumulated change `Σ(~old + new)` of rewritten words (RFC 1624, eqn. 3), summed in 64
/// bits and folded only when applied. With an end-around carry after every addition it took
/// some 300 of `xdp_wan`'s 3,800 instructions (BPF has no carry flag, and each 32-bit
/// overflow check needs zero-extensions); a 64-bit sum of a few dozen 32-bit words cannot
/// overflow, and folds to the same checksum, bit for bit: both sums are 0 only when every
/// term is, and otherwise fold into 1..=0xffff, where each value mod 0xffff has one form.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CsumDelta(u64);

impl CsumDelta {
    pub const ZERO: Self = Self(0);

    /// Records that the raw 32-bit word `old` becomes `new` (an IPv4 address).
    #[inline(always)]
    pub const fn replace32(self, old: u32, new: u32) -> Self {
        // `!old` as a 32-bit word, without the 64-bit complement's high ones.
        Self(self.0 + (0xffff_ffff - old as u64) + new as u64)
    }

    /// Records that the raw 16-bit word `old` becomes `new` (a port).
    #[inline(always)]
    pub const fn replace16(self, old: u16, new: u16) -> Self {
        Self(self.0 + (0xffff - old as u64) + new as u64)
    }

    /// Adds another delta (e.g. the pseudo-header part to the port part).
    #[inline(always)]
    pub const fn plus(self, other: Self) -> Self {
        Self(self.0 + other.0)
    }

    /// The change of a router decrementing the TTL: the IPv4 header word that holds it with
    /// the protocol (`[ttl, proto]` as in packet memory) before and after; `ttl` above 0.
    #[inline(always)]
    pub const fn ttl_decrement(ttl: u8, proto: u8) -> Self {
        Self::ZERO.replace16(u16::from_ne_bytes([ttl, proto]), u16::from_ne_bytes([ttl - 1, proto]))
    }

    /// The kernel `__wsum` form, for `bpf_l3_csum_replace`/`bpf_l4_csum_replace` with size 0:
    /// the same 32-bit word as the end-around carry chain gives (both are 0 only when every
    /// term is, and otherwise in 1..=0xffffffff, one form per value mod 0xffffffff).
    #[inline(always)]
    pub const fn wsum(self) -> u32 {
        fold64(self.0)
    }

    /// RFC 1624 eqn. 3: `HC' = ~(~HC + Σ(~m + m'))`.
    ///
    /// Eqn. 3 (rather than eqn. 2) never produces the -0/+0 ambiguity of RFC 1141 except where a
    /// full recomputation would too: the result is 0x0000 only if every covered word is zero.
    #[inline(always)]
    pub const fn apply(self, check: u16) -> u16 {
        !fold(fold64(self.0 + (!check) as u64))
    }

    /// As [`apply`](Self::apply), for a UDP checksum: 0 means "no checksum" (RFC 768) and stays
    /// 0, and a computed 0 is sent as 0xffff.
    #[inline(always)]
    pub const fn apply_udp(self, check: u16) -> u16 {
        if check == 0 {
            return 0;
        }
        match self.apply(check) {
            0 => 0xffff,
            c => c,
        }
    }
}

/// Full one's complement sum of `data` (odd tail padded with zero), not folded; raw words.
pub fn sum(data: &[u8], initial: u32) -> u32 {
    let mut acc = initial;
    let (words, tail) = data.as_chunks::<2>();
    for w in words {
        acc = add32(acc, u16::from_ne_bytes(*w) as u32);
    }
    if let [last] = tail {
        acc = add32(acc, u16::from_ne_bytes([*last, 0]) as u32);
    }
    acc
}

/// The Internet checksum of `data` from scratch (RFC 1071), as a raw word to store.
pub fn checksum(data: &[u8]) -> u16 {
    !fold(sum(data, 0))
}

/// TCP/UDP checksum from scratch over the IPv4 pseudo-header and `segment` (whose checksum
/// field must hold zero). For UDP a result of 0 must be sent as 0xffff by the caller.
pub fn l4_checksum(src: [u8; 4], dst: [u8; 4], proto: u8, segment: &[u8]) -> u16 {
    let len = segment.len() as u16;
    let mut pseudo = [0u8; 12];
    pseudo[0..4].copy_from_slice(&src);
    pseudo[4..8].copy_from_slice(&dst);
    pseudo[9] = proto;
    pseudo[10..12].copy_from_slice(&len.to_be_bytes());
    !fold(sum(segment, sum(&pseudo, 0)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn raw16(b: [u8; 2]) -> u16 {
        u16::from_ne_bytes(b)
    }

    #[test]
    fn rfc1071_example() {
        // RFC 1071 section 3: the sum of 0001 f203 f4f5 f6f7 is ddf2 (folded, big-endian view).
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(sum(&data, 0)).to_ne_bytes(), [0xdd, 0xf2]);
        assert_eq!(checksum(&data).to_ne_bytes(), [0x22, 0x0d]);
    }

    #[test]
    fn known_ipv4_header() {
        // A textbook header (wikipedia "IPv4 header checksum"): checksum b861.
        let mut h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8, 0x00, 0x01, 0xc0, 0xa8,
            0x00, 0xc7,
        ];
        assert_eq!(checksum(&h).to_ne_bytes(), [0xb8, 0x61]);
        h[10..12].copy_from_slice(&[0xb8, 0x61]);
        assert_eq!(checksum(&h), 0, "a header with a correct checksum sums to zero");
    }

    #[test]
    fn rfc1624_example() {
        // RFC 1624 section 4: HC = 0xdd2f, m = 0x5555 becomes m' = 0x3285; HC' = 0x0000.
        let hc = raw16([0xdd, 0x2f]);
        let d = CsumDelta::ZERO.replace16(raw16([0x55, 0x55]), raw16([0x32, 0x85]));
        assert_eq!(d.apply(hc).to_ne_bytes(), [0x00, 0x00]);
    }

    #[test]
    fn udp_zero_checksum_stays_zero_and_computed_zero_becomes_ffff() {
        let d = CsumDelta::ZERO.replace32(0x0102_0304, 0x0a0b_0c0d);
        assert_eq!(d.apply_udp(0), 0);
        // Find a check value whose update yields 0 and confirm UDP sends 0xffff instead.
        let check = (1..=u16::MAX).find(|&c| d.apply(c) == 0).expect("some checksum maps to 0");
        assert_eq!(d.apply_udp(check), 0xffff);
    }

    #[test]
    fn delta_of_no_change_is_identity() {
        for check in [0x0000, 0x0001, 0x7fff, 0xfffe, 0xffff] {
            let d = CsumDelta::ZERO.replace32(0xdead_beef, 0xdead_beef).replace16(7, 7);
            // 0xffff and 0x0000 are the same value in one's complement; eqn. 3 keeps 0xffff as 0
            // only when needed, so compare modulo that equivalence.
            let out = d.apply(check);
            assert!(out == check || (out ^ check) == 0xffff && (out == 0 || check == 0));
        }
    }

    /// Builds a header-like buffer, then checks that an incremental update equals recomputation.
    fn recompute_matches(mut buf: Vec<u8>, addr_at: usize, new_addr: [u8; 4], port_at: usize, new_port: [u8; 2]) {
        // Word 0 carries the checksum field; zero it and compute from scratch.
        buf[0] = 0;
        buf[1] = 0;
        let before = checksum(&buf);
        buf[0..2].copy_from_slice(&before.to_ne_bytes());

        let old_addr = u32::from_ne_bytes(buf[addr_at..addr_at + 4].try_into().unwrap());
        let old_port = u16::from_ne_bytes(buf[port_at..port_at + 2].try_into().unwrap());
        let d = CsumDelta::ZERO
            .replace32(old_addr, u32::from_ne_bytes(new_addr))
            .replace16(old_port, u16::from_ne_bytes(new_port));
        buf[addr_at..addr_at + 4].copy_from_slice(&new_addr);
        buf[port_at..port_at + 2].copy_from_slice(&new_port);
        let incremental = d.apply(before);

        buf[0] = 0;
        buf[1] = 0;
        let scratch = checksum(&buf);
        // Equal, or the two representations of zero when the covered data sums to 0xffff.
        assert!(
            incremental == scratch || (incremental ^ scratch) == 0xffff,
            "incremental {incremental:#06x} vs recomputed {scratch:#06x}"
        );
        // What matters on the wire: the receiver's verification sums to zero (0xffff folded).
        buf[0..2].copy_from_slice(&incremental.to_ne_bytes());
        assert_eq!(checksum(&buf), 0);
    }

    /// `CsumDelta` against the RFC 1624 chain as it was computed before, with an end-around
    /// carry at every step: the same checksum and the same `__wsum`, bit for bit.
    fn wide_sum_matches_the_chain(words: &[(u32, u32)], ports: &[(u16, u16)], check: u16) -> Result<(), TestCaseError> {
        let mut chain = 0u32;
        let mut d = CsumDelta::ZERO;
        for &(old, new) in words {
            chain = add32(add32(chain, !old), new);
            d = d.replace32(old, new);
        }
        for &(old, new) in ports {
            chain = add32(add32(chain, (!old) as u32), new as u32);
            d = d.replace16(old, new);
        }
        prop_assert_eq!(d.apply(check), !fold(add32((!check) as u32, chain)));
        prop_assert_eq!(d.wsum(), chain);
        Ok(())
    }

    proptest! {
        #[test]
        fn incremental_update_equals_full_recomputation(
            body in proptest::collection::vec(any::<u8>(), 4..15).prop_map(|v| {
                // Even length, at least 2 words after the checksum word, 4 words minimum.
                let mut v = v; if v.len() % 2 == 1 { v.push(0); } v
            }),
            addr in any::<[u8; 4]>(),
            new_addr in any::<[u8; 4]>(),
            port in any::<[u8; 2]>(),
            new_port in any::<[u8; 2]>(),
        ) {
            let mut buf = vec![0, 0];
            buf.extend_from_slice(&addr);
            buf.extend_from_slice(&port);
            buf.extend_from_slice(&body);
            recompute_matches(buf, 2, new_addr, 6, new_port);
        }

        #[test]
        fn wide_sum_folds_as_the_end_around_carry_chain_bit_for_bit_at_the_edges(
            pick in proptest::collection::vec(0usize..6, 0..24),
            check in prop_oneof![Just(0u16), Just(0xffff), any::<u16>()],
        ) {
            // The words where the two forms of zero and the carries meet.
            const EDGE: [(u32, u32); 6] =
                [(0, 0), (0xffff_ffff, 0), (0, 0xffff_ffff), (0xffff_ffff, 0xffff_ffff), (1, 0), (0x8000_0000, 0x7fff_ffff)];
            let words: Vec<_> = pick.iter().map(|&i| EDGE[i]).collect();
            wide_sum_matches_the_chain(&words, &[], check)?;
        }

        #[test]
        fn wide_sum_folds_as_the_end_around_carry_chain_bit_for_bit(
            words in proptest::collection::vec((any::<u32>(), any::<u32>()), 0..24),
            ports in proptest::collection::vec((any::<u16>(), any::<u16>()), 0..8),
            check in any::<u16>(),
        ) {
            wide_sum_matches_the_chain(&words, &ports, check)?;
        }

        #[test]
        fn delta_composes(a in any::<u32>(), b in any::<u32>(), c in any::<u32>(), check in any::<u16>()) {
            // a -> b then b -> c equals a -> c, as checksums (modulo the zero representations).
            let two = CsumDelta::ZERO.replace32(b, c).apply(CsumDelta::ZERO.replace32(a, b).apply(check));
            let one = CsumDelta::ZERO.replace32(a, c).apply(check);
            prop_assert!(two == one || (two ^ one) == 0xffff);
        }
    }
}
