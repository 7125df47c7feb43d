//! Running the built binary with a controlled environment.

use std::path::Path;
use std::process::{Command, Output};

/// A `deskport` command whose environment holds no DESKPORT_ or RUST_LOG variables from the
/// caller, and whose default config location is inside `home` (so a developer's own
/// ~/.config/deskport never leaks into a test).
pub fn deskport(home: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_deskport"));
    isolate(&mut command, home);
    command
}

/// Gives `command` (deskport, or a command that runs it, e.g. in a namespace) an environment
/// without the caller's DESKPORT_ and RUST_LOG variables, its home and config in `home`.
pub fn isolate(command: &mut Command, home: &Path) {
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("DESKPORT_") || key == "RUST_LOG" {
            command.env_remove(&*key);
        }
    }
    command
        .env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join(".config"));
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

/// `GET path` over HTTPS from the server on loopback `port` whose certificate has `fingerprint`
/// (checked: a different one fails); the whole response, headers included.
pub fn https_get(port: u16, path: &str, fingerprint: &str) -> Result<String, String> {
    use std::io::{Read as _, Write as _};
    let trust = deskport_tls::ServerTrust::Fingerprint(fingerprint.to_owned());
    let verifier = deskport_tls::Verifier::new(&trust, &format!("127.0.0.1:{port}"))
        .map_err(|e| e.to_string())?;
    let config = verifier.client_config().map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let connection = rustls::ClientConnection::new(std::sync::Arc::new(config), name)
        .map_err(|e| e.to_string())?;
    let tcp = std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let mut tls = rustls::StreamOwned::new(connection, tcp);
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    let mut text = String::new();
    match tls
        .write_all(request.as_bytes())
        .and_then(|()| tls.read_to_string(&mut text))
    {
        Ok(_) => Ok(text),
        // A peer that closes without close_notify after the whole answer.
        Err(_) if text.contains("\r\n\r\n") => Ok(text),
        Err(e) => Err(verifier.take_refusal().unwrap_or_else(|| e.to_string())),
    }
}

/// The PIDs of the processes of Unix account `user` (named `name`, if given), as `pgrep`
/// finds them.
pub fn processes_of(user: &str, name: Option<&str>) -> Vec<String> {
    let mut pgrep = Command::new("pgrep");
    pgrep.args(["-u", user]);
    if let Some(name) = name {
        pgrep.args(["-x", name]);
    }
    let out = pgrep.output().expect("run pgrep");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The environment of process `pid` (empty once it is gone).
pub fn environ(pid: &str) -> Vec<(String, String)> {
    let raw = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    raw.split(|b| *b == 0)
        .filter_map(|kv| {
            let kv = String::from_utf8_lossy(kv);
            kv.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
        })
        .collect()
}

/// A Unix account made for a test (shell /bin/sh, home `dir/NAME`, in the groups `groups`),
/// deleted with its processes on drop: RDP servers running as root start each session as the
/// account named like the RDP one.
pub struct UnixUser {
    pub name: String,
    pub home: std::path::PathBuf,
}

impl UnixUser {
    pub fn create(dir: &Path) -> Self {
        Self::create_in_groups(dir, &[])
    }

    pub fn create_in_groups(dir: &Path, groups: &[&str]) -> Self {
        deskport_testsupport::require_program("useradd");
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("dpt{}x{n}", std::process::id());
        let home = dir.join(&name);
        let mut useradd = Command::new("useradd");
        useradd
            .args(["--no-create-home", "--shell", "/bin/sh", "--home-dir"])
            .arg(&home);
        if !groups.is_empty() {
            useradd.args(["--groups", &groups.join(",")]);
        }
        let status = useradd.arg(&name).status().expect("run useradd");
        assert!(status.success(), "useradd {name}");
        let user = Self { name, home };
        std::fs::create_dir_all(&user.home).unwrap();
        user.chown(&user.home);
        user
    }

    /// Writes `text` to `relative` in the home directory, owned by the account.
    pub fn write_home(&self, relative: &str, text: &str) {
        let path = self.home.join(relative);
        std::fs::write(&path, text).unwrap();
        self.chown(&path);
    }

    fn chown(&self, path: &Path) {
        let status = Command::new("chown")
            .arg(format!("{}:", self.name))
            .arg(path)
            .status()
            .unwrap();
        assert!(status.success(), "chown {}", path.display());
    }
}

impl Drop for UnixUser {
    fn drop(&mut self) {
        // Every process of the account is the test's (its sessions); then the account and the
        // runtime directory its sessions got.
        let uid = nix::unistd::User::from_name(&self.name)
            .ok()
            .flatten()
            .map(|u| u.uid.as_raw());
        let _ = Command::new("pkill")
            .args(["-KILL", "-u", &self.name])
            .output();
        let _ = Command::new("userdel").arg(&self.name).output();
        if let Some(uid) = uid {
            let _ = std::fs::remove_dir_all(format!("/run/user/{uid}"));
        }
    }
}
