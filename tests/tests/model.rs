//! The differential test: generated sequences of frames run through the real compiled programs
//! (BPF_PROG_TEST_RUN, in a namespace that routes like the gateway) and through the reference
//! model (`hairpin_common::model`); at every step the reason counted, the verdict, the exact
//! frame left, and the flows and bindings read back from the maps must agree, and what leaves
//! must have valid checksums and no LAN source on the WAN.
//!
//! Each case is a sequence of actions on a fresh dataplane: a LAN or WAN host sends (UDP, a
//! TCP SYN, ACK, FIN or RST, an echo request) to a WAN host, a LAN host, the gateway, the
//! public address's forwarded ports or its bound ones; a host answers a frame that left on its
//! wire, or sends an ICMP error about it; a WAN host forges an error about any frame seen; a
//! frame is sent again, or made wrong in one way (truncated, bad header fields or checksums,
//! TTL 0 or 1, VLAN tags, IP options, padding, another protocol), or sent again as a datagram
//! in fragments (two to five, in any order, one left out or none) or too big for the WAN's
//! MTU; odd frames (ARP, another
//! host's MAC, a source 0.0.0.0); the controller's commands. What ingress lets on goes through
//! egress where the kernel would route it (a priority tag off, padding trimmed, the TTL
//! counted down, fragmented for the WAN's MTU), or comes back as the kernel's time-exceeded
//! or fragmentation-needed error. Ingress runs as XDP and
//! as TC, the fast path off and on (with its flow cache, steps alternating between CPUs), and
//! with tables for four flows, whose LRUs evict: which flows they take is the kernel's choice,
//! checked against when it may take them, and the sweep must then leave every flow whole or
//! gone.
//! Fixed seed; the number of steps from `HAIRPIN_MODEL_STEPS` (`cargo xtask fuzz` runs long
//! ones, with `HAIRPIN_MODEL_SEED`). A disagreement is shrunk by proptest and printed as the
//! steps that lead to it. What leaves must have valid checksums where what came in had.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{Ipv4Addr, SocketAddrV4},
};

