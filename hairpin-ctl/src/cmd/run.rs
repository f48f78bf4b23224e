//! `hairpin-ctl run`: the long-running controller. Attaches (or adopts the pinned dataplane),
//! then sweeps expired flows until told to stop; the dataplane outlives it either way.

use std::time::Duration;

use std::net::Ipv4Addr;

use anyhow::Context as _;
use aya::maps::{MapData, RingBuf};
use clap::Args;
use hairpin_common::{EVENT_NEW_FLOW, Event, Reason, consts::map_names};
use sd_notify::NotifyState;
use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::{SignalKind, signal},
};

use crate::{
    cmd::{
        apply::reconcile,
        up::{self, UpArgs},
    },
    dataplane::PinDir,
    events::{FlowEvent, Hub, Seen},
    expire,
    follow::{Follow, Outcome},
    gateway::{self, Origin},
    netif::{self, Change},
    watch::Watch,
};

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub up: UpArgs,
    /// How `run` logs (stdout; journald adds its own time stamps): text lines with a time
    /// stamp and a level, or JSON lines (`timestamp`, `level`, `message`).
    #[arg(long, value_enum, default_value_t = LogFormat::Text, value_name = "FORMAT")]
    pub log_format: LogFormat,
    /// Log every flow that starts or ends (as `flows --watch` shows them), not only what
    /// needs an operator's eye.
    #[arg(long)]
    pub log_flows: bool,
    /// Seconds between two sweeps of the flow table.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=3600), value_name = "SECS")]
    pub sweep_interval: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// The dataplane's event ring (`HP_EVENTS`), pinned, read as it fills.
fn dataplane_events(pins: &PinDir) -> anyhow::Result<AsyncFd<RingBuf<MapData>>> {
    let path = pins.map(map_names::EVENTS);
    let data = MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
    let ring = RingBuf::try_from(aya::maps::Map::RingBuf(data)).context("the event ring")?;
    // SAFETY: the ring owns its map's fd, which stays open and the same for as long as the
    // ring lives, i.e. as long as the AsyncFd that owns it.
    Ok(unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }.map_err(std::io::Error::from)?)
}

/// At most this many of the dataplane's events are taken per wake: under a flood of new flows
/// the ring refills as fast as it is read, and sweeps and signals must still get their turn.
const EVENTS_PER_WAKE: usize = 1024;

/// Takes what the dataplane reported: new flows go to the watchers (and the log, with
/// `--log-flows`), refused ones to the log as warnings. Returns whether it stopped short (more
/// are waiting).
fn take_events(ring: &mut RingBuf<MapData>, hub: &Hub, seen: &mut Seen, log_flows: bool) -> bool {
    for _ in 0..EVENTS_PER_WAKE {
        let Some(item) = ring.next() else { return false };
        let Some(e) = bytemuck::try_from_bytes::<Event>(&item[..std::mem::size_of::<Event>().min(item.len())]).ok()
        else {
            continue;
        };
        if e.kind == EVENT_NEW_FLOW {
            let ev = FlowEvent::new("new", None, &e.key, &e.xlate, e.reason);
            if log_flows {
                say!("flow {ev}");
            }
            hub.send(&ev);
            seen.add(e.key, e.xlate, e.reason);
            continue;
        }
        let want = match Reason::from_index(e.reason) {
            Some(Reason::DropNoPort) => "free public port",
            _ => "table space",
        };
        let k = &e.key;
        let (src, dst) = (Ipv4Addr::from(k.src.octets()), Ipv4Addr::from(k.dst.octets()));
        warn!(
            "dataplane: no {want} for a new flow (proto {}) {src}:{} -> {dst}:{}: dropped",
            k.proto,
            k.sport.host(),
            k.dport.host()
        );
    }
    true
}

/// The pinned dataplane as `run` serves it: its maps, its event ring, what the kernel says of
/// its interfaces. Opened again when the dataplane is attached again.
struct Serving {
    maps: crate::dataplane::Maps,
    events: AsyncFd<RingBuf<MapData>>,
    watch: Watch,
}

impl Serving {
    fn open(pins: &PinDir) -> anyhow::Result<Self> {
        let maps = pins.open()?;
        let watch = Watch::new(&maps)?;
        Ok(Self { maps, events: dataplane_events(pins)?, watch })
    }
}

/// After the dataplane was attached again (new pins): the lock on the new directory, and the
/// new maps and ring.
fn reopen(
    pins: &PinDir,
    old: nix::fcntl::Flock<std::fs::File>,
) -> anyhow::Result<(nix::fcntl::Flock<std::fs::File>, Serving)> {
    drop(old);
    Ok((pins.lock()?, Serving::open(pins)?))
}

/// What woke the loop up.
enum Wake {
    Tick,
    Events,
    Kernel(Vec<Change>),
    Reload,
    Stop,
}

