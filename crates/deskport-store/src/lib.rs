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
//! - `sql.rs` holds every SQL statement, in the dialect both databases accept;
//!   [`SqliteBackend`] (`sqlite.rs`, the embedded default) and [`PostgresBackend`]
//!   (`postgres.rs`, for several manager replicas on one database) supply connections,
//!   serialization of writers, and — PostgreSQL only — notices of other processes' commits.
//!
//! The schemas are two migration folders with the same version numbers
//! (`migrations/sqlite`, `migrations/postgres`): the same tables and columns in each
//! database's own types (an identity column is not SQLite's AUTOINCREMENT, a 64-bit integer is
//! not PostgreSQL's INTEGER, names sort bytewise only with PostgreSQL's `COLLATE "C"`), so each
//! file reads as plain SQL of its database; a test keeps the two lists of versions equal.
//! Why not one schema both accept: it would have to give up the types that make each
//! database check the data (SQLite's INTEGER is PostgreSQL's 32-bit INTEGER, and there is no
//! collation clause both take), and existing SQLite databases record each migration's
//! checksum, so `migrations/sqlite/0001_init.sql` must stay byte for byte what they ran.
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
mod postgres;
mod sql;
mod sqlite;
mod store;

use std::net::IpAddr;

use deskport_policy::{GroupId, Policy, Rejected, Rule, SecurityGroup};
use uuid::Uuid;

pub use backend::{
    AgentReport, Backend, LoginAttempts, NewAuditEvent, Notice, Rows, Sessions, Touched,
    Transaction,
};
pub use postgres::{PostgresBackend, CHANNEL as POSTGRES_CHANNEL, LISTENER_NAME};
pub use sqlite::SqliteBackend;
pub use store::{
    Store, StoreStats, GATEWAY_TOKEN_MAX_TTL, GATEWAY_TOKEN_MIN_TTL, GATEWAY_TOKEN_TTL,
};

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
    /// *Gateway access*: whether the RD Gateway opens tunnels to this instance (on by
    /// default; governs the gateway path only, as security groups govern the public one).
    pub rdp_gateway: bool,
    /// SHA-256 fingerprint of the RDP server's certificate, as its agent reported it.
    pub cert_fingerprint: Option<String>,
    pub agent_seen_at: Option<i64>,
    /// The policy revision the agent last reported enforcing.
    pub agent_revision: Option<u64>,
    pub created_at: i64,
}

/// An RD Gateway token's record (the secret itself is never stored): it opens tunnels to one
/// instance for one user until it expires or is revoked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayToken {
    pub id: Uuid,
    pub user_id: Uuid,
    /// The user's name; `None` once the user is deleted.
    pub user_name: Option<String>,
    pub instance_id: Uuid,
    pub created_at: i64,
    pub expires_at: i64,
    pub revoked_at: Option<i64>,
}

/// What the RD Gateway may do with a token: open a tunnel to `instance`'s RDP service (its
/// internal address, else the public one, and `rdp_port`) for `user_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayGrant {
    pub token_id: Uuid,
    pub user_id: Uuid,
    pub user_name: String,
    pub instance: Instance,
    pub project_id: Uuid,
}

/// Why the RD Gateway may not open (or keep) a tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum GrantRefusal {
    #[error("the gateway token is not known")]
    UnknownToken,
    #[error("the gateway token has expired")]
    Expired,
    #[error("the gateway token was revoked")]
    Revoked,
    #[error("remote connections to the instance are switched off")]
    RemoteDesktopOff,
    #[error("gateway access to the instance is switched off")]
    GatewayOff,
    #[error("the token's user is not a member of the instance's project")]
    NotMember,
    #[error("the instance no longer exists")]
    InstanceGone,
}

impl GrantRefusal {
    /// A stable name for logs and metrics (`unknown_token`, `expired`, …).
    pub fn code(self) -> &'static str {
        match self {
            GrantRefusal::UnknownToken => "unknown_token",
            GrantRefusal::Expired => "expired",
            GrantRefusal::Revoked => "revoked",
            GrantRefusal::RemoteDesktopOff => "remote_desktop_off",
            GrantRefusal::GatewayOff => "gateway_off",
            GrantRefusal::NotMember => "not_member",
            GrantRefusal::InstanceGone => "instance_gone",
        }
    }
}

/// A refused grant: why, and what the token named (for the audit log), as far as known.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct Refused {
    pub reason: GrantRefusal,
    pub token_id: Option<Uuid>,
    pub user_id: Option<Uuid>,
    /// The user's name, if the user still exists.
    pub user_name: Option<String>,
    pub instance_id: Option<Uuid>,
    /// The instance's project, if the instance still exists.
    pub project_id: Option<Uuid>,
}

/// What the RD Gateway records in the audit log ([`crate::Store::audit_gateway`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GatewayEvent {
    /// A tunnel was opened (`gateway.session_opened`).
    Opened,
    /// A tunnel ended (`gateway.session_closed`), whatever ended it.
    Closed,
    /// A tunnel was refused, or a live one cut by a refused recheck (`gateway.refused`).
    Refused,
}

impl GatewayEvent {
    /// The event's action in the audit log.
    pub fn action(self) -> &'static str {
        match self {
            GatewayEvent::Opened => "gateway.session_opened",
            GatewayEvent::Closed => "gateway.session_closed",
            GatewayEvent::Refused => "gateway.refused",
        }
    }
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
    #[error("the database URL is not valid: {0}")]
    BadUrl(String),
    #[error("cannot connect to the database at {target}: {reason}")]
    Connect { target: String, reason: String },
    /// A later deskport migrated the database: this one would not understand it.
    #[error(
        "the database's schema has version {found}, and this deskport knows versions up to \
         {known} only: it was upgraded by a newer deskport, which must be used with it"
    )]
    NewerSchema { found: i64, known: i64 },
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

/// Runs `migrator`'s migrations not yet applied, each in a transaction; a database that has
/// a migration `migrator` does not know is refused untouched.
pub(crate) async fn migrate<'a, A>(migrator: &sqlx::migrate::Migrator, connection: A) -> Result<()>
where
    A: sqlx::Acquire<'a>,
    <A::Connection as std::ops::Deref>::Target: sqlx::migrate::Migrate,
{
    let known = migrator.iter().map(|m| m.version).max().unwrap_or(0);
    migrator.run(connection).await.map_err(|e| match e {
        sqlx::migrate::MigrateError::VersionMissing(found) if found > known => {
            StoreError::NewerSchema { found, known }
        }
        other => StoreError::Migrate(other),
    })
}

#[cfg(test)]
mod tests {
    /// Both schemas have the same migrations: a change to one is made to the other.
    #[test]
    fn both_schemas_have_the_same_versions() {
        let list = |m: &sqlx::migrate::Migrator| -> Vec<(i64, String)> {
            m.iter()
                .map(|m| (m.version, m.description.to_string()))
                .collect()
        };
        let sqlite = list(&crate::sqlite::MIGRATOR);
        assert!(sqlite.len() >= 2, "{sqlite:?}");
        assert_eq!(sqlite, list(&crate::postgres::MIGRATOR));
    }
}
