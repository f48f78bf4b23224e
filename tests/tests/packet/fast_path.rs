//! The fast path and its flow cache: known flows translated whole and sent on by the hook itself,
//! once the kernel has forwarded them both ways.

use super::*;

/// One direction of a flow on the slow path: the packet at `ingress`, as ingress leaves it
/// (`routed`), and as it leaves the gateway at `egress` (`out`).
struct Dir {
    ingress: Hook,
    pkt: Pkt,
    routed: Pkt,
    egress: Hook,
    out: Pkt,
}

/// A direction's packet: arriving at `ingress` as `pkt`, routed by the kernel as `routed`,
/// leaving `egress` as `out`.
fn dir(ingress: Hook, pkt: &Pkt, routed: &Pkt, egress: Hook, out: &Pkt) -> Dir {
    Dir { ingress, pkt: pkt.clone(), routed: routed.clone(), egress, out: out.clone() }
}

/// The steps that confirm a flow whose first packet (of `orig`) ingress has made it with: the
/// kernel forwards that packet (egress sees it leave), then a reply, which leaves too. Each
/// direction goes through the kernel until both have left.
fn confirm(what: &'static str, orig: &Dir, reply: &Dir) -> Vec<Step> {
    let leaves = |d: &Dir| step(what, d.egress, &d.routed, Reason::EgressFlow, Some(&d.out));
    let slow = |d: &Dir| step(what, d.ingress, &d.pkt, Reason::IngressFlow, Some(&d.routed));
    vec![leaves(orig), slow(reply), leaves(reply)]
}

/// The steps that make the forward's flow from 198.51.100.9:41000 to port 80 (a new flow on
/// the slow path) and confirm it (the kernel forwards it both ways).
fn forward_confirmed() -> Vec<Step> {
    let fwd = Pkt::tcp("198.51.100.9:41000", PUBLIC_80);
    let fwd_in = fwd.with("198.51.100.9:41000", SERVER_80);
    let reply = Pkt::tcp(SERVER_80, "198.51.100.9:41000");
    let mut steps = vec![step("new flow: slow path", Hook::WanIngress, &fwd, Reason::IngressNewFlow, Some(&fwd_in))];
    steps.extend(confirm(
        "the kernel forwards it both ways",
        &dir(Hook::WanIngress, &fwd, &fwd_in, Hook::LanEgress, &fwd_in),
        &dir(Hook::LanIngress, &reply, &reply, Hook::WanEgress, &reply.with(PUBLIC_80, "198.51.100.9:41000")),
    ));
    steps
}

