//! The adapters as the simulation runs them: the real in-memory store and
//! the participants' real inboxes, wrapped so that every call is an await
//! point where the world may interleave other work, crash the caller, or
//! inject a fault; a broker the world delivers by hand; a skewed clock; and
//! the deliberately broken inboxes of the negative controls.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::sync::{broadcast, mpsc};

use super::model::{Envelope, Shared, lock};
use crate::clock::{Clock, ManualClock, Sleep};
use crate::error::{Error, ErrorKind, Result};
use crate::id::{IdempotencyKey, SagaId};
use crate::inbox::{Claim, Inbox, InboxClaim, compensated_refusal};
use crate::memory::{InMemoryInbox, InMemoryStore};
use crate::message::{CommandMessage, ReplyMessage, ReplyOutcome};
use crate::state::{LogEntry, SagaInstance};
use crate::store::{Created, DefinitionKey, SagaQuery, SagaStore};
use crate::transport::{Subscription, Transport};

/// Lets other tasks run 0-2 times, as the world's dice say.
pub(super) async fn await_point(shared: &Shared) {
    shared.step();
    if !shared.interleave.load(Ordering::SeqCst) {
        return;
    }
    for _ in 0..shared.below(3) {
        tokio::task::yield_now().await;
        shared.step();
    }
}

/// Every call of a crashed engine's adapters stops there: the task is
/// aborted at this point, like a process killed mid-call.
async fn enter(shared: &Shared, alive: &AtomicBool) {
    await_point(shared).await;
    if !alive.load(Ordering::SeqCst) {
        std::future::pending::<()>().await;
    }
}

fn take(counter: &mut u32) -> bool {
    let hit = *counter > 0;
    *counter = counter.saturating_sub(1);
    hit
}

fn unavailable(what: &str) -> Error {
    Error::backend(ErrorKind::Unavailable, format!("simulated: {what}"))
}

/// An engine's clock, `skew` ahead of (or behind) the world's.
pub(super) struct SkewedClock {
    pub base: Arc<ManualClock>,
    pub skew: chrono::Duration,
}

impl Clock for SkewedClock {
    fn now(&self) -> DateTime<Utc> {
        self.base.now() + self.skew
    }

    fn sleep_until(&self, at: DateTime<Utc>) -> Sleep {
        self.base.sleep_until(at - self.skew)
    }
}

/// One engine incarnation's view of the shared in-memory store.
#[derive(Clone)]
pub(super) struct SimStore {
    pub inner: InMemoryStore,
    pub shared: Arc<Shared>,
    pub alive: Arc<AtomicBool>,
}

#[async_trait]
impl SagaStore for SimStore {
    async fn create(&self, instance: &SagaInstance, logs: &[LogEntry]) -> Result<Created> {
        enter(&self.shared, &self.alive).await;
        let created = self.inner.create(instance, logs).await;
        enter(&self.shared, &self.alive).await;
        created
    }

    async fn load(&self, id: SagaId) -> Result<Option<SagaInstance>> {
        enter(&self.shared, &self.alive).await;
        self.inner.load(id).await
    }

    async fn save(&self, instance: &SagaInstance, expected: u64, logs: &[LogEntry]) -> Result<()> {
        enter(&self.shared, &self.alive).await;
        if take(&mut lock(&self.shared.faults).fail_saves) {
            return Err(unavailable("the database is unreachable"));
        }
        self.inner.save(instance, expected, logs).await?;
        // A crash right after the commit, before the engine hears of it.
        enter(&self.shared, &self.alive).await;
        if take(&mut lock(&self.shared.faults).ambiguous_saves) {
            return Err(unavailable("the connection dropped during the commit"));
        }
        Ok(())
    }

    async fn claim_due(
        &self,
        now: DateTime<Utc>,
        limit: usize,
        owner: &str,
        lease: Duration,
        definitions: &[DefinitionKey],
    ) -> Result<Vec<SagaInstance>> {
        enter(&self.shared, &self.alive).await;
        let claimed = self
            .inner
            .claim_due(now, limit, owner, lease, definitions)
            .await;
        enter(&self.shared, &self.alive).await;
        claimed
    }

    async fn logs(&self, id: SagaId) -> Result<Vec<LogEntry>> {
        self.inner.logs(id).await
    }

    async fn prune(&self, finished_before: DateTime<Utc>, batch: usize) -> Result<usize> {
        enter(&self.shared, &self.alive).await;
        self.inner.prune(finished_before, batch).await
    }

    async fn list(&self, query: &SagaQuery) -> Result<Vec<SagaInstance>> {
        enter(&self.shared, &self.alive).await;
        self.inner.list(query).await
    }

    fn finished_events(&self) -> Option<broadcast::Receiver<SagaId>> {
        None
    }
}

/// One engine incarnation's broker connection: commands go to the world's
/// queues, where the world delivers them.
#[derive(Clone)]
pub(super) struct SimTransport {
    pub shared: Arc<Shared>,
    pub alive: Arc<AtomicBool>,
}

