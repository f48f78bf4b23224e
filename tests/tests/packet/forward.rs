//! Port-forwards: destination NAT from the WAN and the replies restored, what passes untouched, malformed and foreign tuples, TCP state per direction.

use super::*;

fn wan_port_forward_tcp_with_port_change(mode: Mode) {
    let syn = Pkt::tcp("198.51.100.7:40000", "203.0.113.1:8080");
    let dnat = syn.with("198.51.100.7:40000", SERVER_80);
    let reply = Pkt::tcp(SERVER_80, "198.51.100.7:40000");
    let unsnat = reply.with("203.0.113.1:8080", "198.51.100.7:40000");
    Case::new("wan tcp", Env::Bare)
        .forward(L4::Tcp, "203.0.113.1:8080", SERVER_80)
        .steps(vec![
            step(
                "first packet: flow created, destination rewritten",
                Hook::WanIngress,
                &syn,
                Reason::IngressNewFlow,
                Some(&dnat),
            ),
            step("towards the server: source kept", Hook::LanEgress, &dnat, Reason::EgressFlow, None),
            step("reply at ingress: destination already right", Hook::LanIngress, &reply, Reason::IngressFlow, None),
            step("reply at egress: public source restored", Hook::WanEgress, &reply, Reason::EgressFlow, Some(&unsnat)),
            step("second packet uses the flow", Hook::WanIngress, &syn, Reason::IngressFlow, Some(&dnat)),
        ])
        // One entry per direction; only the reply needs a source rewrite.
        .leaves_flows(2)
        // Each direction counts what it carried: packets and IPv4 total lengths.
        .run_then(mode, move |dp| {
            let len = syn.build().len() as u64 - 14;
            assert_eq!(dp.counted(&syn.key()), (2, 2 * len), "the original direction");
            assert_eq!(dp.counted(&reply.key()), (1, len), "the reply");
        });
}

fn udp_without_checksum_stays_without(mode: Mode) {
    let q = Pkt::udp("198.51.100.7:5000", "203.0.113.1:5353").without_udp_checksum();
    let r = Pkt::udp("192.168.0.2:53", "198.51.100.7:5000").without_udp_checksum();
    let h = Pkt::udp("192.168.0.3:40000", "203.0.113.1:5353").without_udp_checksum();
    Case::new("udp csum 0", Env::Bare)
        .forward(L4::Udp, "203.0.113.1:5353", "192.168.0.2:53")
        .steps(vec![
            step(
                "xdp rewrite keeps 0",
                Hook::WanIngress,
                &q,
                Reason::IngressNewFlow,
                Some(&q.with("198.51.100.7:5000", "192.168.0.2:53")),
            ),
            step(
                "tc rewrite keeps 0",
                Hook::WanEgress,
                &r,
                Reason::EgressFlow,
                Some(&r.with("203.0.113.1:5353", "198.51.100.7:5000")),
            ),
            step(
                "hairpin in",
                Hook::LanIngress,
                &h,
                Reason::IngressNewFlow,
                Some(&h.with("192.168.0.3:40000", "192.168.0.2:53")),
            ),
            step(
                "hairpin out",
                Hook::LanEgress,
                &h.with("192.168.0.3:40000", "192.168.0.2:53"),
                Reason::EgressFlow,
                Some(&h.with("192.168.0.1:40000", "192.168.0.2:53")),
            ),
        ])
        .run(mode);
}

fn ipv4_options_are_skipped_and_kept(mode: Mode) {
    // NOP NOP NOP EOL (IHL 6), and the longest header: 40 bytes of options (IHL 15).
    let short = Pkt::tcp("198.51.100.7:40001", PUBLIC_80).options(&[1, 1, 1, 0]);
    let mut rr = vec![7, 39, 4];
    rr.resize(39, 0);
    rr.push(0);
    let long = Pkt::udp("192.168.0.3:40002", "203.0.113.1:5353").options(&rr);
    Case::new("ip options", Env::Bare)
        .forward(L4::Tcp, PUBLIC_80, SERVER_80)
        .forward(L4::Udp, "203.0.113.1:5353", "192.168.0.2:53")
        .steps(vec![
            step(
                "IHL 6, tcp",
                Hook::WanIngress,
                &short,
                Reason::IngressNewFlow,
                Some(&short.with("198.51.100.7:40001", SERVER_80)),
            ),
            step(
                "IHL 15, udp hairpin in",
                Hook::LanIngress,
                &long,
                Reason::IngressNewFlow,
                Some(&long.with("192.168.0.3:40002", "192.168.0.2:53")),
            ),
            step(
                "IHL 15, udp hairpin out",
                Hook::LanEgress,
                &long.with("192.168.0.3:40002", "192.168.0.2:53"),
                Reason::EgressFlow,
                Some(&long.with("192.168.0.1:40002", "192.168.0.2:53")),
            ),
        ])
        .run(mode);
}

