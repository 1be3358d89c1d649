//! The store's writes, as operations the [writer](crate::writer) runs inside
//! its transaction. Each one's first statement writes, so it takes the
//! file's write lock before reading anything (no stale read to upgrade).

use chrono::{DateTime, Utc};
use saga_core::adapter::{Created, DefinitionKey};
use saga_core::{SagaId, SagaInstance, SagaStatus};
use sea_orm::{ConnectionTrait, DatabaseTransaction, DbBackend, Statement, Value};

use crate::convert::{STATE_COLUMNS, time, to_instance};
use crate::error::Error;

/// Log rows per `INSERT` (seven parameters each, well under SQLite's limit).
const LOG_ROWS_PER_INSERT: usize = 500;

/// A write, with its values already encoded.
#[derive(Debug)]
pub(crate) enum Op {
    /// Insert a saga and its first log entries, unless its key is taken.
    Create {
        id: SagaId,
        state: Vec<Value>,
        key: Option<String>,
        logs: Vec<Value>,
    },
    /// Replace a saga at the expected version, append its entries, release its lease.
    Save {
        id: SagaId,
        status: SagaStatus,
        state: Vec<Value>,
        expected: i64,
        logs: Vec<Value>,
    },
    /// Lease due sagas of the given definitions.
    Claim {
        now: DateTime<Utc>,
        until: DateTime<Utc>,
        limit: i64,
        owner: String,
        definitions: Vec<DefinitionKey>,
    },
    /// Delete old completed and compensated sagas with their logs.
    Prune { before: DateTime<Utc>, limit: i64 },
}

/// What an operation did.
#[derive(Debug)]
pub(crate) enum Answer {
    /// [`Op::Create`]'s outcome.
    Created(Created),
    /// [`Op::Save`]'s outcome.
    Saved(Saved),
    /// [`Op::Claim`]'s leased sagas.
    Claimed(Vec<SagaInstance>),
    /// [`Op::Prune`]'s count of deleted sagas.
    Pruned(u64),
}

/// The outcome of a version-checked save.
#[derive(Debug)]
pub(crate) enum Saved {
    /// Written; the saga's new status.
    Written(SagaId, SagaStatus),
    /// The saga is at another version: nothing written.
    Conflict,
    /// No such saga.
    NotFound,
}

fn statement(sql: &str, values: Vec<Value>) -> Statement {
    Statement::from_sql_and_values(DbBackend::Sqlite, sql, values)
}

impl Op {
    pub(crate) async fn apply(&self, txn: &DatabaseTransaction) -> Result<Answer, Error> {
        match self {
            Self::Create {
                id,
                state,
                key,
                logs,
            } => create(txn, *id, state, key.as_deref(), logs).await,
            Self::Save {
                id,
                status,
                state,
                expected,
                logs,
            } => save(txn, *id, *status, state, *expected, logs).await,
            Self::Claim {
                now,
                until,
                limit,
                owner,
                definitions,
            } => claim(txn, *now, *until, *limit, owner, definitions).await,
            Self::Prune { before, limit } => prune(txn, *before, *limit).await,
        }
    }
}

async fn create(
    txn: &DatabaseTransaction,
    id: SagaId,
    state: &[Value],
    key: Option<&str>,
    logs: &[Value],
) -> Result<Answer, Error> {
    let columns = STATE_COLUMNS.join(", ");
    let params = vec!["?"; STATE_COLUMNS.len() + 1].join(", ");
    let sql = format!(
        "INSERT INTO saga_state (id, {columns}) VALUES ({params}) \
         ON CONFLICT (idempotency_key) DO NOTHING"
    );
    let mut values = Vec::with_capacity(state.len() + 1);
    values.push(Value::from(id.to_string()));
    values.extend_from_slice(state);
    let inserted = txn
        .execute_raw(statement(&sql, values))
        .await?
        .rows_affected();
    if inserted == 1 {
        insert_logs(txn, logs).await?;
        return Ok(Answer::Created(Created::New));
    }
    // Not inserted: the idempotency key is taken (we hold the write lock, so
    // the row is there to read).
    let existing = match key {
        Some(key) => txn
            .query_one_raw(statement(
                "SELECT * FROM saga_state WHERE idempotency_key = ?",
                vec![key.into()],
            ))
            .await?
            .map(|row| to_instance(&row))
            .transpose()?,
        None => None,
    };
    existing
        .map(|existing| Answer::Created(Created::Existing(Box::new(existing))))
        .ok_or_else(|| Error::corrupt(id, "neither inserted nor found by its idempotency key"))
}

