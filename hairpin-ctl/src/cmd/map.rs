//! `hairpin-ctl map add|del|list`: the port-forward table.

use anyhow::{Context as _, bail};
use aya::maps::MapError;
use hairpin_common::{Endpoint, Ipv4Be, MappingKey, PortBe};
use serde::Serialize;

use crate::{
    cli::{self, MapCommand, Proto},
    dataplane::PinDir,
    expire, output,
};

const BPF_NOEXIST: u64 = 1;

fn to_endpoint(e: cli::Endpoint) -> Endpoint {
    Endpoint::new(Ipv4Be::from_octets(e.0.ip().octets()), PortBe::from_host(e.0.port()))
}

pub fn run(pins: &PinDir, cmd: MapCommand) -> anyhow::Result<()> {
    let mut maps = pins.open()?;
    match cmd {
        MapCommand::Add { proto, public, private } => {
            let cfg = maps.config()?;
            if public.0.ip().octets() != cfg.public_addr.octets() {
                bail!(
                    "{} is not this gateway's public address ({}): the mapping could never match",
                    public.0.ip(),
                    output::ip(cfg.public_addr)
                );
            }
            if private.0.ip().octets() == cfg.lan_addr.octets() {
                bail!("{} is the gateway's own LAN address: forward to a LAN host", private.0.ip());
            }
            let key = MappingKey::new(proto.number(), to_endpoint(public));
            // BPF_NOEXIST makes the duplicate check and the insert one atomic step.
            match maps.mappings.insert(&key, &to_endpoint(private), BPF_NOEXIST) {
                Ok(()) => {}
                Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::EEXIST) => {
                    let existing = maps.mappings.get(&key, 0).map(output::endpoint).ok();
                    bail!(
                        "mapping {} {} already exists (-> {}): delete it first",
                        proto.name(),
                        public.0,
                        existing.map_or("?".into(), |e| e.to_string())
                    );
                }
                Err(e) => return Err(e).context("adding the mapping"),
            }
            println!("added {} {} -> {}", proto.name(), public.0, private.0);
        }
        MapCommand::Del { proto, public } => {
            let key = MappingKey::new(proto.number(), to_endpoint(public));
            if maps.mappings.get(&key, 0).is_err() {
                bail!("no mapping {} {}", proto.name(), public.0);
            }
            maps.mappings.remove(&key).context("deleting the mapping")?;
            // Flows created by the mapping stop too: their original direction was addressed to it.
            let (flows, _) = expire::snapshot(&maps)?;
            let its: Vec<_> = flows
                .iter()
                .filter(|f| f.orig_key.proto == key.proto && f.orig_key.dst_ep() == to_endpoint(public))
                .collect();
            let removed = its.len();
            maps.remove_entries(its.iter().flat_map(|f| f.entries()))?;
            println!("deleted {} {} ({removed} flows removed)", proto.name(), public.0);
        }
        MapCommand::List(a) => {
            let mut rows: Vec<Row> = maps
                .mappings
                .iter()
                .filter_map(Result::ok)
                .filter_map(|(k, v)| {
                    Some(Row {
                        proto: Proto::from_number(k.proto)?,
                        public: output::endpoint(Endpoint::new(k.addr, k.port)).to_string(),
                        private: output::endpoint(v).to_string(),
                    })
                })
                .collect();
            rows.sort_by(|a, b| (a.proto.name(), &a.public).cmp(&(b.proto.name(), &b.public)));
            if a.json {
                return output::json(&rows);
            }
            if rows.is_empty() {
                println!("no mappings");
            }
            for r in rows {
                println!("{:<4} {:<21} -> {}", r.proto.name(), r.public, r.private);
            }
        }
    }
    Ok(())
}

#[derive(Serialize)]
struct Row {
    proto: Proto,
    public: String,
    private: String,
}
