//! Time passing: a flow lives while its packets come within its idle timeout (RFC 4787
//! REQ-5 for UDP, RFC 5382 REQ-5 for established TCP, the transitory timeout for a TCP flow
//! opening or closing and for any flow the kernel has not forwarded both ways, RFC 5508's
//! for ICMP), and the sweep removes it past that; a masqueraded UDP flow is kept by its
//! outbound packets alone (RFC 4787 REQ-6); a binding no flow uses is released by the sweep
//! past a second's grace; a forward given a lifetime ends with it.
//!
//! The implementation writes a flow's last-seen time at most once a second, and its flow
//! cache serves a flow for a while before conntrack sees it again: a flow idle within that
//! lag of its timeout may have gone or not, and there the implementation's word is taken
//! ([`Kept`]).

use std::collections::BTreeSet;

use super::{Ep, Flow, Gateway, Model, Tuple};
use crate::{
    consts::{IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP},
    flow_cache::fresh_ns,
};

const SECOND: u64 = 1_000_000_000;
/// How much later than the model's reading of the clock the implementation may read it for
/// the same frame (it runs the frame after): ages this close to an edge are either side.
const MARGIN_NS: u64 = 50_000_000;
/// A binding no flow uses is released by the sweep once unused this long (a flow being made
/// may be about to use it).
const GRACE_NS: u64 = SECOND;

/// When a flow's packets came: the last of each direction (made: both), whether a packet of
/// its reply direction has come, and the direction that alone keeps it, if one does (a
/// masqueraded UDP flow's outbound one).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Times {
    pub last: [u64; 2],
    pub answered: bool,
    pub outbound: Option<usize>,
}

impl Times {
    /// A packet of direction `d` came at `now`.
    pub(super) fn heard(&mut self, d: usize, now: u64) {
        self.last[d] = now;
        self.answered |= d == 1;
    }
}

/// What the implementation's sweep left where the model allows either: a flow whose idle
/// time is within the implementation's lag of its timeout, a binding unused for about the
/// grace.
pub trait Kept {
    /// Whether the flow whose original direction is `orig` is still there.
    fn flow(&self, orig: &Tuple) -> bool;
    /// Whether the LAN endpoint `ep` still has its binding for `proto`.
    fn binding(&self, proto: u8, ep: Ep) -> bool;
}

/// Whether something must go, must stay, or may do either.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fate {
    Goes,
    Stays,
    Either,
}

impl Flow {
    /// Its idle timeout (ns), by its protocol and its state: the transitory one for a flow
    /// the kernel has not forwarded both ways (its filter may be dropping it), and for TCP
    /// but established (a segment past the SYN from its opener, one from the other side,
    /// neither FIN nor a counted RST).
    fn timeout(&self, gw: &Gateway) -> u64 {
        let t = &gw.timeouts;
        let [o, r] = if self.is_own() { [self.tcp[0]; 2] } else { self.tcp };
        let answered = self.is_own() || self.times.answered;
        let own = match self.orig.proto {
            IPPROTO_TCP if o.rst || r.rst || o.fin || r.fin => t.tcp_transitory,
            IPPROTO_TCP if o.past_syn && answered && self.confirmed() => t.tcp_established,
            IPPROTO_TCP => t.tcp_transitory,
            IPPROTO_UDP => t.udp,
            IPPROTO_ICMP => t.icmp,
            _ => t.udp,
        };
        let secs = if self.confirmed() { own } else { own.min(t.tcp_transitory) };
        u64::from(secs) * SECOND
    }

    /// When the packets that keep it last came.
    fn active(&self) -> u64 {
        match self.times.outbound {
            Some(d) => self.times.last[d],
            None => self.times.last[0].max(self.times.last[1]),
        }
    }

    /// At a sweep at `now`: the implementation's last-seen time lags the model's by up to a
    /// second (its refresh) and the flow cache's fresh time.
    fn fate(&self, gw: &Gateway, now: u64) -> Fate {
        let (idle, timeout) = (now.saturating_sub(self.active()), self.timeout(gw));
        let lag = fresh_ns(&gw.timeouts) + SECOND;
        if idle >= timeout + MARGIN_NS {
            Fate::Goes
        } else if idle + lag < timeout {
            Fate::Stays
        } else {
            Fate::Either
        }
    }
}

impl Model {
    /// `run`'s sweep at `self.now`: the forwards whose lifetime has ended go (with their
    /// flows), then the flows idle past their timeout, then the bindings no flow uses, past
    /// their grace.
    pub fn sweep(&mut self, gw: &mut Gateway, kept: &dyn Kept) {
        let now = self.now;
        let ended: Vec<(u8, u16)> = self.lifetimes.iter().filter(|(_, t)| **t <= now).map(|(k, _)| *k).collect();
        for (proto, port) in ended {
            self.remove_forward(gw, proto, port);
        }
        let had = self.flows.len();
        self.flows.retain(|f| match f.fate(gw, now) {
            Fate::Goes => false,
            Fate::Stays => true,
            Fate::Either => kept.flow(&f.orig),
        });
        self.removed(had);
        let used: BTreeSet<(u8, u16)> = self.flows.iter().flat_map(|f| f.public_ports(gw)).collect();
        let bound_at = &self.bound_at;
        self.bindings.retain(|&(proto, ep), port| {
            let idle = now.saturating_sub(bound_at.get(&(proto, ep)).copied().unwrap_or_default());
            // Its last use is written once a second: it may be up to that older there.
            used.contains(&(proto, *port)) || (idle < GRACE_NS + MARGIN_NS && kept.binding(proto, ep))
        });
    }
}
