//! The dataplane as the controller sees it: where its pins live, how to load and attach it,
//! and typed access to its pinned maps.

use std::{fs, path::PathBuf};

use anyhow::{Context as _, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, MapError, PerCpuArray},
    programs::{SchedClassifier, TracePoint, Xdp},
};
use hairpin_common::{
    Binding, Config, Counter, CtEntry, EgressEntry, Endpoint, FlowKey, MappingKey,
    consts::{Hook, global_names, map_names, prog_names},
    flow_cache,
    placement::Ingress,
};

/// Removes the netlink TC filters that run hairpin's programs on the interface `ifindex` (none
/// if hairpin attached with TCX): found by program name, so no other program's filter goes.
/// Returns how many programs had filters there.
pub fn detach_netlink_filters(ifindex: u32) -> anyhow::Result<usize> {
    use aya::programs::tc::{TcAttachType, qdisc_detach_program};
    let mut removed = 0;
    for at in [TcAttachType::Ingress, TcAttachType::Egress] {
        for prog in [prog_names::TC_IN_LAN, prog_names::TC_IN_WAN, prog_names::TC_LAN, prog_names::TC_WAN] {
            match qdisc_detach_program(ifindex, at.into(), prog) {
                Ok(()) => removed += 1,
                Err(aya::programs::tc::TcError::IoError(e)) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(e).with_context(|| format!("removing the {prog} filters of ifindex {ifindex}"));
                }
            }
        }
    }
    Ok(removed)
}

/// The program serving `hook` when ingress runs as `ingress`; each link is pinned under
/// `links/` by its program's name.
pub const fn program(hook: Hook, ingress: Ingress) -> &'static str {
    let xdp = !matches!(ingress, Ingress::Tc);
    match hook {
        Hook::LanIngress if xdp => prog_names::XDP_LAN,
        Hook::LanIngress => prog_names::TC_IN_LAN,
        Hook::WanIngress if xdp => prog_names::XDP_WAN,
        Hook::WanIngress => prog_names::TC_IN_WAN,
        Hook::LanEgress => prog_names::TC_LAN,
        Hook::WanEgress => prog_names::TC_WAN,
    }
}

/// Every program name of the dataplane: its hooks' programs and the tracepoints.
pub const PROGRAM_NAMES: [&str; PROGRAMS.len() + prog_names::REFUSED.len()] = {
    let mut names = [""; PROGRAMS.len() + prog_names::REFUSED.len()];
    let mut i = 0;
    while i < PROGRAMS.len() {
        names[i] = PROGRAMS[i].0;
        i += 1;
    }
    while i < names.len() {
        names[i] = prog_names::REFUSED[i - PROGRAMS.len()];
        i += 1;
    }
    names
};

/// Every program of the dataplane that serves a hook, verified at load whatever the placement:
/// each hook's program under each ingress kind (egress is TC either way).
const PROGRAMS: [(&str, bool); 6] = [
    (program(Hook::LanIngress, Ingress::Xdp), true),
    (program(Hook::WanIngress, Ingress::Xdp), true),
    (program(Hook::LanIngress, Ingress::Tc), false),
    (program(Hook::WanIngress, Ingress::Tc), false),
    (program(Hook::LanEgress, Ingress::Tc), false),
    (program(Hook::WanEgress, Ingress::Tc), false),
];

/// Paths under the pin directory: `maps/<MAP>` and `links/<program>`.
#[derive(Clone, Debug)]
pub struct PinDir {
    pub root: PathBuf,
}

