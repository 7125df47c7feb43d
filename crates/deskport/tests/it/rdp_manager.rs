//! `deskport rdp-server --manager`: the two switches follow the instance's settings in the
//! manager, and the server's certificate fingerprint is shown there.

use std::net::{IpAddr, Ipv4Addr, TcpStream};
use std::time::Duration;

use deskport_testsupport::{wait_until, Xvfb};
use sha2::Digest as _;

use crate::cli_manager::Manager;
use crate::rdp::{wait_for_desktop, xfreerdp, RdpServer, PASSWORD};

const LO: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn fingerprint_of(pem: &str) -> String {
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = deskport_testsupport::base64_decode(&b64).unwrap();
    sha2::Sha256::digest(&der)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[test]
fn the_switches_follow_the_manager_and_the_fingerprint_is_reported() {
    let dir = deskport_testsupport::data_dir();
    let m = Manager::start(dir.path());
    m.login();
    let created: serde_json::Value = serde_json::from_str(&m.ok(&[
        "instance",
        "create",
        "desktop",
        "--address",
        "127.0.0.1",
        "--json",
    ]))
    .unwrap();
    let token = created["agent_token"].as_str().unwrap().to_owned();
    let server = RdpServer::launch(dir.path(), &["--manager", &m.url, "--token", &token], None);

    // A new instance has Remote Desktop switched off: the port closes.
    wait_until(
        Duration::from_secs(15),
        "the port to close (remote desktop off)",
        || TcpStream::connect((LO, server.port)).is_err().then_some(()),
    );
    let shown = |m: &Manager| -> serde_json::Value {
        serde_json::from_str(&m.ok(&["instance", "show", "desktop", "--json"])).unwrap()
    };
    let cert = std::fs::read_to_string(server.dir.join("tls/cert.pem")).unwrap();
    wait_until(
        Duration::from_secs(15),
        "the fingerprint in the manager",
        || (shown(&m)["instance"]["cert_fingerprint"] == fingerprint_of(&cert)).then_some(()),
    );

    m.ok(&["instance", "rdp", "desktop", "--enable", "--no-nla-only"]);
    wait_until(Duration::from_secs(15), "the port to open", || {
        TcpStream::connect((LO, server.port)).ok().map(|_| ())
    });
    let client = Xvfb::start(1024, 768);
    let mut c = xfreerdp(&client, &server, "alice", PASSWORD, &["/sec:tls"]);
    wait_for_desktop(&client, &server.pattern, "manager-enabled-tls", || {
        c.process.try_wait().is_none()
    });
    c.process.stop();

    m.ok(&["instance", "rdp", "desktop", "--nla-only"]);
    wait_until(Duration::from_secs(15), "NLA only to apply", || {
        let (code, output) = xfreerdp(&client, &server, "alice", PASSWORD, &["/sec:tls"]).finish();
        (code != Some(0) && output.contains("HYBRID_REQUIRED_BY_SERVER")).then_some(())
    });
    let log = server.log();
    assert!(log.contains("switches changed by the manager"), "{log}");
}
