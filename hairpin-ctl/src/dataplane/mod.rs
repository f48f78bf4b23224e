//! The dataplane as the controller sees it: where its pins live, how to load it, and typed
//! operations on its maps ([`Maps`], the only code that touches them).

mod maps;

pub use maps::{InsertError, Maps, Table, flows_removed};

use std::{fs, path::PathBuf};

use anyhow::{Context as _, bail};
use aya::{
    Ebpf, EbpfLoader,
    programs::{SchedClassifier, TracePoint, Xdp},
};
use hairpin_common::{
    CtEntry, EgressEntry, FlowKey,
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
        for prog in [
            prog_names::TC_INGRESS_LAN,
            prog_names::TC_INGRESS_WAN,
            prog_names::TC_EGRESS_LAN,
            prog_names::TC_EGRESS_WAN,
        ] {
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
        Hook::LanIngress => prog_names::TC_INGRESS_LAN,
        Hook::WanIngress if xdp => prog_names::XDP_WAN,
        Hook::WanIngress => prog_names::TC_INGRESS_WAN,
        Hook::LanEgress => prog_names::TC_EGRESS_LAN,
        Hook::WanEgress => prog_names::TC_EGRESS_WAN,
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

    /// Whether the TC programs are attached by TCX links (pinned by program name) rather than
    /// netlink filters (which have no pin).
    pub fn tcx_links(&self) -> bool {
        self.link(prog_names::TC_EGRESS_LAN).exists()
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
