//! The controller's view of conntrack: the flows, each with both of its entries paired by
//! translation, as `flows`, `map`, `apply` and the sweep read them, and the removal of one
//! flow with the bindings only it held.

use std::collections::HashSet;

use hairpin_common::{CT_F_REPLY, CtEntry, FlowKey, Ipv4Be, PortBe, expiry};

use crate::dataplane::Maps;

/// An entry younger than this is never called an orphan: its twin may be being inserted.
pub const ORPHAN_GRACE_NS: u64 = 1_000_000_000;

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
    let mut all = maps.ct_entries()?;
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
    pub fn made_by(&self, key: &hairpin_common::ProtoEndpoint) -> bool {
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
    let free: Vec<_> = maps
        .bindings()?
        .into_iter()
        .filter(|(k, b)| held.contains(&(k.proto, b.port)) && !in_use.contains(&(k.proto, b.port)))
        .collect();
    let n = free.len();
    maps.unbind(free, public)?;
    Ok(n)
}

/// Removes every binding, then every flow. Returns the flows and how many bindings went.
///
/// Bindings first: a flow the dataplane makes meanwhile on a released binding is undone by
/// the dataplane itself (it checks the binding once the flow is in), so no public port ends
/// up with two LAN hosts.
pub fn flush(maps: &mut Maps) -> anyhow::Result<(Vec<Flow>, usize)> {
    let public = maps.config()?.public_addr;
    let bindings = maps.bindings()?;
    let released = bindings.len();
    maps.unbind(bindings, public)?;
    let (flows, lone) = snapshot(maps)?;
    maps.remove_entries(flows.iter().flat_map(Flow::entries).chain(lone))?;
    Ok((flows, released))
}

/// The (protocol, public port) pairs a flow entry holds: a binding is in use while one does.
pub(crate) fn public_ports(k: &FlowKey, e: &CtEntry, public: Ipv4Be) -> impl Iterator<Item = (u8, PortBe)> {
    let eps = [k.src_ep(), k.dst_ep(), e.xlate.src_ep(), e.xlate.dst_ep()];
    eps.into_iter().filter(move |ep| ep.addr == public).map(move |ep| (k.proto, ep.port))
}
