//! The scheduler: it owns time, the broker's queues and every task, and
//! decides what happens next.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::task::JoinHandle;

use super::faults::{SimStore, SimTransport, SkewedClock};
use super::model::{self, Envelope, SimData, lock};
use super::{SimConfig, SimReport};
use crate::clock::Clock;
use crate::engine::{Engine, EngineConfig, StartOptions};
use crate::error::{Error, ErrorKind};
use crate::id::SagaId;
use crate::inbox::Inbox;
use crate::memory::InMemoryStore;
use crate::message::{CommandMessage, ReplyMessage};
use crate::participant::Participant;
use crate::{Saga, SagaStatus};

/// How far ahead of the world's clock each engine's clock runs.
const SKEW_MS: [i64; 2] = [0, 300];

struct EngineSlot {
    engine: Engine,
    alive: Arc<AtomicBool>,
    incarnation: u32,
}

/// A task the world spawned, and what to put back if it is killed.
struct Task {
    handle: JoinHandle<()>,
    owner: Owner,
    requeue: Option<Requeue>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Owner {
    Engine(usize),
    Participant(usize),
}

enum Requeue {
    Command(String, Envelope<CommandMessage>),
    Reply(Envelope<ReplyMessage>),
}

pub(super) struct World {
    pub(super) shared: Arc<model::Shared>,
    config: SimConfig,
    pub(super) store: InMemoryStore,
    v1: Saga<SimData>,
    v2: Saga<SimData>,
    engines: Vec<EngineSlot>,
    participants: Vec<Participant>,
    tasks: Vec<Task>,
    /// Every saga the world tried to start, with its definition version.
    pub(super) sagas: Vec<(SagaId, u32)>,
    unstarted: Vec<(SagaId, u32)>,
    pub(super) report: SimReport,
}

impl World {
    pub(super) fn new(
        seed: u64,
        config: SimConfig,
        inboxes: &dyn Fn(&str) -> Arc<dyn Inbox>,
    ) -> Self {
        let clock = Arc::new(crate::clock::ManualClock::default());
        let shared = Arc::new(model::Shared::new(seed, clock));
        let (v1, v2) = model::definitions(&shared);
        let participants = model::participants(&shared, inboxes);
        let mut world = Self {
            shared,
            config,
            store: InMemoryStore::new(),
            v1,
            v2,
            engines: Vec::new(),
            participants,
            tasks: Vec::new(),
            sagas: Vec::new(),
            unstarted: Vec::new(),
            report: SimReport::default(),
        };
        for index in 0..SKEW_MS.len() {
            let slot = world.build_engine(index, 0);
            world.engines.push(slot);
        }
        for _ in 0..world.config.sagas {
            let mut rng = lock(&world.shared.rng);
            // Ids come from the seed too, so a run replays exactly.
            let id = SagaId::from_uuid(uuid::Uuid::from_u64_pair(rng.next_u64(), rng.next_u64()));
            let version = if rng.chance(0.25) { 2 } else { 1 };
            let plans = model::plans(&mut rng, &world.config);
            drop(rng);
            let mut stored = lock(&world.shared.plans);
            for (slot, plan) in plans.into_iter().enumerate() {
                stored.insert((id, slot), plan);
            }
            drop(stored);
            world.sagas.push((id, version));
        }
        world.unstarted = world.sagas.iter().rev().copied().collect();
        world
    }

    /// Engine 0 has both definition versions, engine 1 only version 1: a
    /// rolling deploy frozen half-way.
    fn build_engine(&self, index: usize, incarnation: u32) -> EngineSlot {
        let alive = Arc::new(AtomicBool::new(true));
        let store = SimStore {
            inner: self.store.clone(),
            shared: Arc::clone(&self.shared),
            alive: Arc::clone(&alive),
        };
        let transport = SimTransport {
            shared: Arc::clone(&self.shared),
            alive: Arc::clone(&alive),
        };
        let clock = SkewedClock {
            base: Arc::clone(&self.shared.clock),
            skew: chrono::Duration::milliseconds(SKEW_MS[index]),
        };
        let config = EngineConfig {
            instance_name: format!("engine-{index}.{incarnation}"),
            claim_batch: 8,
            lease: Duration::from_secs(2),
            cache_capacity: 64,
            ..EngineConfig::default()
        };
        let mut builder = Engine::builder(store, transport)
            .register(&self.v1)
            .clock(Arc::new(clock) as Arc<dyn Clock>)
            .config(config);
        if index == 0 {
            builder = builder.register(&self.v2);
        }
        EngineSlot {
            engine: builder.build(),
            alive,
            incarnation,
        }
    }

