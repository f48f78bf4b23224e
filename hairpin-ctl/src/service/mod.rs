//! `run`, the long-running controller: attaches (or adopts the pinned dataplane), then serves it
//! until told to stop, leaving it running either way. The loop waits on its wake-up sources
//! and hands each wake to one handler: the sweep's tick, the dataplane's event ring, what the
//! kernel announces of the interfaces (rtnetlink), a reload (SIGHUP), a stop. Another source
//! (a mapping protocol's socket) is one more arm of [`Service::next`] and one more handler.

pub mod follow;
mod ring;
pub mod targets;

use std::{path::PathBuf, time::Duration};

use anyhow::Context as _;
use aya::maps::{MapData, RingBuf};
use sd_notify::NotifyState;
use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::{Signal, SignalKind, signal},
};

use crate::{
    dataplane::{Maps, PinDir},
    events::{FlowEvent, Hub, Seen},
    gateway::{self, Source, apply::Reconciled},
    netif::{self, Change},
    spec::Overrides,
    sweep,
};
use follow::{Follow, Outcome};
use targets::Targets;

/// What `run` was given.
pub struct Options {
    /// The configuration file: applied at start and at every SIGHUP.
    pub config: Option<PathBuf>,
    /// Settings given as flags (without a file), and the flag that sets each spec key.
    pub overrides: Overrides,
    pub flag: fn(&str) -> String,
    pub json_log: bool,
    /// Log every flow that starts or ends.
    pub log_flows: bool,
    pub sweep_interval: Duration,
}

/// What woke the loop up.
enum Wake {
    Tick,
    Events,
    Kernel(Vec<Change>),
    Reload,
    Stop,
}

/// The stop signals and the reload signal, handled from before attaching: a stop asked for
/// while attaching or adopting is then a clean stop after it, not the default action's kill.
struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Self> {
        Ok(Self {
            term: signal(SignalKind::terminate()).context("SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("SIGINT handler")?,
            hup: signal(SignalKind::hangup()).context("SIGHUP handler")?,
        })
    }
}

/// The pinned dataplane as `run` serves it: its maps, its event ring, what the kernel says of
/// its interfaces, and the lock on its pin directory. Opened again when the dataplane is
/// attached again (new pins).
struct Serving {
    maps: Maps,
    events: AsyncFd<RingBuf<MapData>>,
    targets: Targets,
    _lock: nix::fcntl::Flock<std::fs::File>,
}

impl Serving {
    /// Opens what `lock` (held on `pins`) covers.
    fn open(pins: &PinDir, lock: nix::fcntl::Flock<std::fs::File>) -> anyhow::Result<Self> {
        let maps = pins.open()?;
        let targets = Targets::new(&maps)?;
        Ok(Self { maps, events: ring::open(pins)?, targets, _lock: lock })
    }
}

pub struct Service<'a> {
    pins: &'a PinDir,
    o: &'a Options,
    serving: Serving,
    follow: Follow,
    hub: Hub,
    seen: Seen,
}

pub async fn run(pins: &PinDir, o: &Options) -> anyhow::Result<()> {
    let mut signals = Signals::new()?;
    crate::output::log(o.json_log);
    pins.check_visible()?;
    // Subscribed before attaching: no change between the two is missed.
    let changes = netif::Changes::subscribe()?;
    // SAFETY: the subscription owns its socket's fd, which stays open and the same for as long
    // as it lives, i.e. as long as the AsyncFd that owns it.
    let mut kernel = unsafe { AsyncFd::register_with_interest(changes, Interest::READABLE) }
        .map_err(std::io::Error::from)
        .context("watching rtnetlink")?;
    let lock = start(pins, o)?;
    let mut s = Service {
        pins,
        o,
        serving: Serving::open(pins, lock)?,
        follow: Follow::new(pins)?,
        hub: Hub::start(pins)?,
        seen: Seen::default(),
    };
    let mut tick = tokio::time::interval(o.sweep_interval);
    // Not under systemd, this does nothing.
    let _ = sd_notify::notify(false, &[NotifyState::Ready]);
    let orphaned = loop {
        let stop = match s.next(&mut tick, &mut signals, &mut kernel).await? {
            Wake::Tick => s.on_tick()?,
            Wake::Events => None,
            Wake::Kernel(changes) => s.on_kernel(&changes)?,
            Wake::Reload => s.on_reload(),
            Wake::Stop => Some(false),
        };
        if let Some(orphaned) = stop {
            break orphaned;
        }
    };
    s.stop(orphaned);
    Ok(())
}

