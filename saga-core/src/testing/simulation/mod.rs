//! A deterministic simulation of sagas under faults, on the real engine and
//! the real participant runtime.
//!
//! [`simulate`] runs many sagas through two [`Engine`](crate::Engine)s that
//! share one store (each with its own clock, one 300 ms ahead; only one of
//! them has the newer definition version), and through real
//! [`Participant`](crate::Participant)s whose handlers take virtual time, so
//! that a handler slower than its step's timeout, a duplicate arriving while
//! it runs, and a compensation racing its invoke all happen. The adapters are
//! wrapped so that every store, broker and inbox call is an await point where
//! the world lets other tasks run, and where it can crash the caller.
//!
//! In a *chaos* phase the world, driven by a seeded generator, delivers,
//! duplicates, drops and reorders commands and replies, crashes and rebuilds
//! engines (at whatever await point their tasks are) and participants, fails
//! or loses sends, fails saves or makes a save commit and then report an
//! error, moves the clock, and acts as an operator (cancel, resume, retry).
//! Plans make steps succeed, fail transiently, refuse, report unknown
//! outcomes, take longer than their timeout, and make compensations fail past
//! their budget. A *calm* phase then delivers everything; as an operator it
//! fixes the cause of every saga that stopped `Failed` and retries it; until
//! every saga has ended.
//!
//! The definition covers remote compensatable steps, a local step, a step
//! whose unknown outcome compensates, a read-only step, the pivot, a
//! retriable step after it, and a deadline (see the source).
//!
//! The checker compares the participants' journal of effects with what the
//! store recorded, not with the machine's own labels:
//! - no effect is applied twice, and none after its compensation ran (a late
//!   copy the participant must have refused);
//! - a completed saga applied every step once and undid none; a compensated
//!   one undid every effect it applied and none past its pivot took place;
//! - every saga ends completed or compensated (a `Failed` one is retried by
//!   the operator), and it only ever stopped `Failed` for a cause an operator
//!   must see (a compensation that failed or was refused, a step past the
//!   pivot that was refused);
//! - no attempt was dispatched twice (but for a re-send after a failed send),
//!   and no reply was dead-lettered.
//!
//! [`Broken`] runs the same world with a deliberately broken inbox: the
//! checker must catch it (the negative control).
//!
//! The same seed replays the same run on a current-thread runtime with the
//! in-memory inbox ([`run`] builds one). With a database behind the inbox
//! ([`simulate_with`] and `saga-postgres`'s integration test) the schedule
//! also depends on the database's timing.

mod check;
mod faults;
mod model;
mod world;

use std::sync::Arc;

use crate::inbox::Inbox;
use crate::memory::InMemoryInbox;

/// Fault rates and sizes of a simulation run.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct SimConfig {
    /// Sagas started (a quarter of them on definition version 2).
    pub sagas: usize,
    /// Random actions in the chaos phase.
    pub chaos_steps: usize,
    /// Probability that a delivered message stays queued too (a duplicate).
    pub duplicate: f64,
    /// Probability that an action drops a queued message (a broker loss).
    pub drop: f64,
    /// Probability that an action crashes and rebuilds an engine.
    pub engine_crash: f64,
    /// Probability that an action crashes a participant mid-handler.
    pub participant_crash: f64,
    /// Probability that an action arms a fault: a send that fails or is
    /// lost, a save that fails or commits and then reports an error.
    pub fault: f64,
    /// Probability that an action is an operator's cancel, resume or retry.
    pub operator: f64,
    /// Probability that a step's plan is a business refusal.
    pub business_failure: f64,
    /// Probability that a step (or compensation) fails transiently first.
    pub transient_failure: f64,
    /// Probability that a step's handler is slower than its timeout.
    pub slow_handler: f64,
    /// A deliberately broken participant inbox (negative control).
    pub broken: Option<Broken>,
    /// With inboxes that do real I/O: how long the world waits with nothing
    /// moving before it takes the next step (`None` for in-memory inboxes,
    /// whose calls never wait on anything but the world).
    pub io_quiet: Option<std::time::Duration>,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            sagas: 12,
            chaos_steps: 300,
            duplicate: 0.15,
            drop: 0.02,
            engine_crash: 0.02,
            participant_crash: 0.02,
            fault: 0.04,
            operator: 0.02,
            business_failure: 0.12,
            transient_failure: 0.2,
            slow_handler: 0.15,
            broken: None,
            io_quiet: None,
        }
    }
}

/// A deliberately broken inbox for the negative control.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Broken {
    /// The inbox of saga-core 0.1: it checks, then lets the handler run with
    /// nothing held, then records.
    CheckThenAct,
    /// A claiming inbox that never tombstones a compensated step's invoke key.
    NoTombstone,
}

/// What a simulation run saw, and every broken guarantee.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct SimReport {
    /// Sagas that completed.
    pub completed: usize,
    /// Sagas that compensated.
    pub compensated: usize,
    /// Operator retries of sagas that stopped `Failed`, in the calm phase.
    pub operator_retries: usize,
    /// Operator actions in the chaos phase.
    pub operator_actions: usize,
    /// Engine crashes injected.
    pub engine_crashes: usize,
    /// Participant crashes injected.
    pub participant_crashes: usize,
    /// Send and save faults armed.
    pub store_or_send_faults: usize,
    /// Messages delivered more than once.
    pub duplicates: usize,
    /// Messages dropped.
    pub dropped: usize,
    /// Broken guarantees, one line each. Empty when all held.
    pub violations: Vec<String>,
    /// Why sagas compensated, with how many did for each reason.
    pub reasons: std::collections::BTreeMap<String, usize>,
    /// The log and journal of every saga with a violation, to read what happened.
    pub details: Vec<String>,
}

/// Runs a simulation with in-memory participant inboxes (or the broken one
/// `config.broken` names); `report.violations` is empty when every guarantee
/// held. Deterministic for a given `seed` and `config` on a current-thread
/// runtime.
pub async fn simulate(seed: u64, config: SimConfig) -> SimReport {
    let broken = config.broken;
    let inboxes = move |_endpoint: &str| -> Arc<dyn Inbox> {
        match broken {
            None => Arc::new(InMemoryInbox::new()),
            Some(Broken::CheckThenAct) => Arc::new(faults::CheckThenActInbox::default()),
            Some(Broken::NoTombstone) => Arc::new(faults::NoTombstoneInbox::default()),
        }
    };
    simulate_with(seed, config, &inboxes).await
}

/// [`simulate`] with the participants' inboxes from `inboxes` (called once
/// per endpoint: `p0` to `p4`), e.g. a database-backed one.
pub async fn simulate_with(
    seed: u64,
    config: SimConfig,
    inboxes: &dyn Fn(&str) -> Arc<dyn Inbox>,
) -> SimReport {
    let chaos_steps = config.chaos_steps;
    let mut world = world::World::new(seed, config, inboxes);
    for _ in 0..chaos_steps {
        world.chaos();
        world.settle().await;
    }
    world.calm().await;
    let (v1, v2) = world.definitions();
    check::check(&mut world, [v1.definition(), v2.definition()]).await;
    world.shutdown();
    world.report
}

/// [`simulate`] on a fresh current-thread runtime.
///
/// # Panics
/// When the runtime cannot be built.
#[must_use]
pub fn run(seed: u64, config: SimConfig) -> SimReport {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap_or_else(|e| panic!("a current-thread runtime: {e}"))
        .block_on(simulate(seed, config))
}
