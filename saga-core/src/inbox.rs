//! The inbox contract: how a participant records which commands it handled.
//!
//! See [`participant`](crate::participant) for the rules; this module holds
//! what an inbox implementation provides.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::error::{Result, StepError};
use crate::id::IdempotencyKey;
use crate::message::ReplyOutcome;

/// Records which commands a participant processed, and their replies.
///
/// The runtime [claims](Inbox::claim) a command's key before its handler
/// runs and [records](InboxClaim::record) the outcome after, so a key is
/// handled by one copy of a command at a time. See [`participant`](crate::participant) for the contract.
///
/// `async-trait` because the participant holds its inbox as a trait object.
///
/// # Retention
/// An inbox grows with every command handled. [`Inbox::prune`] deletes the
/// records (outcomes and tombstones) written before a cutoff, and
/// [`ParticipantBuilder::inbox_retention`](crate::participant::ParticipantBuilder::inbox_retention)
/// runs it in the participant's loop. A record must outlive every copy of its
/// command: a duplicate that arrives after its record is gone runs the handler
/// again, and an invoke that arrives after its compensation's tombstone is
/// gone creates an effect nobody undoes. So the retention must be longer than
/// any redelivery: the broker's longest redelivery and retry schedule, the
/// saga's longest retry schedule and step deadline, and the time within which
/// an operator may still [retry](crate::Engine::retry) a failed saga (its
/// commands go out again with the same keys). Days, not minutes; and at least
/// as long as the orchestrator's own [retention](crate::EngineBuilder::retention).
#[async_trait]
pub trait Inbox: Send + Sync + 'static {
    /// Claims `key`, or returns the outcome recorded for it.
    ///
    /// While another claim on `key` is held (its command is being handled),
    /// waits for it to be recorded or released. With `tombstone` (for a
    /// compensation: its step's invoke key), also records a business refusal
    /// under `tombstone` unless it holds an outcome, waiting first while it is
    /// claimed. A claim dropped without [`record`](InboxClaim::record) is
    /// released, as on a crash.
    async fn claim(
        &self,
        key: &IdempotencyKey,
        tombstone: Option<&IdempotencyKey>,
    ) -> Result<Claim>;

    /// Deletes at most `batch` records (recorded outcomes and tombstones)
    /// written before `before`, and returns how many it deleted. A claim in
    /// progress is never deleted. See [retention](Inbox#retention) for how
    /// long records must be kept.
    async fn prune(&self, before: DateTime<Utc>, batch: usize) -> Result<usize>;
}

#[async_trait]
impl<T: Inbox + ?Sized> Inbox for Arc<T> {
    async fn claim(
        &self,
        key: &IdempotencyKey,
        tombstone: Option<&IdempotencyKey>,
    ) -> Result<Claim> {
        (**self).claim(key, tombstone).await
    }

    async fn prune(&self, before: DateTime<Utc>, batch: usize) -> Result<usize> {
        (**self).prune(before, batch).await
    }
}

/// What [`Inbox::claim`] found.
pub enum Claim {
    /// The key was processed: answer with this outcome, do not run the handler.
    Recorded(ReplyOutcome),
    /// The key is now held by this handling: run the handler, then settle the claim.
    Claimed(Box<dyn InboxClaim>),
}

impl std::fmt::Debug for Claim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Recorded(outcome) => f.debug_tuple("Recorded").field(outcome).finish(),
            Self::Claimed(_) => f.write_str("Claimed"),
        }
    }
}

/// A held claim on a key; dropping it releases the claim.
#[async_trait]
pub trait InboxClaim: Send {
    /// Records `outcome` (a success or a business failure) under the key,
    /// releases the claim, and returns the recorded outcome.
    async fn record(self: Box<Self>, outcome: &ReplyOutcome) -> Result<ReplyOutcome>;

    /// Releases the claim without recording anything (nothing happened).
    async fn release(self: Box<Self>) -> Result<()>;
}

/// The refusal a compensation records under its step's invoke key.
#[must_use]
pub fn compensated_refusal() -> ReplyOutcome {
    ReplyOutcome::Failure(StepError::business(
        "refused: the step was compensated before this command ran",
    ))
}
