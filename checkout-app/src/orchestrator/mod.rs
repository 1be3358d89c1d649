//! The orchestrator service (port 3004): starts checkout sagas, runs the
//! engine, and serves saga state and operator actions over HTTP.
//!
//! `POST /checkouts` prices the request from the inventory catalogue (client
//! prices are checked, never charged), starts the saga with the client's
//! idempotency key, and waits up to a configurable time for the outcome,
//! answering `202 Accepted` with the saga id if it is still running.
//!
//! Requests with the same idempotency key take turns: a retry that arrives
//! while its first try is still being priced or started waits for that try's
//! answer, then finds its saga (in this process; see `key_locks`).
//!
//! At most `max_in_flight` checkouts are handled at once (`MAX_IN_FLIGHT`):
//! past that bound `POST /checkouts` refuses at once with `503 overloaded` and
//! `Retry-After`, before anything is written, instead of queueing work it
//! would answer only after the client gave up.

mod catalogue;
mod key_locks;
mod routes;
mod ui;
mod views;

use std::sync::Arc;
use std::time::Duration;

use saga_core::{Engine, Saga};

pub use catalogue::{Catalogue, Product};
pub use routes::{CHECKOUTS_SHED_TOTAL, openapi, router};
pub(crate) use routes::{IdempotencyKey, idempotency_key};
pub use views::{
    CheckoutOutcome, CheckoutRefused, LogView, SagaDetail, SagaList, SagaView, StepView,
};

use crate::breaker::BreakerConfig;
use crate::request::Limits;
use crate::saga::CheckoutData;

/// Orchestrator settings.
#[derive(Clone, Debug)]
pub struct OrchestratorConfig {
    /// How long `POST /checkouts` waits for the saga before answering 202.
    pub wait: Duration,
    /// The token operator actions require (`Authorization: Bearer ...`); `None` disables them.
    pub operator_token: Option<String>,
    /// Request limits.
    pub limits: Limits,
    /// Most `POST /checkouts` handled at once (each until its answer: the
    /// saga's outcome or the 202 after `wait`); one more is refused with
    /// `503 overloaded`. 0: no bound.
    pub max_in_flight: usize,
    /// The circuit breaker of the calls to the inventory service (the catalogue).
    pub breaker: BreakerConfig,
}

/// The default bound of checkouts in flight: well above what the benchmark's
/// 32 clients (one checkout in flight each) or the fault suite's 24 need.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 1024;

impl Default for OrchestratorConfig {
    fn default() -> Self {
        Self {
            wait: Duration::from_secs(10),
            operator_token: None,
            limits: Limits::default(),
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            breaker: BreakerConfig::default(),
        }
    }
}

/// Shared state of the orchestrator's HTTP handlers.
#[derive(Clone)]
pub struct Orchestrator {
    engine: Engine,
    saga: Saga<CheckoutData>,
    catalogue: Catalogue,
    config: Arc<OrchestratorConfig>,
    keys: Arc<key_locks::KeyLocks>,
}

impl Orchestrator {
    /// An orchestrator over a running (or about to run) engine.
    #[must_use]
    pub fn new(
        engine: Engine,
        saga: Saga<CheckoutData>,
        catalogue: Catalogue,
        config: OrchestratorConfig,
    ) -> Self {
        Self {
            engine,
            saga,
            catalogue,
            config: Arc::new(config),
            keys: Arc::default(),
        }
    }

    /// The engine.
    #[must_use]
    pub fn engine(&self) -> &Engine {
        &self.engine
    }
}
