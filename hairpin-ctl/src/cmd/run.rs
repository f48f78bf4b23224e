//! `hairpin-ctl run`: the long-running controller. Attaches (or adopts the pinned dataplane),
//! then sweeps expired flows until told to stop; the dataplane outlives it either way.

use std::time::Duration;

use std::net::Ipv4Addr;

use anyhow::Context as _;
use aya::maps::{MapData, RingBuf};
use hairpin_common::{CFG_F_FAST_PATH, CFG_F_UDP_EIF, Event, Reason, consts::map_names};
use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::{SignalKind, signal},
};

use crate::{cli::RunArgs, cmd::up, dataplane::PinDir, expire, watch::Watch};

/// The dataplane's event ring (`HP_EVENTS`), pinned, read as it fills.
fn dataplane_events(pins: &PinDir) -> anyhow::Result<AsyncFd<RingBuf<MapData>>> {
    let path = pins.map(map_names::EVENTS);
    let data = MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
    let ring = RingBuf::try_from(aya::maps::Map::RingBuf(data)).context("the event ring")?;
    // SAFETY: the ring owns its map's fd, which stays open and the same for as long as the
    // ring lives, i.e. as long as the AsyncFd that owns it.
    Ok(unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }.map_err(std::io::Error::from)?)
}

/// Prints what the dataplane reported, one line each, beside the controller's own lines.
fn print_events(ring: &mut RingBuf<MapData>) {
    while let Some(item) = ring.next() {
        let Some(e) = bytemuck::try_from_bytes::<Event>(&item[..std::mem::size_of::<Event>().min(item.len())]).ok()
        else {
            continue;
        };
        let want = match Reason::from_index(e.reason) {
            Some(Reason::DropNoPort) => "free public port",
            _ => "table space",
        };
        let k = &e.key;
        let (src, dst) = (Ipv4Addr::from(k.src.octets()), Ipv4Addr::from(k.dst.octets()));
        println!(
            "dataplane warn: no {want} for a new flow (proto {}) {src}:{} -> {dst}:{}: dropped",
            k.proto,
            k.sport.host(),
            k.dport.host()
        );
    }
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
    let mut events = dataplane_events(pins)?;
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
            ready = events.readable_mut() => {
                let mut ready = ready.context("waiting on the dataplane's event ring")?;
                print_events(ready.get_inner_mut());
                ready.clear_ready();
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    // Whatever the dataplane reported before the signal is still printed.
    print_events(events.get_mut());
    println!("hairpin run: stopping; the dataplane keeps running (pins at {})", pins.root.display());
    Ok(())
}
