//! Fragmented datagrams: the first fragment is translated with its flow, and the later ones,
//! which have no ports, get the addresses it got (RFC 4787 REQ-14), at ingress and at egress.

use super::*;

/// Three fragments of one datagram, as its sender split it.
fn three(p: &Pkt) -> Vec<Vec<u8>> {
    frame::fragments(&p.build(), 1480, 0x4242)
}

/// A forwarded UDP datagram of 3000 bytes, in three fragments, both ways: each fragment leaves
/// exactly as the translated datagram, fragmented alike, would (the first one's UDP checksum
/// covers the whole datagram); the later ones take the address the first one got.
fn fragmented_datagrams_are_translated_whole(mode: Mode) {
    let query = Pkt::udp("198.51.100.7:40000", "203.0.113.1:5353").payload_len(3000);
    let routed = query.with("198.51.100.7:40000", "192.168.0.2:53");
    let answer = Pkt::udp("192.168.0.2:53", "198.51.100.7:40000").payload_len(3000);
    let out = answer.with("203.0.113.1:5353", "198.51.100.7:40000");
    let (q, q_routed, a, a_out) = (three(&query), three(&routed), three(&answer), three(&out));
    let frag = |what, hook, input: &[u8], reason, output: &[u8]| Step {
        what,
        hook,
        input: input.to_vec(),
        reason,
        output: Some(output.to_vec()),
    };
    Case::new("fragments", Env::Bare)
        .forward(L4::Udp, "203.0.113.1:5353", "192.168.0.2:53")
        .steps(vec![
            frag("first fragment: a new flow", Hook::WanIngress, &q[0], Reason::IngressNewFlow, &q_routed[0]),
            frag("second: the first one's destination", Hook::WanIngress, &q[1], Reason::IngressFragment, &q_routed[1]),
            frag("third", Hook::WanIngress, &q[2], Reason::IngressFragment, &q_routed[2]),
            frag("leaving: the first", Hook::LanEgress, &q_routed[0], Reason::EgressFlow, &q_routed[0]),
            frag("the later ones, known", Hook::LanEgress, &q_routed[1], Reason::EgressFragment, &q_routed[1]),
            frag("answer, first fragment", Hook::LanIngress, &a[0], Reason::IngressFlow, &a[0]),
            frag("answer, second", Hook::LanIngress, &a[1], Reason::IngressFragment, &a[1]),
            frag("answer leaving: the public source", Hook::WanEgress, &a[0], Reason::EgressFlow, &a_out[0]),
            frag("second: the first one's source", Hook::WanEgress, &a[1], Reason::EgressFragment, &a_out[1]),
            frag("third", Hook::WanEgress, &a[2], Reason::EgressFragment, &a_out[2]),
        ])
        .leaves_flows(2)
        .run(mode);
}

/// What is left untranslated: a later fragment of no datagram seen (for the gateway itself,
/// or come before its first fragment) passes at an XDP ingress, and is held at a TC ingress,
/// then given back appended to its first fragment, untranslated too when that one is the
/// gateway's own; at egress on the WAN one with a LAN source is dropped, never let out.
fn fragments_of_unknown_datagrams_pass_but_never_leak(mode: Mode) {
    let masq = three(&Pkt::udp("192.168.0.3:40000", "198.51.100.7:53").payload_len(3000));
    let datagram = Pkt::udp("198.51.100.7:40000", "203.0.113.1:9999").payload_len(3000);
    let to_gateway = three(&datagram);
    let first = |reason| Step {
        what: "its first one, for the gateway",
        hook: Hook::WanIngress,
        input: to_gateway[0].clone(),
        reason,
        // At TC, with the later one appended: the first two fragments as one.
        output: (mode == Mode::Tc).then(|| joined(&to_gateway[0], &to_gateway[1])),
    };
    let later = |reason| raw("later fragment first, for the gateway", Hook::WanIngress, to_gateway[1].clone(), reason);
    let held = if mode == Mode::Tc { Reason::HeldFragment } else { Reason::PassFragment };
    Case::new("unknown fragments", Env::Bare)
        .steps(vec![
            later(held),
            first(Reason::PassNoMapping),
            raw(
                "the last, of the gateway's datagram: passes",
                Hook::WanIngress,
                to_gateway[2].clone(),
                Reason::PassFragment,
            ),
            raw("a LAN host's later fragment, unknown", Hook::WanEgress, masq[1].clone(), Reason::DropLanSourceToWan),
        ])
        .leaves_flows(0)
        .run(mode);
}

