//! A PostgreSQL cluster of the test's own: made with `initdb` in a temporary directory, served on
//! a free loopback port, stopped and removed when the guard drops (also when the test panics).
//! No service the machine runs is ever used.
//!
//! The server programs are Debian's (package `postgresql`, `/usr/lib/postgresql/VERSION/bin`),
//! run as the `postgres` user when the test runs as root (PostgreSQL refuses to run as root),
//! else as the test's own user. The cluster's default collation is ICU's root locale, which
//! sorts "admin" < "carol" < "Dave": code that needs a bytewise order must ask for it
//! (`COLLATE "C"`), and the tests see it when it does not.
//!
//! Databases are owned by the role `deskport`, which is not a superuser (so that limits such
//! as `ALTER ROLE … CONNECTION LIMIT` apply to it); [`Postgres::psql`] runs SQL as the
//! superuser `postgres`, for what a test does behind the application's back.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::{free_port, ProcessGuard};

/// The role that owns the test databases.
pub const ROLE: &str = "deskport";

/// A running PostgreSQL cluster; stopped and deleted on drop.
#[derive(Debug)]
pub struct Postgres {
    bin: PathBuf,
    port: u16,
    /// `Some` until the guard drops.
    server: Option<ProcessGuard>,
    dir: Option<tempfile::TempDir>,
}

/// The newest `/usr/lib/postgresql/VERSION/bin` with the server programs.
fn server_bin() -> Option<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            (bin.join("initdb").is_file() && bin.join("postgres").is_file())
                .then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin)
}

/// Set to `1` to skip the tests that need PostgreSQL on a machine without it.
pub const SKIP_VAR: &str = "DESKPORT_SKIP_POSTGRES";

fn skipping() -> bool {
    std::env::var(SKIP_VAR).as_deref() == Ok("1")
}

/// The uid and gid to run the server as, when running as root.
fn server_user() -> Option<(nix::unistd::Uid, nix::unistd::Gid)> {
    if !nix::unistd::geteuid().is_root() {
        return None;
    }
    let user = nix::unistd::User::from_name("postgres")
        .expect("read the user database")
        .expect("the user `postgres` exists (the postgresql package makes it)");
    Some((user.uid, user.gid))
}

fn as_server_user(command: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt as _;
    if let Some((uid, gid)) = server_user() {
        command.uid(uid.as_raw()).gid(gid.as_raw());
    }
    command
}

impl Postgres {
    /// A new cluster, running. `None` only when the environment says to skip PostgreSQL
    /// ([`SKIP_VAR`]`=1`); without it, missing server programs fail the test.
    pub fn start() -> Option<Self> {
        if skipping() {
            eprintln!("SKIPPED: {SKIP_VAR}=1 skips the tests that need PostgreSQL");
            return None;
        }
        let bin = server_bin().unwrap_or_else(|| {
            panic!(
                "PostgreSQL's server programs (initdb, postgres) are not in \
                 /usr/lib/postgresql/VERSION/bin: install Debian's package postgresql \
                 (scripts/install-deps does), or set {SKIP_VAR}=1 to skip these tests"
            )
        });
        let dir = crate::data_dir();
        if let Some((uid, gid)) = server_user() {
            nix::unistd::chown(dir.path(), Some(uid), Some(gid))
                .expect("give the cluster's directory to postgres");
        }
        let data = dir.path().join("data");
        let out = as_server_user(Command::new(bin.join("initdb")).arg("-D").arg(&data).args([
            "-U",
            "postgres",
            "--auth=trust",
            "--no-sync",
            "--no-instructions",
            "-E",
            "UTF8",
            "--locale=C",
            "--locale-provider=icu",
            "--icu-locale=und",
        ]))
        .output()
        .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = free_port(std::net::Ipv4Addr::LOCALHOST.into());
        let log = std::fs::File::create(dir.path().join("server.log")).expect("the server's log");
        let server = ProcessGuard::spawn(
            "postgres",
            as_server_user(&mut Command::new(bin.join("postgres")))
                .arg("-D")
                .arg(&data)
                .args(["-p", &port.to_string(), "-h", "127.0.0.1", "-k"])
                .arg(dir.path())
                .args([
                    "-c",
                    "fsync=off",
                    "-c",
                    "synchronous_commit=off",
                    "-c",
                    "full_page_writes=off",
                    "-c",
                    "max_connections=200",
                ])
                .stdout(Stdio::null())
                .stderr(log),
        )
        .expect("start postgres");
        let mut cluster = Self {
            bin,
            port,
            server: Some(server),
            dir: Some(dir),
        };
        cluster.wait_ready();
        cluster.psql("postgres", &format!("CREATE ROLE {ROLE} LOGIN"));
        Some(cluster)
    }

    fn dir(&self) -> &Path {
        self.dir
            .as_ref()
            .expect("the directory lives as long as the guard")
            .path()
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = Command::new(self.bin.join("pg_isready"))
                .args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string()])
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return;
            }
            let exited = self.server.as_mut().and_then(ProcessGuard::try_wait);
            assert!(
                exited.is_none() && Instant::now() < deadline,
                "PostgreSQL did not start ({exited:?}): {}",
                std::fs::read_to_string(self.dir().join("server.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The server's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL of database `name` as the role [`ROLE`].
    pub fn url(&self, name: &str) -> String {
        format!("postgres://{ROLE}@127.0.0.1:{}/{name}", self.port)
    }

    /// A new, empty database owned by [`ROLE`]; its URL.
    pub fn database(&self, name: &str) -> String {
        self.psql("postgres", &format!("CREATE DATABASE {name} OWNER {ROLE}"));
        self.url(name)
    }

    /// Runs `sql` in database `db` as the superuser; its output, one line per row, columns
    /// separated by `|`. Panics if psql fails.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-U", "postgres", "-d", db, "-c", sql])
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "psql {sql:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("psql prints UTF-8")
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(mut server) = self.server.take() {
            // Fast shutdown: clients still connected are disconnected.
            server.signal(Signal::SIGINT);
            server.wait_timeout(Duration::from_secs(10));
            drop(server);
        }
        drop(self.dir.take());
    }
}