use hairpin_common::{
    CT_F_CONFIRMED, Reason,
    consts::{Hook, IPPROTO_TCP, IPPROTO_UDP},
    model::{At, Choices, Ep, Gateway, Model, Refused, Tuple},
};
use hairpin_tests::{
    dp::{self, Dataplane, Mode},
    frame::{self, L4, Pkt, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
};
use proptest::{
    prelude::*,
    test_runner::{Config as PtConfig, RngAlgorithm, TestError, TestRng, TestRunner},
};

const LAN_HOSTS: [[u8; 4]; 3] = [[192, 168, 0, 2], [192, 168, 0, 3], [192, 168, 0, 4]];
const WAN_HOSTS: [[u8; 4]; 2] = [[198, 51, 100, 7], [198, 51, 100, 8]];
const GW_LAN: [u8; 4] = [192, 168, 0, 1];
const PUBLIC: [u8; 4] = [203, 0, 113, 1];
/// Ports hosts use and send to: few, so that tuples meet.
const PORTS: [u16; 6] = [53, 80, 1024, 5353, 40000, 40001];
/// The forwards: (protocol, public port) -> LAN target; two to one service (a client may use
/// both from one port).
const FORWARDS: [(u8, u16, [u8; 4], u16); 3] = [
    (IPPROTO_TCP, 80, [192, 168, 0, 2], 80),
    (IPPROTO_UDP, 5353, [192, 168, 0, 2], 53),
    (IPPROTO_UDP, 40001, [192, 168, 0, 2], 53),
];
/// Forwards `map add` may add (or, for the first three, finds already there), and `map del`
/// remove: on public ports hosts send to, which a LAN host's binding may hold.
const CANDIDATE_FORWARDS: [(u8, u16, [u8; 4], u16); 5] = [
    FORWARDS[0],
    FORWARDS[1],
    FORWARDS[2],
    (IPPROTO_UDP, 1024, [192, 168, 0, 3], 1024),
    (IPPROTO_TCP, 40000, [192, 168, 0, 4], 80),
];
const STEPS_PER_CASE: usize = 60;
/// Acknowledgment numbers a flow's ACKs carry: 9 MiB apart, as a bulk flow's move between
/// two looks (an RST near one is past the window of the one before it, and behind the one
/// after). The first is every other segment's.
const ACK_LEVELS: [u32; 4] = [77, 77 + (9 << 20), 77 + (18 << 20), 77 + (27 << 20)];
/// A payload too big for the WAN's MTU (1400), not for the LAN's (1500).
const LARGE: usize = 1450;

#[derive(Clone, Copy, Debug)]
enum Proto {
    Udp,
    TcpSyn,
    /// An ACK of data up to one of `ACK_LEVELS` (a bulk flow's acknowledgments move).
    TcpAck {
        level: usize,
    },
    TcpFin,
    TcpRst(RstAt),
    Ping,
}

/// How a TCP segment is answered: acknowledging up to one of `ACK_LEVELS` (a SYN with
/// SYN+ACK), or with an RST near what the segment's sender has acknowledged.
#[derive(Clone, Copy, Debug)]
enum TcpAnswer {
    Ack(usize),
    Rst,
}

/// Where an RST's sequence number falls.
#[derive(Clone, Copy, Debug)]
enum RstAt {
    /// Near one of `ACK_LEVELS` (what its receiver may have acknowledged).
    Level(usize),
    /// Near what its receiver has acknowledged, as the model has it (a genuine endpoint's).
    Acked,
    /// Far from any (an off-path spray).
    Far,
}

#[derive(Clone, Copy, Debug)]
enum LanDst {
    Wan(usize, usize),
    /// A public port: one of `PORTS`, or (`bound`) a port some LAN host's binding holds.
    Public {
        port: usize,
        bound: bool,
    },
    Lan(usize, usize),
    Gateway(usize),
}

#[derive(Clone, Copy, Debug)]
enum WanDst {
    Public {
        port: usize,
        bound: bool,
    },
    Lan(usize, usize),
    /// Another internet host, through the gateway (a misrouted or probing frame).
    Wan(usize, usize),
}

#[derive(Clone, Copy, Debug)]
enum Odd {
    Arp,
    OtherMac,
    Unspecified,
    SpoofedLanSource,
    ForeignLanSource,
}

#[derive(Clone, Copy, Debug)]
enum Action {
    Lan {
        host: usize,
        sport: usize,
        proto: Proto,
        to: LanDst,
    },
    Wan {
        host: usize,
        sport: usize,
        proto: Proto,
        to: WanDst,
    },
    /// The receiver of a frame that left on a wire answers it (how, if it is TCP).
    Reply {
        about: usize,
        tcp: TcpAnswer,
    },
    /// An earlier ingress frame, sent again.
    Again(usize),
    Odd(Odd, usize),
    /// An earlier ingress frame, made wrong in one way, sent again.
    Mangled(Mangle, usize),
    /// The receiver of a frame that left on a wire answers it with an ICMP error (one of
    /// `ERRORS`), quoting its first 28 bytes or all of it.
    Error {
        about: usize,
        ty: usize,
        whole: bool,
    },
    /// A command of the controller's, between packets.
    Op(Op),
    /// A WAN host sends the public address an ICMP error about a frame seen anywhere: one that
    /// left on a wire (even numbers) or one sent (odd), as it is (forged, late, malformed).
    ForgedError {
        about: usize,
        host: usize,
        ty: usize,
    },
    /// An earlier ingress frame's packet sent again as a datagram in fragments (see `Frag`).
    Fragmented(Frag, usize),
    /// An earlier ingress frame's packet sent again too big for the WAN's MTU (not the LAN's),
    /// DF set (the kernel answers "fragmentation needed") or clear (it fragments).
    Large {
        of: usize,
        dont_fragment: bool,
    },
}

/// How a datagram is sent in fragments: its size and its fragments' (one of `FRAG_SIZES`),
/// its identification (few: datagrams' fragments meet), the order its fragments are sent in
/// (the n-th permutation), and one of them left out or none.
#[derive(Clone, Copy, Debug)]
struct Frag {
    size: usize,
    id: u16,
    order: usize,
    skip: Option<usize>,
}

/// (payload bytes, fragment payload bytes): two, three and four fragments, and fragments of
/// 8 bytes (a TCP header split among them: RFC 1858's tiny fragments).
const FRAG_SIZES: [(usize, usize); 4] = [(100, 64), (300, 128), (1200, 400), (16, 8)];

fn frag() -> impl Strategy<Value = Frag> {
    (0..FRAG_SIZES.len(), 1..3u16, any::<usize>(), prop::option::weighted(0.25, 0..5usize))
        .prop_map(|(size, id, order, skip)| Frag { size, id, order, skip })
}

/// The frames of `base` sent as `how` says.
fn fragmented(how: Frag, mut base: Pkt) -> Vec<Vec<u8>> {
    let (payload, chunk) = FRAG_SIZES[how.size];
    base.vlan = None;
    base.ip_options.clear();
    let mut pieces = frame::fragments(&base.payload_len(payload).build(), chunk, how.id);
    if let Some(skip) = how.skip {
        pieces.remove(skip % pieces.len());
    }
    // The n-th permutation, one choice at a time.
    let (mut n, mut sent) = (how.order, Vec::new());
    while !pieces.is_empty() {
        let k = pieces.len();
        sent.push(pieces.remove(n % k));
        n /= k;
    }
    sent
}

/// What the controller does between packets, through its own operations on the maps.
#[derive(Clone, Copy, Debug)]
enum Op {
    /// `map add` of one of `CANDIDATE_FORWARDS`, `--lifetime` or not.
    AddForward { which: usize, lifetime: bool },
    /// `map del`, its flows with it.
    RemoveForward(usize),
    /// `flows flush`.
    Flush,
    /// `flows del` of one flow (the model's, in order).
    DeleteFlow(usize),
    /// `run`'s sweep.
    Sweep,
    /// Time passes: one of `WAITS` (seconds), unless the case has had `MAX_WAITED` already.
    Wait(usize),
}

/// The idle timeouts of the differential runs (seconds): short enough that a case's waits
/// reach past each of them (the dataplane's times can only be moved back as far as the
/// machine's uptime), apart enough that waits fall between them.
const TIMEOUTS: hairpin_common::Timeouts =
    hairpin_common::Timeouts { tcp_established: 400, tcp_transitory: 100, udp: 150, icmp: 60 };
/// How long time passes in one step (seconds): each longer than a fragment is remembered (30
/// s), so that no age lands on that edge; sums of them fall on both sides of each timeout.
const WAITS: [u64; 6] = [35, 45, 70, 130, 190, 450];
/// How much time a case may pass in all (seconds): its tables' times move back as far, so
/// the machine must have been up longer (`dp::up_for`).
const MAX_WAITED: u64 = 600;
const SECOND: u64 = 1_000_000_000;
/// `map add --lifetime`, in seconds.
const LIFETIME: u64 = 300;

fn op() -> impl Strategy<Value = Op> {
    let n = CANDIDATE_FORWARDS.len();
    prop_oneof![
        3 => (0..n, any::<bool>()).prop_map(|(which, lifetime)| Op::AddForward { which, lifetime }),
        2 => (0..n).prop_map(Op::RemoveForward),
        1 => Just(Op::Flush),
        2 => any::<usize>().prop_map(Op::DeleteFlow),
        5 => Just(Op::Sweep),
        6 => (0..WAITS.len()).prop_map(Op::Wait),
    ]
}

/// ICMP errors (type, code): port and fragmentation-needed unreachables, source quench,
/// redirect, time exceeded, parameter problem.
const ERRORS: [(u8, u8); 6] = [(3, 3), (3, 4), (4, 0), (5, 1), (11, 0), (12, 0)];

/// A frame made wrong in one way, as broken stacks and attackers send them.
#[derive(Clone, Copy, Debug)]
enum Mangle {
    /// Cut short: inside the IPv4 header, at its end, inside the L4 header, inside the payload.
    Truncate(usize),
    /// An IHL below 5, or of 60 bytes.
    Ihl(u8),
    /// A total length below the header, at it, short of the frame's, past its end.
    TotLen(usize),
    Version6,
    /// A UDP length below 8, or past the datagram.
    UdpLen {
        long: bool,
    },
    TcpDataOffset(u8),
    /// TCP flags no stack sends (none, FIN alone, SYN+FIN, SYN+RST, all).
    TcpFlags(u8),
    IpChecksum,
    L4Checksum,
    NoUdpChecksum,
    Ttl(u8),
    /// An 802.1Q tag with this control field: priority only (VLAN ID 0), or a VLAN's.
    Vlan(u16),
    /// Two tags (QinQ), the outer one ID 0.
    QinQ,
    /// IPv4 options of `len` bytes: NOPs, or (`eol`) the end of the list and zeros.
    Options {
        len: usize,
        eol: bool,
    },
    /// Ethernet padding after the datagram.
    Padding,
    /// Another IP protocol (GRE).
    Gre,
    /// An ICMP type hairpin does not translate (timestamp).
    IcmpTimestamp,
}

fn mangle() -> impl Strategy<Value = Mangle> {
    prop_oneof![
        (0..8usize).prop_map(Mangle::Truncate),
        prop_oneof![Just(0u8), Just(4), Just(15)].prop_map(Mangle::Ihl),
        (0..5usize).prop_map(Mangle::TotLen),
        Just(Mangle::Version6),
        any::<bool>().prop_map(|long| Mangle::UdpLen { long }),
        prop_oneof![Just(3u8), Just(15)].prop_map(Mangle::TcpDataOffset),
        prop_oneof![Just(0u8), Just(0x01), Just(0x03), Just(0x06), Just(0x3f)].prop_map(Mangle::TcpFlags),
        Just(Mangle::IpChecksum),
        Just(Mangle::L4Checksum),
        Just(Mangle::NoUdpChecksum),
        (0..3u8).prop_map(Mangle::Ttl),
        prop_oneof![Just(0u16), Just(0x2000), Just(5)].prop_map(Mangle::Vlan),
        Just(Mangle::QinQ),
        (prop_oneof![Just(4usize), Just(8)], any::<bool>()).prop_map(|(len, eol)| Mangle::Options { len, eol }),
        Just(Mangle::Padding),
        Just(Mangle::Gre),
        Just(Mangle::IcmpTimestamp),
    ]
}

/// Sets the IPv4 header checksum of an untagged frame from scratch.
fn fix_ip_checksum(f: &mut [u8]) {
    let ihl = usize::from(f[14] & 0x0f) * 4;
    f[24..26].copy_from_slice(&[0, 0]);
    let sum = hairpin_common::csum::checksum(&f[14..(14 + ihl).min(f.len())]);
    f[24..26].copy_from_slice(&sum.to_ne_bytes());
}

/// `base` (a TCP, UDP or echo packet without options) made wrong by `m`, if `m` applies to it.
fn mangled(m: Mangle, base: &Pkt) -> Option<Vec<u8>> {
    let p = base.clone();
    match m {
        Mangle::Ttl(ttl) => return Some(p.ttl(ttl).build()),
        Mangle::Vlan(tci) => return Some(p.vlan(tci).build()),
        // NOPs, or the end of the list and zeros after it (which add nothing to the sum).
        Mangle::Options { len, eol } => return Some(p.options(&vec![u8::from(!eol); len]).build()),
        Mangle::NoUdpChecksum if p.l4 == L4::Udp => return Some(p.without_udp_checksum().build()),
        _ => {}
    }
    let mut f = p.build();
    let (tcp, udp, icmp) = (p.l4 == L4::Tcp, p.l4 == L4::Udp, matches!(p.l4, L4::Echo { .. }));
    let len = f.len();
    match m {
        Mangle::Truncate(k) => {
            let cut = [15, 33, 34, 38, 41, 50, 53, len - 1][k];
            f.truncate(cut.min(len - 1));
        }
        Mangle::Ihl(ihl) => {
            f[14] = 0x40 | ihl;
            fix_ip_checksum(&mut f);
        }
        Mangle::TotLen(k) => {
            let tot = len - 14;
            let bad = [19, 20, 27, tot - 2, tot + 8][k] as u16;
            f[16..18].copy_from_slice(&bad.to_be_bytes());
            fix_ip_checksum(&mut f);
        }
        Mangle::Version6 => {
            f[14] = 0x65;
            fix_ip_checksum(&mut f);
        }
        Mangle::UdpLen { long } if udp => {
            let bad = if long { len - 34 + 4 } else { 4 } as u16;
            f[38..40].copy_from_slice(&bad.to_be_bytes());
        }
        Mangle::TcpDataOffset(doff) if tcp => f[46] = doff << 4,
        Mangle::TcpFlags(flags) if tcp => f[47] = flags,
        Mangle::IpChecksum => f[24] ^= 0x5a,
        Mangle::L4Checksum => {
            f[if tcp {
                50
            } else if udp {
                40
            } else {
                36
            }] ^= 0x5a
        }
        Mangle::QinQ => {
            let mut tagged = f[..12].to_vec();
            tagged.extend_from_slice(&[0x88, 0xa8, 0, 0, 0x81, 0x00, 0, 5]);
            tagged.extend_from_slice(&f[12..]);
            f = tagged;
        }
        Mangle::Padding => f.extend_from_slice(&[0; 6]),
        Mangle::Gre => {
            f[23] = 47;
            fix_ip_checksum(&mut f);
        }
        Mangle::IcmpTimestamp if icmp => f[34] = 13,
        _ => return None,
    }
    Some(f)
}

fn proto() -> impl Strategy<Value = Proto> {
    prop_oneof![
        4 => Just(Proto::Udp),
        4 => Just(Proto::TcpSyn),
        4 => (0..ACK_LEVELS.len()).prop_map(|level| Proto::TcpAck { level }),
        1 => Just(Proto::TcpFin),
        1 => prop_oneof![
            (0..ACK_LEVELS.len()).prop_map(RstAt::Level),
            Just(RstAt::Acked),
            Just(RstAt::Far),
        ]
        .prop_map(Proto::TcpRst),
        4 => Just(Proto::Ping),
    ]
}

fn action() -> impl Strategy<Value = Action> {
    let n = PORTS.len();
    let public = (0..n, any::<bool>()).prop_map(|(port, bound)| (port, bound));
    let lan_dst = prop_oneof![
        4 => (0..WAN_HOSTS.len(), 0..n).prop_map(|(h, p)| LanDst::Wan(h, p)),
        4 => public.clone().prop_map(|(port, bound)| LanDst::Public { port, bound }),
        1 => (0..LAN_HOSTS.len(), 0..n).prop_map(|(h, p)| LanDst::Lan(h, p)),
        1 => (0..n).prop_map(LanDst::Gateway),
    ];
    let wan_dst = prop_oneof![
        6 => public.prop_map(|(port, bound)| WanDst::Public { port, bound }),
        1 => (0..LAN_HOSTS.len(), 0..n).prop_map(|(h, p)| WanDst::Lan(h, p)),
        1 => (0..WAN_HOSTS.len(), 0..n).prop_map(|(h, p)| WanDst::Wan(h, p)),
    ];
    let odd = prop_oneof![
        Just(Odd::Arp),
        Just(Odd::OtherMac),
        Just(Odd::Unspecified),
        Just(Odd::SpoofedLanSource),
        Just(Odd::ForeignLanSource)
    ];
    prop_oneof![
        5 => (0..LAN_HOSTS.len(), 0..n, proto(), lan_dst).prop_map(|(host, sport, proto, to)| Action::Lan { host, sport, proto, to }),
        3 => (0..WAN_HOSTS.len(), 0..n, proto(), wan_dst).prop_map(|(host, sport, proto, to)| Action::Wan { host, sport, proto, to }),
        5 => (any::<usize>(), prop_oneof![4 => (0..ACK_LEVELS.len()).prop_map(TcpAnswer::Ack), 1 => Just(TcpAnswer::Rst)])
            .prop_map(|(about, tcp)| Action::Reply { about, tcp }),
        1 => any::<usize>().prop_map(Action::Again),
        1 => (odd, any::<usize>()).prop_map(|(o, i)| Action::Odd(o, i)),
        2 => (mangle(), any::<usize>()).prop_map(|(m, i)| Action::Mangled(m, i)),
        2 => (any::<usize>(), 0..ERRORS.len(), any::<bool>()).prop_map(|(about, ty, whole)| Action::Error { about, ty, whole }),
        1 => (any::<usize>(), 0..WAN_HOSTS.len(), 0..ERRORS.len()).prop_map(|(about, host, ty)| Action::ForgedError { about, host, ty }),
        // About three waits and two sweeps a case, in any order.
        5 => op().prop_map(Action::Op),
        1 => (frag(), any::<usize>()).prop_map(|(how, i)| Action::Fragmented(how, i)),
        1 => (any::<usize>(), any::<bool>()).prop_map(|(of, dont_fragment)| Action::Large { of, dont_fragment }),
    ]
}

/// The lab's configuration, the fast path on or off.
fn config(fast: bool) -> hairpin_common::Config {
    let cfg = hairpin_common::Config { timeouts: TIMEOUTS, ..dp::lab_config() };
    if fast { hairpin_common::Config { flags: cfg.flags | hairpin_common::CFG_F_FAST_PATH, ..cfg } } else { cfg }
}

/// The model's view of the gateway `config` sets up in the routed namespace
/// (`hairpin_lab::routed`): its interfaces' MACs, the neighbours it knows (the server and the
/// client, not 192.168.0.4), the router behind every internet host, the WAN's MTU.
fn gateway(mode: Mode, fast: bool) -> Gateway {
    use hairpin_lab::routed::{CLIENT_MAC, LAN_MAC, ROUTER_MAC, SERVER_MAC, WAN_MAC};
    let cfg = config(fast);
    Gateway {
        lan_addr: GW_LAN,
        lan_net: [192, 168, 0, 0],
        lan_prefix_len: 24,
        public: PUBLIC,
        ports: (cfg.port_min, cfg.port_max),
        hairpin: cfg.hairpin(),
        udp_eif: cfg.udp_endpoint_independent_filtering(),
        mac: cfg.mac,
        forwards: FORWARDS.iter().map(|&(p, port, addr, to)| ((p, port), (addr, to))).collect(),
        fast_path: cfg.fast_path(),
        if_mac: [LAN_MAC, WAN_MAC],
        neighbours: [(LAN_HOSTS[0], SERVER_MAC), (LAN_HOSTS[1], CLIENT_MAC)].into(),
        router: ROUTER_MAC,
        wan_mtu: 1400,
        ingress_holds: mode == Mode::Tc,
        timeouts: cfg.timeouts,
    }
}

fn sa(addr: [u8; 4], port: u16) -> String {
    SocketAddrV4::new(Ipv4Addr::from(addr), port).to_string()
}

fn packet(proto: Proto, src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), m: &Model) -> Pkt {
    let (s, d) = (sa(src.0.octets(), src.1), sa(dst.0.octets(), dst.1));
    match proto {
        Proto::Udp => Pkt::udp(&s, &d),
        Proto::TcpSyn => Pkt::tcp(&s, &d).flags(TCP_SYN),
        Proto::TcpAck { level } => Pkt::tcp(&s, &d).flags(TCP_ACK).nums(1000, ACK_LEVELS[level]),
        Proto::TcpFin => Pkt::tcp(&s, &d).flags(TCP_FIN | TCP_ACK),
        Proto::TcpRst(at) => {
            let t = Tuple { proto: IPPROTO_TCP, src: (src.0.octets(), src.1), dst: (dst.0.octets(), dst.1) };
            let seq = match at {
                RstAt::Level(l) => ACK_LEVELS[l],
                RstAt::Acked => m.peer_ack(&t).unwrap_or(ACK_LEVELS[0]),
                RstAt::Far => 77 + (1 << 31),
            };
            Pkt::tcp(&s, &d).flags(TCP_RST).nums(seq.wrapping_add(1000), 0)
        }
        // An echo request's id is its source port; the destination has none.
        Proto::Ping => Pkt::ping(&s, &sa(dst.0.octets(), 0)),
    }
}

