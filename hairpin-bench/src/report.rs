//! The forwarding benchmark's runs and its markdown report.

use std::{fmt::Write as _, path::PathBuf};

use anyhow::{Context as _, ensure};

use crate::forward::{Harness, Path, Rate};

/// What a row measured: a number of flows, or hairpin's one flow beside the pre-populated
/// table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Traffic {
    Flows(u32),
    Prefilled,
    /// Every packet opens a flow (one pass over this many new tuples): the new-flow rate.
    NewFlows(u32),
}

impl std::fmt::Display for Traffic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Traffic::Flows(1) => write!(f, "1 flow"),
            Traffic::Flows(n) => write!(f, "{n} flows"),
            Traffic::Prefilled => write!(f, "1 flow, {}M entries", PREFILLED_ENTRIES / 1_000_000),
            Traffic::NewFlows(n) => write!(f, "{n} new flows"),
        }
    }
}

impl std::str::FromStr for Traffic {
    type Err = anyhow::Error;
    /// The report's own labels (and "1 flows", which older reports wrote).
    fn from_str(s: &str) -> anyhow::Result<Self> {
        if s == Traffic::Prefilled.to_string() {
            return Ok(Traffic::Prefilled);
        }
        if let Some(n) = s.strip_suffix(" new flows").and_then(|n| n.parse().ok()) {
            return Ok(Traffic::NewFlows(n));
        }
        let n = s.strip_suffix(" flows").or_else(|| s.strip_suffix(" flow"));
        n.and_then(|n| n.parse().ok()).map(Traffic::Flows).with_context(|| format!("not a traffic label: {s:?}"))
    }
}

/// One row: a path, its traffic, and the repetitions measured.
pub struct Row {
    pub path: Path,
    pub traffic: Traffic,
    pub rates: Vec<Rate>,
}

impl Row {
    fn sorted(&self, f: impl Fn(&Rate) -> f64) -> Vec<f64> {
        let mut v: Vec<f64> = self.rates.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v
    }
    /// Median delivered rate (Mpps).
    pub fn median(&self) -> f64 {
        let v = self.sorted(|r| r.delivered_pps);
        v[v.len() / 2] / 1e6
    }
}

pub struct Options {
    pub ctl: PathBuf,
    pub quick: bool,
    pub secs: f64,
    pub reps: usize,
    pub out: Option<PathBuf>,
    /// Only the paths whose name contains one of these.
    pub paths: Vec<String>,
    /// Flow counts instead of `FLOWS` (and no pre-populated table).
    pub flows: Vec<u32>,
}

/// Flow counts measured for every path, and the pre-populated table size for hairpin.
const FLOWS: [u32; 3] = [1, 4096, 60_000];
const PREFILLED_ENTRIES: u32 = 1_000_000;

