//! The veth lab: the hairpin story as real network namespaces and sockets.
//!
//! ```text
//!  far 192.0.2.10 ── inet 198.51.100.7 ── wan0 [gw] lan0 ── br0 [sw] ─┬─ srv 192.168.0.2 (TCP :80, UDP :53)
//!          (router 192.0.2.1)       203.0.113.1   192.168.0.1        └─ cli 192.168.0.3
//! ```
//! The internet host runs the same echo services and routes for the far host, one hop beyond.
//! Used by `cargo xtask lab` (which prints each step) and by the lab tests (which assert them).
//! Everything is created in namespaces named after a unique prefix and torn down on drop.

pub mod netns;
pub mod nft;
pub mod probe;
pub mod raw;
pub mod routed;
pub mod scenario;
pub mod topology;
pub mod traffic;
pub mod xdp_pass;

pub use netns::Netns;

/// The eBPF crate's second object: helper programs for the lab (`xdp_pass`) and the benchmarks
/// (generator, sink, ceilings, micro-benchmark harness), never part of the dataplane.
pub static HELPERS_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("HAIRPIN_HELPERS_OBJECT"));
pub use topology::Lab;

/// Confirms every flow in a loaded dataplane as egress does once the kernel has forwarded a
/// packet of each direction (`CT_F_LEFT | CT_F_CONFIRMED`, moved into the confirmed table):
/// for packet tests and micro-benchmarks of what the fast path does with the flows it serves.
pub fn confirm_all(ebpf: &mut aya::Ebpf) -> anyhow::Result<()> {
    use hairpin_common::{CT_F_CONFIRMED, CT_F_LEFT, CtEntry, EgressEntry, consts::map_names};
    let confirmed = |e: CtEntry| CtEntry { flags: e.flags | CT_F_LEFT | CT_F_CONFIRMED, ..e };
    move_all(ebpf, map_names::UNCONFIRMED, map_names::CONNTRACK, confirmed)?;
    move_all(ebpf, map_names::EGRESS_UNCONFIRMED, map_names::EGRESS, |e: EgressEntry| e)
}

/// Moves every entry of the hash map `from` into `to`, as `f` changes it.
fn move_all<V: aya::Pod>(ebpf: &mut aya::Ebpf, from: &str, to: &str, f: impl Fn(V) -> V) -> anyhow::Result<()> {
    use anyhow::Context as _;
    use aya::maps::HashMap;
    use hairpin_common::FlowKey;
    let all: Vec<(FlowKey, V)> = HashMap::<_, FlowKey, V>::try_from(ebpf.map(from).context(from.to_owned())?)?
        .iter()
        .collect::<Result<_, _>>()?;
    let mut dst = HashMap::<_, FlowKey, V>::try_from(ebpf.map_mut(to).context(to.to_owned())?)?;
    for (k, v) in &all {
        dst.insert(k, &f(*v), 0)?;
    }
    let mut src = HashMap::<_, FlowKey, V>::try_from(ebpf.map_mut(from).context(from.to_owned())?)?;
    for (k, _) in &all {
        src.remove(k)?;
    }
    Ok(())
}

/// Runs the calling thread on `cpu` only: a BPF test run executes on the caller's CPU, and
/// per-CPU state (the flow cache) or a benchmark's CPU split depends on which.
pub fn pin_thread_to_cpu(cpu: usize) -> anyhow::Result<()> {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu)?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
        .map_err(|e| anyhow::anyhow!("pinning a thread to CPU {cpu}: {e}"))
}
