//! `cargo xtask lab`: the hairpin story in namespaces, narrated.

use crate::{build, util};

pub fn run() -> anyhow::Result<()> {
    util::require_root("the lab")?;
    let ctl = build::run()?;
    util::run(std::process::Command::new(util::root().join("target/release/hairpin-lab")).arg(ctl))
}
