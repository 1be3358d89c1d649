//! What the simulation runs: two versions of a saga definition, the plans
//! that make its participants succeed, fail or dawdle, the participants'
//! handlers, and the journal of the effects they apply.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::clock::{Clock, ManualClock};
use crate::definition::{Command, LocalContext, OnUnknown, Saga};
use crate::error::StepError;
use crate::id::{Direction, IdempotencyKey, SagaId};
use crate::inbox::Inbox;
use crate::message::{CommandMessage, ReplyMessage};
use crate::participant::{CommandContext, Participant};
use crate::retry::RetryPolicy;
use crate::testing::Rng;

pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The saga data of the simulated definitions.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct SimData {
    /// Replies folded in by the steps, in order.
    pub replies: Vec<String>,
}

/// The endpoints of the simulated participants.
pub(super) const ENDPOINTS: [&str; 5] = ["p0", "p1", "p2", "p3", "p4"];

/// The action a simulated remote step sends to participant `P`: do the work
/// of plan `slot`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct SimDo<const P: usize> {
    /// The plan slot: which part of a saga's plan the step plays.
    pub slot: usize,
}

impl<const P: usize> Command for SimDo<P> {
    const NAME: &'static str = "sim.do";
    const ENDPOINT: &'static str = ENDPOINTS[P];
    type Reply = String;
}

/// The compensation a simulated compensatable remote step sends to participant `P`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct SimUndo<const P: usize> {
    /// The plan slot.
    pub slot: usize,
}

impl<const P: usize> Command for SimUndo<P> {
    const NAME: &'static str = "sim.undo";
    const ENDPOINT: &'static str = ENDPOINTS[P];
    type Reply = ();
}

/// Plan slots: which part of a saga's plan a step plays. Version 1 uses all
/// six in order; version 2 uses [`BOOK`] and [`COMMIT`].
pub(super) const BOOK: usize = 0;
pub(super) const HOLD: usize = 1;
pub(super) const CHARGE: usize = 2;
pub(super) const CHECK: usize = 3;
pub(super) const COMMIT: usize = 4;
pub(super) const NOTIFY: usize = 5;
pub(super) const SLOTS: usize = 6;

/// The slots of each definition version, in step order.
pub(super) fn slots(version: u32) -> &'static [usize] {
    if version == 2 {
        &[BOOK, COMMIT]
    } else {
        &[BOOK, HOLD, CHARGE, CHECK, COMMIT, NOTIFY]
    }
}

/// Slots whose effect may not be undone once applied: the pivot and after.
pub(super) fn forward_only(slot: usize) -> bool {
    slot >= COMMIT
}

/// How one slot of one saga behaves.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Plan {
    /// How long the handler works (virtual time), before it answers.
    pub work: Duration,
    /// Retryable failures before it succeeds.
    pub transient: u32,
    /// The attempt after the transient failures reports an unknown outcome
    /// (with no effect).
    pub unknown: bool,
    /// A business refusal, until an operator fixes its cause.
    pub refuse: bool,
    /// Retryable failures of the compensation before it succeeds.
    pub undo_transient: u32,
    /// The compensation is refused until an operator fixes the cause.
    pub undo_refuse: bool,
}

/// What a participant (or a local step) did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Mark {
    /// The forward effect took place.
    Applied,
    /// A compensation handler started: the participant's inbox had
    /// tombstoned the step's invoke key before it ran.
    CompensationRan,
    /// The effect was undone.
    Undone,
}

/// One journal line.
#[derive(Clone, Debug)]
pub(super) struct Entry {
    pub saga: SagaId,
    pub slot: usize,
    pub mark: Mark,
    pub key: IdempotencyKey,
}

/// A delivery of a message, with how many times it was delivered.
#[derive(Clone, Debug)]
pub(super) struct Envelope<T> {
    pub message: T,
    pub deliveries: u32,
}

