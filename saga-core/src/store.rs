//! The storage contract: where saga state and logs live.
//!
//! The store is the source of truth. Every transition is saved with a version
//! check together with its log entries, in one transaction; effects run only
//! after that commit. Due sagas (timeouts, retries, lost messages) are found
//! from the persisted `next_wake_at` and claimed with a lease, so several
//! engine processes can share one store.
//!
//! The trait uses `async-trait` because the engine keeps its store as a trait
//! object: `Engine` stays one concrete type that services pass around, and the
//! boxed future per call costs nothing next to a database round trip.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::sync::broadcast;

use crate::error::Result;
use crate::id::SagaId;
use crate::state::{LogEntry, SagaInstance, SagaStatus};

/// The result of [`SagaStore::create`].
#[derive(Clone, Debug, PartialEq)]
pub enum Created {
    /// The saga was inserted.
    New,
    /// A saga with the same idempotency key already exists; nothing was written.
    Existing(Box<SagaInstance>),
}

/// A definition's identity: its name (the saga type) and version.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DefinitionKey {
    /// The saga type.
    pub name: String,
    /// The definition version.
    pub version: u32,
}

impl DefinitionKey {
    /// The key of `name` version `version`.
    #[must_use]
    pub fn new(name: impl Into<String>, version: u32) -> Self {
        Self {
            name: name.into(),
            version,
        }
    }

    /// Whether `instance` runs this definition.
    #[must_use]
    pub fn runs(&self, instance: &SagaInstance) -> bool {
        instance.saga_type == self.name && instance.definition_version == self.version
    }
}

/// A filter for operator listings.
///
/// ```
/// # use saga_core::{SagaStatus, adapter::SagaQuery};
/// let failed = SagaQuery::new().status(SagaStatus::Failed).limit(20);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SagaQuery {
    /// Only sagas in this status.
    pub status: Option<SagaStatus>,
    /// Only sagas of this type.
    pub saga_type: Option<String>,
    /// Only sagas last changed before this time.
    pub updated_before: Option<DateTime<Utc>>,
    /// Only the saga started with this idempotency key (at most one).
    pub idempotency_key: Option<String>,
    /// Only unfinished sagas (`running` or `compensating`).
    pub unfinished: bool,
    /// Least recently updated first, instead of most recently.
    pub oldest_first: bool,
    /// At most this many, most recently updated first (unless `oldest_first`).
    pub limit: usize,
}

impl Default for SagaQuery {
    fn default() -> Self {
        Self {
            status: None,
            saga_type: None,
            updated_before: None,
            idempotency_key: None,
            unfinished: false,
            oldest_first: false,
            limit: 100,
        }
    }
}

impl SagaQuery {
    /// Every saga, newest first, at most 100.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Only sagas in `status`.
    #[must_use]
    pub fn status(mut self, status: SagaStatus) -> Self {
        self.status = Some(status);
        self
    }

    /// Only sagas of type `saga_type`.
    #[must_use]
    pub fn saga_type(mut self, saga_type: impl Into<String>) -> Self {
        self.saga_type = Some(saga_type.into());
        self
    }

    /// Only sagas last changed before `at`.
    #[must_use]
    pub fn updated_before(mut self, at: DateTime<Utc>) -> Self {
        self.updated_before = Some(at);
        self
    }

    /// Only the saga started with idempotency key `key`: whether a request
    /// was already served, without starting anything.
    #[must_use]
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }

    /// Only unfinished sagas (`running` or `compensating`).
    #[must_use]
    pub fn unfinished(mut self) -> Self {
        self.unfinished = true;
        self
    }

    /// The least recently updated sagas first (those that may be stuck).
    #[must_use]
    pub fn oldest_first(mut self) -> Self {
        self.oldest_first = true;
        self
    }

    /// At most `limit` sagas.
    #[must_use]
    pub fn limit(mut self, limit: usize) -> Self {
        self.limit = limit;
        self
    }

    /// Whether `instance` matches the filter (for stores that filter in memory).
    #[must_use]
    pub fn matches(&self, instance: &SagaInstance) -> bool {
        self.status.is_none_or(|s| s == instance.status)
            && self
                .saga_type
                .as_deref()
                .is_none_or(|t| t == instance.saga_type)
            && self
                .updated_before
                .is_none_or(|before| instance.updated_at < before)
            && self
                .idempotency_key
                .as_deref()
                .is_none_or(|key| instance.idempotency_key.as_deref() == Some(key))
            && (!self.unfinished || !instance.status.is_terminal())
    }
}

/// How many sagas of one type are in one status, from [`SagaStore::counts`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SagaCount {
    /// The saga type.
    pub saga_type: String,
    /// The status.
    pub status: SagaStatus,
    /// How many.
    pub count: u64,
    /// When the oldest of them was created.
    pub oldest_created_at: DateTime<Utc>,
}

impl SagaCount {
    /// A count of `count` sagas of `saga_type` in `status`, the oldest created at `oldest_created_at`.
    #[must_use]
    pub fn new(
        saga_type: impl Into<String>,
        status: SagaStatus,
        count: u64,
        oldest_created_at: DateTime<Utc>,
    ) -> Self {
        Self {
            saga_type: saga_type.into(),
            status,
            count,
            oldest_created_at,
        }
    }

