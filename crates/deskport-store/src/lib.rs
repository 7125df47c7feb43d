//! deskport's persistence: the records the manager keeps, the rules that govern changing them,
//! and the backends that store them.
//!
//! Three layers, so that a second database is rows and transactions only:
//! - [`Store`] (`store.rs`) is the rules layer the manager calls: validation through
//!   `deskport-policy`, quotas, in-use checks, what cannot be deleted, the audit log's wording,
//!   which changes move the policy revision agents follow, timestamps, and in-memory
//!   snapshots of what every request reads. It holds no SQL.
//! - [`Backend`] / [`Transaction`] (`backend.rs`) are what a database provides: row reads and
//!   writes inside a write transaction that is serialized with every other one (so "check
//!   against what is committed, then insert" is atomic), and reads outside it.
//! - [`SqliteBackend`] (`sqlite.rs`) is the SQLite backend; it owns every SQL statement.
//!
//! `conformance` (feature `conformance`) is the suite every backend must pass: stories run
//! against a fresh [`Store`] over the backend, one line per backend with
//! `conformance_tests!`.
//!
//! The store does no authorization: callers pass the projects a request may see, and check
//! roles before they call a mutation.

mod audit;
mod backend;
#[cfg(feature = "conformance")]
pub mod conformance;
mod sqlite;
mod store;

use std::net::IpAddr;

use deskport_policy::{GroupId, Policy, Rejected, Rule, SecurityGroup};
use uuid::Uuid;

pub use backend::{Backend, NewAuditEvent, Rows, Sessions, Transaction};
pub use sqlite::SqliteBackend;
pub use store::Store;

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

/// Every error of the store, whichever backend.
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
    /// The backend failed (an I/O or SQL error, or a constraint the rules layer did not
    /// expect to be violated).
    #[error("database error")]
    Db(#[from] sqlx::Error),
    #[error("database migration failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored data is not valid: {0}")]
    Corrupt(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

impl From<Rejected> for StoreError {
    fn from(rejected: Rejected) -> Self {
        StoreError::Rejected(rejected)
    }
}

pub(crate) fn not_found(what: &'static str) -> StoreError {
    StoreError::NotFound { what }
}
