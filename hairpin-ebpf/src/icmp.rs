//! ICMP errors about translated flows (RFC 5508): the packet an error quotes went out
//! translated, so its sender would not recognise it. It is translated back, with every checksum
//! that covers it, and the error is sent on to that sender.

use hairpin_common::{CT_F_HAIRPIN, Config, EgressEntry, FlowKey, Reason, Side, consts::IPPROTO_ICMP, csum::CsumDelta};

use crate::{
    csum::{self, IP_CSUM_OFF, l4_csum},
    ct,
    ctx::{Packet, ptr_at},
    parse::{Ip, Parsed},
    rewrite::{IP_DST_OFF, IP_SRC_OFF, set_addr, write_tuple},
};

/// Translates the ICMP error `ip` quoting `quoted`, if the quoted packet belongs to a flow.
/// Returns the quoted tuple as the error now carries it.
///
/// The quoted packet is one direction of a flow as it left a NAT hook; the entry of the other
/// direction (its tuple reversed) says how that direction's packets are translated, which is
/// exactly how the quoted packet must look to its sender: source and destination swapped back.
/// The error goes to that sender, so the outer destination follows the quoted source.
///
/// From the WAN, only errors about flows that cross it are taken: a quoted LAN address, or a
/// hairpinned flow (which never leaves the LAN), means a forged error aimed past the boundary.
#[inline(always)]
pub fn translate_error(
    pkt: &impl Packet,
    cfg: &Config,
    side: Side,
    ip: &Ip,
    quoted: &Parsed,
) -> Result<Option<FlowKey>, Reason> {
    // From the WAN, a quoted LAN address is aimed past the boundary, whoever it is sent to.
    if side == Side::Wan && (cfg.in_lan(quoted.key.src) || cfg.in_lan(quoted.key.dst)) {
        return Err(Reason::DropWanToLan);
    }
    // An error is addressed to the sender of the packet it quotes; anything else is not ours
    // to interpret.
    if ip.dst != quoted.key.src {
        return Ok(None);
    }
    let Some(reply) = ct::lookup(&quoted.key.reversed()) else {
        return Ok(None);
    };
    if side == Side::Wan && reply.flags & CT_F_HAIRPIN != 0 {
        return Err(Reason::DropWanToLan);
    }
    let to = reply.xlate.reversed();
    let delta = rewrite_quoted(pkt, ip, quoted, &to)?;
    csum::apply_icmp(pkt, ip.l4_off, delta)?;
    set_addr(pkt, ip.l3_off, IP_DST_OFF, ip.dst.0, to.src.0)?;
    Ok(Some(to))
}

/// An error the gateway's own stack sends about a packet ingress had given a new destination
/// (a hairpinned or forwarded packet whose TTL ran out here, one too big for the next hop)
/// quotes it as ingress left it: `egress_key`, the key of its flow direction's egress entry
/// `eg`. Its sender knows it by the tuple it sent, the direction's conntrack key: the quoted
/// packet is restored to that. Returns that tuple if it differs.
#[inline(always)]
pub fn restore_own_error(
    pkt: &impl Packet,
    ip: &Ip,
    quoted: &Parsed,
    eg: &EgressEntry,
) -> Result<Option<FlowKey>, Reason> {
    let sent = eg.ct_key;
    if sent == quoted.key {
        return Ok(None);
    }
    let delta = rewrite_quoted(pkt, ip, quoted, &sent)?;
    csum::apply_icmp(pkt, ip.l4_off, delta)?;
    Ok(Some(sent))
}

/// An error from a LAN host about a flow translated to the public address (a server behind a
/// port-forward, a hairpinned server) must come from the public address too: the sender dialled
/// it, and a LAN address must not leave on the WAN. Egress does this, for the kernel to route
/// the error as from a LAN host first. Only the flow's own LAN host may speak for it: the
/// quoted tuple (as its sender knows it) must be a flow's entry whose translation leads to
/// the error's source, or any LAN host could send errors as the gateway.
#[inline(always)]
pub fn fix_outer_source(pkt: &impl Packet, cfg: &Config, ip: &Ip, quoted: &FlowKey) -> Result<bool, Reason> {
    if !cfg.in_lan(ip.src) || quoted.dst != cfg.public_addr {
        return Ok(false);
    }
    if !ct::lookup(quoted).is_some_and(|e| e.xlate.dst == ip.src) {
        return Ok(false);
    }
    set_addr(pkt, ip.l3_off, IP_SRC_OFF, ip.src.0, cfg.public_addr.0)?;
    Ok(true)
}

/// Rewrites the quoted packet to `to` and updates its own checksums (IPv4, and the L4 one where
/// it is quoted). Returns the change of every quoted word, which the outer ICMP checksum covers.
#[inline(always)]
fn rewrite_quoted(pkt: &impl Packet, ip: &Ip, q: &Parsed, to: &FlowKey) -> Result<CsumDelta, Reason> {
    let from = &q.key;
    let (addrs, ports) = write_tuple(pkt, q.l3_off, q.l4_off, from, to)?;
    let mut quoted = addrs.plus(ports);
    quoted = quoted.plus(update_csum(pkt, q.l3_off + IP_CSUM_OFF, addrs, false)?);
    // Only 8 L4 bytes are sure to be quoted: a TCP checksum is updated if the router quoted it.
    // ICMP has no pseudo-header: the addresses are not in its sum.
    let end = ip.l3_off + ip.tot_len;
    if let Some((off, udp)) = l4_csum(from.proto)
        && q.l4_off + off + 2 <= end
    {
        let delta = if from.proto == IPPROTO_ICMP { ports } else { addrs.plus(ports) };
        quoted = quoted.plus(update_csum(pkt, q.l4_off + off, delta, udp)?);
    }
    Ok(quoted)
}

/// Applies `delta` to the checksum at `off` in place; returns the checksum field's own change.
#[inline(always)]
fn update_csum(pkt: &impl Packet, off: usize, delta: CsumDelta, udp: bool) -> Result<CsumDelta, Reason> {
    let c = ptr_at::<u16>(pkt, off)?;
    // SAFETY: bounds checked by ptr_at; quoted bytes are plain data to both hooks.
    unsafe {
        let old = c.read_unaligned();
        let new = if udp { delta.apply_udp(old) } else { delta.apply(old) };
        c.write_unaligned(new);
        Ok(CsumDelta::ZERO.replace16(old, new))
    }
}
