//! The full engine on PostgreSQL: InMemoryTransport + PgSagaStore, with
//! saga-core's end-to-end suite and its checkout saga
//! (`saga_core::testing::engine_suite`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use saga_core::memory::InMemoryTransport;
use saga_core::testing::CountingStore;
use saga_core::testing::engine_suite::{
    Effects, Order, checkout, checkout_with_timeouts, engine, participants,
};
use saga_core::{Engine, EngineConfig, Inbox, SagaStatus, StartOptions};
use saga_postgres::inbox::PgInbox;
use sea_orm::ConnectionTrait;
use tokio::sync::watch;

use crate::common::TestDb;

/// Participants' handlers take this long.
const DELAY: Duration = Duration::from_millis(100);

fn inbox(test: &TestDb) -> impl Fn() -> Arc<dyn Inbox> + use<> {
    let db = test.db.clone();
    move || Arc::new(PgInbox::new(db.clone()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_engine_survives_being_dropped_and_rebuilt_mid_saga() {
    let test = TestDb::new().await;
    // Each engine on a pool of its own, as two processes would be.
    saga_core::testing::engine_survives_a_crash(|| test.other_store(), &inbox(&test), DELAY).await;
}

/// Engine A only starts and waits: it never consumes replies, and it re-reads
/// the store only every minute, so only a notification can wake it. Engine
/// B, another process, does the work. `wait_on_a` starts the saga on A and
/// waits for it; the saga must complete well before A's first poll.
async fn a_waiter_learns_from_another_engine<F, Fut>(wait_on_a: F)
where
    F: FnOnce(Engine, saga_core::Saga<Order>) -> Fut,
    Fut: std::future::Future<Output = saga_core::SagaInstance>,
{
    let test = TestDb::new().await;
    let saga = checkout();
    let transport = InMemoryTransport::new();
    let (stop, stopped) = watch::channel(());
    let serving = participants(
        &inbox(&test),
        &transport,
        &Effects::default(),
        DELAY,
        &stopped,
    );
    let mut slow_poll = EngineConfig::default();
    slow_poll.wait_poll = Duration::from_secs(60);
    let waiter = Engine::builder(test.store().await, transport.clone())
        .register(&saga)
        .config(slow_poll)
        .build();
    let worker = engine(test.other_store().await, &transport, &saga);
    let running = worker.clone().spawn();

    let started = Instant::now();
    let done = wait_on_a(waiter, saga).await;
    assert_eq!(done.status, SagaStatus::Completed);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "woken by NOTIFY, not by polling ({:?})",
        started.elapsed()
    );

    running.shutdown().await.expect("engine stops");
    drop(stop);
    for task in serving {
        task.await.expect("participant stops");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_waiter_learns_of_a_saga_finished_by_another_engine() {
    a_waiter_learns_from_another_engine(|waiter, saga| async move {
        let id = waiter.start(&saga, Order::new(1)).await.expect("start");
        waiter
            .wait(id, Duration::from_secs(20))
            .await
            .expect("finished elsewhere")
    })
    .await;
}

/// `start_and_wait` reads nothing back first: when another engine finishes
/// the saga, the store's notice is what wakes the waiter.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn start_and_wait_learns_of_a_saga_finished_by_another_engine() {
    a_waiter_learns_from_another_engine(|waiter, saga| async move {
        waiter
            .start_and_wait(
                &saga,
                Order::new(1),
                StartOptions::new(),
                Duration::from_secs(20),
            )
            .await
            .expect("finished elsewhere")
    })
    .await;
}

/// When the engine that waits also finishes the saga, the store's notice
/// (sent at the commit) often arrives before the engine's own: the waiter
/// then waits for the engine's notice, which carries the final state,
/// instead of reading the saga. Before that, every such race cost a read.
///
/// Nothing else may read: the safety-net poll is pushed out of the test's
/// reach, and the steps' timeouts (60 s) too, so that no timeout fires
/// beside its reply on a loaded machine (a version conflict, which costs
/// reads of its own).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn start_and_wait_on_the_finishing_engine_reads_nothing() {
    const SAGAS: usize = 100;
    let test = TestDb::new().await;
    let saga = checkout_with_timeouts(Duration::from_secs(60));
    let transport = InMemoryTransport::new();
    let (stop, stopped) = watch::channel(());
    let serving = participants(
        &inbox(&test),
        &transport,
        &Effects::default(),
        Duration::from_millis(5),
        &stopped,
    );
    let store = CountingStore::new(test.store().await);
    let engine = Engine::builder(store.clone(), transport.clone())
        .register(&saga)
        .poll_interval(Duration::from_millis(50))
        .wait_poll(Duration::from_secs(60))
        .build();
    let running = engine.clone().spawn();

    let waits: Vec<_> = (0..SAGAS)
        .map(|n| {
            let engine = engine.clone();
            let saga = saga.clone();
            tokio::spawn(async move {
                engine
                    .start_and_wait(
                        &saga,
                        Order::new(u32::try_from(n).expect("small") * 2 + 1),
                        StartOptions::new(),
                        Duration::from_secs(30),
                    )
                    .await
            })
        })
        .collect();
    for wait in waits {
        let done = wait.await.expect("task").expect("finishes");
        assert!(done.is_terminal());
    }
    // The control: when the store's notice came first and the engine had
    // just marked its save done, the waiter read the saga instead of taking
    // the engine's notice queued behind: 6 to 22 reads in six runs.
    assert_eq!(
        (store.loads(), store.conflicts()),
        (0, 0),
        "reads and version conflicts for {SAGAS} sagas"
    );

    running.shutdown().await.expect("engine stops");
    drop(stop);
    for task in serving {
        task.await.expect("participant stops");
    }
}

/// The seed guide's debugging query lists a saga's log in its real order:
/// entries written in one transaction get times of their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_guides_query_lists_a_log_in_order() {
    let test = TestDb::new().await;
    let saga = checkout();
    let transport = InMemoryTransport::new();
    let (stop, stopped) = watch::channel(());
    let serving = participants(
        &inbox(&test),
        &transport,
        &Effects::default(),
        DELAY,
        &stopped,
    );
    let engine = engine(test.store().await, &transport, &saga);
    let running = engine.spawn();
    // Order 3 is declined at `charge`: a compensated saga, whose transitions
    // write several entries at once.
    let mut ids = Vec::new();
    for number in [1, 3] {
        ids.push(
            engine
                .start(&saga, Order::new(number))
                .await
                .expect("start"),
        );
    }
    for id in &ids {
        engine
            .wait(*id, Duration::from_secs(20))
            .await
            .expect("ends");
    }
    for id in ids {
        let sql = format!("SELECT * FROM saga_logs WHERE saga_id = '{id}' ORDER BY created_at;");
        let rows = test
            .db
            .query_all_raw(sea_orm::Statement::from_string(
                sea_orm::DbBackend::Postgres,
                sql,
            ))
            .await
            .expect("the guide's query");
        let seqs: Vec<i64> = rows
            .iter()
            .map(|row| row.try_get::<i64>("", "seq").expect("seq"))
            .collect();
        let times: Vec<chrono::DateTime<chrono::Utc>> = rows
            .iter()
            .map(|row| row.try_get("", "created_at").expect("created_at"))
            .collect();
        assert!(seqs.len() > 4, "{seqs:?}");
        assert_eq!(seqs, (0..seqs.len() as i64).collect::<Vec<_>>());
        // Not by luck: no two entries share a time.
        assert!(times.windows(2).all(|w| w[0] < w[1]), "{times:?}");
    }
    running.shutdown().await.expect("engine stops");
    drop(stop);
    for task in serving {
        task.await.expect("participant");
    }
}
