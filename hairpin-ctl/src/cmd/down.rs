//! `hairpin-ctl down`: detach the programs and remove every pin. Nothing up is not an error: a
//! stop step (a script's cleanup) must be idempotent.

use crate::{dataplane::PinDir, gateway::teardown::teardown};

pub fn run(pins: &PinDir) -> anyhow::Result<()> {
    let Some(done) = teardown(pins)? else {
        say!("hairpin is not up (nothing pinned at {}): nothing to do", pins.root.display());
        return Ok(());
    };
    let filters = if done.filters > 0 { format!(", {} TC filters", done.filters) } else { String::new() };
    say!("hairpin down: programs detached{filters}, {} pins under {} removed", done.pins, pins.root.display());
    Ok(())
}