/// Another host's fragments (a bridge port, a promiscuous interface) are not the gateway's:
/// one that comes before its first passes as it came, never held, and its first one is not
/// grown. A TC ingress held it (found by the differential test).
fn another_hosts_fragments_are_never_held(mode: Mode) {
    let mut datagram = Pkt::udp("198.51.100.7:40000", "203.0.113.1:5353").payload_len(3000);
    datagram.macs.0 = frame::MAC_A;
    let f = three(&datagram);
    let pass = |what, input: &[u8]| raw(what, Hook::WanIngress, input.to_vec(), Reason::PassOtherHost);
    Case::new("another host's fragments", Env::Bare)
        .forward(L4::Udp, "203.0.113.1:5353", "192.168.0.2:53")
        .steps(vec![
            pass("its last fragment first", &f[2]),
            pass("its first, as it came", &f[0]),
            pass("then the second", &f[1]),
        ])
        .leaves_flows(0)
        .run_then(mode, |dp| assert_eq!(dp.side_counter(hairpin_common::Counter::FragmentsReleased), 0));
}

/// Fragments `a` and `b`, the one right after the other in their datagram, as one fragment:
/// `a`'s header with their length and `b`'s more-fragments flag, and both payloads.
fn joined(a: &[u8], b: &[u8]) -> Vec<u8> {
    let ihl = |f: &[u8]| usize::from(f[14] & 0x0f) * 4;
    let (mut out, tail) = (a.to_vec(), &b[14 + ihl(b)..]);
    out.extend_from_slice(tail);
    let h = &mut out[14..14 + ihl(a)];
    let len = u16::from_be_bytes([h[2], h[3]]) + tail.len() as u16;
    h[2..4].copy_from_slice(&len.to_be_bytes());
    let mf = u16::from_be_bytes([b[20], b[21]]) & 0x2000;
    let frags = (u16::from_be_bytes([h[6], h[7]]) & !0x2000) | mf;
    h[6..8].copy_from_slice(&frags.to_be_bytes());
    h[10..12].copy_from_slice(&[0, 0]);
    let sum = hairpin_common::csum::checksum(h);
    h[10..12].copy_from_slice(&sum.to_ne_bytes());
    out
}

/// A forwarded datagram whose fragments come last first (the UDP header last), both ways, and
/// one whose middle fragment comes last: at a TC ingress each fragment that comes before the
/// one it follows is held, and given back appended to it, translated, so that the datagram
/// arrives whole (the kernel fragments it again for the next hop). At an XDP ingress, which
/// cannot grow a frame, they pass untranslated.
fn fragments_before_their_first_are_held_and_given_back(mode: Mode) {
    let query = Pkt::udp("198.51.100.7:40000", "203.0.113.1:5353").payload_len(3000);
    let routed = query.with("198.51.100.7:40000", "192.168.0.2:53");
    let answer = Pkt::udp("192.168.0.2:53", "198.51.100.7:40000").payload_len(3000);
    let (q, r, a) = (three(&query), three(&routed), three(&answer));
    let step = |what, hook, input: &[u8], reason, output: Option<Vec<u8>>| Step {
        what,
        hook,
        input: input.to_vec(),
        reason,
        output,
    };
    let tc = mode == Mode::Tc;
    let held = if tc { Reason::HeldFragment } else { Reason::PassFragment };
    // The first fragment with both later ones appended: the translated datagram, whole.
    let whole = |frags: &[Vec<u8>]| joined(&joined(&frags[0], &frags[1]), &frags[2]);
    let mut steps = vec![
        step("third fragment first", Hook::WanIngress, &q[2], held, None),
        step("then the second", Hook::WanIngress, &q[1], held, None),
        step(
            "the first, last: a new flow, and the datagram whole",
            Hook::WanIngress,
            &q[0],
            Reason::IngressNewFlow,
            Some(if tc { whole(&r) } else { r[0].clone() }),
        ),
    ];
    if tc {
        // The answer from the LAN: the middle fragment last.
        steps.extend([
            step("answer: third fragment first", Hook::LanIngress, &a[2], Reason::HeldFragment, None),
            step("its first: the flow's, alone", Hook::LanIngress, &a[0], Reason::IngressFlow, Some(a[0].clone())),
            step(
                "the second: known, with the third appended",
                Hook::LanIngress,
                &a[1],
                Reason::IngressFragment,
                Some(joined(&a[1], &a[2])),
            ),
        ]);
    }
    Case::new("fragments out of order", Env::Bare)
        .forward(L4::Udp, "203.0.113.1:5353", "192.168.0.2:53")
        .steps(steps)
        .leaves_flows(2)
        .run_then(mode, move |dp| {
            let released = dp.side_counter(hairpin_common::Counter::FragmentsReleased);
            assert_eq!(released, if tc { 3 } else { 0 }, "held fragments given back");
        });
}

/// The kernel fragments a masqueraded datagram for a smaller WAN MTU (PPPoE: 1492) after
/// ingress: egress translates the first fragment with its flow and the later one with it.
fn fragments_the_kernel_makes_at_egress_are_translated(mode: Mode) {
    let big = Pkt::udp("192.168.0.3:40000", "198.51.100.7:53").payload_len(1472);
    let out = big.with("203.0.113.1:40000", "198.51.100.7:53");
    let (b, o) = (frame::fragments(&big.build(), 1464, 7), frame::fragments(&out.build(), 1464, 7));
    Case::new("egress fragments", Env::Gateway)
        .steps(vec![
            step("whole at ingress: a new flow", Hook::LanIngress, &big, Reason::IngressMasquerade, None),
            Step {
                what: "first fragment at egress",
                hook: Hook::WanEgress,
                input: b[0].clone(),
                reason: Reason::EgressFlow,
                output: Some(o[0].clone()),
            },
            Step {
                what: "second",
                hook: Hook::WanEgress,
                input: b[1].clone(),
                reason: Reason::EgressFragment,
                output: Some(o[1].clone()),
            },
        ])
        .leaves_flows(2)
        .run(mode);
}

