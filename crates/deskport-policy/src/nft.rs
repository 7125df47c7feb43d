//! The nftables ruleset compiler (SPEC §2): the desired state as the text of one `nft -f`
//! transaction that replaces the `inet deskport` table atomically.
//!
//! Every rule of every protected instance becomes an element of a concatenated interval set
//! (`instance address . remote prefix . protocol . port range` and its siblings for
//! protocol-only, ICMP and any-protocol rules), so the ruleset has a fixed number of `nft`
//! rules and one set lookup decides a packet whatever the number of security-group rules.
//!
//! The chains: established and related traffic passes; a new packet addressed to a protected
//! instance must match an ingress element, one sent by it an egress element (traffic between
//! two instances must pass both). Anything else towards or from an instance is dropped; a TCP
//! packet that claims to be mid-connection without a tracked connection (the flow was revoked
//! and its conntrack entry deleted) is answered with a TCP reset, so both ends learn at once
//! that the connection is gone. Traffic not involving a protected instance is not touched.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;

use crate::{Cidr, Direction, Ethertype, Policy, Protocol, Remote, L4};

/// Where the table hooks in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// The forward path of a gateway in front of the instances (the external firewall).
    Forward,
    /// The instance's own input and output paths (a host firewall).
    Host,
}

/// Compiler options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Table name inside the `inet` family.
    pub table: String,
    pub placement: Placement,
    /// Log denied new connections (rate-limited to `log_rate` per second) with this prefix.
    pub log_prefix: Option<String>,
    pub log_rate: u32,
    /// A revision number written into the header, to tell which policy is in force.
    pub revision: u64,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            table: "deskport".to_owned(),
            placement: Placement::Forward,
            log_prefix: None,
            log_rate: 10,
            revision: 0,
        }
    }
}

/// The kinds of element set, each with its key layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    /// `instance . remote . protocol . port range`
    Ports,
    /// `instance . remote . protocol` (every packet of a protocol)
    Proto,
    /// `instance . remote . icmp type . icmp code`
    Icmp,
    /// `instance . remote` (any protocol)
    Any,
}

impl Kind {
    const ALL: [Kind; 4] = [Kind::Ports, Kind::Proto, Kind::Icmp, Kind::Any];

    fn suffix(self) -> &'static str {
        match self {
            Kind::Ports => "ports",
            Kind::Proto => "proto",
            Kind::Icmp => "icmp",
            Kind::Any => "any",
        }
    }

    fn key_type(self, family: Ethertype) -> String {
        let addr = match family {
            Ethertype::Ipv4 => "ipv4_addr",
            Ethertype::Ipv6 => "ipv6_addr",
        };
        let rest = match (self, family) {
            (Kind::Ports, _) => " . inet_proto . inet_service",
            (Kind::Proto, _) => " . inet_proto",
            (Kind::Icmp, Ethertype::Ipv4) => " . icmp_type . icmp_code",
            (Kind::Icmp, Ethertype::Ipv6) => " . icmpv6_type . icmpv6_code",
            (Kind::Any, _) => "",
        };
        format!("{addr} . {addr}{rest}")
    }

    /// The packet fields matched against the set, `local`/`remote` being the instance's and the
    /// other end's address selectors.
    fn selector(self, family: Ethertype, local: &str, remote: &str) -> String {
        let ip = match family {
            Ethertype::Ipv4 => "ip",
            Ethertype::Ipv6 => "ip6",
        };
        let base = format!("{ip} {local} . {ip} {remote}");
        match (self, family) {
            (Kind::Ports, _) => format!("{base} . meta l4proto . th dport"),
            (Kind::Proto, _) => format!("{base} . meta l4proto"),
            (Kind::Icmp, Ethertype::Ipv4) => format!("{base} . icmp type . icmp code"),
            (Kind::Icmp, Ethertype::Ipv6) => format!("{base} . icmpv6 type . icmpv6 code"),
            (Kind::Any, _) => base,
        }
    }
}

type SetKey = (Direction, Ethertype, Kind);

/// Compiles `policy` (every member is a protected instance) into the text of one `nft -f`
/// transaction that replaces the table `options.table`.
pub fn compile(policy: &Policy, options: &Options) -> String {
    // Set → element text → the first rule id that produced it (the element's comment).
    let mut sets: BTreeMap<SetKey, BTreeMap<String, String>> = BTreeMap::new();
    let mut instances: BTreeMap<Ethertype, Vec<IpAddr>> = BTreeMap::new();
    for member in &policy.members {
        for &local in &member.addresses {
            let family = Ethertype::of(local);
            instances.entry(family).or_default().push(local);
            for rule in policy.rules_of(&member.groups) {
                if rule.ethertype != family {
                    continue;
                }
                let remotes: Vec<String> = match rule.remote {
                    Remote::Cidr(c) => vec![prefix(c)],
                    Remote::Group(g) => policy
                        .member_addresses(g, family)
                        .into_iter()
                        .map(|a| a.to_string())
                        .collect(),
                };
                let (kind, tail) = element_tail(rule.protocol, rule.l4);
                let set = sets.entry((rule.direction, family, kind)).or_default();
                for remote in remotes {
                    set.entry(format!("{local} . {remote}{tail}"))
                        .or_insert_with(|| rule.id.to_string());
                }
            }
        }
    }
    for addrs in instances.values_mut() {
        addrs.sort();
        addrs.dedup();
    }
    render(&sets, &instances, options)
}