/// Measures, prints the report (and writes it to `o.out`), and returns its rows.
pub fn run(o: &Options) -> anyhow::Result<Vec<Row>> {
    let flows: &[u32] = match () {
        () if o.quick => &[1, 64],
        () if !o.flows.is_empty() => &o.flows,
        () => &FLOWS,
    };
    let (secs, reps) = if o.quick { (0.3, 1) } else { (o.secs, o.reps) };
    // A path's full name selects it alone ("hairpin fast path" is part of other names).
    let selected = |p: &Path| {
        o.paths.is_empty()
            || o.paths.iter().any(|n| match Path::ALL.iter().any(|q| q.name() == n) {
                true => p.name() == n,
                false => p.name().contains(n.as_str()),
            })
    };
    // Every harness is built first and the repetitions go round all of them, each round
    // starting one further along, so that a slower minute on this shared machine (or being
    // first in a round) weighs on every path alike rather than on the ones measured in it.
    // Within a round, one traffic after another goes round the paths: the figures a ratio
    // compares (same traffic, or 1 flow and the 1M-entry case) are taken seconds apart, not
    // a minute or two.
    let mut harnesses = Vec::new();
    // The new-flow rate where there is NAT state to make: every packet of one pass opens a flow.
    let new_flows = match () {
        () if o.quick => Some(64),
        () if o.flows.is_empty() => Some(60_000),
        () => None,
    };
    for path in Path::ALL.into_iter().filter(selected) {
        let h = Harness::new(path, o.ctl.clone(), 131_072).with_context(|| format!("setting up {}", path.name()))?;
        let mut traffic: Vec<Traffic> = flows.iter().map(|&n| Traffic::Flows(n)).collect();
        traffic.extend(new_flows.filter(|_| path.nat()).map(Traffic::NewFlows));
        harnesses.push((h, traffic));
    }
    if !o.quick && o.flows.is_empty() && selected(&Path::HairpinFast) {
        // hairpin's fast path with a million conntrack entries around its one flow.
        let h = Harness::new(Path::HairpinFast, o.ctl.clone(), PREFILLED_ENTRIES / 2 + 1024)?;
        let pins = h.pin_dir().context("hairpin's pins")?.to_path_buf();
        let mut tables = crate::sweep::Tables::pinned(&hairpin_ctl::dataplane::PinDir::new(pins))?;
        crate::sweep::fill(&mut tables, PREFILLED_ENTRIES / 2, 0, hairpin_ctl::conntrack::boot_ns())?;
        harnesses.push((h, vec![Traffic::Prefilled]));
    }
    let pinned = harnesses.first().map(|(h, _)| h.pinned.clone()).unwrap_or_default();
    let mut rows: Vec<Row> = harnesses
        .iter()
        .flat_map(|(h, traffic)| traffic.iter().map(|&t| Row { path: h.path(), traffic: t, rates: Vec::new() }))
        .collect();
    // Where each harness's rows start (in harness order).
    let first_rows: Vec<usize> = harnesses
        .iter()
        .scan(0, |next, (_, traffic)| {
            let first = *next;
            *next += traffic.len();
            Some(first)
        })
        .collect();
    let count = harnesses.len();
    let most = harnesses.iter().map(|(_, traffic)| traffic.len()).max().unwrap_or(0);
    for rep in 1..=reps {
        for j in 0..most {
            for k in (0..count).map(|k| (k + rep - 1) % count) {
                let (h, traffic) = &mut harnesses[k];
                let Some(&t) = traffic.get(j) else { continue };
                let r = match t {
                    Traffic::Flows(n) => h.measure(n, u64::from(n) * 4 + 100_000, secs)?,
                    Traffic::Prefilled => h.measure(1, 100_000, secs)?,
                    // Each repetition from its own source address: new tuples every time.
                    Traffic::NewFlows(n) => h.measure_new_flows(n, rep as u8)?,
                };
                eprintln!(
                    "{rep}/{reps} {:<42} {:>18}: {:.3} Mpps delivered of {:.3} offered ({} wrong)",
                    h.path().name(),
                    t.to_string(),
                    r.delivered_pps / 1e6,
                    r.offered_pps / 1e6,
                    r.wrong
                );
                rows[first_rows[k] + j].rates.push(r);
            }
        }
    }
    for r in &rows {
        for rate in &r.rates {
            ensure!(
                rate.wrong == 0,
                "{} ({}): {} frames reached the sink untranslated",
                r.path.name(),
                r.traffic,
                rate.wrong
            );
            ensure!(rate.delivered_pps > 0.0, "{} ({}): nothing delivered", r.path.name(), r.traffic);
        }
    }
    let report = markdown(&rows, secs, reps, &pinned);
    print!("{report}");
    if let Some(out) = &o.out {
        std::fs::write(out, &report).with_context(|| format!("writing {}", out.display()))?;
    }
    Ok(rows)
}

/// Reads the rows back from a report's markdown table (median, min and max stand for the
/// repetitions), so a committed report's chart can be drawn again.
pub fn rows_from_markdown(md: &str) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    for line in md.lines().filter(|l| l.starts_with("| ")) {
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        let Some(path) = Path::ALL.into_iter().find(|p| cells.first() == Some(&p.name())) else { continue };
        let mpps = |i: usize| -> anyhow::Result<f64> {
            let c = cells.get(i).with_context(|| format!("short row: {line}"))?;
            c.parse().with_context(|| format!("not a rate: {c:?} in {line}"))
        };
        let rate = |i| -> anyhow::Result<_> {
            Ok(Rate { offered_pps: mpps(5)? * 1e6, delivered_pps: mpps(i)? * 1e6, wrong: 0 })
        };
        let traffic = cells.get(1).with_context(|| format!("short row: {line}"))?.parse()?;
        rows.push(Row { path, traffic, rates: vec![rate(3)?, rate(2)?, rate(4)?] });
    }
    anyhow::ensure!(!rows.is_empty(), "no benchmark rows in the report");
    Ok(rows)
}

/// The chart's title.
pub const TITLE: &str = "hairpin forwarding benchmark: 64-byte UDP, veth, one gateway CPU";

/// The report's title line and where it was measured: date, CPUs, kernel.
fn heading() -> String {
    let date = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo.lines().find_map(|l| l.strip_prefix("model name")?.split(':').nth(1)).unwrap_or("?").trim();
    let cpus = cpuinfo.lines().filter(|l| l.starts_with("processor")).count();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "# hairpin forwarding benchmark\n\n{date}, {cpus} vCPUs ({model}), kernel {}, `cargo xtask bench`. \
         Shared, noisy machine: compare figures within this run only.\n\n![chart](results.png)\n\n",
        kernel.trim()
    )
}

