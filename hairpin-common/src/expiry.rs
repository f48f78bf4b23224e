//! Flow lifetimes: TCP state from the flags both directions have seen, and the idle timeout
//! that follows. Pure, so the controller's sweep and `flows` agree and are host-tested.

use crate::{
    consts::{IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP},
    types::*,
};

/// A TCP flow's state as far as timeouts care.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcpState {
    /// SYN sent, handshake not complete.
    Opening,
    Established,
    /// FIN seen in one direction.
    Closing,
    /// FIN seen both ways, or RST.
    Closed,
}

impl TcpState {
    pub const fn name(self) -> &'static str {
        match self {
            TcpState::Opening => "opening",
            TcpState::Established => "established",
            TcpState::Closing => "closing",
            TcpState::Closed => "closed",
        }
    }
}

/// Whether the kernel has forwarded packets of both directions (`CT_F_LEFT` in both): until
/// then a flow may be one its filter drops, and lives on the transitory timeout.
pub const fn confirmed(orig: u32, reply: u32) -> bool {
    orig & reply & CT_F_LEFT != 0
}

/// TCP state from the original and reply directions' flags. Established needs the kernel to
/// have forwarded both directions: segments the gateway's filter dropped establish nothing.
pub const fn tcp_state(orig: u32, reply: u32) -> TcpState {
    let either = orig | reply;
    if either & CT_S_RST != 0 || (orig & reply & CT_S_FIN) != 0 {
        TcpState::Closed
    } else if either & CT_S_FIN != 0 {
        TcpState::Closing
    } else if orig & CT_S_ACK != 0 && reply & CT_S_SEEN != 0 && confirmed(orig, reply) {
        TcpState::Established
    } else {
        TcpState::Opening
    }
}

/// A state name for `flows`: the TCP state, or "active" for other protocols.
pub const fn state_name(proto: u8, orig: u32, reply: u32) -> &'static str {
    if proto == IPPROTO_TCP { tcp_state(orig, reply).name() } else { "active" }
}

/// The idle timeout of a flow, in seconds: the transitory one at most until it is confirmed.
pub const fn timeout_s(proto: u8, orig: u32, reply: u32, t: &Timeouts) -> u32 {
    let own = match proto {
        IPPROTO_TCP => match tcp_state(orig, reply) {
            TcpState::Established => t.tcp_established,
            _ => t.tcp_transitory,
        },
        IPPROTO_UDP => t.udp,
        IPPROTO_ICMP => t.icmp,
        _ => t.udp,
    };
    if !confirmed(orig, reply) && t.tcp_transitory < own { t.tcp_transitory } else { own }
}

/// The instant (boot-time ns) that refreshes a flow's lifetime. A masqueraded UDP flow counts
/// only its outbound direction, the one that opened the mapping (RFC 4787 REQ-6: inbound
/// packets must not keep a mapping alive), which for a flow opened from the WAN to a binding
/// is the reply. Every other flow counts either: a port-forward's mapping is the operator's,
/// not a dynamic one, and its server's outbound packets (a stream to a client that asked once)
/// must keep it alive, as they keep netfilter's conntrack entry.
pub const fn last_activity_ns(proto: u8, orig: &CtEntry, reply: &CtEntry) -> u64 {
    if proto == IPPROTO_UDP && orig.flags & CT_F_MASQ != 0 {
        return if orig.flags & CT_F_INBOUND != 0 { reply.last_seen_ns } else { orig.last_seen_ns };
    }
    if orig.last_seen_ns >= reply.last_seen_ns { orig.last_seen_ns } else { reply.last_seen_ns }
}