/// The kernel decides, the fast path follows: a flow's packets go through the kernel (its
/// forward chain, rp_filter, MSS clamping) until a packet of each direction has been seen
/// leaving at egress; only then does the fast path serve it. A flow whose packets the kernel
/// drops (its filter) never leaves, so it is never served.
fn fast_path_serves_only_flows_the_kernel_forwarded_both_ways(mode: Mode) {
    use hairpin_common::{CT_F_CONFIRMED, CT_F_LEFT};
    let syn = Pkt::tcp("198.51.100.9:41000", PUBLIC_80).flags(frame::TCP_SYN);
    let syn_in = syn.with("198.51.100.9:41000", SERVER_80);
    let fwd = Pkt::tcp("198.51.100.9:41000", PUBLIC_80);
    let fwd_in = fwd.with("198.51.100.9:41000", SERVER_80);
    let reply = Pkt::tcp(SERVER_80, "198.51.100.9:41000").flags(frame::TCP_SYN | frame::TCP_ACK);
    let reply_out = reply.with(PUBLIC_80, "198.51.100.9:41000");
    // Another internet host, which the gateway's filter keeps out: its packets never leave.
    let barred = Pkt::tcp("198.51.100.99:41000", PUBLIC_80).flags(frame::TCP_SYN);
    let barred_in = barred.with("198.51.100.99:41000", SERVER_80);
    Case::new("confirmation", Env::Fast(0))
        .forward(L4::Tcp, PUBLIC_80, SERVER_80)
        .steps(vec![
            step("SYN: a new flow", Hook::WanIngress, &syn, Reason::IngressNewFlow, Some(&syn_in)),
            step(
                "SYN again, not seen leaving: the kernel's",
                Hook::WanIngress,
                &syn,
                Reason::IngressFlow,
                Some(&syn_in),
            ),
            step("the kernel forwards it", Hook::LanEgress, &syn_in, Reason::EgressFlow, None),
            step("only one way: still the kernel's", Hook::WanIngress, &syn, Reason::IngressFlow, Some(&syn_in)),
            step("SYN-ACK: the kernel's", Hook::LanIngress, &reply, Reason::IngressFlow, None),
            step("the kernel forwards it", Hook::WanEgress, &reply, Reason::EgressFlow, Some(&reply_out)),
            step(
                "both directions have left: fast",
                Hook::LanIngress,
                &reply,
                Reason::FastRedirect,
                Some(&reply_out.forwarded(ROUTER_MAC, WAN_MAC)),
            ),
            step(
                "fast both ways",
                Hook::WanIngress,
                &fwd,
                Reason::FastRedirect,
                Some(&fwd_in.forwarded(SERVER_MAC, LAN_MAC)),
            ),
            step("barred host: a new flow", Hook::WanIngress, &barred, Reason::IngressNewFlow, Some(&barred_in)),
            step("dropped by the filter, retried", Hook::WanIngress, &barred, Reason::IngressFlow, Some(&barred_in)),
            step("and again", Hook::WanIngress, &barred, Reason::IngressFlow, Some(&barred_in)),
        ])
        .leaves_flows(4)
        .run_then(mode, |dp| {
            let flags = |src: &str| {
                let mut f: Vec<u32> = dp
                    .ct()
                    .iter()
                    .filter(|(k, e)| k.src == ep(src).addr || e.xlate.dst == ep(src).addr)
                    .map(|(_, e)| e.flags & (CT_F_LEFT | CT_F_CONFIRMED))
                    .collect();
                f.sort();
                f
            };
            assert_eq!(flags("198.51.100.9:1"), [CT_F_LEFT | CT_F_CONFIRMED; 2], "both directions confirmed");
            assert_eq!(flags("198.51.100.99:1"), [0, 0], "the barred flow: nothing left, nothing confirmed");
        });
}