async fn save(
    txn: &DatabaseTransaction,
    id: SagaId,
    status: SagaStatus,
    state: &[Value],
    expected: i64,
    logs: &[Value],
) -> Result<Answer, Error> {
    let assignments = STATE_COLUMNS
        .iter()
        .map(|c| format!("{c} = ?"))
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!(
        "UPDATE saga_state SET {assignments}, lease_owner = NULL, lease_until = NULL \
         WHERE id = ? AND version = ?"
    );
    let mut values = state.to_vec();
    values.push(id.to_string().into());
    values.push(expected.into());
    let updated = txn
        .execute_raw(statement(&sql, values))
        .await?
        .rows_affected();
    if updated == 1 {
        insert_logs(txn, logs).await?;
        return Ok(Answer::Saved(Saved::Written(id, status)));
    }
    let exists = txn
        .query_one_raw(statement(
            "SELECT 1 AS found FROM saga_state WHERE id = ?",
            vec![id.to_string().into()],
        ))
        .await?
        .is_some();
    Ok(Answer::Saved(if exists {
        Saved::Conflict
    } else {
        Saved::NotFound
    }))
}

async fn insert_logs(txn: &DatabaseTransaction, values: &[Value]) -> Result<(), Error> {
    for chunk in values.chunks(7 * LOG_ROWS_PER_INSERT) {
        let rows = vec!["(?, ?, ?, ?, ?, ?, ?)"; chunk.len() / 7].join(", ");
        let sql = format!(
            "INSERT INTO saga_logs (saga_id, seq, event, step, attempt, payload, created_at) \
             VALUES {rows}"
        );
        txn.execute_raw(statement(&sql, chunk.to_vec())).await?;
    }
    Ok(())
}

/// Logged for a due saga whose row cannot be read.
const UNREADABLE: &str = "a due saga cannot be read and is skipped; it stays leased to this \
    engine until its lease ends, then is claimed (and reported) again";

async fn claim(
    txn: &DatabaseTransaction,
    now: DateTime<Utc>,
    until: DateTime<Utc>,
    limit: i64,
    owner: &str,
    definitions: &[DefinitionKey],
) -> Result<Answer, Error> {
    let any_definition =
        vec!["(saga_type = ? AND definition_version = ?)"; definitions.len()].join(" OR ");
    let sql = format!(
        "UPDATE saga_state SET lease_owner = ?, lease_until = ? \
         WHERE id IN ( \
             SELECT id FROM saga_state \
             WHERE next_wake_at <= ? AND (lease_until IS NULL OR lease_until <= ?) \
                 AND ({any_definition}) \
             ORDER BY next_wake_at LIMIT ?) \
         RETURNING *"
    );
    let now = time(now);
    let mut values: Vec<Value> = vec![
        owner.into(),
        time(until).into(),
        now.clone().into(),
        now.into(),
    ];
    for definition in definitions {
        values.push(definition.name.clone().into());
        values.push(i64::from(definition.version).into());
    }
    values.push(limit.into());
    let rows = txn.query_all_raw(statement(&sql, values)).await?;
    // A row that cannot be read (edited by hand, or written by a newer
    // version) is skipped, not allowed to fail the claim: it would come
    // first again on every poll and stop every other saga's timeouts.
    let mut claimed: Vec<SagaInstance> = rows
        .iter()
        .filter_map(|row| {
            to_instance(row)
                .inspect_err(|e| tracing::error!(error = %e, "{UNREADABLE}"))
                .ok()
        })
        .collect();
    claimed.sort_by_key(|s| s.next_wake_at);
    Ok(Answer::Claimed(claimed))
}

/// The oldest prunable sagas (ids), at most `?2`, last updated before `?1`.
const PRUNABLE: &str = "SELECT id FROM saga_state \
    WHERE status IN ('completed', 'compensated') AND updated_at < ? \
    ORDER BY updated_at, id LIMIT ?";

async fn prune(
    txn: &DatabaseTransaction,
    before: DateTime<Utc>,
    limit: i64,
) -> Result<Answer, Error> {
    let values = || vec![Value::from(time(before)), Value::from(limit)];
    // The logs first and explicitly: a connection opened without
    // `foreign_keys=ON` would not cascade.
    txn.execute_raw(statement(
        &format!("DELETE FROM saga_logs WHERE saga_id IN ({PRUNABLE})"),
        values(),
    ))
    .await?;
    let deleted = txn
        .execute_raw(statement(
            &format!("DELETE FROM saga_state WHERE id IN ({PRUNABLE})"),
            values(),
        ))
        .await?
        .rows_affected();
    Ok(Answer::Pruned(deleted))
}
