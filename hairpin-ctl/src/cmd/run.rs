//! `hairpin-ctl run`: the long-running controller. Attaches (or adopts the pinned dataplane),
//! then sweeps expired flows until told to stop; the dataplane outlives it either way.

use std::time::Duration;

use anyhow::Context as _;
use aya::programs::links::{FdLink, PinnedLink};
use aya_log::EbpfLogger;
use hairpin_common::{CFG_F_FAST_PATH, CFG_F_UDP_EIF, consts::prog_names};
use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::{SignalKind, signal},
};

use crate::{cli::RunArgs, cmd::up, dataplane::PinDir, expire, watch::Watch};

/// Prints the dataplane's aya-log records on stdout, beside the controller's own lines.
struct Print;

impl log::Log for Print {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, record: &log::Record) {
        println!("dataplane {}: {}", record.level().as_str().to_lowercase(), record.args());
    }
    fn flush(&self) {}
}

/// Reads the log ring of the pinned dataplane (found through a pinned link's program, which
/// works whether this process attached it or adopted it).
fn dataplane_logs(pins: &PinDir) -> anyhow::Result<AsyncFd<EbpfLogger<Print>>> {
    let path = [prog_names::XDP_LAN, prog_names::TC_IN_LAN]
        .map(|p| pins.link(p))
        .into_iter()
        .find(|p| p.exists())
        .unwrap_or_else(|| pins.link(prog_names::XDP_LAN));
    let link = PinnedLink::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
    let prog_id = FdLink::from(link).info().context("link info")?.program_id();
    let logger = EbpfLogger::init_from_id_with_logger(prog_id, Print).context("opening the dataplane's log ring")?;
    // SAFETY: the logger owns its ring buffer map's fd, which stays open and the same for as
    // long as the logger lives, i.e. as long as the AsyncFd that owns it.
    Ok(unsafe { AsyncFd::register_with_interest(logger, Interest::READABLE) }.map_err(std::io::Error::from)?)
}

pub async fn run(pins: &PinDir, a: &RunArgs) -> anyhow::Result<()> {
    // First: a stop asked for while attaching or adopting is then a clean stop after it, not
    // the default action's kill.
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    if pins.exists() {
        // A dataplane is already pinned here (an earlier `up` or `run`): keep its flows,
        // bindings and mappings, take the timeouts, UDP filtering and fast path given now.
        let mut maps = pins.open()?;
        let mut cfg = maps.config()?;
        cfg.timeouts = a.up.timeouts.to_timeouts();
        let live = CFG_F_UDP_EIF | CFG_F_FAST_PATH;
        cfg.flags = (cfg.flags & !live) | (a.up.config_flags() & live);
        maps.set_config(&cfg).context("updating the timeouts, filtering and fast path")?;
        println!("hairpin run: adopted the dataplane pinned at {}", pins.root.display());
    } else {
        up::run(pins, &a.up)?;
    }
    let mut maps = pins.open()?;
    let mut logs = dataplane_logs(pins)?;
    let mut watch = Watch::new(&maps)?;
    let mut tick = tokio::time::interval(Duration::from_secs(a.sweep_interval.into()));
    loop {
        tokio::select! {
            _ = tick.tick() => {
                watch.check(&mut maps)?;
                let s = expire::sweep(&mut maps, expire::boot_ns())
                    .with_context(|| format!("sweeping the flows pinned at {}", pins.root.display()))?;
                if s.expired + s.orphans + s.unbound > 0 {
                    println!(
                        "swept {} flows in {:?}: {} expired, {} orphaned entries removed, {} unused bindings released",
                        s.flows, s.elapsed, s.expired, s.orphans, s.unbound
                    );
                }
            }
            ready = logs.readable_mut() => {
                let mut ready = ready.context("waiting on the dataplane's log ring")?;
                ready.get_inner_mut().flush();
                ready.clear_ready();
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    // Whatever the dataplane logged before the signal is still printed.
    logs.get_mut().flush();
    println!("hairpin run: stopping; the dataplane keeps running (pins at {})", pins.root.display());
    Ok(())
}
