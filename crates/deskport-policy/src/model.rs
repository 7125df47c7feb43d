//! Security groups and their rules (SPEC §1; field meanings after OpenStack Neutron).

use std::fmt;
use std::net::IpAddr;

use uuid::Uuid;

use crate::Cidr;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A new random id.
            pub fn random() -> Self {
                Self(Uuid::new_v4())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

id_type!(
    /// A security group's id.
    GroupId
);
id_type!(
    /// A rule's id.
    RuleId
);

/// Which traffic a rule admits: to the instance (`Ingress`) or from it (`Egress`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    pub const ALL: [Direction; 2] = [Direction::Ingress, Direction::Egress];

    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "ingress" => Some(Direction::Ingress),
            "egress" => Some(Direction::Egress),
            _ => None,
        }
    }
}

/// The IP version a rule applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Ethertype {
    Ipv4,
    Ipv6,
}

impl Ethertype {
    pub const ALL: [Ethertype; 2] = [Ethertype::Ipv4, Ethertype::Ipv6];

    /// `IPv4` / `IPv6`, as Neutron writes them.
    pub fn as_str(self) -> &'static str {
        match self {
            Ethertype::Ipv4 => "IPv4",
            Ethertype::Ipv6 => "IPv6",
        }
    }

    /// Accepts `IPv4`/`IPv6` in any letter case.
    pub fn parse(text: &str) -> Option<Self> {
        match text.to_ascii_lowercase().as_str() {
            "ipv4" => Some(Ethertype::Ipv4),
            "ipv6" => Some(Ethertype::Ipv6),
            _ => None,
        }
    }

    pub fn of(addr: IpAddr) -> Self {
        match addr {
            IpAddr::V4(_) => Ethertype::Ipv4,
            IpAddr::V6(_) => Ethertype::Ipv6,
        }
    }
}

/// An IP protocol. Numbers with a name are always held by name (`6` is `Tcp`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    /// Every protocol.
    Any,
    Tcp,
    Udp,
    Icmp,
    Icmpv6,
    /// Any other protocol number (never 1, 6, 17 or 58).
    Number(u8),
}

/// IANA protocol numbers used here.
pub mod proto {
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const DCCP: u8 = 33;
    pub const ICMPV6: u8 = 58;
    pub const SCTP: u8 = 132;
    pub const UDPLITE: u8 = 136;
}

impl Protocol {
    /// The protocol with IANA number `n`.
    pub fn from_number(n: u8) -> Self {
        match n {
            proto::TCP => Protocol::Tcp,
            proto::UDP => Protocol::Udp,
            proto::ICMP => Protocol::Icmp,
            proto::ICMPV6 => Protocol::Icmpv6,
            n => Protocol::Number(n),
        }
    }

    /// The IANA number, `None` for [`Protocol::Any`].
    pub fn number(self) -> Option<u8> {
        match self {
            Protocol::Any => None,
            Protocol::Tcp => Some(proto::TCP),
            Protocol::Udp => Some(proto::UDP),
            Protocol::Icmp => Some(proto::ICMP),
            Protocol::Icmpv6 => Some(proto::ICMPV6),
            Protocol::Number(n) => Some(n),
        }
    }

    /// Whether the protocol has ports (TCP, UDP, DCCP, SCTP, UDP-Lite).
    pub fn has_ports(self) -> bool {
        self.number().is_some_and(number_has_ports)
    }

    /// Whether rules of this protocol match ICMP type/code.
    pub fn is_icmp(self) -> bool {
        matches!(self, Protocol::Icmp | Protocol::Icmpv6)
    }

    /// The name in the API: `tcp`, `udp`, `icmp`, `icmpv6`, a number, or `any`.
    pub fn name(self) -> String {
        match self {
            Protocol::Any => "any".to_owned(),
            Protocol::Tcp => "tcp".to_owned(),
            Protocol::Udp => "udp".to_owned(),
            Protocol::Icmp => "icmp".to_owned(),
            Protocol::Icmpv6 => "icmpv6".to_owned(),
            Protocol::Number(n) => n.to_string(),
        }
    }
}

/// Whether packets of protocol number `n` carry ports in the first four bytes of their header.
pub fn number_has_ports(n: u8) -> bool {
    matches!(
        n,
        proto::TCP | proto::UDP | proto::DCCP | proto::SCTP | proto::UDPLITE
    )
}

/// A port range `min..=max`, `1 <= min <= max <= 65535`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortRange {
    min: u16,
    max: u16,
}

impl PortRange {
    /// `None` unless `1 <= min <= max`.
    pub fn new(min: u16, max: u16) -> Option<Self> {
        (min >= 1 && min <= max).then_some(Self { min, max })
    }

    pub fn single(port: u16) -> Option<Self> {
        Self::new(port, port)
    }

    pub fn min(self) -> u16 {
        self.min
    }

    pub fn max(self) -> u16 {
        self.max
    }

    pub fn contains(self, port: u16) -> bool {
        self.min <= port && port <= self.max
    }
}

