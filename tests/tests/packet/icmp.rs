//! ICMP: echo masqueraded by identifier, and errors translated with the flow they quote.

use super::*;

/// ICMP echo is masqueraded by identifier, as TCP/UDP by port; echo to the gateway itself and
/// other ICMP types are left to its stack, and never leave on the WAN with a LAN source.
fn icmp_echo_is_masqueraded_by_identifier(mode: Mode) {
    let ping = Pkt::ping("192.168.0.3:4000", "198.51.100.7:0");
    let pong = Pkt::pong("198.51.100.7:0", "203.0.113.1:4000");
    let mut timestamp = Pkt::ping("192.168.0.3:4000", "198.51.100.7:0").build();
    timestamp[34] = 13;
    timestamp[36..38].copy_from_slice(&[0, 0]);
    let c = etherparse::Icmpv4Type::Unknown { type_u8: 13, code_u8: 0, bytes5to8: [0x0f, 0xa0, 0, 7] }
        .calc_checksum(&timestamp[42..]);
    timestamp[36..38].copy_from_slice(&c.to_be_bytes());
    Case::new("echo", Env::Gateway)
        .steps(vec![
            step("request from the LAN", Hook::LanIngress, &ping, Reason::IngressMasquerade, None),
            step(
                "leaves with the public address, id kept",
                Hook::WanEgress,
                &ping,
                Reason::EgressFlow,
                Some(&ping.with("203.0.113.1:4000", "198.51.100.7:0")),
            ),
            step(
                "reply restored to the client",
                Hook::WanIngress,
                &pong,
                Reason::IngressFlow,
                Some(&pong.with("198.51.100.7:0", "192.168.0.3:4000")),
            ),
            step(
                "ping of the public address: the gateway answers",
                Hook::WanIngress,
                &Pkt::ping("198.51.100.7:9", "203.0.113.1:0"),
                Reason::PassNoMapping,
                None,
            ),
            step(
                "ping of the gateway from the LAN",
                Hook::LanIngress,
                &Pkt::ping("192.168.0.3:9", "192.168.0.1:0"),
                Reason::PassNoMapping,
                None,
            ),
            step(
                "an echo reply from the LAN with no flow never starts one",
                Hook::LanIngress,
                &Pkt::pong("192.168.0.3:0", "198.51.100.7:4001"),
                Reason::PassNoMapping,
                None,
            ),
            raw("timestamp request: not translated", Hook::LanIngress, timestamp.clone(), Reason::PassOtherProto),
            raw("...nor let out with a LAN source", Hook::WanEgress, timestamp, Reason::DropLanSourceToWan),
        ])
        .run_then(mode, |dp| {
            // Another client with the same id to the same host needs another public id.
            let other = Pkt::ping("192.168.0.4:4000", "198.51.100.7:0");
            dp.run(Hook::LanIngress, &other.build());
            let (_, out) = dp.run(Hook::WanEgress, &other.build());
            verify_checksums(&out).unwrap();
            let id = u16::from_be_bytes([out[38], out[39]]);
            assert!(id != 4000 && id >= 1024, "second client's id {id}");
            assert_eq!(out, other.with(&format!("203.0.113.1:{id}"), "198.51.100.7:0").build());
            // A request with id 0 looks like a reply by its tuple; it is a request all the same.
            let zero = Pkt::ping("192.168.0.5:0", "198.51.100.7:0");
            let new = step("request with id 0", Hook::LanIngress, &zero, Reason::IngressMasquerade, None);
            run_case("echo id 0", dp, &[new]);
            let (_, out) = dp.run(Hook::WanEgress, &zero.build());
            verify_checksums(&out).unwrap();
            let id = u16::from_be_bytes([out[38], out[39]]);
            assert!(id >= 1024, "id 0 is not in the range: another is taken ({id})");
            assert_eq!(out, zero.with(&format!("203.0.113.1:{id}"), "198.51.100.7:0").build());
        });
}

