//! `hairpin-ctl up`: load, configure, attach and pin; all of it or none of it.

use anyhow::Context as _;

use crate::{
    cli::gateway::{UpArgs, flag_of},
    dataplane::PinDir,
    gateway::{Source, attach},
};

pub fn run(pins: &PinDir, a: &UpArgs) -> anyhow::Result<()> {
    let (spec, source) = match &a.config {
        Some(path) => Source::load(path.clone())?,
        None => {
            let spec = a
                .overrides()
                .spec()
                .context("give --lan and --wan (the gateway's two interfaces), or --config FILE")?;
            (spec, Source::Flags { flag: flag_of })
        }
    };
    for line in attach::bring_up(pins, &spec, &source)?.summary() {
        say!("{line}");
    }
    Ok(())
}