/// The set kind of a rule and the part of its element after `instance . remote`.
fn element_tail(protocol: Protocol, l4: L4) -> (Kind, String) {
    let Some(number) = protocol.number() else {
        return (Kind::Any, String::new());
    };
    let name = proto_name(number);
    match l4 {
        L4::Ports(r) if r.min() == r.max() => (Kind::Ports, format!(" . {name} . {}", r.min())),
        L4::Ports(r) => (Kind::Ports, format!(" . {name} . {}-{}", r.min(), r.max())),
        L4::Icmp {
            icmp_type,
            code: Some(code),
        } => (Kind::Icmp, format!(" . {icmp_type} . {code}")),
        L4::Icmp {
            icmp_type,
            code: None,
        } => (Kind::Icmp, format!(" . {icmp_type} . 0-255")),
        L4::All => (Kind::Proto, format!(" . {name}")),
    }
}

fn proto_name(number: u8) -> String {
    match Protocol::from_number(number) {
        Protocol::Tcp => "tcp".to_owned(),
        Protocol::Udp => "udp".to_owned(),
        Protocol::Icmp => "icmp".to_owned(),
        Protocol::Icmpv6 => "ipv6-icmp".to_owned(),
        _ => number.to_string(),
    }
}

/// A prefix as nft writes it: host prefixes as bare addresses.
fn prefix(c: Cidr) -> String {
    let host = match c.family() {
        Ethertype::Ipv4 => 32,
        Ethertype::Ipv6 => 128,
    };
    if c.prefix_len() == host {
        c.addr().to_string()
    } else {
        c.to_string()
    }
}

fn set_name((direction, family, kind): SetKey) -> String {
    let d = match direction {
        Direction::Ingress => "in",
        Direction::Egress => "out",
    };
    let f = match family {
        Ethertype::Ipv4 => "v4",
        Ethertype::Ipv6 => "v6",
    };
    format!("{d}_{f}_{}", kind.suffix())
}