    fn spawn(
        &mut self,
        owner: Owner,
        requeue: Option<Requeue>,
        task: impl Future<Output = ()> + Send + 'static,
    ) {
        self.tasks.push(Task {
            handle: tokio::spawn(task),
            owner,
            requeue,
        });
    }

    /// Lets every task run until none makes progress: all are done, or wait
    /// for the clock, a message or another task.
    pub(super) async fn settle(&mut self) {
        let mut last = self.shared.progress.load(Ordering::SeqCst);
        let mut quiet = 0;
        while quiet < 3 {
            for _ in 0..4 {
                tokio::task::yield_now().await;
            }
            if let Some(wait) = self.config.io_quiet {
                tokio::time::sleep(wait).await;
            }
            let now = self.shared.progress.load(Ordering::SeqCst);
            if now == last {
                quiet += 1;
            } else {
                quiet = 0;
                last = now;
            }
        }
        self.tasks.retain(|task| !task.handle.is_finished());
    }

    // ---- actions ------------------------------------------------------------

    fn start_next(&mut self) {
        let Some((id, version)) = self.unstarted.pop() else {
            return;
        };
        // Version 2 only on the engine that has it.
        let index = if version == 2 {
            0
        } else {
            self.shared.below(self.engines.len())
        };
        let engine = self.engines[index].engine.clone();
        let saga = if version == 2 {
            self.v2.clone()
        } else {
            self.v1.clone()
        };
        self.spawn(Owner::Engine(index), None, async move {
            let _ = engine
                .start_with(&saga, SimData::default(), StartOptions::new().id(id))
                .await;
        });
    }

    pub(super) fn deliver_command(&mut self, duplicate: bool) -> bool {
        let mut queues = lock(&self.shared.queues);
        let ready: Vec<String> = queues
            .commands
            .iter()
            .filter(|(_, q)| !q.is_empty())
            .map(|(e, _)| e.clone())
            .collect();
        if ready.is_empty() {
            return false;
        }
        let endpoint = ready[self.shared.below(ready.len())].clone();
        let queue = queues.commands.entry(endpoint.clone()).or_default();
        let index = self.shared.below(queue.len());
        let mut envelope = if duplicate {
            queue[index].clone()
        } else {
            queue.remove(index)
        };
        drop(queues);
        envelope.deliveries += 1;
        if duplicate {
            self.report.duplicates += 1;
        }
        let Some(which) = model::ENDPOINTS.iter().position(|e| *e == endpoint) else {
            return true;
        };
        let participant = self.participants[which].clone();
        let shared = Arc::clone(&self.shared);
        let delivery = envelope.clone();
        let requeue = (!duplicate).then(|| Requeue::Command(endpoint.clone(), envelope));
        self.spawn(Owner::Participant(which), requeue, async move {
            let handled = participant
                .handle(&delivery.message, delivery.deliveries)
                .await;
            let mut queues = lock(&shared.queues);
            match handled {
                Ok(reply) => queues.replies.push(Envelope {
                    message: reply,
                    deliveries: 0,
                }),
                Err(Error::MalformedMessage(why)) => queues.dead.push(why),
                // The inbox failed: the broker redelivers.
                Err(_) => queues.commands.entry(endpoint).or_default().push(delivery),
            }
            drop(queues);
            shared.step();
        });
        true
    }

