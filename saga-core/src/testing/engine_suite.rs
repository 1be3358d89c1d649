//! The engine end to end on an adapter: a three-step checkout saga, two
//! slow participants deduplicating through the adapter's inbox, and an engine
//! that is dropped mid-saga and rebuilt on a store opened anew, as a crashed
//! and restarted orchestrator would. [`engine_survives_a_crash`] is the
//! suite; the pieces it is built from are public so that an adapter's own
//! end-to-end tests (a waiter on another process, the adapter's log query)
//! use the same saga and participants.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::definition::Command;
use crate::definition::Saga;
use crate::engine::Engine;
use crate::error::StepError;
use crate::id::SagaId;
use crate::inbox::Inbox;
use crate::memory::InMemoryTransport;
use crate::participant::Participant;
use crate::state::{LogEvent, SagaStatus};
use crate::store::SagaStore;

/// The first step's command.
#[derive(Debug, Serialize, Deserialize)]
pub struct Reserve {
    /// What to reserve.
    pub sku: String,
}
/// [`Reserve`]'s reply.
#[derive(Debug, Serialize, Deserialize)]
pub struct Reserved {
    /// The reservation made.
    pub reservation: String,
}
impl Command for Reserve {
    const NAME: &'static str = "reserve";
    const ENDPOINT: &'static str = "inventory";
    type Reply = Reserved;
}

/// [`Reserve`]'s compensation.
#[derive(Debug, Serialize, Deserialize)]
pub struct Release {
    /// The reservation to release.
    pub reservation: String,
}
impl Command for Release {
    const NAME: &'static str = "release";
    const ENDPOINT: &'static str = "inventory";
    type Reply = ();
}

/// The last step's command (the pivot).
#[derive(Debug, Serialize, Deserialize)]
pub struct Ship {
    /// The order to ship.
    pub order: u32,
}
impl Command for Ship {
    const NAME: &'static str = "ship";
    const ENDPOINT: &'static str = "shipping";
    type Reply = ();
}

/// The saga's data.
#[derive(Debug, Serialize, Deserialize)]
pub struct Order {
    /// The order's number; `number % 7 == 3` is declined at `charge`.
    pub number: u32,
    /// Set by `reserve`'s reply.
    pub reservation: Option<String>,
    /// Set by `charge`.
    pub charged: bool,
}

impl Order {
    /// A new order numbered `number`.
    #[must_use]
    pub fn new(number: u32) -> Self {
        Self {
            number,
            reservation: None,
            charged: false,
        }
    }

    /// Whether `charge` declines it (the saga compensates).
    #[must_use]
    pub fn declined(number: u32) -> bool {
        number % 7 == 3
    }
}

/// `reserve` (remote, compensated by `release`), `charge` (local, declines
/// every seventh order), `ship` (remote, the pivot); 1 s step timeouts.
///
/// # Panics
/// Never: the definition is valid.
#[must_use]
pub fn checkout() -> Saga<Order> {
    checkout_with_timeouts(Duration::from_secs(1))
}

/// [`checkout`] with `timeout` for every step: a long one keeps step
/// timeouts (and the version conflicts of a timeout firing beside its
/// reply) out of a test that counts the store's calls.
///
/// # Panics
/// Never: the definition is valid.
#[must_use]
pub fn checkout_with_timeouts(timeout: Duration) -> Saga<Order> {
    Saga::<Order>::builder("checkout")
        .step("reserve", |step| {
            step.invoke(|o: &Order| Reserve {
                sku: format!("sku-{}", o.number),
            })
            .on_reply(|o, r| o.reservation = Some(r.reservation))
            .compensate(|o: &Order| Release {
                reservation: o.reservation.clone().unwrap_or_default(),
            })
            .timeout(timeout)
        })
        .step("charge", |step| {
            step.local(|o: Order, _| async move {
                if Order::declined(o.number) {
                    Err(StepError::business("card declined"))
                } else {
                    Ok(true)
                }
            })
            .on_reply(|o, charged| o.charged = charged)
            .timeout(timeout)
        })
        .step("ship", |step| {
            step.invoke(|o: &Order| Ship { order: o.number })
                .pivot()
                .timeout(timeout)
        })
        .build()
        .unwrap_or_else(|e| panic!("the suite's saga is valid: {e}"))
}

