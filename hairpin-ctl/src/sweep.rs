//! The flow sweep: removes flows whose idle timeout has passed, both directions and their
//! egress entries together, entries whose twin has gone (LRU eviction, a crash), flows whose
//! egress entry has gone (the unconfirmed flows' egress LRU evicts apart from conntrack's),
//! egress entries whose conntrack entry has gone, and bindings no flow uses; and marks
//! conntrack's pressure for the flow cache.

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use hairpin_common::{CtEntry, EgressEntry, Endpoint, FlowKey, Ipv4Be, PortBe};

use crate::{
    conntrack::{Flow, ORPHAN_GRACE_NS, public_ports, snapshot},
    dataplane::Maps,
};

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
    let egress = EgressRead::of(maps)?;
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
        let lost_egress = egress.lost(maps, f, now);
        if f.remaining_ns(&timeouts, now) == 0 || lost_egress {
            if f.reply.is_none() || lost_egress {
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
    s.stray_egress = remove_stray_egress(maps, &live, &egress.tables)?;
    s.unbound = release_bindings(maps, &in_use, public, now)?;
    s.elapsed = start.elapsed();
    Ok(s)
}

/// Removes the egress entries whose conntrack entry is gone or another flow's now (the
/// conntrack LRU evicts entries without a word), of the `egress` tables as read after the
/// snapshot. `live` holds the snapshot's surviving entries and their translations; an entry
/// not there is looked up again before it goes, as a flow may have been made since the
/// snapshot (its conntrack entries go in before its egress ones).
fn remove_stray_egress(
    maps: &mut Maps,
    live: &HashMap<FlowKey, FlowKey>,
    egress: &[Vec<(FlowKey, EgressEntry)>; 2],
) -> anyhow::Result<usize> {
    let mut n = 0;
    for (unconfirmed, read) in [false, true].into_iter().zip(egress) {
        n += remove_stray_egress_in(maps, live, unconfirmed, read)?;
    }
    Ok(n)
}

/// The egress tables (confirmed, unconfirmed), read once after the snapshot: a flow's
/// conntrack entries go in before its egress ones.
struct EgressRead {
    tables: [Vec<(FlowKey, EgressEntry)>; 2],
    present: HashSet<(FlowKey, FlowKey, Endpoint)>,
}

impl EgressRead {
    fn of(maps: &Maps) -> anyhow::Result<Self> {
        let tables = [maps.egress_entries(false)?, maps.egress_entries(true)?];
        let present = tables.iter().flatten().map(|(k, v)| (*k, v.ct_key, v.src)).collect();
        Ok(Self { tables, present })
    }

    /// Whether the flow `f`, past the orphans' grace, has lost a direction's egress entry
    /// (the unconfirmed flows' egress LRU evicts apart from conntrack's): its packets would
    /// leave untranslated (or be dropped as a LAN source on the WAN) and it could not be
    /// confirmed, so it goes whole, as an orphan, and its next packet makes it anew. One not
    /// read is looked up again: a flow confirmed meanwhile has moved its entries.
    fn lost(&self, maps: &Maps, f: &Flow, now: u64) -> bool {
        f.reply.is_some()
            && now.saturating_sub(f.orig.created_ns) >= ORPHAN_GRACE_NS
            && f.entries().any(|(k, e)| {
                let (key, value) = hairpin_common::nat::egress(&k, &e);
                !self.present.contains(&(key, value.ct_key, value.src)) && !maps.has_egress_entry(&key, &value)
            })
    }
}

/// As [`remove_stray_egress`], in the egress table of unconfirmed flows or of confirmed ones.
fn remove_stray_egress_in(
    maps: &mut Maps,
    live: &HashMap<FlowKey, FlowKey>,
    unconfirmed: bool,
    read: &[(FlowKey, EgressEntry)],
) -> anyhow::Result<usize> {
    let mut n = 0;
    for &(k, v) in read {
        let (ct_key, xlate) = (v.ct_key, v.xlate(&k));
        if live.get(&ct_key) == Some(&xlate) || maps.has_ct_entry(&ct_key, &xlate) {
            continue;
        }
        if maps.remove_egress_if(unconfirmed, &k, &v) {
            n += 1;
        }
    }
    Ok(n)
}

/// Sets or clears `CFG_F_CT_PRESSURE` as the confirmed table's fill says (`flow_cache::under_pressure`).
/// The configuration is written only when the flag changes.
fn mark_pressure(maps: &mut Maps, cfg: &hairpin_common::Config, entries: u64) -> anyhow::Result<()> {
    use hairpin_common::CFG_F_CT_PRESSURE;
    let capacity = 2 * u64::from(maps.max_flows()?);
    let pressure = hairpin_common::flow_cache::under_pressure(entries, capacity);
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

/// Releases the bindings no live flow uses, once idle past the grace period (a flow being
/// created may be about to use one). Returns how many.
fn release_bindings(
    maps: &mut Maps,
    in_use: &HashSet<(u8, PortBe)>,
    public: Ipv4Be,
    now: u64,
) -> anyhow::Result<usize> {
    let mut released = Vec::new();
    for (internal, b) in maps.bindings()? {
        if in_use.contains(&(internal.proto, b.port)) || now.saturating_sub(b.last_used_ns) < ORPHAN_GRACE_NS {
            continue;
        }
        // A flow started since the snapshot has refreshed the binding (its last use is over a
        // second old, the dataplane's refresh interval): read it again right before removing.
        if maps.binding(&internal).is_some_and(|cur| cur.last_used_ns == b.last_used_ns) {
            released.push((internal, b));
        }
    }
    let n = released.len();
    maps.unbind(released, public)?;
    Ok(n)
}
