//! Store and core types → the API's views. The only place that knows both sides.

use deskport_api::rfc3339;
use deskport_api::v1::*;
use deskport_policy::{template::TemplateKind, Note, Protocol, Remote, L4};
use deskport_store::{
    ApiToken, AuditEvent, GatewayToken, GroupRecord, Instance, Project, RuleRecord, User,
};

pub fn project(p: &Project) -> ProjectView {
    ProjectView {
        id: p.id,
        name: p.name.clone(),
        description: p.description.clone(),
        created_at: rfc3339(p.created_at),
    }
}

pub fn user(u: &User) -> UserView {
    UserView {
        id: u.id,
        name: u.name.clone(),
        is_admin: u.is_admin,
        memberships: u
            .memberships
            .iter()
            .map(|m| MembershipView {
                project_id: m.project_id,
                project_name: m.project_name.clone(),
                role: m.role.as_str().to_owned(),
            })
            .collect(),
        created_at: rfc3339(u.created_at),
    }
}

pub fn token(t: &ApiToken) -> TokenView {
    TokenView {
        id: t.id,
        name: t.name.clone(),
        created_at: rfc3339(t.created_at),
    }
}

pub fn rule(r: &RuleRecord) -> RuleView {
    let rule = &r.rule;
    let (min, max) = match rule.l4 {
        L4::All => (None, None),
        L4::Ports(p) => (Some(i64::from(p.min())), Some(i64::from(p.max()))),
        L4::Icmp { icmp_type, code } => (Some(i64::from(icmp_type)), code.map(i64::from)),
    };
    let (prefix, group) = match rule.remote {
        Remote::Cidr(c) => (Some(c.to_string()), None),
        Remote::Group(g) => (None, Some(g.0)),
    };
    RuleView {
        id: rule.id.0,
        security_group_id: rule.group.0,
        project_id: r.project_id,
        direction: rule.direction.as_str().to_owned(),
        ethertype: rule.ethertype.as_str().to_owned(),
        protocol: rule.protocol.number().map(|_| rule.protocol.name()),
        port_range_min: min,
        port_range_max: max,
        remote_ip_prefix: prefix,
        remote_group_id: group,
        description: rule.description.clone(),
        created_at: rfc3339(r.created_at),
    }
}

pub fn group(g: &GroupRecord) -> GroupView {
    GroupView {
        id: g.group.id.0,
        project_id: g.project_id,
        name: g.group.name.clone(),
        description: g.group.description.clone(),
        security_group_rules: g
            .group
            .rules
            .iter()
            .map(|r| {
                rule(&RuleRecord {
                    project_id: g.project_id,
                    rule: r.clone(),
                    created_at: g.created_at,
                })
            })
            .collect(),
        created_at: rfc3339(g.created_at),
    }
}

pub fn notice(n: &Note) -> Notice {
    Notice {
        code: n.code.to_owned(),
        message: n.message.clone(),
        field: n.field.map(str::to_owned),
    }
}

pub fn template(t: &deskport_policy::template::Template) -> TemplateView {
    let (protocol, min, max, custom) = match t.kind {
        TemplateKind::Fixed { protocol, min, max } => (
            Some(protocol.name()),
            Some(i64::from(min)),
            Some(i64::from(max)),
            false,
        ),
        TemplateKind::CustomPorts(p) => (Some(p.name()), None, None, true),
        TemplateKind::CustomIcmp => (Some(Protocol::Icmp.name()), None, None, true),
        TemplateKind::AllIcmp => (Some(Protocol::Icmp.name()), None, None, false),
        TemplateKind::OtherProtocol => (None, None, None, true),
    };
    TemplateView {
        id: t.id.to_owned(),
        label: t.label.to_owned(),
        protocol,
        port_range_min: min,
        port_range_max: max,
        custom,
    }
}

/// Where a client connects: `HOST` for the standard port, else `HOST:PORT` (IPv6 in brackets).
pub fn endpoint(i: &Instance) -> String {
    let host = match i.public_address {
        std::net::IpAddr::V6(a) => format!("[{a}]"),
        a => a.to_string(),
    };
    if i.public_rdp_port == 3389 {
        host
    } else {
        format!("{host}:{}", i.public_rdp_port)
    }
}

pub fn instance(i: &Instance, rdp_user: Option<&str>) -> InstanceView {
    let target = endpoint(i);
    let user = rdp_user.unwrap_or("USER");
    let sec = if i.rdp_nla_only { "nla" } else { "tls" };
    let rdesktop = format!("rdesktop -u {user} {target}");
    InstanceView {
        id: i.id,
        project_id: i.project_id,
        name: i.name.clone(),
        public_address: i.public_address.to_string(),
        public_rdp_port: i.public_rdp_port,
        internal_address: i.internal_address.map(|a| a.to_string()),
        rdp_port: i.rdp_port,
        security_groups: i
            .groups
            .iter()
            .map(|(id, name)| GroupRef {
                id: id.0,
                name: name.clone(),
            })
            .collect(),
        remote_desktop: RemoteDesktopView {
            enabled: i.rdp_enabled,
            nla_only: i.rdp_nla_only,
            gateway: i.rdp_gateway,
        },
        cert_fingerprint: i.cert_fingerprint.clone(),
        agent_seen_at: i.agent_seen_at.map(rfc3339),
        agent_revision: i.agent_revision,
        connect: ConnectCommands {
            rdesktop,
            xfreerdp: format!("xfreerdp /v:{target} /u:{user} /sec:{sec}"),
            deskport: format!("deskport connect {target} -u {user} --sec {sec}"),
        },
        created_at: rfc3339(i.created_at),
    }
}

pub fn rdp_token(t: &GatewayToken) -> RdpTokenView {
    RdpTokenView {
        id: t.id,
        instance_id: t.instance_id,
        user_id: t.user_id,
        user_name: t.user_name.clone(),
        created_at: rfc3339(t.created_at),
        expires_at: rfc3339(t.expires_at),
        revoked_at: t.revoked_at.map(rfc3339),
    }
}

pub fn audit(e: &AuditEvent) -> AuditEventView {
    AuditEventView {
        id: e.id,
        project_id: e.project_id,
        actor: e.actor.clone(),
        action: e.action.clone(),
        target_type: e.target_type.clone(),
        target_id: e.target_id.clone(),
        summary: e.summary.clone(),
        source: e.source.clone(),
        created_at: rfc3339(e.created_at),
    }
}
