//! The policy document: the desired state of an enforcement point (security groups and the
//! instances they protect), as the manager's agent feed sends it and as a hand-written policy
//! file holds it (JSON or TOML, the same fields).
//!
//! Converting a document into a [`Policy`] validates every rule with the same code as the API
//! (`deskport_policy::validate_rule`): a document is accepted whole or refused with the path of
//! the first offending field, never half-applied.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use deskport_policy::{
    proto, validate_rule, GroupId, Member, Policy, Quota, Remote, Rule, RuleContext, RuleId,
    RuleSpec, SecurityGroup, Service, L4,
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Namespace for ids derived from names in hand-written files (UUID v5).
const ID_NAMESPACE: Uuid = Uuid::from_u128(0x6465_736b_706f_7274_0000_0000_0000_0001);

/// The whole desired state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyDocument {
    /// Increases with every change; agents report the revision they enforce.
    #[serde(default)]
    pub revision: u64,
    #[serde(default)]
    pub security_groups: Vec<GroupDoc>,
    /// The instances this document protects.
    #[serde(default)]
    pub instances: Vec<InstanceDoc>,
    /// Other instances, whose addresses matter only as members of remote groups.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<InstanceDoc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupDoc {
    /// Derived from the name when absent (hand-written files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Uuid>,
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub rules: Vec<RuleDoc>,
}

/// A rule, with Neutron's field names. In a file, `template` may replace protocol and ports,
/// and `remote_group_id` may name a group instead of giving its id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleDoc {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ethertype: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<ProtocolValue>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_range_min: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_range_max: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_ip_prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_group_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// A protocol as a name (`"tcp"`) or a number (`6`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ProtocolValue {
    Number(i64),
    Name(String),
}