impl PinDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }
    pub fn maps(&self) -> PathBuf {
        self.root.join("maps")
    }
    pub fn links(&self) -> PathBuf {
        self.root.join("links")
    }
    pub fn map(&self, name: &str) -> PathBuf {
        self.maps().join(name)
    }
    pub fn link(&self, prog: &str) -> PathBuf {
        self.links().join(prog)
    }

    /// Whether anything of a dataplane is pinned here.
    pub fn exists(&self) -> bool {
        self.root.exists()
    }

    /// Fails when the pins cannot be seen from here: `ip netns exec` remounts /sys in a mount
    /// namespace of its own, where /sys/fs/bpf is an empty directory of sysfs, so a dataplane
    /// that is up would look absent (and `down` would do nothing).
    pub fn check_visible(&self) -> anyhow::Result<()> {
        use nix::sys::statfs::{BPF_FS_MAGIC, statfs};
        let bpffs = std::path::Path::new("/sys/fs/bpf");
        let hidden = self.root.starts_with(bpffs) && statfs(bpffs).is_ok_and(|fs| fs.filesystem_type() != BPF_FS_MAGIC);
        if hidden {
            bail!(
                "/sys/fs/bpf is not a bpf filesystem here, so the pins under {} cannot be seen: `ip netns exec` \
                 remounts /sys and hides them; enter the namespace with `nsenter --net=/run/netns/NAME` instead",
                self.root.display()
            );
        }
        Ok(())
    }

    /// Pins only work on a bpf filesystem; say so plainly, before anything is loaded or
    /// attached.
    pub fn check_bpffs(&self) -> anyhow::Result<()> {
        use nix::sys::statfs::{BPF_FS_MAGIC, statfs};
        self.check_visible()?;
        let parent = self.root.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
        match statfs(parent) {
            Ok(fs) if fs.filesystem_type() == BPF_FS_MAGIC => Ok(()),
            Ok(_) => bail!(
                "{} is not on a bpf filesystem: mount one (`mount -t bpf bpf /sys/fs/bpf`) or choose --pin-dir under one",
                parent.display()
            ),
            Err(e) => bail!("--pin-dir {}: {}: {e}", self.root.display(), parent.display()),
        }
    }

    /// Whether the dataplane's configuration is pinned here (`run` stops once it is not).
    pub fn is_up(&self) -> bool {
        self.map(map_names::CONFIG).exists()
    }

    /// Whether the directory is hairpin's: its configuration map is pinned in it (the marker),
    /// or, after a `down` cut short, nothing but hairpin's `maps/` and `links/` is left.
    /// `down` removes nothing else.
    pub fn is_ours(&self) -> bool {
        let config = self.map(map_names::CONFIG);
        if config.exists() {
            return aya::maps::MapInfo::from_pin(&config).is_ok_and(|i| i.name_as_str() == Some(map_names::CONFIG));
        }
        let Ok(entries) = fs::read_dir(&self.root) else { return false };
        entries.filter_map(Result::ok).all(|e| {
            let name = e.file_name();
            let known = if name == "maps" {
                map_names::ALL.iter().map(|m| self.map(m)).collect::<Vec<_>>()
            } else if name == "links" {
                PROGRAM_NAMES.iter().map(|p| self.link(p)).collect()
            } else {
                return false;
            };
            fs::read_dir(e.path()).is_ok_and(|d| d.filter_map(Result::ok).all(|x| known.contains(&x.path())))
        })
    }

    /// Holds the directory for one `run`: a second is refused while the first lives (an
    /// advisory lock on the directory itself; bpffs holds no plain files).
    pub fn lock(&self) -> anyhow::Result<nix::fcntl::Flock<fs::File>> {
        use nix::fcntl::{Flock, FlockArg};
        let dir = fs::File::open(&self.root).with_context(|| format!("opening {}", self.root.display()))?;
        match Flock::lock(dir, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => Ok(lock),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => bail!(
                "another `hairpin-ctl run` already serves the dataplane pinned at {}; one run per pin directory",
                self.root.display()
            ),
            Err((_, e)) => Err(e).with_context(|| format!("locking {}", self.root.display())),
        }
    }

    /// The pinned maps, or an error saying hairpin is not up here.
    pub fn open(&self) -> anyhow::Result<Maps> {
        self.check_visible()?;
        if !self.map(map_names::CONFIG).exists() {
            bail!("hairpin is not up (nothing pinned at {}): run `hairpin-ctl up` first", self.root.display());
        }
        if let Some(missing) = map_names::ALL.iter().find(|m| !self.map(m).exists()) {
            bail!(
                "the dataplane pinned at {} lacks map {missing}: it was set up by another version of \
                 hairpin-ctl; run `hairpin-ctl down` and `up` again (its flows are lost)",
                self.root.display()
            );
        }
        Maps::open(self)
    }

    /// Removes every pin and the directories; unpinning a link detaches its program. Returns
    /// what was removed. Used by `down` and to roll back a failed `up`.
    pub fn remove_all(&self) -> anyhow::Result<Vec<PathBuf>> {
        let mut removed = Vec::new();
        for dir in [self.links(), self.maps()] {
            let Ok(entries) = fs::read_dir(&dir) else { continue };
            for e in entries {
                let path = e?.path();
                fs::remove_file(&path).with_context(|| format!("removing pin {}", path.display()))?;
                removed.push(path);
            }
            fs::remove_dir(&dir).with_context(|| format!("removing {}", dir.display()))?;
        }
        if self.root.exists() {
            fs::remove_dir(&self.root).with_context(|| format!("removing {} (not empty?)", self.root.display()))?;
        }
        Ok(removed)
    }
}

