//! `hairpin-ctl down`: detach the programs and remove every pin.

use anyhow::bail;

use crate::dataplane::PinDir;

pub fn run(pins: &PinDir) -> anyhow::Result<()> {
    if !pins.exists() {
        bail!("hairpin is not up (nothing pinned at {})", pins.root.display());
    }
    // Unpinning a link drops its last reference, which detaches the program; links go first so
    // no program runs against maps that are going away. Tolerates a half-removed directory.
    let removed = pins.remove_all()?;
    println!("hairpin down: programs detached, {} pins under {} removed", removed.len(), pins.root.display());
    Ok(())
}
