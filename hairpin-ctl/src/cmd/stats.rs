//! `hairpin-ctl stats`: the per-reason counters, one column per hook.

use hairpin_common::{Reason, consts::Hook};
use serde::Serialize;

use crate::{dataplane::PinDir, output};

#[derive(Serialize)]
struct Row {
    reason: &'static str,
    drop: bool,
    description: &'static str,
    lan_ingress: u64,
    wan_ingress: u64,
    lan_egress: u64,
    wan_egress: u64,
    total: u64,
}

pub fn run(pins: &PinDir, json: bool) -> anyhow::Result<()> {
    let maps = pins.open()?;
    let count =
        |hook: Hook, r: Reason| -> anyhow::Result<u64> { Ok(maps.stats.get(&hook.stat_index(r), 0)?.iter().sum()) };
    let mut rows = Vec::new();
    for &r in Reason::ALL {
        let [li, wi, le, we] = [
            count(Hook::LanIngress, r)?,
            count(Hook::WanIngress, r)?,
            count(Hook::LanEgress, r)?,
            count(Hook::WanEgress, r)?,
        ];
        rows.push(Row {
            reason: r.name(),
            drop: r.is_drop(),
            description: r.help(),
            lan_ingress: li,
            wan_ingress: wi,
            lan_egress: le,
            wan_egress: we,
            total: li + wi + le + we,
        });
    }
    if json {
        return output::json(&rows);
    }
    println!("{:<22} {:>12} {:>12} {:>12} {:>12}", "reason", "lan_ingress", "wan_ingress", "lan_egress", "wan_egress");
    for r in rows {
        println!(
            "{:<22} {:>12} {:>12} {:>12} {:>12}",
            r.reason, r.lan_ingress, r.wan_ingress, r.lan_egress, r.wan_egress
        );
    }
    Ok(())
}
