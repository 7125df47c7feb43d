//! Running the built binary with a controlled environment.

use std::path::Path;
use std::process::{Command, Output};

/// A `deskport` command whose environment holds no DESKPORT_ or RUST_LOG variables from the
/// caller, and whose default config location is inside `home` (so a developer's own
/// ~/.config/deskport never leaks into a test).
pub fn deskport(home: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_deskport"));
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("DESKPORT_") || key == "RUST_LOG" {
            command.env_remove(&*key);
        }
    }
    command
        .env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join(".config"));
    command
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

pub fn run(command: &mut Command) -> Run {
    let Output {
        status,
        stdout,
        stderr,
    } = command.output().expect("run deskport");
    Run {
        code: status.code().expect("deskport exited by a signal"),
        stdout: String::from_utf8(stdout).expect("stdout is UTF-8"),
        stderr: String::from_utf8(stderr).expect("stderr is UTF-8"),
    }
}
