//! A store wrapper that counts the reads it serves and the conflicts it reports.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::sync::broadcast;

use crate::error::{Error, Result};
use crate::id::SagaId;
use crate::state::{LogEntry, SagaInstance};
use crate::store::{Created, DefinitionKey, SagaCount, SagaQuery, SagaStore};

/// Wraps a store and counts its single-saga reads ([`SagaStore::load`]), so a
/// test can assert that a path reads nothing back, and the version conflicts
/// its saves report (each costs the engine a reload, which a test can then
/// tell apart from the reads it is about). Clones share the counts.
///
/// ```
/// use saga_core::SagaStore;
/// use saga_core::memory::InMemoryStore;
/// use saga_core::testing::CountingStore;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), saga_core::Error> {
/// let store = CountingStore::new(InMemoryStore::new());
/// store.load(saga_core::SagaId::new()).await?;
/// assert_eq!(store.loads(), 1);
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct CountingStore<S> {
    inner: S,
    loads: Arc<AtomicUsize>,
    conflicts: Arc<AtomicUsize>,
}

impl<S> CountingStore<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            loads: Arc::default(),
            conflicts: Arc::default(),
        }
    }

    /// How many times [`SagaStore::load`] was called.
    #[must_use]
    pub fn loads(&self) -> usize {
        self.loads.load(Ordering::SeqCst)
    }

    /// How many times [`SagaStore::save`] answered [`Error::Conflict`].
    #[must_use]
    pub fn conflicts(&self) -> usize {
        self.conflicts.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl<S: SagaStore> SagaStore for CountingStore<S> {
    async fn create(&self, instance: &SagaInstance, logs: &[LogEntry]) -> Result<Created> {
        self.inner.create(instance, logs).await
    }

    async fn load(&self, id: SagaId) -> Result<Option<SagaInstance>> {
        self.loads.fetch_add(1, Ordering::SeqCst);
        self.inner.load(id).await
    }

    async fn save(
        &self,
        instance: &SagaInstance,
        expected_version: u64,
        logs: &[LogEntry],
    ) -> Result<()> {
        let saved = self.inner.save(instance, expected_version, logs).await;
        if let Err(Error::Conflict { .. }) = saved {
            self.conflicts.fetch_add(1, Ordering::SeqCst);
        }
        saved
    }

    async fn claim_due(
        &self,
        now: DateTime<Utc>,
        limit: usize,
        owner: &str,
        lease: Duration,
        definitions: &[DefinitionKey],
    ) -> Result<Vec<SagaInstance>> {
        self.inner
            .claim_due(now, limit, owner, lease, definitions)
            .await
    }

    async fn logs(&self, id: SagaId) -> Result<Vec<LogEntry>> {
        self.inner.logs(id).await
    }

    async fn list(&self, query: &SagaQuery) -> Result<Vec<SagaInstance>> {
        self.inner.list(query).await
    }

    async fn counts(&self, query: &SagaQuery) -> Result<Vec<SagaCount>> {
        self.inner.counts(query).await
    }

    async fn prune(&self, finished_before: DateTime<Utc>, batch: usize) -> Result<usize> {
        self.inner.prune(finished_before, batch).await
    }

    fn finished_events(&self) -> Option<broadcast::Receiver<SagaId>> {
        self.inner.finished_events()
    }
}
