//! `hairpin-ctl stats`: the per-reason counters (one column per hook), why known flows took the
//! slow path, how often the fast path's flow cache served, new flows refused for want of a port
//! or table space (per protocol), and how full the tables and port pools are.

use hairpin_common::{
    Config, Counter, Reason, Side, Slow,
    consts::{EXHAUSTION_PROTOS, Hook, IPPROTO_ICMP},
    placement::Placement,
};
use serde::Serialize;

use crate::{
    dataplane::{Maps, PinDir, Table},
    output, placement,
};

#[derive(Serialize)]
struct ReasonRow {
    reason: &'static str,
    drop: bool,
    description: &'static str,
    lan_ingress: u64,
    wan_ingress: u64,
    lan_egress: u64,
    wan_egress: u64,
    total: u64,
}

/// New flows of one protocol that were dropped, by cause.
#[derive(Serialize)]
struct ExhaustionRow {
    proto: &'static str,
    /// Every candidate public port (or echo id) was taken.
    no_port: u64,
    /// A table was full or a map operation failed.
    no_table_space: u64,
}

/// How full something is: a map, or a protocol's pool of public ports.
#[derive(Serialize)]
struct FillRow {
    name: String,
    in_use: u64,
    capacity: u64,
    percent: f64,
}

/// Packets of known flows the fast path left to the kernel, by cause.
#[derive(Serialize)]
struct SlowRow {
    cause: &'static str,
    packets: u64,
}

/// How well the fast path's flow cache serves: packets it forwarded alone, and those it had no
/// usable copy for (conntrack forwarded them).
#[derive(Serialize)]
struct FlowCache {
    /// Off: `up --no-flow-cache` or `--no-fast-path` (every fast-path packet is a miss).
    enabled: bool,
    hits: u64,
    misses: u64,
    /// hits / (hits + misses), in percent (0 with no fast-path traffic).
    hit_percent: f64,
}

/// Where an interface's ingress runs (as `up` placed it), and why.
#[derive(Serialize)]
struct InterfaceRow {
    side: &'static str,
    name: String,
    ifindex: u32,
    /// `xdp`, `xdp-generic` or `tc`.
    ingress: &'static str,
    fast_path: bool,
    why: &'static str,
    /// The XDP fast path may send frames into it (redirect, XDP_TX); `run` clears this when
    /// the kernel refuses them.
    takes_xdp_frames: bool,
    /// XDP frames sent into it that the kernel refused to transmit (counted by tracepoints;
    /// they are also in fast_redirect or fast_tx, which count what the fast path handed on).
    refused_xdp_frames: u64,
    /// The line `up` printed for it.
    summary: String,
}

/// One side counter, as the dataplane's list (`Counter`) names and explains it.
#[derive(Serialize)]
struct CounterRow {
    name: &'static str,
    description: &'static str,
    value: u64,
}

#[derive(Serialize)]
struct Stats {
    interfaces: Vec<InterfaceRow>,
    /// How the TC programs are attached: `tcx` (pinned links) or `netlink` (cls_bpf filters).
    tc_attach: &'static str,
    /// Every side counter, whatever section below also shows it.
    counters: Vec<CounterRow>,
    reasons: Vec<ReasonRow>,
    slow_path: Vec<SlowRow>,
    flow_cache: FlowCache,
    exhaustion: Vec<ExhaustionRow>,
    tables: Vec<FillRow>,
    port_pools: Vec<FillRow>,
}

pub fn run(pins: &PinDir, json: bool) -> anyhow::Result<()> {
    let stats = read(pins, &pins.open()?)?;
    if json {
        return output::json(&stats);
    }
    print(&stats);
    Ok(())
}

