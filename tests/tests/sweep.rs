//! The controller's flow sweep (`hairpin-ctl run`) against a loaded dataplane's maps, without
//! attaching anything.

use aya::maps::{Array, HashMap, MapData};
use hairpin_common::{
    CFG_F_CT_PRESSURE, CT_F_CONFIRMED, CT_F_LEFT, Config, CtEntry, EgressEntry, Endpoint, FlowKey, Ipv4Be, PortBe,
    consts::{IPPROTO_UDP, map_names},
    flow_cache::{GEN_CONTROLLER, PRESSURE_PERCENT},
    nat::plan_flow,
};
use hairpin_ctl::{conntrack, dataplane, sweep};
use hairpin_lab::raw;
use hairpin_tests::dp::ep;

/// Flows the table is sized for: 2,048 conntrack entries.
const MAX_FLOWS: u32 = 1024;

/// The tables as the dataplane writes them (the test plays the dataplane), beside the
/// controller's `Maps` on the same object.
struct Dataplane {
    ct: HashMap<MapData, FlowKey, CtEntry>,
    ct_new: HashMap<MapData, FlowKey, CtEntry>,
    egress: HashMap<MapData, FlowKey, EgressEntry>,
    egress_new: HashMap<MapData, FlowKey, EgressEntry>,
    ct_gen: Array<MapData, u32>,
}

/// A loaded dataplane configured `cfg`: the raw tables and the controller's maps.
fn loaded(cfg: &Config) -> (Dataplane, dataplane::Maps) {
    let mut ebpf = dataplane::load(MAX_FLOWS, true).expect("load the dataplane");
    Array::try_from(ebpf.map_mut(map_names::CONFIG).unwrap()).unwrap().set(0, cfg, 0).unwrap();
    let raw = |name| raw::of_object(&ebpf, name).unwrap();
    let dp = Dataplane {
        ct: raw(map_names::CONNTRACK).try_into().unwrap(),
        ct_new: raw(map_names::UNCONFIRMED).try_into().unwrap(),
        egress: raw(map_names::EGRESS).try_into().unwrap(),
        egress_new: raw(map_names::EGRESS_UNCONFIRMED).try_into().unwrap(),
        ct_gen: raw(map_names::CT_GEN).try_into().unwrap(),
    };
    (dp, dataplane::Maps::take(&mut ebpf).expect("the dataplane's maps"))
}

