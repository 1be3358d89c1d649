//! The participant inbox: effectively-once command handling.
//!
//! Delivery is at least once, so a participant must recognise a command it
//! already handled. The reliable place to remember that is the participant's
//! *own* business transaction: record the command's idempotency key in
//! `saga_inbox` in the same transaction as the business change, and the two
//! commit or vanish together.
//!
//! ```no_run
//! # use saga_core::{Command, CommandContext, StepError, StepErrorKind};
//! # use saga_postgres::sea_orm::{DatabaseConnection, DatabaseTransaction, TransactionTrait};
//! # #[derive(serde::Serialize, serde::Deserialize)] struct Reserve { sku: String }
//! # #[derive(serde::Serialize, serde::Deserialize)] struct Reserved { reservation: String }
//! # impl Command for Reserve { const NAME: &'static str = "reserve"; const ENDPOINT: &'static str = "inventory"; type Reply = Reserved; }
//! # async fn take_stock(txn: &DatabaseTransaction, cmd: &Reserve) -> Result<Reserved, StepError> { Ok(Reserved { reservation: format!("r-{}", cmd.sku) }) }
//! use saga_postgres::inbox;
//!
//! async fn reserve(db: &DatabaseConnection, cmd: Reserve, ctx: CommandContext) -> Result<Reserved, StepError> {
//!     let txn = db.begin().await.map_err(saga_postgres::Error::from)?;
//!     // A duplicate is answered with the recorded reply; a concurrent duplicate waits for us.
//!     if let Some(done) = inbox::check_in(&txn, &ctx).await? {
//!         return inbox::decode_reply(done);
//!     }
//!     // The business change, on `txn`.
//!     let reply = take_stock(&txn, &cmd).await;
//!     // A retryable or unknown failure: nothing happened, keep nothing (the
//!     // command is redelivered). A business refusal is recorded like a success.
//!     if matches!(&reply, Err(e) if e.kind != StepErrorKind::Business) {
//!         txn.rollback().await.map_err(saga_postgres::Error::from)?;
//!         return reply;
//!     }
//!     let reply = inbox::record_reply_in(&txn, &ctx.idempotency_key, reply).await?;
//!     txn.commit().await.map_err(saga_postgres::Error::from)?;
//!     reply
//! }
//! ```
//!
//! The rules are those of [`saga_core::participant`]:
//! - [`check_in`] claims the key. If the key is recorded, it returns the
//!   recorded outcome and the handler must not run again. If another
//!   transaction holds the key (a concurrent duplicate), it waits for that
//!   transaction to finish.
//! - For a compensation, [`check_in`] also records a business refusal under
//!   the step's *invoke* key if none is recorded, so an invoke delivered after
//!   its compensation is refused instead of creating an effect nobody undoes.
//! - [`record_in`] stores a success or a business failure. A retryable or
//!   unknown failure is not recorded (its claim is released) because nothing
//!   happened: roll the transaction back and let the command be redelivered.
//! - If the transaction rolls back, nothing of the above remains.
//!
//! For handlers without a database transaction, [`PgInbox`] implements
//! [`saga_core::Inbox`] for [`ParticipantBuilder::inbox`](saga_core::participant::ParticipantBuilder::inbox).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use saga_core::adapter::{Claim, InboxClaim, ReplyOutcome};
use saga_core::{CommandContext, Direction, IdempotencyKey, StepError, StepErrorKind};
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, Statement,
    TransactionTrait, Value,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::Error;

/// The message of the refusal a compensation records under its step's invoke key.
pub const COMPENSATED_REFUSAL: &str = "refused: the step was compensated before this command ran";

/// Claims the command's key; returns it if this transaction inserted it.
const CLAIM_SQL: &str = "\
INSERT INTO saga_inbox (idempotency_key, outcome) VALUES ($1, NULL)
ON CONFLICT (idempotency_key) DO NOTHING
RETURNING idempotency_key";

/// Claims a compensation's key and tombstones its invoke key, in one statement.
const CLAIM_WITH_TOMBSTONE_SQL: &str = "\
INSERT INTO saga_inbox (idempotency_key, outcome) VALUES ($1, NULL), ($2, $3)
ON CONFLICT (idempotency_key) DO NOTHING
RETURNING idempotency_key";