/// Loads the embedded object with tables sized for `max_flows` flows (conntrack and egress
/// rewrites take two entries per flow), and the fast path's flow cache unless `flow_cache` is
/// false. Programs are verified by the kernel here.
pub fn load(max_flows: u32, flow_cache: bool) -> anyhow::Result<Ebpf> {
    let entries = max_flows.checked_mul(2).context("--max-flows is too large")?;
    // The flow cache: per possible CPU (the index the dataplane computes from its CPU
    // number), as many sets as `sets_per_cpu` says; without it, one unused slot.
    let cpus = aya::util::nr_cpus().map_err(|(path, e)| anyhow::anyhow!("reading {path}: {e}"))?.get();
    let (cpus, sets) = if flow_cache { (cpus, flow_cache::sets_per_cpu(max_flows, cpus)) } else { (1, 0) };
    let slots = cpus
        .checked_mul(sets * flow_cache::WAYS)
        .with_context(|| format!("a flow cache for {cpus} CPUs is too large"))?
        .max(1);
    check_fits(max_flows, slots, mem_available())?;
    let mut ebpf = EbpfLoader::new()
        .map_max_entries(map_names::CONNTRACK, entries)
        .map_max_entries(map_names::UNCONFIRMED, hairpin_common::consts::unconfirmed_entries(max_flows))
        .map_max_entries(map_names::EGRESS_UNCONFIRMED, hairpin_common::consts::unconfirmed_entries(max_flows))
        .map_max_entries(map_names::EGRESS, entries.checked_mul(2).context("--max-flows is too large")?)
        .map_max_entries(map_names::FLOW_CACHE, slots)
        .map_max_entries(map_names::FLOW_COUNTS, slots)
        .override_global(global_names::FLOW_CACHE_SETS, &sets, true)
        .load(crate::EBPF_OBJECT)
        .with_context(|| format!("loading the eBPF object with tables for {max_flows} flows"))?;
    for (prog, xdp) in PROGRAMS {
        let p = ebpf.program_mut(prog).with_context(|| format!("program {prog} missing from the object"))?;
        match xdp {
            true => <&mut Xdp>::try_from(p)?.load(),
            false => <&mut SchedClassifier>::try_from(p)?.load(),
        }
        .with_context(|| format!("verifying program {prog}"))?;
    }
    for prog in prog_names::REFUSED {
        let p = ebpf.program_mut(prog).with_context(|| format!("program {prog} missing from the object"))?;
        <&mut TracePoint>::try_from(p)?.load().with_context(|| format!("verifying program {prog}"))?;
    }
    Ok(ebpf)
}