/// What the test sent and saw, to build replies and resends from.
#[derive(Default)]
struct History {
    /// Frames that left on a wire: (the side, the frame).
    wire: Vec<(bool, Pkt)>,
    /// Ingress frames sent: (hook, the frame).
    sent: Vec<(At, Vec<u8>)>,
}

/// The frames and hook an action makes, if it can be made now.
fn make(a: &Action, h: &History, m: &Model) -> Option<Vec<(At, Vec<u8>, String)>> {
    if let Action::Fragmented(how, i) = *a {
        let (at, f) = h.sent.get(i % h.sent.len().max(1))?;
        let frames = fragmented(how, frame::parse(f)?);
        let piece = |f: &[u8]| {
            let (word, end) = (u16::from_be_bytes([f[20], f[21]]), u16::from_be_bytes([f[16], f[17]]) - 20);
            let (offset, more) =
                (usize::from(word & 0x1fff) * 8, if word & 0x2000 != 0 { "more follow" } else { "last" });
            format!(
                "an earlier frame, bytes {offset}..{} of it in a fragment ({more}), {how:?}",
                offset + usize::from(end)
            )
        };
        return Some(
            frames
                .into_iter()
                .map(|f| {
                    let what = piece(&f);
                    (*at, f, what)
                })
                .collect(),
        );
    }
    make_one(a, h, m).map(|one| vec![one])
}

