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