/// How often each participant handler ran, per saga and command.
#[derive(Clone, Debug, Default)]
pub struct Effects(Arc<Mutex<HashMap<(SagaId, &'static str), u32>>>);

impl Effects {
    fn count(&self, saga: SagaId, command: &'static str) {
        *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry((saga, command))
            .or_default() += 1;
    }

    /// How often `command` ran for `saga`.
    #[must_use]
    pub fn of(&self, saga: SagaId, command: &'static str) -> u32 {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&(saga, command))
            .copied()
            .unwrap_or(0)
    }
}

/// Runs the inventory and shipping participants, each handler taking
/// `delay`, deduplicating through inboxes from `inbox`, until `stop` changes.
///
/// # Panics
/// When a participant fails to build or to run.
#[must_use]
pub fn participants(
    inbox: &dyn Fn() -> Arc<dyn Inbox>,
    transport: &InMemoryTransport,
    effects: &Effects,
    delay: Duration,
    stop: &watch::Receiver<()>,
) -> Vec<JoinHandle<()>> {
    let (reserves, releases, ships) = (effects.clone(), effects.clone(), effects.clone());
    let inventory = Participant::builder()
        .inbox(inbox())
        .on(move |cmd: Reserve, ctx| {
            let effects = reserves.clone();
            async move {
                tokio::time::sleep(delay).await;
                effects.count(ctx.saga_id, "reserve");
                Ok(Reserved {
                    reservation: format!("r-{}", cmd.sku),
                })
            }
        })
        .on(move |_: Release, ctx| {
            let effects = releases.clone();
            async move {
                effects.count(ctx.saga_id, "release");
                Ok(())
            }
        })
        .build()
        .unwrap_or_else(|e| panic!("valid participant: {e}"));
    let shipping = Participant::builder()
        .inbox(inbox())
        .on(move |_: Ship, ctx| {
            let effects = ships.clone();
            async move {
                tokio::time::sleep(delay).await;
                effects.count(ctx.saga_id, "ship");
                Ok(())
            }
        })
        .build()
        .unwrap_or_else(|e| panic!("valid participant: {e}"));
    [inventory, shipping]
        .into_iter()
        .map(|participant| {
            let transport = Arc::new(transport.clone());
            let mut stop = stop.clone();
            tokio::spawn(async move {
                participant
                    .run(transport, async move { drop(stop.changed().await) })
                    .await
                    .unwrap_or_else(|e| panic!("participant runs: {e}"));
            })
        })
        .collect()
}

/// An engine for [`checkout`] with a short poll and a 2 s lease, so that
/// sagas claimed by an engine that "crashed" come free within the tests'
/// waits (the default lease is 30 s).
#[must_use]
pub fn engine(store: impl SagaStore, transport: &InMemoryTransport, saga: &Saga<Order>) -> Engine {
    Engine::builder(store, transport.clone())
        .register(saga)
        .poll_interval(Duration::from_millis(50))
        .lease(Duration::from_secs(2))
        .build()
}

/// The suite: 30 sagas started on an engine over `open()`'s store, the
/// engine dropped mid-saga (its task aborted: replies in hand are not
/// acknowledged), a second engine over a store opened anew finishes every
/// saga. Checks each saga's outcome, its complete and ordered log, and that
/// every participant effect happened exactly once (the adapter's inbox,
/// from `inbox`, deduplicates). `delay` is each handler's time.
///
/// # Panics
/// On the first broken rule.
pub async fn engine_survives_a_crash<S, F, Fut>(
    open: F,
    inbox: &dyn Fn() -> Arc<dyn Inbox>,
    delay: Duration,
) where
    S: SagaStore,
    F: Fn() -> Fut,
    Fut: Future<Output = S>,
{
    let saga = checkout();
    let transport = InMemoryTransport::new();
    let effects = Effects::default();
    let (stop, stopped) = watch::channel(());
    let serving = participants(inbox, &transport, &effects, delay, &stopped);

    // First orchestrator process: starts the sagas, then dies mid-way.
    let first = engine(open().await, &transport, &saga);
    let runner = tokio::spawn({
        let first = first.clone();
        async move { first.run(std::future::pending()).await }
    });
    let mut ids = Vec::new();
    for number in 0..30 {
        let id = first.start(&saga, Order::new(number)).await;
        ids.push(id.unwrap_or_else(|e| panic!("start: {e}")));
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    runner.abort();
    drop(runner.await);
    let mut unfinished = 0;
    for id in &ids {
        let stored = first.store().load(*id).await;
        let saga = stored
            .unwrap_or_else(|e| panic!("load: {e}"))
            .unwrap_or_else(|| panic!("saga {id} is stored"));
        unfinished += usize::from(!saga.is_terminal());
    }
    drop(first);
    assert!(
        unfinished > 0,
        "the first engine must stop mid-saga for this test to mean anything"
    );

    // Second process: a new engine on a store opened anew finishes every saga.
    let second = engine(open().await, &transport, &saga);
    let runner = tokio::spawn({
        let second = second.clone();
        let mut stopped = stopped.clone();
        async move {
            second
                .run(async move { drop(stopped.changed().await) })
                .await
        }
    });
    for (number, id) in (0u32..).zip(&ids) {
        let done = second
            .wait(*id, Duration::from_secs(30))
            .await
            .unwrap_or_else(|e| panic!("saga {number} finishes: {e}"));
        let declined = Order::declined(number);
        let expected = if declined {
            SagaStatus::Compensated
        } else {
            SagaStatus::Completed
        };
        assert_eq!(done.status, expected, "saga {number}");
        let logs = second
            .logs(*id)
            .await
            .unwrap_or_else(|e| panic!("logs: {e}"));
        assert_eq!(
            logs.iter().map(|l| l.seq).collect::<Vec<_>>(),
            (0..done.log_seq).collect::<Vec<_>>()
        );
        // Late duplicates of replies are logged as ignored after the end; skip them.
        let last = logs
            .iter()
            .rev()
            .map(|l| l.event)
            .find(|e| *e != LogEvent::ReplyIgnored);
        let ended = if declined {
            LogEvent::SagaCompensated
        } else {
            LogEvent::SagaCompleted
        };
        assert_eq!(last, Some(ended), "saga {number}");
        let ran = |command| effects.of(*id, command);
        assert_eq!(ran("reserve"), 1, "saga {number}: reserved exactly once");
        if declined {
            assert_eq!(
                (ran("release"), ran("ship")),
                (1, 0),
                "saga {number}: released once, never shipped"
            );
        } else {
            assert_eq!(
                (ran("release"), ran("ship")),
                (0, 1),
                "saga {number}: shipped exactly once"
            );
        }
    }
    drop(stop);
    runner
        .await
        .unwrap_or_else(|e| panic!("engine task: {e}"))
        .unwrap_or_else(|e| panic!("engine stops cleanly: {e}"));
    for task in serving {
        task.await
            .unwrap_or_else(|e| panic!("participant stops: {e}"));
    }
}
