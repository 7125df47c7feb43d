//! The nftables backend for real: `deskport firewall --backend nft` in the gateway namespace of
//! a small network (client A, client B → gateway → instance), addresses from 198.18.0.0/15 and
//! 2001:db8::/32, real TCP connections made inside the client namespaces.

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use deskport_testsupport::{require_program, require_root, veth, wait_until, Netns, ProcessGuard};

pub const A4: &str = "198.18.0.2";
pub const INST4: &str = "198.18.2.2";
pub const A6: &str = "2001:db8:a::2";
pub const INST6: &str = "2001:db8:2::2";

pub struct Net {
    pub a: Netns,
    pub b: Netns,
    pub gw: Netns,
    pub inst: Netns,
}

/// Client A and B and the instance, each on its own link to the gateway, which routes.
pub fn network() -> Net {
    require_root();
    require_program("nft");
    require_program("conntrack");
    let net = Net {
        a: Netns::new(),
        b: Netns::new(),
        gw: Netns::new(),
        inst: Netns::new(),
    };
    let links = [
        (&net.a, "gw-a", "198.18.0", "2001:db8:a"),
        (&net.b, "gw-b", "198.18.1", "2001:db8:b"),
        (&net.inst, "gw-i", "198.18.2", "2001:db8:2"),
    ];
    for (host, gw_if, v4, v6) in links {
        veth(host, "eth0", &net.gw, gw_if);
        host.run(&["ip", "addr", "add", &format!("{v4}.2/24"), "dev", "eth0"]);
        host.run(&[
            "ip",
            "-6",
            "addr",
            "add",
            &format!("{v6}::2/64"),
            "dev",
            "eth0",
            "nodad",
        ]);
        host.run(&["ip", "route", "add", "default", "via", &format!("{v4}.1")]);
        host.run(&[
            "ip",
            "-6",
            "route",
            "add",
            "default",
            "via",
            &format!("{v6}::1"),
        ]);
        net.gw
            .run(&["ip", "addr", "add", &format!("{v4}.1/24"), "dev", gw_if]);
        net.gw.run(&[
            "ip",
            "-6",
            "addr",
            "add",
            &format!("{v6}::1/64"),
            "dev",
            gw_if,
            "nodad",
        ]);
    }
    net.gw.run(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    net.gw
        .run(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);
    net
}

/// Echo servers on the instance for every (address, port).
pub fn serve_echo(inst: &Netns, addrs: &[&str], ports: &[u16]) {
    for addr in addrs {
        for port in ports {
            let ip: IpAddr = addr.parse().unwrap();
            let listener = inst.run_in(|| TcpListener::bind((ip, *port)).unwrap());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    let Ok(mut s) = stream else { continue };
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 4096];
                        while let Ok(n) = s.read(&mut buf) {
                            if n == 0 || s.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                    });
                }
            });
        }
    }
}

/// Connects from inside `from` to `addr:port` (2 s timeout).
pub fn connect(from: &Netns, addr: &str, port: u16) -> std::io::Result<TcpStream> {
    let target = SocketAddr::new(addr.parse().unwrap(), port);
    from.run_in(|| TcpStream::connect_timeout(&target, Duration::from_secs(2)))
}

/// Whether an echo round trip from `from` to `addr:port` works.
pub fn reaches(from: &Netns, addr: &str, port: u16) -> bool {
    let Ok(mut s) = connect(from, addr, port) else {
        return false;
    };
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut buf = [0u8; 4];
    s.write_all(b"ping").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"ping"
}

/// The policy: the default group, plus `extra` rules, protecting the instance.
pub fn policy(revision: u64, extra: &str) -> String {
    format!(
        r#"revision = {revision}

[[security_groups]]
name = "default"
rules = [
  {{ template = "http" }}, {{ template = "https" }},
  {{ template = "http", remote_ip_prefix = "::/0" }}, {{ template = "https", remote_ip_prefix = "::/0" }},
  {{ direction = "egress" }}, {{ direction = "egress", ethertype = "IPv6" }},
  {extra}
]

[[instances]]
name = "desktop"
addresses = ["{INST4}", "{INST6}"]
security_groups = ["default"]
"#
    )
}