/// Frames that are not IPv4 TCP/UDP, or not ours, pass untouched with their reason counted.
fn pass_through_untouched(mode: Mode) {
    let mut arp = frame::eth(0x0806);
    arp.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    arp.extend_from_slice(&[0u8; 20]);
    let mut ipv6 = frame::eth(0x86dd);
    ipv6.extend_from_slice(&[0x60, 0, 0, 0, 0, 8, 17, 64]);
    ipv6.extend_from_slice(&[0u8; 40]);
    // Fragments of a datagram to a port nothing forwards (see fragment.rs for forwarded ones).
    let fragment = {
        let mut f = Pkt::tcp("198.51.100.7:40000", "203.0.113.1:22").build();
        f[14 + 6] |= 0x20; // more fragments
        f
    };
    let later_fragment = {
        let mut f = Pkt::tcp("198.51.100.7:40000", "203.0.113.1:22").build();
        f[14 + 6] = 0;
        f[14 + 7] = 185; // offset 1480
        f
    };
    let icmp = {
        let mut f = Pkt::udp("198.51.100.7:40000", PUBLIC_80).build();
        f[14 + 9] = 1; // protocol ICMP
        f
    };
    Case::new("pass", Env::Bare)
        .forward(L4::Tcp, PUBLIC_80, SERVER_80)
        .steps(vec![
            raw("arp", Hook::WanIngress, arp.clone(), Reason::PassNotIpv4),
            raw("arp at egress", Hook::LanEgress, arp, Reason::PassNotIpv4),
            raw("ipv6", Hook::LanIngress, ipv6, Reason::PassNotIpv4),
            raw("first fragment", Hook::WanIngress, fragment, Reason::PassNoMapping),
            raw("later fragment", Hook::WanIngress, later_fragment, Reason::PassFragment),
            raw("icmp", Hook::WanIngress, icmp, Reason::PassOtherProto),
            step(
                "unmapped port",
                Hook::WanIngress,
                &Pkt::tcp("198.51.100.7:40000", "203.0.113.1:22"),
                Reason::PassNoMapping,
                None,
            ),
            step(
                "unmapped protocol",
                Hook::WanIngress,
                &Pkt::udp("198.51.100.7:40000", PUBLIC_80),
                Reason::PassNoMapping,
                None,
            ),
            step(
                "gateway's own traffic at egress",
                Hook::WanEgress,
                &Pkt::tcp("203.0.113.1:22", "198.51.100.7:40000"),
                Reason::PassEgressNoFlow,
                None,
            ),
        ])
        // Nothing passed through created a flow.
        .leaves_flows(0)
        .run(mode);
}

/// Inconsistent headers are dropped and counted, never rewritten.
fn malformed_headers_are_dropped(mode: Mode) {
    let good = Pkt::tcp("198.51.100.7:40000", PUBLIC_80).build();
    let truncated = good[..good.len() - 5].to_vec(); // total length says more than arrived
    let mut ihl4 = good.clone();
    ihl4[14] = 0x44;
    let mut version6 = good.clone();
    version6[14] = 0x65;
    let tcp_cut = good[..14 + 20 + 10].to_vec(); // half a TCP header
    let ip_cut = good[..14 + 12].to_vec(); // half an IPv4 header
    let no_ip = frame::eth(0x0800); // IPv4 ethertype, nothing after
    let mut steps = vec![
        raw("truncated payload", Hook::WanIngress, truncated, Reason::DropMalformed),
        raw("IHL 4", Hook::WanIngress, ihl4, Reason::DropMalformed),
        raw("version 6 in an IPv4 frame", Hook::WanIngress, version6, Reason::DropMalformed),
        raw("half a TCP header", Hook::WanIngress, tcp_cut.clone(), Reason::DropMalformed),
        raw("half a TCP header at egress", Hook::LanEgress, tcp_cut, Reason::DropMalformed),
    ];
    // The kernel's skb test run refuses IPv4 frames shorter than an IPv4 header (EINVAL), so
    // TC programs cannot be fed these; XDP ingress can.
    if mode == Mode::Xdp {
        steps.push(raw("half an IPv4 header", Hook::LanIngress, ip_cut, Reason::DropMalformed));
        steps.push(raw("no IPv4 header at all", Hook::WanIngress, no_ip, Reason::DropMalformed));
    }
    Case::new("malformed", Env::Bare).forward(L4::Tcp, PUBLIC_80, SERVER_80).steps(steps).leaves_flows(0).run(mode);
}

