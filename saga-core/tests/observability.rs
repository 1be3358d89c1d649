//! What an operator sees: metrics, counts, stuck sagas and their warnings.
//!
//! The tests run on tokio's current-thread runtime, so a thread-local metrics
//! recorder sees everything the engine's and participant's tasks record.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{TimeZone, Utc};
use metrics_util::CompositeKey;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use saga_core::adapter::SagaQuery;
use saga_core::clock::ManualClock;
use saga_core::memory::{InMemoryInbox, InMemoryStore, InMemoryTransport};
use saga_core::stuck::{StuckReason, StuckRule};
use saga_core::{Command, Engine, Participant, RetryPolicy, Saga, SagaStatus, StepError};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

const WAIT: Duration = Duration::from_secs(10);

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Order {
    refuse_payment: bool,
}

#[derive(Serialize, Deserialize)]
struct Reserve;
impl Command for Reserve {
    const NAME: &'static str = "reserve";
    const ENDPOINT: &'static str = "shop";
    type Reply = ();
}

#[derive(Serialize, Deserialize)]
struct Release;
impl Command for Release {
    const NAME: &'static str = "release";
    const ENDPOINT: &'static str = "shop";
    type Reply = ();
}

#[derive(Serialize, Deserialize)]
struct Pay {
    refuse: bool,
}
impl Command for Pay {
    const NAME: &'static str = "pay";
    const ENDPOINT: &'static str = "shop";
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

fn order() -> Saga<Order> {
    Saga::<Order>::builder("order")
        .step("reserve", |step| {
            step.invoke(|_: &Order| Reserve)
                .compensate(|_: &Order| Release)
        })
        .step("pay", |step| {
            step.invoke(|o: &Order| Pay {
                refuse: o.refuse_payment,
            })
            .pivot()
        })
        .build()
        .expect("valid saga")
}

/// A saga whose only step nobody answers and that retries without limit.
fn hanging() -> Saga<Order> {
    Saga::<Order>::builder("hanging")
        .step("wait", |step| {
            step.invoke(|_: &Order| Unanswered)
                .timeout(Duration::from_millis(20))
                .retry(RetryPolicy::fixed(Duration::from_millis(5)).unlimited())
                .read_only()
        })
        .build()
        .expect("valid saga")
}

fn shop() -> Participant {
    Participant::builder()
        .inbox(InMemoryInbox::new())
        .on(|_: Reserve, _| async { Ok(()) })
        .on(|_: Release, _| async { Ok(()) })
        .on(|pay: Pay, _| async move {
            if pay.refuse {
                Err(StepError::business("card declined"))
            } else {
                Ok(())
            }
        })
        .build()
        .expect("valid participant")
}

async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

/// The value of a counter, `None` if it was never recorded.
fn counter(
    snapshot: &[(CompositeKey, DebugValue)],
    name: &str,
    labels: &[(&str, &str)],
) -> Option<u64> {
    find(snapshot, name, labels).and_then(|v| match v {
        DebugValue::Counter(n) => Some(*n),
        _ => None,
    })
}

fn gauge(
    snapshot: &[(CompositeKey, DebugValue)],
    name: &str,
    labels: &[(&str, &str)],
) -> Option<f64> {
    find(snapshot, name, labels).and_then(|v| match v {
        DebugValue::Gauge(g) => Some(g.into_inner()),
        _ => None,
    })
}

/// How many values a histogram holds.
fn samples(snapshot: &[(CompositeKey, DebugValue)], name: &str, labels: &[(&str, &str)]) -> usize {
    find(snapshot, name, labels).map_or(0, |v| match v {
        DebugValue::Histogram(values) => values.len(),
        _ => 0,
    })
}

fn find<'a>(
    snapshot: &'a [(CompositeKey, DebugValue)],
    name: &str,
    labels: &[(&str, &str)],
) -> Option<&'a DebugValue> {
    snapshot.iter().find_map(|(key, value)| {
        let key = key.key();
        let matches = key.name() == name
            && key.labels().count() == labels.len()
            && labels
                .iter()
                .all(|(k, v)| key.labels().any(|l| l.key() == *k && l.value() == *v));
        matches.then_some(value)
    })
}

fn snapshot(snapshotter: &Snapshotter) -> Vec<(CompositeKey, DebugValue)> {
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| (key, value))
        .collect()
}

