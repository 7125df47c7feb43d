//! The compiled classifier agrees with the linear evaluator: same decision and the same first
//! matching rule, over 10,000 random rule sets with 64 packets each. Addresses, ports and
//! protocols come from small pools so that rules overlap, nest and touch at their edges.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use deskport_policy::{
    linear, Cidr, Classifier, Decision, Direction, Ethertype, GroupId, Member, Packet, Policy,
    PortRange, Protocol, Remote, Rule, RuleId, SecurityGroup, L4,
};
use proptest::prelude::*;
use uuid::Uuid;

const GROUPS: u128 = 3;

fn group_id(i: u128) -> GroupId {
    GroupId(Uuid::from_u128(i + 1))
}

/// Addresses near a few edges: 0, the top, and two small networks, in both families.
fn address() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        (0u32..4).prop_map(|i| IpAddr::V4(Ipv4Addr::from(i))),
        (0u32..4).prop_map(|i| IpAddr::V4(Ipv4Addr::from(u32::MAX - i))),
        (0u32..64).prop_map(|i| IpAddr::V4(Ipv4Addr::from(0xc612_0000 + i))),
        (0u32..64).prop_map(|i| IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + (i << 20)))),
        (0u128..64).prop_map(|i| IpAddr::V6(Ipv6Addr::from((0x2001_0db8u128 << 96) + i))),
        (0u128..4).prop_map(|i| IpAddr::V6(Ipv6Addr::from(u128::MAX - i))),
        (0u128..4).prop_map(|i| IpAddr::V6(Ipv6Addr::from(i))),
    ]
}

fn port() -> impl Strategy<Value = u16> {
    prop_oneof![
        Just(0u16),
        Just(1),
        Just(22),
        Just(80),
        Just(3389),
        Just(3390),
        1u16..40,
        Just(65535),
        any::<u16>()
    ]
}

fn protocol() -> impl Strategy<Value = Protocol> {
    prop_oneof![
        Just(Protocol::Any),
        Just(Protocol::Tcp),
        Just(Protocol::Udp),
        Just(Protocol::Icmp),
        Just(Protocol::Icmpv6),
        Just(Protocol::Number(47)),
    ]
}

#[derive(Debug, Clone)]
struct RuleGen {
    group: u128,
    direction: Direction,
    protocol: Protocol,
    ports: (u16, u16),
    icmp: (u8, Option<u8>),
    all_ports: bool,
    remote_addr: IpAddr,
    prefix_len: u8,
    remote_group: Option<u128>,
}

fn rule_gen() -> impl Strategy<Value = RuleGen> {
    (
        0..GROUPS,
        prop_oneof![Just(Direction::Ingress), Just(Direction::Egress)],
        protocol(),
        (port(), port()),
        (0u8..4, proptest::option::of(0u8..3)),
        any::<bool>(),
        address(),
        0u8..=128,
        proptest::option::weighted(0.15, 0..GROUPS),
    )
        .prop_map(
            |(
                group,
                direction,
                protocol,
                ports,
                icmp,
                all_ports,
                remote_addr,
                prefix_len,
                remote_group,
            )| RuleGen {
                group,
                direction,
                protocol,
                ports,
                icmp,
                all_ports,
                remote_addr,
                prefix_len,
                remote_group,
            },
        )
}

fn build(gen: &RuleGen) -> Rule {
    let family = Ethertype::of(gen.remote_addr);
    let max_len = if family == Ethertype::Ipv4 { 32 } else { 128 };
    // Bias towards long prefixes so that nesting happens at every scale.
    let len = max_len - (gen.prefix_len % (max_len + 1));
    let protocol = match (gen.protocol, family) {
        (Protocol::Icmp, Ethertype::Ipv6) => Protocol::Icmpv6,
        (Protocol::Icmpv6, Ethertype::Ipv4) => Protocol::Icmp,
        (p, _) => p,
    };
    let l4 = if gen.all_ports || !(protocol.has_ports() || protocol.is_icmp()) {
        L4::All
    } else if protocol.is_icmp() {
        L4::Icmp {
            icmp_type: gen.icmp.0,
            code: gen.icmp.1,
        }
    } else {
        let (a, b) = gen.ports;
        let (lo, hi) = (a.min(b).max(1), a.max(b).max(1));
        L4::Ports(PortRange::new(lo, hi).unwrap())
    };
    let remote = match gen.remote_group {
        Some(g) => Remote::Group(group_id(g)),
        None => Remote::Cidr(Cidr::new(gen.remote_addr, len).unwrap()),
    };
    Rule {
        id: RuleId::random(),
        group: group_id(gen.group),
        direction: gen.direction,
        ethertype: family,
        protocol,
        l4,
        remote,
        description: String::new(),
    }
}

#[derive(Debug, Clone)]
struct PacketGen {
    direction: Direction,
    remote: IpAddr,
    protocol: u8,
    port: u16,
}

fn packet_gen() -> impl Strategy<Value = PacketGen> {
    (
        prop_oneof![Just(Direction::Ingress), Just(Direction::Egress)],
        address(),
        prop_oneof![
            Just(6u8),
            Just(17),
            Just(1),
            Just(58),
            Just(47),
            Just(132),
            any::<u8>()
        ],
        prop_oneof![port(), (0u16..4, 0u16..3).prop_map(|(t, c)| t << 8 | c)],
    )
        .prop_map(|(direction, remote, protocol, port)| PacketGen {
            direction,
            remote,
            protocol,
            port,
        })
}

/// Members of the groups: a handful of addresses, each in some groups.
fn members() -> impl Strategy<Value = Vec<(IpAddr, Vec<u128>)>> {
    proptest::collection::vec(
        (address(), proptest::collection::vec(0..GROUPS, 0..3)),
        0..6,
    )
}

