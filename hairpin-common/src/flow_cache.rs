//! The fast path's flow cache: per CPU, a two-way set-associative copy of what forwarding an
//! established flow direction's packet needs (its translation and next hop), one cache line per
//! flow direction, in an array map in front of conntrack.
//!
//! Why: a conntrack hit costs a BPF hash-map lookup (hashing, the bucket head, the element
//! with its key and value: two or three cache lines in tables of tens of megabytes, so with
//! many flows as many cache and TLB misses). A cache slot is one line in a table half the
//! size, indexed directly. Conntrack stays the truth: a slot is used only while it is younger
//! than [`fresh_ns`] and of the current generation (bumped whenever flows are removed), and a
//! packet carrying a state bit its slot has not recorded goes to conntrack.

use bytemuck::{Pod, Zeroable};
use core::mem::{align_of, size_of};

use crate::{FlowKey, NextHop};

/// Slots per set.
pub const WAYS: u32 = 2;

/// The longest a slot serves packets before conntrack is consulted again, which refreshes the
/// flow's last-seen time, resolves its next hop again and checks its reply entry. Each
/// consultation of a flow that many others push out of the CPU's caches costs two cold hash
/// lookups and a FIB lookup: at 60,000 flows of ~15 packets a second each, a 1 s bound sent
/// 11% of packets to conntrack, 4 s sends 5% (`cargo xtask bench`, bench/NOTES.md). It also
/// bounds how long a route or neighbour change, or a reply entry evicted from a full table,
/// goes unnoticed.
pub const MAX_FRESH_NS: u64 = 4_000_000_000;

/// How long a slot serves under idle timeouts `t`: [`MAX_FRESH_NS`], or a quarter of the
/// shortest timeout if less, so that conntrack's last-seen times (which the controller's
/// sweep expires flows by) lag a live flow by at most that plus conntrack's own 1 s refresh
/// granularity.
#[inline(always)]
pub const fn fresh_ns(t: &crate::Timeouts) -> u64 {
    let mut s = t.tcp_established;
    if t.tcp_transitory < s {
        s = t.tcp_transitory;
    }
    if t.udp < s {
        s = t.udp;
    }
    if t.icmp < s {
        s = t.icmp;
    }
    let quarter = s as u64 * 250_000_000;
    if quarter < MAX_FRESH_NS { quarter } else { MAX_FRESH_NS }
}

/// Slot counts per CPU are kept within these (powers of two).
pub const MIN_SLOTS_PER_CPU: u32 = 1024;
pub const MAX_SLOTS_PER_CPU: u32 = 1 << 20;

/// One flow direction, as the fast path forwards it. 64 bytes: one cache line (the map is
/// mmapable, which makes the kernel page-align its values; a plain array's values start 56
/// bytes into a line, so each slot would straddle two).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Slot {
    /// The packet's tuple at ingress (the conntrack key); all zero in an empty slot, which no
    /// packet matches (protocol 0 is never parsed).
    pub key: FlowKey,
    /// Its whole translation (conntrack's `xlate`).
    pub xlate: FlowKey,
    /// The next hop, as conntrack's entry had it.
    pub hop: NextHop,
    /// The generation of the flow table it was copied under.
    pub generation: u32,
    /// Until when it may serve, as a [`stamp`]: conntrack was consulted for it [`fresh_ns`]
    /// before. A deadline rather than the time of the check, so that the bound is worked out
    /// once per fill instead of on every packet.
    pub fresh_until: u32,
    /// The conntrack state bits (`CT_S_*`, shifted down by [`STATE_SHIFT`]) already recorded
    /// in the entry: a packet with others must go to conntrack to record them.
    pub state: u8,
    pub _pad8: u8,
    pub _pad16: u16,
}

