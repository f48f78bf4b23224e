//! A reference model of hairpin's NAT, for the differential test (host only, behind the
//! `model` feature): given the gateway's settings, its forwards, the flows and bindings so far
//! and one frame at one hook, what the dataplane must decide (the reason it counts), the
//! exact frame it leaves, and the state after.
//!
//! It is a second statement of the README's and the RFCs' rules (RFC 4787 endpoint-independent
//! mapping, address-and-port-dependent filtering by default, RFC 5382 for TCP, RFC 5508 echo
//! by identifier, the gateway as a boundary), not a translation of the eBPF code: plain maps,
//! no caches, no per-CPU state, checksums computed from scratch. Where the dataplane may choose
//! (a free source port, an echo id), the model asks the implementation what it chose
//! ([`Choices`]) and checks the choice against the rules instead.
//!
//! Covered so far: the slow path (fast path off), Ethernet frames to the gateway's MAC or
//! another's, non-IPv4, IPv4 with TCP (without FIN or RST), UDP and ICMP echo, forwards,
//! hairpin to forwards and to bindings, masquerade, the boundary checks of both sides, and
//! egress with confirmation. Not yet: fragments, ICMP errors, TCP closing, VLAN tags, IP
//! options, malformed headers, the fast path and its flow cache, timeouts.

use std::collections::{BTreeMap, BTreeSet};

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

/// The implementation's choices the model cannot predict: the source port (or echo id) of a
/// new flow's translation, read back from the implementation after the step.
pub trait Choices {
    /// The translated source the implementation gave the new flow that arrived as `key`.
    fn source_of(&self, key: &Tuple) -> Option<Ep>;
    /// The public port of the binding of the LAN endpoint `ep` for `proto`, if it has one.
    fn binding_of(&self, proto: u8, ep: Ep) -> Option<u16>;
}

