//! Conversions between saga-core values and rows.

use chrono::SecondsFormat;
use saga_core::adapter::{Cursor, Waiting};
use saga_core::{Direction, LogEntry, SagaId, SagaInstance, SagaStatus, StepStatus};
use sea_orm::Value;
use serde::Serialize;

use crate::entity::{saga_logs, saga_state};
use crate::error::Error;

fn int<T: TryInto<i32> + Copy + std::fmt::Display>(what: &str, value: T) -> Result<i32, Error> {
    value
        .try_into()
        .map_err(|_| Error::OutOfRange(format!("{what} {value} does not fit an integer column")))
}

fn big<T: TryInto<i64> + Copy + std::fmt::Display>(what: &str, value: T) -> Result<i64, Error> {
    value
        .try_into()
        .map_err(|_| Error::OutOfRange(format!("{what} {value} does not fit a bigint column")))
}

/// The 22 `saga_state` columns an insert writes, in the order of
/// [`crate::store`]'s SQL (`$1`..`$22`).
pub(crate) fn state_values(instance: &SagaInstance) -> Result<Vec<Value>, Error> {
    let cursor = instance.cursor;
    Ok(vec![
        (*instance.id.as_uuid()).into(),
        instance.saga_type.clone().into(),
        int("definition version", instance.definition_version)?.into(),
        instance.status.as_str().into(),
        cursor
            .map(|c| int("step index", c.step))
            .transpose()?
            .into(),
        cursor.map(|c| c.direction.as_str()).into(),
        cursor
            .map(|c| int("attempt", c.attempt))
            .transpose()?
            .into(),
        cursor.map(|c| c.waiting.as_str()).into(),
        cursor.is_some_and(|c| c.uncertain).into(),
        int("round", cursor.map_or(1, |c| c.round_from))?.into(),
        int("key", cursor.map_or(1, |c| c.key_from))?.into(),
        cursor.is_some_and(|c| c.refused).into(),
        serde_json::to_value(&instance.steps)?.into(),
        instance.data.clone().into(),
        instance.error.clone().into(),
        instance.idempotency_key.clone().into(),
        big("version", instance.version)?.into(),
        instance.next_wake_at.into(),
        instance.deadline_at.into(),
        i64::from(instance.log_seq).into(),
        instance.created_at.into(),
        instance.updated_at.into(),
    ])
}

#[derive(Serialize)]
struct LogRow<'a> {
    seq: u32,
    event: &'static str,
    step: Option<&'a str>,
    attempt: Option<u32>,
    payload: &'a serde_json::Value,
    created_at: String,
}

/// Log entries as one JSON array for `jsonb_to_recordset`: one bind
/// parameter, one round trip, whatever the number of entries.
pub(crate) fn logs_json(saga: SagaId, logs: &[LogEntry]) -> Result<Value, Error> {
    Ok(log_rows(saga, logs)?.into())
}

/// [`logs_json`] as a plain JSON array.
fn log_rows(saga: SagaId, logs: &[LogEntry]) -> Result<serde_json::Value, Error> {
    let rows = logs
        .iter()
        .map(|log| {
            if log.saga_id != saga {
                return Err(Error::OutOfRange(format!(
                    "log entry {} belongs to saga {}, not to saga {saga}",
                    log.seq, log.saga_id
                )));
            }
            Ok(LogRow {
                seq: log.seq,
                event: log.event.as_str(),
                step: log.step.as_deref(),
                attempt: log.attempt,
                payload: &log.payload,
                created_at: timestamp(Some(log.at)).unwrap_or_default(),
            })
        })
        .collect::<Result<Vec<_>, Error>>()?;
    Ok(serde_json::to_value(rows)?)
}

fn timestamp(at: Option<chrono::DateTime<chrono::Utc>>) -> Option<String> {
    // Microseconds, truncated like a bound timestamp.
    at.map(|at| at.to_rfc3339_opts(SecondsFormat::Micros, true))
}

#[derive(Serialize)]
struct SaveRow<'a> {
    id: &'a uuid::Uuid,
    saga_type: &'a str,
    definition_version: i32,
    status: &'static str,
    current_step: Option<i32>,
    phase: Option<&'static str>,
    attempt: Option<i32>,
    waiting: Option<&'static str>,
    uncertain: bool,
    round_from: i32,
    key_from: i32,
    refused: bool,
    steps: &'a [StepStatus],
    data: &'a serde_json::Value,
    error: Option<&'a str>,
    idempotency_key: Option<&'a str>,
    version: i64,
    next_wake_at: Option<String>,
    deadline_at: Option<String>,
    log_seq: i64,
    created_at: Option<String>,
    updated_at: Option<String>,
    expected: i64,
    logs: serde_json::Value,
}