/// What a slot has served since it was filled: added into its flow direction's conntrack entry
/// ([`crate::CtEntry::packets`]) when the slot is filled again or taken by another flow. In
/// a map of their own beside the slots (`HP_FLOW_COUNTS`, same index), so that a slot stays
/// one cache line.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Counts {
    pub packets: u64,
    pub bytes: u64,
    /// TCP: the acknowledgment number the flow direction's conntrack entry is known to have
    /// at least (read at the fill, or reported since: see [`ACK_REPORT`]).
    pub ack: u32,
    pub _pad: u32,
}

/// How far a TCP flow direction's acknowledgment may advance on a slot before the slot writes
/// it into the conntrack entry, where the other direction's RSTs are judged against it
/// (`nat::rst_in_window`): a conntrack lookup per MiB acknowledged, where one per advance
/// would be one per packet. Without it the entry's acknowledgment would be up to
/// [`fresh_ns`] old: at 2 MiB/s (16 Mbit/s) past the RST window, so that a genuine RST from
/// a bulk sender was ignored and the flow kept for its established timeout.
pub const ACK_REPORT: u32 = 1 << 20;

/// A time (`bpf_ktime_get_boot_ns`) as a slot keeps it, in units of 2^20 ns (about a
/// millisecond): 32 bits wrap after 52 days.
#[inline(always)]
pub const fn stamp(now_ns: u64) -> u32 {
    (now_ns >> 20) as u32
}

/// Whether a slot with deadline `until` may still serve at `now` (both [`stamp`]s): the
/// deadline is ahead, by no more than a slot is ever given ([`MAX_FRESH_NS`]), across a wrap
/// of the stamps. A slot left unused (its flow idle, or served on other CPUs) is past its
/// deadline however long ago that was, but for one [`MAX_FRESH_NS`] in every wrap. Judged by
/// the difference's sign alone (and in 1,024 ns units, wrapping after 73 minutes), a slot
/// unused for 37 to 73 minutes served again without conntrack for up to 36 minutes: a next
/// hop that long out of date, a flow's last-seen time unrefreshed.
#[inline(always)]
pub const fn serves_at(now: u32, until: u32) -> bool {
    let ahead = until.wrapping_sub(now);
    // A fill's deadline is `stamp(now + fresh)`: up to one unit more than `stamp(fresh)` ahead.
    ahead != 0 && ahead <= stamp(MAX_FRESH_NS) + 1
}

/// `CT_S_*` bits sit at bits 8-12 of the conntrack flags; a slot keeps them in a byte.
pub const STATE_SHIFT: u32 = 8;

impl Slot {
    /// The `CT_S_*` bits of conntrack flags (or a packet's state bits), as a slot keeps them.
    #[inline(always)]
    pub const fn state_of(flags: u32) -> u8 {
        ((flags & crate::CT_S_ALL) >> STATE_SHIFT) as u8
    }
}

/// From this fill of conntrack on, the controller's sweep marks the table under pressure
/// (`CFG_F_CT_PRESSURE`). The LRU evicts only when the table is full (or nearly: CPUs keep a
/// few free entries each), so evictions before the mark would take a quarter of the table
/// filling within one sweep interval.
pub const PRESSURE_PERCENT: u64 = 75;

/// Whether `entries` conntrack entries of `capacity` put the table under pressure.
pub const fn under_pressure(entries: u64, capacity: u64) -> bool {
    entries * 100 >= capacity * PRESSURE_PERCENT
}

/// The generation map's elements: the controller's counter (index 0), bumped after it removes
/// flows, and the dataplane's, bumped when it removes an orphan. One writer kind each, so a
/// read-then-write by either can never move the other's back.
pub const GEN_CONTROLLER: u32 = 0;
pub const GEN_DATAPLANE: u32 = 1;
pub const GEN_LEN: u32 = 2;

/// The generation a slot records: the sum of both counters. Each only ever grows, by its own
/// writer, so the sum moves whenever either does and comes back to a value only after 2^32
/// bumps: under conntrack pressure every new flow bumps the dataplane's, and 16 bits each
/// (as this was) wrapped within a slot's life at 16,000 new flows a second.
#[inline(always)]
pub const fn generation(controller: u32, dataplane: u32) -> u32 {
    controller.wrapping_add(dataplane)
}
const _: () = assert!(
    crate::CT_S_ALL >> STATE_SHIFT <= 0xff && (crate::CT_S_ALL >> STATE_SHIFT) << STATE_SHIFT == crate::CT_S_ALL
);
const _: () = assert!(size_of::<Slot>() == 64 && align_of::<Slot>() == 4);
const _: () = assert!(size_of::<Counts>() == 24 && align_of::<Counts>() == 8);

