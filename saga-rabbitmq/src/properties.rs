//! AMQP properties and headers of saga messages, and reading them back.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use saga_core::adapter::{CommandMessage, ReplyMessage};

/// Header carrying the command's idempotency key.
pub const IDEMPOTENCY_KEY_HEADER: &str = "x-idempotency-key";
/// Header carrying the saga id (also in `correlation_id`).
pub const SAGA_ID_HEADER: &str = "x-saga-id";
/// Header carrying the saga type.
pub const SAGA_TYPE_HEADER: &str = "x-saga-type";
/// Header carrying the step name.
pub const STEP_HEADER: &str = "x-saga-step";
/// Header carrying `invoke` or `compensate`.
pub const DIRECTION_HEADER: &str = "x-saga-direction";
/// Header carrying the attempt number.
pub const ATTEMPT_HEADER: &str = "x-saga-attempt";
/// Header on dead letters: why the message was dead-lettered.
pub const DEAD_REASON_HEADER: &str = "x-saga-dead-reason";
/// Header on dead letters: the queue the message was dead-lettered from.
pub const DEAD_QUEUE_HEADER: &str = "x-saga-dead-queue";
/// Header with the deliveries counted by the adapter (classic queues).
pub const DELIVERY_COUNT_HEADER: &str = "x-saga-delivery-count";
/// Header with the deliveries counted by the broker (quorum queues).
pub(crate) const BROKER_DELIVERY_COUNT_HEADER: &str = "x-delivery-count";

const CONTENT_TYPE: &str = "application/json";
const PERSISTENT: u8 = 2;

pub(crate) fn long(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value))
}

/// A short string property, or nothing when the value is too long (the
/// message body carries every field in full).
fn short(value: &str) -> Option<ShortString> {
    ShortString::try_new(value).ok()
}

fn insert(headers: &mut FieldTable, key: &str, value: AMQPValue) {
    if let Some(key) = short(key) {
        headers.insert(key, value);
    }
}

fn base(
    message_id: &str,
    correlation_id: &str,
    kind: &str,
    headers: FieldTable,
) -> BasicProperties {
    let timestamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut properties = BasicProperties::default()
        .with_content_type(CONTENT_TYPE.into())
        .with_delivery_mode(PERSISTENT)
        .with_timestamp(timestamp)
        .with_app_id("saga-rabbitmq".into())
        .with_headers(headers);
    if let Some(id) = short(message_id) {
        properties = properties.with_message_id(id);
    }
    if let Some(id) = short(correlation_id) {
        properties = properties.with_correlation_id(id);
    }
    if let Some(kind) = short(kind) {
        properties = properties.with_type(kind);
    }
    properties
}

fn extra_headers(headers: &mut FieldTable, extra: &BTreeMap<String, String>) {
    for (key, value) in extra {
        insert(headers, key, long(value));
    }
}

/// Persistent, JSON, message id, correlation id = saga id, type = command
/// name, reply-to, trace context and idempotency key in headers.
pub(crate) fn command(command: &CommandMessage) -> BasicProperties {
    let mut headers = FieldTable::default();
    extra_headers(&mut headers, &command.headers);
    insert(
        &mut headers,
        IDEMPOTENCY_KEY_HEADER,
        long(command.idempotency_key.as_str()),
    );
    insert(
        &mut headers,
        SAGA_ID_HEADER,
        long(&command.saga_id.to_string()),
    );
    insert(&mut headers, SAGA_TYPE_HEADER, long(&command.saga_type));
    insert(&mut headers, STEP_HEADER, long(&command.step_name));
    insert(
        &mut headers,
        DIRECTION_HEADER,
        long(command.direction.as_str()),
    );
    insert(
        &mut headers,
        ATTEMPT_HEADER,
        AMQPValue::LongLongInt(i64::from(command.attempt)),
    );
    let mut properties = base(
        &command.message_id,
        &command.saga_id.to_string(),
        &command.command,
        headers,
    );
    if let Some(reply_to) = command.reply_to.as_deref().and_then(short) {
        properties = properties.with_reply_to(reply_to);
    }
    properties
}

/// Like [`command`], type `saga.reply`.
pub(crate) fn reply(reply: &ReplyMessage) -> BasicProperties {
    let mut headers = FieldTable::default();
    extra_headers(&mut headers, &reply.headers);
    insert(
        &mut headers,
        SAGA_ID_HEADER,
        long(&reply.saga_id.to_string()),
    );
    insert(&mut headers, STEP_HEADER, long(&reply.step_name));
    insert(
        &mut headers,
        DIRECTION_HEADER,
        long(reply.direction.as_str()),
    );
    insert(
        &mut headers,
        ATTEMPT_HEADER,
        AMQPValue::LongLongInt(i64::from(reply.attempt)),
    );
    base(
        &reply.message_id,
        &reply.saga_id.to_string(),
        "saga.reply",
        headers,
    )
}

