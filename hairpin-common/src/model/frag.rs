//! Fragmented datagrams (RFC 4787 REQ-14, RFC 791): only a datagram's first fragment carries
//! its ports, so each way remembers the address its flow gave the first fragment (the
//! destination at ingress, the source at egress) and gives it to the later ones, which are
//! otherwise left as they came: passed (at egress on the WAN, dropped with a LAN source).
//!
//! A TC ingress can hold a frame and grow one: there a later fragment that comes before its
//! first is held, and given back appended to the fragment it follows once that one passes
//! (the datagram then goes on whole, or in larger pieces, translated). A first fragment that
//! passes untranslated makes its datagram the kernel's: its later fragments pass, never held.
//! An XDP ingress can do neither: such fragments pass untranslated. A frame for another host
//! is not the gateway's: never held nor grown.
//!
//! What a hook remembers of a datagram, and a held fragment, serve for `FRAG_TIMEOUT_NS` (RFC
//! 791's reassembly timeout, as the kernel's `ipfrag_time`): a datagram seen longer ago is one
//! not seen (its identification may be another datagram's by now).

use std::collections::BTreeMap;

use super::{Expect, Ip, ip_sum, keep_sums};
use crate::{
    Reason,
    consts::{FRAG_TIMEOUT_NS, HELD_PER_FRAGMENT},
    types::HELD_MAX,
};

/// A datagram as its fragments name it: (source, destination, identification, protocol), as
/// they arrive at the hook.
pub type Datagram = ([u8; 4], [u8; 4], u16, u8);

/// What the hooks know of fragmented datagrams, each with the time it was learnt (ns).
#[derive(Clone, Debug, Default)]
pub struct Frags {
    /// The destination ingress gave each datagram's first fragment; `None`: the kernel's
    /// (passed untranslated at a TC ingress).
    pub ingress: BTreeMap<Datagram, (Option<[u8; 4]>, u64)>,
    /// The source egress gave each datagram's first fragment.
    pub egress: BTreeMap<Datagram, ([u8; 4], u64)>,
    /// Later fragments held at a TC ingress: (datagram, offset in it) -> (payload, whether
    /// more fragments follow, when it was held).
    pub held: BTreeMap<(Datagram, usize), (Vec<u8>, bool, u64)>,
    /// Held fragments given back.
    pub released: u64,
}

impl Ip {
    pub(super) fn datagram(&self) -> Datagram {
        (self.src, self.dst, self.id, self.proto)
    }
}

/// The frame with the IPv4 address at `field` (12: source, 16: destination) made `addr`, its
/// header checksum kept.
fn with_address(frame: &[u8], ip: &Ip, field: usize, addr: [u8; 4]) -> Vec<u8> {
    let mut out = frame.to_vec();
    out[ip.l3 + field..ip.l3 + field + 4].copy_from_slice(&addr);
    keep_sums(frame, &mut out, &[ip_sum(ip.l3, ip.l4)]);
    out
}

/// Whether what was learnt at `at` still serves at `now`.
fn fresh(at: u64, now: u64) -> bool {
    now.saturating_sub(at) <= FRAG_TIMEOUT_NS
}

impl Frags {
    /// A first fragment ingress translated (or, its flow failing, was about to) at `now`:
    /// `dst` for its later fragments.
    pub(super) fn first_in(&mut self, ip: &Ip, dst: [u8; 4], now: u64) {
        if ip.fragment {
            self.ingress.insert(ip.datagram(), (Some(dst), now));
        }
    }

    /// A first fragment egress translated at `now`: `src` for its later fragments.
    pub(super) fn first_out(&mut self, ip: &Ip, src: [u8; 4], now: u64) {
        if ip.fragment {
            self.egress.insert(ip.datagram(), (src, now));
        }
    }

