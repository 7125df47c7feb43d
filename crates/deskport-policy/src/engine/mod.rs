//! The decision engine: is this packet (or new connection) allowed for an instance with these
//! security groups, and by which rule?
//!
//! [`Classifier`] compiles the rules of a set of groups into lookup structures whose cost does
//! not depend on how many rules there are; [`linear`] is the obvious rule-by-rule evaluation,
//! kept as the reference the classifier is tested against and the benchmark's baseline.

mod classifier;
mod index;
pub mod linear;

pub use classifier::Classifier;

use crate::RuleId;

/// The outcome of a decision. Rules only allow; with no matching rule the packet is denied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Decision {
    /// Allowed by this rule: the first matching one, in group order then rule order.
    Allow(RuleId),
    Deny,
}

impl Decision {
    pub fn is_allow(self) -> bool {
        matches!(self, Decision::Allow(_))
    }
}

/// The port range a rule's layer-4 part covers, in the engine's port space: destination ports
/// for protocols with ports, `type << 8 | code` for ICMP, everything otherwise.
pub(crate) fn port_span(l4: crate::L4) -> (u16, u16) {
    match l4 {
        crate::L4::All => (0, u16::MAX),
        crate::L4::Ports(r) => (r.min(), r.max()),
        crate::L4::Icmp {
            icmp_type,
            code: None,
        } => (u16::from(icmp_type) << 8, u16::from(icmp_type) << 8 | 0xff),
        crate::L4::Icmp {
            icmp_type,
            code: Some(code),
        } => {
            let v = u16::from(icmp_type) << 8 | u16::from(code);
            (v, v)
        }
    }
}