pub fn write_policy(path: &Path, text: &str) {
    // Write then rename, so the agent never reads a half-written file.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// The revision the kernel's table carries (its comment), if the table exists.
pub fn table_revision(gw: &Netns) -> Option<u64> {
    let out = gw.output(&["nft", "list", "table", "inet", "deskport"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("comment \"deskport revision"))?;
    line.trim()
        .trim_start_matches("comment \"deskport revision ")
        .trim_end_matches('"')
        .parse()
        .ok()
}

pub fn wait_revision(gw: &Netns, revision: u64) {
    wait_until(
        Duration::from_secs(10),
        &format!("revision {revision} in force"),
        || (table_revision(gw) == Some(revision)).then_some(()),
    );
}

pub fn start_agent(
    gw: &Netns,
    policy: &Path,
    log: &Path,
    extra_env: &[(&str, &str)],
) -> ProcessGuard {
    let mut command = gw.command(env!("CARGO_BIN_EXE_deskport"));
    command
        .args([
            "firewall",
            "--backend",
            "nft",
            "--poll-interval-ms",
            "50",
            "--policy",
        ])
        .arg(policy)
        .env("DESKPORT_CONFIG", "/dev/null")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap());
    for (k, v) in extra_env {
        command.env(k, v);
    }
    ProcessGuard::spawn("deskport firewall", &mut command).unwrap()
}

fn rdp_for_a() -> String {
    format!(
        r#"{{ template = "rdp", remote_ip_prefix = "{A4}/32" }}, {{ template = "rdp", remote_ip_prefix = "{A6}/128" }}"#
    )
}

#[test]
fn the_article_with_nftables_default_then_rdp_for_one_address_then_cut() {
    let net = network();
    serve_echo(&net.inst, &[INST4, INST6], &[80, 443, 3389]);
    let dir = deskport_testsupport::data_dir();
    let file = dir.path().join("policy.toml");
    let log = dir.path().join("agent.log");
    write_policy(&file, &policy(1, ""));
    let _agent = start_agent(&net.gw, &file, &log, &[]);
    wait_revision(&net.gw, 1);

    // A new instance: only 80 and 443, for both families; RDP is refused at once (reject).
    for (client, inst) in [(&net.a, INST4), (&net.a, INST6), (&net.b, INST4)] {
        assert!(reaches(client, inst, 80), "80 to {inst}");
        assert!(reaches(client, inst, 443), "443 to {inst}");
        let refused = connect(client, inst, 3389).unwrap_err();
        assert_eq!(
            refused.kind(),
            ErrorKind::ConnectionRefused,
            "3389 to {inst}: {refused}"
        );
    }

    // The RDP rule for A's address only.
    write_policy(&file, &policy(2, &rdp_for_a()));
    wait_revision(&net.gw, 2);
    assert!(reaches(&net.a, INST4, 3389));
    assert!(reaches(&net.a, INST6, 3389));
    assert!(!reaches(&net.b, INST4, 3389), "B is outside the /32");
    assert!(!reaches(&net.b, INST6, 3389), "B is outside the /128");

    // A live session from A; then the rule goes and the session is cut.
    let mut live = connect(&net.a, INST4, 3389).unwrap();
    live.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    live.write_all(b"hello").unwrap();
    let mut buf = [0u8; 5];
    live.read_exact(&mut buf).unwrap();
    let flows = net
        .gw
        .run(&["conntrack", "-L", "-p", "tcp", "--dport", "3389"]);
    assert!(flows.contains(A4), "the live flow is tracked: {flows}");

    let changed = Instant::now();
    write_policy(&file, &policy(3, ""));
    let cut = wait_until(
        Duration::from_secs(10),
        "the live connection to be cut",
        || {
            // The client keeps talking, as an RDP client does; the first reply after the cut is a
            // reset from the firewall.
            match live.write_all(b"x").and_then(|()| live.read(&mut buf[..1])) {
                Ok(0) => Some("closed"),
                Err(e) if e.kind() == ErrorKind::ConnectionReset => Some("reset"),
                Err(e) if e.kind() == ErrorKind::BrokenPipe => Some("reset"),
                _ => None,
            }
        },
    );
    eprintln!(
        "live connection {cut} {:?} after the policy file changed",
        changed.elapsed()
    );
    assert_eq!(table_revision(&net.gw), Some(3));
    assert!(!reaches(&net.a, INST4, 3389));
    assert!(reaches(&net.a, INST4, 80), "80 still open");

    // A file that does not parse changes nothing.
    write_policy(&file, "revision = 4\n[[security_groups]\n");
    wait_until(
        Duration::from_secs(10),
        "the agent to report the bad file",
        || {
            std::fs::read_to_string(&log)
                .unwrap()
                .contains("the previous one stays in force")
                .then_some(())
        },
    );
    assert_eq!(table_revision(&net.gw), Some(3));
    assert!(reaches(&net.b, INST4, 80));
    // A valid file again is applied.
    write_policy(&file, &policy(5, &rdp_for_a()));
    wait_revision(&net.gw, 5);
    assert!(reaches(&net.a, INST4, 3389));
}

#[test]
fn a_failed_apply_leaves_the_previous_ruleset_in_force() {
    let net = network();
    serve_echo(&net.inst, &[INST4], &[80, 3389]);
    let dir = deskport_testsupport::data_dir();
    let file = dir.path().join("policy.toml");
    let log = dir.path().join("agent.log");
    // An `nft` that appends a bad command to every transaction: the kernel must refuse the
    // whole transaction, the table deletion and re-creation included.
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let real_nft = which("nft");
    let wrapper = bin.join("nft");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nif [ -e {flag} ]; then {{ cat; echo 'add rule inet deskport no_such_chain accept'; }} | {real} \"$@\"; else exec {real} \"$@\"; fi\n",
            flag = dir.path().join("break").display(),
            real = real_nft.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());

    write_policy(&file, &policy(1, &rdp_for_a()));
    let _agent = start_agent(&net.gw, &file, &log, &[("PATH", &path)]);
    wait_revision(&net.gw, 1);
    // Stateless listings: counters differ as traffic flows.
    let list = || {
        net.gw
            .run(&["nft", "--stateless", "list", "table", "inet", "deskport"])
    };
    let before = list();
    assert!(reaches(&net.a, INST4, 3389));

    std::fs::write(dir.path().join("break"), "").unwrap();
    write_policy(&file, &policy(2, ""));
    let started = Instant::now();
    loop {
        let text = std::fs::read_to_string(&log).unwrap();
        if text.contains("nft refused the ruleset") && text.contains("no_such_chain") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the agent did not report the refused apply; its log:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(list(), before);
    assert!(reaches(&net.a, INST4, 3389), "revision 1 is still enforced");

    std::fs::remove_file(dir.path().join("break")).unwrap();
    write_policy(&file, &policy(3, ""));
    wait_revision(&net.gw, 3);
    assert!(!reaches(&net.a, INST4, 3389));
}

#[test]
fn dry_run_asks_the_kernel_and_changes_nothing() {
    let net = network();
    let dir = deskport_testsupport::data_dir();
    let file = dir.path().join("policy.toml");
    // Overlapping rules too: the kernel's concatenated interval sets refuse overlapping
    // elements, so the compiler must have made them disjoint.
    let overlapping = format!(
        r#"{}, {{ template = "ssh", remote_ip_prefix = "198.18.0.0/15" }},
           {{ protocol = "tcp", port_range_min = 20, port_range_max = 3390, remote_ip_prefix = "{A4}/32" }},
           {{ template = "all_tcp", remote_ip_prefix = "198.18.0.0/24" }}, {{ template = "all_icmp" }},
           {{ protocol = "icmp", port_range_min = 8, port_range_max = 0, remote_ip_prefix = "{A4}/32" }}"#,
        rdp_for_a()
    );
    write_policy(&file, &policy(1, &overlapping));
    for placement in ["forward", "host"] {
        let out = net
            .gw
            .command(env!("CARGO_BIN_EXE_deskport"))
            .args([
                "firewall",
                "--backend",
                "nft",
                "--dry-run",
                "--placement",
                placement,
                "--policy",
            ])
            .arg(&file)
            .env("DESKPORT_CONFIG", "/dev/null")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{placement}: {stderr}");
        assert!(stderr.contains("nft accepts the ruleset"), "{stderr}");
    }
    assert_eq!(
        net.gw.run(&["nft", "list", "tables"]),
        "",
        "dry run created nothing"
    );
}

fn which(program: &str) -> PathBuf {
    std::env::split_paths(&std::env::var_os("PATH").unwrap())
        .map(|d| d.join(program))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{program} not on PATH"))
}
