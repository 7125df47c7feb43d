//! The JSON of the HTTP API, version 1 (`/api/v1`). Resource and field names follow OpenStack
//! Neutron: a single resource travels wrapped in an object named after it
//! (`{"security_group_rule": {...}}`), a list in the plural (`{"security_group_rules": [...]}`).
//!
//! Request types reject unknown fields, so a typo is an error and never silently ignored.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

pub use crate::policy_doc::ProtocolValue;

/// Every error response: `{"error": {"code", "message", "field"}}`, and for input with several
/// problems every one of them in `details`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<ErrorDetail>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable, machine-readable (`invalid_cidr`, `duplicate_rule`, `not_found`, …).
    pub code: String,
    pub message: String,
    /// The request field the error is about, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// Something the server wants the user to know although the request succeeded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Notice {
    /// `cidr_normalized`, `protocol_normalized`, `open_to_internet`.
    pub code: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

// ---- authentication ----

/// Exchange a user's password for an API token (`deskport login`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    pub username: String,
    pub password: String,
    /// A name for the token, e.g. the machine it is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TokenResponse {
    /// The bearer token. It is shown once; the server keeps only its hash.
    pub token: String,
    pub token_id: Uuid,
    pub user: UserView,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TokenView {
    pub id: Uuid,
    pub name: String,
    pub created_at: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TokenList {
    pub tokens: Vec<TokenView>,
}

// ---- projects and users ----

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ProjectView {
    pub id: Uuid,
    pub name: String,
    pub description: String,
    pub created_at: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ProjectEnvelope {
    pub project: ProjectView,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ProjectList {
    pub projects: Vec<ProjectView>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateProject {
    /// 1-255 characters, no control characters, no surrounding spaces.
    #[schema(
        min_length = 1,
        max_length = 255,
        pattern = r"^[^\s\x00-\x1f\x7f]([^\x00-\x1f\x7f]*[^\s\x00-\x1f\x7f])?$"
    )]
    pub name: String,
    #[serde(default)]
    pub description: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateProjectRequest {
    pub project: CreateProject,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct MembershipView {
    pub project_id: Uuid,
    pub project_name: String,
    /// `admin`, `member` or `reader`.
    pub role: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct UserView {
    pub id: Uuid,
    pub name: String,
    pub is_admin: bool,
    pub memberships: Vec<MembershipView>,
    pub created_at: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct UserEnvelope {
    pub user: UserView,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct UserList {
    pub users: Vec<UserView>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    /// 1-64 letters, digits or `. _ - @`.
    #[schema(min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9._@-]+$")]
    pub name: String,
    /// At least 8 characters.
    #[schema(min_length = 8)]
    pub password: String,
    #[serde(default)]
    pub is_admin: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUserRequest {
    pub user: CreateUser,
}

/// Set a user's role in a project (adds the user if not a member yet).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetMembership {
    /// `admin`, `member` or `reader`.
    #[schema(pattern = "^(admin|member|reader)$")]
    pub role: String,
}

// ---- security groups and rules ----

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RuleView {
    pub id: Uuid,
    pub security_group_id: Uuid,
    pub project_id: Uuid,
    /// `ingress` or `egress`.
    pub direction: String,
    /// `IPv4` or `IPv6`.
    pub ethertype: String,
    /// `tcp`, `udp`, `icmp`, `icmpv6`, a number, or null for any.
    pub protocol: Option<String>,
    pub port_range_min: Option<i64>,
    pub port_range_max: Option<i64>,
    pub remote_ip_prefix: Option<String>,
    pub remote_group_id: Option<Uuid>,
    pub description: String,
    pub created_at: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RuleEnvelope {
    pub security_group_rule: RuleView,
    /// What was normalised, and warnings (e.g. RDP open to the whole internet).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notices: Vec<Notice>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RuleList {
    pub security_group_rules: Vec<RuleView>,
}

/// A new rule. Give a `template` (e.g. `rdp`) or a `protocol` and ports; the remote is a
/// `remote_ip_prefix` or a `remote_group_id` (neither: everyone of the ethertype).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRule {
    pub security_group_id: Uuid,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ethertype: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub protocol: Option<ProtocolValue>,
    /// First port, or the ICMP type.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "integer"
    )]
    pub port_range_min: Option<i64>,
    /// Last port, or the ICMP code.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "integer"
    )]
    pub port_range_max: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_ip_prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_group_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// An optional integer that may be written as a JSON number with a zero fraction (`3389.0`),
/// which JSON Schema counts as an integer too.
fn integer<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    let n: Option<serde_json::Number> = Option::deserialize(d)?;
    let Some(n) = n else { return Ok(None) };
    if let Some(i) = n.as_i64() {
        return Ok(Some(i));
    }
    match n.as_f64() {
        Some(f) if f.fract() == 0.0 && f >= i64::MIN as f64 && f <= i64::MAX as f64 => {
            Ok(Some(f as i64))
        }
        _ => Err(serde::de::Error::custom(format!("{n} is not an integer"))),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRuleRequest {
    pub security_group_rule: CreateRule,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct GroupView {
    pub id: Uuid,
    pub project_id: Uuid,
    pub name: String,
    pub description: String,
    pub security_group_rules: Vec<RuleView>,
    pub created_at: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct GroupEnvelope {
    pub security_group: GroupView,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct GroupList {
    pub security_groups: Vec<GroupView>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateGroup {
    /// 1-255 characters, no control characters, no surrounding spaces.
    #[schema(
        min_length = 1,
        max_length = 255,
        pattern = r"^[^\s\x00-\x1f\x7f]([^\x00-\x1f\x7f]*[^\s\x00-\x1f\x7f])?$"
    )]
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Defaults to the caller's only project, or `default`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project_id: Option<Uuid>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateGroupRequest {
    pub security_group: CreateGroup,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TemplateView {
    /// For `template` in a new rule and `--template` (`rdp`, `custom_tcp`, …).
    pub id: String,
    /// The label in the console's *Rule* menu.
    pub label: String,
    /// The protocol it fixes, if any.
    pub protocol: Option<String>,
    pub port_range_min: Option<i64>,
    pub port_range_max: Option<i64>,
    /// Whether the user gives the protocol or ports.
    pub custom: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TemplateList {
    pub templates: Vec<TemplateView>,
}

// ---- instances ----

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RemoteDesktopView {
    /// *Allow remote connections to this computer*.
    pub enabled: bool,
    /// *Allow connections only from computers running Remote Desktop with NLA*.
    pub nla_only: bool,
    /// *Gateway access*: whether the RD Gateway opens tunnels to the instance (on by default).
    #[serde(default = "on")]
    pub gateway: bool,
}

fn on() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct GroupRef {
    pub id: Uuid,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ConnectCommands {
    pub rdesktop: String,
    pub xfreerdp: String,
    pub deskport: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct InstanceView {
    pub id: Uuid,
    pub project_id: Uuid,
    pub name: String,
    pub public_address: String,
    /// The port clients connect to for RDP.
    pub public_rdp_port: u16,
    pub internal_address: Option<String>,
    /// The RDP server's port on the internal address.
    pub rdp_port: u16,
    pub security_groups: Vec<GroupRef>,
    pub remote_desktop: RemoteDesktopView,
    /// SHA-256 of the RDP server's certificate, as its agent reported it.
    pub cert_fingerprint: Option<String>,
    pub agent_seen_at: Option<String>,
    pub agent_revision: Option<u64>,
    pub connect: ConnectCommands,
    pub created_at: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct InstanceEnvelope {
    pub instance: InstanceView,
}

/// The answer to creating an instance: the only time its agent token is shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct InstanceCreated {
    pub instance: InstanceView,
    pub agent_token: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct InstanceList {
    pub instances: Vec<InstanceView>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateInstance {
    /// 1-255 characters, no control characters, no surrounding spaces.
    #[schema(
        min_length = 1,
        max_length = 255,
        pattern = r"^[^\s\x00-\x1f\x7f]([^\x00-\x1f\x7f]*[^\s\x00-\x1f\x7f])?$"
    )]
    pub name: String,
    /// The address clients connect to, `IP` or `IP:PORT` (the public RDP port, 3389 by
    /// default).
    #[schema(min_length = 2, pattern = r"^[0-9A-Fa-f:.\[\]]+$")]
    pub public_address: String,
    /// Where the instance really listens, `IP` or `IP:PORT` (the port of its RDP server).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(min_length = 2, pattern = r"^[0-9A-Fa-f:.\[\]]+$")]
    pub internal_address: Option<String>,
    /// Security groups by id or name; by default the project's `default` group.
    #[serde(default)]
    pub security_groups: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project_id: Option<Uuid>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateInstanceRequest {
    pub instance: CreateInstance,
}

/// Change the Remote Desktop switches; absent fields stay as they are.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateRemoteDesktop {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nla_only: Option<bool>,
    /// *Gateway access*.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<bool>,
}

/// Where the RD Gateway listens on the manager's HTTPS address (MS-TSGU's HTTP transport).
pub const GATEWAY_PATH: &str = "/remoteDesktopGateway/";

/// Mint an RD Gateway token for yourself; the body may be left out.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRdpToken {
    /// How long the token opens tunnels: 30 to 3600 seconds (300 by default). Tunnels it
    /// opened live on until closed, revoked or refused on a recheck.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 30, maximum = 3600)]
    pub ttl_seconds: Option<u64>,
}

/// A new RD Gateway token: the only time its secret is shown. Give it to the client as its
/// gateway access token (xfreerdp `/gat:TOKEN`, `.rdp` `gatewayaccesstoken:s:TOKEN`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RdpTokenCreated {
    pub token: String,
    pub id: Uuid,
    /// The instance's id.
    pub instance: Uuid,
    pub expires_at: String,
    /// The gateway's path on the manager's HTTPS address.
    pub gateway_path: String,
}

/// An RD Gateway token's record (never its secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RdpTokenView {
    pub id: Uuid,
    pub instance_id: Uuid,
    pub user_id: Uuid,
    /// `None` once the user is deleted.
    pub user_name: Option<String>,
    pub created_at: String,
    pub expires_at: String,
    pub revoked_at: Option<String>,
}

/// Your tokens for the instance; a project admin's list has everyone's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RdpTokenList {
    pub rdp_tokens: Vec<RdpTokenView>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AttachGroup {
    /// Id or name of a group of the instance's project.
    pub security_group: String,
}

// ---- audit log ----

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AuditEventView {
    pub id: i64,
    pub project_id: Option<Uuid>,
    pub actor: String,
    /// E.g. `security_group_rule.create`.
    pub action: String,
    pub target_type: String,
    pub target_id: Option<String>,
    pub summary: String,
    /// The client's address.
    pub source: Option<String>,
    pub created_at: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AuditList {
    pub audit_events: Vec<AuditEventView>,
}

// ---- agents ----

/// An agent's report about its instance.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentReport {
    /// `SHA256:` and the hex SHA-256 of the RDP server's certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_fingerprint: Option<String>,
    /// The policy revision the agent enforces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<u64>,
}

// ---- RD Gateways on their own hosts (`deskport rd-gateway`) ----

/// A token a client presented to an RD Gateway, and from where.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GatewayOpen {
    /// The PAA cookie (the gateway token).
    pub token: String,
    /// The client's address as the gateway saw it (`IP:PORT`), for the audit log.
    pub peer: String,
}

/// What a token grants: one instance's RDP service for one user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GatewayGrant {
    pub token_id: Uuid,
    pub user_id: Uuid,
    pub user: String,
    pub project_id: Uuid,
    pub instance_id: Uuid,
    pub instance: String,
    /// The RDP service the gateway connects to, `IP:PORT` (the instance's internal address).
    pub target: String,
    /// The names a client may ask for (the instance's name and addresses).
    pub resources: Vec<String>,
    /// The ports a client may ask for.
    pub ports: Vec<u16>,
}

/// Why a token or a live tunnel is refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GatewayRefusal {
    /// `token` (unknown, expired, revoked), `policy` (a switch off, not a member, the instance
    /// gone) or `unavailable`.
    pub kind: String,
    pub reason: String,
}

/// A gateway's answer: a grant, or a refusal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GatewayDecision {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant: Option<GatewayGrant>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refusal: Option<GatewayRefusal>,
}

/// Something that happened to a tunnel, for the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GatewayEventReport {
    /// The client's address (`IP:PORT`).
    pub peer: String,
    /// The tunnel's grant, if it got one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant: Option<GatewayGrant>,
    /// `opened`, `closed`, `cut` or `refused`.
    pub event: String,
    /// `opened`: the client's name and the transport; `closed`: why; `cut`, `refused`: the
    /// reason.
    #[serde(default)]
    pub detail: String,
    /// `closed`: RDP bytes to the instance and to the client.
    #[serde(default)]
    pub to_instance: u64,
    #[serde(default)]
    pub to_client: u64,
}

/// The count of changes that may affect gateway grants (long-polled by remote gateways; any
/// change of the number means "recheck").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct GatewayChanges {
    pub changes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Health {
    pub status: String,
    pub revision: u64,
}
