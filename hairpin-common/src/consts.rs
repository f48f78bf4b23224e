//! Map capacities and protocol numbers, named once and used by the maps and the controller.

/// Bytes of the dataplane's event ring buffer (a power of two, a multiple of the page size).
pub const EVENTS_BYTES: u32 = 64 * 1024;

/// Port-forward mappings (`hairpin-ctl map add`).
pub const MAX_FORWARDS: u32 = 4096;
/// Flows the tables hold unless `up --max-flows` says otherwise: the object's map sizes,
/// which the controller overrides at load.
pub const DEFAULT_MAX_FLOWS: u32 = 131_072;
/// Conntrack entries; a flow takes two (one per direction).
pub const CT_CAPACITY: u32 = 2 * DEFAULT_MAX_FLOWS;
/// Entries of flows the kernel has not forwarded both ways yet, apart from the confirmed ones
/// (see `unconfirmed_entries`).
pub const CT_NEW_CAPACITY: u32 = unconfirmed_entries(DEFAULT_MAX_FLOWS);

/// Room for unconfirmed flows beside `max_flows` confirmed ones: half as many flows (two
/// entries each), in a table of their own, so that a flood of flows that never confirm (a SYN
/// flood at a forward, a scan from the LAN) evicts only its own kind, never an established
/// flow, as netfilter's early drop takes only unassured entries.
pub const fn unconfirmed_entries(max_flows: u32) -> u32 {
    if max_flows < 16 { 16 } else { max_flows }
}
/// Egress entries: a flow takes two, as in conntrack, and entries of flows the conntrack LRU
/// evicted stay until the sweep removes them (a plain hash: an entry of a live flow is never
/// evicted), so there is room for as many again.
pub const EGRESS_CAPACITY: u32 = 2 * CT_CAPACITY;

/// Fragmented datagrams in flight whose first fragment has been translated, per hook (an LRU:
/// the oldest go first when it is full).
pub const FRAGS_CAPACITY: u32 = 16_384;
/// How long after its first fragment a datagram's later fragments are translated: the
/// kernel's own reassembly timeout (`ipfrag_time`).
pub const FRAG_TIMEOUT_NS: u64 = 30_000_000_000;
/// Later fragments held at ingress (TC) until their first fragment comes: at most this many
/// in all (an LRU of about 1.5 KiB each, 384 KiB), for at most `FRAG_TIMEOUT_NS`.
pub const HELD_CAPACITY: u32 = 256;
/// Held fragments given back after one fragment, at most: a datagram of up to about 13 KiB
/// (nine 1500-byte fragments) arriving in any order.
pub const HELD_PER_FRAGMENT: u32 = 8;

/// Endpoint-independent bindings of LAN endpoints (TCP and UDP), and as many bound ports: at
/// most one per public port and protocol.
pub const BINDINGS_CAPACITY: u32 = 2 * 65_536;

