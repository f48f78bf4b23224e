//! `hairpin-ctl completions SHELL`: a completion script for the shell, from the command line's
//! own definition.

use clap::{Args, CommandFactory as _};
use clap_complete::Shell;

use crate::cli::Cli;

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// bash, zsh, fish, elvish or powershell. Install it where the shell looks, e.g.
    /// `hairpin-ctl completions bash > /etc/bash_completion.d/hairpin-ctl`.
    #[arg(value_enum)]
    pub shell: Shell,
}

pub fn run(a: &CompletionsArgs) -> anyhow::Result<()> {
    let mut script = Vec::new();
    clap_complete::generate(a.shell, &mut Cli::command(), "hairpin-ctl", &mut script);
    say!("{}", String::from_utf8_lossy(&script).trim_end());
    Ok(())
}