/// Two forwards to one service, dialled from one client port: the second flow's reply tuple
/// (server -> client) is the first flow's, so it takes another source port, as netfilter's
/// null binding does, and ingress writes that port (its packets would otherwise leave ingress
/// like the first flow's). Each flow's replies go back from its own public port, on the slow
/// path as on the fast one.
fn two_forwards_to_one_service_never_cross(mode: Mode) {
    let first = Pkt::tcp("198.51.100.7:40000", PUBLIC_80);
    let second = Pkt::tcp("198.51.100.7:40000", "203.0.113.1:8080");
    Case::new("two forwards, one service", Env::Bare)
        .forward(L4::Tcp, PUBLIC_80, SERVER_80)
        .forward(L4::Tcp, "203.0.113.1:8080", SERVER_80)
        .steps(vec![step(
            "first flow",
            Hook::WanIngress,
            &first,
            Reason::IngressNewFlow,
            Some(&first.with("198.51.100.7:40000", SERVER_80)),
        )])
        .run_then(mode, move |dp| {
            let (_, out) = dp.run(Hook::WanIngress, &second.build());
            verify_checksums(&out).unwrap();
            let port = u16::from_be_bytes([out[34], out[35]]);
            assert_ne!(port, 40000, "the second flow took another source port");
            let moved = format!("198.51.100.7:{port}");
            assert_eq!(out, second.with(&moved, SERVER_80).build(), "its destination and its new source port");
            let to_second = Pkt::tcp(SERVER_80, &moved);
            let to_first = Pkt::tcp(SERVER_80, "198.51.100.7:40000");
            run_case(
                "two forwards, one service",
                dp,
                &[
                    step(
                        "the second leaves as it is",
                        Hook::LanEgress,
                        &second.with(&moved, SERVER_80),
                        Reason::EgressFlow,
                        None,
                    ),
                    step(
                        "the first too",
                        Hook::LanEgress,
                        &first.with("198.51.100.7:40000", SERVER_80),
                        Reason::EgressFlow,
                        None,
                    ),
                    step(
                        "the server answers the second: its forward's port, the client's own",
                        Hook::LanIngress,
                        &to_second,
                        Reason::IngressFlow,
                        Some(&to_second.with("192.168.0.2:8080", "198.51.100.7:40000")),
                    ),
                    step(
                        "...from the second forward's public port",
                        Hook::WanEgress,
                        &to_second.with("192.168.0.2:8080", "198.51.100.7:40000"),
                        Reason::EgressFlow,
                        Some(&to_second.with("203.0.113.1:8080", "198.51.100.7:40000")),
                    ),
                    step("the server answers the first", Hook::LanIngress, &to_first, Reason::IngressFlow, None),
                    step(
                        "...from the first forward's public port",
                        Hook::WanEgress,
                        &to_first,
                        Reason::EgressFlow,
                        Some(&to_first.with(PUBLIC_80, "198.51.100.7:40000")),
                    ),
                ],
            );
            assert_eq!((dp.ct().len(), dp.egress().len()), (4, 4));
        });
}