/// About what the tables for `max_flows` flows and `cache_slots` flow-cache slots take in
/// kernel memory: conntrack holds two entries per flow and the egress table room for four (key,
/// value and the hash table's own element header, about 48 bytes), the flow cache a 64-byte
/// slot each.
fn table_bytes(max_flows: u32, cache_slots: u32) -> u64 {
    const ELEM: u64 = 48;
    let ct = (std::mem::size_of::<FlowKey>() + std::mem::size_of::<CtEntry>()) as u64 + ELEM;
    let egress = (std::mem::size_of::<FlowKey>() + std::mem::size_of::<EgressEntry>()) as u64 + ELEM;
    let slot = (std::mem::size_of::<flow_cache::Slot>() + std::mem::size_of::<flow_cache::Counts>()) as u64;
    2 * u64::from(max_flows) * (ct + 2 * egress) + slot * u64::from(cache_slots)
}

/// Refuses tables for `max_flows` flows and `cache_slots` flow cache slots when they would
/// take more than the `available` bytes, saying how much they would take.
fn check_fits(max_flows: u32, cache_slots: u32, available: Option<u64>) -> anyhow::Result<()> {
    let need = table_bytes(max_flows, cache_slots);
    if let Some(available) = available
        && need > available
    {
        bail!(
            "--max-flows {max_flows} needs about {} MiB of tables, more than the {} MiB this machine has available",
            need >> 20,
            available >> 20
        );
    }
    Ok(())
}