/// The set of `key` among `sets` (a power of two): a multiplicative (Fibonacci) hash of the
/// tuple, its high half folded onto the low one so that the mask keeps well-mixed bits.
/// Cheap in BPF: shifts, xors and one multiplication.
#[inline(always)]
pub const fn set_of(key: &FlowKey, sets: u32) -> u32 {
    let ports = ((key.sport.0 as u32) << 16) | key.dport.0 as u32;
    let h = (key.src.0 ^ key.dst.0.rotate_left(11) ^ ports.rotate_left(5) ^ key.proto as u32).wrapping_mul(0x9E37_79B1);
    (h ^ (h >> 16)) & (sets - 1)
}

/// Sets per CPU for a gateway sized for `max_flows` flows on `cpus` CPUs: room for both
/// directions of every flow spread over the CPUs (with RSS, a CPU sees its share; on a
/// single-queue NIC one CPU sees them all and the cache holds what it can, the rest is served
/// by conntrack), rounded up to a power of two, at least 1,024 slots. So the cache takes 2-4 x
/// max_flows x 64 bytes over all CPUs, about as much as conntrack itself. `cpus` is the
/// possible CPUs (the dataplane indexes by CPU number): where many more are possible than
/// online, each online CPU gets a smaller share than it could use.
pub const fn sets_per_cpu(max_flows: u32, cpus: u32) -> u32 {
    let cpus = if cpus == 0 { 1 } else { cpus };
    let want = (max_flows as u64 * 2 / cpus as u64) as u32;
    let slots = if want <= MIN_SLOTS_PER_CPU {
        MIN_SLOTS_PER_CPU
    } else if want >= MAX_SLOTS_PER_CPU {
        MAX_SLOTS_PER_CPU
    } else {
        want.next_power_of_two()
    };
    slots / WAYS
}

/// The index in the cache array of `way` of `set` on `cpu`.
#[inline(always)]
pub const fn slot_index(cpu: u32, sets: u32, set: u32, way: u32) -> u32 {
    (cpu * sets + set) * WAYS + way
}

// SAFETY: #[repr(C)] Pod types with explicit padding and no pointers.
#[cfg(feature = "user")]
unsafe impl aya::Pod for Slot {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for Counts {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Endpoint, Ipv4Be, PortBe};

    #[test]
    fn deadlines_hold_across_a_wrap_of_the_stamps() {
        let fresh = MAX_FRESH_NS;
        for now_ns in [0u64, 5_000_000_000, (1u64 << 42) - 1_000_000_000, (1 << 42) + 17, (3 << 42) - 1] {
            let until = stamp(now_ns + fresh);
            assert!(serves_at(stamp(now_ns), until), "at {now_ns}");
            assert!(serves_at(stamp(now_ns + fresh - (2 << 20)), until), "just before, at {now_ns}");
            assert!(!serves_at(stamp(now_ns + fresh), until), "at the deadline, from {now_ns}");
            assert!(!serves_at(stamp(now_ns + fresh + 60_000_000_000), until), "a minute on, from {now_ns}");
            // Unused that long (its flow idle, or served on another CPU): never fresh again.
            for minutes in [40u64, 73, 74, 110, 30 * 24 * 60, 51 * 24 * 60] {
                let later = now_ns + minutes * 60_000_000_000;
                assert!(!serves_at(stamp(later), until), "{minutes} minutes on, from {now_ns}");
            }
        }
    }

