//! Drives (issue 18): a drive xfreerdp shares (`/drive:NAME,PATH`) appears in the virtual
//! session as `~/thinclient_drives/NAME` (FUSE, over `rdpdr`). The session's account lists,
//! reads, writes, renames and deletes there with ordinary programs, and the client's folder
//! changes byte for byte; errors come back as errnos; a client that stops answering costs
//! the session's programs an EIO after the drive timeout, not a hang; the folder goes when
//! the client does.

use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use deskport_testsupport::files::{mounted, pattern};
use deskport_testsupport::{free_port, require_program, require_root, wait_until, Xvfb};

use crate::rdp::{add_account, rdesktop_command, xfreerdp_to, PASSWORD};
use crate::support::UnixUser;

const LO: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// Runs `script` with `sh -c` as the account (its uid, gid and groups), with `M` set to the
/// drive's folder; its exit status and output (stdout and stderr).
fn as_account(user: &UnixUser, mount: &Path, script: &str) -> (bool, String) {
    let account = nix::unistd::User::from_name(&user.name).unwrap().unwrap();
    let out = Command::new("timeout")
        .args(["60", "setpriv"])
        .arg(format!("--reuid={}", account.uid))
        .arg(format!("--regid={}", account.gid))
        .args(["--init-groups", "sh", "-c", script])
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", &user.home)
        .env("M", mount)
        .output()
        .unwrap();
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// A virtual-session server (drive timeout 3 s) and an account with a home to mount in.
struct Setup {
    // Dropped in this order: the server, the account, the directory.
    _server: deskport_testsupport::ProcessGuard,
    user: UnixUser,
    dir: tempfile::TempDir,
    port: u16,
    log: std::path::PathBuf,
}

/// `pid` and every process below it, deepest first.
fn descendants(pid: u32) -> Vec<u32> {
    let out = Command::new("pgrep")
        .args(["-P", &pid.to_string()])
        .output()
        .unwrap();
    let mut all = Vec::new();
    for child in String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.parse().ok())
    {
        all.extend(descendants(child));
    }
    all.push(pid);
    all
}

