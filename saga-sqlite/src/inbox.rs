//! The participant inbox on SQLite: effectively-once command handling.
//!
//! The same contract as `saga_postgres::inbox`: record the command's
//! idempotency key in `saga_inbox` in the same transaction as the business
//! change, so that the two commit or vanish together. [`check_in`] claims the
//! key (or returns the recorded outcome of a duplicate); [`record_in`]
//! records the outcome. [`SqliteInbox`] implements [`saga_core::Inbox`] for
//! handlers without a transaction of their own.
//!
//! SQLite has one writer per file: a claim's transaction holds the file's
//! write lock until it commits, so the participant's claims run one at a
//! time, and a duplicate waits for the first to commit (up to the busy
//! timeout). Keep handlers short.
//!
//! ```
//! # async fn demo() -> Result<(), saga_sqlite::Error> {
//! use saga_core::adapter::ReplyOutcome;
//! use saga_core::{Direction, IdempotencyKey, SagaId};
//! use saga_sqlite::sea_orm::TransactionTrait;
//! use saga_sqlite::{SqliteConfig, inbox};
//!
//! let db = SqliteConfig::memory().connect().await?;
//! saga_sqlite::migrate(&db).await?;
//! let key = IdempotencyKey::new(SagaId::new(), "reserve", Direction::Invoke);
//!
//! let txn = db.begin().await?;
//! assert!(inbox::check_key_in(&txn, &key, None).await?.is_none()); // new: handle it
//! // ... the business change, on `txn` ...
//! let reply = ReplyOutcome::Success(serde_json::json!({ "reservation": "r-1" }));
//! inbox::record_in(&txn, &key, &reply).await?;
//! txn.commit().await?;
//!
//! // A redelivery gets the recorded reply.
//! let txn = db.begin().await?;
//! assert_eq!(inbox::check_key_in(&txn, &key, None).await?, Some(reply));
//! # Ok(()) }
//! # tokio::runtime::Runtime::new().unwrap().block_on(demo()).unwrap();
//! ```

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use saga_core::adapter::{Claim, InboxClaim, ReplyOutcome};
use saga_core::{CommandContext, Direction, IdempotencyKey, StepError, StepErrorKind};
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, Statement,
    TransactionTrait, Value,
};

use crate::convert::time;
use crate::error::Error;

/// The message of the refusal a compensation records under its step's invoke key.
pub const COMPENSATED_REFUSAL: &str = "refused: the step was compensated before this command ran";

fn statement(sql: &str, values: Vec<Value>) -> Statement {
    Statement::from_sql_and_values(DbBackend::Sqlite, sql, values)
}

fn outcome_from(key: &str, text: Option<String>) -> Result<Option<ReplyOutcome>, Error> {
    text.map(|t| {
        serde_json::from_str(&t).map_err(|e| Error::corrupt(key, format!("inbox outcome: {e}")))
    })
    .transpose()
}

async fn recorded<C: ConnectionTrait>(conn: &C, key: &str) -> Result<Option<ReplyOutcome>, Error> {
    let row = conn
        .query_one_raw(statement(
            "SELECT outcome FROM saga_inbox WHERE idempotency_key = ?",
            vec![key.into()],
        ))
        .await?;
    match row {
        Some(row) => outcome_from(key, row.try_get::<Option<String>>("", "outcome")?),
        None => Ok(None),
    }
}

/// Whether the command was already handled, claiming its key if not.
///
/// Returns the recorded outcome of a duplicate (answer it, do nothing else),
/// or `None`: handle the command in the same transaction, then
/// [`record_in`]. For a compensation, the step's invoke key gets a refusal
/// tombstone if it has no outcome yet. Run it first in the transaction of the
/// business change.
///
/// # Errors
/// Database errors (roll the transaction back).
pub async fn check_in<C: ConnectionTrait>(
    conn: &C,
    ctx: &CommandContext,
) -> Result<Option<ReplyOutcome>, Error> {
    let tombstone = (ctx.direction == Direction::Compensate).then(|| ctx.invoke_key());
    check_key_in(conn, &ctx.idempotency_key, tombstone.as_ref()).await
}

