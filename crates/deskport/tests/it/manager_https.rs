//! `deskport manager` over HTTPS, as the CLI, the agents and a browser see it: trust on first
//! use in the CLI's known-hosts file and a changed certificate refused, a pinned fingerprint,
//! a CA file, a firewall agent pinning the manager, `Secure` cookies and HSTS, and the
//! refusals of bad TLS input (each with status 1).

use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use deskport_testsupport::{free_port, wait_until, ProcessGuard};

use crate::cli_manager::{Manager, PASSWORD};
use crate::firewall_feed::{allow_a, instance_with_rdp, reaches, A, LO};
use crate::firewall_gateway::http_get;
use crate::support::{https_get, run, Run};

fn login(m: &Manager, extra: &[&str]) -> Run {
    let mut args = vec!["login", &m.url, "--password-stdin"];
    args.extend_from_slice(extra);
    m.run_stdin(&args, PASSWORD)
}

fn fingerprint(m: &Manager) -> String {
    m.fingerprint.clone().expect("an HTTPS manager")
}

#[test]
fn login_trusts_on_first_use_and_a_changed_certificate_is_refused() {
    let dir = deskport_testsupport::data_dir();
    let mut m = Manager::start_https(dir.path(), &[]);
    let first = fingerprint(&m);
    assert_eq!(first.len(), 32 * 3 - 1, "{first}");
    let key = m.data.join("tls/key.pem");
    let mode = std::fs::metadata(&key).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the manager's key is private");

    let r = login(&m, &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout.contains(&first),
        "TOFU says what it trusted: {}",
        r.stdout
    );
    let known = std::fs::read_to_string(m.home.join(".config/deskport/known_hosts")).unwrap();
    assert!(
        known.contains(&format!("127.0.0.1:{} SHA256 {first}", m.port)),
        "{known}"
    );
    m.ok(&["sg", "list"]);
    // Known now: a second login does not announce it again.
    let r = login(&m, &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(!r.stdout.contains("first connection"), "{}", r.stdout);

    // Another certificate on the same address: refused by every command, naming both.
    m.stop();
    std::fs::remove_dir_all(m.data.join("tls")).unwrap();
    m.restart();
    let second = fingerprint(&m);
    assert_ne!(first, second);
    for args in [
        vec!["sg", "list"],
        vec!["rule", "list", "--group", "default"],
    ] {
        let r = m.run(&args);
        assert_eq!(r.code, 1, "{args:?}: {}", r.stderr);
        assert!(r.stderr.contains("CHANGED"), "{}", r.stderr);
        assert!(
            r.stderr.contains(&first) && r.stderr.contains(&second),
            "{}",
            r.stderr
        );
        assert!(r.stderr.contains("known_hosts"), "{}", r.stderr);
    }
    let r = login(&m, &[]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains(&second), "{}", r.stderr);
    assert_eq!(
        std::fs::read_to_string(m.home.join(".config/deskport/known_hosts")).unwrap(),
        known,
        "the remembered certificate stays"
    );
}

#[test]
fn a_pinned_fingerprint_is_trusted_and_another_is_refused() {
    let dir = deskport_testsupport::data_dir();
    let m = Manager::start_https(dir.path(), &[]);
    let fp = fingerprint(&m);

    let wrong = deskport_tls::fingerprint(b"some other certificate");
    let r = login(&m, &["--manager-fingerprint", &format!("SHA256:{wrong}")]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains(&fp) && r.stderr.contains(&wrong),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("pinned"), "{}", r.stderr);

    let r = login(&m, &["--manager-fingerprint", "SHA256:12:34"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("not a SHA-256"), "{}", r.stderr);

    let r = login(&m, &["--manager-fingerprint", &format!("SHA256:{fp}")]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        !m.home.join(".config/deskport/known_hosts").exists(),
        "a pin needs no known-hosts entry"
    );
    let config = std::fs::read_to_string(m.home.join(".config/deskport/config.toml")).unwrap();
    assert!(
        config.contains(&format!("fingerprint = \"SHA256:{fp}\"")),
        "{config}"
    );
    m.ok(&["sg", "list"]);

    // The pin kept in the config is what later commands check.
    let r = run(m
        .cli()
        .args(["sg", "list"])
        .env("DESKPORT_CLI__FINGERPRINT", format!("SHA256:{wrong}")));
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains(&wrong), "{}", r.stderr);
}

/// A CA and a certificate it signs for 127.0.0.1, as PEM files in `dir`: (ca, cert, key).
fn ca_and_leaf(
    dir: &Path,
    name: &str,
) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("{name} test CA"));
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &ca, &ca_key)
        .unwrap();
    let paths = (
        dir.join(format!("{name}-ca.pem")),
        dir.join(format!("{name}-cert.pem")),
        dir.join(format!("{name}-key.pem")),
    );
    std::fs::write(&paths.0, ca.pem()).unwrap();
    std::fs::write(&paths.1, leaf.pem()).unwrap();
    std::fs::write(&paths.2, leaf_key.serialize_pem()).unwrap();
    paths
}

