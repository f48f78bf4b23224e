//! A reference model of hairpin's NAT, for the differential test (host only, behind the
//! `model` feature): given the gateway's settings, its forwards, the flows and bindings so far
//! and one frame at one hook, what the dataplane must decide (the reason it counts), the
//! exact frame it leaves, and the state after.
//!
//! It is a second statement of the README's and the RFCs' rules (RFC 4787 endpoint-independent
//! mapping, address-and-port-dependent filtering by default, RFC 5382 for TCP, RFC 5508 for
//! echo by identifier and ICMP errors, the gateway as a boundary), not a translation of the
//! eBPF code: plain maps, no caches, no per-CPU state, every checksum by one rule (see
//! [`keep_sums`]). Where the dataplane may choose (a free source port, an echo id), the model
//! asks the implementation what it chose ([`Choices`]) and checks the choice against the rules
//! instead.
//!
//! Covered so far: Ethernet frames to the gateway's MAC or another's, priority-tagged and VLAN
//! frames, non-IPv4; IPv4 with options, malformed headers (truncated, bad IHL, total or UDP
//! length, TCP data offset or flags) and checksums right or wrong (a wrong one must stay
//! exactly as wrong); TCP (FINs, RSTs in and out of the window, a closed tuple re-opened by a
//! SYN), UDP, ICMP echo and ICMP errors (every type that quotes a packet, about flows both
//! ways, forged, the gateway's own time exceeded); forwards, hairpin to forwards and to
//! bindings, masquerade, the boundary checks of both sides, egress with confirmation, and the
//! fast path (its flow cache is the implementation's, unseen here); and the controller's
//! commands between packets (forwards added and removed, flows flushed or deleted, the
//! sweep); fragmented datagrams in and out of order (see [`frag`]); full tables, whose LRUs
//! take what the kernel chooses and the sweep completes ([`Model::evict`]); time passing: idle
//! timeouts, the sweep, forwards' lifetimes, fragments' reassembly timeout (see [`time`]).

mod frag;
mod time;

use std::collections::{BTreeMap, BTreeSet};

pub use self::{
    frag::{Datagram, Frags},
    time::{Kept, Times},
};
use crate::{
    Reason,
    consts::{IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP},
    csum,
};

/// An IPv4 address and a port (an echo id for ICMP), host order.
pub type Ep = ([u8; 4], u16);

/// A packet's (protocol, source, destination), as hairpin keys flows: an echo request's id is
/// its source port (destination 0), an echo reply's its destination port (source 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Tuple {
    pub proto: u8,
    pub src: Ep,
    pub dst: Ep,
}

impl Tuple {
    pub const fn reversed(&self) -> Self {
        Self { proto: self.proto, src: self.dst, dst: self.src }
    }
}

/// What the dataplane is given: its settings and its forwards.
#[derive(Clone, Debug)]
pub struct Gateway {
    pub lan_addr: [u8; 4],
    pub lan_net: [u8; 4],
    pub lan_prefix_len: u8,
    pub public: [u8; 4],
    pub ports: (u16, u16),
    pub hairpin: bool,
    /// Endpoint-independent filtering of UDP from the WAN.
    pub udp_eif: bool,
    /// The gateway's MAC on each side (LAN, WAN).
    pub mac: [[u8; 6]; 2],
    /// (protocol, public port) -> LAN target.
    pub forwards: BTreeMap<(u8, u16), Ep>,
    /// The fast path: packets of confirmed flows translated whole (the TTL counted down, the
    /// next hop's MACs) and sent on by ingress itself, when the kernel would send them so.
    pub fast_path: bool,
    /// The gateway's interfaces' own MACs (LAN, WAN): what it sends from.
    pub if_mac: [[u8; 6]; 2],
    /// The LAN hosts whose MACs the gateway knows (the others' it must ask for first).
    pub neighbours: BTreeMap<[u8; 4], [u8; 6]>,
    /// The WAN's router: every internet host's next hop.
    pub router: [u8; 6],
    /// The WAN's MTU (the LAN's is more than any frame here).
    pub wan_mtu: usize,
    /// Ingress runs where it can hold a frame and grow one (TC, not XDP): see [`frag`].
    pub ingress_holds: bool,
    /// The flows' idle timeouts.
    pub timeouts: crate::Timeouts,
}

/// Where a frame is run, as `consts::Hook`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum At {
    LanIngress,
    WanIngress,
    LanEgress,
    WanEgress,
}

/// A flow: its original direction as it arrived and as it leaves the gateway, whether it is
/// its own reply (a LAN host to its own binding: one entry), and which directions have left
/// (the kernel forwarded them; both: confirmed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Flow {
    pub orig: Tuple,
    pub xlate: Tuple,
    pub left: [bool; 2],
    /// Its source port is written at ingress, not egress: its packets would otherwise leave
    /// ingress like another flow's (two flows from one client port to one server).
    pub sport_at_ingress: bool,
    /// From the LAN to the public address, hairpinned: it never crosses the WAN.
    pub hairpin: bool,
    /// What each direction's TCP segments said (original first; a flow that is its own
    /// reply has one direction, the first).
    pub tcp: [TcpSeen; 2],
    /// When its packets came, and which of them keep it (see [`time`]).
    pub times: Times,
}

/// What a TCP flow direction's segments said: a FIN, an RST that counted, the highest
/// acknowledgment number (the fast path's segments too).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpSeen {
    pub fin: bool,
    pub rst: bool,
    pub ack: Option<u32>,
    /// A segment without SYN (the handshake's last, and every one after).
    pub past_syn: bool,
}

impl Flow {
    /// Its two directions: (as it arrives, as it leaves), original first.
    pub fn directions(&self) -> [(Tuple, Tuple); 2] {
        [(self.orig, self.xlate), (self.xlate.reversed(), self.orig.reversed())]
    }

    /// How a direction's packets leave ingress, for the kernel and egress: the destination
    /// translated, the source as it arrived (its port translated too with `sport_at_ingress`).
    pub fn leaving(&self, (arrived, leaves): (Tuple, Tuple)) -> Tuple {
        let port = if self.sport_at_ingress { leaves.src.1 } else { arrived.src.1 };
        Tuple { proto: arrived.proto, src: (arrived.src.0, port), dst: leaves.dst }
    }
    pub fn is_own(&self) -> bool {
        self.xlate.reversed() == self.orig
    }
    pub fn confirmed(&self) -> bool {
        self.left == [true, true]
    }
}

/// What a step must do: the reason counted, and the frame left (`None`: consumed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expect {
    pub reason: Reason,
    pub output: Option<Vec<u8>>,
}

impl Expect {
    /// A decision that leaves the frame as it is: passed unchanged, or dropped.
    fn decided(reason: Reason, frame: &[u8]) -> Self {
        Self { reason, output: (!reason.is_drop()).then(|| frame.to_vec()) }
    }
}

