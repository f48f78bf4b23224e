//! `hairpin-bench`: measurements that need root and the real dataplane. Run through
//! `cargo xtask bench`; timings are reported, never asserted.

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
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().bench {
        Bench::Sweep { entries } => sweep::run(entries),
    }
}