/// The sweep marks conntrack under pressure from three quarters full of confirmed flows (so
/// that confirmations, which may evict one, then invalidate the flow cache), clears the mark
/// once it drains, and leaves the configuration otherwise as it was. Unconfirmed flows, in a
/// table of their own, do not count.
#[test]
fn sweep_marks_conntrack_pressure_and_clears_it() {
    hairpin_tests::require_root();
    let cfg = Config { timeouts: Default::default(), ..hairpin_tests::dp::lab_config() };
    let (mut dp, mut maps) = loaded(&cfg);
    let now = conntrack::boot_ns();
    // UDP flows from distinct LAN ports, both directions each, all fresh.
    let flows: Vec<_> = (0..)
        .map(|i: u32| {
            let src = Endpoint::new(Ipv4Be::from_octets([192, 168, 0, 3]), PortBe::from_host(10_000 + i as u16));
            let dst = Endpoint::new(Ipv4Be::from_octets([198, 51, 100, 7]), PortBe::from_host(53));
            plan_flow(&FlowKey::new(IPPROTO_UDP, src, dst), dst, None, CT_F_LEFT | CT_F_CONFIRMED, now)
        })
        .take(MAX_FLOWS as usize)
        .collect();
    let at_threshold = (2 * MAX_FLOWS as usize * PRESSURE_PERCENT as usize / 100) / 2;
    let flags = |maps: &dataplane::Maps| maps.config().unwrap().flags;
    let generation = |dp: &Dataplane| dp.ct_gen.get(&GEN_CONTROLLER, 0).unwrap();
    let insert = |dp: &mut Dataplane, plans: &[hairpin_common::nat::FlowPlan]| {
        for p in plans {
            dp.ct.insert(&p.orig_key, &p.orig, 0).unwrap();
            dp.ct.insert(&p.reply_key, &p.reply, 0).unwrap();
        }
    };

    insert(&mut dp, &flows[..at_threshold - 1]);
    // As many flows again, not confirmed.
    for i in 0..at_threshold as u16 {
        let src = Endpoint::new(Ipv4Be::from_octets([192, 168, 0, 4]), PortBe::from_host(10_000 + i));
        let dst = Endpoint::new(Ipv4Be::from_octets([198, 51, 100, 7]), PortBe::from_host(53));
        let p = plan_flow(&FlowKey::new(IPPROTO_UDP, src, dst), dst, None, 0, now);
        dp.ct_new.insert(&p.orig_key, &p.orig, 0).unwrap();
        dp.ct_new.insert(&p.reply_key, &p.reply, 0).unwrap();
    }
    sweep::sweep(&mut maps, now).unwrap();
    assert_eq!(flags(&maps), cfg.flags, "just under three quarters confirmed: no pressure");

    insert(&mut dp, &flows[at_threshold - 1..at_threshold]);
    let s = sweep::sweep(&mut maps, now).unwrap();
    assert_eq!(s.expired + s.orphans, 0, "nothing was due");
    assert_eq!(flags(&maps), cfg.flags | CFG_F_CT_PRESSURE, "three quarters full: under pressure");
    assert_eq!(maps.config().unwrap(), Config { flags: cfg.flags | CFG_F_CT_PRESSURE, ..cfg }, "only the flag");
    let before = generation(&dp);

    // Flows removed as `flows flush` would: the generation moves, and the next sweep sees the
    // table drained.
    let drained: Vec<_> =
        flows[..at_threshold / 2].iter().flat_map(|p| [(p.orig_key, p.orig), (p.reply_key, p.reply)]).collect();
    maps.remove_entries(drained).unwrap();
    assert_ne!(generation(&dp), before, "removing flows moves the controller's generation");
    sweep::sweep(&mut maps, now).unwrap();
    assert_eq!(flags(&maps), cfg.flags, "drained: the mark is cleared");
}

