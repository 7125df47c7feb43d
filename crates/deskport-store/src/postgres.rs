//! The PostgreSQL backend, for several manager replicas on one database. The statements are
//! in `sql.rs`, shared with SQLite; the schema is `migrations/postgres` (the same versions as
//! `migrations/sqlite`), embedded and run at open — each migration in a transaction, under
//! sqlx's migration lock, so replicas starting together migrate once and a failed migration
//! leaves the database as it was.
//!
//! What several processes on one database need, and how it is done here:
//! - **Write transactions are serialized** across every process: each takes the transaction
//!   advisory lock [`WRITE_LOCK`] first. They run at READ COMMITTED, so every statement after
//!   the lock sees what the previous writer committed (a REPEATABLE READ snapshot would date
//!   from before the lock).
//! - **Reads see one state**: each is a `REPEATABLE READ, READ ONLY` transaction.
//! - **Notices**: a transaction that touched what readers cache announces it with `NOTIFY`
//!   on [`CHANNEL`], delivered when it commits. One connection per process `LISTEN`s and
//!   turns notifications from other processes into [`Notice::Committed`]. When that connection
//!   fails (closed, terminated, or silent past a ping), the store hears [`Notice::Lost`], a
//!   new connection is made with back-off, and [`Notice::Listening`] tells the store to read
//!   the revision again and forget its copies — so a change committed while nothing listened
//!   is not lost.
//! - **Periodic jobs run in one process**: the one holding the session advisory lock
//!   [`LEAD_LOCK`] on a connection of its own ([`Backend::lead`]); when it stops, its
//!   connection closes, the lock is released, and the next process to ask takes it.
//!
//! No TLS: sqlx is built without it, so the database is reached on a trusted network (or a
//! Unix socket); `sslmode=require` in the URL is refused with a clear error.

use std::str::FromStr;
use std::sync::Mutex;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgListener, PgNotification, PgPool, PgPoolOptions, PgRow};
use sqlx::{ConnectOptions as _, Connection as _, PgConnection, Postgres};
use tokio::sync::{mpsc, oneshot};

use crate::sql::{bound, record_for, Conn, Sql, Value};
use crate::{Backend, Notice, Result, Rows, StoreError, Touched, Transaction};

pub(crate) static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// The transaction advisory lock every write transaction takes first ("deskport").
const WRITE_LOCK: i64 = 0x6465_736b_706f_7274;
/// The session advisory lock of the process that runs the periodic jobs.
const LEAD_LOCK: i64 = WRITE_LOCK + 1;
/// The channel commits are announced on.
pub const CHANNEL: &str = "deskport_changes";
/// `application_name` of the connection that listens (tests find it by this name).
pub const LISTENER_NAME: &str = "deskport listener";

/// How long opening the database may take before it is reported unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections for reads and writes, per process.
const POOL_SIZE: u32 = 16;
/// A listening connection with no notification for this long is pinged.
const PING_EVERY: Duration = Duration::from_secs(30);
const PING_TIMEOUT: Duration = Duration::from_secs(10);
const FIRST_RETRY: Duration = Duration::from_millis(100);
const MAX_RETRY: Duration = Duration::from_secs(5);

/// The PostgreSQL database of a [`crate::Store`].
pub struct PostgresBackend {
    pool: PgPool,
    options: PgConnectOptions,
    /// Names this backend in its announcements, so that it ignores its own.
    origin: String,
    notices: Mutex<Option<mpsc::UnboundedReceiver<Notice>>>,
    /// The connection holding [`LEAD_LOCK`] (or trying to).
    lead: tokio::sync::Mutex<Option<Lead>>,
    /// Dropped with the backend: the listener stops.
    _stop: oneshot::Sender<()>,
}

struct Lead {
    connection: PgConnection,
    held: bool,
}

impl std::fmt::Debug for PostgresBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresBackend")
            .field("database", &target(&self.options))
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

/// `host:port/database`, for messages (never the password).
fn target(options: &PgConnectOptions) -> String {
    format!(
        "{}:{}/{}",
        options.get_host(),
        options.get_port(),
        options.get_database().unwrap_or("")
    )
}

fn connect_error(options: &PgConnectOptions, reason: impl std::fmt::Display) -> StoreError {
    StoreError::Connect {
        target: target(options),
        reason: reason.to_string(),
    }
}

impl PostgresBackend {
    /// Connects to the database at `url` (`postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE`),
    /// runs the migrations, and starts listening for other processes' commits.
    pub async fn open(url: &str) -> Result<Self> {
        Self::open_with(url, POOL_SIZE, false).await
    }

    /// [`PostgresBackend::open`] with `connections` for reads and writes, all opened at once
    /// and kept open: for tests that stop new connections (`ALTER ROLE … CONNECTION LIMIT 0`)
    /// and must still read and write through the stores that have theirs.
    pub async fn open_with_connections(url: &str, connections: u32) -> Result<Self> {
        Self::open_with(url, connections.max(1), true).await
    }

