//! `deskport manager --db postgres://…` on a PostgreSQL cluster of the test's own: databases it
//! cannot use are refused with exit status 1 and left as they were; several managers on one
//! database share tokens and login throttling; a firewall agent following two of them keeps
//! its policy through the death (SIGKILL) of the one it follows and loses nothing committed.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use deskport_testsupport::{free_port, wait_until, Postgres, ProcessGuard};

use crate::cli_manager::{Manager, PASSWORD};
use crate::firewall_feed::{allow_a, allow_from, instance_with_rdp, reaches, A, LO};
use crate::support::{deskport, Run};

/// Runs `command` until it exits, at most 60 s (a manager that wrongly starts serving fails
/// the test instead of hanging it).
fn run_until_exit(command: &mut Command, dir: &Path) -> Run {
    let (out, err) = (dir.join("stdout"), dir.join("stderr"));
    let mut process = ProcessGuard::spawn(
        "deskport manager",
        command
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap()),
    )
    .unwrap();
    let status = process
        .wait_timeout(Duration::from_secs(60))
        .expect("the manager to exit");
    Run {
        code: status.code().expect("an exit status"),
        stdout: std::fs::read_to_string(out).unwrap(),
        stderr: std::fs::read_to_string(err).unwrap(),
    }
}

/// `deskport manager` with a home of its own in `dir`, on a free port.
fn manager_command(dir: &Path) -> Command {
    std::fs::create_dir_all(dir.join("home")).unwrap();
    let mut command = deskport(&dir.join("home"));
    command
        .args(["manager", "--listen"])
        .arg(format!("127.0.0.1:{}", free_port(LO)))
        .arg("--data-dir")
        .arg(dir.join("data"))
        .env("DESKPORT_ADMIN_PASSWORD", PASSWORD);
    command
}

/// Every table of the database with its row count, and the migrations applied: what must
/// not change when a manager refuses the database.
fn contents(pg: &Postgres, db: &str) -> String {
    let tables = pg.psql(
        db,
        "SELECT string_agg(tablename, ',' ORDER BY tablename) FROM pg_tables \
         WHERE schemaname = 'public'",
    );
    let mut out = tables.clone();
    for table in tables.trim().split(',').filter(|t| !t.is_empty()) {
        out += &pg.psql(db, &format!("SELECT '{table}', count(*) FROM {table}"));
    }
    out + &pg.psql(
        db,
        "SELECT string_agg(version::text || ':' || success::text, ',' ORDER BY version) \
         FROM _sqlx_migrations",
    )
}

/// A bad URL, an unreachable server and a database of a newer schema each end the manager
/// with status 1 and a message saying which, never the password; whether the URL comes from
/// `--db`, `[manager] db` in the config file or `DESKPORT_MANAGER__DB`. The refused database
/// is left as it was.
#[test]
fn the_manager_refuses_databases_it_cannot_use() {
    let Some(pg) = Postgres::start() else { return };
    let dir = deskport_testsupport::data_dir();
    let case = |name: &str| {
        let d = dir.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        d
    };

    let d = case("scheme");
    let r = run_until_exit(manager_command(&d).args(["--db", "mysql://db/x"]), &d);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("\"mysql\" is not supported"),
        "{}",
        r.stderr
    );

    let d = case("bad-url");
    let r = run_until_exit(
        manager_command(&d).args(["--db", "postgres://u:secret@127.0.0.1:notaport/db"]),
        &d,
    );
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("the database URL is not valid"),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("secret"), "{}", r.stderr);

    // Nothing listens on the port; the URL comes from the config file.
    let d = case("unreachable");
    let port = free_port(LO);
    let config = d.join("home/.config/deskport");
    std::fs::create_dir_all(&config).unwrap();
    std::fs::write(
        config.join("config.toml"),
        format!("[manager]\ndb = \"postgres://u:secret@127.0.0.1:{port}/db\"\n"),
    )
    .unwrap();
    let r = run_until_exit(&mut manager_command(&d), &d);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains(&format!(
            "cannot connect to the database at 127.0.0.1:{port}/db"
        )),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("secret"), "{}", r.stderr);

    // A database a newer deskport migrated (version 99), named by the environment.
    let url = pg.database("newer");
    let d = case("first");
    let mut first = Manager::start_with_db(&d, Some(url.clone()));
    first.login();
    first.ok(&["sg", "create", "web"]);
    first.stop();
    pg.psql(
        "newer",
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (99, 'from the future', true, '\\x00', 0)",
    );
    let before = contents(&pg, "newer");
    assert!(before.contains("security_groups"), "{before}");
    let d = case("newer");
    let r = run_until_exit(manager_command(&d).env("DESKPORT_MANAGER__DB", &url), &d);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains(
            "the database's schema has version 99, and this deskport knows versions up to 3"
        ),
        "{}",
        r.stderr
    );
    assert_eq!(contents(&pg, "newer"), before, "the database is untouched");
}

