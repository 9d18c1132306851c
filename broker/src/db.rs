//! The database: one sqlx `Any` pool over SQLite or PostgreSQL, the embedded migrations, and
//! write transactions with the retry each backend needs.
//!
//! Both backends run the same SQL. What differs is how concurrent writers are kept apart:
//! - SQLite has one writer at a time. Transactions begin `IMMEDIATE` (taking the write lock
//!   up front, so a reader never has to upgrade and fail), and an in-process gate queues
//!   writers in the broker instead of in SQLite's sleeping busy handler. WAL with
//!   `synchronous=FULL`: every commit is durable before it is answered.
//! - PostgreSQL runs writers concurrently at READ COMMITTED. A transaction that changes a
//!   token first bumps the token row's `lock_version`, which takes the row lock and serializes
//!   it with every other transaction on that token; balances change only by conditional
//!   `UPDATE`s. A deadlock, a serialization failure or a unique-key race (two requests with
//!   one idempotency key) aborts the transaction, which is then retried from the start.

use std::borrow::Cow;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{Any, AnyConnection, AnyPool, Connection, Executor, Transaction};
use tokio::sync::{Mutex, MutexGuard};

/// How long [`Db::close`] waits for connections still in use.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Which database a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn of(url: &str) -> Result<Self, DbError> {
        if url.starts_with("sqlite:") {
            Ok(Self::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Self::Postgres)
        } else {
            Err(DbError::Url(url.to_owned()))
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Postgres => "postgres",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("the database URL {0:?} is neither sqlite://PATH nor postgres://...")]
    Url(String),
    #[error("cannot open the database")]
    Connect(#[source] sqlx::Error),
    #[error("cannot bring the database schema up to date")]
    Migrate(#[source] sqlx::migrate::MigrateError),
}

/// The schema, embedded: `broker serve` and `broker check` need no files beside the binary.
fn migrator() -> Migrator {
    let ledger = Migration::new(
        1,
        Cow::Borrowed("ledger"),
        MigrationType::Simple,
        Cow::Borrowed(include_str!("../migrations/0001_ledger.sql")),
        false,
    );
    let adverts = Migration::new(
        2,
        Cow::Borrowed("adverts"),
        MigrationType::Simple,
        Cow::Borrowed(include_str!("../migrations/0002_adverts.sql")),
        false,
    );
    let shards = Migration::new(
        3,
        Cow::Borrowed("credit shards"),
        MigrationType::Simple,
        Cow::Borrowed(include_str!("../migrations/0003_credit_shards.sql")),
        false,
    );
    Migrator {
        migrations: Cow::Owned(vec![ledger, adverts, shards]),
        ..Migrator::DEFAULT
    }
}

/// The broker's database.
#[derive(Debug)]
pub struct Db {
    pool: AnyPool,
    backend: Backend,
    /// Queues SQLite's writers in the broker; unused for PostgreSQL.
    writer: Mutex<()>,
}

/// A write transaction, with the SQLite writer gate held until it ends.
pub struct WriteTx<'a> {
    pub tx: Transaction<'a, Any>,
    _gate: Option<MutexGuard<'a, ()>>,
}

impl Db {
    /// Opens the database, creating an SQLite file if needed, and applies the migrations.
    pub async fn open(url: &str, max_connections: u32) -> Result<Self, DbError> {
        sqlx::any::install_default_drivers();
        let backend = Backend::of(url)?;
        let url = match backend {
            Backend::Sqlite if !url.contains("mode=") => {
                let sep = if url.contains('?') { '&' } else { '?' };
                format!("{url}{sep}mode=rwc")
            }
            _ => url.to_owned(),
        };
        let options = AnyConnectOptions::from_str(&url).map_err(DbError::Connect)?;
        let pool = AnyPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(30))
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        conn.execute("PRAGMA journal_mode = WAL").await?;
                        conn.execute("PRAGMA synchronous = FULL").await?;
                        conn.execute("PRAGMA foreign_keys = ON").await?;
                        conn.execute("PRAGMA busy_timeout = 10000").await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await
            .map_err(DbError::Connect)?;
        migrator().run(&pool).await.map_err(DbError::Migrate)?;
        Ok(Self {
            pool,
            backend,
            writer: Mutex::new(()),
        })
    }

    /// The URL of an SQLite file in `dir`: the default database.
    pub fn default_url(dir: &Path) -> String {
        format!("sqlite://{}", dir.join("broker.db").display())
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Begins a write transaction.
    pub async fn begin(&self) -> Result<WriteTx<'_>, sqlx::Error> {
        match self.backend {
            Backend::Sqlite => {
                let gate = self.writer.lock().await;
                let tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
                Ok(WriteTx {
                    tx,
                    _gate: Some(gate),
                })
            }
            Backend::Postgres => Ok(WriteTx {
                tx: self.pool.begin().await?,
                _gate: None,
            }),
        }
    }

    /// Begins a write transaction on a connection the caller keeps between transactions,
    /// as the group-commit writers do: taking one from the pool checks it with a round
    /// trip first, every time.
    pub async fn begin_on<'a>(
        &'a self,
        conn: &'a mut AnyConnection,
    ) -> Result<WriteTx<'a>, sqlx::Error> {
        match self.backend {
            Backend::Sqlite => {
                let gate = self.writer.lock().await;
                let tx = conn.begin_with("BEGIN IMMEDIATE").await?;
                Ok(WriteTx {
                    tx,
                    _gate: Some(gate),
                })
            }
            Backend::Postgres => Ok(WriteTx {
                tx: conn.begin().await?,
                _gate: None,
            }),
        }
    }

    /// Closes the pool. sqlx waits for every checked-out connection to come back; one still
    /// held (a writer's kept connection, a task that outlives shutdown) would make that wait
    /// forever, so it is bounded, and what is left is dropped with the pool.
    pub async fn close(&self) {
        if tokio::time::timeout(CLOSE_TIMEOUT, self.pool.close())
            .await
            .is_err()
        {
            tracing::warn!(
                "database connections still in use after {CLOSE_TIMEOUT:?}; closing without them"
            );
        }
    }
}

/// Whether a failed transaction may succeed if run again from the start.
pub fn is_retryable(error: &sqlx::Error) -> bool {
    let sqlx::Error::Database(db) = error else {
        return false;
    };
    let code = db.code();
    let code = code.as_deref().unwrap_or("");
    // PostgreSQL: serialization failure, deadlock, unique violation (a concurrent insert
    // of the same key). SQLite: busy, locked.
    matches!(code, "40001" | "40P01" | "23505" | "5" | "6" | "517")
}

/// Converts an amount to the ledger's signed 64-bit column, refusing what does not fit.
pub fn to_db(amount: u64) -> Option<i64> {
    i64::try_from(amount).ok()
}

/// A value the caller knows fits (chain indexes and sequence numbers are at most 2^32; times
/// and held credits were checked when they were made) as a signed 64-bit column value.
pub(crate) fn db_int(value: u64) -> i64 {
    to_db(value).unwrap_or(i64::MAX)
}

/// Reads the ledger's signed 64-bit column back as an amount. The constraints keep every
/// stored amount non-negative; a negative one reads as 0 and `broker check` reports it.
pub fn from_db(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}
