//! Conversions between saga-core values and SQLite rows.
//!
//! Ids are hyphenated UUID text, JSON is text, booleans are 0/1, and times
//! are UTC text with exactly six fractional digits, so that comparing two
//! times as text compares them as times.

use chrono::{DateTime, SecondsFormat, Utc};
use saga_core::adapter::{Cursor, Waiting};
use saga_core::{Direction, LogEntry, SagaId, SagaInstance, SagaStatus, StepStatus};
use sea_orm::{QueryResult, Value};

use crate::error::Error;

/// The latest time stored: later ones (a step timeout of `Duration::MAX`
/// saturates at chrono's year 262142) are stored as this, so that every
/// stored time has a four-digit year and text order stays time order.
pub(crate) const LATEST: &str = "9999-12-31T23:59:59.999999Z";

/// `at` as stored: `2026-12-05T10:00:00.123456Z`.
pub(crate) fn time(at: DateTime<Utc>) -> String {
    let text = at.to_rfc3339_opts(SecondsFormat::Micros, true);
    // Years before 0000 or after 9999 carry a sign and more digits.
    if text.len() == LATEST.len() && !text.starts_with(['+', '-']) {
        text
    } else if text.starts_with('-') {
        "0000-01-01T00:00:00.000000Z".to_owned()
    } else {
        LATEST.to_owned()
    }
}

fn time_opt(at: Option<DateTime<Utc>>) -> Value {
    at.map(time).into()
}

fn int<T: TryInto<i64> + Copy + std::fmt::Display>(what: &str, value: T) -> Result<i64, Error> {
    value
        .try_into()
        .map_err(|_| Error::OutOfRange(format!("{what} {value} does not fit an integer column")))
}

/// The 21 `saga_state` columns after `id`, in [`STATE_COLUMNS`] order.
pub(crate) fn state_values(instance: &SagaInstance) -> Result<Vec<Value>, Error> {
    let cursor = instance.cursor;
    Ok(vec![
        instance.saga_type.clone().into(),
        i64::from(instance.definition_version).into(),
        instance.status.as_str().into(),
        cursor
            .map(|c| int("step index", c.step))
            .transpose()?
            .into(),
        cursor.map(|c| c.direction.as_str()).into(),
        cursor.map(|c| i64::from(c.attempt)).into(),
        cursor.map(|c| c.waiting.as_str()).into(),
        cursor.is_some_and(|c| c.uncertain).into(),
        i64::from(cursor.map_or(1, |c| c.round_from)).into(),
        i64::from(cursor.map_or(1, |c| c.key_from)).into(),
        cursor.is_some_and(|c| c.refused).into(),
        serde_json::to_string(&instance.steps)?.into(),
        serde_json::to_string(&instance.data)?.into(),
        instance.error.clone().into(),
        instance.idempotency_key.clone().into(),
        int("version", instance.version)?.into(),
        time_opt(instance.next_wake_at),
        time_opt(instance.deadline_at),
        i64::from(instance.log_seq).into(),
        time(instance.created_at).into(),
        time(instance.updated_at).into(),
    ])
}

/// The columns [`state_values`] fills, in its order.
pub(crate) const STATE_COLUMNS: [&str; 21] = [
    "saga_type",
    "definition_version",
    "status",
    "current_step",
    "phase",
    "attempt",
    "waiting",
    "uncertain",
    "round_from",
    "key_from",
    "refused",
    "steps",
    "data",
    "error",
    "idempotency_key",
    "version",
    "next_wake_at",
    "deadline_at",
    "log_seq",
    "created_at",
    "updated_at",
];

/// The values of `logs`' rows, seven per entry, in `saga_logs` column order.
pub(crate) fn log_values(saga: SagaId, logs: &[LogEntry]) -> Result<Vec<Value>, Error> {
    let mut values = Vec::with_capacity(logs.len() * 7);
    for log in logs {
        if log.saga_id != saga {
            return Err(Error::OutOfRange(format!(
                "log entry {} belongs to saga {}, not to saga {saga}",
                log.seq, log.saga_id
            )));
        }
        values.extend([
            saga.to_string().into(),
            i64::from(log.seq).into(),
            log.event.as_str().into(),
            log.step.clone().into(),
            log.attempt.map(i64::from).into(),
            serde_json::to_string(&log.payload)?.into(),
            time(log.at).into(),
        ]);
    }
    Ok(values)
}

fn get<T: sea_orm::TryGetable>(row: &QueryResult, column: &str) -> Result<T, Error> {
    row.try_get::<T>("", column).map_err(Error::from)
}

fn parse<T: std::str::FromStr>(id: &str, what: &str, value: &str) -> Result<T, Error> {
    value
        .parse()
        .map_err(|_| Error::corrupt(id, format!("unknown {what} `{value}`")))
}

fn unsigned<T: TryFrom<i64>>(id: &str, what: &str, value: i64) -> Result<T, Error> {
    T::try_from(value).map_err(|_| Error::corrupt(id, format!("{what} {value} is out of range")))
}

