//! deskport's persistence: the [`Store`] trait the manager's handlers use, and its SQLite
//! implementation [`SqliteStore`] (one file, WAL, migrations embedded and run at open).
//!
//! The store owns every SQL statement, the audit log (each mutation writes its audit event in
//! the same transaction) and the policy revision counter that agents follow. Rule validation is
//! `deskport-policy`'s, run inside the write transaction so that duplicates and quotas are
//! checked against exactly what is committed. The store does no authorization: callers pass the
//! projects a request may see, and check roles before they call a mutation.
//!
//! A PostgreSQL implementation can follow behind the same trait; writes here are serialized by a
//! single-connection write pool, which PostgreSQL would replace with row locks.

mod sqlite;

use std::net::IpAddr;

use deskport_policy::{
    GroupId, Note, Policy, Quota, Rejected, Rule, RuleId, RuleSpec, SecurityGroup,
};
use uuid::Uuid;

pub use sqlite::SqliteStore;

/// A project (tenant).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Project {
    pub id: Uuid,
    pub name: String,
    pub description: String,
    pub created_at: i64,
}

/// A member's role in a project.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Read everything of the project.
    Reader,
    /// Also create and delete groups, rules and instances.
    Member,
    /// Also manage the project's members.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Reader => "reader",
            Role::Member => "member",
            Role::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "reader" => Some(Role::Reader),
            "member" => Some(Role::Member),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

/// A console / API user and the projects it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: Uuid,
    pub name: String,
    /// May create projects and users.
    pub is_admin: bool,
    pub created_at: i64,
    pub memberships: Vec<Membership>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    pub project_id: Uuid,
    pub project_name: String,
    pub role: Role,
}

impl User {
    /// The user's role in `project`, if a member.
    pub fn role_in(&self, project: Uuid) -> Option<Role> {
        self.memberships
            .iter()
            .find(|m| m.project_id == project)
            .map(|m| m.role)
    }

    /// The projects the user can see.
    pub fn project_ids(&self) -> Vec<Uuid> {
        self.memberships.iter().map(|m| m.project_id).collect()
    }
}

/// Who a bearer token or session belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    User(User),
    /// An instance's agent (firewall or RDP server on the instance).
    Agent {
        instance_id: Uuid,
        project_id: Uuid,
    },
}

/// A console session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub user: User,
    pub csrf_token: String,
    pub expires_at: i64,
}

/// An API token's metadata (the secret itself is never stored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiToken {
    pub id: Uuid,
    pub user_id: Uuid,
    pub name: String,
    pub created_at: i64,
}

/// A security group with its project and rules (rules in creation order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupRecord {
    pub project_id: Uuid,
    pub group: SecurityGroup,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleRecord {
    pub project_id: Uuid,
    pub rule: Rule,
    pub created_at: i64,
}

/// An instance and its remote-desktop settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub id: Uuid,
    pub project_id: Uuid,
    pub name: String,
    pub public_address: IpAddr,
    /// The port clients connect to for RDP on the public address.
    pub public_rdp_port: u16,
    /// Where the instance really listens (the gateway forwards there); `None`: the public one.
    pub internal_address: Option<IpAddr>,
    /// The RDP server's port on the internal address.
    pub rdp_port: u16,
    /// Attached groups in attachment order, with their names.
    pub groups: Vec<(GroupId, String)>,
    /// *Allow remote connections to this computer*.
    pub rdp_enabled: bool,
    /// *Allow connections only from computers running Remote Desktop with NLA*.
    pub rdp_nla_only: bool,
    /// SHA-256 fingerprint of the RDP server's certificate, as its agent reported it.
    pub cert_fingerprint: Option<String>,
    pub agent_seen_at: Option<i64>,
    /// The policy revision the agent last reported enforcing.
    pub agent_revision: Option<u64>,
    pub created_at: i64,
}

/// What creating an instance needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewInstance {
    pub project_id: Uuid,
    pub name: String,
    pub public_address: IpAddr,
    pub public_rdp_port: u16,
    pub internal_address: Option<IpAddr>,
    pub rdp_port: u16,
    /// Groups to attach; empty means the project's `default` group.
    pub groups: Vec<GroupId>,
    /// SHA-256 of the agent token (hex).
    pub agent_token_hash: String,
}

/// An audit log entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    pub id: i64,
    pub project_id: Option<Uuid>,
    pub actor: String,
    pub action: String,
    pub target_type: String,
    pub target_id: Option<String>,
    pub summary: String,
    pub source: Option<String>,
    pub created_at: i64,
}

/// Which audit events to list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    pub action: Option<String>,
    pub actor: Option<String>,
    pub target_id: Option<String>,
    /// Only events with a larger id.
    pub after_id: Option<i64>,
    /// At most this many, newest first.
    pub limit: u32,
}

/// Who makes a change, for the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    pub name: String,
    /// The client's address.
    pub source: Option<String>,
}

/// What an agent enforces: the policy (its instance(s) as members, the rest of the project as
/// peers) at a revision, and the instances' records for their remote-desktop settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentState {
    pub revision: u64,
    pub policy: Policy,
    pub instances: Vec<Instance>,
}

