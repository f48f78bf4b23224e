//! The gateway as a boundary: what may not cross it, from either side, dropped and counted.

use super::*;

/// The gateway as a boundary: spoofed LAN sources from the WAN, WAN packets aimed straight at
/// LAN hosts, foreign sources from the LAN and untranslated LAN sources leaving on the WAN are
/// dropped and counted; the gateway's own traffic is not. Frames sent to another host's MAC
/// address are passed untouched to the kernel (which forwards none of them), making no flow.
fn boundary_checks_drop_and_count(mode: Mode) {
    let icmp_from_lan = {
        let mut f = Pkt::udp("192.168.0.3:0", "198.51.100.7:0").build();
        f[14 + 9] = 1; // protocol ICMP: not translated yet, so it must not leak
        f
    };
    Case::new("boundary", Env::Gateway)
        .forward(L4::Tcp, PUBLIC_80, SERVER_80)
        .steps(vec![
            step(
                "WAN source claiming the LAN",
                Hook::WanIngress,
                &Pkt::tcp("192.168.0.3:40000", PUBLIC_80),
                Reason::DropWanLanSource,
                None,
            ),
            step(
                "WAN straight to a LAN host",
                Hook::WanIngress,
                &Pkt::tcp("198.51.100.7:40000", SERVER_80),
                Reason::DropWanToLan,
                None,
            ),
            step(
                "foreign source from the LAN, to be forwarded",
                Hook::LanIngress,
                &Pkt::udp("10.9.9.9:5000", "198.51.100.7:53"),
                Reason::DropLanForeignSource,
                None,
            ),
            step(
                "the same, larger than the WAN's MTU (the kernel would fragment it)",
                Hook::LanIngress,
                &Pkt::udp("10.9.9.9:5000", "198.51.100.7:53").payload_len(1472),
                Reason::DropLanForeignSource,
                None,
            ),
            step(
                "foreign source from the LAN, for the gateway itself",
                Hook::LanIngress,
                &Pkt::udp("169.254.1.1:5353", "192.168.0.1:5353"),
                Reason::PassNoMapping,
                None,
            ),
            step(
                "DHCP discover from 0.0.0.0",
                Hook::LanIngress,
                &Pkt::udp("0.0.0.0:68", "255.255.255.255:67"),
                Reason::PassSourceNotHost,
                None,
            ),
            step(
                "from 0.0.0.0 to a forwarded public port: the gateway's, never hairpinned",
                Hook::LanIngress,
                &Pkt::tcp("0.0.0.0:40000", PUBLIC_80),
                Reason::PassSourceNotHost,
                None,
            ),
            step(
                "from loopback on the WAN to a forwarded port: never forwarded",
                Hook::WanIngress,
                &Pkt::tcp("127.0.0.1:40000", PUBLIC_80),
                Reason::PassSourceNotHost,
                None,
            ),
            step(
                "untranslated LAN source leaving on the WAN",
                Hook::WanEgress,
                &Pkt::tcp("192.168.0.3:40000", "198.51.100.7:443"),
                Reason::DropLanSourceToWan,
                None,
            ),
            raw(
                "ICMP from a LAN source leaving on the WAN",
                Hook::WanEgress,
                icmp_from_lan,
                Reason::DropLanSourceToWan,
            ),
            step(
                "the gateway's own traffic on the WAN",
                Hook::WanEgress,
                &Pkt::tcp("203.0.113.1:40000", "198.51.100.7:443"),
                Reason::PassEgressNoFlow,
                None,
            ),
            step(
                "the internet still gets in through the forward",
                Hook::WanIngress,
                &Pkt::tcp("198.51.100.7:40000", PUBLIC_80),
                Reason::IngressNewFlow,
                Some(&Pkt::tcp("198.51.100.7:40000", SERVER_80)),
            ),
            step(
                "the same flow, framed to another host's MAC",
                Hook::WanIngress,
                &other_host(Pkt::tcp("198.51.100.7:40000", PUBLIC_80), frame::MAC_A),
                Reason::PassOtherHost,
                None,
            ),
            step(
                "a new flow to the forward, framed to Ethernet broadcast",
                Hook::WanIngress,
                &other_host(Pkt::tcp("198.51.100.7:40001", PUBLIC_80), [0xff; 6]),
                Reason::PassOtherHost,
                None,
            ),
            step(
                "a LAN host's hairpin, framed to another host's MAC",
                Hook::LanIngress,
                &other_host(Pkt::tcp("192.168.0.3:40000", PUBLIC_80), frame::MAC_A),
                Reason::PassOtherHost,
                None,
            ),
        ])
        // The forward's flow only: frames for other hosts made none.
        .leaves_flows(2)
        .run(mode);
}

/// `p` as sent to the Ethernet address `mac` rather than the gateway's.
fn other_host(mut p: Pkt, mac: [u8; 6]) -> Pkt {
    p.macs.0 = mac;
    p
}

