//! Typed operations on the dataplane's maps, pinned or taken out of a freshly loaded object:
//! the only code that touches them (as Katran's control plane is a library of operations on
//! its maps). Callers see flows, forwards, bindings and settings, never a raw map.

use std::{collections::HashMap as StdHashMap, fs, path::PathBuf};

use anyhow::{Context as _, bail};
use aya::{
    Ebpf,
    maps::{Array, HashMap, IterableMap as _, MapData, MapError, PerCpuArray},
};
use hairpin_common::{
    Binding, Config, Counter, CtEntry, EgressEntry, Endpoint, FlowKey, ForwardEntry, Ipv4Be, ProtoEndpoint, Reason,
    consts::{Hook, map_names},
    flow_cache,
};

use super::PinDir;

/// Handles on the dataplane's maps.
pub struct Maps {
    /// The pinned maps' directory, locked while the configuration is written (`None`: maps
    /// taken out of an object of one's own).
    lock_dir: Option<PathBuf>,
    /// Two slots of settings, and which is live (see [`Maps::write_config`]).
    config: Array<MapData, Config>,
    config_sel: Array<MapData, u32>,
    forwards: HashMap<MapData, ProtoEndpoint, ForwardEntry>,
    /// Conntrack: confirmed flows, and flows the kernel has not forwarded both ways yet.
    ct: HashMap<MapData, FlowKey, CtEntry>,
    ct_new: HashMap<MapData, FlowKey, CtEntry>,
    /// Every flow direction's egress entry, by the tuple it leaves ingress with.
    egress: HashMap<MapData, FlowKey, EgressEntry>,
    egress_new: HashMap<MapData, FlowKey, EgressEntry>,
    stats: PerCpuArray<MapData, u64>,
    /// LAN endpoint -> its public port, and public port -> LAN endpoint.
    bindings: HashMap<MapData, ProtoEndpoint, Binding>,
    bound_ports: HashMap<MapData, ProtoEndpoint, Endpoint>,
    /// The side counters (`Counter`), per CPU.
    counters: PerCpuArray<MapData, u64>,
    /// The flow table's generation (see [`flows_removed`]).
    ct_gen: Array<MapData, u32>,
    /// The fast path's flow cache, and what each slot has served since it was filled.
    flow_cache: Array<MapData, flow_cache::Slot>,
    flow_counts: Array<MapData, flow_cache::Counts>,
}

/// The tables whose fill `stats` shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    Conntrack,
    Unconfirmed,
    Egress,
    UnconfirmedEgress,
    Bindings,
}

/// Why an insert failed.
#[derive(Debug)]
pub enum InsertError {
    /// Only a new entry was wanted, and one is there.
    Exists,
    Map(anyhow::Error),
}

impl Maps {
    pub(super) fn open(pins: &PinDir) -> anyhow::Result<Self> {
        let maps = Self::from_fn(|name| {
            let path = pins.map(name);
            if !path.exists() && pins.maps().exists() {
                bail!(
                    "the dataplane pinned at {} is from another version of hairpin (it has no map {name}): \
                     take it down and up again (`hairpin-ctl down`, then `up` or `apply`; flows are lost)",
                    pins.root.display()
                );
            }
            let data = MapData::from_pin(&path).with_context(|| format!("opening pinned map {}", path.display()))?;
            aya::maps::Map::from_map_data(data).with_context(|| format!("map {name}"))
        })?;
        Ok(Self { lock_dir: Some(pins.maps()), ..maps })
    }

    /// The maps of a freshly loaded object (benchmarks, tests), taken out of it.
    pub fn take(ebpf: &mut Ebpf) -> anyhow::Result<Self> {
        Self::from_fn(|name| ebpf.take_map(name).with_context(|| format!("map {name} missing from the object")))
    }

    fn from_fn(mut map: impl FnMut(&str) -> anyhow::Result<aya::maps::Map>) -> anyhow::Result<Self> {
        Ok(Self {
            lock_dir: None,
            config: map(map_names::CONFIG)?.try_into()?,
            config_sel: map(map_names::CONFIG_SEL)?.try_into()?,
            forwards: map(map_names::FORWARDS)?.try_into()?,
            ct: map(map_names::CONNTRACK)?.try_into()?,
            ct_new: map(map_names::UNCONFIRMED)?.try_into()?,
            egress: map(map_names::EGRESS)?.try_into()?,
            egress_new: map(map_names::EGRESS_UNCONFIRMED)?.try_into()?,
            stats: map(map_names::STATS)?.try_into()?,
            bindings: map(map_names::BINDINGS)?.try_into()?,
            bound_ports: map(map_names::BOUND_PORTS)?.try_into()?,
            counters: map(map_names::COUNTERS)?.try_into()?,
            ct_gen: map(map_names::CT_GEN)?.try_into()?,
            flow_cache: map(map_names::FLOW_CACHE)?.try_into()?,
            flow_counts: map(map_names::FLOW_COUNTS)?.try_into()?,
        })
    }