impl Setup {
    /// Kills the server with SIGKILL (it leaves its mounts behind, dead), ends what it had
    /// started, and starts it again; its log is then `rdp-server-2.log`.
    fn crash_and_restart(&mut self) {
        let pids = descendants(self._server.pid());
        for pid in pids {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = self._server.child_mut().wait();
        self.log = self.dir.path().join("rdp-server-2.log");
        self._server = crate::rdp::rdp_server(
            &self.dir.path().join("rdp"),
            &self.dir.path().join("config.toml"),
            self.port,
            &[],
            &self.log,
        );
    }

    /// The server, with `extra` lines in its `[rdp_server]` section.
    fn start(extra: &str) -> Self {
        require_root();
        for program in ["xterm", "setpriv", "timeout", "cmp"] {
            require_program(program);
        }
        assert!(
            Path::new("/dev/fuse").exists(),
            "/dev/fuse is missing: the drive tests need FUSE"
        );
        let dir = deskport_testsupport::data_dir();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let user = UnixUser::create(dir.path());
        let data = dir.path().join("rdp");
        add_account(&data, &user.name, PASSWORD);
        let config = dir.path().join("config.toml");
        std::fs::write(
            &config,
            format!("[rdp_server]\nsession_x_server = \"xvfb\"\nsound = false\ndrive_timeout_secs = 3\n\
             session_commands = [\"exec xterm -geometry 80x20+0+0\"]\n{extra}"),
        )
        .unwrap();
        let port = free_port(LO);
        let log = dir.path().join("rdp-server.log");
        let server = crate::rdp::rdp_server(&data, &config, port, &[], &log);
        Self {
            dir,
            user,
            port,
            log,
            _server: server,
        }
    }

    /// xfreerdp (NLA, 800x600) on `display` as the account, sharing `share` as drive `share`.
    fn xfreerdp_sharing(&self, display: &Xvfb, share: &Path) -> crate::rdp::Client {
        xfreerdp_to(
            display,
            &format!("127.0.0.1:{}", self.port),
            self.dir.path(),
            &self.user.name,
            PASSWORD,
            &[
                "/sec:nla",
                "/size:800x600",
                &format!("/drive:share,{}", share.display()),
            ],
        )
    }

    fn server_log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

#[test]
fn a_shared_drive_is_a_folder_in_the_session_both_ways_byte_for_byte() {
    let setup = Setup::start("");
    let (dir, user) = (&setup.dir, &setup.user);
    let server_log = || setup.server_log();

    // The client's folder: a text file, a file of several MB, a folder with a file in it.
    let share = dir.path().join("share");
    std::fs::create_dir_all(share.join("sub")).unwrap();
    std::fs::write(share.join("hello.txt"), "hello from the client\n").unwrap();
    let big = pattern(5 * 1024 * 1024 + 123, 1);
    std::fs::write(share.join("big.bin"), &big).unwrap();
    std::fs::write(share.join("sub/inner.txt"), "inner\n").unwrap();
    std::fs::write(
        share.join("later.txt"),
        "read only after the client stalls\n",
    )
    .unwrap();
    // What the session will write.
    let upload = pattern(3 * 1024 * 1024 + 7, 2);
    std::fs::write(dir.path().join("upload.bin"), &upload).unwrap();
    for f in [
        "share",
        "share/sub",
        "share/hello.txt",
        "share/big.bin",
        "upload.bin",
    ] {
        let mode = if dir.path().join(f).is_dir() {
            0o755
        } else {
            0o644
        };
        std::fs::set_permissions(dir.path().join(f), std::fs::Permissions::from_mode(mode))
            .unwrap();
    }

    let client = Xvfb::start(1024, 768);
    let xfreerdp = setup.xfreerdp_sharing(&client, &share);
    let mount = user.home.join("thinclient_drives/share");
    wait_until(Duration::from_secs(30), "the drive to be mounted", || {
        mounted(&mount).then_some(())
    });
    let (ok, listing) = as_account(user, &mount, "ls -1 \"$M\"");
    assert!(ok, "ls: {listing}\n{}", server_log());
    let mut names: Vec<&str> = listing.lines().collect();
    names.sort_unstable();
    assert_eq!(
        names,
        ["big.bin", "hello.txt", "later.txt", "sub"],
        "{listing}"
    );
    // The folder is the account's, and nobody else's.
    let (ok, out) = as_account(user, &mount, "stat -c '%U %a' \"$M\" \"$M/hello.txt\"");
    assert!(ok, "{out}");
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [format!("{} 700", user.name), format!("{} 600", user.name)]
    );

    // Reading: the client's files, byte for byte.
    let (ok, out) = as_account(
        user,
        &mount,
        &format!(
            "cat \"$M/hello.txt\" && cat \"$M/sub/inner.txt\" && cmp \"$M/big.bin\" {}",
            share.join("big.bin").display()
        ),
    );
    assert!(ok, "reading: {out}\n{}", server_log());
    assert_eq!(out, "hello from the client\ninner\n");

    // Writing: a file of several MB, a folder and a file in it, a rename, a delete, a
    // truncation; each seen on the client's side.
    let (ok, out) = as_account(
        user,
        &mount,
        &format!(
            "set -e; cp {} \"$M/up.bin\"; mkdir \"$M/new\"; echo made > \"$M/new/made.txt\"; \
             mv \"$M/hello.txt\" \"$M/renamed.txt\"; rm \"$M/sub/inner.txt\"; \
             echo 0123456789abcdef > \"$M/cut.txt\"; truncate -s 4 \"$M/cut.txt\"",
            dir.path().join("upload.bin").display()
        ),
    );
    assert!(ok, "writing: {out}\n{}", server_log());
    assert!(
        std::fs::read(share.join("up.bin")).unwrap() == upload,
        "the file written in the session differs on the client's side"
    );
    assert_eq!(
        std::fs::read_to_string(share.join("new/made.txt")).unwrap(),
        "made\n"
    );
    assert!(!share.join("hello.txt").exists());
    assert_eq!(
        std::fs::read_to_string(share.join("renamed.txt")).unwrap(),
        "hello from the client\n"
    );
    assert!(!share.join("sub/inner.txt").exists());
    assert_eq!(
        std::fs::read_to_string(share.join("cut.txt")).unwrap(),
        "0123"
    );

    // The drive's size and free space are the client's disk's (`df` through statfs).
    let (ok, out) = as_account(user, &mount, "df -B1 --output=size,avail \"$M\" | tail -1");
    assert!(ok, "df: {out}");
    let sizes: Vec<u64> = out
        .split_whitespace()
        .filter_map(|n| n.parse().ok())
        .collect();
    let local = nix::sys::statvfs::statvfs(&share).unwrap();
    let total = local.blocks() * local.fragment_size();
    assert!(
        sizes.len() == 2 && sizes[0] > 0 && sizes[0].abs_diff(total) <= total / 100,
        "df through the drive: {out}; the client's disk: {total} bytes"
    );

    // The client's errors as errnos.
    let (ok, out) = as_account(user, &mount, "cat \"$M/missing.txt\"");
    assert!(!ok && out.contains("No such file or directory"), "{out}");
    let (ok, out) = as_account(user, &mount, "mkdir \"$M/new\"");
    assert!(!ok && out.contains("File exists"), "{out}");
    let (ok, out) = as_account(user, &mount, "rmdir \"$M/new\"");
    assert!(!ok && out.contains("Directory not empty"), "{out}");
    assert!(share.join("new/made.txt").exists());
    // Another account cannot get in, even with the way to the mount open: the drive's own
    // modes (0700, the account's) keep it out.
    let other = UnixUser::create(dir.path());
    let (ok, out) = as_account(&other, &mount, "ls \"$M\"");
    assert!(!ok && out.contains("Permission denied"), "{out}");
    for open in [user.home.clone(), user.home.join("thinclient_drives")] {
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let (ok, out) = as_account(&other, &mount, "ls \"$M\" || cat \"$M/later.txt\"");
    assert!(!ok && out.contains("Permission denied"), "{out}");

    // A client that stops answering: the program gets EIO after the drive timeout (3 s),
    // not a hang (`timeout 60` would say 124).
    let pid = nix::unistd::Pid::from_raw(xfreerdp.process.pid() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let (ok, out) = as_account(user, &mount, "cat \"$M/later.txt\"");
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();
    assert!(!ok && out.contains("Input/output error"), "{out}");
    assert!(
        server_log().contains("did not answer a drive request in time"),
        "{}",
        server_log()
    );
    // It answers again: the drive works again.
    let (ok, out) = as_account(user, &mount, "cat \"$M/later.txt\"");
    assert!(ok, "after the stall: {out}\n{}", server_log());

    // The client leaves: the folder is unmounted and removed.
    drop(xfreerdp);
    wait_until(Duration::from_secs(20), "the drive to be unmounted", || {
        (!mounted(&mount)).then_some(())
    });
    wait_until(Duration::from_secs(5), "the mount point to go", || {
        (!mount.exists()).then_some(())
    });
    assert!(
        server_log().contains("Client drive unmounted"),
        "{}",
        server_log()
    );
}

/// rdesktop (`-r disk:NAME=PATH`), which announces its drives without waiting to be told the
/// user logged on, answers the Announce with its own (legacy) client id and names drives in
/// 8-bit characters: the folder is there, listed, its files' sizes right. (rdesktop 1.9 never
/// answers reads and writes on a drive — its asynchronous disk path — so only what it answers
/// is checked: contents are checked with xfreerdp above.)
#[test]
fn rdesktops_drive_is_a_folder_too() {
    // rdesktop's NLA wants Kerberos: it logs on in TLS mode.
    let setup = Setup::start("nla_only = false\n");
    let (dir, user) = (&setup.dir, &setup.user);
    let share = dir.path().join("rshare");
    std::fs::create_dir_all(share.join("inner")).unwrap();
    std::fs::set_permissions(&share, std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::write(share.join("from-client.bin"), pattern(1024 * 1024 + 5, 3)).unwrap();
    let client = Xvfb::start(1024, 768);
    let _rdesktop = rdesktop_command(
        client.command("rdesktop"),
        &format!("127.0.0.1:{}", setup.port),
        dir.path(),
        &user.name,
        PASSWORD,
        &[
            "-g",
            "800x600",
            "-r",
            &format!("disk:rshare={}", share.display()),
        ],
    );
    let mount = user.home.join("thinclient_drives/rshare");
    wait_until(
        Duration::from_secs(30),
        "rdesktop's drive to be mounted",
        || mounted(&mount).then_some(()),
    );
    let (ok, out) = as_account(
        user,
        &mount,
        "ls -1 \"$M\" && stat -c '%s %F' \"$M/from-client.bin\" && stat -c %F \"$M/inner\"",
    );
    assert!(ok, "{out}\n{}", setup.server_log());
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            "from-client.bin",
            "inner",
            "1048581 regular file",
            "directory"
        ],
        "{out}"
    );
}

/// The account plants a symbolic link where the drives go (the server mounts as root): the
/// drive is not mounted, and nothing is mounted where the link points.
#[test]
fn a_link_where_the_drives_go_is_refused() {
    let setup = Setup::start("");
    let (dir, user) = (&setup.dir, &setup.user);
    let elsewhere = dir.path().join("elsewhere");
    std::fs::create_dir_all(elsewhere.join("share")).unwrap();
    std::fs::create_dir_all(&user.home).unwrap();
    std::os::unix::fs::symlink(&elsewhere, user.home.join("thinclient_drives")).unwrap();
    let account = nix::unistd::User::from_name(&user.name).unwrap().unwrap();
    for p in [&user.home, &elsewhere, &elsewhere.join("share")] {
        std::os::unix::fs::chown(p, Some(account.uid.as_raw()), Some(account.gid.as_raw()))
            .unwrap();
    }
    std::os::unix::fs::lchown(
        user.home.join("thinclient_drives"),
        Some(account.uid.as_raw()),
        Some(account.gid.as_raw()),
    )
    .unwrap();
    let share = dir.path().join("share");
    std::fs::create_dir(&share).unwrap();
    let client = Xvfb::start(1024, 768);
    let _xfreerdp = setup.xfreerdp_sharing(&client, &share);
    wait_until(Duration::from_secs(30), "the drive to be refused", || {
        setup
            .server_log()
            .contains("Client drive not mounted")
            .then_some(())
    });
    assert!(
        setup.server_log().contains("a symbolic link is refused"),
        "{}",
        setup.server_log()
    );
    assert!(!mounted(&elsewhere.join("share")));
    assert!(!mounted(&user.home.join("thinclient_drives/share")));
}

/// A server killed with SIGKILL leaves its drive mounted and dead ("Transport endpoint is not
/// connected"); the next time the drive comes, the dead mount is detached and the drive
/// mounted at its own name again.
#[test]
fn a_dead_mount_left_by_a_killed_server_is_replaced() {
    let mut setup = Setup::start("");
    let share = setup.dir.path().join("share");
    std::fs::create_dir(&share).unwrap();
    std::fs::write(share.join("f.txt"), "once\n").unwrap();
    std::fs::set_permissions(share.join("f.txt"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let mount = setup.user.home.join("thinclient_drives/share");
    let client = Xvfb::start(1024, 768);
    let first = setup.xfreerdp_sharing(&client, &share);
    wait_until(Duration::from_secs(30), "the drive to be mounted", || {
        mounted(&mount).then_some(())
    });
    setup.crash_and_restart();
    drop(first);
    let (ok, out) = as_account(&setup.user, &mount, "cat \"$M/f.txt\"");
    assert!(
        !ok && out.contains("Transport endpoint is not connected"),
        "{out}"
    );
    let _second = setup.xfreerdp_sharing(&client, &share);
    wait_until(
        Duration::from_secs(30),
        "the drive to be mounted again",
        || {
            setup
                .server_log()
                .contains("Client drive mounted")
                .then_some(())
        },
    );
    let (ok, out) = as_account(&setup.user, &mount, "cat \"$M/f.txt\"");
    assert!(ok && out == "once\n", "{out}\n{}", setup.server_log());
    assert!(!setup.user.home.join("thinclient_drives/share_2").exists());
}
