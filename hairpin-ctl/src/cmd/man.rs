//! `hairpin-ctl man DIR`: man pages generated from the command line's own definition, so they
//! never drift from `--help`.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::{Args, CommandFactory as _};

use crate::cli::Cli;

#[derive(Debug, Args)]
pub struct ManArgs {
    /// Where to write the pages: hairpin-ctl.8 and hairpin-ctl-<command>.8 for each command
    /// (e.g. /usr/local/share/man/man8).
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
}

pub fn run(a: &ManArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&a.dir).with_context(|| format!("creating {}", a.dir.display()))?;
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    let mut written = 0;
    write(&cmd, &a.dir, &mut written)?;
    say!("wrote {written} man pages (section 8) to {}", a.dir.display());
    Ok(())
}

fn write(cmd: &clap::Command, dir: &Path, written: &mut usize) -> anyhow::Result<()> {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write(sub, dir, written)?;
    }
    let man = clap_mangen::Man::new(cmd.clone()).section("8").manual("System Manager's Manual");
    let path = man.generate_to(dir).with_context(|| format!("writing a man page into {}", dir.display()))?;
    *written += 1;
    debug_assert!(path.exists());
    Ok(())
}