/// The implementation's choices the model cannot predict: the source port (or echo id) of a
/// new flow's translation, read back from the implementation after the step.
pub trait Choices {
    /// The translated source the implementation gave the new flow that arrived as `key`.
    fn source_of(&self, key: &Tuple) -> Option<Ep>;
    /// The public port of the binding of the LAN endpoint `ep` for `proto`, if it has one.
    fn binding_of(&self, proto: u8, ep: Ep) -> Option<u16>;
    /// Whether the implementation sent the frame on by its fast path (for a copy of a flow
    /// its tables evicted, which may or may not be on the frame's CPU: see [`Model::ghosts`]).
    fn sent_fast(&self) -> bool;
}

/// The model's state: the flows, and the LAN endpoints' bindings (protocol, LAN endpoint) ->
/// public port.
#[derive(Clone, Debug, Default)]
pub struct Model {
    pub flows: Vec<Flow>,
    pub bindings: BTreeMap<(u8, Ep), u16>,
    /// RSTs of known flows not taken for their state, far from what their receiver
    /// acknowledged: counted, so that an operator sees a spray.
    pub rsts_ignored: u64,
    pub frags: Frags,
    /// Flows the implementation's full tables evicted as the frame being taken ran (see
    /// [`Model::evict`]): a new flow's source may have been chosen while they were there.
    pub evicted_now: Vec<Flow>,
    /// The time (ns) of the frame or command being taken: the caller's clock, which the
    /// implementation's must follow.
    pub now: u64,
    /// Confirmed flows the implementation's full tables evicted whole, and when: a CPU's flow
    /// cache may still hold a copy of one, which serves its packets until the copy's deadline
    /// (at most `flow_cache::MAX_FRESH_NS` after it was made) unless flows are removed
    /// meanwhile (the generation moves): the bound the flow cache gives to what it does not
    /// see (an LRU's eviction, as a route's change).
    pub ghosts: Vec<(Flow, u64)>,
    /// When each binding was last used by a flow starting (the sweep's grace counts from it).
    pub bound_at: BTreeMap<(u8, Ep), u64>,
    /// The forwards added with a lifetime: when it ends.
    pub lifetimes: BTreeMap<(u8, u16), u64>,
}

/// A disagreement with the rules found in an implementation's choice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation(pub String);

impl Gateway {
    pub fn in_lan(&self, a: [u8; 4]) -> bool {
        let mask = u32::MAX.checked_shl(32 - u32::from(self.lan_prefix_len)).unwrap_or(0);
        u32::from_be_bytes(a) & mask == u32::from_be_bytes(self.lan_net) & mask
    }
}

/// A host's unicast address: not in 0/8 (0.0.0.0, a host without an address), loopback,
/// multicast or the reserved and broadcast space above it.
fn unicast(a: [u8; 4]) -> bool {
    a[0] != 0 && a[0] != 127 && a[0] < 224
}

/// An IPv4 frame's network layer: what the rules look at first.
#[derive(Clone, Debug)]
struct Ip {
    dst_mac: [u8; 6],
    l3: usize,
    l4: usize,
    /// Where the datagram ends (its total length): bytes after it are padding.
    end: usize,
    proto: u8,
    src: [u8; 4],
    dst: [u8; 4],
    /// A fragment (first or later): its L4 header is not the whole datagram's.
    fragment: bool,
    /// A fragment after the first: it has no L4 header.
    later_fragment: bool,
    /// The identification its fragments share, where its payload starts in the datagram
    /// (bytes), and whether more fragments follow.
    id: u16,
    offset: usize,
    more: bool,
}

/// A TCP, UDP or ICMP echo packet's tuple (and ICMP type).
#[derive(Clone, Debug)]
struct Parsed {
    tuple: Tuple,
    /// ICMP type (echo 8, reply 0).
    icmp_type: u8,
    /// A TCP segment's flags, sequence and acknowledgment numbers.
    tcp: Option<Segment>,
}

#[derive(Clone, Copy, Debug)]
struct Segment {
    flags: u8,
    seq: u32,
    ack: u32,
}

/// The packet an ICMP error quotes: where its headers are, its tuple as quoted.
#[derive(Clone, Debug)]
struct Quoted {
    l3: usize,
    l4: usize,
    p: Parsed,
}

/// What an IPv4 packet carries, as far as hairpin translates it.
enum L4 {
    Flow(Parsed),
    Error(Quoted),
}

const ICMP_ERRORS: [u8; 5] = [3, 4, 5, 11, 12];

fn be16(f: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([f[at], f[at + 1]])
}

/// The IPv4 header at `l3`: its version must be 4 and its length at least 20 bytes, all there.
fn ipv4_at(f: &[u8], l3: usize) -> Result<(usize, usize), Reason> {
    let ip = f.get(l3..l3 + 20).ok_or(Reason::DropMalformed)?;
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    if ip[0] >> 4 != 4 || ihl < 20 {
        return Err(Reason::DropMalformed);
    }
    Ok((ihl, usize::from(be16(ip, 2))))
}

/// Ethernet and IPv4. Not IPv4, or of a VLAN (a tag with an ID, two tags), is an `Err` to
/// pass: the frame is another interface's. A priority tag (ID 0) is looked past: the kernel
/// delivers its frame here. A bad IPv4 header is an `Err` to drop.
fn parse_ip(f: &[u8]) -> Result<Ip, Reason> {
    const TAGS: [[u8; 2]; 2] = [[0x81, 0x00], [0x88, 0xa8]];
    let mut l3 = 14;
    let mut ether_type = [f[12], f[13]];
    if TAGS.contains(&ether_type) {
        let tag = f.get(14..18).ok_or(Reason::DropMalformed)?;
        let inner = [tag[2], tag[3]];
        if be16(tag, 0) & 0x0fff != 0 || TAGS.contains(&inner) {
            return Err(Reason::PassVlan);
        }
        (ether_type, l3) = (inner, 18);
    }
    if ether_type != [0x08, 0x00] {
        return Err(Reason::PassNotIpv4);
    }
    let (ihl, tot_len) = ipv4_at(f, l3)?;
    if tot_len < ihl {
        return Err(Reason::DropMalformed);
    }
    let ip = &f[l3..l3 + 20];
    let frags = be16(ip, 6);
    Ok(Ip {
        dst_mac: f[0..6].try_into().expect("6 bytes"),
        l3,
        l4: l3 + ihl,
        end: l3 + tot_len,
        proto: ip[9],
        src: ip[12..16].try_into().expect("4 bytes"),
        dst: ip[16..20].try_into().expect("4 bytes"),
        fragment: frags & 0x3fff != 0,
        later_fragment: frags & 0x1fff != 0,
        id: be16(ip, 4),
        offset: usize::from(frags & 0x1fff) * 8,
        more: frags & 0x2000 != 0,
    })
}