fn policy(rules: &[RuleGen], members: &[(IpAddr, Vec<u128>)]) -> Policy {
    let mut groups: Vec<SecurityGroup> = (0..GROUPS)
        .map(|i| SecurityGroup {
            id: group_id(i),
            name: format!("g{i}"),
            description: String::new(),
            rules: Vec::new(),
        })
        .collect();
    for gen in rules {
        groups[gen.group as usize].rules.push(build(gen));
    }
    Policy {
        groups,
        members: members
            .iter()
            .enumerate()
            .map(|(i, (addr, gs))| Member {
                name: format!("m{i}"),
                addresses: vec![*addr],
                groups: gs.iter().map(|g| group_id(*g)).collect(),
                ..Member::default()
            })
            .collect(),
        peers: Vec::new(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 10_000,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn classifier_agrees_with_linear_evaluation(
        rules in proptest::collection::vec(rule_gen(), 0..24),
        members in members(),
        instance_groups in proptest::collection::vec(0..GROUPS, 0..4),
        packets in proptest::collection::vec(packet_gen(), 64),
    ) {
        let policy = policy(&rules, &members);
        let groups: Vec<GroupId> = instance_groups.iter().map(|g| group_id(*g)).collect();
        let classifier = Classifier::compile(&policy, &groups);
        for p in &packets {
            let packet = Packet { direction: p.direction, remote: p.remote, protocol: p.protocol, port: p.port };
            let expected = linear::decide(&policy, &groups, &packet);
            prop_assert_eq!(classifier.decide(&packet), expected, "packet {:?}", packet);
        }
    }
}

/// Hand-picked cases whose answers are known, so that the two evaluators cannot agree on a
/// wrong answer unnoticed.
#[test]
fn known_answers() {
    let g = group_id(0);
    let rdp = |remote: &str| Rule {
        id: RuleId::random(),
        group: g,
        direction: Direction::Ingress,
        ethertype: Ethertype::Ipv4,
        protocol: Protocol::Tcp,
        l4: L4::Ports(PortRange::single(3389).unwrap()),
        remote: Remote::Cidr(Cidr::parse(remote).unwrap().cidr),
        description: String::new(),
    };
    let mut group = deskport_policy::default_group(g);
    group.rules.push(rdp("127.0.0.1/32"));
    let rdp_id = group.rules.last().unwrap().id;
    let http_v4 = group.rules[0].id;
    let policy = Policy {
        groups: vec![group],
        members: vec![],
        peers: Vec::new(),
    };
    let c = Classifier::compile(&policy, &[g]);
    let ingress = |addr: &str, proto, port| {
        c.decide(&Packet::ports(
            Direction::Ingress,
            addr.parse().unwrap(),
            proto,
            port,
        ))
    };
    assert_eq!(ingress("127.0.0.1", 6, 3389), Decision::Allow(rdp_id));
    assert_eq!(ingress("127.0.0.2", 6, 3389), Decision::Deny);
    assert_eq!(ingress("127.0.0.1", 17, 3389), Decision::Deny);
    assert_eq!(ingress("203.0.113.9", 6, 80), Decision::Allow(http_v4));
    assert!(ingress("2001:db8::1", 6, 443).is_allow());
    assert_eq!(ingress("2001:db8::1", 6, 3389), Decision::Deny);
    assert_eq!(ingress("203.0.113.9", 6, 22), Decision::Deny);
    let out = c.decide(&Packet::icmp(
        Direction::Egress,
        "192.0.2.1".parse().unwrap(),
        8,
        0,
    ));
    assert!(out.is_allow());
    // No groups: everything is denied.
    let none = Classifier::compile(&policy, &[]);
    assert_eq!(
        none.decide(&Packet::ports(
            Direction::Egress,
            "192.0.2.1".parse().unwrap(),
            6,
            80
        )),
        Decision::Deny
    );
}

/// A 10,000-rule set compiles, and its decisions agree with the linear scan.
#[test]
fn large_rule_sets_agree() {
    let g = group_id(0);
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let rules: Vec<Rule> = (0..10_000)
        .map(|i| {
            let addr = IpAddr::V4(Ipv4Addr::from(next() as u32));
            let len = [32u8, 24, 16, 8, 0][(next() % 5) as usize];
            let port = 1 + (next() % 65000) as u16;
            Rule {
                id: RuleId(Uuid::from_u128(i)),
                group: g,
                direction: Direction::Ingress,
                ethertype: Ethertype::Ipv4,
                protocol: if i % 3 == 0 {
                    Protocol::Udp
                } else {
                    Protocol::Tcp
                },
                l4: L4::Ports(
                    PortRange::new(port, port.saturating_add((next() % 50) as u16)).unwrap(),
                ),
                remote: Remote::Cidr(Cidr::new(addr, len).unwrap()),
                description: String::new(),
            }
        })
        .collect();
    let policy = Policy {
        groups: vec![SecurityGroup {
            id: g,
            name: "big".into(),
            description: String::new(),
            rules,
        }],
        members: vec![],
        peers: Vec::new(),
    };
    let c = Classifier::compile(&policy, &[g]);
    assert_eq!(c.rule_count(), 10_000);
    let mut allowed = 0;
    for _ in 0..20_000 {
        let packet = Packet::ports(
            Direction::Ingress,
            IpAddr::V4(Ipv4Addr::from(next() as u32)),
            if next() % 2 == 0 { 6 } else { 17 },
            (next() % 65536) as u16,
        );
        let expected = linear::decide(&policy, &[g], &packet);
        assert_eq!(c.decide(&packet), expected);
        allowed += usize::from(expected.is_allow());
    }
    assert!(allowed > 0, "the sample should contain allowed packets");
}
