//! Packet tests: crafted frames through the real compiled XDP and TC programs with
//! BPF_PROG_TEST_RUN. Each case is a table of steps run in order against one dataplane, so a
//! flow created by one step is used by the next (Katran-style fixtures). Every case but the
//! fast path's runs twice, ingress as XDP and as TC programs (`up --mode tc`).
//!
//! Every step asserts the verdict, the exact output bytes (built independently, checksums from
//! scratch with etherparse), and that exactly the expected (hook, reason) counter moved.

use hairpin_common::{
    CT_F_REPLY, Config, CtEntry, FlowKey, Reason,
    consts::Hook,
    placement::{Ingress, Placement, Why},
};
use hairpin_lab::routed::{CLIENT_MAC, LAN_MAC, ROUTER_MAC, RoutedGateway, SERVER_MAC, WAN_MAC};
use hairpin_tests::{
    dp::{self, Dataplane, Mode, TC_NEXT, ep},
    frame::{self, L4, Pkt, diff, verify_checksums},
};

/// What a step feeds in and what must come out.
struct Step {
    what: &'static str,
    hook: Hook,
    input: Vec<u8>,
    reason: Reason,
    /// The exact frame expected out; `None` means the input unchanged.
    output: Option<Vec<u8>>,
}

fn step(what: &'static str, hook: Hook, input: &Pkt, reason: Reason, output: Option<&Pkt>) -> Step {
    Step { what, hook, input: input.build(), reason, output: output.map(Pkt::build) }
}

fn raw(what: &'static str, hook: Hook, input: Vec<u8>, reason: Reason) -> Step {
    Step { what, hook, input, reason, output: None }
}

fn run_case(case: &str, dp: &mut Dataplane, steps: &[Step]) {
    for (i, s) in steps.iter().enumerate() {
        let ctx = format!("{case} / step {i} ({}, {:?})", s.what, s.hook);
        let before: Vec<u64> = Reason::ALL.iter().map(|r| dp.counter(s.hook, *r)).collect();
        let (verdict, out) = dp.run(s.hook, &s.input);
        let slow: Vec<u64> = hairpin_common::Slow::ALL.iter().map(|w| dp.slow(*w)).collect();
        let moved: Vec<&str> = Reason::ALL
            .iter()
            .zip(&before)
            .filter(|(r, b)| dp.counter(s.hook, **r) != **b)
            .map(|(r, _)| r.name())
            .collect();
        let slow = (slow, moved);
        assert_eq!(verdict, dp.verdict(s.hook, s.reason), "{ctx}: verdict (slow {slow:?})");
        for (r, b) in Reason::ALL.iter().zip(&before) {
            let moved = dp.counter(s.hook, *r) - b;
            let want = u64::from(*r == s.reason);
            assert_eq!(moved, want, "{ctx}: counter {} moved by {moved}, expected {want}", r.name());
        }
        if s.reason.is_drop() {
            continue;
        }
        let want = s.output.as_ref().unwrap_or(&s.input);
        if s.output.is_some() {
            verify_checksums(&out).unwrap_or_else(|e| panic!("{ctx}: {e}"));
        }
        assert!(out == *want, "{ctx}: {}", diff(&out, want));
    }
}

const PUBLIC_80: &str = "203.0.113.1:80";
const SERVER_80: &str = "192.168.0.2:80";

fn wan_port_forward_tcp_with_port_change(mode: Mode) {
    let mut dp = Dataplane::load(dp::lab_config(), mode);
    dp.add_mapping(L4::Tcp, "203.0.113.1:8080", SERVER_80);
    let syn = Pkt::tcp("198.51.100.7:40000", "203.0.113.1:8080");
    let dnat = syn.with("198.51.100.7:40000", SERVER_80);
    let reply = Pkt::tcp(SERVER_80, "198.51.100.7:40000");
    let unsnat = reply.with("203.0.113.1:8080", "198.51.100.7:40000");
    run_case(
        "wan tcp",
        &mut dp,
        &[
            step(
                "first packet: flow created, destination rewritten",
                Hook::WanIngress,
                &syn,
                Reason::IngressNewFlow,
                Some(&dnat),
            ),
            step("towards the server: source kept", Hook::LanEgress, &dnat, Reason::PassEgressNoFlow, None),
            step("reply at ingress: destination already right", Hook::LanIngress, &reply, Reason::IngressFlow, None),
            step("reply at egress: public source restored", Hook::WanEgress, &reply, Reason::EgressFlow, Some(&unsnat)),
            step("second packet uses the flow", Hook::WanIngress, &syn, Reason::IngressFlow, Some(&dnat)),
        ],
    );
    assert_eq!(dp.ct().len(), 2, "one entry per direction");
    assert_eq!(dp.snat().len(), 1, "only the reply needs a source rewrite");
}