/// The tuple of a TCP, UDP or echo header at `l4` (8 bytes there): an echo request's id is
/// its source port, a reply's its destination port. Another ICMP type is `None`.
fn tuple_at(f: &[u8], l4: usize, proto: u8, src: [u8; 4], dst: [u8; 4]) -> Option<Parsed> {
    let ports = match proto {
        IPPROTO_TCP | IPPROTO_UDP => (be16(f, l4), be16(f, l4 + 2)),
        IPPROTO_ICMP if f[l4] == 8 => (be16(f, l4 + 4), 0),
        IPPROTO_ICMP if f[l4] == 0 => (0, be16(f, l4 + 4)),
        _ => return None,
    };
    let icmp_type = if proto == IPPROTO_ICMP { f[l4] } else { 0 };
    Some(Parsed { tuple: Tuple { proto, src: (src, ports.0), dst: (dst, ports.1) }, icmp_type, tcp: None })
}

/// The L4 header after `ip`. Fragments after the first, and protocols and ICMP types hairpin
/// does not translate, are an `Err` to pass, whatever their length; a header that is not all
/// there (or not within the total length) one to drop as malformed; one that is there but
/// inconsistent (TCP data offset or flags, UDP length) one to drop as invalid, as netfilter's
/// conntrack would. An ICMP error quotes a packet: its IPv4 header and 8 bytes of its L4.
fn parse_l4(f: &[u8], ip: &Ip) -> Result<L4, Reason> {
    if ip.later_fragment {
        return Err(Reason::PassFragment);
    }
    let min = match ip.proto {
        IPPROTO_TCP => 20,
        IPPROTO_UDP | IPPROTO_ICMP => 8,
        _ => return Err(Reason::PassOtherProto),
    };
    if ip.end < ip.l4 + min || f.len() < ip.l4 + min {
        return Err(Reason::DropMalformed);
    }
    let l4 = ip.l4;
    let error = ip.proto == IPPROTO_ICMP && ICMP_ERRORS.contains(&f[l4]);
    let parsed = tuple_at(f, l4, ip.proto, ip.src, ip.dst);
    if parsed.is_none() && !error {
        return Err(Reason::PassOtherProto);
    }
    if ip.end > f.len() {
        return Err(Reason::DropMalformed);
    }
    let invalid = match ip.proto {
        IPPROTO_TCP => {
            let doff = usize::from(f[l4 + 12] >> 4) * 4;
            doff < 20 || l4 + doff > ip.end || !tcp_flags_sent_by_stacks(f[l4 + 13])
        }
        IPPROTO_UDP => {
            let len = usize::from(be16(f, l4 + 4));
            len < 8 || (!ip.fragment && l4 + len > ip.end)
        }
        _ => false,
    };
    if invalid {
        return Err(Reason::DropInvalid);
    }
    let be32 = |at: usize| u32::from_be_bytes([f[at], f[at + 1], f[at + 2], f[at + 3]]);
    match parsed {
        Some(p) if ip.proto == IPPROTO_TCP => {
            Ok(L4::Flow(Parsed { tcp: Some(Segment { flags: f[l4 + 13], seq: be32(l4 + 4), ack: be32(l4 + 8) }), ..p }))
        }
        Some(p) => Ok(L4::Flow(p)),
        None if ip.fragment => Err(Reason::PassFragment),
        None => {
            let q3 = l4 + 8;
            let (ihl, _) = ipv4_at(f, q3)?;
            let q = &f[q3..q3 + 20];
            if be16(q, 6) & 0x1fff != 0 {
                return Err(Reason::PassFragment);
            }
            let q4 = q3 + ihl;
            if f.len() < q4 + 8 {
                return Err(Reason::DropMalformed);
            }
            let (src, dst) = (q[12..16].try_into().expect("4"), q[16..20].try_into().expect("4"));
            let p = tuple_at(f, q4, q[9], src, dst).ok_or(Reason::PassOtherProto)?;
            if q4 + 8 > ip.end {
                return Err(Reason::DropMalformed);
            }
            Ok(L4::Error(Quoted { l3: q3, l4: q4, p }))
        }
    }
}

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;

/// Whether an RST with sequence number `seq` is near `ack`, what its receiver last
/// acknowledged: up to 8 MiB past it (a large scaled window) or 64 KiB before it (an answer to
/// a segment acknowledged since), sequence numbers wrapping.
fn rst_near(seq: u32, ack: u32) -> bool {
    let past = seq.wrapping_sub(ack);
    past < 8 << 20 || ack.wrapping_sub(seq) <= 64 << 10
}

/// TCP flags a stack sends (netfilter's `tcp_valid_flags`, stated here apart from the
/// dataplane's): PSH, ECE and CWR aside, SYN, SYN+URG, SYN+ACK, RST, RST+ACK, FIN+ACK, and
/// ACK, the last two with URG or not.
fn tcp_flags_sent_by_stacks(flags: u8) -> bool {
    const VALID: [u8; 9] = [0x02, 0x22, 0x12, 0x04, 0x14, 0x11, 0x31, 0x10, 0x30];
    VALID.contains(&(flags & 0x37))
}

/// A checksum of a frame: where its field is and what it covers (`pseudo`: a TCP/UDP one, over
/// the addresses of the IPv4 header at that offset too).
struct Sum {
    field: usize,
    covers: std::ops::Range<usize>,
    pseudo: Option<(usize, u8)>,
    udp: bool,
}

impl Sum {
    /// The one's complement sum of what it covers, its field taken as 0.
    fn covered(&self, f: &[u8]) -> u32 {
        let mut bytes = f[self.covers.clone()].to_vec();
        let at = self.field - self.covers.start;
        bytes[at..at + 2].copy_from_slice(&[0, 0]);
        let mut pseudo = [0u8; 12];
        if let Some((l3, proto)) = self.pseudo {
            pseudo[0..8].copy_from_slice(&f[l3 + 12..l3 + 20]);
            pseudo[9] = proto;
            // Its length is the same before and after: any will do (a quote's is not there).
            pseudo[10..12].copy_from_slice(&(self.covers.len() as u16).to_be_bytes());
        }
        csum::sum(&bytes, csum::sum(&pseudo, 0))
    }
}

/// The frame `before` became `out` but for its checksums: each field made what keeps its
/// covered bytes' sum what it was (RFC 1624): valid stays valid, a wrong one stays exactly as
/// wrong (a NAT must not make a corrupted packet look whole), and a quoted L4 checksum, over a
/// datagram only partly quoted, stays right. A UDP checksum of 0, "none", stays 0. Inner sums
/// first: an outer one covers their fields.
fn keep_sums(before: &[u8], out: &mut [u8], sums: &[Sum]) {
    for s in sums {
        let field = u16::from_ne_bytes([before[s.field], before[s.field + 1]]);
        if s.udp && field == 0 {
            continue;
        }
        let was = csum::fold(csum::add32(s.covered(before), u32::from(field)));
        let mut new = !csum::fold(csum::add32(s.covered(out), u32::from(!was)));
        if s.udp && new == 0 {
            new = 0xffff;
        }
        out[s.field..s.field + 2].copy_from_slice(&new.to_ne_bytes());
    }
}

