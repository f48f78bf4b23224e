//! `hairpin-ctl map add|del|list`: forwards added, deleted and listed one at a time.

use anyhow::bail;
use hairpin_common::{CtEntry, Endpoint};
use serde::Serialize;

use crate::{
    cli::{JsonArg, map::MapCommand},
    conntrack::{self, Flow},
    dataplane::{Maps, PinDir},
    events,
    gateway::forwards::{self, AddError},
    output,
    spec::Proto,
};

pub fn run(pins: &PinDir, cmd: MapCommand) -> anyhow::Result<()> {
    let mut maps = pins.open()?;
    match cmd {
        MapCommand::Add { proto, public, private } => {
            forwards::check(&maps.config()?, public.0, private.0)?;
            let key = forwards::key(proto, maps.config()?.public_addr, public.0.port());
            match forwards::insert(&mut maps, &key, &forwards::endpoint(private.0)) {
                Ok(()) => say!("added {} {} -> {}", proto.name(), public.0, private.0),
                Err(AddError::AlreadyExists(to)) => {
                    bail!(
                        "mapping {} {} already exists (-> {}): delete it first",
                        proto.name(),
                        public.0,
                        output::endpoint(to)
                    )
                }
                Err(e) => bail!("{e}"),
            }
        }
        MapCommand::Del { proto, public } => {
            let key = forwards::key(proto, forwards::endpoint(public.0).addr, public.0.port());
            if maps.forward(&key).is_none() {
                bail!("no mapping {} {}", proto.name(), public.0);
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
    let both = |f: &&Flow, of: fn(&CtEntry) -> u64| of(&f.orig) + f.reply.as_ref().map_or(0, |(_, r)| of(r));
    let mut rows: Vec<Row> = maps
        .forwards()?
        .into_iter()
        .filter_map(|(k, v)| {
            let its: Vec<_> = flows.iter().filter(|f| f.made_by(&k)).collect();
            Some(Row {
                proto: Proto::from_number(k.proto)?,
                public: output::endpoint(Endpoint::new(k.addr, k.port)).to_string(),
                private: output::endpoint(v).to_string(),
                flows: its.len(),
                packets: its.iter().map(|f| both(f, |e| e.packets)).sum(),
                bytes: its.iter().map(|f| both(f, |e| e.bytes)).sum(),
            })
        })
        .collect();
    rows.sort_by(|a, b| (a.proto.name(), &a.public).cmp(&(b.proto.name(), &b.public)));
    if a.json {
        return output::json(&rows);
    }
    if rows.is_empty() {
        say!("no mappings");
        return Ok(());
    }
    let mut table = output::table(["proto", "public", "", "private", "flows", "packets", "bytes"]);
    for r in rows {
        table.add_row([
            r.proto.name().to_string(),
            r.public,
            "->".into(),
            r.private,
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
    /// Live flows it created,
    flows: usize,
    /// and what they have carried, both directions (IPv4 total lengths).
    packets: u64,
    bytes: u64,
}
