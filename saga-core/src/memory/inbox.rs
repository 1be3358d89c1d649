use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::sync::Notify;

use super::lock;
use crate::error::Result;
use crate::id::IdempotencyKey;
use crate::inbox::{Claim, Inbox, InboxClaim, compensated_refusal};
use crate::message::ReplyOutcome;

#[derive(Debug)]
enum Entry {
    /// A command with this key is being handled; the notify fires when it settles.
    Claimed(Arc<Notify>),
    /// Processed, with this outcome, recorded at this time.
    Done(ReplyOutcome, DateTime<Utc>),
}

type Records = Arc<Mutex<HashMap<IdempotencyKey, Entry>>>;

/// An [`Inbox`] in process memory. Clones share the same records.
///
/// It lives and dies with the process: after a restart it remembers nothing,
/// so it suits tests, examples and participants whose effects are in memory too.
/// Records are stamped with the system clock when written, for
/// [`Inbox::prune`].
#[derive(Clone, Debug, Default)]
pub struct InMemoryInbox {
    records: Records,
}

impl InMemoryInbox {
    /// An empty inbox.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// How many keys are recorded or claimed.
    #[must_use]
    pub fn len(&self) -> usize {
        lock(&self.records).len()
    }

    /// Whether nothing is recorded or claimed.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The outcome recorded for `key`, if any (a claim in progress is `None`).
    #[must_use]
    pub fn recorded(&self, key: &IdempotencyKey) -> Option<ReplyOutcome> {
        match lock(&self.records).get(key) {
            Some(Entry::Done(outcome, _)) => Some(outcome.clone()),
            _ => None,
        }
    }
}

#[async_trait]
impl Inbox for InMemoryInbox {
    async fn claim(
        &self,
        key: &IdempotencyKey,
        tombstone: Option<&IdempotencyKey>,
    ) -> Result<Claim> {
        loop {
            let wait = {
                let mut records = lock(&self.records);
                let held = |k: &IdempotencyKey| match records.get(k) {
                    Some(Entry::Claimed(notify)) => Some(Arc::clone(notify)),
                    _ => None,
                };
                // Wait for an invoke in flight before tombstoning it, and for a
                // duplicate in flight before answering from its record.
                match tombstone.and_then(held).or_else(|| held(key)) {
                    Some(busy) => {
                        // Registered while the lock is held, so the holder's
                        // notification (sent after it changes the entry) reaches us.
                        let mut wait = Box::pin(busy.notified_owned());
                        wait.as_mut().enable();
                        wait
                    }
                    None => {
                        if let Some(Entry::Done(outcome, _)) = records.get(key) {
                            return Ok(Claim::Recorded(outcome.clone()));
                        }
                        if let Some(tombstone) = tombstone {
                            records
                                .entry(tombstone.clone())
                                .or_insert_with(|| Entry::Done(compensated_refusal(), Utc::now()));
                        }
                        let notify = Arc::new(Notify::new());
                        records.insert(key.clone(), Entry::Claimed(Arc::clone(&notify)));
                        return Ok(Claim::Claimed(Box::new(MemoryClaim {
                            records: Arc::clone(&self.records),
                            key: key.clone(),
                            notify,
                            settled: false,
                        })));
                    }
                }
            };
            wait.await;
        }
    }

    async fn prune(&self, before: DateTime<Utc>, batch: usize) -> Result<usize> {
        let mut records = lock(&self.records);
        let old: Vec<IdempotencyKey> = records
            .iter()
            .filter(|(_, entry)| matches!(entry, Entry::Done(_, at) if *at < before))
            .map(|(key, _)| key.clone())
            .take(batch)
            .collect();
        for key in &old {
            records.remove(key);
        }
        Ok(old.len())
    }
}

/// A key held in an [`InMemoryInbox`].
struct MemoryClaim {
    records: Records,
    key: IdempotencyKey,
    notify: Arc<Notify>,
    settled: bool,
}

impl MemoryClaim {
    fn settle(&mut self, outcome: Option<&ReplyOutcome>) {
        if self.settled {
            return;
        }
        self.settled = true;
        let mut records = lock(&self.records);
        match outcome {
            Some(outcome) => {
                records.insert(self.key.clone(), Entry::Done(outcome.clone(), Utc::now()));
            }
            None => {
                records.remove(&self.key);
            }
        }
        drop(records);
        self.notify.notify_waiters();
    }
}

#[async_trait]
impl InboxClaim for MemoryClaim {
    async fn record(mut self: Box<Self>, outcome: &ReplyOutcome) -> Result<ReplyOutcome> {
        self.settle(Some(outcome));
        Ok(outcome.clone())
    }

    async fn release(mut self: Box<Self>) -> Result<()> {
        self.settle(None);
        Ok(())
    }
}

impl Drop for MemoryClaim {
    fn drop(&mut self) {
        self.settle(None);
    }
}
