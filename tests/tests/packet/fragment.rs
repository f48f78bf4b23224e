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
/// or come before its first fragment) passes; at egress on the WAN one with a LAN source is
/// dropped, never let out.
fn fragments_of_unknown_datagrams_pass_but_never_leak(mode: Mode) {
    let masq = three(&Pkt::udp("192.168.0.3:40000", "198.51.100.7:53").payload_len(3000));
    let to_gateway = three(&Pkt::udp("198.51.100.7:40000", "203.0.113.1:9999").payload_len(3000));
    Case::new("unknown fragments", Env::Bare)
        .steps(vec![
            raw("later fragment first, for the gateway", Hook::WanIngress, to_gateway[1].clone(), Reason::PassFragment),
            raw("its first one, for the gateway", Hook::WanIngress, to_gateway[0].clone(), Reason::PassNoMapping),
            raw("a LAN host's later fragment, unknown", Hook::WanEgress, masq[1].clone(), Reason::DropLanSourceToWan),
        ])
        .leaves_flows(0)
        .run(mode);
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

in_both_modes! {
    fragmented_datagrams_are_translated_whole,
    fragments_of_unknown_datagrams_pass_but_never_leak,
    fragments_the_kernel_makes_at_egress_are_translated,
}
