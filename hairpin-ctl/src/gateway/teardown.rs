//! Taking the dataplane down: `down`, and `run` before it attaches again to an interface that
//! came back.

use anyhow::bail;

use crate::{
    dataplane::{self, PinDir},
    netif,
};

/// What [`teardown`] removed.
#[derive(Debug, Default)]
pub struct TornDown {
    /// Programs that had netlink TC filters.
    pub filters: usize,
    /// Pins removed.
    pub pins: usize,
}

/// Detaches every program and removes every pin; returns once the kernel has detached the
/// programs. A directory that is not hairpin's is left alone. Nothing pinned is `None`.
pub fn teardown(pins: &PinDir) -> anyhow::Result<Option<TornDown>> {
    pins.check_visible()?;
    if !pins.exists() {
        return Ok(None);
    }
    if !pins.is_ours() {
        bail!(
            "{} is not a hairpin pin directory (no hairpin configuration map in it): left alone; check --pin-dir",
            pins.root.display()
        );
    }
    // Netlink TC filters (kernels without TCX, or `--tc-attach netlink`) hold their programs
    // without pins: they go first, found by program name on the interfaces still there (an
    // interface gone took its filters with it).
    let mut done = TornDown::default();
    let mut ifindexes = Vec::new();
    if let Ok(cfg) = pins.open().and_then(|m| m.config()) {
        ifindexes.extend([cfg.ifindex[0], cfg.ifindex[1]].into_iter().filter(|&i| netif::name(i).is_some()));
        for &ifindex in &ifindexes {
            done.filters += dataplane::detach_netlink_filters(ifindex)?;
        }
    }
    // Unpinning a link drops its last reference, which detaches the program; links go first so
    // no program runs against maps that are going away. Tolerates a half-removed directory.
    done.pins = pins.remove_all()?.len();
    netif::wait_detached(&ifindexes);
    Ok(Some(done))
}
