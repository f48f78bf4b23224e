//! The NAT decisions at each hook, in the order a packet meets them: ingress (restore or
//! translate the destination, create flows, or hand known flows to the fast path), then egress
//! (the source). What a decision does to the packet is done by the layers below (`fast`,
//! `icmp`, `ct`, `rewrite`), which never call back up here.

use hairpin_common::{
    CT_F_HAIRPIN, CT_F_INBOUND, CT_F_MASQ, Config, Endpoint, FRAG_EGRESS, FRAG_INGRESS, FlowKey, PortBe, ProtoEndpoint,
    Reason, Side,
    consts::{IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP},
    csum::CsumDelta,
    ct_state_bits,
};

use crate::{
    cache, ct,
    ctx::{Packet, Tc, ptr_at},
    fast, frag,
    fwd::{self, Route},
    icmp,
    maps::{self, FORWARDS},
    parse::{Ip, L4, MAX_HDR_LEN, MAX_ICMP_ERROR_HDR_LEN, Parsed, eth_dst, parse_ip, parse_l4},
    rewrite::rewrite,
    snat::{self, NewFlow, SourceNat},
    stats,
};

const TCP_SYN: u8 = 0x02;
/// Offset of the sequence number (then the acknowledgment number) in the TCP header.
const TCP_SEQ_OFF: usize = 4;
const TCP_ACK: u8 = 0x10;

/// Ingress (XDP or TC, the same code): restore or rewrite the destination of known flows, create flows for packets
/// that match a port-forward or that a LAN host sends to the internet. Sources are left for
/// egress: writing the gateway's own address as a source here would make the kernel drop the
/// packet as a martian.
#[inline(always)]
pub fn ingress<P: Packet>(pkt: &P, side: Side) -> Reason {
    match try_ingress(pkt, side) {
        Ok(r) | Err(r) => r,
    }
}

