//! The audit log's vocabulary: every action it records, the kind of object each one targets,
//! and whether it moves the policy revision (the changes agents enforce). The summaries are
//! written where each change is made (`store.rs`); the console and the API show them as they
//! are, so their wording is part of the interface.

use deskport_policy::{Direction, Remote, Rule, L4};

/// Every change the audit log records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    ProjectCreate,
    ProjectDelete,
    UserCreate,
    UserDelete,
    UserPassword,
    MembershipSet,
    MembershipDelete,
    TokenCreate,
    TokenDelete,
    GroupCreate,
    GroupDelete,
    RuleCreate,
    RuleDelete,
    InstanceCreate,
    InstanceDelete,
    InstanceRemoteDesktop,
    InstanceAttachGroup,
    InstanceDetachGroup,
    /// An RD Gateway token minted for one user and the instance.
    InstanceRdpToken,
    InstanceRdpTokenRevoke,
}

impl Action {
    /// The action's name in the log (`security_group_rule.create`).
    pub(crate) fn name(self) -> &'static str {
        match self {
            Action::ProjectCreate => "project.create",
            Action::ProjectDelete => "project.delete",
            Action::UserCreate => "user.create",
            Action::UserDelete => "user.delete",
            Action::UserPassword => "user.password",
            Action::MembershipSet => "membership.set",
            Action::MembershipDelete => "membership.delete",
            Action::TokenCreate => "token.create",
            Action::TokenDelete => "token.delete",
            Action::GroupCreate => "security_group.create",
            Action::GroupDelete => "security_group.delete",
            Action::RuleCreate => "security_group_rule.create",
            Action::RuleDelete => "security_group_rule.delete",
            Action::InstanceCreate => "instance.create",
            Action::InstanceDelete => "instance.delete",
            Action::InstanceRemoteDesktop => "instance.remote_desktop",
            Action::InstanceAttachGroup => "instance.attach_group",
            Action::InstanceDetachGroup => "instance.detach_group",
            Action::InstanceRdpToken => "instance.rdp_token",
            Action::InstanceRdpTokenRevoke => "instance.rdp_token_revoke",
        }
    }

    /// The kind of object the event's `target_id` names.
    pub(crate) fn target_type(self) -> &'static str {
        match self {
            Action::ProjectCreate | Action::ProjectDelete => "project",
            Action::UserCreate
            | Action::UserDelete
            | Action::UserPassword
            | Action::MembershipSet
            | Action::MembershipDelete => "user",
            Action::TokenCreate | Action::TokenDelete => "token",
            Action::GroupCreate | Action::GroupDelete => "security_group",
            Action::RuleCreate | Action::RuleDelete => "security_group_rule",
            Action::InstanceCreate
            | Action::InstanceDelete
            | Action::InstanceRemoteDesktop
            | Action::InstanceAttachGroup
            | Action::InstanceDetachGroup
            | Action::InstanceRdpToken
            | Action::InstanceRdpTokenRevoke => "instance",
        }
    }

    /// Whether agents enforce what the change touches: projects, groups, rules and instances
    /// do; users, memberships and tokens do not (agents learn nothing about them).
    pub(crate) fn moves_revision(self) -> bool {
        match self {
            Action::ProjectCreate
            | Action::ProjectDelete
            | Action::GroupCreate
            | Action::GroupDelete
            | Action::RuleCreate
            | Action::RuleDelete
            | Action::InstanceCreate
            | Action::InstanceDelete
            | Action::InstanceRemoteDesktop
            | Action::InstanceAttachGroup
            | Action::InstanceDetachGroup => true,
            Action::UserCreate
            | Action::UserDelete
            | Action::UserPassword
            | Action::MembershipSet
            | Action::MembershipDelete
            | Action::TokenCreate
            | Action::TokenDelete
            | Action::InstanceRdpToken
            | Action::InstanceRdpTokenRevoke => false,
        }
    }
}

impl Action {
    /// Whether the change alters who a bearer token belongs to, or what that owner may see:
    /// tokens, users and their memberships, instances (their agent tokens). A revoked RD
    /// Gateway token does too: live tunnels opened with it are rechecked
    /// ([`crate::Store::access_changes`]).
    pub(crate) fn touches_principals(self) -> bool {
        match self {
            Action::ProjectCreate
            | Action::ProjectDelete
            | Action::UserDelete
            | Action::MembershipSet
            | Action::MembershipDelete
            | Action::TokenCreate
            | Action::TokenDelete
            | Action::InstanceCreate
            | Action::InstanceDelete
            | Action::InstanceRdpTokenRevoke => true,
            Action::UserCreate
            | Action::UserPassword
            | Action::GroupCreate
            | Action::GroupDelete
            | Action::RuleCreate
            | Action::RuleDelete
            | Action::InstanceRemoteDesktop
            | Action::InstanceAttachGroup
            | Action::InstanceDetachGroup
            | Action::InstanceRdpToken => false,
        }
    }
}

/// A readable one-line summary of a rule, for the audit log:
/// `ingress IPv4 tcp port 3389 from 127.0.0.1/32`.
pub(crate) fn rule_summary(rule: &Rule) -> String {
    let what = match rule.l4 {
        L4::All => String::new(),
        L4::Ports(p) if p.min() == p.max() => format!(" port {}", p.min()),
        L4::Ports(p) => format!(" ports {}-{}", p.min(), p.max()),
        L4::Icmp { icmp_type, code } => match code {
            Some(c) => format!(" type {icmp_type} code {c}"),
            None => format!(" type {icmp_type}"),
        },
    };
    let remote = match rule.remote {
        Remote::Cidr(c) => c.to_string(),
        Remote::Group(g) => format!("group {g}"),
    };
    let (dir, preposition) = match rule.direction {
        Direction::Ingress => ("ingress", "from"),
        Direction::Egress => ("egress", "to"),
    };
    format!(
        "{dir} {} {}{what} {preposition} {remote}",
        rule.ethertype.as_str(),
        rule.protocol.name()
    )
}
