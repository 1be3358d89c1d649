//! The orchestrator service (port 3004): starts checkout sagas, runs the
//! engine, and serves saga state and operator actions over HTTP.
//!
//! `POST /checkouts` prices the request from the inventory catalogue (client
//! prices are checked, never charged), starts the saga with the client's
//! idempotency key, and waits up to a configurable time for the outcome,
//! answering `202 Accepted` with the saga id if it is still running.

mod catalogue;
mod routes;
mod ui;
mod views;

use std::sync::Arc;
use std::time::Duration;

use saga_core::{Engine, Saga};

pub use catalogue::{Catalogue, Product};
pub(crate) use routes::{IdempotencyKey, idempotency_key};
pub use routes::{openapi, router};
pub use views::{
    CheckoutOutcome, CheckoutRefused, LogView, SagaDetail, SagaList, SagaView, StepView,
};

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
}

impl Default for OrchestratorConfig {
    fn default() -> Self {
        Self {
            wait: Duration::from_secs(10),
            operator_token: None,
            limits: Limits::default(),
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
        }
    }

    /// The engine.
    #[must_use]
    pub fn engine(&self) -> &Engine {
        &self.engine
    }
}