/// The dataplane records what each direction has seen, and the controller's state machine reads
/// the handshake, both FINs and an RST from it; an RST outside the window its receiver last
/// acknowledged is ignored for the state (counted), as netfilter ignores one.
fn tcp_state_is_tracked_per_direction(mode: Mode) {
    use hairpin_common::expiry::{TcpState, tcp_state};
    use hairpin_tests::frame::{TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};
    let out = |f| Pkt::tcp("198.51.100.7:40000", PUBLIC_80).flags(f);
    // As the kernel forwards it to the server (egress sees it leave).
    let routed = |f| Pkt::tcp("198.51.100.7:40000", SERVER_80).flags(f);
    let back = |f| Pkt::tcp(SERVER_80, "198.51.100.7:40000").flags(f);
    let state = |dp: &Dataplane| {
        let ct = dp.ct();
        let flags = |reply: bool| ct.iter().find(|(_, e)| (e.flags & CT_F_REPLY != 0) == reply).unwrap().1.flags;
        tcp_state(flags(false), flags(true))
    };
    let expect = move |dp: &mut Dataplane, hook, pkt: Pkt, want| {
        let (v, _) = dp.run(hook, &pkt.build());
        assert_eq!(v, dp.pass(hook));
        assert_eq!(state(dp), want, "after {:?} flags {:#04x}", hook, pkt.tcp_flags);
    };
    // Each sequence on a fresh dataplane: (hook, packet, the state after it), and how many
    // RSTs it ignored for being outside the window.
    let counting = move |name: &'static str, seq: Vec<(Hook, Pkt, TcpState)>, ignored: u64| {
        Case::new(name, Env::Bare).forward(L4::Tcp, PUBLIC_80, SERVER_80).run_then(mode, move |dp| {
            for (hook, pkt, want) in seq {
                expect(dp, hook, pkt, want);
            }
            let counted = dp.side_counter(hairpin_common::Counter::TcpRstOutOfWindow);
            assert_eq!(counted, ignored, "{name}: RSTs ignored");
        })
    };
    let sequence = |name, seq| counting(name, seq, 0);
    sequence(
        "handshake and both FINs",
        vec![
            (Hook::WanIngress, out(TCP_SYN), TcpState::Opening),
            (Hook::LanEgress, routed(TCP_SYN), TcpState::Opening),
            (Hook::LanIngress, back(TCP_SYN | TCP_ACK), TcpState::Opening),
            (Hook::WanEgress, back(TCP_SYN | TCP_ACK), TcpState::Opening),
            (Hook::WanIngress, out(TCP_ACK), TcpState::Established),
            (Hook::LanIngress, back(TCP_ACK), TcpState::Established),
            (Hook::WanIngress, out(TCP_FIN | TCP_ACK), TcpState::Closing),
            (Hook::LanIngress, back(TCP_FIN | TCP_ACK), TcpState::Closed),
        ],
    );
    sequence(
        "a handshake the kernel never forwarded (its filter dropped it)",
        vec![
            (Hook::WanIngress, out(TCP_SYN), TcpState::Opening),
            (Hook::LanIngress, back(TCP_SYN | TCP_ACK), TcpState::Opening),
            (Hook::WanIngress, out(TCP_ACK), TcpState::Opening),
        ],
    );
    sequence(
        "reset",
        vec![
            (Hook::WanIngress, out(TCP_SYN), TcpState::Opening),
            (Hook::LanIngress, back(TCP_RST | TCP_ACK), TcpState::Closed),
            // The client tries again from the same port: a new connection, not the old
            // one's closed state.
            (Hook::WanIngress, out(TCP_SYN), TcpState::Opening),
            (Hook::LanEgress, routed(TCP_SYN), TcpState::Opening),
            (Hook::LanIngress, back(TCP_SYN | TCP_ACK), TcpState::Opening),
            (Hook::WanEgress, back(TCP_SYN | TCP_ACK), TcpState::Opening),
            (Hook::WanIngress, out(TCP_ACK), TcpState::Established),
        ],
    );
    // RSTs are checked against what their receiver last acknowledged (the client's segments
    // acknowledge the server's data up to 5000; the server's, the client's up to 9000): a
    // spray from off the path, outside that window, is forwarded but leaves the state alone;
    // one near it closes the flow.
    let out_at = move |f, seq, ack| out(f).nums(seq, ack);
    let back_at = move |f, seq, ack| back(f).nums(seq, ack);
    counting(
        "an off-path RST spray, then a real RST",
        vec![
            (Hook::WanIngress, out_at(TCP_SYN, 8999, 0), TcpState::Opening),
            (Hook::LanEgress, routed(TCP_SYN).nums(8999, 0), TcpState::Opening),
            (Hook::LanIngress, back_at(TCP_SYN | TCP_ACK, 4999, 9000), TcpState::Opening),
            (Hook::WanEgress, back_at(TCP_SYN | TCP_ACK, 4999, 9000), TcpState::Opening),
            (Hook::WanIngress, out_at(TCP_ACK, 9000, 5000), TcpState::Established),
            (Hook::LanIngress, back_at(TCP_ACK, 5000, 9000), TcpState::Established),
            // To the server, pretending to be the client: far ahead of 9000, far behind it.
            (Hook::WanIngress, out_at(TCP_RST, 9000 + (1 << 30), 0), TcpState::Established),
            (Hook::WanIngress, out_at(TCP_RST | TCP_ACK, 9000u32.wrapping_sub(1 << 20), 5000), TcpState::Established),
            (Hook::WanIngress, out_at(TCP_RST, 9000 + 1500, 0), TcpState::Closed),
        ],
        2,
    );
    sequence(
        "an RST before its receiver acknowledged anything",
        vec![
            (Hook::WanIngress, out_at(TCP_SYN, 8999, 0), TcpState::Opening),
            (Hook::LanIngress, back_at(TCP_RST | TCP_ACK, 123_456_789, 9000), TcpState::Closed),
        ],
    );
    sequence(
        "both FINs, then the same tuple again",
        vec![
            (Hook::WanIngress, out(TCP_SYN), TcpState::Opening),
            (Hook::WanIngress, out(TCP_FIN | TCP_ACK), TcpState::Closing),
            (Hook::LanIngress, back(TCP_FIN | TCP_ACK), TcpState::Closed),
            (Hook::WanIngress, out(TCP_SYN), TcpState::Opening),
        ],
    );
    // A SYN on a flow still open is a retransmission: the flow stays.
    sequence(
        "SYN again while open",
        vec![
            (Hook::WanIngress, out(TCP_SYN), TcpState::Opening),
            (Hook::WanIngress, out(TCP_FIN | TCP_ACK), TcpState::Closing),
            (Hook::WanIngress, out(TCP_SYN), TcpState::Closing),
        ],
    );
}

