//! One module per command, each thin: take the parsed arguments, call the gateway's
//! operations, render what they return.

pub mod apply;
pub mod completions;
pub mod down;
pub mod flows;
pub mod man;
pub mod map;
pub mod run;
pub mod show;
pub mod stats;
pub mod up;

use clap::CommandFactory as _;

use crate::{
    cli::{Cli, Command},
    dataplane::PinDir,
};

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let pins = PinDir::new(cli.pin_dir);
    match cli.command {
        Command::Up(args) => up::run(&pins, &args),
        Command::Down => down::run(&pins),
        Command::Apply(a) => apply::run(&pins, &a),
        Command::Show(a) => show::run(&pins, a.json),
        Command::Map(cmd) => map::run(&pins, cmd),
        Command::Stats(a) => stats::run(&pins, a.json),
        Command::Flows(a) => flows::run(&pins, a),
        Command::Run(a) => run::run(&pins, &a).await,
        Command::Man(a) => man::run(Cli::command(), &a),
        Command::Completions(a) => completions::run(Cli::command(), &a),
    }
}
