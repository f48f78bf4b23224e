//! Masquerade: LAN hosts to the internet from their endpoint-independent bindings, the ports they take, and UDP filtering.

use super::*;

fn masquerade_lan_to_internet_tcp_and_udp(mode: Mode) {
    let out = Pkt::tcp("192.168.0.3:40000", "198.51.100.7:443");
    let back = Pkt::tcp("198.51.100.7:443", "203.0.113.1:40000");
    let q = Pkt::udp("192.168.0.3:33000", "198.51.100.7:53").without_udp_checksum();
    let a = Pkt::udp("198.51.100.7:53", "203.0.113.1:33000");
    Case::new("masquerade", Env::Gateway)
        .forward(L4::Tcp, PUBLIC_80, SERVER_80)
        .steps(vec![
            step(
                "LAN -> internet: flow created, nothing rewritten yet",
                Hook::LanIngress,
                &out,
                Reason::IngressMasquerade,
                None,
            ),
            step(
                "leaving the WAN: public source, client port kept",
                Hook::WanEgress,
                &out,
                Reason::EgressFlow,
                Some(&out.with("203.0.113.1:40000", "198.51.100.7:443")),
            ),
            step(
                "reply: client restored",
                Hook::WanIngress,
                &back,
                Reason::IngressFlow,
                Some(&back.with("198.51.100.7:443", "192.168.0.3:40000")),
            ),
            step(
                "reply leaves the LAN side untouched",
                Hook::LanEgress,
                &back.with("198.51.100.7:443", "192.168.0.3:40000"),
                Reason::EgressFlow,
                None,
            ),
            step("udp out", Hook::LanIngress, &q, Reason::IngressMasquerade, None),
            step(
                "udp out at egress, zero checksum kept",
                Hook::WanEgress,
                &q,
                Reason::EgressFlow,
                Some(&q.with("203.0.113.1:33000", "198.51.100.7:53")),
            ),
            step(
                "udp answer",
                Hook::WanIngress,
                &a,
                Reason::IngressFlow,
                Some(&a.with("198.51.100.7:53", "192.168.0.3:33000")),
            ),
            step(
                "unsolicited from the internet: to the gateway's stack",
                Hook::WanIngress,
                &Pkt::udp("198.51.100.7:53", "203.0.113.1:33001"),
                Reason::PassNoMapping,
                None,
            ),
            step(
                "LAN -> the gateway itself: not masqueraded",
                Hook::LanIngress,
                &Pkt::tcp("192.168.0.3:40001", "192.168.0.1:22"),
                Reason::PassNoMapping,
                None,
            ),
            step(
                "LAN -> another LAN host via the gateway: not masqueraded",
                Hook::LanIngress,
                &Pkt::tcp("192.168.0.3:40001", "192.168.0.9:22"),
                Reason::PassNoMapping,
                None,
            ),
        ])
        .run_then(mode, |dp| {
            assert_eq!(dp.ct().len(), 4);
            assert!(dp.ct().iter().all(|(_, e)| e.flags & hairpin_common::CT_F_MASQ != 0));
        });
}

/// The public source port of a masqueraded flow from `pkt` (after egress).
fn masqueraded_port(dp: &mut Dataplane, pkt: &Pkt) -> u16 {
    let (_, out) = dp.run(Hook::WanEgress, &pkt.build());
    verify_checksums(&out).unwrap();
    let port = u16::from_be_bytes([out[34], out[35]]);
    assert_eq!(out, pkt.with(&format!("203.0.113.1:{port}"), &pkt.dst.to_string()).build());
    port
}

/// A masqueraded flow never takes a public port that a port-forward owns, nor one another flow
/// holds for the same peer; with none left it is dropped and counted.
fn masquerade_ports_avoid_forwards_and_live_flows(mode: Mode) {
    Case::new("masqports", Env::Gateway).forward(L4::Tcp, "203.0.113.1:8080", SERVER_80).run_then(mode, |dp| {
        // The client's own port is a forwarded public port: it must get another.
        let c = Pkt::tcp("192.168.0.3:8080", "198.51.100.7:443");
        assert_eq!(dp.run(Hook::LanIngress, &c.build()), (dp.pass(Hook::LanIngress), c.build()));
        let port = masqueraded_port(dp, &c);
        assert!(port != 8080 && port >= 1024, "masqueraded to {port}");
        // Two clients with the same port to the same peer: the second gets another port.
        let a = Pkt::udp("192.168.0.3:7000", "198.51.100.7:53");
        let b = Pkt::udp("192.168.0.4:7000", "198.51.100.7:53");
        dp.run(Hook::LanIngress, &a.build());
        dp.run(Hook::LanIngress, &b.build());
        assert_eq!(masqueraded_port(dp, &a), 7000);
        assert_ne!(masqueraded_port(dp, &b), 7000, "two flows share one public tuple");
    });
    let a = Pkt::udp("192.168.0.3:7000", "198.51.100.7:53");
    let b = Pkt::udp("192.168.0.4:7000", "198.51.100.7:53");
    let b2 = a.with("192.168.0.3:7000", "198.51.100.8:53");
    let keys = [a.key(), b.key(), b2.key()];
    Case::new("masq exhaustion", Env::Gateway)
        .config(Config { port_min: 7000, port_max: 7000, ..dp::lab_config() })
        .steps(vec![
            step("first flow takes the only port", Hook::LanIngress, &a, Reason::IngressMasquerade, None),
            step("second: no port left", Hook::LanIngress, &b, Reason::DropNoPort, None),
            step(
                "the first host's binding serves its other destinations",
                Hook::LanIngress,
                &b2,
                Reason::IngressMasquerade,
                None,
            ),
        ])
        .leaves_flows(4)
        .run_then(mode, move |dp| {
            // Each flow made, and the one refused, was reported through the ring buffer.
            let events = dp.events();
            let kinds: Vec<_> = events.iter().map(|e| (e.kind, e.key)).collect();
            use hairpin_common::{EVENT_NEW_FLOW, EVENT_REFUSED};
            assert_eq!(kinds, [(EVENT_NEW_FLOW, keys[0]), (EVENT_REFUSED, keys[1]), (EVENT_NEW_FLOW, keys[2])]);
            assert_eq!(events[1].detail, Reason::DropNoPort as u32);
            assert_eq!(events[0].xlate.src_ep(), dp::ep("203.0.113.1:7000"), "the translated tuple");
            assert_eq!(dp.exhausted(17, Reason::DropNoPort), 1, "counted as UDP port exhaustion");
            assert_eq!(dp.exhausted(6, Reason::DropNoPort) + dp.exhausted(17, Reason::DropFlowInsert), 0);
        });
}

