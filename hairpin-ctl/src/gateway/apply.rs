//! Moving the live gateway to a new spec: [`reconcile`] plans ([`super::plan`]) and
//! [`Plan::apply`] writes, in the order that never leaves a kept forward missing.

use anyhow::{Context as _, bail};
use hairpin_common::{Config, CtEntry, FlowKey, Ipv4Be};

use super::{
    Source,
    forwards::{self, Forward},
    plan::{self, Change, Plan},
};
use crate::{
    conntrack::{self, Flow},
    dataplane::{Maps, PinDir},
    events,
    spec::Spec,
};

/// What applying a plan did.
#[derive(Debug, Default)]
pub struct Applied {
    /// The original entries of the flows removed.
    pub removed: Vec<(FlowKey, CtEntry)>,
}

/// What [`reconcile`] did.
#[derive(Debug)]
pub enum Reconciled {
    Unchanged,
    /// Planned, not applied.
    DryRun(Vec<Change>),
    Applied(Vec<Change>, Applied),
}

impl Reconciled {
    /// What a command prints of it: the changes, then what was done.
    pub fn lines(&self) -> Vec<String> {
        let (changes, last) = match self {
            Reconciled::Unchanged => return vec!["no changes".into()],
            Reconciled::DryRun(c) => (c, "(dry run: nothing changed)".to_string()),
            Reconciled::Applied(c, done) => (c, format!("applied ({} flows removed)", done.removed.len())),
        };
        changes.iter().map(ToString::to_string).chain([last]).collect()
    }
}

/// Moves the live dataplane to `spec` (or, with `dry_run`, only plans it). Settings fixed while
/// up are refused, naming each, and nothing changes. Flows removed are told to `flows --watch`.
pub fn reconcile(pins: &PinDir, spec: &Spec, source: &Source, dry_run: bool) -> anyhow::Result<Reconciled> {
    let mut maps = pins.open()?;
    let live = super::live::read(pins, &maps)?;
    let fixed = plan::fixed_differences(&live, spec);
    if !fixed.is_empty() {
        bail!("{}", join(&fixed));
    }
    let r = super::resolve(spec, source)?;
    let plan = plan::plan(&maps, &live, spec, &r)?;
    if !plan.refused.is_empty() {
        bail!("{}", join(&plan.refused));
    }
    if plan.is_empty() {
        return Ok(Reconciled::Unchanged);
    }
    if dry_run {
        return Ok(Reconciled::DryRun(plan.changes));
    }
    let done = plan.apply(&mut maps)?;
    events::flushed(pins, done.removed.iter().map(|(k, e)| (k, e)));
    Ok(Reconciled::Applied(plan.changes, done))
}

fn join<T: ToString>(items: &[T]) -> String {
    items.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}

impl Plan {
    /// Moves the dataplane: new forwards go in first and retargeted ones are replaced in place
    /// (each one atomic), then the configuration is written, and only then do removed forwards
    /// go, with their flows. A failure before the configuration write undoes what was done.
    pub fn apply(&self, maps: &mut Maps) -> anyhow::Result<Applied> {
        if let Some(r) = self.refused.first() {
            bail!("{r}");
        }
        let mut added = Vec::new();
        let mut replaced = Vec::new();
        let undo = |maps: &mut Maps, added: &[&Forward], replaced: &[&Forward]| {
            for f in added {
                forwards::delete(maps, &f.key());
            }
            for old in replaced {
                let _ = forwards::replace(maps, old);
            }
        };
        for f in &self.add {
            if let Err(e) = forwards::insert(maps, f) {
                undo(maps, &added, &replaced);
                return Err(e).context("adding a forward (nothing was changed)");
            }
            added.push(f);
        }
        for (new, old) in &self.replace {
            if let Err(e) = forwards::replace(maps, new) {
                undo(maps, &added, &replaced);
                return Err(e).context("changing a forward (nothing was changed)");
            }
            replaced.push(old);
        }
        if let Some(cfg) = &self.config
            && let Err(e) = maps.replace_config(&self.old, cfg)
        {
            undo(maps, &added, &replaced);
            return Err(e).context("writing the configuration (nothing was changed)");
        }
        for f in &self.remove {
            forwards::delete(maps, &f.key());
        }
        // From here the new settings are live: a failure leaves them so, and says it.
        self.remove_stale(maps).context("the new settings are live, but removing what they replace failed")
    }

    /// The flows made by removed forwards, or by replaced ones towards their old targets, or
    /// (addresses changed) made for the old addresses, and the bindings of the old public
    /// address.
    fn remove_stale(&self, maps: &mut Maps) -> anyhow::Result<Applied> {
        let (flows, lone) = conntrack::snapshot(maps)?;
        let (old, new) = (self.old, self.config.unwrap_or(self.old));
        let stale = |k: &FlowKey| self.flush && (stale_addr(&old, &new, k.src) || stale_addr(&old, &new, k.dst));
        let gone: Vec<&Flow> = flows
            .iter()
            .filter(|f| {
                stale(&f.orig_key)
                    || stale(&f.orig.xlate)
                    || self.remove.iter().any(|r| f.made_by(&r.key()))
                    || self.replace.iter().any(|(new, old)| {
                        new.to != old.to && f.made_by(&new.key()) && f.orig.xlate.dst_ep() == forwards::endpoint(old.to)
                    })
            })
            .collect();
        let lone: Vec<_> = lone.into_iter().filter(|(k, e)| stale(k) || stale(&e.xlate)).collect();
        maps.remove_entries(gone.iter().flat_map(|f| f.entries()).chain(lone))?;
        if self.flush && new.public_addr != old.public_addr {
            // Ports bound on the old public address, and the bindings that hold them; those
            // the dataplane makes on the new one meanwhile stay.
            maps.unbind_address(old.public_addr)?;
        }
        Ok(Applied { removed: gone.iter().map(|f| (f.orig_key, f.orig)).collect() })
    }
}

/// Whether `a` was one of the old configuration's addresses and is not the new one's.
fn stale_addr(old: &Config, new: &Config, a: Ipv4Be) -> bool {
    (a == old.public_addr && a != new.public_addr)
        || (a == old.lan_addr && a != new.lan_addr)
        || (old.in_lan(a) && !new.in_lan(a))
}