    /// What ingress knows of the datagram `d` at `now`: whether it has seen its first
    /// fragment, and the destination it gave it.
    fn known_in(&self, d: &Datagram, now: u64) -> Option<Option<[u8; 4]>> {
        self.ingress.get(d).filter(|(_, at)| fresh(*at, now)).map(|(dst, _)| *dst)
    }

    /// A later fragment at ingress: its first fragment's destination, if that was translated.
    pub(super) fn later_in(&self, frame: &[u8], ip: &Ip, now: u64) -> Expect {
        match self.known_in(&ip.datagram(), now) {
            Some(Some(dst)) => {
                Expect { reason: Reason::IngressFragment, output: Some(with_address(frame, ip, 16, dst)) }
            }
            _ => Expect::decided(Reason::PassFragment, frame),
        }
    }

    /// A later fragment at egress: its first fragment's source, if that was translated; else
    /// as it is, unless it would take a LAN source out (`leaks`).
    pub(super) fn later_out(&self, frame: &[u8], ip: &Ip, leaks: bool, now: u64) -> Expect {
        match self.egress.get(&ip.datagram()).filter(|(_, at)| fresh(*at, now)) {
            Some((src, _)) => {
                Expect { reason: Reason::EgressFragment, output: Some(with_address(frame, ip, 12, *src)) }
            }
            None if leaks => Expect { reason: Reason::DropLanSourceToWan, output: None },
            None => Expect::decided(Reason::PassFragment, frame),
        }
    }

    /// After a TC ingress decided `e` for the fragment `arrived` (`frame` as it came): a later
    /// fragment of a datagram not seen is held; a first one that passed untranslated makes
    /// its datagram the kernel's; one that passes is given the held fragments that follow it.
    pub(super) fn after_tc_ingress(&mut self, arrived: &Ip, frame: &[u8], mut e: Expect, now: u64) -> Expect {
        if e.reason.is_drop() || e.reason == Reason::PassOtherHost {
            return e;
        }
        let d = arrived.datagram();
        let known = self.known_in(&d, now).is_some();
        if arrived.offset != 0 && !known {
            return match frame.get(arrived.l4..arrived.end) {
                Some(payload) if (1..=HELD_MAX).contains(&payload.len()) => {
                    self.held.insert((d, arrived.offset), (payload.to_vec(), arrived.more, now));
                    Expect { reason: Reason::HeldFragment, output: None }
                }
                _ => e,
            };
        }
        if !known {
            self.ingress.insert(d, (None, now));
        }
        if arrived.more
            && let Some(out) = e.output.take()
        {
            e.output = Some(self.release(d, arrived, out, now));
        }
        e
    }

    /// `out` (the fragment `arrived`, as ingress left it) with the held fragments that follow
    /// it one after the other appended, at most `HELD_PER_FRAGMENT`: its total length theirs
    /// too, its more-fragments flag the last one's, its header checksum kept. One held too
    /// long is thrown away, and ends the run.
    fn release(&mut self, d: Datagram, arrived: &Ip, mut out: Vec<u8>, now: u64) -> Vec<u8> {
        let (l3, l4) = (arrived.l3, arrived.l4);
        let mut end = arrived.offset + (arrived.end - arrived.l4);
        for _ in 0..HELD_PER_FRAGMENT {
            let Some((payload, more, at)) = self.held.remove(&(d, end)) else { break };
            if !fresh(at, now) {
                break;
            }
            let before = out.clone();
            let tot_len = usize::from(u16::from_be_bytes([out[l3 + 2], out[l3 + 3]]));
            out.truncate(l3 + tot_len);
            out.extend_from_slice(&payload);
            out[l3 + 2..l3 + 4].copy_from_slice(&((tot_len + payload.len()) as u16).to_be_bytes());
            out[l3 + 6] = (out[l3 + 6] & !0x20) | if more { 0x20 } else { 0 };
            keep_sums(&before, &mut out, &[ip_sum(l3, l4)]);
            self.released += 1;
            end += payload.len();
            if !more {
                break;
            }
        }
        out
    }
}