#[async_trait]
impl Transport for SimTransport {
    async fn send_command(&self, command: &CommandMessage) -> Result<()> {
        enter(&self.shared, &self.alive).await;
        {
            let mut faults = lock(&self.shared.faults);
            if take(&mut faults.fail_sends) {
                return Err(unavailable("the broker refused the publish"));
            }
            if take(&mut faults.lose_sends) {
                // Lost in the broker: only a timeout or a re-send recovers it.
                return Ok(());
            }
        }
        lock(&self.shared.queues)
            .commands
            .entry(command.endpoint.clone())
            .or_default()
            .push(Envelope {
                message: command.clone(),
                deliveries: 0,
            });
        enter(&self.shared, &self.alive).await;
        Ok(())
    }

    async fn send_reply(&self, reply: &ReplyMessage) -> Result<()> {
        lock(&self.shared.queues).replies.push(Envelope {
            message: reply.clone(),
            deliveries: 0,
        });
        Ok(())
    }

    async fn consume_commands(&self, _endpoint: &str) -> Result<Subscription<CommandMessage>> {
        Ok(Subscription::new(mpsc::channel(1).1))
    }

    async fn consume_replies(&self, _queue: &str) -> Result<Subscription<ReplyMessage>> {
        Ok(Subscription::new(mpsc::channel(1).1))
    }
}

/// A participant's inbox with an await point around every call.
pub(super) struct SimInbox {
    inner: Arc<dyn Inbox>,
    shared: Arc<Shared>,
}

impl SimInbox {
    pub(super) fn new(inner: Arc<dyn Inbox>, shared: Arc<Shared>) -> Self {
        Self { inner, shared }
    }
}

#[async_trait]
impl Inbox for SimInbox {
    async fn claim(
        &self,
        key: &IdempotencyKey,
        tombstone: Option<&IdempotencyKey>,
    ) -> Result<Claim> {
        await_point(&self.shared).await;
        let claim = self.inner.claim(key, tombstone).await?;
        await_point(&self.shared).await;
        Ok(match claim {
            Claim::Claimed(claim) => Claim::Claimed(Box::new(SimClaim {
                inner: claim,
                shared: Arc::clone(&self.shared),
            })),
            recorded => recorded,
        })
    }

    async fn prune(&self, before: DateTime<Utc>, batch: usize) -> Result<usize> {
        await_point(&self.shared).await;
        self.inner.prune(before, batch).await
    }
}

struct SimClaim {
    inner: Box<dyn InboxClaim>,
    shared: Arc<Shared>,
}

#[async_trait]
impl InboxClaim for SimClaim {
    async fn record(self: Box<Self>, outcome: &ReplyOutcome) -> Result<ReplyOutcome> {
        await_point(&self.shared).await;
        let recorded = self.inner.record(outcome).await;
        self.shared.step();
        recorded
    }

    async fn release(self: Box<Self>) -> Result<()> {
        await_point(&self.shared).await;
        let released = self.inner.release().await;
        self.shared.step();
        released
    }
}

/// Negative control: the inbox of saga-core 0.1, which checks, then lets the
/// handler run with nothing held, then records. A duplicate of a slow command
/// runs twice, and a compensation racing its invoke finds nothing to undo.
#[derive(Clone, Default)]
pub(super) struct CheckThenActInbox {
    records: Arc<std::sync::Mutex<HashMap<IdempotencyKey, ReplyOutcome>>>,
}

#[async_trait]
impl Inbox for CheckThenActInbox {
    async fn claim(
        &self,
        key: &IdempotencyKey,
        tombstone: Option<&IdempotencyKey>,
    ) -> Result<Claim> {
        let mut records = lock(&self.records);
        if let Some(outcome) = records.get(key) {
            return Ok(Claim::Recorded(outcome.clone()));
        }
        if let Some(tombstone) = tombstone {
            records
                .entry(tombstone.clone())
                .or_insert_with(compensated_refusal);
        }
        Ok(Claim::Claimed(Box::new(UnheldClaim {
            records: Arc::clone(&self.records),
            key: key.clone(),
        })))
    }

    async fn prune(&self, _before: DateTime<Utc>, _batch: usize) -> Result<usize> {
        Ok(0)
    }
}

struct UnheldClaim {
    records: Arc<std::sync::Mutex<HashMap<IdempotencyKey, ReplyOutcome>>>,
    key: IdempotencyKey,
}

#[async_trait]
impl InboxClaim for UnheldClaim {
    async fn record(self: Box<Self>, outcome: &ReplyOutcome) -> Result<ReplyOutcome> {
        Ok(lock(&self.records)
            .entry(self.key.clone())
            .or_insert_with(|| outcome.clone())
            .clone())
    }

    async fn release(self: Box<Self>) -> Result<()> {
        Ok(())
    }
}

/// Negative control: a correct inbox that never tombstones, so a late copy of
/// a compensated step's command still runs.
#[derive(Clone, Default)]
pub(super) struct NoTombstoneInbox(InMemoryInbox);

#[async_trait]
impl Inbox for NoTombstoneInbox {
    async fn claim(
        &self,
        key: &IdempotencyKey,
        _tombstone: Option<&IdempotencyKey>,
    ) -> Result<Claim> {
        self.0.claim(key, None).await
    }

    async fn prune(&self, before: DateTime<Utc>, batch: usize) -> Result<usize> {
        self.0.prune(before, batch).await
    }
}
