//! The SQLite backend: one database file in WAL mode, migrations embedded from `migrations/`
//! and run at open, a pool of read-only connections and **one** writer connection. The single
//! writer is what serializes write transactions ([`crate::Backend`]'s promise). Every SQL
//! statement of deskport is in this file.

use std::collections::HashMap;
use std::net::IpAddr;
use std::ops::DerefMut;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use deskport_policy::{
    Cidr, Direction, Ethertype, GroupId, PortRange, Protocol, Remote, Rule, RuleId, SecurityGroup,
    L4,
};
use sqlx::query::Query;
use sqlx::sqlite::{
    SqliteArguments, SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{Row, Sqlite, SqliteConnection, SqlitePool};
use uuid::Uuid;

use crate::{
    ApiToken, AuditEvent, AuditFilter, Backend, GroupRecord, Instance, Membership, NewAuditEvent,
    Project, Result, Role, Rows, RuleRecord, Session, Sessions, StoreError, Transaction, User,
};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The SQLite database of a [`crate::Store`].
#[derive(Debug, Clone)]
pub struct SqliteBackend {
    read: SqlitePool,
    write: SqlitePool,
}

impl SqliteBackend {
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
        Ok(Self { read, write })
    }
}

#[async_trait::async_trait]
impl Backend for SqliteBackend {
    async fn read(&self) -> Result<Box<dyn Rows>> {
        Ok(Box::new(Conn(self.read.acquire().await?)))
    }

    async fn write(&self) -> Result<Box<dyn Transaction>> {
        Ok(Box::new(Conn(self.write.begin().await?)))
    }
}

/// A pooled read connection or the writer's transaction: both read rows the same way.
struct Conn<C>(C);

fn uuid(text: &str) -> Result<Uuid> {
    Uuid::parse_str(text).map_err(|_| StoreError::Corrupt(format!("bad id {text:?}")))
}

fn opt_uuid(text: Option<String>) -> Result<Option<Uuid>> {
    text.map(|t| uuid(&t)).transpose()
}

/// `?, ?, ?` for an IN list of `n` values (at least one, so that an empty list matches nothing).
fn placeholders(n: usize) -> String {
    if n == 0 {
        return "NULL".to_owned();
    }
    vec!["?"; n].join(", ")
}

fn project_from_row(row: &SqliteRow) -> Result<Project> {
    Ok(Project {
        id: uuid(row.try_get("id")?)?,
        name: row.try_get("name")?,
        description: row.try_get("description")?,
        created_at: row.try_get("created_at")?,
    })
}

fn token_from_row(row: &SqliteRow) -> Result<ApiToken> {
    Ok(ApiToken {
        id: uuid(row.try_get("id")?)?,
        user_id: uuid(row.try_get("user_id")?)?,
        name: row.try_get("name")?,
        created_at: row.try_get("created_at")?,
    })
}

fn audit_from_row(row: &SqliteRow) -> Result<AuditEvent> {
    Ok(AuditEvent {
        id: row.try_get("id")?,
        project_id: opt_uuid(row.try_get("project_id")?)?,
        actor: row.try_get("actor")?,
        action: row.try_get("action")?,
        target_type: row.try_get("target_type")?,
        target_id: row.try_get("target_id")?,
        summary: row.try_get("summary")?,
        source: row.try_get("source")?,
        created_at: row.try_get("created_at")?,
    })
}

