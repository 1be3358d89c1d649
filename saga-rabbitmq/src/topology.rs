//! Exchanges, queues and bindings, declared idempotently.
//!
//! Quorum command and reply queues are declared with at-least-once
//! dead-lettering ([`DeadLettering::AtLeastOnce`]); a queue an earlier version
//! declared without it is used as it is ([`DeadLettering::AtMostOnce`]), see
//! `Live::ensure` in `connection.rs`.

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

/// How a quorum queue hands its dead letters to the dead-letter exchange.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DeadLettering {
    /// `x-dead-letter-strategy = at-least-once` with `x-overflow =
    /// reject-publish` (its prerequisite; RabbitMQ 3.10+): the broker keeps a
    /// dead-lettered message in the source queue until the dead-letter queue
    /// confirmed it, so a missing route or an unavailable dead-letter queue
    /// delays it instead of losing it. What new queues get.
    AtLeastOnce,
    /// The arguments saga-rabbitmq declared before: the broker's default
    /// at-most-once dead-lettering (unless a policy says otherwise). Only to
    /// keep using a queue declared that way: a queue's arguments cannot change.
    AtMostOnce,
}

/// The arguments of `queue`.
///
/// Classic queues get neither the strategy nor the overflow: the broker
/// refuses `x-dead-letter-strategy` on them (`invalid arg ... of queue type
/// rabbit_classic_queue`), and their dead-lettering is at most once whatever
/// the arguments.
pub(crate) fn queue_arguments(
    config: &Config,
    queue: &str,
    dead_lettering: DeadLettering,
) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), long(config.queue_type.as_str()));
    args.insert(
        "x-dead-letter-exchange".into(),
        long(&config.dead_letter_exchange),
    );
    // The route the at-least-once worker needs: the dead-letter queue is bound
    // to the dead-letter exchange with exactly this key.
    args.insert("x-dead-letter-routing-key".into(), long(queue));
    if config.queue_type == QueueType::Quorum {
        // The broker dead-letters once a message was returned more often than
        // the limit: limit = deliveries - 1.
        let limit = i64::from(config.max_deliveries.saturating_sub(1));
        args.insert("x-delivery-limit".into(), AMQPValue::LongLongInt(limit));
        if dead_lettering == DeadLettering::AtLeastOnce {
            args.insert("x-dead-letter-strategy".into(), long("at-least-once"));
            // Without a length limit (none is set) the queue never refuses a
            // publish; with one (a policy), dead letters awaiting their route
            // count towards it.
            args.insert("x-overflow".into(), long("reject-publish"));
        }
    }
    args
}

/// A policy pattern matching exactly `queue` (its regex metacharacters escaped).
pub(crate) fn policy_pattern(queue: &str) -> String {
    let mut pattern = String::with_capacity(queue.len() + 2);
    pattern.push('^');
    for c in queue.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('$');
    pattern
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

/// Declares `spec`'s queue (with `dead_lettering`), its dead-letter queue and
/// both bindings; returns the queue's name.
///
/// The dead-letter queue and its binding come first, so the route the queue's
/// dead letters take exists before the queue does.
pub(crate) async fn declare_queue(
    channel: &Channel,
    config: &Config,
    spec: &QueueSpec,
    dead_lettering: DeadLettering,
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

    let args = queue_arguments(config, &queue, dead_lettering);
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

    fn arg<'a>(args: &'a FieldTable, key: &str) -> Option<&'a AMQPValue> {
        args.inner().get(key)
    }

    #[test]
    fn quorum_queues_dead_letter_at_least_once() {
        let config = Config::default();
        let args = queue_arguments(&config, "order_commands", DeadLettering::AtLeastOnce);
        assert_eq!(
            arg(&args, "x-dead-letter-strategy"),
            Some(&long("at-least-once"))
        );
        assert_eq!(arg(&args, "x-overflow"), Some(&long("reject-publish")));
        assert_eq!(
            arg(&args, "x-dead-letter-exchange"),
            Some(&long("saga.dead_letter"))
        );
        assert_eq!(
            arg(&args, "x-dead-letter-routing-key"),
            Some(&long("order_commands"))
        );
        assert_eq!(
            arg(&args, "x-delivery-limit"),
            Some(&AMQPValue::LongLongInt(4))
        );
        assert_eq!(arg(&args, "x-max-length"), None, "no length limit");

        let earlier = queue_arguments(&config, "order_commands", DeadLettering::AtMostOnce);
        assert_eq!(arg(&earlier, "x-dead-letter-strategy"), None);
        assert_eq!(arg(&earlier, "x-overflow"), None);
        assert_eq!(
            arg(&earlier, "x-delivery-limit"),
            Some(&AMQPValue::LongLongInt(4))
        );
    }

    #[test]
    fn classic_queues_get_no_quorum_only_arguments() {
        let config = Config::default().queue_type(QueueType::Classic);
        for dead_lettering in [DeadLettering::AtLeastOnce, DeadLettering::AtMostOnce] {
            let args = queue_arguments(&config, "order_commands", dead_lettering);
            assert_eq!(arg(&args, "x-dead-letter-strategy"), None);
            assert_eq!(arg(&args, "x-overflow"), None);
            assert_eq!(arg(&args, "x-delivery-limit"), None);
            assert_eq!(arg(&args, "x-queue-type"), Some(&long("classic")));
            assert_eq!(
                arg(&args, "x-dead-letter-exchange"),
                Some(&long("saga.dead_letter"))
            );
        }
    }

    #[test]
    fn policy_patterns_match_exactly_one_queue() {
        assert_eq!(policy_pattern("order_commands"), "^order_commands$");
        assert_eq!(policy_pattern("saga.replies"), "^saga\\.replies$");
        assert_eq!(policy_pattern("a+b(c)"), "^a\\+b\\(c\\)$");
    }

    #[test]
    fn reserved_or_oversized_names_are_refused() {
        assert!(check_queue_name("amq.gen-1").is_err());
        assert!(check_queue_name("").is_err());
        assert!(check_queue_name(&"x".repeat(300)).is_err());
        assert!(check_queue_name("order_commands").is_ok());
    }
}
