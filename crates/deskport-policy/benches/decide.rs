//! Decisions per second of the compiled classifier against the linear scan, at 10, 1,000 and
//! 10,000 rules (SPEC §7: >= 10 M/s on one core at 10,000 rules, and within 20% of the
//! 10-rule figure). Also the compile time of each rule set.
//!
//! Run: `cargo bench -p deskport-policy --bench decide`. Each measurement decides a batch of
//! 1,024 packets (half of them match some rule), so "thrpt" is decisions per second.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use deskport_policy::{
    linear, Cidr, Classifier, Direction, Ethertype, GroupId, Member, Packet, Policy, PortRange,
    Protocol, Remote, Rule, RuleId, SecurityGroup, L4,
};

const BATCH: usize = 1024;

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A rule set shaped like a real one: mostly single TCP ports for hosts and small networks,
/// some port ranges, UDP and ICMP, IPv6, and a few rules open to everyone.
fn rule_set(n: usize, rng: &mut Rng) -> (Policy, Vec<GroupId>) {
    let group = GroupId::random();
    let mut rules = Vec::with_capacity(n);
    for _ in 0..n {
        let kind = rng.below(100);
        let v6 = rng.below(10) == 0;
        let len = [32u8, 32, 32, 24, 24, 16, 8][rng.below(7) as usize];
        let addr = if v6 {
            IpAddr::V6(Ipv6Addr::from(
                0x2001_0db8_u128 << 96 | u128::from(rng.next()) << 32,
            ))
        } else {
            IpAddr::V4(Ipv4Addr::from(rng.next() as u32))
        };
        let cidr = if kind < 3 {
            Cidr::any(Ethertype::of(addr))
        } else {
            let len = if v6 { len + 96 } else { len };
            Cidr::new(addr, len).unwrap()
        };
        let port = 1 + rng.below(65000) as u16;
        let (protocol, l4) = match kind {
            0..=69 => (Protocol::Tcp, L4::Ports(PortRange::single(port).unwrap())),
            70..=79 => (
                Protocol::Tcp,
                L4::Ports(PortRange::new(port, port + rng.below(500) as u16).unwrap()),
            ),
            80..=91 => (Protocol::Udp, L4::Ports(PortRange::single(port).unwrap())),
            _ if v6 => (
                Protocol::Icmpv6,
                L4::Icmp {
                    icmp_type: 128,
                    code: None,
                },
            ),
            _ => (
                Protocol::Icmp,
                L4::Icmp {
                    icmp_type: 8,
                    code: Some(0),
                },
            ),
        };
        rules.push(Rule {
            id: RuleId::random(),
            group,
            direction: Direction::Ingress,
            ethertype: Ethertype::of(addr),
            protocol,
            l4,
            remote: Remote::Cidr(cidr),
            description: String::new(),
        });
    }
    let policy = Policy {
        groups: vec![SecurityGroup {
            id: group,
            name: "bench".into(),
            description: String::new(),
            rules,
        }],
        members: vec![Member {
            name: "i".into(),
            addresses: vec![],
            groups: vec![group],
            ..Member::default()
        }],
        peers: Vec::new(),
    };
    (policy, vec![group])
}

/// Packets: half aimed at a random rule (inside its prefix and ports), half random.
fn packets(policy: &Policy, rng: &mut Rng) -> Vec<Packet> {
    let rules = &policy.groups[0].rules;
    (0..BATCH)
        .map(|i| {
            let r = &rules[rng.below(rules.len() as u64) as usize];
            let Remote::Cidr(c) = r.remote else {
                unreachable!()
            };
            let (lo, hi) = c.range();
            let aimed = i % 2 == 0;
            let bits = if aimed {
                lo + u128::from(rng.next()) % (hi - lo).saturating_add(1).max(1)
            } else {
                u128::from(rng.next())
            };
            let remote = match c.family() {
                Ethertype::Ipv4 => IpAddr::V4(Ipv4Addr::from(bits as u32)),
                Ethertype::Ipv6 => IpAddr::V6(Ipv6Addr::from(lo | bits & 0xffff_ffff)),
            };
            let protocol = r.protocol.number().unwrap();
            let port = match r.l4 {
                L4::Ports(p) if aimed => p.min(),
                L4::Icmp { icmp_type, .. } => u16::from(icmp_type) << 8,
                _ => rng.below(65536) as u16,
            };
            Packet::ports(Direction::Ingress, remote, protocol, port)
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let sets: Vec<_> = [10usize, 1_000, 10_000]
        .into_iter()
        .map(|n| {
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ n as u64);
            let (policy, groups) = rule_set(n, &mut rng);
            let pkts = packets(&policy, &mut rng);
            let classifier = Classifier::compile(&policy, &groups);
            let allowed = pkts
                .iter()
                .filter(|p| classifier.decide(p).is_allow())
                .count();
            eprintln!(
                "{n} rules: {allowed}/{BATCH} packets allowed; {}",
                classifier.stats()
            );
            (n, policy, groups, pkts, classifier)
        })
        .collect();

    let mut compile = c.benchmark_group("compile");
    compile.sample_size(10);
    for (n, policy, groups, _, _) in &sets {
        compile.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter(|| Classifier::compile(black_box(policy), groups))
        });
    }
    compile.finish();

    let mut group = c.benchmark_group("decide");
    group.throughput(Throughput::Elements(BATCH as u64));
    for (n, policy, groups, pkts, classifier) in &sets {
        group.bench_function(BenchmarkId::new("classifier", n), |b| {
            b.iter(|| {
                let mut allowed = 0usize;
                for p in pkts {
                    allowed += usize::from(classifier.decide(black_box(p)).is_allow());
                }
                allowed
            })
        });
        group.bench_function(BenchmarkId::new("linear", n), |b| {
            b.iter(|| {
                let mut allowed = 0usize;
                for p in pkts {
                    allowed += usize::from(linear::decide(policy, groups, black_box(p)).is_allow());
                }
                allowed
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