#[test]
fn a_ca_file_is_trusted_for_a_given_certificate() {
    let dir = deskport_testsupport::data_dir();
    let (ca, cert, key) = ca_and_leaf(dir.path(), "ours");
    let (other_ca, ..) = ca_and_leaf(dir.path(), "theirs");
    let m = Manager::start_https(
        dir.path(),
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    let pem = std::fs::read(&cert).unwrap();
    let der = rustls::pki_types::pem::PemObject::from_pem_slice(&pem)
        .map(|c: rustls::pki_types::CertificateDer| deskport_tls::fingerprint(&c))
        .unwrap();
    assert_eq!(
        fingerprint(&m),
        der,
        "the given certificate is served and printed"
    );
    assert!(!m.data.join("tls").exists(), "nothing self-signed is made");

    let r = login(&m, &["--ca-file", other_ca.to_str().unwrap()]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("CA file"), "{}", r.stderr);

    let r = login(&m, &["--ca-file", ca.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    m.ok(&["sg", "list"]);
}

#[test]
fn a_firewall_agent_follows_an_https_manager_it_pins() {
    let dir = deskport_testsupport::data_dir();
    let m = Manager::start_https(dir.path(), &[]);
    let fp = fingerprint(&m);
    let r = login(&m, &["--manager-fingerprint", &fp]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let (public, token) = instance_with_rdp(&m);
    let agent = |pin: Option<&str>, log: &str| {
        let mut command = crate::support::deskport(&m.home);
        command
            .args([
                "firewall",
                "--manager",
                &m.url,
                "--token",
                &token,
                "--state",
            ])
            .arg(dir.path().join(format!("{log}.json")));
        if let Some(pin) = pin {
            command.args(["--manager-fingerprint", pin]);
        }
        command
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join(log)).unwrap());
        command
    };

    // Without a way to check the manager: refused at start.
    let r = run(&mut agent(None, "unpinned.log"));
    assert_eq!(r.code, 1);
    let log = std::fs::read_to_string(dir.path().join("unpinned.log")).unwrap();
    assert!(log.contains("--manager-fingerprint"), "{log}");

    // A wrong pin: the agent never gets a policy (the gateway publishes nothing) and says why.
    let wrong = deskport_tls::fingerprint(b"not the manager");
    let impostor =
        ProcessGuard::spawn("deskport firewall", &mut agent(Some(&wrong), "wrong.log")).unwrap();
    wait_until(
        Duration::from_secs(10),
        "the agent to refuse the manager",
        || {
            let log = std::fs::read_to_string(dir.path().join("wrong.log")).ok()?;
            (log.contains(&wrong) && log.contains(&fp)).then_some(())
        },
    );
    assert!(
        TcpStream::connect((LO, public)).is_err(),
        "nothing is published"
    );
    impostor.stop();

    let _agent = ProcessGuard::spawn(
        "deskport firewall",
        &mut agent(Some(&format!("SHA256:{fp}")), "agent.log"),
    )
    .unwrap();
    wait_until(
        Duration::from_secs(10),
        "the agent to publish the service",
        || TcpStream::connect((LO, public)).ok().map(|_| ()),
    );
    assert!(!reaches(A, public), "the default group does not open RDP");
    allow_a(&m, public);
    wait_until(Duration::from_secs(10), "the rule to be enforced", || {
        reaches(A, public).then_some(())
    });
}

#[test]
fn https_responses_carry_hsts_and_secure_cookies_and_plain_loopback_http_does_not() {
    let dir = deskport_testsupport::data_dir();
    let m = Manager::start_https(dir.path(), &[]);
    let fp = fingerprint(&m);
    let page = https_get(m.port, "/login", &fp).unwrap();
    let head = page.split("\r\n\r\n").next().unwrap().to_ascii_lowercase();
    assert!(
        head.contains("strict-transport-security: max-age=31536000"),
        "{head}"
    );
    let cookies: Vec<&str> = head
        .lines()
        .filter(|l| l.starts_with("set-cookie:"))
        .collect();
    assert!(!cookies.is_empty(), "{head}");
    assert!(
        cookies.iter().all(|c| c.contains("; secure")),
        "{cookies:?}"
    );
    assert!(
        page.contains(&format!("SHA256:{fp}")),
        "the console shows the fingerprint"
    );
    let health = https_get(m.port, "/healthz", &fp).unwrap();
    assert!(
        health
            .to_ascii_lowercase()
            .contains("strict-transport-security"),
        "{health}"
    );
    // A client pinning another certificate does not get an answer.
    let err = https_get(m.port, "/healthz", &deskport_tls::fingerprint(b"x")).unwrap_err();
    assert!(err.contains(&fp), "{err}");

    let plain_dir = deskport_testsupport::data_dir();
    let plain = Manager::start(plain_dir.path());
    let page = http_get(plain.port, "/login").unwrap();
    let head = page.split("\r\n\r\n").next().unwrap().to_ascii_lowercase();
    assert!(head.contains("set-cookie:"), "{head}");
    assert!(!head.contains("secure"), "{head}");
    assert!(!head.contains("strict-transport-security"), "{head}");
    assert!(
        page.contains("plain HTTP on the loopback interface"),
        "{page}"
    );
}

#[test]
fn bad_tls_input_is_refused_with_status_1() {
    let dir = deskport_testsupport::data_dir();
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let (_, cert, key) = ca_and_leaf(dir.path(), "a");
    let (_, _, other_key) = ca_and_leaf(dir.path(), "b");
    let manager = |args: &[&str]| {
        let mut command = crate::support::deskport(&home);
        command
            .args(["manager", "--data-dir"])
            .arg(dir.path().join("data"))
            .args(args)
            .env(
                "DESKPORT_MANAGER__LISTEN",
                format!("127.0.0.1:{}", free_port(LO)),
            )
            .env("DESKPORT_ADMIN_PASSWORD", PASSWORD);
        run(&mut command)
    };
    let s = |p: &Path| p.to_str().unwrap().to_owned();
    let missing = s(&dir.path().join("missing.pem"));
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![
                "--tls-cert".into(),
                missing.clone(),
                "--tls-key".into(),
                s(&key),
            ],
            "missing.pem",
        ),
        (
            vec!["--tls-cert".into(), s(&cert), "--tls-key".into(), missing],
            "missing.pem",
        ),
        (
            vec!["--tls-cert".into(), s(&key), "--tls-key".into(), s(&key)],
            "no PEM certificate",
        ),
        (
            vec!["--tls-cert".into(), s(&cert), "--tls-key".into(), s(&cert)],
            "no PEM private key",
        ),
        (
            vec![
                "--tls-cert".into(),
                s(&cert),
                "--tls-key".into(),
                s(&other_key),
            ],
            "does not fit",
        ),
        (
            vec![
                "--insecure-http".into(),
                "--listen".into(),
                format!("0.0.0.0:{}", free_port(LO)),
            ],
            "loopback",
        ),
    ];
    for (args, says) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let r = manager(&args);
        assert_eq!(r.code, 1, "{args:?}: {}", r.stderr);
        assert!(r.stderr.contains(says), "{args:?}: {}", r.stderr);
    }
    // The same rule from the config file.
    let config = dir.path().join("plain.toml");
    std::fs::write(&config, "[manager]\ntls = false\nlisten = \"0.0.0.0:1\"\n").unwrap();
    let mut command = crate::support::deskport(&home);
    let r = run(command
        .arg("--config")
        .arg(&config)
        .args(["manager", "--data-dir"])
        .arg(dir.path().join("data")));
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("loopback"), "{}", r.stderr);
    assert!(
        !dir.path().join("data/deskport.db").exists(),
        "nothing was started"
    );
    // An agent with a malformed pin.
    let r = run(crate::support::deskport(&home).args([
        "firewall",
        "--manager",
        "https://127.0.0.1:1",
        "--token",
        "t",
        "--manager-fingerprint",
        "SHA256:zz",
    ]));
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("not a SHA-256"), "{}", r.stderr);
}
