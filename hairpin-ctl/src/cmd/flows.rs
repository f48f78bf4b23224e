//! `hairpin-ctl flows`: the conntrack table, one entry per direction of each flow, with state
//! and remaining lifetime, filtered like `conntrack -L`; `flows del` removes one flow, `flows
//! flush` all of them.

use std::net::{Ipv4Addr, SocketAddrV4};

use anyhow::bail;
use clap::{Args, Subcommand, ValueEnum};
use hairpin_common::{CT_F_HAIRPIN, CT_F_MASQ, CtEntry, FlowKey, expiry};
use serde::Serialize;

use crate::{
    dataplane::PinDir,
    events,
    expire::{self, Flow},
    output::{self, Kind},
};

#[derive(Debug, Args)]
pub struct FlowsArgs {
    #[command(subcommand)]
    pub action: Option<FlowsAction>,
    #[command(flatten)]
    pub filter: Filter,
    /// Print flows as they start and end (`new`, `end` with why: expired, evicted, flushed),
    /// as `run` sees them, until interrupted; with --json, one JSON object a line. Needs a
    /// `run` serving the pin directory.
    #[arg(long)]
    pub watch: bool,
    /// Print a JSON array, one object per entry.
    #[arg(long)]
    pub json: bool,
}

/// Which flows to list: every condition given must hold (of the flow's original direction, as
/// it arrived at the gateway, or of its translation).
#[derive(Debug, Args, Default, PartialEq)]
pub struct Filter {
    /// Only this protocol.
    #[arg(long, value_enum)]
    pub proto: Option<FlowProto>,
    /// Only flows from this address (ADDR, or ADDR:PORT), before or after translation.
    #[arg(long, value_name = "ADDR[:PORT]", value_parser = parse_addr)]
    pub src: Option<AddrPort>,
    /// Only flows to this address (ADDR, or ADDR:PORT), before or after translation.
    #[arg(long, value_name = "ADDR[:PORT]", value_parser = parse_addr)]
    pub dst: Option<AddrPort>,
    /// Only flows with this port (or ICMP echo id) anywhere in their tuples.
    #[arg(long, value_name = "PORT")]
    pub port: Option<u16>,
    /// Only flows of this kind: forward (from the internet to a port-forward), hairpin (a LAN
    /// host to the public address) or masquerade (a LAN host to the internet).
    #[arg(long, value_enum)]
    pub kind: Option<Kind>,
}

#[derive(Debug, Subcommand)]
pub enum FlowsAction {
    /// Remove one flow: both directions, their rewrites, and the LAN host's public port if no
    /// other flow holds it. Give the tuple of either direction as `flows` shows it (ICMP: the
    /// echo id as the port, 0 on the other side).
    Del {
        #[arg(value_enum)]
        proto: FlowProto,
        #[arg(value_name = "SRC:PORT")]
        src: SocketAddrV4,
        #[arg(value_name = "DST:PORT")]
        dst: SocketAddrV4,
    },
    /// Remove every flow (both directions and their rewrites) and every binding. Established
    /// connections through the gateway break; port-forwards and masquerade create new flows
    /// for new traffic, and LAN hosts may get other public ports.
    Flush,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FlowProto {
    Tcp,
    Udp,
    Icmp,
}

impl FlowProto {
    fn number(self) -> u8 {
        use hairpin_common::consts::{IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP};
        match self {
            FlowProto::Tcp => IPPROTO_TCP,
            FlowProto::Udp => IPPROTO_UDP,
            FlowProto::Icmp => IPPROTO_ICMP,
        }
    }
}

/// An address, and maybe a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddrPort {
    pub addr: Ipv4Addr,
    pub port: Option<u16>,
}

impl AddrPort {
    fn matches(&self, ep: SocketAddrV4) -> bool {
        *ep.ip() == self.addr && self.port.is_none_or(|p| p == ep.port())
    }
}

fn parse_addr(s: &str) -> Result<AddrPort, String> {
    if let Ok(sa) = s.parse::<SocketAddrV4>() {
        return Ok(AddrPort { addr: *sa.ip(), port: Some(sa.port()) });
    }
    s.parse().map(|addr| AddrPort { addr, port: None }).map_err(|_| format!("'{s}' is not an IPv4 ADDR or ADDR:PORT"))
}

impl Filter {
    fn matches(&self, f: &Flow) -> bool {
        let (k, x) = (&f.orig_key, &f.orig.xlate);
        let srcs = [output::src(k), output::src(x)];
        let dsts = [output::dst(k), output::dst(x)];
        self.proto.is_none_or(|p| p.number() == k.proto)
            && self.kind.is_none_or(|kind| kind == Kind::of(f.orig.flags))
            && self.src.is_none_or(|a| srcs.iter().any(|&ep| a.matches(ep)))
            && self.dst.is_none_or(|a| dsts.iter().any(|&ep| a.matches(ep)))
            && self.port.is_none_or(|p| srcs.iter().chain(&dsts).any(|ep| ep.port() == p))
    }
}

#[derive(Serialize)]
struct Row {
    /// tcp, udp or icmp (echo, with the identifier in place of the ports).
    proto: &'static str,
    direction: &'static str,
    kind: Kind,
    hairpin: bool,
    masquerade: bool,
    /// TCP state, or "active".
    state: &'static str,
    /// The kernel has forwarded packets of both directions (its filter let the flow through):
    /// only then does the fast path serve it.
    confirmed: bool,
    /// The tuple as it arrives at the gateway.
    src: String,
    dst: String,
    /// The tuple as it leaves the gateway.
    translated_src: String,
    translated_dst: String,
    /// What this direction has carried (IPv4 total lengths; a GSO super-packet counts its
    /// segments).
    packets: u64,
    bytes: u64,
    age_s: f64,
    idle_s: f64,
    expires_in_s: f64,
}

