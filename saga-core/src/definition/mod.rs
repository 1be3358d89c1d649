//! Saga definitions: what a saga does, separate from running it.
//!
//! A [`Saga<D>`] is an immutable, cheaply clonable definition built with
//! [`Saga::builder`]. It holds no connection: the [`Engine`](crate::Engine)
//! runs definitions against a store and a transport.

mod builder;
mod step;

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

pub use builder::{
    DEFAULT_STEP_TIMEOUT, HasAction, HasSteps, Local, NoAction, NoSteps, Remote, SagaBuilder,
    StepBuilder,
};
pub use step::{Action, LocalContext, OnUnknown, StepDefinition, StepKind};

/// A command a saga sends to a participant, with the participant it goes to
/// and the reply it expects.
///
/// Implement it once per message type, in a crate both sides share; the
/// engine then checks at compile time that a step's reply handler takes the
/// reply the participant's handler returns, and the endpoint is written once:
/// a saga step sends the command to [`ENDPOINT`](Self::ENDPOINT), and a
/// [`Participant`](crate::Participant) handling it serves that endpoint.
///
/// ```
/// use serde::{Deserialize, Serialize};
/// use saga_core::Command;
///
/// #[derive(Serialize, Deserialize)]
/// struct ReserveSeat { flight: String }
/// #[derive(Serialize, Deserialize)]
/// struct SeatReserved { seat: String }
///
/// impl Command for ReserveSeat {
///     const NAME: &'static str = "reserve_seat";
///     const ENDPOINT: &'static str = "airline";
///     type Reply = SeatReserved;
/// }
/// ```
pub trait Command: Serialize + DeserializeOwned + Send + 'static {
    /// The message type name on the wire (`create_order`, `reserve_inventory`...).
    const NAME: &'static str;
    /// The participant endpoint (queue) that handles it (`order`, `inventory`...).
    const ENDPOINT: &'static str;
    /// What the participant answers on success.
    type Reply: Serialize + DeserializeOwned + Send + 'static;
}

/// Data a saga carries: everything its steps need, persisted with each transition.
///
/// Implemented for every `Serialize + DeserializeOwned + Send + Sync + 'static` type.
pub trait SagaData: Serialize + DeserializeOwned + Send + Sync + 'static {}
impl<T: Serialize + DeserializeOwned + Send + Sync + 'static> SagaData for T {}

/// A validated saga definition typed over its data `D`.
///
/// Build one with [`Saga::builder`]; register it with the engine; start instances
/// with [`Engine::start`](crate::Engine::start).
pub struct Saga<D> {
    definition: Arc<SagaDefinition>,
    _data: PhantomData<fn() -> D>,
}

impl<D> Clone for Saga<D> {
    fn clone(&self) -> Self {
        Self {
            definition: Arc::clone(&self.definition),
            _data: PhantomData,
        }
    }
}

impl<D> fmt::Debug for Saga<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.definition.fmt(f)
    }
}

impl<D: SagaData> Saga<D> {
    /// Starts a definition named `name` (version 1 unless set).
    pub fn builder(name: impl Into<String>) -> SagaBuilder<D> {
        SagaBuilder::new(name.into())
    }

    pub(crate) fn from_definition(definition: SagaDefinition) -> Self {
        Self {
            definition: Arc::new(definition),
            _data: PhantomData,
        }
    }

    /// The type-erased definition the state machine and engine work on.
    #[must_use]
    pub fn definition(&self) -> &Arc<SagaDefinition> {
        &self.definition
    }

    /// The saga's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.definition.name
    }

    /// The definition version instances record when they start.
    #[must_use]
    pub fn version(&self) -> u32 {
        self.definition.version
    }

    /// A Mermaid flowchart of the steps and their compensations.
    #[must_use]
    pub fn to_mermaid(&self) -> String {
        crate::mermaid::definition(&self.definition)
    }
}

/// The type-erased form of a [`Saga<D>`]: what the state machine interprets.
pub struct SagaDefinition {
    pub(crate) name: String,
    pub(crate) version: u32,
    pub(crate) steps: Vec<StepDefinition>,
    pub(crate) deadline: Option<Duration>,
    pub(crate) default_timeout: Duration,
    pub(crate) pivot: Option<usize>,
}

impl SagaDefinition {
    /// The saga's name (its type in the store).
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The definition version.
    #[must_use]
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The steps, in order.
    #[must_use]
    pub fn steps(&self) -> &[StepDefinition] {
        &self.steps
    }

    /// The overall deadline after which a saga that has not passed its pivot compensates.
    #[must_use]
    pub fn deadline(&self) -> Option<Duration> {
        self.deadline
    }

    /// How long a step waits for a reply when it sets no timeout of its own.
    #[must_use]
    pub fn default_timeout(&self) -> Duration {
        self.default_timeout
    }

    /// Index of the pivot step, if any.
    #[must_use]
    pub fn pivot(&self) -> Option<usize> {
        self.pivot
    }

    /// Whether step `index` lies after the pivot: the saga can then only go forward.
    #[must_use]
    pub fn is_committed_at(&self, index: usize) -> bool {
        self.pivot.is_some_and(|pivot| index > pivot)
    }

    /// The step named `name` and its index.
    #[must_use]
    pub fn step_named(&self, name: &str) -> Option<(usize, &StepDefinition)> {
        self.steps.iter().enumerate().find(|(_, s)| s.name == name)
    }
}

impl fmt::Debug for SagaDefinition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SagaDefinition")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("steps", &self.steps)
            .field("deadline", &self.deadline)
            .field("pivot", &self.pivot)
            .finish()
    }
}