#[inline(always)]
fn try_ingress<P: Packet>(pkt: &P, side: Side) -> Result<Reason, Reason> {
    let ip = parse_ip(pkt)?;
    // Read in place: the map value lives as long as the program runs.
    let Some(cfg) = maps::config() else {
        return Ok(Reason::PassNoConfig);
    };
    // Not the gateway's to forward (see `Config::addressed_to_us`): no flow, no fast path.
    if !cfg.addressed_to_us(side, &eth_dst(pkt)?) {
        return Ok(Reason::PassOtherHost);
    }
    check_boundary(pkt, cfg, &ip, side)?;
    // No host's source (a DHCP client's 0.0.0.0): for the gateway's own stack, never a flow.
    if !ip.src.is_unicast() {
        return Ok(Reason::PassSourceNotHost);
    }
    if ip.later_fragment() {
        let translated = frag::translate_later(pkt, &ip, FRAG_INGRESS, ct::now_ns())?;
        return Ok(if translated { Reason::IngressFragment } else { Reason::PassFragment });
    }
    let p = match parse_l4(pkt, &ip) {
        Ok(L4::Flow(p)) => p,
        // ICMP the dataplane does not translate may reach the gateway's stack, never past it.
        Err(Reason::PassOtherProto) if side == Side::Wan && ip.proto == IPPROTO_ICMP && ip.dst != cfg.public_addr => {
            return Err(Reason::DropWanIcmpType);
        }
        Err(r) => return Err(r),
        Ok(L4::IcmpError(quoted)) => {
            return Ok(match icmp::translate_error(pkt, cfg, side, &ip, &quoted)? {
                Some(_) => Reason::IcmpError,
                None => Reason::PassNoMapping,
            });
        }
    };
    let now = ct::now_ns();
    let seen = ct_state_bits(p.key.proto, p.tcp_flags);
    // A first fragment goes through the kernel, which forwards its later fragments too.
    let fast = cfg.fast_path() && p.first_fragment == 0;
    let epoch = cache::Epoch { now, generation: if fast { cache::generation() } else { 0 }, timeouts: &cfg.timeouts };
    if fast
        && let Some(hit) = cache::lookup(pkt, &p.key, &epoch, seen, p.tot_len)
        // On failure (TTL) nothing was changed: conntrack's path below decides and counts.
        && let Ok(verdict) = fast::forward_cached(pkt, cfg, &p, &hit)
    {
        return Ok(verdict);
    }
    let tcp = match p.key.proto {
        IPPROTO_TCP => Some(ct::Tcp { nums: ptr_at::<[u8; 8]>(pkt, p.l4_off + TCP_SEQ_OFF)?, flags: p.tcp_flags }),
        _ => None,
    };
    let mut found = ct::lookup_refresh(&p.key, now, seen, tcp, pkt.segs(), p.tot_len);
    // A SYN (without ACK) on the tuple of a connection that was closed opens a new one: the
    // old flow goes, with its state bits, and the SYN makes the new one below.
    if let Some(f) = &found
        && p.key.proto == IPPROTO_TCP
        && p.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
        && ct::reopen_if_closed(&p.key, f)
    {
        found = None;
    }
    if let Some(found) = found {
        let xlate = found.xlate;
        // Until the kernel has forwarded the flow both ways, its packets go through the kernel
        // (its filter, rp_filter, MSS clamping): egress confirms it.
        if fast && found.confirmed {
            match fast::forward(pkt, cfg, &p, &found, &epoch) {
                Ok(verdict) => return Ok(verdict),
                Err(why) => stats::bump(why.counter(), 1),
            }
        }
        if p.first_fragment != 0 {
            frag::remember(pkt, &p, FRAG_INGRESS, xlate.dst, now);
        }
        rewrite(pkt, &p, &found.leaving_ingress(&p.key), CsumDelta::ZERO)?;
        return Ok(Reason::IngressFlow);
    }
    // A flow this packet opens: its state bits, time and size are the packet's.
    let new_flow = |dst, snat, flags| NewFlow { dst, snat, flags, seen, now, packets: pkt.segs(), bytes: p.tot_len };
    if let Some(private) = unsafe { FORWARDS.get(&ProtoEndpoint::new(p.key.proto, p.key.dst_ep())) }.map(|f| f.target) {
        let (snat, flags) =
            if side == Side::Lan && cfg.hairpin() { (SourceNat::Lan, CT_F_HAIRPIN) } else { (SourceNat::Keep, 0) };
        open(pkt, cfg, &p, &new_flow(private, snat, flags))?;
        return Ok(Reason::IngressNewFlow);
    }
    if p.key.dst == cfg.public_addr
        && let Some(host) = snat::bound(p.key.proto, p.key.dst_ep())
    {
        // Another LAN host's binding: hairpin, with this host's own binding as the source the
        // receiver sees (RFC 4787 REQ-9). Filtering guards the WAN side only: LAN hosts can
        // reach each other directly anyway. Without hairpin, destination NAT only, as for a
        // port-forward.
        let (snat, flags) = match side {
            Side::Lan if cfg.hairpin() => (SourceNat::Public, CT_F_HAIRPIN | CT_F_MASQ),
            Side::Lan => (SourceNat::Keep, CT_F_MASQ),
            Side::Wan if p.key.proto == IPPROTO_UDP && cfg.udp_endpoint_independent_filtering() => {
                (SourceNat::Keep, CT_F_MASQ | CT_F_INBOUND)
            }
            Side::Wan => return Ok(Reason::PassFiltered),
        };
        open(pkt, cfg, &p, &new_flow(host, snat, flags))?;
        return Ok(Reason::IngressBinding);
    }
    // A LAN host reaching the internet: the destination stays, egress rewrites the source.
    // Broadcast, multicast and address-less (DHCP) traffic never makes a flow, and traffic for
    // the LAN or the gateway itself (its DNS, its SSH) is settled without asking the FIB.
    // An echo reply answers a request from outside; it never starts a flow.
    if side == Side::Lan
        && (p.key.proto != IPPROTO_ICMP || p.echo_request != 0)
        && p.key.src.is_unicast()
        && p.key.dst.is_unicast()
        && !cfg.in_lan(p.key.dst)
        && p.key.dst != cfg.public_addr
        && fwd::route(pkt, &p.key) == Route::Out(cfg.ifindex_of(Side::Wan))
    {
        open(pkt, cfg, &p, &new_flow(p.key.dst_ep(), SourceNat::Public, CT_F_MASQ))?;
        return Ok(Reason::IngressMasquerade);
    }
    Ok(Reason::PassNoMapping)
}

