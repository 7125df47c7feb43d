//! [`Store`]: the rules of deskport's data over any [`Backend`].
//!
//! Every mutation is one backend transaction that reads what it checks, writes its rows, appends
//! its audit event and, for the changes agents enforce, bumps the policy revision — then
//! commits. A check and the write it guards cannot be split by another writer, because the
//! backend serializes write transactions (across processes too).
//!
//! Reads that every request makes are served from in-memory copies, each valid while what it
//! depends on has not changed:
//! - the **policy view** (every group with its rules and every instance, read in one snapshot
//!   with the revision it is at) until the revision moves: groups and rules change only with
//!   it. It is loaded once per revision however many readers ask at once (one load, the
//!   others wait for it), so agents woken by a new revision cost one read between them;
//! - the **instances** (for the API and the console, with what agents last reported) until a
//!   change touches instances;
//! - **token owners** until a change touches tokens, users' memberships or instances.
//!
//! What the RD Gateway asks ([`Store::gateway_grant`], [`Store::recheck_grant`]) is read from
//! the database each time, never from a copy: it is asked when a tunnel opens and, for live
//! tunnels, when [`Store::access_changes`] moves — after any commit, here or (through the
//! notices) on another replica, that can change a grant.
//!
//! Each commit says what it [`Touched`]; this store forgets the copies it touched at once, and
//! tells other processes on the same database through the backend
//! ([`Transaction::announce`]), whose [`Notice`]s this store follows in a task of its own. While
//! the backend may miss notices ([`Notice::Lost`]) no copy is used; when it hears again
//! ([`Notice::Listening`]), the revision is read again and every copy forgotten, so a change
//! committed meanwhile is neither missed by agents nor hidden by a copy.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use deskport_policy::throttle::{Attempts, Limits};
use deskport_policy::{
    check_group_deletable, default_group, validate_group, validate_rule, GroupId, Member, Note,
    Policy, Quota, RuleContext, RuleId, RuleSpec, SecurityGroup, Service, DEFAULT_GROUP,
};
use tokio::sync::{mpsc, watch};
use uuid::Uuid;

use crate::audit::{rule_summary, Action};
use crate::{
    not_found, Actor, AgentReport, AgentState, ApiToken, AuditEvent, AuditFilter, Backend,
    Bootstrap, GatewayEvent, GatewayGrant, GatewayToken, GrantRefusal, GroupRecord, Instance,
    LoginAttempts, NewAuditEvent, NewInstance, Notice, Principal, Project, Refused, Result, Role,
    Rows, RuleRecord, Session, Sessions, StoreError, Touched, Transaction, User,
};

/// The project every store has, which cannot be deleted.
const DEFAULT_PROJECT: &str = "default";
/// The administrator every store has, who cannot be deleted.
const ADMIN: &str = "admin";
/// Token owners cached at most (the cache is cleared when full).
const PRINCIPAL_CACHE: usize = 10_000;
/// The most audit events one listing returns.
const AUDIT_LIMIT: u32 = 1000;
/// How long an RD Gateway token opens tunnels unless asked otherwise.
pub const GATEWAY_TOKEN_TTL: Duration = Duration::from_secs(5 * 60);
/// The shortest and longest life an RD Gateway token may be given.
pub const GATEWAY_TOKEN_MIN_TTL: Duration = Duration::from_secs(30);
pub const GATEWAY_TOKEN_MAX_TTL: Duration = Duration::from_secs(60 * 60);
/// How long the janitor keeps an RD Gateway token after it expired: a live tunnel opened with
/// it is rechecked against it ([`Store::recheck_grant`]), so a tunnel lives at most this long
/// past its token's expiry.
const GATEWAY_TOKEN_KEPT: i64 = 7 * 24 * 3_600_000;
/// Who the audit log names for a refused tunnel whose token names no user.
const GATEWAY_ACTOR: &str = "gateway";

/// Everything the manager persists, and the rules for changing it. Reads take the projects
/// the caller may see (`visible`); an object of another project is reported as not found.
/// Cloning is cheap and shares the caches.
#[derive(Debug, Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    backend: Box<dyn Backend>,
    revision: watch::Sender<u64>,
    /// Moved after every commit that can change an RD Gateway grant (see
    /// [`Store::access_changes`]).
    access: watch::Sender<u64>,
    /// Moved by every change to token owners (here or, through notices, elsewhere).
    principals_version: AtomicU64,
    /// Moved by every change to instances.
    instances_version: AtomicU64,
    /// Whether the copies may be used: false while the backend may miss other processes'
    /// commits.
    listening: AtomicBool,
    /// Whether other processes write to the database (the backend has notices).
    shared: bool,
    /// The policy view; the lock makes concurrent readers share one load.
    policy: tokio::sync::Mutex<Option<Arc<PolicyView>>>,
    instances: Snapshot<Vec<Instance>>,
    principals: PrincipalCache,
    reads: AtomicU64,
    policy_loads: AtomicU64,
    listener_losses: AtomicU64,
    /// Agents' reports waiting to be written, and the turn to write them.
    reports: Mutex<Vec<(AgentReport, Answer)>>,
    report_turn: tokio::sync::Mutex<()>,
}

/// Where a report's outcome goes.
type Answer = tokio::sync::oneshot::Sender<Result<()>>;

/// `mutex`'s value, even if a panic left it poisoned (every value kept is valid on its own).
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Every group and instance at a revision, read in one snapshot.
#[derive(Debug)]
struct PolicyView {
    revision: u64,
    groups: Vec<GroupRecord>,
    instances: Vec<Instance>,
}

/// Token hash → owner, valid at one version.
type PrincipalCache = Mutex<(u64, HashMap<String, Option<Principal>>)>;

/// A value read at a version.
type Snapshot<T> = Mutex<Option<(u64, Arc<T>)>>;

/// What a store has done, for the manager's `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreStats {
    /// Read transactions on the database.
    pub reads: u64,
    /// Loads of the policy view (one per revision when the copies are in use).
    pub policy_loads: u64,
    /// Whether notices of other processes' commits arrive now (`None`: no other process writes
    /// to the database).
    pub listening: Option<bool>,
    /// Times the backend lost the notices.
    pub listener_losses: u64,
}

/// What a change writes to the audit log.
struct Change {
    action: Action,
    project: Option<Uuid>,
    target: String,
    summary: String,
}

impl Change {
    fn new(
        action: Action,
        project: Option<Uuid>,
        target: impl ToString,
        summary: impl Into<String>,
    ) -> Self {
        Self {
            action,
            project,
            target: target.to_string(),
            summary: summary.into(),
        }
    }
}

/// The store stamps every record and event with the time it commits.
fn now_ms() -> i64 {
    deskport_policy::unix_ms(SystemTime::now())
}

fn conflict(code: &'static str, field: Option<&'static str>, message: String) -> StoreError {
    StoreError::Conflict {
        code,
        field,
        message,
    }
}

fn on_off(on: bool) -> &'static str {
    if on {
        "on"
    } else {
        "off"
    }
}

/// A record of one project.
trait InProject {
    fn project(&self) -> Uuid;
}

impl InProject for GroupRecord {
    fn project(&self) -> Uuid {
        self.project_id
    }
}

