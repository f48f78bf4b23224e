//! Map keys and values. Addresses and ports are kept in network byte order, exactly as they sit
//! in packet memory ([`Ipv4Be`], [`PortBe`]), so the dataplane copies them without swapping.

use bytemuck::{Pod, Zeroable};
use core::mem::{align_of, size_of};

/// An IPv4 address in network byte order (the raw `u32` as loaded from a packet).
#[repr(transparent)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Pod, Zeroable)]
pub struct Ipv4Be(pub u32);

impl Ipv4Be {
    pub const fn from_octets(o: [u8; 4]) -> Self {
        Self(u32::from_ne_bytes(o))
    }
    pub const fn octets(self) -> [u8; 4] {
        self.0.to_ne_bytes()
    }
    /// Neither "this host" (0/8), loopback, multicast, nor the limited broadcast: an address a
    /// flow may be translated to or from.
    #[inline(always)]
    pub const fn is_unicast(self) -> bool {
        let [a, ..] = self.octets();
        a != 0 && a != 127 && a < 224
    }
}

/// A TCP/UDP port in network byte order (the raw `u16` as loaded from a packet).
#[repr(transparent)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Pod, Zeroable)]
pub struct PortBe(pub u16);

impl PortBe {
    pub const fn from_host(p: u16) -> Self {
        Self(p.to_be())
    }
    pub const fn host(self) -> u16 {
        u16::from_be(self.0)
    }
}

/// An address and port: one side of a flow, or the target of a translation. Aligned to its
/// size: eBPF copies it as one 8-byte word, and a stack copy at a 4-aligned offset (inside
/// an `Option`) would be a misaligned access, which the verifier rejects.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct Endpoint {
    pub addr: Ipv4Be,
    pub port: PortBe,
    pub _pad: u16,
}

impl Endpoint {
    pub const fn new(addr: Ipv4Be, port: PortBe) -> Self {
        Self { addr, port, _pad: 0 }
    }
}

/// A 5-tuple as seen on the wire at one hook: the conntrack and egress map key.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct FlowKey {
    pub src: Ipv4Be,
    pub dst: Ipv4Be,
    pub sport: PortBe,
    pub dport: PortBe,
    pub proto: u8,
    // Two fields rather than `[u8; 3]`: zeroing a 3-byte array compiles to a call to `memset`
    // in BPF, on every packet.
    pub _pad8: u8,
    pub _pad16: u16,
}

impl FlowKey {
    pub const fn new(proto: u8, src: Endpoint, dst: Endpoint) -> Self {
        Self { src: src.addr, dst: dst.addr, sport: src.port, dport: dst.port, proto, _pad8: 0, _pad16: 0 }
    }
    pub const fn src_ep(&self) -> Endpoint {
        Endpoint::new(self.src, self.sport)
    }
    pub const fn dst_ep(&self) -> Endpoint {
        Endpoint::new(self.dst, self.dport)
    }
    /// The same flow seen from the other end: what the reply to this packet carries.
    pub const fn reversed(&self) -> Self {
        Self::new(self.proto, self.dst_ep(), self.src_ep())
    }
}

/// A (protocol, address, port): the public side of a port-forward, a LAN host's endpoint
/// whose traffic has bound a public port, or such a bound public port.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct ProtoEndpoint {
    pub addr: Ipv4Be,
    pub port: PortBe,
    pub proto: u8,
    pub _pad: u8,
}

impl ProtoEndpoint {
    pub const fn new(proto: u8, public: Endpoint) -> Self {
        Self { addr: public.addr, port: public.port, proto, _pad: 0 }
    }
}

/// A forward as the dataplane reads it (`HP_FORWARDS`, keyed by the public protocol, address
/// and port): where the traffic goes. The rest is the controller's, kept with the entry so that
/// a restarted controller knows it: which writer made it, and until when it lives.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct ForwardEntry {
    /// The LAN host and port the traffic goes to.
    pub target: Endpoint,
    /// Who made it (`FWD_ORIGIN_*`) in the low byte; the rest 0.
    pub flags: u32,
    /// The source-limit set whose sources alone may use it (0: every source). Room for
    /// source-limited forwards: always 0 until they exist.
    pub source_limit: u16,
    /// This port's place in its forward's public port range (0 for a single port): the
    /// target's port is already offset by it.
    pub port_offset: u16,
    /// CLOCK_BOOTTIME ns after which the controller removes it (0: never).
    pub expires_ns: u64,
}

