//! `cargo xtask test`: all tests, after the format and lint gates, then the packet and lab tests
//! again on Debian 12's 6.1 and 6.12 kernels in VMs. Packet and lab tests need root and a
//! BPF-capable kernel; they fail (never skip) without them.

use std::{
    io::{BufRead, BufReader},
    process::Stdio,
};

use anyhow::{Context as _, bail};

use crate::{build, util};

/// The kernels `cargo xtask test` also runs the tests on, in VMs (see `vmtest.rs`).
const VM_KERNELS: [&str; 2] = ["6.1", "6.12"];

pub fn run(extra: &[String]) -> anyhow::Result<()> {
    util::require_root("the packet and lab tests")?;
    let ctl = build::run()?;
    util::run(util::cargo().args(["fmt", "--all", "--check"]))?;
    crate::layers::run()?;
    util::run(util::cargo().args(["clippy", "--release", "--all-targets", "--", "-D", "warnings"]))?;
    // Default members only: the eBPF crate builds for the BPF target, through hairpin-ctl.
    let mut child = util::cargo()
        .args(["test", "--release"])
        .args(extra)
        .env("HAIRPIN_CTL", &ctl)
        .stdout(Stdio::piped())
        .spawn()
        .context("running cargo test")?;
    // Pass the output through and add up every binary's "test result:" line, so the run ends
    // with one total rather than the last (often empty) binary's count.
    let (mut passed, mut failed) = (0u64, 0u64);
    for line in BufReader::new(child.stdout.take().context("stdout")?).lines() {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            let num = |word: &str| {
                rest.split(';')
                    .find_map(|part| part.trim().strip_suffix(word)?.trim().rsplit(' ').next()?.parse::<u64>().ok())
            };
            passed += num("passed").unwrap_or(0);
            failed += num("failed").unwrap_or(0);
        }
    }
    let status = child.wait()?;
    // The benchmark harnesses' smoke runs, so they cannot rot: every path must deliver
    // translated frames, every iperf3 run complete (figures are printed, never judged).
    // Skipped when a filter picks tests.
    if extra.is_empty() {
        util::run(util::cargo().args(["build", "--release", "-p", "hairpin-bench"]))?;
        let bench = util::root().join("target/release/hairpin-bench");
        for what in ["forward", "bulk"] {
            let smoke = std::process::Command::new(&bench).args([what, "--quick", "--ctl"]).arg(&ctl).status();
            match smoke {
                Ok(s) if s.success() => passed += 1,
                _ => {
                    eprintln!("bench smoke (hairpin-bench {what} --quick) failed");
                    failed += 1;
                }
            }
        }
    }
    // The kernels gateways run (Debian 12's 6.1 and 6.12), each in a VM: the packet tests and
    // the plain-topology lab again. Skipped when a filter picks tests.
    if extra.is_empty() {
        let kernels = VM_KERNELS.map(String::from);
        match crate::vmtest::run_each(&kernels, None) {
            Ok(results) => {
                for (kernel, result) in results {
                    match result {
                        Ok(()) => passed += 1,
                        Err(e) => {
                            eprintln!("vmtest {kernel}: {e:#}");
                            failed += 1;
                        }
                    }
                }
            }
            Err(e) => {
                eprintln!("vmtest: {e:#}");
                failed += VM_KERNELS.len() as u64;
            }
        }
    }
    println!("summary: {passed} passed, {failed} failed");
    if !status.success() || failed > 0 {
        bail!("tests failed ({status})");
    }
    if passed == 0 {
        bail!("no test ran");
    }
    Ok(())
}