/// The sums of a TCP, UDP or ICMP header at `l4` within the datagram ending at `end` (for a
/// quote, what of it is there), whose IPv4 header is at `l3`.
fn l4_sum(l3: usize, l4: usize, end: usize, proto: u8) -> Option<Sum> {
    let (at, pseudo) = match proto {
        IPPROTO_TCP => (16, Some((l3, proto))),
        IPPROTO_UDP => (6, Some((l3, proto))),
        _ => (2, None),
    };
    (l4 + at + 2 <= end).then_some(Sum { field: l4 + at, covers: l4..end, pseudo, udp: proto == IPPROTO_UDP })
}

fn ip_sum(l3: usize, l4: usize) -> Sum {
    Sum { field: l3 + 10, covers: l3..l4, pseudo: None, udp: false }
}

/// Writes `to` as the addresses and ports (echo id) of the header pair at `l3`/`l4`.
fn write_tuple(out: &mut [u8], l3: usize, l4: usize, p: &Parsed, to: &Tuple) {
    out[l3 + 12..l3 + 16].copy_from_slice(&to.src.0);
    out[l3 + 16..l3 + 20].copy_from_slice(&to.dst.0);
    match to.proto {
        IPPROTO_TCP | IPPROTO_UDP => {
            out[l4..l4 + 2].copy_from_slice(&to.src.1.to_be_bytes());
            out[l4 + 2..l4 + 4].copy_from_slice(&to.dst.1.to_be_bytes());
        }
        _ => {
            let id = if p.icmp_type == 8 { to.src.1 } else { to.dst.1 };
            out[l4 + 4..l4 + 6].copy_from_slice(&id.to_be_bytes());
        }
    }
}

/// The frame with its tuple made `to`, its checksums kept (see [`keep_sums`]).
fn rewritten(f: &[u8], ip: &Ip, p: &Parsed, to: &Tuple) -> Vec<u8> {
    rewritten_and(f, ip, p, to, |_| {})
}

/// As [`rewritten`], with `also` changed in the frame before the checksums are kept.
fn rewritten_and(f: &[u8], ip: &Ip, p: &Parsed, to: &Tuple, also: impl FnOnce(&mut [u8])) -> Vec<u8> {
    let mut out = f.to_vec();
    write_tuple(&mut out, ip.l3, ip.l4, p, to);
    also(&mut out);
    let sums: Vec<Sum> = l4_sum(ip.l3, ip.l4, ip.end, to.proto).into_iter().chain([ip_sum(ip.l3, ip.l4)]).collect();
    keep_sums(f, &mut out, &sums);
    out
}

/// An ICMP error with its quoted packet made `to`, and its own source or destination made
/// `outer` where given; every checksum kept, the quoted ones first.
fn rewritten_error(f: &[u8], ip: &Ip, q: &Quoted, to: &Tuple, outer: (Option<[u8; 4]>, Option<[u8; 4]>)) -> Vec<u8> {
    let mut out = f.to_vec();
    write_tuple(&mut out, q.l3, q.l4, &q.p, to);
    if let Some(src) = outer.0 {
        out[ip.l3 + 12..ip.l3 + 16].copy_from_slice(&src);
    }
    if let Some(dst) = outer.1 {
        out[ip.l3 + 16..ip.l3 + 20].copy_from_slice(&dst);
    }
    let quoted_l4 = l4_sum(q.l3, q.l4, ip.end, to.proto);
    let outer_icmp = l4_sum(ip.l3, ip.l4, ip.end, IPPROTO_ICMP);
    let sums: Vec<Sum> =
        quoted_l4.into_iter().chain([ip_sum(q.l3, q.l4)]).chain(outer_icmp).chain([ip_sum(ip.l3, ip.l4)]).collect();
    keep_sums(f, &mut out, &sums);
    out
}

/// A packet of a confirmed flow sent on by ingress, translated to `to` whole, as the kernel
/// would forward it: the TTL counted down, the next hop's MAC and the interface's; back out
/// of the interface it came in by (hairpin) or to the other. `None` where the kernel must
/// do it: a TTL it answers with time exceeded, a header with options, or a wrong checksum
/// (which the kernel drops: a router must not forward it), a LAN host whose MAC it must ask
/// for, a packet too big for the WAN.
fn fast(gw: &Gateway, lan: bool, frame: &[u8], ip: &Ip, p: &Parsed, to: &Tuple) -> Option<Expect> {
    let ttl = frame[ip.l3 + 8];
    if ttl <= 1 || ip.l4 != ip.l3 + 20 || csum::checksum(&frame[ip.l3..ip.l4]) != 0 {
        return None;
    }
    let dst = to.dst.0;
    let (out_lan, next) = match gw.in_lan(dst) {
        true => (true, *gw.neighbours.get(&dst)?),
        false if ip.end - ip.l3 > gw.wan_mtu => return None,
        false => (false, gw.router),
    };
    let mut out = rewritten_and(frame, ip, p, to, |out| out[ip.l3 + 8] = ttl - 1);
    out[0..6].copy_from_slice(&next);
    out[6..12].copy_from_slice(&gw.if_mac[usize::from(!out_lan)]);
    let reason = if out_lan == lan { Reason::FastTx } else { Reason::FastRedirect };
    Some(Expect { reason, output: Some(out) })
}

/// What the kernel does with a frame ingress let on: which egress it leaves by (`None`: it is
/// for the gateway itself, or not forwarded at all).
pub fn route(gw: &Gateway, frame: &[u8]) -> Option<At> {
    let dst = parse_ip(frame).ok()?.dst;
    if dst == gw.lan_addr || dst == gw.public || !unicast(dst) {
        None
    } else if gw.in_lan(dst) {
        Some(At::LanEgress)
    } else {
        Some(At::WanEgress)
    }
}

impl Model {
    /// The flow direction a packet arriving as `t` belongs to: (flow index, reply?).
    fn find(&self, t: &Tuple) -> Option<(usize, bool)> {
        self.flows.iter().enumerate().find_map(|(i, f)| {
            let [o, r] = f.directions();
            if o.0 == *t {
                Some((i, false))
            } else if r.0 == *t {
                Some((i, true))
            } else {
                None
            }
        })
    }

    /// The original direction of the flow a frame at `at` belongs to, if any (a TCP, UDP or
    /// echo packet of one): for the harness, which must tell it from flows the kernel evicts.
    pub fn flow_of(&self, at: At, frame: &[u8]) -> Option<Tuple> {
        let Ok(L4::Flow(p)) = parse_ip(frame).and_then(|ip| parse_l4(frame, &ip)) else { return None };
        let (i, _) = match at {
            At::LanIngress | At::WanIngress => self.find(&p.tuple),
            At::LanEgress | At::WanEgress => self.leaving(&p.tuple),
        }?;
        Some(self.flows[i].orig)
    }

