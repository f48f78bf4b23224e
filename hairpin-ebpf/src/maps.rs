//! Every map of the dataplane, sized by the constants in `hairpin_common::consts`. Names match
//! `consts::map_names`, under which the controller pins them.

use aya_ebpf::{
    bindings::BPF_F_MMAPABLE,
    macros::map,
    maps::{Array, DevMapHash, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use hairpin_common::{
    Binding, Config, Counter, CtEntry, EgressEntry, Endpoint, FlowKey, ForwardEntry, FragEntry, FragKey, HeldFragment,
    HeldKey, ProtoEndpoint,
    consts::{
        BINDINGS_CAPACITY, CT_CAPACITY, CT_NEW_CAPACITY, EGRESS_CAPACITY, EVENTS_BYTES, FRAGS_CAPACITY, HELD_CAPACITY,
        MAX_FORWARDS, STATS_LEN,
    },
    flow_cache, nat,
};

/// Two slots for the settings the controller wrote; `CONFIG_SEL` names the live one (see
/// [`config`]).
#[map(name = "HP_CONFIG")]
pub static CONFIG: Array<Config> = Array::with_max_entries(2, 0);

/// One word: which `CONFIG` slot is live.
#[map(name = "HP_CONFIG_SEL")]
pub static CONFIG_SEL: Array<u32> = Array::with_max_entries(1, 0);

/// The live settings, read in place. A map update copies a value while programs may read it,
/// so the controller writes the slot not in use and then flips the selector, one aligned word:
/// a program sees the old settings or the new, never half of each.
#[inline(always)]
pub fn config() -> Option<&'static Config> {
    let live = CONFIG_SEL.get(0).copied().unwrap_or(0);
    CONFIG.get(live & 1)
}

/// Forwards: public (proto, address, port) -> where it goes ([`ForwardEntry`]).
#[map(name = "HP_FORWARDS")]
/// Room for twice the forwards a gateway may have: moving them to a new public address puts
/// the new entries in before the old ones go.
pub static FORWARDS: HashMap<ProtoEndpoint, ForwardEntry> = HashMap::with_max_entries(2 * MAX_FORWARDS, 0);

/// Conntrack of confirmed flows (the kernel has forwarded them both ways), keyed by the tuple
/// as seen at ingress; two entries per flow. The only flows the fast path serves.
#[map(name = "HP_CT")]
pub static CT: LruHashMap<FlowKey, CtEntry> = LruHashMap::with_max_entries(CT_CAPACITY, 0);

/// Conntrack of flows not confirmed yet: created here, moved to `CT` when confirmed (see
/// `ct::confirm`). An LRU of its own, so that new flows evict only new flows.
#[map(name = "HP_CT_NEW")]
pub static CT_NEW: LruHashMap<FlowKey, CtEntry> = LruHashMap::with_max_entries(CT_NEW_CAPACITY, 0);

/// Every flow direction's egress entry (its source, and the way back to its conntrack entry),
/// keyed by the tuple as it leaves ingress (destination translated). Not LRU: the entry of a
/// live flow must not vanish while its packets take the fast path and never touch it. Inserted
/// and removed with the flow's conntrack entries; the sweep removes those the conntrack LRU
/// left behind.
#[map(name = "HP_EGRESS")]
pub static EGRESS: HashMap<FlowKey, EgressEntry> = HashMap::with_max_entries(EGRESS_CAPACITY, 0);

/// The egress entries of flows not confirmed yet, moved to `EGRESS` with their flow. An LRU
/// like `CT_NEW`: the entries of unconfirmed flows `CT_NEW` evicted make room for new ones
/// rather than fill `EGRESS` until the sweep.
#[map(name = "HP_EGRESS_NEW")]
pub static EGRESS_NEW: LruHashMap<FlowKey, EgressEntry> = LruHashMap::with_max_entries(CT_NEW_CAPACITY, 0);

/// Fragmented datagrams in flight: the address each hook gave a datagram's first fragment, for
/// its later ones (`frag.rs`). An LRU of fixed size: memory is bounded, the oldest go first.
#[map(name = "HP_FRAGS")]
pub static FRAGS: LruHashMap<FragKey, FragEntry> = LruHashMap::with_max_entries(FRAGS_CAPACITY, 0);

/// Later fragments that came before their first, held at a TC ingress until it comes
/// (`frag.rs`). An LRU of fixed size: memory is bounded, the oldest go first. Not pinned: the
/// controller never reads it.
#[map(name = "HP_FRAG_HELD")]
pub static HELD: LruHashMap<HeldKey, HeldFragment> = LruHashMap::with_max_entries(HELD_CAPACITY, 0);

/// Per CPU: a fragment being held, built here (it is three times the stack).
#[map(name = "HP_HELD_TMP")]
pub static HELD_SCRATCH: PerCpuArray<HeldFragment> = PerCpuArray::with_max_entries(1, 0);

/// Per CPU: a fragment's key and entry being looked up or written (`frag.rs`), off the stack.
#[map(name = "HP_FRAG_SCRATCH")]
pub static FRAG_SCRATCH: PerCpuArray<crate::frag::Scratch> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU packet counters, indexed by `Hook::stat_index(reason)`.
#[map(name = "HP_STATS")]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STATS_LEN, 0);

/// Events for `run` (`hairpin_common::Event`): new flows refused.
#[map(name = "HP_EVENTS")]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);

/// Per-CPU side counters, indexed by `Counter` (see `stats.rs`).
#[map(name = "HP_COUNTERS")]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT, 0);

/// Endpoint-independent bindings: a LAN host's (proto, address, port) -> its public port. Not
/// LRU: a binding must not vanish under a live flow; the controller removes unused ones.
#[map(name = "HP_BINDINGS")]
pub static BINDINGS: HashMap<ProtoEndpoint, Binding> = HashMap::with_max_entries(BINDINGS_CAPACITY, 0);

/// The other side of each binding: (proto, public address, port) -> the LAN endpoint holding
/// it. Inserting here with BPF_NOEXIST is what claims a public port.
#[map(name = "HP_BOUND_PORTS")]
pub static BOUND_PORTS: HashMap<ProtoEndpoint, Endpoint> = HashMap::with_max_entries(BINDINGS_CAPACITY, 0);

/// The interfaces the fast path may redirect to (LAN and WAN), keyed by ifindex.
#[map(name = "HP_DEVICES")]
pub static DEVICES: DevMapHash = DevMapHash::with_max_entries(8, 0);

/// Per CPU: the flow being created (`snat::create`), kept off the stack.
#[map(name = "HP_PLAN")]
pub static PLAN: PerCpuArray<nat::FlowPlan> = PerCpuArray::with_max_entries(1, 0);

/// Per CPU: an egress entry and its key being inserted (`ct::insert_egress`), off the stack.
#[map(name = "HP_EGRESS_TMP")]
pub static EGRESS_SCRATCH: PerCpuArray<(FlowKey, EgressEntry)> = PerCpuArray::with_max_entries(1, 0);

/// Per CPU: the parameters of a `bpf_fib_lookup` call (`fwd.rs`), kept off the stack.
#[map(name = "HP_FIB")]
pub static FIB: PerCpuArray<aya_ebpf::bindings::bpf_fib_lookup> = PerCpuArray::with_max_entries(1, 0);

/// Per CPU: the jiffy at which the boot-time clock was last read, and what it read.
#[map(name = "HP_CLOCK")]
pub static CLOCK: PerCpuArray<[u64; 2]> = PerCpuArray::with_max_entries(1, 0);

/// The fast path's flow cache (`cache.rs`): per CPU, sets of `flow_cache::WAYS` slots. Sized
/// by the loader (one slot here, unused while `FLOW_CACHE_SETS` is 0).
#[map(name = "HP_FLOW_CACHE")]
pub static FLOW_CACHE: Array<flow_cache::Slot> = Array::with_max_entries(1, BPF_F_MMAPABLE);

/// What each flow cache slot has served since it was filled, by the slot's index (sized with
/// it by the loader). Mmapable: the controller scans it for the few slots that hold counts.
#[map(name = "HP_FLOW_COUNTS")]
pub static FLOW_COUNTS: Array<flow_cache::Counts> = Array::with_max_entries(1, BPF_F_MMAPABLE);

/// The flow table's generation, as two counters (`flow_cache::GEN_*`): the controller bumps
/// its own after removing flows, the dataplane its own after removing an orphaned entry;
/// cache slots of an older generation are not used.
#[map(name = "HP_CT_GEN")]
pub static CT_GEN: Array<u32> = Array::with_max_entries(flow_cache::GEN_LEN, 0);
