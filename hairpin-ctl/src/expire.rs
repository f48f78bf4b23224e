//! The flow sweep: removes flows whose idle timeout has passed, both directions and their
//! egress entries together, entries whose twin has gone (LRU eviction, a crash), and egress
//! entries whose conntrack entry has gone.

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use aya::maps::IterableMap as _;
use hairpin_common::{CT_F_REPLY, CtEntry, FlowKey, Ipv4Be, MappingKey, PortBe, expiry};

use crate::dataplane::Maps;

/// An entry younger than this is never called an orphan: its twin may be being inserted.
const ORPHAN_GRACE_NS: u64 = 1_000_000_000;

/// CLOCK_BOOTTIME in ns, the clock of `bpf_ktime_get_boot_ns`.
pub fn boot_ns() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME).expect("CLOCK_BOOTTIME");
    t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
}

/// One flow: its original-direction entry and, if present, the reply entry.
pub struct Flow {
    pub orig_key: FlowKey,
    pub orig: CtEntry,
    pub reply: Option<Entry>,
}

/// A conntrack entry with its key.
pub type Entry = (FlowKey, CtEntry);

/// Reads the whole table once. Returns the flows found through their original entries, and
/// reply entries whose original is missing. Two entries are a flow's only if each one's
/// translation leads to the other: a reply entry found by an original's key alone may be
/// another flow's (the original's own reply evicted, its tuple taken since).
pub fn snapshot(maps: &Maps) -> anyhow::Result<(Vec<Flow>, Vec<Entry>)> {
    // Unconfirmed flows first: an entry caught in both tables (being moved) is the confirmed.
    let mut all: HashMap<FlowKey, CtEntry> = maps.ct_new.iter().chain(maps.ct.iter()).collect::<Result<_, _>>()?;
    // Packets the flow cache served, not in conntrack yet. (A snapshot is read, never written
    // back: the sum is only ever shown.)
    for (k, c) in maps.cached_counts()? {
        if let Some(e) = all.get_mut(&k) {
            e.packets += c.packets;
            e.bytes += c.bytes;
        }
    }
    let mut flows = Vec::new();
    let mut lone_replies = Vec::new();
    for (k, e) in &all {
        let twin_key = e.xlate.reversed();
        // A LAN host's flow to its own binding is its own reply: one entry for both.
        if hairpin_common::nat::is_own(k, &e.xlate) {
            flows.push(Flow { orig_key: *k, orig: *e, reply: Some((*k, *e)) });
            continue;
        }
        let twin =
            all.get(&twin_key).filter(|t| t.xlate == k.reversed() && t.flags & CT_F_REPLY != e.flags & CT_F_REPLY);
        if e.flags & CT_F_REPLY == 0 {
            flows.push(Flow { orig_key: *k, orig: *e, reply: twin.map(|r| (twin_key, *r)) });
        } else if twin.is_none() {
            lone_replies.push((*k, *e));
        }
    }
    Ok((flows, lone_replies))
}

impl Flow {
    /// Its entries: the original direction first, then the reply if there is one (and is not
    /// the same entry: a flow to a host's own binding has one).
    pub fn entries(&self) -> impl Iterator<Item = Entry> {
        let own = self.reply.is_some_and(|(k, _)| k == self.orig_key);
        std::iter::once((self.orig_key, self.orig)).chain(self.reply.filter(|_| !own))
    }

    /// Whether the forward `key` made it: its original direction was addressed to the forward's
    /// public end (what a forward's flows are, for `map del`, `map list` and `apply`).
    pub fn made_by(&self, key: &hairpin_common::MappingKey) -> bool {
        self.orig_key.proto == key.proto && self.orig_key.dst_ep() == hairpin_common::Endpoint::new(key.addr, key.port)
    }

    /// Nanoseconds left before the flow expires (0: expired). A flow without its reply entry
    /// has no lifetime left once past the grace period.
    pub fn remaining_ns(&self, t: &hairpin_common::Timeouts, now: u64) -> u64 {
        match &self.reply {
            Some((_, r)) => expiry::remaining_ns(self.orig_key.proto, &self.orig, r, t, now),
            None if now.saturating_sub(self.orig.created_ns) < ORPHAN_GRACE_NS => 1,
            None => 0,
        }
    }
}

