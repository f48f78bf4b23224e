//! `hairpin-ctl man DIR`: man pages generated from the command line's own definition, so they
//! never drift from `--help`.

use std::path::Path;

use anyhow::Context as _;

use crate::cli::docs::ManArgs;

/// Writes the pages of `cmd` (the dispatcher passes the whole command line).
pub fn run(cmd: clap::Command, a: &ManArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&a.dir).with_context(|| format!("creating {}", a.dir.display()))?;
    let mut cmd = cmd.disable_help_subcommand(true);
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