/// Forwards a configuration file declares (`apply`, `up --config`, `run --config`).
pub const FWD_ORIGIN_FILE: u32 = 0;
/// Forwards added at runtime (`map add`): a reload of the file leaves them.
pub const FWD_ORIGIN_RUNTIME: u32 = 1;
pub const FWD_ORIGIN_MASK: u32 = 0xff;

/// A LAN host's endpoint-independent binding (RFC 4787 REQ-1, RFC 5382 REQ-1): the public port
/// its (protocol, address, port) has for every destination. Keyed by that [`ProtoEndpoint`]; the
/// bound port's own entry (public [`ProtoEndpoint`] -> LAN [`Endpoint`]) claims it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Binding {
    pub port: PortBe,
    // Scalars, not an array: zeroing an array compiles to a BPF memset call (see FlowKey).
    pub _pad16: u16,
    pub _pad32: u32,
    /// `bpf_ktime_get_boot_ns` when a flow last started using it: the controller removes a
    /// binding no flow uses once this is old enough.
    pub last_used_ns: u64,
}

/// [`CtEntry::flags`]: this entry is the reply direction of its flow.
pub const CT_F_REPLY: u32 = 1 << 0;
/// [`CtEntry::flags`]: the flow is hairpinned (LAN client to a LAN server via the public address).
pub const CT_F_HAIRPIN: u32 = 1 << 1;
/// [`CtEntry::flags`]: the flow is masqueraded (LAN client to the internet, source = public address).
pub const CT_F_MASQ: u32 = 1 << 2;
/// [`CtEntry::flags`]: the flow was opened from the WAN to a LAN host's binding (endpoint-
/// independent filtering): its outbound direction is the reply.
pub const CT_F_INBOUND: u32 = 1 << 3;
/// [`CtEntry::flags`]: a packet of this direction has left the gateway through the kernel
/// (seen at egress): its forward chain, rp_filter and martian checks let it pass.
pub const CT_F_LEFT: u32 = 1 << 4;
/// [`CtEntry::flags`]: this direction has left, and had its other direction left before
/// (`CT_F_LEFT` in both): the kernel has forwarded the flow both ways, so the fast path may
/// serve this direction, as a netfilter flowtable offloads only established, accepted flows.
/// Set at egress, by this direction's own packets.
pub const CT_F_CONFIRMED: u32 = 1 << 5;
/// [`CtEntry::flags`]: ingress writes this direction's translated source port too (egress the
/// address): its packets would otherwise leave ingress with the tuple of another flow's (two
/// flows from one client endpoint to two forwards of one service), and egress could not tell
/// them apart. Both directions of such a flow have it.
pub const CT_F_SPORT_AT_INGRESS: u32 = 1 << 6;
/// [`CtEntry::flags`]: [`CtEntry::ack`] holds an acknowledgment number of this direction.
pub const CT_F_ACK_NUM: u32 = 1 << 7;

// What the dataplane has seen in an entry's direction, ORed into [`CtEntry::flags`] as packets
// pass; the controller derives TCP state and timeouts from the two directions' bits.
/// A packet.
pub const CT_S_SEEN: u32 = 1 << 8;
/// A TCP SYN.
pub const CT_S_SYN: u32 = 1 << 9;
/// A TCP segment without SYN (the handshake completed from this side).
pub const CT_S_ACK: u32 = 1 << 10;
/// A TCP FIN.
pub const CT_S_FIN: u32 = 1 << 11;
/// A TCP RST.
pub const CT_S_RST: u32 = 1 << 12;
/// Every state bit.
pub const CT_S_ALL: u32 = CT_S_SEEN | CT_S_SYN | CT_S_ACK | CT_S_FIN | CT_S_RST;

/// The state bits a packet adds to its entry: `tcp_flags` is byte 13 of the TCP header (0 for
/// other protocols).
#[inline(always)]
pub const fn ct_state_bits(proto: u8, tcp_flags: u8) -> u32 {
    const FIN: u8 = 0x01;
    const SYN: u8 = 0x02;
    const RST: u8 = 0x04;
    let mut bits = CT_S_SEEN;
    if proto == crate::consts::IPPROTO_TCP {
        bits |= if tcp_flags & SYN != 0 { CT_S_SYN } else { CT_S_ACK };
        if tcp_flags & FIN != 0 {
            bits |= CT_S_FIN;
        }
        if tcp_flags & RST != 0 {
            bits |= CT_S_RST;
        }
    }
    bits
}

