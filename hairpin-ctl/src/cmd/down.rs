//! `hairpin-ctl down`: detach the programs and remove every pin.

use anyhow::bail;

use crate::dataplane::{LINKS, PinDir, unpin_link};

pub fn run(pins: &PinDir) -> anyhow::Result<()> {
    if !pins.exists() {
        bail!("hairpin is not up (nothing pinned at {})", pins.root.display());
    }
    // Links first, so no program runs against maps that are going away.
    for (prog, _) in LINKS {
        let path = pins.link(prog);
        if path.exists() {
            unpin_link(&path)?;
        }
    }
    pins.remove_all()?;
    println!("hairpin down: programs detached, pins under {} removed", pins.root.display());
    Ok(())
}
