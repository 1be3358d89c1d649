//! Small pieces the order, inventory and payment services share.

use rust_decimal::Decimal;
use saga_core::{CommandContext, StepError};
use sea_orm::{DbErr, TryInsertResult};
use uuid::Uuid;

use crate::http::ApiError;

/// A failed database call inside a handler: the command is retried later
/// (the saga's retry policy decides how often).
pub(crate) fn db_failure(
    service: &str,
    ctx: &CommandContext,
    order_id: Uuid,
    e: &DbErr,
) -> StepError {
    tracing::warn!(saga_id = %ctx.saga_id, %order_id, error = %e, "{service} database call failed; the command will be retried");
    match e {
        DbErr::Conn(_) | DbErr::ConnectionAcquire(_) => {
            StepError::retryable(format!("{service} database unavailable: {e}"))
        }
        _ => StepError::retryable(format!("{service} database error: {e}")),
    }
}

/// Whether an `ON CONFLICT DO NOTHING` insert inserted its row.
pub(crate) fn inserted(result: &TryInsertResult<u64>) -> bool {
    matches!(result, TryInsertResult::Inserted(n) if *n > 0)
}

/// An amount with exactly two decimals, as the HTTP answers show money.
pub(crate) fn money(amount: Decimal) -> Decimal {
    let mut amount = amount.round_dp(2);
    amount.rescale(2);
    amount
}

/// A UUID path parameter, or a 400 naming what was expected.
pub(crate) fn parse_id(raw: &str, what: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw.trim())
        .map_err(|_| ApiError::bad_request(format!("invalid {what} `{raw}`")))
}

/// Applies migrator `M` to `db`. On PostgreSQL concurrent callers (several
/// replicas starting at once) serialize on the advisory lock `lock`, inside
/// one transaction.
pub(crate) async fn migrate<M: sea_orm_migration::MigratorTrait>(
    db: &sea_orm::DatabaseConnection,
    lock: i64,
) -> crate::error::Result<()> {
    migrate_and_install::<M>(db, lock, &[]).await
}

/// [`migrate`], then on PostgreSQL `install` (statements such as `CREATE OR
/// REPLACE FUNCTION`, run on every start so the database holds what this
/// build calls) in the same transaction, under the same lock.
pub(crate) async fn migrate_and_install<M: sea_orm_migration::MigratorTrait>(
    db: &sea_orm::DatabaseConnection,
    lock: i64,
    install: &[&str],
) -> crate::error::Result<()> {
    use sea_orm::{ConnectionTrait, DbBackend, Statement, TransactionTrait};
    if db.get_database_backend() == DbBackend::Postgres {
        let txn = db.begin().await?;
        txn.execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT pg_advisory_xact_lock($1)",
            [lock.into()],
        ))
        .await?;
        M::up(&txn, None).await?;
        for statement in install {
            txn.execute_unprepared(statement).await?;
        }
        txn.commit().await?;
    } else {
        M::up(db, None).await?;
    }
    Ok(())
}

/// What the three services' unit tests share.
#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod test_support {
    use saga_core::adapter::CommandMessage;
    use saga_core::{Command, Direction, IdempotencyKey, Participant, SagaId, StepError};

    /// Hands `command` to `participant` as step `step` of a fresh saga would
    /// (a compensation when its name is `compensation`), and decodes the reply.
    pub(crate) async fn send<C: Command>(
        participant: &Participant,
        step: &str,
        compensation: &str,
        command: &C,
    ) -> Result<C::Reply, StepError> {
        let direction = if C::NAME == compensation {
            Direction::Compensate
        } else {
            Direction::Invoke
        };
        let saga_id = SagaId::new();
        let message = CommandMessage {
            message_id: format!("{saga_id}:{step}:{direction}:1"),
            idempotency_key: IdempotencyKey::new(saga_id, step, direction),
            saga_id,
            saga_type: "checkout".into(),
            step: 0,
            step_name: step.into(),
            direction,
            attempt: 1,
            endpoint: participant.endpoint().into(),
            command: C::NAME.into(),
            payload: serde_json::to_value(command).unwrap(),
            reply_to: Some("replies".into()),
            headers: Default::default(),
        };
        let reply = participant.handle(&message, 1).await.unwrap();
        reply
            .outcome
            .into_result()
            .map(|v| serde_json::from_value(v).unwrap())
    }
}