impl InProject for Instance {
    fn project(&self) -> Uuid {
        self.project_id
    }
}

/// The records of the `visible` projects.
fn in_view<'a, T: InProject>(all: &'a [T], visible: &'a [Uuid]) -> impl Iterator<Item = &'a T> {
    all.iter().filter(|r| visible.contains(&r.project()))
}

/// Inserts `group` and its rules.
async fn insert_group(
    tx: &mut dyn Transaction,
    project: Uuid,
    group: &SecurityGroup,
    now: i64,
) -> Result<()> {
    tx.insert_group(project, group, now).await?;
    for rule in &group.rules {
        tx.insert_rule(project, rule, now).await?;
    }
    Ok(())
}

impl Inner {
    /// Publishes a committed revision; two commits publish in either order, and it never
    /// goes back.
    fn publish(&self, new: u64) {
        self.revision.send_if_modified(|current| {
            let newer = new > *current;
            if newer {
                *current = new;
            }
            newer
        });
    }

    /// Forgets the copies a committed change touched.
    fn invalidate(&self, touched: &Touched) {
        if touched.principals {
            self.principals_version.fetch_add(1, Ordering::SeqCst);
        }
        if touched.instances {
            self.instances_version.fetch_add(1, Ordering::SeqCst);
        }
        if let Some(revision) = touched.revision {
            self.publish(revision);
        }
        // Last: whoever it wakes reads what the commit left.
        if touched.principals || touched.revision.is_some() {
            self.access_changed();
        }
    }

    fn forget_all(&self) {
        self.principals_version.fetch_add(1, Ordering::SeqCst);
        self.instances_version.fetch_add(1, Ordering::SeqCst);
        self.access_changed();
    }

    fn access_changed(&self) {
        self.access.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// `version` while the copies may be used.
    fn version(&self, version: &AtomicU64) -> Option<u64> {
        self.listening
            .load(Ordering::SeqCst)
            .then(|| version.load(Ordering::SeqCst))
    }
}

/// Follows the backend's notices for the store until either is gone.
async fn follow(inner: Weak<Inner>, mut notices: mpsc::UnboundedReceiver<Notice>) {
    while let Some(notice) = notices.recv().await {
        let Some(inner) = inner.upgrade() else {
            return;
        };
        match notice {
            Notice::Committed(touched) => inner.invalidate(&touched),
            Notice::Lost => {
                inner.listening.store(false, Ordering::SeqCst);
                inner.forget_all();
                inner.listener_losses.fetch_add(1, Ordering::SeqCst);
            }
            Notice::Listening => {
                // What was committed while nobody listened: the revision tells agents, and
                // every copy goes.
                let mut wait = Duration::from_millis(100);
                let revision = loop {
                    let read = async { inner.backend.read().await?.revision().await };
                    match read.await {
                        Ok(revision) => break revision,
                        Err(e) => {
                            tracing::warn!(error = %e, "Cannot read the policy revision again; retrying");
                            tokio::time::sleep(wait).await;
                            wait = (wait * 2).min(Duration::from_secs(5));
                        }
                    }
                };
                inner.publish(revision);
                inner.forget_all();
                inner.listening.store(true, Ordering::SeqCst);
            }
        }
    }
}

impl Store {
    /// The store over `backend` (and, for a database other processes write to, a task that
    /// follows their commits).
    pub async fn new(backend: impl Backend) -> Result<Self> {
        let current = backend.read().await?.revision().await?;
        let (revision, _) = watch::channel(current);
        let (access, _) = watch::channel(0);
        let notices = backend.notices();
        let inner = Arc::new(Inner {
            backend: Box::new(backend),
            revision,
            access,
            principals_version: AtomicU64::new(1),
            instances_version: AtomicU64::new(1),
            listening: AtomicBool::new(true),
            shared: notices.is_some(),
            policy: tokio::sync::Mutex::new(None),
            instances: Mutex::new(None),
            principals: Mutex::new((0, HashMap::new())),
            reads: AtomicU64::new(0),
            policy_loads: AtomicU64::new(0),
            listener_losses: AtomicU64::new(0),
            reports: Mutex::new(Vec::new()),
            report_turn: tokio::sync::Mutex::new(()),
        });
        if let Some(notices) = notices {
            tokio::spawn(follow(Arc::downgrade(&inner), notices));
        }
        Ok(Self { inner })
    }

    async fn read(&self) -> Result<Box<dyn Rows>> {
        self.inner.reads.fetch_add(1, Ordering::Relaxed);
        self.inner.backend.read().await
    }

    async fn write(&self) -> Result<Box<dyn Transaction>> {
        self.inner.backend.write().await
    }

    /// What this store has done (reads, loads of the policy view, notices).
    pub fn stats(&self) -> StoreStats {
        let inner = &self.inner;
        StoreStats {
            reads: inner.reads.load(Ordering::Relaxed),
            policy_loads: inner.policy_loads.load(Ordering::Relaxed),
            listening: inner.shared.then(|| inner.listening.load(Ordering::SeqCst)),
            listener_losses: inner.listener_losses.load(Ordering::SeqCst),
        }
    }

    /// Commits a change that is not audited (sessions, agent reports, login attempts),
    /// announcing what it touched.
    async fn commit_touching(&self, mut tx: Box<dyn Transaction>, touched: Touched) -> Result<()> {
        if !touched.is_empty() {
            tx.announce(&touched).await?;
        }
        tx.commit().await?;
        self.inner.invalidate(&touched);
        Ok(())
    }

    /// Appends the change's audit event, bumps the revision if agents care, commits, and
    /// tells the revision's subscribers.
    async fn commit(
        &self,
        mut tx: Box<dyn Transaction>,
        actor: &Actor,
        change: Change,
    ) -> Result<()> {
        tx.insert_audit(&NewAuditEvent {
            project_id: change.project,
            actor,
            action: change.action.name(),
            target_type: change.action.target_type(),
            target_id: Some(change.target),
            summary: change.summary,
            created_at: now_ms(),
        })
        .await?;
        let revision = match change.action.moves_revision() {
            true => Some(tx.bump_revision().await?),
            false => None,
        };
        let touched = Touched {
            revision,
            principals: change.action.touches_principals(),
            instances: revision.is_some(),
        };
        self.commit_touching(tx, touched).await
    }

    /// `snapshot`'s value if it was read at `version`, else what `load` reads (kept for the
    /// next caller while copies may be used).
    async fn snapshot<T>(
        &self,
        snapshot: &Snapshot<T>,
        version: Option<u64>,
        load: impl Future<Output = Result<T>>,
    ) -> Result<Arc<T>> {
        if let Some(version) = version {
            if let Some((v, value)) = &*snapshot.lock().unwrap_or_else(|e| e.into_inner()) {
                if *v == version {
                    return Ok(value.clone());
                }
            }
        }
        let value = Arc::new(load.await?);
        if let Some(version) = version {
            *snapshot.lock().unwrap_or_else(|e| e.into_inner()) = Some((version, value.clone()));
        }
        Ok(value)
    }

