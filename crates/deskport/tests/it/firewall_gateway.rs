//! `deskport firewall` with the userspace gateway, as a process: the policy file drives it,
//! `/metrics` reports it, and SIGTERM stops it cleanly.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, TcpListener, TcpStream};
use std::process::Stdio;
use std::time::Duration;

use deskport_testsupport::{free_port, wait_until, ProcessGuard};
use nix::sys::signal::Signal;

use crate::firewall_feed::reaches;
use crate::firewall_nft::write_policy;

const LO: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn echo_server() -> u16 {
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

pub fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect((LO, port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    Some(text)
}

fn policy(revision: u64, public: u16, internal: u16, extra: &str) -> String {
    format!(
        r#"revision = {revision}
[[security_groups]]
name = "default"
rules = [ {{ template = "http" }}, {{ template = "https" }}, {{ direction = "egress" }}, {extra} ]
[[instances]]
name = "desktop"
addresses = ["127.0.0.1"]
security_groups = ["default"]
services = [{{ public_port = {public}, internal_port = {internal} }}]
"#
    )
}

#[test]
fn gateway_agent_follows_its_policy_file_and_reports_metrics() {
    let internal = echo_server();
    let public = free_port(LO);
    let metrics = free_port(LO);
    let dir = deskport_testsupport::data_dir();
    let file = dir.path().join("policy.toml");
    write_policy(&file, &policy(1, public, internal, ""));
    let mut agent = ProcessGuard::spawn(
        "deskport firewall",
        std::process::Command::new(env!("CARGO_BIN_EXE_deskport"))
            .args(["firewall", "--poll-interval-ms", "50", "--metrics-listen"])
            .arg(format!("127.0.0.1:{metrics}"))
            .arg("--policy")
            .arg(&file)
            .env("DESKPORT_CONFIG", "/dev/null")
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
    .unwrap();
    let revision = |n: u64| {
        wait_until(Duration::from_secs(10), &format!("revision {n}"), || {
            http_get(metrics, "/metrics")
                .filter(|m| m.contains(&format!("deskport_agent_policy_revision {n}\n")))
                .map(|_| ())
        })
    };
    revision(1);
    assert!(http_get(metrics, "/healthz").unwrap().ends_with("ok\n"));
    assert!(http_get(metrics, "/nope")
        .unwrap()
        .starts_with("HTTP/1.1 404"));
    assert!(!reaches(Ipv4Addr::new(127, 0, 0, 2), public));

    let rule = format!(
        "{{ protocol = \"tcp\", port_range_min = {public}, remote_ip_prefix = \"127.0.0.2/32\" }}"
    );
    write_policy(&file, &policy(2, public, internal, &rule));
    revision(2);
    assert!(reaches(Ipv4Addr::new(127, 0, 0, 2), public));
    assert!(!reaches(Ipv4Addr::new(127, 0, 0, 3), public));
    let text = http_get(metrics, "/metrics").unwrap();
    assert!(
        text.contains("deskport_gateway_decisions_total{verdict=\"allow\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("deskport_gateway_decisions_total{verdict=\"deny\"} 2"),
        "{text}"
    );

    agent.signal(Signal::SIGTERM);
    let status = agent
        .wait_timeout(Duration::from_secs(10))
        .expect("the agent stops on SIGTERM");
    assert!(status.success(), "{status}");
    assert!(
        TcpStream::connect((LO, public)).is_err(),
        "the published port is closed"
    );
}

#[test]
fn an_invalid_policy_at_start_is_refused_with_its_location() {
    let dir = deskport_testsupport::data_dir();
    let file = dir.path().join("policy.toml");
    std::fs::write(
        &file,
        "[[security_groups]]\nname = \"default\"\nrules = [ { template = \"rdp\", remote_ip_prefix = \"10.0.0.0/33\" } ]\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_deskport"))
        .args(["firewall", "--policy"])
        .arg(&file)
        .env("DESKPORT_CONFIG", "/dev/null")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("security_groups[\"default\"].rules[0].remote_ip_prefix"),
        "{stderr}"
    );
    assert!(stderr.contains("prefix length 33"), "{stderr}");
}

/// Issue 20: a source the rules allow can still be hostile — its connections through the
/// gateway are capped (`--max-connections-per-source`) while another address still gets
/// through; the refusals are counted in `/metrics`.
#[test]
fn one_allowed_source_cannot_take_every_connection() {
    let internal = echo_server();
    let public = free_port(LO);
    let metrics = free_port(LO);
    let dir = deskport_testsupport::data_dir();
    let file = dir.path().join("policy.toml");
    let rule = format!(
        "{{ protocol = \"tcp\", port_range_min = {public}, remote_ip_prefix = \"127.0.0.0/8\" }}"
    );
    write_policy(&file, &policy(1, public, internal, &rule));
    let _agent = ProcessGuard::spawn(
        "deskport firewall",
        std::process::Command::new(env!("CARGO_BIN_EXE_deskport"))
            .args(["firewall", "--max-connections-per-source", "3"])
            .args(["--metrics-listen", &format!("127.0.0.1:{metrics}")])
            .arg("--policy")
            .arg(&file)
            .env("DESKPORT_CONFIG", "/dev/null")
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
    .unwrap();
    wait_until(Duration::from_secs(10), "the policy in force", || {
        reaches(Ipv4Addr::LOCALHOST, public).then_some(())
    });
    // Three live connections of 127.0.0.1, each proven through (echoed).
    let holders: Vec<TcpStream> = (0..3)
        .map(|_| {
            let mut s = TcpStream::connect((LO, public)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let mut buf = [0u8; 4];
            s.write_all(b"hold").unwrap();
            s.read_exact(&mut buf).unwrap();
            s
        })
        .collect();
    assert!(
        !reaches(Ipv4Addr::LOCALHOST, public),
        "127.0.0.1's fourth is refused"
    );
    assert!(
        reaches(Ipv4Addr::new(127, 0, 0, 2), public),
        "127.0.0.2 gets through meanwhile"
    );
    let text = http_get(metrics, "/metrics").unwrap();
    assert!(
        text.contains("deskport_gateway_decisions_total{verdict=\"source_limit\"} 1"),
        "{text}"
    );
    drop(holders);
    wait_until(Duration::from_secs(10), "127.0.0.1's share back", || {
        reaches(Ipv4Addr::LOCALHOST, public).then_some(())
    });
}