/// Hairpin source ports are allocated from this range (inclusive) unless configured otherwise.
pub const DEFAULT_PORT_MIN: u16 = 1024;
pub const DEFAULT_PORT_MAX: u16 = 65535;
/// Candidate ports tried before a new hairpin flow is dropped as "no port".
pub const PORT_ALLOC_TRIES: u32 = 16;

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// Names of the maps as pinned under the pin directory; the eBPF statics carry the same names
/// (at most 15 characters, the kernel's object name limit).
pub mod map_names {
    /// Two slots of `Config`; [`CONFIG_SEL`] names the live one.
    pub const CONFIG: &str = "HP_CONFIG";
    pub const CONFIG_SEL: &str = "HP_CONFIG_SEL";
    pub const FORWARDS: &str = "HP_FORWARDS";
    pub const CONNTRACK: &str = "HP_CT";
    /// Conntrack entries of flows not confirmed yet (see `consts::unconfirmed_entries`).
    pub const UNCONFIRMED: &str = "HP_CT_NEW";
    /// Egress entries of flows not confirmed yet.
    pub const EGRESS_UNCONFIRMED: &str = "HP_EGRESS_NEW";
    /// Every flow direction, by the tuple it leaves ingress with (`EgressEntry`).
    pub const EGRESS: &str = "HP_EGRESS";
    /// Fragmented datagrams in flight: how their later fragments are translated (`FragEntry`).
    pub const FRAGS: &str = "HP_FRAGS";
    pub const STATS: &str = "HP_STATS";
    pub const BINDINGS: &str = "HP_BINDINGS";
    pub const BOUND_PORTS: &str = "HP_BOUND_PORTS";
    /// Per CPU: the side counters (`Counter`): slow-path causes, flow cache misses, new flows
    /// refused by protocol, refused XDP frames by interface.
    pub const COUNTERS: &str = "HP_COUNTERS";
    pub const DEVICES: &str = "HP_DEVICES";
    /// The fast path's per-CPU flow cache (`flow_cache`).
    pub const FLOW_CACHE: &str = "HP_FLOW_CACHE";
    /// What each flow cache slot has served since it was filled (`flow_cache::Counts`).
    pub const FLOW_COUNTS: &str = "HP_FLOW_COUNTS";
    /// One `u32`: the flow table's generation, bumped whenever flows are removed, so that the
    /// flow cache stops using copies of them.
    pub const CT_GEN: &str = "HP_CT_GEN";
    /// The ring buffer of `Event`s `run` prints.
    pub const EVENTS: &str = "HP_EVENTS";
    pub const ALL: [&str; 17] = [
        CONFIG,
        CONFIG_SEL,
        FORWARDS,
        CONNTRACK,
        UNCONFIRMED,
        EGRESS,
        EGRESS_UNCONFIRMED,
        FRAGS,
        STATS,
        BINDINGS,
        BOUND_PORTS,
        COUNTERS,
        DEVICES,
        FLOW_CACHE,
        FLOW_COUNTS,
        CT_GEN,
        EVENTS,
    ];
}

/// Names of the object's global variables, set by the loader.
pub mod global_names {
    /// Sets per CPU in the flow cache (`flow_cache::sets_per_cpu`); 0 turns it off.
    pub const FLOW_CACHE_SETS: &str = "FLOW_CACHE_SETS";
}

/// Names of the programs in the object file.
pub mod prog_names {
    pub const XDP_LAN: &str = "xdp_lan";
    pub const XDP_WAN: &str = "xdp_wan";
    pub const TC_EGRESS_LAN: &str = "tc_egress_lan";
    pub const TC_EGRESS_WAN: &str = "tc_egress_wan";
    /// Ingress as TC programs (veths, bridges, NICs without XDP, `--mode tc`): the same code.
    pub const TC_INGRESS_LAN: &str = "tc_ingress_lan";
    pub const TC_INGRESS_WAN: &str = "tc_ingress_wan";
    /// Tracepoint programs counting XDP frames the kernel refused, by the tracepoint
    /// (category `xdp`) each attaches to, which is also its name.
    pub const REFUSED: [&str; 3] = ["xdp_bulk_tx", "xdp_devmap_xmit", "xdp_redirect_err"];
}

/// Where a program runs; the stats map holds one row of [`crate::Reason`] counters per hook.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    LanIngress = 0,
    WanIngress = 1,
    LanEgress = 2,
    WanEgress = 3,
}

impl Hook {
    pub const ALL: [Hook; 4] = [Hook::LanIngress, Hook::WanIngress, Hook::LanEgress, Hook::WanEgress];
    pub const COUNT: u32 = 4;
    pub const fn name(self) -> &'static str {
        match self {
            Hook::LanIngress => "lan_ingress",
            Hook::WanIngress => "wan_ingress",
            Hook::LanEgress => "lan_egress",
            Hook::WanEgress => "wan_egress",
        }
    }
    /// Index of `reason`'s counter for this hook in the stats array.
    pub const fn stat_index(self, reason: crate::Reason) -> u32 {
        self as u32 * crate::Reason::COUNT + reason as u32
    }
}

/// Entries in the per-CPU stats array.
pub const STATS_LEN: u32 = Hook::COUNT * crate::Reason::COUNT;

/// The protocols whose new flows can be refused for want of a port or table space (see
/// `Counter::exhausted`), in the order `stats` lists them.
pub const EXHAUSTION_PROTOS: [u8; 3] = [IPPROTO_TCP, IPPROTO_UDP, IPPROTO_ICMP];
