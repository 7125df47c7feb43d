//! Asking the user for a secret.

use std::io::{BufRead as _, IsTerminal as _, Write as _};

use anyhow::Context as _;

use crate::cli::UsageError;

/// Reads a password: from stdin (first line) or a terminal prompt without echo.
pub fn read_password(from_stdin: bool, prompt: &str) -> anyhow::Result<String> {
    let line = if from_stdin || !std::io::stdin().is_terminal() {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("read the password from stdin")?;
        line
    } else {
        eprint!("{prompt}");
        let _ = std::io::stderr().flush();
        let echo_off = std::process::Command::new("stty").arg("-echo").status();
        let mut line = String::new();
        let read = std::io::stdin().lock().read_line(&mut line);
        if echo_off.is_ok() {
            let _ = std::process::Command::new("stty").arg("echo").status();
        }
        eprintln!();
        read.context("read the password")?;
        line
    };
    let password = line.trim_end_matches(['\n', '\r']).to_owned();
    if password.is_empty() {
        return Err(UsageError("the password is empty".to_owned()).into());
    }
    Ok(password)
}
