//! One step of a definition, type-erased for the state machine.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::error::StepError;
use crate::id::{Direction, IdempotencyKey, SagaId};
use crate::retry::RetryPolicy;

/// A boxed, sendable future.
pub(crate) type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;
/// Builds a command payload from the saga data.
pub(crate) type PayloadFn = Arc<dyn Fn(&Value) -> Result<Value, serde_json::Error> + Send + Sync>;
/// Runs a local step on a copy of the saga data.
pub(crate) type LocalFn =
    Arc<dyn Fn(Value, LocalContext) -> BoxFuture<Result<Value, StepError>> + Send + Sync>;

/// What a local step function knows about the attempt it runs.
///
/// The engine runs one attempt of a step at a time, drops an attempt's future
/// when the step's timeout passes, and may run a later attempt after a crash
/// or a timeout: make the function's effects idempotent on
/// [`idempotency_key`](Self::idempotency_key), which every attempt shares.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct LocalContext {
    /// The saga.
    pub saga_id: SagaId,
    /// The step's name.
    pub step: String,
    /// Action or compensation.
    pub direction: Direction,
    /// The attempt (1 for the first).
    pub attempt: u32,
    /// Stable across the attempts of this step's action (or compensation).
    pub idempotency_key: IdempotencyKey,
}
/// Folds a step's output into the saga data.
pub(crate) type FoldFn =
    Arc<dyn Fn(&mut Value, Value) -> Result<(), serde_json::Error> + Send + Sync>;

/// Where a step's action (or compensation) runs.
#[derive(Clone)]
pub enum Action {
    /// A command sent to a participant endpoint; the reply comes back as a message.
    Remote {
        /// The participant endpoint (queue) name, e.g. `inventory`.
        endpoint: String,
        /// The command's type name ([`Command::NAME`](crate::Command::NAME)).
        command: String,
        /// Builds the payload from the saga data.
        #[doc(hidden)]
        payload: PayloadFn,
    },
    /// An async function run by the orchestrator itself.
    Local {
        /// Runs the function.
        #[doc(hidden)]
        run: LocalFn,
    },
}

impl Action {
    /// The endpoint for a remote action, `None` for a local one.
    #[must_use]
    pub fn endpoint(&self) -> Option<&str> {
        match self {
            Self::Remote { endpoint, .. } => Some(endpoint),
            Self::Local { .. } => None,
        }
    }

    /// A short label for diagrams and logs: `endpoint.command` or `local`.
    #[must_use]
    pub fn label(&self) -> String {
        match self {
            Self::Remote {
                endpoint, command, ..
            } => format!("{endpoint}.{command}"),
            Self::Local { .. } => "local".to_owned(),
        }
    }
}

impl fmt::Debug for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.label())
    }
}

/// The role a step plays in the saga (Garcia-Molina's classification).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StepKind {
    /// Can be undone by its compensation if a later step fails (the default).
    Compensatable,
    /// The go/no-go point: once it succeeds the saga only goes forward. It has no
    /// compensation, retries until it succeeds or fails for a business reason,
    /// and every step after it must be retriable.
    Pivot,
    /// Retried until it succeeds or fails for a business reason.
    Retriable,
}

/// What to do when a participant reports an outcome it cannot vouch for
/// ([`StepErrorKind::Unknown`](crate::StepErrorKind::Unknown)).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum OnUnknown {
    /// Retry the step per its policy (the default); participants are idempotent.
    #[default]
    Retry,
    /// Stop retrying and compensate, this step included.
    Compensate,
}

/// One step of a [`SagaDefinition`](super::SagaDefinition).
#[derive(Clone)]
pub struct StepDefinition {
    pub(crate) name: String,
    pub(crate) kind: StepKind,
    pub(crate) action: Action,
    pub(crate) on_output: Option<FoldFn>,
    pub(crate) compensation: Option<Action>,
    pub(crate) retry: RetryPolicy,
    pub(crate) compensation_retry: RetryPolicy,
    pub(crate) timeout: Option<Duration>,
    pub(crate) on_unknown: OnUnknown,
    pub(crate) read_only: bool,
}

impl StepDefinition {
    /// The step's name, unique in its saga.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Compensatable, pivot or retriable.
    #[must_use]
    pub fn kind(&self) -> StepKind {
        self.kind
    }

    /// The forward action.
    #[must_use]
    pub fn action(&self) -> &Action {
        &self.action
    }

    /// The compensation, if the step has one.
    #[must_use]
    pub fn compensation(&self) -> Option<&Action> {
        self.compensation.as_ref()
    }

    /// The forward retry policy.
    #[must_use]
    pub fn retry(&self) -> &RetryPolicy {
        &self.retry
    }

    /// The compensation retry policy.
    #[must_use]
    pub fn compensation_retry(&self) -> &RetryPolicy {
        &self.compensation_retry
    }

    /// The step's own reply timeout, if set.
    #[must_use]
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// What an unknown outcome leads to.
    #[must_use]
    pub fn on_unknown(&self) -> OnUnknown {
        self.on_unknown
    }

    /// Whether the step was declared read-only: it changes nothing, so it
    /// needs no compensation.
    #[must_use]
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }
}

impl fmt::Debug for StepDefinition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StepDefinition")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("action", &self.action)
            .field("compensation", &self.compensation)
            .field("retry", &self.retry)
            .field("timeout", &self.timeout)
            .finish()
    }
}