/// Nanoseconds the flow has left at `now_ns`; 0 means expired.
pub const fn remaining_ns(proto: u8, orig: &CtEntry, reply: &CtEntry, t: &Timeouts, now_ns: u64) -> u64 {
    let deadline =
        last_activity_ns(proto, orig, reply) + timeout_s(proto, orig.flags, reply.flags, t) as u64 * 1_000_000_000;
    deadline.saturating_sub(now_ns)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SYN: u8 = 0x02;
    const ACK: u8 = 0x10;
    const FIN: u8 = 0x01;
    const RST: u8 = 0x04;

    /// State bits of segments the kernel forwarded (`CT_F_LEFT`).
    fn bits(flags: &[u8]) -> u32 {
        flags.iter().fold(CT_F_LEFT, |acc, f| acc | ct_state_bits(IPPROTO_TCP, *f))
    }

    #[test]
    fn tcp_lifecycle() {
        let mut o = bits(&[SYN]);
        let mut r = 0;
        assert_eq!(tcp_state(o, r), TcpState::Opening, "SYN sent");
        r |= bits(&[SYN | ACK]);
        assert_eq!(tcp_state(o, r), TcpState::Opening, "SYN-ACK back, no ACK yet");
        o |= bits(&[ACK]);
        assert_eq!(tcp_state(o, r), TcpState::Established);
        o |= bits(&[FIN | ACK]);
        assert_eq!(tcp_state(o, r), TcpState::Closing);
        r |= bits(&[FIN | ACK]);
        assert_eq!(tcp_state(o, r), TcpState::Closed);
        assert_eq!(tcp_state(bits(&[SYN, ACK]), bits(&[SYN | ACK, RST])), TcpState::Closed, "RST closes");
        assert_eq!(tcp_state(bits(&[ACK]), 0), TcpState::Opening, "no reply yet: not established");
        let unforwarded = bits(&[SYN | ACK]) & !CT_F_LEFT;
        assert_eq!(tcp_state(bits(&[SYN, ACK]), unforwarded), TcpState::Opening, "a reply the filter dropped");
    }

    #[test]
    fn timeouts_follow_protocol_and_state() {
        let t = Timeouts::default();
        let est = (bits(&[SYN, ACK]), bits(&[SYN | ACK]));
        assert_eq!(timeout_s(IPPROTO_TCP, est.0, est.1, &t), 7440);
        assert_eq!(timeout_s(IPPROTO_TCP, bits(&[SYN]), 0, &t), 240);
        assert_eq!(timeout_s(IPPROTO_TCP, est.0 | bits(&[FIN]), est.1, &t), 240);
        let left = CT_S_SEEN | CT_F_LEFT;
        assert_eq!(timeout_s(IPPROTO_UDP, left, left, &t), 300);
        assert_eq!(timeout_s(IPPROTO_ICMP, left, left, &t), 60);
        // Not forwarded both ways by the kernel: the transitory timeout at most.
        assert_eq!(timeout_s(IPPROTO_UDP, left, CT_S_SEEN, &t), 240);
        assert_eq!(timeout_s(IPPROTO_ICMP, left, 0, &t), 60);
        assert!(t.tcp_established >= 7440 && t.udp >= 120, "RFC 5382 / RFC 4787 minimums");
    }

    #[test]
    fn masqueraded_udp_is_refreshed_by_outbound_only() {
        let t = Timeouts { udp: 10, ..Default::default() };
        let flags = CT_S_SEEN | CT_F_LEFT | CT_F_MASQ;
        let orig = CtEntry { last_seen_ns: 1_000_000_000, flags, ..Default::default() };
        let reply = CtEntry { last_seen_ns: 9_000_000_000, flags: flags | CT_F_REPLY, ..Default::default() };
        // Inbound traffic at 9 s does not extend a mapping last used outbound at 1 s.
        assert_eq!(remaining_ns(IPPROTO_UDP, &orig, &reply, &t, 5_000_000_000), 6_000_000_000);
        assert_eq!(remaining_ns(IPPROTO_UDP, &orig, &reply, &t, 11_000_000_000), 0);
        // A flow opened from the WAN to a binding: its reply is the outbound direction.
        let inbound = CtEntry { flags: orig.flags | CT_F_INBOUND, ..orig };
        assert_eq!(remaining_ns(IPPROTO_UDP, &inbound, &reply, &t, 11_000_000_000), 8_000_000_000);
        // TCP counts either direction.
        let tcp = remaining_ns(IPPROTO_TCP, &orig, &reply, &Timeouts { tcp_transitory: 10, ..t }, 11_000_000_000);
        assert_eq!(tcp, 8_000_000_000);
        // A port-forward's flow: its server's outbound packets (the reply) keep it alive.
        let fwd = |e: &CtEntry| CtEntry { flags: e.flags & !CT_F_MASQ, ..*e };
        assert_eq!(remaining_ns(IPPROTO_UDP, &fwd(&orig), &fwd(&reply), &t, 11_000_000_000), 8_000_000_000);
    }
}
