//! `cargo xtask build`: the release controller (with the eBPF object embedded) and the lab.

use std::path::PathBuf;

use crate::{setup, util};

pub fn run() -> anyhow::Result<PathBuf> {
    setup::run()?;
    util::run(util::cargo().args(["build", "--release", "-p", "hairpin-ctl", "-p", "hairpin-lab"]))?;
    let ctl = util::root().join("target/release/hairpin-ctl");
    eprintln!("built {}", ctl.display());
    Ok(ctl)
}