    /// Every group and instance in one snapshot, with its revision.
    async fn load_policy(&self) -> Result<Arc<PolicyView>> {
        self.inner.policy_loads.fetch_add(1, Ordering::Relaxed);
        let mut rows = self.read().await?;
        let view = PolicyView {
            revision: rows.revision().await?,
            groups: rows.groups(None).await?,
            instances: rows.instances(None).await?,
        };
        // A revision committed elsewhere, not yet announced: agents may have it now.
        self.inner.publish(view.revision);
        Ok(Arc::new(view))
    }

    /// The policy view at the revision known now, or a later one.
    async fn policy(&self) -> Result<Arc<PolicyView>> {
        if !self.inner.listening.load(Ordering::SeqCst) {
            return self.load_policy().await;
        }
        let wanted = *self.inner.revision.borrow();
        let mut slot = self.inner.policy.lock().await;
        if let Some(view) = slot.as_ref().filter(|v| v.revision >= wanted) {
            return Ok(view.clone());
        }
        let view = self.load_policy().await?;
        *slot = Some(view.clone());
        Ok(view)
    }

    /// Every instance of every project, with what agents last reported.
    async fn all_instances(&self) -> Result<Arc<Vec<Instance>>> {
        let load = async { self.read().await?.instances(None).await };
        let version = self.inner.version(&self.inner.instances_version);
        self.snapshot(&self.inner.instances, version, load).await
    }

    /// An instance as committed.
    async fn committed_instance(&self, id: Uuid) -> Result<Instance> {
        self.read()
            .await?
            .instance(id)
            .await?
            .ok_or_else(|| not_found("instance"))
    }

    /// On an empty store: creates the `default` project (with its `default` group) and the
    /// administrator `admin` with `admin_password_hash`. Otherwise changes nothing.
    pub async fn bootstrap(&self, admin_password_hash: &str) -> Result<Bootstrap> {
        let mut tx = self.write().await?;
        let project = tx
            .projects()
            .await?
            .into_iter()
            .find(|p| p.name == DEFAULT_PROJECT);
        let admin = tx.user_by_name(ADMIN).await?;
        if let (Some(project), Some((admin, _))) = (&project, &admin) {
            return Ok(Bootstrap {
                created: false,
                default_project: project.id,
                admin: admin.id,
            });
        }
        if !tx.users().await?.is_empty() {
            return Err(StoreError::Corrupt(
                "the store has users but no admin and default project".into(),
            ));
        }
        let now = now_ms();
        let project = Project {
            id: Uuid::new_v4(),
            name: DEFAULT_PROJECT.to_owned(),
            description: "Default project".to_owned(),
            created_at: now,
        };
        let admin = User {
            id: Uuid::new_v4(),
            name: ADMIN.to_owned(),
            is_admin: true,
            created_at: now,
            memberships: Vec::new(),
        };
        tx.insert_project(&project).await?;
        tx.insert_user(&admin, admin_password_hash).await?;
        tx.set_membership(project.id, admin.id, Role::Admin).await?;
        insert_group(&mut *tx, project.id, &default_group(GroupId::random()), now).await?;
        let system = Actor {
            name: "system".into(),
            source: None,
        };
        let change = Change::new(
            Action::ProjectCreate,
            Some(project.id),
            project.id,
            "default project and admin user created",
        );
        self.commit(tx, &system, change).await?;
        Ok(Bootstrap {
            created: true,
            default_project: project.id,
            admin: admin.id,
        })
    }

    // ---- users, tokens and sessions ----

    /// The user called `name` and its password hash.
    pub async fn user_auth(&self, name: &str) -> Result<Option<(User, String)>> {
        self.read().await?.user_by_name(name).await
    }

    pub async fn user(&self, id: Uuid) -> Result<User> {
        self.read()
            .await?
            .user(id)
            .await?
            .ok_or_else(|| not_found("user"))
    }

    /// Every user, by name.
    pub async fn list_users(&self) -> Result<Vec<User>> {
        self.read().await?.users().await
    }

    pub async fn create_user(
        &self,
        actor: &Actor,
        name: &str,
        password_hash: &str,
        is_admin: bool,
    ) -> Result<User> {
        let mut tx = self.write().await?;
        if tx.user_by_name(name).await?.is_some() {
            return Err(conflict(
                "duplicate_user_name",
                Some("name"),
                format!("a user named {name:?} already exists"),
            ));
        }
        let user = User {
            id: Uuid::new_v4(),
            name: name.to_owned(),
            is_admin,
            created_at: now_ms(),
            memberships: Vec::new(),
        };
        tx.insert_user(&user, password_hash).await?;
        let administrator = if is_admin { " (administrator)" } else { "" };
        let change = Change::new(
            Action::UserCreate,
            None,
            user.id,
            format!("user {name}{administrator}"),
        );
        self.commit(tx, actor, change).await?;
        Ok(user)
    }

    /// Deletes a user with its memberships, tokens and sessions; `admin` cannot be deleted.
    pub async fn delete_user(&self, actor: &Actor, id: Uuid) -> Result<()> {
        let mut tx = self.write().await?;
        let user = tx.user(id).await?.ok_or_else(|| not_found("user"))?;
        if user.name == ADMIN {
            return Err(conflict(
                "admin_undeletable",
                None,
                "the admin user cannot be deleted".into(),
            ));
        }
        tx.delete_user(id).await?;
        let change = Change::new(Action::UserDelete, None, id, format!("user {}", user.name));
        self.commit(tx, actor, change).await
    }

    /// Replaces a user's password hash and ends its console sessions.
    pub async fn set_password(&self, actor: &Actor, id: Uuid, password_hash: &str) -> Result<()> {
        let mut tx = self.write().await?;
        if tx.user(id).await?.is_none() {
            return Err(not_found("user"));
        }
        tx.set_password_hash(id, password_hash).await?;
        tx.delete_sessions(Sessions::User(id)).await?;
        let change = Change::new(Action::UserPassword, None, id, "password changed");
        self.commit(tx, actor, change).await
    }

    /// Gives `user` `role` in `project` (a member already: its new role).
    pub async fn set_membership(
        &self,
        actor: &Actor,
        project: Uuid,
        user: Uuid,
        role: Role,
    ) -> Result<()> {
        let mut tx = self.write().await?;
        let project_exists = tx.projects().await?.iter().any(|p| p.id == project);
        if !project_exists || tx.user(user).await?.is_none() {
            return Err(not_found("user or project"));
        }
        tx.set_membership(project, user, role).await?;
        let change = Change::new(
            Action::MembershipSet,
            Some(project),
            user,
            format!("role {}", role.as_str()),
        );
        self.commit(tx, actor, change).await
    }

    pub async fn remove_membership(&self, actor: &Actor, project: Uuid, user: Uuid) -> Result<()> {
        let mut tx = self.write().await?;
        if !tx.delete_membership(project, user).await? {
            return Err(not_found("membership"));
        }
        let change = Change::new(
            Action::MembershipDelete,
            Some(project),
            user,
            "removed from the project",
        );
        self.commit(tx, actor, change).await
    }