/// Attaches, or adopts a dataplane already pinned here (an earlier `up` or `run`), keeping its
/// flows, bindings and forwards and applying what was given (a file, or flags). Returns the
/// lock that makes this `run` the pin directory's only one (taken before anything changes).
fn start(pins: &PinDir, o: &Options) -> anyhow::Result<nix::fcntl::Flock<std::fs::File>> {
    if !pins.exists() {
        let (spec, source) = match &o.config {
            Some(path) => Source::load(path.clone())?,
            None => {
                let spec = o
                    .overrides
                    .spec()
                    .context("give --lan and --wan (the gateway's two interfaces), or --config FILE")?;
                (spec, Source::Flags { flag: o.flag })
            }
        };
        for line in gateway::attach::bring_up(pins, &spec, &source)?.summary() {
            say!("{line}");
        }
        return pins.lock();
    }
    let lock = pins.lock()?;
    let done = match &o.config {
        Some(path) => {
            let (spec, source) = Source::load(path.clone())?;
            Some(gateway::apply::reconcile(pins, &spec, &source, false)?)
        }
        None => {
            let mut spec = gateway::live::read(pins, &pins.open()?)?;
            let given = !o.overrides.apply(&mut spec).is_empty();
            let source = Source::Flags { flag: o.flag };
            given.then(|| gateway::apply::reconcile(pins, &spec, &source, false)).transpose()?
        }
    };
    if let Some(done) = done {
        say_reconciled(&done);
    }
    say!("hairpin run: adopted the dataplane pinned at {}", pins.root.display());
    Ok(lock)
}

fn say_reconciled(r: &Reconciled) {
    for line in r.lines() {
        say!("{line}");
    }
}