    // --- Settings ---

    /// The live settings.
    pub fn config(&self) -> anyhow::Result<Config> {
        self.config.get(&self.live_slot()?, 0).context("reading the dataplane configuration")
    }

    fn live_slot(&self) -> anyhow::Result<u32> {
        Ok(self.config_sel.get(&0, 0).context("reading which configuration is live")? & 1)
    }

    /// Changes the live configuration with `change`, one writer at a time: an exclusive lock on
    /// the pinned maps' directory is held from the read to the write, whichever process writes
    /// (`up`, `apply`, `run`'s sweep and its watch of the interfaces), so no write undoes
    /// another's, and two never pick the same slot.
    pub fn update_config(&mut self, change: impl FnOnce(&mut Config)) -> anyhow::Result<()> {
        let _lock = self.lock_config()?;
        let cur = self.config()?;
        let mut new = cur;
        change(&mut new);
        if new != cur { self.write_config(&new) } else { Ok(()) }
    }

    /// Writes `new`, which its writer made from `base`, keeping what others changed since
    /// (see `Config::merged`).
    pub fn replace_config(&mut self, base: &Config, new: &Config) -> anyhow::Result<()> {
        self.update_config(|cur| *cur = Config::merged(base, new, cur))
    }

    /// The configuration lock: `flock` on the pinned maps' directory (bpffs takes it like any
    /// other; `run` holds the pin directory itself for its life, see `PinDir::lock`). Maps
    /// taken out of an object of one's own (tests, benchmarks) have no other writer.
    fn lock_config(&self) -> anyhow::Result<Option<nix::fcntl::Flock<fs::File>>> {
        use nix::fcntl::{Flock, FlockArg};
        let Some(dir) = &self.lock_dir else { return Ok(None) };
        let f = fs::File::open(dir).with_context(|| format!("opening {} to lock it", dir.display()))?;
        match Flock::lock(f, FlockArg::LockExclusive) {
            Ok(lock) => Ok(Some(lock)),
            Err((_, e)) => Err(e).with_context(|| format!("locking {}", dir.display())),
        }
    }

    /// Writes the dataplane configuration (callers hold the lock, see `update_config`). Then,
    /// if the idle timeouts changed, moves the generation: flow cache copies serve until a
    /// deadline worked out from the timeouts they were made under, and shorter ones must not
    /// wait for it (see `flow_cache::fresh_ns`).
    ///
    /// The settings go into the slot not in use, and then the selector moves to it (one aligned
    /// word): programs read one slot or the other, never one being written. (Two writes within
    /// a program's run, microseconds, could still meet one; the controller writes seldom.)
    fn write_config(&mut self, cfg: &Config) -> anyhow::Result<()> {
        let before = self.config()?;
        let next = self.live_slot()? ^ 1;
        self.config.set(next, cfg, 0).context("writing the dataplane configuration")?;
        self.config_sel.set(0, &next, 0).context("making the new configuration live")?;
        if cfg.timeouts != before.timeouts {
            flows_removed(&mut self.ct_gen)?;
        }
        Ok(())
    }

    /// Whether the flow cache was loaded (the loader gives it one unused slot when it is off).
    pub fn flow_cache_enabled(&self) -> anyhow::Result<bool> {
        Ok(self.flow_cache.map().info()?.max_entries() > 1)
    }

    /// The flows the tables were sized for (conntrack holds two entries per flow).
    pub fn max_flows(&self) -> anyhow::Result<u32> {
        Ok(self.ct.map().info()?.max_entries() / 2)
    }

    // --- Forwards (written by `gateway::forwards` only) ---

    /// Every forward: its key and its entry.
    pub fn forwards(&self) -> anyhow::Result<Vec<(ProtoEndpoint, ForwardEntry)>> {
        self.forwards.iter().collect::<Result<_, _>>().context("reading the forwards")
    }

    pub fn forward(&self, key: &ProtoEndpoint) -> Option<ForwardEntry> {
        self.forwards.get(key, 0).ok()
    }

