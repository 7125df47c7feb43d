//! One module per subcommand, each with its clap `Args` and an `exec` function.

pub mod config;
pub mod connect;
pub mod docs;
pub mod firewall;
pub mod manager;
pub mod rd_gateway;
pub mod rdp_server;
pub mod remote;
pub mod up;

/// Parses `WIDTHxHEIGHT` (each 200-8192), for desktop sizes.
pub fn parse_size(text: &str) -> Result<(u16, u16), String> {
    let (w, h) = text
        .split_once(['x', 'X'])
        .ok_or_else(|| format!("{text:?} is not WIDTHxHEIGHT"))?;
    let parse = |v: &str| {
        v.trim()
            .parse::<u16>()
            .ok()
            .filter(|v| (200..=8192).contains(v))
    };
    match (parse(w), parse(h)) {
        (Some(w), Some(h)) => Ok((w, h)),
        _ => Err(format!("{text:?}: width and height must be 200-8192")),
    }
}
