//! The engine's side of trace propagation: a span per command sent, replies
//! and wake-ups parented on the context their saga last carried.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::id::SagaId;
use crate::propagation::{Headers, Propagator};

/// The propagator, if any, and the context each unfinished saga last carried.
#[derive(Default)]
pub(super) struct Traces {
    propagator: Option<Arc<dyn Propagator>>,
    last: Mutex<HashMap<SagaId, Headers>>,
    capacity: usize,
}

impl Traces {
    pub(super) fn new(propagator: Option<Arc<dyn Propagator>>, capacity: usize) -> Self {
        Self {
            propagator,
            last: Mutex::default(),
            capacity,
        }
    }

    fn last(&self) -> MutexGuard<'_, HashMap<SagaId, Headers>> {
        self.last.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes `span`'s context into `headers` (a command of `saga` about to
    /// be sent) and remembers it for the saga's later wake-ups.
    pub(super) fn inject(&self, saga: SagaId, span: &tracing::Span, headers: &mut Headers) {
        let Some(propagator) = &self.propagator else {
            return;
        };
        let mut context = Headers::new();
        propagator.inject(span, &mut context);
        if context.is_empty() {
            return;
        }
        headers.extend(context.clone());
        self.remember(saga, context);
    }

    /// Parents `span` (a reply of `saga` being applied) on the reply's context.
    pub(super) fn extract(&self, saga: SagaId, headers: &Headers, span: &tracing::Span) {
        let Some(propagator) = &self.propagator else {
            return;
        };
        propagator.extract(headers, span);
        if !headers.is_empty() {
            self.remember(saga, headers.clone());
        }
    }

    /// Parents `span` (a wake-up of `saga`: a timeout, a retry) on the context
    /// the saga last carried in this process.
    pub(super) fn resume(&self, saga: SagaId, span: &tracing::Span) {
        let Some(propagator) = &self.propagator else {
            return;
        };
        if let Some(headers) = self.last().get(&saga) {
            propagator.extract(headers, span);
        }
    }

    /// Forgets a finished saga.
    pub(super) fn forget(&self, saga: SagaId) {
        if self.propagator.is_some() {
            self.last().remove(&saga);
        }
    }

    fn remember(&self, saga: SagaId, headers: Headers) {
        let mut last = self.last();
        if last.len() >= self.capacity.max(1) && !last.contains_key(&saga) {
            // Bounded like the engine's cache: start over rather than track recency.
            last.clear();
        }
        last.insert(saga, headers);
    }
}