/// Creates the flow `new` describes for `p` and gives the packet its new destination (the
/// source waits for egress), its later fragments too if it is a first one.
#[inline(always)]
fn open(pkt: &impl Packet, cfg: &Config, p: &Parsed, new: &NewFlow) -> Result<(), Reason> {
    // Before the flow is made (its destination is `new.dst` whatever else it becomes), while
    // the stack is not yet taken by it. Should the flow fail, the packet is dropped, and the
    // entry serves no fragment that could be reassembled.
    if p.first_fragment != 0 {
        frag::remember(pkt, p, FRAG_INGRESS, new.dst.addr, new.now);
    }
    let leaving = snat::create(cfg, &p.key, new)?;
    rewrite(pkt, p, &leaving, CsumDelta::ZERO)
}

/// The gateway is a boundary: the WAN may neither claim a LAN source nor reach a LAN address
/// directly, and the LAN may not have foreign sources forwarded or translated, nor make flows
/// or bindings (its own stack may still hear them: DHCP from 0.0.0.0, link-local chatter).
#[inline(always)]
fn check_boundary(pkt: &impl Packet, cfg: &Config, ip: &Ip, side: Side) -> Result<(), Reason> {
    match side {
        Side::Wan if cfg.in_lan(ip.src) => Err(Reason::DropWanLanSource),
        Side::Wan if cfg.in_lan(ip.dst) => Err(Reason::DropWanToLan),
        // 0.0.0.0 is a host without an address yet (DHCP): only ever for the gateway itself.
        Side::Lan if cfg.lan_mask.0 != 0 && ip.src.0 != 0 && !cfg.in_lan(ip.src) => {
            // The public address is the NAT's: a foreign source there would be hairpinned.
            if ip.dst == cfg.public_addr {
                return Err(Reason::DropLanForeignSource);
            }
            let key = FlowKey::new(ip.proto, Endpoint::new(ip.src, PortBe(0)), Endpoint::new(ip.dst, PortBe(0)));
            match fwd::route(pkt, &key) {
                Route::Out(_) => Err(Reason::DropLanForeignSource),
                Route::NotForwarded => Ok(()),
            }
        }
        _ => Ok(()),
    }
}

/// Ingress as a TC program (where `up` placed it so): the same decisions, once the headers
/// (an ICMP error's quoted ones included) are in the linear part of the skb; and fragments
/// that come before their first one held until it comes (see `frag.rs`).
#[inline(always)]
pub fn ingress_tc(pkt: &Tc, side: Side) -> Reason {
    pkt.pull_headers(MAX_ICMP_ERROR_HDR_LEN);
    frag::note_arrival(pkt);
    let reason = ingress(pkt, side);
    if frag::may_be_fragment(pkt) { frag::after_ingress(pkt, reason, ct::now_ns()) } else { reason }
}

/// Egress (TC): give packets of known flows the source recorded for them, and confirm their
/// flow direction (the kernel forwarded it: see `ct::confirm`); on the WAN, let nothing out
/// with a LAN source.
#[inline(always)]
pub fn egress(pkt: &Tc, side: Side) -> Reason {
    pkt.pull_headers(MAX_HDR_LEN);
    match try_egress(pkt, side) {
        Ok(r) | Err(r) => r,
    }
}