/// The frame and hook an action other than fragments makes, if it can be made now.
fn make_one(a: &Action, h: &History, m: &Model) -> Option<(At, Vec<u8>, String)> {
    let ip = Ipv4Addr::from;
    let bound_port = |p: usize| -> Option<u16> {
        let ports: Vec<u16> = m.bindings.values().copied().collect();
        (!ports.is_empty()).then(|| ports[p % ports.len()])
    };
    let public = |port: usize, bound: bool| -> Option<u16> { if bound { bound_port(port) } else { Some(PORTS[port]) } };
    let (at, pkt) = match *a {
        // Not a frame (see `command`), or several (see `make`).
        Action::Op(_) | Action::Fragmented(..) => return None,
        Action::Lan { host, sport, proto, to } => {
            let src = (ip(LAN_HOSTS[host]), PORTS[sport]);
            let dst = match to {
                LanDst::Wan(h, p) => (ip(WAN_HOSTS[h]), PORTS[p]),
                LanDst::Public { port, bound } => (ip(PUBLIC), public(port, bound)?),
                LanDst::Lan(h, p) => (ip(LAN_HOSTS[h]), PORTS[p]),
                LanDst::Gateway(p) => (ip(GW_LAN), PORTS[p]),
            };
            (At::LanIngress, packet(proto, src, dst, m))
        }
        Action::Wan { host, sport, proto, to } => {
            let src = (ip(WAN_HOSTS[host]), PORTS[sport]);
            let dst = match to {
                WanDst::Public { port, bound } => (ip(PUBLIC), public(port, bound)?),
                WanDst::Lan(h, p) => (ip(LAN_HOSTS[h]), PORTS[p]),
                WanDst::Wan(h, p) => (ip(WAN_HOSTS[h]), PORTS[p]),
            };
            (At::WanIngress, packet(proto, src, dst, m))
        }
        Action::Reply { about, tcp } => {
            let (wan, out) = h.wire.get(about % h.wire.len().max(1))?.clone();
            let mut r = out.reply_to();
            r.macs = (frame::MAC_B, frame::MAC_A);
            r.ttl = 64;
            match out.l4 {
                L4::Echo { reply: false } => r.l4 = L4::Echo { reply: true },
                L4::Echo { reply: true } => return None,
                L4::Tcp => match tcp {
                    TcpAnswer::Ack(level) => {
                        r.tcp_flags = if out.tcp_flags == TCP_SYN { TCP_SYN | TCP_ACK } else { TCP_ACK };
                        r.tcp_nums = (1000, ACK_LEVELS[level]);
                    }
                    TcpAnswer::Rst => {
                        let t = Tuple {
                            proto: IPPROTO_TCP,
                            src: (r.src.ip().octets(), r.src.port()),
                            dst: (r.dst.ip().octets(), r.dst.port()),
                        };
                        let seq = m.peer_ack(&t).unwrap_or(ACK_LEVELS[0]).wrapping_add(1000);
                        (r.tcp_flags, r.tcp_nums) = (TCP_RST, (seq, 0));
                    }
                },
                _ => {}
            }
            (if wan { At::WanIngress } else { At::LanIngress }, r)
        }
        Action::Large { of, dont_fragment } => {
            let (at, f) = h.sent.get(of % h.sent.len().max(1))?;
            let mut p = frame::parse(f)?;
            (p.vlan, p.ip_options) = (None, Vec::new());
            let mut f = p.payload_len(LARGE).build();
            if !dont_fragment {
                f[20] &= !0x40;
                fix_ip_checksum(&mut f);
            }
            return Some((*at, f, format!("an earlier frame, {LARGE} bytes of payload, DF {dont_fragment}")));
        }
        Action::Again(i) => {
            let (at, f) = h.sent.get(i % h.sent.len().max(1))?.clone();
            return Some((at, f, "the same frame again".into()));
        }
        Action::Mangled(how, i) => {
            let (at, f) = h.sent.get(i % h.sent.len().max(1))?;
            let f = mangled(how, &frame::parse(f)?)?;
            return Some((*at, f, format!("an earlier frame, {how:?}")));
        }
        Action::Error { about, ty, whole } => {
            let (wan, out) = h.wire.get(about % h.wire.len().max(1))?;
            let (ty, code) = ERRORS[ty];
            let (from, to) = (out.dst.ip().to_string(), out.src.ip().to_string());
            let e = Pkt::icmp_error(ty, code, &from, &to, out, if whole { usize::MAX } else { 28 });
            let what = format!("ICMP {ty}/{code} {from} -> {to} about {} -> {}", out.src, out.dst);
            return Some((if *wan { At::WanIngress } else { At::LanIngress }, e.build(), what));
        }
        Action::ForgedError { about, host, ty } => {
            let quoted = match about % 2 {
                0 => h.wire.get(about / 2 % h.wire.len().max(1))?.1.build(),
                _ => h.sent.get(about / 2 % h.sent.len().max(1))?.1.clone(),
            };
            let (ty, code) = ERRORS[ty];
            let from = Ipv4Addr::from(WAN_HOSTS[host]).to_string();
            let e = Pkt::icmp_error_quoting(ty, code, &from, &Ipv4Addr::from(PUBLIC).to_string(), &quoted[14..]);
            return Some((At::WanIngress, e.build(), format!("ICMP {ty}/{code} from {from} about a frame seen")));
        }
        Action::Odd(kind, i) => {
            let host = LAN_HOSTS[i % LAN_HOSTS.len()];
            let wan = WAN_HOSTS[i % WAN_HOSTS.len()];
            let udp = |s: [u8; 4], d: [u8; 4]| Pkt::udp(&sa(s, 40000), &sa(d, 53));
            match kind {
                Odd::Arp => {
                    let mut f = udp(host, wan).build();
                    f[12..14].copy_from_slice(&[0x08, 0x06]);
                    return Some((At::LanIngress, f, "an ARP frame".into()));
                }
                Odd::OtherMac => {
                    let mut p = udp(host, wan);
                    p.macs.0 = [0x02, 0, 0, 0, 0, 0x77];
                    (At::LanIngress, p)
                }
                // To a public port: one forwarded, which must not hairpin it.
                Odd::Unspecified => {
                    let port = PORTS[i % PORTS.len()];
                    (At::LanIngress, Pkt::udp(&sa([0; 4], 68), &sa(PUBLIC, port)))
                }
                Odd::SpoofedLanSource => (At::WanIngress, udp(host, PUBLIC)),
                Odd::ForeignLanSource => (At::LanIngress, udp([10, 9, 9, 9], wan)),
            }
        }
    };
    let what = format!("{:?} {} -> {} flags {:#x}", pkt.l4, pkt.src, pkt.dst, pkt.tcp_flags);
    Some((at, pkt.build(), what))
}

fn hook(at: At) -> Hook {
    match at {
        At::LanIngress => Hook::LanIngress,
        At::WanIngress => Hook::WanIngress,
        At::LanEgress => Hook::LanEgress,
        At::WanEgress => Hook::WanEgress,
    }
}

fn tuple(k: &hairpin_common::FlowKey) -> Tuple {
    Tuple { proto: k.proto, src: (k.src.octets(), k.sport.host()), dst: (k.dst.octets(), k.dport.host()) }
}

