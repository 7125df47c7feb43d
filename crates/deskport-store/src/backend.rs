//! What a database must provide to hold deskport's data: row reads ([`Rows`]) and row writes
//! inside a [`Transaction`]. No rule lives here — no validation, no audit wording, no decision
//! about the revision, no clock: [`crate::Store`] makes those and calls these.
//!
//! A backend promises what the rules layer builds on:
//! - write transactions are serialized with each other, across every process sharing the
//!   database, so what a transaction reads stays true until it commits;
//! - a transaction dropped without [`Transaction::commit`] changes nothing;
//! - a read ([`Backend::read`]) sees one committed state throughout, however many statements
//!   it takes;
//! - a database that other processes write to (PostgreSQL, with several manager replicas)
//!   tells the store what they committed ([`Backend::notices`], from what each transaction
//!   [`Transaction::announce`]s), and when it may have missed some ([`Notice::Lost`]).
//!
//! Orders are part of each method's contract (the API lists things in them): the conformance
//! suite checks them, so two backends answer alike.

use deskport_policy::throttle::Attempts;
use deskport_policy::{GroupId, Rule, RuleId, SecurityGroup};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::{
    Actor, ApiToken, AuditEvent, AuditFilter, GatewayToken, GroupRecord, Instance, Project, Result,
    Role, RuleRecord, Session, User,
};

/// A database holding deskport's data.
#[async_trait::async_trait]
pub trait Backend: Send + Sync + std::fmt::Debug + 'static {
    /// A connection for reads outside any write transaction (they see what is committed).
    async fn read(&self) -> Result<Box<dyn Rows>>;
    /// A write transaction, serialized with every other write transaction on the database.
    async fn write(&self) -> Result<Box<dyn Transaction>>;
    /// A write transaction for the agents' status columns only
    /// ([`Transaction::report_agent`]): no serialized writer reads them to write them back, so
    /// these need not queue behind (or ahead of) changes where the database lets writers run
    /// side by side.
    async fn status_write(&self) -> Result<Box<dyn Transaction>> {
        self.write().await
    }

    /// What other processes commit to this database, as it happens; `None` for a database
    /// only this process writes to. Taken once, by the store.
    fn notices(&self) -> Option<mpsc::UnboundedReceiver<Notice>> {
        None
    }

    /// Whether this process is the one, of all sharing the database, that runs the periodic
    /// jobs now. It stays so until it stops (or loses the database), then another takes over.
    async fn lead(&self) -> Result<bool>;
}

/// What a committed change touched that readers keep copies of.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Touched {
    /// The policy revision the change moved to.
    pub revision: Option<u64>,
    /// Who a token belongs to: API tokens, users and their memberships, instances' agent
    /// tokens.
    pub principals: bool,
    /// Instances' records.
    pub instances: bool,
}

impl Touched {
    /// Whether readers' copies stay valid.
    pub fn is_empty(&self) -> bool {
        *self == Touched::default()
    }
}

/// News of the database from [`Backend::notices`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notice {
    /// Another process committed a change.
    Committed(Touched),
    /// Notices stopped coming (the connection they arrive on was lost): commits may be
    /// missed until [`Notice::Listening`].
    Lost,
    /// Notices come again; what was committed while they did not is unknown.
    Listening,
}

/// Row reads. Users come with their memberships (by project name); groups with their rules
/// (in creation order).
#[async_trait::async_trait]
pub trait Rows: Send {
    /// The policy revision.
    async fn revision(&mut self) -> Result<u64>;

    /// Every project, by name.
    async fn projects(&mut self) -> Result<Vec<Project>>;

