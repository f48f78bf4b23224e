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

/// TCP state from the original and reply directions' state bits.
pub const fn tcp_state(orig: u32, reply: u32) -> TcpState {
    let either = orig | reply;
    if either & CT_S_RST != 0 || (orig & reply & CT_S_FIN) != 0 {
        TcpState::Closed
    } else if either & CT_S_FIN != 0 {
        TcpState::Closing
    } else if orig & CT_S_ACK != 0 && reply & CT_S_SEEN != 0 {
        TcpState::Established
    } else {
        TcpState::Opening
    }
}

/// A state name for `flows`: the TCP state, or "active" for other protocols.
pub const fn state_name(proto: u8, orig: u32, reply: u32) -> &'static str {
    if proto == IPPROTO_TCP { tcp_state(orig, reply).name() } else { "active" }
}

/// The idle timeout of a flow, in seconds.
pub const fn timeout_s(proto: u8, orig: u32, reply: u32, t: &Timeouts) -> u32 {
    match proto {
        IPPROTO_TCP => match tcp_state(orig, reply) {
            TcpState::Established => t.tcp_established,
            _ => t.tcp_transitory,
        },
        IPPROTO_UDP => t.udp,
        IPPROTO_ICMP => t.icmp,
        _ => t.udp,
    }
}

/// The instant (boot-time ns) that refreshes a flow's lifetime. UDP counts only the original
/// direction, the one that opened the mapping (RFC 4787 REQ-6: inbound packets must not keep a
/// mapping alive), which for a flow opened from the WAN to a binding is the reply; TCP and ICMP
/// count either.
pub const fn last_activity_ns(proto: u8, orig: &CtEntry, reply: &CtEntry) -> u64 {
    if proto == IPPROTO_UDP {
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

    fn bits(flags: &[u8]) -> u32 {
        flags.iter().fold(0, |acc, f| acc | ct_state_bits(IPPROTO_TCP, *f))
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
    }

    #[test]
    fn timeouts_follow_protocol_and_state() {
        let t = Timeouts::default();
        let est = (bits(&[SYN, ACK]), bits(&[SYN | ACK]));
        assert_eq!(timeout_s(IPPROTO_TCP, est.0, est.1, &t), 7440);
        assert_eq!(timeout_s(IPPROTO_TCP, bits(&[SYN]), 0, &t), 240);
        assert_eq!(timeout_s(IPPROTO_TCP, est.0 | bits(&[FIN]), est.1, &t), 240);
        assert_eq!(timeout_s(IPPROTO_UDP, CT_S_SEEN, 0, &t), 300);
        assert_eq!(timeout_s(IPPROTO_ICMP, CT_S_SEEN, 0, &t), 60);
        assert!(t.tcp_established >= 7440 && t.udp >= 120, "RFC 5382 / RFC 4787 minimums");
    }

    #[test]
    fn udp_is_refreshed_by_outbound_only() {
        let t = Timeouts { udp: 10, ..Default::default() };
        let orig = CtEntry { last_seen_ns: 1_000_000_000, flags: CT_S_SEEN, ..Default::default() };
        let reply = CtEntry { last_seen_ns: 9_000_000_000, flags: CT_S_SEEN | CT_F_REPLY, ..Default::default() };
        // Inbound traffic at 9 s does not extend a mapping last used outbound at 1 s.
        assert_eq!(remaining_ns(IPPROTO_UDP, &orig, &reply, &t, 5_000_000_000), 6_000_000_000);
        assert_eq!(remaining_ns(IPPROTO_UDP, &orig, &reply, &t, 11_000_000_000), 0);
        // A flow opened from the WAN to a binding: its reply is the outbound direction.
        let inbound = CtEntry { flags: orig.flags | CT_F_INBOUND, ..orig };
        assert_eq!(remaining_ns(IPPROTO_UDP, &inbound, &reply, &t, 11_000_000_000), 8_000_000_000);
        // TCP counts either direction.
        let tcp = remaining_ns(IPPROTO_TCP, &orig, &reply, &Timeouts { tcp_transitory: 10, ..t }, 11_000_000_000);
        assert_eq!(tcp, 8_000_000_000);
    }
}