/// The gaps a malformed-frame barrage found, closed, from both sides: VLAN tags (a priority
/// tag is looked past, a VLAN's frames are not this interface's), every ICMP message that quotes
/// a packet checked like an error, ICMP of other types never forwarded from the WAN, foreign LAN
/// sources never translated, and headers netfilter's conntrack calls invalid dropped.
fn boundary_has_no_gaps(mode: Mode) {
    use hairpin_tests::frame::{TCP_FIN, TCP_SYN};
    let from_inet = Pkt::tcp("198.51.100.7:40000", PUBLIC_80);
    // What a LAN host sent out (as it left, translated) and a WAN router now quotes.
    let lan_sent = Pkt::udp("192.168.0.3:5000", "198.51.100.7:53");
    let quench = Pkt::icmp_error(4, 0, "198.51.100.7", "203.0.113.1", &lan_sent, 28);
    let redirect = Pkt::icmp_error(5, 1, "198.51.100.7", "203.0.113.1", &lan_sent, 28);
    let mut timestamp = Pkt::icmp_error(13, 0, "198.51.100.7", "10.1.2.3", &lan_sent, 0);
    timestamp.payload = vec![0; 12];
    let long_udp = |src: &str, dst: &str| {
        let mut f = Pkt::udp(src, dst).build();
        let len = 14 + 20 + 4;
        f[len..len + 2].copy_from_slice(&200u16.to_be_bytes()); // the datagram has 8 + 32
        f
    };
    let short_tcp_header = {
        let mut f = Pkt::tcp("192.168.0.3:40000", "198.51.100.7:443").build();
        f[14 + 20 + 12] = 4 << 4; // 16 bytes: under the 20 every TCP header has
        f
    };
    Case::new("boundary gaps", Env::Gateway)
        .forward(L4::Tcp, PUBLIC_80, SERVER_80)
        .forward(L4::Udp, "203.0.113.1:5353", "192.168.0.2:53")
        .steps(vec![
            step(
                "WAN, priority-tagged, straight to a LAN host",
                Hook::WanIngress,
                &Pkt::tcp("198.51.100.7:40000", SERVER_80).vlan(0x2000),
                Reason::DropWanToLan,
                None,
            ),
            step(
                "WAN, priority-tagged, to the forward: translated, tag kept",
                Hook::WanIngress,
                &from_inet.clone().vlan(0x2000),
                Reason::IngressNewFlow,
                Some(&from_inet.with("198.51.100.7:40000", SERVER_80).vlan(0x2000)),
            ),
            step(
                "WAN, VLAN 100: another interface's frame, untouched",
                Hook::WanIngress,
                &Pkt::tcp("198.51.100.7:40000", SERVER_80).vlan(100),
                Reason::PassVlan,
                None,
            ),
            step(
                "LAN, VLAN 100: untouched",
                Hook::LanIngress,
                &Pkt::tcp("192.168.0.3:40000", PUBLIC_80).vlan(100),
                Reason::PassVlan,
                None,
            ),
            step("WAN, source quench quoting a LAN address", Hook::WanIngress, &quench, Reason::DropWanToLan, None),
            step("WAN, redirect quoting a LAN address", Hook::WanIngress, &redirect, Reason::DropWanToLan, None),
            step(
                "WAN, ICMP timestamp addressed past the gateway",
                Hook::WanIngress,
                &timestamp,
                Reason::DropWanIcmpType,
                None,
            ),
            step(
                "WAN, ICMP timestamp for the gateway itself",
                Hook::WanIngress,
                &timestamp.with("198.51.100.7:0", "203.0.113.1:0"),
                Reason::PassOtherProto,
                None,
            ),
            step(
                "LAN, foreign source to the public address: no hairpin, no binding",
                Hook::LanIngress,
                &Pkt::tcp("10.9.9.9:40000", PUBLIC_80),
                Reason::DropLanForeignSource,
                None,
            ),
            raw(
                "WAN, UDP length beyond the datagram",
                Hook::WanIngress,
                long_udp("198.51.100.7:40000", "203.0.113.1:5353"),
                Reason::DropInvalid,
            ),
            raw(
                "LAN, UDP length beyond the datagram",
                Hook::LanIngress,
                long_udp("192.168.0.3:40000", "198.51.100.7:53"),
                Reason::DropInvalid,
            ),
            step(
                "WAN, SYN and FIN together",
                Hook::WanIngress,
                &Pkt::tcp("198.51.100.7:40001", PUBLIC_80).flags(TCP_SYN | TCP_FIN),
                Reason::DropInvalid,
                None,
            ),
            raw("LAN, TCP header under 20 bytes", Hook::LanIngress, short_tcp_header, Reason::DropInvalid),
        ])
        .run_then(mode, |dp| {
            // Only the priority-tagged forward made a flow: none from the foreign source, the
            // invalid headers or the VLAN's frames, and no binding at all.
            assert_eq!(dp.ct().len(), 2, "{:#?}", dp.ct());
            assert!(
                dp.ct().iter().all(|(k, _)| k.src != ep("10.9.9.9:40000").addr && k.dst != ep("10.9.9.9:40000").addr)
            );
            assert_eq!(dp.egress().len(), 2, "the forward's two directions only");
        });
}

in_both_modes! {
    boundary_checks_drop_and_count,
    boundary_has_no_gaps,
}
