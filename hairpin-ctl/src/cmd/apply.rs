//! `hairpin-ctl apply -f FILE`: check a whole configuration file, print how it differs from
//! the live gateway, and move the gateway to it atomically (or bring it up).

use crate::{
    cli::gateway::ApplyArgs,
    dataplane::PinDir,
    gateway::{self, Source, apply::reconcile},
};

pub fn run(pins: &PinDir, a: &ApplyArgs) -> anyhow::Result<()> {
    let (spec, source) = Source::load(a.file.clone())?;
    pins.check_visible()?;
    if pins.exists() {
        for line in reconcile(pins, &spec, &source, a.dry_run)?.lines() {
            say!("{line}");
        }
        return Ok(());
    }
    if !a.dry_run {
        for line in gateway::attach::bring_up(pins, &spec, &source)?.summary() {
            say!("{line}");
        }
        return Ok(());
    }
    let r = gateway::resolve(&spec, &source)?;
    say!("hairpin is not up: apply would bring it up with:");
    say!(
        "+ lan {} ({}, prefix {}), wan {} ({})",
        spec.lan.interface,
        r.addrs.lan_ip,
        r.addrs.lan_prefix,
        spec.wan.interface,
        r.addrs.public_ip
    );
    for f in &spec.forwards {
        say!("+ forward {f}");
    }
    Ok(())
}
