//! `hairpin-bench`: measurements that need root and the real dataplane. Run through
//! `cargo xtask bench`; timings are reported, never asserted.

mod bulk;
mod chart;
mod forward;
mod frame;
mod micro;
mod report;
mod sender;
mod sweep;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "hairpin-bench", about = "hairpin benchmarks (root)")]
struct Cli {
    #[command(subcommand)]
    bench: Bench,
}

#[derive(Subcommand)]
enum Bench {
    /// How long `run`'s flow sweep takes over a full table, and what it costs the dataplane
    /// meanwhile (BPF_PROG_TEST_RUN of an established flow's packet, during vs. before).
    Sweep {
        /// Conntrack entries to fill (two per flow).
        #[arg(long, default_value_t = 1_000_000)]
        entries: u32,
    },
    /// Draws the bar chart of a forwarding report again (e.g. bench/results.md ->
    /// bench/results.png), from its table.
    Chart {
        /// The markdown report.
        report: std::path::PathBuf,
    },
    /// ns per packet of the XDP program (BPF_PROG_TEST_RUN, the mean of single runs on fresh
    /// frames): established flow on the fast and slow paths, new flows, and a trivial XDP_TX
    /// program.
    Micro {
        /// Also append the figures to this file (the forwarding report).
        #[arg(long)]
        append: Option<std::path::PathBuf>,
    },
    /// Packets per second through the gateway, side by side: raw XDP redirect (ceiling), the
    /// same reading a table line per packet (memory floor) or writing MACs and TTL (write
    /// floor), kernel forwarding, nftables DNAT and DNAT+masquerade, hairpin slow path, fast
    /// path and XDP_TX hairpinning towards a forwarded port; nftables masquerade and hairpin's
    /// fast path for LAN hosts' traffic to the internet; 1, 4,096 and 60,000 flows, and
    /// 1,000,000 conntrack entries.
    /// Bulk TCP Gbit/s with iperf3 on the lab's plain topology (hosts' default offloads):
    /// kernel routing, nftables and hairpin with default flags, port-forward and masquerade,
    /// 1 and 4 streams.
    Bulk {
        /// The hairpin-ctl binary to drive.
        #[arg(long)]
        ctl: std::path::PathBuf,
        /// One second per cell, once: the smoke run.
        #[arg(long)]
        quick: bool,
        /// Seconds per iperf3 run.
        #[arg(long, default_value_t = 3)]
        secs: u32,
        /// Repetitions (the report gives medians).
        #[arg(long, default_value_t = 3)]
        reps: usize,
        /// Also append the report to this file (the forwarding report).
        #[arg(long)]
        append: Option<std::path::PathBuf>,
    },
    Forward {
        /// The hairpin-ctl binary to drive.
        #[arg(long)]
        ctl: std::path::PathBuf,
        /// A few seconds: every path once with 1 and 64 flows, failing unless each delivered
        /// translated frames (the smoke test `cargo xtask test` runs).
        #[arg(long)]
        quick: bool,
        /// Seconds per measurement.
        #[arg(long, default_value_t = 2.0)]
        secs: f64,
        /// Repetitions per measurement (the report gives median, min and max).
        #[arg(long, default_value_t = 3)]
        reps: usize,
        /// Also write the markdown report here, and the bar chart beside it (same name, .png).
        #[arg(long)]
        out: Option<std::path::PathBuf>,
        /// Only the paths whose name contains this (repeatable), e.g. `--path nftables`; a
        /// path's whole name selects only that path.
        #[arg(long = "path")]
        paths: Vec<String>,
        /// Measure with this many flows (repeatable) instead of 1, 4,096 and 60,000; the
        /// 1,000,000-entry measurement is then left out.
        #[arg(long = "flows", value_parser = clap::value_parser!(u32).range(1..=60_000))]
        flows: Vec<u32>,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().bench {
        Bench::Sweep { entries } => sweep::run(entries),
        Bench::Chart { report } => {
            let md = std::fs::read_to_string(&report)?;
            let png = report.with_extension("png");
            chart::write_png(&report::rows_from_markdown(&md)?, report::TITLE, &png)?;
            eprintln!("wrote {}", png.display());
            Ok(())
        }
        Bench::Micro { append } => micro::run(append.as_deref()),
        Bench::Bulk { ctl, quick, secs, reps, append } => bulk::run(ctl, quick, secs, reps, append.as_deref()),
        Bench::Forward { ctl, quick, secs, reps, out, paths, flows } => {
            let rows = report::run(&report::Options { ctl, quick, secs, reps, out: out.clone(), paths, flows })?;
            // The bar chart beside the report, same name, .png.
            if let Some(out) = out {
                let png = out.with_extension("png");
                chart::write_png(&rows, report::TITLE, &png)?;
                eprintln!("wrote {} and {}", out.display(), png.display());
            }
            Ok(())
        }
    }
}
