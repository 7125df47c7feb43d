//! The drive benchmark (issue 18): a 64 MB file read and written through a drive xfreerdp
//! shares (`/drive:bench,PATH`), mounted in a virtual session as
//! `~/thinclient_drives/bench` (FUSE over `rdpdr`), next to the same copies on the local disk.
//!
//! FreeRDP's shadow server offers no drive redirection. xrdp 0.9 has it (its chansrv mounts
//! drives with FUSE 2, which needs `fusermount`, not installed by the project) but is not
//! measured here yet, so the peer is a plain local copy (`cat`), the ceiling any redirected
//! drive is measured against.
//! Each copy is done by the session's account with `cat`, timed whole (opening, every
//! request, closing); the data is compared afterwards. CPU-seconds: deskport's RDP server and
//! xfreerdp during the copy.
//!
//! Prints `DRIVES|what|how|MB|seconds|MB/s|server CPU-s|client CPU-s` lines; `scripts/bench
//! drives` turns them into a section of `bench/RESULTS.md`. Root only (it makes a Unix account
//! and mounts). `DRIVES_BENCH_MB` (default 64) changes the size.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use deskport_testsupport::files::{mounted, pattern};
use deskport_testsupport::servers::cpu_seconds;
use deskport_testsupport::{ProcessGuard, Xvfb};

mod support;

const LO: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const PASSWORD: &str = "Drive-bench-123";

/// Runs `script` as `user` (`sh -c`); panics if it fails. How long it took.
fn timed_as(user: &str, script: &str) -> Duration {
    let start = Instant::now();
    let out = Command::new("setpriv")
        .args([
            &format!("--reuid={user}"),
            &format!("--regid={user}"),
            "--init-groups",
            "sh",
            "-c",
            script,
        ])
        .output()
        .unwrap();
    let took = start.elapsed();
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    took
}

/// Removes the benchmark's Unix account when dropped.
struct Account(String);

impl Drop for Account {
    fn drop(&mut self) {
        let _ = Command::new("userdel").arg(&self.0).status();
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        return;
    }
    if !nix::unistd::geteuid().is_root() {
        println!("drives: skipped: it needs root (it makes a Unix account and mounts)");
        return;
    }
    for program in ["xfreerdp", "setpriv", "useradd", "userdel"] {
        if Command::new("sh")
            .args(["-c", &format!("command -v {program}")])
            .output()
            .map(|o| !o.status.success())
            .unwrap_or(true)
        {
            println!("drives: skipped: {program} is not installed");
            return;
        }
    }
    let mb: usize = std::env::var("DRIVES_BENCH_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    let dir = deskport_testsupport::data_dir();
    let dir = dir.path();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();

    let name = format!("dpbench{}", std::process::id());
    let home = dir.join(&name);
    let status = Command::new("useradd")
        .args(["--create-home", "--shell", "/bin/sh", "--home-dir"])
        .arg(&home)
        .arg(&name)
        .status()
        .unwrap();
    assert!(status.success(), "useradd");
    let _account = Account(name.clone());

    // The client's folder holds the file to read; the account's home the file to write.
    let share = dir.join("share");
    std::fs::create_dir(&share).unwrap();
    std::fs::set_permissions(&share, std::fs::Permissions::from_mode(0o777)).unwrap();
    let data = pattern(mb * 1024 * 1024, 4);
    std::fs::write(share.join("big.bin"), &data).unwrap();
    std::fs::set_permissions(
        share.join("big.bin"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let local = home.join("local.bin");
    std::fs::write(&local, &data).unwrap();
    Command::new("chown")
        .arg(format!("{name}:{name}"))
        .arg(&local)
        .status()
        .unwrap();

    let rdp = dir.join("rdp");
    support::add_user(&rdp, &name, PASSWORD);
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        "[rdp_server]\nsession_x_server = \"xvfb\"\nsound = false\n\
         session_commands = [\"exec sleep 1000000\"]\n",
    )
    .unwrap();
    let port = deskport_testsupport::free_port(LO);
    let log = dir.join("rdp-server.log");
    let server = support::rdp_server(&rdp, &config, port, "info", &log);
    deskport_testsupport::servers::wait_listening(port, None, "the RDP server");
    let display = Xvfb::start(1024, 768);
    let client = ProcessGuard::spawn(
        "xfreerdp",
        display
            .command("xfreerdp")
            .arg(format!("/v:127.0.0.1:{port}"))
            .args([
                &format!("/u:{name}"),
                &format!("/p:{PASSWORD}"),
                "/cert:ignore",
            ])
            .args(["/sec:nla", "/size:800x600"])
            .arg(format!("/drive:bench,{}", share.display()))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null()),
    )
    .unwrap();
    let mount = home.join("thinclient_drives/bench");
    deskport_testsupport::wait_until(Duration::from_secs(30), "the drive to be mounted", || {
        mounted(&mount).then_some(())
    });

    let m = mount.display().to_string();
    let h = home.display().to_string();
    let s = share.display().to_string();
    let runs: [(&str, &str, String, &Path, &[u8]); 4] = [
        (
            "read",
            "xfreerdp /drive (FUSE over rdpdr)",
            format!("cat '{m}/big.bin' > '{h}/read.bin'"),
            &home,
            &data,
        ),
        (
            "write",
            "xfreerdp /drive (FUSE over rdpdr)",
            format!("cat '{h}/local.bin' > '{m}/up.bin'"),
            &share,
            &data,
        ),
        (
            "read",
            "local copy (cat)",
            format!("cat '{s}/big.bin' > '{h}/read.bin'"),
            &home,
            &data,
        ),
        (
            "write",
            "local copy (cat)",
            format!("cat '{h}/local.bin' > '{s}/up.bin'"),
            &share,
            &data,
        ),
    ];
    for (what, how, script, out_dir, expected) in runs {
        let out = out_dir.join(if what == "read" { "read.bin" } else { "up.bin" });
        let _ = std::fs::remove_file(&out);
        let (server0, client0) = (cpu_seconds(server.pid()), cpu_seconds(client.pid()));
        let took = timed_as(&name, &script);
        let server_cpu = cpu_seconds(server.pid()) - server0;
        let client_cpu = cpu_seconds(client.pid()) - client0;
        assert!(
            std::fs::read(&out).unwrap() == expected,
            "{what} through {how}: the copy differs"
        );
        let secs = took.as_secs_f64();
        println!(
            "DRIVES|{what}|{how}|{mb}|{secs:.2}|{:.1}|{server_cpu:.2}|{client_cpu:.2}",
            mb as f64 / secs
        );
    }
    drop(client);
    drop(server);
}