/// ICMP errors about translated flows reach the host that sent the quoted packet, with the
/// quoted packet as that host sent it: outer address, quoted addresses and ports (or echo id),
/// and the outer IPv4, ICMP, quoted IPv4 and quoted L4 checksums, all checked from scratch.
fn icmp_errors_are_translated_with_their_flow(mode: Mode) {
    use frame::{ICMP_DEST_UNREACH as UNREACH, ICMP_TIME_EXCEEDED as TTL};
    Case::new("icmperr", Env::Gateway).forward(L4::Tcp, PUBLIC_80, SERVER_80).run_then(mode, |dp| {
        let udp = Pkt::udp("192.168.0.3:33000", "198.51.100.7:53");
        let udp_out = udp.with("203.0.113.1:33000", "198.51.100.7:53");
        let tcp = Pkt::tcp("192.168.0.3:40000", "198.51.100.7:443");
        let tcp_out = tcp.with("203.0.113.1:40000", "198.51.100.7:443");
        let ping = Pkt::ping("192.168.0.3:4000", "198.51.100.7:0");
        let ping_out = ping.with("203.0.113.1:4000", "198.51.100.7:0");
        let fwd = Pkt::tcp("198.51.100.9:41000", PUBLIC_80);
        let fwd_in = fwd.with("198.51.100.9:41000", SERVER_80);
        let router = "198.51.100.254";
        let err = |ty, code, src, dst, about: &Pkt, len| Pkt::icmp_error(ty, code, src, dst, about, len);
        let mut steps = vec![];
        for p in [&udp, &tcp, &ping] {
            steps.push(step("flow out", Hook::LanIngress, p, Reason::IngressMasquerade, None));
        }
        steps.extend([
            step("udp out", Hook::WanEgress, &udp, Reason::EgressFlow, Some(&udp_out)),
            step(
                "time exceeded from a router: quoted packet and client restored",
                Hook::WanIngress,
                &err(TTL, 0, router, "203.0.113.1", &udp_out, 1000),
                Reason::IcmpError,
                Some(&err(TTL, 0, router, "192.168.0.3", &udp, 1000)),
            ),
            step(
                "fragmentation needed quoting 8 bytes of TCP",
                Hook::WanIngress,
                &err(UNREACH, 4, router, "203.0.113.1", &tcp_out, 28),
                Reason::IcmpError,
                Some(&err(UNREACH, 4, router, "192.168.0.3", &tcp, 28)),
            ),
            step(
                "time exceeded quoting a whole TCP segment",
                Hook::WanIngress,
                &err(TTL, 0, router, "203.0.113.1", &tcp_out, 1000),
                Reason::IcmpError,
                Some(&err(TTL, 0, router, "192.168.0.3", &tcp, 1000)),
            ),
            step(
                "time exceeded quoting an echo request",
                Hook::WanIngress,
                &err(TTL, 0, router, "203.0.113.1", &ping_out, 1000),
                Reason::IcmpError,
                Some(&err(TTL, 0, router, "192.168.0.3", &ping, 1000)),
            ),
            step(
                "error about no flow: to the gateway's stack",
                Hook::WanIngress,
                &err(UNREACH, 3, router, "203.0.113.1", &udp_out.with("203.0.113.1:33001", "198.51.100.7:53"), 1000),
                Reason::PassNoMapping,
                None,
            ),
            step("port-forward in", Hook::WanIngress, &fwd, Reason::IngressNewFlow, Some(&fwd_in)),
            step(
                "the server's port unreachable: quoted packet as the client sent it",
                Hook::LanIngress,
                &err(UNREACH, 3, "192.168.0.2", "198.51.100.9", &fwd_in, 1000),
                Reason::IcmpError,
                Some(&err(UNREACH, 3, "192.168.0.2", "198.51.100.9", &fwd, 1000)),
            ),
            step(
                "...and it leaves from the public address",
                Hook::WanEgress,
                &err(UNREACH, 3, "192.168.0.2", "198.51.100.9", &fwd, 1000),
                Reason::IcmpError,
                Some(&err(UNREACH, 3, "203.0.113.1", "198.51.100.9", &fwd, 1000)),
            ),
            step(
                "the gateway's own time exceeded about a forwarded packet, translated at egress",
                Hook::WanEgress,
                &err(TTL, 0, "203.0.113.1", "198.51.100.9", &fwd_in, 1000),
                Reason::IcmpError,
                Some(&err(TTL, 0, "203.0.113.1", "198.51.100.9", &fwd, 1000)),
            ),
            step(
                "hairpin in",
                Hook::LanIngress,
                &Pkt::tcp("192.168.0.3:40001", PUBLIC_80),
                Reason::IngressNewFlow,
                Some(&Pkt::tcp("192.168.0.3:40001", SERVER_80)),
            ),
            step(
                "the gateway's own time exceeded about a hairpinned packet: as the client sent it",
                Hook::LanEgress,
                &err(TTL, 0, "192.168.0.1", "192.168.0.3", &Pkt::tcp("192.168.0.3:40001", SERVER_80), 1000),
                Reason::IcmpError,
                Some(&err(TTL, 0, "192.168.0.1", "192.168.0.3", &Pkt::tcp("192.168.0.3:40001", PUBLIC_80), 1000)),
            ),
            step(
                "a LAN host's error about another host's flow does not get the public source",
                Hook::WanEgress,
                &err(UNREACH, 4, "192.168.0.4", "198.51.100.7", &udp_out.reply_to(), 1000),
                Reason::DropLanSourceToWan,
                None,
            ),
            step(
                "a WAN error quoting a LAN address is dropped",
                Hook::WanIngress,
                &err(UNREACH, 3, router, "203.0.113.1", &Pkt::tcp(PUBLIC_80, "192.168.0.3:40000"), 1000),
                Reason::DropWanToLan,
                None,
            ),
            step(
                "an error quoting an untranslated LAN address never leaves on the WAN",
                Hook::WanEgress,
                &err(UNREACH, 3, "203.0.113.1", "198.51.100.9", &Pkt::udp("198.51.100.9:1", "192.168.0.3:5"), 1000),
                Reason::DropLanSourceToWan,
                None,
            ),
        ]);
        run_case("icmp errors", dp, &steps);
    });
}

in_both_modes! {
    icmp_echo_is_masqueraded_by_identifier,
    icmp_errors_are_translated_with_their_flow,
}