/// The sweep takes two entries for one flow only when each one's translation leads to the
/// other: an original entry whose reply tuple another flow holds now (its own reply evicted)
/// goes alone, once past the grace period, and the other flow keeps its reply entry. Egress
/// entries whose conntrack entry went (LRU eviction) go too; a live flow's stay.
#[test]
fn sweep_pairs_entries_by_translation_and_removes_stray_egress_entries() {
    hairpin_tests::require_root();
    let cfg = Config { timeouts: Default::default(), ..hairpin_tests::dp::lab_config() };
    let (mut dp, mut maps) = loaded(&cfg);
    let now = conntrack::boot_ns();
    let ep = |a: [u8; 4], p: u16| Endpoint::new(Ipv4Be::from_octets(a), PortBe::from_host(p));
    let server = ep([192, 168, 0, 2], 53);
    let public = |p| ep([203, 0, 113, 1], p);
    // Two forwards to one service from one client port: flow b's reply tuple is flow a's.
    let client = ep([198, 51, 100, 7], 40000);
    let a = plan_flow(&FlowKey::new(IPPROTO_UDP, client, public(5353)), server, None, 0, now);
    let b = plan_flow(&FlowKey::new(IPPROTO_UDP, client, public(5354)), server, None, 0, now);
    assert_eq!(a.reply_key, b.reply_key);
    let orphan_age = now - 2_000_000_000;
    let b_orig = hairpin_common::CtEntry { created_ns: orphan_age, ..b.orig };
    for (k, e) in [(a.orig_key, a.orig), (a.reply_key, a.reply)] {
        dp.ct.insert(&k, &e, 0).unwrap();
        let (egress_key, value) = hairpin_common::nat::egress(&k, &e);
        dp.egress.insert(&egress_key, &value, 0).unwrap();
    }
    // b's own reply entry was evicted, and a took its tuple since.
    dp.ct.insert(&b.orig_key, &b_orig, 0).unwrap();
    // And an egress entry of a flow the LRU evicted whole.
    let gone = plan_flow(&FlowKey::new(IPPROTO_UDP, ep([198, 51, 100, 8], 1), public(5353)), server, None, 0, now);
    let (gone_key, gone_value) = hairpin_common::nat::egress(&gone.orig_key, &gone.orig);
    dp.egress.insert(&gone_key, &gone_value, 0).unwrap();

    let (flows, _) = conntrack::snapshot(&maps).unwrap();
    let b_flow = flows.iter().find(|f| f.orig_key == b.orig_key).unwrap();
    assert!(b_flow.reply.is_none(), "a's reply entry is not b's: {:?}", b_flow.reply);
    let s = sweep::sweep(&mut maps, now).unwrap();
    assert_eq!((s.orphans, s.expired), (1, 0), "b's entry alone");
    let left: Vec<FlowKey> = dp.ct.keys().map(Result::unwrap).collect();
    assert!(left.contains(&a.orig_key) && left.contains(&a.reply_key) && !left.contains(&b.orig_key), "{left:?}");
    let egress: Vec<FlowKey> = dp.egress.keys().map(Result::unwrap).collect();
    assert_eq!(egress.len(), 2, "a's two egress entries only: {egress:?}");
    assert!(!egress.contains(&gone_key));
}

/// A flow whose egress entry the unconfirmed flows' egress LRU evicted (apart from conntrack's
/// LRU) goes whole once past the grace period: its packets would leave untranslated and it
/// could never be confirmed. A whole flow stays, as does one just made (its egress entries
/// may be going in). (The differential test's full tables found such flows kept.)
#[test]
fn sweep_removes_flows_whose_egress_entry_was_evicted() {
    hairpin_tests::require_root();
    let cfg = Config { timeouts: Default::default(), ..hairpin_tests::dp::lab_config() };
    let (mut dp, mut maps) = loaded(&cfg);
    let now = conntrack::boot_ns();
    let flow = |client: u16, created_ns| {
        let key = FlowKey::new(IPPROTO_UDP, ep(&format!("198.51.100.7:{client}")), ep("203.0.113.1:5353"));
        let f = plan_flow(&key, ep("192.168.0.2:53"), None, 0, now);
        let with = |e: CtEntry| CtEntry { created_ns, ..e };
        [(f.orig_key, with(f.orig)), (f.reply_key, with(f.reply))]
    };
    let old = now - 2_000_000_000;
    let (lost, whole, young) = (flow(1, old), flow(2, old), flow(3, now));
    for (i, entries) in [&lost, &whole, &young].into_iter().enumerate() {
        for (n, (k, e)) in entries.iter().enumerate() {
            dp.ct_new.insert(k, e, 0).unwrap();
            // The lost and the young flow's reply egress entries are missing.
            if i == 1 || n == 0 {
                let (egress_key, value) = hairpin_common::nat::egress(k, e);
                dp.egress_new.insert(&egress_key, &value, 0).unwrap();
            }
        }
    }
    let s = sweep::sweep(&mut maps, now).unwrap();
    assert_eq!((s.orphans, s.expired), (1, 0), "the flow whose egress entry went, alone");
    let left: Vec<FlowKey> = dp.ct_new.keys().map(Result::unwrap).collect();
    assert_eq!(left.len(), 4, "the whole and the young flow's entries: {left:?}");
    assert!(!left.contains(&lost[0].0) && !left.contains(&lost[1].0), "{left:?}");
    let egress = dp.egress_new.keys().count();
    assert_eq!(egress, 3, "the whole flow's two egress entries and the young one's");
}