const RECORDED_SQL: &str = "SELECT outcome FROM saga_inbox WHERE idempotency_key = $1";

/// [`RECORDED_SQL`], locking the row: a committed claim without an outcome is
/// then held by one transaction at a time.
const LOCK_RECORDED_SQL: &str =
    "SELECT outcome FROM saga_inbox WHERE idempotency_key = $1 FOR UPDATE";

/// Records the outcome unless one is recorded, and returns the recorded one.
const RECORD_SQL: &str = "\
INSERT INTO saga_inbox (idempotency_key, outcome) VALUES ($1, $2)
ON CONFLICT (idempotency_key) DO UPDATE SET outcome = EXCLUDED.outcome
    WHERE saga_inbox.outcome IS NULL
RETURNING outcome";

const RELEASE_SQL: &str = "DELETE FROM saga_inbox WHERE idempotency_key = $1 AND outcome IS NULL";

fn outcome_from(
    key: &str,
    value: Option<serde_json::Value>,
) -> Result<Option<ReplyOutcome>, Error> {
    value
        .map(|v| {
            serde_json::from_value(v)
                .map_err(|e| Error::corrupt(key, format!("inbox outcome: {e}")))
        })
        .transpose()
}

async fn recorded<C: ConnectionTrait>(conn: &C, key: &str) -> Result<Option<ReplyOutcome>, Error> {
    read_recorded(conn, key, RECORDED_SQL).await
}

async fn read_recorded<C: ConnectionTrait>(
    conn: &C,
    key: &str,
    sql: &str,
) -> Result<Option<ReplyOutcome>, Error> {
    let row = conn
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            sql,
            [key.into()],
        ))
        .await?;
    match row {
        Some(row) => outcome_from(
            key,
            row.try_get::<Option<serde_json::Value>>("", "outcome")?,
        ),
        None => Ok(None),
    }
}

/// Whether the command was already handled, claiming its key if not.
///
/// Returns the recorded outcome of a duplicate (answer it, do nothing else),
/// or `None`: handle the command in the same transaction, then
/// [`record_in`]. For a compensation, the step's invoke key gets a refusal
/// tombstone if it has no outcome yet (see the [module docs](self)).
///
/// Run it inside the transaction of the business change (`conn` is a
/// [`DatabaseTransaction`]); one round trip for
/// a new command.
///
/// # Errors
/// Database errors (the transaction should be rolled back).
#[tracing::instrument(name = "saga_postgres.inbox.check", level = "debug", skip_all, fields(key = %ctx.idempotency_key))]
pub async fn check_in<C: ConnectionTrait>(
    conn: &C,
    ctx: &CommandContext,
) -> Result<Option<ReplyOutcome>, Error> {
    let tombstone = (ctx.direction == Direction::Compensate).then(|| ctx.invoke_key());
    check_key_in(conn, &ctx.idempotency_key, tombstone.as_ref()).await
}

/// [`check_in`] for a bare key: claims `key`, and tombstones `invoke_key`
/// with a refusal if given (pass the step's invoke key when `key` is a
/// compensation's).
///
/// # Errors
/// Database errors.
pub async fn check_key_in<C: ConnectionTrait>(
    conn: &C,
    key: &IdempotencyKey,
    invoke_key: Option<&IdempotencyKey>,
) -> Result<Option<ReplyOutcome>, Error> {
    let statement = match invoke_key {
        None => {
            Statement::from_sql_and_values(DbBackend::Postgres, CLAIM_SQL, [key.as_str().into()])
        }
        Some(invoke_key) => {
            let refusal = ReplyOutcome::Failure(StepError::business(COMPENSATED_REFUSAL));
            let values: [Value; 3] = [
                key.as_str().into(),
                invoke_key.as_str().into(),
                serde_json::to_value(refusal)?.into(),
            ];
            Statement::from_sql_and_values(DbBackend::Postgres, CLAIM_WITH_TOMBSTONE_SQL, values)
        }
    };
    let claimed = conn.query_all_raw(statement).await?;
    for row in &claimed {
        if row.try_get::<String>("", "idempotency_key")? == key.as_str() {
            return Ok(None);
        }
    }
    // Held by a committed transaction: its outcome, or `None` if it committed
    // a claim without an outcome (the handler may run: the row lock makes a
    // concurrent duplicate wait for this transaction).
    read_recorded(conn, key.as_str(), LOCK_RECORDED_SQL).await
}