    /// Inserts or replaces a forward; with `only_new`, the duplicate check and the insert are
    /// one atomic step.
    pub fn insert_forward(&mut self, key: &ProtoEndpoint, e: &ForwardEntry, only_new: bool) -> Result<(), InsertError> {
        const BPF_NOEXIST: u64 = aya_obj::generated::BPF_NOEXIST as u64;
        match self.forwards.insert(key, e, if only_new { BPF_NOEXIST } else { 0 }) {
            Ok(()) => Ok(()),
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::EEXIST) => {
                Err(InsertError::Exists)
            }
            Err(e) => Err(InsertError::Map(anyhow::Error::from(e).context("writing a forward"))),
        }
    }

    pub fn remove_forward(&mut self, key: &ProtoEndpoint) {
        let _ = self.forwards.remove(key);
    }

    // --- Bindings ---

    /// Every LAN endpoint's binding (its public port).
    pub fn bindings(&self) -> anyhow::Result<Vec<(ProtoEndpoint, Binding)>> {
        self.bindings.iter().collect::<Result<_, _>>().context("reading the bindings")
    }

    pub fn binding(&self, internal: &ProtoEndpoint) -> Option<Binding> {
        self.bindings.get(internal, 0).ok()
    }

    /// The LAN endpoint whose binding claims the public port of `key`, if one does.
    pub fn port_holder(&self, key: &ProtoEndpoint) -> Option<Endpoint> {
        self.bound_ports.get(key, 0).ok()
    }

    /// Releases the bindings of LAN endpoints (`(internal, binding)` pairs): their public ports
    /// on `public` return to the pool. Then, if any went, moves the generation: a flow of a
    /// binding may have been evicted from conntrack by the LRU, leaving cached copies that
    /// another LAN host's flow on the released port must not meet.
    pub fn unbind(
        &mut self,
        bindings: impl IntoIterator<Item = (ProtoEndpoint, Binding)>,
        public: Ipv4Be,
    ) -> anyhow::Result<()> {
        let mut released = false;
        for (internal, b) in bindings {
            let _ = self.bindings.remove(&internal);
            let _ = self.bound_ports.remove(&ProtoEndpoint::new(internal.proto, Endpoint::new(public, b.port)));
            released = true;
        }
        if released {
            flows_removed(&mut self.ct_gen)?;
        }
        Ok(())
    }

    /// Releases the ports bound on the address `public` (a public address no longer in use),
    /// and the bindings that hold them; those on other addresses stay.
    pub fn unbind_address(&mut self, public: Ipv4Be) -> anyhow::Result<()> {
        let bound: Vec<(ProtoEndpoint, Endpoint)> = self.bound_ports.iter().collect::<Result<_, _>>()?;
        for (claim, internal) in bound.into_iter().filter(|(k, _)| k.addr == public) {
            let internal = ProtoEndpoint::new(claim.proto, internal);
            if self.binding(&internal).is_some_and(|b| b.port == claim.port) {
                let _ = self.bindings.remove(&internal);
            }
            let _ = self.bound_ports.remove(&claim);
        }
        flows_removed(&mut self.ct_gen)
    }

    // --- Conntrack ---

    /// Every conntrack entry, unconfirmed and confirmed (an entry caught in both, being moved,
    /// is the confirmed one).
    pub fn ct_entries(&self) -> anyhow::Result<StdHashMap<FlowKey, CtEntry>> {
        self.ct_new.iter().chain(self.ct.iter()).collect::<Result<_, _>>().context("reading conntrack")
    }

    /// Whether conntrack holds `key` translated to `xlate` (in either table).
    pub fn has_ct_entry(&self, key: &FlowKey, xlate: &FlowKey) -> bool {
        [&self.ct, &self.ct_new].iter().any(|t| t.get(key, 0).is_ok_and(|e| e.xlate == *xlate))
    }

    /// Whether the egress entry `key` is `value`, in either egress table.
    pub fn has_egress_entry(&self, key: &FlowKey, value: &EgressEntry) -> bool {
        [&self.egress, &self.egress_new].iter().any(|t| t.get(key, 0).is_ok_and(|v| v == *value))
    }

    /// The egress entries of confirmed flows, or of unconfirmed ones.
    pub fn egress_entries(&self, unconfirmed: bool) -> anyhow::Result<Vec<(FlowKey, EgressEntry)>> {
        let t = if unconfirmed { &self.egress_new } else { &self.egress };
        t.iter().collect::<Result<_, _>>().context("reading the egress entries")
    }

    /// Removes an egress entry if it is still `value`; returns whether it did.
    pub fn remove_egress_if(&mut self, unconfirmed: bool, key: &FlowKey, value: &EgressEntry) -> bool {
        let t = if unconfirmed { &mut self.egress_new } else { &mut self.egress };
        t.get(key, 0).is_ok_and(|cur| cur == *value) && t.remove(key).is_ok()
    }

    /// Removes conntrack entries (the directions of a flow, as a snapshot read them) and their
    /// egress entries, where those are still theirs.
    pub fn remove_entries(&mut self, entries: impl IntoIterator<Item = (FlowKey, CtEntry)>) -> anyhow::Result<()> {
        let mut removed = false;
        for (k, e) in entries {
            let (egress_key, value) = hairpin_common::nat::egress(&k, &e);
            for unconfirmed in [false, true] {
                self.remove_egress_if(unconfirmed, &egress_key, &value);
            }
            let _ = self.ct.remove(&k);
            let _ = self.ct_new.remove(&k);
            removed = true;
        }
        if removed {
            flows_removed(&mut self.ct_gen)?;
        }
        Ok(())
    }

    /// What the flow cache's slots have served and not yet added into conntrack, by flow
    /// direction (see `CtEntry::packets`): a reader of conntrack adds these.
    pub fn cached_counts(&self) -> anyhow::Result<StdHashMap<FlowKey, flow_cache::Counts>> {
        use std::os::fd::{AsFd as _, AsRawFd as _};
        let data = self.flow_counts.map();
        let slots = data.info().context("reading the flow cache's counts")?.max_entries() as usize;
        let len = slots * std::mem::size_of::<flow_cache::Counts>();
        let fd = data.fd().as_fd().as_raw_fd();
        // Mapped rather than read slot by slot: a cache has up to millions of slots, one
        // syscall each, and only the few that served since their fill hold counts.
        // SAFETY: a read-only shared mapping of the array's `slots` values (an mmapable
        // array's values start at offset 0), unmapped below and read through raw pointers
        // only; the dataplane writes it meanwhile, so a count may be a packet behind.
        let base = unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ, libc::MAP_SHARED, fd, 0) };
        if base == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error()).context("mapping the flow cache's counts");
        }
        let base = base as *const flow_cache::Counts;
        // SAFETY: as above, `i < slots`.
        let busy: Vec<(u32, flow_cache::Counts)> = (0..slots)
            .map(|i| (i as u32, unsafe { base.add(i).read_volatile() }))
            .filter(|(_, c)| c.packets != 0)
            .collect();
        // SAFETY: the mapping made above, of `len` bytes.
        unsafe { libc::munmap(base as *mut libc::c_void, len) };
        let mut out = StdHashMap::<FlowKey, flow_cache::Counts>::new();
        for (index, counts) in busy {
            let slot = self.flow_cache.get(&index, 0).context("reading the flow cache")?;
            // Protocol 0: the flow was made anew; what the slot served went with the old one.
            if slot.key.proto != 0 {
                let c = out.entry(slot.key).or_default();
                c.packets += counts.packets;
                c.bytes += counts.bytes;
            }
        }
        Ok(out)
    }

    // --- Counters and fill ---

    /// A side counter, summed over CPUs.
    pub fn counter(&self, c: Counter) -> anyhow::Result<u64> {
        Ok(self.counters.get(&(c as u32), 0).with_context(|| format!("reading counter {}", c.name()))?.iter().sum())
    }

    /// The packets `hook` counted under `reason`, summed over CPUs.
    pub fn verdicts(&self, hook: Hook, reason: Reason) -> anyhow::Result<u64> {
        Ok(self.stats.get(&hook.stat_index(reason), 0).context("reading the packet counters")?.iter().sum())
    }

    /// A table's entries and its size as loaded (`up --max-flows`).
    pub fn fill(&self, table: Table) -> anyhow::Result<(u64, u64)> {
        fn count<K: aya::Pod, V: aya::Pod>(m: &HashMap<MapData, K, V>) -> anyhow::Result<(u64, u64)> {
            let mut n = 0;
            for k in m.keys() {
                k?;
                n += 1;
            }
            Ok((n, m.map().info()?.max_entries().into()))
        }
        match table {
            Table::Conntrack => count(&self.ct),
            Table::Unconfirmed => count(&self.ct_new),
            Table::Egress => count(&self.egress),
            Table::UnconfirmedEgress => count(&self.egress_new),
            Table::Bindings => count(&self.bindings),
        }
    }
}

/// Tells the dataplane that flows were removed from conntrack: the fast path's flow cache
/// stops using its copies of every flow (bumps the generation). Called after the removals, so
/// that a copy made from a removed entry meanwhile carries the old generation.
pub fn flows_removed<T: std::borrow::BorrowMut<MapData>>(ct_gen: &mut Array<T, u32>) -> anyhow::Result<()> {
    // The controller's own counter: the dataplane bumps the other, so neither can undo the
    // other's bump.
    let i = flow_cache::GEN_CONTROLLER;
    let g = ct_gen.get(&i, 0).context("reading the flow table generation")?;
    ct_gen.set(i, &g.wrapping_add(1), 0).context("bumping the flow table generation")
}
