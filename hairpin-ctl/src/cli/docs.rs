//! The arguments of the commands that describe the command line itself.

use std::path::PathBuf;

use clap::Args;
use clap_complete::Shell;

#[derive(Debug, Args)]
pub struct ManArgs {
    /// Where to write the pages: hairpin-ctl.8 and hairpin-ctl-<command>.8 for each command
    /// (e.g. /usr/local/share/man/man8).
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// bash, zsh, fish, elvish or powershell. Install it where the shell looks, e.g.
    /// `hairpin-ctl completions bash > /etc/bash_completion.d/hairpin-ctl`.
    #[arg(value_enum)]
    pub shell: Shell,
}
