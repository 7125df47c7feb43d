//! The knowledge-base article across hosts (issue 19): network namespaces as hosts — two
//! client hosts, a gateway host routing between them and the instance, the instance, and the
//! manager's host — each service started the way its systemd unit starts it: the unit's
//! `ExecStart` command line, the packaged configuration file (packaging/etc, with this
//! network's addresses, tokens and the test's directories filled in), the unit's user and
//! ambient capabilities (`setpriv`; the unit's user `deskport` is `nobody` here, as the
//! package is not installed) and `EnvironmentFile`. Real xfreerdp and rdesktop on the client
//! hosts; real nftables on the gateway host.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use deskport_testsupport::{require_program, veth, wait_until, Netns, ProcessGuard, Xvfb};

use crate::rdp::{rdesktop_command, xfreerdp_with, Client, PASSWORD};
use crate::rdp_sessions::session_display_in;
use crate::support::UnixUser;
use crate::up::{rdp_confirms, rule_for, wait_for_screen};

const A: &str = "198.18.0.2";
const B: &str = "198.18.1.2";
const INSTANCE: &str = "198.18.2.2";
const MANAGER: &str = "198.18.3.2";
const ADMIN_PASSWORD: &str = "admin password of the hosts test";

struct Hosts {
    a: Netns,
    b: Netns,
    gw: Netns,
    inst: Netns,
    mgr: Netns,
}

/// Client hosts A and B, the instance and the manager's host, each on its own link to the
/// gateway host, which routes.
fn hosts() -> Hosts {
    let h = Hosts {
        a: Netns::new(),
        b: Netns::new(),
        gw: Netns::new(),
        inst: Netns::new(),
        mgr: Netns::new(),
    };
    for (host, gw_if, net) in [
        (&h.a, "gw-a", "198.18.0"),
        (&h.b, "gw-b", "198.18.1"),
        (&h.inst, "gw-i", "198.18.2"),
        (&h.mgr, "gw-m", "198.18.3"),
    ] {
        veth(host, "eth0", &h.gw, gw_if);
        host.run(&["ip", "addr", "add", &format!("{net}.2/24"), "dev", "eth0"]);
        host.run(&["ip", "route", "add", "default", "via", &format!("{net}.1")]);
        h.gw.run(&["ip", "addr", "add", &format!("{net}.1/24"), "dev", gw_if]);
    }
    h.gw.run(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    h
}

/// What a unit file says about how its service runs.
struct Unit {
    exec_start: Vec<String>,
    user: Option<String>,
    capabilities: Vec<String>,
    environment_file: Option<String>,
}

fn unit(name: &str) -> Unit {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../packaging/systemd")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    let value = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .map(str::to_owned)
    };
    Unit {
        exec_start: value("ExecStart")
            .expect("ExecStart")
            .split_whitespace()
            .map(str::to_owned)
            .collect(),
        user: value("User"),
        capabilities: value("AmbientCapabilities")
            .unwrap_or_default()
            .split_whitespace()
            .map(|c| c.trim_start_matches("CAP_").to_lowercase())
            .collect(),
        environment_file: value("EnvironmentFile").map(|f| f.trim_start_matches('-').to_owned()),
    }
}

/// The test's stand-ins for /etc/deskport and /var/lib/deskport.
struct Root {
    dir: PathBuf,
}

impl Root {
    fn etc(&self) -> PathBuf {
        self.dir.join("etc/deskport")
    }

    /// `path` of the real system, inside this root.
    fn map(&self, path: &str) -> String {
        path.replace("/etc/deskport/", &format!("{}/", self.etc().display()))
            .replace(
                "/var/lib/deskport/",
                &format!("{}/var/lib/deskport/", self.dir.display()),
            )
    }

    /// The packaged configuration file `name`, its paths mapped into this root and the keys of
    /// `section` in `set` given these values; written to the root's etc.
    fn config(&self, name: &str, section: &str, set: &[(&str, toml_edit::Value)]) {
        let packaged = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../packaging/etc")
            .join(name);
        let text = self.map(&std::fs::read_to_string(packaged).unwrap());
        let mut doc: toml_edit::DocumentMut = text.parse().unwrap();
        for (key, value) in set {
            doc[section][*key] = toml_edit::Item::Value(value.clone());
        }
        std::fs::create_dir_all(self.etc()).unwrap();
        std::fs::write(self.etc().join(name), doc.to_string()).unwrap();
    }

