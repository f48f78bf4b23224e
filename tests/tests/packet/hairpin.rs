//! Hairpin: LAN clients reaching a forward or another host's binding through the public address, the source ports they get, and the gateway without hairpin.

use super::*;

fn hairpin_tcp_rewrites_source_and_restores_both_ends(mode: Mode) {
    let out = Pkt::tcp("192.168.0.3:1025", PUBLIC_80);
    let dnat = out.with("192.168.0.3:1025", SERVER_80);
    let snat = out.with("192.168.0.1:1025", SERVER_80);
    let reply = Pkt::tcp(SERVER_80, "192.168.0.1:1025");
    let restored = reply.with(SERVER_80, "192.168.0.3:1025");
    let unsnat = reply.with(PUBLIC_80, "192.168.0.3:1025");
    Case::new("hairpin tcp", Env::Bare)
        .forward(L4::Tcp, PUBLIC_80, SERVER_80)
        .steps(vec![
            step("client dials the public address", Hook::LanIngress, &out, Reason::IngressNewFlow, Some(&dnat)),
            step(
                "leaving for the server: source = gateway, client port kept",
                Hook::LanEgress,
                &dnat,
                Reason::EgressFlow,
                Some(&snat),
            ),
            step(
                "server answers the gateway: client restored",
                Hook::LanIngress,
                &reply,
                Reason::IngressFlow,
                Some(&restored),
            ),
            step(
                "leaving for the client: source = public address",
                Hook::LanEgress,
                &restored,
                Reason::EgressFlow,
                Some(&unsnat),
            ),
        ])
        .leaves_flows(2)
        .run_then(mode, |dp| assert!(dp.ct().iter().any(|(_, e)| e.flags & CT_F_REPLY != 0)));
}

fn hairpin_and_wan_udp(mode: Mode) {
    let q = Pkt::udp("192.168.0.3:33000", "203.0.113.1:5353");
    let r = Pkt::udp("192.168.0.2:53", "192.168.0.1:33000");
    let wq = Pkt::udp("198.51.100.7:5000", "203.0.113.1:5353");
    let wr = Pkt::udp("192.168.0.2:53", "198.51.100.7:5000");
    Case::new("udp", Env::Bare)
        .forward(L4::Udp, "203.0.113.1:5353", "192.168.0.2:53")
        .steps(vec![
            step(
                "hairpin query in",
                Hook::LanIngress,
                &q,
                Reason::IngressNewFlow,
                Some(&q.with("192.168.0.3:33000", "192.168.0.2:53")),
            ),
            step(
                "hairpin query out",
                Hook::LanEgress,
                &q.with("192.168.0.3:33000", "192.168.0.2:53"),
                Reason::EgressFlow,
                Some(&q.with("192.168.0.1:33000", "192.168.0.2:53")),
            ),
            step(
                "hairpin answer in",
                Hook::LanIngress,
                &r,
                Reason::IngressFlow,
                Some(&r.with("192.168.0.2:53", "192.168.0.3:33000")),
            ),
            step(
                "hairpin answer out",
                Hook::LanEgress,
                &r.with("192.168.0.2:53", "192.168.0.3:33000"),
                Reason::EgressFlow,
                Some(&r.with("203.0.113.1:5353", "192.168.0.3:33000")),
            ),
            step(
                "wan query in",
                Hook::WanIngress,
                &wq,
                Reason::IngressNewFlow,
                Some(&wq.with("198.51.100.7:5000", "192.168.0.2:53")),
            ),
            step(
                "wan answer out",
                Hook::WanEgress,
                &wr,
                Reason::EgressFlow,
                Some(&wr.with("203.0.113.1:5353", "198.51.100.7:5000")),
            ),
        ])
        .run(mode);
}

/// With hairpin off, a LAN client dialling the public address gets destination NAT only.
fn no_hairpin_rewrites_destination_only(mode: Mode) {
    let out = Pkt::tcp("192.168.0.3:1025", PUBLIC_80);
    let dnat = out.with("192.168.0.3:1025", SERVER_80);
    Case::new("no hairpin", Env::Bare)
        .config(Config { flags: 0, ..dp::lab_config() })
        .forward(L4::Tcp, PUBLIC_80, SERVER_80)
        .steps(vec![
            step("destination rewritten", Hook::LanIngress, &out, Reason::IngressNewFlow, Some(&dnat)),
            step("source left alone", Hook::LanEgress, &dnat, Reason::EgressFlow, None),
            step(
                "the server's direct reply never needed the gateway; if it came, the public source is restored",
                Hook::LanEgress,
                &Pkt::tcp(SERVER_80, "192.168.0.3:1025"),
                Reason::EgressFlow,
                Some(&Pkt::tcp(PUBLIC_80, "192.168.0.3:1025")),
            ),
        ])
        .run(mode);
}

