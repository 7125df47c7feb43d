//! Every SQL statement of deskport, written once in the dialect SQLite and PostgreSQL both
//! accept: numbered parameters (`$1`), `ON CONFLICT … DO UPDATE`, `RETURNING`. The two schemas
//! (`migrations/sqlite`, `migrations/postgres`) make the rest agree: the same tables and
//! columns, 64-bit integers, booleans, names in bytewise order.
//!
//! A backend supplies a transaction that runs a statement with [`Value`]s bound ([`Sql`]) and
//! a row that reads a column ([`Record`]); [`Conn`] over it is then [`Rows`] and
//! [`Transaction`]. What differs between databases — opening, pools, how write transactions
//! are serialized, notices to other processes — stays in `sqlite.rs` and `postgres.rs`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::str::FromStr;

use deskport_policy::throttle::Attempts;
use deskport_policy::{
    Cidr, Direction, Ethertype, GroupId, PortRange, Protocol, Remote, Rule, RuleId, SecurityGroup,
    L4,
};
use uuid::Uuid;

use crate::{
    AgentReport, ApiToken, AuditEvent, AuditFilter, GatewayToken, GroupRecord, Instance,
    LoginAttempts, Membership, NewAuditEvent, Project, Result, Role, Rows, RuleRecord, Session,
    Sessions, StoreError, Touched, Transaction, User,
};

/// A value bound to a statement's parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Value {
    Text(Option<String>),
    Int(Option<i64>),
    Bool(bool),
}

impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Text(Some(v.to_owned()))
    }
}

impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Text(Some(v))
    }
}

impl From<&String> for Value {
    fn from(v: &String) -> Self {
        Value::Text(Some(v.clone()))
    }
}

impl From<Option<String>> for Value {
    fn from(v: Option<String>) -> Self {
        Value::Text(v)
    }
}

impl From<&Option<String>> for Value {
    fn from(v: &Option<String>) -> Self {
        Value::Text(v.clone())
    }
}

impl From<Uuid> for Value {
    fn from(v: Uuid) -> Self {
        Value::Text(Some(v.to_string()))
    }
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Int(Some(v))
    }
}

impl From<Option<i64>> for Value {
    fn from(v: Option<i64>) -> Self {
        Value::Int(v)
    }
}

impl From<u32> for Value {
    fn from(v: u32) -> Self {
        Value::Int(Some(i64::from(v)))
    }
}

impl From<u16> for Value {
    fn from(v: u16) -> Self {
        Value::Int(Some(i64::from(v)))
    }
}

impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Bool(v)
    }
}

/// `[Value::from(a), Value::from(b), …]`.
macro_rules! args {
    ($($value:expr),* $(,)?) => {
        [$($crate::sql::Value::from($value)),*]
    };
}

/// A statement with `$args` bound, for a backend's [`Sql`] implementation.
macro_rules! bound {
    ($sql:expr, $args:expr) => {{
        let mut query = sqlx::query($sql);
        for value in $args {
            query = match value {
                $crate::sql::Value::Text(v) => query.bind(v.as_deref()),
                $crate::sql::Value::Int(v) => query.bind(*v),
                $crate::sql::Value::Bool(v) => query.bind(*v),
            };
        }
        query
    }};
}

/// [`Record`] for a driver's row type.
macro_rules! record_for {
    ($row:ty) => {
        impl $crate::sql::Record for $row {
            fn text(&self, column: &str) -> $crate::Result<String> {
                Ok(sqlx::Row::try_get(self, column)?)
            }
            fn opt_text(&self, column: &str) -> $crate::Result<Option<String>> {
                Ok(sqlx::Row::try_get(self, column)?)
            }
            fn int(&self, column: &str) -> $crate::Result<i64> {
                Ok(sqlx::Row::try_get(self, column)?)
            }
            fn opt_int(&self, column: &str) -> $crate::Result<Option<i64>> {
                Ok(sqlx::Row::try_get(self, column)?)
            }
            fn flag(&self, column: &str) -> $crate::Result<bool> {
                Ok(sqlx::Row::try_get(self, column)?)
            }
        }
    };
}

