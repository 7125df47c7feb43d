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

/// Runs `command` with `input` and a newline on its standard input.
pub fn run_input(command: &mut Command, input: &str) -> Run {
    use std::io::Write as _;
    use std::process::Stdio;
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run deskport");
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(format!("{input}\n").as_bytes())
        .expect("write to deskport's stdin");
    output(child.wait_with_output().expect("run deskport"))
}

pub fn run(command: &mut Command) -> Run {
    output(command.output().expect("run deskport"))
}

fn output(out: Output) -> Run {
    let Output {
        status,
        stdout,
        stderr,
    } = out;
    Run {
        code: status.code().expect("deskport exited by a signal"),
        stdout: String::from_utf8(stdout).expect("stdout is UTF-8"),
        stderr: String::from_utf8(stderr).expect("stderr is UTF-8"),
    }
}
