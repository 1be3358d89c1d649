//! One test (or a few) per path where a review found the guarantees did not
//! hold, on the real engine and participant runtime over the in-memory
//! adapters. Each failed on the code before its fix; docs/concepts.md states
//! the guarantees they pin down.
//!
//! Most run under tokio's paused time with a [`TokioClock`], so timeouts,
//! retries and a minute-long outage take no real time.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use saga_core::adapter::{
    CommandMessage, Created, DefinitionKey, ReplyMessage, SagaQuery, Subscription,
};
use saga_core::clock::{Clock, TokioClock};
use saga_core::memory::{InMemoryInbox, InMemoryStore, InMemoryTransport};
use saga_core::{
    Command, Direction, Engine, EngineConfig, Error, ErrorKind, LogEntry, LogEvent, Participant,
    RetryPolicy, Saga, SagaId, SagaInstance, SagaStatus, SagaStore, StepError, Transport,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, watch};

const WAIT: Duration = Duration::from_secs(600);

// ---- messages and a journal of effects -----------------------------------

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Trip {
    refs: Vec<String>,
}

/// The tests' participants, by endpoint.
const ENDPOINTS: [&str; 5] = ["travel", "hotels", "payment", "orders", "shop"];
const TRAVEL: usize = 0;
const HOTELS: usize = 1;
const PAYMENT: usize = 2;
const ORDERS: usize = 3;
const SHOP: usize = 4;

/// Books `what` at participant `E` of [`ENDPOINTS`].
#[derive(Serialize, Deserialize)]
struct Book<const E: usize> {
    what: String,
}
impl<const E: usize> Command for Book<E> {
    const NAME: &'static str = "book";
    const ENDPOINT: &'static str = ENDPOINTS[E];
    type Reply = String;
}

/// Undoes the booking of `what` at participant `E`.
#[derive(Serialize, Deserialize)]
struct Undo<const E: usize> {
    what: String,
}
impl<const E: usize> Command for Undo<E> {
    const NAME: &'static str = "undo";
    const ENDPOINT: &'static str = ENDPOINTS[E];
    type Reply = ();
}

