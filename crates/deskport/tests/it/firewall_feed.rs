//! `deskport firewall --manager`: the gateway follows the manager's feed, keeps the last policy
//! on disk, and enforces it while the manager is down.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::Stdio;
use std::time::{Duration, Instant};

use deskport_testsupport::{free_port, wait_until, ProcessGuard};

use crate::cli_manager::Manager;

pub(crate) const LO: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
pub(crate) const A: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

pub(crate) fn echo_server() -> u16 {
    let listener = TcpListener::bind((LO, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 1024];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    port
}

pub(crate) fn connect_from(source: Ipv4Addr, port: u16) -> Option<TcpStream> {
    let s = deskport_testsupport::connect_from(source.into(), SocketAddr::new(LO, port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    Some(s)
}

pub(crate) fn echo(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 4];
    s.write_all(b"ping").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"ping"
}

pub(crate) fn reaches(source: Ipv4Addr, port: u16) -> bool {
    connect_from(source, port).is_some_and(|mut s| echo(&mut s))
}

/// The instance `desktop`, its RDP service an echo server on a port of its own, published by
/// the gateway on a free public port while Remote Desktop is on: (public port, agent token).
pub(crate) fn instance_with_rdp(m: &Manager) -> (u16, String) {
    let internal = echo_server();
    let public = free_port(LO);
    let created: serde_json::Value = serde_json::from_str(&m.ok(&[
        "instance",
        "create",
        "desktop",
        "--address",
        &format!("127.0.0.1:{public}"),
        "--internal-address",
        &format!("127.0.0.1:{internal}"),
        "--json",
    ]))
    .unwrap();
    let token = created["agent_token"].as_str().unwrap().to_owned();
    m.ok(&["instance", "rdp", "desktop", "--enable"]);
    (public, token)
}

/// A rule for the public port from 127.0.0.2 (`A`).
pub(crate) fn allow_a(m: &Manager, public: u16) {
    allow_from(m, public, "127.0.0.2/32");
}

/// A rule of the default group for TCP to the public port from `cidr`, through manager `m`.
pub(crate) fn allow_from(m: &Manager, public: u16, cidr: &str) {
    m.ok(&[
        "rule",
        "add",
        "--group",
        "default",
        "--protocol",
        "tcp",
        "--port",
        &public.to_string(),
        "--cidr",
        cidr,
    ]);
}

#[test]
fn the_gateway_follows_the_manager_and_survives_its_absence() {
    let dir = deskport_testsupport::data_dir();
    let mut m = Manager::start(dir.path());
    m.login();
    let (public, token) = instance_with_rdp(&m);
    let state = dir.path().join("firewall-state.json");
    let (url, home) = (m.url.clone(), m.home.clone());
    let start_agent = || {
        ProcessGuard::spawn(
            "deskport firewall",
            crate::support::deskport(&home)
                .args(["firewall", "--manager", &url, "--token", &token, "--state"])
                .arg(&state)
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(dir.path().join("agent.log")).unwrap()),
        )
        .unwrap()
    };
    let mut agent = start_agent();
    wait_until(
        Duration::from_secs(10),
        "the agent to publish the service",
        || TcpStream::connect((LO, public)).ok().map(|_| ()),
    );
    assert!(!reaches(A, public), "the default group does not open RDP");

    let changed = Instant::now();
    allow_a(&m, public);
    wait_until(Duration::from_secs(10), "the rule to be enforced", || {
        reaches(A, public).then_some(())
    });
    eprintln!(
        "rule enforced {:?} after 'deskport rule add' returned... or earlier",
        changed.elapsed()
    );
    assert!(!reaches(Ipv4Addr::new(127, 0, 0, 3), public));
    // The agent keeps what it applied on disk, right after applying it.
    wait_until(
        Duration::from_secs(10),
        "the applied policy to be kept on disk",
        || {
            let kept = std::fs::read_to_string(&state).ok()?;
            kept.contains("127.0.0.2/32").then_some(())
        },
    );
    let revision = |m: &Manager| -> u64 {
        let shown: serde_json::Value =
            serde_json::from_str(&m.ok(&["instance", "show", "desktop", "--json"])).unwrap();
        shown["instance"]["agent_revision"].as_u64().unwrap_or(0)
    };
    wait_until(
        Duration::from_secs(10),
        "the agent to report its revision",
        || (revision(&m) > 0).then_some(()),
    );

    // The manager goes away: the policy stays; a restarted agent enforces the kept copy.
    m.stop();
    assert!(reaches(A, public));
    drop(agent);
    agent = start_agent();
    wait_until(
        Duration::from_secs(10),
        "the restarted agent to enforce the kept policy",
        || reaches(A, public).then_some(()),
    );
    assert!(!reaches(Ipv4Addr::new(127, 0, 0, 3), public));

    // The manager is back; deleting the rule cuts a live connection.
    m.restart();
    let mut live = connect_from(A, public).unwrap();
    assert!(echo(&mut live));
    let rules: serde_json::Value =
        serde_json::from_str(&m.ok(&["rule", "list", "--group", "default", "--json"])).unwrap();
    let id = rules["security_group_rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["remote_ip_prefix"] == "127.0.0.2/32")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let deleted = Instant::now();
    m.ok(&["rule", "delete", &id]);
    wait_until(
        Duration::from_secs(10),
        "the live connection to be cut",
        || (!echo(&mut live)).then_some(()),
    );
    eprintln!(
        "live connection cut {:?} after the rule was deleted",
        deleted.elapsed()
    );
    drop(agent);
}

/// `--manager URL,URL`: a manager that does not answer is skipped for the next one (the
/// agent's `/metrics` say which one it follows); a list with a bad URL is a usage error.
#[test]
fn the_agent_fails_over_to_the_next_manager() {
    let dir = deskport_testsupport::data_dir();
    let m = Manager::start(dir.path());
    m.login();
    let (public, token) = instance_with_rdp(&m);
    allow_a(&m, public);

    // Nothing listens on the first manager's port.
    let gone = format!("http://127.0.0.1:{}", free_port(LO));
    let managers = format!("{gone},{}", m.url);
    let metrics = free_port(LO);
    let _agent = ProcessGuard::spawn(
        "deskport firewall",
        crate::support::deskport(&m.home)
            .args(["firewall", "--manager", &managers, "--token", &token])
            .arg("--state")
            .arg(dir.path().join("state.json"))
            .args(["--metrics-listen", &format!("127.0.0.1:{metrics}")])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("agent.log")).unwrap()),
    )
    .unwrap();
    wait_until(
        Duration::from_secs(15),
        "the agent to enforce the second manager's policy",
        || reaches(A, public).then_some(()),
    );
    assert!(!reaches(Ipv4Addr::new(127, 0, 0, 3), public));
    let text = crate::firewall_gateway::http_get(metrics, "/metrics").unwrap();
    assert!(
        text.contains(&format!(
            "deskport_agent_source_info{{source=\"{}\"}} 1",
            m.url
        )),
        "{text}"
    );
    let log = std::fs::read_to_string(dir.path().join("agent.log")).unwrap();
    assert!(log.contains("Following another manager"), "{log}");

    let r = crate::support::run(crate::support::deskport(&m.home).args([
        "firewall",
        "--manager",
        &format!("{},ftp://x", m.url),
        "--token",
        &token,
    ]));
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("\"ftp://x\""), "{}", r.stderr);
}