fn read(pins: &PinDir, maps: &Maps) -> anyhow::Result<Stats> {
    let cfg = maps.config()?;
    let reasons = reasons(maps)?;
    let fast: u64 = reasons
        .iter()
        .filter(|r| r.reason == Reason::FastRedirect.name() || r.reason == Reason::FastTx.name())
        .map(|r| r.total)
        .sum();
    let misses = maps.counter(Counter::CacheMiss)?;
    // Read one after the other while packets flow: clamp rather than underflow.
    let hits = fast.saturating_sub(misses);
    Ok(Stats {
        interfaces: interfaces(maps, &cfg)?,
        tc_attach: if pins.tcx_links() { "tcx" } else { "netlink" },
        counters: Counter::ALL
            .iter()
            .map(|&c| Ok(CounterRow { name: c.name(), description: c.help(), value: maps.counter(c)? }))
            .collect::<anyhow::Result<_>>()?,
        flow_cache: FlowCache {
            enabled: maps.flow_cache_enabled()?,
            hits,
            misses,
            hit_percent: if fast == 0 { 0.0 } else { 100.0 * hits as f64 / (hits + misses) as f64 },
        },
        reasons,
        slow_path: Slow::ALL
            .iter()
            .map(|&s| Ok(SlowRow { cause: s.name(), packets: maps.counter(s.counter())? }))
            .collect::<anyhow::Result<_>>()?,
        exhaustion: exhaustion(maps)?,
        tables: tables(maps)?,
        port_pools: port_pools(maps, &cfg)?,
    })
}

fn print(stats: &Stats) {
    if !stats.interfaces.is_empty() {
        say!("interfaces");
        say!("  tc programs: {}", if stats.tc_attach == "tcx" { "tcx links" } else { "netlink filters" });
        for i in &stats.interfaces {
            match i.refused_xdp_frames {
                0 => say!("  {}", i.summary),
                n => say!("  {}; {n} XDP frames refused by the kernel", i.summary),
            }
        }
        say!();
    }
    say!("{:<22} {:>12} {:>12} {:>12} {:>12}", "reason", "lan_ingress", "wan_ingress", "lan_egress", "wan_egress");
    for r in &stats.reasons {
        say!("{:<22} {:>12} {:>12} {:>12} {:>12}", r.reason, r.lan_ingress, r.wan_ingress, r.lan_egress, r.wan_egress);
    }
    say!("\n{:<22} {:>12}", "slow path because", "packets");
    for s in &stats.slow_path {
        say!("{:<22} {:>12}", s.cause, s.packets);
    }
    let fc = &stats.flow_cache;
    say!("\n{:<22} {:>12} {:>12} {:>8}", "fast path flow cache", "hits", "misses", "%");
    match fc.enabled {
        true => say!("{:<22} {:>12} {:>12} {:>7.1}%", "", fc.hits, fc.misses, fc.hit_percent),
        false => say!("{:<22} {:>12} {:>12} {:>8}", "", "off", fc.misses, ""),
    }
    say!("\n{:<22} {:>12} {:>14}", "new flows dropped", "no_port", "no_table_space");
    for e in &stats.exhaustion {
        say!("{:<22} {:>12} {:>14}", e.proto, e.no_port, e.no_table_space);
    }
    for (title, rows) in [("table", &stats.tables), ("public port pool", &stats.port_pools)] {
        say!("\n{title:<22} {:>12} {:>12} {:>8}", "in_use", "capacity", "%");
        for f in rows {
            say!("{:<22} {:>12} {:>12} {:>7.1}%", f.name, f.in_use, f.capacity, f.percent);
        }
    }
}

/// The placements `up` recorded (none in a configuration written before they were).
fn interfaces(maps: &Maps, cfg: &Config) -> anyhow::Result<Vec<InterfaceRow>> {
    let fast_path = cfg.fast_path();
    let mut rows = Vec::new();
    for (side, refused, ifindex, code) in
        [("lan", Side::Lan, cfg.ifindex[0], cfg.placement[0]), ("wan", Side::Wan, cfg.ifindex[1], cfg.placement[1])]
    {
        let Some(p) = Placement::decode(code) else { continue };
        let name = crate::netif::name(ifindex).unwrap_or_else(|| format!("ifindex {ifindex}"));
        rows.push(InterfaceRow {
            side,
            summary: placement::describe(&name, p, fast_path),
            name,
            ifindex,
            ingress: p.ingress.name(),
            fast_path,
            why: p.why.text(),
            takes_xdp_frames: p.xdp_target,
            refused_xdp_frames: maps.counter(Counter::xdp_refused(refused))?,
        });
    }
    Ok(rows)
}