/// Whether a TCP segment's flags (byte 13 of its header) are a combination a stack sends, as
/// netfilter's conntrack judges them (`tcp_valid_flags`): PSH, ECE and CWR aside, SYN (with URG
/// or ACK), RST (with ACK), FIN with ACK (and URG), or ACK (with URG).
#[inline(always)]
pub const fn tcp_flags_valid(tcp_flags: u8) -> bool {
    const FIN: u8 = 0x01;
    const SYN: u8 = 0x02;
    const RST: u8 = 0x04;
    const ACK: u8 = 0x10;
    const URG: u8 = 0x20;
    let f = tcp_flags & (FIN | SYN | RST | ACK | URG);
    f == SYN
        || f == SYN | URG
        || f == SYN | ACK
        || f == RST
        || f == RST | ACK
        || f == FIN | ACK
        || f == FIN | ACK | URG
        || f == ACK
        || f == ACK | URG
}

/// One direction of a translated flow, keyed by its [`FlowKey`] as seen at ingress.
///
/// `xlate` is the whole translation (source and destination) so that a single lookup can apply
/// it; on the split path, ingress writes the destination and egress the source.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct CtEntry {
    /// The tuple as it leaves the gateway.
    pub xlate: FlowKey,
    /// `bpf_ktime_get_boot_ns` when the flow was created.
    pub created_ns: u64,
    /// `bpf_ktime_get_boot_ns` of the last packet seen in this direction.
    pub last_seen_ns: u64,
    pub flags: u32,
    /// TCP: the highest acknowledgment number this direction's segments have carried
    /// (`CT_F_ACK_NUM`; see [`crate::nat::ack_advances`]): where the other direction's RSTs
    /// must fall (see [`crate::nat::rst_in_window`]). Written by this direction's packets
    /// only: through conntrack's path, and by the flow cache's slots as it advances (see
    /// [`crate::flow_cache::ACK_REPORT`]).
    pub ack: u32,
    /// The fast path's cached next hop for this direction (interface 0: none yet). Resolved
    /// again whenever `last_seen_ns` is refreshed, i.e. at most a second old.
    pub hop: NextHop,
    pub _pad32: u32,
    /// Packets (a GSO super-packet counting its segments) and bytes (IPv4 total lengths) this
    /// direction brought through conntrack's path. Those the flow cache served are counted in
    /// its slot's [`crate::flow_cache::Counts`] and added here when the slot is filled again
    /// or taken, so a reader adds what the slots still hold. Plain adds, as the flags: a flow
    /// direction's packets arrive on one CPU (RSS), and the BPF target has no atomic add.
    pub packets: u64,
    pub bytes: u64,
}

/// What egress does with a flow direction's packets, keyed by the tuple they leave ingress
/// with ([`crate::nat::leaving_ingress`]): every direction of every flow has one, so that
/// egress can both give them their source and find their conntrack entry to confirm it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct EgressEntry {
    /// The source they leave with (their own address, where the flow keeps it).
    pub src: Endpoint,
    /// Their conntrack key: the tuple they arrived with.
    pub ct_key: FlowKey,
}

/// A fragmented datagram as one hook sees it: its fragments share source, destination,
/// protocol and IPv4 identification, and only the first carries the ports.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct FragKey {
    pub src: Ipv4Be,
    pub dst: Ipv4Be,
    /// The IPv4 identification, as in the header.
    pub id: u16,
    pub proto: u8,
    /// [`FRAG_INGRESS`] or [`FRAG_EGRESS`]: the two hooks translate different addresses.
    pub hook: u8,
}

/// [`FragKey::hook`]: ingress, which translates the destination.
pub const FRAG_INGRESS: u8 = 0;
/// [`FragKey::hook`]: egress, which translates the source.
pub const FRAG_EGRESS: u8 = 1;

/// How the later fragments of a datagram are translated: the address its first fragment got.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct FragEntry {
    /// The destination (at ingress) or source (at egress) the first fragment got.
    pub addr: Ipv4Be,
    pub _pad: u32,
    /// `bpf_ktime_get_boot_ns` when the first fragment passed: later ones are translated for
    /// [`crate::consts::FRAG_TIMEOUT_NS`] after it.
    pub first_ns: u64,
}

