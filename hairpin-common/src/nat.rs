//! Pure NAT decisions: what a new flow's two conntrack entries and egress rewrites are, and
//! which source ports a hairpinned flow may take. The dataplane does the map operations; the
//! decisions live here so they are unit-tested on the host.

use crate::types::*;

/// Everything a new flow writes, computed before anything is inserted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowPlan {
    /// Original direction: key as seen at ingress, and its entry.
    pub orig_key: FlowKey,
    pub orig: CtEntry,
    /// Reply direction: key as the reply will be seen at ingress, and its entry.
    pub reply_key: FlowKey,
    pub reply: CtEntry,
}

/// The tuple the packets of flow direction `key`, translated to `xlate` (entry flags `flags`),
/// leave ingress with on the slow path: the translated destination, and their own source,
/// which egress translates, as netfilter's PREROUTING and POSTROUTING split the work, so the
/// forward chain sees what it would. With `CT_F_SPORT_AT_INGRESS` the source port is written
/// at ingress too, so that two flows whose packets would leave ingress alike stay apart.
#[inline(always)]
pub const fn leaving_ingress(key: &FlowKey, xlate: &FlowKey, flags: u32) -> FlowKey {
    let sport = if flags & CT_F_SPORT_AT_INGRESS != 0 { xlate.sport } else { key.sport };
    FlowKey::new(key.proto, Endpoint::new(key.src, sport), xlate.dst_ep())
}

/// The egress entry of the flow direction `key`, keyed by the tuple its packets leave
/// ingress with.
#[inline(always)]
pub fn egress(key: &FlowKey, entry: &CtEntry) -> (FlowKey, EgressEntry) {
    (leaving_ingress(key, &entry.xlate, entry.flags), EgressEntry { src: entry.xlate.src_ep(), ct_key: *key })
}

/// How far past the acknowledgment number its receiver last sent an RST may fall and still
/// close a flow: 8 MiB, a large scaled window (netfilter allows the largest window it has seen).
/// The acknowledgment read is the highest the receiver has sent, at most
/// [`crate::flow_cache::ACK_REPORT`] behind on a flow the flow cache serves.
pub const RST_WINDOW: u32 = 1 << 23;
/// How far before it: an RST may answer a segment the receiver has acknowledged since.
pub const RST_BEHIND: u32 = 1 << 16;

/// Whether the acknowledgment number `ack` advances on `had` (sequence arithmetic, modulo
/// 2^32): what a receiver has acknowledged only grows (RFC 793's SND.UNA), so an older one,
/// late or sent again, takes nothing back.
#[inline(always)]
pub const fn ack_advances(ack: u32, had: u32) -> bool {
    (ack.wrapping_sub(had) as i32) > 0
}

impl CtEntry {
    /// Records the acknowledgment number `ack` of a segment of this direction, if it advances
    /// on the one recorded (or none was).
    #[inline(always)]
    pub fn record_ack(&mut self, ack: u32) {
        if self.flags & CT_F_ACK_NUM == 0 || ack_advances(ack, self.ack) {
            self.ack = ack;
            self.flags |= CT_F_ACK_NUM;
        }
    }
}

/// Whether a TCP RST with sequence number `seq` counts for its flow's state, its receiver
/// having last acknowledged `peer_ack`: within [`RST_BEHIND`] before it or [`RST_WINDOW`] after
/// (sequence arithmetic, modulo 2^32). An off-path sender guessing blindly hits one in 480.
#[inline(always)]
pub const fn rst_in_window(seq: u32, peer_ack: u32) -> bool {
    let ahead = seq.wrapping_sub(peer_ack);
    ahead < RST_WINDOW || ahead.wrapping_neg() <= RST_BEHIND
}

impl EgressEntry {
    /// The tuple that direction leaves the gateway with (its entry's `xlate`), given the key
    /// egress found it by.
    #[inline(always)]
    pub const fn xlate(&self, egress_key: &FlowKey) -> FlowKey {
        FlowKey::new(egress_key.proto, self.src, egress_key.dst_ep())
    }
}