    pub(super) fn deliver_reply(&mut self, duplicate: bool) -> bool {
        let mut queues = lock(&self.shared.queues);
        if queues.replies.is_empty() {
            return false;
        }
        let index = self.shared.below(queues.replies.len());
        let mut envelope = if duplicate {
            queues.replies[index].clone()
        } else {
            queues.replies.remove(index)
        };
        drop(queues);
        envelope.deliveries += 1;
        if duplicate {
            self.report.duplicates += 1;
        }
        let which = self.shared.below(self.engines.len());
        let engine = self.engines[which].engine.clone();
        let shared = Arc::clone(&self.shared);
        let delivery = envelope.clone();
        let requeue = (!duplicate).then_some(Requeue::Reply(envelope));
        self.spawn(Owner::Engine(which), requeue, async move {
            let handled = engine.handle_reply(delivery.message.clone()).await;
            let mut queues = lock(&shared.queues);
            match handled {
                Ok(()) => {}
                // Handed back for an engine that has the definition.
                Err(Error::UnknownDefinition { .. }) => queues.replies.push(delivery),
                Err(e) if matches!(e.kind(), ErrorKind::Invalid | ErrorKind::NotFound) => {
                    queues.dead.push(format!(
                        "reply {} dead-lettered: {e}",
                        delivery.message.message_id
                    ));
                }
                // Held and retried: the store failed.
                Err(_) => queues.replies.push(delivery),
            }
            drop(queues);
            shared.step();
        });
        true
    }

    pub(super) fn tick(&mut self, which: usize) {
        let engine = self.engines[which].engine.clone();
        self.spawn(Owner::Engine(which), None, async move {
            let _ = engine.tick().await;
        });
    }

    fn crash_engine(&mut self, which: usize) {
        self.report.engine_crashes += 1;
        let old = &self.engines[which];
        old.alive.store(false, Ordering::SeqCst);
        old.engine.abort();
        let incarnation = old.incarnation + 1;
        self.kill(Owner::Engine(which));
        self.engines[which] = self.build_engine(which, incarnation);
        let engine = self.engines[which].engine.clone();
        self.spawn(Owner::Engine(which), None, async move {
            let _ = engine.resend_in_flight().await;
        });
    }

    fn crash_participant(&mut self, which: usize) {
        self.report.participant_crashes += 1;
        self.kill(Owner::Participant(which));
    }

    /// Aborts `owner`'s unfinished tasks; their messages go back to the queues.
    fn kill(&mut self, owner: Owner) {
        let (killed, kept): (Vec<Task>, Vec<Task>) =
            self.tasks.drain(..).partition(|t| t.owner == owner);
        self.tasks = kept;
        let mut queues = lock(&self.shared.queues);
        for task in killed {
            if task.handle.is_finished() {
                continue;
            }
            task.handle.abort();
            match task.requeue {
                Some(Requeue::Command(endpoint, envelope)) => {
                    queues.commands.entry(endpoint).or_default().push(envelope);
                }
                Some(Requeue::Reply(envelope)) => queues.replies.push(envelope),
                None => {}
            }
        }
    }

    fn operator(&mut self) {
        let (id, _) = self.sagas[self.shared.below(self.sagas.len())];
        let which = self.shared.below(self.engines.len());
        let engine = self.engines[which].engine.clone();
        let action = self.shared.below(3);
        self.report.operator_actions += 1;
        self.spawn(Owner::Engine(which), None, async move {
            let _ = match action {
                0 => engine.cancel(id, "simulated operator").await,
                1 => engine.resume(id).await,
                _ => engine.retry(id).await,
            };
        });
    }

    fn fault(&mut self) {
        let mut faults = lock(&self.shared.faults);
        match self.shared.below(4) {
            0 => faults.fail_sends += 1,
            1 => faults.lose_sends += 1,
            2 => faults.fail_saves += 1,
            _ => faults.ambiguous_saves += 1,
        }
        self.report.store_or_send_faults += 1;
    }

    fn drop_message(&mut self) {
        self.report.dropped += 1;
        let mut queues = lock(&self.shared.queues);
        if self.shared.chance(0.5) && !queues.replies.is_empty() {
            let index = self.shared.below(queues.replies.len());
            queues.replies.remove(index);
        } else if let Some(queue) = queues.commands.values_mut().find(|q| !q.is_empty()) {
            let index = self.shared.below(queue.len());
            queue.remove(index);
        }
    }

