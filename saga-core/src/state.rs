//! The persisted state of one saga instance and its audit log.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::id::{Direction, SagaId};

/// Where a saga is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SagaStatus {
    /// Steps are running forward.
    Running,
    /// A step failed; completed steps are being undone in reverse order.
    Compensating,
    /// Every step succeeded. Terminal.
    Completed,
    /// A step failed and every completed step was undone. Terminal.
    Compensated,
    /// The saga cannot proceed without an operator: a compensation failed past its
    /// retry limit, or a step after the pivot failed for a business reason.
    /// Terminal until an operator retries it, or until a late success of the
    /// attempt it stopped on arrives (the saga then goes on from there).
    Failed,
}

impl SagaStatus {
    /// Every status, in life-cycle order.
    pub const ALL: [Self; 5] = [
        Self::Running,
        Self::Compensating,
        Self::Completed,
        Self::Compensated,
        Self::Failed,
    ];

    /// Whether the saga has stopped (completed, compensated or failed).
    #[must_use]
    pub const fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Compensated | Self::Failed)
    }

    /// The status as stored: `running`, `compensating`...
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Compensating => "compensating",
            Self::Completed => "completed",
            Self::Compensated => "compensated",
            Self::Failed => "failed",
        }
    }
}

impl fmt::Display for SagaStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl FromStr for SagaStatus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|status| status.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                format!("unknown saga status `{s}` (expected running, compensating, completed, compensated or failed)")
            })
    }
}

/// The state of one step of an instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum StepStatus {
    /// Not reached yet.
    Pending,
    /// The action was dispatched; awaiting its reply or its next attempt.
    Running,
    /// The action succeeded.
    Succeeded,
    /// The action failed with no effect left to undo.
    Failed,
    /// The action may or may not have taken effect (it timed out or its outcome
    /// was unknown); it is compensated like a succeeded step.
    Uncertain,
    /// The compensation is running.
    Compensating,
    /// The compensation succeeded.
    Compensated,
}

impl StepStatus {
    /// Whether compensation must run for the step: every step that was
    /// started. A succeeded or uncertain step may have an effect to undo; a
    /// failed one has none, but its compensation still tells the participant
    /// to refuse a redelivered copy of the command that may arrive later
    /// (delivery is at least once). Compensations must therefore accept
    /// "nothing to undo".
    #[must_use]
    pub const fn needs_compensation(self) -> bool {
        matches!(self, Self::Succeeded | Self::Uncertain | Self::Failed)
    }
}

/// What the current step is waiting for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Waiting {
    /// A reply to the attempt that was dispatched; `next_wake_at` is its timeout.
    Reply,
    /// The backoff before the next attempt; `next_wake_at` is when to dispatch it.
    Retry,
    /// The current attempt must be (re)sent at `next_wake_at`: its send
    /// failed, or it may not start before then (the compensation of a local
    /// step whose attempt may still be running). No attempt is consumed and no
    /// timeout runs until it is sent.
    Send,
}

impl Waiting {
    /// The value as stored: `reply`, `retry` or `send`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Reply => "reply",
            Self::Retry => "retry",
            Self::Send => "send",
        }
    }
}

impl FromStr for Waiting {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [Self::Reply, Self::Retry, Self::Send]
            .into_iter()
            .find(|w| w.as_str() == s)
            .ok_or_else(|| format!("unknown waiting `{s}` (expected reply, retry or send)"))
    }
}

/// The step an unfinished saga is working on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Cursor {
    /// Index of the step in the definition.
    pub step: usize,
    /// Running the action or its compensation.
    pub direction: Direction,
    /// The attempt number, starting at 1.
    pub attempt: u32,
    /// Awaiting a reply, or a retry's backoff.
    pub waiting: Waiting,
    /// Whether an earlier attempt timed out or reported an unknown outcome, so
    /// the step's effect may exist even if later attempts fail.
    pub uncertain: bool,
    /// The first attempt of the current round: 1, or the attempt an operator's
    /// retry started. The step's attempt limit counts from here.
    #[serde(default = "first_attempt")]
    pub round_from: u32,
    /// The first attempt sent under the current idempotency key: 1, unless an
    /// operator retried the step after the participant refused it (a refusal is
    /// recorded under its key, so the retry needs a fresh one). Replies to
    /// attempts before it are ignored.
    #[serde(default = "first_attempt")]
    pub key_from: u32,
    /// Whether the participant refused the current key with a business
    /// failure (recorded under that key): an operator retry then starts a new key.
    #[serde(default)]
    pub refused: bool,
}

const fn first_attempt() -> u32 {
    1
}

impl Cursor {
    /// A cursor at the first attempt of `step` in `direction`, awaiting its reply.
    #[must_use]
    pub const fn first(step: usize, direction: Direction) -> Self {
        Self {
            step,
            direction,
            attempt: 1,
            waiting: Waiting::Reply,
            uncertain: false,
            round_from: 1,
            key_from: 1,
            refused: false,
        }
    }

    /// The attempt's number within its round (1 for the first).
    #[must_use]
    pub const fn nth(&self) -> u32 {
        self.attempt
            .saturating_sub(self.round_from)
            .saturating_add(1)
    }
}