    async fn open_with(url: &str, connections: u32, keep: bool) -> Result<Self> {
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(StoreError::BadUrl(
                "a PostgreSQL URL starts with postgres:// or postgresql://".into(),
            ));
        }
        let options = PgConnectOptions::from_str(url)
            .map_err(|e| StoreError::BadUrl(e.to_string()))?
            .application_name("deskport");
        // One connection first: its error says why the database cannot be used (a pool
        // would retry a refused connection until its own timeout).
        let mut first = tokio::time::timeout(CONNECT_TIMEOUT, options.connect())
            .await
            .map_err(|_| connect_error(&options, "no answer in 10 s"))?
            .map_err(|e| connect_error(&options, e))?;
        crate::migrate(&MIGRATOR, &mut first).await?;
        first.close().await?;

        let mut pool = PgPoolOptions::new()
            .max_connections(connections)
            .acquire_timeout(CONNECT_TIMEOUT);
        if keep {
            pool = pool
                .min_connections(connections)
                .idle_timeout(None)
                .max_lifetime(None);
        }
        let pool = pool
            .connect_with(options.clone())
            .await
            .map_err(|e| connect_error(&options, e))?;
        let listen_pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(CONNECT_TIMEOUT)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_lazy_with(options.clone().application_name(LISTENER_NAME));
        let listener = subscribe(&listen_pool)
            .await
            .map_err(|e| connect_error(&options, e))?;
        let origin = uuid::Uuid::new_v4().simple().to_string();
        let (notices_tx, notices_rx) = mpsc::unbounded_channel();
        let (stop, stopped) = oneshot::channel();
        tokio::spawn(listen(
            listen_pool,
            listener,
            origin.clone(),
            notices_tx,
            stopped,
        ));
        Ok(Self {
            pool,
            options,
            origin,
            notices: Mutex::new(Some(notices_rx)),
            lead: tokio::sync::Mutex::new(None),
            _stop: stop,
        })
    }

    async fn try_lead(&self, lead: &mut Option<Lead>) -> Result<bool> {
        if lead.is_none() {
            let connection = self
                .options
                .clone()
                .application_name("deskport lead")
                .connect()
                .await?;
            *lead = Some(Lead {
                connection,
                held: false,
            });
        }
        let Some(l) = lead.as_mut() else {
            return Ok(false);
        };
        if l.held {
            // Still ours as long as the connection lives.
            sqlx::query("SELECT 1").execute(&mut l.connection).await?;
        } else {
            l.held = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                .bind(LEAD_LOCK)
                .fetch_one(&mut l.connection)
                .await?;
        }
        Ok(l.held)
    }
}

#[async_trait::async_trait]
impl Backend for PostgresBackend {
    async fn read(&self) -> Result<Box<dyn Rows>> {
        let tx = self
            .pool
            .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .await?;
        Ok(Box::new(Conn(Pg {
            tx,
            origin: self.origin.clone(),
        })))
    }

    async fn write(&self) -> Result<Box<dyn Transaction>> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(WRITE_LOCK)
            .execute(&mut *tx)
            .await?;
        Ok(Box::new(Conn(Pg {
            tx,
            origin: self.origin.clone(),
        })))
    }

    /// Without the write lock: the row locks of the instances it reports on are enough.
    async fn status_write(&self) -> Result<Box<dyn Transaction>> {
        Ok(Box::new(Conn(Pg {
            tx: self.pool.begin().await?,
            origin: self.origin.clone(),
        })))
    }

    fn notices(&self) -> Option<mpsc::UnboundedReceiver<Notice>> {
        self.notices
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    async fn lead(&self) -> Result<bool> {
        let mut lead = self.lead.lock().await;
        let held = self.try_lead(&mut lead).await;
        if held.is_err() {
            // A new connection next time; the lock, if it was held, went with the old one.
            *lead = None;
        }
        held
    }
}

/// A read or write transaction, and what its announcements say this process is.
struct Pg {
    tx: sqlx::Transaction<'static, Postgres>,
    origin: String,
}

record_for!(PgRow);

/// `ORIGIN REVISION FLAGS`: `-` for no revision, `p` principals and `i` instances touched.
fn payload(origin: &str, touched: &Touched) -> String {
    let revision = touched
        .revision
        .map_or_else(|| "-".to_owned(), |r| r.to_string());
    let mut flags = String::new();
    if touched.principals {
        flags.push('p');
    }
    if touched.instances {
        flags.push('i');
    }
    if flags.is_empty() {
        flags.push('-');
    }
    format!("{origin} {revision} {flags}")
}

