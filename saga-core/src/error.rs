//! The crate's error type, and the error a step reports.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::id::SagaId;

/// A boxed error from an adapter (database driver, broker client).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Errors of the saga engine and of the store and transport adapters.
///
/// Branch on [`Error::kind`] to decide what to do: retry later
/// ([`ErrorKind::Unavailable`], [`ErrorKind::Conflict`]), fix the input
/// ([`ErrorKind::Invalid`]), or stop ([`ErrorKind::NotFound`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A saga definition failed validation in [`build`](crate::definition::SagaBuilder::build).
    #[error("invalid saga definition `{saga}`: {reason}")]
    InvalidDefinition {
        /// The saga's name.
        saga: String,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// A participant was built wrong (no handler, commands of different
    /// endpoints, two handlers for one command). Fix the code.
    #[error("invalid participant: {0}")]
    InvalidParticipant(String),
    /// No definition with this name and version is registered with the engine.
    #[error("no saga definition `{name}` version {version} is registered with this engine")]
    UnknownDefinition {
        /// Saga type name.
        name: String,
        /// Definition version.
        version: u32,
    },
    /// The saga does not exist.
    #[error("saga {0} not found")]
    NotFound(SagaId),
    /// Another writer saved the saga first (optimistic concurrency).
    #[error("saga {id} was changed concurrently (expected version {expected})")]
    Conflict {
        /// The saga.
        id: SagaId,
        /// The version the writer expected to replace.
        expected: u64,
    },
    /// An operator action does not apply to the saga in its current state.
    #[error("cannot {action} saga {id}: {reason}")]
    InvalidOperation {
        /// The saga.
        id: SagaId,
        /// The refused action (`retry`, `cancel`, `resume`).
        action: &'static str,
        /// Why it was refused.
        reason: String,
    },
    /// Saga data, a command or a reply could not be (de)serialized.
    #[error("serialization failed: {0}")]
    Serialization(#[from] serde_json::Error),
    /// Waiting for a saga's outcome took longer than the caller allowed.
    #[error("saga {0} did not finish within the wait timeout")]
    WaitTimeout(SagaId),
    /// A message could not be decoded or routed (it belongs in a dead-letter queue).
    #[error("malformed message: {0}")]
    MalformedMessage(String),
    /// The engine or participant was shut down.
    #[error("shut down")]
    Shutdown,
    /// A store or transport backend failed.
    #[error("{kind} error: {source}")]
    Backend {
        /// What kind of failure, for branching.
        kind: ErrorKind,
        /// The adapter's error.
        #[source]
        source: BoxError,
    },
}

impl Error {
    /// Wraps an adapter error with its kind.
    pub fn backend(kind: ErrorKind, source: impl Into<BoxError>) -> Self {
        Self::Backend {
            kind,
            source: source.into(),
        }
    }

    /// The kind of failure, to decide between retrying, fixing input and stopping.
    #[must_use]
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::InvalidDefinition { .. }
            | Self::InvalidParticipant(_)
            | Self::InvalidOperation { .. }
            | Self::Serialization(_)
            | Self::MalformedMessage(_) => ErrorKind::Invalid,
            Self::UnknownDefinition { .. } | Self::NotFound(_) => ErrorKind::NotFound,
            Self::Conflict { .. } => ErrorKind::Conflict,
            Self::WaitTimeout(_) => ErrorKind::Timeout,
            Self::Shutdown => ErrorKind::Unavailable,
            Self::Backend { kind, .. } => *kind,
        }
    }

    /// Whether trying the same operation again later may succeed.
    #[must_use]
    pub fn is_transient(&self) -> bool {
        matches!(
            self.kind(),
            ErrorKind::Unavailable | ErrorKind::Conflict | ErrorKind::Timeout
        )
    }
}

/// Classes of [`Error`], stable across adapters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Bad input or a bad definition: retrying will not help.
    Invalid,
    /// The saga, definition or resource does not exist.
    NotFound,
    /// A concurrent writer won; reload and retry.
    Conflict,
    /// A unique key already exists.
    Duplicate,
    /// The database or broker is unreachable or refused; retry with backoff.
    Unavailable,
    /// An operation timed out.
    Timeout,
    /// A storage schema is missing or outdated; run the migrations.
    Schema,
    /// Anything else.
    Other,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Invalid => "invalid",
            Self::NotFound => "not found",
            Self::Conflict => "conflict",
            Self::Duplicate => "duplicate",
            Self::Unavailable => "unavailable",
            Self::Timeout => "timeout",
            Self::Schema => "schema",
            Self::Other => "backend",
        })
    }
}

/// How the engine should treat a failed step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepErrorKind {
    /// A transient failure that had no effect (a lock timeout, an unavailable
    /// dependency): the step is retried per its retry policy.
    Retryable,
    /// A business refusal (insufficient stock, payment declined) that had no
    /// effect: never retried, compensation starts at once.
    Business,
    /// The participant cannot tell whether its effect happened: the step's
    /// [`OnUnknown`](crate::OnUnknown) setting decides (retry or compensate),
    /// and if the saga compensates, this step is compensated too.
    Unknown,
}

/// The error a participant or local step reports instead of a reply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{kind:?}: {message}")]
pub struct StepError {
    /// How the engine treats it.
    pub kind: StepErrorKind,
    /// A human-readable reason, kept in the saga's error and logs.
    pub message: String,
}

impl StepError {
    /// A business failure: compensate now, do not retry.
    pub fn business(message: impl Into<String>) -> Self {
        Self {
            kind: StepErrorKind::Business,
            message: message.into(),
        }
    }

    /// A transient failure: retry per the step's policy.
    pub fn retryable(message: impl Into<String>) -> Self {
        Self {
            kind: StepErrorKind::Retryable,
            message: message.into(),
        }
    }

    /// An outcome the participant cannot vouch for.
    pub fn unknown(message: impl Into<String>) -> Self {
        Self {
            kind: StepErrorKind::Unknown,
            message: message.into(),
        }
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
