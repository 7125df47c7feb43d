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

/// Bytes the server's sockets on `port` (in `netns`, if given) have sent and had acknowledged
/// (`ss`'s `bytes_acked`).
#[allow(dead_code)] // (each bench compiles this module; not every one counts bytes)
pub fn bytes_sent(port: u16, netns: Option<&deskport_testsupport::Netns>) -> u64 {
    let out = deskport_testsupport::servers::command_in(netns, "ss")
        .args(["-tinH", "state", "established"])
        .arg(format!("( sport = :{port} )"))
        .output()
        .expect("run ss");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("bytes_acked:"))
        .filter_map(|v| v.parse::<u64>().ok())
        .sum()
}