/// Records `outcome` for `key` (in the same transaction as the business
/// change) and returns the outcome to reply with.
///
/// A success or a business failure is recorded, unless an outcome is already
/// recorded, which is then returned instead. A retryable or unknown failure is
/// not recorded: the claim taken by [`check_in`] is released and `outcome` is
/// returned as is (roll the transaction back: nothing happened).
///
/// # Errors
/// Database errors.
#[tracing::instrument(name = "saga_postgres.inbox.record", level = "debug", skip_all, fields(key = %key))]
pub async fn record_in<C: ConnectionTrait>(
    conn: &C,
    key: &IdempotencyKey,
    outcome: &ReplyOutcome,
) -> Result<ReplyOutcome, Error> {
    if let ReplyOutcome::Failure(e) = outcome
        && e.kind != StepErrorKind::Business
    {
        conn.execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            RELEASE_SQL,
            [key.as_str().into()],
        ))
        .await?;
        return Ok(outcome.clone());
    }
    let row = conn
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            RECORD_SQL,
            [key.as_str().into(), serde_json::to_value(outcome)?.into()],
        ))
        .await?;
    let stored = match row {
        Some(row) => outcome_from(
            key.as_str(),
            row.try_get::<Option<serde_json::Value>>("", "outcome")?,
        )?,
        None => recorded(conn, key.as_str()).await?,
    };
    stored.ok_or_else(|| Error::corrupt(key, "inbox row has no outcome after recording one"))
}

/// Typed [`record_in`]: records a handler's result and returns the reply to
/// send, decoded from what is recorded.
///
/// # Errors
/// The outer error is a database failure; the inner one the handler's (or the
/// recorded) [`StepError`].
pub async fn record_reply_in<C: ConnectionTrait, R: Serialize + DeserializeOwned>(
    conn: &C,
    key: &IdempotencyKey,
    reply: Result<R, StepError>,
) -> Result<Result<R, StepError>, Error> {
    let outcome = match reply {
        Ok(reply) => ReplyOutcome::Success(serde_json::to_value(reply)?),
        Err(e) => ReplyOutcome::Failure(e),
    };
    Ok(decode_reply(record_in(conn, key, &outcome).await?))
}

/// A recorded outcome as the typed reply of a handler.
///
/// # Errors
/// The recorded failure, or an unknown-outcome error when the recorded reply
/// does not decode as `R` (the reply type changed since it was recorded).
pub fn decode_reply<R: DeserializeOwned>(outcome: ReplyOutcome) -> Result<R, StepError> {
    match outcome {
        ReplyOutcome::Success(value) => serde_json::from_value(value)
            .map_err(|e| StepError::unknown(format!("the recorded reply does not decode: {e}"))),
        ReplyOutcome::Failure(e) => Err(e),
    }
}

/// Deletes inbox records created before `before`; returns how many.
///
/// Keep records longer than a command can be redelivered (the broker's
/// retention, the saga's longest retry schedule).
///
/// # Errors
/// Database errors.
pub async fn prune_in<C: ConnectionTrait>(conn: &C, before: DateTime<Utc>) -> Result<u64, Error> {
    let result = conn
        .execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "DELETE FROM saga_inbox WHERE created_at < $1",
            [before.into()],
        ))
        .await?;
    Ok(result.rows_affected())
}

/// Deletes up to `$2` inbox records (outcomes and tombstones) created before
/// `$1`, oldest first. A claim without an outcome is left alone, and `SKIP
/// LOCKED` passes over a row a participant holds at that moment (it waits for
/// no one, and concurrent pruners take disjoint sets).
const PRUNE_BATCH_SQL: &str = "\
DELETE FROM saga_inbox
WHERE idempotency_key IN (
    SELECT idempotency_key FROM saga_inbox
    WHERE created_at < $1 AND outcome IS NOT NULL
    ORDER BY created_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
)";