    pub(super) fn advance(&mut self, by: Duration) {
        self.shared.clock.advance(by);
        self.shared.step();
    }

    /// One random action of the chaos phase.
    pub(super) fn chaos(&mut self) {
        let c = self.config.clone();
        let roll = |p: f64| self.shared.chance(p);
        if !self.unstarted.is_empty() && roll(0.15) {
            return self.start_next();
        }
        if roll(c.engine_crash) {
            let which = self.shared.below(self.engines.len());
            return self.crash_engine(which);
        }
        if roll(c.participant_crash) {
            let which = self.shared.below(self.participants.len());
            return self.crash_participant(which);
        }
        if roll(c.fault) {
            return self.fault();
        }
        if roll(c.drop) {
            return self.drop_message();
        }
        if roll(c.operator) {
            return self.operator();
        }
        // Deliveries outnumber clock moves, so most attempts are answered in time.
        match self.shared.below(6) {
            0 | 1 => {
                let duplicate = roll(c.duplicate);
                self.deliver_command(duplicate);
            }
            2 | 3 => {
                let duplicate = roll(c.duplicate);
                self.deliver_reply(duplicate);
            }
            4 => {
                let which = self.shared.below(self.engines.len());
                self.tick(which);
            }
            _ => {
                let ms = self.shared.below(400) as u64;
                self.advance(Duration::from_millis(ms));
            }
        }
    }

    /// No more faults: deliver everything, let time pass, and act as an
    /// operator who fixes the cause of a failed saga and retries it, until
    /// every saga has ended.
    pub(super) async fn calm(&mut self) {
        *lock(&self.shared.faults) = model::Faults::default();
        while !self.unstarted.is_empty() {
            self.start_next();
            self.settle().await;
        }
        for _ in 0..50_000 {
            if self.deliver_reply(false) || self.deliver_command(false) {
                self.settle().await;
                continue;
            }
            let sagas = self.store.all();
            let failed: Vec<SagaId> = sagas
                .iter()
                .filter(|s| s.status == SagaStatus::Failed)
                .map(|s| s.id)
                .collect();
            if !failed.is_empty() {
                for id in failed {
                    lock(&self.shared.fixed).insert(id);
                    self.report.operator_retries += 1;
                    let engine = self.engines[0].engine.clone();
                    self.spawn(Owner::Engine(0), None, async move {
                        let _ = engine.retry(id).await;
                    });
                }
                self.settle().await;
                continue;
            }
            if self.tasks.is_empty() && sagas.iter().all(|s| s.is_terminal()) {
                return;
            }
            for which in 0..self.engines.len() {
                self.tick(which);
            }
            self.settle().await;
            if lock(&self.shared.queues).replies.is_empty() {
                // Nothing to deliver: move time to the next due saga (or on a
                // little, for handlers and local steps that are working).
                let now = self.shared.clock.now();
                let next = sagas
                    .iter()
                    .filter(|s| !s.is_terminal())
                    .filter_map(|s| s.next_wake_at)
                    .min()
                    .and_then(|at| (at - now).to_std().ok())
                    .unwrap_or(Duration::from_millis(50));
                // In small steps, so that work finishes before the timeouts
                // that follow it, as it would in real time.
                self.advance(next.min(Duration::from_millis(100)) + Duration::from_millis(1));
                self.settle().await;
            }
        }
        self.report
            .violations
            .push("the calm phase did not bring every saga to an end".to_owned());
    }

    /// The two definition versions.
    pub(super) fn definitions(&self) -> (Saga<SimData>, Saga<SimData>) {
        (self.v1.clone(), self.v2.clone())
    }

    /// Stops every task and engine (tasks left waiting on the clock, say).
    pub(super) fn shutdown(&mut self) {
        for task in self.tasks.drain(..) {
            task.handle.abort();
        }
        for slot in &self.engines {
            slot.alive.store(false, Ordering::SeqCst);
            slot.engine.abort();
        }
    }
}
