//! Exchanges, queues and bindings, declared idempotently.

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, ExchangeKind};

use crate::config::{Config, QueueType};
use crate::error::Error;

/// A queue the transport declares: a participant endpoint's command queue or
/// an orchestrators' reply queue. Each comes with its dead-letter queue.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum QueueSpec {
    Commands(String),
    Replies(String),
}

impl QueueSpec {
    pub(crate) fn queue_name(&self, config: &Config) -> String {
        match self {
            Self::Commands(endpoint) => (config.command_queue)(endpoint),
            Self::Replies(queue) => queue.clone(),
        }
    }

    /// The exchange and routing key messages for this queue are published with.
    pub(crate) fn route<'a>(&'a self, config: &'a Config) -> (&'a str, &'a str) {
        match self {
            Self::Commands(endpoint) => (&config.commands_exchange, endpoint),
            Self::Replies(queue) => (&config.replies_exchange, queue),
        }
    }
}

pub(crate) fn short(value: &str) -> Result<ShortString, Error> {
    ShortString::try_new(value).map_err(|e| Error::InvalidName {
        name: value.to_owned(),
        reason: e.to_string(),
    })
}

fn check_queue_name(name: &str) -> Result<(), Error> {
    if name.is_empty() {
        return Err(Error::InvalidName {
            name: name.to_owned(),
            reason: "queue names must not be empty".to_owned(),
        });
    }
    if name.starts_with("amq.") {
        return Err(Error::InvalidName {
            name: name.to_owned(),
            reason: "the `amq.` prefix is reserved by the broker".to_owned(),
        });
    }
    short(name).map(drop)
}

fn durable_queue() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    }
}

fn long(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value))
}

/// Declares the three exchanges (durable, direct).
pub(crate) async fn declare_exchanges(channel: &Channel, config: &Config) -> Result<(), Error> {
    for name in [
        &config.commands_exchange,
        &config.replies_exchange,
        &config.dead_letter_exchange,
    ] {
        channel
            .exchange_declare(
                short(name)?,
                ExchangeKind::Direct,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|e| Error::declare(name, e))?;
    }
    Ok(())
}

/// Declares `spec`'s queue, its dead-letter queue and both bindings; returns the queue's name.
pub(crate) async fn declare_queue(
    channel: &Channel,
    config: &Config,
    spec: &QueueSpec,
) -> Result<String, Error> {
    let queue = spec.queue_name(config);
    check_queue_name(&queue)?;
    let dlq = (config.dead_letter_queue)(&queue);
    check_queue_name(&dlq)?;

    let mut dlq_args = FieldTable::default();
    dlq_args.insert("x-queue-type".into(), long(config.queue_type.as_str()));
    channel
        .queue_declare(short(&dlq)?, durable_queue(), dlq_args)
        .await
        .map_err(|e| Error::declare(&dlq, e))?;
    channel
        .queue_bind(
            short(&dlq)?,
            short(&config.dead_letter_exchange)?,
            short(&queue)?,
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| Error::declare(&dlq, e))?;

    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), long(config.queue_type.as_str()));
    args.insert(
        "x-dead-letter-exchange".into(),
        long(&config.dead_letter_exchange),
    );
    args.insert("x-dead-letter-routing-key".into(), long(&queue));
    if config.queue_type == QueueType::Quorum {
        // The broker dead-letters once a message was returned more often than
        // the limit: limit = deliveries - 1.
        let limit = i64::from(config.max_deliveries.saturating_sub(1));
        args.insert("x-delivery-limit".into(), AMQPValue::LongLongInt(limit));
    }
    channel
        .queue_declare(short(&queue)?, durable_queue(), args)
        .await
        .map_err(|e| Error::declare(&queue, e))?;
    let (exchange, routing_key) = spec.route(config);
    channel
        .queue_bind(
            short(&queue)?,
            short(exchange)?,
            short(routing_key)?,
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| Error::declare(&queue, e))?;
    Ok(queue)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_name_and_route_their_queues() {
        let config = Config::default();
        let commands = QueueSpec::Commands("order".to_owned());
        assert_eq!(commands.queue_name(&config), "order_commands");
        assert_eq!(commands.route(&config), ("saga.commands", "order"));
        let replies = QueueSpec::Replies("saga_replies".to_owned());
        assert_eq!(replies.queue_name(&config), "saga_replies");
        assert_eq!(replies.route(&config), ("saga.replies", "saga_replies"));
    }

    #[test]
    fn reserved_or_oversized_names_are_refused() {
        assert!(check_queue_name("amq.gen-1").is_err());
        assert!(check_queue_name("").is_err());
        assert!(check_queue_name(&"x".repeat(300)).is_err());
        assert!(check_queue_name("order_commands").is_ok());
    }
}