/// RFC 4787 REQ-1 / RFC 5382 REQ-1: one LAN endpoint keeps one public port for every
/// destination, so no other host may take it. Filtering (UDP only) decides whether other WAN
/// endpoints reach it: address-and-port-dependent by default, endpoint-independent on request.
fn mappings_are_endpoint_independent_and_udp_filtering_switchable(mode: Mode) {
    let a1 = Pkt::udp("192.168.0.3:7000", "198.51.100.7:53");
    let a2 = Pkt::udp("192.168.0.3:7000", "198.51.100.8:53");
    let stranger = Pkt::udp("198.51.100.9:999", "203.0.113.1:7000");
    let tcp1 = Pkt::tcp("192.168.0.3:7000", "198.51.100.7:443");
    let tcp2 = Pkt::tcp("192.168.0.3:7000", "198.51.100.8:443");
    let sent = [a1.clone(), a2.clone(), tcp1.clone(), tcp2.clone()];
    Case::new("eim, address-and-port-dependent filtering", Env::Gateway)
        .steps(vec![
            step("udp to a first host", Hook::LanIngress, &a1, Reason::IngressMasquerade, None),
            step("udp to a second host", Hook::LanIngress, &a2, Reason::IngressMasquerade, None),
            step("tcp to a first host", Hook::LanIngress, &tcp1, Reason::IngressMasquerade, None),
            step("tcp to a second host", Hook::LanIngress, &tcp2, Reason::IngressMasquerade, None),
            step(
                "a host never sent to: filtered, to the gateway's stack",
                Hook::WanIngress,
                &stranger,
                Reason::PassFiltered,
                None,
            ),
            step(
                "tcp is always filtered so",
                Hook::WanIngress,
                &Pkt::tcp("198.51.100.9:999", "203.0.113.1:7000").flags(frame::TCP_SYN),
                Reason::PassFiltered,
                None,
            ),
        ])
        .run_then(mode, move |dp| {
            for p in &sent {
                assert_eq!(masqueraded_port(dp, p), 7000, "one public port for every destination: {p:?}");
            }
            // Another host's port 7000 to a third destination: 7000 is bound, even there.
            let b = Pkt::udp("192.168.0.4:7000", "198.51.100.10:53");
            dp.run(Hook::LanIngress, &b.build());
            assert_ne!(masqueraded_port(dp, &b), 7000, "a bound port went to a second host");
        });
    let eif = Config { flags: dp::lab_config().flags | hairpin_common::CFG_F_UDP_EIF, ..dp::lab_config() };
    let back = stranger.with("198.51.100.9:999", "192.168.0.3:7000");
    let answer = Pkt::udp("192.168.0.3:7000", "198.51.100.9:999");
    Case::new("eim, endpoint-independent filtering", Env::Gateway)
        .config(eif)
        .steps(vec![
            step("udp out binds 7000", Hook::LanIngress, &a1, Reason::IngressMasquerade, None),
            step(
                "bound",
                Hook::WanEgress,
                &a1,
                Reason::EgressFlow,
                Some(&a1.with("203.0.113.1:7000", "198.51.100.7:53")),
            ),
            step("any host may send to it", Hook::WanIngress, &stranger, Reason::IngressBinding, Some(&back)),
            step("the answer belongs to that flow", Hook::LanIngress, &answer, Reason::IngressFlow, None),
            step(
                "and leaves from the bound port",
                Hook::WanEgress,
                &answer,
                Reason::EgressFlow,
                Some(&answer.with("203.0.113.1:7000", "198.51.100.9:999")),
            ),
            step("tcp to a first host", Hook::LanIngress, &tcp1, Reason::IngressMasquerade, None),
            step(
                "tcp stays filtered",
                Hook::WanIngress,
                &Pkt::tcp("198.51.100.9:999", "203.0.113.1:7000").flags(frame::TCP_SYN),
                Reason::PassFiltered,
                None,
            ),
        ])
        .run_then(mode, move |dp| {
            let inbound = dp
                .ct()
                .into_iter()
                .find(|(k, _)| *k == FlowKey::new(17, ep("198.51.100.9:999"), ep("203.0.113.1:7000")));
            let (_, e) = inbound.expect("the inbound flow's entry");
            assert_ne!(e.flags & hairpin_common::CT_F_INBOUND, 0, "marked inbound: its outbound side refreshes it");
        });
}

in_both_modes! {
    masquerade_lan_to_internet_tcp_and_udp,
    masquerade_ports_avoid_forwards_and_live_flows,
    mappings_are_endpoint_independent_and_udp_filtering_switchable,
}
