//! `deskport manager` as a process, and the CLI of SPEC §6 against it: login, sg, rule,
//! instance, --json, exit statuses 0/1/2, restart.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use deskport_testsupport::{free_port, wait_until, ProcessGuard};

use crate::firewall_gateway::http_get;
use crate::support::{run, run_input, Run};

pub const PASSWORD: &str = "test-admin-password";

/// A manager process on a free port, with its home (config) and data directories: plain
/// HTTP on loopback (`--insecure-http`), or HTTPS ([`Manager::start_https`]).
pub struct Manager {
    pub url: String,
    pub port: u16,
    pub home: PathBuf,
    pub data: PathBuf,
    /// `--db`, when not the SQLite file in `data`.
    pub db: Option<String>,
    pub process: Option<ProcessGuard>,
    /// More flags of `deskport manager` (HTTPS: `--tls-cert`…); without HTTPS,
    /// `--insecure-http`.
    pub args: Vec<String>,
    /// Over HTTPS: the certificate's fingerprint as the manager printed it at its last start.
    pub fingerprint: Option<String>,
}

impl Manager {
    pub fn start(dir: &Path) -> Self {
        Self::start_with_db(dir, None)
    }

    /// A manager on the database `db` (`--db`), e.g. a PostgreSQL URL.
    pub fn start_with_db(dir: &Path, db: Option<String>) -> Self {
        Self::start_with(dir, db, vec!["--insecure-http".to_owned()])
    }

    /// A manager serving HTTPS with `args` (none: its self-signed certificate).
    pub fn start_https(dir: &Path, args: &[&str]) -> Self {
        Self::start_with(dir, None, args.iter().map(|a| (*a).to_owned()).collect())
    }

    fn https(&self) -> bool {
        !self.args.iter().any(|a| a == "--insecure-http")
    }

    fn start_with(dir: &Path, db: Option<String>, args: Vec<String>) -> Self {
        let port = free_port(IpAddr::V4(Ipv4Addr::LOCALHOST));
        let https = !args.iter().any(|a| a == "--insecure-http");
        let mut m = Manager {
            url: format!(
                "{}://127.0.0.1:{port}",
                if https { "https" } else { "http" }
            ),
            port,
            home: dir.join("home"),
            data: dir.join("data"),
            db,
            process: None,
            args,
            fingerprint: None,
        };
        std::fs::create_dir_all(&m.home).unwrap();
        m.restart();
        m
    }

    pub fn restart(&mut self) {
        self.process = None;
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(self.home.join("manager.log"))
            .unwrap();
        let mut command = self.cli();
        command
            .args([
                "manager",
                "--listen",
                &format!("127.0.0.1:{}", self.port),
                "--data-dir",
            ])
            .arg(&self.data);
        if let Some(db) = &self.db {
            command.args(["--db", db]);
        }
        command.args(&self.args);
        let out = self.home.join("manager.out");
        let process = ProcessGuard::spawn(
            "deskport manager",
            command
                .env("DESKPORT_ADMIN_PASSWORD", PASSWORD)
                .stdout(std::fs::File::create(&out).unwrap())
                .stderr(log),
        )
        .unwrap();
        self.process = Some(process);
        let port = self.port;
        if self.https() {
            // Ready when it printed its certificate and accepts connections.
            let printed = wait_until(Duration::from_secs(20), "the manager to start", || {
                let text = std::fs::read_to_string(&out).ok()?;
                let fp = text
                    .split("certificate: SHA256:")
                    .nth(1)?
                    .split_whitespace()
                    .next()?
                    .to_owned();
                std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
                Some(fp)
            });
            self.fingerprint = Some(printed);
            return;
        }
        wait_until(Duration::from_secs(20), "the manager to answer", || {
            http_get(port, "/healthz")
                .filter(|r| r.contains("\"ok\""))
                .map(|_| ())
        });
    }

    pub fn stop(&mut self) {
        if let Some(p) = self.process.take() {
            p.stop();
        }
    }