/// What [`Store::bootstrap`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bootstrap {
    /// The store was empty and the `default` project and `admin` user were created.
    pub created: bool,
    pub default_project: Uuid,
    pub admin: Uuid,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{what} not found")]
    NotFound { what: &'static str },
    /// Validation or a conflict found by `deskport-policy` (codes and fields inside).
    #[error("{0}")]
    Rejected(Rejected),
    /// A conflict the store found (a name taken, a group in use…).
    #[error("{message}")]
    Conflict {
        code: &'static str,
        field: Option<&'static str>,
        message: String,
    },
    #[error("database error")]
    Db(#[from] sqlx::Error),
    #[error("database migration failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored data is not valid: {0}")]
    Corrupt(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Everything the manager persists. Reads take the projects the caller may see (`visible`);
/// an object of another project is reported as not found.
#[async_trait::async_trait]
pub trait Store: Send + Sync + std::fmt::Debug + 'static {
    /// On an empty store: creates the `default` project (with its `default` group) and the
    /// administrator `admin` with `admin_password_hash`. Otherwise changes nothing.
    async fn bootstrap(&self, admin_password_hash: &str) -> Result<Bootstrap>;

    // Users, tokens and sessions.
    async fn user_auth(&self, name: &str) -> Result<Option<(User, String)>>;
    async fn user(&self, id: Uuid) -> Result<User>;
    async fn list_users(&self) -> Result<Vec<User>>;
    async fn create_user(
        &self,
        actor: &Actor,
        name: &str,
        password_hash: &str,
        is_admin: bool,
    ) -> Result<User>;
    async fn delete_user(&self, actor: &Actor, id: Uuid) -> Result<()>;
    async fn set_password(&self, actor: &Actor, id: Uuid, password_hash: &str) -> Result<()>;
    async fn set_membership(
        &self,
        actor: &Actor,
        project: Uuid,
        user: Uuid,
        role: Role,
    ) -> Result<()>;
    async fn remove_membership(&self, actor: &Actor, project: Uuid, user: Uuid) -> Result<()>;
    async fn create_api_token(
        &self,
        actor: &Actor,
        user: Uuid,
        name: &str,
        token_hash: &str,
    ) -> Result<ApiToken>;
    async fn list_api_tokens(&self, user: Uuid) -> Result<Vec<ApiToken>>;
    async fn delete_api_token(&self, actor: &Actor, user: Uuid, id: Uuid) -> Result<()>;
    async fn principal_by_token(&self, token_hash: &str) -> Result<Option<Principal>>;
    async fn create_session(
        &self,
        user: Uuid,
        token_hash: &str,
        csrf_token: &str,
        expires_at: i64,
    ) -> Result<()>;
    async fn session(&self, token_hash: &str, now: i64) -> Result<Option<Session>>;
    async fn delete_session(&self, token_hash: &str) -> Result<()>;

    // Projects.
    async fn list_projects(&self, visible: &[Uuid]) -> Result<Vec<Project>>;
    async fn project(&self, visible: &[Uuid], id: Uuid) -> Result<Project>;
    /// Creates a project with its `default` group, and makes `owner` its admin.
    async fn create_project(
        &self,
        actor: &Actor,
        name: &str,
        description: &str,
        owner: Uuid,
    ) -> Result<Project>;
    async fn delete_project(&self, actor: &Actor, id: Uuid) -> Result<()>;

    // Security groups and rules.
    async fn list_groups(&self, visible: &[Uuid]) -> Result<Vec<GroupRecord>>;
    async fn group(&self, visible: &[Uuid], id: GroupId) -> Result<GroupRecord>;
    async fn create_group(
        &self,
        actor: &Actor,
        project: Uuid,
        name: &str,
        description: &str,
        quota: Quota,
    ) -> Result<GroupRecord>;
    async fn delete_group(&self, actor: &Actor, id: GroupId) -> Result<()>;
    async fn rule(&self, visible: &[Uuid], id: RuleId) -> Result<RuleRecord>;
    /// Validates `spec` (duplicates and the project's rule quota included) and adds the rule.
    async fn create_rule(
        &self,
        actor: &Actor,
        group: GroupId,
        spec: &RuleSpec,
        quota: Quota,
    ) -> Result<(RuleRecord, Vec<Note>)>;
    async fn delete_rule(&self, actor: &Actor, id: RuleId) -> Result<()>;

    // Instances.
    async fn list_instances(&self, visible: &[Uuid]) -> Result<Vec<Instance>>;
    async fn instance(&self, visible: &[Uuid], id: Uuid) -> Result<Instance>;
    async fn create_instance(&self, actor: &Actor, new: &NewInstance) -> Result<Instance>;
    async fn delete_instance(&self, actor: &Actor, id: Uuid) -> Result<()>;
    async fn set_remote_desktop(
        &self,
        actor: &Actor,
        id: Uuid,
        enabled: Option<bool>,
        nla_only: Option<bool>,
    ) -> Result<Instance>;
    async fn attach_group(&self, actor: &Actor, id: Uuid, group: GroupId) -> Result<Instance>;
    async fn detach_group(&self, actor: &Actor, id: Uuid, group: GroupId) -> Result<Instance>;
    /// An agent's report: its certificate fingerprint (RDP server) and enforced revision.
    async fn report_agent(
        &self,
        id: Uuid,
        fingerprint: Option<&str>,
        revision: Option<u64>,
    ) -> Result<()>;

    // Audit log and the agents' feed.
    async fn list_audit(&self, visible: &[Uuid], filter: &AuditFilter) -> Result<Vec<AuditEvent>>;
    async fn revision(&self) -> Result<u64>;
    /// A receiver that sees every new revision after a committed change.
    fn subscribe(&self) -> tokio::sync::watch::Receiver<u64>;
    /// The state an agent of `instance` enforces; `None` for a whole project.
    async fn agent_state(&self, project: Uuid, instance: Option<Uuid>) -> Result<AgentState>;
}
