//! `hairpin-ctl apply -f FILE`: check a whole configuration file, print how it differs from
//! the live gateway, and move the gateway to it atomically (or bring it up).

use std::path::PathBuf;

use anyhow::bail;
use clap::Args;

use crate::{
    cmd::up,
    dataplane::PinDir,
    gateway::{self, Origin},
    spec::Spec,
};

#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// The configuration file (TOML; see contrib/hairpin.toml).
    #[arg(long, short = 'f', value_name = "FILE")]
    pub file: PathBuf,
    /// Check the file and print the difference; change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

pub fn run(pins: &PinDir, a: &ApplyArgs) -> anyhow::Result<()> {
    let (spec, origin) = Origin::load(a.file.clone())?;
    pins.check_visible()?;
    if !pins.exists() {
        let r = gateway::resolve(&spec, &origin)?;
        if a.dry_run {
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
            return Ok(());
        }
        return up::bring_up(pins, &spec, &origin);
    }
    reconcile(pins, &spec, &origin, a.dry_run)
}

/// Moves the live dataplane to `spec` (or, with `dry_run`, only prints how): the difference,
/// then what was done. Settings fixed while up are refused, naming each, and nothing changes.
pub fn reconcile(pins: &PinDir, spec: &Spec, origin: &Origin, dry_run: bool) -> anyhow::Result<()> {
    let mut maps = pins.open()?;
    let live = gateway::live(pins, &maps)?;
    let fixed = gateway::fixed_differences(&live, spec);
    if !fixed.is_empty() {
        bail!("{}", fixed.join("; "));
    }
    let r = gateway::resolve(spec, origin)?;
    let plan = gateway::plan(&maps, &live, spec, &r)?;
    if !plan.refused.is_empty() {
        bail!("{}", plan.refused.join("; "));
    }
    if plan.is_empty() {
        say!("no changes");
        return Ok(());
    }
    for line in &plan.lines {
        say!("{line}");
    }
    if dry_run {
        say!("(dry run: nothing changed)");
        return Ok(());
    }
    let done = plan.apply(&mut maps)?;
    crate::events::flushed(pins, done.removed.iter().map(|(k, e)| (k, e)));
    say!("applied ({} flows removed)", done.flows_removed);
    Ok(())
}