    /// Kills the manager with SIGKILL: no shutdown of any kind.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.signal(nix::sys::signal::Signal::SIGKILL);
            assert!(
                p.wait_timeout(Duration::from_secs(10)).is_some(),
                "the manager did not die"
            );
        }
    }

    /// `deskport` with this manager's home (its CLI config lives there).
    pub fn cli(&self) -> Command {
        crate::support::deskport(&self.home)
    }

    /// `deskport login` as admin.
    pub fn login(&self) {
        let r = self.run_stdin(&["login", &self.url, "--password-stdin"], PASSWORD);
        assert_eq!(r.code, 0, "{}", r.stderr);
    }

    pub fn run(&self, args: &[&str]) -> Run {
        run(self.cli().args(args))
    }

    pub fn run_stdin(&self, args: &[&str], input: &str) -> Run {
        run_input(self.cli().args(args), input)
    }

    /// Runs and requires success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let r = self.run(args);
        assert_eq!(r.code, 0, "deskport {args:?}: {}", r.stderr);
        r.stdout
    }
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

#[test]
fn the_cli_drives_the_manager_and_reports_refusals_and_usage_errors() {
    let dir = deskport_testsupport::data_dir();
    let mut m = Manager::start(dir.path());

    // Before login: refused with a hint.
    let r = m.run(&["sg", "list"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("deskport login"), "{}", r.stderr);
    let r = m.run_stdin(&["login", &m.url, "--password-stdin"], "wrong password");
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("wrong user name or password"),
        "{}",
        r.stderr
    );
    m.login();
    let config = std::fs::read_to_string(m.home.join(".config/deskport/config.toml")).unwrap();
    assert!(
        config.contains(&m.url) && config.contains("token = \"dpt_"),
        "{config}"
    );

    let groups = json(&m.ok(&["sg", "list", "--json"]));
    assert_eq!(groups["security_groups"][0]["name"], "default");
    assert!(m
        .ok(&["sg", "create", "web", "--description", "web servers"])
        .contains("created security group web"));
    assert!(m.ok(&["sg", "list"]).lines().any(|l| l.starts_with("web ")));

    // The article's rule, then a risky one (warned), a normalised one (noted), a duplicate (1).
    let r = m.run(&[
        "rule",
        "add",
        "--group",
        "default",
        "--template",
        "rdp",
        "--cidr",
        "127.0.0.1/32",
        "--json",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let rule = json(&r.stdout);
    assert_eq!(rule["security_group_rule"]["port_range_min"], 3389);
    let r = m.run(&[
        "rule",
        "add",
        "--group",
        "web",
        "--protocol",
        "tcp",
        "--port",
        "22",
    ]);
    assert_eq!(r.code, 0);
    assert!(
        r.stderr
            .contains("warning: SSH (22) is open to the whole internet"),
        "{}",
        r.stderr
    );
    let r = m.run(&[
        "rule",
        "add",
        "--group",
        "web",
        "--protocol",
        "udp",
        "--port",
        "5000-5010",
        "--cidr",
        "10.1.2.3/8",
    ]);
    assert_eq!(r.code, 0);
    assert!(
        r.stderr.contains("normalised to 10.0.0.0/8"),
        "{}",
        r.stderr
    );
    let r = m.run(&[
        "rule",
        "add",
        "--group",
        "default",
        "--template",
        "rdp",
        "--cidr",
        "127.0.0.1/32",
    ]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("already has this rule") && r.stderr.contains("duplicate_rule"),
        "{}",
        r.stderr
    );
    let r = m.run(&[
        "rule",
        "add",
        "--group",
        "default",
        "--template",
        "rdp",
        "--cidr",
        "10.0.0.0/33",
    ]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("remote_ip_prefix"), "{}", r.stderr);
    let r = m.run(&["rule", "add", "--group", "nope", "--template", "rdp"]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("no security group \"nope\""),
        "{}",
        r.stderr
    );
    // Usage errors are 2: no template or protocol, a bad port, both remotes.
    for args in [
        vec!["rule", "add", "--group", "default"],
        vec![
            "rule",
            "add",
            "--group",
            "default",
            "--protocol",
            "tcp",
            "--port",
            "99999",
        ],
        vec![
            "rule",
            "add",
            "--group",
            "default",
            "--template",
            "rdp",
            "--cidr",
            "1.2.3.4/32",
            "--remote-group",
            "web",
        ],
        vec!["instance", "rdp", "x"],
        vec!["sg", "frobnicate"],
    ] {
        assert_eq!(m.run(&args).code, 2, "{args:?}");
    }
    let listed = m.ok(&["rule", "list", "--group", "web"]);
    assert!(
        listed.contains("5000-5010") && listed.contains("10.0.0.0/8"),
        "{listed}"
    );

    // Instances and the Remote Desktop switches.
    let created = json(&m.ok(&[
        "instance",
        "create",
        "desktop",
        "--address",
        "127.0.0.1",
        "--internal-address",
        "127.0.0.1:13389",
        "--group",
        "default",
        "--group",
        "web",
        "--json",
    ]));
    assert!(created["agent_token"].as_str().unwrap().starts_with("dpa_"));
    let shown = json(&m.ok(&["instance", "show", "desktop", "--json"]));
    assert_eq!(
        shown["instance"]["remote_desktop"],
        serde_json::json!({"enabled": false, "nla_only": true, "gateway": true})
    );
    assert_eq!(shown["instance"]["rdp_port"], 13389);
    assert!(m
        .ok(&["instance", "rdp", "desktop", "--enable", "--no-nla-only"])
        .contains("remote desktop enabled, NLA only off"));
    let shown = json(&m.ok(&["instance", "show", "desktop", "--json"]));
    assert_eq!(
        shown["instance"]["remote_desktop"],
        serde_json::json!({"enabled": true, "nla_only": false, "gateway": true})
    );
    assert!(m
        .ok(&["instance", "show", "desktop"])
        .contains("rdesktop -u USER 127.0.0.1"));
    let r = m.run(&["sg", "delete", "web"]);
    assert_eq!(r.code, 1, "attached groups cannot be deleted");
    assert!(
        r.stderr.contains("attached to instance(s) desktop"),
        "{}",
        r.stderr
    );
    m.ok(&["instance", "detach", "desktop", "web"]);
    m.ok(&["sg", "delete", "web"]);
    let r = m.run(&["sg", "delete", "default"]);
    assert_eq!(r.code, 1);

    // The audit log has every change, with who and from where.
    let audit = json(&m.ok(&["audit", "list", "--json", "--limit", "100"]));
    let actions: Vec<&str> = audit["audit_events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for a in [
        "security_group.create",
        "security_group_rule.create",
        "instance.create",
        "instance.remote_desktop",
        "instance.detach_group",
        "security_group.delete",
    ] {
        assert!(actions.contains(&a), "{a} missing from {actions:?}");
    }
    assert!(m.ok(&["template", "list"]).contains("rdp"));
    assert!(m.ok(&["project", "list"]).contains("default"));

    // A restart keeps everything, and the saved token still works.
    m.restart();
    let rules = json(&m.ok(&["rule", "list", "--group", "default", "--json"]));
    assert!(rules["security_group_rules"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["id"] == rule["security_group_rule"]["id"]));
    let rule_id = rule["security_group_rule"]["id"].as_str().unwrap();
    assert!(m.ok(&["rule", "delete", rule_id]).contains("deleted"));
    assert_eq!(m.run(&["rule", "delete", rule_id]).code, 1);

    // The manager down: a clear refusal.
    m.stop();
    let r = m.run(&["sg", "list"]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("cannot reach the manager"),
        "{}",
        r.stderr
    );
}

/// The RD Gateway from the CLI: `instance rdp --gateway/--no-gateway` alone switches gateway
/// access; `instance rdp-token` prints how to connect through the manager's host and port and
/// the token alone on the last line; `instance rdp-tokens` lists, `--revoke` revokes; refusals
/// exit 1 saying why, usage errors 2.
#[test]
fn the_cli_mints_lists_and_revokes_rd_gateway_tokens() {
    let dir = deskport_testsupport::data_dir();
    let m = Manager::start(dir.path());
    m.login();
    m.ok(&[
        "instance",
        "create",
        "desk",
        "--address",
        "198.51.100.7:13389",
    ]);
    assert!(m
        .ok(&["instance", "show", "desk"])
        .contains("gateway access:    on"));
    let r = m.run(&["instance", "rdp-token", "desk"]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr
            .contains("remote connections to desk are switched off"),
        "{}",
        r.stderr
    );
    assert!(m
        .ok(&["instance", "rdp", "desk", "--no-gateway"])
        .contains("remote desktop disabled, NLA only on, gateway access off"));
    m.ok(&["instance", "rdp", "desk", "--enable"]);
    let r = m.run(&["instance", "rdp-token", "desk"]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("gateway access to desk is switched off"),
        "{}",
        r.stderr
    );
    assert!(m
        .ok(&["instance", "rdp", "desk", "--gateway"])
        .contains("remote desktop enabled, NLA only on, gateway access on"));
    for args in [
        vec!["instance", "rdp", "desk", "--gateway", "--no-gateway"],
        vec!["instance", "rdp-token", "desk", "--ttl", "ten"],
        vec!["instance", "rdp-token", "desk", "--json", "--revoke", "x"],
    ] {
        assert_eq!(m.run(&args).code, 2, "{args:?}");
    }
    let r = m.run(&["instance", "rdp-token", "desk", "--ttl", "5"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("ttl_seconds"), "{}", r.stderr);

    let out = m.ok(&["instance", "rdp-token", "desk", "--ttl", "120"]);
    let token = out.lines().last().unwrap();
    assert!(token.starts_with("dpg_") && token.len() == 68, "{out}");
    let gateway = format!("127.0.0.1:{}", m.port);
    assert!(
        out.contains(&format!(
            "xfreerdp /v:198.51.100.7:13389 /g:{gateway} /gat:{token} /gt:http /u:"
        )),
        "{out}"
    );
    let minted = json(&m.ok(&["instance", "rdp-token", "desk", "--json"]));
    assert_eq!(minted["gateway_path"], "/remoteDesktopGateway/");
    let listed = json(&m.ok(&["instance", "rdp-tokens", "desk", "--json"]));
    assert_eq!(listed["rdp_tokens"].as_array().unwrap().len(), 2);
    let id = minted["id"].as_str().unwrap();
    assert!(m.ok(&["instance", "rdp-tokens", "desk"]).contains(id));
    assert!(m
        .ok(&["instance", "rdp-token", "desk", "--revoke", id])
        .contains(&format!("revoked gateway token {id}")));
    let r = m.run(&["instance", "rdp-token", "desk", "--revoke", id]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("already revoked"), "{}", r.stderr);
    let listed = json(&m.ok(&["instance", "rdp-tokens", "desk", "--json"]));
    assert!(
        listed["rdp_tokens"][1]["revoked_at"].is_string(),
        "{listed}"
    );
}

/// A second CLI profile: `DESKPORT_CONFIG` names a file that does not exist yet. Commands read
/// it as empty, `login` creates it (mode 0600, parent folders) and leaves the default profile
/// alone; `--config` naming a missing file stays an error.
#[test]
fn deskport_config_naming_a_missing_file_is_a_new_profile() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = deskport_testsupport::data_dir();
    let m = Manager::start(dir.path());
    let profile = dir.path().join("profiles/second/config.toml");
    let with_profile = |args: &[&str], input: Option<&str>| {
        let mut command = m.cli();
        command.env("DESKPORT_CONFIG", &profile).args(args);
        match input {
            None => run(&mut command),
            Some(text) => run_input(&mut command, text),
        }
    };

    let r = with_profile(&["config", "path"], None);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout, format!("{}\tabsent\n", profile.display()));
    let r = with_profile(&["config", "show"], None);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = with_profile(&["sg", "list"], None);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("deskport login"), "{}", r.stderr);

    let r = with_profile(&["login", &m.url, "--password-stdin"], Some(PASSWORD));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let meta = std::fs::metadata(&profile).expect("login creates the profile");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert!(std::fs::read_to_string(&profile)
        .unwrap()
        .contains("token = \"dpt_"));
    let r = with_profile(&["sg", "list", "--json"], None);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(json(&r.stdout)["security_groups"][0]["name"], "default");
    assert!(
        !m.home.join(".config/deskport/config.toml").exists(),
        "the default profile is not touched"
    );

    let r = run(m
        .cli()
        .arg("--config")
        .arg(dir.path().join("missing.toml"))
        .args(["sg", "list"]));
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("does not exist"), "{}", r.stderr);
}