/// The fast path: a known flow's packet is translated whole, its TTL decremented and its MAC
/// addresses set from the FIB, and XDP sends it on: redirected to the other interface, or back
/// out of the LAN when hairpinned. Whatever the kernel must handle takes the slow path, counted.
fn fast_path_forwards_known_flows_and_leaves_the_rest_to_the_kernel(mode: Mode) {
    use hairpin_common::Slow;
    // Known flows' packets after the first fast one come from the flow cache, the TTL and MTU
    // cases included (which it must leave to conntrack's path).
    let fwd = Pkt::tcp("198.51.100.9:41000", PUBLIC_80);
    let fwd_in = fwd.with("198.51.100.9:41000", SERVER_80);
    let reply = Pkt::tcp(SERVER_80, "198.51.100.9:41000");
    let hp = Pkt::tcp("192.168.0.3:40000", PUBLIC_80);
    let hp_reply = Pkt::tcp(SERVER_80, "192.168.0.1:40000");
    let masq = Pkt::udp("192.168.0.3:33000", "198.18.0.1:53");
    let masq_out = masq.with("203.0.113.1:33000", "198.18.0.1:53");
    let masq_reply = Pkt::udp("198.18.0.1:53", "203.0.113.1:33000");
    let masq_reply_in = masq_reply.with("198.18.0.1:53", "192.168.0.3:33000");
    let big = reply.clone().payload_len(1400);
    let hp_in = hp.with("192.168.0.3:40000", SERVER_80);
    let hp_out = hp.with("192.168.0.1:40000", SERVER_80);
    let hp_reply_out = hp_reply.with(PUBLIC_80, "192.168.0.3:40000");
    let mut steps = forward_confirmed();
    steps.extend(vec![
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
    ]);
    steps.extend(confirm(
        "the kernel forwards the hairpin both ways",
        &dir(Hook::LanIngress, &hp, &hp_in, Hook::LanEgress, &hp_out),
        &dir(
            Hook::LanIngress,
            &hp_reply,
            &hp_reply.with(SERVER_80, "192.168.0.3:40000"),
            Hook::LanEgress,
            &hp_reply_out,
        ),
    ));
    steps.extend(vec![
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
    ]);
    steps.extend(confirm(
        "the kernel forwards the masquerade both ways",
        &dir(Hook::LanIngress, &masq, &masq, Hook::WanEgress, &masq_out),
        &dir(Hook::WanIngress, &masq_reply, &masq_reply_in, Hook::LanEgress, &masq_reply_in),
    ));
    steps.push(step("next hop not resolved: slow path", Hook::LanIngress, &masq, Reason::IngressFlow, None));
    Case::new("fast path", Env::Fast(0)).forward(L4::Tcp, PUBLIC_80, SERVER_80).steps(steps).run_then(mode, |dp| {
        for (why, n) in
            [(Slow::Ttl, 1), (Slow::FragNeeded, 1), (Slow::NoNeighbour, 1), (Slow::Route, 0), (Slow::Header, 0)]
        {
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
    Case::new("fcache", Env::Fast(0)).forward(L4::Tcp, PUBLIC_80, SERVER_80).run_then(mode, |dp| {
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
        dp.confirm_all();
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
        dp.confirm_all();
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
            &[step(
                "evicted, FIN: a new flow to the new server",
                Hook::WanIngress,
                &fin,
                Reason::IngressNewFlow,
                Some(&to_other(&fin)),
            )],
        );
        dp.confirm_all();
        run_case(
            "flow cache",
            dp,
            &[step(
                "next: the new flow, not the old copy",
                Hook::WanIngress,
                &fwd,
                Reason::FastRedirect,
                Some(&to_other(&fwd).forwarded(CLIENT_MAC, LAN_MAC)),
            )],
        );
        assert_eq!(dp.cache_misses(), 4, "the new flow's first fast packet went through conntrack");
    });
}

/// A flow's copy left unused for 40 minutes (the flow idle, or served on another CPU) goes
/// back to conntrack: its deadline, long past, read as ahead once the stamps had wrapped
/// halfway (after 37 minutes), and the copy served again without conntrack for up to 36
/// minutes (a next hop that old, the flow's last-seen time unrefreshed).
fn a_copy_unused_for_long_does_not_serve(mode: Mode) {
    use hairpin_tests::frame::TCP_ACK;
    Case::new("fcache idle", Env::Fast(0)).forward(L4::Tcp, PUBLIC_80, SERVER_80).run_then(mode, |dp| {
        let fwd = Pkt::tcp("198.51.100.9:41000", PUBLIC_80).flags(TCP_ACK).build();
        dp.run(Hook::WanIngress, &fwd);
        dp.confirm_all();
        for _ in 0..3 {
            dp.run(Hook::WanIngress, &fwd);
        }
        assert_eq!(dp.cache_misses(), 1, "copied once, then served from the copy");
        for (minutes, misses) in [(40, 2), (70, 3), (1, 4)] {
            dp.age_flow_cache(minutes * 60_000_000_000);
            dp.run(Hook::WanIngress, &fwd);
            assert_eq!(dp.cache_misses(), misses, "{minutes} minutes on: flow cache misses");
        }
    });
}

/// While the controller marks the confirmed table under pressure (its LRU may be evicting live
/// flows), every flow confirmed (moved into it) moves the dataplane's generation: no cached
/// copy survives it, whichever CPU holds it. Without the mark, copies are left alone; and new
/// flows, which go into the unconfirmed table and evict only their own kind, never retire any.
fn under_conntrack_pressure_confirmed_flows_retire_cached_copies(mode: Mode) {
    use hairpin_common::CFG_F_CT_PRESSURE;
    for pressure in [false, true] {
        let mark = if pressure { CFG_F_CT_PRESSURE } else { 0 };
        Case::new("pressure", Env::Fast(mark)).forward(L4::Udp, "203.0.113.1:53", "192.168.0.2:53").run_then(
            mode,
            move |dp| {
                let a = Pkt::udp("198.51.100.9:41000", "203.0.113.1:53");
                let b = Pkt::udp("198.51.100.9:41001", "203.0.113.1:53");
                let b_in = b.with("198.51.100.9:41001", "192.168.0.2:53");
                let b_reply = Pkt::udp("192.168.0.2:53", "198.51.100.9:41001");
                let v = |dp: &Dataplane, hook, reason| dp.verdict(hook, reason);
                let (v_new, v_fast) =
                    (v(dp, Hook::WanIngress, Reason::IngressNewFlow), v(dp, Hook::WanIngress, Reason::FastRedirect));
                assert_eq!(dp.run(Hook::WanIngress, &a.build()).0, v_new);
                dp.confirm_all();
                let mut send = |p: &Pkt| dp.run(Hook::WanIngress, &p.build()).0;
                assert_eq!([send(&a), send(&a)], [v_fast, v_fast]);
                assert_eq!(dp.cache_misses(), 1, "a's second packet was copied, its third served from the copy");
                let mut send = |p: &Pkt| dp.run(Hook::WanIngress, &p.build()).0;
                assert_eq!(send(&b), v_new, "b: a new flow");
                assert_eq!(send(&a), v_fast);
                assert_eq!((dp.cache_misses(), dp.dataplane_generation()), (1, 0), "b's creation retired nothing");
                // The kernel forwards b both ways: egress confirms it.
                let egress = v(dp, Hook::LanEgress, Reason::EgressFlow);
                assert_eq!(dp.run(Hook::LanEgress, &b_in.build()).0, egress);
                assert_eq!(dp.run(Hook::LanIngress, &b_reply.build()).0, v(dp, Hook::LanIngress, Reason::IngressFlow));
                assert_eq!(dp.run(Hook::WanEgress, &b_reply.build()).0, v(dp, Hook::WanEgress, Reason::EgressFlow));
                assert_eq!(dp.run(Hook::WanIngress, &a.build()).0, v_fast);
                let (misses, generation) = (dp.cache_misses(), dp.dataplane_generation());
                match pressure {
                    true => {
                        assert_eq!((misses, generation), (2, 1), "under pressure, b's confirmation retired a's copy")
                    }
                    false => assert_eq!((misses, generation), (1, 0), "a's copy survived b's confirmation"),
                }
            },
        );
    }
}

/// Flows the kernel never forwards (a SYN flood at a forward from spoofed sources, which the
/// gateway's filter or the server never answers) fill a table of their own: they evict each
/// other, never a confirmed flow. With tables for 64 flows, 400 unanswered SYNs later the
/// established flow is still there and still on the fast path; the new flows hold no more
/// than their table's room.
fn unconfirmed_flows_never_displace_confirmed_ones(mode: Mode) {
    let fwd = Pkt::tcp("198.51.100.9:41000", PUBLIC_80);
    let fwd_in = fwd.with("198.51.100.9:41000", SERVER_80);
    let steps = forward_confirmed();
    Case::new("flood", Env::Fast(0)).max_flows(64).forward(L4::Tcp, PUBLIC_80, SERVER_80).steps(steps).run_then(
        mode,
        move |dp| {
            let new = dp.verdict(Hook::WanIngress, Reason::IngressNewFlow);
            for i in 0..400u32 {
                let src = format!("198.18.{}.{}:{}", i / 200, i % 200 + 1, 1024 + i);
                let syn = Pkt::tcp(&src, PUBLIC_80).flags(frame::TCP_SYN);
                assert_eq!(dp.run(Hook::WanIngress, &syn.build()).0, new, "SYN {i} from {src}: a new flow");
            }
            let unconfirmed = dp.unconfirmed().len();
            assert!(unconfirmed <= 64, "{unconfirmed} unconfirmed entries in a table for 32 flows");
            let fast = dp.verdict(Hook::WanIngress, Reason::FastRedirect);
            let (verdict, out) = dp.run(Hook::WanIngress, &fwd.build());
            assert_eq!(verdict, fast, "the established flow after the flood");
            assert!(out.starts_with(&fwd_in.forwarded(SERVER_MAC, LAN_MAC).build()), "{}", diff(&out, &fwd_in.build()));
            let established: Vec<_> = dp
                .ct()
                .into_iter()
                .filter(|(k, _)| k.src == ep("198.51.100.9:41000").addr || k.dst == ep("198.51.100.9:41000").addr)
                .collect();
            assert_eq!(established.len(), 2, "both of its entries: {established:#?}");
        },
    );
}

/// The fast path forwards only a header the kernel would forward as it does: one with options
/// takes the slow path (as netfilter's flowtable leaves them to the stack), and so does one
/// whose checksum is wrong, which the kernel then drops (RFC 1812: a router must), its error
/// kept by the translation, never made whole. (The differential test's model found it: the
/// fast path forwarded such a header.)
fn fast_path_leaves_options_and_bad_header_checksums_to_the_kernel(mode: Mode) {
    use hairpin_common::Slow;
    let fwd = Pkt::tcp("198.51.100.9:41000", PUBLIC_80);
    let fwd_in = fwd.with("198.51.100.9:41000", SERVER_80);
    let nops = [1, 1, 1, 0];
    // The identification changed, the checksum not: wrong by as much in and out.
    let bad_id = |p: &Pkt| {
        let mut f = p.build();
        f[18..20].copy_from_slice(&[0xbe, 0xef]);
        f
    };
    let mut steps = forward_confirmed();
    steps.extend([
        step(
            "options: slow path",
            Hook::WanIngress,
            &fwd.clone().options(&nops),
            Reason::IngressFlow,
            Some(&fwd_in.clone().options(&nops)),
        ),
        Step {
            output: Some(bad_id(&fwd_in)),
            ..raw(
                "a wrong header checksum: slow path, still wrong",
                Hook::WanIngress,
                bad_id(&fwd),
                Reason::IngressFlow,
            )
        },
        step(
            "a good one: fast",
            Hook::WanIngress,
            &fwd,
            Reason::FastRedirect,
            Some(&fwd_in.forwarded(SERVER_MAC, LAN_MAC)),
        ),
    ]);
    Case::new("fast path headers", Env::Fast(0)).forward(L4::Tcp, PUBLIC_80, SERVER_80).steps(steps).run_then(
        mode,
        |dp| {
            assert_eq!(dp.slow(Slow::Header), 2, "slow path because of the header");
        },
    );
}

/// Every RST goes to conntrack, to be judged against what its receiver acknowledged (and
/// counted if far from it), even on a flow whose cached copy has recorded one. (The
/// differential test found a far RST served by such a copy, judged and counted by no one.)
fn rsts_are_judged_by_conntrack_even_once_a_copy_has_recorded_one(mode: Mode) {
    use hairpin_common::Counter;
    use hairpin_tests::frame::TCP_RST;
    let client = "198.51.100.9:41000";
    // The server has acknowledged 77 (`forward_confirmed`'s reply).
    let rst = |seq| Pkt::tcp(client, PUBLIC_80).flags(TCP_RST).nums(seq, 0);
    let (near, far) = (rst(1000), rst(77 + (16 << 20)));
    let out = |p: &Pkt| p.with(client, SERVER_80).forwarded(SERVER_MAC, LAN_MAC);
    let mut steps = forward_confirmed();
    steps.extend([
        step("an RST near it: recorded, sent on", Hook::WanIngress, &near, Reason::FastRedirect, Some(&out(&near))),
        step("an RST 16 MiB past it: ignored, sent on", Hook::WanIngress, &far, Reason::FastRedirect, Some(&out(&far))),
        step("again", Hook::WanIngress, &far, Reason::FastRedirect, Some(&out(&far))),
    ]);
    Case::new("rst judged", Env::Fast(0)).forward(L4::Tcp, PUBLIC_80, SERVER_80).steps(steps).run_then(mode, |dp| {
        assert_eq!(dp.side_counter(Counter::TcpRstOutOfWindow), 2, "both far RSTs judged and counted");
    });
}

/// A SYN on a flow closed by an RST re-opens the tuple as a new flow, even when a CPU's copy
/// of the flow (which recorded its first SYN) could serve it. (The differential test found
/// such a SYN served by the copy, the closed flow living on.)
fn a_syn_reopens_a_closed_flow_a_copy_could_serve(mode: Mode) {
    use hairpin_tests::frame::{TCP_ACK, TCP_RST, TCP_SYN};
    let client = "198.51.100.9:41000";
    let syn = Pkt::tcp(client, PUBLIC_80).flags(TCP_SYN);
    let syn_in = syn.with(client, SERVER_80);
    let synack = Pkt::tcp(SERVER_80, client).flags(TCP_SYN | TCP_ACK);
    let ack = Pkt::tcp(client, PUBLIC_80).flags(TCP_ACK);
    // Near what the client acknowledged (77).
    let rst = Pkt::tcp(SERVER_80, client).flags(TCP_RST).nums(1000, 0);
    let mut steps =
        vec![step("the client's SYN: a new flow", Hook::WanIngress, &syn, Reason::IngressNewFlow, Some(&syn_in))];
    steps.extend(confirm(
        "the kernel forwards it both ways",
        &dir(Hook::WanIngress, &syn, &syn_in, Hook::LanEgress, &syn_in),
        &dir(Hook::LanIngress, &synack, &synack, Hook::WanEgress, &synack.with(PUBLIC_80, client)),
    ));
    steps.extend([
        step(
            "its ACK: fast, the flow copied (its SYN recorded)",
            Hook::WanIngress,
            &ack,
            Reason::FastRedirect,
            Some(&ack.with(client, SERVER_80).forwarded(SERVER_MAC, LAN_MAC)),
        ),
        step(
            "the server's RST: the flow closed",
            Hook::LanIngress,
            &rst,
            Reason::FastRedirect,
            Some(&rst.with(PUBLIC_80, client).forwarded(ROUTER_MAC, WAN_MAC)),
        ),
        step("the client's SYN again: a new flow", Hook::WanIngress, &syn, Reason::IngressNewFlow, Some(&syn_in)),
    ]);
    Case::new("syn reopens", Env::Fast(0)).forward(L4::Tcp, PUBLIC_80, SERVER_80).steps(steps).run(mode);
}

/// A bulk sender's RST is judged against what its receiver has acknowledged, though the flow
/// cache served those acknowledgments: each slot writes the acknowledgment into conntrack
/// once it has advanced a MiB (`flow_cache::ACK_REPORT`), and an older one sent again takes
/// nothing back. (Conntrack's was the last it had seen itself, up to 4 s old: at 16 Mbit/s
/// and more a genuine RST fell outside its window, ignored, the flow kept for its established
/// timeout. Found by the differential test once its acknowledgments moved.)
fn a_bulk_senders_rst_counts_though_the_cache_served_the_acknowledgments(mode: Mode) {
    use hairpin_common::Counter;
    use hairpin_tests::frame::{TCP_ACK, TCP_RST, TCP_SYN};
    let client = "198.51.100.9:41000";
    let mib = |n: u32| 77 + (n << 20);
    let ack = |n| Pkt::tcp(SERVER_80, client).flags(TCP_ACK).nums(1000, mib(n));
    let out = |p: &Pkt| p.with(PUBLIC_80, client).forwarded(ROUTER_MAC, WAN_MAC);
    let mut steps = forward_confirmed();
    for n in [2, 4, 6, 8, 10, 12, 4] {
        let a = ack(n);
        steps.push(step(
            "the server acknowledges the upload, fast",
            Hook::LanIngress,
            &a,
            Reason::FastRedirect,
            Some(&out(&a)),
        ));
    }
    // Near the 12 MiB acknowledged, 10 MiB past the last one conntrack saw itself.
    let rst = Pkt::tcp(client, PUBLIC_80).flags(TCP_RST).nums(mib(12) + 1000, 0);
    let syn = Pkt::tcp(client, PUBLIC_80).flags(TCP_SYN);
    steps.extend([
        step(
            "the client's RST: the flow closed",
            Hook::WanIngress,
            &rst,
            Reason::FastRedirect,
            Some(&rst.with(client, SERVER_80).forwarded(SERVER_MAC, LAN_MAC)),
        ),
        step("its SYN: a new flow", Hook::WanIngress, &syn, Reason::IngressNewFlow, Some(&syn.with(client, SERVER_80))),
    ]);
    Case::new("bulk rst", Env::Fast(0)).forward(L4::Tcp, PUBLIC_80, SERVER_80).steps(steps).run_then(mode, |dp| {
        assert_eq!(dp.side_counter(Counter::TcpRstOutOfWindow), 0, "the RST was in the window");
    });
}

in_both_modes! {
    a_copy_unused_for_long_does_not_serve,
    a_bulk_senders_rst_counts_though_the_cache_served_the_acknowledgments,
    a_syn_reopens_a_closed_flow_a_copy_could_serve,
    rsts_are_judged_by_conntrack_even_once_a_copy_has_recorded_one,
    fast_path_leaves_options_and_bad_header_checksums_to_the_kernel,
    fast_path_serves_only_flows_the_kernel_forwarded_both_ways,
    fast_path_forwards_known_flows_and_leaves_the_rest_to_the_kernel,
    flow_cache_serves_known_flows_and_yields_to_conntrack,
    under_conntrack_pressure_confirmed_flows_retire_cached_copies,
    unconfirmed_flows_never_displace_confirmed_ones,
}