/// The implementation's choices, read back from its maps after the step.
/// The dataplane's maps, and whether it counted a fast-path verdict for the frame.
struct Read<'a>(&'a Dataplane, bool);

impl Choices for Read<'_> {
    fn source_of(&self, key: &Tuple) -> Option<Ep> {
        self.0.ct().into_iter().find(|(k, _)| tuple(k) == *key).map(|(_, e)| tuple(&e.xlate).src)
    }
    fn binding_of(&self, proto: u8, ep: Ep) -> Option<u16> {
        self.0
            .bindings()
            .into_iter()
            .find(|(k, _)| k.proto == proto && (k.addr.octets(), k.port.host()) == ep)
            .map(|(_, b)| b.port.host())
    }
    fn sent_fast(&self) -> bool {
        self.1
    }
}

// The steps of the current sequence as packet-test rows (`tests/packet/`), printed with a
// disagreement so that it can be pasted as a case.
thread_local! {
    static CASE: std::cell::RefCell<Vec<String>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// One step as a packet-test row: `step(what, hook, &input, reason, output)`.
fn as_step(at: At, f: &[u8], reason: Reason, out: Option<&[u8]>) -> String {
    let pkt = |b: &[u8]| match frame::parse(b) {
        Some(p) => format!("&{}", rust(&p)),
        None => "/* not a TCP, UDP or echo frame */".to_string(),
    };
    let output = match out {
        Some(o) if o != f => format!("Some({})", pkt(o)),
        _ => "None".into(),
    };
    format!("step(\"{at:?}\", Hook::{:?}, {}, Reason::{reason:?}, {output}),", hook(at), pkt(f))
}

/// A [`Pkt`] as the builder call that makes it.
fn rust(p: &Pkt) -> String {
    let (s, d) = (p.src.to_string(), p.dst.to_string());
    match p.l4 {
        L4::Tcp => format!("Pkt::tcp(\"{s}\", \"{d}\").flags({:#x})", p.tcp_flags),
        L4::Udp => format!("Pkt::udp(\"{s}\", \"{d}\")"),
        L4::Echo { reply: false } => format!("Pkt::ping(\"{s}\", \"{d}\")"),
        L4::Echo { reply: true } => format!("Pkt::pong(\"{s}\", \"{d}\")"),
        L4::IcmpError(..) => "/* an ICMP error */".into(),
    }
}

thread_local! {
    static ACTIONS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

// How often each reason was the model's (and the dataplane's) word, and each command's
// outcome, over the run; per test (each runs its cases on a thread of its own).
thread_local! {
    static SEEN: std::cell::RefCell<BTreeMap<&'static str, u64>> = const { std::cell::RefCell::new(BTreeMap::new()) };
}

fn tally(what: &'static str) {
    SEEN.with(|seen| *seen.borrow_mut().entry(what).or_default() += 1);
}

/// One frame at one hook through both; then, for a frame ingress lets on, egress where the
/// kernel routes it. Returns the frames that left on a wire.
fn step(
    dp: &mut Dataplane,
    m: &mut Model,
    (gw, full): (&Gateway, bool),
    at: At,
    f: &[u8],
    log: &mut Vec<String>,
) -> Result<Vec<(bool, Pkt)>, String> {
    let h = hook(at);
    let before: Vec<u64> = Reason::ALL.iter().map(|r| dp.counter(h, *r)).collect();
    let (verdict, out) = dp.run(h, f);
    let moved: Vec<Reason> =
        Reason::ALL.iter().zip(&before).filter(|(r, b)| dp.counter(h, **r) != **b).map(|(r, _)| *r).collect();
    // With full tables (`Run::full`), what the LRUs took as the frame ran.
    let swept = if full { evicted(dp, m, at, f, &moved, log)? } else { None };
    let expect = m
        .step(gw, at, f, &Read(dp, moved.iter().any(|r| matches!(r, Reason::FastTx | Reason::FastRedirect))))
        .map_err(|v| format!("{at:?}: the dataplane counted {moved:?}, and its choice broke a rule: {}", v.0))?;
    if let Some(later) = swept {
        m.evict(&later);
        m.release_unused(gw);
    }
    // The model's word, as the row a packet case would assert.
    CASE.with(|c| c.borrow_mut().push(as_step(at, f, expect.reason, expect.output.as_deref())));
    if moved != [expect.reason] {
        return Err(format!("{at:?}: counted {moved:?}, the model says {:?}", expect.reason));
    }
    if verdict != dp.verdict(h, expect.reason) {
        return Err(format!("{at:?}: verdict {verdict} for {:?}", expect.reason));
    }
    let ignored = dp.side_counter(hairpin_common::Counter::TcpRstOutOfWindow);
    if ignored != m.rsts_ignored {
        return Err(format!("{at:?}: {ignored} RSTs counted as out of the window, the model says {}", m.rsts_ignored));
    }
    let released = dp.side_counter(hairpin_common::Counter::FragmentsReleased);
    if released != m.frags.released {
        return Err(format!("{at:?}: {released} held fragments given back, the model says {}", m.frags.released));
    }
    log.push(format!("    {at:?} -> {:?}", expect.reason));
    tally(expect.reason.name());
    let Some(want) = expect.output else { return Ok(Vec::new()) };
    if out != want {
        return Err(format!("{at:?} {:?}: frame differs: {}", expect.reason, frame::diff(&out, &want)));
    }
    if frame::verify_checksums(f).is_ok() {
        frame::verify_checksums(&out).map_err(|e| format!("{at:?}: what left has a bad checksum: {e}"))?;
    }
    let fast = matches!(expect.reason, Reason::FastTx | Reason::FastRedirect);
    if fast && m.flow_of(at, f).is_none() {
        tally("fast path: a copy of an evicted flow");
    }
    match at {
        // Sent on by ingress itself: on the wire.
        At::LanIngress | At::WanIngress if fast => {
            let l3 = l3_of(&out);
            on_wire(gw, !gw.in_lan([out[l3 + 16], out[l3 + 17], out[l3 + 18], out[l3 + 19]]), &out)
        }
        At::LanIngress | At::WanIngress if !expect.reason.consumes() && expect.reason != Reason::PassOtherHost => {
            let Some((next, sent)) = kernel(gw, at == At::LanIngress, &out) else { return Ok(Vec::new()) };
            // The boundary, whatever the model says: nothing from the WAN reaches the LAN but
            // what a flow (a forward's, a binding's) admits, and nothing from the LAN is routed
            // on with a source not the LAN's.
            let admitted = matches!(
                expect.reason,
                Reason::IngressFlow
                    | Reason::IngressNewFlow
                    | Reason::IngressBinding
                    | Reason::IngressFragment
                    | Reason::IcmpError
            );
            if at == At::WanIngress && next == At::LanEgress && !admitted {
                return Err(format!("a WAN frame went on to the LAN, passed as {:?}", expect.reason));
            }
            let src = [out[26], out[27], out[28], out[29]];
            if at == At::LanIngress && out[12..14] == [0x08, 0x00] && !gw.in_lan(src) && sent[0][26..30] == src {
                return Err(format!("a LAN frame from {} was routed on", Ipv4Addr::from(src)));
            }
            let mut wire = Vec::new();
            for f in sent {
                wire.extend(step(dp, m, (gw, full), next, &f, log)?);
            }
            Ok(wire)
        }
        At::LanIngress | At::WanIngress => Ok(Vec::new()),
        At::LanEgress | At::WanEgress => on_wire(gw, at == At::WanEgress, &out),
    }
}

/// A frame that left on the LAN's wire or (`wan`) the WAN's, where no LAN address may be.
fn on_wire(gw: &Gateway, wan: bool, out: &[u8]) -> Result<Vec<(bool, Pkt)>, String> {
    if wan && let Some(a) = lan_address(gw, out) {
        return Err(format!("a LAN address left on the WAN: {a}"));
    }
    Ok(frame::parse(out).map(|p| vec![(wan, p)]).unwrap_or_default())
}

/// What the kernel does with a frame ingress let on, as the gateway's router: the frames it
/// sends on and by which egress (one, or its fragments for the WAN's MTU); or, its TTL run
/// out or too big for the WAN with DF set, the ICMP error it sends back (from its address on
/// that side, quoting the packet as it has it); or nothing (the frame is for the gateway,
/// another interface's, or dropped: a bad IPv4 header checksum). A priority tag is taken
/// off, padding trimmed, the TTL counted down.
fn kernel(gw: &Gateway, from_lan: bool, f: &[u8]) -> Option<(At, Vec<Vec<u8>>)> {
    let next = hairpin_common::model::route(gw, f)?;
    let mut f = f.to_vec();
    if f[12..14] == [0x81, 0x00] {
        f.drain(12..16);
    }
    let ihl = usize::from(f[14] & 0x0f) * 4;
    if hairpin_common::csum::checksum(&f[14..14 + ihl]) != 0 {
        return None;
    }
    f.truncate(14 + usize::from(u16::from_be_bytes([f[16], f[17]])));
    let (ttl, proto, src) = (f[22], f[23], Ipv4Addr::new(f[26], f[27], f[28], f[29]));
    let too_big = next == At::WanEgress && f.len() - 14 > gw.wan_mtu;
    let dont_fragment = f[20] & 0x40 != 0;
    if ttl <= 1 || too_big && dont_fragment {
        // Never an error about an error, nor about a fragment after the first (RFC 1122
        // 3.2.2).
        let later_fragment = u16::from_be_bytes([f[20], f[21]]) & 0x1fff != 0;
        if later_fragment || proto == 1 && ERRORS.iter().any(|(ty, _)| f.get(14 + ihl) == Some(ty)) {
            return None;
        }
        let me = Ipv4Addr::from(if from_lan { GW_LAN } else { PUBLIC });
        let quote = &f[14..f.len().min(14 + 548)];
        // Time exceeded, or fragmentation needed with the next hop's MTU (RFC 1191).
        let (ty, code, mtu) = if ttl <= 1 { (11, 0, 0) } else { (3, 4, gw.wan_mtu as u16) };
        let mut e = Pkt::icmp_error_quoting(ty, code, &me.to_string(), &src.to_string(), quote).build();
        e[40..42].copy_from_slice(&mtu.to_be_bytes());
        e[36..38].copy_from_slice(&[0, 0]);
        let sum = hairpin_common::csum::checksum(&e[34..]);
        e[36..38].copy_from_slice(&sum.to_ne_bytes());
        let back = if gw.in_lan(src.octets()) { At::LanEgress } else { At::WanEgress };
        tally(if ttl <= 1 { "kernel: time exceeded" } else { "kernel: fragmentation needed" });
        return Some((back, vec![e]));
    }
    f[22] = ttl - 1;
    fix_ip_checksum(&mut f);
    if too_big {
        // Fragmented for the WAN (DF clear): pieces of the MTU's payload, a multiple of 8.
        // A fragment's pieces keep its place in the datagram, the last one its MF flag.
        let (id, word) = (u16::from_be_bytes([f[18], f[19]]), u16::from_be_bytes([f[20], f[21]]));
        let mut pieces = frame::fragments(&f, (gw.wan_mtu - ihl) & !7, id);
        let last = pieces.len() - 1;
        for (i, p) in pieces.iter_mut().enumerate() {
            let mine = u16::from_be_bytes([p[20], p[21]]);
            let more = if i == last { word & 0x2000 } else { 0x2000 };
            p[20..22].copy_from_slice(&(more | ((mine & 0x1fff) + (word & 0x1fff))).to_be_bytes());
            fix_ip_checksum(p);
        }
        tally("kernel: fragmented for the WAN");
        return Some((next, pieces));
    }
    Some((next, vec![f]))
}

/// Where an Ethernet frame's payload starts: after one 802.1Q tag, if it has one.
fn l3_of(f: &[u8]) -> usize {
    if f.get(12..14) == Some(&[0x81, 0x00][..]) { 18 } else { 14 }
}

/// A LAN address in a frame, as its source, or quoted by an ICMP error.
fn lan_address(gw: &Gateway, f: &[u8]) -> Option<Ipv4Addr> {
    let l3 = l3_of(f);
    let at = |i: usize| Some(Ipv4Addr::new(*f.get(i)?, *f.get(i + 1)?, *f.get(i + 2)?, *f.get(i + 3)?));
    let mut seen = vec![at(l3 + 12)?];
    let l4 = l3 + usize::from(f[l3] & 0x0f) * 4;
    if f[l3 + 9] == 1 && ERRORS.iter().any(|(ty, _)| f.get(l4) == Some(ty)) {
        seen.extend([at(l4 + 8 + 12), at(l4 + 8 + 16)].into_iter().flatten());
    }
    seen.into_iter().find(|a| gw.in_lan(a.octets()))
}

/// The flows, confirmation, bindings and forwards the model holds, against the maps'.
fn same_state(dp: &Dataplane, m: &Model, gw: &Gateway) -> Result<(), String> {
    let got: BTreeMap<(u8, u16), Ep> = dp
        .forwards()
        .into_iter()
        .map(|(k, e)| ((k.proto, k.port.host()), (e.target.addr.octets(), e.target.port.host())))
        .collect();
    if got != gw.forwards {
        return Err(format!("forwards differ: maps {got:?}, model {:?}", gw.forwards));
    }
    let mut want = BTreeSet::new();
    for f in &m.flows {
        want.insert((f.orig, f.xlate, f.confirmed()));
        if !f.is_own() {
            want.insert((f.xlate.reversed(), f.orig.reversed(), f.confirmed()));
        }
    }
    let got: BTreeSet<_> =
        dp.ct().iter().map(|(k, e)| (tuple(k), tuple(&e.xlate), e.flags & CT_F_CONFIRMED != 0)).collect();
    if got != want {
        let extra: Vec<_> = got.difference(&want).collect();
        let missing: Vec<_> = want.difference(&got).collect();
        return Err(format!("conntrack differs: the maps also have {extra:?}; the model also has {missing:?}"));
    }
    let got: BTreeMap<_, _> =
        dp.bindings().iter().map(|(k, b)| ((k.proto, (k.addr.octets(), k.port.host())), b.port.host())).collect();
    if got != m.bindings {
        return Err(format!("bindings differ: maps {got:?}, model {:?}", m.bindings));
    }
    // Each binding's public port claimed for it, and no other.
    let claimed: BTreeSet<_> = dp
        .bound_ports()
        .iter()
        .map(|(k, host)| ((k.proto, (host.addr.octets(), host.port.host())), k.port.host()))
        .collect();
    let bound: BTreeSet<_> = m.bindings.iter().map(|(k, p)| (*k, *p)).collect();
    if claimed != bound {
        return Err(format!("bound ports differ: maps {claimed:?}, model {:?}", m.bindings));
    }
    let leaving: BTreeSet<Tuple> = m.flows.iter().flat_map(|f| f.directions().map(|d| f.leaving(d))).collect();
    let egress: BTreeSet<Tuple> = dp.egress().iter().map(|(k, _)| tuple(k)).collect();
    if egress != leaving {
        let extra: Vec<_> = egress.difference(&leaving).collect();
        let missing: Vec<_> = leaving.difference(&egress).collect();
        return Err(format!("egress entries differ: the maps also have {extra:?}; the model also has {missing:?}"));
    }
    Ok(())
}

/// What of the model's state a step may change: flows, their confirmation, bindings.
fn fingerprint(m: &Model) -> (usize, usize, usize) {
    (m.flows.len(), m.flows.iter().map(|f| f.left.iter().filter(|l| **l).count()).sum(), m.bindings.len())
}

/// The harness's clock: CLOCK_BOOTTIME, which the dataplane reads, moved on by the case's
/// waits so far (`Dataplane::pass_time` moved the tables' times back by as much).
#[derive(Default)]
struct Clock {
    waited: u64,
}

impl Clock {
    /// Now: (as the dataplane's tables count it, as the model does).
    fn read(&self) -> (u64, u64) {
        let t = hairpin_ctl::conntrack::boot_ns();
        (t, t + self.waited)
    }
}

/// What the dataplane's sweep left, for the model's edge cases.
struct Left<'a>(&'a Dataplane);

impl hairpin_common::model::Kept for Left<'_> {
    fn flow(&self, orig: &Tuple) -> bool {
        tally("sweep: a flow at its timeout's edge");
        self.0.ct().iter().any(|(k, _)| tuple(k) == *orig)
    }
    fn binding(&self, proto: u8, ep: Ep) -> bool {
        tally("sweep: a binding at its grace's edge");
        self.0.bindings().iter().any(|(k, _)| k.proto == proto && (k.addr.octets(), k.port.host()) == ep)
    }
}