pub fn run(pins: &PinDir, a: FlowsArgs) -> anyhow::Result<()> {
    let mut maps = pins.open()?;
    match a.action {
        Some(FlowsAction::Flush) => {
            // Bindings first, then the flows: a flow the dataplane makes meanwhile on a released
            // binding is undone by the dataplane itself (it checks the binding once the flow is
            // in), so no public port ends up with two LAN hosts.
            let public = maps.config()?.public_addr;
            let bindings: Vec<_> = maps.bindings.iter().collect::<Result<_, _>>()?;
            let released = bindings.len();
            maps.unbind(bindings, public)?;
            let (flows, lone) = expire::snapshot(&maps)?;
            maps.remove_entries(flows.iter().flat_map(expire::Flow::entries).chain(lone))?;
            events::flushed(pins, flows.iter().map(|f| (&f.orig_key, &f.orig)));
            say!("flushed {} flows and {released} bindings", flows.len());
            return Ok(());
        }
        Some(FlowsAction::Del { proto, src, dst }) => {
            let (flows, _) = expire::snapshot(&maps)?;
            let is = |k: &FlowKey| k.proto == proto.number() && output::src(k) == src && output::dst(k) == dst;
            let Some(flow) = flows.iter().find(|f| is(&f.orig_key) || f.reply.as_ref().is_some_and(|(rk, _)| is(rk)))
            else {
                bail!("no {} flow {src} -> {dst} (see `hairpin-ctl flows`)", output::proto_name(proto.number()));
            };
            let released = expire::delete(&mut maps, flow)?;
            events::flushed(pins, [(&flow.orig_key, &flow.orig)]);
            say!(
                "deleted {} flow {src} -> {dst}{}",
                output::proto_name(proto.number()),
                match released {
                    0 => String::new(),
                    n => format!(" ({n} binding released)"),
                }
            );
            return Ok(());
        }
        None if a.watch => return events::watch(pins, a.json),
        None => {}
    }
    let timeouts = maps.config()?.timeouts;
    let now = expire::boot_ns();
    let secs = |ns: u64| ns as f64 / 1e9;
    let (mut flows, lone) = expire::snapshot(&maps)?;
    flows.retain(|f| a.filter.matches(f));
    // Stable order: by protocol and original tuple.
    flows.sort_by_key(|f| {
        let k = f.orig_key;
        (k.proto, k.src.octets(), k.sport.host(), k.dst.octets(), k.dport.host())
    });
    let mut rows = Vec::new();
    let mut push = |k: &FlowKey, e: &CtEntry, kind, direction, state, confirmed, left| {
        rows.push(Row {
            confirmed,
            proto: output::proto_name(k.proto),
            direction,
            kind,
            hairpin: e.flags & CT_F_HAIRPIN != 0,
            masquerade: e.flags & CT_F_MASQ != 0,
            state,
            src: output::src(k).to_string(),
            dst: output::dst(k).to_string(),
            translated_src: output::src(&e.xlate).to_string(),
            translated_dst: output::dst(&e.xlate).to_string(),
            packets: e.packets,
            bytes: e.bytes,
            age_s: secs(now.saturating_sub(e.created_ns)),
            idle_s: secs(now.saturating_sub(e.last_seen_ns)),
            expires_in_s: secs(left),
        });
    };
    for f in &flows {
        let reply_flags = f.reply.as_ref().map_or(0, |(_, r)| r.flags);
        let state = expiry::state_name(f.orig_key.proto, f.orig.flags, reply_flags);
        let confirmed = expiry::confirmed(f.orig.flags, reply_flags);
        let left = f.remaining_ns(&timeouts, now);
        let kind = Kind::of(f.orig.flags);
        push(&f.orig_key, &f.orig, kind, "original", state, confirmed, left);
        if let Some((rk, r)) = &f.reply {
            push(rk, r, kind, "reply", state, confirmed, left);
        }
    }
    // Entries whose original direction is gone: shown unless a filter asks for something.
    let unfiltered = a.filter == Filter::default();
    for (k, e) in lone.iter().filter(|_| unfiltered) {
        push(k, e, Kind::of(e.flags), "reply", "orphan", false, 0);
    }
    if a.json {
        return output::json(&rows);
    }
    if rows.is_empty() {
        say!("no flows");
        return Ok(());
    }
    let mut table = output::table([
        "proto",
        "direction",
        "src",
        "dst",
        "translated src",
        "translated dst",
        "kind",
        "state",
        "packets",
        "bytes",
        "age",
        "idle",
        "expires in",
    ]);
    for r in &rows {
        table.add_row([
            r.proto.to_string(),
            r.direction.to_string(),
            r.src.clone(),
            r.dst.clone(),
            r.translated_src.clone(),
            r.translated_dst.clone(),
            r.kind.name().to_string(),
            if r.confirmed { r.state.to_string() } else { format!("{} (unconfirmed)", r.state) },
            r.packets.to_string(),
            output::bytes(r.bytes),
            format!("{:.0}s", r.age_s),
            format!("{:.0}s", r.idle_s),
            format!("{:.0}s", r.expires_in_s),
        ]);
    }
    output::print_table(&table);
    Ok(())
}
