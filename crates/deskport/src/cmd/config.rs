//! `deskport config`: what the loader made of file, environment and flags.

use crate::config::{self, ConfigFile, Settings};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    what: What,
}

#[derive(Debug, clap::Subcommand)]
enum What {
    /// Print the effective configuration (defaults < file < environment < flags) as TOML.
    Show {
        /// Print JSON instead of TOML.
        #[arg(long)]
        json: bool,
    },
    /// Print the path of the configuration file in use (and whether it exists).
    Path,
}

pub fn exec(args: Args, file: &ConfigFile, settings: &Settings) -> anyhow::Result<()> {
    match args.what {
        What::Show { json: true } => println!(
            "{}",
            serde_json::to_string_pretty(&config::masked(settings))?
        ),
        What::Show { json: false } => print!("{}", config::to_toml(settings)?),
        What::Path => {
            let state = if file.path.exists() {
                "exists"
            } else {
                "absent"
            };
            println!("{}\t{state}", file.path.display());
        }
    }
    Ok(())
}
