//! `hairpin-ctl flows`: the conntrack table, one entry per direction of each flow.

use hairpin_common::{CT_F_HAIRPIN, CT_F_MASQ, CT_F_REPLY};
use serde::Serialize;

use crate::{cli::Proto, dataplane::PinDir, output};

#[derive(Serialize)]
struct Row {
    proto: Proto,
    direction: &'static str,
    hairpin: bool,
    masquerade: bool,
    /// The tuple as it arrives at the gateway.
    src: String,
    dst: String,
    /// The tuple as it leaves the gateway.
    translated_src: String,
    translated_dst: String,
    age_s: f64,
    idle_s: f64,
}

/// CLOCK_BOOTTIME, the clock of `bpf_ktime_get_boot_ns`.
fn boot_ns() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME).expect("CLOCK_BOOTTIME");
    t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
}

pub fn run(pins: &PinDir, json: bool) -> anyhow::Result<()> {
    let maps = pins.open()?;
    let now = boot_ns();
    let secs = |ns: u64| now.saturating_sub(ns) as f64 / 1e9;
    let mut rows = Vec::new();
    let mut entries = maps.ct.iter().collect::<Result<Vec<_>, _>>()?;
    // One flow's two directions together, original first: a reply sorts under its twin's key.
    entries.sort_by_key(|(k, e)| {
        let reply = e.flags & CT_F_REPLY != 0;
        let orig = if reply { e.xlate.reversed() } else { *k };
        (orig.proto, orig.src.octets(), orig.sport.host(), orig.dst.octets(), orig.dport.host(), reply)
    });
    for (k, e) in entries {
        let Some(proto) = Proto::from_number(k.proto) else { continue };
        rows.push(Row {
            proto,
            direction: if e.flags & CT_F_REPLY != 0 { "reply" } else { "original" },
            hairpin: e.flags & CT_F_HAIRPIN != 0,
            masquerade: e.flags & CT_F_MASQ != 0,
            src: output::src(&k).to_string(),
            dst: output::dst(&k).to_string(),
            translated_src: output::src(&e.xlate).to_string(),
            translated_dst: output::dst(&e.xlate).to_string(),
            age_s: secs(e.created_ns),
            idle_s: secs(e.last_seen_ns),
        });
    }
    if json {
        return output::json(&rows);
    }
    if rows.is_empty() {
        println!("no flows");
    }
    for r in rows {
        println!(
            "{} {:<8} {:<21} -> {:<21}  as {:<21} -> {:<21} {}age {:.0}s idle {:.0}s",
            r.proto.name(),
            r.direction,
            r.src,
            r.dst,
            r.translated_src,
            r.translated_dst,
            if r.hairpin {
                "hairpin "
            } else if r.masquerade {
                "masquerade "
            } else {
                ""
            },
            r.age_s,
            r.idle_s
        );
    }
    Ok(())
}
