//! A fresh database per test, on the real server.
//!
//! `SAGA_TEST_DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`)
//! is the admin URL: each test creates `saga_test_<uuid>` through it and drops
//! it afterwards (best effort, `WITH (FORCE)`), so tests run in parallel. A
//! test fails, never skips, when the server is unreachable.

use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};
use saga_core::{
    Direction, LogEntry, LogEvent, SagaId, SagaInstance, SagaStatus, StepStatus, adapter::Cursor,
};
use saga_postgres::{PgConfig, PgSagaStore};
use sea_orm::{ConnectionTrait, Database, DatabaseConnection};
use serde_json::json;

pub(crate) const DEFAULT_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

pub(crate) fn admin_url() -> String {
    std::env::var("SAGA_TEST_DATABASE_URL")
        .ok()
        .filter(|url| !url.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_ADMIN_URL.to_owned())
}

/// `url` with its database name replaced by `database`.
pub(crate) fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let root = match base[authority_start..].find('/') {
        Some(slash) => &base[..authority_start + slash],
        None => base,
    };
    match query {
        Some(query) => format!("{root}/{database}?{query}"),
        None => format!("{root}/{database}"),
    }
}

async fn admin() -> DatabaseConnection {
    let url = admin_url();
    let mut options = sea_orm::ConnectOptions::new(url.clone());
    options
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(5))
        .sqlx_logging(false);
    match Database::connect(options).await {
        Ok(db) => db,
        Err(e) => panic!(
            "cannot reach PostgreSQL at {url}: {e}\n\
             The saga-postgres tests need a real server: start one (scripts/services does) \
             or point SAGA_TEST_DATABASE_URL at an admin URL."
        ),
    }
}

/// A database of its own for one test.
pub(crate) struct TestDb {
    pub(crate) name: String,
    pub(crate) url: String,
    pub(crate) db: DatabaseConnection,
}

impl TestDb {
    /// A fresh, migrated database.
    pub(crate) async fn new() -> Self {
        let test = Self::empty().await;
        saga_postgres::migrate(&test.db)
            .await
            .expect("migrations apply");
        test
    }

    /// A fresh database without the schema.
    pub(crate) async fn empty() -> Self {
        let name = format!("saga_test_{}", uuid::Uuid::new_v4().simple());
        let admin = admin().await;
        admin
            .execute_unprepared(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap_or_else(|e| panic!("creating database {name} through {}: {e}", admin_url()));
        let url = with_database(&admin_url(), &name);
        let db = Self::pool(&url).await;
        Self { name, url, db }
    }

    /// Another, independent pool on the same database (another "process").
    pub(crate) async fn pool(url: &str) -> DatabaseConnection {
        PgConfig::new(url)
            .max_connections(8)
            .connect()
            .await
            .unwrap_or_else(|e| panic!("connecting to the test database: {e}"))
    }

    /// A store on the test database's pool.
    pub(crate) async fn store(&self) -> PgSagaStore {
        PgSagaStore::new(self.db.clone()).await.expect("store")
    }

    /// A store on a pool of its own, as another process would have.
    pub(crate) async fn other_store(&self) -> PgSagaStore {
        PgSagaStore::new(Self::pool(&self.url).await)
            .await
            .expect("store")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Best effort, on a thread of its own: Drop cannot await.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async {
                let admin = admin().await;
                admin
                    .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await
                    .ok()
            })
        })
        .join();
        if !matches!(dropped, Ok(Some(_))) {
            eprintln!("note: test database {} was not dropped", self.name);
        }
    }
}

/// A running saga at step 0, version 1, with one log entry written.
pub(crate) fn instance(
    saga_type: &str,
    key: Option<&str>,
    next_wake_at: Option<DateTime<Utc>>,
) -> SagaInstance {
    let now = Utc::now().trunc_subsecs(6);
    SagaInstance {
        id: SagaId::new(),
        saga_type: saga_type.to_owned(),
        definition_version: 1,
        status: SagaStatus::Running,
        steps: vec![StepStatus::Running, StepStatus::Pending],
        cursor: Some(Cursor::first(0, Direction::Invoke)),
        data: json!({ "order": "o-1" }),
        error: None,
        idempotency_key: key.map(str::to_owned),
        version: 1,
        next_wake_at,
        deadline_at: None,
        log_seq: 1,
        created_at: now,
        updated_at: now,
    }
}

/// Entry `seq` of `saga`'s log.
pub(crate) fn log(saga: &SagaInstance, seq: u32, event: LogEvent) -> LogEntry {
    LogEntry {
        saga_id: saga.id,
        seq,
        event,
        step: Some("reserve".to_owned()),
        attempt: Some(1),
        payload: json!({ "seq": seq }),
        at: Utc::now().trunc_subsecs(6),
    }
}

/// The saga after one more transition writing `entries` log entries.
pub(crate) fn next(saga: &SagaInstance, entries: u32) -> SagaInstance {
    let mut next = saga.clone();
    next.version += 1;
    next.log_seq += entries;
    next.updated_at = Utc::now().trunc_subsecs(6);
    next
}

/// A time `seconds` after the epoch (far in the past: always due).
pub(crate) fn at(seconds: i64) -> DateTime<Utc> {
    DateTime::<Utc>::UNIX_EPOCH + chrono::Duration::seconds(seconds)
}
