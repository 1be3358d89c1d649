//! The engine end to end on the in-memory adapters, with real tasks and time.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use saga_core::memory::{InMemoryInbox, InMemoryStore, InMemoryTransport};
use saga_core::testing::CountingStore;
use saga_core::{
    Command, Engine, EngineConfig, ErrorKind, LogEvent, Participant, RetryPolicy, Saga, SagaStatus,
    StartOptions, StepError, StepStatus, Transport,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

const WAIT: Duration = Duration::from_secs(10);

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Trip {
    fail_at: Option<String>,
    refs: Vec<String>,
}

#[derive(Serialize, Deserialize)]
struct Book {
    what: String,
    fail: bool,
}
impl Command for Book {
    const NAME: &'static str = "book";
    const ENDPOINT: &'static str = "travel";
    type Reply = String;
}

#[derive(Serialize, Deserialize)]
struct Undo {
    what: String,
}
impl Command for Undo {
    const NAME: &'static str = "undo";
    const ENDPOINT: &'static str = "travel";
    type Reply = ();
}

/// A command nobody serves.
#[derive(Serialize, Deserialize)]
struct Unanswered;
impl Command for Unanswered {
    const NAME: &'static str = "unanswered";
    const ENDPOINT: &'static str = "nobody_listens";
    type Reply = ();
}

fn book(step: &'static str) -> impl Fn(&Trip) -> Book + Send + Sync + 'static {
    move |t: &Trip| Book {
        what: step.to_owned(),
        fail: t.fail_at.as_deref() == Some(step),
    }
}

fn undo(step: &'static str) -> impl Fn(&Trip) -> Undo + Send + Sync + 'static {
    move |_| Undo {
        what: step.to_owned(),
    }
}

fn trip() -> Saga<Trip> {
    trip_with_step_timeout(Duration::from_millis(300))
}

/// [`trip`] with another step timeout.
fn trip_with_step_timeout(timeout: Duration) -> Saga<Trip> {
    Saga::<Trip>::builder("trip")
        .default_timeout(timeout)
        .step("flight", |step| {
            step.invoke(book("flight"))
                .on_reply(|t, r| t.refs.push(r))
                .compensate(undo("flight"))
                .retry(RetryPolicy::fixed(Duration::from_millis(20)).max_attempts(5))
        })
        .step("hotel", |step| {
            step.invoke(book("hotel"))
                .on_reply(|t, r| t.refs.push(r))
                .compensate(undo("hotel"))
                .retry(RetryPolicy::fixed(Duration::from_millis(20)).max_attempts(5))
                .compensation_retry(RetryPolicy::fixed(Duration::from_millis(20)).max_attempts(3))
        })
        .step("car", |step| {
            step.invoke(book("car"))
                .on_reply(|t, r| t.refs.push(r))
                .compensate(undo("car"))
        })
        .step("pay", |step| {
            step.invoke(book("pay"))
                .pivot()
                .retry(RetryPolicy::fixed(Duration::from_millis(20)).unlimited())
        })
        .build()
        .expect("valid")
}

/// Records every effect the travel participant applies.
#[derive(Clone, Default)]
struct Journal {
    entries: Arc<Mutex<Vec<String>>>,
    undo_failures_left: Arc<AtomicU32>,
}

impl Journal {
    fn push(&self, entry: String) {
        self.entries.lock().expect("journal").push(entry);
    }
    fn entries(&self) -> Vec<String> {
        self.entries.lock().expect("journal").clone()
    }
}

fn travel(journal: Journal) -> Participant {
    let j1 = journal.clone();
    Participant::builder()
        .inbox(InMemoryInbox::new())
        .on(move |cmd: Book, ctx| {
            let journal = j1.clone();
            async move {
                if cmd.fail {
                    return Err(StepError::business(format!("{} unavailable", cmd.what)));
                }
                journal.push(format!("{}:{}", ctx.saga_id, cmd.what));
                Ok(format!("{}-ref", cmd.what))
            }
        })
        .on(move |cmd: Undo, ctx| {
            let journal = journal.clone();
            async move {
                let left = journal.undo_failures_left.load(Ordering::SeqCst);
                // Only undoing the hotel fails, `undo_failures_left` times.
                if left > 0 && cmd.what == "hotel" {
                    journal.undo_failures_left.store(left - 1, Ordering::SeqCst);
                    return Err(StepError::retryable("undo backend down"));
                }
                journal.push(format!("{}:undo {}", ctx.saga_id, cmd.what));
                Ok(())
            }
        })
        .build()
        .expect("valid participant")
}

struct Stack {
    store: InMemoryStore,
    transport: InMemoryTransport,
    engine: Engine,
    journal: Journal,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

fn engine(store: &InMemoryStore, transport: &InMemoryTransport) -> Engine {
    Engine::builder(store.clone(), transport.clone())
        .register(&trip())
        .poll_interval(Duration::from_millis(10))
        .build()
}

impl Stack {
    fn new() -> Self {
        let store = InMemoryStore::new();
        let transport = InMemoryTransport::new();
        let engine = engine(&store, &transport);
        let (stop, _) = watch::channel(false);
        Self {
            store,
            transport,
            engine,
            journal: Journal::default(),
            stop,
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

    fn run_participant(&mut self) {
        let participant = travel(self.journal.clone());
        let transport: Arc<dyn Transport> = Arc::new(self.transport.clone());
        let stop = stopped(self.stop.subscribe());
        self.tasks.push(tokio::spawn(async move {
            participant
                .run(transport, stop)
                .await
                .expect("participant runs");
        }));
    }

    fn running() -> Self {
        let mut stack = Self::new();
        let engine = stack.engine.clone();
        stack.run_engine(&engine);
        stack.run_participant();
        stack
    }

    async fn shutdown(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            task.await.expect("task");
        }
        // Whatever the test did, no attempt was dispatched twice.
        for saga in self.store.all() {
            let logs = self.engine.logs(saga.id).await.expect("logs");
            assert_no_duplicate_dispatch(&logs);
        }
    }
}

fn assert_no_duplicate_dispatch(logs: &[saga_core::LogEntry]) {
    let twice = saga_core::testing::dispatched_twice(logs);
    assert!(twice.is_empty(), "{twice:?}: {logs:#?}");
}

#[tokio::test]
async fn a_saga_completes_and_logs_every_step() {
    let stack = Stack::running();
    let id = stack
        .engine
        .start(&trip(), Trip::default())
        .await
        .expect("start");
    let done = stack.engine.wait(id, WAIT).await.expect("finishes");
    assert_eq!(done.status, SagaStatus::Completed);
    let data: Trip = done.data_as().expect("data");
    assert_eq!(
        data.refs,
        vec!["flight-ref", "hotel-ref", "car-ref"],
        "pay folds no reply"
    );
    let events: Vec<LogEvent> = stack
        .engine
        .logs(id)
        .await
        .expect("logs")
        .iter()
        .map(|l| l.event)
        .collect();
    assert_eq!(events.first(), Some(&LogEvent::SagaStarted));
    assert_eq!(events.last(), Some(&LogEvent::SagaCompleted));
    assert_eq!(
        events
            .iter()
            .filter(|e| **e == LogEvent::StepSucceeded)
            .count(),
        4
    );
    stack.shutdown().await;
}

#[tokio::test]
async fn a_business_failure_compensates_in_reverse_order() {
    let stack = Stack::running();
    let data = Trip {
        fail_at: Some("pay".into()),
        ..Trip::default()
    };
    let id = stack.engine.start(&trip(), data).await.expect("start");
    let done = stack.engine.wait(id, WAIT).await.expect("finishes");
    assert_eq!(done.status, SagaStatus::Compensated);
    assert!(
        done.error
            .as_deref()
            .unwrap_or_default()
            .contains("pay unavailable")
    );
    let mine: Vec<String> = stack
        .journal
        .entries()
        .into_iter()
        .filter_map(|e| e.strip_prefix(&format!("{id}:")).map(str::to_owned))
        .collect();
    assert_eq!(
        mine,
        vec![
            "flight",
            "hotel",
            "car",
            "undo car",
            "undo hotel",
            "undo flight"
        ]
    );
    stack.shutdown().await;
}

#[tokio::test]
async fn starting_twice_with_the_same_key_returns_the_first_saga() {
    let stack = Stack::running();
    let a = stack
        .engine
        .start_with(
            &trip(),
            Trip::default(),
            StartOptions::new().idempotency_key("order-7"),
        )
        .await
        .expect("start");
    let b = stack
        .engine
        .start_with(
            &trip(),
            Trip::default(),
            StartOptions::new().idempotency_key("order-7"),
        )
        .await
        .expect("start again");
    assert_eq!(a, b);
    stack.engine.wait(a, WAIT).await.expect("finishes");
    assert_eq!(stack.store.all().len(), 1);
    assert_eq!(stack.journal.entries().len(), 4, "each step ran once");
    stack.shutdown().await;
}

/// `start_and_wait` listens before the saga exists, so it reads nothing
/// back: the engine's own notice carries the final state. The same saga
/// through `start` and `wait` reads it at least once (the control).
#[tokio::test]
async fn start_and_wait_reads_nothing_back() {
    let mut stack = Stack::new();
    let store = CountingStore::new(stack.store.clone());
    let engine = Engine::builder(store.clone(), stack.transport.clone())
        .register(&trip())
        .poll_interval(Duration::from_millis(10))
        .build();
    stack.run_engine(&engine);
    stack.run_participant();

    for _ in 0..5 {
        let done = engine
            .start_and_wait(&trip(), Trip::default(), StartOptions::new(), WAIT)
            .await
            .expect("finishes");
        assert_eq!(done.status, SagaStatus::Completed);
        assert_eq!(done.data_as::<Trip>().expect("data").refs.len(), 3);
    }
    assert_eq!(store.loads(), 0, "start_and_wait read a saga back");

    let id = engine.start(&trip(), Trip::default()).await.expect("start");
    engine.wait(id, WAIT).await.expect("finishes");
    assert!(store.loads() >= 1, "the control reads the saga");
    stack.shutdown().await;
}

/// With a key used before, `start_and_wait` waits for the first saga.
#[tokio::test]
async fn start_and_wait_with_a_used_key_answers_with_the_first_saga() {
    let stack = Stack::running();
    let key = || StartOptions::new().idempotency_key("order-8");
    let first = stack
        .engine
        .start_and_wait(&trip(), Trip::default(), key(), WAIT)
        .await
        .expect("finishes");
    let again = stack
        .engine
        .start_and_wait(&trip(), Trip::default(), key(), WAIT)
        .await
        .expect("answers");
    assert_eq!(again.id, first.id);
    assert_eq!(again.status, SagaStatus::Completed);
    assert_eq!(stack.store.all().len(), 1);
    stack.shutdown().await;
}

#[tokio::test]
async fn waiting_gives_up_after_its_timeout() {
    let mut stack = Stack::new();
    let engine = stack.engine.clone();
    stack.run_engine(&engine); // no participant: the saga cannot progress
    let id = stack
        .engine
        .start(&trip(), Trip::default())
        .await
        .expect("start");
    let err = stack
        .engine
        .wait(id, Duration::from_millis(150))
        .await
        .expect_err("times out");
    assert_eq!(err.kind(), ErrorKind::Timeout);
    stack.shutdown().await;
}

#[tokio::test]
async fn a_rebuilt_engine_finishes_what_a_crashed_one_started() {
    let mut stack = Stack::new();
    let first = stack.engine.clone();
    let ids = futures_ids(&first, 10).await;
    drop(first); // the first engine never ran: its commands sit in the queue
    let second = engine(&stack.store, &stack.transport);
    stack.run_engine(&second);
    stack.run_participant();
    for id in ids {
        let done = second.wait(id, WAIT).await.expect("finishes");
        assert_eq!(done.status, SagaStatus::Completed);
    }
    assert_eq!(
        stack.journal.entries().len(),
        40,
        "every step of every saga ran exactly once"
    );
    stack.shutdown().await;
}

async fn futures_ids(engine: &Engine, n: usize) -> Vec<saga_core::SagaId> {
    let mut ids = Vec::new();
    for _ in 0..n {
        ids.push(engine.start(&trip(), Trip::default()).await.expect("start"));
    }
    ids
}

#[tokio::test]
async fn two_engines_share_the_work_without_duplicating_it() {
    let mut stack = Stack::running();
    let other = engine(&stack.store, &stack.transport);
    stack.run_engine(&other);
    let mut ids = futures_ids(&stack.engine, 25).await;
    ids.extend(futures_ids(&other, 25).await);
    for id in &ids {
        let done = other.wait(*id, WAIT).await.expect("finishes");
        assert_eq!(done.status, SagaStatus::Completed);
    }
    assert_eq!(stack.journal.entries().len(), 200);
    stack.shutdown().await;
}

#[tokio::test]
async fn a_lost_command_is_sent_again_when_its_timeout_fires() {
    let mut stack = Stack::new();
    // No start-up resend: only the timeout can recover the lost command.
    let mut config = EngineConfig::default();
    config.startup_resend_limit = 0;
    config.poll_interval = Duration::from_millis(10);
    let engine = Engine::builder(stack.store.clone(), stack.transport.clone())
        .register(&trip())
        .config(config)
        .build();
    stack.engine = engine.clone();
    stack.run_engine(&engine);
    // Swallow the first command without replying, like a broker that lost it.
    let mut swallow = stack
        .transport
        .consume_commands("travel")
        .await
        .expect("consume");
    let id = stack
        .engine
        .start(&trip(), Trip::default())
        .await
        .expect("start");
    let lost = swallow.next().await.expect("first command");
    lost.ack().await.expect("ack");
    drop(swallow);
    stack.run_participant();
    let done = stack.engine.wait(id, WAIT).await.expect("finishes");
    assert_eq!(done.status, SagaStatus::Completed);
    let logs = stack.engine.logs(id).await.expect("logs");
    assert!(logs.iter().any(|l| l.event == LogEvent::StepTimedOut));
    stack.shutdown().await;
}

#[tokio::test]
async fn an_operator_retries_a_saga_whose_compensation_failed() {
    let stack = Stack::running();
    stack.journal.undo_failures_left.store(3, Ordering::SeqCst);
    let data = Trip {
        fail_at: Some("car".into()),
        ..Trip::default()
    };
    let id = stack.engine.start(&trip(), data).await.expect("start");
    let failed = stack.engine.wait(id, WAIT).await.expect("stops");
    assert_eq!(failed.status, SagaStatus::Failed);
    assert!(
        failed
            .error
            .as_deref()
            .unwrap_or_default()
            .contains("compensation of step `hotel`")
    );
    let listed = stack
        .engine
        .list(&saga_core::adapter::SagaQuery::new().status(SagaStatus::Failed))
        .await
        .expect("list");
    assert_eq!(listed.len(), 1, "a failed saga shows up for operators");
    let retried = stack.engine.retry(id).await.expect("retry");
    assert_eq!(retried.status, SagaStatus::Compensating);
    let done = stack.engine.wait(id, WAIT).await.expect("finishes");
    assert_eq!(done.status, SagaStatus::Compensated);
    assert_eq!(done.steps[..3], [StepStatus::Compensated; 3]);
    let err = stack.engine.retry(id).await.expect_err("nothing to retry");
    assert_eq!(err.kind(), ErrorKind::Invalid);
    stack.shutdown().await;
}

#[tokio::test]
async fn cancelling_compensates_before_the_pivot_and_is_refused_after_it() {
    let mut stack = Stack::new();
    let engine = stack.engine.clone();
    stack.run_engine(&engine);
    let id = stack
        .engine
        .start(&trip(), Trip::default())
        .await
        .expect("start");
    let cancelled = stack
        .engine
        .cancel(id, "customer changed their mind")
        .await
        .expect("cancel");
    assert_eq!(cancelled.status, SagaStatus::Compensating);
    stack.run_participant();
    let done = stack.engine.wait(id, WAIT).await.expect("finishes");
    assert_eq!(done.status, SagaStatus::Compensated);
    let completed = stack
        .engine
        .start(&trip(), Trip::default())
        .await
        .expect("start");
    stack.engine.wait(completed, WAIT).await.expect("finishes");
    let err = stack
        .engine
        .cancel(completed, "too late")
        .await
        .expect_err("refused");
    assert_eq!(err.kind(), ErrorKind::Invalid);
    stack.shutdown().await;
}

#[tokio::test]
async fn local_steps_run_in_the_engine() {
    #[derive(Serialize, Deserialize, Default)]
    struct Calc {
        n: i64,
    }
    let saga = Saga::<Calc>::builder("calc")
        .step("double", |step| {
            step.local(|c: Calc, _| async move { Ok(c.n * 2) })
                .on_reply(|c, n| c.n = n)
                .compensate_local(|_c: Calc, _| async { Ok(()) })
        })
        .step("check", |step| {
            step.local(|c: Calc, _| async move {
                if c.n > 100 {
                    Err(StepError::business("too big"))
                } else {
                    Ok(())
                }
            })
        })
        .build()
        .expect("valid");
    let store = InMemoryStore::new();
    let engine = Engine::builder(store, InMemoryTransport::new())
        .register(&saga)
        .build();
    let (stop, rx) = watch::channel(false);
    let runner = {
        let engine = engine.clone();
        tokio::spawn(async move { engine.run(stopped(rx)).await })
    };
    let small = engine.start(&saga, Calc { n: 21 }).await.expect("start");
    let big = engine.start(&saga, Calc { n: 60 }).await.expect("start");
    let small = engine.wait(small, WAIT).await.expect("finishes");
    assert_eq!(small.status, SagaStatus::Completed);
    assert_eq!(small.data["n"], 42);
    assert_eq!(
        engine.wait(big, WAIT).await.expect("finishes").status,
        SagaStatus::Compensated
    );
    let _ = stop.send(true);
    runner.await.expect("task").expect("engine");
}

#[tokio::test]
async fn a_command_without_a_handler_is_dead_lettered() {
    let transport = InMemoryTransport::new();
    let participant = Participant::builder()
        .on(|_: Undo, _| async { Ok(()) })
        .build()
        .expect("valid participant");
    let (stop, rx) = watch::channel(false);
    let runner = {
        let transport: Arc<dyn Transport> = Arc::new(transport.clone());
        tokio::spawn(async move { participant.run(transport, stopped(rx)).await })
    };
    let store = InMemoryStore::new();
    let engine = Engine::builder(store, transport.clone())
        .register(&trip())
        .build();
    engine.start(&trip(), Trip::default()).await.expect("start");
    tokio::time::timeout(WAIT, async {
        while transport.dead_letters("travel").is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("dead-lettered");
    assert!(
        transport.dead_letters("travel")[0]
            .reason
            .contains("no handler for command `book`")
    );
    let _ = stop.send(true);
    runner.await.expect("task").expect("participant");
}

#[tokio::test]
async fn a_command_whose_handler_panics_is_delivered_again() {
    let transport = InMemoryTransport::new();
    let panicked = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&panicked);
    let participant = Participant::builder()
        .inbox(InMemoryInbox::new())
        .on(move |cmd: Book, _ctx| {
            let first = !flag.swap(true, Ordering::SeqCst);
            async move {
                assert!(!first, "the handler panics on its first command");
                Ok(format!("{}-ref", cmd.what))
            }
        })
        .on(|_: Undo, _| async { Ok(()) })
        .build()
        .expect("valid participant");
    let serving = participant.spawn(transport.clone());
    // Far longer than the panic takes (printing its backtrace took over
    // 300 ms under the suite's load), far shorter than the wait.
    let trip = trip_with_step_timeout(Duration::from_secs(5));
    let engine = Engine::builder(InMemoryStore::new(), transport.clone())
        .register(&trip)
        .poll_interval(Duration::from_millis(10))
        .build();
    let running = engine.spawn();
    let id = engine.start(&trip, Trip::default()).await.expect("start");
    let done = engine.wait(id, WAIT).await.expect("finishes");
    assert!(panicked.load(Ordering::SeqCst));
    assert_eq!(done.status, SagaStatus::Completed, "{:?}", done.error);
    let logs = engine.logs(id).await.expect("logs");
    assert!(
        !logs.iter().any(|l| l.event == LogEvent::StepTimedOut),
        "the command came back at once, not after its timeout: {logs:#?}"
    );
    assert!(transport.dead_letters("travel").is_empty());
    serving.shutdown().await.expect("participant stops");
    running.shutdown().await.expect("engine stops");
}

#[tokio::test]
async fn a_reply_naming_the_wrong_step_is_refused() {
    let stack = Stack::new();
    let _id = stack
        .engine
        .start(&trip(), Trip::default())
        .await
        .expect("start");
    let mut sub = stack
        .transport
        .consume_commands("travel")
        .await
        .expect("consume");
    let command = sub.next().await.expect("command");
    let mut reply = command
        .message
        .reply(saga_core::adapter::ReplyOutcome::Success(
            serde_json::json!("x"),
        ));
    reply.step_name = "not-a-step".into();
    let err = stack.engine.handle_reply(reply).await.expect_err("refused");
    assert_eq!(err.kind(), ErrorKind::Invalid);
    stack.shutdown().await;
}

#[tokio::test]
async fn the_deadline_compensates_a_stalled_saga() {
    let saga = Saga::<Trip>::builder("deadline")
        .deadline(Duration::from_millis(200))
        .step("flight", |step| {
            step.invoke(book("flight")).compensate(undo("flight"))
        })
        .step("hotel", |step| {
            step.invoke(|_: &Trip| Unanswered).read_only()
        })
        .build()
        .expect("valid");
    let mut stack = Stack::new();
    let engine = Engine::builder(stack.store.clone(), stack.transport.clone())
        .register(&saga)
        .poll_interval(Duration::from_millis(10))
        .build();
    stack.run_engine(&engine);
    stack.run_participant();
    let id = engine.start(&saga, Trip::default()).await.expect("start");
    let done = engine.wait(id, WAIT).await.expect("finishes");
    assert_eq!(done.status, SagaStatus::Compensated);
    assert!(
        done.error
            .as_deref()
            .unwrap_or_default()
            .contains("deadline")
    );
    assert_eq!(
        done.steps,
        vec![StepStatus::Compensated, StepStatus::Uncertain]
    );
    stack.shutdown().await;
}

#[tokio::test]
async fn the_instance_diagram_shows_progress() {
    let stack = Stack::running();
    let data = Trip {
        fail_at: Some("car".into()),
        ..Trip::default()
    };
    let id = stack.engine.start(&trip(), data).await.expect("start");
    let done = stack.engine.wait(id, WAIT).await.expect("finishes");
    let diagram = stack.engine.mermaid(&done).expect("registered");
    assert!(diagram.starts_with("flowchart LR"));
    assert!(diagram.contains("class s2 compensated"), "{diagram}");
    assert!(
        !diagram.contains("class s3 "),
        "the pivot never ran: {diagram}"
    );
    assert!(diagram.contains("class s0 compensated"), "{diagram}");
    assert!(diagram.contains("class done compensated"), "{diagram}");
    assert!(trip().to_mermaid().contains("pay (pivot)"));
    stack.shutdown().await;
}

/// A transport whose first reply subscriptions and first reply sends fail as
/// if the broker were restarting.
struct FlakySubscribe {
    inner: InMemoryTransport,
    failures_left: AtomicU32,
    reply_send_failures_left: AtomicU32,
}

#[async_trait::async_trait]
impl Transport for FlakySubscribe {
    async fn send_command(
        &self,
        command: &saga_core::adapter::CommandMessage,
    ) -> saga_core::Result<()> {
        self.inner.send_command(command).await
    }
    async fn send_reply(&self, reply: &saga_core::adapter::ReplyMessage) -> saga_core::Result<()> {
        if self.reply_send_failures_left.load(Ordering::SeqCst) > 0 {
            self.reply_send_failures_left.fetch_sub(1, Ordering::SeqCst);
            return Err(saga_core::Error::backend(
                ErrorKind::Unavailable,
                "the broker refused (nacked) the reply",
            ));
        }
        self.inner.send_reply(reply).await
    }
    async fn consume_commands(
        &self,
        endpoint: &str,
    ) -> saga_core::Result<saga_core::adapter::Subscription<saga_core::adapter::CommandMessage>>
    {
        self.inner.consume_commands(endpoint).await
    }
    async fn consume_replies(
        &self,
        queue: &str,
    ) -> saga_core::Result<saga_core::adapter::Subscription<saga_core::adapter::ReplyMessage>> {
        if self.failures_left.load(Ordering::SeqCst) > 0 {
            self.failures_left.fetch_sub(1, Ordering::SeqCst);
            return Err(saga_core::Error::backend(
                ErrorKind::Unavailable,
                "queue not ready",
            ));
        }
        self.inner.consume_replies(queue).await
    }
}

#[tokio::test]
async fn the_engine_keeps_trying_to_subscribe_while_the_broker_is_unavailable() {
    let transport = InMemoryTransport::new();
    let flaky = FlakySubscribe {
        inner: transport.clone(),
        failures_left: AtomicU32::new(2),
        reply_send_failures_left: AtomicU32::new(0),
    };
    let store = InMemoryStore::new();
    let engine = Engine::builder(store, flaky).register(&trip()).build();
    let (stop, rx) = watch::channel(false);
    let runner = {
        let engine = engine.clone();
        tokio::spawn(async move { engine.run(stopped(rx)).await })
    };
    let journal = Journal::default();
    let participant = travel(journal.clone());
    let shared: Arc<dyn Transport> = Arc::new(transport);
    let (pstop, prx) = watch::channel(false);
    let serving = tokio::spawn(async move { participant.run(shared, stopped(prx)).await });
    let id = engine.start(&trip(), Trip::default()).await.expect("start");
    let done = engine
        .wait(id, WAIT)
        .await
        .expect("finishes once subscribed");
    assert_eq!(done.status, SagaStatus::Completed);
    let _ = stop.send(true);
    let _ = pstop.send(true);
    runner.await.expect("task").expect("engine");
    serving.await.expect("task").expect("participant");
}

#[tokio::test]
async fn a_participant_with_an_inbox_retention_prunes_its_inbox_while_it_runs() {
    let inbox = InMemoryInbox::new();
    let participant = Participant::builder()
        .inbox(inbox.clone())
        .inbox_retention(Duration::from_millis(300))
        .prune_interval(Duration::from_millis(20), 10)
        .on(|cmd: Book, _| async move { Ok(cmd.what) })
        .on(|_: Undo, _| async { Ok(()) })
        .build()
        .expect("valid participant");
    let store = InMemoryStore::new();
    let transport = InMemoryTransport::new();
    let engine = Engine::builder(store, transport.clone())
        .register(&trip())
        .poll_interval(Duration::from_millis(10))
        .build();
    let (stop, _) = watch::channel(false);
    let serving = tokio::spawn({
        let participant = participant.clone();
        let transport = transport.clone();
        let stop = stopped(stop.subscribe());
        async move { participant.run(transport, stop).await }
    });
    let running = tokio::spawn({
        let engine = engine.clone();
        let stop = stopped(stop.subscribe());
        async move { engine.run(stop).await }
    });
    let id = engine.start(&trip(), Trip::default()).await.expect("start");
    assert_eq!(
        engine.wait(id, WAIT).await.expect("ends").status,
        SagaStatus::Completed
    );
    assert_eq!(inbox.len(), 4, "one record per step");
    tokio::time::timeout(WAIT, async {
        while !inbox.is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the records are pruned once older than the retention");
    let _ = stop.send(true);
    serving.await.expect("task").expect("participant stops");
    running.await.expect("task").expect("engine stops");
}

#[tokio::test]
async fn an_inbox_retention_needs_something_to_prune() {
    let err = Participant::builder()
        .inbox_retention(Duration::from_secs(60))
        .on(|cmd: Book, _| async move { Ok(cmd.what) })
        .build()
        .expect_err("nothing to prune");
    assert!(err.to_string().contains("inbox retention"), "{err}");
    let pruned = Arc::new(AtomicU32::new(0));
    let participant = Participant::builder()
        .inbox_retention(Duration::from_secs(60))
        .prune_interval(Duration::from_secs(60), 2)
        .prune_with({
            let pruned = Arc::clone(&pruned);
            move |_before, batch| {
                let pruned = Arc::clone(&pruned);
                async move {
                    // Five records to delete, `batch` at a time.
                    let before = pruned.load(Ordering::SeqCst) as usize;
                    let now = (before + batch).min(5);
                    pruned.store(now as u32, Ordering::SeqCst);
                    Ok(now - before)
                }
            }
        })
        .on(|cmd: Book, _| async move { Ok(cmd.what) })
        .build()
        .expect("a prune_with function is enough");
    assert_eq!(
        participant.prune(chrono::Utc::now()).await.expect("prune"),
        5,
        "called again while it returns a full batch"
    );
}

/// A reply the broker refuses for a moment (a quorum queue electing a leader)
/// is sent again after a short wait, not by handing the command back at once:
/// before, each refusal cost a delivery, and with two allowed the command was
/// dead-lettered although its work was done.
#[tokio::test]
async fn a_reply_refused_for_a_moment_is_sent_again_without_using_up_deliveries() {
    let transport = InMemoryTransport::with_limits(16, 2);
    let store = InMemoryStore::new();
    let engine = Engine::builder(store, transport.clone())
        .register(&trip())
        .build();
    let flaky = FlakySubscribe {
        inner: transport.clone(),
        failures_left: AtomicU32::new(0),
        reply_send_failures_left: AtomicU32::new(3),
    };
    let (stop, rx) = watch::channel(false);
    let engine_task = {
        let engine = engine.clone();
        let stop = stopped(rx.clone());
        tokio::spawn(async move { engine.run(stop).await })
    };
    let participant = travel(Journal::default());
    let participant_task = tokio::spawn(async move { participant.run(flaky, stopped(rx)).await });

    let done = engine
        .start_and_wait(&trip(), Trip::default(), StartOptions::new(), WAIT)
        .await
        .expect("finishes");
    assert_eq!(done.status, SagaStatus::Completed);
    assert!(
        transport.dead_letters("travel").is_empty(),
        "{:?}",
        transport.dead_letters("travel")
    );
    let _ = stop.send(true);
    engine_task.await.expect("task").expect("engine");
    participant_task.await.expect("task").expect("participant");
}