    /// What the receiver of a TCP segment arriving as `t` has acknowledged, as far as its
    /// flow knows: where a genuine endpoint's RST falls.
    pub fn peer_ack(&self, t: &Tuple) -> Option<u32> {
        let (i, reply) = self.find(t)?;
        let (f, d) = (&self.flows[i], usize::from(reply));
        f.tcp[if f.is_own() { d } else { 1 - d }].ack
    }

    /// The flow direction whose packets leave ingress as `t`: (flow index, reply?), for egress.
    fn leaving(&self, t: &Tuple) -> Option<(usize, bool)> {
        self.flows.iter().enumerate().find_map(|(i, f)| {
            let [o, r] = f.directions();
            if f.leaving(o) == *t {
                Some((i, false))
            } else if f.leaving(r) == *t {
                Some((i, true))
            } else {
                None
            }
        })
    }

    /// One frame at `at`: what the dataplane must do, and the state after it. `choices` gives
    /// what the implementation chose for a new flow, checked here against the rules.
    pub fn step(&mut self, gw: &Gateway, at: At, frame: &[u8], choices: &dyn Choices) -> Result<Expect, Violation> {
        let ip = match parse_ip(frame) {
            Err(r) => return Ok(Expect::decided(r, frame)),
            Ok(ip) => ip,
        };
        match at {
            At::LanIngress | At::WanIngress => {
                let e = self.ingress(gw, at == At::LanIngress, frame, &ip, choices)?;
                Ok(match gw.ingress_holds && ip.fragment {
                    true => self.frags.after_tc_ingress(&ip, frame, e, self.now),
                    false => e,
                })
            }
            At::LanEgress | At::WanEgress => Ok(self.egress(gw, at == At::WanEgress, frame, &ip)),
        }
    }

    fn ingress(
        &mut self,
        gw: &Gateway,
        lan: bool,
        frame: &[u8],
        ip: &Ip,
        choices: &dyn Choices,
    ) -> Result<Expect, Violation> {
        let pass = |reason| Ok(Expect { reason, output: Some(frame.to_vec()) });
        let drop = |reason| Ok(Expect { reason, output: None });
        if ip.dst_mac != gw.mac[usize::from(!lan)] {
            return pass(Reason::PassOtherHost);
        }
        // The boundary.
        if !lan && gw.in_lan(ip.src) {
            return drop(Reason::DropWanLanSource);
        }
        if !lan && gw.in_lan(ip.dst) {
            return drop(Reason::DropWanToLan);
        }
        if lan && ip.src != [0; 4] && !gw.in_lan(ip.src) {
            // Forwarded (or hairpinned) it would be: dropped; for the gateway itself, passed.
            let local = ip.dst == gw.lan_addr || !unicast(ip.dst);
            if ip.dst == gw.public || !local {
                return drop(Reason::DropLanForeignSource);
            }
        }
        if !unicast(ip.src) {
            return pass(Reason::PassSourceNotHost);
        }
        if ip.later_fragment {
            return Ok(self.frags.later_in(frame, ip, self.now));
        }
        let p = match parse_l4(frame, ip) {
            Ok(L4::Flow(p)) => p,
            Ok(L4::Error(q)) => return Ok(self.ingress_error(gw, lan, frame, ip, &q)),
            // ICMP hairpin does not translate may reach the gateway's stack, never past it.
            Err(Reason::PassOtherProto) if !lan && ip.proto == IPPROTO_ICMP && ip.dst != gw.public => {
                return drop(Reason::DropWanIcmpType);
            }
            Err(r) => return Ok(Expect::decided(r, frame)),
        };
        let t = p.tuple;
        let mut found = self.find(&t);
        if let (Some((i, reply)), Some(seg)) = (found, p.tcp)
            && self.segment(i, usize::from(reply), seg)
        {
            // A SYN on a closed flow's tuple: the old flow goes, the SYN opens a new one.
            self.flows.remove(i);
            found = None;
        }
        if let Some((i, reply)) = found {
            self.flows[i].times.heard(usize::from(reply), self.now);
            let f = &self.flows[i];
            let dir = f.directions()[usize::from(reply)];
            // Until the kernel has forwarded a flow both ways, its packets go through it.
            if gw.fast_path
                && f.confirmed()
                && !ip.fragment
                && let Some(sent) = fast(gw, lan, frame, ip, &p, &dir.1)
            {
                return Ok(sent);
            }
            let out = f.leaving(dir);
            self.frags.first_in(ip, out.dst.0, self.now);
            return Ok(Expect { reason: Reason::IngressFlow, output: Some(rewritten(frame, ip, &p, &out)) });
        }
        if let Some(sent) = self.ghost(gw, (lan, frame, ip, &p), choices) {
            return Ok(sent);
        }
        let Some((kind, reason, dst)) = self.new_flow_kind(gw, lan, &p) else {
            return pass(Reason::PassNoMapping);
        };
        if kind == Kind::Filtered {
            return pass(Reason::PassFiltered);
        }
        // From the LAN to the public address, with hairpin: the flow never leaves the LAN.
        let hairpin = lan && gw.hairpin && t.dst.0 == gw.public;
        // Remembered as the flow is chosen: should making it fail, the later fragments go
        // where no first fragment came, to be dropped there with what they could not join.
        self.frags.first_in(ip, dst.0, self.now);
        match self.open(gw, kind, &t, dst, hairpin, choices)? {
            Ok(out) => {
                let f = self.flows.last_mut().expect("made");
                // A masqueraded UDP flow is kept by its outbound direction alone: the LAN
                // host's, whichever side opened it (RFC 4787 REQ-6).
                let outbound =
                    (t.proto == IPPROTO_UDP && reason != Reason::IngressNewFlow).then_some(usize::from(!lan));
                f.times = Times { last: [self.now; 2], answered: false, outbound };
                // The segment that opens a flow leaves its FIN or RST, as it is, in its
                // direction (its acknowledgment is not taken).
                if let Some(seg) = p.tcp {
                    f.tcp[0] = TcpSeen {
                        fin: seg.flags & TCP_FIN != 0,
                        rst: seg.flags & TCP_RST != 0,
                        ack: None,
                        past_syn: seg.flags & TCP_SYN == 0,
                    };
                }
                Ok(Expect { reason, output: Some(rewritten(frame, ip, &p, &out)) })
            }
            Err(refused) => drop(refused),
        }
    }

    /// A packet of no flow that a CPU's copy of an evicted flow may have served, as the
    /// implementation did (see [`Model::ghosts`]): one the copy's state bits cover (no SYN,
    /// FIN or RST), sent on as the fast path sends that flow's packets.
    fn ghost(
        &self,
        gw: &Gateway,
        (lan, frame, ip, p): (bool, &[u8], &Ip, &Parsed),
        choices: &dyn Choices,
    ) -> Option<Expect> {
        let plain = p.tcp.is_none_or(|seg| seg.flags & (TCP_SYN | TCP_FIN | TCP_RST) == 0);
        if !gw.fast_path || ip.fragment || !plain || !choices.sent_fast() {
            return None;
        }
        let fresh = |at: u64| self.now.saturating_sub(at) <= crate::flow_cache::MAX_FRESH_NS;
        let dir = self
            .ghosts
            .iter()
            .filter(|(_, at)| fresh(*at))
            .find_map(|(f, _)| f.directions().into_iter().find(|d| d.0 == p.tuple))?;
        fast(gw, lan, frame, ip, p, &dir.1)
    }