    /// Records an API token of `user` (only its hash is kept).
    pub async fn create_api_token(
        &self,
        actor: &Actor,
        user: Uuid,
        name: &str,
        token_hash: &str,
    ) -> Result<ApiToken> {
        let mut tx = self.write().await?;
        if tx.user(user).await?.is_none() {
            return Err(not_found("user"));
        }
        let token = ApiToken {
            id: Uuid::new_v4(),
            user_id: user,
            name: name.to_owned(),
            created_at: now_ms(),
        };
        tx.insert_api_token(&token, token_hash).await?;
        let change = Change::new(
            Action::TokenCreate,
            None,
            token.id,
            format!("API token {name:?}"),
        );
        self.commit(tx, actor, change).await?;
        Ok(token)
    }

    /// A user's API tokens, oldest first.
    pub async fn list_api_tokens(&self, user: Uuid) -> Result<Vec<ApiToken>> {
        self.read().await?.api_tokens(user).await
    }

    pub async fn delete_api_token(&self, actor: &Actor, user: Uuid, id: Uuid) -> Result<()> {
        let mut tx = self.write().await?;
        if !tx.delete_api_token(user, id).await? {
            return Err(not_found("token"));
        }
        let change = Change::new(Action::TokenDelete, None, id, "API token revoked");
        self.commit(tx, actor, change).await
    }

    /// Who the bearer token with this hash belongs to: a user's API token, else an instance's
    /// agent token.
    pub async fn principal_by_token(&self, token_hash: &str) -> Result<Option<Principal>> {
        let version = self.inner.version(&self.inner.principals_version);
        if let Some(version) = version {
            let cache = self
                .inner
                .principals
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if cache.0 == version {
                if let Some(found) = cache.1.get(token_hash) {
                    return Ok(found.clone());
                }
            }
        }
        let mut rows = self.read().await?;
        let found = match rows.token_user(token_hash).await? {
            Some(user) => Some(Principal::User(user)),
            None => rows
                .agent_token(token_hash)
                .await?
                .map(|(instance_id, project_id)| Principal::Agent {
                    instance_id,
                    project_id,
                }),
        };
        if let Some(version) = version {
            let mut cache = self
                .inner
                .principals
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if cache.0 != version || cache.1.len() >= PRINCIPAL_CACHE {
                *cache = (version, HashMap::new());
            }
            cache.1.insert(token_hash.to_owned(), found.clone());
        }
        Ok(found)
    }

    /// Starts a console session (and forgets the expired ones).
    pub async fn create_session(
        &self,
        user: Uuid,
        token_hash: &str,
        csrf_token: &str,
        expires_at: i64,
    ) -> Result<()> {
        let now = now_ms();
        let mut tx = self.write().await?;
        tx.delete_sessions(Sessions::ExpiredBefore(now)).await?;
        tx.insert_session(user, token_hash, csrf_token, now, expires_at)
            .await?;
        self.commit_touching(tx, Touched::default()).await
    }

    /// The session with this token hash if it is still valid at `now`.
    pub async fn session(&self, token_hash: &str, now: i64) -> Result<Option<Session>> {
        let session = self.read().await?.session(token_hash).await?;
        Ok(session.filter(|s| s.expires_at > now))
    }

    pub async fn delete_session(&self, token_hash: &str) -> Result<()> {
        let mut tx = self.write().await?;
        tx.delete_sessions(Sessions::Token(token_hash)).await?;
        self.commit_touching(tx, Touched::default()).await
    }

    // ---- login throttling and periodic clean-up ----

    /// A login attempt for `keys` (a user name, a source address…) starts at `now`:
    /// `Ok(Err(seconds to wait))` while any key is refused under `limits`; otherwise the
    /// attempt counts as a failure of every key until [`Store::login_succeeded`]. The counts are
    /// in the database, in serialized transactions: they hold across processes sharing it.
    pub async fn login_attempt(
        &self,
        limits: &Limits,
        keys: &[String],
        now: i64,
    ) -> Result<Result<(), u64>> {
        let mut tx = self.write().await?;
        let known: HashMap<String, Attempts> = tx.login_attempts(keys).await?.into_iter().collect();
        let wait = keys
            .iter()
            .filter_map(|k| limits.check(known.get(k)?, now).err())
            .max();
        if let Some(wait) = wait {
            return Ok(Err(wait));
        }
        for key in keys {
            let attempts = limits.begin(known.get(key).copied(), now);
            tx.put_login_attempts(key, &attempts).await?;
        }
        self.commit_touching(tx, Touched::default()).await?;
        Ok(Ok(()))
    }

    /// The attempt failed: returns the lockout it started, if it did (the longest of the
    /// keys').
    pub async fn login_failed(
        &self,
        limits: &Limits,
        keys: &[String],
        now: i64,
    ) -> Result<Option<Duration>> {
        let mut tx = self.write().await?;
        let mut started = None;
        for (key, attempts) in tx.login_attempts(keys).await? {
            let (after, lock) = limits.failed(attempts, now);
            tx.put_login_attempts(&key, &after).await?;
            started = started.max(lock);
        }
        self.commit_touching(tx, Touched::default()).await?;
        Ok(started)
    }

    /// The attempt succeeded: `forget`'s attempts and lockouts are forgotten (the user's), the
    /// attempt no longer counts for `keys` (the source address's).
    pub async fn login_succeeded(
        &self,
        limits: &Limits,
        forget: &str,
        keys: &[String],
    ) -> Result<()> {
        let mut tx = self.write().await?;
        tx.delete_login_attempts(LoginAttempts::Key(forget)).await?;
        for (key, attempts) in tx.login_attempts(keys).await? {
            tx.put_login_attempts(&key, &limits.succeeded(attempts))
                .await?;
        }
        self.commit_touching(tx, Touched::default()).await
    }

    /// The periodic clean-up at `now`: expired sessions, login attempts `limits` no longer
    /// need. Done by the one process that leads among those sharing the database (see
    /// [`Backend::lead`]); returns whether this one did it.
    pub async fn janitor(&self, limits: &Limits, now: i64) -> Result<bool> {
        if !self.inner.backend.lead().await? {
            return Ok(false);
        }
        let memory = i64::try_from(limits.memory().as_millis()).unwrap_or(i64::MAX);
        let mut tx = self.write().await?;
        tx.delete_sessions(Sessions::ExpiredBefore(now)).await?;
        tx.delete_login_attempts(LoginAttempts::IdleSince(now.saturating_sub(memory)))
            .await?;
        let forgotten = tx
            .delete_gateway_tokens(now.saturating_sub(GATEWAY_TOKEN_KEPT))
            .await?;
        // A forgotten token refuses the tunnels still open with it: they are rechecked.
        let touched = Touched {
            principals: forgotten > 0,
            ..Touched::default()
        };
        self.commit_touching(tx, touched).await?;
        Ok(true)
    }

    // ---- projects ----

    /// The visible projects, by name.
    pub async fn list_projects(&self, visible: &[Uuid]) -> Result<Vec<Project>> {
        let mut projects = self.read().await?.projects().await?;
        projects.retain(|p| visible.contains(&p.id));
        Ok(projects)
    }

    pub async fn project(&self, visible: &[Uuid], id: Uuid) -> Result<Project> {
        if !visible.contains(&id) {
            return Err(not_found("project"));
        }
        self.list_projects(&[id])
            .await?
            .pop()
            .ok_or_else(|| not_found("project"))
    }