/// Runs a controller command through the controller's own operations on the maps (opened from
/// pins, as `hairpin-ctl` opens them) and through the model; their outcomes must agree. Time
/// passes only with tables far from full (see `Dataplane::pass_time`).
fn command(
    dp: &mut Dataplane,
    m: &mut Model,
    gw: &mut Gateway,
    (clock, full): (&mut Clock, bool),
    op: Op,
) -> Result<(), String> {
    use hairpin_ctl::{
        conntrack,
        gateway::forwards::{self, AddError, Forward, Origin},
        spec::Proto,
        sweep,
    };
    let (real, now) = clock.read();
    m.now = now;
    if let Op::Wait(w) = op {
        if full || clock.waited + WAITS[w] * SECOND > MAX_WAITED * SECOND {
            return Ok(());
        }
        dp.pass_time(WAITS[w] * SECOND);
        clock.waited += WAITS[w] * SECOND;
        tally("op: time passes");
        return Ok(());
    }
    let mut ctl = dp.controller();
    let maps = ctl.maps();
    let forward = |which: usize, lifetime: bool| {
        let (proto, port, addr, to) = CANDIDATE_FORWARDS[which];
        let proto = Proto::from_number(proto).expect("TCP or UDP");
        let expires_ns = lifetime.then_some(real + LIFETIME * SECOND);
        let (public, to) = (SocketAddrV4::new(PUBLIC.into(), port), SocketAddrV4::new(addr.into(), to));
        Forward { proto, public, to, origin: Origin::Runtime, expires_ns }
    };
    match op {
        Op::AddForward { which, lifetime } => {
            let (proto, port, addr, to) = CANDIDATE_FORWARDS[which];
            let got = match forwards::insert(maps, &forward(which, lifetime)) {
                Ok(()) => Ok(()),
                Err(AddError::AlreadyExists(_)) => Err(Refused::Exists),
                Err(AddError::Held(..)) => Err(Refused::Held),
                Err(AddError::Map(e)) => return Err(format!("map add: {e:#}")),
            };
            let want = m.add_forward(gw, (proto, port), (addr, to), lifetime.then_some(now + LIFETIME * SECOND));
            if got != want {
                return Err(format!("map add: the controller says {got:?}, the model {want:?}"));
            }
            tally(match got {
                Ok(()) => "op: map add",
                Err(Refused::Exists) => "op: map add, forwarded already",
                Err(Refused::Held) => "op: map add, held by a binding",
            });
        }
        Op::RemoveForward(which) => {
            let (proto, port, _, _) = CANDIDATE_FORWARDS[which];
            let got = forwards::remove(maps, &forward(which, false).key()).is_ok();
            let want = m.remove_forward(gw, proto, port);
            if got != want {
                return Err(format!("map del: the controller removed one: {got}, the model: {want}"));
            }
            tally(if got { "op: map del" } else { "op: map del, none" });
        }
        Op::Flush => {
            conntrack::flush(maps).map_err(|e| format!("flows flush: {e:#}"))?;
            m.flush();
            tally("op: flows flush");
        }
        Op::DeleteFlow(i) => {
            let mut origs: Vec<Tuple> = m.flows.iter().map(|f| f.orig).collect();
            origs.sort();
            let Some(&orig) = origs.get(i % origs.len().max(1)) else { return Ok(()) };
            let (flows, _) = conntrack::snapshot(maps).map_err(|e| format!("{e:#}"))?;
            let flow =
                flows.iter().find(|f| tuple(&f.orig_key) == orig).ok_or(format!("flows del: no flow {orig:?}"))?;
            conntrack::delete(maps, flow).map_err(|e| format!("flows del: {e:#}"))?;
            m.delete_flow(gw, &orig);
            tally("op: flows del");
        }
        Op::Sweep => {
            forwards::expire(maps, real).map_err(|e| format!("the sweep's forwards: {e:#}"))?;
            sweep::sweep(maps, real).map_err(|e| format!("the sweep: {e:#}"))?;
            drop(ctl);
            let before = (m.flows.len(), m.bindings.len(), gw.forwards.len());
            m.sweep(gw, &Left(dp));
            let after = (m.flows.len(), m.bindings.len(), gw.forwards.len());
            tally(if before == after { "op: sweep" } else { "op: sweep, expired" });
        }
        Op::Wait(_) => unreachable!("above"),
    }
    Ok(())
}

