//! The SQLite backend: one database file in WAL mode, migrations embedded from
//! `migrations/sqlite` and run at open, a pool of read-only connections and **one** writer
//! connection. The single writer is what serializes write transactions ([`crate::Backend`]'s
//! promise); reads are read transactions, so each sees one committed state. The statements are
//! in `sql.rs`, shared with PostgreSQL.
//!
//! Only one process writes to the file, so there is nothing to announce to others and this
//! process always leads the periodic jobs.

use std::path::Path;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{Sqlite, SqlitePool};

use crate::sql::{bound, record_for, Conn, Sql, Value};
use crate::{Backend, Result, Rows, Touched, Transaction};

pub(crate) static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

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
        crate::migrate(&MIGRATOR, &write).await?;
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
        Ok(Box::new(Conn(Lite(self.read.begin().await?))))
    }

    async fn write(&self) -> Result<Box<dyn Transaction>> {
        Ok(Box::new(Conn(Lite(self.write.begin().await?))))
    }

    async fn lead(&self) -> Result<bool> {
        Ok(true)
    }
}

/// A read or write transaction on the file.
struct Lite(sqlx::Transaction<'static, Sqlite>);

record_for!(SqliteRow);

#[async_trait::async_trait]
impl Sql for Lite {
    type Row = SqliteRow;

    async fn fetch_all(&mut self, sql: &str, args: &[Value]) -> Result<Vec<SqliteRow>> {
        Ok(bound!(sql, args).fetch_all(&mut *self.0).await?)
    }

    async fn fetch_optional(&mut self, sql: &str, args: &[Value]) -> Result<Option<SqliteRow>> {
        Ok(bound!(sql, args).fetch_optional(&mut *self.0).await?)
    }

    async fn execute(&mut self, sql: &str, args: &[Value]) -> Result<u64> {
        Ok(bound!(sql, args)
            .execute(&mut *self.0)
            .await?
            .rows_affected())
    }

    async fn announce(&mut self, _: &Touched) -> Result<()> {
        Ok(())
    }

    async fn commit(self) -> Result<()> {
        Ok(self.0.commit().await?)
    }
}