pub(crate) use {bound, record_for};

/// A row's columns by name.
pub(crate) trait Record {
    fn text(&self, column: &str) -> Result<String>;
    fn opt_text(&self, column: &str) -> Result<Option<String>>;
    fn int(&self, column: &str) -> Result<i64>;
    fn opt_int(&self, column: &str) -> Result<Option<i64>>;
    fn flag(&self, column: &str) -> Result<bool>;
}

/// A database transaction of a backend (a read snapshot or a write transaction).
#[async_trait::async_trait]
pub(crate) trait Sql: Send + 'static {
    type Row: Record + Send + Sync;
    async fn fetch_all(&mut self, sql: &str, args: &[Value]) -> Result<Vec<Self::Row>>;
    async fn fetch_optional(&mut self, sql: &str, args: &[Value]) -> Result<Option<Self::Row>>;
    /// Runs a write statement and returns how many rows it changed.
    async fn execute(&mut self, sql: &str, args: &[Value]) -> Result<u64>;
    /// See [`Transaction::announce`].
    async fn announce(&mut self, touched: &Touched) -> Result<()>;
    async fn commit(self) -> Result<()>;
}

/// A backend's transaction as [`Rows`] and [`Transaction`].
pub(crate) struct Conn<S>(pub(crate) S);

fn uuid(text: &str) -> Result<Uuid> {
    Uuid::parse_str(text).map_err(|_| StoreError::Corrupt(format!("bad id {text:?}")))
}

fn opt_uuid(text: Option<String>) -> Result<Option<Uuid>> {
    text.map(|t| uuid(&t)).transpose()
}

fn count(value: i64, what: &str) -> Result<u32> {
    u32::try_from(value).map_err(|_| StoreError::Corrupt(format!("bad {what}")))
}

