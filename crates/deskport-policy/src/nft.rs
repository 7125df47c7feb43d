//! The nftables ruleset compiler (SPEC §2): the desired state as the text of one `nft -f`
//! transaction that replaces the `inet deskport` table atomically.
//!
//! Instances with the same security groups share a *class*. A packet to (from) a protected
//! instance is dispatched by a verdict map on its address (one hash lookup) to its class's
//! ingress (egress) chain; there every rule is an element of a concatenated interval set
//! (`remote prefix . protocol . port range`, and siblings for protocol-only, ICMP and
//! any-protocol rules), so a decision is a handful of set lookups whatever the number of
//! security-group rules. Keys are kept to three fields: the kernel's concatenated-range sets
//! (pipapo) load several times faster than with four.
//!
//! Established and related traffic passes first. A new packet addressed to a protected
//! instance must match an ingress element, one sent by it an egress element (traffic between
//! two instances must pass both). Anything else towards or from an instance is refused; a TCP
//! packet that claims to be mid-connection without a tracked connection (the flow was revoked
//! and its conntrack entry deleted) is answered with a TCP reset, so both ends learn at once
//! that the connection is gone. Traffic not involving a protected instance is not touched.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;

use crate::{addr_bits, Direction, Ethertype, Policy, Protocol, Remote, L4};

/// Where the table hooks in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// The forward path of a gateway in front of the instances (the external firewall).
    Forward,
    /// The instance's own input and output paths (a host firewall).
    Host,
}

