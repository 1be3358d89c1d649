use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::sync::broadcast;

use super::lock;
use crate::clock;
use crate::error::{Error, Result};
use crate::id::SagaId;
use crate::state::{LogEntry, SagaInstance, SagaStatus};
use crate::store::{Created, DefinitionKey, SagaQuery, SagaStore};

struct Row {
    instance: SagaInstance,
    lease_until: Option<DateTime<Utc>>,
}

#[derive(Default)]
struct State {
    sagas: HashMap<SagaId, Row>,
    logs: HashMap<SagaId, Vec<LogEntry>>,
    keys: HashMap<String, SagaId>,
    /// Completed and compensated sagas by `updated_at`: what `prune` may take.
    finished: BTreeSet<(DateTime<Utc>, SagaId)>,
}

/// Whether [`SagaStore::prune`] may delete a saga in this state (once old enough).
fn prunable(instance: &SagaInstance) -> Option<(DateTime<Utc>, SagaId)> {
    matches!(
        instance.status,
        SagaStatus::Completed | SagaStatus::Compensated
    )
    .then_some((instance.updated_at, instance.id))
}

/// A [`SagaStore`] in process memory. Clones share the same data.
#[derive(Clone)]
pub struct InMemoryStore {
    state: Arc<Mutex<State>>,
    finished: broadcast::Sender<SagaId>,
}

impl Default for InMemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for InMemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InMemoryStore")
            .field("sagas", &lock(&self.state).sagas.len())
            .finish()
    }
}

impl InMemoryStore {
    /// An empty store.
    #[must_use]
    pub fn new() -> Self {
        Self {
            state: Arc::default(),
            finished: broadcast::channel(1024).0,
        }
    }

    /// Every saga in the store, by id (for tests and simulations).
    #[must_use]
    pub fn all(&self) -> Vec<SagaInstance> {
        let mut all: Vec<SagaInstance> = lock(&self.state)
            .sagas
            .values()
            .map(|row| row.instance.clone())
            .collect();
        all.sort_by_key(|s| s.id);
        all
    }
}

#[async_trait]
impl SagaStore for InMemoryStore {
    async fn create(&self, instance: &SagaInstance, logs: &[LogEntry]) -> Result<Created> {
        let mut state = lock(&self.state);
        if let Some(existing) = instance
            .idempotency_key
            .as_ref()
            .and_then(|key| state.keys.get(key))
        {
            let existing = state.sagas[existing].instance.clone();
            return Ok(Created::Existing(Box::new(existing)));
        }
        if state.sagas.contains_key(&instance.id) {
            return Err(Error::backend(
                crate::ErrorKind::Duplicate,
                format!("saga {} already exists", instance.id),
            ));
        }
        if let Some(key) = &instance.idempotency_key {
            state.keys.insert(key.clone(), instance.id);
        }
        state.sagas.insert(
            instance.id,
            Row {
                instance: instance.clone(),
                lease_until: None,
            },
        );
        state.logs.insert(instance.id, logs.to_vec());
        if let Some(entry) = prunable(instance) {
            state.finished.insert(entry);
        }
        if instance.is_terminal() {
            let _ = self.finished.send(instance.id);
        }
        Ok(Created::New)
    }

    async fn load(&self, id: SagaId) -> Result<Option<SagaInstance>> {
        Ok(lock(&self.state).sagas.get(&id).map(|r| r.instance.clone()))
    }

    async fn save(
        &self,
        instance: &SagaInstance,
        expected_version: u64,
        logs: &[LogEntry],
    ) -> Result<()> {
        let mut guard = lock(&self.state);
        let state = &mut *guard;
        let row = state
            .sagas
            .get_mut(&instance.id)
            .ok_or(Error::NotFound(instance.id))?;
        if row.instance.version != expected_version {
            return Err(Error::Conflict {
                id: instance.id,
                expected: expected_version,
            });
        }
        let before = prunable(&row.instance);
        row.instance = instance.clone();
        row.lease_until = None;
        if let Some(entry) = before {
            state.finished.remove(&entry);
        }
        if let Some(entry) = prunable(instance) {
            state.finished.insert(entry);
        }
        state
            .logs
            .entry(instance.id)
            .or_default()
            .extend_from_slice(logs);
        if instance.is_terminal() {
            let _ = self.finished.send(instance.id);
        }
        Ok(())
    }

    async fn claim_due(
        &self,
        now: DateTime<Utc>,
        limit: usize,
        _owner: &str,
        lease: Duration,
        definitions: &[DefinitionKey],
    ) -> Result<Vec<SagaInstance>> {
        let mut state = lock(&self.state);
        let mut due: Vec<&mut Row> = state
            .sagas
            .values_mut()
            .filter(|row| {
                row.instance.next_wake_at.is_some_and(|at| at <= now)
                    && row.lease_until.is_none_or(|until| until <= now)
                    && definitions.iter().any(|d| d.runs(&row.instance))
            })
            .collect();
        due.sort_by_key(|row| (row.instance.next_wake_at, row.instance.id));
        Ok(due
            .into_iter()
            .take(limit)
            .map(|row| {
                row.lease_until = Some(clock::add(now, lease));
                row.instance.clone()
            })
            .collect())
    }

    async fn logs(&self, id: SagaId) -> Result<Vec<LogEntry>> {
        Ok(lock(&self.state).logs.get(&id).cloned().unwrap_or_default())
    }

    async fn list(&self, query: &SagaQuery) -> Result<Vec<SagaInstance>> {
        let state = lock(&self.state);
        let mut found: Vec<SagaInstance> = state
            .sagas
            .values()
            .map(|r| &r.instance)
            .filter(|i| query.matches(i))
            .cloned()
            .collect();
        found.sort_by(|a, b| b.updated_at.cmp(&a.updated_at).then(b.id.cmp(&a.id)));
        if query.oldest_first {
            found.reverse();
        }
        found.truncate(query.limit);
        Ok(found)
    }

    async fn prune(&self, finished_before: DateTime<Utc>, batch: usize) -> Result<usize> {
        let mut state = lock(&self.state);
        let old: Vec<(DateTime<Utc>, SagaId)> = state
            .finished
            .iter()
            .take_while(|(updated_at, _)| *updated_at < finished_before)
            .take(batch)
            .copied()
            .collect();
        // Dropped after the lock is released: freeing them is the slow part.
        let mut removed = Vec::with_capacity(old.len());
        for entry in &old {
            let id = entry.1;
            state.finished.remove(entry);
            let logs = state.logs.remove(&id);
            let row = state.sagas.remove(&id);
            if let Some(key) = row
                .as_ref()
                .and_then(|r| r.instance.idempotency_key.as_ref())
                && state.keys.get(key) == Some(&id)
            {
                state.keys.remove(key);
            }
            removed.push((row, logs));
        }
        drop(state);
        drop(removed);
        Ok(old.len())
    }

    fn finished_events(&self) -> Option<broadcast::Receiver<SagaId>> {
        Some(self.finished.subscribe())
    }
}