/// A later fragment held at ingress until its datagram's first fragment comes: the datagram
/// (as it arrived; `hook` is [`FRAG_INGRESS`]) and the fragment's offset in bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct HeldKey {
    pub frag: FragKey,
    pub offset: u16,
    pub _pad: u16,
}

/// The payload a held fragment carries at most: a 1500-byte fragment's, less its 20-byte
/// header (a multiple of 8, as every fragment's but the last must be).
pub const HELD_MAX: usize = 1480;

/// A held fragment (see [`HeldKey`]): its payload (the bytes after its IPv4 header), and
/// whether more fragments follow it. The dataplane's alone (the controller never reads it).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct HeldFragment {
    /// `bpf_ktime_get_boot_ns` when it was held: it waits [`crate::consts::FRAG_TIMEOUT_NS`].
    pub held_ns: u64,
    pub len: u16,
    /// 1: more fragments follow it (its MF flag).
    pub more: u8,
    pub _pad8: u8,
    pub _pad32: u32,
    pub data: [u8; HELD_MAX],
}

/// Where the fast path sends a flow direction's packets, as the FIB answered: cached in its
/// conntrack entry ([`CtEntry::hop`]) and copied into the flow cache's slots.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct NextHop {
    /// Destination then source MAC address, as they open an Ethernet header.
    pub macs: [u8; 12],
    /// The interface (0: none).
    pub ifindex: u32,
    /// The largest IPv4 total length the FIB has passed for it (the egress MTU check).
    pub len_ok: u16,
    /// 1: it is the interface the packets arrive on (hairpinned: XDP_TX, or TC's redirect
    /// back out of it).
    pub tx: u8,
    pub _pad: u8,
}

/// Something the dataplane reports to `run` through its ring buffer (`HP_EVENTS`): a flow it
/// created, or a new flow it refused for want of a public port or table space (`reason`:
/// `DropNoPort` or `DropFlowInsert`). When the ring is full, events are lost; the counters and
/// conntrack stay exact.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Event {
    /// The flow's tuple, as it arrived.
    pub key: FlowKey,
    /// [`EVENT_NEW_FLOW`] or [`EVENT_REFUSED`].
    pub kind: u32,
    /// What `kind` tells more of: a new flow's `CT_F_*` kind flags; a refused flow's
    /// [`crate::Reason`] index.
    pub detail: u32,
    /// A new flow's translated tuple (zero for a refused one).
    pub xlate: FlowKey,
}

/// [`Event::kind`]: a flow was created (both directions are in conntrack).
pub const EVENT_NEW_FLOW: u32 = 1;
/// [`Event::kind`]: a new flow was refused (no public port, or no table space).
pub const EVENT_REFUSED: u32 = 2;

/// [`Config::flags`]: hairpin (source rewrite of LAN-to-public-address traffic) is on.
pub const CFG_F_HAIRPIN: u32 = 1 << 0;
/// [`Config::flags`]: UDP bindings accept packets from any WAN endpoint (endpoint-independent
/// filtering, "full cone"); without it only from endpoints the LAN host has sent to.
pub const CFG_F_UDP_EIF: u32 = 1 << 1;
/// [`Config::flags`]: established flows are translated whole and sent out by XDP itself
/// (redirect or XDP_TX) when the FIB knows route and neighbour; otherwise the kernel forwards.
pub const CFG_F_FAST_PATH: u32 = 1 << 2;
/// [`Config::flags`], set by the controller's sweep: conntrack is at least
/// [`crate::flow_cache::PRESSURE_PERCENT`] full, so the kernel's LRU may be evicting live
/// flows, whose tuples new flows may take while other CPUs still hold cached copies of them.
/// While it is set, every flow confirmed (moved into the confirmed table, evicting one there)
/// moves the dataplane's generation (no copy survives it).
pub const CFG_F_CT_PRESSURE: u32 = 1 << 3;
/// [`Config::flags`], for the controller only (the dataplane ignores it): no public address was
/// given, so it is the WAN interface's primary address and follows it.
pub const CFG_F_PUBLIC_FROM_WAN: u32 = 1 << 4;

/// Which interface a packet arrived on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Lan,
    Wan,
}

impl Side {
    pub const BOTH: [Side; 2] = [Side::Lan, Side::Wan];

    /// Its index in [`Config`]'s per-side fields.
    pub const fn index(self) -> usize {
        match self {
            Side::Lan => 0,
            Side::Wan => 1,
        }
    }
}

