//! `hairpin-ctl map add|del|list`: forwards added, deleted and listed one at a time.

use anyhow::bail;
use hairpin_common::{CtEntry, ProtoEndpoint};
use serde::Serialize;

use crate::{
    cli::{JsonArg, map::MapCommand},
    conntrack::{self, Flow},
    dataplane::{Maps, PinDir},
    events,
    gateway::forwards::{self, AddError, Forward, Origin},
    output,
    spec::Proto,
};

pub fn run(pins: &PinDir, cmd: MapCommand) -> anyhow::Result<()> {
    let mut maps = pins.open()?;
    match cmd {
        MapCommand::Add { proto, public, private, lifetime } => {
            forwards::check(&maps.config()?, public.0, private.0)?;
            let expires_ns = lifetime.map(|s| conntrack::boot_ns() + u64::from(s) * 1_000_000_000);
            let f = Forward { proto, public: public.0, to: private.0, origin: Origin::Runtime, expires_ns };
            match forwards::insert(&mut maps, &f) {
                Ok(()) => say!("added {} {} -> {}", proto.name(), public.0, private.0),
                Err(AddError::AlreadyExists(had)) => {
                    bail!(
                        "forward {} {} already exists (-> {}, {}): delete it first",
                        proto.name(),
                        public.0,
                        had.to,
                        had.origin.name()
                    )
                }
                Err(e) => bail!("{e}"),
            }
        }
        MapCommand::Del { proto, public } => {
            let key = ProtoEndpoint::new(proto.number(), forwards::endpoint(public.0));
            if maps.forward(&key).is_none() {
                bail!("no forward {} {}", proto.name(), public.0);
            }
            let gone = forwards::remove(&mut maps, &key)?;
            events::flushed(pins, gone.iter().map(|f| (&f.orig_key, &f.orig)));
            say!("deleted {} {} ({} flows removed)", proto.name(), public.0, gone.len());
        }
        MapCommand::List(a) => list(&maps, &a)?,
    }
    Ok(())
}

/// Each forward with its live flows (those whose original direction was addressed to it) and
/// what they have carried.
fn list(maps: &Maps, a: &JsonArg) -> anyhow::Result<()> {
    let (flows, _) = conntrack::snapshot(maps)?;
    let now = conntrack::boot_ns();
    let both = |f: &&Flow, of: fn(&CtEntry) -> u64| of(&f.orig) + f.reply.as_ref().map_or(0, |(_, r)| of(r));
    let rows: Vec<Row> = forwards::list(maps)?
        .into_iter()
        .map(|fw| {
            let its: Vec<_> = flows.iter().filter(|f| f.made_by(&fw.key())).collect();
            Row {
                proto: fw.proto,
                public: fw.public.to_string(),
                private: fw.to.to_string(),
                origin: fw.origin,
                expires_in_s: fw.expires_ns.map(|t| t.saturating_sub(now) / 1_000_000_000),
                flows: its.len(),
                packets: its.iter().map(|f| both(f, |e| e.packets)).sum(),
                bytes: its.iter().map(|f| both(f, |e| e.bytes)).sum(),
            }
        })
        .collect();
    if a.json {
        return output::json(&rows);
    }
    if rows.is_empty() {
        say!("no forwards");
        return Ok(());
    }
    let mut table = output::table(["proto", "public", "", "private", "origin", "flows", "packets", "bytes"]);
    for r in rows {
        let origin = match r.expires_in_s {
            Some(s) => format!("{} (expires in {s}s)", r.origin.name()),
            None => r.origin.name().to_string(),
        };
        table.add_row([
            r.proto.name().to_string(),
            r.public,
            "->".into(),
            r.private,
            origin,
            r.flows.to_string(),
            r.packets.to_string(),
            output::bytes(r.bytes),
        ]);
    }
    output::print_table(&table);
    Ok(())
}

#[derive(Serialize)]
struct Row {
    proto: Proto,
    public: String,
    private: String,
    /// `file` (the configuration file's) or `runtime` (`map add`).
    origin: Origin,
    /// Seconds before it is removed (`map add --lifetime`).
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_in_s: Option<u64>,
    /// Live flows it created,
    flows: usize,
    /// and what they have carried, both directions (IPv4 total lengths).
    packets: u64,
    bytes: u64,
}
