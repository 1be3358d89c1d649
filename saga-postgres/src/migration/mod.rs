//! The schema, as sea-orm-migration migrations.
//!
//! Run [`migrate`] at deployment (or at service start-up); it applies whatever
//! is pending, and several processes may run it at once (they serialize on an
//! advisory lock). Applied migrations are recorded in `saga_migrations`, not
//! in sea-orm's default `seaql_migrations`, so an application can keep its own
//! [`MigratorTrait`] migrations in the same database without the two sets
//! tripping over each other.

mod m20261101_000001_create_saga_state_and_logs;
mod m20261101_000002_create_saga_inbox;
mod m20261205_000001_add_cursor_rounds_and_keys;
mod m20261210_000001_add_saga_state_finished_index;
mod m20261211_000001_create_saga_save_batch;

use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement, TransactionTrait};
use sea_orm_migration::prelude::*;

use crate::error::Error;

/// The table recording which of this crate's migrations ran.
pub const MIGRATIONS_TABLE: &str = "saga_migrations";

/// The crate's migrations; use with [`MigratorTrait`] (`Migrator::up(&db, None)`,
/// `Migrator::status(&db)`), or simply call [`migrate`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261101_000001_create_saga_state_and_logs::Migration),
            Box::new(m20261101_000002_create_saga_inbox::Migration),
            Box::new(m20261205_000001_add_cursor_rounds_and_keys::Migration),
            Box::new(m20261210_000001_add_saga_state_finished_index::Migration),
            Box::new(m20261211_000001_create_saga_save_batch::Migration),
        ]
    }

    fn migration_table_name() -> DynIden {
        MIGRATIONS_TABLE.into_iden()
    }
}

/// An arbitrary constant: the advisory lock key that serializes concurrent `migrate` calls.
const MIGRATION_LOCK: i64 = 0x5A6A_0001;

/// Creates or upgrades the `saga_state`, `saga_logs` and `saga_inbox` tables.
///
/// Idempotent, and safe to call from several processes at once: the
/// migrations run in one transaction holding an advisory lock.
///
/// # Errors
/// [`Error::Unavailable`] when the database cannot be reached; a database
/// error when a migration fails (nothing is applied then).
#[tracing::instrument(name = "saga_postgres.migrate", skip_all)]
pub async fn migrate(db: &DatabaseConnection) -> Result<(), Error> {
    let txn = db.begin().await?;
    txn.execute_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        "SELECT pg_advisory_xact_lock($1)",
        [MIGRATION_LOCK.into()],
    ))
    .await?;
    Migrator::up(&txn, None).await?;
    txn.commit().await?;
    Ok(())
}

/// Checks that every migration of this crate was applied.
///
/// # Errors
/// [`Error::Schema`] naming what is missing and telling to run the migrations;
/// [`Error::Unavailable`] when the database cannot be reached.
pub async fn check_schema(db: &impl ConnectionTrait) -> Result<(), Error> {
    let rows = db
        .query_all_raw(Statement::from_string(
            DbBackend::Postgres,
            format!("SELECT version FROM {MIGRATIONS_TABLE}"),
        ))
        .await;
    let rows = match rows {
        Ok(rows) => rows,
        Err(e) => {
            return Err(match Error::from(e) {
                Error::Schema { source, .. } => Error::Schema {
                    detail: format!("table `{MIGRATIONS_TABLE}` does not exist"),
                    source,
                },
                other => other,
            });
        }
    };
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