/// How a differential run runs the dataplane.
#[derive(Clone, Copy, Debug)]
struct Run {
    mode: Mode,
    /// The fast path on.
    fast: bool,
    /// Its flow cache loaded (`up --no-flow-cache` leaves it out).
    cache: bool,
    /// Tables for `FULL_TABLES_FLOWS` flows, which a sequence fills: their LRUs evict.
    full: bool,
}

/// `--max-flows` of the runs with full tables: 4 confirmed flows, 8 unconfirmed ones.
const FULL_TABLES_FLOWS: u32 = 4;

/// With full tables, after a frame ran at `at` (counting `moved`) and before the model takes
/// it: the flows the kernel's LRUs took some of (a conntrack or an egress entry), if any
/// (which ones is the kernel's choice, not the model's), but the one the frame belongs to (a
/// SYN re-opening it replaces it). A flow may lose entries only to an ingress that made a
/// flow (or tried to) or an egress that confirmed one, and a confirmed flow only to the
/// latter (new flows evict only new flows). Then `run`'s sweep, once the orphans' grace has
/// passed, must leave each of them whole or gone: the model takes them out, and the states
/// must agree again. If it swept, what to take out once the model has taken the frame: its
/// own flow, if confirming it cost it entries (and then the bindings no flow uses).
fn evicted(
    dp: &Dataplane,
    m: &mut Model,
    at: At,
    f: &[u8],
    moved: &[Reason],
    log: &mut Vec<String>,
) -> Result<Option<Vec<Tuple>>, String> {
    use hairpin_ctl::{conntrack, sweep};
    const MADE: [Reason; 5] = [
        Reason::IngressNewFlow,
        Reason::IngressMasquerade,
        Reason::IngressBinding,
        Reason::DropNoPort,
        Reason::DropFlowInsert,
    ];
    let entries: BTreeSet<(Tuple, Tuple)> = dp.ct().iter().map(|(k, e)| (tuple(k), tuple(&e.xlate))).collect();
    let egress: BTreeSet<(Tuple, Tuple)> = dp.egress().iter().map(|(k, e)| (tuple(k), tuple(&e.ct_key))).collect();
    // Both conntrack entries and both egress entries, each still this flow's.
    let whole = |f: &hairpin_common::model::Flow| {
        entries.contains(&(f.orig, f.xlate))
            && (f.is_own() || entries.contains(&(f.xlate.reversed(), f.orig.reversed())))
            && f.directions().iter().all(|d| egress.contains(&(f.leaving(*d), d.0)))
    };
    let ingress = matches!(at, At::LanIngress | At::WanIngress);
    // At ingress the frame's flow is the model's to replace (a SYN re-opening it).
    let own = m.flow_of(at, f);
    let gone: Vec<&hairpin_common::model::Flow> =
        m.flows.iter().filter(|f| !whole(f) && !(ingress && Some(f.orig) == own)).collect();
    if gone.is_empty() {
        return Ok(None);
    }
    let made = ingress && moved.iter().any(|r| MADE.contains(r));
    let confirming = !ingress && moved == [Reason::EgressFlow];
    if let Some(f) = gone.iter().find(|f| !(made || confirming) || (f.confirmed() && !confirming)) {
        return Err(format!("{at:?}: flow {:?} lost entries to a frame that made no flow and confirmed none", f.orig));
    }
    let (later, now): (Vec<Tuple>, Vec<Tuple>) = gone.iter().map(|f| f.orig).partition(|o| Some(*o) == own);
    log.push(format!("    the LRUs took from {now:?} {later:?}; the sweep after the orphans' grace"));
    tally("kernel: flows evicted");
    let mut ctl = dp.controller();
    sweep::sweep(ctl.maps(), conntrack::boot_ns() + 2 * conntrack::ORPHAN_GRACE_NS)
        .map_err(|e| format!("the sweep: {e:#}"))?;
    m.evict(&now);
    Ok(Some(later))
}