pub async fn run(pins: &PinDir, a: &RunArgs) -> anyhow::Result<()> {
    // First: a stop asked for while attaching or adopting is then a clean stop after it, not
    // the default action's kill.
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let mut hup = signal(SignalKind::hangup()).context("SIGHUP handler")?;
    crate::output::log(a.log_format == LogFormat::Json);
    pins.check_visible()?;
    // Subscribed before attaching: no change between the two is missed.
    let changes = netif::Changes::subscribe()?;
    // SAFETY: the subscription owns its socket's fd, which stays open and the same for as long
    // as it lives, i.e. as long as the AsyncFd that owns it.
    let mut kernel = unsafe { AsyncFd::register_with_interest(changes, Interest::READABLE) }
        .map_err(std::io::Error::from)
        .context("watching rtnetlink")?;
    let mut lock = if pins.exists() {
        // A dataplane is already pinned here (an earlier `up` or `run`): keep its flows,
        // bindings and forwards; apply what was given (a file, or flags), keep the rest.
        let lock = pins.lock()?;
        match &a.up.config {
            Some(path) => {
                let (spec, origin) = Origin::load(path.clone())?;
                reconcile(pins, &spec, &origin, false)?;
            }
            None => {
                let mut spec = gateway::live(pins, &pins.open()?)?;
                if !a.up.overlay(&mut spec).is_empty() {
                    reconcile(pins, &spec, &Origin::Live, false)?;
                }
            }
        }
        say!("hairpin run: adopted the dataplane pinned at {}", pins.root.display());
        lock
    } else {
        up::run(pins, &a.up)?;
        pins.lock()?
    };
    let mut serving = Serving::open(pins)?;
    let mut follow = Follow::new(pins)?;
    let hub = Hub::start(pins)?;
    let mut seen = Seen::default();
    let mut tick = tokio::time::interval(Duration::from_secs(a.sweep_interval.into()));
    // Not under systemd, this does nothing.
    let _ = sd_notify::notify(false, &[NotifyState::Ready]);
    let orphaned = loop {
        let wake = tokio::select! {
            _ = tick.tick() => Wake::Tick,
            ready = serving.events.readable_mut() => {
                let mut ready = ready.context("waiting on the dataplane's event ring")?;
                // Cleared only once drained: if more wait, this branch is ready again at once,
                // beside the others.
                if !take_events(ready.get_inner_mut(), &hub, &mut seen, a.log_flows) {
                    ready.clear_ready();
                }
                Wake::Events
            }
            ready = kernel.readable_mut() => {
                let mut ready = ready.context("waiting on rtnetlink")?;
                let changes = ready.get_inner_mut().drain()?;
                ready.clear_ready();
                Wake::Kernel(changes)
            }
            _ = hup.recv() => Wake::Reload,
            _ = term.recv() => Wake::Stop,
            _ = int.recv() => Wake::Stop,
        };
        match wake {
            Wake::Tick => {
                hub.send_own();
                // An interface gone: attached again once it is back (if an announcement was
                // missed, or the last try failed, here).
                if follow.waiting() && (pins.is_up() || follow.took_down()) {
                    if follow.retry(pins) == Outcome::Reattached {
                        (lock, serving) = reopen(pins, lock)?;
                    }
                    continue;
                }
                if !pins.is_up() {
                    break true;
                }
                // An interface gone without the announcement reaching us (a burst of them).
                if let Err(e) = follow.check_links(pins) {
                    crate::output::error(format_args!("{e:#}"));
                }
                if follow.waiting() {
                    continue;
                }
                serving.watch.check(&mut serving.maps)?;
                let mut s = expire::sweep(&mut serving.maps, expire::boot_ns())
                    .with_context(|| format!("sweeping the flows pinned at {}", pins.root.display()))?;
                let swept: std::collections::HashSet<_> = s.ended.iter().map(|(k, _, _)| *k).collect();
                let mut ended: Vec<FlowEvent> = s.ended.iter().map(|(k, e, why)| FlowEvent::ended(why, k, e)).collect();
                ended.extend(seen.update(std::mem::take(&mut s.alive), &swept, &hub.take_flushed()));
                for ev in &ended {
                    if a.log_flows {
                        say!("flow {ev}");
                    }
                    hub.send(ev);
                }
                if s.expired + s.orphans + s.stray_egress + s.unbound > 0 {
                    say!(
                        "swept {} flows in {:?}: {} expired, {} orphaned entries removed, {} unused bindings released",
                        s.flows,
                        s.elapsed,
                        s.expired,
                        s.orphans + s.stray_egress,
                        s.unbound
                    );
                }
            }
            Wake::Events => {}
            Wake::Kernel(changes) if changes.is_empty() || (!pins.is_up() && !follow.took_down()) => {}
            Wake::Kernel(changes) => {
                // What the kernel changed is followed as far as it can be; a failure is said,
                // and run goes on with what is live.
                let outcome = follow.changes(pins, &changes).unwrap_or_else(|e| {
                    crate::output::error(format_args!("{e:#}"));
                    Outcome::Nothing
                });
                hub.send_own();
                if outcome == Outcome::Reattached {
                    (lock, serving) = reopen(pins, lock)?;
                }
            }
            Wake::Reload => {
                reload(pins, a);
                hub.send_own();
            }
            Wake::Stop => break false,
        }
    };
    drop(lock);
    let _ = sd_notify::notify(false, &[NotifyState::Stopping]);
    // Whatever the dataplane reported before the signal is still printed.
    let _ = take_events(serving.events.get_mut(), &hub, &mut seen, a.log_flows);
    match orphaned {
        true => say!("hairpin run: the pins at {} were removed (hairpin-ctl down?): stopping", pins.root.display()),
        false => say!("hairpin run: stopping; the dataplane keeps running (pins at {})", pins.root.display()),
    }
    Ok(())
}

/// SIGHUP: re-reads the configuration file and applies it. A file that fails a check is
/// reported and changes nothing; `run` goes on with what is live.
fn reload(pins: &PinDir, a: &RunArgs) {
    let Some(path) = &a.up.config else {
        warn!("SIGHUP: no --config file to re-read; nothing changed");
        return;
    };
    let _ = sd_notify::notify(false, &[NotifyState::Reloading]);
    say!("hairpin run: SIGHUP: applying {}", path.display());
    let done = Origin::load(path.clone()).and_then(|(spec, origin)| reconcile(pins, &spec, &origin, false));
    if let Err(e) = done {
        crate::output::error(format_args!("reload of {} failed, nothing changed: {e:#}", path.display()));
    }
    let _ = sd_notify::notify(false, &[NotifyState::Ready]);
}
