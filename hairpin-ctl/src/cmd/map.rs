//! `hairpin-ctl map add|del|list`: the port-forward table.

use anyhow::{Context as _, bail};
use clap::Subcommand;
use hairpin_common::{CtEntry, Endpoint, Ipv4Be, MappingKey, PortBe};
use serde::Serialize;

use crate::{
    cli::{HostPort, JsonArg, Proto},
    dataplane::{AddError, PinDir},
    expire, output, spec,
};

#[derive(Debug, Subcommand)]
pub enum MapCommand {
    /// Forward PUBLIC_IP:PORT to PRIVATE_IP:PORT for one protocol.
    ///
    /// Example: hairpin-ctl map add tcp 203.0.113.1:80 192.168.0.2:80
    /// The public address must be the gateway's public address, and the target a host in the
    /// LAN prefix other than the gateway. A public port a LAN host's masquerade binding holds
    /// is refused. (A configuration file's forwards are applied with `apply`.)
    Add {
        #[arg(value_enum)]
        proto: Proto,
        /// Public address and port, e.g. 203.0.113.1:80.
        #[arg(value_name = "PUBLIC_IP:PORT")]
        public: HostPort,
        /// LAN server address and port, e.g. 192.168.0.2:80.
        #[arg(value_name = "PRIVATE_IP:PORT")]
        private: HostPort,
    },
    /// Delete a mapping, and the flows it created (the forward stops at once).
    Del {
        #[arg(value_enum)]
        proto: Proto,
        #[arg(value_name = "PUBLIC_IP:PORT")]
        public: HostPort,
    },
    /// List the mappings, each with its live flows and the packets and bytes they have carried
    /// (both directions; flows that ended are no longer counted).
    List(JsonArg),
}

fn to_endpoint(e: HostPort) -> Endpoint {
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
            if let Some(why) = spec::target_problem(*private.0.ip(), &crate::gateway::addresses(&cfg)) {
                bail!("{why}");
            }
            let key = MappingKey::new(proto.number(), to_endpoint(public));
            let held = |maps: &crate::dataplane::Maps| maps.bound_ports.get(&key, 0).ok();
            let refuse = |holder| {
                anyhow::anyhow!(
                    "public {} port {} is held by {}'s masquerade binding: pick another port, or release it with \
                     `hairpin-ctl flows flush`",
                    proto.name(),
                    public.0.port(),
                    output::endpoint(holder)
                )
            };
            if let Some(holder) = held(&maps) {
                return Err(refuse(holder));
            }
            match maps.add_mapping(&key, &to_endpoint(private)) {
                Ok(()) => {}
                Err(AddError::AlreadyExists(to)) => {
                    bail!(
                        "mapping {} {} already exists (-> {}): delete it first",
                        proto.name(),
                        public.0,
                        output::endpoint(to)
                    )
                }
                Err(e) => return Err(e).context("adding the mapping"),
            }
            // Inserted, then checked again: the dataplane claims a bound port, then checks the
            // forwards, so between the two of them one sees the other (a binding made since the
            // first check loses the port, or this forward goes again).
            if let Some(holder) = held(&maps) {
                let _ = maps.mappings.remove(&key);
                return Err(refuse(holder));
            }
            say!("added {} {} -> {}", proto.name(), public.0, private.0);
        }
        MapCommand::Del { proto, public } => {
            let key = MappingKey::new(proto.number(), to_endpoint(public));
            if maps.mappings.get(&key, 0).is_err() {
                bail!("no mapping {} {}", proto.name(), public.0);
            }
            maps.mappings.remove(&key).context("deleting the mapping")?;
            // Flows created by the mapping stop too: their original direction was addressed to it.
            let (flows, _) = expire::snapshot(&maps)?;
            let its: Vec<_> = flows.iter().filter(|f| f.made_by(&key)).collect();
            let removed = its.len();
            maps.remove_entries(its.iter().flat_map(|f| f.entries()))?;
            crate::events::flushed(pins, its.iter().map(|f| (&f.orig_key, &f.orig)));
            say!("deleted {} {} ({removed} flows removed)", proto.name(), public.0);
        }
        MapCommand::List(a) => {
            // Flows per forward: those whose original direction was addressed to it.
            let (flows, _) = expire::snapshot(&maps)?;
            let mut rows: Vec<Row> = maps
                .mappings
                .iter()
                .filter_map(Result::ok)
                .filter_map(|(k, v)| {
                    let public = Endpoint::new(k.addr, k.port);
                    let its: Vec<_> = flows.iter().filter(|f| f.made_by(&k)).collect();
                    let both = |f: &&expire::Flow, of: fn(&CtEntry) -> u64| {
                        of(&f.orig) + f.reply.as_ref().map_or(0, |(_, r)| of(r))
                    };
                    Some(Row {
                        proto: Proto::from_number(k.proto)?,
                        public: output::endpoint(public).to_string(),
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
        }
    }
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