fn json<T: serde::de::DeserializeOwned>(id: &str, what: &str, text: &str) -> Result<T, Error> {
    serde_json::from_str(text).map_err(|e| Error::corrupt(id, format!("{what}: {e}")))
}

pub(crate) fn parse_time(id: &str, what: &str, text: &str) -> Result<DateTime<Utc>, Error> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| Error::corrupt(id, format!("{what} `{text}`: {e}")))
}

fn parse_time_opt(
    id: &str,
    what: &str,
    text: Option<String>,
) -> Result<Option<DateTime<Utc>>, Error> {
    text.map(|t| parse_time(id, what, &t)).transpose()
}

/// A `saga_state` row back into the instance it was saved from.
pub(crate) fn to_instance(row: &QueryResult) -> Result<SagaInstance, Error> {
    let id: String = get(row, "id")?;
    let uuid = uuid::Uuid::parse_str(&id).map_err(|e| Error::corrupt(&id, format!("id: {e}")))?;
    let status: SagaStatus = parse(&id, "status", &get::<String>(row, "status")?)?;
    let steps: Vec<StepStatus> = json(&id, "steps", &get::<String>(row, "steps")?)?;
    let cursor = match (
        get::<Option<i64>>(row, "current_step")?,
        get::<Option<String>>(row, "phase")?,
        get::<Option<i64>>(row, "attempt")?,
        get::<Option<String>>(row, "waiting")?,
    ) {
        (None, None, None, None) => None,
        (Some(step), Some(phase), Some(attempt), Some(waiting)) => Some(Cursor {
            step: unsigned(&id, "current_step", step)?,
            direction: match phase.as_str() {
                "invoke" => Direction::Invoke,
                "compensate" => Direction::Compensate,
                other => return Err(Error::corrupt(&id, format!("unknown phase `{other}`"))),
            },
            attempt: unsigned(&id, "attempt", attempt)?,
            waiting: parse::<Waiting>(&id, "waiting", &waiting)?,
            uncertain: get(row, "uncertain")?,
            round_from: unsigned(&id, "round_from", get(row, "round_from")?)?,
            key_from: unsigned(&id, "key_from", get(row, "key_from")?)?,
            refused: get(row, "refused")?,
        }),
        _ => {
            return Err(Error::corrupt(
                &id,
                "current_step, phase, attempt and waiting must be all set or all null",
            ));
        }
    };
    Ok(SagaInstance {
        id: SagaId::from_uuid(uuid),
        saga_type: get(row, "saga_type")?,
        definition_version: unsigned(&id, "definition_version", get(row, "definition_version")?)?,
        status,
        steps,
        cursor,
        data: json(&id, "data", &get::<String>(row, "data")?)?,
        error: get(row, "error")?,
        idempotency_key: get(row, "idempotency_key")?,
        version: unsigned(&id, "version", get(row, "version")?)?,
        next_wake_at: parse_time_opt(&id, "next_wake_at", get(row, "next_wake_at")?)?,
        deadline_at: parse_time_opt(&id, "deadline_at", get(row, "deadline_at")?)?,
        log_seq: unsigned(&id, "log_seq", get(row, "log_seq")?)?,
        created_at: parse_time(&id, "created_at", &get::<String>(row, "created_at")?)?,
        updated_at: parse_time(&id, "updated_at", &get::<String>(row, "updated_at")?)?,
    })
}

/// A `saga_logs` row back into its entry.
pub(crate) fn to_log(row: &QueryResult) -> Result<LogEntry, Error> {
    let id: String = get(row, "saga_id")?;
    let uuid = uuid::Uuid::parse_str(&id).map_err(|e| Error::corrupt(&id, format!("id: {e}")))?;
    Ok(LogEntry {
        saga_id: SagaId::from_uuid(uuid),
        seq: unsigned(&id, "log seq", get(row, "seq")?)?,
        event: parse(&id, "log event", &get::<String>(row, "event")?)?,
        step: get(row, "step")?,
        attempt: get::<Option<i64>>(row, "attempt")?
            .map(|a| unsigned(&id, "log attempt", a))
            .transpose()?,
        payload: json(&id, "log payload", &get::<String>(row, "payload")?)?,
        at: parse_time(&id, "log created_at", &get::<String>(row, "created_at")?)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_fixed_width_text_in_time_order_and_saturate_at_year_9999() {
        let early = DateTime::<Utc>::from_timestamp(0, 1_000).expect("time");
        assert_eq!(time(early), "1970-01-01T00:00:00.000001Z");
        assert_eq!(time(DateTime::<Utc>::MAX_UTC), LATEST);
        assert_eq!(
            time(DateTime::<Utc>::MIN_UTC),
            "0000-01-01T00:00:00.000000Z"
        );
        assert!(time(early) < time(DateTime::<Utc>::MAX_UTC));
        assert_eq!(
            parse_time("t", "t", LATEST).map(time).ok().as_deref(),
            Some(LATEST)
        );
    }
}
