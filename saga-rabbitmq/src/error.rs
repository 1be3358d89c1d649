//! The crate's error type and its mapping onto [`saga_core::ErrorKind`].

use std::time::Duration;

use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use saga_core::ErrorKind;

/// Errors of the RabbitMQ transport.
///
/// Converts into [`saga_core::Error`] (as [`saga_core::Error::Backend`]) with
/// the [`ErrorKind`] from [`Error::kind`]: connection problems are
/// [`ErrorKind::Unavailable`] (retry later), configuration and input problems
/// [`ErrorKind::Invalid`] (fix them), a missing confirm [`ErrorKind::Timeout`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A setting is wrong.
    #[error("invalid RabbitMQ transport configuration: {0}")]
    Config(String),
    /// The broker could not be reached within the connect timeout.
    #[error(
        "cannot connect to RabbitMQ at {url} within {timeout:?}: {reason} (is the broker running and the URL right?)"
    )]
    Connect {
        /// The URL, password redacted.
        url: String,
        /// How long it was tried.
        timeout: Duration,
        /// The last failure.
        reason: String,
    },
    /// The connection is down and did not come back within the connect timeout.
    #[error("not connected to RabbitMQ (reconnecting); try again later")]
    NotConnected,
    /// [`RabbitTransport::close`](crate::RabbitTransport::close) was called:
    /// the transport sends and consumes nothing more.
    #[error("the RabbitMQ transport was closed")]
    Closed,
    /// An AMQP operation failed.
    #[error("AMQP {operation} failed: {source}")]
    Amqp {
        /// What was attempted (`basic.publish`, `queue.declare order_commands`, ...).
        operation: String,
        /// lapin's error.
        #[source]
        source: lapin::Error,
    },
    /// The broker negatively acknowledged a publish: it did not take the message.
    #[error("the broker refused (nacked) message `{message_id}`")]
    Nacked {
        /// The message.
        message_id: String,
    },
    /// A publish matched no queue (the queue was deleted after it was declared).
    #[error(
        "message `{message_id}` to `{routing_key}` on exchange `{exchange}` was returned as unroutable"
    )]
    Unroutable {
        /// The message.
        message_id: String,
        /// The exchange.
        exchange: String,
        /// The routing key.
        routing_key: String,
    },
    /// The broker blocks publishers (a memory or disk alarm, which holds on
    /// every node of a cluster): nothing was sent. Retry later.
    #[error(
        "RabbitMQ blocks publishers (a memory or disk alarm); nothing was sent, try again later"
    )]
    Blocked,
    /// The broker accepted the connection but did not answer `operation` in
    /// time; the transport tries again (on the next broker first when the
    /// connection is the one that stopped answering).
    #[error("RabbitMQ did not answer {operation} within {timeout:?}")]
    NoAnswer {
        /// What was waiting for the broker (`declaring the topology`, ...).
        operation: &'static str,
        /// How long it waited.
        timeout: Duration,
    },
    /// The broker did not confirm a publish in time; it may or may not have it.
    #[error("no publisher confirm for message `{message_id}` within {timeout:?}")]
    ConfirmTimeout {
        /// The message.
        message_id: String,
        /// The confirm timeout.
        timeout: Duration,
    },
    /// A queue or exchange exists with other arguments (for example classic
    /// instead of quorum, or another delivery limit). The broker's message,
    /// in `source`, names the argument.
    ///
    /// Not raised for a quorum queue that an earlier version declared without
    /// at-least-once dead-lettering: that one is used as it is (see the crate
    /// documentation, *Upgrading*).
    #[error(
        "`{name}` exists on the broker with other arguments ({source}); match its Config::queue_type and Config::max_deliveries, or delete it once it is empty so that it is declared anew"
    )]
    TopologyMismatch {
        /// The queue or exchange.
        name: String,
        /// lapin's error.
        #[source]
        source: lapin::Error,
    },
    /// A name is not a valid AMQP queue, exchange or property value.
    #[error("invalid AMQP name `{name}`: {reason}")]
    InvalidName {
        /// The name.
        name: String,
        /// Why.
        reason: String,
    },
    /// A reply without `reply_to` cannot be routed.
    #[error("reply `{0}` has no reply_to queue")]
    NoReplyTo(String),
    /// A message did not serialize.
    #[error("message serialization failed: {0}")]
    Serialization(#[from] serde_json::Error),
    /// The delivery's channel is gone, so it cannot be settled; the broker
    /// redelivers it.
    #[error("the channel of this delivery is closed; the broker will redeliver it")]
    ChannelClosed,
}