fn instance_from_row(row: &SqliteRow) -> Result<Instance> {
    let addr = |col: &str| -> Result<Option<IpAddr>> {
        let text: Option<String> = row.try_get(col)?;
        text.map(|t| {
            IpAddr::from_str(&t).map_err(|_| StoreError::Corrupt(format!("bad address {t:?}")))
        })
        .transpose()
    };
    let port = |col: &str| -> Result<u16> {
        u16::try_from(row.try_get::<i64, _>(col)?)
            .map_err(|_| StoreError::Corrupt(format!("bad {col}")))
    };
    Ok(Instance {
        id: uuid(row.try_get("id")?)?,
        project_id: uuid(row.try_get("project_id")?)?,
        name: row.try_get("name")?,
        public_address: addr("public_address")?
            .ok_or_else(|| StoreError::Corrupt("instance without address".into()))?,
        public_rdp_port: port("public_rdp_port")?,
        internal_address: addr("internal_address")?,
        rdp_port: port("rdp_port")?,
        groups: Vec::new(),
        rdp_enabled: row.try_get::<i64, _>("rdp_enabled")? != 0,
        rdp_nla_only: row.try_get::<i64, _>("rdp_nla_only")? != 0,
        cert_fingerprint: row.try_get("cert_fingerprint")?,
        agent_seen_at: row.try_get("agent_seen_at")?,
        agent_revision: row
            .try_get::<Option<i64>, _>("agent_revision")?
            .map(|r| r as u64),
        created_at: row.try_get("created_at")?,
    })
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

/// Which groups (and rules), or which instances: every one, a project's, or one by id.
#[derive(Clone, Copy)]
enum Scope<'a> {
    All,
    Project(Uuid),
    Id(&'a str),
}

impl Scope<'_> {
    /// The condition on the id or project column, and the values it binds.
    fn condition(self, id_column: &str, project_column: &str) -> (String, Vec<String>) {
        match self {
            Scope::All => ("1 = 1".to_owned(), Vec::new()),
            Scope::Project(p) => (format!("{project_column} = ?"), vec![p.to_string()]),
            Scope::Id(id) => (format!("{id_column} = ?"), vec![id.to_owned()]),
        }
    }
}

/// `sql` with `values` bound in order.
fn query<'q, S: AsRef<str>>(
    sql: &'q str,
    values: &'q [S],
) -> Query<'q, Sqlite, SqliteArguments<'q>> {
    values
        .iter()
        .fold(sqlx::query(sql), |query, value| query.bind(value.as_ref()))
}