#[tokio::test]
async fn the_engine_and_participants_count_sagas_steps_commands_and_dead_letters() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);

    let store = InMemoryStore::new();
    let transport = InMemoryTransport::new();
    let engine = Engine::builder(store.clone(), transport.clone())
        .register(&order())
        .poll_interval(Duration::from_millis(10))
        .build();
    let (stop, _) = watch::channel(false);
    let running = {
        let engine = engine.clone();
        let stop = stopped(stop.subscribe());
        tokio::spawn(async move { engine.run(stop).await.expect("engine runs") })
    };
    let serving = {
        let transport = transport.clone();
        let stop = stopped(stop.subscribe());
        tokio::spawn(async move { shop().run(transport, stop).await.expect("shop runs") })
    };

    let paid = engine
        .start(&order(), Order::default())
        .await
        .expect("start");
    let refused = engine
        .start(
            &order(),
            Order {
                refuse_payment: true,
            },
        )
        .await
        .expect("start");
    assert_eq!(
        engine.wait(paid, WAIT).await.expect("ends").status,
        SagaStatus::Completed
    );
    assert_eq!(
        engine.wait(refused, WAIT).await.expect("ends").status,
        SagaStatus::Compensated
    );
    // A command for an endpoint without that handler goes to the dead letters.
    let stray = saga_core::adapter::CommandMessage {
        message_id: "stray".to_owned(),
        idempotency_key: saga_core::IdempotencyKey::new(
            saga_core::SagaId::new(),
            "reserve",
            saga_core::Direction::Invoke,
        ),
        saga_id: saga_core::SagaId::new(),
        saga_type: "order".to_owned(),
        step: 0,
        step_name: "reserve".to_owned(),
        direction: saga_core::Direction::Invoke,
        attempt: 1,
        endpoint: "shop".to_owned(),
        command: "no_such_command".to_owned(),
        payload: serde_json::Value::Null,
        reply_to: Some("saga_replies".to_owned()),
        headers: std::collections::BTreeMap::new(),
    };
    saga_core::Transport::send_command(&transport, &stray)
        .await
        .expect("sent");
    for _ in 0..100 {
        if !transport.dead_letters("shop").is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = stop.send(true);
    running.await.expect("engine task");
    serving.await.expect("shop task");

    let s = snapshot(&snapshotter);
    assert_eq!(
        counter(&s, "saga_started_total", &[("saga", "order")]),
        Some(2)
    );
    for status in ["completed", "compensated"] {
        assert_eq!(
            counter(
                &s,
                "saga_finished_total",
                &[("saga", "order"), ("status", status)]
            ),
            Some(1),
            "{status}"
        );
    }
    assert_eq!(
        counter(
            &s,
            "saga_finished_total",
            &[("saga", "order"), ("status", "failed")]
        ),
        None
    );
    let step = |step, outcome| {
        samples(
            &s,
            "saga_step_duration_seconds",
            &[("saga", "order"), ("step", step), ("outcome", outcome)],
        )
    };
    assert_eq!(step("reserve", "succeeded"), 2);
    assert_eq!(step("pay", "succeeded"), 1);
    assert_eq!(step("pay", "failed"), 1);
    assert_eq!(step("reserve", "compensated"), 1);
    let handled = |command, outcome| {
        counter(
            &s,
            "saga_commands_handled_total",
            &[("command", command), ("outcome", outcome)],
        )
    };
    assert_eq!(handled("reserve", "succeeded"), Some(2));
    assert_eq!(handled("pay", "succeeded"), Some(1));
    assert_eq!(handled("pay", "refused"), Some(1));
    assert_eq!(handled("release", "succeeded"), Some(1));
    assert_eq!(
        samples(
            &s,
            "saga_command_duration_seconds",
            &[("command", "reserve")]
        ),
        2
    );
    assert_eq!(
        counter(
            &s,
            "saga_messages_dead_lettered_total",
            &[("queue", "shop")]
        ),
        Some(1)
    );
}

/// A writer that keeps what the log subscriber writes.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("log buffer")).into_owned()
    }
}