/// The broker as the world sees it.
#[derive(Default)]
pub(super) struct Queues {
    pub commands: BTreeMap<String, Vec<Envelope<CommandMessage>>>,
    pub replies: Vec<Envelope<ReplyMessage>>,
    /// Replies that would have been dead-lettered: each is a broken guarantee.
    pub dead: Vec<String>,
}

/// Faults the next operations suffer.
#[derive(Default)]
pub(super) struct Faults {
    pub fail_sends: u32,
    pub lose_sends: u32,
    pub fail_saves: u32,
    pub ambiguous_saves: u32,
}

/// Everything the world, the adapters' wrappers and the participants share.
pub(super) struct Shared {
    pub rng: Mutex<Rng>,
    pub progress: AtomicU64,
    pub clock: Arc<ManualClock>,
    pub journal: Mutex<Vec<Entry>>,
    pub plans: Mutex<BTreeMap<(SagaId, usize), Plan>>,
    pub tries: Mutex<BTreeMap<(SagaId, usize, Direction), u32>>,
    pub fixed: Mutex<BTreeSet<SagaId>>,
    pub queues: Mutex<Queues>,
    pub faults: Mutex<Faults>,
    /// Whether wrappers yield at their await points (off in the calm phase
    /// only for speed; the schedule stays deterministic either way).
    pub interleave: std::sync::atomic::AtomicBool,
}

impl Shared {
    pub(super) fn new(seed: u64, clock: Arc<ManualClock>) -> Self {
        Self {
            rng: Mutex::new(Rng::new(seed)),
            progress: AtomicU64::new(0),
            clock,
            journal: Mutex::default(),
            plans: Mutex::default(),
            tries: Mutex::default(),
            fixed: Mutex::default(),
            queues: Mutex::default(),
            faults: Mutex::default(),
            interleave: std::sync::atomic::AtomicBool::new(true),
        }
    }

    pub(super) fn step(&self) {
        self.progress.fetch_add(1, Ordering::SeqCst);
    }

    pub(super) fn below(&self, n: usize) -> usize {
        lock(&self.rng).below(n)
    }

    pub(super) fn chance(&self, p: f64) -> bool {
        lock(&self.rng).chance(p)
    }

    pub(super) async fn sleep(&self, work: Duration) {
        if !work.is_zero() {
            let until = crate::clock::add(self.clock.now(), work);
            self.clock.sleep_until(until).await;
        }
        self.step();
    }

    fn plan(&self, saga: SagaId, slot: usize) -> Plan {
        lock(&self.plans)
            .get(&(saga, slot))
            .copied()
            .unwrap_or_default()
    }

    fn try_number(&self, saga: SagaId, slot: usize, direction: Direction) -> u32 {
        let mut tries = lock(&self.tries);
        let n = tries.entry((saga, slot, direction)).or_default();
        *n += 1;
        *n
    }

    pub(super) fn is_fixed(&self, saga: SagaId) -> bool {
        lock(&self.fixed).contains(&saga)
    }

    pub(super) fn mark(&self, saga: SagaId, slot: usize, mark: Mark, key: &IdempotencyKey) {
        lock(&self.journal).push(Entry {
            saga,
            slot,
            mark,
            key: key.clone(),
        });
        self.step();
    }

    fn has(&self, saga: SagaId, slot: usize, mark: Mark) -> bool {
        lock(&self.journal)
            .iter()
            .any(|e| e.saga == saga && e.slot == slot && e.mark == mark)
    }

    fn applied_under(&self, key: &IdempotencyKey) -> bool {
        lock(&self.journal)
            .iter()
            .any(|e| e.mark == Mark::Applied && e.key == *key)
    }

