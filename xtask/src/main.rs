//! `cargo xtask <task>`: everything a fresh machine needs to build, demo and test hairpin.

mod bench;
mod build;
mod fuzz;
mod lab;
mod layers;
mod mutants;
mod setup;
mod test;
mod util;
mod vmtest;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "hairpin developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what the build and tests need (idempotent): apt packages, the pinned nightly
    /// with rust-src, bpf-linker built against that nightly's LLVM, mounted bpffs and tracefs.
    Setup,
    /// Release build: target/release/hairpin-ctl with the eBPF object embedded.
    Build,
    /// The demo: build, create the namespaced gateway, LAN server, LAN client and internet
    /// host, run the four hairpin cases with real TCP/UDP, print each step, tear down.
    Lab,
    /// Every test: host unit tests, BPF_PROG_TEST_RUN packet tests, veth lab tests (root), the
    /// benchmarks' smoke runs, then the packet and lab tests on Debian's 6.1 and 6.12 kernels
    /// in VMs (as `vmtest`).
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Checks that the host crates read top-down: no import circle among their modules, and
    /// no controller function over 60 lines. A gate of `test`, beside fmt and clippy.
    Layers,
    /// The packet tests and the plain-topology lab on other kernels (root): each booted in
    /// qemu from Debian's package, this machine's files shared read-only. `--kernel 6.1`
    /// (Debian 12's own), `--kernel 6.12` (its updates), or a package name; repeatable.
    Vmtest {
        #[arg(long = "kernel", required = true, value_name = "VERSION|PACKAGE")]
        kernels: Vec<String>,
        /// Runs this shell command in each guest instead of the tests (in the checkout, with
        /// HAIRPIN_CTL set), e.g. one test binary with a filter.
        #[arg(long, value_name = "COMMAND")]
        run: Option<String>,
    },
    /// The differential test run long (root): generated frame sequences through the real
    /// programs and the reference model, in XDP and TC ingress, the fast path off and on, and
    /// with full tables, every step compared.
    Fuzz {
        /// Generated actions in all (a seventh per run: XDP, TC, each with the fast path off
        /// and on; TC with the fast path without its flow cache; XDP with the fast path and TC
        /// without it, each with full tables).
        #[arg(long, default_value_t = 1_000_000)]
        steps: u64,
        /// The generator's seed [default: the fixed seed of `cargo xtask test`].
        #[arg(long)]
        seed: Option<u64>,
    },
    /// The proof that the differential test can fail (root): each mutant in tests/mutants (one
    /// defect put into the dataplane or the controller) applied in turn, the fixed-seed set
    /// run against it, the mutant taken out again; a table of what caught each. About a
    /// minute a mutant. The tree must have no uncommitted changes.
    Mutants {
        /// Only the mutants whose file name contains one of these.
        names: Vec<String>,
    },
    /// Benchmarks (root), printed as markdown. Without arguments: packets per second through
    /// the gateway for every path side by side, ns per packet and bulk TCP Gbit/s (report and
    /// chart in bench/results.md and .png), then the flow sweep over 1,000,000 entries. Or one
    /// of `forward [--quick] [--path NAME]... [--flows N]...`, `micro`, `bulk [--quick]`,
    /// `sweep`, `chart REPORT`.
    Bench {
        /// Arguments for hairpin-bench (e.g. `forward --quick`, `sweep --entries 200000`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> std::process::ExitCode {
    let result = match Cli::parse().task {
        Task::Setup => setup::run(),
        Task::Build => build::run().map(|_| ()),
        Task::Lab => lab::run(),
        Task::Layers => layers::run(),
        Task::Test { args } => test::run(&args),
        Task::Bench { args } => bench::run(&args),
        Task::Fuzz { steps, seed } => fuzz::run(steps, seed),
        Task::Mutants { names } => mutants::run(&names),
        Task::Vmtest { kernels, run } => vmtest::run(&kernels, run.as_deref()),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
