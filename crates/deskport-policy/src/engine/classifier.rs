//! The compiled form of a set of security groups.
//!
//! Per direction and address family there is a [`Table`]: a 256-entry protocol dispatch to a
//! bucket; per bucket an [`IntervalMap`] from the remote address to an *address class* (the set
//! of rules whose remote covers it, precomputed over the elementary intervals of all rule
//! prefixes); per class a port map giving, for each port, the first rule that admits it.
//! A decision is four array lookups and two short searches, whatever the number of rules.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use super::index::{IntervalMap, Key};
use super::{port_span, Decision};
use crate::{addr_bits, Direction, Ethertype, GroupId, Packet, Policy, Remote, RuleId};

const NONE: u32 = u32::MAX;

/// See [`Table::build`]: the product of broad and narrow entries above which rules are split
/// into two layers.
const SPLIT_ABOVE: usize = 16 * 1024;

/// The rules of one set of groups, compiled for fast decisions. Build it with
/// [`Classifier::compile`]; it is immutable and cheap to share between threads.
#[derive(Debug, Clone)]
pub struct Classifier {
    rules: Vec<RuleId>,
    in4: Table<u32>,
    in6: Table<u128>,
    out4: Table<u32>,
    out6: Table<u128>,
}

/// One rule's contribution in one direction and family: an address range of the remote end,
/// a protocol (`None`: any) and a port span.
#[derive(Debug, Clone, Copy)]
struct Entry {
    rule: u32,
    protocol: Option<u8>,
    addr: (u128, u128),
    ports: (u16, u16),
}

impl Classifier {
    /// Compiles the rules of `groups` (a union; unknown ids are ignored) from `policy`.
    pub fn compile(policy: &Policy, groups: &[GroupId]) -> Self {
        let mut rules = Vec::new();
        let mut entries: [Vec<Entry>; 4] = Default::default();
        for rule in policy.rules_of(groups) {
            let index = rules.len() as u32;
            rules.push(rule.id);
            let slot = table_slot(rule.direction, rule.ethertype);
            let protocol = rule.protocol.number();
            let ports = if protocol.is_some() {
                port_span(rule.l4)
            } else {
                (0, u16::MAX)
            };
            let mut push = |addr| {
                entries[slot].push(Entry {
                    rule: index,
                    protocol,
                    addr,
                    ports,
                })
            };
            match rule.remote {
                Remote::Cidr(cidr) => push(cidr.range()),
                Remote::Group(g) => {
                    for a in policy.member_addresses(g, rule.ethertype) {
                        let bits = addr_bits(a);
                        push((bits, bits));
                    }
                }
            }
        }
        let [in4, in6, out4, out6] = entries;
        Self {
            rules,
            in4: Table::build(&in4),
            in6: Table::build(&in6),
            out4: Table::build(&out4),
            out6: Table::build(&out6),
        }
    }

    /// Allow (with the first matching rule) or deny.
    #[inline]
    pub fn decide(&self, packet: &Packet) -> Decision {
        let index = match (packet.direction, packet.remote) {
            (Direction::Ingress, IpAddr::V4(a)) => self.in4.lookup(u32::from(a), packet),
            (Direction::Ingress, IpAddr::V6(a)) => self.in6.lookup(u128::from(a), packet),
            (Direction::Egress, IpAddr::V4(a)) => self.out4.lookup(u32::from(a), packet),
            (Direction::Egress, IpAddr::V6(a)) => self.out6.lookup(u128::from(a), packet),
        };
        match self.rules.get(index as usize) {
            Some(id) => Decision::Allow(*id),
            None => Decision::Deny,
        }
    }

    /// How many rules were compiled.
    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }

    /// The compiled rules' ids, in evaluation order.
    pub fn rules(&self) -> &[RuleId] {
        &self.rules
    }

    /// Sizes of the compiled structures, for benchmarks and logs.
    pub fn stats(&self) -> String {
        let t = |name: &str, s: (usize, usize, usize)| {
            format!(
                "{name}: {} buckets, {} address intervals, {} port entries",
                s.0, s.1, s.2
            )
        };
        [
            t("ingress/IPv4", self.in4.stats()),
            t("ingress/IPv6", self.in6.stats()),
            t("egress/IPv4", self.out4.stats()),
            t("egress/IPv6", self.out6.stats()),
        ]
        .join("; ")
    }
}