    /// Counts `instances` by type and status, sorted by type then status.
    #[must_use]
    pub fn tally<'a>(instances: impl IntoIterator<Item = &'a SagaInstance>) -> Vec<Self> {
        let mut counts: std::collections::BTreeMap<(String, &'static str), Self> =
            std::collections::BTreeMap::new();
        for instance in instances {
            counts
                .entry((instance.saga_type.clone(), instance.status.as_str()))
                .and_modify(|c| {
                    c.count += 1;
                    c.oldest_created_at = c.oldest_created_at.min(instance.created_at);
                })
                .or_insert_with(|| {
                    Self::new(
                        instance.saga_type.clone(),
                        instance.status,
                        1,
                        instance.created_at,
                    )
                });
        }
        counts.into_values().collect()
    }
}

/// Persistent storage for saga instances and their logs.
#[async_trait]
pub trait SagaStore: Send + Sync + 'static {
    /// Inserts a new saga and its first log entries in one transaction.
    ///
    /// If the instance has an idempotency key that another saga already holds,
    /// nothing is written and that saga is returned as [`Created::Existing`].
    async fn create(&self, instance: &SagaInstance, logs: &[LogEntry]) -> Result<Created>;

    /// Loads a saga, `None` if it does not exist.
    async fn load(&self, id: SagaId) -> Result<Option<SagaInstance>>;

    /// Replaces the saga if its stored version is `expected_version`, appends
    /// `logs`, and releases any lease, all in one transaction.
    ///
    /// # Errors
    /// [`Error::Conflict`](crate::Error::Conflict) when the stored version differs
    /// (another writer won: reload and re-apply); `NotFound` if the saga is gone.
    async fn save(
        &self,
        instance: &SagaInstance,
        expected_version: u64,
        logs: &[LogEntry],
    ) -> Result<()>;

    /// Claims up to `limit` sagas whose `next_wake_at` is at or before `now`,
    /// whose lease is free or expired, and whose definition (type and version)
    /// is one of `definitions`, leasing them to `owner` for `lease`, earliest
    /// due first. Concurrent claimers get disjoint sets. An engine passes the
    /// definitions it has, so during a rolling deploy it never holds a saga
    /// that only a newer engine can run.
    async fn claim_due(
        &self,
        now: DateTime<Utc>,
        limit: usize,
        owner: &str,
        lease: Duration,
        definitions: &[DefinitionKey],
    ) -> Result<Vec<SagaInstance>>;

    /// The saga's log, ordered by sequence number.
    async fn logs(&self, id: SagaId) -> Result<Vec<LogEntry>>;

    /// Sagas matching `query`, most recently updated first (least recently
    /// first with [`SagaQuery::oldest_first`]), ties broken by id.
    async fn list(&self, query: &SagaQuery) -> Result<Vec<SagaInstance>>;

    /// How many sagas match `query` (its limit aside), by type and status.
    ///
    /// The default lists every matching saga and counts them; a database
    /// store should count in the database.
    async fn counts(&self, query: &SagaQuery) -> Result<Vec<SagaCount>> {
        let all = self.list(&query.clone().limit(usize::MAX)).await?;
        Ok(SagaCount::tally(&all))
    }

    /// Deletes at most `batch` finished sagas, with all their log entries,
    /// in one transaction, and returns how many sagas it deleted.
    ///
    /// Only sagas whose status is [`Completed`](SagaStatus::Completed) or
    /// [`Compensated`](SagaStatus::Compensated) and whose `updated_at` is
    /// before `finished_before` go, oldest first. A
    /// [`Failed`](SagaStatus::Failed) saga is never deleted (it waits for an
    /// operator), nor is a running or compensating one. Several processes may
    /// prune one store at once: each deletes a disjoint set, and a saga being
    /// written at that moment is skipped rather than waited for (the next
    /// prune takes it). Once deleted, a saga's idempotency key is free again.
    ///
    /// [`Engine::prune`](crate::Engine::prune) calls this in a loop;
    /// [`EngineBuilder::retention`](crate::EngineBuilder::retention) runs it
    /// in the background.
    async fn prune(&self, finished_before: DateTime<Utc>, batch: usize) -> Result<usize>;

    /// A stream of ids of sagas that reached a terminal status, including those
    /// finished by other processes, if the store can notify (Postgres
    /// LISTEN/NOTIFY). `None` means waiters fall back to polling.
    fn finished_events(&self) -> Option<broadcast::Receiver<SagaId>> {
        None
    }
}

#[async_trait]
impl<T: SagaStore + ?Sized> SagaStore for std::sync::Arc<T> {
    async fn create(&self, instance: &SagaInstance, logs: &[LogEntry]) -> Result<Created> {
        (**self).create(instance, logs).await
    }

    async fn load(&self, id: SagaId) -> Result<Option<SagaInstance>> {
        (**self).load(id).await
    }

    async fn save(
        &self,
        instance: &SagaInstance,
        expected_version: u64,
        logs: &[LogEntry],
    ) -> Result<()> {
        (**self).save(instance, expected_version, logs).await
    }

    async fn claim_due(
        &self,
        now: DateTime<Utc>,
        limit: usize,
        owner: &str,
        lease: Duration,
        definitions: &[DefinitionKey],
    ) -> Result<Vec<SagaInstance>> {
        (**self)
            .claim_due(now, limit, owner, lease, definitions)
            .await
    }

    async fn logs(&self, id: SagaId) -> Result<Vec<LogEntry>> {
        (**self).logs(id).await
    }

    async fn list(&self, query: &SagaQuery) -> Result<Vec<SagaInstance>> {
        (**self).list(query).await
    }

    async fn counts(&self, query: &SagaQuery) -> Result<Vec<SagaCount>> {
        (**self).counts(query).await
    }

    async fn prune(&self, finished_before: DateTime<Utc>, batch: usize) -> Result<usize> {
        (**self).prune(finished_before, batch).await
    }

    fn finished_events(&self) -> Option<broadcast::Receiver<SagaId>> {
        (**self).finished_events()
    }
}
