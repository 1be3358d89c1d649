//! A deterministic simulation of sagas under faults.
//!
//! [`simulate`] runs many sagas of a four-step definition (two compensatable
//! steps, a pivot, a retriable step) through the real [`Engine`] on the
//! in-memory store, with a virtual clock and a transport the simulation
//! controls. During a *chaos* phase it randomly delivers, duplicates, drops,
//! delays and reorders commands and replies, fails sends (a crash between
//! commit and publish), advances the clock, and crashes the engine (drops it
//! and builds a new one from the store). A *calm* phase then delivers
//! everything until every saga ends. Participants are idempotent as the
//! [`participant`](crate::participant) contract describes and record every
//! effect they apply, so the report can check the guarantees:
//!
//! - every saga ends `Completed` or `Compensated`;
//! - a completed saga applied each step exactly once and undid nothing;
//! - a compensated saga undid exactly the steps whose effect was applied,
//!   each once, in reverse order, and never passed its pivot;
//! - no step's effect was applied after compensation began.
//!
//! The same seed replays the same run.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::Rng;
use crate::clock::{Clock, ManualClock};
use crate::definition::{Command, Saga};
use crate::engine::Engine;
use crate::error::{Error, ErrorKind, Result, StepError};
use crate::id::{Direction, IdempotencyKey, SagaId};
use crate::memory::InMemoryStore;
use crate::message::{CommandMessage, ReplyMessage, ReplyOutcome};
use crate::retry::RetryPolicy;
use crate::state::SagaStatus;
use crate::transport::{Subscription, Transport};

/// Fault rates and sizes of a simulation run.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Sagas started.
    pub sagas: usize,
    /// Random actions in the chaos phase.
    pub chaos_steps: usize,
    /// Probability that a delivered message stays queued too (a duplicate).
    pub duplicate: f64,
    /// Probability that a chaos action drops a queued message.
    pub drop: f64,
    /// Probability that a chaos action crashes and rebuilds the engine.
    pub crash: f64,
    /// Probability that sending a command fails (lost between commit and publish).
    pub send_failure: f64,
    /// Probability that a step's plan is a business failure.
    pub business_failure: f64,
    /// Probability that a step (or compensation) fails transiently first.
    pub transient_failure: f64,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            sagas: 20,
            chaos_steps: 400,
            duplicate: 0.15,
            drop: 0.05,
            crash: 0.02,
            send_failure: 0.05,
            business_failure: 0.15,
            transient_failure: 0.2,
        }
    }
}

/// What a simulation run saw, and every broken guarantee.
#[derive(Clone, Debug, Default)]
pub struct SimReport {
    /// Sagas that completed.
    pub completed: usize,
    /// Sagas that compensated.
    pub compensated: usize,
    /// Sagas that ended otherwise or never ended.
    pub unfinished_or_failed: usize,
    /// Engine crashes injected.
    pub crashes: usize,
    /// Messages delivered more than once.
    pub duplicates: usize,
    /// Messages dropped.
    pub dropped: usize,
    /// Broken guarantees, one line each. Empty when all held.
    pub violations: Vec<String>,
    /// Why sagas compensated, with how many did for each reason.
    pub reasons: std::collections::BTreeMap<String, usize>,
}

/// The saga data of the simulated definition.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SimData {
    /// Replies folded in by the steps, in order.
    pub replies: Vec<String>,
}

/// The command every simulated step sends.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SimCommand {
    /// Step index.
    pub step: usize,
}

impl Command for SimCommand {
    const NAME: &'static str = "sim";
    type Reply = String;
}

const STEPS: usize = 4;
const PIVOT: usize = 2;

