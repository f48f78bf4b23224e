//! Why a packet got the verdict it got: one counter per reason, per CPU.
//!
//! Numbers are ABI: the controller decodes the stats map by index. Append new reasons at the
//! end and never renumber; a retired reason keeps its number.

macro_rules! reasons {
    ($( $(#[doc = $doc:literal])* $name:ident = $num:literal, $label:literal; )*) => {
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
        }
    };
}

reasons! {
    /// Not IPv4 (ARP, IPv6...): passed to the kernel untouched.
    PassNotIpv4 = 0, "pass_not_ipv4";
    /// IPv4 fragment: passed untouched (ports are only in the first fragment).
    PassFragment = 1, "pass_fragment";
    /// IPv4 protocol other than TCP/UDP/ICMP, or an ICMP type other than echo and errors:
    /// passed untouched.
    PassOtherProto = 2, "pass_other_proto";
    /// Ingress packet with no flow, no port-forward mapping and not masqueraded (for the
    /// gateway itself, or unsolicited from the WAN): passed untouched to the gateway's stack.
    PassNoMapping = 3, "pass_no_mapping";
    /// Ingress packet that matched a mapping: flow created, destination rewritten.
    IngressNewFlow = 4, "ingress_new_flow";
    /// Ingress packet of a known flow: destination restored or rewritten as recorded.
    IngressFlow = 5, "ingress_flow";
    /// Egress packet of a known flow: source rewritten as recorded.
    EgressFlow = 6, "egress_flow";
    /// Egress packet with nothing to rewrite: passed untouched.
    PassEgressNoFlow = 7, "pass_egress_no_flow";
    /// Truncated or inconsistent header (bad IHL, total length): dropped.
    DropMalformed = 8, "drop_malformed";
    /// New hairpin or masqueraded flow but every candidate source port was taken: dropped.
    DropNoPort = 9, "drop_no_port";
    /// New flow that could not be recorded in conntrack (table error, or its reply tuple
    /// belongs to another flow): dropped, nothing half-inserted.
    DropFlowInsert = 10, "drop_flow_insert";
    /// The program ran before the controller wrote its configuration: passed untouched.
    PassNoConfig = 11, "pass_no_config";
    /// LAN packet the kernel routes out of the WAN: flow created, source to become the public
    /// address at egress (masquerade).
    IngressMasquerade = 12, "ingress_masquerade";
    /// WAN packet with a source in the LAN prefix (spoofed): dropped.
    DropWanLanSource = 13, "drop_wan_lan_source";
    /// WAN packet addressed straight to a LAN address: dropped, never forwarded.
    DropWanToLan = 14, "drop_wan_to_lan";
    /// LAN packet from outside the LAN prefix that the gateway would forward: dropped.
    DropLanForeignSource = 15, "drop_lan_foreign_source";
    /// Packet about to leave on the WAN with a LAN source and no translation (a protocol
    /// hairpin does not translate), or an ICMP error quoting a LAN address: dropped.
    DropLanSourceToWan = 16, "drop_lan_source_to_wan";
    /// ICMP error about a known flow: the packet it quotes and its outer addresses translated
    /// (RFC 5508), every checksum updated.
    IcmpError = 17, "icmp_error";
    /// Packet to a public port that a LAN host's traffic has bound: from another LAN host
    /// (hairpin), or from the WAN with endpoint-independent filtering. Flow created, destination
    /// rewritten to that host.
    IngressBinding = 18, "ingress_binding";
    /// WAN packet to a bound public port from an endpoint its LAN host has not sent to
    /// (address-and-port-dependent filtering): passed to the gateway's stack like unsolicited
    /// traffic.
    PassFiltered = 19, "pass_filtered";
    /// Packet of a known flow translated whole and sent out of the other interface by the
    /// ingress program itself (fast path: XDP redirect, or TC's bpf_redirect): no routing, no
    /// netfilter.
    FastRedirect = 20, "fast_redirect";
    /// Hairpinned packet of a known flow translated whole and sent back out of the interface
    /// it came in on (fast path: XDP_TX, or TC's bpf_redirect).
    FastTx = 21, "fast_tx";
    /// Frame of a VLAN (an 802.1Q or 802.1ad tag with an ID other than 0, or two tags): it
    /// belongs to that VLAN's own interface, where hairpin may be attached in its own right;
    /// passed untouched (the kernel delivers it there, or drops it). A priority tag (ID 0) is
    /// translated like an untagged frame.
    PassVlan = 22, "pass_vlan";
    /// TCP or UDP header that netfilter's conntrack calls invalid: a UDP length beyond the
    /// datagram or under 8, a TCP data offset under 20 bytes or beyond the packet, TCP flags no
    /// stack sends together (SYN+FIN, SYN+RST, none...): dropped.
    DropInvalid = 23, "drop_invalid";
    /// ICMP from the WAN of a type hairpin does not translate (not echo, echo reply or an error
    /// quoting a packet), addressed past the gateway: dropped, never forwarded.
    DropWanIcmpType = 24, "drop_wan_icmp_type";
}

/// Why a packet of a known flow took the slow path (the kernel forwards it, egress rewrites its
/// source) although the fast path is on. Counted apart from the verdict reasons, which count
/// it as `ingress_flow`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Slow {
    /// TTL 1 or 0: the kernel must answer with time exceeded.
    Ttl = 0,
    /// Larger than the egress MTU: the kernel fragments or answers fragmentation needed.
    FragNeeded = 1,
    /// The next hop's link-layer address is not known yet: the kernel resolves it.
    NoNeighbour = 2,
    /// Not forwarded by a plain route out of a hairpin interface (local, unreachable,
    /// forwarding off, another interface).
    Route = 3,
}

impl Slow {
    pub const ALL: [Slow; 4] = [Slow::Ttl, Slow::FragNeeded, Slow::NoNeighbour, Slow::Route];
    pub const COUNT: u32 = Self::ALL.len() as u32;
    pub const fn name(self) -> &'static str {
        match self {
            Slow::Ttl => "ttl_expiring",
            Slow::FragNeeded => "frag_needed",
            Slow::NoNeighbour => "no_neighbour",
            Slow::Route => "route",
        }
    }
}

impl Reason {
    /// Number of reasons, i.e. the size of the stats array.
    pub const COUNT: u32 = Reason::ALL.len() as u32;

    /// Drops are the reasons whose verdict is to discard the packet.
    pub const fn is_drop(self) -> bool {
        matches!(
            self,
            Reason::DropMalformed
                | Reason::DropNoPort
                | Reason::DropFlowInsert
                | Reason::DropWanLanSource
                | Reason::DropWanToLan
                | Reason::DropLanForeignSource
                | Reason::DropLanSourceToWan
                | Reason::DropInvalid
                | Reason::DropWanIcmpType
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
