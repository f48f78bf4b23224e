//! `cargo xtask bench`: builds and runs `hairpin-bench` (root). Figures are printed as markdown;
//! they are never pass/fail.

use crate::{setup, util};

pub fn run(args: &[String]) -> anyhow::Result<()> {
    util::require_root("the benchmarks")?;
    setup::run()?;
    util::run(util::cargo().args(["build", "--release", "-p", "hairpin-bench"]))?;
    let bench = util::root().join("target/release/hairpin-bench");
    let args: Vec<String> = if args.is_empty() { vec!["sweep".into()] } else { args.to_vec() };
    util::run(std::process::Command::new(bench).args(&args))
}