impl<C> Conn<C>
where
    C: DerefMut<Target = SqliteConnection> + Send,
{
    fn c(&mut self) -> &mut SqliteConnection {
        &mut self.0
    }

    /// A user row with its memberships.
    async fn load_user(&mut self, row: &SqliteRow) -> Result<User> {
        let id = uuid(row.try_get("id")?)?;
        let memberships = sqlx::query(
            "SELECT m.project_id, p.name, m.role FROM memberships m JOIN projects p ON p.id = m.project_id
             WHERE m.user_id = ? ORDER BY p.name",
        )
        .bind(id.to_string())
        .fetch_all(self.c())
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

    /// The first user `sql` (binding `value`) finds.
    async fn user_where(&mut self, sql: &str, value: &str) -> Result<Option<(User, SqliteRow)>> {
        let Some(row) = sqlx::query(sql)
            .bind(value)
            .fetch_optional(self.c())
            .await?
        else {
            return Ok(None);
        };
        Ok(Some((self.load_user(&row).await?, row)))
    }

    async fn groups_in(&mut self, scope: Scope<'_>) -> Result<Vec<GroupRecord>> {
        let (condition, values) = scope.condition("id", "project_id");
        let sql = format!(
            "SELECT id, project_id, name, description, created_at FROM security_groups WHERE {condition} ORDER BY created_at, name"
        );
        let rows = query(&sql, &values).fetch_all(self.c()).await?;
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
        let (condition, values) = scope.condition("group_id", "project_id");
        let sql = format!("SELECT * FROM security_group_rules WHERE {condition} ORDER BY seq");
        for row in query(&sql, &values).fetch_all(self.c()).await? {
            let record = rule_from_row(&row)?;
            if let Some(i) = index.get(&record.rule.group) {
                groups[*i].group.rules.push(record.rule);
            }
        }
        Ok(groups)
    }

    async fn instances_in(&mut self, scope: Scope<'_>) -> Result<Vec<Instance>> {
        let (condition, values) = scope.condition("i.id", "i.project_id");
        let sql =
            format!("SELECT i.* FROM instances i WHERE {condition} ORDER BY i.created_at, i.name");
        let mut instances = query(&sql, &values)
            .fetch_all(self.c())
            .await?
            .iter()
            .map(instance_from_row)
            .collect::<Result<Vec<_>>>()?;
        if instances.is_empty() {
            return Ok(instances);
        }
        let index: HashMap<Uuid, usize> = instances
            .iter()
            .enumerate()
            .map(|(n, i)| (i.id, n))
            .collect();
        let sql = format!(
            "SELECT ig.instance_id, g.id, g.name FROM instance_groups ig
             JOIN instances i ON i.id = ig.instance_id JOIN security_groups g ON g.id = ig.group_id
             WHERE {condition} ORDER BY ig.instance_id, ig.seq"
        );
        for row in query(&sql, &values).fetch_all(self.c()).await? {
            let instance = uuid(row.try_get("instance_id")?)?;
            let group = (GroupId(uuid(row.try_get("id")?)?), row.try_get("name")?);
            if let Some(n) = index.get(&instance) {
                instances[*n].groups.push(group);
            }
        }
        Ok(instances)
    }

    /// Runs a write statement binding `values` and returns how many rows it changed.
    async fn execute<S: AsRef<str> + Sync>(&mut self, sql: &str, values: &[S]) -> Result<u64> {
        Ok(query(sql, values).execute(self.c()).await?.rows_affected())
    }
}

#[async_trait::async_trait]
impl<C> Rows for Conn<C>
where
    C: DerefMut<Target = SqliteConnection> + Send,
{
    async fn revision(&mut self) -> Result<u64> {
        let value: i64 = sqlx::query_scalar("SELECT value FROM state WHERE key = 'revision'")
            .fetch_one(self.c())
            .await?;
        Ok(value as u64)
    }

    async fn projects(&mut self) -> Result<Vec<Project>> {
        sqlx::query("SELECT * FROM projects ORDER BY name")
            .fetch_all(self.c())
            .await?
            .iter()
            .map(project_from_row)
            .collect()
    }

    async fn user(&mut self, id: Uuid) -> Result<Option<User>> {
        let found = self
            .user_where("SELECT * FROM users WHERE id = ?", &id.to_string())
            .await?;
        Ok(found.map(|(user, _)| user))
    }

    async fn user_by_name(&mut self, name: &str) -> Result<Option<(User, String)>> {
        match self
            .user_where("SELECT * FROM users WHERE name = ?", name)
            .await?
        {
            Some((user, row)) => Ok(Some((user, row.try_get("password_hash")?))),
            None => Ok(None),
        }
    }

    async fn users(&mut self) -> Result<Vec<User>> {
        let rows = sqlx::query("SELECT * FROM users ORDER BY name")
            .fetch_all(self.c())
            .await?;
        let mut users = Vec::with_capacity(rows.len());
        for row in &rows {
            users.push(self.load_user(row).await?);
        }
        Ok(users)
    }

    async fn token_user(&mut self, token_hash: &str) -> Result<Option<User>> {
        let found = self
            .user_where(
                "SELECT u.* FROM api_tokens t JOIN users u ON u.id = t.user_id WHERE t.token_hash = ?",
                token_hash,
            )
            .await?;
        Ok(found.map(|(user, _)| user))
    }

    async fn api_tokens(&mut self, user: Uuid) -> Result<Vec<ApiToken>> {
        sqlx::query("SELECT id, user_id, name, created_at FROM api_tokens WHERE user_id = ? ORDER BY created_at")
            .bind(user.to_string())
            .fetch_all(self.c())
            .await?
            .iter()
            .map(token_from_row)
            .collect()
    }

    async fn session(&mut self, token_hash: &str) -> Result<Option<Session>> {
        let Some((user, row)) = self
            .user_where(
                "SELECT u.*, s.csrf_token, s.expires_at FROM sessions s JOIN users u ON u.id = s.user_id
                 WHERE s.token_hash = ?",
                token_hash,
            )
            .await?
        else {
            return Ok(None);
        };
        Ok(Some(Session {
            user,
            csrf_token: row.try_get("csrf_token")?,
            expires_at: row.try_get("expires_at")?,
        }))
    }

    async fn groups(&mut self, project: Option<Uuid>) -> Result<Vec<GroupRecord>> {
        self.groups_in(project.map_or(Scope::All, Scope::Project))
            .await
    }

    async fn group(&mut self, id: GroupId) -> Result<Option<GroupRecord>> {
        Ok(self.groups_in(Scope::Id(&id.to_string())).await?.pop())
    }

    async fn group_attachments(&mut self, group: GroupId) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar(
            "SELECT i.name FROM instance_groups ig JOIN instances i ON i.id = ig.instance_id WHERE ig.group_id = ?",
        )
        .bind(group.to_string())
        .fetch_all(self.c())
        .await?)
    }

    async fn group_referrers(&mut self, group: GroupId) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar(
            "SELECT DISTINCT g.name FROM security_group_rules r JOIN security_groups g ON g.id = r.group_id
             WHERE r.remote_group_id = ? AND r.group_id != ?",
        )
        .bind(group.to_string())
        .bind(group.to_string())
        .fetch_all(self.c())
        .await?)
    }

    async fn rule(&mut self, id: RuleId) -> Result<Option<RuleRecord>> {
        sqlx::query("SELECT * FROM security_group_rules WHERE id = ?")
            .bind(id.to_string())
            .fetch_optional(self.c())
            .await?
            .map(|row| rule_from_row(&row))
            .transpose()
    }

    async fn instances(&mut self, project: Option<Uuid>) -> Result<Vec<Instance>> {
        self.instances_in(project.map_or(Scope::All, Scope::Project))
            .await
    }

    async fn instance(&mut self, id: Uuid) -> Result<Option<Instance>> {
        Ok(self.instances_in(Scope::Id(&id.to_string())).await?.pop())
    }

    async fn agent_token(&mut self, token_hash: &str) -> Result<Option<(Uuid, Uuid)>> {
        let agent: Option<(String, String)> =
            sqlx::query_as("SELECT id, project_id FROM instances WHERE agent_token_hash = ?")
                .bind(token_hash)
                .fetch_optional(self.c())
                .await?;
        agent.map(|(i, p)| Ok((uuid(&i)?, uuid(&p)?))).transpose()
    }

    async fn audit(
        &mut self,
        projects: Option<&[Uuid]>,
        filter: &AuditFilter,
    ) -> Result<Vec<AuditEvent>> {
        let (mut sql, mut binds) = match projects {
            Some(ids) => (
                format!(
                    "SELECT * FROM audit_events WHERE project_id IN ({})",
                    placeholders(ids.len())
                ),
                ids.iter().map(Uuid::to_string).collect(),
            ),
            None => (
                "SELECT * FROM audit_events WHERE 1 = 1".to_owned(),
                Vec::new(),
            ),
        };
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
        sql += &format!(" ORDER BY id DESC LIMIT {}", filter.limit);
        query(&sql, &binds)
            .fetch_all(self.c())
            .await?
            .iter()
            .map(audit_from_row)
            .collect()
    }
}