fn markdown(rows: &[Row], secs: f64, reps: usize, pinned: &str) -> String {
    let mut s = heading();
    let _ = writeln!(s, "| path | traffic | delivered Mpps (median) | min | max | offered Mpps |");
    let _ = writeln!(s, "|---|---|---:|---:|---:|---:|");
    for r in rows {
        let d = r.sorted(|x| x.delivered_pps / 1e6);
        let off = r.sorted(|x| x.offered_pps / 1e6);
        let _ = writeln!(
            s,
            "| {} | {} | {:.3} | {:.3} | {:.3} | {:.3} |",
            r.path.name(),
            r.traffic,
            d[d.len() / 2],
            d[0],
            d[d.len() - 1],
            off[off.len() / 2]
        );
    }
    let find = |p: Path, t: Traffic| rows.iter().find(|r| r.path == p && r.traffic == t).map(Row::median);
    let ratio = |what: &str, a: Option<f64>, b: Option<f64>, s: &mut String| {
        if let (Some(a), Some(b)) = (a, b) {
            let _ = writeln!(s, "- {what}: {:.2}", a / b);
        }
    };
    let _ = writeln!(s, "\nRatios (medians, same run):\n");
    use Path::{
        HairpinFast as Fast, HairpinFastNoCache as NoCache, HairpinGeneric as Generic, HairpinMasq as Masq,
        HairpinTc as Tc, KernelForward, NftDnat, NftDnatMasq, NftMasq, RawLookup as Floor, RawRedirect as Raw,
        RawWrite as WriteFloor,
    };
    use Traffic::{Flows, Prefilled};
    // (what, numerator, denominator): each a path and its traffic.
    let ratios = [
        ("hairpin fast / raw ceiling, 1 flow", (Fast, Flows(1)), (Raw, Flows(1))),
        ("hairpin fast / raw ceiling, 60000 flows", (Fast, Flows(60_000)), (Raw, Flows(60_000))),
        ("hairpin fast / raw ceiling, 1M entries", (Fast, Prefilled), (Raw, Flows(1))),
        ("write floor / raw ceiling, 1 flow", (WriteFloor, Flows(1)), (Raw, Flows(1))),
        ("hairpin fast / write floor, 1 flow", (Fast, Flows(1)), (WriteFloor, Flows(1))),
        ("memory floor / raw ceiling, 60000 flows", (Floor, Flows(60_000)), (Raw, Flows(60_000))),
        ("hairpin fast / memory floor, 60000 flows", (Fast, Flows(60_000)), (Floor, Flows(60_000))),
        ("hairpin fast / without flow cache, 1 flow", (Fast, Flows(1)), (NoCache, Flows(1))),
        ("hairpin fast / without flow cache, 60000 flows", (Fast, Flows(60_000)), (NoCache, Flows(60_000))),
        ("hairpin fast / nftables DNAT, 1 flow", (Fast, Flows(1)), (NftDnat, Flows(1))),
        ("hairpin fast / nftables DNAT+masquerade, 1 flow", (Fast, Flows(1)), (NftDnatMasq, Flows(1))),
        ("hairpin fast / nftables DNAT+masquerade, 60000 flows", (Fast, Flows(60_000)), (NftDnatMasq, Flows(60_000))),
        ("hairpin TC fast / nftables DNAT+masquerade, 1 flow", (Tc, Flows(1)), (NftDnatMasq, Flows(1))),
        ("hairpin TC fast / nftables DNAT+masquerade, 60000 flows", (Tc, Flows(60_000)), (NftDnatMasq, Flows(60_000))),
        ("hairpin TC fast / XDP fast, 1 flow", (Tc, Flows(1)), (Fast, Flows(1))),
        ("hairpin TC fast / kernel forwarding (no NAT), 1 flow", (Tc, Flows(1)), (KernelForward, Flows(1))),
        ("hairpin generic XDP / nftables DNAT+masquerade, 1 flow", (Generic, Flows(1)), (NftDnatMasq, Flows(1))),
        ("hairpin fast, 60000 flows / 1 flow", (Fast, Flows(60_000)), (Fast, Flows(1))),
        ("hairpin fast, 1M entries / 1 flow", (Fast, Prefilled), (Fast, Flows(1))),
        ("hairpin masquerade / raw ceiling, 1 flow", (Masq, Flows(1)), (Raw, Flows(1))),
        ("hairpin masquerade / nftables masquerade, 1 flow", (Masq, Flows(1)), (NftMasq, Flows(1))),
        ("hairpin masquerade / nftables masquerade, 60000 flows", (Masq, Flows(60_000)), (NftMasq, Flows(60_000))),
    ];
    for (what, (pa, la), (pb, lb)) in ratios {
        ratio(what, find(pa, la), find(pb, lb), &mut s);
    }
    let _ = writeln!(
        s,
        "\n64-byte IPv4/UDP frames from an XDP generator (BPF_PROG_TEST_RUN, live frames) on CPU 0; \
         the gateway's receive NAPI threaded and pinned: {pinned}. {reps} repetition(s) of {secs} s each; \
         delivered = frames counted at the sink with the expected translated destination \
         (and, masqueraded, the public source address). On these veths `up` with default flags \
         puts ingress in TC (the TC fast path row); the XDP rows ask for XDP (`--xdp-mode native`, \
         with XDP programs on the veths' far ends), as a gateway on NICs gets it by default."
    );
    s
}
