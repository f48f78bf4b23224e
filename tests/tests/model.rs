//! The differential test: generated sequences of frames run through the real compiled programs
//! (BPF_PROG_TEST_RUN, in a namespace that routes like the gateway) and through the reference
//! model (`hairpin_common::model`); at every step the reason counted, the verdict, the exact
//! frame left, and the flows and bindings read back from the maps must agree, and what leaves
//! must have valid checksums and no LAN source on the WAN.
//!
//! Each case is a sequence of actions on a fresh dataplane: a LAN or WAN host sends (UDP, a
//! TCP SYN or ACK, an echo request) to a WAN host, a LAN host, the gateway, the public
//! address's forwarded ports or its bound ones; a host answers a frame that left on its wire;
//! a frame is sent again; odd frames (ARP, another host's MAC, a source 0.0.0.0). What ingress
//! lets on goes through egress where the kernel would route it. Fixed seed; the number of
//! steps from `HAIRPIN_MODEL_STEPS` (`cargo xtask fuzz` runs long ones, with
//! `HAIRPIN_MODEL_SEED`). A disagreement is shrunk by proptest and printed as the steps that
//! lead to it.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{Ipv4Addr, SocketAddrV4},
};

use hairpin_common::{
    CT_F_CONFIRMED, Reason,
    consts::{Hook, IPPROTO_TCP, IPPROTO_UDP},
    model::{At, Choices, Ep, Gateway, Model, Tuple},
};
use hairpin_tests::{
    dp::{self, Dataplane, Mode},
    frame::{self, L4, Pkt, TCP_ACK, TCP_SYN},
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
/// The forwards: (protocol, public port) -> LAN target.
const FORWARDS: [(u8, u16, [u8; 4], u16); 2] =
    [(IPPROTO_TCP, 80, [192, 168, 0, 2], 80), (IPPROTO_UDP, 5353, [192, 168, 0, 2], 53)];
const STEPS_PER_CASE: usize = 60;

#[derive(Clone, Copy, Debug)]
enum Proto {
    Udp,
    TcpSyn,
    TcpAck,
    Ping,
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
    Public { port: usize, bound: bool },
    Lan(usize, usize),
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
    /// The receiver of a frame that left on a wire answers it.
    Reply(usize),
    /// An earlier ingress frame, sent again.
    Again(usize),
    Odd(Odd, usize),
}

fn proto() -> impl Strategy<Value = Proto> {
    prop_oneof![Just(Proto::Udp), Just(Proto::TcpSyn), Just(Proto::TcpAck), Just(Proto::Ping)]
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
        5 => any::<usize>().prop_map(Action::Reply),
        1 => any::<usize>().prop_map(Action::Again),
        1 => (odd, any::<usize>()).prop_map(|(o, i)| Action::Odd(o, i)),
    ]
}

fn gateway() -> Gateway {
    let cfg = dp::lab_config();
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
    }
}

fn sa(addr: [u8; 4], port: u16) -> String {
    SocketAddrV4::new(Ipv4Addr::from(addr), port).to_string()
}