fn hairpin_tcp_rewrites_source_and_restores_both_ends(mode: Mode) {
    let mut dp = Dataplane::load(dp::lab_config(), mode);
    dp.add_mapping(L4::Tcp, PUBLIC_80, SERVER_80);
    let out = Pkt::tcp("192.168.0.3:1025", PUBLIC_80);
    let dnat = out.with("192.168.0.3:1025", SERVER_80);
    let snat = out.with("192.168.0.1:1025", SERVER_80);
    let reply = Pkt::tcp(SERVER_80, "192.168.0.1:1025");
    let restored = reply.with(SERVER_80, "192.168.0.3:1025");
    let unsnat = reply.with(PUBLIC_80, "192.168.0.3:1025");
    run_case(
        "hairpin tcp",
        &mut dp,
        &[
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
        ],
    );
    let ct = dp.ct();
    assert_eq!(ct.len(), 2);
    assert!(ct.iter().any(|(_, e)| e.flags & CT_F_REPLY != 0));
}

fn hairpin_and_wan_udp(mode: Mode) {
    let mut dp = Dataplane::load(dp::lab_config(), mode);
    dp.add_mapping(L4::Udp, "203.0.113.1:5353", "192.168.0.2:53");
    let q = Pkt::udp("192.168.0.3:33000", "203.0.113.1:5353");
    let r = Pkt::udp("192.168.0.2:53", "192.168.0.1:33000");
    let wq = Pkt::udp("198.51.100.7:5000", "203.0.113.1:5353");
    let wr = Pkt::udp("192.168.0.2:53", "198.51.100.7:5000");
    run_case(
        "udp",
        &mut dp,
        &[
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
        ],
    );
}

fn udp_without_checksum_stays_without(mode: Mode) {
    let mut dp = Dataplane::load(dp::lab_config(), mode);
    dp.add_mapping(L4::Udp, "203.0.113.1:5353", "192.168.0.2:53");
    let q = Pkt::udp("198.51.100.7:5000", "203.0.113.1:5353").without_udp_checksum();
    let r = Pkt::udp("192.168.0.2:53", "198.51.100.7:5000").without_udp_checksum();
    let h = Pkt::udp("192.168.0.3:40000", "203.0.113.1:5353").without_udp_checksum();
    run_case(
        "udp csum 0",
        &mut dp,
        &[
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
        ],
    );
}

fn ipv4_options_are_skipped_and_kept(mode: Mode) {
    let mut dp = Dataplane::load(dp::lab_config(), mode);
    dp.add_mapping(L4::Tcp, PUBLIC_80, SERVER_80);
    dp.add_mapping(L4::Udp, "203.0.113.1:5353", "192.168.0.2:53");
    // NOP NOP NOP EOL (IHL 6), and the longest header: 40 bytes of options (IHL 15).
    let short = Pkt::tcp("198.51.100.7:40001", PUBLIC_80).options(&[1, 1, 1, 0]);
    let mut rr = vec![7, 39, 4];
    rr.resize(39, 0);
    rr.push(0);
    let long = Pkt::udp("192.168.0.3:40002", "203.0.113.1:5353").options(&rr);
    run_case(
        "ip options",
        &mut dp,
        &[
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
        ],
    );
}

/// Frames that are not IPv4 TCP/UDP, or not ours, pass untouched with their reason counted.
fn pass_through_untouched(mode: Mode) {
    let mut dp = Dataplane::load(dp::lab_config(), mode);
    dp.add_mapping(L4::Tcp, PUBLIC_80, SERVER_80);
    let mut arp = frame::eth(0x0806);
    arp.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    arp.extend_from_slice(&[0u8; 20]);
    let mut ipv6 = frame::eth(0x86dd);
    ipv6.extend_from_slice(&[0x60, 0, 0, 0, 0, 8, 17, 64]);
    ipv6.extend_from_slice(&[0u8; 40]);
    let fragment = {
        let mut f = Pkt::tcp("198.51.100.7:40000", PUBLIC_80).build();
        f[14 + 6] |= 0x20; // more fragments
        f
    };
    let later_fragment = {
        let mut f = Pkt::tcp("198.51.100.7:40000", PUBLIC_80).build();
        f[14 + 6] = 0;
        f[14 + 7] = 185; // offset 1480
        f
    };
    let icmp = {
        let mut f = Pkt::udp("198.51.100.7:40000", PUBLIC_80).build();
        f[14 + 9] = 1; // protocol ICMP
        f
    };
    run_case(
        "pass",
        &mut dp,
        &[
            raw("arp", Hook::WanIngress, arp.clone(), Reason::PassNotIpv4),
            raw("arp at egress", Hook::LanEgress, arp, Reason::PassNotIpv4),
            raw("ipv6", Hook::LanIngress, ipv6, Reason::PassNotIpv4),
            raw("first fragment", Hook::WanIngress, fragment, Reason::PassFragment),
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
        ],
    );
    assert!(dp.ct().is_empty(), "nothing passed through created a flow");
}

/// Inconsistent headers are dropped and counted, never rewritten.
fn malformed_headers_are_dropped(mode: Mode) {
    let mut dp = Dataplane::load(dp::lab_config(), mode);
    dp.add_mapping(L4::Tcp, PUBLIC_80, SERVER_80);
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
    run_case("malformed", &mut dp, &steps);
    assert!(dp.ct().is_empty());
}