/// What happens to a new connection no rule allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deny {
    /// Answer with a TCP reset (TCP) or ICMP administratively-prohibited (the rest): the client
    /// reports "refused" at once instead of waiting for a timeout.
    Reject,
    /// Drop silently, as OpenStack security groups do.
    Drop,
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
    pub deny: Deny,
    /// A revision number written into the header, to tell which policy is in force.
    pub revision: u64,
    /// Host placement on a machine that shares its addresses with other services (`deskport
    /// up`): only new TCP and UDP connections to these destination ports are the instance's
    /// and judged by its groups (loopback included); everything else, and all outgoing
    /// traffic, passes. Empty: the whole host is the instance.
    pub only_ports: Vec<u16>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            table: "deskport".to_owned(),
            placement: Placement::Forward,
            log_prefix: None,
            log_rate: 10,
            deny: Deny::Reject,
            revision: 0,
            only_ports: Vec::new(),
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
        format!("{addr}{rest}")
    }

    /// The packet fields matched against the set, `remote` being the other end's address
    /// selector (`saddr` for ingress, `daddr` for egress).
    fn selector(self, family: Ethertype, remote: &str) -> String {
        let ip = match family {
            Ethertype::Ipv4 => "ip",
            Ethertype::Ipv6 => "ip6",
        };
        let base = format!("{ip} {remote}");
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

/// One rule's contribution to one set of a class: a box in (remote address × key × range)
/// space. `key` is the protocol (ports and proto sets) or the ICMP type; `range` the port or
/// ICMP code range (unused for proto and any sets).
#[derive(Debug, Clone, Copy)]
struct Box {
    remote: (u128, u128),
    key: u8,
    range: (u16, u16),
    rule: crate::RuleId,
}

/// A class: the instances with one set of groups share its chains and sets.
type Class = usize;

/// A disjoint element: remote range, key range, and the rule it stands for.
type Element = ((u128, u128), (u16, u16), crate::RuleId);

/// A range of the second dimension with the rule it comes from.
type Span = (u16, u16, crate::RuleId);

/// Compiles `policy` (every member is a protected instance) into the text of one `nft -f`
/// transaction that replaces the table `options.table`.
///
/// nftables' concatenated interval sets (pipapo) refuse an element whose first or last key
/// falls inside an element already in the set, so overlapping rules (`10.0.0.0/8` and
/// `10.1.2.3/32` on the same port, say) are decomposed here into disjoint elements that cover
/// the same union. Every element is commented with the id of a rule it stands for.
pub fn compile(policy: &Policy, options: &Options) -> String {
    let mut classes: Vec<&[crate::GroupId]> = Vec::new();
    // (direction, family) → instance address → class.
    let mut dispatch: BTreeMap<(Direction, Ethertype), BTreeMap<IpAddr, Class>> = BTreeMap::new();
    for member in &policy.members {
        let class = match classes.iter().position(|g| *g == member.groups.as_slice()) {
            Some(c) => c,
            None => {
                classes.push(&member.groups);
                classes.len() - 1
            }
        };
        for &local in &member.addresses {
            for direction in Direction::ALL {
                dispatch
                    .entry((direction, Ethertype::of(local)))
                    .or_default()
                    .entry(local)
                    .or_insert(class);
            }
        }
    }
    let mut boxes: BTreeMap<(Class, SetKey), Vec<Box>> = BTreeMap::new();
    for (class, groups) in classes.iter().enumerate() {
        for rule in policy.rules_of(groups) {
            let family = rule.ethertype;
            let remotes: Vec<(u128, u128)> = match rule.remote {
                Remote::Cidr(c) => vec![c.range()],
                Remote::Group(g) => policy
                    .member_addresses(g, family)
                    .into_iter()
                    .map(|a| (addr_bits(a), addr_bits(a)))
                    .collect(),
            };
            let (kind, key, range) = match (rule.protocol.number(), rule.l4) {
                (None, _) => (Kind::Any, 0, (0, 0)),
                (Some(p), L4::Ports(r)) => (Kind::Ports, p, (r.min(), r.max())),
                (Some(_), L4::Icmp { icmp_type, code }) => {
                    let codes = code.map_or((0, 255), |c| (u16::from(c), u16::from(c)));
                    (Kind::Icmp, icmp_type, codes)
                }
                (Some(p), L4::All) => (Kind::Proto, p, (0, 0)),
            };
            let list = boxes
                .entry((class, (rule.direction, family, kind)))
                .or_default();
            for remote in remotes {
                list.push(Box {
                    remote,
                    key,
                    range,
                    rule: rule.id,
                });
            }
        }
    }
    let mut sets: BTreeMap<(Class, SetKey), Vec<String>> = BTreeMap::new();
    for ((class, set), list) in boxes {
        let (_, family, kind) = set;
        let mut by_key: BTreeMap<u8, Vec<Box>> = BTreeMap::new();
        for b in list {
            by_key.entry(b.key).or_default().push(b);
        }
        let elements = sets.entry((class, set)).or_default();
        for (key, list) in by_key {
            for (remote, range, rule) in disjoint(&list) {
                let remote = range_text(remote, family);
                let tail = match kind {
                    Kind::Any => String::new(),
                    Kind::Proto => format!(" . {}", proto_name(key)),
                    Kind::Ports => format!(" . {} . {}", proto_name(key), span_text(range)),
                    Kind::Icmp => format!(" . {key} . {}", span_text(range)),
                };
                elements.push(format!("{remote}{tail} comment \"{rule}\""));
            }
        }
    }
    render(classes.len(), &sets, &dispatch, options)
}

/// The union of `boxes` (all of one key) as disjoint (remote range, range, rule) elements,
/// sorted. Boxes that overlap no other are kept as they are (readable: one rule, one
/// element); each group of overlapping boxes is decomposed by [`decompose`].
fn disjoint(boxes: &[Box]) -> Vec<Element> {
    // Union-find over overlapping pairs, found with a sweep along the remote axis.
    let mut parent: Vec<usize> = (0..boxes.len()).collect();
    fn root(parent: &mut [usize], mut i: usize) -> usize {
        while parent[i] != i {
            parent[i] = parent[parent[i]];
            i = parent[i];
        }
        i
    }
    let mut order: Vec<usize> = (0..boxes.len()).collect();
    order.sort_by_key(|&i| boxes[i].remote);
    let mut active: Vec<usize> = Vec::new();
    for &i in &order {
        let b = boxes[i];
        active.retain(|&j| boxes[j].remote.1 >= b.remote.0);
        for &j in &active {
            let o = boxes[j];
            if o.range.0 <= b.range.1 && b.range.0 <= o.range.1 {
                let (ri, rj) = (root(&mut parent, i), root(&mut parent, j));
                parent[ri] = rj;
            }
        }
        active.push(i);
    }
    let mut groups: BTreeMap<usize, Vec<Box>> = BTreeMap::new();
    for (i, b) in boxes.iter().enumerate() {
        let r = root(&mut parent, i);
        groups.entry(r).or_default().push(*b);
    }
    let mut out = Vec::new();
    for group in groups.into_values() {
        match group.as_slice() {
            [one] => out.push((one.remote, one.range, one.rule)),
            many => out.extend(decompose(many)),
        }
    }
    out.sort_by_key(|(remote, range, _)| (*range, *remote));
    out
}

/// Overlapping boxes as disjoint elements covering their union: a sweep over the remote axis;
/// each elementary remote interval gets the merged union of the ranges covering it, and
/// neighbouring intervals with the same union are joined.
fn decompose(boxes: &[Box]) -> Vec<Element> {
    let mut events: BTreeMap<u128, (Vec<usize>, Vec<usize>)> = BTreeMap::new();
    for (i, b) in boxes.iter().enumerate() {
        events.entry(b.remote.0).or_default().0.push(i);
        if let Some(end) = b.remote.1.checked_add(1) {
            events.entry(end).or_default().1.push(i);
        }
    }
    let mut active: BTreeMap<(u16, u16, usize), ()> = BTreeMap::new();
    // (first address, union of ranges with a rule each); an empty union is a gap.
    let mut runs: Vec<(u128, Vec<Span>)> = Vec::new();
    for (at, (adds, removes)) in events {
        for i in removes {
            active.remove(&(boxes[i].range.0, boxes[i].range.1, i));
        }
        for i in adds {
            active.insert((boxes[i].range.0, boxes[i].range.1, i), ());
        }
        let mut union: Vec<Span> = Vec::new();
        for &(lo, hi, i) in active.keys() {
            match union.last_mut() {
                Some(last) if u32::from(lo) <= u32::from(last.1) + 1 => last.1 = last.1.max(hi),
                _ => union.push((lo, hi, boxes[i].rule)),
            }
        }
        if runs.last().map(|(_, u)| u) != Some(&union) {
            runs.push((at, union));
        }
    }
    let mut out = Vec::new();
    for (i, (start, union)) in runs.iter().enumerate() {
        let end = runs.get(i + 1).map_or(u128::MAX, |(next, _)| next - 1);
        for &(lo, hi, rule) in union {
            out.push(((*start, end), (lo, hi), rule));
        }
    }
    out
}

/// An address range as nft writes it: a bare address, a prefix when the range is one, else
/// `first-last`.
fn range_text((lo, hi): (u128, u128), family: Ethertype) -> String {
    let (bits, addr): (u32, fn(u128) -> IpAddr) = match family {
        Ethertype::Ipv4 => (32, |v| IpAddr::from(std::net::Ipv4Addr::from(v as u32))),
        Ethertype::Ipv6 => (128, |v| IpAddr::from(std::net::Ipv6Addr::from(v))),
    };
    let size = hi.wrapping_sub(lo).wrapping_add(1);
    let aligned = size == 0 || (size.is_power_of_two() && lo % size == 0);
    if lo == hi {
        addr(lo).to_string()
    } else if aligned {
        let host_bits = if size == 0 {
            128
        } else {
            size.trailing_zeros()
        };
        format!("{}/{}", addr(lo), bits - host_bits.min(bits))
    } else {
        format!("{}-{}", addr(lo), addr(hi))
    }
}

fn span_text((lo, hi): (u16, u16)) -> String {
    if lo == hi {
        lo.to_string()
    } else {
        format!("{lo}-{hi}")
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

fn set_name(class: Class, (direction, family, kind): SetKey) -> String {
    format!(
        "c{class}_{}_{}_{}",
        direction_tag(direction),
        family_tag(family),
        kind.suffix()
    )
}

fn direction_tag(direction: Direction) -> &'static str {
    match direction {
        Direction::Ingress => "in",
        Direction::Egress => "out",
    }
}

fn family_tag(family: Ethertype) -> &'static str {
    match family {
        Ethertype::Ipv4 => "v4",
        Ethertype::Ipv6 => "v6",
    }
}

fn render(
    classes: usize,
    sets: &BTreeMap<(Class, SetKey), Vec<String>>,
    dispatch: &BTreeMap<(Direction, Ethertype), BTreeMap<IpAddr, Class>>,
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
    // Kept by the kernel: `nft list table` tells which revision is in force.
    let _ = writeln!(w, "\tcomment \"deskport revision {}\"", options.revision);

    // Dispatch: instance address → its class's chain.
    for direction in Direction::ALL {
        for family in Ethertype::ALL {
            let ty = match family {
                Ethertype::Ipv4 => "ipv4_addr",
                Ethertype::Ipv6 => "ipv6_addr",
            };
            let _ = writeln!(
                w,
                "\tmap {}_{} {{\n\t\ttype {ty} : verdict",
                direction_tag(direction),
                family_tag(family)
            );
            if let Some(map) = dispatch.get(&(direction, family)).filter(|m| !m.is_empty()) {
                let list: Vec<String> = map
                    .iter()
                    .map(|(addr, class)| {
                        format!("{addr} : jump c{class}_{}", direction_tag(direction))
                    })
                    .collect();
                let _ = writeln!(w, "\t\telements = {{ {} }}", list.join(", "));
            }
            let _ = writeln!(w, "\t}}");
        }
    }

    for ((class, key), elements) in sets {
        let (_, family, kind) = *key;
        let _ = writeln!(w, "\tset {} {{", set_name(*class, *key));
        let _ = writeln!(w, "\t\ttype {}", kind.key_type(family));
        let _ = writeln!(w, "\t\tflags interval\n\t\tcounter");
        let _ = writeln!(w, "\t\telements = {{");
        let n = elements.len();
        for (i, element) in elements.iter().enumerate() {
            let sep = if i + 1 < n { "," } else { "" };
            let _ = writeln!(w, "\t\t\t{element}{sep}");
        }
        let _ = writeln!(w, "\t\t}}\n\t}}");
    }

    for class in 0..classes {
        for direction in Direction::ALL {
            let tag = direction_tag(direction);
            let remote = match direction {
                Direction::Ingress => "saddr",
                Direction::Egress => "daddr",
            };
            let _ = writeln!(w, "\tchain c{class}_{tag} {{");
            let _ = writeln!(w, "\t\tct state invalid drop");
            let _ = writeln!(
                w,
                "\t\ttcp flags & (fin | syn | rst | ack) != syn reject with tcp reset"
            );
            for family in Ethertype::ALL {
                for kind in Kind::ALL {
                    let key = (direction, family, kind);
                    if sets.contains_key(&(class, key)) {
                        let _ = writeln!(
                            w,
                            "\t\t{} @{} return",
                            kind.selector(family, remote),
                            set_name(class, key)
                        );
                    }
                }
            }
            if let Some(prefix) = &options.log_prefix {
                let _ = writeln!(
                    w,
                    "\t\tlimit rate {}/second log prefix \"{prefix}{tag} deny \"",
                    options.log_rate
                );
            }
            match options.deny {
                Deny::Drop => {
                    let _ = writeln!(w, "\t\tcounter drop");
                }
                Deny::Reject => {
                    let _ = writeln!(w, "\t\tmeta l4proto tcp counter reject with tcp reset");
                    let _ = writeln!(w, "\t\tcounter reject with icmpx admin-prohibited");
                }
            }
            let _ = writeln!(w, "\t}}");
        }
    }

    // (chain, hook, [(address field, dispatch direction)])
    type Hook<'a> = (&'a str, &'a str, &'a [(&'a str, Direction)]);
    let hooks: &[Hook<'_>] = match options.placement {
        Placement::Forward => &[(
            "forward",
            "forward",
            &[("daddr", Direction::Ingress), ("saddr", Direction::Egress)],
        )],
        Placement::Host if !options.only_ports.is_empty() => {
            &[("input", "input", &[("daddr", Direction::Ingress)])]
        }
        Placement::Host => &[
            ("input", "input", &[("daddr", Direction::Ingress)]),
            ("output", "output", &[("saddr", Direction::Egress)]),
        ],
    };
    // Scoped to some ports: only new connections to them are dispatched.
    let scope = if options.placement == Placement::Host && !options.only_ports.is_empty() {
        let ports: Vec<String> = options.only_ports.iter().map(u16::to_string).collect();
        format!(
            "meta l4proto {{ tcp, udp }} th dport {{ {} }} ",
            ports.join(", ")
        )
    } else {
        String::new()
    };
    for (chain, hook, jumps) in hooks {
        let _ = writeln!(w, "\tchain {chain} {{");
        let _ = writeln!(
            w,
            "\t\ttype filter hook {hook} priority filter; policy accept;"
        );
        let _ = writeln!(w, "\t\tct state established,related accept");
        if options.placement == Placement::Host && scope.is_empty() {
            // The instance's own loopback, and IPv6 neighbour discovery, which the host needs
            // to be reachable at all (Neutron allows it implicitly too).
            let lo = if *hook == "input" { "iif" } else { "oif" };
            let _ = writeln!(w, "\t\t{lo} lo accept");
            let _ = writeln!(
                w,
                "\t\ticmpv6 type {{ nd-router-solicit, nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert }} accept"
            );
        }
        for (field, direction) in *jumps {
            for family in Ethertype::ALL {
                let ip = match family {
                    Ethertype::Ipv4 => "ip",
                    Ethertype::Ipv6 => "ip6",
                };
                let _ = writeln!(
                    w,
                    "\t\t{scope}{ip} {field} vmap @{}_{}",
                    direction_tag(*direction),
                    family_tag(family)
                );
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
    use crate::{default_group, Cidr, GroupId, Member, PortRange, Rule, RuleId, SecurityGroup};
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
                    ..Member::default()
                },
                Member {
                    name: "web".into(),
                    addresses: vec!["198.18.2.3".parse().unwrap()],
                    groups: vec![web],
                    ..Member::default()
                },
            ],
            peers: Vec::new(),
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

        // `deskport up` with nftables: the host's own port 3389 on every address, loopback too.
        let up = Policy {
            members: vec![Member {
                name: "desktop".into(),
                addresses: vec!["127.0.0.1".parse().unwrap()],
                groups: vec![default],
                ..Member::default()
            }],
            ..policy
        };
        let text = compile(
            &up,
            &Options {
                revision: 7,
                placement: Placement::Host,
                only_ports: vec![3389],
                ..Options::default()
            },
        );
        expect_test::expect_file!["../tests/snapshots/up-host-3389.nft"].assert_eq(&text);
    }
}

#[cfg(test)]
mod disjoint_tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn overlapping_rules_become_disjoint_elements() {
        let g = crate::GroupId(uuid::Uuid::from_u128(1));
        let rule = |n: u128, cidr: &str, lo: u16, hi: u16| crate::Rule {
            id: crate::RuleId(uuid::Uuid::from_u128(n)),
            group: g,
            direction: Direction::Ingress,
            ethertype: Ethertype::Ipv4,
            protocol: Protocol::Tcp,
            l4: L4::Ports(crate::PortRange::new(lo, hi).unwrap()),
            remote: Remote::Cidr(crate::Cidr::parse(cidr).unwrap().cidr),
            description: String::new(),
        };
        let policy = Policy {
            groups: vec![crate::SecurityGroup {
                id: g,
                name: "g".into(),
                description: String::new(),
                rules: vec![
                    rule(1, "10.0.0.0/8", 22, 22),
                    rule(2, "10.1.2.3/32", 20, 25),
                    rule(3, "0.0.0.0/0", 80, 80),
                    rule(4, "10.1.2.3/32", 80, 80),
                ],
            }],
            members: vec![crate::Member {
                name: "i".into(),
                addresses: vec!["198.18.2.2".parse().unwrap()],
                groups: vec![g],
                ..crate::Member::default()
            }],
            peers: Vec::new(),
        };
        let text = compile(&policy, &Options::default());
        let start = text.find("set c0_in_v4_ports").unwrap();
        let end = start + text[start..].find("\t}\n").unwrap();
        expect_test::expect![[r#"
            set c0_in_v4_ports {
            		type ipv4_addr . inet_proto . inet_service
            		flags interval
            		counter
            		elements = {
            			10.1.2.3 . tcp . 20-25 comment "00000000-0000-0000-0000-000000000002",
            			10.0.0.0-10.1.2.2 . tcp . 22 comment "00000000-0000-0000-0000-000000000001",
            			10.1.2.4-10.255.255.255 . tcp . 22 comment "00000000-0000-0000-0000-000000000001",
            			0.0.0.0/0 . tcp . 80 comment "00000000-0000-0000-0000-000000000003"
	"#]]
        .assert_eq(&text[start..end]);
    }

    fn boxes() -> impl Strategy<Value = Vec<Box>> {
        proptest::collection::vec((0u128..40, 0u128..12, 0u16..30, 0u16..12, 0u128..4), 0..12)
            .prop_map(|v| {
                v.into_iter()
                    .map(|(lo, len, plo, plen, rule)| Box {
                        remote: (lo, lo + len),
                        key: 6,
                        range: (plo, plo + plen),
                        rule: crate::RuleId(uuid::Uuid::from_u128(rule)),
                    })
                    .collect()
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

        /// The elements cover exactly the union of the rules, and no element's corner lies
        /// inside another element (what the kernel's pipapo sets require).
        #[test]
        fn decomposition_is_disjoint_and_covers_the_union(input in boxes()) {
            let out = disjoint(&input);
            let inside = |(a, p): (u128, u16), ((alo, ahi), (plo, phi)): ((u128, u128), (u16, u16))| {
                alo <= a && a <= ahi && plo <= p && p <= phi
            };
            for a in 0..60u128 {
                for p in 0..50u16 {
                    let want = input.iter().any(|b| inside((a, p), (b.remote, b.range)));
                    let got = out.iter().filter(|(r, s, _)| inside((a, p), (*r, *s))).count();
                    prop_assert_eq!(got, usize::from(want), "at ({}, {})", a, p);
                }
            }
            for (i, x) in out.iter().enumerate() {
                for (j, y) in out.iter().enumerate() {
                    if i != j {
                        prop_assert!(!inside((x.0 .0, x.1 .0), (y.0, y.1)));
                        prop_assert!(!inside((x.0 .1, x.1 .1), (y.0, y.1)));
                    }
                }
                let rule_covers = input.iter().any(|b| b.rule == x.2 && inside((x.0 .0, x.1 .0), (b.remote, b.range)));
                prop_assert!(rule_covers || input.iter().any(|b| b.rule == x.2));
            }
        }
    }

    #[test]
    fn ranges_print_as_addresses_prefixes_or_spans() {
        let v4 = |a: &str| u128::from(u32::from(a.parse::<std::net::Ipv4Addr>().unwrap()));
        assert_eq!(
            range_text((v4("10.0.0.1"), v4("10.0.0.1")), Ethertype::Ipv4),
            "10.0.0.1"
        );
        assert_eq!(
            range_text((v4("10.0.0.0"), v4("10.255.255.255")), Ethertype::Ipv4),
            "10.0.0.0/8"
        );
        assert_eq!(
            range_text((0, u128::from(u32::MAX)), Ethertype::Ipv4),
            "0.0.0.0/0"
        );
        assert_eq!(
            range_text((v4("10.0.0.1"), v4("10.0.0.6")), Ethertype::Ipv4),
            "10.0.0.1-10.0.0.6"
        );
        assert_eq!(range_text((0, u128::MAX), Ethertype::Ipv6), "::/0");
        assert_eq!(range_text((1, 2), Ethertype::Ipv6), "::1-::2");
    }
}
