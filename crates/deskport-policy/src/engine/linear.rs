//! The reference evaluator: every rule of every group, in order. Obviously correct, and as slow
//! as the rule count — the baseline the [`Classifier`](super::Classifier) must beat and agree with.

use super::{port_span, Decision};
use crate::{Ethertype, GroupId, Packet, Policy, Remote, Rule, RuleId};

/// Whether `rule` admits `packet` (`policy` resolves remote groups).
pub fn matches(policy: &Policy, rule: &Rule, packet: &Packet) -> bool {
    if rule.direction != packet.direction || rule.ethertype != Ethertype::of(packet.remote) {
        return false;
    }
    if let Some(n) = rule.protocol.number() {
        if n != packet.protocol {
            return false;
        }
        let (lo, hi) = port_span(rule.l4);
        if packet.port < lo || packet.port > hi {
            return false;
        }
    }
    match rule.remote {
        Remote::Cidr(cidr) => cidr.contains(packet.remote),
        Remote::Group(g) => policy
            .members
            .iter()
            .chain(&policy.peers)
            .any(|m| m.groups.contains(&g) && m.addresses.contains(&packet.remote)),
    }
}

/// The first rule of `groups` that admits `packet`.
pub fn decide(policy: &Policy, groups: &[GroupId], packet: &Packet) -> Decision {
    policy
        .rules_of(groups)
        .find(|r| matches(policy, r, packet))
        .map_or(Decision::Deny, |r| Decision::Allow(r.id))
}

/// Every rule of `groups` that admits `packet`, in order.
pub fn matching(policy: &Policy, groups: &[GroupId], packet: &Packet) -> Vec<RuleId> {
    policy
        .rules_of(groups)
        .filter(|r| matches(policy, r, packet))
        .map(|r| r.id)
        .collect()
}