/// A payload of another process back into what it touched (`None`: ours, or not one).
fn parse_payload(ours: &str, text: &str) -> Option<Touched> {
    let mut parts = text.split(' ');
    let (origin, revision, flags) = (parts.next()?, parts.next()?, parts.next()?);
    if origin == ours {
        return None;
    }
    Some(Touched {
        revision: revision.parse().ok(),
        principals: flags.contains('p'),
        instances: flags.contains('i'),
    })
}

#[async_trait::async_trait]
impl Sql for Pg {
    type Row = PgRow;

    async fn fetch_all(&mut self, sql: &str, args: &[Value]) -> Result<Vec<PgRow>> {
        Ok(bound!(sql, args).fetch_all(&mut *self.tx).await?)
    }

    async fn fetch_optional(&mut self, sql: &str, args: &[Value]) -> Result<Option<PgRow>> {
        Ok(bound!(sql, args).fetch_optional(&mut *self.tx).await?)
    }

    async fn execute(&mut self, sql: &str, args: &[Value]) -> Result<u64> {
        Ok(bound!(sql, args)
            .execute(&mut *self.tx)
            .await?
            .rows_affected())
    }

    async fn announce(&mut self, touched: &Touched) -> Result<()> {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(payload(&self.origin, touched))
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }

    async fn commit(self) -> Result<()> {
        Ok(self.tx.commit().await?)
    }
}

/// A listener on [`CHANNEL`], on a connection of `pool`'s.
async fn subscribe(pool: &PgPool) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    // A lost connection is this module's to handle (it tells the store): no silent reconnect.
    listener.eager_reconnect(false);
    listener.listen(CHANNEL).await?;
    Ok(listener)
}

/// What the listening connection did next.
enum Step {
    Notified(PgNotification),
    /// Nothing for [`PING_EVERY`], and the connection answers.
    Quiet,
    Lost(String),
    Connected(PgListener),
    NotConnected(String),
}

async fn next(pool: &PgPool, listener: &mut Option<PgListener>, retry: Duration) -> Step {
    let Some(l) = listener.as_mut() else {
        tokio::time::sleep(retry).await;
        return match subscribe(pool).await {
            Ok(l) => Step::Connected(l),
            Err(e) => Step::NotConnected(e.to_string()),
        };
    };
    // `try_recv` waits for a message in a cancel-safe way: the timeout loses nothing.
    match tokio::time::timeout(PING_EVERY, l.try_recv()).await {
        Ok(Ok(Some(n))) => Step::Notified(n),
        Ok(Ok(None)) => Step::Lost("the connection was closed".into()),
        Ok(Err(e)) => Step::Lost(e.to_string()),
        Err(_) => {
            match tokio::time::timeout(PING_TIMEOUT, sqlx::query("SELECT 1").execute(l)).await {
                Ok(Ok(_)) => Step::Quiet,
                Ok(Err(e)) => Step::Lost(e.to_string()),
                Err(_) => Step::Lost("no answer to a ping".into()),
            }
        }
    }
}

/// Turns notifications into notices until the backend is dropped (`stop`) or the store no
/// longer reads them.
async fn listen(
    pool: PgPool,
    listener: PgListener,
    origin: String,
    notices: mpsc::UnboundedSender<Notice>,
    mut stop: oneshot::Receiver<()>,
) {
    let mut listener = Some(listener);
    let mut retry = FIRST_RETRY;
    let mut last_error = None;
    loop {
        let step = tokio::select! {
            _ = &mut stop => return,
            _ = notices.closed() => return,
            step = next(&pool, &mut listener, retry) => step,
        };
        let notice = match step {
            Step::Notified(n) => match parse_payload(&origin, n.payload()) {
                Some(touched) => Notice::Committed(touched),
                None => continue,
            },
            Step::Quiet => continue,
            Step::Lost(error) => {
                tracing::warn!(
                    error,
                    "Lost the connection that hears other managers' changes; reconnecting"
                );
                listener = None;
                retry = FIRST_RETRY;
                Notice::Lost
            }
            Step::NotConnected(error) => {
                if last_error.as_ref() != Some(&error) {
                    tracing::warn!(error, "Cannot listen for other managers' changes yet");
                }
                last_error = Some(error);
                retry = (retry * 2).min(MAX_RETRY);
                continue;
            }
            Step::Connected(l) => {
                tracing::info!("Listening for other managers' changes again");
                listener = Some(l);
                last_error = None;
                Notice::Listening
            }
        };
        if notices.send(notice).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_say_what_was_touched_and_by_whom() {
        let touched = Touched {
            revision: Some(42),
            principals: true,
            instances: false,
        };
        let text = payload("aa", &touched);
        assert_eq!(text, "aa 42 p");
        assert_eq!(parse_payload("bb", &text), Some(touched));
        assert_eq!(parse_payload("aa", &text), None, "our own are ignored");
        let quiet = payload("aa", &Touched::default());
        assert_eq!(parse_payload("bb", &quiet), Some(Touched::default()));
        assert_eq!(parse_payload("bb", "garbage"), None);
    }
}
