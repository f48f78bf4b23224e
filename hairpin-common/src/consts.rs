//! Map capacities and protocol numbers, named once and used by the maps and the controller.

/// Port-forward mappings (`hairpin-ctl map add`).
pub const MAX_MAPPINGS: u32 = 4096;
/// Conntrack entries; a flow takes two (one per direction).
pub const CT_CAPACITY: u32 = 262_144;
/// Egress source-rewrite entries; a flow takes at most two.
pub const SNAT_CAPACITY: u32 = CT_CAPACITY;

/// Hairpin source ports are allocated from this range (inclusive) unless configured otherwise.
pub const DEFAULT_PORT_MIN: u16 = 1024;
pub const DEFAULT_PORT_MAX: u16 = 65535;
/// Candidate ports tried before a new hairpin flow is dropped as "no port".
pub const PORT_ALLOC_TRIES: u32 = 16;

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// Names of the maps as pinned under the pin directory; the eBPF statics carry the same names.
pub mod map_names {
    pub const CONFIG: &str = "HAIRPIN_CONFIG";
    pub const MAPPINGS: &str = "HAIRPIN_MAPPINGS";
    pub const CONNTRACK: &str = "HAIRPIN_CT";
    pub const SNAT: &str = "HAIRPIN_SNAT";
    pub const STATS: &str = "HAIRPIN_STATS";
    pub const ALL: [&str; 5] = [CONFIG, MAPPINGS, CONNTRACK, SNAT, STATS];
}

/// Names of the programs in the object file.
pub mod prog_names {
    pub const XDP_LAN: &str = "xdp_lan";
    pub const XDP_WAN: &str = "xdp_wan";
    pub const TC_EGRESS: &str = "tc_egress";
}