/// `MemAvailable` from /proc/meminfo, in bytes.
fn mem_available() -> Option<u64> {
    let info = fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Typed handles on the pinned maps.
pub struct Maps {
    /// The pinned maps' directory, locked while the configuration is written (`None`: maps
    /// taken out of an object of one's own).
    lock_dir: Option<PathBuf>,
    /// Two slots of settings, and which is live (see [`Maps::write_config`]).
    config: Array<MapData, Config>,
    config_sel: Array<MapData, u32>,
    pub mappings: HashMap<MapData, MappingKey, Endpoint>,
    /// Conntrack: confirmed flows, and flows the kernel has not forwarded both ways yet.
    pub ct: HashMap<MapData, FlowKey, CtEntry>,
    pub ct_new: HashMap<MapData, FlowKey, CtEntry>,
    /// Every flow direction's egress entry (`EgressEntry`), by the tuple it leaves ingress with.
    pub egress: HashMap<MapData, FlowKey, EgressEntry>,
    pub egress_new: HashMap<MapData, FlowKey, EgressEntry>,
    pub stats: PerCpuArray<MapData, u64>,
    /// LAN endpoint -> its public port, and public port -> LAN endpoint.
    pub bindings: HashMap<MapData, MappingKey, Binding>,
    pub bound_ports: HashMap<MapData, MappingKey, Endpoint>,
    /// The side counters (`Counter`), per CPU.
    pub counters: PerCpuArray<MapData, u64>,
    /// The flow table's generation (see [`flows_removed`]).
    pub ct_gen: Array<MapData, u32>,
    /// The fast path's flow cache, and what each slot has served since it was filled.
    pub flow_cache: Array<MapData, flow_cache::Slot>,
    pub flow_counts: Array<MapData, flow_cache::Counts>,
}

impl Maps {
    fn open(pins: &PinDir) -> anyhow::Result<Self> {
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
            mappings: map(map_names::MAPPINGS)?.try_into()?,
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

    /// What the flow cache's slots have served and not yet added into conntrack, by flow
    /// direction (see `CtEntry::packets`): a reader of conntrack adds these.
    pub fn cached_counts(&self) -> anyhow::Result<std::collections::HashMap<FlowKey, flow_cache::Counts>> {
        use std::os::fd::{AsFd as _, AsRawFd as _};

        use aya::maps::IterableMap as _;
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
        let mut out = std::collections::HashMap::<FlowKey, flow_cache::Counts>::new();
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

    /// A side counter, summed over CPUs.
    pub fn counter(&self, c: Counter) -> anyhow::Result<u64> {
        Ok(self.counters.get(&(c as u32), 0).with_context(|| format!("reading counter {}", c.name()))?.iter().sum())
    }

    /// Adds a port-forward; the duplicate check and the insert are one atomic step.
    pub fn add_mapping(&mut self, key: &MappingKey, target: &Endpoint) -> Result<(), AddError> {
        const BPF_NOEXIST: u64 = aya_obj::generated::BPF_NOEXIST as u64;
        match self.mappings.insert(key, target, BPF_NOEXIST) {
            Ok(()) => Ok(()),
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::EEXIST) => {
                Err(AddError::AlreadyExists(self.mappings.get(key, 0).unwrap_or(*target)))
            }
            Err(e) => Err(AddError::Map(e)),
        }
    }

    /// The live settings.
    pub fn config(&self) -> anyhow::Result<Config> {
        self.config.get(&self.live_slot()?, 0).context("reading the dataplane configuration")
    }

    fn live_slot(&self) -> anyhow::Result<u32> {
        Ok(self.config_sel.get(&0, 0).context("reading which configuration is live")? & 1)
    }

    /// Changes the live configuration with `change`, one writer at a time: an exclusive lock on
    /// the pinned maps' directory is held from the read to the write, whichever process writes (`up`,
    /// `apply`, `run`'s sweep and its watch of the interfaces), so no write undoes another's,
    /// and two never pick the same slot.
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

    /// Releases the bindings of LAN endpoints (`(internal, binding)` pairs): their public ports
    /// return to the pool. Then, if any went, moves the generation: a flow of a binding may
    /// have been evicted from conntrack by the LRU, leaving cached copies that another LAN
    /// host's flow on the released port must not meet.
    pub fn unbind(
        &mut self,
        bindings: impl IntoIterator<Item = (MappingKey, Binding)>,
        public: hairpin_common::Ipv4Be,
    ) -> anyhow::Result<()> {
        let mut released = false;
        for (internal, b) in bindings {
            let _ = self.bindings.remove(&internal);
            let _ = self.bound_ports.remove(&MappingKey::new(internal.proto, Endpoint::new(public, b.port)));
            released = true;
        }
        if released {
            flows_removed(&mut self.ct_gen)?;
        }
        Ok(())
    }

    /// Removes conntrack entries (the directions of a flow, as a snapshot read them) and their
    /// egress entries, where those are still theirs.
    pub fn remove_entries(&mut self, entries: impl IntoIterator<Item = (FlowKey, CtEntry)>) -> anyhow::Result<()> {
        let mut removed = false;
        for (k, e) in entries {
            let (egress_key, value) = hairpin_common::nat::egress(&k, &e);
            for table in [&mut self.egress, &mut self.egress_new] {
                if table.get(&egress_key, 0).is_ok_and(|cur| cur == value) {
                    let _ = table.remove(&egress_key);
                }
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
}

/// Why a port-forward could not be added.
#[derive(Debug)]
pub enum AddError {
    /// The public endpoint is forwarded already, to this target.
    AlreadyExists(Endpoint),
    Map(MapError),
}

impl std::fmt::Display for AddError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AddError::AlreadyExists(e) => write!(f, "already forwarded (to {})", crate::output::endpoint(*e)),
            AddError::Map(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for AddError {}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_larger_than_available_memory_are_refused_with_their_size() {
        // The largest --max-flows, with a cache of 2^20 slots on each of two CPUs.
        let (flows, slots) = (16_777_216, 2 << 20);
        let need = table_bytes(flows, slots);
        assert!(need > 6 << 30, "{need}");
        let e = check_fits(flows, slots, Some(1 << 30)).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "--max-flows 16777216 needs about {} MiB of tables, more than the 1024 MiB this machine has available",
                need >> 20
            )
        );
        assert!(check_fits(flows, slots, Some(need)).is_ok());
        // Where the kernel does not say, nothing is refused.
        assert!(check_fits(flows, slots, None).is_ok());
    }
}
