//! Infrastructure set-up: database URLs, creating databases, and building a
//! service's database connection, the saga store and the transport (Postgres
//! and RabbitMQ, or their embedded stand-ins: SQLite files or memory, and
//! the in-process transport).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use saga_core::memory::{InMemoryStore, InMemoryTransport};
use saga_core::{SagaStore, Transport};
use sea_orm::{ConnectionTrait, DatabaseConnection, Statement};

use crate::db;
use crate::error::{Error, Result};

/// Where the services keep their databases and the saga store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Storage {
    /// A PostgreSQL server (its URL); each service has its own database on it.
    Postgres(String),
    /// SQLite files in this folder, one per database (`orders.db`, ...,
    /// `orchestrator.db` for the saga store): the embedded default, kept
    /// across restarts.
    Files(PathBuf),
    /// In-memory SQLite and an in-memory saga store: nothing is kept.
    Memory,
}

impl Storage {
    /// The PostgreSQL URL, if on Postgres.
    #[must_use]
    pub fn postgres(&self) -> Option<&str> {
        match self {
            Self::Postgres(url) => Some(url),
            Self::Files(_) | Self::Memory => None,
        }
    }

    /// Creates the data folder of [`Storage::Files`] if missing.
    ///
    /// # Errors
    /// [`Error::Config`] naming the folder when it cannot be created.
    pub fn prepare(&self) -> Result<()> {
        if let Self::Files(folder) = self {
            std::fs::create_dir_all(folder).map_err(|e| {
                Error::Config(format!(
                    "cannot create the data folder {}: {e}",
                    folder.display()
                ))
            })?;
        }
        Ok(())
    }

    /// A one-line description for start-up messages.
    #[must_use]
    pub fn describe(&self) -> String {
        match self {
            Self::Postgres(url) => format!("PostgreSQL at {}", db::redact(url)),
            Self::Files(folder) => {
                let absolute = std::path::absolute(folder).unwrap_or_else(|_| folder.clone());
                format!("SQLite files in {}", absolute.display())
            }
            Self::Memory => "in memory (nothing is kept)".to_owned(),
        }
    }
}

/// The SQLite file of `database` in `folder`.
#[must_use]
pub fn sqlite_file(folder: &Path, database: &str) -> PathBuf {
    folder.join(format!("{database}.db"))
}

/// Database names of the four services (the seed's defaults).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Databases {
    /// The order service's database.
    pub orders: String,
    /// The inventory service's database.
    pub inventory: String,
    /// The payment service's database.
    pub payments: String,
    /// The orchestrator's database.
    pub orchestrator: String,
}

impl Default for Databases {
    fn default() -> Self {
        Self::with_prefix("")
    }
}

impl Databases {
    /// The seed's names with `prefix` in front (test isolation).
    #[must_use]
    pub fn with_prefix(prefix: &str) -> Self {
        Self {
            orders: format!("{prefix}orders"),
            inventory: format!("{prefix}inventory"),
            payments: format!("{prefix}payments"),
            orchestrator: format!("{prefix}orchestrator"),
        }
    }
}

/// A database URL's parts: what comes before its path (scheme, user,
/// password, host), its database (empty when it names none) and its options.
fn url_parts(url: &str) -> (&str, &str, Option<&str>) {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    match base[authority_start..].find('/') {
        Some(i) => {
            let path_start = authority_start + i;
            (&base[..path_start], &base[path_start + 1..], query)
        }
        None => (base, "", query),
    }
}

/// `url` with its database replaced by `database`.
#[must_use]
pub fn with_database(url: &str, database: &str) -> String {
    let (host, _, query) = url_parts(url);
    match query {
        Some(query) => format!("{host}/{database}?{query}"),
        None => format!("{host}/{database}"),
    }
}

/// The database a `postgres://user:password@host:port/database?options`
/// URL names.
///
/// # Errors
/// [`Error::Config`] when it names none (the URL, password hidden, says which).
pub(crate) fn database_of(url: &str) -> Result<String> {
    let (_, database, _) = url_parts(url);
    if database.is_empty() {
        return Err(Error::Config(format!(
            "DB_URL {} names no database: end it with the orchestrator's, e.g. /orchestrator",
            db::redact(url)
        )));
    }
    Ok(database.to_owned())
}

/// Creates `database` on the server of `url` if it does not exist.
///
/// # Errors
/// When the server is unreachable or refuses.
pub async fn ensure_database(url: &str, database: &str) -> Result<()> {
    if !database
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        return Err(Error::Config(format!(
            "database name `{database}` must be letters, digits and _"
        )));
    }
    let admin = db::connect(&with_database(url, "postgres"), 1).await?;
    let exists = admin
        .query_one_raw(Statement::from_string(
            admin.get_database_backend(),
            format!("SELECT 1 FROM pg_database WHERE datname = '{database}'"),
        ))
        .await?
        .is_some();
    if !exists {
        // Two processes may race here; the loser's "already exists" is fine.
        let created = admin
            .execute_unprepared(&format!("CREATE DATABASE \"{database}\""))
            .await;
        if let Err(e) = created
            && !e.to_string().contains("already exists")
        {
            return Err(e.into());
        }
        tracing::info!(%database, "database created");
    }
    admin.close().await?;
    Ok(())
}