    /// Creates a project with its `default` group, and makes `owner` its admin.
    pub async fn create_project(
        &self,
        actor: &Actor,
        name: &str,
        description: &str,
        owner: Uuid,
    ) -> Result<Project> {
        let mut tx = self.write().await?;
        if tx.projects().await?.iter().any(|p| p.name == name) {
            return Err(conflict(
                "duplicate_project_name",
                Some("name"),
                format!("a project named {name:?} already exists"),
            ));
        }
        let now = now_ms();
        let project = Project {
            id: Uuid::new_v4(),
            name: name.to_owned(),
            description: description.to_owned(),
            created_at: now,
        };
        tx.insert_project(&project).await?;
        tx.set_membership(project.id, owner, Role::Admin).await?;
        insert_group(&mut *tx, project.id, &default_group(GroupId::random()), now).await?;
        let change = Change::new(
            Action::ProjectCreate,
            Some(project.id),
            project.id,
            format!("project {name}"),
        );
        self.commit(tx, actor, change).await?;
        Ok(project)
    }

    /// Deletes a project and everything in it; `default` cannot be deleted.
    pub async fn delete_project(&self, actor: &Actor, id: Uuid) -> Result<()> {
        let mut tx = self.write().await?;
        let project = tx
            .projects()
            .await?
            .into_iter()
            .find(|p| p.id == id)
            .ok_or_else(|| not_found("project"))?;
        if project.name == DEFAULT_PROJECT {
            return Err(conflict(
                "default_project_undeletable",
                None,
                "the default project cannot be deleted".into(),
            ));
        }
        tx.delete_project(id).await?;
        let change = Change::new(
            Action::ProjectDelete,
            None,
            id,
            format!("project {}", project.name),
        );
        self.commit(tx, actor, change).await
    }

    // ---- security groups and rules ----

    /// The visible groups, oldest first, with their rules.
    pub async fn list_groups(&self, visible: &[Uuid]) -> Result<Vec<GroupRecord>> {
        let view = self.policy().await?;
        Ok(in_view(&view.groups, visible).cloned().collect())
    }

    pub async fn group(&self, visible: &[Uuid], id: GroupId) -> Result<GroupRecord> {
        let view = self.policy().await?;
        let found = in_view(&view.groups, visible)
            .find(|g| g.group.id == id)
            .cloned();
        found.ok_or_else(|| not_found("security group"))
    }

    /// Creates an empty group; its name must be new in the project and within the quota.
    pub async fn create_group(
        &self,
        actor: &Actor,
        project: Uuid,
        name: &str,
        description: &str,
        quota: Quota,
    ) -> Result<GroupRecord> {
        let mut tx = self.write().await?;
        let existing = tx.groups(Some(project)).await?;
        let names: Vec<&str> = existing.iter().map(|g| g.group.name.as_str()).collect();
        validate_group(name, description, &names, quota)?;
        let group = SecurityGroup {
            id: GroupId::random(),
            name: name.to_owned(),
            description: description.to_owned(),
            rules: Vec::new(),
        };
        insert_group(&mut *tx, project, &group, now_ms()).await?;
        let change = Change::new(
            Action::GroupCreate,
            Some(project),
            group.id,
            format!("security group {name}"),
        );
        self.commit(tx, actor, change).await?;
        self.group(&[project], group.id).await
    }

    /// Deletes a group: not `default`, not one attached to an instance, not one another
    /// group's rule names as its remote.
    pub async fn delete_group(&self, actor: &Actor, id: GroupId) -> Result<()> {
        let mut tx = self.write().await?;
        let record = tx
            .group(id)
            .await?
            .ok_or_else(|| not_found("security group"))?;
        check_group_deletable(&record.group)?;
        let name = &record.group.name;
        let attached = tx.group_attachments(id).await?;
        if !attached.is_empty() {
            return Err(conflict(
                "group_in_use",
                None,
                format!(
                    "security group {name:?} is attached to instance(s) {}",
                    attached.join(", ")
                ),
            ));
        }
        let referrers = tx.group_referrers(id).await?;
        if !referrers.is_empty() {
            return Err(conflict(
                "group_in_use",
                None,
                format!(
                    "rules of security group(s) {} refer to {name:?} as their remote",
                    referrers.join(", ")
                ),
            ));
        }
        tx.delete_group(id).await?;
        let change = Change::new(
            Action::GroupDelete,
            Some(record.project_id),
            id,
            format!("security group {name}"),
        );
        self.commit(tx, actor, change).await
    }

    pub async fn rule(&self, visible: &[Uuid], id: RuleId) -> Result<RuleRecord> {
        self.read()
            .await?
            .rule(id)
            .await?
            .filter(|r| visible.contains(&r.project_id))
            .ok_or_else(|| not_found("security group rule"))
    }

    /// Validates `spec` (duplicates and the project's rule quota included) and adds the rule.
    pub async fn create_rule(
        &self,
        actor: &Actor,
        group: GroupId,
        spec: &RuleSpec,
        quota: Quota,
    ) -> Result<(RuleRecord, Vec<Note>)> {
        let mut tx = self.write().await?;
        let project = tx
            .group(group)
            .await?
            .ok_or_else(|| not_found("security group"))?
            .project_id;
        let groups = tx.groups(Some(project)).await?;
        let current = groups
            .iter()
            .find(|g| g.group.id == group)
            .ok_or_else(|| not_found("security group"))?;
        // In a block: the context is not `Send`, and the future must be.
        let accepted = {
            let exists = |id: GroupId| groups.iter().any(|g| g.group.id == id);
            let ctx = RuleContext {
                group: &current.group,
                group_exists: &exists,
                project_rules: groups.iter().map(|g| g.group.rules.len()).sum(),
                quota,
            };
            validate_rule(spec, &ctx, RuleId::random())?
        };
        let now = now_ms();
        tx.insert_rule(project, &accepted.rule, now).await?;
        let change = Change::new(
            Action::RuleCreate,
            Some(project),
            accepted.rule.id,
            format!("{}: {}", current.group.name, rule_summary(&accepted.rule)),
        );
        self.commit(tx, actor, change).await?;
        Ok((
            RuleRecord {
                project_id: project,
                rule: accepted.rule,
                created_at: now,
            },
            accepted.notes,
        ))
    }

    pub async fn delete_rule(&self, actor: &Actor, id: RuleId) -> Result<()> {
        let mut tx = self.write().await?;
        let record = tx
            .rule(id)
            .await?
            .ok_or_else(|| not_found("security group rule"))?;
        let group = tx
            .group(record.rule.group)
            .await?
            .ok_or_else(|| StoreError::Corrupt(format!("rule {id} without its group")))?;
        tx.delete_rule(id).await?;
        let change = Change::new(
            Action::RuleDelete,
            Some(record.project_id),
            id,
            format!("{}: {}", group.group.name, rule_summary(&record.rule)),
        );
        self.commit(tx, actor, change).await
    }

    // ---- instances ----

    /// The visible instances, oldest first.
    pub async fn list_instances(&self, visible: &[Uuid]) -> Result<Vec<Instance>> {
        let all = self.all_instances().await?;
        Ok(in_view(&all, visible).cloned().collect())
    }

