//! The NAT decisions at each hook, and the one function that rewrites an address and port.

use hairpin_common::{
    Config, Endpoint, FlowKey, MappingKey, PortBe, Reason, csum::CsumDelta, ct_state_bits, nat::Side,
};

use crate::{
    csum,
    ct::{self, SourceNat},
    ctx::{Packet, Tc, ptr_at},
    fwd::{self, Route},
    maps::{CONFIG, MAPPINGS, SNAT},
    parse::{Ip, MAX_HDR_LEN, Parsed, parse_ip, parse_l4},
};

/// Ingress (XDP): restore or rewrite the destination of known flows, create flows for packets
/// that match a port-forward or that a LAN host sends to the internet. Sources are left for
/// egress: writing the gateway's own address as a source here would make the kernel drop the
/// packet as a martian.
#[inline(always)]
pub fn ingress(pkt: &impl Packet, side: Side) -> Reason {
    match try_ingress(pkt, side) {
        Ok(r) | Err(r) => r,
    }
}

#[inline(always)]
fn try_ingress(pkt: &impl Packet, side: Side) -> Result<Reason, Reason> {
    let ip = parse_ip(pkt)?;
    let Some(cfg) = CONFIG.get(0).copied() else {
        return Ok(Reason::PassNoConfig);
    };
    check_boundary(pkt, &cfg, &ip, side)?;
    let p = parse_l4(pkt, &ip)?;
    let now = ct::now_ns();
    let seen = ct_state_bits(p.key.proto, p.tcp_flags);
    if let Some(xlate) = ct::lookup_refresh(&p.key, now, seen) {
        rewrite(pkt, &p, End::Dst, xlate.dst_ep())?;
        return Ok(Reason::IngressFlow);
    }
    if let Some(private) = unsafe { MAPPINGS.get(&MappingKey::new(p.key.proto, p.key.dst_ep())) }.copied() {
        let snat = if side == Side::Lan && cfg.hairpin() { SourceNat::Hairpin } else { SourceNat::Keep };
        let xlate = ct::create(&cfg, &p.key, private, snat, seen, now)?;
        rewrite(pkt, &p, End::Dst, xlate.dst_ep())?;
        return Ok(Reason::IngressNewFlow);
    }
    // A LAN host reaching the internet: the destination stays, egress rewrites the source.
    // Broadcast, multicast and address-less (DHCP) traffic never makes a flow, and traffic for
    // the LAN or the gateway itself (its DNS, its SSH) is settled without asking the FIB.
    if side == Side::Lan
        && p.key.src.is_unicast()
        && p.key.dst.is_unicast()
        && !cfg.in_lan(p.key.dst)
        && p.key.dst != cfg.public_addr
        && fwd::route(pkt, &p.key, p.tot_len) == Route::Out(cfg.wan_ifindex)
    {
        ct::create(&cfg, &p.key, p.key.dst_ep(), SourceNat::Masquerade, seen, now)?;
        return Ok(Reason::IngressMasquerade);
    }
    Ok(Reason::PassNoMapping)
}

/// The gateway is a boundary: the WAN may neither claim a LAN source nor reach a LAN address
/// directly, and the LAN may not have foreign sources forwarded (its own stack may still hear
/// them: DHCP from 0.0.0.0, link-local chatter).
#[inline(always)]
fn check_boundary(pkt: &impl Packet, cfg: &Config, ip: &Ip, side: Side) -> Result<(), Reason> {
    match side {
        Side::Wan if cfg.in_lan(ip.src) => Err(Reason::DropWanLanSource),
        Side::Wan if cfg.in_lan(ip.dst) => Err(Reason::DropWanToLan),
        // 0.0.0.0 is a host without an address yet (DHCP): only ever for the gateway itself.
        Side::Lan if cfg.lan_mask.0 != 0 && ip.src.0 != 0 && !cfg.in_lan(ip.src) => {
            let key = FlowKey::new(ip.proto, Endpoint::new(ip.src, PortBe(0)), Endpoint::new(ip.dst, PortBe(0)));
            match fwd::route(pkt, &key, ip.tot_len as u16) {
                Route::Out(_) => Err(Reason::DropLanForeignSource),
                Route::NotForwarded => Ok(()),
            }
        }
        _ => Ok(()),
    }
}

/// Egress (TC): give packets of known flows the source recorded for them; on the WAN, let
/// nothing out with a LAN source.
#[inline(always)]
pub fn egress(pkt: &Tc, side: Side) -> Reason {
    pkt.pull_headers(MAX_HDR_LEN);
    match try_egress(pkt, side) {
        Ok(r) | Err(r) => r,
    }
}

#[inline(always)]
fn try_egress(pkt: &Tc, side: Side) -> Result<Reason, Reason> {
    let ip = parse_ip(pkt)?;
    let leaks = || side == Side::Wan && CONFIG.get(0).is_some_and(|cfg| cfg.in_lan(ip.src));
    let p = match parse_l4(pkt, &ip) {
        Ok(p) => p,
        Err(_) if leaks() => return Err(Reason::DropLanSourceToWan),
        Err(r) => return Err(r),
    };
    let Some(new_src) = (unsafe { SNAT.get(&p.key) }).copied() else {
        return if leaks() { Err(Reason::DropLanSourceToWan) } else { Ok(Reason::PassEgressNoFlow) };
    };
    rewrite(pkt, &p, End::Src, new_src)?;
    Ok(Reason::EgressFlow)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum End {
    Src,
    Dst,
}

/// Offsets of the fields within their headers.
const IP_SRC_OFF: usize = 12;
const IP_DST_OFF: usize = 16;
const L4_SPORT_OFF: usize = 0;
const L4_DPORT_OFF: usize = 2;

/// Rewrites one end of the packet to `to` and updates every checksum that covers it.
#[inline(always)]
fn rewrite(pkt: &impl Packet, p: &Parsed, end: End, to: Endpoint) -> Result<(), Reason> {
    let (from, addr_off, port_off) = match end {
        End::Src => (p.key.src_ep(), IP_SRC_OFF, L4_SPORT_OFF),
        End::Dst => (p.key.dst_ep(), IP_DST_OFF, L4_DPORT_OFF),
    };
    if from == to {
        return Ok(());
    }
    let addr = ptr_at::<u32>(pkt, p.l3_off + addr_off)?;
    let port = ptr_at::<u16>(pkt, p.l4_off + port_off)?;
    // SAFETY: bounds checked by ptr_at; both hooks may write packet memory directly.
    unsafe {
        addr.write_unaligned(to.addr.0);
        port.write_unaligned(to.port.0);
    }
    let addrs = CsumDelta::ZERO.replace32(from.addr.0, to.addr.0);
    let ports = CsumDelta::ZERO.replace16(from.port.0, to.port.0);
    csum::apply(pkt, p, addrs, ports)
}