/// The dataplane's settings, written by the controller into the slot of a two-slot array
/// that `HP_CONFIG_SEL` does not name, then made live by moving the selector.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Config {
    /// The gateway's LAN address: hairpinned flows are sourced from it.
    pub lan_addr: Ipv4Be,
    /// The gateway's public (WAN) address.
    pub public_addr: Ipv4Be,
    /// Source port range for hairpin and masquerade, host byte order, inclusive.
    pub port_min: u16,
    pub port_max: u16,
    pub flags: u32,
    /// Idle timeouts in seconds, applied by the controller (`hairpin-ctl run`).
    pub timeouts: Timeouts,
    /// The LAN prefix (network and mask, network byte order): LAN sources must be inside it,
    /// WAN packets must not claim or target it.
    pub lan_net: Ipv4Be,
    pub lan_mask: Ipv4Be,
    /// Per side (indexed by [`Side::index`]), the interface: LAN traffic the kernel would route
    /// out of the WAN one is masqueraded, and the fast path sends to these two only.
    pub ifindex: [u32; 2],
    /// Per side, where the interface's ingress runs ([`crate::placement::Placement::encode`]):
    /// the dataplane reads only whether the fast path may send into it, and how.
    pub placement: [u16; 2],
    /// Per side, the interface's Ethernet address: only frames sent to it are the gateway's to
    /// translate and forward (the kernel forwards nothing else). All zero: not checked (a
    /// device without one).
    pub mac: [[u8; 6]; 2],
}

/// How long a flow may stay idle, by protocol and TCP state, in seconds. (The `[timeouts]`
/// section of the controller's configuration file, keys as the fields.)
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
#[cfg_attr(feature = "user", derive(serde::Serialize, serde::Deserialize), serde(deny_unknown_fields, default))]
pub struct Timeouts {
    /// TCP with the handshake done and no FIN/RST (RFC 5382 REQ-5: at least 2 h 4 min).
    pub tcp_established: u32,
    /// TCP while opening (SYN seen) or closing (FIN or RST seen).
    pub tcp_transitory: u32,
    /// UDP, refreshed by outbound packets only (RFC 4787 REQ-5/6: at least 120 s).
    pub udp: u32,
    pub icmp: u32,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self { tcp_established: 7440, tcp_transitory: 240, udp: 300, icmp: 60 }
    }
}

impl Config {
    /// What a writer that read `base` and wants `new` leaves, when the live settings are `cur`
    /// by now: its own changes, and the others' (a field it did not change keeps `cur`'s; the
    /// flags bit by bit). So `apply` never undoes what `run` changed meanwhile (a placement, a
    /// MAC address, the pressure mark), nor the other way round.
    pub fn merged(base: &Config, new: &Config, cur: &Config) -> Config {
        fn pick<T: PartialEq + Copy>(base: T, new: T, cur: T) -> T {
            if new != base { new } else { cur }
        }
        // Per side apart: `run` may move one side's placement while `apply` changes the other.
        fn sides<T: PartialEq + Copy>(base: [T; 2], new: [T; 2], cur: [T; 2]) -> [T; 2] {
            [pick(base[0], new[0], cur[0]), pick(base[1], new[1], cur[1])]
        }
        let changed = base.flags ^ new.flags;
        Config {
            lan_addr: pick(base.lan_addr, new.lan_addr, cur.lan_addr),
            public_addr: pick(base.public_addr, new.public_addr, cur.public_addr),
            port_min: pick(base.port_min, new.port_min, cur.port_min),
            port_max: pick(base.port_max, new.port_max, cur.port_max),
            flags: (cur.flags & !changed) | (new.flags & changed),
            timeouts: pick(base.timeouts, new.timeouts, cur.timeouts),
            lan_net: pick(base.lan_net, new.lan_net, cur.lan_net),
            lan_mask: pick(base.lan_mask, new.lan_mask, cur.lan_mask),
            ifindex: sides(base.ifindex, new.ifindex, cur.ifindex),
            placement: sides(base.placement, new.placement, cur.placement),
            mac: sides(base.mac, new.mac, cur.mac),
        }
    }

