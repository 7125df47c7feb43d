//! The SQLite implementation of [`Store`]: one database file in WAL mode, a pool of readers
//! and a single writer connection (writes are serialized, so read-check-write sequences such as
//! "no duplicate rule, quota not reached, insert" are atomic).

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use deskport_policy::{
    check_group_deletable, default_group, validate_group, validate_rule, Cidr, Direction,
    Ethertype, GroupId, Member, Note, Policy, PortRange, Protocol, Quota, Remote, Rule,
    RuleContext, RuleId, RuleSpec, SecurityGroup, Service, L4,
};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{Row, Sqlite, SqlitePool, Transaction};
use tokio::sync::watch;
use uuid::Uuid;

use crate::{
    Actor, AgentState, ApiToken, AuditEvent, AuditFilter, Bootstrap, GroupRecord, Instance,
    Membership, NewInstance, Principal, Project, Result, Role, RuleRecord, Session, Store,
    StoreError, User,
};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The SQLite store.
///
/// Reads of groups, instances and token owners are served from in-memory snapshots tagged with
/// a *generation* that every committed write increments (all writes go through this process's
/// single writer), so a snapshot is never served after a change to it.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    read: SqlitePool,
    write: SqlitePool,
    revision: watch::Sender<u64>,
    generation: Arc<AtomicU64>,
    groups: Arc<Snapshot<Vec<GroupRecord>>>,
    instances: Arc<Snapshot<Vec<Instance>>>,
    principals: Arc<PrincipalCache>,
}

/// Token hash → owner, valid at one generation.
type PrincipalCache = Mutex<(u64, HashMap<String, Option<Principal>>)>;

/// A value read at a generation.
type Snapshot<T> = Mutex<Option<(u64, Arc<T>)>>;

/// Token owners cached at most (the cache is cleared when full).
const PRINCIPAL_CACHE: usize = 10_000;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn uuid(text: &str) -> Result<Uuid> {
    Uuid::parse_str(text).map_err(|_| StoreError::Corrupt(format!("bad id {text:?}")))
}

fn opt_uuid(text: Option<String>) -> Result<Option<Uuid>> {
    text.map(|t| uuid(&t)).transpose()
}

fn not_found(what: &'static str) -> StoreError {
    StoreError::NotFound { what }
}

/// `?, ?, ?` for an IN list of `n` values (at least one, so that an empty list matches nothing).
fn placeholders(n: usize) -> String {
    if n == 0 {
        return "NULL".to_owned();
    }
    vec!["?"; n].join(", ")
}