/// Plans a flow for a packet `key` whose destination becomes `dst` (a port-forward's private
/// server, or the packet's own destination) and whose source becomes `new_src`, if given:
/// the gateway's LAN endpoint for a hairpinned flow (so the server's reply comes back through
/// the gateway), or its public endpoint for a masqueraded one. `flags` marks the kind.
#[inline(always)]
pub fn plan_flow(key: &FlowKey, dst: Endpoint, new_src: Option<Endpoint>, flags: u32, now_ns: u64) -> FlowPlan {
    let new_src = match new_src {
        Some(ep) => ep,
        None => key.src_ep(),
    };
    let orig_xlate = FlowKey::new(key.proto, new_src, dst);
    let reply_key = orig_xlate.reversed();
    FlowPlan {
        orig_key: *key,
        orig: CtEntry { xlate: orig_xlate, created_ns: now_ns, last_seen_ns: now_ns, flags, ..CtEntry::default() },
        reply_key,
        // The reply must look like it came from the address the client dialled.
        reply: CtEntry {
            xlate: key.reversed(),
            created_ns: now_ns,
            last_seen_ns: now_ns,
            flags: flags | CT_F_REPLY,
            ..CtEntry::default()
        },
    }
}

/// Whether the flow direction `key` translated to `xlate` is its own reply: a LAN host's
/// packets to its own public endpoint come back to it from there, so both directions have one
/// tuple and one entry.
#[inline(always)]
pub fn is_own(key: &FlowKey, xlate: &FlowKey) -> bool {
    xlate.reversed() == *key
}

/// The `attempt`-th candidate source port (host byte order) for the flow `key`.
///
/// Attempt 0 preserves the client's own port when it lies in the range (as netfilter does);
/// later attempts spread over the range from a hash of the flow, so concurrent flows don't
/// probe the same sequence. Returns `None` for an empty range.
#[inline(always)]
pub fn candidate_port(cfg: &Config, key: &FlowKey, attempt: u32) -> Option<u16> {
    let (min, max) = (cfg.port_min as u32, cfg.port_max as u32);
    if min > max {
        return None;
    }
    let size = max - min + 1;
    let own = key.sport.host() as u32;
    if attempt == 0 && own >= min && own <= max {
        return Some(own as u16);
    }
    let h = flow_hash(key);
    // An odd stride visits every port of a power-of-two range; others are still well spread.
    let stride = (h >> 16) | 1;
    Some((min + (h.wrapping_add(attempt.wrapping_mul(stride)) % size)) as u16)
}