    #[test]
    fn sizes_are_powers_of_two_within_bounds() {
        assert_eq!(sets_per_cpu(131_072, 2), 131_072 / WAYS);
        assert_eq!(sets_per_cpu(100_000, 3), 131_072 / WAYS);
        assert_eq!(sets_per_cpu(10, 64), MIN_SLOTS_PER_CPU / WAYS);
        assert_eq!(sets_per_cpu(u32::MAX, 1), MAX_SLOTS_PER_CPU / WAYS);
        assert_eq!(sets_per_cpu(100, 0), MIN_SLOTS_PER_CPU / WAYS);
        for (flows, cpus) in [(1, 1), (4096, 2), (500_000, 7), (1 << 24, 1024)] {
            let s = sets_per_cpu(flows, cpus);
            assert!(s.is_power_of_two(), "{flows} flows on {cpus} CPUs: {s} sets");
        }
    }

    /// The benchmark's shape, and a common one: one client and server, sequential source
    /// ports. Few sets may hold more flows than ways (those flows fall back to conntrack).
    #[test]
    fn sequential_ports_spread_over_the_sets() {
        let sets = sets_per_cpu(131_072, 2);
        let mut load = std::vec![0u32; sets as usize];
        let (src, dst) = (Ipv4Be::from_octets([10, 0, 0, 2]), Ipv4Be::from_octets([203, 0, 113, 1]));
        let n = 60_000u32;
        for port in 1024..1024 + n {
            let key = FlowKey::new(
                17,
                Endpoint::new(src, PortBe::from_host(port as u16)),
                Endpoint::new(dst, PortBe::from_host(9)),
            );
            load[set_of(&key, sets) as usize] += 1;
        }
        let overflow: u32 = load.iter().map(|&l| l.saturating_sub(WAYS)).sum();
        let max = *load.iter().max().unwrap();
        // A random placement of 60,000 keys in 65,536 two-way sets leaves about 9% over; the
        // multiplicative hash spreads sequential ports better (2.7%).
        assert!(overflow * 100 / n < 5, "{overflow} of {n} flows do not fit their set");
        assert!(max <= 7, "a set holds {max} flows");
    }

    #[test]
    fn slots_serve_a_quarter_of_the_shortest_timeout_at_most() {
        let t = crate::Timeouts::default();
        assert_eq!(fresh_ns(&t), MAX_FRESH_NS);
        assert_eq!(fresh_ns(&crate::Timeouts { udp: 2, ..t }), 500_000_000);
        assert_eq!(fresh_ns(&crate::Timeouts { icmp: 8, tcp_transitory: 12, ..t }), 2_000_000_000);
        assert_eq!(fresh_ns(&crate::Timeouts { tcp_established: u32::MAX, ..t }), MAX_FRESH_NS);
    }

    #[test]
    fn pressure_starts_at_three_quarters() {
        assert!(!under_pressure(0, 1000));
        assert!(!under_pressure(749, 1000));
        assert!(under_pressure(750, 1000));
        assert!(under_pressure(1000, 1000));
        assert!(!under_pressure(u32::MAX as u64 / 2, u32::MAX as u64));
    }

    #[test]
    fn generations_move_with_either_counter_and_do_not_wrap_soon() {
        // From any state, a bump of either counter (the only moves there are) changes it.
        for (c, d) in [(0, 0), (7, 0xffff), (0xffff, 0x1_0000), (u32::MAX, 3)] {
            assert_ne!(generation(c, d), generation(c.wrapping_add(1), d));
            assert_ne!(generation(c, d), generation(c, d.wrapping_add(1)));
        }
        assert_ne!(generation(0, 0), generation(0, 0x1_0000), "65,536 new flows under pressure: still another");
        assert_ne!(generation(5, 0), generation(5, 0x1000_0000));
        assert_eq!(Slot::state_of(crate::CT_S_ALL | crate::CT_F_REPLY), 0x1f);
    }

    #[test]
    fn indices_of_cpus_do_not_overlap() {
        let sets = 512;
        assert_eq!(slot_index(0, sets, sets - 1, WAYS - 1) + 1, slot_index(1, sets, 0, 0));
    }
}