#[inline(always)]
fn try_egress(pkt: &Tc, side: Side) -> Result<Reason, Reason> {
    let mut ip = parse_ip(pkt)?;
    if ip.proto == IPPROTO_ICMP {
        // An error quotes a second IPv4 header; pulling invalidates what was parsed.
        pkt.pull_headers(MAX_ICMP_ERROR_HDR_LEN);
        ip = parse_ip(pkt)?;
    }
    let cfg = maps::config();
    let leaks = |addr| side == Side::Wan && cfg.is_some_and(|cfg| cfg.in_lan(addr));
    if ip.later_fragment() {
        let translated = frag::translate_later(pkt, &ip, FRAG_EGRESS, ct::now_ns())?;
        return match translated {
            // Its source is now its first fragment's, checked there.
            true => Ok(Reason::EgressFragment),
            false if leaks(ip.src) => Err(Reason::DropLanSourceToWan),
            false => Ok(Reason::PassFragment),
        };
    }
    let p = match parse_l4(pkt, &ip) {
        Ok(L4::Flow(p)) => p,
        Ok(L4::IcmpError(quoted)) => return egress_icmp_error(pkt, cfg, &ip, &quoted, leaks),
        Err(_) if leaks(ip.src) => return Err(Reason::DropLanSourceToWan),
        Err(r) => return Err(r),
    };
    let Some(eg) = ct::egress_of(&p.key) else {
        return if leaks(ip.src) { Err(Reason::DropLanSourceToWan) } else { Ok(Reason::PassEgressNoFlow) };
    };
    if leaks(eg.src.addr) {
        return Err(Reason::DropLanSourceToWan);
    }
    rewrite(pkt, &p, &eg.xlate(&p.key), CsumDelta::ZERO)?;
    if p.first_fragment != 0 {
        frag::remember(pkt, &p, FRAG_EGRESS, eg.src.addr, ct::now_ns());
    }
    ct::confirm(&p.key, &eg, cfg.is_some_and(Config::ct_pressure));
    Ok(Reason::EgressFlow)
}

/// An ICMP error leaving: the gateway's own stack may have sent it about a packet ingress
/// had translated (TTL expired while forwarding), so it is translated here as at ingress, or,
/// quoting the packet as ingress left it, restored to what its sender sent (`icmp::
/// restore_own_error`); an error from a LAN host about a flow through the public address gets
/// that source. Then no LAN address may be left in it for the WAN.
#[inline(always)]
fn egress_icmp_error(
    pkt: &Tc,
    cfg: Option<&Config>,
    ip: &Ip,
    quoted: &Parsed,
    leaks: impl Fn(hairpin_common::Ipv4Be) -> bool,
) -> Result<Reason, Reason> {
    let Some(cfg) = cfg else {
        return Ok(Reason::PassNoConfig);
    };
    // Egress is the gateway's own side: the WAN checks of ingress do not apply.
    let mut translated = icmp::translate_error(pkt, cfg, Side::Lan, ip, quoted)?;
    if translated.is_none()
        && ip.dst == quoted.key.src
        && let Some(eg) = ct::egress_of(&quoted.key)
    {
        translated = icmp::restore_own_error(pkt, ip, quoted, &eg)?;
    }
    let now = translated.unwrap_or(quoted.key);
    let mut src = ip.src;
    let mut fixed = false;
    if icmp::fix_outer_source(pkt, cfg, ip, &now)? {
        src = cfg.public_addr;
        fixed = true;
    }
    if leaks(src) || leaks(now.src) || leaks(now.dst) {
        return Err(Reason::DropLanSourceToWan);
    }
    Ok(if translated.is_some() || fixed { Reason::IcmpError } else { Reason::PassEgressNoFlow })
}
