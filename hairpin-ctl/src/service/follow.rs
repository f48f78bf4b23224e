//! What `run` follows as the kernel announces it (rtnetlink): a WAN address that DHCP or PPPoE
//! changes, when no public address was given (as netfilter's masquerade does), and an
//! interface that goes away and comes back (the dataplane is attached again, as it was).

use anyhow::Context as _;
use hairpin_common::CFG_F_PUBLIC_FROM_WAN;

use crate::{
    dataplane::{Maps, PinDir},
    gateway::{
        self, Source,
        apply::reconcile,
        forwards::{Forward, Origin},
    },
    netif::{self, Change},
    output,
    spec::Spec,
};

pub struct Follow {
    /// The gateway as it was last seen whole: what is attached again when a missing interface
    /// returns, with the forwards added at runtime.
    spec: Spec,
    runtime: Vec<Forward>,
    /// Interfaces gone, by name.
    missing: Vec<String>,
    /// The WAN interface was last seen without an address (said once).
    wan_bare: bool,
    /// An attempt to attach again removed the pins, then failed.
    took_down: bool,
}

/// What following a change did.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Nothing,
    /// The dataplane was attached again: its pins are new.
    Reattached,
}

impl Follow {
    pub fn new(pins: &PinDir) -> anyhow::Result<Self> {
        let maps = pins.open()?;
        Ok(Self {
            spec: gateway::live::read(pins, &maps)?,
            runtime: runtime(&maps)?,
            missing: Vec::new(),
            wan_bare: false,
            took_down: false,
        })
    }

    /// Takes in what the kernel announced.
    pub fn changes(&mut self, pins: &PinDir, changes: &[Change]) -> anyhow::Result<Outcome> {
        if self.waiting() {
            return Ok(self.retry(pins));
        }
        let maps = pins.open()?;
        let cfg = maps.config()?;
        for c in changes {
            if let Change::LinkGone(i) = c
                && (*i == cfg.ifindex[0] || *i == cfg.ifindex[1])
            {
                self.gone(pins, &maps, &cfg, *i)?;
            }
        }
        if self.waiting() {
            drop(maps);
            return Ok(self.retry(pins));
        }
        self.renamed(&cfg, changes);
        if self.mac_changed(pins, maps, &cfg, changes)? {
            return Ok(Outcome::Nothing);
        }
        if changes.contains(&Change::Address) && cfg.flags & CFG_F_PUBLIC_FROM_WAN != 0 {
            self.wan_address(pins, &cfg)?;
        }
        Ok(Outcome::Nothing)
    }

    /// Renamed (`ip link set ... name`): the programs stay with the device; the name is what
    /// the configuration file must now say.
    fn renamed(&mut self, cfg: &hairpin_common::Config, changes: &[Change]) {
        for c in changes {
            if let Change::Link(i, name) = c
                && !name.is_empty()
                && (*i == cfg.ifindex[0] || *i == cfg.ifindex[1])
            {
                let (key, old) = if *i == cfg.ifindex[0] {
                    ("lan.interface", &mut self.spec.lan.interface)
                } else {
                    ("wan.interface", &mut self.spec.wan.interface)
                };
                if old != name {
                    say!(
                        "hairpin run: {old} (ifindex {i}) is now named {name}: the dataplane stays on it; {key} in a \
                         configuration file must say {name:?}"
                    );
                    *old = name.clone();
                }
            }
        }
    }