/// The simulated definition: `s0`, `s1` compensatable, `s2` pivot, `s3` retriable.
///
/// # Panics
/// Never: the definition is valid.
#[must_use]
pub fn definition() -> Saga<SimData> {
    let fold = |d: &mut SimData, r: String| d.replies.push(r);
    Saga::<SimData>::builder("sim")
        .default_timeout(Duration::from_secs(1))
        .step("s0")
        .invoke("p0", |_| SimCommand { step: 0 })
        .on_reply(fold)
        .compensate("p0", |_| SimCommand { step: 0 })
        .retry(RetryPolicy::fixed(Duration::from_millis(200)).max_attempts(4))
        .compensation_retry(RetryPolicy::fixed(Duration::from_millis(200)).unlimited())
        .step("s1")
        .invoke("p1", |_| SimCommand { step: 1 })
        .on_reply(fold)
        .compensate("p1", |_| SimCommand { step: 1 })
        .retry(
            RetryPolicy::exponential(Duration::from_millis(100), Duration::from_secs(1))
                .max_attempts(3),
        )
        .compensation_retry(RetryPolicy::fixed(Duration::from_millis(200)).unlimited())
        .step("s2")
        .invoke("p2", |_| SimCommand { step: 2 })
        .on_reply(fold)
        .pivot()
        .retry(RetryPolicy::fixed(Duration::from_millis(300)).unlimited())
        .step("s3")
        .invoke("p3", |_| SimCommand { step: 3 })
        .on_reply(fold)
        .retriable()
        .retry(RetryPolicy::fixed(Duration::from_millis(300)).unlimited())
        .build()
        .unwrap_or_else(|e| panic!("the simulated definition is valid: {e}"))
}

/// How one step of one saga behaves at its participant.
#[derive(Clone, Copy, Debug)]
enum Plan {
    Succeed { transient_failures: u32 },
    Refuse,
}

#[derive(Default)]
struct Participants {
    plans: HashMap<(SagaId, usize), Plan>,
    compensation_failures: HashMap<(SagaId, usize), u32>,
    attempts: HashMap<(SagaId, usize, Direction), u32>,
    inbox: HashMap<IdempotencyKey, ReplyOutcome>,
    /// Effects applied per saga, in order.
    effects: HashMap<SagaId, Vec<(usize, Direction)>>,
}

impl Participants {
    fn process(&mut self, command: &CommandMessage) -> ReplyOutcome {
        if let Some(recorded) = self.inbox.get(&command.idempotency_key) {
            return recorded.clone();
        }
        let key = (command.saga_id, command.step as usize);
        let tries = self
            .attempts
            .entry((key.0, key.1, command.direction))
            .or_default();
        *tries += 1;
        let tries = *tries;
        let outcome = match command.direction {
            Direction::Invoke => match self.plans.get(&key).copied() {
                Some(Plan::Refuse) => ReplyOutcome::Failure(StepError::business("refused by plan")),
                Some(Plan::Succeed { transient_failures }) if tries <= transient_failures => {
                    return ReplyOutcome::Failure(StepError::retryable("transient"));
                }
                _ => {
                    self.effects
                        .entry(key.0)
                        .or_default()
                        .push((key.1, Direction::Invoke));
                    ReplyOutcome::Success(serde_json::json!(format!("done-{}", key.1)))
                }
            },
            Direction::Compensate => {
                let failures = self.compensation_failures.get(&key).copied().unwrap_or(0);
                if tries <= failures {
                    return ReplyOutcome::Failure(StepError::retryable("compensation transient"));
                }
                // Tombstone the invoke so a late invoke cannot apply an effect nobody undoes.
                self.inbox.entry(command.invoke_key()).or_insert_with(|| {
                    ReplyOutcome::Failure(StepError::business("compensated before it ran"))
                });
                let applied = self
                    .effects
                    .get(&key.0)
                    .is_some_and(|e| e.contains(&(key.1, Direction::Invoke)));
                if applied {
                    self.effects
                        .entry(key.0)
                        .or_default()
                        .push((key.1, Direction::Compensate));
                }
                ReplyOutcome::Success(serde_json::Value::Null)
            }
        };
        self.inbox
            .insert(command.idempotency_key.clone(), outcome.clone());
        outcome
    }
}

/// A transport whose messages the simulation delivers by hand.
#[derive(Clone, Default)]
struct SimTransport {
    commands: Arc<Mutex<Vec<CommandMessage>>>,
    fail_next_send: Arc<Mutex<bool>>,
}

#[async_trait]
impl Transport for SimTransport {
    async fn send_command(&self, command: &CommandMessage) -> Result<()> {
        let mut fail = self
            .fail_next_send
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if *fail {
            *fail = false;
            return Err(Error::backend(
                ErrorKind::Unavailable,
                "simulated broker failure",
            ));
        }
        drop(fail);
        self.commands
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(command.clone());
        Ok(())
    }

    async fn send_reply(&self, _reply: &ReplyMessage) -> Result<()> {
        Err(Error::backend(
            ErrorKind::Invalid,
            "the simulation delivers replies itself",
        ))
    }

    async fn consume_commands(&self, _endpoint: &str) -> Result<Subscription<CommandMessage>> {
        Ok(Subscription::new(mpsc::channel(1).1))
    }