impl SqliteStore {
    /// Opens (creating if needed) the database file at `path` and runs the migrations.
    pub async fn open(path: &Path) -> Result<Self> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let write = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone())
            .await?;
        MIGRATOR.run(&write).await?;
        let read = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(options.read_only(true))
            .await?;
        let current: i64 = sqlx::query_scalar("SELECT value FROM state WHERE key = 'revision'")
            .fetch_one(&write)
            .await?;
        let (revision, _) = watch::channel(current as u64);
        Ok(Self {
            read,
            write,
            revision,
            generation: Arc::new(AtomicU64::new(1)),
            groups: Arc::new(Mutex::new(None)),
            instances: Arc::new(Mutex::new(None)),
            principals: Arc::new(Mutex::new((0, HashMap::new()))),
        })
    }

    /// Commits a write and invalidates the read snapshots.
    async fn commit(&self, tx: Transaction<'static, Sqlite>) -> Result<()> {
        tx.commit().await?;
        self.generation.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Every group of every project, from the snapshot or the database.
    async fn all_groups(&self) -> Result<Arc<Vec<GroupRecord>>> {
        let generation = self.generation();
        if let Some((g, groups)) = &*self.groups.lock().unwrap_or_else(|e| e.into_inner()) {
            if *g == generation {
                return Ok(groups.clone());
            }
        }
        let groups = Arc::new(self.groups_where("1 = 1", &[]).await?);
        *self.groups.lock().unwrap_or_else(|e| e.into_inner()) = Some((generation, groups.clone()));
        Ok(groups)
    }

    /// Every instance of every project, from the snapshot or the database.
    async fn all_instances(&self) -> Result<Arc<Vec<Instance>>> {
        let generation = self.generation();
        if let Some((g, list)) = &*self.instances.lock().unwrap_or_else(|e| e.into_inner()) {
            if *g == generation {
                return Ok(list.clone());
            }
        }
        let list = Arc::new(self.instances_where(&self.read, "1 = 1", &[]).await?);
        *self.instances.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((generation, list.clone()));
        Ok(list)
    }

    async fn begin(&self) -> Result<Transaction<'static, Sqlite>> {
        Ok(self.write.begin().await?)
    }

    /// Commits `tx` after bumping the revision, and tells the subscribers.
    async fn commit_bumped(&self, mut tx: Transaction<'static, Sqlite>) -> Result<u64> {
        let revision: i64 = sqlx::query_scalar(
            "UPDATE state SET value = value + 1 WHERE key = 'revision' RETURNING value",
        )
        .fetch_one(&mut *tx)
        .await?;
        self.commit(tx).await?;
        self.revision.send_replace(revision as u64);
        Ok(revision as u64)
    }

    async fn principal_uncached(&self, token_hash: &str) -> Result<Option<Principal>> {
        if let Some(row) = sqlx::query(
            "SELECT u.* FROM api_tokens t JOIN users u ON u.id = t.user_id WHERE t.token_hash = ?",
        )
        .bind(token_hash)
        .fetch_optional(&self.read)
        .await?
        {
            return Ok(Some(Principal::User(
                self.load_user(&self.read, &row).await?,
            )));
        }
        let agent: Option<(String, String)> =
            sqlx::query_as("SELECT id, project_id FROM instances WHERE agent_token_hash = ?")
                .bind(token_hash)
                .fetch_optional(&self.read)
                .await?;
        agent
            .map(|(i, p)| {
                Ok(Principal::Agent {
                    instance_id: uuid(&i)?,
                    project_id: uuid(&p)?,
                })
            })
            .transpose()
    }

    async fn load_user(&self, executor: &SqlitePool, row: &SqliteRow) -> Result<User> {
        let id = uuid(row.try_get("id")?)?;
        let memberships = sqlx::query(
            "SELECT m.project_id, p.name, m.role FROM memberships m JOIN projects p ON p.id = m.project_id
             WHERE m.user_id = ? ORDER BY p.name",
        )
        .bind(id.to_string())
        .fetch_all(executor)
        .await?
        .iter()
        .map(|r| {
            Ok(Membership {
                project_id: uuid(r.try_get("project_id")?)?,
                project_name: r.try_get("name")?,
                role: Role::parse(r.try_get("role")?)
                    .ok_or_else(|| StoreError::Corrupt("bad role".into()))?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
        Ok(User {
            id,
            name: row.try_get("name")?,
            is_admin: row.try_get::<i64, _>("is_admin")? != 0,
            created_at: row.try_get("created_at")?,
            memberships,
        })
    }

    async fn groups_where(&self, condition: &str, binds: &[String]) -> Result<Vec<GroupRecord>> {
        let sql = format!(
            "SELECT id, project_id, name, description, created_at FROM security_groups WHERE {condition} ORDER BY created_at, name"
        );
        let mut query = sqlx::query(&sql);
        for b in binds {
            query = query.bind(b);
        }
        let rows = query.fetch_all(&self.read).await?;
        let mut groups = Vec::with_capacity(rows.len());
        let mut index = HashMap::new();
        for row in &rows {
            let id = GroupId(uuid(row.try_get("id")?)?);
            index.insert(id, groups.len());
            groups.push(GroupRecord {
                project_id: uuid(row.try_get("project_id")?)?,
                group: SecurityGroup {
                    id,
                    name: row.try_get("name")?,
                    description: row.try_get("description")?,
                    rules: Vec::new(),
                },
                created_at: row.try_get("created_at")?,
            });
        }
        if groups.is_empty() {
            return Ok(groups);
        }
        let sql = format!(
            "SELECT * FROM security_group_rules WHERE group_id IN ({}) ORDER BY seq",
            placeholders(groups.len())
        );
        let mut query = sqlx::query(&sql);
        for g in &groups {
            query = query.bind(g.group.id.to_string());
        }
        for row in query.fetch_all(&self.read).await? {
            let record = rule_from_row(&row)?;
            if let Some(i) = index.get(&record.rule.group) {
                groups[*i].group.rules.push(record.rule);
            }
        }
        Ok(groups)
    }

    async fn instances_where(
        &self,
        executor: &SqlitePool,
        condition: &str,
        binds: &[String],
    ) -> Result<Vec<Instance>> {
        let sql = format!("SELECT * FROM instances WHERE {condition} ORDER BY created_at, name");
        let mut query = sqlx::query(&sql);
        for b in binds {
            query = query.bind(b);
        }
        let rows = query.fetch_all(executor).await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let id = uuid(row.try_get("id")?)?;
            let groups = sqlx::query(
                "SELECT g.id, g.name FROM instance_groups ig JOIN security_groups g ON g.id = ig.group_id
                 WHERE ig.instance_id = ? ORDER BY ig.seq",
            )
            .bind(id.to_string())
            .fetch_all(executor)
            .await?
            .iter()
            .map(|r| Ok((GroupId(uuid(r.try_get("id")?)?), r.try_get("name")?)))
            .collect::<Result<Vec<_>>>()?;
            let addr = |col: &str| -> Result<Option<IpAddr>> {
                let text: Option<String> = row.try_get(col)?;
                text.map(|t| {
                    IpAddr::from_str(&t)
                        .map_err(|_| StoreError::Corrupt(format!("bad address {t:?}")))
                })
                .transpose()
            };
            out.push(Instance {
                id,
                project_id: uuid(row.try_get("project_id")?)?,
                name: row.try_get("name")?,
                public_address: addr("public_address")?
                    .ok_or_else(|| StoreError::Corrupt("instance without address".into()))?,
                public_rdp_port: u16::try_from(row.try_get::<i64, _>("public_rdp_port")?)
                    .map_err(|_| StoreError::Corrupt("bad public_rdp_port".into()))?,
                internal_address: addr("internal_address")?,
                rdp_port: u16::try_from(row.try_get::<i64, _>("rdp_port")?)
                    .map_err(|_| StoreError::Corrupt("bad rdp_port".into()))?,
                groups,
                rdp_enabled: row.try_get::<i64, _>("rdp_enabled")? != 0,
                rdp_nla_only: row.try_get::<i64, _>("rdp_nla_only")? != 0,
                cert_fingerprint: row.try_get("cert_fingerprint")?,
                agent_seen_at: row.try_get("agent_seen_at")?,
                agent_revision: row
                    .try_get::<Option<i64>, _>("agent_revision")?
                    .map(|r| r as u64),
                created_at: row.try_get("created_at")?,
            });
        }
        Ok(out)
    }

    async fn instance_in(&self, executor: &SqlitePool, id: Uuid) -> Result<Instance> {
        self.instances_where(executor, "id = ?", &[id.to_string()])
            .await?
            .pop()
            .ok_or_else(|| not_found("instance"))
    }
}

/// A rule row back into the core type.
fn rule_from_row(row: &SqliteRow) -> Result<RuleRecord> {
    let corrupt = |what: &str| StoreError::Corrupt(format!("rule with bad {what}"));
    let direction =
        Direction::parse(row.try_get("direction")?).ok_or_else(|| corrupt("direction"))?;
    let ethertype =
        Ethertype::parse(row.try_get("ethertype")?).ok_or_else(|| corrupt("ethertype"))?;
    let protocol = match row.try_get::<Option<String>, _>("protocol")? {
        None => Protocol::Any,
        Some(p) => deskport_policy::parse_protocol_name(&p).ok_or_else(|| corrupt("protocol"))?,
    };
    let min: Option<i64> = row.try_get("port_range_min")?;
    let max: Option<i64> = row.try_get("port_range_max")?;
    let l4 = if protocol.is_icmp() {
        match min {
            None => L4::All,
            Some(t) => L4::Icmp {
                icmp_type: u8::try_from(t).map_err(|_| corrupt("icmp type"))?,
                code: max
                    .map(|c| u8::try_from(c).map_err(|_| corrupt("icmp code")))
                    .transpose()?,
            },
        }
    } else {
        match (min, max) {
            (Some(lo), Some(hi)) => {
                let port = |v: i64| u16::try_from(v).map_err(|_| corrupt("port"));
                L4::Ports(
                    PortRange::new(port(lo)?, port(hi)?).ok_or_else(|| corrupt("port range"))?,
                )
            }
            _ => L4::All,
        }
    };
    let remote = match (
        row.try_get::<Option<String>, _>("remote_ip_prefix")?,
        row.try_get::<Option<String>, _>("remote_group_id")?,
    ) {
        (Some(prefix), _) => {
            Remote::Cidr(Cidr::parse(&prefix).map_err(|_| corrupt("prefix"))?.cidr)
        }
        (None, Some(group)) => Remote::Group(GroupId(uuid(&group)?)),
        (None, None) => Remote::Cidr(Cidr::any(ethertype)),
    };
    Ok(RuleRecord {
        project_id: uuid(row.try_get("project_id")?)?,
        rule: Rule {
            id: RuleId(uuid(row.try_get("id")?)?),
            group: GroupId(uuid(row.try_get("group_id")?)?),
            direction,
            ethertype,
            protocol,
            l4,
            remote,
            description: row.try_get("description")?,
        },
        created_at: row.try_get("created_at")?,
    })
}

/// A rule's columns: protocol, port_range_min, port_range_max, remote_ip_prefix,
/// remote_group_id.
type RuleColumns = (
    Option<String>,
    Option<i64>,
    Option<i64>,
    Option<String>,
    Option<String>,
);

/// The columns a rule is stored in.
fn rule_columns(rule: &Rule) -> RuleColumns {
    let protocol = rule.protocol.number().map(|_| rule.protocol.name());
    let (min, max) = match rule.l4 {
        L4::All => (None, None),
        L4::Ports(p) => (Some(i64::from(p.min())), Some(i64::from(p.max()))),
        L4::Icmp { icmp_type, code } => (Some(i64::from(icmp_type)), code.map(i64::from)),
    };
    let (prefix, group) = match rule.remote {
        Remote::Cidr(c) => (Some(c.to_string()), None),
        Remote::Group(g) => (None, Some(g.to_string())),
    };
    (protocol, min, max, prefix, group)
}

/// A readable one-line summary of a rule, for the audit log.
pub fn rule_summary(rule: &Rule) -> String {
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

async fn audit(
    tx: &mut Transaction<'static, Sqlite>,
    project: Option<Uuid>,
    actor: &Actor,
    action: &str,
    target_type: &str,
    target_id: Option<String>,
    summary: String,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO audit_events (project_id, actor, action, target_type, target_id, summary, source, created_at)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(project.map(|p| p.to_string()))
    .bind(&actor.name)
    .bind(action)
    .bind(target_type)
    .bind(target_id)
    .bind(summary)
    .bind(&actor.source)
    .bind(now_ms())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Inserts a group (and, for a project's `default` group, its rules) inside `tx`.
async fn insert_group(
    tx: &mut Transaction<'static, Sqlite>,
    project: Uuid,
    group: &SecurityGroup,
) -> Result<()> {
    let now = now_ms();
    sqlx::query("INSERT INTO security_groups (id, project_id, name, description, created_at) VALUES (?, ?, ?, ?, ?)")
        .bind(group.id.to_string())
        .bind(project.to_string())
        .bind(&group.name)
        .bind(&group.description)
        .bind(now)
        .execute(&mut **tx)
        .await?;
    for rule in &group.rules {
        insert_rule(tx, project, rule, now).await?;
    }
    Ok(())
}

async fn insert_rule(
    tx: &mut Transaction<'static, Sqlite>,
    project: Uuid,
    rule: &Rule,
    now: i64,
) -> Result<()> {
    let (protocol, min, max, prefix, group) = rule_columns(rule);
    sqlx::query(
        "INSERT INTO security_group_rules (id, group_id, project_id, direction, ethertype, protocol,
            port_range_min, port_range_max, remote_ip_prefix, remote_group_id, description, created_at)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(rule.id.to_string())
    .bind(rule.group.to_string())
    .bind(project.to_string())
    .bind(rule.direction.as_str())
    .bind(rule.ethertype.as_str())
    .bind(protocol)
    .bind(min)
    .bind(max)
    .bind(prefix)
    .bind(group)
    .bind(&rule.description)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// A unique-constraint violation as a conflict on `field`.
fn unique_violation(
    err: sqlx::Error,
    code: &'static str,
    field: &'static str,
    message: String,
) -> StoreError {
    match &err {
        sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Conflict {
            code,
            field: Some(field),
            message,
        },
        _ => StoreError::Db(err),
    }
}

#[async_trait::async_trait]
impl Store for SqliteStore {
    async fn bootstrap(&self, admin_password_hash: &str) -> Result<Bootstrap> {
        let mut tx = self.begin().await?;
        let existing: Option<(String, String)> = sqlx::query_as(
            "SELECT p.id, u.id FROM projects p, users u WHERE p.name = 'default' AND u.name = 'admin'",
        )
        .fetch_optional(&mut *tx)
        .await?;
        if let Some((project, admin)) = existing {
            return Ok(Bootstrap {
                created: false,
                default_project: uuid(&project)?,
                admin: uuid(&admin)?,
            });
        }
        let users: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM users")
            .fetch_one(&mut *tx)
            .await?;
        if users > 0 {
            return Err(StoreError::Corrupt(
                "the store has users but no admin and default project".into(),
            ));
        }
        let (project, admin, now) = (Uuid::new_v4(), Uuid::new_v4(), now_ms());
        sqlx::query("INSERT INTO projects (id, name, description, created_at) VALUES (?, 'default', 'Default project', ?)")
            .bind(project.to_string())
            .bind(now)
            .execute(&mut *tx)
            .await?;
        sqlx::query("INSERT INTO users (id, name, password_hash, is_admin, created_at) VALUES (?, 'admin', ?, 1, ?)")
            .bind(admin.to_string())
            .bind(admin_password_hash)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        sqlx::query("INSERT INTO memberships (project_id, user_id, role) VALUES (?, ?, 'admin')")
            .bind(project.to_string())
            .bind(admin.to_string())
            .execute(&mut *tx)
            .await?;
        insert_group(&mut tx, project, &default_group(GroupId::random())).await?;
        let system = Actor {
            name: "system".into(),
            source: None,
        };
        audit(
            &mut tx,
            Some(project),
            &system,
            "project.create",
            "project",
            Some(project.to_string()),
            "default project and admin user created".into(),
        )
        .await?;
        self.commit_bumped(tx).await?;
        Ok(Bootstrap {
            created: true,
            default_project: project,
            admin,
        })
    }

    async fn user_auth(&self, name: &str) -> Result<Option<(User, String)>> {
        let Some(row) = sqlx::query("SELECT * FROM users WHERE name = ?")
            .bind(name)
            .fetch_optional(&self.read)
            .await?
        else {
            return Ok(None);
        };
        let hash: String = row.try_get("password_hash")?;
        Ok(Some((self.load_user(&self.read, &row).await?, hash)))
    }

    async fn user(&self, id: Uuid) -> Result<User> {
        let row = sqlx::query("SELECT * FROM users WHERE id = ?")
            .bind(id.to_string())
            .fetch_optional(&self.read)
            .await?
            .ok_or_else(|| not_found("user"))?;
        self.load_user(&self.read, &row).await
    }

    async fn list_users(&self) -> Result<Vec<User>> {
        let rows = sqlx::query("SELECT * FROM users ORDER BY name")
            .fetch_all(&self.read)
            .await?;
        let mut users = Vec::with_capacity(rows.len());
        for row in &rows {
            users.push(self.load_user(&self.read, row).await?);
        }
        Ok(users)
    }

    async fn create_user(
        &self,
        actor: &Actor,
        name: &str,
        password_hash: &str,
        is_admin: bool,
    ) -> Result<User> {
        let mut tx = self.begin().await?;
        let id = Uuid::new_v4();
        sqlx::query("INSERT INTO users (id, name, password_hash, is_admin, created_at) VALUES (?, ?, ?, ?, ?)")
            .bind(id.to_string())
            .bind(name)
            .bind(password_hash)
            .bind(i64::from(is_admin))
            .bind(now_ms())
            .execute(&mut *tx)
            .await
            .map_err(|e| unique_violation(e, "duplicate_user_name", "name", format!("a user named {name:?} already exists")))?;
        audit(
            &mut tx,
            None,
            actor,
            "user.create",
            "user",
            Some(id.to_string()),
            format!(
                "user {name}{}",
                if is_admin { " (administrator)" } else { "" }
            ),
        )
        .await?;
        self.commit(tx).await?;
        self.user(id).await
    }

    async fn delete_user(&self, actor: &Actor, id: Uuid) -> Result<()> {
        let user = self.user(id).await?;
        if user.name == "admin" {
            return Err(StoreError::Conflict {
                code: "admin_undeletable",
                field: None,
                message: "the admin user cannot be deleted".into(),
            });
        }
        let mut tx = self.begin().await?;
        sqlx::query("DELETE FROM users WHERE id = ?")
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        audit(
            &mut tx,
            None,
            actor,
            "user.delete",
            "user",
            Some(id.to_string()),
            format!("user {}", user.name),
        )
        .await?;
        self.commit(tx).await?;
        Ok(())
    }

    async fn set_password(&self, actor: &Actor, id: Uuid, password_hash: &str) -> Result<()> {
        let mut tx = self.begin().await?;
        let done = sqlx::query("UPDATE users SET password_hash = ? WHERE id = ?")
            .bind(password_hash)
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Err(not_found("user"));
        }
        sqlx::query("DELETE FROM sessions WHERE user_id = ?")
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        audit(
            &mut tx,
            None,
            actor,
            "user.password",
            "user",
            Some(id.to_string()),
            "password changed".into(),
        )
        .await?;
        self.commit(tx).await?;
        Ok(())
    }

    async fn set_membership(
        &self,
        actor: &Actor,
        project: Uuid,
        user: Uuid,
        role: Role,
    ) -> Result<()> {
        let mut tx = self.begin().await?;
        sqlx::query(
            "INSERT INTO memberships (project_id, user_id, role) VALUES (?, ?, ?)
             ON CONFLICT (project_id, user_id) DO UPDATE SET role = excluded.role",
        )
        .bind(project.to_string())
        .bind(user.to_string())
        .bind(role.as_str())
        .execute(&mut *tx)
        .await
        .map_err(|e| match &e {
            sqlx::Error::Database(db) if db.is_foreign_key_violation() => {
                not_found("user or project")
            }
            _ => StoreError::Db(e),
        })?;
        audit(
            &mut tx,
            Some(project),
            actor,
            "membership.set",
            "user",
            Some(user.to_string()),
            format!("role {}", role.as_str()),
        )
        .await?;
        self.commit(tx).await?;
        Ok(())
    }

    async fn remove_membership(&self, actor: &Actor, project: Uuid, user: Uuid) -> Result<()> {
        let mut tx = self.begin().await?;
        let done = sqlx::query("DELETE FROM memberships WHERE project_id = ? AND user_id = ?")
            .bind(project.to_string())
            .bind(user.to_string())
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Err(not_found("membership"));
        }
        audit(
            &mut tx,
            Some(project),
            actor,
            "membership.delete",
            "user",
            Some(user.to_string()),
            "removed from the project".into(),
        )
        .await?;
        self.commit(tx).await?;
        Ok(())
    }

    async fn create_api_token(
        &self,
        actor: &Actor,
        user: Uuid,
        name: &str,
        token_hash: &str,
    ) -> Result<ApiToken> {
        let mut tx = self.begin().await?;
        let (id, now) = (Uuid::new_v4(), now_ms());
        sqlx::query("INSERT INTO api_tokens (id, user_id, name, token_hash, created_at) VALUES (?, ?, ?, ?, ?)")
            .bind(id.to_string())
            .bind(user.to_string())
            .bind(name)
            .bind(token_hash)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        audit(
            &mut tx,
            None,
            actor,
            "token.create",
            "token",
            Some(id.to_string()),
            format!("API token {name:?}"),
        )
        .await?;
        self.commit(tx).await?;
        Ok(ApiToken {
            id,
            user_id: user,
            name: name.to_owned(),
            created_at: now,
        })
    }

    async fn list_api_tokens(&self, user: Uuid) -> Result<Vec<ApiToken>> {
        sqlx::query("SELECT id, user_id, name, created_at FROM api_tokens WHERE user_id = ? ORDER BY created_at")
            .bind(user.to_string())
            .fetch_all(&self.read)
            .await?
            .iter()
            .map(|r| {
                Ok(ApiToken {
                    id: uuid(r.try_get("id")?)?,
                    user_id: uuid(r.try_get("user_id")?)?,
                    name: r.try_get("name")?,
                    created_at: r.try_get("created_at")?,
                })
            })
            .collect()
    }

    async fn delete_api_token(&self, actor: &Actor, user: Uuid, id: Uuid) -> Result<()> {
        let mut tx = self.begin().await?;
        let done = sqlx::query("DELETE FROM api_tokens WHERE id = ? AND user_id = ?")
            .bind(id.to_string())
            .bind(user.to_string())
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Err(not_found("token"));
        }
        audit(
            &mut tx,
            None,
            actor,
            "token.delete",
            "token",
            Some(id.to_string()),
            "API token revoked".into(),
        )
        .await?;
        self.commit(tx).await?;
        Ok(())
    }

    async fn principal_by_token(&self, token_hash: &str) -> Result<Option<Principal>> {
        let generation = self.generation();
        {
            let cache = self.principals.lock().unwrap_or_else(|e| e.into_inner());
            if cache.0 == generation {
                if let Some(found) = cache.1.get(token_hash) {
                    return Ok(found.clone());
                }
            }
        }
        let found = self.principal_uncached(token_hash).await?;
        let mut cache = self.principals.lock().unwrap_or_else(|e| e.into_inner());
        if cache.0 != generation || cache.1.len() >= PRINCIPAL_CACHE {
            *cache = (generation, HashMap::new());
        }
        cache.1.insert(token_hash.to_owned(), found.clone());
        Ok(found)
    }

    async fn create_session(
        &self,
        user: Uuid,
        token_hash: &str,
        csrf_token: &str,
        expires_at: i64,
    ) -> Result<()> {
        let now = now_ms();
        let mut tx = self.begin().await?;
        sqlx::query("DELETE FROM sessions WHERE expires_at < ?")
            .bind(now)
            .execute(&mut *tx)
            .await?;
        sqlx::query("INSERT INTO sessions (token_hash, user_id, csrf_token, created_at, expires_at) VALUES (?, ?, ?, ?, ?)")
            .bind(token_hash)
            .bind(user.to_string())
            .bind(csrf_token)
            .bind(now)
            .bind(expires_at)
            .execute(&mut *tx)
            .await?;
        self.commit(tx).await?;
        Ok(())
    }

    async fn session(&self, token_hash: &str, now: i64) -> Result<Option<Session>> {
        let Some(row) = sqlx::query(
            "SELECT u.*, s.csrf_token, s.expires_at FROM sessions s JOIN users u ON u.id = s.user_id
             WHERE s.token_hash = ? AND s.expires_at > ?",
        )
        .bind(token_hash)
        .bind(now)
        .fetch_optional(&self.read)
        .await?
        else {
            return Ok(None);
        };
        Ok(Some(Session {
            user: self.load_user(&self.read, &row).await?,
            csrf_token: row.try_get("csrf_token")?,
            expires_at: row.try_get("expires_at")?,
        }))
    }

    async fn delete_session(&self, token_hash: &str) -> Result<()> {
        sqlx::query("DELETE FROM sessions WHERE token_hash = ?")
            .bind(token_hash)
            .execute(&self.write)
            .await?;
        self.generation.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    async fn list_projects(&self, visible: &[Uuid]) -> Result<Vec<Project>> {
        let sql = format!(
            "SELECT * FROM projects WHERE id IN ({}) ORDER BY name",
            placeholders(visible.len())
        );
        let mut query = sqlx::query(&sql);
        for id in visible {
            query = query.bind(id.to_string());
        }
        query
            .fetch_all(&self.read)
            .await?
            .iter()
            .map(|r| {
                Ok(Project {
                    id: uuid(r.try_get("id")?)?,
                    name: r.try_get("name")?,
                    description: r.try_get("description")?,
                    created_at: r.try_get("created_at")?,
                })
            })
            .collect()
    }

    async fn project(&self, visible: &[Uuid], id: Uuid) -> Result<Project> {
        if !visible.contains(&id) {
            return Err(not_found("project"));
        }
        self.list_projects(&[id])
            .await?
            .pop()
            .ok_or_else(|| not_found("project"))
    }

    async fn create_project(
        &self,
        actor: &Actor,
        name: &str,
        description: &str,
        owner: Uuid,
    ) -> Result<Project> {
        let mut tx = self.begin().await?;
        let (id, now) = (Uuid::new_v4(), now_ms());
        sqlx::query("INSERT INTO projects (id, name, description, created_at) VALUES (?, ?, ?, ?)")
            .bind(id.to_string())
            .bind(name)
            .bind(description)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(|e| {
                unique_violation(
                    e,
                    "duplicate_project_name",
                    "name",
                    format!("a project named {name:?} already exists"),
                )
            })?;
        sqlx::query("INSERT INTO memberships (project_id, user_id, role) VALUES (?, ?, 'admin')")
            .bind(id.to_string())
            .bind(owner.to_string())
            .execute(&mut *tx)
            .await?;
        insert_group(&mut tx, id, &default_group(GroupId::random())).await?;
        audit(
            &mut tx,
            Some(id),
            actor,
            "project.create",
            "project",
            Some(id.to_string()),
            format!("project {name}"),
        )
        .await?;
        self.commit_bumped(tx).await?;
        Ok(Project {
            id,
            name: name.to_owned(),
            description: description.to_owned(),
            created_at: now,
        })
    }

    async fn delete_project(&self, actor: &Actor, id: Uuid) -> Result<()> {
        let project = self.project(&[id], id).await?;
        if project.name == "default" {
            return Err(StoreError::Conflict {
                code: "default_project_undeletable",
                field: None,
                message: "the default project cannot be deleted".into(),
            });
        }
        let mut tx = self.begin().await?;
        // Rules reference groups across the project; drop them first.
        sqlx::query("DELETE FROM instance_groups WHERE instance_id IN (SELECT id FROM instances WHERE project_id = ?)")
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM security_group_rules WHERE project_id = ?")
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM projects WHERE id = ?")
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        audit(
            &mut tx,
            None,
            actor,
            "project.delete",
            "project",
            Some(id.to_string()),
            format!("project {}", project.name),
        )
        .await?;
        self.commit_bumped(tx).await?;
        Ok(())
    }

    async fn list_groups(&self, visible: &[Uuid]) -> Result<Vec<GroupRecord>> {
        let all = self.all_groups().await?;
        Ok(all
            .iter()
            .filter(|g| visible.contains(&g.project_id))
            .cloned()
            .collect())
    }

    async fn group(&self, visible: &[Uuid], id: GroupId) -> Result<GroupRecord> {
        let all = self.all_groups().await?;
        all.iter()
            .find(|g| g.group.id == id && visible.contains(&g.project_id))
            .cloned()
            .ok_or_else(|| not_found("security group"))
    }

    async fn create_group(
        &self,
        actor: &Actor,
        project: Uuid,
        name: &str,
        description: &str,
        quota: Quota,
    ) -> Result<GroupRecord> {
        let mut tx = self.begin().await?;
        let names: Vec<String> =
            sqlx::query_scalar("SELECT name FROM security_groups WHERE project_id = ?")
                .bind(project.to_string())
                .fetch_all(&mut *tx)
                .await?;
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        validate_group(name, description, &names, quota).map_err(StoreError::Rejected)?;
        let group = SecurityGroup {
            id: GroupId::random(),
            name: name.to_owned(),
            description: description.to_owned(),
            rules: Vec::new(),
        };
        insert_group(&mut tx, project, &group).await?;
        audit(
            &mut tx,
            Some(project),
            actor,
            "security_group.create",
            "security_group",
            Some(group.id.to_string()),
            format!("security group {name}"),
        )
        .await?;
        self.commit_bumped(tx).await?;
        self.group(&[project], group.id).await
    }

    async fn delete_group(&self, actor: &Actor, id: GroupId) -> Result<()> {
        let mut tx = self.begin().await?;
        let row: Option<(String, String)> =
            sqlx::query_as("SELECT project_id, name FROM security_groups WHERE id = ?")
                .bind(id.to_string())
                .fetch_optional(&mut *tx)
                .await?;
        let (project, name) = row.ok_or_else(|| not_found("security group"))?;
        check_group_deletable(&SecurityGroup {
            id,
            name: name.clone(),
            description: String::new(),
            rules: Vec::new(),
        })
        .map_err(StoreError::Rejected)?;
        let users: Vec<String> = sqlx::query_scalar(
            "SELECT i.name FROM instance_groups ig JOIN instances i ON i.id = ig.instance_id WHERE ig.group_id = ?",
        )
        .bind(id.to_string())
        .fetch_all(&mut *tx)
        .await?;
        if !users.is_empty() {
            return Err(StoreError::Conflict {
                code: "group_in_use",
                field: None,
                message: format!(
                    "security group {name:?} is attached to instance(s) {}",
                    users.join(", ")
                ),
            });
        }
        let referenced: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT g.name FROM security_group_rules r JOIN security_groups g ON g.id = r.group_id
             WHERE r.remote_group_id = ? AND r.group_id != ?",
        )
        .bind(id.to_string())
        .bind(id.to_string())
        .fetch_all(&mut *tx)
        .await?;
        if !referenced.is_empty() {
            return Err(StoreError::Conflict {
                code: "group_in_use",
                field: None,
                message: format!(
                    "rules of security group(s) {} refer to {name:?} as their remote",
                    referenced.join(", ")
                ),
            });
        }
        sqlx::query("DELETE FROM security_group_rules WHERE group_id = ?")
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM security_groups WHERE id = ?")
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        audit(
            &mut tx,
            Some(uuid(&project)?),
            actor,
            "security_group.delete",
            "security_group",
            Some(id.to_string()),
            format!("security group {name}"),
        )
        .await?;
        self.commit_bumped(tx).await?;
        Ok(())
    }

    async fn rule(&self, visible: &[Uuid], id: RuleId) -> Result<RuleRecord> {
        let sql = format!(
            "SELECT * FROM security_group_rules WHERE id = ? AND project_id IN ({})",
            placeholders(visible.len())
        );
        let mut query = sqlx::query(&sql).bind(id.to_string());
        for p in visible {
            query = query.bind(p.to_string());
        }
        let row = query
            .fetch_optional(&self.read)
            .await?
            .ok_or_else(|| not_found("security group rule"))?;
        rule_from_row(&row)
    }

    async fn create_rule(
        &self,
        actor: &Actor,
        group: GroupId,
        spec: &RuleSpec,
        quota: Quota,
    ) -> Result<(RuleRecord, Vec<Note>)> {
        let mut tx = self.begin().await?;
        let row: Option<(String, String, String)> = sqlx::query_as(
            "SELECT project_id, name, description FROM security_groups WHERE id = ?",
        )
        .bind(group.to_string())
        .fetch_optional(&mut *tx)
        .await?;
        let (project, name, description) = row.ok_or_else(|| not_found("security group"))?;
        let project = uuid(&project)?;
        let rules =
            sqlx::query("SELECT * FROM security_group_rules WHERE group_id = ? ORDER BY seq")
                .bind(group.to_string())
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(|r| rule_from_row(r).map(|rec| rec.rule))
                .collect::<Result<Vec<_>>>()?;
        let project_rules: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM security_group_rules WHERE project_id = ?")
                .bind(project.to_string())
                .fetch_one(&mut *tx)
                .await?;
        let project_groups: Vec<String> =
            sqlx::query_scalar("SELECT id FROM security_groups WHERE project_id = ?")
                .bind(project.to_string())
                .fetch_all(&mut *tx)
                .await?;
        let current = SecurityGroup {
            id: group,
            name,
            description,
            rules,
        };
        let accepted = {
            let exists = |g: GroupId| project_groups.iter().any(|p| *p == g.to_string());
            let ctx = RuleContext {
                group: &current,
                group_exists: &exists,
                project_rules: project_rules as usize,
                quota,
            };
            validate_rule(spec, &ctx, RuleId::random()).map_err(StoreError::Rejected)?
        };
        let now = now_ms();
        insert_rule(&mut tx, project, &accepted.rule, now).await?;
        audit(
            &mut tx,
            Some(project),
            actor,
            "security_group_rule.create",
            "security_group_rule",
            Some(accepted.rule.id.to_string()),
            format!("{}: {}", current.name, rule_summary(&accepted.rule)),
        )
        .await?;
        self.commit_bumped(tx).await?;
        Ok((
            RuleRecord {
                project_id: project,
                rule: accepted.rule,
                created_at: now,
            },
            accepted.notes,
        ))
    }

    async fn delete_rule(&self, actor: &Actor, id: RuleId) -> Result<()> {
        let mut tx = self.begin().await?;
        let row = sqlx::query("SELECT * FROM security_group_rules WHERE id = ?")
            .bind(id.to_string())
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| not_found("security group rule"))?;
        let record = rule_from_row(&row)?;
        let group: String = sqlx::query_scalar("SELECT name FROM security_groups WHERE id = ?")
            .bind(record.rule.group.to_string())
            .fetch_one(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM security_group_rules WHERE id = ?")
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        audit(
            &mut tx,
            Some(record.project_id),
            actor,
            "security_group_rule.delete",
            "security_group_rule",
            Some(id.to_string()),
            format!("{group}: {}", rule_summary(&record.rule)),
        )
        .await?;
        self.commit_bumped(tx).await?;
        Ok(())
    }

    async fn list_instances(&self, visible: &[Uuid]) -> Result<Vec<Instance>> {
        let all = self.all_instances().await?;
        Ok(all
            .iter()
            .filter(|i| visible.contains(&i.project_id))
            .cloned()
            .collect())
    }

    async fn instance(&self, visible: &[Uuid], id: Uuid) -> Result<Instance> {
        let all = self.all_instances().await?;
        all.iter()
            .find(|i| i.id == id && visible.contains(&i.project_id))
            .cloned()
            .ok_or_else(|| not_found("instance"))
    }

    async fn create_instance(&self, actor: &Actor, new: &NewInstance) -> Result<Instance> {
        let mut tx = self.begin().await?;
        let groups: Vec<GroupId> = if new.groups.is_empty() {
            let id: String = sqlx::query_scalar(
                "SELECT id FROM security_groups WHERE project_id = ? AND name = 'default'",
            )
            .bind(new.project_id.to_string())
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| not_found("default security group"))?;
            vec![GroupId(uuid(&id)?)]
        } else {
            new.groups.clone()
        };
        for g in &groups {
            let ok: Option<String> = sqlx::query_scalar(
                "SELECT id FROM security_groups WHERE id = ? AND project_id = ?",
            )
            .bind(g.to_string())
            .bind(new.project_id.to_string())
            .fetch_optional(&mut *tx)
            .await?;
            if ok.is_none() {
                return Err(StoreError::Conflict {
                    code: "security_group_not_found",
                    field: Some("security_groups"),
                    message: format!("security group {g} does not exist in this project"),
                });
            }
        }
        let (id, now) = (Uuid::new_v4(), now_ms());
        sqlx::query(
            "INSERT INTO instances (id, project_id, name, public_address, public_rdp_port, internal_address, rdp_port, agent_token_hash, created_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(id.to_string())
        .bind(new.project_id.to_string())
        .bind(&new.name)
        .bind(new.public_address.to_string())
        .bind(i64::from(new.public_rdp_port))
        .bind(new.internal_address.map(|a| a.to_string()))
        .bind(i64::from(new.rdp_port))
        .bind(&new.agent_token_hash)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(|e| unique_violation(e, "duplicate_instance_name", "name", format!("an instance named {:?} already exists in this project", new.name)))?;
        for (seq, g) in groups.iter().enumerate() {
            sqlx::query("INSERT OR IGNORE INTO instance_groups (instance_id, group_id, seq) VALUES (?, ?, ?)")
                .bind(id.to_string())
                .bind(g.to_string())
                .bind(seq as i64)
                .execute(&mut *tx)
                .await?;
        }
        audit(
            &mut tx,
            Some(new.project_id),
            actor,
            "instance.create",
            "instance",
            Some(id.to_string()),
            format!("instance {} at {}", new.name, new.public_address),
        )
        .await?;
        self.commit_bumped(tx).await?;
        self.instance_in(&self.write, id).await
    }

    async fn delete_instance(&self, actor: &Actor, id: Uuid) -> Result<()> {
        let instance = self.instance_in(&self.write, id).await?;
        let mut tx = self.begin().await?;
        sqlx::query("DELETE FROM instances WHERE id = ?")
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        audit(
            &mut tx,
            Some(instance.project_id),
            actor,
            "instance.delete",
            "instance",
            Some(id.to_string()),
            format!("instance {}", instance.name),
        )
        .await?;
        self.commit_bumped(tx).await?;
        Ok(())
    }

    async fn set_remote_desktop(
        &self,
        actor: &Actor,
        id: Uuid,
        enabled: Option<bool>,
        nla_only: Option<bool>,
    ) -> Result<Instance> {
        let before = self.instance_in(&self.write, id).await?;
        let mut tx = self.begin().await?;
        let enabled = enabled.unwrap_or(before.rdp_enabled);
        let nla_only = nla_only.unwrap_or(before.rdp_nla_only);
        sqlx::query("UPDATE instances SET rdp_enabled = ?, rdp_nla_only = ? WHERE id = ?")
            .bind(i64::from(enabled))
            .bind(i64::from(nla_only))
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        let onoff = |b: bool| if b { "on" } else { "off" };
        audit(
            &mut tx,
            Some(before.project_id),
            actor,
            "instance.remote_desktop",
            "instance",
            Some(id.to_string()),
            format!(
                "{}: remote connections {} -> {}, NLA only {} -> {}",
                before.name,
                onoff(before.rdp_enabled),
                onoff(enabled),
                onoff(before.rdp_nla_only),
                onoff(nla_only)
            ),
        )
        .await?;
        self.commit_bumped(tx).await?;
        self.instance_in(&self.write, id).await
    }

    async fn attach_group(&self, actor: &Actor, id: Uuid, group: GroupId) -> Result<Instance> {
        let instance = self.instance_in(&self.write, id).await?;
        let mut tx = self.begin().await?;
        let name: Option<String> =
            sqlx::query_scalar("SELECT name FROM security_groups WHERE id = ? AND project_id = ?")
                .bind(group.to_string())
                .bind(instance.project_id.to_string())
                .fetch_optional(&mut *tx)
                .await?;
        let name = name.ok_or_else(|| not_found("security group"))?;
        if instance.groups.iter().any(|(g, _)| *g == group) {
            return Err(StoreError::Conflict {
                code: "already_attached",
                field: Some("security_group_id"),
                message: format!("security group {name:?} is already attached"),
            });
        }
        let seq: i64 = sqlx::query_scalar(
            "SELECT COALESCE(MAX(seq), -1) + 1 FROM instance_groups WHERE instance_id = ?",
        )
        .bind(id.to_string())
        .fetch_one(&mut *tx)
        .await?;
        sqlx::query("INSERT INTO instance_groups (instance_id, group_id, seq) VALUES (?, ?, ?)")
            .bind(id.to_string())
            .bind(group.to_string())
            .bind(seq)
            .execute(&mut *tx)
            .await?;
        audit(
            &mut tx,
            Some(instance.project_id),
            actor,
            "instance.attach_group",
            "instance",
            Some(id.to_string()),
            format!("{}: security group {name} attached", instance.name),
        )
        .await?;
        self.commit_bumped(tx).await?;
        self.instance_in(&self.write, id).await
    }

    async fn detach_group(&self, actor: &Actor, id: Uuid, group: GroupId) -> Result<Instance> {
        let instance = self.instance_in(&self.write, id).await?;
        let Some((_, name)) = instance.groups.iter().find(|(g, _)| *g == group).cloned() else {
            return Err(not_found("attached security group"));
        };
        let mut tx = self.begin().await?;
        sqlx::query("DELETE FROM instance_groups WHERE instance_id = ? AND group_id = ?")
            .bind(id.to_string())
            .bind(group.to_string())
            .execute(&mut *tx)
            .await?;
        audit(
            &mut tx,
            Some(instance.project_id),
            actor,
            "instance.detach_group",
            "instance",
            Some(id.to_string()),
            format!("{}: security group {name} detached", instance.name),
        )
        .await?;
        self.commit_bumped(tx).await?;
        self.instance_in(&self.write, id).await
    }

    async fn report_agent(
        &self,
        id: Uuid,
        fingerprint: Option<&str>,
        revision: Option<u64>,
    ) -> Result<()> {
        let done = sqlx::query(
            "UPDATE instances SET cert_fingerprint = COALESCE(?, cert_fingerprint),
                agent_revision = COALESCE(?, agent_revision), agent_seen_at = ? WHERE id = ?",
        )
        .bind(fingerprint)
        .bind(revision.map(|r| r as i64))
        .bind(now_ms())
        .bind(id.to_string())
        .execute(&self.write)
        .await?;
        self.generation.fetch_add(1, Ordering::SeqCst);
        if done.rows_affected() == 0 {
            return Err(not_found("instance"));
        }
        Ok(())
    }

    async fn list_audit(&self, visible: &[Uuid], filter: &AuditFilter) -> Result<Vec<AuditEvent>> {
        let mut sql = format!(
            "SELECT * FROM audit_events WHERE project_id IN ({})",
            placeholders(visible.len())
        );
        let mut binds: Vec<String> = visible.iter().map(Uuid::to_string).collect();
        for (column, value) in [
            ("action", &filter.action),
            ("actor", &filter.actor),
            ("target_id", &filter.target_id),
        ] {
            if let Some(v) = value {
                sql += &format!(" AND {column} = ?");
                binds.push(v.clone());
            }
        }
        if let Some(after) = filter.after_id {
            sql += &format!(" AND id > {after}");
        }
        sql += &format!(" ORDER BY id DESC LIMIT {}", filter.limit.clamp(1, 1000));
        let mut query = sqlx::query(&sql);
        for b in &binds {
            query = query.bind(b);
        }
        query
            .fetch_all(&self.read)
            .await?
            .iter()
            .map(|r| {
                Ok(AuditEvent {
                    id: r.try_get("id")?,
                    project_id: opt_uuid(r.try_get("project_id")?)?,
                    actor: r.try_get("actor")?,
                    action: r.try_get("action")?,
                    target_type: r.try_get("target_type")?,
                    target_id: r.try_get("target_id")?,
                    summary: r.try_get("summary")?,
                    source: r.try_get("source")?,
                    created_at: r.try_get("created_at")?,
                })
            })
            .collect()
    }

    async fn revision(&self) -> Result<u64> {
        Ok(*self.revision.borrow())
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        self.revision.subscribe()
    }

    async fn agent_state(&self, project: Uuid, instance: Option<Uuid>) -> Result<AgentState> {
        // Read the revision first: a change committed meanwhile makes the agent fetch again.
        let revision = *self.revision.borrow();
        let groups = self.list_groups(&[project]).await?;
        let instances = self.list_instances(&[project]).await?;
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
            .iter()
            .partition(|i| instance.is_none_or(|id| i.id == id));
        if instance.is_some() && mine.is_empty() {
            return Err(not_found("instance"));
        }
        Ok(AgentState {
            revision,
            policy: Policy {
                groups: groups.into_iter().map(|g| g.group).collect(),
                members: mine.iter().map(|i| member(i)).collect(),
                peers: others.iter().map(|i| member(i)).collect(),
            },
            instances: mine.into_iter().cloned().collect(),
        })
    }
}