    pub async fn instance(&self, visible: &[Uuid], id: Uuid) -> Result<Instance> {
        let all = self.all_instances().await?;
        let found = in_view(&all, visible).find(|i| i.id == id).cloned();
        found.ok_or_else(|| not_found("instance"))
    }

    /// Creates an instance with Remote Desktop off and NLA only on, in the given groups (each
    /// once, in the given order) or else the project's `default` group.
    pub async fn create_instance(&self, actor: &Actor, new: &NewInstance) -> Result<Instance> {
        let project = new.project_id;
        let mut tx = self.write().await?;
        let project_groups = tx.groups(Some(project)).await?;
        let mut groups: Vec<GroupId> = Vec::new();
        if new.groups.is_empty() {
            let default = project_groups
                .iter()
                .find(|g| g.group.name == DEFAULT_GROUP)
                .ok_or_else(|| not_found("default security group"))?;
            groups.push(default.group.id);
        }
        for g in &new.groups {
            if !project_groups.iter().any(|p| p.group.id == *g) {
                return Err(conflict(
                    "security_group_not_found",
                    Some("security_groups"),
                    format!("security group {g} does not exist in this project"),
                ));
            }
            if !groups.contains(g) {
                groups.push(*g);
            }
        }
        let taken = tx.instances(Some(project)).await?;
        if taken.iter().any(|i| i.name == new.name) {
            return Err(conflict(
                "duplicate_instance_name",
                Some("name"),
                format!(
                    "an instance named {:?} already exists in this project",
                    new.name
                ),
            ));
        }
        let instance = Instance {
            id: Uuid::new_v4(),
            project_id: project,
            name: new.name.clone(),
            public_address: new.public_address,
            public_rdp_port: new.public_rdp_port,
            internal_address: new.internal_address,
            rdp_port: new.rdp_port,
            groups: Vec::new(),
            rdp_enabled: false,
            rdp_nla_only: true,
            rdp_gateway: true,
            cert_fingerprint: None,
            agent_seen_at: None,
            agent_revision: None,
            created_at: now_ms(),
        };
        tx.insert_instance(&instance, &new.agent_token_hash).await?;
        for g in groups {
            tx.attach_group(instance.id, g).await?;
        }
        let change = Change::new(
            Action::InstanceCreate,
            Some(project),
            instance.id,
            format!("instance {} at {}", new.name, new.public_address),
        );
        self.commit(tx, actor, change).await?;
        self.committed_instance(instance.id).await
    }

    pub async fn delete_instance(&self, actor: &Actor, id: Uuid) -> Result<()> {
        let mut tx = self.write().await?;
        let instance = tx
            .instance(id)
            .await?
            .ok_or_else(|| not_found("instance"))?;
        tx.delete_instance(id).await?;
        let change = Change::new(
            Action::InstanceDelete,
            Some(instance.project_id),
            id,
            format!("instance {}", instance.name),
        );
        self.commit(tx, actor, change).await
    }

    /// Switches *Allow remote connections*, *NLA only* and *Gateway access*; `None` keeps a
    /// switch as it is.
    pub async fn set_remote_desktop(
        &self,
        actor: &Actor,
        id: Uuid,
        enabled: Option<bool>,
        nla_only: Option<bool>,
        gateway: Option<bool>,
    ) -> Result<Instance> {
        let mut tx = self.write().await?;
        let before = tx
            .instance(id)
            .await?
            .ok_or_else(|| not_found("instance"))?;
        let after = Instance {
            rdp_enabled: enabled.unwrap_or(before.rdp_enabled),
            rdp_nla_only: nla_only.unwrap_or(before.rdp_nla_only),
            rdp_gateway: gateway.unwrap_or(before.rdp_gateway),
            ..before.clone()
        };
        tx.update_instance(&after).await?;
        let summary = format!(
            "{}: remote connections {} -> {}, NLA only {} -> {}, gateway access {} -> {}",
            before.name,
            on_off(before.rdp_enabled),
            on_off(after.rdp_enabled),
            on_off(before.rdp_nla_only),
            on_off(after.rdp_nla_only),
            on_off(before.rdp_gateway),
            on_off(after.rdp_gateway)
        );
        let change = Change::new(
            Action::InstanceRemoteDesktop,
            Some(before.project_id),
            id,
            summary,
        );
        self.commit(tx, actor, change).await?;
        self.committed_instance(id).await
    }

    /// Attaches a group of the instance's project after its other groups.
    pub async fn attach_group(&self, actor: &Actor, id: Uuid, group: GroupId) -> Result<Instance> {
        let mut tx = self.write().await?;
        let instance = tx
            .instance(id)
            .await?
            .ok_or_else(|| not_found("instance"))?;
        let name = tx
            .group(group)
            .await?
            .filter(|g| g.project_id == instance.project_id)
            .ok_or_else(|| not_found("security group"))?
            .group
            .name;
        if instance.groups.iter().any(|(g, _)| *g == group) {
            return Err(conflict(
                "already_attached",
                Some("security_group_id"),
                format!("security group {name:?} is already attached"),
            ));
        }
        tx.attach_group(id, group).await?;
        let change = Change::new(
            Action::InstanceAttachGroup,
            Some(instance.project_id),
            id,
            format!("{}: security group {name} attached", instance.name),
        );
        self.commit(tx, actor, change).await?;
        self.committed_instance(id).await
    }

    pub async fn detach_group(&self, actor: &Actor, id: Uuid, group: GroupId) -> Result<Instance> {
        let mut tx = self.write().await?;
        let instance = tx
            .instance(id)
            .await?
            .ok_or_else(|| not_found("instance"))?;
        let Some((_, name)) = instance.groups.iter().find(|(g, _)| *g == group) else {
            return Err(not_found("attached security group"));
        };
        tx.detach_group(id, group).await?;
        let change = Change::new(
            Action::InstanceDetachGroup,
            Some(instance.project_id),
            id,
            format!("{}: security group {name} detached", instance.name),
        );
        self.commit(tx, actor, change).await?;
        self.committed_instance(id).await
    }

    /// An agent's report: its certificate fingerprint (RDP server) and enforced revision;
    /// what it leaves out stays as last reported.
    ///
    /// Reports are written beside the serialized changes ([`Backend::status_write`]) and in
    /// batches: when thousands of agents report the revision a change brought them, they do
    /// not queue ahead of the next change, and they cost a few transactions, not thousands.
    /// Whoever holds the writer's turn writes every report waiting then, its own included.
    pub async fn report_agent(
        &self,
        id: Uuid,
        fingerprint: Option<&str>,
        revision: Option<u64>,
    ) -> Result<()> {
        let (answer, answered) = tokio::sync::oneshot::channel();
        let report = AgentReport {
            instance: id,
            fingerprint: fingerprint.map(str::to_owned),
            revision,
            seen_at: now_ms(),
        };
        lock(&self.inner.reports).push((report, answer));
        {
            let _turn = self.inner.report_turn.lock().await;
            let batch = std::mem::take(&mut *lock(&self.inner.reports));
            if !batch.is_empty() {
                // In a task of its own: a caller that goes away does not take the others'
                // reports with it.
                let store = self.clone();
                let _ = tokio::spawn(async move { store.write_reports(batch).await }).await;
            }
        }
        answered.await.unwrap_or(Err(StoreError::Corrupt(
            "the report was not written".into(),
        )))
    }