    /// A state directory owned by `user` (as the unit's StateDirectory= makes it), mode 0700.
    fn state_dir(&self, role: &str, user: Option<&str>) -> PathBuf {
        let dir = self.dir.join("var/lib/deskport").join(role);
        std::fs::create_dir_all(&dir).unwrap();
        if let Some(user) = user {
            Command::new("chown")
                .arg(format!("{user}:"))
                .arg(&dir)
                .status()
                .unwrap();
        }
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        dir
    }

    /// Starts `unit`'s service in `host` as the unit does; its stdout and stderr in files.
    fn start(&self, host: &Netns, unit_name: &str) -> Service {
        let unit = unit(unit_name);
        let mut argv: Vec<String> = unit
            .exec_start
            .iter()
            .map(|a| match a.as_str() {
                "/usr/bin/deskport" => env!("CARGO_BIN_EXE_deskport").to_owned(),
                other => self.map(other),
            })
            .collect();
        if unit.user.is_some() {
            // The unit's user (`deskport` on an installed system, `nobody` here) with the
            // unit's ambient capabilities and no others.
            let caps: String = unit.capabilities.iter().map(|c| format!(",+{c}")).collect();
            let setpriv = [
                "setpriv".to_owned(),
                "--reuid=nobody".to_owned(),
                "--regid=nogroup".to_owned(),
                "--clear-groups".to_owned(),
                format!("--inh-caps=-all{caps}"),
                format!("--ambient-caps=-all{caps}"),
                format!("--bounding-set=-all{caps}"),
                "--".to_owned(),
            ];
            argv.splice(0..0, setpriv);
        }
        let mut command = host.command(&argv[0]);
        command.args(&argv[1..]);
        command
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
        if let Some(file) = unit.environment_file {
            if let Ok(text) = std::fs::read_to_string(self.map(&file)) {
                for (k, v) in text.lines().filter_map(|l| l.split_once('=')) {
                    command.env(k.trim(), v.trim());
                }
            }
        }
        let name = unit_name.trim_end_matches(".service");
        let (out, err) = (
            self.dir.join(format!("{name}.out")),
            self.dir.join(format!("{name}.log")),
        );
        let process = ProcessGuard::spawn(
            name,
            command
                .stdin(Stdio::null())
                .stdout(std::fs::File::create(&out).unwrap())
                .stderr(std::fs::File::create(&err).unwrap()),
        )
        .unwrap();
        Service {
            process,
            out,
            err,
            name: name.to_owned(),
        }
    }
}

struct Service {
    process: ProcessGuard,
    out: PathBuf,
    err: PathBuf,
    name: String,
}

impl Service {
    fn output(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.err).unwrap_or_default()
    }

    fn alive(&mut self) {
        assert!(
            self.process.try_wait().is_none(),
            "{} exited:\n{}\n{}",
            self.name,
            self.output(),
            self.log()
        );
    }
}

/// The deskport CLI on `host`, its config under `home`.
fn cli(host: &Netns, home: &Path, args: &[&str], stdin: Option<&str>) -> String {
    let mut command = host.command(env!("CARGO_BIN_EXE_deskport"));
    command.args(args);
    crate::support::isolate(&mut command, home);
    let run = match stdin {
        Some(input) => crate::support::run_input(&mut command, input),
        None => crate::support::run(&mut command),
    };
    assert_eq!(
        run.code, 0,
        "deskport {args:?}: {}{}",
        run.stdout, run.stderr
    );
    run.stdout
}

/// Whether an RDP server at `addr:port` answers a negotiation request made from `from`.
fn rdp_answers(from: &Netns, addr: &str, port: u16) -> bool {
    let target = SocketAddr::new(addr.parse().unwrap(), port);
    from.run_in(|| TcpStream::connect_timeout(&target, Duration::from_secs(2)))
        .is_ok_and(rdp_confirms)
}

fn xfreerdp_from(host: &Netns, screen: &Xvfb, dir: &Path, user: &str) -> Client {
    let mut command = host.command("xfreerdp");
    command.env("DISPLAY", screen.display());
    xfreerdp_with(
        command,
        &format!("{INSTANCE}:3389"),
        dir,
        user,
        PASSWORD,
        &[],
    )
}

fn rdesktop_from(host: &Netns, screen: &Xvfb, dir: &Path, user: &str) -> Client {
    let mut command = host.command("rdesktop");
    command.env("DISPLAY", screen.display());
    rdesktop_command(
        command,
        &format!("{INSTANCE}:3389"),
        dir,
        user,
        PASSWORD,
        &[],
    )
}