/// The model's state: the flows, and the LAN endpoints' bindings (protocol, LAN endpoint) ->
/// public port.
#[derive(Clone, Debug, Default)]
pub struct Model {
    pub flows: Vec<Flow>,
    pub bindings: BTreeMap<(u8, Ep), u16>,
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

/// A parsed frame: what the rules look at.
#[derive(Clone, Debug)]
struct Parsed {
    dst_mac: [u8; 6],
    l3: usize,
    l4: usize,
    tuple: Tuple,
    /// ICMP type (echo 8, reply 0); TCP flags.
    icmp_type: u8,
}

enum Frame {
    NotIpv4,
    Ipv4(Parsed),
}

fn parse(f: &[u8]) -> Result<Frame, Reason> {
    if f.len() < 14 {
        return Err(Reason::DropMalformed);
    }
    if f[12..14] != [0x08, 0x00] {
        return Ok(Frame::NotIpv4);
    }
    let l3 = 14;
    let ip = f.get(l3..l3 + 20).ok_or(Reason::DropMalformed)?;
    let l4 = l3 + usize::from(ip[0] & 0x0f) * 4;
    let (proto, src, dst) = (ip[9], [ip[12], ip[13], ip[14], ip[15]], [ip[16], ip[17], ip[18], ip[19]]);
    if f.len() < l4 + 8 {
        return Err(Reason::DropMalformed);
    }
    let port = |at: usize| u16::from_be_bytes([f[at], f[at + 1]]);
    let mut dst_mac = [0; 6];
    dst_mac.copy_from_slice(&f[0..6]);
    let (tuple, icmp_type) = match proto {
        IPPROTO_TCP | IPPROTO_UDP => (Tuple { proto, src: (src, port(l4)), dst: (dst, port(l4 + 2)) }, 0),
        IPPROTO_ICMP => {
            let (ty, id) = (f[l4], port(l4 + 4));
            let t = match ty {
                8 => Tuple { proto, src: (src, id), dst: (dst, 0) },
                0 => Tuple { proto, src: (src, 0), dst: (dst, id) },
                _ => Tuple { proto, src: (src, 0), dst: (dst, 0) },
            };
            (t, ty)
        }
        _ => (Tuple { proto, src: (src, 0), dst: (dst, 0) }, 0),
    };
    Ok(Frame::Ipv4(Parsed { dst_mac, l3, l4, tuple, icmp_type }))
}

/// The frame with its tuple made `to`, every checksum computed from scratch (a UDP checksum
/// of 0, "none", stays 0).
fn rewritten(f: &[u8], p: &Parsed, to: &Tuple) -> Vec<u8> {
    let mut out = f.to_vec();
    out[p.l3 + 12..p.l3 + 16].copy_from_slice(&to.src.0);
    out[p.l3 + 16..p.l3 + 20].copy_from_slice(&to.dst.0);
    out[p.l3 + 10..p.l3 + 12].copy_from_slice(&[0, 0]);
    let ip_sum = csum::checksum(&out[p.l3..p.l4]);
    out[p.l3 + 10..p.l3 + 12].copy_from_slice(&ip_sum.to_ne_bytes());
    let tot = usize::from(u16::from_be_bytes([out[p.l3 + 2], out[p.l3 + 3]]));
    let end = (p.l3 + tot).min(out.len());
    let l4 = p.l4;
    match to.proto {
        IPPROTO_TCP | IPPROTO_UDP => {
            out[l4..l4 + 2].copy_from_slice(&to.src.1.to_be_bytes());
            out[l4 + 2..l4 + 4].copy_from_slice(&to.dst.1.to_be_bytes());
            let at = if to.proto == IPPROTO_TCP { l4 + 16 } else { l4 + 6 };
            if to.proto == IPPROTO_UDP && out[at..at + 2] == [0, 0] {
                return out;
            }
            out[at..at + 2].copy_from_slice(&[0, 0]);
            let mut sum = csum::l4_checksum(to.src.0, to.dst.0, to.proto, &out[l4..end]);
            if to.proto == IPPROTO_UDP && sum == 0 {
                sum = 0xffff;
            }
            out[at..at + 2].copy_from_slice(&sum.to_ne_bytes());
        }
        IPPROTO_ICMP => {
            let id = if p.icmp_type == 8 { to.src.1 } else { to.dst.1 };
            out[l4 + 4..l4 + 6].copy_from_slice(&id.to_be_bytes());
            out[l4 + 2..l4 + 4].copy_from_slice(&[0, 0]);
            let sum = csum::checksum(&out[l4..end]);
            out[l4 + 2..l4 + 4].copy_from_slice(&sum.to_ne_bytes());
        }
        _ => {}
    }
    out
}

/// What the kernel does with a frame ingress let on: which egress it leaves by (`None`: it is
/// for the gateway itself, or not forwarded at all).
pub fn route(gw: &Gateway, frame: &[u8]) -> Option<At> {
    let Ok(Frame::Ipv4(p)) = parse(frame) else { return None };
    let dst = p.tuple.dst.0;
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
        let p = match parse(frame) {
            Err(r) => return Ok(Expect { reason: r, output: None }),
            Ok(Frame::NotIpv4) => {
                let reason = Reason::PassNotIpv4;
                return Ok(Expect { reason, output: Some(frame.to_vec()) });
            }
            Ok(Frame::Ipv4(p)) => p,
        };
        match at {
            At::LanIngress | At::WanIngress => self.ingress(gw, at == At::LanIngress, frame, &p, choices),
            At::LanEgress | At::WanEgress => Ok(self.egress(gw, at == At::WanEgress, frame, &p)),
        }
    }

