//! `hairpin-ctl show`: the live configuration, in the format `apply` reads.

use crate::{dataplane::PinDir, gateway, output};

pub fn run(pins: &PinDir, json: bool) -> anyhow::Result<()> {
    let spec = gateway::live::read(pins, &pins.open()?)?;
    if json {
        return output::json(&spec);
    }
    say!("{}", spec.to_toml().trim_end());
    Ok(())
}
