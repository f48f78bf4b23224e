//! `hairpin-ctl flows`: the conntrack table, one entry per direction of each flow, with state
//! and remaining lifetime, filtered like `conntrack -L`; `flows del` removes one flow, `flows
//! flush` all of them.

use std::net::SocketAddrV4;

use anyhow::bail;
use hairpin_common::{CT_F_HAIRPIN, CT_F_MASQ, CtEntry, FlowKey, expiry};
use serde::Serialize;

use crate::{
    cli::flows::{Filter, FlowProto, FlowsAction, FlowsArgs},
    conntrack::{self, Flow},
    dataplane::{Maps, PinDir},
    events,
    output::{self, Kind},
};

/// Whether the flow meets every condition of the filter.
fn matches(filter: &Filter, f: &Flow) -> bool {
    let (k, x) = (&f.orig_key, &f.orig.xlate);
    let srcs = [output::src(k), output::src(x)];
    let dsts = [output::dst(k), output::dst(x)];
    filter.proto.is_none_or(|p| p.number() == k.proto)
        && filter.kind.is_none_or(|kind| kind == Kind::of(f.orig.flags))
        && filter.src.is_none_or(|a| srcs.iter().any(|&ep| a.matches(ep)))
        && filter.dst.is_none_or(|a| dsts.iter().any(|&ep| a.matches(ep)))
        && filter.port.is_none_or(|p| srcs.iter().chain(&dsts).any(|ep| ep.port() == p))
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
    match a.action {
        Some(FlowsAction::Flush) => flush(pins, &mut pins.open()?),
        Some(FlowsAction::Del { proto, src, dst }) => delete(pins, &mut pins.open()?, proto, src, dst),
        None if a.watch => events::watch(pins, a.json),
        None => list(&pins.open()?, &a),
    }
}

fn flush(pins: &PinDir, maps: &mut Maps) -> anyhow::Result<()> {
    let (flows, released) = conntrack::flush(maps)?;
    events::flushed(pins, flows.iter().map(|f| (&f.orig_key, &f.orig)));
    say!("flushed {} flows and {released} bindings", flows.len());
    Ok(())
}

/// The flow with either direction `src -> dst`.
fn delete(
    pins: &PinDir,
    maps: &mut Maps,
    proto: FlowProto,
    src: SocketAddrV4,
    dst: SocketAddrV4,
) -> anyhow::Result<()> {
    let (flows, _) = conntrack::snapshot(maps)?;
    let is = |k: &FlowKey| k.proto == proto.number() && output::src(k) == src && output::dst(k) == dst;
    let Some(flow) = flows.iter().find(|f| is(&f.orig_key) || f.reply.as_ref().is_some_and(|(rk, _)| is(rk))) else {
        bail!("no {} flow {src} -> {dst} (see `hairpin-ctl flows`)", output::proto_name(proto.number()));
    };
    let released = conntrack::delete(maps, flow)?;
    events::flushed(pins, [(&flow.orig_key, &flow.orig)]);
    let released = match released {
        0 => String::new(),
        n => format!(" ({n} binding released)"),
    };
    say!("deleted {} flow {src} -> {dst}{released}", output::proto_name(proto.number()));
    Ok(())
}

fn list(maps: &Maps, a: &FlowsArgs) -> anyhow::Result<()> {
    let rows = rows(maps, &a.filter)?;
    if a.json {
        return output::json(&rows);
    }
    if rows.is_empty() {
        say!("no flows");
        return Ok(());
    }
    print(&rows);
    Ok(())
}

/// One row per direction of each flow the filter keeps, then (unfiltered) the entries whose
/// original direction is gone.
fn rows(maps: &Maps, filter: &Filter) -> anyhow::Result<Vec<Row>> {
    let timeouts = maps.config()?.timeouts;
    let now = conntrack::boot_ns();
    let secs = |ns: u64| ns as f64 / 1e9;
    let (mut flows, lone) = conntrack::snapshot(maps)?;
    flows.retain(|f| matches(filter, f));
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
    let unfiltered = *filter == Filter::default();
    for (k, e) in lone.iter().filter(|_| unfiltered) {
        push(k, e, Kind::of(e.flags), "reply", "orphan", false, 0);
    }
    Ok(rows)
}

fn print(rows: &[Row]) {
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
    for r in rows {
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
}
