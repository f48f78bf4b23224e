//! `hairpin-ctl completions SHELL`: a completion script for the shell, from the command line's
//! own definition.

use crate::cli::docs::CompletionsArgs;

pub fn run(mut cmd: clap::Command, a: &CompletionsArgs) -> anyhow::Result<()> {
    let mut script = Vec::new();
    clap_complete::generate(a.shell, &mut cmd, "hairpin-ctl", &mut script);
    say!("{}", String::from_utf8_lossy(&script).trim_end());
    Ok(())
}