/// One saga's save as JSON text for the batched save statement
/// ([`crate::batch`]): the 22 `saga_state` columns, the expected version and
/// the log entries, read back in SQL with `jsonb_to_recordset`. Written
/// straight from borrowed fields: the saga's data is not copied first.
pub(crate) fn save_row(
    instance: &SagaInstance,
    expected_version: u64,
    logs: &[LogEntry],
) -> Result<String, Error> {
    let cursor = instance.cursor;
    let row = SaveRow {
        id: instance.id.as_uuid(),
        saga_type: &instance.saga_type,
        definition_version: int("definition version", instance.definition_version)?,
        status: instance.status.as_str(),
        current_step: cursor.map(|c| int("step index", c.step)).transpose()?,
        phase: cursor.map(|c| c.direction.as_str()),
        attempt: cursor.map(|c| int("attempt", c.attempt)).transpose()?,
        waiting: cursor.map(|c| c.waiting.as_str()),
        uncertain: cursor.is_some_and(|c| c.uncertain),
        round_from: int("round", cursor.map_or(1, |c| c.round_from))?,
        key_from: int("key", cursor.map_or(1, |c| c.key_from))?,
        refused: cursor.is_some_and(|c| c.refused),
        steps: &instance.steps,
        data: &instance.data,
        error: instance.error.as_deref(),
        idempotency_key: instance.idempotency_key.as_deref(),
        version: big("version", instance.version)?,
        next_wake_at: timestamp(instance.next_wake_at),
        deadline_at: timestamp(instance.deadline_at),
        log_seq: i64::from(instance.log_seq),
        created_at: timestamp(Some(instance.created_at)),
        updated_at: timestamp(Some(instance.updated_at)),
        expected: big("expected version", expected_version)?,
        logs: log_rows(instance.id, logs)?,
    };
    Ok(serde_json::to_string(&row)?)
}

fn parse<T: std::str::FromStr>(id: &uuid::Uuid, what: &str, value: &str) -> Result<T, Error> {
    value
        .parse()
        .map_err(|_| Error::corrupt(id, format!("unknown {what} `{value}`")))
}

fn unsigned<T: TryFrom<i64>>(
    id: &uuid::Uuid,
    what: &str,
    value: impl Into<i64>,
) -> Result<T, Error> {
    let value = value.into();
    T::try_from(value).map_err(|_| Error::corrupt(id, format!("{what} {value} is out of range")))
}

/// A stored row back into the instance it was saved from.
pub(crate) fn to_instance(row: saga_state::Model) -> Result<SagaInstance, Error> {
    let id = row.id;
    let status: SagaStatus = parse(&id, "status", &row.status)?;
    let steps: Vec<StepStatus> =
        serde_json::from_value(row.steps).map_err(|e| Error::corrupt(id, format!("steps: {e}")))?;
    let cursor = match (
        row.current_step,
        row.phase.as_deref(),
        row.attempt,
        row.waiting.as_deref(),
    ) {
        (None, None, None, None) => None,
        (Some(step), Some(phase), Some(attempt), Some(waiting)) => Some(Cursor {
            step: unsigned(&id, "current_step", step)?,
            direction: match phase {
                "invoke" => Direction::Invoke,
                "compensate" => Direction::Compensate,
                other => return Err(Error::corrupt(id, format!("unknown phase `{other}`"))),
            },
            attempt: unsigned(&id, "attempt", attempt)?,
            waiting: parse::<Waiting>(&id, "waiting", waiting)?,
            uncertain: row.uncertain,
            round_from: unsigned(&id, "round_from", row.round_from)?,
            key_from: unsigned(&id, "key_from", row.key_from)?,
            refused: row.refused,
        }),
        _ => {
            return Err(Error::corrupt(
                id,
                "current_step, phase, attempt and waiting must be all set or all null",
            ));
        }
    };
    Ok(SagaInstance {
        id: SagaId::from_uuid(id),
        saga_type: row.saga_type,
        definition_version: unsigned(&id, "definition_version", row.definition_version)?,
        status,
        steps,
        cursor,
        data: row.data,
        error: row.error,
        idempotency_key: row.idempotency_key,
        version: unsigned(&id, "version", row.version)?,
        next_wake_at: row.next_wake_at,
        deadline_at: row.deadline_at,
        log_seq: unsigned(&id, "log_seq", row.log_seq)?,
        created_at: row.created_at,
        updated_at: row.updated_at,
    })
}

/// A stored log row back into its entry.
pub(crate) fn to_log(row: saga_logs::Model) -> Result<LogEntry, Error> {
    let id = row.saga_id;
    Ok(LogEntry {
        saga_id: SagaId::from_uuid(id),
        seq: unsigned(&id, "log seq", row.seq)?,
        event: parse(&id, "log event", &row.event)?,
        step: row.step,
        attempt: row
            .attempt
            .map(|a| unsigned(&id, "log attempt", a))
            .transpose()?,
        payload: row.payload,
        at: row.created_at,
    })
}