/// With hairpin off, a LAN client dialling the public address gets destination NAT only.
fn no_hairpin_rewrites_destination_only(mode: Mode) {
    let mut dp = Dataplane::load(Config { flags: 0, ..dp::lab_config() }, mode);
    dp.add_mapping(L4::Tcp, PUBLIC_80, SERVER_80);
    let out = Pkt::tcp("192.168.0.3:1025", PUBLIC_80);
    let dnat = out.with("192.168.0.3:1025", SERVER_80);
    run_case(
        "no hairpin",
        &mut dp,
        &[
            step("destination rewritten", Hook::LanIngress, &out, Reason::IngressNewFlow, Some(&dnat)),
            step("source left alone", Hook::LanEgress, &dnat, Reason::PassEgressNoFlow, None),
            step(
                "the server's direct reply never needed the gateway; if it came, the public source is restored",
                Hook::LanEgress,
                &Pkt::tcp(SERVER_80, "192.168.0.3:1025"),
                Reason::EgressFlow,
                Some(&Pkt::tcp(PUBLIC_80, "192.168.0.3:1025")),
            ),
        ],
    );
}

/// A hairpin source port held by another flow is not reused: the new flow gets another port
/// from the range, and its reply still finds the client.
fn hairpin_port_taken_allocates_another(mode: Mode) {
    let mut dp = Dataplane::load(dp::lab_config(), mode);
    dp.add_mapping(L4::Tcp, PUBLIC_80, SERVER_80);
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
    let mut dp = Dataplane::load(Config { port_min: 5000, port_max: 5000, ..dp::lab_config() }, mode);
    dp.add_mapping(L4::Tcp, PUBLIC_80, SERVER_80);
    let first = Pkt::tcp("192.168.0.3:40000", PUBLIC_80);
    let second = Pkt::tcp("192.168.0.4:40000", PUBLIC_80);
    run_case(
        "exhaustion",
        &mut dp,
        &[
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
        ],
    );
    assert_eq!(dp.ct().len(), 2, "the dropped flow left no entry");
    assert_eq!(dp.snat().len(), 2);
}

/// Two mappings to one server, dialled from one client port: the second flow's reply tuple
/// (server -> client) is the first flow's, so replies could not be told apart. It is dropped
/// and counted, and leaves nothing behind.
fn reply_tuple_owned_by_another_flow_is_refused_whole(mode: Mode) {
    let mut dp = Dataplane::load(dp::lab_config(), mode);
    dp.add_mapping(L4::Tcp, PUBLIC_80, SERVER_80);
    dp.add_mapping(L4::Tcp, "203.0.113.1:8080", SERVER_80);
    let first = Pkt::tcp("198.51.100.7:40000", PUBLIC_80);
    let second = Pkt::tcp("198.51.100.7:40000", "203.0.113.1:8080");
    run_case(
        "reply tuple taken",
        &mut dp,
        &[
            step(
                "first flow",
                Hook::WanIngress,
                &first,
                Reason::IngressNewFlow,
                Some(&first.with("198.51.100.7:40000", SERVER_80)),
            ),
            step("second flow, same reply tuple", Hook::WanIngress, &second, Reason::DropFlowInsert, None),
            step(
                "first flow unaffected",
                Hook::WanIngress,
                &first,
                Reason::IngressFlow,
                Some(&first.with("198.51.100.7:40000", SERVER_80)),
            ),
        ],
    );
    assert_eq!(dp.ct().len(), 2);
    assert_eq!(dp.snat().len(), 1);
}

/// Masquerade and the fast path decide by the kernel's routes, so these steps run in a
/// namespace of their own that routes like the gateway (`hairpin_lab::routed`), with both
/// interfaces in the fast path's device map.
fn in_gateway_ns(name: &str, cfg: Config, mode: Mode, test: impl FnOnce(&mut Dataplane) + Send + 'static) {
    hairpin_tests::require_root();
    let gw = RoutedGateway::new(&format!("hpt{}-{name}-{mode:?}", std::process::id())).unwrap();
    let (lan, wan) = (gw.lan, gw.wan);
    gw.ns
        .run(move || {
            // Both interfaces native XDP, taking XDP frames: the fast path may send into either.
            let xdp = Placement { ingress: Ingress::Xdp, why: Why::Forced, xdp_target: true }.encode();
            let cfg = Config { wan_ifindex: wan, lan_ifindex: lan, lan_placement: xdp, wan_placement: xdp, ..cfg };
            let mut dp = Dataplane::load(cfg, mode);
            dp.ifindex = Some((lan, wan));
            dp.add_device(lan);
            dp.add_device(wan);
            test(&mut dp);
        })
        .expect("test body (see the panic above)");
}

