//! `hairpin-ctl down`: detach the programs and remove every pin. Nothing up is not an error: a
//! stop step (systemd's ExecStopPost, a script's cleanup) must be idempotent.

use anyhow::bail;

use crate::dataplane::{self, PinDir};

pub fn run(pins: &PinDir) -> anyhow::Result<()> {
    pins.check_visible()?;
    if !pins.exists() {
        say!("hairpin is not up (nothing pinned at {}): nothing to do", pins.root.display());
        return Ok(());
    }
    if !pins.is_ours() {
        bail!(
            "{} is not a hairpin pin directory (no hairpin configuration map in it): left alone; check --pin-dir",
            pins.root.display()
        );
    }
    // Netlink TC filters (kernels without TCX, or `--tc-attach netlink`) hold their programs
    // without pins: they go first, found by program name on the two interfaces.
    let mut filters = 0;
    let mut ifindexes = Vec::new();
    if let Ok(cfg) = pins.open().and_then(|m| m.config()) {
        ifindexes.extend([cfg.lan_ifindex, cfg.wan_ifindex].into_iter().filter(|&i| i != 0));
        for &ifindex in &ifindexes {
            filters += dataplane::detach_netlink_filters(ifindex)?;
        }
    }
    // Unpinning a link drops its last reference, which detaches the program; links go first so
    // no program runs against maps that are going away. Tolerates a half-removed directory.
    let removed = pins.remove_all()?;
    crate::netif::wait_detached(&ifindexes);
    let filters = if filters > 0 { format!(", {filters} TC filters") } else { String::new() };
    say!("hairpin down: programs detached{filters}, {} pins under {} removed", removed.len(), pins.root.display());
    Ok(())
}