    /// A gateway at `lan_addr` in the LAN prefix `lan_net`/`lan_mask` whose public address is
    /// `public`, with the defaults: the default port range, hairpin on, the default timeouts,
    /// no interfaces yet (the controller's `gateway::config` fills the rest from a spec).
    pub fn new(lan_addr: Ipv4Be, lan_net: Ipv4Be, lan_mask: Ipv4Be, public: Ipv4Be) -> Config {
        Config {
            lan_addr,
            public_addr: public,
            port_min: crate::consts::DEFAULT_PORT_MIN,
            port_max: crate::consts::DEFAULT_PORT_MAX,
            flags: CFG_F_HAIRPIN,
            timeouts: Timeouts::default(),
            lan_net,
            lan_mask,
            ..Config::default()
        }
    }

    /// The interface of `side`.
    #[inline(always)]
    pub const fn ifindex_of(&self, side: Side) -> u32 {
        self.ifindex[side.index()]
    }

    pub const fn hairpin(&self) -> bool {
        self.flags & CFG_F_HAIRPIN != 0
    }

    pub const fn fast_path(&self) -> bool {
        self.flags & CFG_F_FAST_PATH != 0
    }

    pub const fn ct_pressure(&self) -> bool {
        self.flags & CFG_F_CT_PRESSURE != 0
    }
    pub const fn udp_endpoint_independent_filtering(&self) -> bool {
        self.flags & CFG_F_UDP_EIF != 0
    }

    /// Whether the XDP fast path may send a frame out of `ifindex` (XDP redirect or XDP_TX):
    /// only to the LAN and WAN interfaces, and only into those whose placement says they take
    /// XDP frames.
    #[inline(always)]
    pub const fn xdp_target(&self, ifindex: u32) -> bool {
        match self.placement_of(ifindex) {
            Some(placement) => placement & crate::placement::XDP_TARGET != 0,
            None => false,
        }
    }

    /// How the TC fast path may send a packet out of `ifindex`, from one reading of its
    /// placement: `None` if it may not (only to the LAN and WAN interfaces), `Some(true)`
    /// straight into its peer's ingress (see [`crate::placement::Placement::peer_target`]),
    /// `Some(false)` through the device.
    #[inline(always)]
    pub const fn tc_target(&self, ifindex: u32) -> Option<bool> {
        match self.placement_of(ifindex) {
            Some(placement) => Some(placement & crate::placement::PEER_TARGET != 0),
            None => None,
        }
    }

    /// The encoded placement of `ifindex`, if it is the LAN or WAN interface (0: none).
    #[inline(always)]
    const fn placement_of(&self, ifindex: u32) -> Option<u16> {
        if ifindex == 0 {
            None
        } else if ifindex == self.ifindex[0] {
            Some(self.placement[0])
        } else if ifindex == self.ifindex[1] {
            Some(self.placement[1])
        } else {
            None
        }
    }

    /// Whether a frame with destination MAC `dst` that arrived on `side` is addressed to the
    /// gateway, as the kernel judges it before forwarding (`PACKET_HOST`). Broadcast and
    /// multicast frames are not: the kernel delivers them to its own stack only.
    #[inline(always)]
    pub fn addressed_to_us(&self, side: Side, dst: &[u8; 6]) -> bool {
        let own = &self.mac[side.index()];
        // As two words: an array comparison may become a `bcmp` call, which BPF has not.
        let words = |m: &[u8; 6]| (u32::from_ne_bytes([m[0], m[1], m[2], m[3]]), u16::from_ne_bytes([m[4], m[5]]));
        words(own) == (0, 0) || words(own) == words(dst)
    }

    /// Whether `addr` lies in the LAN prefix (never, if no prefix is set).
    #[inline(always)]
    pub const fn in_lan(&self, addr: Ipv4Be) -> bool {
        // Raw network-order words: masking works the same in either byte order.
        self.lan_mask.0 != 0 && addr.0 & self.lan_mask.0 == self.lan_net.0
    }
}

