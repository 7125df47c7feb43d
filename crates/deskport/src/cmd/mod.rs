//! One module per subcommand, each with its clap `Args` and an `exec` function.

pub mod config;
pub mod connect;
pub mod firewall;
pub mod manager;
pub mod rdp_server;
pub mod remote;