/// A cheap, well-mixed hash of a tuple (murmur3 finalizer over the folded words).
#[inline(always)]
pub fn flow_hash(key: &FlowKey) -> u32 {
    let mut h = key.src.0 ^ key.dst.0.rotate_left(7) ^ ((key.sport.0 as u32) << 16 | key.dport.0 as u32);
    h ^= key.proto as u32;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consts::*;

    #[test]
    fn rsts_count_only_near_what_their_receiver_acknowledged() {
        for ack in [1000u32, 0, u32::MAX - 10] {
            assert!(rst_in_window(ack, ack), "exactly at it");
            assert!(rst_in_window(ack.wrapping_add(RST_WINDOW - 1), ack), "at the window's end");
            assert!(!rst_in_window(ack.wrapping_add(RST_WINDOW), ack), "past it");
            assert!(rst_in_window(ack.wrapping_sub(RST_BEHIND), ack), "a little behind");
            assert!(!rst_in_window(ack.wrapping_sub(RST_BEHIND + 1), ack), "far behind");
            assert!(!rst_in_window(ack.wrapping_add(1 << 31), ack), "the other half of the space");
        }
    }

    #[test]
    fn the_acknowledgment_recorded_only_advances() {
        let mut e = CtEntry::default();
        e.record_ack(u32::MAX - 10);
        assert_eq!((e.ack, e.flags & CT_F_ACK_NUM != 0), (u32::MAX - 10, true), "the first one, whatever it is");
        e.record_ack(5);
        assert_eq!(e.ack, 5, "advancing across the wrap");
        e.record_ack(u32::MAX - 10);
        assert_eq!(e.ack, 5, "an older one takes nothing back");
        e.record_ack(5 + (1 << 31) - 1);
        assert_eq!(e.ack, 5 + (1 << 31) - 1, "as far as half the space ahead");
        assert!(!ack_advances(7, 7), "the same one");
    }

    fn ep(a: [u8; 4], p: u16) -> Endpoint {
        Endpoint::new(Ipv4Be::from_octets(a), PortBe::from_host(p))
    }

    const PUBLIC: [u8; 4] = [203, 0, 113, 1];
    const SERVER: [u8; 4] = [192, 168, 0, 2];
    const CLIENT: [u8; 4] = [192, 168, 0, 3];
    const GW_LAN: [u8; 4] = [192, 168, 0, 1];
    const INET: [u8; 4] = [198, 51, 100, 7];

    fn cfg() -> Config {
        let (net, mask) = (Ipv4Be::from_octets([192, 168, 0, 0]), Ipv4Be::from_octets([255, 255, 255, 0]));
        Config { ifindex: [0, 2], ..Config::new(Ipv4Be::from_octets(GW_LAN), net, mask, Ipv4Be::from_octets(PUBLIC)) }
    }

    #[test]
    fn port_forward_rewrites_destination_then_reply_source() {
        let key = FlowKey::new(IPPROTO_TCP, ep(INET, 40000), ep(PUBLIC, 8080));
        let p = plan_flow(&key, ep(SERVER, 80), None, 0, 5);
        assert_eq!(p.orig.xlate, FlowKey::new(IPPROTO_TCP, ep(INET, 40000), ep(SERVER, 80)));
        let (k, e) = egress(&p.orig_key, &p.orig);
        assert_eq!((k, e.src), (p.orig.xlate, ep(INET, 40000)), "the server sees the real client");
        assert_eq!((e.ct_key, e.xlate(&k)), (p.orig_key, p.orig.xlate));
        assert_eq!(p.reply_key, FlowKey::new(IPPROTO_TCP, ep(SERVER, 80), ep(INET, 40000)));
        assert_eq!(p.reply.xlate, FlowKey::new(IPPROTO_TCP, ep(PUBLIC, 8080), ep(INET, 40000)));
        // The reply keeps its destination at ingress and gets the public source at egress.
        let (k, e) = egress(&p.reply_key, &p.reply);
        assert_eq!((k, e.src), (p.reply_key, ep(PUBLIC, 8080)));
        assert_eq!((e.ct_key, e.xlate(&k)), (p.reply_key, p.reply.xlate));
        assert_eq!(p.reply.flags, CT_F_REPLY);
        assert_eq!((p.orig.created_ns, p.reply.last_seen_ns), (5, 5));
    }

    #[test]
    fn hairpin_rewrites_both_ends_and_restores_both_on_reply() {
        let key = FlowKey::new(IPPROTO_TCP, ep(CLIENT, 1025), ep(PUBLIC, 80));
        let p = plan_flow(&key, ep(SERVER, 80), Some(ep(GW_LAN, 5201)), CT_F_HAIRPIN, 0);
        assert_eq!(p.orig.xlate, FlowKey::new(IPPROTO_TCP, ep(GW_LAN, 5201), ep(SERVER, 80)));
        // After ingress the packet is CLIENT:1025 -> SERVER:80; egress swaps in the gateway.
        let (k, e) = egress(&p.orig_key, &p.orig);
        assert_eq!((k, e.src), (FlowKey::new(IPPROTO_TCP, ep(CLIENT, 1025), ep(SERVER, 80)), ep(GW_LAN, 5201)));
        assert_eq!((e.ct_key, e.xlate(&k)), (p.orig_key, p.orig.xlate));
        // The server answers the gateway; ingress restores the client, egress the public source.
        assert_eq!(p.reply_key, FlowKey::new(IPPROTO_TCP, ep(SERVER, 80), ep(GW_LAN, 5201)));
        assert_eq!(p.reply.xlate, FlowKey::new(IPPROTO_TCP, ep(PUBLIC, 80), ep(CLIENT, 1025)));
        let (k, e) = egress(&p.reply_key, &p.reply);
        assert_eq!((k, e.src), (FlowKey::new(IPPROTO_TCP, ep(SERVER, 80), ep(CLIENT, 1025)), ep(PUBLIC, 80)));
        assert_eq!(p.orig.flags, CT_F_HAIRPIN);
        assert_eq!(p.reply.flags, CT_F_HAIRPIN | CT_F_REPLY);
    }

    #[test]
    fn masquerade_rewrites_source_and_restores_the_client_on_replies() {
        let key = FlowKey::new(IPPROTO_UDP, ep(CLIENT, 33000), ep(INET, 53));
        let p = plan_flow(&key, key.dst_ep(), Some(ep(PUBLIC, 33000)), CT_F_MASQ, 0);
        assert_eq!(p.orig.xlate, FlowKey::new(IPPROTO_UDP, ep(PUBLIC, 33000), ep(INET, 53)));
        assert_eq!(egress(&p.orig_key, &p.orig), (key, EgressEntry { src: ep(PUBLIC, 33000), ct_key: key }));
        // Another source port: egress writes it with the address, unless the flow says ingress
        // writes it.
        let moved = plan_flow(&key, key.dst_ep(), Some(ep(PUBLIC, 40001)), CT_F_MASQ, 0);
        let (k, e) = egress(&moved.orig_key, &moved.orig);
        assert_eq!((k, e.src, e.ct_key), (key, ep(PUBLIC, 40001), key));
        let apart = plan_flow(&key, key.dst_ep(), Some(ep(PUBLIC, 40001)), CT_F_MASQ | CT_F_SPORT_AT_INGRESS, 0);
        let (k, e) = egress(&apart.orig_key, &apart.orig);
        assert_eq!(
            (k, e.src, e.ct_key),
            (FlowKey::new(IPPROTO_UDP, ep(CLIENT, 40001), ep(INET, 53)), ep(PUBLIC, 40001), key)
        );
        assert_eq!(p.reply_key, FlowKey::new(IPPROTO_UDP, ep(INET, 53), ep(PUBLIC, 33000)));
        assert_eq!(p.reply.xlate, FlowKey::new(IPPROTO_UDP, ep(INET, 53), ep(CLIENT, 33000)));
        let (k, e) = egress(&p.reply_key, &p.reply);
        assert_eq!((k.src_ep(), e.src), (ep(INET, 53), ep(INET, 53)), "the reply keeps the internet host's source");
        assert_eq!(p.reply.flags, CT_F_MASQ | CT_F_REPLY);
    }

    #[test]
    fn unicast_addresses() {
        for a in [CLIENT, INET, PUBLIC, [223, 255, 255, 254]] {
            assert!(Ipv4Be::from_octets(a).is_unicast(), "{a:?}");
        }
        for a in [[0, 0, 0, 0], [127, 0, 0, 1], [224, 0, 0, 251], [239, 1, 1, 1], [255, 255, 255, 255]] {
            assert!(!Ipv4Be::from_octets(a).is_unicast(), "{a:?}");
        }
    }

    #[test]
    fn lan_prefix_membership() {
        let c = cfg();
        assert!(c.in_lan(Ipv4Be::from_octets(CLIENT)) && c.in_lan(Ipv4Be::from_octets([192, 168, 0, 255])));
        assert!(!c.in_lan(Ipv4Be::from_octets(INET)) && !c.in_lan(Ipv4Be::from_octets([192, 168, 1, 3])));
        assert!(!Config { lan_mask: Ipv4Be(0), ..c }.in_lan(Ipv4Be::from_octets(CLIENT)), "no prefix set");
    }

    #[test]
    fn candidate_ports_preserve_then_spread_within_range() {
        let mut c = cfg();
        let key = FlowKey::new(IPPROTO_UDP, ep(CLIENT, 33000), ep(PUBLIC, 53));
        assert_eq!(candidate_port(&c, &key, 0), Some(33000));
        let low = FlowKey::new(IPPROTO_UDP, ep(CLIENT, 53), ep(PUBLIC, 53));
        assert_ne!(candidate_port(&c, &low, 0), Some(53), "a port below the range is not kept");
        c.port_min = 5000;
        c.port_max = 5003;
        let mut seen = [false; 4];
        for a in 0..PORT_ALLOC_TRIES {
            let p = candidate_port(&c, &key, a).unwrap();
            assert!((5000..=5003).contains(&p));
            seen[(p - 5000) as usize] = true;
        }
        assert!(seen.iter().all(|s| *s), "an odd stride covers a small range: {seen:?}");
        c.port_min = 6000;
        c.port_max = 5999;
        assert_eq!(candidate_port(&c, &key, 0), None);
        c.port_max = 6000;
        assert_eq!(candidate_port(&c, &key, 3), Some(6000), "single-port range");
    }

    #[test]
    fn tcp_flags_are_judged_as_netfilter_does() {
        use crate::tcp_flags_valid;
        const PSH: u8 = 0x08;
        for ok in [0x02, 0x22, 0x12, 0x04, 0x14, 0x11, 0x31, 0x10, 0x30, 0x18 | PSH, 0x12 | 0xc0] {
            assert!(tcp_flags_valid(ok), "{ok:#04x} is sent by stacks");
        }
        for bad in [0x00, 0x03, 0x06, 0x01, 0x32, 0x3f, 0x07, 0x24, PSH, 0x05] {
            assert!(!tcp_flags_valid(bad), "{bad:#04x} is invalid");
        }
    }
}
