//! Why a packet got the verdict it got: one counter per reason, per CPU.
//!
//! Numbers are ABI: the controller decodes the stats map by index. Append new reasons at the
//! end and never renumber; a retired reason keeps its number.

macro_rules! reasons {
    ($( $(#[doc = $doc:literal])* $name:ident = $num:literal, $label:literal, $kind:ident; )*) => {
        /// Every pass/drop/translate decision the dataplane makes.
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Reason {
            $( $(#[doc = $doc])* $name = $num, )*
        }

        impl Reason {
            /// Every reason, in index order.
            pub const ALL: &'static [Reason] = &[$(Reason::$name),*];

            /// Stable snake_case name, used by `hairpin-ctl stats`.
            pub const fn name(self) -> &'static str {
                match self { $(Reason::$name => $label,)* }
            }

            /// The doc comment, used by `hairpin-ctl stats` to explain a counter. Each doc line
            /// keeps the space after `///`, which joins the lines; the first one's is trimmed.
            pub fn help(self) -> &'static str {
                match self { $(Reason::$name => concat!($($doc),*),)* }.trim_start()
            }

            pub const fn from_index(i: u32) -> Option<Reason> {
                match i { $($num => Some(Reason::$name),)* _ => None }
            }

            /// Drops are the reasons whose verdict is to discard the packet (marked `drop` in
            /// the list; the others are `pass`, `xlate` or `hold`).
            pub const fn is_drop(self) -> bool {
                match self { $(Reason::$name => reasons!(@drop $kind),)* }
            }
            /// Whether the program takes the packet from the kernel: dropped, or kept by the
            /// dataplane to be sent on later (`hold`). Its verdict is the drop verdict.
            pub const fn consumes(self) -> bool {
                match self { $(Reason::$name => reasons!(@consumes $kind),)* }
            }
        }
    };
    (@drop drop) => { true };
    (@drop $other:ident) => { false };
    (@consumes drop) => { true };
    (@consumes hold) => { true };
    (@consumes $other:ident) => { false };
}

reasons! {
    /// Not IPv4 (ARP, IPv6...): passed to the kernel untouched.
    PassNotIpv4 = 0, "pass_not_ipv4", pass;
    /// IPv4 fragment after the first, of no datagram whose first fragment was translated here
    /// (one for the gateway itself; or one that came before its first fragment): passed
    /// untouched.
    PassFragment = 1, "pass_fragment", pass;
    /// IPv4 protocol other than TCP/UDP/ICMP, or an ICMP type other than echo and errors:
    /// passed untouched.
    PassOtherProto = 2, "pass_other_proto", pass;
    /// Ingress packet with no flow, no port-forward mapping and not masqueraded (for the
    /// gateway itself, or unsolicited from the WAN): passed untouched to the gateway's stack.
    PassNoMapping = 3, "pass_no_mapping", pass;
    /// Ingress packet that matched a mapping: flow created, destination rewritten.
    IngressNewFlow = 4, "ingress_new_flow", xlate;
    /// Ingress packet of a known flow: destination restored or rewritten as recorded.
    IngressFlow = 5, "ingress_flow", xlate;
    /// Egress packet of a known flow: source rewritten as recorded (where the flow changes
    /// it), and its direction marked forwarded by the kernel (the fast path serves a flow only
    /// once both directions are).
    EgressFlow = 6, "egress_flow", xlate;
    /// Egress packet of no flow (the gateway's own traffic, or a fast-path packet already
    /// translated): passed untouched.
    PassEgressNoFlow = 7, "pass_egress_no_flow", pass;
    /// Truncated or inconsistent header (bad IHL, total length): dropped.
    DropMalformed = 8, "drop_malformed", drop;
    /// New hairpin or masqueraded flow but every candidate source port was taken: dropped.
    DropNoPort = 9, "drop_no_port", drop;
    /// New flow that could not be recorded in conntrack (table error, or its reply tuple
    /// belongs to another flow): dropped, nothing half-inserted.
    DropFlowInsert = 10, "drop_flow_insert", drop;
    /// The program ran before the controller wrote its configuration: passed untouched.
    PassNoConfig = 11, "pass_no_config", pass;
    /// LAN packet the kernel routes out of the WAN: flow created, source to become the public
    /// address at egress (masquerade).
    IngressMasquerade = 12, "ingress_masquerade", xlate;
    /// WAN packet with a source in the LAN prefix (spoofed): dropped.
    DropWanLanSource = 13, "drop_wan_lan_source", drop;
    /// WAN packet addressed straight to a LAN address: dropped, never forwarded.
    DropWanToLan = 14, "drop_wan_to_lan", drop;
    /// LAN packet from outside the LAN prefix that the gateway would forward: dropped.
    DropLanForeignSource = 15, "drop_lan_foreign_source", drop;
    /// Packet about to leave on the WAN with a LAN source and no translation (a protocol
    /// hairpin does not translate), or an ICMP error quoting a LAN address: dropped.
    DropLanSourceToWan = 16, "drop_lan_source_to_wan", drop;
    /// ICMP error about a known flow: the packet it quotes and its outer addresses translated
    /// (RFC 5508), every checksum updated.
    IcmpError = 17, "icmp_error", xlate;
    /// Packet to a public port that a LAN host's traffic has bound: from another LAN host
    /// (hairpin), or from the WAN with endpoint-independent filtering. Flow created, destination
    /// rewritten to that host.
    IngressBinding = 18, "ingress_binding", xlate;
    /// WAN packet to a bound public port from an endpoint its LAN host has not sent to
    /// (address-and-port-dependent filtering): passed to the gateway's stack like unsolicited
    /// traffic.
    PassFiltered = 19, "pass_filtered", pass;
    /// Packet of a known flow translated whole and sent out of the other interface by the
    /// ingress program itself (fast path: XDP redirect, or TC's bpf_redirect): no routing, no
    /// netfilter.
    FastRedirect = 20, "fast_redirect", xlate;
    /// Hairpinned packet of a known flow translated whole and sent back out of the interface
    /// it came in on (fast path: XDP_TX, or TC's bpf_redirect).
    FastTx = 21, "fast_tx", xlate;
    /// Frame of a VLAN (an 802.1Q or 802.1ad tag with an ID other than 0, or two tags): it
    /// belongs to that VLAN's own interface, where hairpin may be attached in its own right;
    /// passed untouched (the kernel delivers it there, or drops it). A priority tag (ID 0) is
    /// translated like an untagged frame.
    PassVlan = 22, "pass_vlan", pass;
    /// TCP or UDP header that netfilter's conntrack calls invalid: a UDP length beyond the
    /// datagram or under 8, a TCP data offset under 20 bytes or beyond the packet, TCP flags no
    /// stack sends together (SYN+FIN, SYN+RST, none...): dropped.
    DropInvalid = 23, "drop_invalid", drop;
    /// ICMP from the WAN of a type hairpin does not translate (not echo, echo reply or an error
    /// quoting a packet), addressed past the gateway: dropped, never forwarded.
    DropWanIcmpType = 24, "drop_wan_icmp_type", drop;
    /// A packet that parsed, but whose rewrite a kernel helper refused (a checksum update of
    /// an skb): dropped rather than sent half-translated.
    DropRewrite = 25, "drop_rewrite", drop;
    /// Frame sent to another host's MAC address (a switch flooding, a promiscuous interface):
    /// the kernel forwards only frames sent to its own, so it is passed to the gateway's stack
    /// untouched (which drops it, or hands it to a macvlan or packet socket that wants it).
    PassOtherHost = 26, "pass_other_host", pass;
    /// Packet whose source is no host's unicast address (0.0.0.0 from a host without an
    /// address yet, loopback, multicast, broadcast): never translated, never a flow; passed to
    /// the gateway's stack untouched (its DHCP server hears it; the kernel drops the rest).
    PassSourceNotHost = 27, "pass_source_not_host", pass;
    /// IPv4 fragment after the first, of a datagram whose first fragment was translated at
    /// ingress: its destination rewritten as the first one's was.
    IngressFragment = 28, "ingress_fragment", xlate;
    /// IPv4 fragment after the first, of a datagram whose first fragment was translated at
    /// egress (the sender's, or the kernel's own fragmentation to a smaller MTU): its source
    /// rewritten as the first one's was.
    EgressFragment = 29, "egress_fragment", xlate;
    /// IPv4 fragment after the first that came before it, at a TC ingress: kept (not dropped)
    /// until its first fragment comes, then sent on with it, whole and translated (see
    /// `fragments_released`); one whose first fragment never comes within 30 s, or that more
    /// recent ones push out (256 at most), is lost, as the kernel would lose it.
    HeldFragment = 30, "held_fragment", hold;
}

macro_rules! counters {
    ($( $(#[doc = $doc:literal])* $name:ident = $num:literal, $label:literal; )*) => {
        /// What the dataplane counts beside the verdicts, one per-CPU array (`HP_COUNTERS`)
        /// indexed by these. Numbers are ABI, as for [`Reason`]: append, never renumber.
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Counter {
            $( $(#[doc = $doc])* $name = $num, )*
        }

        impl Counter {
            pub const ALL: &'static [Counter] = &[$(Counter::$name),*];
            pub const COUNT: u32 = Counter::ALL.len() as u32;

            /// Stable snake_case name, used by `hairpin-ctl stats`.
            pub const fn name(self) -> &'static str {
                match self { $(Counter::$name => $label,)* }
            }

            /// The doc comment, as for [`Reason::help`].
            pub fn help(self) -> &'static str {
                match self { $(Counter::$name => concat!($($doc),*),)* }.trim_start()
            }
        }
    };
}

counters! {
    /// Known flow left to the kernel: TTL 1 or 0, which the kernel answers with time exceeded.
    SlowTtl = 0, "ttl_expiring";
    /// Known flow left to the kernel: larger than the egress MTU, which the kernel fragments or
    /// answers with fragmentation needed.
    SlowFragNeeded = 1, "frag_needed";
    /// Known flow left to the kernel: the next hop's link-layer address is not known yet, which
    /// the kernel resolves.
    SlowNoNeighbour = 2, "no_neighbour";
    /// Known flow left to the kernel: not forwarded by a plain route out of an interface the
    /// fast path may send to (local, unreachable, forwarding off, another interface).
    SlowRoute = 3, "route";
    /// Fast-path packet the flow cache could not serve (conntrack was looked up).
    CacheMiss = 4, "flow_cache_miss";
    /// New TCP flow dropped: every candidate public port taken.
    TcpNoPort = 5, "tcp_no_port";
    /// New TCP flow dropped: a table full or a map operation failed.
    TcpNoTableSpace = 6, "tcp_no_table_space";
    /// New UDP flow dropped: every candidate public port taken.
    UdpNoPort = 7, "udp_no_port";
    /// New UDP flow dropped: a table full or a map operation failed.
    UdpNoTableSpace = 8, "udp_no_table_space";
    /// New ICMP echo flow dropped: every candidate echo id taken.
    IcmpNoPort = 9, "icmp_no_port";
    /// New ICMP echo flow dropped: a table full or a map operation failed.
    IcmpNoTableSpace = 10, "icmp_no_table_space";
    /// XDP frames the kernel refused to transmit into the LAN interface.
    LanXdpRefused = 11, "lan_xdp_refused";
    /// XDP frames the kernel refused to transmit into the WAN interface.
    WanXdpRefused = 12, "wan_xdp_refused";
    /// TCP RST forwarded but ignored for the flow's state: its sequence number is outside the
    /// window the other side last acknowledged (an off-path spray, as netfilter ignores one).
    TcpRstOutOfWindow = 13, "tcp_rst_out_of_window";
    /// Held fragments (`held_fragment`) sent on, appended to the fragment before them.
    FragmentsReleased = 14, "fragments_released";
    /// Known flow left to the kernel: its IPv4 header has options (as netfilter's flowtable
    /// leaves them to the stack) or a wrong checksum (which the kernel drops, as RFC 1812 has
    /// a router do).
    SlowHeader = 15, "ip_header";
}

impl Counter {
    /// The counter of a new `proto` flow dropped for `reason` (no port, no table space), if
    /// it has one.
    #[inline(always)]
    pub const fn exhausted(proto: u8, reason: Reason) -> Option<Counter> {
        use crate::consts::{IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP};
        Some(match (proto, reason) {
            (IPPROTO_TCP, Reason::DropNoPort) => Counter::TcpNoPort,
            (IPPROTO_TCP, Reason::DropFlowInsert) => Counter::TcpNoTableSpace,
            (IPPROTO_UDP, Reason::DropNoPort) => Counter::UdpNoPort,
            (IPPROTO_UDP, Reason::DropFlowInsert) => Counter::UdpNoTableSpace,
            (IPPROTO_ICMP, Reason::DropNoPort) => Counter::IcmpNoPort,
            (IPPROTO_ICMP, Reason::DropFlowInsert) => Counter::IcmpNoTableSpace,
            _ => return None,
        })
    }

    /// The refused-frames counter of the interface on `side`.
    #[inline(always)]
    pub const fn xdp_refused(side: crate::Side) -> Counter {
        match side {
            crate::Side::Lan => Counter::LanXdpRefused,
            crate::Side::Wan => Counter::WanXdpRefused,
        }
    }
}

/// Why a packet of a known flow took the slow path (the kernel forwards it, egress rewrites
/// its source) although the fast path is on: the fast path's error, counted as its
/// [`Counter`]. The verdict counts the packet as `ingress_flow`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Slow {
    Ttl,
    FragNeeded,
    NoNeighbour,
    Route,
    Header,
}

impl Slow {
    pub const ALL: [Slow; 5] = [Slow::Ttl, Slow::FragNeeded, Slow::NoNeighbour, Slow::Route, Slow::Header];

    #[inline(always)]
    pub const fn counter(self) -> Counter {
        match self {
            Slow::Ttl => Counter::SlowTtl,
            Slow::FragNeeded => Counter::SlowFragNeeded,
            Slow::NoNeighbour => Counter::SlowNoNeighbour,
            Slow::Route => Counter::SlowRoute,
            Slow::Header => Counter::SlowHeader,
        }
    }

    pub const fn name(self) -> &'static str {
        self.counter().name()
    }
}

impl Reason {
    /// Number of reasons, i.e. the size of the stats array.
    pub const COUNT: u32 = Reason::ALL.len() as u32;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_dense_and_explained() {
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(*c as u32, i as u32, "{} out of order", c.name());
            assert!(!c.help().is_empty() && !c.help().contains("  "), "{}: {:?}", c.name(), c.help());
        }
        assert!(Reason::ALL.iter().all(|r| r.is_drop() == r.name().starts_with("drop_")));
    }

    #[test]
    fn indices_are_dense_and_round_trip() {
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(*r as u32, i as u32, "{} out of order", r.name());
            assert_eq!(Reason::from_index(i as u32), Some(*r));
            assert!(!r.help().is_empty() && !r.help().starts_with(' '), "{}: {:?}", r.name(), r.help());
            assert!(!r.help().contains("  "), "{}: lines joined badly: {:?}", r.name(), r.help());
        }
        assert_eq!(Reason::from_index(Reason::COUNT), None);
    }
}
