//! Opening a SQLite database: the file, its durability and the pool.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sea_orm::sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous,
};
use sea_orm::sqlx::{ConnectOptions, Connection};
use sea_orm::{DatabaseConnection, SqlxSqliteConnector};

use crate::error::Error;

/// When a commit reaches the disk: SQLite's `synchronous` setting in WAL mode.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Durability {
    /// `synchronous=FULL` (the default): every commit is flushed to the disk
    /// (`fsync` of the write-ahead log) before it returns, so a committed
    /// transition survives a power loss as well as a crash of the process.
    #[default]
    Full,
    /// `synchronous=NORMAL`: commits are flushed at checkpoints only. A crash
    /// of the process loses nothing (the log is in the operating system's
    /// cache), but a power loss or a kernel crash may lose the last commits:
    /// a saga may then forget transitions whose effects the participants
    /// already made, and run them again. Faster on disks with slow flushes.
    Normal,
}

impl Durability {
    fn synchronous(self) -> SqliteSynchronous {
        match self {
            Self::Full => SqliteSynchronous::Full,
            Self::Normal => SqliteSynchronous::Normal,
        }
    }
}

/// Where the database lives.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Location {
    File(PathBuf),
    Memory,
}

/// How to open a SQLite database: the file, the durability and the pool.
///
/// [`SqliteConfig::file`] opens (and creates) a database file in WAL mode
/// with [`Durability::Full`]; [`SqliteConfig::memory`] a private in-memory
/// database that keeps nothing (tests, demos). The crate reads no
/// environment variable.
///
/// One process per file: the store's writes are serialized inside the
/// process (see the [crate documentation](crate#one-process-per-file)).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct SqliteConfig {
    location: Location,
    /// When commits reach the disk (default [`Durability::Full`]).
    pub durability: Durability,
    /// Most connections of the pool (default 4 for a file; an in-memory
    /// database always has exactly one, which holds it).
    pub max_connections: u32,
    /// How long a statement waits for another connection's write lock on
    /// the file before failing with [`Error::Unavailable`] (default 5 s).
    pub busy_timeout: Duration,
    /// How long to wait for a free pool connection (default 10 s).
    pub acquire_timeout: Duration,
}

impl SqliteConfig {
    /// A database in the file at `path`, created if missing (its folder must exist).
    #[must_use]
    pub fn file(path: impl AsRef<Path>) -> Self {
        Self::at(Location::File(path.as_ref().to_path_buf()))
    }

    /// A private in-memory database: gone when the last connection closes.
    #[must_use]
    pub fn memory() -> Self {
        Self::at(Location::Memory)
    }

    fn at(location: Location) -> Self {
        Self {
            location,
            durability: Durability::Full,
            max_connections: 4,
            busy_timeout: Duration::from_secs(5),
            acquire_timeout: Duration::from_secs(10),
        }
    }

    /// Sets when commits reach the disk.
    #[must_use]
    pub fn durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// Sets the most connections of the pool (at least 1; ignored in memory).
    ///
    /// The saga store needs only one; more let reads (the operator's lists,
    /// a waiter's loads) run beside a write. An application's own
    /// transaction that *reads before it writes* may fail with
    /// `SQLITE_BUSY` when another connection of the pool committed in
    /// between: give such a database one connection, which serializes its
    /// transactions instead.
    #[must_use]
    pub fn max_connections(mut self, max: u32) -> Self {
        self.max_connections = max.max(1);
        self
    }

    /// Sets how long to wait for another connection's write lock.
    #[must_use]
    pub fn busy_timeout(mut self, timeout: Duration) -> Self {
        self.busy_timeout = timeout;
        self
    }

    /// The database file, or `None` in memory.
    #[must_use]
    pub fn path(&self) -> Option<&Path> {
        match &self.location {
            Location::File(path) => Some(path),
            Location::Memory => None,
        }
    }

    /// Opens the pool: WAL mode, the configured durability, foreign keys on.
    ///
    /// # Errors
    /// [`Error::Unavailable`] naming the file when it cannot be opened or
    /// created (a missing folder, no permission, not a database).
    pub async fn connect(&self) -> Result<DatabaseConnection, Error> {
        let (options, connections) = match &self.location {
            Location::File(path) => (
                SqliteConnectOptions::new()
                    .filename(path)
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(self.durability.synchronous()),
                self.max_connections.max(1),
            ),
            // One connection: each connection to `:memory:` is its own database.
            Location::Memory => (SqliteConnectOptions::new().in_memory(true), 1),
        };
        let options = options.foreign_keys(true).busy_timeout(self.busy_timeout);
        let unavailable = |e: sea_orm::sqlx::Error| Error::Unavailable {
            context: format!(" at {}", self.describe()),
            source: sea_orm::DbErr::Conn(sea_orm::RuntimeErr::SqlxError(e.into())),
        };
        if matches!(self.location, Location::File(_)) {
            // The switch to WAL (kept by the file) takes an exclusive lock:
            // the pool's connections opening together on a new file would
            // race for it, and the losers fail at once ("database is
            // locked"). One connection makes the switch first.
            options
                .connect()
                .await
                .map_err(unavailable)?
                .close()
                .await
                .map_err(unavailable)?;
        }
        let pool = SqlitePoolOptions::new()
            .max_connections(connections)
            .min_connections(1)
            // Never close the connection that holds an in-memory database.
            .idle_timeout(None)
            .max_lifetime(None)
            .acquire_timeout(self.acquire_timeout)
            .connect_with(options)
            .await
            .map_err(unavailable)?;
        Ok(SqlxSqliteConnector::from_sqlx_sqlite_pool(pool))
    }

    /// The file's path, or `:memory:`, for messages.
    #[must_use]
    pub fn describe(&self) -> String {
        match &self.location {
            Location::File(path) => path.display().to_string(),
            Location::Memory => ":memory:".to_owned(),
        }
    }
}