fn render(
    sets: &BTreeMap<SetKey, BTreeMap<String, String>>,
    instances: &BTreeMap<Ethertype, Vec<IpAddr>>,
    options: &Options,
) -> String {
    let table = &options.table;
    let mut out = String::new();
    let w = &mut out;
    let _ = writeln!(
        w,
        "# deskport security groups, revision {}; generated, do not edit",
        options.revision
    );
    // Declaring then deleting the table makes the replacement work whether or not it exists;
    // the whole file is one transaction, so packets see the old table or the new one.
    let _ = writeln!(w, "table inet {table}");
    let _ = writeln!(w, "delete table inet {table}");
    let _ = writeln!(w, "table inet {table} {{");
    for family in Ethertype::ALL {
        let (name, ty) = match family {
            Ethertype::Ipv4 => ("instances_v4", "ipv4_addr"),
            Ethertype::Ipv6 => ("instances_v6", "ipv6_addr"),
        };
        let _ = writeln!(w, "\tset {name} {{\n\t\ttype {ty}");
        if let Some(addrs) = instances.get(&family).filter(|a| !a.is_empty()) {
            let list: Vec<String> = addrs.iter().map(IpAddr::to_string).collect();
            let _ = writeln!(w, "\t\telements = {{ {} }}", list.join(", "));
        }
        let _ = writeln!(w, "\t}}");
    }
    for direction in Direction::ALL {
        for family in Ethertype::ALL {
            for kind in Kind::ALL {
                let key = (direction, family, kind);
                let _ = writeln!(w, "\tset {} {{", set_name(key));
                let _ = writeln!(w, "\t\ttype {}", kind.key_type(family));
                let _ = writeln!(w, "\t\tflags interval\n\t\tcounter");
                if let Some(elements) = sets.get(&key).filter(|e| !e.is_empty()) {
                    let _ = writeln!(w, "\t\telements = {{");
                    let n = elements.len();
                    for (i, (element, rule)) in elements.iter().enumerate() {
                        let sep = if i + 1 < n { "," } else { "" };
                        let _ = writeln!(w, "\t\t\t{element} comment \"{rule}\"{sep}");
                    }
                    let _ = writeln!(w, "\t\t}}");
                }
                let _ = writeln!(w, "\t}}");
            }
        }
    }

    let (ingress_local, egress_local) = ("daddr", "saddr");
    for direction in Direction::ALL {
        let (chain, local, remote) = match direction {
            Direction::Ingress => ("ingress", ingress_local, egress_local),
            Direction::Egress => ("egress", egress_local, ingress_local),
        };
        let _ = writeln!(w, "\tchain {chain} {{");
        for family in Ethertype::ALL {
            for kind in Kind::ALL {
                let _ = writeln!(
                    w,
                    "\t\t{} @{} return",
                    kind.selector(family, local, remote),
                    set_name((direction, family, kind))
                );
            }
        }
        if let Some(prefix) = &options.log_prefix {
            let _ = writeln!(
                w,
                "\t\tlimit rate {}/second log prefix \"{prefix}{chain} deny \"",
                options.log_rate
            );
        }
        let _ = writeln!(w, "\t\tcounter drop\n\t}}");
    }

    // (chain, hook, [(address field, target chain)])
    type Hook<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)]);
    let hooks: &[Hook<'_>] = match options.placement {
        Placement::Forward => &[(
            "forward",
            "forward",
            &[("daddr", "ingress"), ("saddr", "egress")],
        )],
        Placement::Host => &[
            ("input", "input", &[("daddr", "ingress")]),
            ("output", "output", &[("saddr", "egress")]),
        ],
    };
    for (chain, hook, jumps) in hooks {
        let _ = writeln!(w, "\tchain {chain} {{");
        let _ = writeln!(
            w,
            "\t\ttype filter hook {hook} priority filter; policy accept;"
        );
        let _ = writeln!(w, "\t\tct state established,related accept");
        if options.placement == Placement::Host {
            // The instance's own loopback, and IPv6 neighbour discovery, which the host needs
            // to be reachable at all (Neutron allows it implicitly too).
            let lo = if *hook == "input" { "iif" } else { "oif" };
            let _ = writeln!(w, "\t\t{lo} lo accept");
            let _ = writeln!(
                w,
                "\t\ticmpv6 type {{ nd-router-solicit, nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert }} accept"
            );
        }
        for (field, target) in *jumps {
            for (ip, set) in [("ip", "instances_v4"), ("ip6", "instances_v6")] {
                let _ = writeln!(w, "\t\t{ip} {field} @{set} ct state invalid drop");
                let _ = writeln!(
                    w,
                    "\t\t{ip} {field} @{set} tcp flags & (fin | syn | rst | ack) != syn reject with tcp reset"
                );
                let _ = writeln!(w, "\t\t{ip} {field} @{set} jump {target}");
            }
        }
        let _ = writeln!(w, "\t}}");
    }
    let _ = writeln!(w, "}}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{default_group, GroupId, Member, PortRange, Rule, RuleId, SecurityGroup};
    use uuid::Uuid;

    fn id(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    #[test]
    fn the_articles_policy_compiles_to_a_readable_ruleset() {
        let default = GroupId(id(1));
        let mut group = default_group(default);
        for (i, rule) in group.rules.iter_mut().enumerate() {
            rule.id = RuleId(id(100 + i as u128));
        }
        group.rules.push(Rule {
            id: RuleId(id(200)),
            group: default,
            direction: Direction::Ingress,
            ethertype: Ethertype::Ipv4,
            protocol: Protocol::Tcp,
            l4: L4::Ports(PortRange::single(3389).unwrap()),
            remote: Remote::Cidr(Cidr::parse("198.18.0.2/32").unwrap().cidr),
            description: "RDP".into(),
        });
        let web = GroupId(id(2));
        let web_group = SecurityGroup {
            id: web,
            name: "web".into(),
            description: String::new(),
            rules: vec![
                Rule {
                    id: RuleId(id(300)),
                    group: web,
                    direction: Direction::Ingress,
                    ethertype: Ethertype::Ipv4,
                    protocol: Protocol::Icmp,
                    l4: L4::Icmp {
                        icmp_type: 8,
                        code: None,
                    },
                    remote: Remote::Group(default),
                    description: String::new(),
                },
                Rule {
                    id: RuleId(id(301)),
                    group: web,
                    direction: Direction::Ingress,
                    ethertype: Ethertype::Ipv6,
                    protocol: Protocol::Number(47),
                    l4: L4::All,
                    remote: Remote::Cidr(Cidr::parse("2001:db8::/32").unwrap().cidr),
                    description: String::new(),
                },
            ],
        };
        let policy = Policy {
            groups: vec![group, web_group],
            members: vec![
                Member {
                    name: "desktop".into(),
                    addresses: vec![
                        "198.18.2.2".parse().unwrap(),
                        "2001:db8:2::2".parse().unwrap(),
                    ],
                    groups: vec![default],
                },
                Member {
                    name: "web".into(),
                    addresses: vec!["198.18.2.3".parse().unwrap()],
                    groups: vec![web],
                },
            ],
        };
        let text = compile(
            &policy,
            &Options {
                revision: 7,
                log_prefix: Some("deskport ".into()),
                ..Options::default()
            },
        );
        expect_test::expect_file!["../tests/snapshots/article.nft"].assert_eq(&text);
    }
}