/// [`check_in`] for a bare key: claims `key`, and tombstones `invoke_key`
/// with a refusal if given (the step's invoke key when `key` is a
/// compensation's).
///
/// # Errors
/// Database errors.
#[tracing::instrument(name = "saga_sqlite.inbox.check", level = "debug", skip_all, fields(key = %key))]
pub async fn check_key_in<C: ConnectionTrait>(
    conn: &C,
    key: &IdempotencyKey,
    invoke_key: Option<&IdempotencyKey>,
) -> Result<Option<ReplyOutcome>, Error> {
    let now = time(Utc::now());
    let claim = match invoke_key {
        None => statement(
            "INSERT INTO saga_inbox (idempotency_key, outcome, created_at) VALUES (?, NULL, ?) \
             ON CONFLICT (idempotency_key) DO NOTHING RETURNING idempotency_key",
            vec![key.as_str().into(), now.into()],
        ),
        Some(invoke_key) => {
            let refusal = ReplyOutcome::Failure(StepError::business(COMPENSATED_REFUSAL));
            statement(
                "INSERT INTO saga_inbox (idempotency_key, outcome, created_at) \
                 VALUES (?, NULL, ?), (?, ?, ?) \
                 ON CONFLICT (idempotency_key) DO NOTHING RETURNING idempotency_key",
                vec![
                    key.as_str().into(),
                    now.clone().into(),
                    invoke_key.as_str().into(),
                    serde_json::to_string(&refusal)?.into(),
                    now.into(),
                ],
            )
        }
    };
    let claimed = conn.query_all_raw(claim).await?;
    for row in &claimed {
        if row.try_get::<String>("", "idempotency_key")? == key.as_str() {
            return Ok(None);
        }
    }
    // Taken: its outcome, or `None` for a committed claim without one (the
    // handler may run; this transaction holds the write lock).
    recorded(conn, key.as_str()).await
}

/// Records `outcome` for `key` (in the transaction of the business change)
/// and returns the outcome to reply with.
///
/// A success or a business failure is recorded unless an outcome is already
/// recorded, which is returned instead. A retryable or unknown failure is not
/// recorded: the claim is released and `outcome` returned as is (roll the
/// transaction back: nothing happened).
///
/// # Errors
/// Database errors.
#[tracing::instrument(name = "saga_sqlite.inbox.record", level = "debug", skip_all, fields(key = %key))]
pub async fn record_in<C: ConnectionTrait>(
    conn: &C,
    key: &IdempotencyKey,
    outcome: &ReplyOutcome,
) -> Result<ReplyOutcome, Error> {
    if let ReplyOutcome::Failure(e) = outcome
        && e.kind != StepErrorKind::Business
    {
        conn.execute_raw(statement(
            "DELETE FROM saga_inbox WHERE idempotency_key = ? AND outcome IS NULL",
            vec![key.as_str().into()],
        ))
        .await?;
        return Ok(outcome.clone());
    }
    conn.execute_raw(statement(
        "INSERT INTO saga_inbox (idempotency_key, outcome, created_at) VALUES (?, ?, ?) \
         ON CONFLICT (idempotency_key) DO UPDATE SET outcome = excluded.outcome \
         WHERE saga_inbox.outcome IS NULL",
        vec![
            key.as_str().into(),
            serde_json::to_string(outcome)?.into(),
            time(Utc::now()).into(),
        ],
    ))
    .await?;
    recorded(conn, key.as_str())
        .await?
        .ok_or_else(|| Error::corrupt(key, "inbox row has no outcome after recording one"))
}

/// Deletes at most `batch` inbox records (recorded outcomes and tombstones)
/// created before `before`, oldest first; returns how many. A claim without
/// an outcome is left alone. Keep records longer than any copy of a command
/// can arrive: see [the inbox's retention](saga_core::Inbox#retention).
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
    let result = conn
        .execute_raw(statement(
            "DELETE FROM saga_inbox WHERE idempotency_key IN ( \
                 SELECT idempotency_key FROM saga_inbox \
                 WHERE created_at < ? AND outcome IS NOT NULL \
                 ORDER BY created_at LIMIT ?)",
            vec![
                time(before).into(),
                i64::try_from(batch).unwrap_or(i64::MAX).into(),
            ],
        ))
        .await?;
    Ok(result.rows_affected())
}

/// A [`saga_core::Inbox`] on `saga_inbox`, for participants whose handlers
/// have no transaction of their own.
///
/// Each claim is a transaction that holds the file's write lock while the
/// handler runs and records the outcome when it commits; a duplicate waits
/// for it and gets the recorded reply. If the process dies mid-handler the
/// transaction rolls back and the command runs again when redelivered.
///
/// So a handler must not write to the inbox's file through another
/// connection: it would wait for the lock its own claim holds, until the
/// busy timeout, on every attempt. A handler that keeps its data in SQLite
/// records the key in its own transaction instead, with [`check_key_in`]
/// and [`record_in`], or keeps the inbox in a file of its own.
#[derive(Clone, Debug)]
pub struct SqliteInbox {
    db: DatabaseConnection,
}

impl SqliteInbox {
    /// An inbox on `db` (which must have run [`migrate`](crate::migrate)).
    #[must_use]
    pub fn new(db: DatabaseConnection) -> Self {
        Self { db }
    }
}

#[async_trait]
impl saga_core::Inbox for SqliteInbox {
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
            None => Ok(Claim::Claimed(Box::new(SqliteClaim {
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

/// A key held by an open transaction of a [`SqliteInbox`].
struct SqliteClaim {
    txn: DatabaseTransaction,
    key: IdempotencyKey,
}

#[async_trait]
impl InboxClaim for SqliteClaim {
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