fn packet(proto: Proto, src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16)) -> Pkt {
    let (s, d) = (sa(src.0.octets(), src.1), sa(dst.0.octets(), dst.1));
    match proto {
        Proto::Udp => Pkt::udp(&s, &d),
        Proto::TcpSyn => Pkt::tcp(&s, &d).flags(TCP_SYN),
        Proto::TcpAck => Pkt::tcp(&s, &d).flags(TCP_ACK),
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

/// The frame and hook an action makes, if it can be made now.
fn make(a: &Action, h: &History, m: &Model) -> Option<(At, Vec<u8>, String)> {
    let ip = Ipv4Addr::from;
    let bound_port = |p: usize| -> Option<u16> {
        let ports: Vec<u16> = m.bindings.values().copied().collect();
        (!ports.is_empty()).then(|| ports[p % ports.len()])
    };
    let public = |port: usize, bound: bool| -> Option<u16> { if bound { bound_port(port) } else { Some(PORTS[port]) } };
    let (at, pkt) = match *a {
        Action::Lan { host, sport, proto, to } => {
            let src = (ip(LAN_HOSTS[host]), PORTS[sport]);
            let dst = match to {
                LanDst::Wan(h, p) => (ip(WAN_HOSTS[h]), PORTS[p]),
                LanDst::Public { port, bound } => (ip(PUBLIC), public(port, bound)?),
                LanDst::Lan(h, p) => (ip(LAN_HOSTS[h]), PORTS[p]),
                LanDst::Gateway(p) => (ip(GW_LAN), PORTS[p]),
            };
            (At::LanIngress, packet(proto, src, dst))
        }
        Action::Wan { host, sport, proto, to } => {
            let src = (ip(WAN_HOSTS[host]), PORTS[sport]);
            let dst = match to {
                WanDst::Public { port, bound } => (ip(PUBLIC), public(port, bound)?),
                WanDst::Lan(h, p) => (ip(LAN_HOSTS[h]), PORTS[p]),
            };
            (At::WanIngress, packet(proto, src, dst))
        }
        Action::Reply(i) => {
            let (wan, out) = h.wire.get(i % h.wire.len().max(1))?.clone();
            let mut r = out.reply_to();
            r.macs = (frame::MAC_B, frame::MAC_A);
            r.ttl = 64;
            match out.l4 {
                L4::Echo { reply: false } => r.l4 = L4::Echo { reply: true },
                L4::Echo { reply: true } => return None,
                L4::Tcp => r.tcp_flags = if out.tcp_flags == TCP_SYN { TCP_SYN | TCP_ACK } else { TCP_ACK },
                _ => {}
            }
            (if wan { At::WanIngress } else { At::LanIngress }, r)
        }
        Action::Again(i) => {
            let (at, f) = h.sent.get(i % h.sent.len().max(1))?.clone();
            return Some((at, f, "the same frame again".into()));
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
                Odd::Unspecified => (At::LanIngress, udp([0, 0, 0, 0], PUBLIC)),
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
struct Read<'a>(&'a Dataplane);

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

// How often each reason was the model's (and the dataplane's) word, over the run; per test
// (each runs its cases on a thread of its own).
thread_local! {
    static SEEN: std::cell::RefCell<BTreeMap<&'static str, u64>> = const { std::cell::RefCell::new(BTreeMap::new()) };
}

/// One frame at one hook through both; then, for a frame ingress lets on, egress where the
/// kernel routes it. Returns the frames that left on a wire.
fn step(
    dp: &mut Dataplane,
    m: &mut Model,
    gw: &Gateway,
    at: At,
    f: &[u8],
    log: &mut Vec<String>,
) -> Result<Vec<(bool, Pkt)>, String> {
    let h = hook(at);
    let before: Vec<u64> = Reason::ALL.iter().map(|r| dp.counter(h, *r)).collect();
    let (verdict, out) = dp.run(h, f);
    let moved: Vec<Reason> =
        Reason::ALL.iter().zip(&before).filter(|(r, b)| dp.counter(h, **r) != **b).map(|(r, _)| *r).collect();
    let expect = m
        .step(gw, at, f, &Read(dp))
        .map_err(|v| format!("{at:?}: the dataplane counted {moved:?}, and its choice broke a rule: {}", v.0))?;
    // The model's word, as the row a packet case would assert.
    CASE.with(|c| c.borrow_mut().push(as_step(at, f, expect.reason, expect.output.as_deref())));
    if moved != [expect.reason] {
        return Err(format!("{at:?}: counted {moved:?}, the model says {:?}", expect.reason));
    }
    if verdict != dp.verdict(h, expect.reason) {
        return Err(format!("{at:?}: verdict {verdict} for {:?}", expect.reason));
    }
    log.push(format!("    {at:?} -> {:?}", expect.reason));
    SEEN.with(|seen| *seen.borrow_mut().entry(expect.reason.name()).or_default() += 1);
    let Some(want) = expect.output else { return Ok(Vec::new()) };
    if out != want {
        return Err(format!("{at:?} {:?}: frame differs: {}", expect.reason, frame::diff(&out, &want)));
    }
    if out.get(12..14) == Some(&[0x08, 0x00][..]) {
        frame::verify_checksums(&out).map_err(|e| format!("{at:?}: {e}"))?;
    }
    match at {
        At::LanIngress | At::WanIngress => match hairpin_common::model::route(gw, &out) {
            Some(next) if !expect.reason.consumes() && expect.reason != Reason::PassOtherHost => {
                step(dp, m, gw, next, &out, log)
            }
            _ => Ok(Vec::new()),
        },
        At::LanEgress | At::WanEgress => {
            let wan = at == At::WanEgress;
            if let Some(p) = frame::parse(&out) {
                if wan && gw.in_lan(p.src.ip().octets()) {
                    return Err(format!("a LAN source left on the WAN: {}", p.src));
                }
                return Ok(vec![(wan, p)]);
            }
            Ok(Vec::new())
        }
    }
}

/// The flows, confirmation and bindings the model holds, against the maps'.
fn same_state(dp: &Dataplane, m: &Model) -> Result<(), String> {
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
    let leaving: BTreeSet<Tuple> = m.flows.iter().flat_map(|f| f.directions().map(|d| f.leaving(d))).collect();
    let egress: BTreeSet<Tuple> = dp.egress().iter().map(|(k, _)| tuple(k)).collect();
    if egress != leaving {
        return Err(format!("egress entries differ: maps {egress:?}, model {leaving:?}"));
    }
    Ok(())
}

/// What of the model's state a step may change: flows, their confirmation, bindings.
fn fingerprint(m: &Model) -> (usize, usize, usize) {
    (m.flows.len(), m.flows.iter().map(|f| f.left.iter().filter(|l| **l).count()).sum(), m.bindings.len())
}

/// Runs one sequence on a fresh dataplane.
fn sequence(mode: Mode, actions: &[Action], sides: (u32, u32)) -> Result<(), String> {
    let gw = gateway();
    // Small tables: each case empties them anew (the flow cache is an array of slots).
    let mut dp = Dataplane::load_routed(dp::lab_config(), mode, 1024, sides);
    for (proto, port, addr, to) in FORWARDS {
        let l4 = if proto == IPPROTO_TCP { L4::Tcp } else { L4::Udp };
        dp.add_mapping(l4, &sa(PUBLIC, port), &sa(addr, to));
    }
    let (mut m, mut h, mut log) = (Model::default(), History::default(), Vec::new());
    CASE.with(|c| c.borrow_mut().clear());
    for (i, a) in actions.iter().enumerate() {
        let Some((at, f, what)) = make(a, &h, &m) else { continue };
        log.push(format!("{i}: {at:?} {what}"));
        if matches!(at, At::LanIngress | At::WanIngress) {
            h.sent.push((at, f.clone()));
        }
        let before = fingerprint(&m);
        let last = i + 1 == actions.len();
        let done = step(&mut dp, &mut m, &gw, at, &f, &mut log).and_then(|wire| {
            h.wire.extend(wire);
            // Read back where the model's state moved, and at the end: reading the tables
            // is most of a step's cost. State the dataplane changed where the model says
            // nothing did is found at the next reading; shrinking then ends the sequence there.
            if fingerprint(&m) != before || last { same_state(&dp, &m) } else { Ok(()) }
        });
        if let Err(e) = done {
            let case = CASE.with(|c| c.borrow().join("\n    "));
            return Err(format!(
                "{e}\nsteps:\n{}\nas a packet case (the last row is where they part):\n    {case}",
                log.join("\n")
            ));
        }
    }
    Ok(())
}

/// Runs the generated cases in `mode` inside a namespace that routes like the gateway.
fn differential(mode: Mode) {
    let steps: usize = std::env::var("HAIRPIN_MODEL_STEPS").ok().and_then(|s| s.parse().ok()).unwrap_or(20_000);
    let seed: u64 = std::env::var("HAIRPIN_MODEL_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x6861_6972);
    let result = dp::in_routed_ns(&format!("m{mode:?}"), move |sides| {
        let cases = (2 * steps / STEPS_PER_CASE).max(1) as u32;
        let mut seed_bytes = [0u8; 32];
        seed_bytes[..8].copy_from_slice(&seed.to_le_bytes());
        let config = PtConfig { cases, failure_persistence: None, max_shrink_iters: 2000, ..PtConfig::default() };
        let mut runner = TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes));
        // Of any length up to STEPS_PER_CASE, so that shrinking can drop the steps that do not
        // matter.
        let strategy = proptest::collection::vec(action(), 1..=STEPS_PER_CASE);
        let r = runner.run(&strategy, |actions| {
            ACTIONS.with(|n| n.set(n.get() + actions.len()));
            sequence(mode, &actions, sides).map_err(TestCaseError::fail)
        });
        let seen = SEEN.with(|seen| seen.borrow().clone());
        match r {
            Ok(()) => Ok((ACTIONS.with(std::cell::Cell::get), seen)),
            Err(TestError::Fail(why, actions)) => Err(format!("{why}\nshrunk actions: {actions:?}")),
            Err(e) => Err(e.to_string()),
        }
    });
    match result {
        Ok((n, seen)) => {
            let frames: u64 = seen.values().sum();
            eprintln!(
                "model {mode:?}: {n} generated actions, {frames} frames at a hook, all agree (seed {seed:#x}): {seen:?}"
            );
        }
        Err(e) => panic!("the dataplane and the model disagree ({mode:?}, seed {seed:#x}):\n{e}"),
    }
}

#[test]
fn xdp_ingress_agrees_with_the_model() {
    differential(Mode::Xdp);
}

#[test]
fn tc_ingress_agrees_with_the_model() {
    differential(Mode::Tc);
}
