//! The messages that travel between orchestrators and participants.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::StepError;
use crate::id::{Direction, IdempotencyKey, SagaId};

/// A command from a saga to a participant endpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CommandMessage {
    /// Unique per attempt: `{saga}:{step}:{direction}:{attempt}`.
    pub message_id: String,
    /// Stable across attempts and redeliveries: what participants dedupe on.
    pub idempotency_key: IdempotencyKey,
    /// The saga.
    pub saga_id: SagaId,
    /// The saga's type name.
    pub saga_type: String,
    /// The step's index in the definition.
    pub step: u32,
    /// The step's name.
    pub step_name: String,
    /// Action or compensation.
    pub direction: Direction,
    /// Attempt number, from 1.
    pub attempt: u32,
    /// The participant endpoint (queue) it goes to.
    pub endpoint: String,
    /// The command type ([`Command::NAME`](crate::Command::NAME)).
    pub command: String,
    /// The command body.
    pub payload: Value,
    /// Where the reply goes (the orchestrators' reply queue).
    pub reply_to: Option<String>,
    /// Extra headers: W3C trace context and the like.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
}

impl CommandMessage {
    /// The idempotency key of this step's forward action, which a compensation
    /// marks as done so that an invoke arriving after it is refused.
    #[must_use]
    pub fn invoke_key(&self) -> IdempotencyKey {
        IdempotencyKey::new(self.saga_id, &self.step_name, Direction::Invoke)
    }

    /// A reply to this command.
    #[must_use]
    pub fn reply(&self, outcome: ReplyOutcome) -> ReplyMessage {
        ReplyMessage {
            message_id: format!("{}:reply", self.message_id),
            saga_id: self.saga_id,
            step: self.step,
            step_name: self.step_name.clone(),
            direction: self.direction,
            attempt: self.attempt,
            reply_to: self.reply_to.clone(),
            outcome,
            headers: self.headers.clone(),
        }
    }
}

/// A participant's answer to a [`CommandMessage`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReplyMessage {
    /// Unique per reply.
    pub message_id: String,
    /// The saga.
    pub saga_id: SagaId,
    /// The step's index.
    pub step: u32,
    /// The step's name (checked against the index).
    pub step_name: String,
    /// Action or compensation.
    pub direction: Direction,
    /// The attempt answered.
    pub attempt: u32,
    /// The queue the reply is sent to.
    pub reply_to: Option<String>,
    /// Success with the reply body, or a classified failure.
    pub outcome: ReplyOutcome,
    /// Headers copied from the command (trace context).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
}

/// The result a participant reports.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplyOutcome {
    /// The command succeeded with this reply body.
    Success(Value),
    /// The command failed.
    Failure(StepError),
}

impl ReplyOutcome {
    /// Converts to a `Result`.
    pub fn into_result(self) -> Result<Value, StepError> {
        match self {
            Self::Success(v) => Ok(v),
            Self::Failure(e) => Err(e),
        }
    }
}

impl From<Result<Value, StepError>> for ReplyOutcome {
    fn from(result: Result<Value, StepError>) -> Self {
        match result {
            Ok(v) => Self::Success(v),
            Err(e) => Self::Failure(e),
        }
    }
}
