//! Structured logging to stderr: `tracing` with an `EnvFilter` (`RUST_LOG` wins over the
//! configured filter) in text or JSON lines.

use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, LogSettings};

/// Installs the global subscriber. A bad filter is a usage error, reported before anything runs.
pub fn init(settings: &LogSettings) -> anyhow::Result<()> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(env) if !env.is_empty() => EnvFilter::try_new(&env)
            .map_err(|e| anyhow::anyhow!("invalid RUST_LOG filter {env:?}: {e}"))?,
        _ => EnvFilter::try_new(&settings.filter)
            .map_err(|e| anyhow::anyhow!("invalid log.filter {:?}: {e}", settings.filter))?,
    };
    use std::io::IsTerminal as _;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let result = match settings.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    result.map_err(|e| anyhow::anyhow!("install the log subscriber: {e}"))
}