/// Raw bytes (operator tooling and tests): persistent, no type.
pub(crate) fn raw(message_id: &str) -> BasicProperties {
    base(message_id, "", "", FieldTable::default())
}

/// `properties` with `headers` added (a copy for republishing).
pub(crate) fn with_headers(
    properties: &BasicProperties,
    added: &[(&str, AMQPValue)],
) -> BasicProperties {
    let mut headers = properties.headers().clone().unwrap_or_default();
    for (key, value) in added {
        insert(&mut headers, key, value.clone());
    }
    properties
        .clone()
        .with_headers(headers)
        .with_delivery_mode(PERSISTENT)
}

/// An integer header's value.
pub(crate) fn header_u64(properties: &BasicProperties, key: &str) -> Option<u64> {
    let value = properties.headers().as_ref()?.inner().get(key)?;
    match value {
        AMQPValue::ShortShortInt(v) => u64::try_from(*v).ok(),
        AMQPValue::ShortShortUInt(v) => Some(u64::from(*v)),
        AMQPValue::ShortInt(v) => u64::try_from(*v).ok(),
        AMQPValue::ShortUInt(v) => Some(u64::from(*v)),
        AMQPValue::LongInt(v) => u64::try_from(*v).ok(),
        AMQPValue::LongUInt(v) => Some(u64::from(*v)),
        AMQPValue::LongLongInt(v) => u64::try_from(*v).ok(),
        AMQPValue::Timestamp(v) => Some(*v),
        _ => None,
    }
}

/// A text header's value.
#[must_use]
pub fn header_str<'a>(properties: &'a BasicProperties, key: &str) -> Option<&'a str> {
    match properties.headers().as_ref()?.inner().get(key)? {
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok(),
        AMQPValue::ShortString(s) => Some(s.as_str()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use saga_core::adapter::ReplyOutcome;
    use saga_core::{Direction, IdempotencyKey, SagaId};

    fn sample() -> CommandMessage {
        let saga_id = SagaId::new();
        CommandMessage {
            message_id: format!("{saga_id}:reserve:invoke:1"),
            idempotency_key: IdempotencyKey::new(saga_id, "reserve", Direction::Invoke),
            saga_id,
            saga_type: "checkout".to_owned(),
            step: 0,
            step_name: "reserve".to_owned(),
            direction: Direction::Invoke,
            attempt: 2,
            endpoint: "inventory".to_owned(),
            command: "reserve_stock".to_owned(),
            payload: serde_json::json!({}),
            reply_to: Some("saga_replies".to_owned()),
            headers: [("traceparent".to_owned(), "00-abc-def-01".to_owned())].into(),
        }
    }

    #[test]
    fn commands_carry_ids_type_trace_context_and_key() {
        let cmd = sample();
        let p = command(&cmd);
        assert_eq!(p.delivery_mode(), &Some(2));
        assert_eq!(
            p.content_type().as_ref().map(ShortString::as_str),
            Some("application/json")
        );
        assert_eq!(
            p.message_id().as_ref().map(ShortString::as_str),
            Some(cmd.message_id.as_str())
        );
        assert_eq!(
            p.correlation_id().as_ref().map(ShortString::as_str),
            Some(cmd.saga_id.to_string().as_str())
        );
        assert_eq!(
            p.kind().as_ref().map(ShortString::as_str),
            Some("reserve_stock")
        );
        assert_eq!(
            p.reply_to().as_ref().map(ShortString::as_str),
            Some("saga_replies")
        );
        assert_eq!(header_str(&p, "traceparent"), Some("00-abc-def-01"));
        assert_eq!(
            header_str(&p, IDEMPOTENCY_KEY_HEADER),
            Some(cmd.idempotency_key.as_str())
        );
        assert_eq!(header_u64(&p, ATTEMPT_HEADER), Some(2));
    }

    #[test]
    fn replies_copy_trace_context() {
        let r = sample().reply(ReplyOutcome::Success(serde_json::json!(1)));
        let p = reply(&r);
        assert_eq!(header_str(&p, "traceparent"), Some("00-abc-def-01"));
        assert_eq!(
            p.kind().as_ref().map(ShortString::as_str),
            Some("saga.reply")
        );
    }

    #[test]
    fn overlong_values_are_left_out_instead_of_panicking() {
        let mut cmd = sample();
        cmd.message_id = "m".repeat(400);
        cmd.headers.insert("k".repeat(300), "v".to_owned());
        let p = command(&cmd);
        assert!(p.message_id().is_none());
        let republished = with_headers(&p, &[(DEAD_REASON_HEADER, long("why"))]);
        assert_eq!(header_str(&republished, DEAD_REASON_HEADER), Some("why"));
    }
}