impl ProtocolValue {
    fn text(&self) -> String {
        match self {
            ProtocolValue::Number(n) => n.to_string(),
            ProtocolValue::Name(s) => s.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceDoc {
    pub name: String,
    /// Public addresses (what clients connect to; what the firewall protects).
    pub addresses: Vec<IpAddr>,
    /// Where the gateway forwards to; by default the first public address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub internal_address: Option<IpAddr>,
    /// Attached groups, by id (or by name in a file).
    #[serde(default)]
    pub security_groups: Vec<String>,
    /// Services the gateway publishes.
    #[serde(default)]
    pub services: Vec<ServiceDoc>,
    /// The instance's Remote Desktop switches (for its RDP server agent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_desktop: Option<RemoteDesktopDoc>,
}

/// The two switches of the article: *Allow remote connections to this computer* and *Allow
/// connections only from computers running Remote Desktop with Network Level Authentication*.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteDesktopDoc {
    pub enabled: bool,
    pub nla_only: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceDoc {
    /// `tcp` (default) or `udp`.
    #[serde(default = "default_service_protocol")]
    pub protocol: String,
    pub public_port: u16,
    /// Defaults to `public_port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub internal_port: Option<u16>,
}

fn default_service_protocol() -> String {
    "tcp".to_owned()
}

/// Why a document was refused: where, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct DocError {
    /// E.g. `security_groups["web"].rules[2].remote_ip_prefix`, or `document` for syntax.
    pub path: String,
    pub message: String,
}

impl DocError {
    fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl PolicyDocument {
    pub fn from_json(text: &str) -> Result<Self, DocError> {
        serde_json::from_str(text).map_err(|e| DocError::new("document", e.to_string()))
    }

    pub fn from_toml(text: &str) -> Result<Self, DocError> {
        toml::from_str(text).map_err(|e| DocError::new("document", e.to_string()))
    }

    pub fn to_json(&self) -> String {
        // Serializing plain data with string keys cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Validates the document and converts it into the core [`Policy`].
    pub fn to_policy(&self) -> Result<Policy, DocError> {
        let mut ids: HashMap<String, GroupId> = HashMap::new();
        let mut seen_ids = HashSet::new();
        for g in &self.security_groups {
            let path = format!("security_groups[{:?}]", g.name);
            if g.name.trim().is_empty() {
                return Err(DocError::new(path, "a security group needs a name"));
            }
            let id =
                GroupId(g.id.unwrap_or_else(|| Uuid::new_v5(&ID_NAMESPACE, g.name.as_bytes())));
            if ids.insert(g.name.clone(), id).is_some() || !seen_ids.insert(id) {
                return Err(DocError::new(
                    path,
                    "two security groups share this name or id",
                ));
            }
        }
        let resolve = |text: &str| -> Option<GroupId> {
            match Uuid::parse_str(text) {
                Ok(u) => seen_ids.contains(&GroupId(u)).then_some(GroupId(u)),
                Err(_) => ids.get(text).copied(),
            }
        };

        let mut groups = Vec::with_capacity(self.security_groups.len());
        for g in &self.security_groups {
            let id = ids[&g.name];
            let mut group = SecurityGroup {
                id,
                name: g.name.clone(),
                description: g.description.clone(),
                rules: Vec::with_capacity(g.rules.len()),
            };
            for (i, r) in g.rules.iter().enumerate() {
                let path = format!("security_groups[{:?}].rules[{i}]", g.name);
                let remote_group_id = match r.remote_group_id.as_deref() {
                    None => None,
                    Some(text) => Some(
                        resolve(text)
                            .ok_or_else(|| {
                                DocError::new(
                                    format!("{path}.remote_group_id"),
                                    format!("there is no security group {text:?}"),
                                )
                            })?
                            .to_string(),
                    ),
                };
                let spec = RuleSpec {
                    template: r.template.clone(),
                    direction: r.direction.clone(),
                    ethertype: r.ethertype.clone(),
                    protocol: r.protocol.as_ref().map(ProtocolValue::text),
                    port_range_min: r.port_range_min,
                    port_range_max: r.port_range_max,
                    remote_ip_prefix: r.remote_ip_prefix.clone(),
                    remote_group_id,
                    description: r.description.clone(),
                };
                let rule_id = RuleId(
                    r.id.unwrap_or_else(|| Uuid::new_v5(&id.0, format!("{:?}", spec).as_bytes())),
                );
                let exists = |g: GroupId| seen_ids.contains(&g);
                let ctx = RuleContext {
                    group: &group,
                    group_exists: &exists,
                    project_rules: 0,
                    quota: Quota {
                        groups: usize::MAX,
                        rules: usize::MAX,
                    },
                };
                let accepted = validate_rule(&spec, &ctx, rule_id).map_err(|rejected| {
                    let first = rejected.first();
                    let field = first.field.map(|f| format!(".{f}")).unwrap_or_default();
                    DocError::new(format!("{path}{field}"), rejected.to_string())
                })?;
                group.rules.push(accepted.rule);
            }
            groups.push(group);
        }

        let mut names = HashSet::new();
        let mut members = Vec::with_capacity(self.instances.len());
        for inst in &self.instances {
            if !names.insert(inst.name.as_str()) {
                return Err(DocError::new(
                    format!("instances[{:?}]", inst.name),
                    "instance names must be unique",
                ));
            }
            members.push(member(inst, "instances", &resolve)?);
        }
        let peers = self
            .peers
            .iter()
            .map(|p| member(p, "peers", &resolve))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Policy {
            groups,
            members,
            peers,
        })
    }

    /// The document of a [`Policy`] (ids always present, rules in canonical form).
    pub fn from_policy(policy: &Policy, revision: u64) -> Self {
        Self {
            revision,
            security_groups: policy
                .groups
                .iter()
                .map(|g| GroupDoc {
                    id: Some(g.id.0),
                    name: g.name.clone(),
                    description: g.description.clone(),
                    rules: g.rules.iter().map(rule_doc).collect(),
                })
                .collect(),
            instances: policy.members.iter().map(instance_doc).collect(),
            peers: policy.peers.iter().map(instance_doc).collect(),
        }
    }
}

/// A policy member as an instance entry (without remote-desktop settings).
pub fn instance_doc(m: &Member) -> InstanceDoc {
    InstanceDoc {
        name: m.name.clone(),
        addresses: m.addresses.clone(),
        internal_address: m.internal,
        security_groups: m.groups.iter().map(|g| g.to_string()).collect(),
        services: m
            .services
            .iter()
            .map(|s| ServiceDoc {
                protocol: if s.protocol == proto::UDP {
                    "udp"
                } else {
                    "tcp"
                }
                .to_owned(),
                public_port: s.public_port,
                internal_port: Some(s.internal_port),
            })
            .collect(),
        remote_desktop: None,
    }
}

/// An instance entry as a policy member (`list` is `instances` or `peers`, for error paths).
fn member(
    inst: &InstanceDoc,
    list: &str,
    resolve: &dyn Fn(&str) -> Option<GroupId>,
) -> Result<Member, DocError> {
    let path = format!("{list}[{:?}]", inst.name);
    if inst.name.trim().is_empty() {
        return Err(DocError::new(path, "an instance needs a name"));
    }
    let mut groups = Vec::new();
    for text in &inst.security_groups {
        let id = resolve(text).ok_or_else(|| {
            DocError::new(
                format!("{path}.security_groups"),
                format!("there is no security group {text:?}"),
            )
        })?;
        groups.push(id);
    }
    let mut services = Vec::new();
    for (i, s) in inst.services.iter().enumerate() {
        let spath = format!("{path}.services[{i}]");
        let protocol = match s.protocol.to_ascii_lowercase().as_str() {
            "tcp" => proto::TCP,
            "udp" => proto::UDP,
            other => {
                return Err(DocError::new(
                    format!("{spath}.protocol"),
                    format!("a published service is tcp or udp, not {other:?}"),
                ))
            }
        };
        let internal_port = s.internal_port.unwrap_or(s.public_port);
        if s.public_port == 0 || internal_port == 0 {
            return Err(DocError::new(spath, "ports are 1-65535"));
        }
        services.push(Service {
            protocol,
            public_port: s.public_port,
            internal_port,
        });
    }
    Ok(Member {
        name: inst.name.clone(),
        addresses: inst.addresses.clone(),
        groups,
        internal: inst.internal_address,
        services,
    })
}

/// The fuzzing oracle (see `fuzz/`): any input either is refused with an error or converts to a
/// policy whose canonical document converts back to the same policy.
#[cfg(feature = "fuzzing")]
pub fn fuzz_oracle(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    for doc in [
        PolicyDocument::from_json(&text),
        PolicyDocument::from_toml(&text),
    ] {
        let Ok(doc) = doc else { continue };
        let Ok(policy) = doc.to_policy() else {
            continue;
        };
        let again = PolicyDocument::from_json(
            &PolicyDocument::from_policy(&policy, doc.revision).to_json(),
        )
        .and_then(|d| d.to_policy());
        assert_eq!(
            again.as_ref(),
            Ok(&policy),
            "the canonical document does not round-trip"
        );
    }
}

/// A rule in canonical Neutron form.
pub fn rule_doc(r: &Rule) -> RuleDoc {
    let (min, max) = match r.l4 {
        L4::All => (None, None),
        L4::Ports(p) => (Some(i64::from(p.min())), Some(i64::from(p.max()))),
        L4::Icmp { icmp_type, code } => (Some(i64::from(icmp_type)), code.map(i64::from)),
    };
    let (prefix, group) = match r.remote {
        Remote::Cidr(c) => (Some(c.to_string()), None),
        Remote::Group(g) => (None, Some(g.to_string())),
    };
    RuleDoc {
        id: Some(r.id.0),
        template: None,
        direction: Some(r.direction.as_str().to_owned()),
        ethertype: Some(r.ethertype.as_str().to_owned()),
        protocol: r
            .protocol
            .number()
            .map(|_| ProtocolValue::Name(r.protocol.name())),
        port_range_min: min,
        port_range_max: max,
        remote_ip_prefix: prefix,
        remote_group_id: group,
        description: Some(r.description.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
revision = 3

[[security_groups]]
name = "default"
rules = [
  { template = "http" },
  { template = "https", remote_ip_prefix = "::/0" },
  { direction = "egress" },
]

[[security_groups]]
name = "rdp-users"
rules = [
  { template = "rdp", remote_ip_prefix = "198.18.0.2/32", description = "client A" },
  { protocol = "icmp", port_range_min = 8, remote_group_id = "default" },
]

[[instances]]
name = "desktop"
addresses = ["198.18.2.2"]
internal_address = "198.18.3.2"
security_groups = ["default", "rdp-users"]
services = [{ public_port = 3389, internal_port = 13389 }, { protocol = "udp", public_port = 3389 }]
"#;

    #[test]
    fn a_hand_written_file_converts_and_round_trips() {
        let doc = PolicyDocument::from_toml(FILE).unwrap();
        let policy = doc.to_policy().unwrap();
        assert_eq!(policy.groups.len(), 2);
        assert_eq!(policy.groups[1].rules.len(), 2);
        let m = &policy.members[0];
        assert_eq!(m.groups, vec![policy.groups[0].id, policy.groups[1].id]);
        assert_eq!(m.services[0].internal_port, 13389);
        assert_eq!(m.services[1].protocol, proto::UDP);
        // The canonical document converts back to the same policy, through JSON.
        let again = PolicyDocument::from_json(&PolicyDocument::from_policy(&policy, 3).to_json())
            .unwrap()
            .to_policy()
            .unwrap();
        assert_eq!(again, policy);
        // Derived ids are stable.
        assert_eq!(doc.to_policy().unwrap(), policy);
    }

    #[test]
    fn errors_name_the_offending_field() {
        let cases = [
            (
                FILE.replace("198.18.0.2/32", "198.18.0.2/40"),
                expect_test::expect![[
                    r#"security_groups["rdp-users"].rules[0].remote_ip_prefix: remote_ip_prefix "198.18.0.2/40" is not a CIDR: prefix length 40 is longer than 32 bits"#
                ]],
            ),
            (
                FILE.replace(
                    "remote_group_id = \"default\"",
                    "remote_group_id = \"nope\"",
                ),
                expect_test::expect![[
                    r#"security_groups["rdp-users"].rules[1].remote_group_id: there is no security group "nope""#
                ]],
            ),
            (
                FILE.replace("[\"default\", \"rdp-users\"]", "[\"default\", \"rdp\"]"),
                expect_test::expect![[
                    r#"instances["desktop"].security_groups: there is no security group "rdp""#
                ]],
            ),
            (
                FILE.replace("protocol = \"udp\"", "protocol = \"sctp\""),
                expect_test::expect![[
                    r#"instances["desktop"].services[1].protocol: a published service is tcp or udp, not "sctp""#
                ]],
            ),
            (
                FILE.replace(
                    "{ template = \"http\" },",
                    "{ template = \"http\" }, { template = \"http\" },",
                ),
                expect_test::expect![[
                    r#"security_groups["default"].rules[1]: security group "default" already has this rule (6575ae07-5081-57a0-bcf2-06f7bcde92b6)"#
                ]],
            ),
            (
                FILE.replace("revision = 3", "revision = 3\nrevisoin = 4"),
                expect_test::expect![[r#"
                    document: TOML parse error at line 3, column 1
                      |
                    3 | revisoin = 4
                      | ^^^^^^^^
                    unknown field `revisoin`, expected one of `revision`, `security_groups`, `instances`, `peers`
                "#]],
            ),
        ];
        for (text, expect) in cases {
            let err = PolicyDocument::from_toml(&text)
                .and_then(|d| d.to_policy())
                .unwrap_err();
            expect.assert_eq(&err.to_string());
        }
    }
}