/// Connects to a service's database: Postgres (created if missing), a
/// SQLite file (created if missing), or in-memory SQLite.
///
/// # Errors
/// When the database is unreachable or the file cannot be opened.
pub async fn service_db(
    storage: &Storage,
    database: &str,
    pool: u32,
) -> Result<DatabaseConnection> {
    match storage {
        Storage::Postgres(url) => {
            ensure_database(url, database).await?;
            db::connect(&with_database(url, database), pool).await
        }
        Storage::Files(folder) => {
            // One connection: the services' transactions read before they
            // write, which SQLite serializes safely only on one connection.
            saga_sqlite::SqliteConfig::file(sqlite_file(folder, database))
                .max_connections(1)
                .connect()
                .await
                .map_err(|e| Error::Saga(e.into()))
        }
        Storage::Memory => db::connect(db::EMBEDDED, 1).await,
    }
}

/// RabbitMQ tuning beyond the URL; `None` keeps the transport's default.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RabbitTuning {
    /// Messages a consumer holds unacknowledged (`RABBITMQ_PREFETCH`).
    pub prefetch: Option<u16>,
    /// Deliveries before a message is dead-lettered (`RABBITMQ_MAX_DELIVERIES`).
    pub max_deliveries: Option<u32>,
    /// Queue type of the queues it declares (`RABBITMQ_QUEUE_TYPE`).
    pub queue_type: Option<saga_rabbitmq::QueueType>,
}

/// The transport: RabbitMQ at `url` (several comma-separated URLs: the
/// nodes of one cluster) with `tuning`, or in-process.
///
/// # Errors
/// When RabbitMQ is unreachable or the tuning is invalid.
pub async fn transport(url: Option<&str>, tuning: RabbitTuning) -> Result<Arc<dyn Transport>> {
    match url {
        Some(url) => {
            // Several comma-separated URLs: the nodes of one cluster, tried in turn.
            let mut config = saga_rabbitmq::Config::cluster(
                url.split(',').map(str::trim).filter(|u| !u.is_empty()),
            )
            .map_err(|e| Error::Saga(e.into()))?;
            if let Some(prefetch) = tuning.prefetch {
                config = config.prefetch(prefetch);
            }
            if let Some(max) = tuning.max_deliveries {
                config = config.max_deliveries(max);
            }
            if let Some(queue_type) = tuning.queue_type {
                config = config.queue_type(queue_type);
            }
            let transport = saga_rabbitmq::RabbitTransport::connect(config)
                .await
                .map_err(|e| Error::Saga(e.into()))?;
            Ok(Arc::new(transport))
        }
        None => Ok(Arc::new(InMemoryTransport::new())),
    }
}

/// The saga store: Postgres or a SQLite file (migrated), or in memory.
///
/// # Errors
/// When the database is unreachable.
pub async fn saga_store(storage: &Storage, database: &str) -> Result<Arc<dyn SagaStore>> {
    saga_store_with_pool(storage, database, 10).await
}

/// [`saga_store`] with at most `max_connections` database connections.
///
/// # Errors
/// When the database is unreachable.
pub async fn saga_store_with_pool(
    storage: &Storage,
    database: &str,
    max_connections: u32,
) -> Result<Arc<dyn SagaStore>> {
    match storage {
        Storage::Postgres(url) => {
            ensure_database(url, database).await?;
            let config = saga_postgres::PgConfig::new(with_database(url, database))
                .application_name("orchestrator")
                .max_connections(max_connections);
            let db = config.connect().await.map_err(|e| Error::Saga(e.into()))?;
            saga_postgres::migrate(&db)
                .await
                .map_err(|e| Error::Saga(e.into()))?;
            let store = saga_postgres::PgSagaStore::new(db)
                .await
                .map_err(|e| Error::Saga(e.into()))?;
            Ok(Arc::new(store))
        }
        Storage::Files(folder) => {
            let config = saga_sqlite::SqliteConfig::file(sqlite_file(folder, database));
            let store = saga_sqlite::SqliteSagaStore::open(&config)
                .await
                .map_err(|e| Error::Saga(e.into()))?;
            Ok(Arc::new(store))
        }
        Storage::Memory => Ok(Arc::new(InMemoryStore::new())),
    }
}

#[cfg(test)]
mod tests {
    use super::{database_of, with_database};

    #[test]
    fn the_database_is_the_url_s_path_and_a_url_without_one_is_refused_without_its_password() {
        assert_eq!(
            database_of("postgres://postgres:s3cret@db:5432/orchestrator?sslmode=disable")
                .expect("named"),
            "orchestrator"
        );
        for url in [
            "postgres://postgres:s3cret@db:5432",
            "postgres://postgres:s3cret@db:5432/",
            "postgres://postgres:s3cret@db:5432/?sslmode=disable",
            "postgres://postgres:s3cret@db:5432?sslrootcert=/etc/ca.pem",
        ] {
            let e = database_of(url).expect_err("no database").to_string();
            assert!(!e.contains("s3cret"), "{e}");
            assert!(e.contains("names no database"), "{e}");
        }
    }

    #[test]
    fn the_database_part_of_a_url_is_replaced() {
        assert_eq!(
            with_database("postgres://u:p@h:5432/postgres", "orders"),
            "postgres://u:p@h:5432/orders"
        );
        assert_eq!(
            with_database("postgres://u@h:5432", "orders"),
            "postgres://u@h:5432/orders"
        );
        assert_eq!(
            with_database("postgres://h/x?sslmode=disable", "inventory"),
            "postgres://h/inventory?sslmode=disable"
        );
    }
}