    /// The forward work of `slot`: what a participant's handler (or the local
    /// step) does. Not idempotent by itself: the inbox (or, for the local
    /// step, the engine running one attempt at a time) must make it so.
    async fn work(
        &self,
        saga: SagaId,
        slot: usize,
        key: &IdempotencyKey,
        check_key_first: bool,
    ) -> Result<String, StepError> {
        let plan = self.plan(saga, slot);
        let tries = self.try_number(saga, slot, Direction::Invoke);
        // A local step is idempotent on its key, checked before it works:
        // two attempts running at once would both pass the check.
        let done_before = check_key_first && self.applied_under(key);
        self.sleep(plan.work).await;
        if plan.refuse && !self.is_fixed(saga) {
            return Err(StepError::business(format!("slot {slot} refused by plan")));
        }
        if tries <= plan.transient {
            return Err(StepError::retryable("transient failure by plan"));
        }
        if plan.unknown && tries == plan.transient + 1 {
            return Err(StepError::unknown("outcome unknown by plan"));
        }
        if slot != CHECK && !done_before {
            self.mark(saga, slot, Mark::Applied, key);
        }
        Ok(format!("done-{slot}"))
    }

    /// The compensation of `slot`: undoes the effect if there is one.
    async fn undo(&self, saga: SagaId, slot: usize, key: &IdempotencyKey) -> Result<(), StepError> {
        let plan = self.plan(saga, slot);
        let tries = self.try_number(saga, slot, Direction::Compensate);
        self.mark(saga, slot, Mark::CompensationRan, key);
        self.sleep(plan.work / 4).await;
        if plan.undo_refuse && !self.is_fixed(saga) {
            return Err(StepError::business("compensation refused by plan"));
        }
        if tries <= plan.undo_transient {
            return Err(StepError::retryable(
                "compensation transient failure by plan",
            ));
        }
        if self.has(saga, slot, Mark::Applied) && !self.has(saga, slot, Mark::Undone) {
            self.mark(saga, slot, Mark::Undone, key);
        }
        Ok(())
    }
}

/// The simulated definitions. Version 1:
///
/// | step | slot | kind |
/// |---|---|---|
/// | `book` | 0 | remote `p0`, compensated at `p0` |
/// | `hold` | 1 | local, compensated locally, 0.8 s timeout |
/// | `charge` | 2 | remote `p1`, compensated at `p1`, an unknown outcome compensates, 4 compensation attempts |
/// | `check` | 3 | remote `p2`, read-only |
/// | `commit` | 4 | remote `p3`, the pivot |
/// | `notify` | 5 | remote `p4`, retriable |
///
/// with a 12 s deadline. Version 2 (registered with one engine only) is
/// `book` (slot 0) then `commit` (slot 4, the pivot).
pub(super) fn definitions(shared: &Arc<Shared>) -> (Saga<SimData>, Saga<SimData>) {
    let fold = |d: &mut SimData, r: String| d.replies.push(r);
    let run = Arc::clone(shared);
    let undo = Arc::clone(shared);
    let v1 = Saga::<SimData>::builder("sim")
        .default_timeout(Duration::from_secs(1))
        .deadline(Duration::from_secs(12))
        .default_retry(RetryPolicy::fixed(Duration::from_millis(200)).max_attempts(4))
        .default_compensation_retry(RetryPolicy::fixed(Duration::from_millis(200)).max_attempts(8))
        .step("book", |step| {
            step.invoke(|_| SimDo::<0> { slot: BOOK })
                .on_reply(fold)
                .compensate(|_| SimUndo::<0> { slot: BOOK })
        })
        .step("hold", |step| {
            step.local(move |_data: SimData, ctx: LocalContext| {
                let shared = Arc::clone(&run);
                async move {
                    shared
                        .work(ctx.saga_id, HOLD, &ctx.idempotency_key, true)
                        .await
                }
            })
            .on_reply(fold)
            .compensate_local(move |_data: SimData, ctx: LocalContext| {
                let shared = Arc::clone(&undo);
                async move { shared.undo(ctx.saga_id, HOLD, &ctx.idempotency_key).await }
            })
            .timeout(Duration::from_millis(800))
            .retry(RetryPolicy::fixed(Duration::from_millis(100)).max_attempts(3))
        })
        .step("charge", |step| {
            step.invoke(|_| SimDo::<1> { slot: CHARGE })
                .on_reply(fold)
                .compensate(|_| SimUndo::<1> { slot: CHARGE })
                .on_unknown(OnUnknown::Compensate)
                .retry(
                    RetryPolicy::exponential(Duration::from_millis(100), Duration::from_secs(1))
                        .max_attempts(3),
                )
                .compensation_retry(RetryPolicy::fixed(Duration::from_millis(200)).max_attempts(4))
        })
        .step("check", |step| {
            step.invoke(|_| SimDo::<2> { slot: CHECK })
                .on_reply(fold)
                .read_only()
        })
        .step("commit", |step| {
            step.invoke(|_| SimDo::<3> { slot: COMMIT })
                .on_reply(fold)
                .pivot()
        })
        .step("notify", |step| {
            step.invoke(|_| SimDo::<4> { slot: NOTIFY })
                .on_reply(fold)
                .retriable()
        })
        .build()
        .unwrap_or_else(|e| panic!("the simulated definition is valid: {e}"));
    let v2 = Saga::<SimData>::builder("sim")
        .version(2)
        .default_timeout(Duration::from_secs(1))
        .step("book", |step| {
            step.invoke(|_| SimDo::<0> { slot: BOOK })
                .on_reply(fold)
                .compensate(|_| SimUndo::<0> { slot: BOOK })
        })
        .step("commit", |step| {
            step.invoke(|_| SimDo::<3> { slot: COMMIT })
                .on_reply(fold)
                .pivot()
        })
        .build()
        .unwrap_or_else(|e| panic!("the simulated definition is valid: {e}"));
    (v1, v2)
}

