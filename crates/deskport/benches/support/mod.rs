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

/// deskport's RDP server on 127.0.0.1:`port` with its data in `data`, the configuration file
/// `config`, `RUST_LOG=rust_log` and its log in `log` (not waited for).
#[allow(dead_code)] // (each bench compiles this module; the rdp and heavy ones start theirs otherwise)
pub fn rdp_server(
    data: &Path,
    config: &Path,
    port: u16,
    rust_log: &str,
    log: &Path,
) -> deskport_testsupport::ProcessGuard {
    deskport_testsupport::ProcessGuard::spawn(
        "deskport rdp-server",
        Command::new(env!("CARGO_BIN_EXE_deskport"))
            .args(["rdp-server", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--data-dir")
            .arg(data)
            .env("DESKPORT_CONFIG", config)
            .env("RUST_LOG", rust_log)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).expect("create the server's log")),
    )
    .expect("start deskport rdp-server")
}
