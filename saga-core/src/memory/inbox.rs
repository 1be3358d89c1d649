use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use super::lock;
use crate::error::Result;
use crate::id::IdempotencyKey;
use crate::message::ReplyOutcome;
use crate::participant::Inbox;

/// An [`Inbox`] in process memory. Clones share the same records.
#[derive(Clone, Debug, Default)]
pub struct InMemoryInbox {
    records: Arc<Mutex<HashMap<IdempotencyKey, ReplyOutcome>>>,
}

impl InMemoryInbox {
    /// An empty inbox.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// How many keys are recorded.
    #[must_use]
    pub fn len(&self) -> usize {
        lock(&self.records).len()
    }

    /// Whether nothing is recorded.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[async_trait]
impl Inbox for InMemoryInbox {
    async fn get(&self, key: &IdempotencyKey) -> Result<Option<ReplyOutcome>> {
        Ok(lock(&self.records).get(key).cloned())
    }

    async fn put_if_absent(
        &self,
        key: &IdempotencyKey,
        outcome: &ReplyOutcome,
    ) -> Result<ReplyOutcome> {
        Ok(lock(&self.records)
            .entry(key.clone())
            .or_insert_with(|| outcome.clone())
            .clone())
    }
}