    fn ingress(
        &mut self,
        gw: &Gateway,
        lan: bool,
        frame: &[u8],
        p: &Parsed,
        choices: &dyn Choices,
    ) -> Result<Expect, Violation> {
        let pass = |reason| Ok(Expect { reason, output: Some(frame.to_vec()) });
        let drop = |reason| Ok(Expect { reason, output: None });
        let t = p.tuple;
        if p.dst_mac != gw.mac[usize::from(!lan)] {
            return pass(Reason::PassOtherHost);
        }
        // The boundary.
        if !lan && gw.in_lan(t.src.0) {
            return drop(Reason::DropWanLanSource);
        }
        if !lan && gw.in_lan(t.dst.0) {
            return drop(Reason::DropWanToLan);
        }
        if lan && t.src.0 != [0; 4] && !gw.in_lan(t.src.0) {
            // Forwarded (or hairpinned) it would be: dropped; for the gateway itself, passed.
            let local = t.dst.0 == gw.lan_addr || !unicast(t.dst.0);
            if t.dst.0 == gw.public || !local {
                return drop(Reason::DropLanForeignSource);
            }
        }
        if !unicast(t.src.0) {
            return pass(Reason::PassSourceNotHost);
        }
        match t.proto {
            IPPROTO_TCP | IPPROTO_UDP => {}
            IPPROTO_ICMP if matches!(p.icmp_type, 0 | 8) => {}
            IPPROTO_ICMP if !lan && t.dst.0 != gw.public => return drop(Reason::DropWanIcmpType),
            _ => return pass(Reason::PassOtherProto),
        }
        if let Some((i, reply)) = self.find(&t) {
            let f = &self.flows[i];
            let out = f.leaving(f.directions()[usize::from(reply)]);
            return Ok(Expect { reason: Reason::IngressFlow, output: Some(rewritten(frame, p, &out)) });
        }
        let Some((kind, reason, dst)) = self.new_flow_kind(gw, lan, p) else {
            return pass(Reason::PassNoMapping);
        };
        if kind == Kind::Filtered {
            return pass(Reason::PassFiltered);
        }
        match self.open(gw, kind, &t, dst, choices)? {
            Ok(out) => Ok(Expect { reason, output: Some(rewritten(frame, p, &out)) }),
            Err(refused) => drop(refused),
        }
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
        choices: &dyn Choices,
    ) -> Result<Result<Tuple, Reason>, Violation> {
        let (src, sport_at_ingress) = match kind {
            // The client's own source, unless its tuples are another flow's: then another
            // port, written at ingress.
            Kind::Keep if self.fits(&self.planned(t, t.src, dst, false)) => (t.src, false),
            Kind::Keep => {
                let with = |src| self.planned(t, src, dst, true);
                if !self.fits_any_port(&with(t.src)) {
                    return Ok(Err(Reason::DropNoPort));
                }
                let src = self.chosen(gw, t, choices, t.src.0, "the client's address", with)?;
                (src, true)
            }
            Kind::Lan | Kind::Public if kind == Kind::Lan || t.proto == IPPROTO_ICMP => {
                let addr = if kind == Kind::Lan { gw.lan_addr } else { gw.public };
                let with = |src| self.planned(t, src, dst, false);
                if !self.fits_any_port(&with((addr, 0))) {
                    return Ok(Err(Reason::DropNoPort));
                }
                (self.chosen(gw, t, choices, addr, "the gateway's address", with)?, false)
            }
            Kind::Public => {
                let src = (gw.public, self.bind(gw, t, choices)?);
                if !self.fits(&self.planned(t, src, dst, false)) {
                    return Ok(Err(Reason::DropFlowInsert));
                }
                (src, false)
            }
            Kind::Lan | Kind::Filtered => unreachable!("hairpin is above; filtered packets open nothing"),
        };
        let flow = self.planned(t, src, dst, sport_at_ingress);
        let out = flow.leaving(flow.directions()[0]);
        self.flows.push(flow);
        Ok(Ok(out))
    }

    fn planned(&self, t: &Tuple, src: Ep, dst: Ep, sport_at_ingress: bool) -> Flow {
        Flow { orig: *t, xlate: Tuple { proto: t.proto, src, dst }, left: [false; 2], sport_at_ingress }
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

    fn egress(&mut self, gw: &Gateway, wan: bool, frame: &[u8], p: &Parsed) -> Expect {
        let t = p.tuple;
        let leaks = |a: [u8; 4]| wan && gw.in_lan(a);
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
        Expect { reason: Reason::EgressFlow, output: Some(rewritten(frame, p, &leaves)) }
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
    /// a public port no forward owns and no other LAN endpoint holds.
    fn bind(&mut self, gw: &Gateway, t: &Tuple, choices: &dyn Choices) -> Result<u16, Violation> {
        let key = (t.proto, t.src);
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
