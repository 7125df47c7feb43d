//! `deskport`: the one binary. Parsing, configuration and logging are set up here; each
//! subcommand lives in `cmd/` and the logic in the library crates.

mod cli;
mod cmd;
mod config;
mod logging;
mod prompt;
mod runtime;

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("deskport: error: {err:#}");
            ExitCode::from(cli::exit_code(&err))
        }
    }
}