/// Runs one sequence on a fresh dataplane.
fn sequence(run: Run, actions: &[Action], sides: (u32, u32), cpus: &[usize]) -> Result<(), String> {
    let Run { mode, fast, cache, full } = run;
    let mut gw = gateway(mode, fast);
    let mut clock = Clock::default();
    // Small tables: each case empties them anew (the flow cache is an array of slots).
    let max_flows = if full { FULL_TABLES_FLOWS } else { 1024 };
    let tables = dp::Tables { max_flows, flow_cache: cache };
    let mut dp = Dataplane::load_routed_tables(config(fast), mode, tables, sides);
    for (proto, port, addr, to) in FORWARDS {
        let l4 = if proto == IPPROTO_TCP { L4::Tcp } else { L4::Udp };
        dp.add_mapping(l4, &sa(PUBLIC, port), &sa(addr, to));
    }
    let (mut m, mut h, mut log) = (Model::default(), History::default(), Vec::new());
    let mut sent = 0usize;
    CASE.with(|c| c.borrow_mut().clear());
    for (i, a) in actions.iter().enumerate() {
        if let Action::Op(op) = *a {
            log.push(format!("{i}: {op:?}"));
            let done =
                command(&mut dp, &mut m, &mut gw, (&mut clock, full), op).and_then(|()| same_state(&dp, &m, &gw));
            if let Err(e) = done {
                return Err(format!("{e}\nsteps:\n{}", log.join("\n")));
            }
            continue;
        }
        let Some(frames) = make(a, &h, &m) else { continue };
        let count = frames.len();
        for (k, (at, f, what)) in frames.into_iter().enumerate() {
            // A test run of a TC program refuses an IPv4 frame shorter than its header (the
            // kernel's check on what it is given), which XDP's takes.
            if mode == Mode::Tc && f[12..14] == [0x08, 0x00] && f.len() < 34 {
                continue;
            }
            log.push(format!("{i}: {at:?} {what}"));
            if matches!(at, At::LanIngress | At::WanIngress) {
                h.sent.push((at, f.clone()));
            }
            // Each CPU has its own copy of a flow in the flow cache: frames alternate between
            // them.
            sent += 1;
            let cpu = cpus[sent % cpus.len()];
            if fast {
                hairpin_lab::pin_thread_to_cpu(cpu).map_err(|e| format!("pinning to CPU {cpu}: {e}"))?;
            }
            let before = fingerprint(&m);
            m.now = clock.read().1;
            let last = i + 1 == actions.len() && k + 1 == count;
            let done = step(&mut dp, &mut m, (&gw, full), at, &f, &mut log).and_then(|wire| {
                h.wire.extend(wire);
                // Read back where the model's state moved, and at the end: reading the tables
                // is most of a step's cost. State the dataplane changed where the model says
                // nothing did is found at the next reading; shrinking then ends the sequence
                // there.
                if fingerprint(&m) != before || last || full { same_state(&dp, &m, &gw) } else { Ok(()) }
            });
            if let Err(e) = done {
                let case = CASE.with(|c| c.borrow().join("\n    "));
                return Err(format!(
                    "{e}\nsteps:\n{}\nas a packet case (the last row is where they part):\n    {case}",
                    log.join("\n")
                ));
            }
        }
    }
    Ok(())
}

/// Runs the generated cases as `run` says, inside a namespace that routes like the gateway.
fn differential(run: Run) {
    // A case moves its tables' times back by up to `MAX_WAITED`.
    dp::up_for((MAX_WAITED + 60) * SECOND);
    let Run { mode, fast, cache, full } = run;
    let what = format!(
        "{mode:?}{}{}{}",
        if fast { ", fast path" } else { "" },
        if fast && !cache { " without its flow cache" } else { "" },
        if full { ", full tables" } else { "" }
    );
    let steps: usize = std::env::var("HAIRPIN_MODEL_STEPS").ok().and_then(|s| s.parse().ok()).unwrap_or(20_000);
    let seed: u64 = std::env::var("HAIRPIN_MODEL_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x6861_6972);
    let tag = format!("m{mode:?}{}{}{}", u8::from(fast), u8::from(cache), u8::from(full));
    // The CPUs the frames alternate between, read before any case pins the thread to one (a
    // pinned thread's affinity is that CPU alone: reading it per case made every case after
    // the first run on one CPU).
    let cpus = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)).expect("sched_getaffinity");
    let cpus: Vec<usize> = (0..nix::sched::CpuSet::count()).filter(|&c| cpus.is_set(c).unwrap_or(false)).collect();
    assert!(
        !fast || cpus.len() >= 2,
        "the fast path's runs need two CPUs, for two flow caches; this thread has {cpus:?}"
    );
    let result = dp::in_routed_ns(&tag, move |sides| {
        let cases = (2 * steps / STEPS_PER_CASE).max(1) as u32;
        let mut seed_bytes = [0u8; 32];
        seed_bytes[..8].copy_from_slice(&seed.to_le_bytes());
        // Shrinking a case stops after this many tries (`HAIRPIN_MODEL_SHRINK`, default 2000):
        // a run over many mutants wants fewer.
        let max_shrink_iters = std::env::var("HAIRPIN_MODEL_SHRINK").ok().and_then(|s| s.parse().ok()).unwrap_or(2000);
        let config = PtConfig { cases, failure_persistence: None, max_shrink_iters, ..PtConfig::default() };
        let mut runner = TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes));
        // Of any length up to STEPS_PER_CASE, so that shrinking can drop the steps that do not
        // matter.
        let strategy = proptest::collection::vec(action(), 1..=STEPS_PER_CASE);
        // The generated actions run until the first disagreement (shrinking runs more).
        let first = std::cell::Cell::new(None);
        let r = runner.run(&strategy, |actions| {
            ACTIONS.with(|n| n.set(n.get() + actions.len()));
            let r = sequence(run, &actions, sides, &cpus);
            if r.is_err() && first.get().is_none() {
                first.set(Some(ACTIONS.with(std::cell::Cell::get)));
            }
            r.map_err(TestCaseError::fail)
        });
        let seen = SEEN.with(|seen| seen.borrow().clone());
        match r {
            Ok(()) => Ok((ACTIONS.with(std::cell::Cell::get), seen)),
            Err(TestError::Fail(why, actions)) => Err(format!(
                "found after {} generated actions: {why}\nshrunk actions: {actions:?}",
                first.get().unwrap_or_default()
            )),
            Err(e) => Err(e.to_string()),
        }
    });
    match result {
        Ok((n, seen)) => {
            let frames: u64 = seen.iter().filter(|(k, _)| !k.contains(": ")).map(|(_, n)| n).sum();
            eprintln!(
                "model {what}: {n} generated actions, {frames} frames at a hook, all agree (seed {seed:#x}): {seen:?}"
            );
        }
        Err(e) => panic!("the dataplane and the model disagree ({what}, seed {seed:#x}):\n{e}"),
    }
}

#[test]
fn xdp_ingress_agrees_with_the_model() {
    differential(Run { mode: Mode::Xdp, fast: false, cache: true, full: false });
}

#[test]
fn tc_ingress_agrees_with_the_model() {
    differential(Run { mode: Mode::Tc, fast: false, cache: true, full: false });
}

#[test]
fn xdp_fast_path_agrees_with_the_model() {
    differential(Run { mode: Mode::Xdp, fast: true, cache: true, full: false });
}

#[test]
fn tc_fast_path_agrees_with_the_model() {
    differential(Run { mode: Mode::Tc, fast: true, cache: true, full: false });
}

#[test]
fn tc_fast_path_without_flow_cache_agrees_with_the_model() {
    differential(Run { mode: Mode::Tc, fast: true, cache: false, full: false });
}

#[test]
fn xdp_fast_path_with_full_tables_agrees_with_the_model() {
    differential(Run { mode: Mode::Xdp, fast: true, cache: true, full: true });
}

#[test]
fn tc_with_full_tables_agrees_with_the_model() {
    differential(Run { mode: Mode::Tc, fast: false, cache: true, full: true });
}