fn masquerade_lan_to_internet_tcp_and_udp(mode: Mode) {
    in_gateway_ns("masq", dp::lab_config(), mode, |dp| {
        dp.add_mapping(L4::Tcp, PUBLIC_80, SERVER_80);
        let out = Pkt::tcp("192.168.0.3:40000", "198.51.100.7:443");
        let back = Pkt::tcp("198.51.100.7:443", "203.0.113.1:40000");
        let q = Pkt::udp("192.168.0.3:33000", "198.51.100.7:53").without_udp_checksum();
        let a = Pkt::udp("198.51.100.7:53", "203.0.113.1:33000");
        run_case(
            "masquerade",
            dp,
            &[
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
                    Reason::PassEgressNoFlow,
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
            ],
        );
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
    in_gateway_ns("masqports", dp::lab_config(), mode, |dp| {
        dp.add_mapping(L4::Tcp, "203.0.113.1:8080", SERVER_80);
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
    in_gateway_ns("masqfull", Config { port_min: 7000, port_max: 7000, ..dp::lab_config() }, mode, |dp| {
        let a = Pkt::udp("192.168.0.3:7000", "198.51.100.7:53");
        let b = Pkt::udp("192.168.0.4:7000", "198.51.100.7:53");
        run_case(
            "masq exhaustion",
            dp,
            &[
                step("first flow takes the only port", Hook::LanIngress, &a, Reason::IngressMasquerade, None),
                step("second: no port left", Hook::LanIngress, &b, Reason::DropNoPort, None),
                step(
                    "the first host's binding serves its other destinations",
                    Hook::LanIngress,
                    &a.with("192.168.0.3:7000", "198.51.100.8:53"),
                    Reason::IngressMasquerade,
                    None,
                ),
            ],
        );
        assert_eq!(dp.ct().len(), 4);
        assert_eq!(dp.exhausted(17, Reason::DropNoPort), 1, "counted as UDP port exhaustion");
        assert_eq!(dp.exhausted(6, Reason::DropNoPort) + dp.exhausted(17, Reason::DropFlowInsert), 0);
    });
}

/// The dataplane records what each direction has seen, and the controller's state machine reads
/// the handshake, both FINs and an RST from it.
fn tcp_state_is_tracked_per_direction(mode: Mode) {
    use hairpin_common::expiry::{TcpState, tcp_state};
    use hairpin_tests::frame::{TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};
    let mut dp = Dataplane::load(dp::lab_config(), mode);
    dp.add_mapping(L4::Tcp, PUBLIC_80, SERVER_80);
    let out = |f| Pkt::tcp("198.51.100.7:40000", PUBLIC_80).flags(f);
    let back = |f| Pkt::tcp(SERVER_80, "198.51.100.7:40000").flags(f);
    let state = |dp: &Dataplane| {
        let ct = dp.ct();
        let flags = |reply: bool| ct.iter().find(|(_, e)| (e.flags & CT_F_REPLY != 0) == reply).unwrap().1.flags;
        tcp_state(flags(false), flags(true))
    };
    let expect = |dp: &mut Dataplane, hook, pkt: Pkt, want| {
        let (v, _) = dp.run(hook, &pkt.build());
        assert_eq!(v, dp.pass(hook));
        assert_eq!(state(dp), want, "after {:?} flags {:#04x}", hook, pkt.tcp_flags);
    };
    expect(&mut dp, Hook::WanIngress, out(TCP_SYN), TcpState::Opening);
    expect(&mut dp, Hook::LanIngress, back(TCP_SYN | TCP_ACK), TcpState::Opening);
    expect(&mut dp, Hook::WanIngress, out(TCP_ACK), TcpState::Established);
    expect(&mut dp, Hook::LanIngress, back(TCP_ACK), TcpState::Established);
    expect(&mut dp, Hook::WanIngress, out(TCP_FIN | TCP_ACK), TcpState::Closing);
    expect(&mut dp, Hook::LanIngress, back(TCP_FIN | TCP_ACK), TcpState::Closed);

    let mut dp = Dataplane::load(dp::lab_config(), mode);
    dp.add_mapping(L4::Tcp, PUBLIC_80, SERVER_80);
    expect(&mut dp, Hook::WanIngress, out(TCP_SYN), TcpState::Opening);
    expect(&mut dp, Hook::LanIngress, back(TCP_RST | TCP_ACK), TcpState::Closed);
}

/// The gateway as a boundary: spoofed LAN sources from the WAN, WAN packets aimed straight at
/// LAN hosts, foreign sources from the LAN and untranslated LAN sources leaving on the WAN are
/// dropped and counted; the gateway's own traffic is not.
fn boundary_checks_drop_and_count(mode: Mode) {
    in_gateway_ns("boundary", dp::lab_config(), mode, |dp| {
        dp.add_mapping(L4::Tcp, PUBLIC_80, SERVER_80);
        let icmp_from_lan = {
            let mut f = Pkt::udp("192.168.0.3:0", "198.51.100.7:0").build();
            f[14 + 9] = 1; // protocol ICMP: not translated yet, so it must not leak
            f
        };
        run_case(
            "boundary",
            dp,
            &[
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
                    Reason::PassNoMapping,
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
            ],
        );
    });
}

/// The gaps a malformed-frame barrage found, closed, from both sides: VLAN tags (a priority
/// tag is looked past, a VLAN's frames are not this interface's), every ICMP message that quotes
/// a packet checked like an error, ICMP of other types never forwarded from the WAN, foreign LAN
/// sources never translated, and headers netfilter's conntrack calls invalid dropped.
fn boundary_has_no_gaps(mode: Mode) {
    use hairpin_tests::frame::{TCP_FIN, TCP_SYN};
    in_gateway_ns("gaps", dp::lab_config(), mode, |dp| {
        dp.add_mapping(L4::Tcp, PUBLIC_80, SERVER_80);
        dp.add_mapping(L4::Udp, "203.0.113.1:5353", "192.168.0.2:53");
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
        run_case(
            "boundary gaps",
            dp,
            &[
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
            ],
        );
        // Only the priority-tagged forward made a flow: none from the foreign source, the
        // invalid headers or the VLAN's frames, and no binding at all.
        assert_eq!(dp.ct().len(), 2, "{:#?}", dp.ct());
        assert!(dp.ct().iter().all(|(k, _)| k.src != ep("10.9.9.9:40000").addr && k.dst != ep("10.9.9.9:40000").addr));
        assert_eq!(dp.snat().len(), 1, "the forward's reply rewrite only");
    });
}

/// ICMP echo is masqueraded by identifier, as TCP/UDP by port; echo to the gateway itself and
/// other ICMP types are left to its stack, and never leave on the WAN with a LAN source.
fn icmp_echo_is_masqueraded_by_identifier(mode: Mode) {
    in_gateway_ns("echo", dp::lab_config(), mode, |dp| {
        let ping = Pkt::ping("192.168.0.3:4000", "198.51.100.7:0");
        let pong = Pkt::pong("198.51.100.7:0", "203.0.113.1:4000");
        let mut timestamp = Pkt::ping("192.168.0.3:4000", "198.51.100.7:0").build();
        timestamp[34] = 13;
        timestamp[36..38].copy_from_slice(&[0, 0]);
        let c = etherparse::Icmpv4Type::Unknown { type_u8: 13, code_u8: 0, bytes5to8: [0x0f, 0xa0, 0, 7] }
            .calc_checksum(&timestamp[42..]);
        timestamp[36..38].copy_from_slice(&c.to_be_bytes());
        run_case(
            "echo",
            dp,
            &[
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
            ],
        );
        // Another client with the same id to the same host needs another public id.
        let other = Pkt::ping("192.168.0.4:4000", "198.51.100.7:0");
        dp.run(Hook::LanIngress, &other.build());
        let (_, out) = dp.run(Hook::WanEgress, &other.build());
        verify_checksums(&out).unwrap();
        let id = u16::from_be_bytes([out[38], out[39]]);
        assert!(id != 4000 && id >= 1024, "second client's id {id}");
        assert_eq!(out, other.with(&format!("203.0.113.1:{id}"), "198.51.100.7:0").build());
    });
}

/// ICMP errors about translated flows reach the host that sent the quoted packet, with the
/// quoted packet as that host sent it: outer address, quoted addresses and ports (or echo id),
/// and the outer IPv4, ICMP, quoted IPv4 and quoted L4 checksums, all checked from scratch.
fn icmp_errors_are_translated_with_their_flow(mode: Mode) {
    use frame::{ICMP_DEST_UNREACH as UNREACH, ICMP_TIME_EXCEEDED as TTL};
    in_gateway_ns("icmperr", dp::lab_config(), mode, |dp| {
        dp.add_mapping(L4::Tcp, PUBLIC_80, SERVER_80);
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

/// RFC 4787 REQ-1 / RFC 5382 REQ-1: one LAN endpoint keeps one public port for every
/// destination, so no other host may take it. Filtering (UDP only) decides whether other WAN
/// endpoints reach it: address-and-port-dependent by default, endpoint-independent on request.
fn mappings_are_endpoint_independent_and_udp_filtering_switchable(mode: Mode) {
    let a1 = Pkt::udp("192.168.0.3:7000", "198.51.100.7:53");
    let a2 = Pkt::udp("192.168.0.3:7000", "198.51.100.8:53");
    let stranger = Pkt::udp("198.51.100.9:999", "203.0.113.1:7000");
    let tcp1 = Pkt::tcp("192.168.0.3:7000", "198.51.100.7:443");
    let tcp2 = Pkt::tcp("192.168.0.3:7000", "198.51.100.8:443");
    let (a1c, stranger_c, tcp1c) = (a1.clone(), stranger.clone(), tcp1.clone());
    in_gateway_ns("eimapdf", dp::lab_config(), mode, move |dp| {
        let (a1, stranger, tcp1) = (a1c, stranger_c, tcp1c);
        run_case(
            "eim, address-and-port-dependent filtering",
            dp,
            &[
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
            ],
        );
        for p in [&a1, &a2, &tcp1, &tcp2] {
            assert_eq!(masqueraded_port(dp, p), 7000, "one public port for every destination: {p:?}");
        }
        // Another host's port 7000 to a third destination: 7000 is bound, even there.
        let b = Pkt::udp("192.168.0.4:7000", "198.51.100.10:53");
        dp.run(Hook::LanIngress, &b.build());
        assert_ne!(masqueraded_port(dp, &b), 7000, "a bound port went to a second host");
    });
    let eif = Config { flags: dp::lab_config().flags | hairpin_common::CFG_F_UDP_EIF, ..dp::lab_config() };
    in_gateway_ns("eimeif", eif, mode, move |dp| {
        let back = stranger.with("198.51.100.9:999", "192.168.0.3:7000");
        let answer = Pkt::udp("192.168.0.3:7000", "198.51.100.9:999");
        run_case(
            "eim, endpoint-independent filtering",
            dp,
            &[
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
            ],
        );
        let inbound =
            dp.ct().into_iter().find(|(k, _)| *k == FlowKey::new(17, ep("198.51.100.9:999"), ep("203.0.113.1:7000")));
        let (_, e) = inbound.expect("the inbound flow's entry");
        assert_ne!(e.flags & hairpin_common::CT_F_INBOUND, 0, "marked inbound: its outbound side refreshes it");
    });
}

/// RFC 4787 REQ-9 / RFC 5382 REQ-8: a LAN host sending to another LAN host's public binding
/// reaches it, and the receiver sees the sender's own public binding as the source.
fn hairpin_to_dynamic_bindings(mode: Mode) {
    in_gateway_ns("dynhairpin", dp::lab_config(), mode, |dp| {
        let a_out = Pkt::udp("192.168.0.3:7000", "198.51.100.7:3478");
        let b_out = Pkt::udp("192.168.0.4:8000", "198.51.100.7:3478");
        let b_tcp = Pkt::tcp("192.168.0.4:8000", "198.51.100.7:443");
        let a_to_b = Pkt::udp("192.168.0.3:7000", "203.0.113.1:8000");
        let b_to_a = Pkt::udp("192.168.0.4:8000", "203.0.113.1:7000");
        let c_to_b = Pkt::tcp("192.168.0.5:6000", "203.0.113.1:8000").flags(frame::TCP_SYN);
        run_case(
            "hairpin to bindings",
            dp,
            &[
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
            ],
        );
    });
}

/// A flow whose reply entry has gone (LRU eviction) no longer holds its public tuple, so its
/// original entry must not translate: the next packet that finds it stale (its last refresh a
/// second old or more, when the dataplane checks the twin) removes it and starts afresh.
fn an_original_entry_without_its_reply_is_never_used(mode: Mode) {
    in_gateway_ns("orphan", dp::lab_config(), mode, |dp| {
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

/// The fast path: a known flow's packet is translated whole, its TTL decremented and its MAC
/// addresses set from the FIB, and XDP sends it on: redirected to the other interface, or back
/// out of the LAN when hairpinned. Whatever the kernel must handle takes the slow path, counted.
fn fast_path_forwards_known_flows_and_leaves_the_rest_to_the_kernel(mode: Mode) {
    use hairpin_common::Slow;
    // Known flows' packets after the first fast one come from the flow cache, the TTL and MTU
    // cases included (which it must leave to conntrack's path).
    in_fast_gateway("fast", mode, 0, |dp| {
        dp.add_mapping(L4::Tcp, PUBLIC_80, SERVER_80);
        let fwd = Pkt::tcp("198.51.100.9:41000", PUBLIC_80);
        let fwd_in = fwd.with("198.51.100.9:41000", SERVER_80);
        let reply = Pkt::tcp(SERVER_80, "198.51.100.9:41000");
        let hp = Pkt::tcp("192.168.0.3:40000", PUBLIC_80);
        let hp_reply = Pkt::tcp(SERVER_80, "192.168.0.1:40000");
        let masq = Pkt::udp("192.168.0.3:33000", "198.18.0.1:53");
        let big = reply.clone().payload_len(1400);
        run_case(
            "fast path",
            dp,
            &[
                step("new flow: slow path", Hook::WanIngress, &fwd, Reason::IngressNewFlow, Some(&fwd_in)),
                step(
                    "known flow: redirected to the LAN, whole",
                    Hook::WanIngress,
                    &fwd,
                    Reason::FastRedirect,
                    Some(&fwd_in.forwarded(SERVER_MAC, LAN_MAC)),
                ),
                step(
                    "again, from the next hop cached in the flow",
                    Hook::WanIngress,
                    &fwd,
                    Reason::FastRedirect,
                    Some(&fwd_in.forwarded(SERVER_MAC, LAN_MAC)),
                ),
                step(
                    "its reply: redirected to the WAN's router, from the public address",
                    Hook::LanIngress,
                    &reply,
                    Reason::FastRedirect,
                    Some(&reply.with(PUBLIC_80, "198.51.100.9:41000").forwarded(ROUTER_MAC, WAN_MAC)),
                ),
                step(
                    "hairpin, new flow: slow path",
                    Hook::LanIngress,
                    &hp,
                    Reason::IngressNewFlow,
                    Some(&hp.with("192.168.0.3:40000", SERVER_80)),
                ),
                step(
                    "hairpin, known flow: both ends rewritten, back out of the LAN",
                    Hook::LanIngress,
                    &hp,
                    Reason::FastTx,
                    Some(&hp.with("192.168.0.1:40000", SERVER_80).forwarded(SERVER_MAC, LAN_MAC)),
                ),
                step(
                    "again, back out of the LAN as the cached next hop says",
                    Hook::LanIngress,
                    &hp,
                    Reason::FastTx,
                    Some(&hp.with("192.168.0.1:40000", SERVER_80).forwarded(SERVER_MAC, LAN_MAC)),
                ),
                step(
                    "hairpin reply: to the client, from the public address",
                    Hook::LanIngress,
                    &hp_reply,
                    Reason::FastTx,
                    Some(&hp_reply.with(PUBLIC_80, "192.168.0.3:40000").forwarded(CLIENT_MAC, LAN_MAC)),
                ),
                step(
                    "TTL 1: the kernel must answer, slow path",
                    Hook::WanIngress,
                    &fwd.clone().ttl(1),
                    Reason::IngressFlow,
                    Some(&fwd_in.clone().ttl(1)),
                ),
                step("larger than the WAN's MTU: slow path", Hook::LanIngress, &big, Reason::IngressFlow, None),
                step("masquerade, new flow", Hook::LanIngress, &masq, Reason::IngressMasquerade, None),
                step("next hop not resolved: slow path", Hook::LanIngress, &masq, Reason::IngressFlow, None),
            ],
        );
        for (why, n) in [(Slow::Ttl, 1), (Slow::FragNeeded, 1), (Slow::NoNeighbour, 1), (Slow::Route, 0)] {
            assert_eq!(dp.slow(why), n, "slow path because {}", why.name());
        }
    });
}

/// The fast path's flow cache: after conntrack has forwarded a flow's packet once, the next
/// ones are served by the CPU's cached copy, with the same bytes out; a packet with a TCP state
/// bit the copy has not recorded goes to conntrack (which records it); once the controller has
/// removed flows, no copy of them serves.
fn flow_cache_serves_known_flows_and_yields_to_conntrack(mode: Mode) {
    use hairpin_common::CT_S_FIN;
    use hairpin_tests::frame::{TCP_ACK, TCP_FIN};
    in_fast_gateway("fcache", mode, 0, |dp| {
        dp.add_mapping(L4::Tcp, PUBLIC_80, SERVER_80);
        let fwd = Pkt::tcp("198.51.100.9:41000", PUBLIC_80).flags(TCP_ACK);
        // Destination translated; and sent on by XDP on the fast path.
        let out = |p: &Pkt, reason| match p.with("198.51.100.9:41000", SERVER_80) {
            to if reason == Reason::FastRedirect => to.forwarded(SERVER_MAC, LAN_MAC),
            to => to,
        };
        let fin = fwd.clone().flags(TCP_FIN | TCP_ACK);
        let expect = |dp: &mut Dataplane, what, pkt: &Pkt, reason, misses| {
            run_case("flow cache", dp, &[step(what, Hook::WanIngress, pkt, reason, Some(&out(pkt, reason)))]);
            assert_eq!(dp.cache_misses(), misses, "after {what}: flow cache misses");
        };
        expect(dp, "new flow: slow path", &fwd, Reason::IngressNewFlow, 0);
        expect(dp, "known flow: forwarded by conntrack, copied", &fwd, Reason::FastRedirect, 1);
        for _ in 0..3 {
            expect(dp, "again: from the cache", &fwd, Reason::FastRedirect, 1);
        }
        expect(dp, "a FIN, unrecorded: conntrack", &fin, Reason::FastRedirect, 2);
        expect(dp, "another FIN: from the cache", &fin, Reason::FastRedirect, 2);
        let fin_recorded = dp.ct().iter().any(|(k, e)| k.sport.host() == 41000 && e.flags & CT_S_FIN != 0);
        assert!(fin_recorded, "conntrack recorded the FIN");

        // The controller removes the flow (e.g. `map del`): its copy must not serve.
        for (k, _) in dp.ct() {
            dp.remove_ct(&k);
        }
        dp.flows_removed();
        expect(dp, "after the flow's removal: a new flow", &fwd, Reason::IngressNewFlow, 2);
        expect(dp, "then conntrack again", &fwd, Reason::FastRedirect, 3);
        expect(dp, "then the cache", &fwd, Reason::FastRedirect, 3);

        // The kernel's LRU evicts the flow (no generation moves) and the mapping changes; a
        // FIN, which the copy has not recorded, re-creates the flow towards the new server. The
        // CPU's copy of the old flow must not serve the next packet.
        for (k, _) in dp.ct() {
            dp.remove_ct(&k);
        }
        let other = "192.168.0.3:80";
        dp.add_mapping(L4::Tcp, PUBLIC_80, other);
        let to_other = |p: &Pkt| p.with("198.51.100.9:41000", other);
        run_case(
            "flow cache",
            dp,
            &[
                step(
                    "evicted, FIN: a new flow to the new server",
                    Hook::WanIngress,
                    &fin,
                    Reason::IngressNewFlow,
                    Some(&to_other(&fin)),
                ),
                step(
                    "next: the new flow, not the old copy",
                    Hook::WanIngress,
                    &fwd,
                    Reason::FastRedirect,
                    Some(&to_other(&fwd).forwarded(CLIENT_MAC, LAN_MAC)),
                ),
            ],
        );
        assert_eq!(dp.cache_misses(), 4, "the new flow's first fast packet went through conntrack");
    });
}

/// While the controller marks conntrack under pressure (the LRU may be evicting live flows),
/// every new flow moves the dataplane's generation: no cached copy survives it, whichever CPU
/// holds it. Without the mark, new flows leave copies alone.
fn under_conntrack_pressure_new_flows_retire_cached_copies(mode: Mode) {
    use hairpin_common::CFG_F_CT_PRESSURE;
    for pressure in [false, true] {
        let mark = if pressure { CFG_F_CT_PRESSURE } else { 0 };
        in_fast_gateway("pressure", mode, mark, move |dp| {
            dp.add_mapping(L4::Udp, "203.0.113.1:53", "192.168.0.2:53");
            let a = Pkt::udp("198.51.100.9:41000", "203.0.113.1:53");
            let b = Pkt::udp("198.51.100.9:41001", "203.0.113.1:53");
            let (v_new, v_fast) = (
                dp.verdict(Hook::WanIngress, Reason::IngressNewFlow),
                dp.verdict(Hook::WanIngress, Reason::FastRedirect),
            );
            let mut send = |p: &Pkt| dp.run(Hook::WanIngress, &p.build()).0;
            assert_eq!([send(&a), send(&a), send(&a)], [v_new, v_fast, v_fast]);
            assert_eq!(dp.cache_misses(), 1, "a's second packet was copied, its third served from the copy");
            let mut send = |p: &Pkt| dp.run(Hook::WanIngress, &p.build()).0;
            assert_eq!(send(&b), v_new, "b: a new flow");
            assert_eq!(send(&a), v_fast);
            let (misses, generation) = (dp.cache_misses(), dp.dataplane_generation());
            match pressure {
                true => {
                    assert_eq!(misses, 2, "under pressure, b's creation retired a's copy");
                    assert_eq!(generation, 2, "each new flow moved the generation");
                }
                false => {
                    assert_eq!(misses, 1, "a's copy survived b's creation");
                    assert_eq!(generation, 0);
                }
            }
        });
    }
}

/// `in_gateway_ns` with the lab's configuration, the fast path on and `flags` added, on CPU 0
/// only: the flow cache is per CPU, so each test run must see the last one's.
fn in_fast_gateway(name: &str, mode: Mode, flags: u32, test: impl FnOnce(&mut Dataplane) + Send + 'static) {
    let cfg = Config { flags: dp::lab_config().flags | hairpin_common::CFG_F_FAST_PATH | flags, ..dp::lab_config() };
    in_gateway_ns(name, cfg, mode, |dp| {
        hairpin_lab::pin_thread_to_cpu(0).unwrap();
        test(dp)
    });
}

// Every case runs with ingress as XDP programs and as TC programs: one shared code path, the
// fast path's included, which must decide and rewrite the same.
macro_rules! in_both_modes {
    ($($name:ident),* $(,)?) => {
        mod xdp {
            $(#[test]
            fn $name() {
                super::$name(super::Mode::Xdp)
            })*
        }
        mod tc {
            $(#[test]
            fn $name() {
                super::$name(super::Mode::Tc)
            })*
        }
    };
}

in_both_modes! {
    wan_port_forward_tcp_with_port_change,
    hairpin_tcp_rewrites_source_and_restores_both_ends,
    hairpin_and_wan_udp,
    udp_without_checksum_stays_without,
    ipv4_options_are_skipped_and_kept,
    pass_through_untouched,
    malformed_headers_are_dropped,
    no_hairpin_rewrites_destination_only,
    hairpin_port_taken_allocates_another,
    hairpin_port_exhaustion_drops_new_flows_only,
    reply_tuple_owned_by_another_flow_is_refused_whole,
    masquerade_lan_to_internet_tcp_and_udp,
    masquerade_ports_avoid_forwards_and_live_flows,
    tcp_state_is_tracked_per_direction,
    boundary_checks_drop_and_count,
    boundary_has_no_gaps,
    icmp_echo_is_masqueraded_by_identifier,
    icmp_errors_are_translated_with_their_flow,
    mappings_are_endpoint_independent_and_udp_filtering_switchable,
    hairpin_to_dynamic_bindings,
    an_original_entry_without_its_reply_is_never_used,
    fast_path_forwards_known_flows_and_leaves_the_rest_to_the_kernel,
    flow_cache_serves_known_flows_and_yields_to_conntrack,
    under_conntrack_pressure_new_flows_retire_cached_copies,
}