    async fn user(&mut self, id: Uuid) -> Result<Option<User>>;
    /// A user by name, with its password hash.
    async fn user_by_name(&mut self, name: &str) -> Result<Option<(User, String)>>;
    /// Every user, by name.
    async fn users(&mut self) -> Result<Vec<User>>;
    /// The owner of the API token with this hash.
    async fn token_user(&mut self, token_hash: &str) -> Result<Option<User>>;
    /// A user's API tokens, oldest first.
    async fn api_tokens(&mut self, user: Uuid) -> Result<Vec<ApiToken>>;
    /// The session with this token hash, expired or not.
    async fn session(&mut self, token_hash: &str) -> Result<Option<Session>>;

    /// The groups of `project` (of every project with `None`), oldest first (then by name).
    async fn groups(&mut self, project: Option<Uuid>) -> Result<Vec<GroupRecord>>;
    async fn group(&mut self, id: GroupId) -> Result<Option<GroupRecord>>;
    /// The names of the instances `group` is attached to.
    async fn group_attachments(&mut self, group: GroupId) -> Result<Vec<String>>;
    /// The names of the other groups with a rule whose remote is `group`, each once.
    async fn group_referrers(&mut self, group: GroupId) -> Result<Vec<String>>;
    async fn rule(&mut self, id: RuleId) -> Result<Option<RuleRecord>>;

    /// The instances of `project` (of every project with `None`), oldest first (then by
    /// name), each with its groups in attachment order.
    async fn instances(&mut self, project: Option<Uuid>) -> Result<Vec<Instance>>;
    async fn instance(&mut self, id: Uuid) -> Result<Option<Instance>>;
    /// The instance (and its project) whose agent token has this hash.
    async fn agent_token(&mut self, token_hash: &str) -> Result<Option<(Uuid, Uuid)>>;

    /// The RD Gateway token with this id, with its user's name if the user exists.
    async fn gateway_token(&mut self, id: Uuid) -> Result<Option<GatewayToken>>;
    /// The RD Gateway token with this hash, with its user's name if the user exists.
    async fn gateway_token_by_hash(&mut self, token_hash: &str) -> Result<Option<GatewayToken>>;
    /// An instance's RD Gateway tokens, oldest first.
    async fn gateway_tokens(&mut self, instance: Uuid) -> Result<Vec<GatewayToken>>;

    /// Events of `projects` (of any project or none with `None`) that match `filter`, newest
    /// first, at most `filter.limit`.
    async fn audit(
        &mut self,
        projects: Option<&[Uuid]>,
        filter: &AuditFilter,
    ) -> Result<Vec<AuditEvent>>;

    /// The login attempts recorded for these keys (keys without any are left out).
    async fn login_attempts(&mut self, keys: &[String]) -> Result<Vec<(String, Attempts)>>;
}

/// Which sessions [`Transaction::delete_sessions`] deletes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sessions<'a> {
    /// The one with this token hash.
    Token(&'a str),
    /// Every session of a user.
    User(Uuid),
    /// Those whose `expires_at` is before this time.
    ExpiredBefore(i64),
}

/// Which keys' login attempts [`Transaction::delete_login_attempts`] deletes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginAttempts<'a> {
    Key(&'a str),
    /// Those whose last attempt is before this time.
    IdleSince(i64),
}

/// An audit event to append; the backend numbers events in the order they are committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAuditEvent<'a> {
    pub project_id: Option<Uuid>,
    pub actor: &'a Actor,
    pub action: &'static str,
    pub target_type: &'static str,
    pub target_id: Option<String>,
    pub summary: String,
    pub created_at: i64,
}

/// What an instance's agent reports about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentReport {
    pub instance: Uuid,
    /// Its RDP server's certificate fingerprint; `None` leaves the last one.
    pub fingerprint: Option<String>,
    /// The revision it enforces; `None` leaves the last one.
    pub revision: Option<u64>,
    pub seen_at: i64,
}

/// Row writes (and reads) in one write transaction.
#[async_trait::async_trait]
pub trait Transaction: Rows {
    async fn insert_project(&mut self, project: &Project) -> Result<()>;
    /// Deletes a project with everything in it: memberships, groups and their rules,
    /// instances. Its audit events stay.
    async fn delete_project(&mut self, id: Uuid) -> Result<()>;

