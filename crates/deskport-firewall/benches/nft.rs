//! The nftables backend, measured in network namespaces (needs root): compile + atomic apply
//! time at 10, 1,000 and 10,000 rules (SPEC §7: <= 200 ms at 10,000), and the per-packet cost
//! of the rule lookup: UDP datagrams per second from a client through the gateway namespace to
//! the instance, which never answers, so conntrack keeps the flow "new" and every datagram is
//! classified by the rules. Baseline: the same path with no deskport table.
//!
//! Run: `cargo bench -p deskport-firewall --bench nft`. Lines starting with `BENCH|` are read
//! by `scripts/bench`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use deskport_firewall::{NftBackend, NftConfig};
use deskport_policy::{
    Cidr, Direction, Ethertype, GroupId, Member, Policy, PortRange, Protocol, Remote, Rule, RuleId,
    SecurityGroup, L4,
};
use deskport_testsupport::{veth, Netns};

const INSTANCE: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 2);
const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const PORT: u16 = 5000;

/// `n` ingress rules: one lets the client reach PORT, the rest open random ports to random hosts.
fn policy(n: usize) -> Policy {
    let group = GroupId::random();
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let rule = |remote: Cidr, port: u16, protocol: Protocol| Rule {
        id: RuleId::random(),
        group,
        direction: Direction::Ingress,
        ethertype: Ethertype::Ipv4,
        protocol,
        l4: L4::Ports(PortRange::single(port).unwrap()),
        remote: Remote::Cidr(remote),
        description: String::new(),
    };
    let mut rules = vec![rule(Cidr::host(IpAddr::V4(CLIENT)), PORT, Protocol::Udp)];
    while rules.len() < n {
        let addr = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | (next() as u32 & 0x00ff_ffff)));
        let len = [32u8, 24, 16][(next() % 3) as usize];
        let protocol = if next() % 2 == 0 {
            Protocol::Tcp
        } else {
            Protocol::Udp
        };
        rules.push(rule(
            Cidr::new(addr, len).unwrap(),
            1 + (next() % 60000) as u16,
            protocol,
        ));
    }
    Policy {
        groups: vec![SecurityGroup {
            id: group,
            name: "bench".into(),
            description: String::new(),
            rules,
        }],
        members: vec![Member {
            name: "instance".into(),
            addresses: vec![IpAddr::V4(INSTANCE)],
            groups: vec![group],
            ..Member::default()
        }],
        peers: Vec::new(),
    }
}

/// Datagrams per second that reach the instance while the client sends for `seconds`.
fn udp_rate(client: &Netns, inst: &Netns, seconds: f64) -> f64 {
    let receiver = inst.run_in(|| std::net::UdpSocket::bind((INSTANCE, PORT)).unwrap());
    receiver
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let counter = std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        let mut n = 0u64;
        let mut first: Option<Instant> = None;
        let mut last = Instant::now();
        while receiver.recv(&mut buf).is_ok() {
            first.get_or_insert_with(Instant::now);
            last = Instant::now();
            n += 1;
        }
        let span = first.map_or(0.0, |f| (last - f).as_secs_f64());
        if span > 0.0 {
            n as f64 / span
        } else {
            0.0
        }
    });
    let target = SocketAddr::new(IpAddr::V4(INSTANCE), PORT);
    client.run_in(|| {
        let s = std::net::UdpSocket::bind((CLIENT, 0)).unwrap();
        let started = Instant::now();
        let payload = [0x5au8; 32];
        while started.elapsed().as_secs_f64() < seconds {
            for _ in 0..64 {
                let _ = s.send_to(&payload, target);
            }
        }
    });
    counter.join().unwrap()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    if std::env::args()
        .skip(1)
        .any(|a| !a.starts_with("--") && !"nft".contains(&a))
    {
        return;
    }
    if !nix::unistd::geteuid().is_root() {
        println!("nft bench skipped: it needs root (network namespaces)");
        return;
    }
    let (client, gw, inst) = (Netns::new(), Netns::new(), Netns::new());
    veth(&client, "eth0", &gw, "gw-c");
    veth(&inst, "eth0", &gw, "gw-i");
    client.run(&["ip", "addr", "add", "198.18.0.2/24", "dev", "eth0"]);
    client.run(&["ip", "route", "add", "default", "via", "198.18.0.1"]);
    inst.run(&["ip", "addr", "add", "198.18.2.2/24", "dev", "eth0"]);
    inst.run(&["ip", "route", "add", "default", "via", "198.18.2.1"]);
    gw.run(&["ip", "addr", "add", "198.18.0.1/24", "dev", "gw-c"]);
    gw.run(&["ip", "addr", "add", "198.18.2.1/24", "dev", "gw-i"]);
    gw.run(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);

    let backend = NftBackend::new(NftConfig::default());
    let apply = |p: &Policy| {
        gw.run_in(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(backend.apply(p, 1)).unwrap()
        })
    };

    udp_rate(&client, &inst, 0.5);
    let baseline = median((0..3).map(|_| udp_rate(&client, &inst, 1.0)).collect());
    println!(
        "UDP datagrams/s through the gateway namespace without a deskport table: {baseline:.0}"
    );
    for n in [10usize, 1_000, 10_000] {
        let p = policy(n);
        apply(&p);
        let runs: Vec<_> = (0..5).map(|_| apply(&p)).collect();
        let total = median(
            runs.iter()
                .map(|r| (r.compile + r.apply).as_secs_f64() * 1e3)
                .collect(),
        );
        let compile = median(runs.iter().map(|r| r.compile.as_secs_f64() * 1e3).collect());
        let nft = median(runs.iter().map(|r| r.apply.as_secs_f64() * 1e3).collect());
        let bytes = runs[0].ruleset_bytes;
        let rate = median((0..3).map(|_| udp_rate(&client, &inst, 1.0)).collect());
        println!(
            "{n:>6} rules: compile + apply {total:.1} ms (compile {compile:.1} ms, nft -f {nft:.1} ms, {} KiB ruleset); {rate:.0} classified datagrams/s = {:.1}% of no table",
            bytes / 1024,
            rate / baseline * 100.0
        );
        println!("BENCH|nft compile + atomic apply, {n} rules|{total:.1}|ms|200|ms target|lower");
        println!("BENCH|nft classified packets/s, {n} rules|{rate:.0}|pkt/s|{baseline:.0}|pkt/s without a table|higher");
    }
}