    /// Records a TCP segment of flow `i`'s direction `d` (what netfilter's conntrack keeps of
    /// RFC 793's state): a FIN; an RST that counts, near what its receiver has acknowledged
    /// (an off-path spray does not, RFC 5961); the acknowledgment, if it advances. Whether it is a SYN on a
    /// closed flow (an RST, or a FIN each way), which re-opens the tuple as a new flow, as
    /// netfilter re-opens one in TIME_WAIT or CLOSE.
    fn segment(&mut self, i: usize, d: usize, seg: Segment) -> bool {
        let f = &mut self.flows[i];
        let twin = if f.is_own() { d } else { 1 - d };
        if seg.flags & TCP_RST != 0 {
            match f.tcp[twin].ack.is_none_or(|ack| rst_near(seg.seq, ack)) {
                true => f.tcp[d].rst = true,
                false => self.rsts_ignored += 1,
            }
        }
        // Acknowledgments only advance (RFC 793's SND.UNA): an older one, late or sent again,
        // takes nothing back.
        if seg.flags & TCP_ACK != 0 && f.tcp[d].ack.is_none_or(|had| (seg.ack.wrapping_sub(had) as i32) > 0) {
            f.tcp[d].ack = Some(seg.ack);
        }
        if seg.flags & TCP_FIN != 0 {
            f.tcp[d].fin = true;
        }
        if seg.flags & TCP_SYN == 0 {
            f.tcp[d].past_syn = true;
        }
        let closed = f.tcp[0].rst || f.tcp[1].rst || (f.tcp[d].fin && f.tcp[twin].fin);
        seg.flags & (TCP_SYN | TCP_ACK) == TCP_SYN && closed
    }

    /// Whether a packet of no flow opens one, which kind, the reason counted and the
    /// destination it is translated to.
    fn new_flow_kind(&self, gw: &Gateway, lan: bool, p: &Parsed) -> Option<(Kind, Reason, Ep)> {
        let t = p.tuple;
        let public_dst = t.dst.0 == gw.public;
        if public_dst && let Some(&target) = gw.forwards.get(&(t.proto, t.dst.1)) {
            let kind = if lan && gw.hairpin { Kind::Lan } else { Kind::Keep };
            return Some((kind, Reason::IngressNewFlow, target));
        }
        let bound = self.bindings.iter().find(|((proto, _), port)| *proto == t.proto && **port == t.dst.1);
        if public_dst && let Some((&(_, host), _)) = bound {
            let kind = match (lan, gw.hairpin) {
                (true, true) => Kind::Public,
                (true, false) => Kind::Keep,
                (false, _) if t.proto == IPPROTO_UDP && gw.udp_eif => Kind::Keep,
                (false, _) => Kind::Filtered,
            };
            return Some((kind, Reason::IngressBinding, host));
        }
        let masquerade = lan
            && (t.proto != IPPROTO_ICMP || p.icmp_type == 8)
            && unicast(t.dst.0)
            && !gw.in_lan(t.dst.0)
            && !public_dst;
        masquerade.then_some((Kind::Public, Reason::IngressMasquerade, t.dst))
    }

    /// Makes the flow of `kind` for `t` translated to `dst`: the tuple its packets leave
    /// ingress with, or why it is refused (nothing made but a binding, which stays).
    ///
    /// A flow's entries are keyed by the tuples its two directions arrive with, and its egress
    /// entries by the tuples they leave ingress with: a new flow may take none that another
    /// flow has, and its two directions may not leave alike (egress could not tell them
    /// apart). What depends on the source port another port may free; what does not, no port
    /// will: the kinds that try ports are then refused for want of one (`drop_no_port`), a
    /// binding's flow has but its one port (`drop_flow_insert`). netfilter's NAT, with no
    /// split between ingress and egress, translates some of these (a forward's target to its
    /// own forward from the forwarded port; a WAN host to a forward from the tuple the target
    /// masqueraded to), which hairpin refuses, as its README says.
    fn open(
        &mut self,
        gw: &Gateway,
        kind: Kind,
        t: &Tuple,
        dst: Ep,
        hairpin: bool,
        choices: &dyn Choices,
    ) -> Result<Result<Tuple, Reason>, Violation> {
        // Where the implementation's full tables evicted flows as this frame ran, its checks may
        // have seen them: a choice the flows before that explain stands too.
        let before = (!self.evicted_now.is_empty())
            .then(|| Model { flows: [self.flows.clone(), self.evicted_now.clone()].concat(), ..Model::default() });
        let (made, kept) = (choices.source_of(t).is_some(), choices.source_of(t) == Some(t.src));
        let (src, sport_at_ingress) = match kind {
            // The client's own source, unless its tuples are another flow's: then another
            // port, written at ingress.
            Kind::Keep
                if self.fits(&self.planned(t, t.src, dst, false))
                    && (kept || before.as_ref().is_none_or(|b| b.fits(&self.planned(t, t.src, dst, false)))) =>
            {
                (t.src, false)
            }
            Kind::Keep => {
                let with = |src| self.planned(t, src, dst, true);
                if !holds(self, before.as_ref(), made, |m| m.fits_any_port(&with(t.src))) {
                    return Ok(Err(Reason::DropNoPort));
                }
                let src = self.chosen(gw, t, choices, t.src.0, "the client's address", with)?;
                (src, true)
            }
            Kind::Lan | Kind::Public if kind == Kind::Lan || t.proto == IPPROTO_ICMP => {
                let addr = if kind == Kind::Lan { gw.lan_addr } else { gw.public };
                let with = |src| self.planned(t, src, dst, false);
                if !holds(self, before.as_ref(), made, |m| m.fits_any_port(&with((addr, 0)))) {
                    return Ok(Err(Reason::DropNoPort));
                }
                (self.chosen(gw, t, choices, addr, "the gateway's address", with)?, false)
            }
            Kind::Public => {
                let src = (gw.public, self.bind(gw, t, choices)?);
                if !holds(self, before.as_ref(), made, |m| m.fits(&m.planned(t, src, dst, false))) {
                    return Ok(Err(Reason::DropFlowInsert));
                }
                (src, false)
            }
            Kind::Lan | Kind::Filtered => unreachable!("hairpin is above; filtered packets open nothing"),
        };
        let flow = Flow { hairpin, ..self.planned(t, src, dst, sport_at_ingress) };
        let out = flow.leaving(flow.directions()[0]);
        self.flows.push(flow);
        Ok(Ok(out))
    }

