//! The fast path's targets, as `run` checks them at every sweep: whether each interface takes XDP
//! frames, as the kernel says (its XDP features, read again: a veth's change as its peer
//! attaches or detaches XDP, a driver reloaded) and as it shows (frames it refused to
//! transmit, counted by the dataplane's tracepoint programs); and whether the TC fast path may
//! send into a veth's peer directly (a queueing discipline added or removed, which the kernel
//! announces no link change for). The fast path's placement follows, and each change is said
//! in one line. Frames refused turn the XDP fast path off for that interface until the next
//! `up`.

use anyhow::Context as _;
use hairpin_common::{Counter, Side, placement::Placement};

use crate::{dataplane::Maps, ifcaps::Caps, netif, placement};

pub struct Targets {
    /// Per side (LAN, WAN): refused frames last seen, whether refusals turned the
    /// XDP fast path off.
    refused: [u64; 2],
    refusing: [bool; 2],
}

impl Targets {
    /// What was refused before this run started is history, not news.
    pub fn new(maps: &Maps) -> anyhow::Result<Self> {
        Ok(Self {
            refused: [maps.counter(Counter::LanXdpRefused)?, maps.counter(Counter::WanXdpRefused)?],
            refusing: [false; 2],
        })
    }

    pub fn check(&mut self, maps: &mut Maps) -> anyhow::Result<()> {
        for side in Side::BOTH {
            let i = side.index();
            let cfg = maps.config()?;
            let (ifindex, code) = (cfg.ifindex[i], cfg.placement[i]);
            let Some(mut p) = Placement::decode(code) else { continue };
            // An interface gone is `follow`'s to say and attach again; one that went between
            // the two lookups, the next sweep's.
            let Some(name) = netif::name(ifindex) else { continue };
            let Ok(caps) = Caps::probe(&name, ifindex) else { continue };
            let refused = maps.counter(Counter::xdp_refused(side))?;
            let new = refused.saturating_sub(std::mem::replace(&mut self.refused[i], refused));
            let (want, why) = if new > 0 || self.refusing[i] {
                self.refusing[i] = true;
                (false, format!("the kernel refused {new} XDP frames sent into it"))
            } else {
                let want = placement::xdp_target(&caps, p.ingress, p.why);
                let says = if want { "now says it takes" } else { "no longer says it takes" };
                (want, format!("the kernel {says} XDP frames"))
            };
            let not_peer = caps.not_peer_target();
            let peer = not_peer.is_none();
            if (want, peer) == (p.xdp_target, p.peer_target) {
                continue;
            }
            let (xdp_changed, peer_changed) = (want != p.xdp_target, peer != p.peer_target);
            (p.xdp_target, p.peer_target) = (want, peer);
            // This side's placement only, on the settings as they are by now.
            let code = p.encode();
            maps.update_config(|cur| cur.placement[i] = code)
                .with_context(|| format!("updating {name}'s placement"))?;
            match (xdp_changed, want) {
                (false, _) => {}
                (true, true) => say!("{name}: {why}: the fast path sends XDP frames into it"),
                (true, false) => warn!("{name}: {why}: the fast path sends it none (the slow path takes over)"),
            }
            match (peer_changed, not_peer) {
                (false, _) => {}
                (true, None) => say!(
                    "{name}: no queueing discipline of its own now, its peer in another namespace: the TC fast path \
                     sends into its peer directly"
                ),
                (true, Some(why)) => say!("{name}: {why}: the TC fast path sends through it"),
            }
        }
        Ok(())
    }
}
