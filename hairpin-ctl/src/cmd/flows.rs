//! `hairpin-ctl flows`: the conntrack table, one entry per direction of each flow, with state
//! and remaining lifetime; `flows flush` empties it.

use hairpin_common::{CT_F_HAIRPIN, CT_F_MASQ, CtEntry, FlowKey, expiry};
use serde::Serialize;

use clap::{Args, Subcommand};

use crate::{dataplane::PinDir, expire, output};

#[derive(Debug, Args)]
pub struct FlowsArgs {
    #[command(subcommand)]
    pub action: Option<FlowsAction>,
    /// Print a JSON array, one object per entry.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum FlowsAction {
    /// Remove every flow (both directions and their rewrites) and every binding. Established
    /// connections through the gateway break; port-forwards and masquerade create new flows
    /// for new traffic, and LAN hosts may get other public ports.
    Flush,
}

#[derive(Serialize)]
struct Row {
    /// tcp, udp or icmp (echo, with the identifier in place of the ports).
    proto: &'static str,
    direction: &'static str,
    hairpin: bool,
    masquerade: bool,
    /// TCP state, or "active".
    state: &'static str,
    /// The tuple as it arrives at the gateway.
    src: String,
    dst: String,
    /// The tuple as it leaves the gateway.
    translated_src: String,
    translated_dst: String,
    age_s: f64,
    idle_s: f64,
    expires_in_s: f64,
}

pub fn run(pins: &PinDir, a: FlowsArgs) -> anyhow::Result<()> {
    let mut maps = pins.open()?;
    if let Some(FlowsAction::Flush) = a.action {
        let (flows, lone) = expire::snapshot(&maps)?;
        maps.remove_entries(flows.iter().flat_map(expire::Flow::entries).chain(lone))?;
        // With no flow left, no binding is in use: every public port returns to the pool.
        let public = maps.config()?.public_addr;
        let bindings: Vec<_> = maps.bindings.iter().collect::<Result<_, _>>()?;
        let released = bindings.len();
        maps.unbind(bindings, public)?;
        say!("flushed {} flows and {released} bindings", flows.len());
        return Ok(());
    }
    let timeouts = maps.config()?.timeouts;
    let now = expire::boot_ns();
    let secs = |ns: u64| ns as f64 / 1e9;
    let (mut flows, lone) = expire::snapshot(&maps)?;
    // Stable order: by protocol and original tuple.
    flows.sort_by_key(|f| {
        let k = f.orig_key;
        (k.proto, k.src.octets(), k.sport.host(), k.dst.octets(), k.dport.host())
    });
    let mut rows = Vec::new();
    let mut push = |k: &FlowKey, e: &CtEntry, direction, state, left| {
        rows.push(Row {
            proto: output::proto_name(k.proto),
            direction,
            hairpin: e.flags & CT_F_HAIRPIN != 0,
            masquerade: e.flags & CT_F_MASQ != 0,
            state,
            src: output::src(k).to_string(),
            dst: output::dst(k).to_string(),
            translated_src: output::src(&e.xlate).to_string(),
            translated_dst: output::dst(&e.xlate).to_string(),
            age_s: secs(now.saturating_sub(e.created_ns)),
            idle_s: secs(now.saturating_sub(e.last_seen_ns)),
            expires_in_s: secs(left),
        });
    };
    for f in &flows {
        let reply_flags = f.reply.as_ref().map_or(0, |(_, r)| r.flags);
        let state = expiry::state_name(f.orig_key.proto, f.orig.flags, reply_flags);
        let left = f.remaining_ns(&timeouts, now);
        push(&f.orig_key, &f.orig, "original", state, left);
        if let Some((rk, r)) = &f.reply {
            push(rk, r, "reply", state, left);
        }
    }
    for (k, e) in &lone {
        push(k, e, "reply", "orphan", 0);
    }
    if a.json {
        return output::json(&rows);
    }
    if rows.is_empty() {
        say!("no flows");
    }
    for r in rows {
        let kind = if r.hairpin {
            "hairpin "
        } else if r.masquerade {
            "masquerade "
        } else {
            ""
        };
        say!(
            "{:<4} {:<8} {:<21} -> {:<21}  as {:<21} -> {:<21} {kind}{} age {:.0}s idle {:.0}s expires in {:.0}s",
            r.proto,
            r.direction,
            r.src,
            r.dst,
            r.translated_src,
            r.translated_dst,
            r.state,
            r.age_s,
            r.idle_s,
            r.expires_in_s
        );
    }
    Ok(())
}
