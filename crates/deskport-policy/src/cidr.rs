//! IP prefixes (RFC 4632 CIDR notation, and its IPv6 form of RFC 4291 §2.3).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use crate::Ethertype;

/// An IP prefix in canonical form: no host bits set.
///
/// Build one with [`Cidr::parse`], which tells whether the input had host bits (they are
/// cleared, and the caller is expected to say so to the user), or [`Cidr::new`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    addr: IpAddr,
    len: u8,
}

/// Why a text is not a prefix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("{0:?} is not an IP address")]
    Address(String),
    #[error("{0:?} is not a prefix length")]
    Length(String),
    #[error("prefix length {len} is longer than {max} bits")]
    TooLong { len: u8, max: u8 },
}

/// The result of parsing user input: the canonical prefix, and whether it differs from the
/// text (host bits cleared, or a bare address read as a host prefix).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parsed {
    pub cidr: Cidr,
    pub normalized: bool,
}

impl Cidr {
    /// The prefix of length `len` containing `addr` (host bits are cleared).
    pub fn new(addr: IpAddr, len: u8) -> Result<Self, CidrError> {
        let max = max_len(addr);
        if len > max {
            return Err(CidrError::TooLong { len, max });
        }
        Ok(Self {
            addr: mask(addr, len),
            len,
        })
    }

    /// The host prefix (/32 or /128) of `addr`.
    pub fn host(addr: IpAddr) -> Self {
        Self {
            addr,
            len: max_len(addr),
        }
    }

    /// The prefix covering every address of `family` (`0.0.0.0/0` or `::/0`).
    pub fn any(family: Ethertype) -> Self {
        match family {
            Ethertype::Ipv4 => Self {
                addr: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                len: 0,
            },
            Ethertype::Ipv6 => Self {
                addr: IpAddr::V6(Ipv6Addr::UNSPECIFIED),
                len: 0,
            },
        }
    }

    /// Parses `a.b.c.d/n`, `x::y/n`, or a bare address (read as /32 or /128).
    pub fn parse(text: &str) -> Result<Parsed, CidrError> {
        let text = text.trim();
        let (addr_text, len_text) = match text.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (text, None),
        };
        let addr =
            IpAddr::from_str(addr_text).map_err(|_| CidrError::Address(addr_text.to_owned()))?;
        let len = match len_text {
            None => max_len(addr),
            Some(l) if !l.is_empty() && l.len() <= 3 && l.bytes().all(|b| b.is_ascii_digit()) => l
                .parse::<u8>()
                .map_err(|_| CidrError::Length(l.to_owned()))?,
            Some(l) => return Err(CidrError::Length(l.to_owned())),
        };
        let cidr = Self::new(addr, len)?;
        Ok(Parsed {
            cidr,
            normalized: len_text.is_none() || cidr.addr != addr,
        })
    }

    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix_len(&self) -> u8 {
        self.len
    }

    /// Whether this is the all-addresses prefix of its family.
    pub fn is_any(&self) -> bool {
        self.len == 0
    }

    pub fn family(&self) -> Ethertype {
        match self.addr {
            IpAddr::V4(_) => Ethertype::Ipv4,
            IpAddr::V6(_) => Ethertype::Ipv6,
        }
    }

    /// Whether `addr` lies in this prefix (an address of the other family never does).
    pub fn contains(&self, addr: IpAddr) -> bool {
        match (self.addr, addr) {
            (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => {
                mask(addr, self.len) == self.addr
            }
            _ => false,
        }
    }

    /// The first and last address as integers of the family's width (IPv4 in the low 32 bits).
    pub fn range(&self) -> (u128, u128) {
        let bits = u32::from(max_len(self.addr));
        let first = addr_bits(self.addr);
        let host_bits = bits - u32::from(self.len);
        let last = if host_bits == 0 {
            first
        } else if host_bits == 128 {
            u128::MAX
        } else {
            first | ((1u128 << host_bits) - 1)
        };
        (first, last)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// The address as an integer (IPv4 in the low 32 bits).
pub fn addr_bits(addr: IpAddr) -> u128 {
    match addr {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

fn max_len(addr: IpAddr) -> u8 {
    match addr {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

fn mask(addr: IpAddr, len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let m = if len == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(len))
            };
            IpAddr::V4(Ipv4Addr::from(u32::from(a) & m))
        }
        IpAddr::V6(a) => {
            let m = if len == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(len))
            };
            IpAddr::V6(Ipv6Addr::from(u128::from(a) & m))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_normalizes_host_bits_and_bare_addresses() {
        let p = Cidr::parse("10.0.0.1/8").unwrap();
        assert_eq!(p.cidr.to_string(), "10.0.0.0/8");
        assert!(p.normalized);
        let p = Cidr::parse("127.0.0.1/32").unwrap();
        assert_eq!(
            (p.cidr.to_string(), p.normalized),
            ("127.0.0.1/32".into(), false)
        );
        let p = Cidr::parse("127.0.0.1").unwrap();
        assert_eq!(
            (p.cidr.to_string(), p.normalized),
            ("127.0.0.1/32".into(), true)
        );
        let p = Cidr::parse("2001:db8::1/32").unwrap();
        assert_eq!(p.cidr.to_string(), "2001:db8::/32");
        assert_eq!(
            Cidr::parse("::/0").unwrap().cidr,
            Cidr::any(Ethertype::Ipv6)
        );
    }

    #[test]
    fn parse_rejects_what_is_not_a_prefix() {
        for bad in [
            "",
            "10.0.0.0/",
            "10.0.0/8",
            "10.0.0.0/33",
            "::/129",
            "x/1",
            "1.2.3.4/+1",
            "1.2.3.4/ 8",
            "1.2.3.4/0008",
            "1.2.3.4/8/9",
        ] {
            assert!(Cidr::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn contains_and_range() {
        let c = Cidr::parse("198.18.0.0/15").unwrap().cidr;
        assert!(c.contains("198.19.255.255".parse().unwrap()));
        assert!(!c.contains("198.20.0.0".parse().unwrap()));
        assert!(!c.contains("::1".parse().unwrap()));
        assert_eq!(c.range(), (0xc612_0000, 0xc613_ffff));
        assert_eq!(Cidr::any(Ethertype::Ipv6).range(), (0, u128::MAX));
        assert_eq!(
            Cidr::any(Ethertype::Ipv4).range(),
            (0, u128::from(u32::MAX))
        );
    }
}
