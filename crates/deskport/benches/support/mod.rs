//! What the RDP benchmarks share.

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};

/// Adds `user` with `password` to the account store of deskport's RDP server in `data`.
pub fn add_user(data: &Path, user: &str, password: &str) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_deskport"))
        .args(["rdp-server", "--data-dir"])
        .arg(data)
        .args(["user", "add", user, "--password-stdin"])
        .env("DESKPORT_CONFIG", "/dev/null")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("run deskport rdp-server user add");
    writeln!(child.stdin.take().expect("piped stdin"), "{password}").expect("write the password");
    assert!(child.wait().expect("wait for deskport").success());
}
