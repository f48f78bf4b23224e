//! `hairpin-ctl run`: the long-running controller. Attaches (or adopts the pinned dataplane),
//! then sweeps expired flows until told to stop; the dataplane outlives it either way.

use std::time::Duration;

use anyhow::Context as _;
use hairpin_common::CFG_F_UDP_EIF;
use tokio::signal::unix::{SignalKind, signal};

use crate::{cli::RunArgs, cmd::up, dataplane::PinDir, expire};

pub async fn run(pins: &PinDir, a: &RunArgs) -> anyhow::Result<()> {
    if pins.exists() {
        // A dataplane is already pinned here (an earlier `up` or `run`): keep its flows,
        // bindings and mappings, take the timeouts and UDP filtering given now.
        let mut maps = pins.open()?;
        let mut cfg = maps.config()?;
        cfg.timeouts = a.up.timeouts.to_timeouts();
        cfg.flags = (cfg.flags & !CFG_F_UDP_EIF) | (a.up.config_flags() & CFG_F_UDP_EIF);
        maps.config.set(0, &cfg, 0).context("updating the timeouts and filtering")?;
        println!("hairpin run: adopted the dataplane pinned at {}", pins.root.display());
    } else {
        up::run(pins, &a.up)?;
    }
    let mut maps = pins.open()?;
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let mut tick = tokio::time::interval(Duration::from_secs(a.sweep_interval.into()));
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let s = expire::sweep(&mut maps, expire::boot_ns())
                    .with_context(|| format!("sweeping the flows pinned at {}", pins.root.display()))?;
                if s.expired + s.orphans + s.unbound > 0 {
                    println!(
                        "swept {} flows in {:?}: {} expired, {} orphaned entries removed, {} unused bindings released",
                        s.flows, s.elapsed, s.expired, s.orphans, s.unbound
                    );
                }
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    println!("hairpin run: stopping; the dataplane keeps running (pins at {})", pins.root.display());
    Ok(())
}