/// `$first, $first+1, …` for an IN list of `n` values (`NULL` for none, which matches nothing).
fn placeholders(first: usize, n: usize) -> String {
    if n == 0 {
        return "NULL".to_owned();
    }
    (first..first + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn project_from_row(row: &impl Record) -> Result<Project> {
    Ok(Project {
        id: uuid(&row.text("id")?)?,
        name: row.text("name")?,
        description: row.text("description")?,
        created_at: row.int("created_at")?,
    })
}

fn token_from_row(row: &impl Record) -> Result<ApiToken> {
    Ok(ApiToken {
        id: uuid(&row.text("id")?)?,
        user_id: uuid(&row.text("user_id")?)?,
        name: row.text("name")?,
        created_at: row.int("created_at")?,
    })
}

fn gateway_token_from_row(row: &impl Record) -> Result<GatewayToken> {
    Ok(GatewayToken {
        id: uuid(&row.text("id")?)?,
        user_id: uuid(&row.text("user_id")?)?,
        user_name: row.opt_text("user_name")?,
        instance_id: uuid(&row.text("instance_id")?)?,
        created_at: row.int("created_at")?,
        expires_at: row.int("expires_at")?,
        revoked_at: row.opt_int("revoked_at")?,
    })
}

/// An RD Gateway token's columns and its user's name (tokens outlive their users).
const GATEWAY_TOKEN: &str =
    "SELECT t.id, t.user_id, u.name AS user_name, t.instance_id, t.created_at,
    t.expires_at, t.revoked_at FROM gateway_tokens t LEFT JOIN users u ON u.id = t.user_id";

fn audit_from_row(row: &impl Record) -> Result<AuditEvent> {
    Ok(AuditEvent {
        id: row.int("id")?,
        project_id: opt_uuid(row.opt_text("project_id")?)?,
        actor: row.text("actor")?,
        action: row.text("action")?,
        target_type: row.text("target_type")?,
        target_id: row.opt_text("target_id")?,
        summary: row.text("summary")?,
        source: row.opt_text("source")?,
        created_at: row.int("created_at")?,
    })
}

fn attempts_from_row(row: &impl Record) -> Result<(String, Attempts)> {
    Ok((
        row.text("key")?,
        Attempts {
            failures: count(row.int("failures")?, "failure count")?,
            first_at: row.int("first_at")?,
            locked_until: row.opt_int("locked_until")?,
            lockouts: count(row.int("lockouts")?, "lockout count")?,
            last_at: row.int("last_at")?,
        },
    ))
}

fn instance_from_row(row: &impl Record) -> Result<Instance> {
    let addr = |col: &str| -> Result<Option<IpAddr>> {
        row.opt_text(col)?
            .map(|t| {
                IpAddr::from_str(&t).map_err(|_| StoreError::Corrupt(format!("bad address {t:?}")))
            })
            .transpose()
    };
    let port = |col: &str| -> Result<u16> {
        u16::try_from(row.int(col)?).map_err(|_| StoreError::Corrupt(format!("bad {col}")))
    };
    Ok(Instance {
        id: uuid(&row.text("id")?)?,
        project_id: uuid(&row.text("project_id")?)?,
        name: row.text("name")?,
        public_address: addr("public_address")?
            .ok_or_else(|| StoreError::Corrupt("instance without address".into()))?,
        public_rdp_port: port("public_rdp_port")?,
        internal_address: addr("internal_address")?,
        rdp_port: port("rdp_port")?,
        groups: Vec::new(),
        rdp_enabled: row.flag("rdp_enabled")?,
        rdp_nla_only: row.flag("rdp_nla_only")?,
        rdp_gateway: row.flag("rdp_gateway")?,
        cert_fingerprint: row.opt_text("cert_fingerprint")?,
        agent_seen_at: row.opt_int("agent_seen_at")?,
        agent_revision: row.opt_int("agent_revision")?.map(|r| r as u64),
        created_at: row.int("created_at")?,
    })
}

/// A rule row back into the core type.
fn rule_from_row(row: &impl Record) -> Result<RuleRecord> {
    let corrupt = |what: &str| StoreError::Corrupt(format!("rule with bad {what}"));
    let direction =
        Direction::parse(&row.text("direction")?).ok_or_else(|| corrupt("direction"))?;
    let ethertype =
        Ethertype::parse(&row.text("ethertype")?).ok_or_else(|| corrupt("ethertype"))?;
    let protocol = match row.opt_text("protocol")? {
        None => Protocol::Any,
        Some(p) => deskport_policy::parse_protocol_name(&p).ok_or_else(|| corrupt("protocol"))?,
    };
    let min = row.opt_int("port_range_min")?;
    let max = row.opt_int("port_range_max")?;
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
        row.opt_text("remote_ip_prefix")?,
        row.opt_text("remote_group_id")?,
    ) {
        (Some(prefix), _) => {
            Remote::Cidr(Cidr::parse(&prefix).map_err(|_| corrupt("prefix"))?.cidr)
        }
        (None, Some(group)) => Remote::Group(GroupId(uuid(&group)?)),
        (None, None) => Remote::Cidr(Cidr::any(ethertype)),
    };
    Ok(RuleRecord {
        project_id: uuid(&row.text("project_id")?)?,
        rule: Rule {
            id: RuleId(uuid(&row.text("id")?)?),
            group: GroupId(uuid(&row.text("group_id")?)?),
            direction,
            ethertype,
            protocol,
            l4,
            remote,
            description: row.text("description")?,
        },
        created_at: row.int("created_at")?,
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
    /// The condition on the id or project column, and the values it binds (as `$1`).
    fn condition(self, id_column: &str, project_column: &str) -> (String, Vec<Value>) {
        match self {
            Scope::All => ("1 = 1".to_owned(), Vec::new()),
            Scope::Project(p) => (format!("{project_column} = $1"), vec![p.into()]),
            Scope::Id(id) => (format!("{id_column} = $1"), vec![id.into()]),
        }
    }
}

impl<S: Sql> Conn<S> {
    /// A user row with its memberships.
    async fn load_user(&mut self, row: &S::Row) -> Result<User> {
        let id = uuid(&row.text("id")?)?;
        let memberships = self
            .0
            .fetch_all(
                "SELECT m.project_id, p.name, m.role FROM memberships m JOIN projects p ON p.id = m.project_id
                 WHERE m.user_id = $1 ORDER BY p.name",
                &args![id],
            )
            .await?
            .iter()
            .map(|r| {
                Ok(Membership {
                    project_id: uuid(&r.text("project_id")?)?,
                    project_name: r.text("name")?,
                    role: Role::parse(&r.text("role")?)
                        .ok_or_else(|| StoreError::Corrupt("bad role".into()))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(User {
            id,
            name: row.text("name")?,
            is_admin: row.flag("is_admin")?,
            created_at: row.int("created_at")?,
            memberships,
        })
    }

    /// The first user `sql` (binding `value` as `$1`) finds.
    async fn user_where(&mut self, sql: &str, value: &str) -> Result<Option<(User, S::Row)>> {
        let Some(row) = self.0.fetch_optional(sql, &args![value]).await? else {
            return Ok(None);
        };
        Ok(Some((self.load_user(&row).await?, row)))
    }

    async fn groups_in(&mut self, scope: Scope<'_>) -> Result<Vec<GroupRecord>> {
        let (condition, values) = scope.condition("id", "project_id");
        let sql = format!(
            "SELECT id, project_id, name, description, created_at FROM security_groups WHERE {condition} ORDER BY created_at, name"
        );
        let rows = self.0.fetch_all(&sql, &values).await?;
        let mut groups = Vec::with_capacity(rows.len());
        let mut index = HashMap::new();
        for row in &rows {
            let id = GroupId(uuid(&row.text("id")?)?);
            index.insert(id, groups.len());
            groups.push(GroupRecord {
                project_id: uuid(&row.text("project_id")?)?,
                group: SecurityGroup {
                    id,
                    name: row.text("name")?,
                    description: row.text("description")?,
                    rules: Vec::new(),
                },
                created_at: row.int("created_at")?,
            });
        }
        if groups.is_empty() {
            return Ok(groups);
        }
        let (condition, values) = scope.condition("group_id", "project_id");
        let sql = format!("SELECT * FROM security_group_rules WHERE {condition} ORDER BY seq");
        for row in self.0.fetch_all(&sql, &values).await? {
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
        let mut instances = self
            .0
            .fetch_all(&sql, &values)
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
        for row in self.0.fetch_all(&sql, &values).await? {
            let instance = uuid(&row.text("instance_id")?)?;
            let group = (GroupId(uuid(&row.text("id")?)?), row.text("name")?);
            if let Some(n) = index.get(&instance) {
                instances[*n].groups.push(group);
            }
        }
        Ok(instances)
    }

    /// Runs a write statement.
    async fn run(&mut self, sql: &str, args: &[Value]) -> Result<()> {
        self.0.execute(sql, args).await.map(|_| ())
    }

    /// The first column of every row `sql` returns, as text.
    async fn names(&mut self, sql: &str, args: &[Value]) -> Result<Vec<String>> {
        self.0
            .fetch_all(sql, args)
            .await?
            .iter()
            .map(|r| r.text("name"))
            .collect()
    }
}

#[async_trait::async_trait]
impl<S: Sql> Rows for Conn<S> {
    async fn revision(&mut self) -> Result<u64> {
        let row = self
            .0
            .fetch_optional("SELECT value FROM state WHERE key = 'revision'", &[])
            .await?
            .ok_or_else(|| StoreError::Corrupt("no revision".into()))?;
        Ok(row.int("value")? as u64)
    }

    async fn projects(&mut self) -> Result<Vec<Project>> {
        self.0
            .fetch_all("SELECT * FROM projects ORDER BY name", &[])
            .await?
            .iter()
            .map(project_from_row)
            .collect()
    }

    async fn user(&mut self, id: Uuid) -> Result<Option<User>> {
        let found = self
            .user_where("SELECT * FROM users WHERE id = $1", &id.to_string())
            .await?;
        Ok(found.map(|(user, _)| user))
    }

    async fn user_by_name(&mut self, name: &str) -> Result<Option<(User, String)>> {
        match self
            .user_where("SELECT * FROM users WHERE name = $1", name)
            .await?
        {
            Some((user, row)) => Ok(Some((user, row.text("password_hash")?))),
            None => Ok(None),
        }
    }

    async fn users(&mut self) -> Result<Vec<User>> {
        let rows = self
            .0
            .fetch_all("SELECT * FROM users ORDER BY name", &[])
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
                "SELECT u.* FROM api_tokens t JOIN users u ON u.id = t.user_id WHERE t.token_hash = $1",
                token_hash,
            )
            .await?;
        Ok(found.map(|(user, _)| user))
    }

    async fn api_tokens(&mut self, user: Uuid) -> Result<Vec<ApiToken>> {
        self.0
            .fetch_all(
                "SELECT id, user_id, name, created_at FROM api_tokens WHERE user_id = $1 ORDER BY created_at",
                &args![user],
            )
            .await?
            .iter()
            .map(token_from_row)
            .collect()
    }

    async fn session(&mut self, token_hash: &str) -> Result<Option<Session>> {
        let Some((user, row)) = self
            .user_where(
                "SELECT u.*, s.csrf_token, s.expires_at FROM sessions s JOIN users u ON u.id = s.user_id
                 WHERE s.token_hash = $1",
                token_hash,
            )
            .await?
        else {
            return Ok(None);
        };
        Ok(Some(Session {
            user,
            csrf_token: row.text("csrf_token")?,
            expires_at: row.int("expires_at")?,
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
        self.names(
            "SELECT i.name FROM instance_groups ig JOIN instances i ON i.id = ig.instance_id WHERE ig.group_id = $1",
            &args![group.to_string()],
        )
        .await
    }

    async fn group_referrers(&mut self, group: GroupId) -> Result<Vec<String>> {
        self.names(
            "SELECT DISTINCT g.name FROM security_group_rules r JOIN security_groups g ON g.id = r.group_id
             WHERE r.remote_group_id = $1 AND r.group_id != $1",
            &args![group.to_string()],
        )
        .await
    }

    async fn rule(&mut self, id: RuleId) -> Result<Option<RuleRecord>> {
        self.0
            .fetch_optional(
                "SELECT * FROM security_group_rules WHERE id = $1",
                &args![id.to_string()],
            )
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
        let row = self
            .0
            .fetch_optional(
                "SELECT id, project_id FROM instances WHERE agent_token_hash = $1",
                &args![token_hash],
            )
            .await?;
        row.map(|r| Ok((uuid(&r.text("id")?)?, uuid(&r.text("project_id")?)?)))
            .transpose()
    }

    async fn gateway_token(&mut self, id: Uuid) -> Result<Option<GatewayToken>> {
        let sql = format!("{GATEWAY_TOKEN} WHERE t.id = $1");
        self.0
            .fetch_optional(&sql, &args![id])
            .await?
            .map(|row| gateway_token_from_row(&row))
            .transpose()
    }

    async fn gateway_token_by_hash(&mut self, token_hash: &str) -> Result<Option<GatewayToken>> {
        let sql = format!("{GATEWAY_TOKEN} WHERE t.token_hash = $1");
        self.0
            .fetch_optional(&sql, &args![token_hash])
            .await?
            .map(|row| gateway_token_from_row(&row))
            .transpose()
    }

    async fn gateway_tokens(&mut self, instance: Uuid) -> Result<Vec<GatewayToken>> {
        let sql = format!("{GATEWAY_TOKEN} WHERE t.instance_id = $1 ORDER BY t.created_at, t.id");
        self.0
            .fetch_all(&sql, &args![instance])
            .await?
            .iter()
            .map(gateway_token_from_row)
            .collect()
    }

    async fn audit(
        &mut self,
        projects: Option<&[Uuid]>,
        filter: &AuditFilter,
    ) -> Result<Vec<AuditEvent>> {
        let (mut sql, mut binds): (String, Vec<Value>) = match projects {
            Some(ids) => (
                format!(
                    "SELECT * FROM audit_events WHERE project_id IN ({})",
                    placeholders(1, ids.len())
                ),
                ids.iter().map(|id| Value::from(*id)).collect(),
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
                binds.push(v.into());
                sql += &format!(" AND {column} = ${}", binds.len());
            }
        }
        if let Some(after) = filter.after_id {
            binds.push(after.into());
            sql += &format!(" AND id > ${}", binds.len());
        }
        sql += &format!(" ORDER BY id DESC LIMIT {}", filter.limit);
        self.0
            .fetch_all(&sql, &binds)
            .await?
            .iter()
            .map(audit_from_row)
            .collect()
    }

    async fn login_attempts(&mut self, keys: &[String]) -> Result<Vec<(String, Attempts)>> {
        let sql = format!(
            "SELECT * FROM login_attempts WHERE key IN ({}) ORDER BY key",
            placeholders(1, keys.len())
        );
        let binds: Vec<Value> = keys.iter().map(Value::from).collect();
        self.0
            .fetch_all(&sql, &binds)
            .await?
            .iter()
            .map(attempts_from_row)
            .collect()
    }
}

#[async_trait::async_trait]
impl<S: Sql> Transaction for Conn<S> {
    async fn insert_project(&mut self, project: &Project) -> Result<()> {
        self.run(
            "INSERT INTO projects (id, name, description, created_at) VALUES ($1, $2, $3, $4)",
            &args![
                project.id,
                &project.name,
                &project.description,
                project.created_at
            ],
        )
        .await
    }

    async fn delete_project(&mut self, id: Uuid) -> Result<()> {
        // Rules and attachments refer to groups across the project; they go first. The
        // foreign keys take memberships, groups and instances with the project.
        for sql in [
            "DELETE FROM instance_groups WHERE instance_id IN (SELECT id FROM instances WHERE project_id = $1)",
            "DELETE FROM security_group_rules WHERE project_id = $1",
            "DELETE FROM projects WHERE id = $1",
        ] {
            self.run(sql, &args![id]).await?;
        }
        Ok(())
    }

    async fn insert_user(&mut self, user: &User, password_hash: &str) -> Result<()> {
        self.run(
                "INSERT INTO users (id, name, password_hash, is_admin, created_at) VALUES ($1, $2, $3, $4, $5)",
                &args![user.id, &user.name, password_hash, user.is_admin, user.created_at],
        )
        .await
    }

    async fn delete_user(&mut self, id: Uuid) -> Result<()> {
        self.run("DELETE FROM users WHERE id = $1", &args![id])
            .await
    }

    async fn set_password_hash(&mut self, user: Uuid, password_hash: &str) -> Result<()> {
        self.run(
            "UPDATE users SET password_hash = $1 WHERE id = $2",
            &args![password_hash, user],
        )
        .await
    }

    async fn set_membership(&mut self, project: Uuid, user: Uuid, role: Role) -> Result<()> {
        self.run(
            "INSERT INTO memberships (project_id, user_id, role) VALUES ($1, $2, $3)
             ON CONFLICT (project_id, user_id) DO UPDATE SET role = excluded.role",
            &args![project, user, role.as_str()],
        )
        .await
    }

    async fn delete_membership(&mut self, project: Uuid, user: Uuid) -> Result<bool> {
        let deleted = self
            .0
            .execute(
                "DELETE FROM memberships WHERE project_id = $1 AND user_id = $2",
                &args![project, user],
            )
            .await?;
        Ok(deleted > 0)
    }

    async fn insert_api_token(&mut self, token: &ApiToken, token_hash: &str) -> Result<()> {
        self.run(
                "INSERT INTO api_tokens (id, user_id, name, token_hash, created_at) VALUES ($1, $2, $3, $4, $5)",
                &args![token.id, token.user_id, &token.name, token_hash, token.created_at],
        )
        .await
    }

    async fn delete_api_token(&mut self, user: Uuid, id: Uuid) -> Result<bool> {
        let deleted = self
            .0
            .execute(
                "DELETE FROM api_tokens WHERE id = $1 AND user_id = $2",
                &args![id, user],
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
        self.run(
                "INSERT INTO sessions (token_hash, user_id, csrf_token, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)",
                &args![token_hash, user, csrf_token, created_at, expires_at],
        )
        .await
    }

    async fn delete_sessions(&mut self, which: Sessions<'_>) -> Result<()> {
        let (sql, value) = match which {
            Sessions::Token(hash) => ("DELETE FROM sessions WHERE token_hash = $1", hash.into()),
            Sessions::User(user) => ("DELETE FROM sessions WHERE user_id = $1", user.into()),
            Sessions::ExpiredBefore(time) => {
                ("DELETE FROM sessions WHERE expires_at < $1", time.into())
            }
        };
        self.run(sql, &[value]).await
    }

    async fn insert_group(
        &mut self,
        project: Uuid,
        group: &SecurityGroup,
        created_at: i64,
    ) -> Result<()> {
        self.run(
                "INSERT INTO security_groups (id, project_id, name, description, created_at) VALUES ($1, $2, $3, $4, $5)",
                &args![
                    group.id.to_string(),
                    project,
                    &group.name,
                    &group.description,
                    created_at
                ],
        )
        .await
    }

    async fn delete_group(&mut self, id: GroupId) -> Result<()> {
        for sql in [
            "DELETE FROM security_group_rules WHERE group_id = $1",
            "DELETE FROM security_groups WHERE id = $1",
        ] {
            self.run(sql, &args![id.to_string()]).await?;
        }
        Ok(())
    }

    async fn insert_rule(&mut self, project: Uuid, rule: &Rule, created_at: i64) -> Result<()> {
        let (protocol, min, max, prefix, group) = rule_columns(rule);
        self.run(
                "INSERT INTO security_group_rules (id, group_id, project_id, direction, ethertype, protocol,
                    port_range_min, port_range_max, remote_ip_prefix, remote_group_id, description, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
                &args![
                    rule.id.to_string(),
                    rule.group.to_string(),
                    project,
                    rule.direction.as_str(),
                    rule.ethertype.as_str(),
                    protocol,
                    min,
                    max,
                    prefix,
                    group,
                    &rule.description,
                    created_at,
                ],
        )
        .await
    }

    async fn delete_rule(&mut self, id: RuleId) -> Result<()> {
        self.run(
            "DELETE FROM security_group_rules WHERE id = $1",
            &args![id.to_string()],
        )
        .await
    }

    async fn insert_instance(&mut self, instance: &Instance, agent_token_hash: &str) -> Result<()> {
        self.run(
                "INSERT INTO instances (id, project_id, name, public_address, public_rdp_port, internal_address, rdp_port,
                    rdp_enabled, rdp_nla_only, cert_fingerprint, agent_token_hash, agent_seen_at, agent_revision, created_at,
                    rdp_gateway)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
                &args![
                    instance.id,
                    instance.project_id,
                    &instance.name,
                    instance.public_address.to_string(),
                    instance.public_rdp_port,
                    instance.internal_address.map(|a| a.to_string()),
                    instance.rdp_port,
                    instance.rdp_enabled,
                    instance.rdp_nla_only,
                    &instance.cert_fingerprint,
                    agent_token_hash,
                    instance.agent_seen_at,
                    instance.agent_revision.map(|r| r as i64),
                    instance.created_at,
                    instance.rdp_gateway,
                ],
        )
        .await
    }

    async fn update_instance(&mut self, instance: &Instance) -> Result<()> {
        self.run(
                "UPDATE instances SET name = $1, public_address = $2, public_rdp_port = $3, internal_address = $4,
                    rdp_port = $5, rdp_enabled = $6, rdp_nla_only = $7, created_at = $8, rdp_gateway = $10
                 WHERE id = $9",
                &args![
                    &instance.name,
                    instance.public_address.to_string(),
                    instance.public_rdp_port,
                    instance.internal_address.map(|a| a.to_string()),
                    instance.rdp_port,
                    instance.rdp_enabled,
                    instance.rdp_nla_only,
                    instance.created_at,
                    instance.id,
                    instance.rdp_gateway,
                ],
        )
        .await
    }

    async fn report_agent(&mut self, report: &AgentReport) -> Result<bool> {
        let changed = self
            .0
            .execute(
                "UPDATE instances SET cert_fingerprint = COALESCE($1, cert_fingerprint),
                    agent_revision = COALESCE($2, agent_revision), agent_seen_at = $3
                 WHERE id = $4",
                &args![
                    &report.fingerprint,
                    report.revision.map(|r| r as i64),
                    report.seen_at,
                    report.instance,
                ],
            )
            .await?;
        Ok(changed > 0)
    }

    async fn delete_instance(&mut self, id: Uuid) -> Result<()> {
        self.run("DELETE FROM instances WHERE id = $1", &args![id])
            .await
    }

    async fn attach_group(&mut self, instance: Uuid, group: GroupId) -> Result<()> {
        self.run(
            "INSERT INTO instance_groups (instance_id, group_id, seq)
             SELECT $1, $2, COALESCE(MAX(seq), -1) + 1 FROM instance_groups WHERE instance_id = $1",
            &args![instance, group.to_string()],
        )
        .await
    }

    async fn detach_group(&mut self, instance: Uuid, group: GroupId) -> Result<()> {
        self.run(
            "DELETE FROM instance_groups WHERE instance_id = $1 AND group_id = $2",
            &args![instance, group.to_string()],
        )
        .await
    }

    async fn insert_gateway_token(&mut self, t: &GatewayToken, token_hash: &str) -> Result<()> {
        self.run(
            "INSERT INTO gateway_tokens (id, token_hash, user_id, instance_id, created_at, expires_at, revoked_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &args![
                t.id,
                token_hash,
                t.user_id,
                t.instance_id,
                t.created_at,
                t.expires_at,
                t.revoked_at
            ],
        )
        .await
    }

    async fn revoke_gateway_token(&mut self, id: Uuid, at: i64) -> Result<bool> {
        let changed = self
            .0
            .execute(
                "UPDATE gateway_tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
                &args![at, id],
            )
            .await?;
        Ok(changed > 0)
    }

    async fn delete_gateway_tokens(&mut self, expired_before: i64) -> Result<u64> {
        self.0
            .execute(
                "DELETE FROM gateway_tokens WHERE expires_at < $1",
                &args![expired_before],
            )
            .await
    }

    async fn put_login_attempts(&mut self, key: &str, a: &Attempts) -> Result<()> {
        self.run(
                "INSERT INTO login_attempts (key, failures, first_at, locked_until, lockouts, last_at)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (key) DO UPDATE SET failures = excluded.failures, first_at = excluded.first_at,
                    locked_until = excluded.locked_until, lockouts = excluded.lockouts, last_at = excluded.last_at",
                &args![key, a.failures, a.first_at, a.locked_until, a.lockouts, a.last_at],
        )
        .await
    }

    async fn delete_login_attempts(&mut self, which: LoginAttempts<'_>) -> Result<()> {
        let (sql, value) = match which {
            LoginAttempts::Key(key) => ("DELETE FROM login_attempts WHERE key = $1", key.into()),
            LoginAttempts::IdleSince(time) => {
                ("DELETE FROM login_attempts WHERE last_at < $1", time.into())
            }
        };
        self.run(sql, &[value]).await
    }

    async fn insert_audit(&mut self, event: &NewAuditEvent<'_>) -> Result<()> {
        self.run(
                "INSERT INTO audit_events (project_id, actor, action, target_type, target_id, summary, source, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                &args![
                    event.project_id.map(|p| p.to_string()),
                    &event.actor.name,
                    event.action,
                    event.target_type,
                    &event.target_id,
                    &event.summary,
                    &event.actor.source,
                    event.created_at,
                ],
        )
        .await
    }

    async fn bump_revision(&mut self) -> Result<u64> {
        let row = self
            .0
            .fetch_optional(
                "UPDATE state SET value = value + 1 WHERE key = 'revision' RETURNING value",
                &[],
            )
            .await?
            .ok_or_else(|| StoreError::Corrupt("no revision".into()))?;
        Ok(row.int("value")? as u64)
    }

    async fn announce(&mut self, touched: &Touched) -> Result<()> {
        self.0.announce(touched).await
    }

    async fn commit(self: Box<Self>) -> Result<()> {
        self.0.commit().await
    }
}