/// One saga instance: everything the engine needs to resume it after a crash.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SagaInstance {
    /// Identity.
    pub id: SagaId,
    /// The definition's name.
    pub saga_type: String,
    /// The definition version the instance started with.
    pub definition_version: u32,
    /// Life-cycle status.
    pub status: SagaStatus,
    /// Per-step state, one entry per step of the definition.
    pub steps: Vec<StepStatus>,
    /// The step being worked on; `None` once completed or compensated.
    pub cursor: Option<Cursor>,
    /// The saga data (the typed `D`, as JSON).
    pub data: Value,
    /// Why the saga is compensating or failed.
    pub error: Option<String>,
    /// The key the saga was started with, if any (unique per store).
    pub idempotency_key: Option<String>,
    /// Optimistic-concurrency version, incremented by every transition.
    pub version: u64,
    /// When the engine must next look at the saga (a timeout, a retry, the deadline).
    pub next_wake_at: Option<DateTime<Utc>>,
    /// When a saga not yet past its pivot gives up and compensates.
    pub deadline_at: Option<DateTime<Utc>>,
    /// Number of log entries written so far (the next entry's sequence number).
    pub log_seq: u32,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Time of the last transition.
    pub updated_at: DateTime<Utc>,
}

impl SagaInstance {
    /// Decodes the saga data as `D`.
    ///
    /// # Errors
    /// When the stored data does not match `D`.
    pub fn data_as<D: serde::de::DeserializeOwned>(&self) -> Result<D, serde_json::Error> {
        D::deserialize(&self.data)
    }

    /// Whether the saga has stopped.
    #[must_use]
    pub fn is_terminal(&self) -> bool {
        self.status.is_terminal()
    }
}

/// What happened, in one entry of a saga's audit log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum LogEvent {
    /// The saga was created.
    SagaStarted,
    /// A step's command was sent (or its local function started).
    StepDispatched,
    /// A step succeeded.
    StepSucceeded,
    /// A step failed (the payload holds the error).
    StepFailed,
    /// An attempt got no reply in time.
    StepTimedOut,
    /// A retry was scheduled (the payload holds when).
    RetryScheduled,
    /// Compensation began (the payload holds why).
    CompensationStarted,
    /// A compensation command was sent.
    CompensationDispatched,
    /// A step was compensated.
    CompensationSucceeded,
    /// A compensation attempt failed.
    CompensationFailed,
    /// The saga completed.
    SagaCompleted,
    /// The saga finished compensating.
    SagaCompensated,
    /// The saga needs an operator.
    SagaFailed,
    /// A reply that was stale or duplicated was recorded and ignored.
    ReplyIgnored,
    /// The in-flight command was dispatched again on request.
    Resumed,
    /// An operator retried a failed saga.
    OperatorRetry,
    /// An operator cancelled a running saga.
    OperatorCancel,
    /// The saga's deadline passed.
    DeadlineExceeded,
    /// A command could not be handed to the transport; it is sent again
    /// without consuming an attempt (the payload holds the error and when).
    SendFailed,
}

impl LogEvent {
    /// Every event.
    pub const ALL: [Self; 19] = [
        Self::SagaStarted,
        Self::StepDispatched,
        Self::StepSucceeded,
        Self::StepFailed,
        Self::StepTimedOut,
        Self::RetryScheduled,
        Self::CompensationStarted,
        Self::CompensationDispatched,
        Self::CompensationSucceeded,
        Self::CompensationFailed,
        Self::SagaCompleted,
        Self::SagaCompensated,
        Self::SagaFailed,
        Self::ReplyIgnored,
        Self::Resumed,
        Self::OperatorRetry,
        Self::OperatorCancel,
        Self::DeadlineExceeded,
        Self::SendFailed,
    ];

    /// The event as stored (`step_succeeded`...).
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::SagaStarted => "saga_started",
            Self::StepDispatched => "step_dispatched",
            Self::StepSucceeded => "step_succeeded",
            Self::StepFailed => "step_failed",
            Self::StepTimedOut => "step_timed_out",
            Self::RetryScheduled => "retry_scheduled",
            Self::CompensationStarted => "compensation_started",
            Self::CompensationDispatched => "compensation_dispatched",
            Self::CompensationSucceeded => "compensation_succeeded",
            Self::CompensationFailed => "compensation_failed",
            Self::SagaCompleted => "saga_completed",
            Self::SagaCompensated => "saga_compensated",
            Self::SagaFailed => "saga_failed",
            Self::ReplyIgnored => "reply_ignored",
            Self::Resumed => "resumed",
            Self::OperatorRetry => "operator_retry",
            Self::OperatorCancel => "operator_cancel",
            Self::DeadlineExceeded => "deadline_exceeded",
            Self::SendFailed => "send_failed",
        }
    }
}

impl fmt::Display for LogEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl FromStr for LogEvent {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|e| e.as_str() == s)
            .ok_or_else(|| format!("unknown log event `{s}`"))
    }
}

/// One entry of a saga's audit log (`saga_logs`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LogEntry {
    /// The saga.
    pub saga_id: SagaId,
    /// Position in the saga's log, from 0, without gaps.
    pub seq: u32,
    /// What happened.
    pub event: LogEvent,
    /// The step it concerns, if any.
    pub step: Option<String>,
    /// The attempt it concerns, if any.
    pub attempt: Option<u32>,
    /// Details: the command sent, the reply, the error.
    pub payload: Value,
    /// When it happened.
    pub at: DateTime<Utc>,
}