    fn planned(&self, t: &Tuple, src: Ep, dst: Ep, sport_at_ingress: bool) -> Flow {
        Flow {
            orig: *t,
            xlate: Tuple { proto: t.proto, src, dst },
            left: [false; 2],
            sport_at_ingress,
            hairpin: false,
            tcp: [TcpSeen::default(); 2],
            times: Times::default(),
        }
    }

    /// Whether a planned flow takes no other flow's tuples and its directions leave apart (a
    /// flow that is its own reply has one direction).
    fn fits(&self, f: &Flow) -> bool {
        let [o, r] = f.directions();
        let own = f.is_own();
        self.find(&r.0).is_none()
            && !self.leaves_taken(&f.leaving(o))
            && (own || (!self.leaves_taken(&f.leaving(r)) && f.leaving(o) != f.leaving(r)))
    }

    /// Whether some source port could make a planned flow fit: what does not depend on the
    /// port (its leaving tuples, unless the port is written at ingress; its reply's way out)
    /// must fit already.
    fn fits_any_port(&self, f: &Flow) -> bool {
        let [o, r] = f.directions();
        let (out, back) = (f.leaving(o), f.leaving(r));
        let out_fixed = !f.sport_at_ingress;
        (!out_fixed || !self.leaves_taken(&out)) && !self.leaves_taken(&back) && (!out_fixed || out != back)
    }

    /// Whether another flow's packets leave ingress as `out`.
    fn leaves_taken(&self, out: &Tuple) -> bool {
        self.leaving(out).is_some()
    }

    /// An ICMP error arriving (RFC 5508): one about a packet of a flow, sent to that packet's
    /// sender, goes to the sender as it knows the flow: the quoted packet made what the sender
    /// sent, the error sent to its address. From the WAN, an error quoting a LAN address or a
    /// hairpinned flow (which never crossed the WAN) is aimed past the boundary.
    fn ingress_error(&self, gw: &Gateway, lan: bool, frame: &[u8], ip: &Ip, q: &Quoted) -> Expect {
        let quoted = q.p.tuple;
        if !lan && (gw.in_lan(quoted.src.0) || gw.in_lan(quoted.dst.0)) {
            return Expect { reason: Reason::DropWanToLan, output: None };
        }
        match self.error_about(ip, q) {
            Some((_, true)) if !lan => Expect { reason: Reason::DropWanToLan, output: None },
            Some((to, _)) => {
                let output = rewritten_error(frame, ip, q, &to, (None, Some(to.src.0)));
                Expect { reason: Reason::IcmpError, output: Some(output) }
            }
            None => Expect::decided(Reason::PassNoMapping, frame),
        }
    }

    /// The flow an error is about, if it is sent to the quoted packet's sender: the quoted
    /// packet as that sender knows it (the reverse of how its reply is translated), and whether
    /// the flow is hairpinned.
    fn error_about(&self, ip: &Ip, q: &Quoted) -> Option<(Tuple, bool)> {
        let quoted = q.p.tuple;
        if ip.dst != quoted.src.0 {
            return None;
        }
        let (i, reply) = self.find(&quoted.reversed())?;
        let f = &self.flows[i];
        Some((f.directions()[usize::from(reply)].1.reversed(), f.hairpin))
    }

    fn egress(&mut self, gw: &Gateway, wan: bool, frame: &[u8], ip: &Ip) -> Expect {
        let leaks = |a: [u8; 4]| wan && gw.in_lan(a);
        if ip.later_fragment {
            return self.frags.later_out(frame, ip, leaks(ip.src), self.now);
        }
        let p = match parse_l4(frame, ip) {
            Ok(L4::Flow(p)) => p,
            Ok(L4::Error(q)) => return self.egress_error(gw, leaks, frame, ip, &q),
            Err(_) if leaks(ip.src) => return Expect { reason: Reason::DropLanSourceToWan, output: None },
            Err(r) => return Expect::decided(r, frame),
        };
        let t = p.tuple;
        let Some((i, reply)) = self.leaving(&t) else {
            return match leaks(t.src.0) {
                true => Expect { reason: Reason::DropLanSourceToWan, output: None },
                false => Expect { reason: Reason::PassEgressNoFlow, output: Some(frame.to_vec()) },
            };
        };
        let flow = &mut self.flows[i];
        let leaves = flow.directions()[usize::from(reply)].1;
        if leaks(leaves.src.0) {
            return Expect { reason: Reason::DropLanSourceToWan, output: None };
        }
        // A flow that is its own reply (a LAN host to its own binding) has one direction:
        // both have left when it has.
        if flow.is_own() {
            flow.left = [true, true];
        }
        flow.left[usize::from(reply)] = true;
        self.frags.first_out(ip, leaves.src.0, self.now);
        Expect { reason: Reason::EgressFlow, output: Some(rewritten(frame, ip, &p, &leaves)) }
    }

    /// An ICMP error leaving. One about a flow, to the quoted packet's sender, is translated as
    /// at ingress; one the gateway's own stack sent about a packet ingress had translated
    /// (its TTL ran out here) quotes it as ingress left it, and is restored to what its sender
    /// sent. An error a LAN host sends about a flow it serves through the public address
    /// comes from the public address. Then no LAN address may be left in it for the WAN.
    fn egress_error(&self, gw: &Gateway, leaks: impl Fn([u8; 4]) -> bool, frame: &[u8], ip: &Ip, q: &Quoted) -> Expect {
        let quoted = q.p.tuple;
        let mut outer_dst = None;
        let mut now = quoted;
        if let Some((to, _)) = self.error_about(ip, q) {
            (now, outer_dst) = (to, Some(to.src.0));
        } else if ip.dst == quoted.src.0
            && let Some((i, reply)) = self.leaving(&quoted)
        {
            now = self.flows[i].directions()[usize::from(reply)].0;
        }
        let serves = |(i, reply): (usize, bool)| self.flows[i].directions()[usize::from(reply)].1.dst.0 == ip.src;
        let fixed = gw.in_lan(ip.src) && now.dst.0 == gw.public && self.find(&now).is_some_and(serves);
        let src = if fixed { gw.public } else { ip.src };
        if leaks(src) || leaks(now.src.0) || leaks(now.dst.0) {
            return Expect { reason: Reason::DropLanSourceToWan, output: None };
        }
        if now == quoted && outer_dst.is_none() && !fixed {
            return Expect::decided(Reason::PassEgressNoFlow, frame);
        }
        let output = rewritten_error(frame, ip, q, &now, (fixed.then_some(gw.public), outer_dst));
        Expect { reason: Reason::IcmpError, output: Some(output) }
    }

    /// The source the implementation gave a new flow, checked: on `addr`, in the port range,
    /// the flow it makes (`with`) fitting among the others.
    fn chosen(
        &self,
        gw: &Gateway,
        t: &Tuple,
        choices: &dyn Choices,
        addr: [u8; 4],
        which: &str,
        with: impl Fn(Ep) -> Flow,
    ) -> Result<Ep, Violation> {
        let src = choices.source_of(t).ok_or_else(|| Violation(format!("no flow was made for {t:?}")))?;
        if src.0 != addr {
            return Err(Violation(format!("{t:?} took source {src:?}, not on {which}")));
        }
        if !(gw.ports.0..=gw.ports.1).contains(&src.1) {
            return Err(Violation(format!("{t:?} took port {} outside {:?}", src.1, gw.ports)));
        }
        if !self.fits(&with(src)) {
            return Err(Violation(format!("{t:?} took {src:?}, whose tuples another flow has")));
        }
        Ok(src)
    }