/// A flow whose reply entry has gone (LRU eviction) no longer holds its public tuple, so its
/// original entry must not translate: the next packet that finds it stale (its last refresh a
/// second old or more, when the dataplane checks the twin) removes it and starts afresh.
fn an_original_entry_without_its_reply_is_never_used(mode: Mode) {
    Case::new("orphan", Env::Gateway).run_then(mode, |dp| {
        let out = Pkt::udp("192.168.0.3:33000", "198.51.100.7:53");
        let (verdict, _) = dp.run(Hook::LanIngress, &out.build());
        assert_eq!(verdict, dp.pass(Hook::LanIngress));
        let reply_key = FlowKey::new(17, ep("198.51.100.7:53"), ep("203.0.113.1:33000"));
        dp.remove_ct(&reply_key);
        assert_eq!(dp.ct().len(), 1, "the original entry, orphaned");
        let age = |dp: &mut Dataplane| {
            for (k, mut e) in dp.ct() {
                e.last_seen_ns = 0;
                dp.insert_ct(k, e);
            }
        };
        age(dp);
        run_case(
            "orphan",
            dp,
            &[step("the orphan is not used: a new flow", Hook::LanIngress, &out, Reason::IngressMasquerade, None)],
        );
        let ct = dp.ct();
        assert_eq!(ct.len(), 2, "{ct:#?}");
        assert!(ct.iter().any(|(k, _)| *k == reply_key), "the new flow claimed its reply tuple again");
        // Evicted again, and meanwhile another flow took the tuple: its entry is there, but
        // leads to another host. The orphan is still not used.
        dp.remove_ct(&reply_key);
        let other = FlowKey::new(17, ep("198.51.100.7:53"), ep("192.168.0.9:33000"));
        dp.insert_ct(reply_key, CtEntry { xlate: other, flags: CT_F_REPLY, ..Default::default() });
        age(dp);
        run_case(
            "orphan, tuple taken",
            dp,
            &[step("not used, and the tuple is not ours", Hook::LanIngress, &out, Reason::DropFlowInsert, None)],
        );
        let orig = FlowKey::new(17, ep("192.168.0.3:33000"), ep("198.51.100.7:53"));
        assert!(dp.ct().iter().all(|(k, _)| *k != orig), "the orphan was removed");
    });
}

in_both_modes! {
    wan_port_forward_tcp_with_port_change,
    udp_without_checksum_stays_without,
    ipv4_options_are_skipped_and_kept,
    pass_through_untouched,
    malformed_headers_are_dropped,
    two_forwards_to_one_service_never_cross,
    tcp_state_is_tracked_per_direction,
    an_original_entry_without_its_reply_is_never_used,
}