/// Deletes at most `batch` inbox records (recorded outcomes and tombstones)
/// created before `before`, oldest first; returns how many. What
/// [`PgInbox`]'s [`prune`](saga_core::Inbox::prune) runs, and what a
/// participant that calls [`check_in`] in its own transactions runs for
/// retention (with
/// [`ParticipantBuilder::prune_with`](saga_core::participant::ParticipantBuilder::prune_with)).
///
/// Keep records longer than any copy of a command can arrive: see
/// [the inbox's retention](saga_core::Inbox#retention). Rows held by a
/// transaction at that moment are skipped, not waited for.
///
/// # Errors
/// Database errors.
pub async fn prune_batch_in<C: ConnectionTrait>(
    conn: &C,
    before: DateTime<Utc>,
    batch: usize,
) -> Result<u64, Error> {
    if batch == 0 {
        return Ok(0);
    }
    let limit = i64::try_from(batch).unwrap_or(i64::MAX);
    let result = conn
        .execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            PRUNE_BATCH_SQL,
            [before.into(), limit.into()],
        ))
        .await?;
    Ok(result.rows_affected())
}

/// A [`saga_core::Inbox`] on `saga_inbox`, for participants whose handlers
/// have no transaction of their own.
///
/// Each claim is a database transaction that holds the key's row while the
/// handler runs, and records the outcome when it commits: a duplicate (a
/// redelivery of a command whose handler is slower than the step's timeout)
/// waits for it and gets the recorded reply, and a compensation that arrives
/// meanwhile waits too, then undoes what the handler did. If the process dies
/// mid-handler the transaction rolls back and the command runs again when it
/// is redelivered, so the handler's own effects must tolerate that.
///
/// A claim holds a pool connection while its handler runs, and a waiting
/// duplicate holds another: give the pool more connections than twice the
/// participant's concurrency. Prefer [`check_in`] / [`record_in`] inside the
/// business transaction when there is one: only then are the effect and the
/// record atomic.
#[derive(Clone, Debug)]
pub struct PgInbox {
    db: DatabaseConnection,
}

impl PgInbox {
    /// An inbox on `db` (which must have run [`migrate`](crate::migrate)).
    #[must_use]
    pub fn new(db: DatabaseConnection) -> Self {
        Self { db }
    }
}

#[async_trait]
impl saga_core::Inbox for PgInbox {
    async fn claim(
        &self,
        key: &IdempotencyKey,
        tombstone: Option<&IdempotencyKey>,
    ) -> saga_core::Result<Claim> {
        let txn = self.db.begin().await.map_err(Error::from)?;
        match check_key_in(&txn, key, tombstone).await? {
            Some(outcome) => {
                txn.rollback().await.map_err(Error::from)?;
                Ok(Claim::Recorded(outcome))
            }
            None => Ok(Claim::Claimed(Box::new(PgClaim {
                txn,
                key: key.clone(),
            }))),
        }
    }

    async fn prune(&self, before: DateTime<Utc>, batch: usize) -> saga_core::Result<usize> {
        let pruned = prune_batch_in(&self.db, before, batch).await?;
        Ok(usize::try_from(pruned).unwrap_or(usize::MAX))
    }
}

/// A key held by an open transaction of a [`PgInbox`].
struct PgClaim {
    txn: DatabaseTransaction,
    key: IdempotencyKey,
}

#[async_trait]
impl InboxClaim for PgClaim {
    async fn record(self: Box<Self>, outcome: &ReplyOutcome) -> saga_core::Result<ReplyOutcome> {
        let recorded = record_in(&self.txn, &self.key, outcome).await?;
        self.txn.commit().await.map_err(Error::from)?;
        Ok(recorded)
    }

    async fn release(self: Box<Self>) -> saga_core::Result<()> {
        self.txn.rollback().await.map_err(Error::from)?;
        Ok(())
    }
}