impl Service<'_> {
    /// Waits for the next wake-up.
    async fn next(
        &mut self,
        tick: &mut tokio::time::Interval,
        signals: &mut Signals,
        kernel: &mut AsyncFd<netif::Changes>,
    ) -> anyhow::Result<Wake> {
        Ok(tokio::select! {
            _ = tick.tick() => Wake::Tick,
            ready = self.serving.events.readable_mut() => {
                let mut ready = ready.context("waiting on the dataplane's event ring")?;
                // Cleared only once drained: if more wait, this branch is ready again at once,
                // beside the others.
                if !ring::take_events(ready.get_inner_mut(), &self.hub, &mut self.seen, self.o.log_flows) {
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
            _ = signals.hup.recv() => Wake::Reload,
            _ = signals.term.recv() => Wake::Stop,
            _ = signals.int.recv() => Wake::Stop,
        })
    }

    /// The sweep's tick: an interface gone is attached again once back; then what the kernel
    /// says of the interfaces, then the flows. `Some(true)`: the pins are gone, stop.
    fn on_tick(&mut self) -> anyhow::Result<Option<bool>> {
        self.hub.send_own();
        // An interface gone: attached again once it is back (if an announcement was missed, or
        // the last try failed, here).
        if self.follow.waiting() && (self.pins.is_up() || self.follow.took_down()) {
            if self.follow.retry(self.pins) == Outcome::Reattached {
                self.serving = Serving::open(self.pins, self.pins.lock()?)?;
            }
            return Ok(None);
        }
        if !self.pins.is_up() {
            return Ok(Some(true));
        }
        // An interface gone without the announcement reaching us (a burst of them).
        if let Err(e) = self.follow.check_links(self.pins) {
            crate::output::error(format_args!("{e:#}"));
        }
        if self.follow.waiting() {
            return Ok(None);
        }
        self.serving.targets.check(&mut self.serving.maps)?;
        self.sweep()?;
        Ok(None)
    }

    /// Removes what expired (forwards given a lifetime, then flows), and tells the watchers
    /// (and the log, with `--log-flows`).
    fn sweep(&mut self) -> anyhow::Result<()> {
        let now = crate::conntrack::boot_ns();
        let (due, flows) = gateway::forwards::expire(&mut self.serving.maps, now)?;
        for f in &due {
            say!("forward {} {} -> {} expired: removed, with its flows", f.proto.name(), f.public, f.to);
        }
        for f in &flows {
            self.hub.send(&FlowEvent::ended("expired", &f.orig_key, &f.orig));
        }
        let mut s = sweep::sweep(&mut self.serving.maps, now)
            .with_context(|| format!("sweeping the flows pinned at {}", self.pins.root.display()))?;
        let swept: std::collections::HashSet<_> = s.ended.iter().map(|(k, _, _)| *k).collect();
        let mut ended: Vec<FlowEvent> = s.ended.iter().map(|(k, e, why)| FlowEvent::ended(why, k, e)).collect();
        ended.extend(self.seen.update(std::mem::take(&mut s.alive), &swept, &self.hub.take_flushed()));
        for ev in &ended {
            if self.o.log_flows {
                say!("flow {ev}");
            }
            self.hub.send(ev);
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
        Ok(())
    }

    /// What the kernel changed is followed as far as it can be; a failure is said, and `run`
    /// goes on with what is live.
    fn on_kernel(&mut self, changes: &[Change]) -> anyhow::Result<Option<bool>> {
        if changes.is_empty() || (!self.pins.is_up() && !self.follow.took_down()) {
            return Ok(None);
        }
        let outcome = self.follow.changes(self.pins, changes).unwrap_or_else(|e| {
            crate::output::error(format_args!("{e:#}"));
            Outcome::Nothing
        });
        self.hub.send_own();
        if outcome == Outcome::Reattached {
            self.serving = Serving::open(self.pins, self.pins.lock()?)?;
        }
        Ok(None)
    }

    /// SIGHUP: re-reads the configuration file and applies it. A file that fails a check is
    /// reported and changes nothing; `run` goes on with what is live.
    fn on_reload(&mut self) -> Option<bool> {
        let Some(path) = &self.o.config else {
            warn!("SIGHUP: no --config file to re-read; nothing changed");
            return None;
        };
        let _ = sd_notify::notify(false, &[NotifyState::Reloading]);
        say!("hairpin run: SIGHUP: applying {}", path.display());
        let done = Source::load(path.clone())
            .and_then(|(spec, source)| gateway::apply::reconcile(self.pins, &spec, &source, false));
        match done {
            Ok(r) => say_reconciled(&r),
            Err(e) => crate::output::error(format_args!("reload of {} failed, nothing changed: {e:#}", path.display())),
        }
        self.hub.send_own();
        let _ = sd_notify::notify(false, &[NotifyState::Ready]);
        None
    }

    fn stop(mut self, orphaned: bool) {
        let _ = sd_notify::notify(false, &[NotifyState::Stopping]);
        // Whatever the dataplane reported before the signal is still printed.
        let _ = ring::take_events(self.serving.events.get_mut(), &self.hub, &mut self.seen, self.o.log_flows);
        let root = self.pins.root.display();
        match orphaned {
            true => say!("hairpin run: the pins at {root} were removed (hairpin-ctl down?): stopping"),
            false => say!("hairpin run: stopping; the dataplane keeps running (pins at {root})"),
        }
    }
}