    /// Writes `batch` in one transaction; if that fails, each report alone, so each gets its
    /// own answer.
    async fn write_reports(&self, batch: Vec<(AgentReport, Answer)>) {
        let reports: Vec<&AgentReport> = batch.iter().map(|(r, _)| r).collect();
        match self.write_report_batch(&reports).await {
            Ok(found) => {
                for ((_, answer), found) in batch.into_iter().zip(found) {
                    let _ = answer.send(found.then_some(()).ok_or_else(|| not_found("instance")));
                }
            }
            Err(_) if batch.len() > 1 => {
                for (report, answer) in batch {
                    let result = self.write_report_batch(&[&report]).await.and_then(|found| {
                        found[0].then_some(()).ok_or_else(|| not_found("instance"))
                    });
                    let _ = answer.send(result);
                }
            }
            Err(e) => {
                if let Some((_, answer)) = batch.into_iter().next() {
                    let _ = answer.send(Err(e));
                }
            }
        }
    }

    /// For each report, whether its instance exists.
    async fn write_report_batch(&self, reports: &[&AgentReport]) -> Result<Vec<bool>> {
        let mut tx = self.inner.backend.status_write().await?;
        let mut found = Vec::with_capacity(reports.len());
        for report in reports {
            found.push(tx.report_agent(report).await?);
        }
        let touched = Touched {
            instances: found.contains(&true),
            ..Touched::default()
        };
        self.commit_touching(tx, touched).await?;
        Ok(found)
    }

    // ---- the RD Gateway ----

    /// Mints an RD Gateway token for `user` to reach `instance` for `ttl` (30 s to 1 h): the
    /// record and the secret, shown once (only its hash is kept). Refused while the instance's
    /// remote connections or gateway access are off, or if `user` is not a member of its
    /// project (the gateway would refuse the token). Reusable until it expires: one client run
    /// opens several tunnels with it (NLA fallback, reconnection, redirection).
    pub async fn mint_gateway_token(
        &self,
        actor: &Actor,
        user: Uuid,
        instance: Uuid,
        ttl: Duration,
    ) -> Result<(GatewayToken, String)> {
        if !(GATEWAY_TOKEN_MIN_TTL..=GATEWAY_TOKEN_MAX_TTL).contains(&ttl) {
            return Err(conflict(
                "invalid_ttl",
                Some("ttl_seconds"),
                format!(
                    "a gateway token lives {} to {} seconds",
                    GATEWAY_TOKEN_MIN_TTL.as_secs(),
                    GATEWAY_TOKEN_MAX_TTL.as_secs()
                ),
            ));
        }
        let mut tx = self.write().await?;
        let instance = tx
            .instance(instance)
            .await?
            .ok_or_else(|| not_found("instance"))?;
        let user = tx.user(user).await?.ok_or_else(|| not_found("user"))?;
        if user.role_in(instance.project_id).is_none() {
            return Err(conflict(
                "not_a_member",
                None,
                format!(
                    "user {} is not a member of instance {}'s project",
                    user.name, instance.name
                ),
            ));
        }
        if !instance.rdp_enabled {
            return Err(conflict(
                "remote_desktop_off",
                None,
                format!("remote connections to {} are switched off", instance.name),
            ));
        }
        if !instance.rdp_gateway {
            return Err(conflict(
                "gateway_access_off",
                None,
                format!("gateway access to {} is switched off", instance.name),
            ));
        }
        let (secret, hash) = new_gateway_secret();
        let now = now_ms();
        let millis = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        let token = GatewayToken {
            id: Uuid::new_v4(),
            user_id: user.id,
            user_name: Some(user.name.clone()),
            instance_id: instance.id,
            created_at: now,
            expires_at: now.saturating_add(millis),
            revoked_at: None,
        };
        tx.insert_gateway_token(&token, &hash).await?;
        let change = Change::new(
            Action::InstanceRdpToken,
            Some(instance.project_id),
            instance.id,
            format!(
                "{}: gateway token {} for {}, valid {} s",
                instance.name,
                token.id,
                user.name,
                ttl.as_secs()
            ),
        );
        self.commit(tx, actor, change).await?;
        Ok((token, secret))
    }

    /// A visible instance's RD Gateway tokens (revoked and expired ones included, until the
    /// janitor forgets them), oldest first.
    pub async fn list_gateway_tokens(
        &self,
        visible: &[Uuid],
        instance: Uuid,
    ) -> Result<Vec<GatewayToken>> {
        let instance = self.instance(visible, instance).await?;
        self.read().await?.gateway_tokens(instance.id).await
    }

    /// An RD Gateway token of a visible instance.
    pub async fn gateway_token(&self, visible: &[Uuid], id: Uuid) -> Result<GatewayToken> {
        let token = self
            .read()
            .await?
            .gateway_token(id)
            .await?
            .ok_or_else(|| not_found("gateway token"))?;
        self.instance(visible, token.instance_id)
            .await
            .map_err(|_| not_found("gateway token"))?;
        Ok(token)
    }

    /// Revokes an RD Gateway token of a visible instance: it opens no more tunnels, and those
    /// open with it are cut when they are rechecked ([`Store::access_changes`]).
    pub async fn revoke_gateway_token(
        &self,
        actor: &Actor,
        visible: &[Uuid],
        id: Uuid,
    ) -> Result<GatewayToken> {
        let mut tx = self.write().await?;
        let token = tx
            .gateway_token(id)
            .await?
            .ok_or_else(|| not_found("gateway token"))?;
        let instance = tx
            .instance(token.instance_id)
            .await?
            .filter(|i| visible.contains(&i.project_id))
            .ok_or_else(|| not_found("gateway token"))?;
        let now = now_ms();
        if !tx.revoke_gateway_token(id, now).await? {
            return Err(conflict(
                "already_revoked",
                None,
                format!("gateway token {id} is already revoked"),
            ));
        }
        let owner = token
            .user_name
            .clone()
            .unwrap_or_else(|| token.user_id.to_string());
        let change = Change::new(
            Action::InstanceRdpTokenRevoke,
            Some(instance.project_id),
            instance.id,
            format!("{}: gateway token {id} of {owner} revoked", instance.name),
        );
        self.commit(tx, actor, change).await?;
        Ok(GatewayToken {
            revoked_at: Some(now),
            ..token
        })
    }

    /// Whether the RD Gateway may open a tunnel with the token `secret` now: the token is
    /// known, neither revoked nor expired, its instance exists with remote connections and
    /// gateway access on, and its user exists and is a member (any role) of the instance's
    /// project. Read from the database, never from a copy.
    pub async fn gateway_grant(&self, secret: &str) -> Result<Result<GatewayGrant, Refused>> {
        self.gateway_grant_at(secret, now_ms()).await
    }

    /// [`Store::gateway_grant`] as of `now` (Unix milliseconds).
    pub async fn gateway_grant_at(
        &self,
        secret: &str,
        now: i64,
    ) -> Result<Result<GatewayGrant, Refused>> {
        let mut rows = self.read().await?;
        let token = rows.gateway_token_by_hash(&gateway_hash(secret)).await?;
        check_grant(&mut *rows, token, Some(now)).await
    }