    /// The LAN source's endpoint-independent binding (RFC 4787 REQ-1), made if it has none:
    /// a public port no forward owns and no other LAN endpoint holds. Used now, either way.
    fn bind(&mut self, gw: &Gateway, t: &Tuple, choices: &dyn Choices) -> Result<u16, Violation> {
        let key = (t.proto, t.src);
        self.bound_at.insert(key, self.now);
        let port = choices.binding_of(t.proto, t.src).ok_or_else(|| Violation(format!("{t:?}: no binding made")))?;
        if let Some(&had) = self.bindings.get(&key) {
            if port != had {
                return Err(Violation(format!("{t:?}: its binding moved from port {had} to {port}")));
            }
            return Ok(port);
        }
        if !(gw.ports.0..=gw.ports.1).contains(&port) {
            return Err(Violation(format!("{t:?} was bound to port {port}, outside {:?}", gw.ports)));
        }
        if gw.forwards.contains_key(&(t.proto, port)) {
            return Err(Violation(format!("{t:?} was bound to port {port}, which a forward owns")));
        }
        let held: BTreeSet<u16> = self.bindings.iter().filter(|((p, _), _)| *p == t.proto).map(|(_, &p)| p).collect();
        if held.contains(&port) {
            return Err(Violation(format!("{t:?} was bound to port {port}, which another host holds")));
        }
        self.bindings.insert(key, port);
        Ok(port)
    }
}

/// Whether `fits` holds of the flows `now`, and, where the implementation's full tables
/// evicted flows as the frame ran and it `made` no flow, of those `before` too (its checks may
/// have seen them: a refusal they explain stands).
fn holds(now: &Model, before: Option<&Model>, made: bool, fits: impl Fn(&Model) -> bool) -> bool {
    fits(now) && before.is_none_or(|b| made || fits(b))
}

/// Why the controller refused to add a forward.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// The public port is forwarded already.
    Exists,
    /// A LAN host's binding holds the public port.
    Held,
}

/// What the controller's commands do to the tables (`map add`, `map del`, `flows flush`,
/// `flows del`, `run`'s sweep), stated over the model's flows and bindings.
impl Model {
    /// `map add`: a forward of `proto` on the public port `port` to `to`, until `ends` if
    /// given, unless the port is forwarded already or a LAN host's binding holds it (the two
    /// would contend for it).
    pub fn add_forward(
        &mut self,
        gw: &mut Gateway,
        (proto, port): (u8, u16),
        to: Ep,
        ends: Option<u64>,
    ) -> Result<(), Refused> {
        if gw.forwards.contains_key(&(proto, port)) {
            return Err(Refused::Exists);
        }
        if self.bindings.iter().any(|(&(p, _), &bound)| p == proto && bound == port) {
            return Err(Refused::Held);
        }
        gw.forwards.insert((proto, port), to);
        if let Some(t) = ends {
            self.lifetimes.insert((proto, port), t);
        }
        Ok(())
    }

    /// `map del`: the forward goes, and the flows it made (those sent to its public port) stop
    /// with it. Whether there was one.
    pub fn remove_forward(&mut self, gw: &mut Gateway, proto: u8, port: u16) -> bool {
        if gw.forwards.remove(&(proto, port)).is_none() {
            return false;
        }
        self.lifetimes.remove(&(proto, port));
        let had = self.flows.len();
        self.flows.retain(|f| !(f.orig.proto == proto && f.orig.dst == (gw.public, port)));
        self.removed(had);
        true
    }

    /// `flows flush`: every flow and every binding.
    pub fn flush(&mut self) {
        let had = self.flows.len();
        self.flows.clear();
        self.removed(had);
        self.bindings.clear();
    }

    /// `flows del`: the flow whose original direction is `orig`, and the bindings it alone
    /// held (a binding lives while a flow uses its public port). Whether there was one.
    pub fn delete_flow(&mut self, gw: &Gateway, orig: &Tuple) -> bool {
        let Some(i) = self.flows.iter().position(|f| f.orig == *orig) else { return false };
        let gone = self.flows.remove(i).public_ports(gw);
        self.ghosts.clear();
        let used: BTreeSet<(u8, u16)> = self.flows.iter().flat_map(|f| f.public_ports(gw)).collect();
        self.bindings.retain(|&(proto, _), port| !gone.contains(&(proto, *port)) || used.contains(&(proto, *port)));
        true
    }

    /// `run`'s sweep after the kernel's LRUs took entries of the flows `gone` (its choice):
    /// those flows go wholly, and then ([`Model::release_unused`]) the bindings no flow uses.
    pub fn evict(&mut self, gone: &[Tuple]) {
        let (out, kept): (Vec<Flow>, _) =
            std::mem::take(&mut self.flows).into_iter().partition(|f| gone.contains(&f.orig));
        self.flows = kept;
        self.ghosts.extend(out.iter().filter(|f| f.confirmed()).map(|f| (f.clone(), self.now)));
        self.evicted_now.extend(out);
    }

    /// After a command that found `had` flows, if it removed some: the implementation moves
    /// its generation, and no copy of a flow serves any more.
    fn removed(&mut self, had: usize) {
        if self.flows.len() < had {
            self.ghosts.clear();
        }
    }

    /// The bindings no flow uses, released (by a sweep past their grace), once the frame
    /// that evicted flows has been taken.
    pub fn release_unused(&mut self, gw: &Gateway) {
        self.evicted_now.clear();
        let used: BTreeSet<(u8, u16)> = self.flows.iter().flat_map(|f| f.public_ports(gw)).collect();
        self.bindings.retain(|&(proto, _), port| used.contains(&(proto, *port)));
    }
}

impl Flow {
    /// The public ports its tuples use: (protocol, port).
    fn public_ports(&self, gw: &Gateway) -> BTreeSet<(u8, u16)> {
        let (o, x) = (self.orig, self.xlate);
        [o.src, o.dst, x.src, x.dst].into_iter().filter(|ep| ep.0 == gw.public).map(|ep| (o.proto, ep.1)).collect()
    }
}

/// How a new flow's source is translated (as the README tells the kinds).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Kept: a forward from the WAN (or from the LAN without hairpin), a WAN host to a
    /// binding with endpoint-independent filtering.
    Keep,
    /// The gateway's LAN address and a free port: hairpin to a forward.
    Lan,
    /// The public address and the LAN source's binding (masquerade, hairpin to a binding); an
    /// echo an id free for its tuple.
    Public,
    /// A WAN host to a binding it may not reach (address-and-port-dependent filtering).
    Filtered,
}