/// The participants of every endpoint, each deduplicating through the
/// inbox `inboxes` gives for it.
pub(super) fn participants(
    shared: &Arc<Shared>,
    inboxes: &dyn Fn(&str) -> Arc<dyn Inbox>,
) -> Vec<Participant> {
    vec![
        participant::<0>(shared, inboxes),
        participant::<1>(shared, inboxes),
        participant::<2>(shared, inboxes),
        participant::<3>(shared, inboxes),
        participant::<4>(shared, inboxes),
    ]
}

fn participant<const P: usize>(
    shared: &Arc<Shared>,
    inboxes: &dyn Fn(&str) -> Arc<dyn Inbox>,
) -> Participant {
    let inbox = super::faults::SimInbox::new(inboxes(ENDPOINTS[P]), Arc::clone(shared));
    Participant::builder()
        .state(Arc::clone(shared))
        .inbox(inbox)
        .on(
            |cmd: SimDo<P>, ctx: CommandContext, shared: Arc<Shared>| async move {
                shared
                    .work(ctx.saga_id, cmd.slot, &ctx.idempotency_key, false)
                    .await
            },
        )
        .on(
            |cmd: SimUndo<P>, ctx: CommandContext, shared: Arc<Shared>| async move {
                shared
                    .undo(ctx.saga_id, cmd.slot, &ctx.idempotency_key)
                    .await
            },
        )
        .build()
        .unwrap_or_else(|e| panic!("the simulated participant is valid: {e}"))
}

/// A random plan for every slot of a saga.
pub(super) fn plans(rng: &mut Rng, config: &super::SimConfig) -> [Plan; SLOTS] {
    let mut plans = [Plan::default(); SLOTS];
    for (slot, plan) in plans.iter_mut().enumerate() {
        let slow = rng.chance(config.slow_handler);
        plan.work = if slow {
            // Slower than the step's timeout: its retry races it.
            Duration::from_millis(900 + rng.below(1_500) as u64)
        } else {
            Duration::from_millis(rng.below(150) as u64)
        };
        plan.refuse = slot != CHECK && rng.chance(config.business_failure);
        if rng.chance(config.transient_failure) {
            plan.transient = 1 + rng.below(3) as u32;
        }
        plan.unknown = rng.chance(config.transient_failure / 3.0);
        if rng.chance(config.transient_failure) {
            // Sometimes more than the compensation's budget: the saga fails
            // for an operator, who fixes the cause and retries.
            plan.undo_transient = 1 + rng.below(10) as u32;
        }
        plan.undo_refuse = rng.chance(config.business_failure / 4.0);
    }
    plans
}