fn table_slot(direction: Direction, family: Ethertype) -> usize {
    match (direction, family) {
        (Direction::Ingress, Ethertype::Ipv4) => 0,
        (Direction::Ingress, Ethertype::Ipv6) => 1,
        (Direction::Egress, Ethertype::Ipv4) => 2,
        (Direction::Egress, Ethertype::Ipv6) => 3,
    }
}

/// One direction and family. Rules are split into two layers by the size of their remote
/// prefix: a broad rule (say `0.0.0.0/0` on port 80) would otherwise be copied into the port
/// map of every address class that a narrow rule creates, multiplying memory and compile time
/// by the number of narrow rules. A decision takes the first match of each layer and keeps the
/// earlier rule.
#[derive(Debug, Clone)]
struct Table<K> {
    layers: Vec<Layer<K>>,
}

impl<K: Key> Table<K> {
    fn build(entries: &[Entry]) -> Self {
        // Broad: covers at least 2^(bits/2) addresses (IPv4 /16 or shorter, IPv6 /64).
        let half = (1u128 << (K::BITS / 2)) - 1;
        let (broad, narrow): (Vec<Entry>, Vec<Entry>) =
            entries.iter().partition(|e| e.addr.1 - e.addr.0 >= half);
        // One layer is faster to search; split only when copying the broad rules into the
        // narrow rules' classes would cost more than a second lookup.
        if broad.len() * narrow.len() <= SPLIT_ABOVE {
            return Self {
                layers: vec![Layer::build(entries)],
            };
        }
        let layers = [broad, narrow]
            .iter()
            .filter(|l| !l.is_empty())
            .map(|l| Layer::build(l))
            .collect::<Vec<_>>();
        let layers = if layers.is_empty() {
            vec![Layer::build(&[])]
        } else {
            layers
        };
        Self { layers }
    }

    #[inline]
    fn lookup(&self, key: K, packet: &Packet) -> u32 {
        match self.layers.as_slice() {
            [one] => one.lookup(key, packet),
            layers => layers
                .iter()
                .map(|l| l.lookup(key, packet))
                .min()
                .unwrap_or(NONE),
        }
    }

    fn stats(&self) -> (usize, usize, usize) {
        self.layers
            .iter()
            .map(Layer::stats)
            .fold((0, 0, 0), |a, b| (a.0 + b.0, a.1 + b.1, a.2 + b.2))
    }
}

#[derive(Debug, Clone)]
struct Layer<K> {
    /// Protocol number → bucket.
    proto: Box<[u16; 256]>,
    buckets: Vec<IntervalMap<K>>,
    /// Address class → (offset, length) in `port_starts` / `port_rules`.
    classes: Vec<(u32, u32)>,
    port_starts: Vec<u16>,
    port_rules: Vec<u32>,
}

impl<K: Key> Layer<K> {
    #[inline]
    fn lookup(&self, key: K, packet: &Packet) -> u32 {
        let bucket = &self.buckets[usize::from(self.proto[usize::from(packet.protocol)])];
        let (off, len) = self.classes[bucket.get(key) as usize];
        let (off, len) = (off as usize, len as usize);
        let starts = &self.port_starts[off..off + len];
        let i = if len <= 8 {
            starts.iter().rposition(|s| *s <= packet.port).unwrap_or(0)
        } else {
            starts
                .partition_point(|s| *s <= packet.port)
                .saturating_sub(1)
        };
        self.port_rules[off + i]
    }

    fn stats(&self) -> (usize, usize, usize) {
        (
            self.buckets.len(),
            self.buckets.iter().map(IntervalMap::len).sum(),
            self.port_starts.len(),
        )
    }

    fn build(entries: &[Entry]) -> Self {
        let mut table = Layer {
            proto: Box::new([0; 256]),
            buckets: Vec::new(),
            classes: Vec::new(),
            port_starts: Vec::new(),
            port_rules: Vec::new(),
        };
        let mut port_maps: HashMap<Vec<(u16, u32)>, u32> = HashMap::new();
        let mut by_set: HashMap<Vec<(u32, u16, u16)>, u32> = HashMap::new();

        // Bucket 0 holds the any-protocol rules alone: it serves every protocol no rule names.
        let mut protocols: Vec<u8> = entries.iter().filter_map(|e| e.protocol).collect();
        protocols.sort_unstable();
        protocols.dedup();
        let any: Vec<&Entry> = entries.iter().filter(|e| e.protocol.is_none()).collect();
        let map = table.build_bucket(&any, &mut by_set, &mut port_maps);
        table.buckets.push(map);
        for p in protocols {
            let bucket: Vec<&Entry> = entries
                .iter()
                .filter(|e| e.protocol.is_none() || e.protocol == Some(p))
                .collect();
            let map = table.build_bucket(&bucket, &mut by_set, &mut port_maps);
            table.proto[usize::from(p)] = table.buckets.len() as u16;
            table.buckets.push(map);
        }
        table
    }