#[async_trait::async_trait]
impl Transaction for Conn<sqlx::Transaction<'static, Sqlite>> {
    async fn insert_project(&mut self, project: &Project) -> Result<()> {
        sqlx::query("INSERT INTO projects (id, name, description, created_at) VALUES (?, ?, ?, ?)")
            .bind(project.id.to_string())
            .bind(&project.name)
            .bind(&project.description)
            .bind(project.created_at)
            .execute(self.c())
            .await?;
        Ok(())
    }

    async fn delete_project(&mut self, id: Uuid) -> Result<()> {
        let id = id.to_string();
        // Rules and attachments refer to groups across the project; they go first. The
        // foreign keys take memberships, groups and instances with the project.
        self.execute(
            "DELETE FROM instance_groups WHERE instance_id IN (SELECT id FROM instances WHERE project_id = ?)",
            &[&id],
        )
        .await?;
        self.execute(
            "DELETE FROM security_group_rules WHERE project_id = ?",
            &[&id],
        )
        .await?;
        self.execute("DELETE FROM projects WHERE id = ?", &[&id])
            .await?;
        Ok(())
    }

    async fn insert_user(&mut self, user: &User, password_hash: &str) -> Result<()> {
        sqlx::query("INSERT INTO users (id, name, password_hash, is_admin, created_at) VALUES (?, ?, ?, ?, ?)")
            .bind(user.id.to_string())
            .bind(&user.name)
            .bind(password_hash)
            .bind(i64::from(user.is_admin))
            .bind(user.created_at)
            .execute(self.c())
            .await?;
        Ok(())
    }

    async fn delete_user(&mut self, id: Uuid) -> Result<()> {
        self.execute("DELETE FROM users WHERE id = ?", &[&id.to_string()])
            .await?;
        Ok(())
    }

    async fn set_password_hash(&mut self, user: Uuid, password_hash: &str) -> Result<()> {
        self.execute(
            "UPDATE users SET password_hash = ? WHERE id = ?",
            &[password_hash, user.to_string().as_str()],
        )
        .await?;
        Ok(())
    }

    async fn set_membership(&mut self, project: Uuid, user: Uuid, role: Role) -> Result<()> {
        self.execute(
            "INSERT INTO memberships (project_id, user_id, role) VALUES (?, ?, ?)
             ON CONFLICT (project_id, user_id) DO UPDATE SET role = excluded.role",
            &[
                project.to_string().as_str(),
                &user.to_string(),
                role.as_str(),
            ],
        )
        .await?;
        Ok(())
    }

    async fn delete_membership(&mut self, project: Uuid, user: Uuid) -> Result<bool> {
        let deleted = self
            .execute(
                "DELETE FROM memberships WHERE project_id = ? AND user_id = ?",
                &[&project.to_string(), &user.to_string()],
            )
            .await?;
        Ok(deleted > 0)
    }

    async fn insert_api_token(&mut self, token: &ApiToken, token_hash: &str) -> Result<()> {
        sqlx::query("INSERT INTO api_tokens (id, user_id, name, token_hash, created_at) VALUES (?, ?, ?, ?, ?)")
            .bind(token.id.to_string())
            .bind(token.user_id.to_string())
            .bind(&token.name)
            .bind(token_hash)
            .bind(token.created_at)
            .execute(self.c())
            .await?;
        Ok(())
    }

    async fn delete_api_token(&mut self, user: Uuid, id: Uuid) -> Result<bool> {
        let deleted = self
            .execute(
                "DELETE FROM api_tokens WHERE id = ? AND user_id = ?",
                &[&id.to_string(), &user.to_string()],
            )
            .await?;
        Ok(deleted > 0)
    }

    async fn insert_session(
        &mut self,
        user: Uuid,
        token_hash: &str,
        csrf_token: &str,
        created_at: i64,
        expires_at: i64,
    ) -> Result<()> {
        sqlx::query("INSERT INTO sessions (token_hash, user_id, csrf_token, created_at, expires_at) VALUES (?, ?, ?, ?, ?)")
            .bind(token_hash)
            .bind(user.to_string())
            .bind(csrf_token)
            .bind(created_at)
            .bind(expires_at)
            .execute(self.c())
            .await?;
        Ok(())
    }

    async fn delete_sessions(&mut self, which: Sessions<'_>) -> Result<()> {
        let query = match which {
            Sessions::Token(hash) => {
                sqlx::query("DELETE FROM sessions WHERE token_hash = ?").bind(hash.to_owned())
            }
            Sessions::User(user) => {
                sqlx::query("DELETE FROM sessions WHERE user_id = ?").bind(user.to_string())
            }
            Sessions::ExpiredBefore(time) => {
                sqlx::query("DELETE FROM sessions WHERE expires_at < ?").bind(time)
            }
        };
        query.execute(self.c()).await?;
        Ok(())
    }

    async fn insert_group(
        &mut self,
        project: Uuid,
        group: &SecurityGroup,
        created_at: i64,
    ) -> Result<()> {
        sqlx::query("INSERT INTO security_groups (id, project_id, name, description, created_at) VALUES (?, ?, ?, ?, ?)")
            .bind(group.id.to_string())
            .bind(project.to_string())
            .bind(&group.name)
            .bind(&group.description)
            .bind(created_at)
            .execute(self.c())
            .await?;
        Ok(())
    }

    async fn delete_group(&mut self, id: GroupId) -> Result<()> {
        let id = id.to_string();
        self.execute(
            "DELETE FROM security_group_rules WHERE group_id = ?",
            &[&id],
        )
        .await?;
        self.execute("DELETE FROM security_groups WHERE id = ?", &[&id])
            .await?;
        Ok(())
    }

    async fn insert_rule(&mut self, project: Uuid, rule: &Rule, created_at: i64) -> Result<()> {
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
        .bind(created_at)
        .execute(self.c())
        .await?;
        Ok(())
    }

    async fn delete_rule(&mut self, id: RuleId) -> Result<()> {
        self.execute(
            "DELETE FROM security_group_rules WHERE id = ?",
            &[&id.to_string()],
        )
        .await?;
        Ok(())
    }

    async fn insert_instance(&mut self, instance: &Instance, agent_token_hash: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO instances (id, project_id, name, public_address, public_rdp_port, internal_address, rdp_port,
                rdp_enabled, rdp_nla_only, cert_fingerprint, agent_token_hash, agent_seen_at, agent_revision, created_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(instance.id.to_string())
        .bind(instance.project_id.to_string())
        .bind(&instance.name)
        .bind(instance.public_address.to_string())
        .bind(i64::from(instance.public_rdp_port))
        .bind(instance.internal_address.map(|a| a.to_string()))
        .bind(i64::from(instance.rdp_port))
        .bind(i64::from(instance.rdp_enabled))
        .bind(i64::from(instance.rdp_nla_only))
        .bind(&instance.cert_fingerprint)
        .bind(agent_token_hash)
        .bind(instance.agent_seen_at)
        .bind(instance.agent_revision.map(|r| r as i64))
        .bind(instance.created_at)
        .execute(self.c())
        .await?;
        Ok(())
    }

    async fn update_instance(&mut self, instance: &Instance) -> Result<()> {
        sqlx::query(
            "UPDATE instances SET name = ?, public_address = ?, public_rdp_port = ?, internal_address = ?,
                rdp_port = ?, rdp_enabled = ?, rdp_nla_only = ?, cert_fingerprint = ?, agent_seen_at = ?,
                agent_revision = ?, created_at = ?
             WHERE id = ?",
        )
        .bind(&instance.name)
        .bind(instance.public_address.to_string())
        .bind(i64::from(instance.public_rdp_port))
        .bind(instance.internal_address.map(|a| a.to_string()))
        .bind(i64::from(instance.rdp_port))
        .bind(i64::from(instance.rdp_enabled))
        .bind(i64::from(instance.rdp_nla_only))
        .bind(&instance.cert_fingerprint)
        .bind(instance.agent_seen_at)
        .bind(instance.agent_revision.map(|r| r as i64))
        .bind(instance.created_at)
        .bind(instance.id.to_string())
        .execute(self.c())
        .await?;
        Ok(())
    }

    async fn delete_instance(&mut self, id: Uuid) -> Result<()> {
        self.execute("DELETE FROM instances WHERE id = ?", &[&id.to_string()])
            .await?;
        Ok(())
    }

    async fn attach_group(&mut self, instance: Uuid, group: GroupId) -> Result<()> {
        let instance = instance.to_string();
        self.execute(
            "INSERT INTO instance_groups (instance_id, group_id, seq)
             SELECT ?, ?, COALESCE(MAX(seq), -1) + 1 FROM instance_groups WHERE instance_id = ?",
            &[&instance, &group.to_string(), &instance],
        )
        .await?;
        Ok(())
    }

    async fn detach_group(&mut self, instance: Uuid, group: GroupId) -> Result<()> {
        self.execute(
            "DELETE FROM instance_groups WHERE instance_id = ? AND group_id = ?",
            &[&instance.to_string(), &group.to_string()],
        )
        .await?;
        Ok(())
    }

    async fn insert_audit(&mut self, event: &NewAuditEvent<'_>) -> Result<()> {
        sqlx::query(
            "INSERT INTO audit_events (project_id, actor, action, target_type, target_id, summary, source, created_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(event.project_id.map(|p| p.to_string()))
        .bind(&event.actor.name)
        .bind(event.action)
        .bind(event.target_type)
        .bind(&event.target_id)
        .bind(&event.summary)
        .bind(&event.actor.source)
        .bind(event.created_at)
        .execute(self.c())
        .await?;
        Ok(())
    }

    async fn bump_revision(&mut self) -> Result<u64> {
        let revision: i64 = sqlx::query_scalar(
            "UPDATE state SET value = value + 1 WHERE key = 'revision' RETURNING value",
        )
        .fetch_one(self.c())
        .await?;
        Ok(revision as u64)
    }

    async fn commit(self: Box<Self>) -> Result<()> {
        self.0.commit().await?;
        Ok(())
    }
}