/// What a rule matches above the IP layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum L4 {
    /// Every packet of the protocol.
    All,
    /// Destination ports (protocols with ports).
    Ports(PortRange),
    /// ICMP type, and optionally code (Neutron's `port_range_min` / `port_range_max`).
    Icmp { icmp_type: u8, code: Option<u8> },
}

/// Where the other end of the traffic may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Remote {
    /// Addresses in a prefix (`0.0.0.0/0` for everyone).
    Cidr(Cidr),
    /// The addresses of the instances that are members of a security group.
    Group(GroupId),
}

/// A rule, immutable once created: a change is a delete and an add.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub id: RuleId,
    pub group: GroupId,
    pub direction: Direction,
    pub ethertype: Ethertype,
    pub protocol: Protocol,
    pub l4: L4,
    pub remote: Remote,
    pub description: String,
}

impl Rule {
    /// The part of a rule that decides what it matches (everything but id and description):
    /// two rules of a group with the same key are duplicates.
    pub fn key(&self) -> RuleKey {
        RuleKey {
            direction: self.direction,
            ethertype: self.ethertype,
            protocol: self.protocol,
            l4: self.l4,
            remote: self.remote,
        }
    }
}

/// See [`Rule::key`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RuleKey {
    pub direction: Direction,
    pub ethertype: Ethertype,
    pub protocol: Protocol,
    pub l4: L4,
    pub remote: Remote,
}

/// A security group: a named list of allow rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecurityGroup {
    pub id: GroupId,
    pub name: String,
    pub description: String,
    pub rules: Vec<Rule>,
}

/// An instance as the policy sees it: its addresses (the ones traffic to it is addressed to)
/// and the groups attached to it; for the userspace gateway also where it really listens and
/// which of its services are published.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    /// Public addresses: what clients connect to, and what the firewall protects.
    pub addresses: Vec<IpAddr>,
    pub groups: Vec<GroupId>,
    /// The address the gateway forwards allowed connections to (`None`: the first public
    /// address, i.e. the gateway and the instance are the same host).
    pub internal: Option<IpAddr>,
    /// Services the gateway publishes on every public address.
    pub services: Vec<Service>,
}

/// A published service: the gateway listens on `public_port` of the instance's public
/// addresses and forwards to `internal_port` of its internal address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Service {
    /// [`proto::TCP`] or [`proto::UDP`].
    pub protocol: u8,
    pub public_port: u16,
    pub internal_port: u16,
}

/// The whole desired state an enforcement point needs: every group (for remote-group
/// references too), every instance it protects (`members`), and other instances whose
/// addresses only matter as members of remote groups (`peers`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    pub groups: Vec<SecurityGroup>,
    pub members: Vec<Member>,
    pub peers: Vec<Member>,
}

impl Policy {
    pub fn group(&self, id: GroupId) -> Option<&SecurityGroup> {
        self.groups.iter().find(|g| g.id == id)
    }

    /// The addresses of `family` of the instances that are members of `group`, sorted and
    /// without duplicates.
    pub fn member_addresses(&self, group: GroupId, family: Ethertype) -> Vec<IpAddr> {
        let mut addrs: Vec<IpAddr> = self
            .members
            .iter()
            .chain(&self.peers)
            .filter(|m| m.groups.contains(&group))
            .flat_map(|m| m.addresses.iter().copied())
            .filter(|a| Ethertype::of(*a) == family)
            .collect();
        addrs.sort();
        addrs.dedup();
        addrs
    }

    /// The rules of the groups in `groups` (a union), in group order then rule order.
    pub fn rules_of<'a>(&'a self, groups: &'a [GroupId]) -> impl Iterator<Item = &'a Rule> + 'a {
        let mut seen = Vec::with_capacity(groups.len());
        groups
            .iter()
            .filter(move |g| {
                let first = !seen.contains(*g);
                seen.push(**g);
                first
            })
            .filter_map(|g| self.group(*g))
            .flat_map(|g| g.rules.iter())
    }
}

/// One packet (or the first packet of a connection) to decide about, seen from the instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Packet {
    pub direction: Direction,
    /// The other end: the source for ingress, the destination for egress.
    pub remote: IpAddr,
    /// IANA protocol number.
    pub protocol: u8,
    /// The destination port for protocols with ports; `type << 8 | code` for ICMP; else 0.
    pub port: u16,
}

impl Packet {
    /// A TCP/UDP/… packet to destination port `port`.
    pub fn ports(direction: Direction, remote: IpAddr, protocol: u8, port: u16) -> Self {
        Self {
            direction,
            remote,
            protocol,
            port,
        }
    }

    /// An ICMP or ICMPv6 packet of `icmp_type` / `code` (the protocol follows `remote`'s family).
    pub fn icmp(direction: Direction, remote: IpAddr, icmp_type: u8, code: u8) -> Self {
        let protocol = match remote {
            IpAddr::V4(_) => proto::ICMP,
            IpAddr::V6(_) => proto::ICMPV6,
        };
        Self {
            direction,
            remote,
            protocol,
            port: u16::from(icmp_type) << 8 | u16::from(code),
        }
    }
}