    /// Whether a live tunnel opened with token `token_id` may go on: the checks of
    /// [`Store::gateway_grant`] but expiry (a tunnel outlives the time its token could open
    /// one). Revocation, either switch off, the user's removal from the project, and the
    /// user's or the instance's deletion refuse. Ask when [`Store::access_changes`] moves.
    pub async fn recheck_grant(&self, token_id: Uuid) -> Result<Result<GatewayGrant, Refused>> {
        let mut rows = self.read().await?;
        let token = rows.gateway_token(token_id).await?;
        check_grant(&mut *rows, token, None).await
    }

    /// Records what the RD Gateway did in the audit log (an event only: no revision, no
    /// copies touched). The actor is `user` by name (its id if it was deleted; `gateway` when
    /// no user is known, as for an unknown token); `source` is the client's address.
    pub async fn audit_gateway(
        &self,
        user: Option<Uuid>,
        project: Option<Uuid>,
        instance: Option<Uuid>,
        event: GatewayEvent,
        summary: String,
        source: Option<String>,
    ) -> Result<()> {
        let mut tx = self.write().await?;
        let name = match user {
            Some(id) => match tx.user(id).await? {
                Some(user) => user.name,
                None => id.to_string(),
            },
            None => GATEWAY_ACTOR.to_owned(),
        };
        let actor = Actor { name, source };
        tx.insert_audit(&NewAuditEvent {
            project_id: project,
            actor: &actor,
            action: event.action(),
            target_type: "instance",
            target_id: instance.map(|i| i.to_string()),
            summary,
            created_at: now_ms(),
        })
        .await?;
        self.commit_touching(tx, Touched::default()).await
    }

    /// A counter that moves after every commit that can change an RD Gateway grant, made here
    /// or (through the database's notices) by another replica: tokens revoked, users deleted,
    /// memberships changed, anything that moves the policy revision (the remote-desktop and
    /// gateway switches, instances deleted), and whenever commits may have been missed. Agents'
    /// reports do not move it. Live tunnels call [`Store::recheck_grant`] when it moves.
    pub fn access_changes(&self) -> watch::Receiver<u64> {
        self.inner.access.subscribe()
    }

    // ---- audit log and the agents' feed ----

    /// The visible projects' events matching `filter`, newest first (1 to 1000 of them).
    pub async fn list_audit(
        &self,
        visible: &[Uuid],
        filter: &AuditFilter,
    ) -> Result<Vec<AuditEvent>> {
        let filter = AuditFilter {
            limit: filter.limit.clamp(1, AUDIT_LIMIT),
            ..filter.clone()
        };
        self.read().await?.audit(Some(visible), &filter).await
    }

    /// Every event matching `filter`, those that belong to no project (users, tokens, deleted
    /// projects) included, newest first (1 to 1000 of them).
    pub async fn list_audit_all(&self, filter: &AuditFilter) -> Result<Vec<AuditEvent>> {
        let filter = AuditFilter {
            limit: filter.limit.clamp(1, AUDIT_LIMIT),
            ..filter.clone()
        };
        self.read().await?.audit(None, &filter).await
    }

    pub async fn revision(&self) -> Result<u64> {
        Ok(*self.inner.revision.borrow())
    }

    /// A receiver that sees every new revision after a committed change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.revision.subscribe()
    }

    /// The state an agent of `instance` enforces (its instance as the member, the rest of the
    /// project as peers); `None` for a whole project (every instance a member).
    pub async fn agent_state(&self, project: Uuid, instance: Option<Uuid>) -> Result<AgentState> {
        let view = self.policy().await?;
        let project = [project];
        let groups = in_view(&view.groups, &project);
        let instances: Vec<&Instance> = in_view(&view.instances, &project).collect();
        let member = |i: &Instance| Member {
            name: i.name.clone(),
            addresses: vec![i.public_address],
            groups: i.groups.iter().map(|(g, _)| *g).collect(),
            internal: i.internal_address,
            // *Allow remote connections* off: the gateway publishes no RDP port, so it
            // refuses like the instance's own closed port.
            services: if i.rdp_enabled {
                vec![Service {
                    protocol: deskport_policy::proto::TCP,
                    public_port: i.public_rdp_port,
                    internal_port: i.rdp_port,
                }]
            } else {
                Vec::new()
            },
        };
        let (mine, others): (Vec<&Instance>, Vec<&Instance>) = instances
            .into_iter()
            .partition(|i| instance.is_none_or(|id| i.id == id));
        if instance.is_some() && mine.is_empty() {
            return Err(not_found("instance"));
        }
        Ok(AgentState {
            revision: view.revision,
            policy: Policy {
                groups: groups.map(|g| g.group.clone()).collect(),
                members: mine.iter().map(|i| member(i)).collect(),
                peers: others.iter().map(|i| member(i)).collect(),
            },
            instances: mine.into_iter().cloned().collect(),
        })
    }
}

/// A new RD Gateway token (`dpg_` and 256 random bits, hex) and its hash.
fn new_gateway_secret() -> (String, String) {
    use rand::RngCore as _;
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let secret = format!("dpg_{}", hex(&bytes));
    let hash = gateway_hash(&secret);
    (secret, hash)
}

/// How an RD Gateway token is stored: its SHA-256, hex, as the manager stores API and agent
/// tokens (256 random bits need no slow hash).
fn gateway_hash(secret: &str) -> String {
    use sha2::Digest as _;
    hex(&sha2::Sha256::digest(secret.as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The grant `token` gives, checked as of `now` (`None`: expiry not checked).
async fn check_grant(
    rows: &mut dyn Rows,
    token: Option<GatewayToken>,
    now: Option<i64>,
) -> Result<Result<GatewayGrant, Refused>> {
    let Some(token) = token else {
        return Ok(Err(Refused {
            reason: GrantRefusal::UnknownToken,
            token_id: None,
            user_id: None,
            user_name: None,
            instance_id: None,
            project_id: None,
        }));
    };
    let instance = rows.instance(token.instance_id).await?;
    let refused = |reason| {
        Ok(Err(Refused {
            reason,
            token_id: Some(token.id),
            user_id: Some(token.user_id),
            user_name: token.user_name.clone(),
            instance_id: Some(token.instance_id),
            project_id: instance.as_ref().map(|i| i.project_id),
        }))
    };
    if token.revoked_at.is_some() {
        return refused(GrantRefusal::Revoked);
    }
    if now.is_some_and(|now| token.expires_at <= now) {
        return refused(GrantRefusal::Expired);
    }
    let Some(found) = &instance else {
        return refused(GrantRefusal::InstanceGone);
    };
    if !found.rdp_enabled {
        return refused(GrantRefusal::RemoteDesktopOff);
    }
    if !found.rdp_gateway {
        return refused(GrantRefusal::GatewayOff);
    }
    let user = rows.user(token.user_id).await?;
    let Some(user) = user.filter(|u| u.role_in(found.project_id).is_some()) else {
        return refused(GrantRefusal::NotMember);
    };
    Ok(Ok(GatewayGrant {
        token_id: token.id,
        user_id: user.id,
        user_name: user.name,
        project_id: found.project_id,
        instance: found.clone(),
    }))
}
