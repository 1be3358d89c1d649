//! Trace context across messages: a hook, so that one saga is one trace.
//!
//! `tracing` stays the API. The engine and participants open a span per
//! step attempt (`saga.step`), per reply applied (`saga.reply`), per wake-up
//! (`saga.wake`) and per command handled (`saga.command`), each with the saga
//! id, step and attempt. A [`Propagator`] writes the context of such a span
//! into the headers of the message it sends (W3C `traceparent`, say) and makes
//! the context in a received message's headers the parent of the span that
//! handles it. saga-core has no OpenTelemetry dependency: an application with
//! `tracing-opentelemetry` implements the two methods in a few lines (the
//! checkout app does, in `checkout_app::telemetry`). Without a propagator
//! nothing is written or read and nothing is slowed.
//!
//! The engine remembers the context of the last message of each unfinished
//! saga it worked on, in memory, so that a retry or timeout the poller sends
//! continues the same trace. After an engine restart such a send starts a new
//! trace.

use std::collections::BTreeMap;
use std::fmt;

/// Message headers, as carried by [`CommandMessage`](crate::adapter::CommandMessage)
/// and [`ReplyMessage`](crate::adapter::ReplyMessage) (AMQP headers on RabbitMQ).
pub type Headers = BTreeMap<String, String>;

/// Writes a span's trace context into message headers and reads it back.
pub trait Propagator: Send + Sync + 'static {
    /// Writes the context of `span` into `headers` (a message about to be sent).
    fn inject(&self, span: &tracing::Span, headers: &mut Headers);

    /// Makes the context found in `headers` (a message received) the parent of
    /// `span`. Headers without a context leave `span` as it is.
    fn extract(&self, headers: &Headers, span: &tracing::Span);
}

impl fmt::Debug for dyn Propagator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Propagator")
    }
}
