//! The schema, as sea-orm-migration migrations.
//!
//! [`SqliteSagaStore::open`](crate::SqliteSagaStore::open) runs [`migrate`]
//! itself; call it directly to prepare a participant's database for the
//! [inbox](crate::inbox). Applied migrations are recorded in
//! `saga_migrations`, not in sea-orm's default `seaql_migrations`, so an
//! application can keep its own migrations in the same file.

use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement, TransactionTrait};
use sea_orm_migration::prelude::*;

use crate::error::Error;

/// The table recording which of this crate's migrations ran.
pub const MIGRATIONS_TABLE: &str = "saga_migrations";

/// The crate's migrations; use with [`MigratorTrait`] or simply call [`migrate`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![Box::new(CreateTables)]
    }

    fn migration_table_name() -> DynIden {
        MIGRATIONS_TABLE.into_iden()
    }
}

/// The first schema: `saga_state`, `saga_logs`, `saga_inbox`.
///
/// Ids are UUID text, JSON is text, and every time is UTC text with exactly
/// six fractional digits (`2026-12-05T10:00:00.000000Z`), so that text order
/// is time order and the file reads well in the `sqlite3` shell.
struct CreateTables;

impl MigrationName for CreateTables {
    fn name(&self) -> &str {
        "m20261212_000001_create_saga_tables"
    }
}

const CREATE_TABLES: &[&str] = &[
    "CREATE TABLE saga_state (
        id TEXT PRIMARY KEY NOT NULL,
        saga_type TEXT NOT NULL,
        definition_version INTEGER NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('running', 'compensating', 'completed', 'compensated', 'failed')),
        current_step INTEGER,
        phase TEXT,
        attempt INTEGER,
        waiting TEXT,
        uncertain INTEGER NOT NULL,
        round_from INTEGER NOT NULL,
        key_from INTEGER NOT NULL,
        refused INTEGER NOT NULL,
        steps TEXT NOT NULL,
        data TEXT NOT NULL,
        error TEXT,
        idempotency_key TEXT UNIQUE,
        version INTEGER NOT NULL,
        next_wake_at TEXT,
        deadline_at TEXT,
        log_seq INTEGER NOT NULL,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        lease_owner TEXT,
        lease_until TEXT
    )",
    "CREATE INDEX saga_state_wake_idx ON saga_state (next_wake_at) WHERE next_wake_at IS NOT NULL",
    "CREATE INDEX saga_state_status_updated_idx ON saga_state (status, updated_at)",
    "CREATE INDEX saga_state_finished_idx ON saga_state (updated_at)
        WHERE status IN ('completed', 'compensated')",
    "CREATE TABLE saga_logs (
        saga_id TEXT NOT NULL REFERENCES saga_state (id) ON DELETE CASCADE,
        seq INTEGER NOT NULL,
        event TEXT NOT NULL,
        step TEXT,
        attempt INTEGER,
        payload TEXT NOT NULL,
        created_at TEXT NOT NULL,
        PRIMARY KEY (saga_id, seq)
    )",
    "CREATE TABLE saga_inbox (
        idempotency_key TEXT PRIMARY KEY NOT NULL,
        outcome TEXT,
        created_at TEXT NOT NULL
    )",
    "CREATE INDEX saga_inbox_created_idx ON saga_inbox (created_at)",
];

#[async_trait::async_trait]
impl MigrationTrait for CreateTables {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        for sql in CREATE_TABLES {
            db.execute_unprepared(sql).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "DROP TABLE saga_inbox; DROP TABLE saga_logs; DROP TABLE saga_state;",
            )
            .await?;
        Ok(())
    }
}

/// Creates or upgrades the `saga_state`, `saga_logs` and `saga_inbox` tables.
///
/// Idempotent; the migrations run in one transaction, so a failure applies
/// nothing.
///
/// # Errors
/// [`Error::Unavailable`] when the file cannot be written; a database error
/// when a migration fails.
#[tracing::instrument(name = "saga_sqlite.migrate", skip_all)]
pub async fn migrate(db: &DatabaseConnection) -> Result<(), Error> {
    let txn = db.begin().await?;
    Migrator::up(&txn, None).await?;
    txn.commit().await?;
    Ok(())
}

/// Checks that every migration of this crate was applied.
///
/// # Errors
/// [`Error::Schema`] naming what is missing.
pub async fn check_schema(db: &impl ConnectionTrait) -> Result<(), Error> {
    let rows = db
        .query_all_raw(Statement::from_string(
            DbBackend::Sqlite,
            format!("SELECT version FROM {MIGRATIONS_TABLE}"),
        ))
        .await
        .map_err(|e| match Error::from(e) {
            Error::Schema { source, .. } => Error::Schema {
                detail: format!("table `{MIGRATIONS_TABLE}` does not exist"),
                source,
            },
            other => other,
        })?;
    let applied: Vec<String> = rows
        .iter()
        .map(|row| row.try_get::<String>("", "version"))
        .collect::<Result<_, _>>()?;
    let pending: Vec<String> = Migrator::migrations()
        .iter()
        .map(|m| m.name().to_owned())
        .filter(|name| !applied.contains(name))
        .collect();
    if pending.is_empty() {
        Ok(())
    } else {
        Err(Error::Schema {
            detail: format!("pending migrations: {}", pending.join(", ")),
            source: None,
        })
    }
}