/// A hairpin source port held by another flow is not reused: the new flow gets another port
/// from the range, and its reply still finds the client.
fn hairpin_port_taken_allocates_another(mode: Mode) {
    Case::new("port taken", Env::Bare).forward(L4::Tcp, PUBLIC_80, SERVER_80).run_then(mode, port_taken);
}

/// The port the dataplane picks is its own choice: checked as code, not as a row.
fn port_taken(dp: &mut Dataplane) {
    // Another flow's reply entry already owns SERVER:80 -> GW:1025.
    let squatter = FlowKey::new(6, ep(SERVER_80), ep("192.168.0.1:1025"));
    let other = CtEntry {
        xlate: FlowKey::new(6, ep(PUBLIC_80), ep("192.168.0.4:1025")),
        flags: CT_F_REPLY,
        ..Default::default()
    };
    dp.insert_ct(squatter, other);

    let out = Pkt::tcp("192.168.0.3:1025", PUBLIC_80);
    let dnat = out.with("192.168.0.3:1025", SERVER_80);
    assert_eq!(dp.run(Hook::LanIngress, &out.build()), (dp.pass(Hook::LanIngress), dnat.build()));
    let (v, snat) = dp.run(Hook::LanEgress, &dnat.build());
    assert_eq!(v, TC_NEXT);
    verify_checksums(&snat).unwrap();
    let port = u16::from_be_bytes([snat[34], snat[35]]);
    assert_ne!(port, 1025, "the taken port must not be reused");
    assert!(port >= 1024, "port {port} outside the range");
    assert_eq!(snat, out.with(&format!("192.168.0.1:{port}"), SERVER_80).build());
    // The reply to the new port reaches the right client; the squatter's entry is untouched.
    let reply = Pkt::tcp(SERVER_80, &format!("192.168.0.1:{port}"));
    assert_eq!(
        dp.run(Hook::LanIngress, &reply.build()),
        (dp.pass(Hook::LanIngress), reply.with(SERVER_80, "192.168.0.3:1025").build())
    );
    assert!(dp.ct().contains(&(squatter, other)));
}

/// When every port of the range is taken, the new flow is dropped and counted, and nothing of
/// it is left in the tables; existing flows keep working.
fn hairpin_port_exhaustion_drops_new_flows_only(mode: Mode) {
    let first = Pkt::tcp("192.168.0.3:40000", PUBLIC_80);
    let second = Pkt::tcp("192.168.0.4:40000", PUBLIC_80);
    Case::new("exhaustion", Env::Bare)
        .config(Config { port_min: 5000, port_max: 5000, ..dp::lab_config() })
        .forward(L4::Tcp, PUBLIC_80, SERVER_80)
        .steps(vec![
            step(
                "first flow takes the only port",
                Hook::LanIngress,
                &first,
                Reason::IngressNewFlow,
                Some(&first.with("192.168.0.3:40000", SERVER_80)),
            ),
            step(
                "its source is that port",
                Hook::LanEgress,
                &first.with("192.168.0.3:40000", SERVER_80),
                Reason::EgressFlow,
                Some(&first.with("192.168.0.1:5000", SERVER_80)),
            ),
            step("second flow: no port left", Hook::LanIngress, &second, Reason::DropNoPort, None),
            step(
                "first flow still translated",
                Hook::LanIngress,
                &first,
                Reason::IngressFlow,
                Some(&first.with("192.168.0.3:40000", SERVER_80)),
            ),
        ])
        // The dropped flow left no entry.
        .leaves_flows(2)
        .run(mode);
}