fn book<const E: usize>(what: &'static str) -> impl Fn(&Trip) -> Book<E> + Send + Sync + 'static {
    move |_| Book { what: what.into() }
}

fn undo<const E: usize>(what: &'static str) -> impl Fn(&Trip) -> Undo<E> + Send + Sync + 'static {
    move |_| Undo { what: what.into() }
}

/// Effects a participant applied, per saga, in order: `book x` / `undo x`.
#[derive(Clone, Default)]
struct Journal(Arc<Mutex<Vec<(SagaId, String)>>>);

impl Journal {
    fn push(&self, saga: SagaId, what: String) {
        self.0.lock().expect("journal").push((saga, what));
    }

    fn of(&self, saga: SagaId) -> Vec<String> {
        self.0
            .lock()
            .expect("journal")
            .iter()
            .filter(|(s, _)| *s == saga)
            .map(|(_, e)| e.clone())
            .collect()
    }
}

/// A participant at endpoint `E` that books and undoes into `journal`; an
/// undo undoes only what was booked. `work` is how long a booking takes.
fn bookings<const E: usize>(journal: &Journal, work: Duration) -> Participant {
    let booked = journal.clone();
    let undone = journal.clone();
    Participant::builder()
        .inbox(InMemoryInbox::new())
        .on(move |cmd: Book<E>, ctx| {
            let journal = booked.clone();
            async move {
                tokio::time::sleep(work).await;
                journal.push(ctx.saga_id, format!("book {}", cmd.what));
                Ok(format!("{}-ref", cmd.what))
            }
        })
        .on(move |cmd: Undo<E>, ctx| {
            let journal = undone.clone();
            async move {
                let booked = journal
                    .of(ctx.saga_id)
                    .contains(&format!("book {}", cmd.what));
                if booked {
                    journal.push(ctx.saga_id, format!("undo {}", cmd.what));
                }
                Ok(())
            }
        })
        .build()
        .expect("valid participant")
}

// ---- a running stack --------------------------------------------------------

struct Stack {
    transport: InMemoryTransport,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

impl Stack {
    fn new(transport: InMemoryTransport) -> Self {
        Self {
            transport,
            stop: watch::channel(false).0,
            tasks: Vec::new(),
        }
    }

    fn run_engine(&mut self, engine: &Engine) {
        let engine = engine.clone();
        let stop = stopped(self.stop.subscribe());
        self.tasks.push(tokio::spawn(async move {
            engine.run(stop).await.expect("engine runs");
        }));
    }

    fn serve(&mut self, participant: Participant) {
        self.serve_on(participant, Arc::new(self.transport.clone()));
    }

    fn serve_on(&mut self, participant: Participant, transport: Arc<dyn Transport>) {
        let stop = stopped(self.stop.subscribe());
        self.tasks.push(tokio::spawn(async move {
            participant.run(transport, stop).await.expect("participant");
        }));
    }

    async fn shutdown(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            task.await.expect("task");
        }
    }
}

fn engine_on(store: &dyn ArcStore, transport: impl Transport, saga: &Saga<Trip>) -> Engine {
    let mut config = EngineConfig::default();
    config.poll_interval = Duration::from_millis(10);
    config.hand_back_delay = Duration::from_millis(20);
    Engine::builder(store.arc(), transport)
        .register(saga)
        .clock(Arc::new(TokioClock::new()))
        .config(config)
        .build()
}

/// A store the tests can hand to several engines.
trait ArcStore {
    fn arc(&self) -> Arc<dyn SagaStore>;
}

impl<S: SagaStore + Clone> ArcStore for S {
    fn arc(&self) -> Arc<dyn SagaStore> {
        Arc::new(self.clone())
    }
}

fn assert_no_duplicate_dispatch(logs: &[saga_core::LogEntry]) {
    let twice = saga_core::testing::dispatched_twice(logs);
    assert!(twice.is_empty(), "{twice:?}: {logs:#?}");
}

fn events(logs: &[LogEntry]) -> Vec<LogEvent> {
    logs.iter().map(|l| l.event).collect()
}

fn command(saga: SagaId, step: &str, direction: Direction, what: &str) -> CommandMessage {
    let payload = match direction {
        Direction::Invoke => serde_json::json!({ "what": what }),
        Direction::Compensate => serde_json::json!({ "what": what }),
    };
    CommandMessage {
        message_id: format!("{saga}:{step}:{direction}:1"),
        idempotency_key: saga_core::IdempotencyKey::new(saga, step, direction),
        saga_id: saga,
        saga_type: "trip".into(),
        step: 0,
        step_name: step.into(),
        direction,
        attempt: 1,
        endpoint: "hotels".into(),
        command: match direction {
            Direction::Invoke => "book".into(),
            Direction::Compensate => "undo".into(),
        },
        payload,
        reply_to: Some("saga_replies".into()),
        headers: Default::default(),
    }
}

// ---- 1. the inbox claims a key before its handler runs ------------------------

mod inbox_claims {
    use super::*;

    /// A handler that waits for `release` before applying its effect.
    fn held(journal: &Journal, started: Arc<Notify>, release: Arc<Notify>) -> Participant {
        let booked = journal.clone();
        let undone = journal.clone();
        Participant::builder()
            .inbox(InMemoryInbox::new())
            .on(move |cmd: Book<HOTELS>, ctx| {
                let (journal, started, release) =
                    (booked.clone(), Arc::clone(&started), Arc::clone(&release));
                async move {
                    started.notify_one();
                    release.notified().await;
                    journal.push(ctx.saga_id, format!("book {}", cmd.what));
                    Ok("ref".to_owned())
                }
            })
            .on(move |cmd: Undo<HOTELS>, ctx| {
                let journal = undone.clone();
                async move {
                    if journal
                        .of(ctx.saga_id)
                        .contains(&format!("book {}", cmd.what))
                    {
                        journal.push(ctx.saga_id, format!("undo {}", cmd.what));
                    }
                    Ok(())
                }
            })
            .build()
            .expect("valid participant")
    }

    #[tokio::test]
    async fn a_duplicate_of_a_command_in_flight_waits_and_gets_the_same_reply() {
        let journal = Journal::default();
        let (started, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
        let hotels = held(&journal, Arc::clone(&started), Arc::clone(&release));
        let saga = SagaId::new();
        let cmd = command(saga, "hotel", Direction::Invoke, "hotel");
        let first = tokio::spawn({
            let (hotels, cmd) = (hotels.clone(), cmd.clone());
            async move { hotels.handle(&cmd, 1).await }
        });
        started.notified().await;
        // The step timed out and the engine sent attempt 2 (same key).
        let mut again = cmd.clone();
        again.attempt = 2;
        again.message_id = format!("{saga}:hotel:invoke:2");
        let second = tokio::spawn({
            let hotels = hotels.clone();
            async move { hotels.handle(&again, 1).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !second.is_finished(),
            "the duplicate waits for the first copy"
        );
        release.notify_one();
        // Had the duplicate run its own handler, it would wait for a release
        // that never comes.
        let (first, second) = tokio::time::timeout(Duration::from_secs(10), async {
            (first.await, second.await)
        })
        .await
        .expect("the duplicate was answered from the first copy's record");
        let first = first.expect("task").expect("handled");
        let second = second.expect("task").expect("handled");
        assert_eq!(first.outcome, second.outcome);
        assert_eq!(
            journal.of(saga),
            vec!["book hotel"],
            "the effect happened once"
        );
    }

    #[tokio::test]
    async fn a_compensation_racing_its_invoke_waits_for_it_and_undoes_it() {
        let journal = Journal::default();
        let (started, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
        let hotels = held(&journal, Arc::clone(&started), Arc::clone(&release));
        let saga = SagaId::new();
        let invoke = tokio::spawn({
            let hotels = hotels.clone();
            let cmd = command(saga, "hotel", Direction::Invoke, "hotel");
            async move { hotels.handle(&cmd, 1).await }
        });
        started.notified().await;
        // The saga gave up on the slow step and compensates it.
        let compensation = tokio::spawn({
            let hotels = hotels.clone();
            let cmd = command(saga, "hotel", Direction::Compensate, "hotel");
            async move { hotels.handle(&cmd, 1).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !compensation.is_finished(),
            "the compensation waits for the invoke in flight"
        );
        release.notify_one();
        let invoke = invoke.await.expect("task").expect("handled");
        let compensation = compensation.await.expect("task").expect("handled");
        assert!(invoke.outcome.clone().into_result().is_ok());
        assert!(compensation.outcome.clone().into_result().is_ok());
        assert_eq!(
            journal.of(saga),
            vec!["book hotel", "undo hotel"],
            "what the invoke did is undone"
        );
    }

    #[tokio::test]
    async fn an_invoke_after_its_compensation_is_refused() {
        let journal = Journal::default();
        let hotels = bookings::<HOTELS>(&journal, Duration::ZERO);
        let saga = SagaId::new();
        let undo = command(saga, "hotel", Direction::Compensate, "hotel");
        hotels.handle(&undo, 1).await.expect("compensated");
        let late = command(saga, "hotel", Direction::Invoke, "hotel");
        let reply = hotels.handle(&late, 1).await.expect("handled");
        let refused = reply.outcome.into_result().expect_err("refused");
        assert_eq!(refused.kind, saga_core::StepErrorKind::Business);
        assert!(journal.of(saga).is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_handler_slower_than_its_step_timeout_takes_effect_once() {
        let saga = Saga::<Trip>::builder("trip")
            .default_timeout(Duration::from_millis(100))
            .step("hotel", |step| {
                step.invoke(book::<HOTELS>("hotel"))
                    .compensate(undo::<HOTELS>("hotel"))
                    .retry(RetryPolicy::fixed(Duration::from_millis(10)).max_attempts(10))
            })
            .build()
            .expect("valid");
        let journal = Journal::default();
        let transport = InMemoryTransport::new();
        let store = InMemoryStore::new();
        let engine = engine_on(&store, transport.clone(), &saga);
        let mut stack = Stack::new(transport);
        stack.run_engine(&engine);
        stack.serve(bookings::<HOTELS>(&journal, Duration::from_millis(450)));
        let id = engine.start(&saga, Trip::default()).await.expect("start");
        let done = engine.wait(id, WAIT).await.expect("ends");
        assert_eq!(done.status, SagaStatus::Completed);
        // The later attempts' copies may still be in their handler: let them end.
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(journal.of(id), vec!["book hotel"]);
        let logs = engine.logs(id).await.expect("logs");
        assert!(events(&logs).contains(&LogEvent::StepTimedOut), "{logs:#?}");
        assert_no_duplicate_dispatch(&logs);
        stack.shutdown().await;
    }
}

// ---- 2. a late copy of a command nothing can refuse ---------------------------

mod late_copies {
    use super::*;

    /// The checkout's shape: confirm is the pivot, so an outage of its
    /// participant longer than any retry budget ends with the saga completed,
    /// never with a confirmation behind a compensation.
    #[tokio::test(start_paused = true)]
    async fn an_outage_longer_than_the_retry_budget_ends_consistent() {
        let saga = Saga::<Trip>::builder("checkout")
            .default_timeout(Duration::from_millis(100))
            .default_retry(RetryPolicy::fixed(Duration::from_millis(50)).max_attempts(3))
            .step("pay", |step| {
                step.invoke(book::<PAYMENT>("payment"))
                    .compensate(undo::<PAYMENT>("payment"))
            })
            .step("confirm", |step| {
                step.invoke(book::<ORDERS>("order")).pivot()
            })
            .build()
            .expect("valid");
        let journal = Journal::default();
        let transport = InMemoryTransport::with_limits(32, 1_000);
        let store = InMemoryStore::new();
        let engine = engine_on(&store, transport.clone(), &saga);
        let mut stack = Stack::new(transport);
        stack.run_engine(&engine);
        stack.serve(bookings::<PAYMENT>(&journal, Duration::ZERO));
        let id = engine.start(&saga, Trip::default()).await.expect("start");
        // The order service is down for ten times the step's whole budget.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let waiting = engine.get(id).await.expect("get").expect("exists");
        assert_eq!(waiting.status, SagaStatus::Running, "{waiting:?}");
        stack.serve(bookings::<ORDERS>(&journal, Duration::ZERO));
        let done = engine.wait(id, WAIT).await.expect("ends");
        assert_eq!(done.status, SagaStatus::Completed);
        assert_eq!(journal.of(id), vec!["book payment", "book order"]);
        stack.shutdown().await;
    }

    #[test]
    fn the_builder_refuses_a_step_whose_late_copy_nothing_could_refuse() {
        let old_checkout = Saga::<Trip>::builder("checkout")
            .step("pay", |step| {
                step.invoke(book::<PAYMENT>("payment"))
                    .compensate(undo::<PAYMENT>("payment"))
            })
            .step("confirm", |step| step.invoke(book::<ORDERS>("order")))
            .build();
        let Err(Error::InvalidDefinition { reason, .. }) = old_checkout else {
            panic!("the old checkout shape must be refused");
        };
        assert!(reason.contains("step `confirm`"), "{reason}");
    }
}

// ---- 3. an operator's retry runs the step again --------------------------------

mod operator_retry {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn fix_the_cause_then_retry_executes_the_step_again() {
        let saga = Saga::<Trip>::builder("ship")
            .default_timeout(Duration::from_millis(100))
            .step("pay", |step| step.invoke(book::<SHOP>("pay")).pivot())
            .step("ship", |step| step.invoke(book::<SHOP>("ship")).retriable())
            .build()
            .expect("valid");
        let journal = Journal::default();
        let address_fixed = Arc::new(AtomicBool::new(false));
        let shop = {
            let (journal, fixed) = (journal.clone(), Arc::clone(&address_fixed));
            Participant::builder()
                .inbox(InMemoryInbox::new())
                .on(move |cmd: Book<SHOP>, ctx| {
                    let (journal, fixed) = (journal.clone(), Arc::clone(&fixed));
                    async move {
                        if cmd.what == "ship" && !fixed.load(Ordering::SeqCst) {
                            return Err(StepError::business("no such address"));
                        }
                        journal.push(ctx.saga_id, format!("book {}", cmd.what));
                        Ok("ok".to_owned())
                    }
                })
                .build()
                .expect("valid participant")
        };
        let transport = InMemoryTransport::new();
        let store = InMemoryStore::new();
        let engine = engine_on(&store, transport.clone(), &saga);
        let mut stack = Stack::new(transport);
        stack.run_engine(&engine);
        stack.serve(shop);
        let id = engine.start(&saga, Trip::default()).await.expect("start");
        let failed = engine.wait(id, WAIT).await.expect("stops");
        assert_eq!(failed.status, SagaStatus::Failed, "{failed:?}");

        address_fixed.store(true, Ordering::SeqCst);
        let retried = engine.retry(id).await.expect("retry");
        assert_eq!(retried.status, SagaStatus::Running);
        let done = engine.wait(id, WAIT).await.expect("ends");
        assert_eq!(done.status, SagaStatus::Completed, "{done:?}");
        assert_eq!(journal.of(id), vec!["book pay", "book ship"]);
        let logs = engine.logs(id).await.expect("logs");
        assert_no_duplicate_dispatch(&logs);
        let ship_attempts: Vec<u32> = logs
            .iter()
            .filter(|l| l.event == LogEvent::StepDispatched && l.step.as_deref() == Some("ship"))
            .filter_map(|l| l.attempt)
            .collect();
        assert_eq!(
            ship_attempts,
            vec![1, 2],
            "a new attempt, not attempt 1 again"
        );
        stack.shutdown().await;
    }
}

// ---- 4. replies wait instead of reaching the dead-letter queue ------------------

/// A store that can be switched off (every call fails as unavailable), or told
/// to commit the next save or create and then report an error (as when the
/// connection drops while committing), or to fail the next loads.
#[derive(Clone)]
struct FlakyStore {
    inner: InMemoryStore,
    down: Arc<AtomicBool>,
    lie_on_next_save: Arc<AtomicBool>,
    /// Arms `lie_on_next_save` after this many more saves (0: off).
    saves_before_the_lie: Arc<AtomicU32>,
    /// The next claim of due sagas panics (a store with a bug).
    panic_on_next_claim: Arc<AtomicBool>,
    lie_on_next_create: Arc<AtomicBool>,
    /// How long loads fail once the lie of `lie_on_next_save` is told.
    load_outage_after_the_lie: Arc<Mutex<Duration>>,
    /// Loads fail until then, and count as they do.
    loads_down_until: Arc<Mutex<Option<tokio::time::Instant>>>,
    failed_loads: Arc<AtomicU32>,
}

impl FlakyStore {
    fn new(inner: InMemoryStore) -> Self {
        Self {
            inner,
            down: Arc::default(),
            lie_on_next_save: Arc::default(),
            saves_before_the_lie: Arc::default(),
            panic_on_next_claim: Arc::default(),
            lie_on_next_create: Arc::default(),
            load_outage_after_the_lie: Arc::default(),
            loads_down_until: Arc::default(),
            failed_loads: Arc::default(),
        }
    }

    fn check(&self) -> saga_core::Result<()> {
        if self.down.load(Ordering::SeqCst) {
            Err(Error::backend(ErrorKind::Unavailable, "database is down"))
        } else {
            Ok(())
        }
    }
}

#[async_trait]
impl SagaStore for FlakyStore {
    async fn create(&self, i: &SagaInstance, logs: &[LogEntry]) -> saga_core::Result<Created> {
        self.check()?;
        let created = self.inner.create(i, logs).await?;
        if self.lie_on_next_create.swap(false, Ordering::SeqCst) {
            return Err(Error::backend(
                ErrorKind::Unavailable,
                "connection lost while committing",
            ));
        }
        Ok(created)
    }
    async fn load(&self, id: SagaId) -> saga_core::Result<Option<SagaInstance>> {
        self.check()?;
        let down_until = *self.loads_down_until.lock().expect("outage");
        if down_until.is_some_and(|until| tokio::time::Instant::now() < until) {
            self.failed_loads.fetch_add(1, Ordering::SeqCst);
            return Err(Error::backend(ErrorKind::Unavailable, "database is down"));
        }
        self.inner.load(id).await
    }
    async fn save(&self, i: &SagaInstance, v: u64, logs: &[LogEntry]) -> saga_core::Result<()> {
        self.check()?;
        self.inner.save(i, v, logs).await?;
        if take_one(&self.saves_before_the_lie)
            && self.saves_before_the_lie.load(Ordering::SeqCst) == 0
        {
            self.lie_on_next_save.store(true, Ordering::SeqCst);
        }
        if self.lie_on_next_save.swap(false, Ordering::SeqCst) {
            let outage = *self.load_outage_after_the_lie.lock().expect("outage");
            *self.loads_down_until.lock().expect("outage") =
                Some(tokio::time::Instant::now() + outage);
            return Err(Error::backend(
                ErrorKind::Unavailable,
                "connection lost while committing",
            ));
        }
        Ok(())
    }
    async fn claim_due(
        &self,
        now: DateTime<Utc>,
        limit: usize,
        owner: &str,
        lease: Duration,
        definitions: &[DefinitionKey],
    ) -> saga_core::Result<Vec<SagaInstance>> {
        self.check()?;
        assert!(
            !self.panic_on_next_claim.swap(false, Ordering::SeqCst),
            "a store with a bug"
        );
        self.inner
            .claim_due(now, limit, owner, lease, definitions)
            .await
    }
    async fn logs(&self, id: SagaId) -> saga_core::Result<Vec<LogEntry>> {
        self.inner.logs(id).await
    }
    async fn list(&self, query: &SagaQuery) -> saga_core::Result<Vec<SagaInstance>> {
        self.check()?;
        self.inner.list(query).await
    }
    async fn prune(&self, before: DateTime<Utc>, batch: usize) -> saga_core::Result<usize> {
        self.check()?;
        self.inner.prune(before, batch).await
    }
}

mod replies_wait {
    use super::*;

    fn two_steps(version: u32) -> Saga<Trip> {
        Saga::<Trip>::builder("trip")
            .version(version)
            .default_timeout(Duration::from_secs(3_600))
            .step("flight", |step| {
                step.invoke(book::<TRAVEL>("flight"))
                    .compensate(undo::<TRAVEL>("flight"))
            })
            .step("hotel", |step| {
                step.invoke(book::<TRAVEL>("hotel"))
                    .compensate(undo::<TRAVEL>("hotel"))
            })
            .build()
            .expect("valid")
    }

    #[tokio::test(start_paused = true)]
    async fn a_minute_long_store_outage_dead_letters_no_reply() {
        let saga = two_steps(1);
        let journal = Journal::default();
        let transport = InMemoryTransport::with_limits(32, 4);
        let store = FlakyStore::new(InMemoryStore::new());
        let engine = engine_on(&store, transport.clone(), &saga);
        let mut stack = Stack::new(transport.clone());
        let mut ids = Vec::new();
        for _ in 0..8 {
            ids.push(engine.start(&saga, Trip::default()).await.expect("start"));
        }
        // The participant answers while the orchestrator's database is down.
        store.down.store(true, Ordering::SeqCst);
        stack.run_engine(&engine);
        stack.serve(bookings::<TRAVEL>(&journal, Duration::ZERO));
        tokio::time::sleep(Duration::from_secs(75)).await;
        store.down.store(false, Ordering::SeqCst);
        for id in ids {
            let done = engine.wait(id, WAIT).await.expect("ends");
            assert_eq!(done.status, SagaStatus::Completed);
        }
        assert!(
            transport.dead_letters("saga_replies").is_empty(),
            "{:?}",
            transport.dead_letters("saga_replies")
        );
        stack.shutdown().await;
    }

    #[tokio::test(start_paused = true)]
    async fn replies_of_a_newer_definition_wait_for_an_engine_that_has_it() {
        let (v1, v2) = (two_steps(1), two_steps(2));
        let journal = Journal::default();
        let transport = InMemoryTransport::with_limits(32, 4);
        let store = InMemoryStore::new();
        // A rolling deploy: an old engine next to a new one, one reply queue.
        let old = engine_on(&store, transport.clone(), &v1);
        let mut config = EngineConfig::default();
        config.poll_interval = Duration::from_millis(10);
        let new = Engine::builder(store.clone(), transport.clone())
            .register(&v1)
            .register(&v2)
            .clock(Arc::new(TokioClock::new()))
            .config(config)
            .build();
        let mut stack = Stack::new(transport.clone());
        stack.run_engine(&old);
        stack.run_engine(&new);
        stack.serve(bookings::<TRAVEL>(&journal, Duration::ZERO));
        let mut ids = Vec::new();
        for _ in 0..10 {
            ids.push(new.start(&v2, Trip::default()).await.expect("start"));
        }
        for id in ids {
            let done = new.wait(id, WAIT).await.expect("ends");
            assert_eq!(done.status, SagaStatus::Completed);
        }
        assert!(
            transport.dead_letters("saga_replies").is_empty(),
            "{:?}",
            transport.dead_letters("saga_replies")
        );
        stack.shutdown().await;
    }
}

// ---- 5. a command lost between commit and send costs no attempt ------------------

/// A transport that fails (or silently loses, like a crash between commit and
/// send) the next `n` commands.
#[derive(Clone)]
struct LossyTransport {
    inner: InMemoryTransport,
    fail: Arc<AtomicU32>,
    lose: Arc<AtomicU32>,
    /// Commands handed to the broker.
    sent: Arc<AtomicU32>,
}

impl LossyTransport {
    fn new(inner: InMemoryTransport) -> Self {
        Self {
            inner,
            fail: Arc::default(),
            lose: Arc::default(),
            sent: Arc::default(),
        }
    }
}

fn take_one(counter: &AtomicU32) -> bool {
    counter
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}

#[async_trait]
impl Transport for LossyTransport {
    async fn send_command(&self, command: &CommandMessage) -> saga_core::Result<()> {
        if take_one(&self.fail) {
            return Err(Error::backend(ErrorKind::Unavailable, "broker unreachable"));
        }
        if take_one(&self.lose) {
            return Ok(());
        }
        self.sent.fetch_add(1, Ordering::SeqCst);
        self.inner.send_command(command).await
    }
    async fn send_reply(&self, reply: &ReplyMessage) -> saga_core::Result<()> {
        self.inner.send_reply(reply).await
    }
    async fn consume_commands(&self, e: &str) -> saga_core::Result<Subscription<CommandMessage>> {
        self.inner.consume_commands(e).await
    }
    async fn consume_replies(&self, q: &str) -> saga_core::Result<Subscription<ReplyMessage>> {
        self.inner.consume_replies(q).await
    }
}

mod lost_commands {
    use super::*;

    /// One attempt and a timeout of an hour: only a re-send of the same
    /// attempt can finish the saga in time.
    fn one_attempt() -> Saga<Trip> {
        Saga::<Trip>::builder("trip")
            .default_timeout(Duration::from_secs(3_600))
            .default_retry(RetryPolicy::none())
            .step("flight", |step| {
                step.invoke(book::<TRAVEL>("flight"))
                    .compensate(undo::<TRAVEL>("flight"))
            })
            .step("hotel", |step| {
                step.invoke(book::<TRAVEL>("hotel"))
                    .compensate(undo::<TRAVEL>("hotel"))
            })
            .build()
            .expect("valid")
    }

    fn assert_completed_in_one_attempt_each(logs: &[LogEntry]) {
        assert_no_duplicate_dispatch(logs);
        assert!(
            logs.iter()
                .filter(|l| l.event == LogEvent::StepDispatched)
                .all(|l| l.attempt == Some(1)),
            "{logs:#?}"
        );
        assert!(!events(logs).contains(&LogEvent::StepTimedOut));
    }

    #[tokio::test(start_paused = true)]
    async fn a_send_that_fails_is_sent_again_from_the_store() {
        let saga = one_attempt();
        let journal = Journal::default();
        let transport = InMemoryTransport::new();
        let lossy = LossyTransport::new(transport.clone());
        lossy.fail.store(3, Ordering::SeqCst);
        let store = InMemoryStore::new();
        let engine = engine_on(&store, lossy.clone(), &saga);
        let mut stack = Stack::new(transport);
        stack.run_engine(&engine);
        stack.serve(bookings::<TRAVEL>(&journal, Duration::ZERO));
        let id = engine.start(&saga, Trip::default()).await.expect("start");
        let done = engine
            .wait(id, Duration::from_secs(60))
            .await
            .expect("ends");
        assert_eq!(done.status, SagaStatus::Completed);
        let logs = engine.logs(id).await.expect("logs");
        assert_eq!(
            events(&logs)
                .iter()
                .filter(|e| **e == LogEvent::SendFailed)
                .count(),
            3
        );
        assert_completed_in_one_attempt_each(&logs);
        stack.shutdown().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_command_lost_in_a_crash_is_sent_again_at_start_up() {
        let saga = one_attempt();
        let journal = Journal::default();
        let transport = InMemoryTransport::new();
        let store = InMemoryStore::new();
        // The first engine commits the saga and "crashes" before its command
        // reaches the broker.
        let lossy = LossyTransport::new(transport.clone());
        lossy.lose.store(1, Ordering::SeqCst);
        let crashed = engine_on(&store, lossy, &saga);
        let id = crashed.start(&saga, Trip::default()).await.expect("start");
        drop(crashed);
        let restarted = engine_on(&store, transport.clone(), &saga);
        let mut stack = Stack::new(transport);
        stack.run_engine(&restarted);
        stack.serve(bookings::<TRAVEL>(&journal, Duration::ZERO));
        let done = restarted
            .wait(id, Duration::from_secs(60))
            .await
            .expect("ends long before the timeout");
        assert_eq!(done.status, SagaStatus::Completed);
        assert_eq!(journal.of(id), vec!["book flight", "book hotel"]);
        assert_completed_in_one_attempt_each(&restarted.logs(id).await.expect("logs"));
        stack.shutdown().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_saga_started_before_the_engine_runs_is_not_sent_twice() {
        let saga = one_attempt();
        let journal = Journal::default();
        let transport = InMemoryTransport::new();
        let counting = LossyTransport::new(transport.clone());
        let store = InMemoryStore::new();
        let engine = engine_on(&store, counting.clone(), &saga);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let id = engine.start(&saga, Trip::default()).await.expect("start");
        assert_eq!(counting.sent.load(Ordering::SeqCst), 1);

        // The start-up resend runs and finds the saga: its command went out
        // through this very engine, so it is not sent again.
        let mut stack = Stack::new(transport);
        stack.run_engine(&engine);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(
            counting.sent.load(Ordering::SeqCst),
            1,
            "the start-up resend sent the new saga's command a second time"
        );
        stack.serve(bookings::<TRAVEL>(&journal, Duration::ZERO));
        let done = engine
            .wait(id, Duration::from_secs(60))
            .await
            .expect("ends");
        assert_eq!(done.status, SagaStatus::Completed);
        assert_eq!(
            counting.sent.load(Ordering::SeqCst),
            2,
            "flight, then hotel"
        );
        stack.shutdown().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_save_that_committed_but_reported_an_error_still_sends() {
        let saga = one_attempt();
        let journal = Journal::default();
        let transport = InMemoryTransport::new();
        let store = FlakyStore::new(InMemoryStore::new());
        let engine = engine_on(&store, transport.clone(), &saga);
        let mut stack = Stack::new(transport);
        stack.run_engine(&engine);
        stack.serve(bookings::<TRAVEL>(&journal, Duration::ZERO));
        // The save that dispatches `hotel` commits, then the connection drops.
        store.lie_on_next_save.store(true, Ordering::SeqCst);
        let id = engine.start(&saga, Trip::default()).await.expect("start");
        let done = engine
            .wait(id, Duration::from_secs(60))
            .await
            .expect("ends");
        assert_eq!(done.status, SagaStatus::Completed);
        assert!(
            !store.lie_on_next_save.load(Ordering::SeqCst),
            "the lie was told"
        );
        assert_completed_in_one_attempt_each(&engine.logs(id).await.expect("logs"));
        stack.shutdown().await;
    }

    /// The saga's end within a minute. The waiter reads the store too, and
    /// fails while the store is down: it waits again.
    async fn wait_through_outages(engine: &Engine, id: SagaId) -> SagaInstance {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            match engine
                .wait(id, deadline - tokio::time::Instant::now())
                .await
            {
                Err(e) if e.kind() == ErrorKind::Unavailable => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                waited => return waited.expect("ends"),
            }
        }
    }

    /// Runs `one_attempt` on `store` after `arm` set up a lie; the saga must
    /// end within a minute (its timeout is an hour), each step dispatched
    /// once and booked once.
    async fn completes_despite(store: FlakyStore, arm: impl FnOnce(&FlakyStore)) {
        let saga = one_attempt();
        let journal = Journal::default();
        let transport = InMemoryTransport::new();
        let engine = engine_on(&store, transport.clone(), &saga);
        let mut stack = Stack::new(transport);
        stack.run_engine(&engine);
        stack.serve(bookings::<TRAVEL>(&journal, Duration::ZERO));
        arm(&store);
        let id = engine.start(&saga, Trip::default()).await.expect("start");
        let done = wait_through_outages(&engine, id).await;
        assert_eq!(done.status, SagaStatus::Completed);
        assert_completed_in_one_attempt_each(&engine.logs(id).await.expect("logs"));
        assert_eq!(journal.of(id), vec!["book flight", "book hotel"]);
        stack.shutdown().await;
    }

    /// Two copies of one reply (a command sent twice, both answered) applied
    /// by two engines from the same state: the second one's save conflicts
    /// with the first one's identical transition. It is another writer's,
    /// not a save of this engine's whose outcome was unknown: the loser
    /// applies the reply again, ignores it, and sends nothing.
    #[tokio::test(start_paused = true)]
    async fn the_loser_of_a_conflict_does_not_send_the_winner_s_command() {
        let saga = one_attempt();
        let transport = InMemoryTransport::new();
        let store = InMemoryStore::new();
        let first = engine_on(&store, transport.clone(), &saga);
        let second = engine_on(&store, transport.clone(), &saga);
        // `second` starts the saga, so it holds its first state.
        let id = second.start(&saga, Trip::default()).await.expect("start");
        let flight = ReplyMessage {
            message_id: "flight-reply".into(),
            saga_id: id,
            step: 0,
            step_name: "flight".into(),
            direction: Direction::Invoke,
            attempt: 1,
            reply_to: Some("saga_replies".into()),
            outcome: saga_core::adapter::ReplyOutcome::Success(serde_json::json!("flight-ref")),
            headers: Default::default(),
        };
        first.handle_reply(flight.clone()).await.expect("applied");
        second.handle_reply(flight).await.expect("ignored");
        assert_eq!(
            transport.ready_count(ENDPOINTS[TRAVEL]),
            2,
            "flight once, hotel once"
        );
        let logs = first.logs(id).await.expect("logs");
        assert!(events(&logs).contains(&LogEvent::ReplyIgnored), "{logs:#?}");
        assert_no_duplicate_dispatch(&logs);
    }

    /// The read-back after the error fails too, for `outage`.
    async fn completes_despite_a_read_back_outage(outage: Duration) {
        let store = FlakyStore::new(InMemoryStore::new());
        completes_despite(store.clone(), |s| {
            *s.load_outage_after_the_lie.lock().expect("outage") = outage;
            s.lie_on_next_save.store(true, Ordering::SeqCst);
        })
        .await;
        assert!(
            !store.lie_on_next_save.load(Ordering::SeqCst),
            "the lie was told"
        );
        assert!(
            store.failed_loads.load(Ordering::SeqCst) > 0,
            "a load failed"
        );
    }

    /// The read-back is tried again while the store does not answer.
    #[tokio::test(start_paused = true)]
    async fn a_save_whose_read_back_fails_for_a_moment_still_sends() {
        completes_despite_a_read_back_outage(Duration::from_secs(2)).await;
    }

    /// The save that dispatches a retry (a wake of the poller) commits and
    /// reports an error, and the store does not answer for a moment: read
    /// back once, the outcome stayed unknown and the saga, no longer due,
    /// waited for its hour-long timeout before anything was sent.
    #[tokio::test(start_paused = true)]
    async fn a_wake_whose_save_and_read_back_fail_for_a_moment_still_sends() {
        let saga = Saga::<Trip>::builder("trip")
            .default_timeout(Duration::from_secs(3_600))
            .step("flight", |step| {
                step.invoke(book::<TRAVEL>("flight"))
                    .compensate(undo::<TRAVEL>("flight"))
                    .retry(RetryPolicy::fixed(Duration::from_secs(1)).max_attempts(2))
            })
            .build()
            .expect("valid");
        let transport = InMemoryTransport::new();
        let store = FlakyStore::new(InMemoryStore::new());
        let engine = engine_on(&store, transport.clone(), &saga);
        let mut stack = Stack::new(transport);
        stack.run_engine(&engine);
        // Busy at the first attempt: the second is the poller's.
        stack.serve(
            Participant::builder()
                .inbox(InMemoryInbox::new())
                .on(|cmd: Book<TRAVEL>, ctx| async move {
                    if ctx.attempt == 1 {
                        Err(StepError::retryable("busy"))
                    } else {
                        Ok(format!("{}-ref", cmd.what))
                    }
                })
                .on(|_: Undo<TRAVEL>, _| async { Ok(()) })
                .build()
                .expect("valid participant"),
        );
        // Save 1 schedules the retry; save 2, the wake's, dispatches it.
        *store.load_outage_after_the_lie.lock().expect("outage") = Duration::from_secs(2);
        store.saves_before_the_lie.store(2, Ordering::SeqCst);
        let id = engine.start(&saga, Trip::default()).await.expect("start");
        let done = wait_through_outages(&engine, id).await;
        assert_eq!(done.status, SagaStatus::Completed);
        assert!(
            store.failed_loads.load(Ordering::SeqCst) > 0,
            "a load failed"
        );
        let logs = engine.logs(id).await.expect("logs");
        assert!(
            !events(&logs).contains(&LogEvent::StepTimedOut),
            "{logs:#?}"
        );
        stack.shutdown().await;
    }

    /// Longer than the read-back's patience: the reply is applied again
    /// later, meets its own transition stored, and sends what it dispatched.
    #[tokio::test(start_paused = true)]
    async fn a_save_whose_read_back_fails_for_long_still_sends() {
        completes_despite_a_read_back_outage(Duration::from_secs(20)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_create_that_committed_but_reported_an_error_still_sends() {
        let store = FlakyStore::new(InMemoryStore::new());
        completes_despite(store.clone(), |s| {
            s.lie_on_next_create.store(true, Ordering::SeqCst);
        })
        .await;
        assert!(
            !store.lie_on_next_create.load(Ordering::SeqCst),
            "the lie was told"
        );
    }
}

// ---- 6. local steps ------------------------------------------------------------

mod local_steps {
    use super::*;

    /// Counts the attempts running at once, also when one is dropped.
    struct Running(Arc<AtomicU32>);

    impl Running {
        fn enter(running: &Arc<AtomicU32>, most: &AtomicU32) -> Self {
            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
            most.fetch_max(now, Ordering::SeqCst);
            Self(Arc::clone(running))
        }
    }

    impl Drop for Running {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn every_attempt_carries_the_same_key_and_attempts_never_overlap() {
        let running = Arc::new(AtomicU32::new(0));
        let most = Arc::new(AtomicU32::new(0));
        let keys = Arc::new(Mutex::new(Vec::new()));
        let saga = {
            let (running, most, keys) =
                (Arc::clone(&running), Arc::clone(&most), Arc::clone(&keys));
            Saga::<Trip>::builder("slow")
                .step("score", |step| {
                    step.local(move |_t: Trip, ctx| {
                        let (running, most, keys) =
                            (Arc::clone(&running), Arc::clone(&most), Arc::clone(&keys));
                        async move {
                            keys.lock().expect("keys").push(ctx.idempotency_key.clone());
                            let _running = Running::enter(&running, &most);
                            // Slower than the timeout every time but the last.
                            let slow = ctx.attempt < 3;
                            tokio::time::sleep(if slow {
                                Duration::from_secs(10)
                            } else {
                                Duration::from_millis(10)
                            })
                            .await;
                            Ok(7u32)
                        }
                    })
                    .compensate_local(|_t: Trip, _| async { Ok(()) })
                    .timeout(Duration::from_millis(500))
                    .retry(RetryPolicy::fixed(Duration::from_millis(10)).max_attempts(5))
                })
                .build()
                .expect("valid")
        };
        let store = InMemoryStore::new();
        let engine = engine_on(&store, InMemoryTransport::new(), &saga);
        let mut stack = Stack::new(InMemoryTransport::new());
        stack.run_engine(&engine);
        let id = engine.start(&saga, Trip::default()).await.expect("start");
        let done = engine.wait(id, WAIT).await.expect("ends");
        assert_eq!(done.status, SagaStatus::Completed, "{done:?}");
        assert_eq!(most.load(Ordering::SeqCst), 1, "attempts never overlap");
        let keys = keys.lock().expect("keys").clone();
        assert_eq!(keys.len(), 3);
        assert!(
            keys.iter()
                .all(|k| k.as_str() == format!("{id}:score:invoke")),
            "{keys:?}"
        );
        stack.shutdown().await;
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_waits_for_a_local_step_in_flight() {
        let finished = Arc::new(AtomicBool::new(false));
        let saga = {
            let finished = Arc::clone(&finished);
            Saga::<Trip>::builder("drain")
                .step("work", |step| {
                    step.local(move |_t: Trip, _| {
                        let finished = Arc::clone(&finished);
                        async move {
                            tokio::time::sleep(Duration::from_secs(2)).await;
                            finished.store(true, Ordering::SeqCst);
                            Ok(())
                        }
                    })
                    .compensate_local(|_t: Trip, _| async { Ok(()) })
                    .timeout(Duration::from_secs(30))
                })
                .build()
                .expect("valid")
        };
        let store = InMemoryStore::new();
        let engine = engine_on(&store, InMemoryTransport::new(), &saga);
        let (stop, rx) = watch::channel(false);
        let runner = tokio::spawn({
            let engine = engine.clone();
            async move { engine.run(stopped(rx)).await }
        });
        let id = engine.start(&saga, Trip::default()).await.expect("start");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let _ = stop.send(true);
        runner.await.expect("task").expect("engine");
        assert!(
            finished.load(Ordering::SeqCst),
            "run returned before the step ended"
        );
        let saved = engine.get(id).await.expect("get").expect("exists");
        assert_eq!(saved.status, SagaStatus::Completed, "its result was saved");
    }
}

// ---- 7. smaller ones -------------------------------------------------------------

mod smaller {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_duplicate_reply_to_a_finished_saga_writes_nothing() {
        let saga = Saga::<Trip>::builder("trip")
            .step("flight", |step| {
                step.invoke(book::<TRAVEL>("flight"))
                    .compensate(undo::<TRAVEL>("flight"))
            })
            .build()
            .expect("valid");
        let journal = Journal::default();
        let transport = InMemoryTransport::new();
        let store = InMemoryStore::new();
        let engine = engine_on(&store, transport.clone(), &saga);
        let mut stack = Stack::new(transport.clone());
        stack.run_engine(&engine);
        stack.serve(bookings::<TRAVEL>(&journal, Duration::ZERO));
        let id = engine.start(&saga, Trip::default()).await.expect("start");
        let done = engine.wait(id, WAIT).await.expect("ends");
        let logs = engine.logs(id).await.expect("logs");
        let first = logs
            .iter()
            .find(|l| l.event == LogEvent::StepDispatched)
            .expect("dispatched");
        let reply = ReplyMessage {
            message_id: "dup".into(),
            saga_id: id,
            step: 0,
            step_name: "flight".into(),
            direction: Direction::Invoke,
            attempt: first.attempt.unwrap_or(1),
            reply_to: Some("saga_replies".into()),
            outcome: saga_core::adapter::ReplyOutcome::Success(serde_json::json!("flight-ref")),
            headers: Default::default(),
        };
        for _ in 0..5 {
            engine.handle_reply(reply.clone()).await.expect("ignored");
        }
        let after = engine.get(id).await.expect("get").expect("exists");
        assert_eq!(after.version, done.version, "no version bump");
        assert_eq!(engine.logs(id).await.expect("logs"), logs, "no log row");
        stack.shutdown().await;
    }

    /// A command without `reply_to` is dead-lettered before its handler
    /// runs: its effects would be applied for a reply that can go nowhere.
    #[tokio::test(start_paused = true)]
    async fn a_command_without_reply_to_is_refused_before_its_handler_runs() {
        let journal = Journal::default();
        let transport = InMemoryTransport::new();
        let mut stack = Stack::new(transport.clone());
        stack.serve(bookings::<HOTELS>(&journal, Duration::ZERO));
        let saga = SagaId::new();
        let mut orphan = command(saga, "hotel", Direction::Invoke, "hotel");
        orphan.reply_to = None;
        transport.send_command(&orphan).await.expect("send");
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(journal.of(saga).is_empty(), "{:?}", journal.of(saga));
        let dead = transport.dead_letters("hotels");
        assert_eq!(dead.len(), 1, "{dead:?}");
        stack.shutdown().await;
    }

    /// A zero poll interval and claim batch are taken as the smallest ones:
    /// the poller used to die on the zero interval, silently, and with it
    /// every timeout, retry and re-send.
    #[tokio::test(start_paused = true)]
    async fn a_zero_poll_interval_and_claim_batch_still_time_steps_out() {
        let saga = Saga::<Trip>::builder("trip")
            .step("flight", |step| {
                step.invoke(book::<TRAVEL>("flight"))
                    .compensate(undo::<TRAVEL>("flight"))
                    .timeout(Duration::from_secs(1))
                    .retry(RetryPolicy::fixed(Duration::from_secs(1)).max_attempts(2))
            })
            .build()
            .expect("valid");
        let transport = InMemoryTransport::new();
        let store = InMemoryStore::new();
        let engine = Engine::builder(store, transport.clone())
            .register(&saga)
            .clock(Arc::new(TokioClock::new()))
            .poll_interval(Duration::ZERO)
            .claim_batch(0)
            .build();
        let mut stack = Stack::new(transport);
        stack.run_engine(&engine);
        // Nobody serves `travel`: only the poller can move the saga on.
        let id = engine.start(&saga, Trip::default()).await.expect("start");
        tokio::time::sleep(Duration::from_secs(10)).await;
        let logs = engine.logs(id).await.expect("logs");
        assert!(
            logs.iter()
                .any(|l| l.event == LogEvent::StepDispatched && l.attempt == Some(2)),
            "the timeout started a second attempt: {logs:#?}"
        );
        stack.shutdown().await;
    }

    /// A payload closure that panics for one saga's data (on its second
    /// call: the start-up re-send or the retry) stays that saga's problem:
    /// the engine goes on, and the other saga's timeout starts its retry.
    #[tokio::test(start_paused = true)]
    async fn a_panic_waking_one_saga_leaves_the_others_and_the_engine_running() {
        let calls = Arc::new(Mutex::new(std::collections::HashMap::<String, u32>::new()));
        let counted = Arc::clone(&calls);
        let saga = Saga::<Trip>::builder("trip")
            .step("flight", move |step| {
                step.invoke(move |trip: &Trip| {
                    let what = trip.refs.first().cloned().unwrap_or_default();
                    let n = {
                        let mut calls = counted.lock().expect("calls");
                        let n = calls.entry(what.clone()).or_default();
                        *n += 1;
                        *n
                    };
                    assert!(what != "bug" || n == 1, "a payload closure with a bug");
                    Book::<TRAVEL> { what }
                })
                .compensate(undo::<TRAVEL>("flight"))
                .timeout(Duration::from_secs(1))
                .retry(RetryPolicy::fixed(Duration::from_secs(1)).max_attempts(2))
            })
            .build()
            .expect("valid");
        let store = InMemoryStore::new();
        let engine = engine_on(&store, InMemoryTransport::new(), &saga);
        let trip = |what: &str| Trip {
            refs: vec![what.to_owned()],
        };
        let buggy = engine.start(&saga, trip("bug")).await.expect("start");
        let fine = engine.start(&saga, trip("fine")).await.expect("start");
        // Nobody serves `travel`: both time out and retry.
        let running = tokio::spawn({
            let engine = engine.clone();
            async move { engine.run(std::future::pending()).await }
        });
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(!running.is_finished(), "the engine still runs");
        let second_attempt = |logs: &[LogEntry]| {
            logs.iter()
                .any(|l| l.event == LogEvent::StepDispatched && l.attempt == Some(2))
        };
        assert!(second_attempt(&engine.logs(fine).await.expect("logs")));
        assert!(!second_attempt(&engine.logs(buggy).await.expect("logs")));
        assert!(calls.lock().expect("calls")["bug"] >= 2, "the bug was hit");
        running.abort();
    }

    /// A panic in the poller outside any saga's wake (here in the store)
    /// stops the engine and comes out of `run`, instead of leaving an engine
    /// that consumes replies but never times a step out again.
    #[tokio::test(start_paused = true)]
    async fn a_panic_in_the_poller_outside_a_wake_comes_out_of_run() {
        let saga = Saga::<Trip>::builder("trip")
            .step("flight", |step| {
                step.invoke(book::<TRAVEL>("flight"))
                    .compensate(undo::<TRAVEL>("flight"))
            })
            .build()
            .expect("valid");
        let store = FlakyStore::new(InMemoryStore::new());
        let engine = engine_on(&store, InMemoryTransport::new(), &saga);
        store.panic_on_next_claim.store(true, Ordering::SeqCst);
        let running = tokio::spawn({
            let engine = engine.clone();
            async move { engine.run(std::future::pending()).await }
        });
        let ended = tokio::time::timeout(Duration::from_secs(60), running)
            .await
            .expect("the engine stopped");
        assert!(ended.expect_err("a panic").is_panic());
    }

    #[test]
    fn clocks_agree_with_tokio_time() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let clock = TokioClock::new();
            let start = clock.now();
            tokio::time::advance(Duration::from_secs(90)).await;
            assert_eq!((clock.now() - start).num_seconds(), 90);
        });
    }
}

// ---- 8. retention ----------------------------------------------------------------

mod retention {
    use super::*;

    /// A participant at `E` that refuses every booking.
    fn refusing<const E: usize>() -> Participant {
        Participant::builder()
            .on(|_: Book<E>, _| async { Err::<String, _>(StepError::business("sold out")) })
            .on(|_: Undo<E>, _| async { Ok(()) })
            .build()
            .expect("valid participant")
    }

    /// A participant at `E` that books but can never undo.
    fn unrefundable<const E: usize>() -> Participant {
        Participant::builder()
            .on(|cmd: Book<E>, _| async move { Ok(format!("{}-ref", cmd.what)) })
            .on(|_: Undo<E>, _| async { Err(StepError::retryable("refunds are down")) })
            .build()
            .expect("valid participant")
    }

    fn retry() -> RetryPolicy {
        RetryPolicy::fixed(Duration::from_millis(10)).max_attempts(2)
    }

    /// Completes: one booking.
    fn completes() -> Saga<Trip> {
        Saga::<Trip>::builder("completes")
            .default_timeout(Duration::from_secs(1))
            .step("flight", |step| {
                step.invoke(book::<TRAVEL>("flight"))
                    .compensate(undo::<TRAVEL>("flight"))
            })
            .build()
            .expect("valid")
    }

    /// Compensates: the second step is refused, the first is undone.
    fn compensates() -> Saga<Trip> {
        Saga::<Trip>::builder("compensates")
            .default_timeout(Duration::from_secs(1))
            .step("flight", |step| {
                step.invoke(book::<TRAVEL>("flight"))
                    .compensate(undo::<TRAVEL>("flight"))
            })
            .step("shop", |step| {
                step.invoke(book::<SHOP>("shop"))
                    .compensate(undo::<SHOP>("shop"))
                    .retry(retry())
            })
            .build()
            .expect("valid")
    }

    /// Fails: the second step is refused and the first cannot be undone.
    fn fails() -> Saga<Trip> {
        Saga::<Trip>::builder("fails")
            .default_timeout(Duration::from_secs(1))
            .step("pay", |step| {
                step.invoke(book::<PAYMENT>("pay"))
                    .compensate(undo::<PAYMENT>("pay"))
                    .compensation_retry(retry())
            })
            .step("shop", |step| {
                step.invoke(book::<SHOP>("shop"))
                    .compensate(undo::<SHOP>("shop"))
                    .retry(retry())
            })
            .build()
            .expect("valid")
    }

    #[tokio::test(start_paused = true)]
    async fn a_running_engine_prunes_finished_sagas_after_the_retention_and_keeps_failed_ones() {
        let (completes, compensates, fails) = (completes(), compensates(), fails());
        let journal = Journal::default();
        let transport = InMemoryTransport::new();
        let store = InMemoryStore::new();
        let clock = Arc::new(TokioClock::new());
        let engine = Engine::builder(store.clone(), transport.clone())
            .register(&completes)
            .register(&compensates)
            .register(&fails)
            .clock(clock.clone())
            .poll_interval(Duration::from_millis(10))
            .retention(Duration::from_secs(3_600))
            .prune_interval(Duration::from_secs(60))
            .prune_batch(2)
            .build();
        let mut stack = Stack::new(transport);
        stack.run_engine(&engine);
        stack.serve(bookings::<TRAVEL>(&journal, Duration::from_millis(5)));
        stack.serve(refusing::<SHOP>());
        stack.serve(unrefundable::<PAYMENT>());

        let mut finished = Vec::new();
        for _ in 0..3 {
            finished.push(
                engine
                    .start(&completes, Trip::default())
                    .await
                    .expect("start"),
            );
        }
        finished.push(
            engine
                .start(&compensates, Trip::default())
                .await
                .expect("start"),
        );
        let failed = engine.start(&fails, Trip::default()).await.expect("start");
        for id in &finished {
            let done = engine.wait(*id, WAIT).await.expect("ends");
            assert!(
                matches!(done.status, SagaStatus::Completed | SagaStatus::Compensated),
                "{done:?}"
            );
        }
        assert_eq!(
            engine.wait(failed, WAIT).await.expect("ends").status,
            SagaStatus::Failed
        );
        let statuses: Vec<SagaStatus> = store.all().iter().map(|s| s.status).collect();
        assert!(statuses.contains(&SagaStatus::Compensated), "{statuses:?}");

        // Within the retention everything stays.
        tokio::time::sleep(Duration::from_secs(1_800)).await;
        assert_eq!(
            store.all().len(),
            5,
            "nothing is pruned before the retention"
        );

        // Past it (and one prune interval), the finished ones go, with their logs.
        tokio::time::sleep(Duration::from_secs(1_800 + 120)).await;
        for id in &finished {
            assert!(
                engine.get(*id).await.expect("get").is_none(),
                "saga {id} pruned"
            );
            assert!(
                engine.logs(*id).await.expect("logs").is_empty(),
                "its log too"
            );
        }
        let left = store.all();
        assert_eq!(
            left.iter().map(|s| (s.id, s.status)).collect::<Vec<_>>(),
            vec![(failed, SagaStatus::Failed)],
            "the failed saga waits for an operator"
        );
        assert!(!engine.logs(failed).await.expect("logs").is_empty());

        // A manual prune takes what the background one has not reached yet.
        let late = engine
            .start(&completes, Trip::default())
            .await
            .expect("start");
        engine.wait(late, WAIT).await.expect("ends");
        assert_eq!(
            engine.prune(clock.now()).await.expect("prune"),
            0,
            "too recent"
        );
        let later = clock.now() + chrono::Duration::seconds(1);
        assert_eq!(engine.prune(later).await.expect("prune"), 1);
        assert_eq!(
            store.all().iter().map(|s| s.id).collect::<Vec<_>>(),
            vec![failed]
        );
        stack.shutdown().await;
    }
}