/// One HTTP/1.1 request to 127.0.0.1:`port`: (status, body).
fn http(port: u16, method: &str, path: &str, token: Option<&str>, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect((LO, port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let auth = token.map_or_else(String::new, |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{auth}\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("an HTTP answer: {text}"));
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    (status, body)
}

fn password(password: &str) -> String {
    format!(r#"{{"username":"admin","password":"{password}"}}"#)
}

/// Two managers on one database: a token made through one works on the other and, revoked
/// through the other, stops working on the first; five failed logins are five in total
/// whichever manager they hit, then both refuse (429), even the right password.
#[test]
fn managers_on_one_database_share_tokens_and_login_throttling() {
    let Some(pg) = Postgres::start() else { return };
    let url = pg.database("replicas");
    let dir = deskport_testsupport::data_dir();
    let a = Manager::start_with_db(&dir.path().join("a"), Some(url.clone()));
    let b = Manager::start_with_db(&dir.path().join("b"), Some(url));

    let (status, body) = http(
        a.port,
        "POST",
        "/api/v1/auth/tokens",
        None,
        &password(PASSWORD),
    );
    assert_eq!(status, 201, "{body}");
    let made: serde_json::Value = serde_json::from_str(&body).unwrap();
    let token = made["token"].as_str().unwrap();
    let id = made["token_id"].as_str().unwrap();
    let (status, body) = http(b.port, "GET", "/api/v1/security-groups", Some(token), "");
    assert_eq!(status, 200, "B takes A's token: {body}");
    let (status, body) = http(
        b.port,
        "DELETE",
        &format!("/api/v1/auth/tokens/{id}"),
        Some(token),
        "",
    );
    assert_eq!(status, 204, "{body}");
    wait_until(
        Duration::from_secs(10),
        "A to refuse the revoked token",
        || {
            let (status, _) = http(a.port, "GET", "/api/v1/security-groups", Some(token), "");
            (status == 401).then_some(())
        },
    );

    for n in 0..5 {
        let port = if n % 2 == 0 { a.port } else { b.port };
        let (status, body) = http(
            port,
            "POST",
            "/api/v1/auth/tokens",
            None,
            &password("wrong"),
        );
        assert_eq!(status, 401, "failure {} (on {port}): {body}", n + 1);
    }
    for (m, name) in [(&b, "B"), (&a, "A")] {
        let (status, body) = http(
            m.port,
            "POST",
            "/api/v1/auth/tokens",
            None,
            &password("wrong"),
        );
        assert_eq!(status, 429, "{name} refuses a sixth attempt: {body}");
    }
    let (status, body) = http(
        a.port,
        "POST",
        "/api/v1/auth/tokens",
        None,
        &password(PASSWORD),
    );
    assert_eq!(status, 429, "locked out, even the right password: {body}");
}

/// A value of the agent's `/metrics`.
fn metric(port: u16, name: &str) -> Option<String> {
    let text = crate::firewall_gateway::http_get(port, "/metrics")?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ').map(str::to_owned))
}

fn following(port: u16) -> Option<String> {
    let text = crate::firewall_gateway::http_get(port, "/metrics")?;
    let line = text
        .lines()
        .find(|l| l.starts_with("deskport_agent_source_info{"))?;
    Some(line.split('"').nth(1)?.to_owned())
}

/// Two managers on one database and a firewall agent following both (`--manager A,B`, so
/// A first): a rule added through B is enforced by the agent following A; A is killed with
/// SIGKILL: the agent follows B within seconds, and meanwhile the ruleset it enforces never
/// changes (the same revision, no new apply, the rule's traffic passes throughout); a rule
/// added through A just before its death is enforced; A comes back, and a rule added through
/// it is enforced by the agent following B. Nothing committed is lost.
#[test]
fn an_agent_follows_two_managers_through_the_death_of_one() {
    let Some(pg) = Postgres::start() else { return };
    let url = pg.database("agents");
    let dir = deskport_testsupport::data_dir();
    let mut a = Manager::start_with_db(&dir.path().join("a"), Some(url.clone()));
    let b = Manager::start_with_db(&dir.path().join("b"), Some(url));
    a.login();
    b.login();
    let (public, token) = instance_with_rdp(&a);
    let metrics = free_port(LO);
    let _agent = ProcessGuard::spawn(
        "deskport firewall",
        deskport(&a.home)
            .args(["firewall", "--manager", &format!("{},{}", a.url, b.url)])
            .args(["--token", &token, "--state"])
            .arg(dir.path().join("state.json"))
            .args(["--metrics-listen", &format!("127.0.0.1:{metrics}")])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("agent.log")).unwrap()),
    )
    .unwrap();
    wait_until(
        Duration::from_secs(15),
        "the agent to publish the service",
        || TcpStream::connect((LO, public)).ok().map(|_| ()),
    );
    assert_eq!(following(metrics).as_deref(), Some(a.url.as_str()));
    assert!(!reaches(A, public), "the default group does not open RDP");

    // Through B, followed through A.
    allow_a(&b, public);
    wait_until(Duration::from_secs(10), "B's rule to be enforced", || {
        reaches(A, public).then_some(())
    });
    assert_eq!(following(metrics).as_deref(), Some(a.url.as_str()));

    // Through A, just before it dies.
    let c = Ipv4Addr::new(127, 0, 0, 3);
    allow_from(&a, public, "127.0.0.3/32");
    wait_until(Duration::from_secs(10), "A's rule to be enforced", || {
        reaches(c, public).then_some(())
    });
    // The rules are in force before the agent's metrics say so: wait until they settle.
    let settled = || {
        (
            metric(metrics, "deskport_agent_policy_revision"),
            metric(metrics, "deskport_agent_applies_total"),
        )
    };
    let (revision, applies) = wait_until(Duration::from_secs(10), "the metrics to settle", || {
        let first = settled();
        std::thread::sleep(Duration::from_millis(300));
        (first.0.is_some() && first == settled()).then_some(first)
    });
    let (revision, applies) = (revision.unwrap(), applies.unwrap());

    let killed = Instant::now();
    a.kill();
    let deadline = killed + Duration::from_secs(15);
    loop {
        assert_eq!(
            metric(metrics, "deskport_agent_policy_revision").as_deref(),
            Some(revision.as_str()),
            "the revision in force never changes"
        );
        assert_eq!(
            metric(metrics, "deskport_agent_applies_total").as_deref(),
            Some(applies.as_str()),
            "nothing is applied meanwhile"
        );
        assert!(
            reaches(A, public) && reaches(c, public),
            "the rules stay in force"
        );
        if following(metrics).as_deref() == Some(b.url.as_str()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the agent did not follow B in 15 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "the agent followed B {:?} after A was killed",
        killed.elapsed()
    );
    assert!(!reaches(Ipv4Addr::new(127, 0, 0, 4), public));

    // Nothing committed is lost: B has both rules.
    let rules = b.ok(&["rule", "list", "--group", "default", "--json"]);
    assert!(
        rules.contains("127.0.0.2/32") && rules.contains("127.0.0.3/32"),
        "{rules}"
    );

    // A comes back; a rule added through it reaches the agent following B.
    a.restart();
    a.ok(&[
        "rule",
        "add",
        "--group",
        "default",
        "--protocol",
        "tcp",
        "--port",
        &public.to_string(),
        "--cidr",
        "127.0.0.4/32",
    ]);
    wait_until(
        Duration::from_secs(10),
        "the rule added through A to be enforced",
        || reaches(Ipv4Addr::new(127, 0, 0, 4), public).then_some(()),
    );
    assert_eq!(following(metrics).as_deref(), Some(b.url.as_str()));
    assert!(reaches(A, public) && reaches(c, public));
}