    /// The address map of one bucket: a sweep over the elementary intervals of the entries'
    /// address ranges, each mapped to the class of the entries that cover it.
    fn build_bucket(
        &mut self,
        entries: &[&Entry],
        by_set: &mut HashMap<Vec<(u32, u16, u16)>, u32>,
        port_maps: &mut HashMap<Vec<(u16, u32)>, u32>,
    ) -> IntervalMap<K> {
        // Events: entry i starts covering at addr.0 and stops after addr.1.
        let mut events: BTreeMap<u128, (Vec<usize>, Vec<usize>)> = BTreeMap::new();
        events.entry(0).or_default();
        for (i, e) in entries.iter().enumerate() {
            events.entry(e.addr.0).or_default().0.push(i);
            if let Some(end) = e.addr.1.checked_add(1) {
                events.entry(end).or_default().1.push(i);
            }
        }
        let mut active: BTreeMap<(u32, u16, u16), usize> = BTreeMap::new();
        let mut starts = Vec::with_capacity(events.len());
        let mut values = Vec::with_capacity(events.len());
        for (at, (adds, removes)) in events {
            for i in removes {
                let e = entries[i];
                let key = (e.rule, e.ports.0, e.ports.1);
                if let Some(n) = active.get_mut(&key) {
                    *n -= 1;
                    if *n == 0 {
                        active.remove(&key);
                    }
                }
            }
            for i in adds {
                let e = entries[i];
                *active.entry((e.rule, e.ports.0, e.ports.1)).or_insert(0) += 1;
            }
            let set: Vec<(u32, u16, u16)> = active.keys().copied().collect();
            let class = match by_set.get(&set) {
                Some(c) => *c,
                None => {
                    let c = self.class_for(&set, port_maps);
                    by_set.insert(set, c);
                    c
                }
            };
            // Keys beyond the family's width never occur (IPv4 tables hold 32-bit keys).
            if at >> (K::BITS - 1) >> 1 == 0 {
                starts.push(K::from_u128(at));
                values.push(class);
            }
        }
        IntervalMap::new(starts, values)
    }

    /// The class of a set of (rule, port span): its first-match port map, shared with every
    /// other set that yields the same map.
    fn class_for(
        &mut self,
        set: &[(u32, u16, u16)],
        port_maps: &mut HashMap<Vec<(u16, u32)>, u32>,
    ) -> u32 {
        let map = first_match_ports(set);
        if let Some(c) = port_maps.get(&map) {
            return *c;
        }
        let class = self.classes.len() as u32;
        self.classes
            .push((self.port_starts.len() as u32, map.len() as u32));
        for (start, rule) in &map {
            self.port_starts.push(*start);
            self.port_rules.push(*rule);
        }
        port_maps.insert(map, class);
        class
    }
}

/// For every port, the lowest rule index whose span covers it, as a list of
/// `(first port, rule or NONE)` starting at port 0, adjacent equal values merged.
fn first_match_ports(set: &[(u32, u16, u16)]) -> Vec<(u16, u32)> {
    let mut events: BTreeMap<u32, (Vec<u32>, Vec<u32>)> = BTreeMap::new();
    events.entry(0).or_default();
    for (rule, lo, hi) in set {
        events.entry(u32::from(*lo)).or_default().0.push(*rule);
        events.entry(u32::from(*hi) + 1).or_default().1.push(*rule);
    }
    let mut active: BTreeMap<u32, usize> = BTreeMap::new();
    let mut map: Vec<(u16, u32)> = Vec::new();
    for (at, (adds, removes)) in events {
        if at > u32::from(u16::MAX) {
            break;
        }
        for r in removes {
            if let Some(n) = active.get_mut(&r) {
                *n -= 1;
                if *n == 0 {
                    active.remove(&r);
                }
            }
        }
        for r in adds {
            *active.entry(r).or_insert(0) += 1;
        }
        let rule = active.keys().next().copied().unwrap_or(NONE);
        if map.last().map(|(_, r)| *r) != Some(rule) {
            map.push((at as u16, rule));
        }
    }
    map
}
