//! `cargo xtask bench`: builds and runs `hairpin-bench` (root). Figures are printed as markdown;
//! they are never pass/fail.

use crate::util;

pub fn run(args: &[String]) -> anyhow::Result<()> {
    util::require_root("the benchmarks")?;
    let ctl = crate::build::run()?;
    util::run(util::cargo().args(["build", "--release", "-p", "hairpin-bench"]))?;
    let bench = util::root().join("target/release/hairpin-bench");
    let mut cmd = std::process::Command::new(&bench);
    match args.first().map(String::as_str) {
        // The whole benchmark: forwarding rates, per-packet costs and bulk TCP (report and
        // chart written to bench/), then the sweep.
        None => {
            let out = util::root().join("bench/results.md");
            util::run(cmd.args(["forward", "--ctl"]).arg(&ctl).arg("--out").arg(&out))?;
            util::run(std::process::Command::new(&bench).args(["micro", "--append"]).arg(&out))?;
            util::run(std::process::Command::new(&bench).args(["bulk", "--ctl"]).arg(&ctl).arg("--append").arg(&out))?;
            util::run(std::process::Command::new(&bench).arg("sweep"))
        }
        Some("forward") => util::run(cmd.arg("forward").arg("--ctl").arg(&ctl).args(&args[1..])),
        Some(_) => util::run(cmd.args(args)),
    }
}
