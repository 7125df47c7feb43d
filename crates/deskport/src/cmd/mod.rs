//! One module per subcommand, each with its clap `Args` and an `exec` function.

pub mod config;
pub mod firewall;