    /// An interface's MAC address changed (`ip link set ... address`): until the dataplane has
    /// the new one, frames sent to it are left to the kernel (see `Config::addressed_to_us`).
    /// Returns whether it followed one.
    fn mac_changed(
        &mut self,
        pins: &PinDir,
        maps: Maps,
        cfg: &hairpin_common::Config,
        changes: &[Change],
    ) -> anyhow::Result<bool> {
        for (ifindex, name, have) in [
            (cfg.ifindex[0], &self.spec.lan.interface, cfg.mac[0]),
            (cfg.ifindex[1], &self.spec.wan.interface, cfg.mac[1]),
        ] {
            let announced = changes.iter().any(|c| matches!(c, Change::Link(i, _) if *i == ifindex));
            // Asked of the kernel only for an interface a link event named.
            if announced
                && let Ok(now) = netif::link_facts(ifindex).map(|l| l.mac)
                && now != have
            {
                say!("hairpin run: {name}'s MAC address is now {} (was {})", output::mac(now), output::mac(have));
                let spec = gateway::live::read(pins, &maps)?;
                drop(maps);
                say_done(&reconcile(pins, &spec, &Source::Live, false).context("following the MAC address")?);
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The WAN interface's address changed and the public address follows it (no public
    /// address given), as netfilter's masquerade does.
    fn wan_address(&mut self, pins: &PinDir, cfg: &hairpin_common::Config) -> anyhow::Result<()> {
        let wan = &self.spec.wan.interface;
        let old = output::ip(cfg.public_addr);
        match netif::primary_ipv4(wan) {
            Ok(ip) if ip != old => {
                self.wan_bare = false;
                say!("hairpin run: {wan}'s address is now {ip} (was {old}): the public address follows");
                let mut spec = gateway::live::read(pins, &pins.open()?)?;
                spec.wan.public_address = None;
                say_done(&reconcile(pins, &spec, &Source::Live, false).context("following the WAN address")?);
            }
            Ok(_) => self.wan_bare = false,
            Err(_) if !self.wan_bare => {
                self.wan_bare = true;
                say!("hairpin run: {wan} has no IPv4 address: the public address stays {old} until it has one");
            }
            Err(_) => {}
        }
        Ok(())
    }

    /// Notices a gateway interface gone whose announcement was lost.
    pub fn check_links(&mut self, pins: &PinDir) -> anyhow::Result<()> {
        let maps = pins.open()?;
        let cfg = maps.config()?;
        for i in [cfg.ifindex[0], cfg.ifindex[1]] {
            if i != 0 && netif::name(i).is_none() && !self.waiting() {
                self.gone(pins, &maps, &cfg, i)?;
            }
        }
        Ok(())
    }

    /// The interface `ifindex` went away: said, and remembered to attach the dataplane again.
    fn gone(&mut self, pins: &PinDir, maps: &Maps, cfg: &hairpin_common::Config, ifindex: u32) -> anyhow::Result<()> {
        // Keep what is live (forwards, settings), under the names the interfaces had.
        let mut spec = gateway::live::read(pins, maps)?;
        (spec.lan.interface, spec.wan.interface) = (self.spec.lan.interface.clone(), self.spec.wan.interface.clone());
        self.spec = spec;
        self.runtime = runtime(maps)?;
        let name = if ifindex == cfg.ifindex[0] { &self.spec.lan.interface } else { &self.spec.wan.interface };
        if self.missing.contains(name) {
            return Ok(());
        }
        say!(
            "hairpin run: {name} (ifindex {ifindex}) is gone, with the dataplane's programs on it; it is attached again \
             when {name} returns"
        );
        self.missing.push(name.clone());
        Ok(())
    }

    /// Whether an interface is missing (its dataplane is to be attached again).
    pub fn waiting(&self) -> bool {
        !self.missing.is_empty()
    }

    /// Whether the pins are gone because an attempt to attach again took them down and
    /// failed (not because `down` removed them).
    pub fn took_down(&self) -> bool {
        self.took_down
    }

    /// Attaches the dataplane again if every missing interface is back. A failure is logged
    /// and tried again at the next change or sweep: `run` carries on.
    pub fn retry(&mut self, pins: &PinDir) -> Outcome {
        let back = [&self.spec.lan.interface, &self.spec.wan.interface].iter().all(|n| netif::ifindex(n).is_ok());
        if !back {
            return Outcome::Nothing;
        }
        match self.reattach(pins) {
            Ok(()) => Outcome::Reattached,
            Err(e) => {
                crate::output::error(format_args!("{e:#}; trying again at the next sweep"));
                Outcome::Nothing
            }
        }
    }

    /// Takes down what is left of the dataplane and attaches it again from the spec.
    fn reattach(&mut self, pins: &PinDir) -> anyhow::Result<()> {
        let missing = self.missing.join(" and ");
        gateway::teardown::teardown(pins)?;
        self.took_down = true;
        let up = gateway::attach::bring_up(pins, &self.spec, &Source::Live).context("attaching the dataplane again")?;
        (self.took_down, self.missing) = (false, Vec::new());
        // The runtime forwards too, on the public address as attached now.
        let mut maps = pins.open()?;
        for f in &self.runtime {
            if let Err(e) = gateway::forwards::insert(&mut maps, &f.moved_to(up.addrs.public_ip)) {
                warn!("forward {} {} -> {} (map add) could not be added again: {e}", f.proto.name(), f.public, f.to);
            }
        }
        say!("hairpin run: {missing} is back: the dataplane is attached again, as it was (its flows were lost)");
        Ok(())
    }
}

/// The forwards added at runtime (`map add`), which the spec does not hold.
fn runtime(maps: &Maps) -> anyhow::Result<Vec<Forward>> {
    Ok(gateway::forwards::list(maps)?.into_iter().filter(|f| f.origin == Origin::Runtime).collect())
}

/// What following a change applied, in `run`'s log.
fn say_done(r: &gateway::apply::Reconciled) {
    for line in r.lines() {
        say!("{line}");
    }
}