/// RFC 4787 REQ-9 / RFC 5382 REQ-8: a LAN host sending to another LAN host's public binding
/// reaches it, and the receiver sees the sender's own public binding as the source.
fn hairpin_to_dynamic_bindings(mode: Mode) {
    let a_out = Pkt::udp("192.168.0.3:7000", "198.51.100.7:3478");
    let b_out = Pkt::udp("192.168.0.4:8000", "198.51.100.7:3478");
    let b_tcp = Pkt::tcp("192.168.0.4:8000", "198.51.100.7:443");
    let a_to_b = Pkt::udp("192.168.0.3:7000", "203.0.113.1:8000");
    let b_to_a = Pkt::udp("192.168.0.4:8000", "203.0.113.1:7000");
    let c_to_b = Pkt::tcp("192.168.0.5:6000", "203.0.113.1:8000").flags(frame::TCP_SYN);
    Case::new("hairpin to bindings", Env::Gateway)
        .steps(vec![
            step("a binds udp 7000", Hook::LanIngress, &a_out, Reason::IngressMasquerade, None),
            step("b binds udp 8000", Hook::LanIngress, &b_out, Reason::IngressMasquerade, None),
            step("b binds tcp 8000", Hook::LanIngress, &b_tcp, Reason::IngressMasquerade, None),
            step(
                "a -> b's binding: to b",
                Hook::LanIngress,
                &a_to_b,
                Reason::IngressBinding,
                Some(&a_to_b.with("192.168.0.3:7000", "192.168.0.4:8000")),
            ),
            step(
                "b sees a's binding as the source",
                Hook::LanEgress,
                &a_to_b.with("192.168.0.3:7000", "192.168.0.4:8000"),
                Reason::EgressFlow,
                Some(&a_to_b.with("203.0.113.1:7000", "192.168.0.4:8000")),
            ),
            step(
                "b answers a's binding: to a",
                Hook::LanIngress,
                &b_to_a,
                Reason::IngressFlow,
                Some(&b_to_a.with("192.168.0.4:8000", "192.168.0.3:7000")),
            ),
            step(
                "a sees b's binding as the source",
                Hook::LanEgress,
                &b_to_a.with("192.168.0.4:8000", "192.168.0.3:7000"),
                Reason::EgressFlow,
                Some(&b_to_a.with("203.0.113.1:8000", "192.168.0.3:7000")),
            ),
            step(
                "tcp from a host without a binding: it gets one",
                Hook::LanIngress,
                &c_to_b,
                Reason::IngressBinding,
                Some(&c_to_b.with("192.168.0.5:6000", "192.168.0.4:8000")),
            ),
            step(
                "...and b sees it",
                Hook::LanEgress,
                &c_to_b.with("192.168.0.5:6000", "192.168.0.4:8000"),
                Reason::EgressFlow,
                Some(&c_to_b.with("203.0.113.1:6000", "192.168.0.4:8000")),
            ),
            step(
                "a port nobody bound: the gateway's own",
                Hook::LanIngress,
                &Pkt::udp("192.168.0.3:7000", "203.0.113.1:9000"),
                Reason::PassNoMapping,
                None,
            ),
        ])
        .run(mode);
}

/// RFC 5780's hairpinning test: a LAN host sending to its own public binding hears itself,
/// from that binding, every time. The flow's tuple reversed is its own: one entry serves both
/// directions, confirmed after its second packet has left, then on the fast path.
fn a_host_hears_itself_through_its_own_binding(mode: Mode) {
    let bind = Pkt::udp("192.168.0.3:7000", "198.51.100.7:3478");
    let own = Pkt::udp("192.168.0.3:7000", "203.0.113.1:7000");
    let routed = own.with("192.168.0.3:7000", "192.168.0.3:7000");
    let heard = own.with("203.0.113.1:7000", "192.168.0.3:7000");
    let leaves = |what| step(what, Hook::LanEgress, &routed, Reason::EgressFlow, Some(&heard));
    Case::new("own binding", Env::Fast(0))
        .steps(vec![
            step("binds udp 7000", Hook::LanIngress, &bind, Reason::IngressMasquerade, None),
            step("to its own binding: back to itself", Hook::LanIngress, &own, Reason::IngressBinding, Some(&routed)),
            leaves("from its binding, the flow confirmed: its own twin has left"),
            step(
                "again: back out of the LAN on the fast path",
                Hook::LanIngress,
                &own,
                Reason::FastTx,
                Some(&heard.forwarded(CLIENT_MAC, LAN_MAC)),
            ),
        ])
        // The binding's flow (two entries) and the flow to itself (one).
        .leaves_flows(3)
        .run(mode);
}

/// A forward's target sending to its own forward from the forwarded port: both directions of
/// the hairpinned flow would leave ingress as one tuple, which egress cannot tell apart, so it
/// is refused and counted (a limitation the differential test found; from another port it is
/// hairpinned).
fn a_server_to_its_own_forward_from_its_port_is_refused(mode: Mode) {
    let own_port = Pkt::udp("192.168.0.2:53", "203.0.113.1:5353");
    let other_port = Pkt::udp("192.168.0.2:40000", "203.0.113.1:5353");
    Case::new("server to its own forward", Env::Gateway)
        .forward(L4::Udp, "203.0.113.1:5353", "192.168.0.2:53")
        .steps(vec![
            step("from the forwarded port: refused", Hook::LanIngress, &own_port, Reason::DropNoPort, None),
            step(
                "from another port: hairpinned",
                Hook::LanIngress,
                &other_port,
                Reason::IngressNewFlow,
                Some(&other_port.with("192.168.0.2:40000", "192.168.0.2:53")),
            ),
        ])
        .leaves_flows(2)
        .run(mode);
}

in_both_modes! {
    a_server_to_its_own_forward_from_its_port_is_refused,
    a_host_hears_itself_through_its_own_binding,
    hairpin_tcp_rewrites_source_and_restores_both_ends,
    hairpin_and_wan_udp,
    no_hairpin_rewrites_destination_only,
    hairpin_port_taken_allocates_another,
    hairpin_port_exhaustion_drops_new_flows_only,
    hairpin_to_dynamic_bindings,
}