#[tokio::test]
async fn the_census_reports_unfinished_and_stuck_sagas_and_warns_once_per_stuck_saga() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);
    let logs = Captured::default();
    let writer = logs.clone();
    let _subscriber = tracing::subscriber::set_default(
        tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .with_max_level(tracing::Level::WARN)
            .finish(),
    );

    let store = InMemoryStore::new();
    let transport = InMemoryTransport::new();
    let engine = Engine::builder(store.clone(), transport.clone())
        .register(&hanging())
        .register(&order())
        .poll_interval(Duration::from_millis(5))
        .census_interval(Duration::from_millis(20))
        .stuck_rule(StuckRule {
            grace: Duration::from_secs(60),
            attempts: 5,
        })
        .build();
    let (stop, _) = watch::channel(false);
    let running = {
        let engine = engine.clone();
        let stop = stopped(stop.subscribe());
        tokio::spawn(async move { engine.run(stop).await.expect("engine runs") })
    };
    let id = engine
        .start(&hanging(), Order::default())
        .await
        .expect("start");

    // Retrying without limit, it becomes stuck at its fifth attempt.
    let mut found = Vec::new();
    for _ in 0..500 {
        found = engine.stuck(&SagaQuery::new()).await.expect("stuck");
        if !found.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(found.len(), 1, "the hanging saga is stuck");
    assert_eq!(found[0].instance.id, id);
    assert!(
        matches!(&found[0].reason, StuckReason::Retrying { step, attempt } if step == "wait" && *attempt >= 5),
        "{:?}",
        found[0].reason
    );
    // Several census rounds later: one warning for this saga, gauges set.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _ = stop.send(true);
    running.await.expect("engine task");

    let text = logs.text();
    let warnings: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("saga is stuck"))
        .collect();
    assert_eq!(warnings.len(), 1, "one warning per stuck saga: {text}");
    assert!(warnings[0].contains(&id.to_string()), "{}", warnings[0]);
    let s = snapshot(&snapshotter);
    assert_eq!(gauge(&s, "saga_stuck", &[("saga", "hanging")]), Some(1.0));
    assert_eq!(gauge(&s, "saga_stuck", &[("saga", "order")]), Some(0.0));
    assert_eq!(
        gauge(
            &s,
            "saga_running",
            &[("saga", "hanging"), ("status", "running")]
        ),
        Some(1.0)
    );
    assert_eq!(
        gauge(
            &s,
            "saga_running",
            &[("saga", "order"), ("status", "running")]
        ),
        Some(0.0),
        "registered types with nothing running report zero"
    );
    let oldest = gauge(&s, "saga_oldest_running_seconds", &[("saga", "hanging")]).expect("set");
    assert!(oldest > 0.0, "{oldest}");
    assert!(
        counter(
            &s,
            "saga_step_retries_total",
            &[("saga", "hanging"), ("step", "wait")]
        )
        .is_some_and(|n| n >= 4)
    );
}

#[tokio::test]
async fn a_saga_nothing_happens_to_is_stuck_after_its_step_budget_and_not_before() {
    let start = Utc
        .with_ymd_and_hms(2026, 1, 1, 0, 0, 0)
        .single()
        .expect("time");
    let clock = Arc::new(ManualClock::new(start));
    let store = InMemoryStore::new();
    let saga = Saga::<Order>::builder("slow")
        .step("wait", |step| {
            step.invoke(|_: &Order| Unanswered)
                .timeout(Duration::from_secs(10))
                .retry(RetryPolicy::fixed(Duration::from_secs(5)).max_attempts(3))
                .read_only()
        })
        .build()
        .expect("valid saga");
    // The engine never runs: no timeout fires, the saga stays as started.
    let engine = Engine::builder(store.clone(), InMemoryTransport::new())
        .register(&saga)
        .clock(clock.clone())
        .stuck_rule(StuckRule {
            grace: Duration::from_secs(30),
            attempts: 10,
        })
        .build();
    let id = engine.start(&saga, Order::default()).await.expect("start");

    // Timeout 10 s + longest retry delay 5 s + grace 30 s = 45 s.
    clock.advance(Duration::from_secs(45));
    assert!(
        engine
            .stuck(&SagaQuery::new())
            .await
            .expect("stuck")
            .is_empty(),
        "not stuck at its budget"
    );
    clock.advance(Duration::from_secs(1));
    let stuck = engine.stuck(&SagaQuery::new()).await.expect("stuck");
    assert_eq!(stuck.len(), 1);
    assert_eq!(stuck[0].instance.id, id);
    assert_eq!(
        stuck[0].reason,
        StuckReason::Silent {
            since: stuck[0].instance.updated_at
        }
    );
    assert!(stuck[0].instance.updated_at - start < chrono::Duration::seconds(1));
    assert_eq!(stuck[0].reason.as_str(), "silent");

    // Counts see it as running; a filter by another type does not.
    let counts = engine
        .counts(&SagaQuery::new().unfinished())
        .await
        .expect("counts");
    assert_eq!(counts.len(), 1);
    assert_eq!(
        (
            counts[0].saga_type.as_str(),
            counts[0].status,
            counts[0].count
        ),
        ("slow", SagaStatus::Running, 1)
    );
    assert!(
        engine
            .stuck(&SagaQuery::new().saga_type("other"))
            .await
            .expect("stuck")
            .is_empty()
    );
}