impl Error {
    /// The saga-core class of this error, to decide between retrying and fixing.
    #[must_use]
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Config(_)
            | Self::TopologyMismatch { .. }
            | Self::InvalidName { .. }
            | Self::NoReplyTo(_)
            | Self::Serialization(_) => ErrorKind::Invalid,
            Self::Connect { .. }
            | Self::NotConnected
            | Self::Blocked
            | Self::NoAnswer { .. }
            | Self::Closed
            | Self::Nacked { .. }
            | Self::Unroutable { .. }
            | Self::ChannelClosed => ErrorKind::Unavailable,
            Self::ConfirmTimeout { .. } => ErrorKind::Timeout,
            Self::Amqp { source, .. } => lapin_kind(source),
        }
    }

    pub(crate) fn amqp(operation: impl Into<String>, source: lapin::Error) -> Self {
        Self::Amqp {
            operation: operation.into(),
            source,
        }
    }

    /// A declaration error: a precondition failure means different arguments.
    pub(crate) fn declare(name: &str, source: lapin::Error) -> Self {
        if is_precondition_failed(&source) {
            Self::TopologyMismatch {
                name: name.to_owned(),
                source,
            }
        } else {
            Self::amqp(format!("declare `{name}`"), source)
        }
    }
}

fn is_precondition_failed(error: &lapin::Error) -> bool {
    matches!(error.kind(), lapin::ErrorKind::ProtocolError(e)
        if *e.kind() == AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED))
}

fn lapin_kind(error: &lapin::Error) -> ErrorKind {
    match error.kind() {
        lapin::ErrorKind::ProtocolError(e) => match e.kind() {
            AMQPErrorKind::Soft(
                AMQPSoftError::PRECONDITIONFAILED | AMQPSoftError::ACCESSREFUSED,
            ) => ErrorKind::Invalid,
            AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND) => ErrorKind::NotFound,
            _ => ErrorKind::Unavailable,
        },
        lapin::ErrorKind::SerialisationError(_) | lapin::ErrorKind::ParsingError(_) => {
            ErrorKind::Other
        }
        _ => ErrorKind::Unavailable,
    }
}

impl From<Error> for saga_core::Error {
    fn from(error: Error) -> Self {
        saga_core::Error::backend(error.kind(), error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_tell_what_to_do() {
        assert_eq!(Error::NotConnected.kind(), ErrorKind::Unavailable);
        assert_eq!(Error::Blocked.kind(), ErrorKind::Unavailable);
        let no_answer = Error::NoAnswer {
            operation: "declaring the topology",
            timeout: std::time::Duration::from_secs(10),
        };
        assert_eq!(no_answer.kind(), ErrorKind::Unavailable);
        assert_eq!(
            no_answer.to_string(),
            "RabbitMQ did not answer declaring the topology within 10s"
        );
        assert_eq!(Error::NoReplyTo("r".into()).kind(), ErrorKind::Invalid);
        assert_eq!(
            Error::ConfirmTimeout {
                message_id: "m".into(),
                timeout: Duration::from_secs(1)
            }
            .kind(),
            ErrorKind::Timeout
        );
        let core: saga_core::Error = Error::Nacked {
            message_id: "m".into(),
        }
        .into();
        assert_eq!(core.kind(), ErrorKind::Unavailable);
        assert!(core.is_transient());
        assert!(core.to_string().contains("nacked"), "{core}");
    }
}
