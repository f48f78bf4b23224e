//! The fast path and its flow cache: known flows translated whole and sent on by the hook itself.

use super::*;

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
    let big = reply.clone().payload_len(1400);
    Case::new("fast path", Env::Fast(0))
        .forward(L4::Tcp, PUBLIC_80, SERVER_80)
        .steps(vec![
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
        ])
        .run_then(mode, |dp| {
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
        Case::new("pressure", Env::Fast(mark)).forward(L4::Udp, "203.0.113.1:53", "192.168.0.2:53").run_then(
            mode,
            move |dp| {
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
            },
        );
    }
}

in_both_modes! {
    fast_path_forwards_known_flows_and_leaves_the_rest_to_the_kernel,
    flow_cache_serves_known_flows_and_yields_to_conntrack,
    under_conntrack_pressure_new_flows_retire_cached_copies,
}