/// Writes a numbered header and records what it reads: enough to follow the
/// context from message to message without an OpenTelemetry dependency.
#[derive(Clone, Default)]
struct Recording {
    written: Arc<Mutex<Vec<(String, String)>>>,
    read: Arc<Mutex<Vec<(String, String)>>>,
    side: &'static str,
}

impl saga_core::propagation::Propagator for Recording {
    fn inject(&self, _span: &tracing::Span, headers: &mut saga_core::propagation::Headers) {
        let mut written = self.written.lock().expect("written");
        let value = format!("{}-{}", self.side, written.len());
        headers.insert("traceparent".to_owned(), value.clone());
        written.push((self.side.to_owned(), value));
    }

    fn extract(&self, headers: &saga_core::propagation::Headers, _span: &tracing::Span) {
        if let Some(value) = headers.get("traceparent") {
            self.read
                .lock()
                .expect("read")
                .push((self.side.to_owned(), value.clone()));
        }
    }
}

#[tokio::test]
async fn trace_context_travels_in_commands_and_replies_and_continues_on_a_retry() {
    let engine_side = Recording {
        side: "engine",
        ..Recording::default()
    };
    let shop_side = Recording {
        side: "shop",
        ..Recording::default()
    };
    let store = InMemoryStore::new();
    let transport = InMemoryTransport::new();
    // `pay` is refused once as a retryable failure, so the poller retries it.
    let saga = Saga::<Order>::builder("traced")
        .step("reserve", |step| {
            step.invoke(|_: &Order| Reserve)
                .compensate(|_: &Order| Release)
        })
        .step("pay", |step| {
            step.invoke(|o: &Order| Pay {
                refuse: o.refuse_payment,
            })
            .retry(RetryPolicy::fixed(Duration::from_millis(5)).unlimited())
            .pivot()
        })
        .build()
        .expect("valid saga");
    let engine = Engine::builder(store.clone(), transport.clone())
        .register(&saga)
        .poll_interval(Duration::from_millis(5))
        .propagator(engine_side.clone())
        .build();
    let failed_once = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let shop = {
        let failed_once = Arc::clone(&failed_once);
        Participant::builder()
            .inbox(InMemoryInbox::new())
            .propagator(shop_side.clone())
            .on(|_: Reserve, _| async { Ok(()) })
            .on(|_: Release, _| async { Ok(()) })
            .on(move |_: Pay, _| {
                let first = !failed_once.swap(true, std::sync::atomic::Ordering::SeqCst);
                async move {
                    if first {
                        Err(StepError::retryable("card network busy"))
                    } else {
                        Ok(())
                    }
                }
            })
            .build()
            .expect("valid participant")
    };
    let (stop, _) = watch::channel(false);
    let running = {
        let engine = engine.clone();
        let stop = stopped(stop.subscribe());
        tokio::spawn(async move { engine.run(stop).await.expect("engine runs") })
    };
    let serving = {
        let transport = transport.clone();
        let stop = stopped(stop.subscribe());
        tokio::spawn(async move { shop.run(transport, stop).await.expect("shop runs") })
    };
    let id = engine.start(&saga, Order::default()).await.expect("start");
    assert_eq!(
        engine.wait(id, WAIT).await.expect("ends").status,
        SagaStatus::Completed
    );
    let _ = stop.send(true);
    running.await.expect("engine task");
    serving.await.expect("shop task");

    let written = |r: &Recording| -> Vec<String> {
        r.written
            .lock()
            .expect("written")
            .iter()
            .map(|(_, v)| v.clone())
            .collect()
    };
    let read = |r: &Recording| -> Vec<String> {
        r.read
            .lock()
            .expect("read")
            .iter()
            .map(|(_, v)| v.clone())
            .collect()
    };
    // reserve, pay (refused), pay again: three commands, each read by the shop.
    assert_eq!(
        written(&engine_side),
        vec!["engine-0", "engine-1", "engine-2"]
    );
    assert_eq!(read(&shop_side), written(&engine_side));
    // Every reply carries the shop's context, which the engine reads; the
    // retry of `pay`, sent by the poller, continues from the refused reply.
    assert_eq!(written(&shop_side), vec!["shop-0", "shop-1", "shop-2"]);
    assert_eq!(
        read(&engine_side),
        vec!["shop-0", "shop-1", "shop-1", "shop-2"],
        "reply, reply, wake-up on the last context, reply"
    );
}