#[derive(Debug, Default)]
pub struct Sweep {
    pub flows: usize,
    pub expired: usize,
    pub orphans: usize,
    /// Bindings released because no flow uses them any more.
    pub unbound: usize,
    /// Egress entries removed because their conntrack entry had gone (LRU eviction).
    pub stray_egress: usize,
    pub elapsed: Duration,
    /// The flows it removed (original key and entry) and why: `expired`, or `evicted` (the
    /// LRU took one direction and the sweep the other).
    pub ended: Vec<(FlowKey, CtEntry, &'static str)>,
    /// The flows left (original key and entry).
    pub alive: HashMap<FlowKey, CtEntry>,
}

/// Removes expired flows and orphans at time `now` (boot ns).
pub fn sweep(maps: &mut Maps, now: u64) -> anyhow::Result<Sweep> {
    let start = Instant::now();
    let cfg = maps.config()?;
    let (timeouts, public) = (cfg.timeouts, cfg.public_addr);
    let (flows, lone_replies) = snapshot(maps)?;
    // The confirmed table's fill: it is where a move evicts flows CPUs hold copies of.
    let confirmed = flows
        .iter()
        .flat_map(|f| f.entries().collect::<Vec<_>>())
        .chain(lone_replies.iter().copied())
        .filter(|(_, e)| e.flags & hairpin_common::CT_F_CONFIRMED != 0)
        .count();
    mark_pressure(maps, &cfg, confirmed as u64)?;
    let mut s = Sweep { flows: flows.len(), ..Default::default() };
    let mut in_use = HashSet::new();
    let mut dead = Vec::new();
    for f in &flows {
        if f.remaining_ns(&timeouts, now) == 0 {
            if f.reply.is_none() {
                s.orphans += 1;
                s.ended.push((f.orig_key, f.orig, "evicted"));
            } else {
                s.expired += 1;
                s.ended.push((f.orig_key, f.orig, "expired"));
            }
            dead.extend(f.entries());
        } else {
            in_use.extend(public_ports(&f.orig_key, &f.orig, public));
            s.alive.insert(f.orig_key, f.orig);
        }
    }
    for (k, e) in &lone_replies {
        if now.saturating_sub(e.created_ns) >= ORPHAN_GRACE_NS {
            s.orphans += 1;
            // The reply entry's translation, reversed, is the original direction.
            s.ended.push((e.xlate.reversed(), CtEntry { xlate: k.reversed(), ..*e }, "evicted"));
            dead.push((*k, *e));
        } else {
            in_use.extend(public_ports(k, e, public));
        }
    }
    let gone: HashSet<FlowKey> = dead.iter().map(|(k, _)| *k).collect();
    let live: HashMap<FlowKey, FlowKey> = flows
        .iter()
        .flat_map(|f| f.entries().collect::<Vec<_>>())
        .chain(lone_replies.iter().copied())
        .filter(|(k, _)| !gone.contains(k))
        .map(|(k, e)| (k, e.xlate))
        .collect();
    maps.remove_entries(dead)?;
    s.stray_egress = remove_stray_egress(maps, &live)?;
    s.unbound = release_bindings(maps, &in_use, public, now)?;
    s.elapsed = start.elapsed();
    Ok(s)
}

/// Removes one flow (both directions and their rewrites), then releases the bindings it held
/// that no other flow holds. Returns how many bindings were released.
pub fn delete(maps: &mut Maps, flow: &Flow) -> anyhow::Result<usize> {
    let public = maps.config()?.public_addr;
    let held: HashSet<_> = flow.entries().flat_map(|(k, e)| public_ports(&k, &e, public).collect::<Vec<_>>()).collect();
    maps.remove_entries(flow.entries())?;
    let (flows, lone) = snapshot(maps)?;
    let in_use: HashSet<_> = flows
        .iter()
        .flat_map(|f| f.entries().collect::<Vec<_>>())
        .chain(lone)
        .flat_map(|(k, e)| public_ports(&k, &e, public).collect::<Vec<_>>())
        .collect();
    let bindings: Vec<(MappingKey, hairpin_common::Binding)> = maps.bindings.iter().collect::<Result<_, _>>()?;
    let free: Vec<_> = bindings
        .into_iter()
        .filter(|(k, b)| held.contains(&(k.proto, b.port)) && !in_use.contains(&(k.proto, b.port)))
        .collect();
    let n = free.len();
    maps.unbind(free, public)?;
    Ok(n)
}

/// Removes the egress entries whose conntrack entry is gone or another flow's now (the
/// conntrack LRU evicts entries without a word). `live` holds the snapshot's surviving entries
/// and their translations; an entry not there is looked up again before it goes, as a flow
/// may have been made since the snapshot (its conntrack entries go in before its egress ones).
fn remove_stray_egress(maps: &mut Maps, live: &HashMap<FlowKey, FlowKey>) -> anyhow::Result<usize> {
    let mut n = 0;
    for unconfirmed in [false, true] {
        n += remove_stray_egress_in(maps, live, unconfirmed)?;
    }
    Ok(n)
}

/// As [`remove_stray_egress`], in the egress table of unconfirmed flows or of confirmed ones.
fn remove_stray_egress_in(
    maps: &mut Maps,
    live: &HashMap<FlowKey, FlowKey>,
    unconfirmed: bool,
) -> anyhow::Result<usize> {
    fn table(
        maps: &mut Maps,
        unconfirmed: bool,
    ) -> &mut aya::maps::HashMap<aya::maps::MapData, FlowKey, hairpin_common::EgressEntry> {
        if unconfirmed { &mut maps.egress_new } else { &mut maps.egress }
    }
    let all: Vec<(FlowKey, hairpin_common::EgressEntry)> = table(maps, unconfirmed).iter().collect::<Result<_, _>>()?;
    let mut n = 0;
    for (k, v) in all {
        let (ct_key, xlate) = (v.ct_key, v.xlate(&k));
        if live.get(&ct_key) == Some(&xlate) {
            continue;
        }
        if [&maps.ct, &maps.ct_new].iter().any(|t| t.get(&ct_key, 0).is_ok_and(|e| e.xlate == xlate)) {
            continue;
        }
        let table = table(maps, unconfirmed);
        if table.get(&k, 0).is_ok_and(|cur| cur == v) {
            let _ = table.remove(&k);
            n += 1;
        }
    }
    Ok(n)
}

/// Sets or clears `CFG_F_CT_PRESSURE` as the confirmed table's fill says (`flow_cache::under_pressure`).
/// The configuration is written only when the flag changes.
fn mark_pressure(maps: &mut Maps, cfg: &hairpin_common::Config, entries: u64) -> anyhow::Result<()> {
    use hairpin_common::CFG_F_CT_PRESSURE;
    let capacity = maps.ct.map().info()?.max_entries();
    let pressure = hairpin_common::flow_cache::under_pressure(entries, capacity.into());
    if pressure == cfg.ct_pressure() {
        return Ok(());
    }
    // Only this bit is the sweep's to change.
    maps.update_config(|cur| {
        cur.flags = match pressure {
            true => cur.flags | CFG_F_CT_PRESSURE,
            false => cur.flags & !CFG_F_CT_PRESSURE,
        }
    })
    .context("marking conntrack's pressure in the configuration")
}

/// The (protocol, public port) pairs a flow entry holds: a binding is in use while one does.
fn public_ports(k: &FlowKey, e: &CtEntry, public: Ipv4Be) -> impl Iterator<Item = (u8, PortBe)> {
    let eps = [k.src_ep(), k.dst_ep(), e.xlate.src_ep(), e.xlate.dst_ep()];
    eps.into_iter().filter(move |ep| ep.addr == public).map(move |ep| (k.proto, ep.port))
}

/// Releases the bindings no live flow uses, once idle past the grace period (a flow being
/// created may be about to use one). Returns how many.
fn release_bindings(
    maps: &mut Maps,
    in_use: &HashSet<(u8, PortBe)>,
    public: Ipv4Be,
    now: u64,
) -> anyhow::Result<usize> {
    let all: Vec<(MappingKey, hairpin_common::Binding)> = maps.bindings.iter().collect::<Result<_, _>>()?;
    let mut released = Vec::new();
    for (internal, b) in all {
        if in_use.contains(&(internal.proto, b.port)) || now.saturating_sub(b.last_used_ns) < ORPHAN_GRACE_NS {
            continue;
        }
        // A flow started since the snapshot has refreshed the binding (its last use is over a
        // second old, the dataplane's refresh interval): read it again right before removing.
        if maps.bindings.get(&internal, 0).is_ok_and(|cur| cur.last_used_ns == b.last_used_ns) {
            released.push((internal, b));
        }
    }
    let n = released.len();
    maps.unbind(released, public)?;
    Ok(n)
}
