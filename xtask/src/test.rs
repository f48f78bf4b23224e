//! `cargo xtask test`: all tests, after the format and lint gates. Packet and lab tests need
//! root and a BPF-capable kernel; they fail (never skip) without them.

use crate::{build, util};

pub fn run(extra: &[String]) -> anyhow::Result<()> {
    util::require_root("the packet and lab tests")?;
    let ctl = build::run()?;
    util::run(util::cargo().args(["fmt", "--all", "--check"]))?;
    util::run(util::cargo().args(["clippy", "--release", "--all-targets", "--", "-D", "warnings"]))?;
    // Default members only: the eBPF crate builds for the BPF target, through hairpin-ctl.
    util::run(util::cargo().args(["test", "--release"]).args(extra).env("HAIRPIN_CTL", ctl))
}