// The layouts are ABI between the BPF object and the controller.
const _: () = assert!(size_of::<Ipv4Be>() == 4 && align_of::<Ipv4Be>() == 4);
const _: () = assert!(size_of::<PortBe>() == 2 && align_of::<PortBe>() == 2);
const _: () = assert!(size_of::<Endpoint>() == 8 && align_of::<Endpoint>() == 8);
const _: () = assert!(size_of::<FlowKey>() == 16 && align_of::<FlowKey>() == 4);
const _: () = assert!(size_of::<ProtoEndpoint>() == 8 && align_of::<ProtoEndpoint>() == 4);
const _: () = assert!(size_of::<CtEntry>() == 80 && align_of::<CtEntry>() == 8);
const _: () = assert!(size_of::<NextHop>() == 20 && align_of::<NextHop>() == 4);
const _: () = assert!(size_of::<Event>() == 40 && align_of::<Event>() == 4);
const _: () = assert!(size_of::<Binding>() == 16 && align_of::<Binding>() == 8);
const _: () = assert!(size_of::<ForwardEntry>() == 24 && align_of::<ForwardEntry>() == 8);
const _: () = assert!(size_of::<Config>() == 64 && align_of::<Config>() == 4);
const _: () = assert!(size_of::<Timeouts>() == 16 && align_of::<Timeouts>() == 4);
// Field offsets that the C-side view (bpftool map dump) and the BPF code rely on.
const _: () = {
    use core::mem::offset_of;
    assert!(offset_of!(FlowKey, dst) == 4 && offset_of!(FlowKey, sport) == 8 && offset_of!(FlowKey, proto) == 12);
    assert!(offset_of!(ProtoEndpoint, port) == 4 && offset_of!(ProtoEndpoint, proto) == 6);
    assert!(offset_of!(CtEntry, created_ns) == 16 && offset_of!(CtEntry, last_seen_ns) == 24);
    assert!(offset_of!(CtEntry, flags) == 32 && offset_of!(Config, port_min) == 8 && offset_of!(Config, flags) == 12);
    assert!(offset_of!(CtEntry, ack) == 36 && offset_of!(CtEntry, hop) == 40 && offset_of!(NextHop, ifindex) == 12);
    assert!(offset_of!(Config, timeouts) == 16 && offset_of!(Config, lan_net) == 32);
    assert!(offset_of!(Config, lan_mask) == 36 && offset_of!(Config, ifindex) == 40);
    assert!(offset_of!(Config, placement) == 48 && offset_of!(Config, mac) == 52);
};

#[cfg(feature = "user")]
mod user {
    use super::*;
    // SAFETY: all of these are #[repr(C)] Pod types with explicit padding and no pointers.
    unsafe impl aya::Pod for Endpoint {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for ProtoEndpoint {}
    unsafe impl aya::Pod for CtEntry {}
    unsafe impl aya::Pod for NextHop {}
    unsafe impl aya::Pod for EgressEntry {}
    unsafe impl aya::Pod for FragKey {}
    unsafe impl aya::Pod for FragEntry {}
    unsafe impl aya::Pod for HeldKey {}
    unsafe impl aya::Pod for Binding {}
    unsafe impl aya::Pod for ForwardEntry {}
    unsafe impl aya::Pod for Config {}
    unsafe impl aya::Pod for Timeouts {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_writer_keeps_what_others_changed_since_it_read() {
        let base = Config { port_min: 1024, flags: CFG_F_HAIRPIN, placement: [1, 1], ..Config::default() };
        // `apply` read `base`, and changes the port range and turns hairpin off...
        let new = Config { port_min: 2000, flags: 0, ..base };
        // ...while `run` moved a placement and marked conntrack under pressure.
        let cur = Config { placement: [7, 1], flags: CFG_F_HAIRPIN | CFG_F_CT_PRESSURE, ..base };
        let m = Config::merged(&base, &new, &cur);
        assert_eq!((m.port_min, m.placement), (2000, [7, 1]));
        assert_eq!(m.flags, CFG_F_CT_PRESSURE, "hairpin off (apply's), pressure on (run's)");
        assert_eq!(Config::merged(&base, &base, &cur), cur, "no change of its own: the live settings stand");
    }

    #[test]
    fn only_frames_to_the_sides_own_mac_are_the_gateways() {
        let (lan, wan) = ([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
        let cfg = Config { mac: [lan, wan], ..Config::default() };
        assert!(cfg.addressed_to_us(Side::Lan, &lan));
        assert!(cfg.addressed_to_us(Side::Wan, &wan));
        assert!(!cfg.addressed_to_us(Side::Lan, &wan), "the other side's address");
        assert!(!cfg.addressed_to_us(Side::Wan, &[0xff; 6]), "broadcast");
        assert!(!cfg.addressed_to_us(Side::Wan, &[2, 0, 0, 0, 1, 2]), "differs in the last two bytes only");
        // A device without an Ethernet address: nothing to check against.
        assert!(Config::default().addressed_to_us(Side::Lan, &[0x02, 0x42, 0, 0, 0, 0x99]));
    }
}