    /// Inserts a user (its memberships are not looked at).
    async fn insert_user(&mut self, user: &User, password_hash: &str) -> Result<()>;
    /// Deletes a user with its memberships, API tokens and sessions.
    async fn delete_user(&mut self, id: Uuid) -> Result<()>;
    async fn set_password_hash(&mut self, user: Uuid, password_hash: &str) -> Result<()>;
    /// Adds the membership, or changes its role.
    async fn set_membership(&mut self, project: Uuid, user: Uuid, role: Role) -> Result<()>;
    /// Whether there was such a membership.
    async fn delete_membership(&mut self, project: Uuid, user: Uuid) -> Result<bool>;
    async fn insert_api_token(&mut self, token: &ApiToken, token_hash: &str) -> Result<()>;
    /// Whether `user` had a token `id`.
    async fn delete_api_token(&mut self, user: Uuid, id: Uuid) -> Result<bool>;
    async fn insert_session(
        &mut self,
        user: Uuid,
        token_hash: &str,
        csrf_token: &str,
        created_at: i64,
        expires_at: i64,
    ) -> Result<()>;
    async fn delete_sessions(&mut self, which: Sessions<'_>) -> Result<()>;

    /// Inserts a group row (its rules are inserted one by one with
    /// [`Transaction::insert_rule`]).
    async fn insert_group(
        &mut self,
        project: Uuid,
        group: &SecurityGroup,
        created_at: i64,
    ) -> Result<()>;
    /// Deletes a group with its rules.
    async fn delete_group(&mut self, id: GroupId) -> Result<()>;
    /// Appends a rule to its group.
    async fn insert_rule(&mut self, project: Uuid, rule: &Rule, created_at: i64) -> Result<()>;
    async fn delete_rule(&mut self, id: RuleId) -> Result<()>;

    /// Inserts an instance (its groups are attached with [`Transaction::attach_group`]).
    async fn insert_instance(&mut self, instance: &Instance, agent_token_hash: &str) -> Result<()>;
    /// Stores every field of `instance` but its id, project and groups, and what its agent
    /// reports ([`Transaction::report_agent`]).
    async fn update_instance(&mut self, instance: &Instance) -> Result<()>;
    /// An agent's report: what it leaves out stays as last reported. `false` if there is no
    /// such instance.
    async fn report_agent(&mut self, report: &AgentReport) -> Result<bool>;
    async fn delete_instance(&mut self, id: Uuid) -> Result<()>;
    /// Attaches `group` after the instance's other groups.
    async fn attach_group(&mut self, instance: Uuid, group: GroupId) -> Result<()>;
    async fn detach_group(&mut self, instance: Uuid, group: GroupId) -> Result<()>;

    async fn insert_gateway_token(&mut self, token: &GatewayToken, token_hash: &str) -> Result<()>;
    /// Stamps the token revoked at `at`; `false` if there is no such token or it was revoked.
    async fn revoke_gateway_token(&mut self, id: Uuid, at: i64) -> Result<bool>;
    /// Deletes the RD Gateway tokens that expired before this time; how many there were.
    async fn delete_gateway_tokens(&mut self, expired_before: i64) -> Result<u64>;

    /// Records `key`'s attempts, replacing what was recorded.
    async fn put_login_attempts(&mut self, key: &str, attempts: &Attempts) -> Result<()>;
    async fn delete_login_attempts(&mut self, which: LoginAttempts<'_>) -> Result<()>;

    async fn insert_audit(&mut self, event: &NewAuditEvent<'_>) -> Result<()>;
    /// Increments the policy revision and returns the new one.
    async fn bump_revision(&mut self) -> Result<u64>;

    /// Tells the other processes sharing the database, when this transaction commits, what
    /// it touched (a database only this process writes to does nothing).
    async fn announce(&mut self, touched: &Touched) -> Result<()>;
    async fn commit(self: Box<Self>) -> Result<()>;
}