/// A fragment held on one CPU is given back with its first fragment on another: each CPU
/// reads the clock once a jiffy, so the time the holding CPU stamped may be ahead of the other
/// one's now, which is no age (it was taken for one past the reassembly timeout, the held
/// fragment dropped; found by the differential test with the fast path's alternating CPUs).
/// Repeated: the clocks part only within one jiffy. A TC ingress only (XDP holds nothing).
fn held_fragments_are_given_back_on_another_cpu() {
    Case::new("held across CPUs", Env::Bare).steps(Vec::new()).run_then(Mode::Tc, |dp| {
        const TIMES: u16 = 50;
        let datagram = |id| {
            frame::fragments(&Pkt::udp("198.51.100.7:40000", "203.0.113.1:9999").payload_len(3000).build(), 1480, id)
        };
        let on = |cpu| hairpin_lab::pin_thread_to_cpu(cpu).expect("pinning to CPUs 0 and 1 (two are needed)");
        for id in 0..TIMES {
            let (f, other) = (datagram(id), datagram(id + 1000));
            // CPU 0 reads its clock (a fragment held for a datagram that never comes), then
            // CPU 1 holds the second fragment, then the first comes on CPU 0.
            on(0);
            dp.run(Hook::WanIngress, &other[2]);
            on(1);
            dp.run(Hook::WanIngress, &f[1]);
            on(0);
            let (_, out) = dp.run(Hook::WanIngress, &f[0]);
            assert!(out == joined(&f[0], &f[1]), "datagram {id}: {}", frame::diff(&out, &joined(&f[0], &f[1])));
        }
        assert_eq!(dp.side_counter(hairpin_common::Counter::FragmentsReleased), u64::from(TIMES));
    });
}

/// A datagram whose identification was seen more than the reassembly timeout ago is a new
/// one: its later fragments that come before its first are held as any other's (the old
/// datagram's entry, never removed, made them pass untranslated, lost; found by the
/// differential test once time passed in it). A TC ingress only (XDP holds nothing).
fn a_datagram_seen_past_the_reassembly_timeout_is_a_new_one() {
    let query = Pkt::udp("198.51.100.7:40000", "203.0.113.1:5353").payload_len(3000);
    let (q, r) = (three(&query), three(&query.with("198.51.100.7:40000", "192.168.0.2:53")));
    // Its tables' times move back by `wait`: there are none before boot.
    let wait = hairpin_common::consts::FRAG_TIMEOUT_NS + 1_000_000_000;
    dp::up_for(wait + 1_000_000_000);
    let case =
        Case::new("an identification used again", Env::Bare).forward(L4::Udp, "203.0.113.1:5353", "192.168.0.2:53");
    case.steps(Vec::new()).run_then(Mode::Tc, move |dp| {
        let counted = |dp: &Dataplane, r| dp.counter(Hook::WanIngress, r);
        for f in &q {
            dp.run(Hook::WanIngress, f);
        }
        assert_eq!(counted(dp, Reason::IngressFragment), 2, "the first datagram, in order");
        dp.pass_time(wait);
        // The next datagram of that identification, its second fragment first.
        dp.run(Hook::WanIngress, &q[1]);
        assert_eq!(counted(dp, Reason::HeldFragment), 1, "the second fragment, before its first, held");
        let (_, out) = dp.run(Hook::WanIngress, &q[0]);
        assert!(
            out == joined(&r[0], &r[1]),
            "the first, with the second: {}",
            frame::diff(&out, &joined(&r[0], &r[1]))
        );
        let (_, out) = dp.run(Hook::WanIngress, &q[2]);
        assert!(out == r[2], "the third, translated: {}", frame::diff(&out, &r[2]));
    });
}

/// TC alone, as `tc::` (the filter the 6.12 guest runs).
mod cpus {
    mod tc {
        #[test]
        fn held_fragments_are_given_back_on_another_cpu() {
            super::super::held_fragments_are_given_back_on_another_cpu()
        }
    }
}

/// TC alone, as `tc::`.
mod time {
    mod tc {
        #[test]
        fn a_datagram_seen_past_the_reassembly_timeout_is_a_new_one() {
            super::super::a_datagram_seen_past_the_reassembly_timeout_is_a_new_one()
        }
    }
}

in_both_modes! {
    another_hosts_fragments_are_never_held,
    fragmented_datagrams_are_translated_whole,
    fragments_before_their_first_are_held_and_given_back,
    fragments_of_unknown_datagrams_pass_but_never_leak,
    fragments_the_kernel_makes_at_egress_are_translated,
}