    async fn consume_replies(&self, _queue: &str) -> Result<Subscription<ReplyMessage>> {
        Ok(Subscription::new(mpsc::channel(1).1))
    }
}

struct World {
    rng: Rng,
    config: SimConfig,
    clock: Arc<ManualClock>,
    store: InMemoryStore,
    transport: SimTransport,
    saga: Saga<SimData>,
    engine: Engine,
    participants: Participants,
    replies: Vec<ReplyMessage>,
    report: SimReport,
}

impl World {
    fn build_engine(&self) -> Engine {
        Engine::builder(self.store.clone(), self.transport.clone())
            .register(&self.saga)
            .clock(Arc::clone(&self.clock) as Arc<dyn Clock>)
            .build()
    }

    fn take_commands(&self) -> Vec<CommandMessage> {
        std::mem::take(
            &mut *self
                .transport
                .commands
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    fn put_commands(&self, commands: Vec<CommandMessage>) {
        self.transport
            .commands
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend(commands);
    }

    fn deliver_command(&mut self, duplicate: bool) {
        let mut commands = self.take_commands();
        if commands.is_empty() {
            return;
        }
        let index = self.rng.below(commands.len());
        let command = if duplicate {
            self.report.duplicates += 1;
            commands[index].clone()
        } else {
            commands.remove(index)
        };
        self.put_commands(commands);
        let outcome = self.participants.process(&command);
        self.replies.push(command.reply(outcome));
    }

    async fn deliver_reply(&mut self, duplicate: bool) {
        if self.replies.is_empty() {
            return;
        }
        let index = self.rng.below(self.replies.len());
        let reply = if duplicate {
            self.report.duplicates += 1;
            self.replies[index].clone()
        } else {
            self.replies.remove(index)
        };
        if let Err(e) = self.engine.handle_reply(reply).await {
            self.report
                .violations
                .push(format!("handle_reply failed: {e}"));
        }
    }

    async fn advance(&mut self, by: Duration) {
        self.clock.advance(by);
        if let Err(e) = self.engine.tick().await {
            self.report.violations.push(format!("tick failed: {e}"));
        }
    }

    async fn chaos_step(&mut self) {
        let c = self.config.clone();
        *self
            .transport
            .fail_next_send
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = self.rng.chance(c.send_failure);
        if self.rng.chance(c.crash) {
            self.report.crashes += 1;
            self.engine = self.build_engine();
            return;
        }
        if self.rng.chance(c.drop) {
            self.report.dropped += 1;
            if self.rng.chance(0.5) && !self.replies.is_empty() {
                let i = self.rng.below(self.replies.len());
                self.replies.remove(i);
            } else {
                let mut commands = self.take_commands();
                if !commands.is_empty() {
                    let i = self.rng.below(commands.len());
                    commands.remove(i);
                }
                self.put_commands(commands);
            }
            return;
        }
        // Deliveries outnumber clock moves, so most attempts are answered in time.
        match self.rng.below(5) {
            0 | 1 => {
                let dup = self.rng.chance(c.duplicate);
                self.deliver_command(dup);
            }
            2 | 3 => {
                let dup = self.rng.chance(c.duplicate);
                self.deliver_reply(dup).await;
            }
            _ => {
                let ms = self.rng.below(250) as u64;
                self.advance(Duration::from_millis(ms)).await;
            }
        }
    }

    async fn all_finished(&self) -> bool {
        self.store.all().iter().all(|s| s.is_terminal())
    }

    async fn calm(&mut self) {
        *self
            .transport
            .fail_next_send
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = false;
        for _ in 0..100_000 {
            if !self.replies.is_empty() {
                self.deliver_reply(false).await;
            } else if !self
                .transport
                .commands
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .is_empty()
            {
                self.deliver_command(false);
            } else if self.all_finished().await {
                return;
            } else {
                let next = self.store.all().iter().filter_map(|s| s.next_wake_at).min();
                let now = self.clock.now();
                let wait = next
                    .and_then(|at| (at - now).to_std().ok())
                    .unwrap_or(Duration::from_millis(10));
                self.advance(wait + Duration::from_millis(1)).await;
            }
        }
    }

    async fn check(&mut self) {
        for saga in self.store.all() {
            let effects = self
                .participants
                .effects
                .get(&saga.id)
                .cloned()
                .unwrap_or_default();
            let count =
                |step: usize, dir: Direction| effects.iter().filter(|e| **e == (step, dir)).count();
            let fail = |report: &mut SimReport, what: String| {
                report
                    .violations
                    .push(format!("saga {}: {what} (effects {effects:?})", saga.id));
            };
            for step in 0..STEPS {
                if count(step, Direction::Invoke) > 1 || count(step, Direction::Compensate) > 1 {
                    fail(
                        &mut self.report,
                        format!("step {step} applied or undone more than once"),
                    );
                }
            }
            if let Some(first_undo) = effects.iter().position(|e| e.1 == Direction::Compensate) {
                if effects[first_undo..]
                    .iter()
                    .any(|e| e.1 == Direction::Invoke)
                {
                    fail(
                        &mut self.report,
                        "an action ran after compensation began".to_owned(),
                    );
                }
                let undone: Vec<usize> = effects[first_undo..].iter().map(|e| e.0).collect();
                if undone.windows(2).any(|w| w[0] <= w[1]) {
                    fail(
                        &mut self.report,
                        "compensations not in reverse order".to_owned(),
                    );
                }
            }
            match saga.status {
                SagaStatus::Completed => {
                    self.report.completed += 1;
                    if (0..STEPS).any(|s| {
                        count(s, Direction::Invoke) != 1 || count(s, Direction::Compensate) != 0
                    }) {
                        fail(
                            &mut self.report,
                            "completed without every step applied exactly once".to_owned(),
                        );
                    }
                }
                SagaStatus::Compensated => {
                    self.report.compensated += 1;
                    let reason = saga.error.clone().unwrap_or_default();
                    *self.report.reasons.entry(reason).or_default() += 1;
                    if count(PIVOT, Direction::Invoke) != 0
                        || count(PIVOT + 1, Direction::Invoke) != 0
                    {
                        fail(
                            &mut self.report,
                            "compensated after passing the pivot".to_owned(),
                        );
                    }
                    for step in 0..PIVOT {
                        if count(step, Direction::Invoke) != count(step, Direction::Compensate) {
                            fail(
                                &mut self.report,
                                format!("step {step} applied but not undone"),
                            );
                        }
                    }
                }
                other => {
                    self.report.unfinished_or_failed += 1;
                    fail(
                        &mut self.report,
                        format!("ended {other} ({})", saga.error.clone().unwrap_or_default()),
                    );
                }
            }
        }
    }
}

/// Runs a simulation and returns what it saw; `report.violations` is empty
/// when every guarantee held. Deterministic for a given `seed` and `config`.
pub async fn simulate(seed: u64, config: SimConfig) -> SimReport {
    let saga = definition();
    let store = InMemoryStore::new();
    let transport = SimTransport::default();
    let clock = Arc::new(ManualClock::default());
    let engine = Engine::builder(store.clone(), transport.clone())
        .register(&saga)
        .clock(Arc::clone(&clock) as Arc<dyn Clock>)
        .build();
    let mut world = World {
        rng: Rng::new(seed),
        config,
        clock,
        store,
        transport,
        saga,
        engine,
        participants: Participants::default(),
        replies: Vec::new(),
        report: SimReport::default(),
    };
    for _ in 0..world.config.sagas {
        // Ids come from the seed too, so a run replays exactly.
        let id = SagaId::from_uuid(uuid::Uuid::from_u64_pair(
            world.rng.next_u64(),
            world.rng.next_u64(),
        ));
        for step in 0..STEPS {
            // The retriable step after the pivot only fails transiently.
            let plan = if step <= PIVOT && world.rng.chance(world.config.business_failure) {
                Plan::Refuse
            } else if world.rng.chance(world.config.transient_failure) {
                Plan::Succeed {
                    transient_failures: 1 + world.rng.below(3) as u32,
                }
            } else {
                Plan::Succeed {
                    transient_failures: 0,
                }
            };
            world.participants.plans.insert((id, step), plan);
            if world.rng.chance(world.config.transient_failure) {
                world
                    .participants
                    .compensation_failures
                    .insert((id, step), 1 + world.rng.below(3) as u32);
            }
        }
        let options = crate::StartOptions::default().with_id(id);
        if let Err(e) = world
            .engine
            .start_with(&world.saga, SimData::default(), options)
            .await
        {
            world.report.violations.push(format!("start failed: {e}"));
        }
    }
    for _ in 0..world.config.chaos_steps {
        world.chaos_step().await;
    }
    world.calm().await;
    world.check().await;
    world.report
}