/// A table's tombstones: the rows a compensation writes when it arrives before
/// its command, so that the late command is refused. They are the services'
/// inbox records (the other rows are the business itself and stay), and are
/// deleted after `INBOX_RETENTION` by [`prune_tombstones`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct Tombstones {
    /// The table.
    pub(crate) table: &'static str,
    /// The SQL condition that holds for a tombstone and for no other row
    /// (the same text on PostgreSQL and SQLite).
    pub(crate) marker: &'static str,
}

impl Tombstones {
    /// The partial index that finds old tombstones without reading the table.
    pub(crate) fn index_sql(self) -> String {
        format!(
            "CREATE INDEX IF NOT EXISTS {table}_tombstone_created_idx ON {table} (created_at) WHERE {marker}",
            table = self.table,
            marker = self.marker
        )
    }
}

/// Deletes at most `batch` tombstones written before `before`, oldest first;
/// returns how many. On PostgreSQL, rows a handler holds at that moment are
/// skipped (`SKIP LOCKED`), so pruning never waits for the services' work.
pub(crate) async fn prune_tombstones(
    db: &sea_orm::DatabaseConnection,
    tombstones: Tombstones,
    before: chrono::DateTime<chrono::Utc>,
    batch: usize,
) -> saga_core::Result<usize> {
    use sea_orm::{ConnectionTrait, DbBackend, Statement};
    let backend = db.get_database_backend();
    let (cutoff, limit, lock) = match backend {
        DbBackend::Postgres => ("$1", "$2", " FOR UPDATE SKIP LOCKED"),
        _ => ("?", "?", ""),
    };
    let sql = format!(
        "DELETE FROM {table} WHERE id IN (SELECT id FROM {table} WHERE {marker} AND created_at < {cutoff} \
         ORDER BY created_at LIMIT {limit}{lock})",
        table = tombstones.table,
        marker = tombstones.marker,
    );
    let limit = i64::try_from(batch).unwrap_or(i64::MAX);
    let result = db
        .execute_raw(Statement::from_sql_and_values(
            backend,
            sql,
            [before.into(), limit.into()],
        ))
        .await
        .map_err(|e| {
            saga_core::Error::backend(
                saga_core::ErrorKind::Unavailable,
                format!("pruning the tombstones of `{}`: {e}", tombstones.table),
            )
        })?;
    Ok(usize::try_from(result.rows_affected()).unwrap_or(usize::MAX))
}

/// A participant builder with `INBOX_RETENTION`: its tombstones are pruned
/// by the participant's run loop.
pub(crate) fn retaining<S>(
    builder: saga_core::participant::ParticipantBuilder<S>,
    db: &sea_orm::DatabaseConnection,
    tombstones: Tombstones,
    retention: Option<std::time::Duration>,
) -> saga_core::participant::ParticipantBuilder<S> {
    let Some(retention) = retention else {
        return builder;
    };
    let db = db.clone();
    builder
        .inbox_retention(retention)
        .prune_with(move |before, batch| {
            let db = db.clone();
            async move { prune_tombstones(&db, tombstones, before, batch).await }
        })
}

/// The migration that adds the tombstone index of `tombstones`.
pub(crate) struct TombstoneIndex {
    pub(crate) name: &'static str,
    pub(crate) tombstones: Tombstones,
}

impl sea_orm_migration::MigrationName for TombstoneIndex {
    fn name(&self) -> &str {
        self.name
    }
}

#[async_trait::async_trait]
impl sea_orm_migration::MigrationTrait for TombstoneIndex {
    async fn up(&self, manager: &sea_orm_migration::SchemaManager) -> Result<(), DbErr> {
        use sea_orm::ConnectionTrait;
        manager
            .get_connection()
            .execute_unprepared(&self.tombstones.index_sql())
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &sea_orm_migration::SchemaManager) -> Result<(), DbErr> {
        use sea_orm::ConnectionTrait;
        manager
            .get_connection()
            .execute_unprepared(&format!(
                "DROP INDEX IF EXISTS {}_tombstone_created_idx",
                self.tombstones.table
            ))
            .await?;
        Ok(())
    }
}