fn reasons(maps: &Maps) -> anyhow::Result<Vec<ReasonRow>> {
    let count = |hook: Hook, r: Reason| maps.verdicts(hook, r);
    let mut rows = Vec::new();
    for &r in Reason::ALL {
        let [li, wi, le, we] = [
            count(Hook::LanIngress, r)?,
            count(Hook::WanIngress, r)?,
            count(Hook::LanEgress, r)?,
            count(Hook::WanEgress, r)?,
        ];
        rows.push(ReasonRow {
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
    Ok(rows)
}

fn exhaustion(maps: &Maps) -> anyhow::Result<Vec<ExhaustionRow>> {
    let count = |proto, r| maps.counter(Counter::exhausted(proto, r).expect("an exhaustion reason"));
    EXHAUSTION_PROTOS
        .iter()
        .map(|&p| {
            Ok(ExhaustionRow {
                proto: output::proto_name(p),
                no_port: count(p, Reason::DropNoPort)?,
                no_table_space: count(p, Reason::DropFlowInsert)?,
            })
        })
        .collect()
}

fn fill(name: impl Into<String>, in_use: u64, capacity: u64) -> FillRow {
    let percent = if capacity == 0 { 100.0 } else { in_use as f64 * 100.0 / capacity as f64 };
    FillRow { name: name.into(), in_use, capacity, percent: (percent * 10.0).round() / 10.0 }
}

fn tables(maps: &Maps) -> anyhow::Result<Vec<FillRow>> {
    [
        ("conntrack entries", Table::Conntrack),
        ("unconfirmed entries", Table::Unconfirmed),
        ("egress entries", Table::Egress),
        ("unconfirmed egress entries", Table::UnconfirmedEgress),
        ("bindings", Table::Bindings),
    ]
    .into_iter()
    .map(|(name, t)| maps.fill(t).map(|(n, capacity)| fill(name, n, capacity)))
    .collect()
}

/// Public ports in use per protocol against the configured range, less the ports that
/// port-forwards own there. TCP and UDP ports are held by bindings; ICMP echo ids by flows.
fn port_pools(maps: &Maps, cfg: &Config) -> anyhow::Result<Vec<FillRow>> {
    let in_range = |p: u16| (cfg.port_min..=cfg.port_max).contains(&p);
    let range = if cfg.port_min > cfg.port_max { 0 } else { u64::from(cfg.port_max - cfg.port_min) + 1 };
    // One pass over each map, counting by protocol.
    let mut forwarded = std::collections::HashMap::<u8, u64>::new();
    for (k, _) in maps.forwards()? {
        if k.addr == cfg.public_addr && in_range(k.port.host()) {
            *forwarded.entry(k.proto).or_default() += 1;
        }
    }
    let mut used = std::collections::HashMap::<u8, u64>::new();
    for (k, _) in maps.bindings()? {
        *used.entry(k.proto).or_default() += 1;
    }
    // Echo flows hold no binding: each one's reply entry is keyed to the public address and
    // its id.
    for k in maps.ct_entries()?.into_keys() {
        if k.proto == IPPROTO_ICMP && k.dst == cfg.public_addr {
            *used.entry(IPPROTO_ICMP).or_default() += 1;
        }
    }
    let count = |m: &std::collections::HashMap<u8, u64>, p| m.get(&p).copied().unwrap_or(0);
    Ok(EXHAUSTION_PROTOS
        .iter()
        .map(|&p| fill(output::proto_name(p), count(&used, p), range.saturating_sub(count(&forwarded, p))))
        .collect())
}