/// The X display of `account`'s newest session, from the RDP server's log.
fn session_display(rdp: &Service, account: &str) -> String {
    wait_until(Duration::from_secs(30), "the session to start", || {
        session_display_in(&rdp.log(), account)
    })
}

fn rule_id(mgr: &Netns, home: &Path, cidr: &str) -> String {
    let listing = cli(
        mgr,
        home,
        &["rule", "list", "--group", "default", "--json"],
        None,
    );
    rule_for(&listing, cidr)
}

#[test]
fn the_article_across_hosts_with_every_service_run_as_its_unit_runs_it() {
    for program in [
        "nft",
        "conntrack",
        "setpriv",
        "xfreerdp",
        "rdesktop",
        "Xvfb",
    ] {
        require_program(program);
    }
    let h = hosts();
    let dir = deskport_testsupport::data_dir();
    use std::os::unix::fs::PermissionsExt as _;
    // `nobody` must reach its state directories below the test's.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let root = Root {
        dir: dir.path().to_owned(),
    };
    let admin = dir.path().join("admin");
    std::fs::create_dir_all(&admin).unwrap();
    let logs = dir.path().join("clients");
    std::fs::create_dir_all(&logs).unwrap();

    // The manager's host: the packaged configuration as it is (HTTPS on 0.0.0.0:443, bound by
    // the unprivileged user with the unit's one capability), the admin's first password from
    // the unit's EnvironmentFile.
    root.config("manager.toml", "manager", &[]);
    std::fs::write(
        root.etc().join("manager.env"),
        format!("DESKPORT_ADMIN_PASSWORD={ADMIN_PASSWORD}\n"),
    )
    .unwrap();
    root.state_dir("manager", Some("nobody"));
    let mut manager = root.start(&h.mgr, "deskport-manager.service");
    let fingerprint = wait_until(
        Duration::from_secs(30),
        "the manager to serve HTTPS",
        || {
            manager.alive();
            let fp = manager
                .output()
                .split("certificate: ")
                .nth(1)?
                .split_whitespace()
                .next()?
                .to_owned();
            let target = SocketAddr::new(MANAGER.parse().unwrap(), 443);
            h.a.run_in(|| TcpStream::connect_timeout(&target, Duration::from_secs(1)))
                .ok()
                .map(|_| fp)
        },
    );
    let url = format!("https://{MANAGER}");

    // The administrator, on the manager's host: log in, register the instance, switch Remote
    // Desktop on (NLA not required: rdesktop has no CredSSP).
    cli(
        &h.mgr,
        &admin,
        &[
            "login",
            &url,
            "--password-stdin",
            "--manager-fingerprint",
            &fingerprint,
        ],
        Some(ADMIN_PASSWORD),
    );
    let created: serde_json::Value = serde_json::from_str(&cli(
        &h.mgr,
        &admin,
        &[
            "instance",
            "create",
            "desktop",
            "--address",
            INSTANCE,
            "--json",
        ],
        None,
    ))
    .unwrap();
    let agent_token = created["agent_token"].as_str().unwrap().to_owned();
    cli(
        &h.mgr,
        &admin,
        &["instance", "rdp", "desktop", "--enable", "--no-nla-only"],
        None,
    );
    let cli_config = std::fs::read_to_string(admin.join(".config/deskport/config.toml")).unwrap();
    let api_token = cli_config
        .split("token = \"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap()
        .to_owned();

    // The gateway host: nftables on forwarded traffic, the project's policy from the manager.
    let fw_state = root.state_dir("firewall", Some("nobody"));
    root.config(
        "firewall.toml",
        "firewall",
        &[
            ("manager", url.as_str().into()),
            ("manager_fingerprint", fingerprint.as_str().into()),
            ("token", api_token.as_str().into()),
        ],
    );
    let mut firewall = root.start(&h.gw, "deskport-firewall.service");

    // The instance: the RDP server (root; each session as the Unix account named like the RDP
    // account), its switches from the manager.
    root.state_dir("rdp", None);
    root.config(
        "rdp-server.toml",
        "rdp_server",
        &[
            ("manager", url.as_str().into()),
            ("manager_fingerprint", fingerprint.as_str().into()),
            ("token", agent_token.as_str().into()),
        ],
    );
    // The account's ~/.xsession (which Debian's Xsession, the default session, runs): a window
    // manager and a terminal.
    let account = UnixUser::create(dir.path());
    account.write_home(
        ".xsession",
        &deskport_desktop::launch::openbox_and_terminal(),
    );
    let user = account.name.as_str();
    let rdp_config = root.etc().join("rdp-server.toml");
    let added = crate::support::run_input(
        Command::new(env!("CARGO_BIN_EXE_deskport"))
            .arg("--config")
            .arg(&rdp_config)
            .args(["rdp-server", "user", "add", user, "--password-stdin"])
            .env_remove("DESKPORT_CONFIG"),
        PASSWORD,
    );
    assert_eq!(added.code, 0, "{}", added.stderr);
    let mut rdp = root.start(&h.inst, "deskport-rdp-server.service");
    wait_until(Duration::from_secs(30), "the RDP server to listen", || {
        rdp.alive();
        rdp_answers(&h.inst, INSTANCE, 3389).then_some(())
    });
    wait_until(Duration::from_secs(30), "the firewall's table", || {
        firewall.alive();
        h.gw.output(&["nft", "list", "table", "inet", "deskport"])
            .status
            .success()
            .then_some(())
    });
    assert!(
        fw_state.join("policy.json").exists(),
        "the firewall keeps the manager's policy in its state directory"
    );

    let screen_a = Xvfb::start(1280, 1024);
    let screen_b = Xvfb::start(1280, 1024);

    let allow_a = || {
        let cidr = format!("{A}/32");
        let args = [
            "rule",
            "add",
            "--group",
            "default",
            "--template",
            "rdp",
            "--cidr",
            &cidr,
        ];
        cli(&h.mgr, &admin, &args, None);
    };

    // 1. By default (80 and 443 only) the instance's RDP port is closed to everyone.
    assert!(
        !rdp_answers(&h.a, INSTANCE, 3389),
        "RDP open before any rule"
    );
    let (code, output) = xfreerdp_from(&h.a, &screen_a, &logs, user).finish();
    assert_ne!(code, Some(0), "xfreerdp before the rule: {output}");

    // 2. The RDP rule for client A's address alone: both clients show the instance's desktop.
    let changed = Instant::now();
    allow_a();
    wait_until(
        Duration::from_secs(20),
        "the rule in force on the gateway",
        || rdp_answers(&h.a, INSTANCE, 3389).then_some(()),
    );
    eprintln!(
        "rule added -> RDP reachable from A after {:?}",
        changed.elapsed()
    );
    let mut rdesktop = rdesktop_from(&h.a, &screen_a, &logs, user);
    let display = session_display(&rdp, user);
    wait_for_screen(&screen_a, &display, "hosts-rdesktop", || {
        rdesktop.process.try_wait().is_none()
    });
    drop(rdesktop);
    let mut xfreerdp = xfreerdp_from(&h.a, &screen_a, &logs, user);
    wait_for_screen(&screen_a, &display, "hosts-xfreerdp", || {
        xfreerdp.process.try_wait().is_none()
    });

    // 3. Client B, outside the CIDR, is refused.
    assert!(
        !rdp_answers(&h.b, INSTANCE, 3389),
        "RDP open to B ({B}), outside {A}/32"
    );
    let (code, output) = rdesktop_from(&h.b, &screen_b, &logs, user).finish();
    assert_ne!(code, Some(0), "rdesktop from B: {output}");

    // 4. Deleting the rule cuts A's live session.
    let id = rule_id(&h.mgr, &admin, &format!("{A}/32"));
    let deleted = Instant::now();
    cli(&h.mgr, &admin, &["rule", "delete", &id], None);
    wait_until(
        Duration::from_secs(20),
        "the live session to be cut",
        || xfreerdp.process.try_wait().map(|_| ()),
    );
    eprintln!("rule deleted -> session cut after {:?}", deleted.elapsed());
    assert!(!rdp_answers(&h.a, INSTANCE, 3389));

    // 5. Remote Desktop switched off closes the port even where a rule allows it.
    allow_a();
    wait_until(Duration::from_secs(20), "the rule in force again", || {
        rdp_answers(&h.a, INSTANCE, 3389).then_some(())
    });
    cli(
        &h.mgr,
        &admin,
        &["instance", "rdp", "desktop", "--disable"],
        None,
    );
    wait_until(Duration::from_secs(20), "the RDP port to close", || {
        (!rdp_answers(&h.a, INSTANCE, 3389)).then_some(())
    });
    let connect = SocketAddr::new(INSTANCE.parse().unwrap(), 3389);
    let refused = h
        .inst
        .run_in(|| TcpStream::connect_timeout(&connect, Duration::from_secs(2)));
    assert!(refused.is_err(), "the RDP server still listens");

    for service in [&mut manager, &mut firewall, &mut rdp] {
        service.alive();
    }
}
