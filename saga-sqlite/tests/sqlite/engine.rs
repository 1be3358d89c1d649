//! The full engine on SQLite: InMemoryTransport + SqliteSagaStore, the
//! participants deduplicating through a SqliteInbox in their own file, with
//! saga-core's end-to-end suite and its checkout saga
//! (`saga_core::testing::engine_suite`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use saga_core::memory::InMemoryTransport;
use saga_core::testing::engine_suite::{Effects, Order, checkout, engine, participants};
use saga_core::{Engine, EngineConfig, Inbox, SagaStatus};
use saga_sqlite::inbox::SqliteInbox;
use saga_sqlite::sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement};
use saga_sqlite::{SqliteConfig, SqliteSagaStore};
use tokio::sync::watch;

/// Short: a claim holds the participants' file while its handler runs.
const DELAY: Duration = Duration::from_millis(20);

/// A test's files: the orchestrator's saga store and the participants' inbox.
struct TestFiles {
    folder: tempfile::TempDir,
    inbox: DatabaseConnection,
}

impl TestFiles {
    async fn new() -> Self {
        let folder = tempfile::tempdir().expect("temporary folder");
        // One connection: claims serialize on it instead of on the file's lock.
        let inbox = SqliteConfig::file(folder.path().join("participants.db"))
            .max_connections(1)
            .connect()
            .await
            .expect("inbox database");
        saga_sqlite::migrate(&inbox).await.expect("migrate");
        Self { folder, inbox }
    }

    /// A store on the orchestrator's file, as a (re)started process opens it.
    async fn store(&self) -> SqliteSagaStore {
        SqliteSagaStore::open(&SqliteConfig::file(
            self.folder.path().join("orchestrator.db"),
        ))
        .await
        .expect("store")
    }

    fn inbox(&self) -> impl Fn() -> Arc<dyn Inbox> + use<> {
        let db = self.inbox.clone();
        move || Arc::new(SqliteInbox::new(db.clone()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_engine_survives_being_dropped_and_rebuilt_mid_saga() {
    let test = TestFiles::new().await;
    // The second engine reopens the file, as a restarted process would.
    saga_core::testing::engine_survives_a_crash(|| test.store(), &test.inbox(), DELAY).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_waiter_learns_of_a_saga_finished_by_another_engine_on_the_store() {
    let test = TestFiles::new().await;
    let saga = checkout();
    let transport = InMemoryTransport::new();
    let (stop, stopped) = watch::channel(());
    let serving = participants(
        &test.inbox(),
        &transport,
        &Effects::default(),
        DELAY,
        &stopped,
    );

    // Engine A only starts and waits, re-reading the store only every
    // minute: only the store's notification can wake it.
    let store = test.store().await;
    let mut slow_poll = EngineConfig::default();
    slow_poll.wait_poll = Duration::from_secs(60);
    let waiter = Engine::builder(store.clone(), transport.clone())
        .register(&saga)
        .config(slow_poll)
        .build();
    // Engine B, sharing the store, does the work.
    let worker = engine(store, &transport, &saga);
    let running = worker.clone().spawn();

    let id = waiter.start(&saga, Order::new(1)).await.expect("start");
    let started = Instant::now();
    let done = waiter
        .wait(id, Duration::from_secs(20))
        .await
        .expect("finished elsewhere");
    assert_eq!(done.status, SagaStatus::Completed);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "woken by the store's notification, not by polling ({:?})",
        started.elapsed()
    );
    running.shutdown().await.expect("engine stops");
    drop(stop);
    for task in serving {
        task.await.expect("participant stops");
    }
}

/// The seed guide's debugging query lists a saga's log in its real order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_guides_query_lists_a_log_in_order() {
    let test = TestFiles::new().await;
    let saga = checkout();
    let transport = InMemoryTransport::new();
    let (stop, stopped) = watch::channel(());
    let serving = participants(
        &test.inbox(),
        &transport,
        &Effects::default(),
        DELAY,
        &stopped,
    );
    let store = test.store().await;
    let engine = engine(store.clone(), &transport, &saga);
    let running = engine.spawn();
    // Order 3 is declined at `charge`: a compensated saga.
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
        let rows = store
            .connection()
            .query_all_raw(Statement::from_string(DbBackend::Sqlite, sql))
            .await
            .expect("the guide's query");
        let seqs: Vec<i64> = rows
            .iter()
            .map(|row| row.try_get::<i64>("", "seq").expect("seq"))
            .collect();
        let times: Vec<String> = rows
            .iter()
            .map(|row| row.try_get("", "created_at").expect("created_at"))
            .collect();
        assert!(seqs.len() > 4, "{seqs:?}");
        assert_eq!(seqs, (0..seqs.len() as i64).collect::<Vec<_>>());
        assert!(times.windows(2).all(|w| w[0] < w[1]), "{times:?}");
    }
    running.shutdown().await.expect("engine stops");
    drop(stop);
    for task in serving {
        task.await.expect("participant");
    }
}

/// Several engines in one process, each on its own store opened on the same
/// file: the write lock makes their claims disjoint, so no step is
/// dispatched twice while its lease holds, and every saga ends once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn engines_on_stores_of_one_file_share_the_work() {
    let test = TestFiles::new().await;
    let saga = checkout();
    let transport = InMemoryTransport::new();
    let effects = Effects::default();
    let (stop, stopped) = watch::channel(());
    let serving = participants(&test.inbox(), &transport, &effects, DELAY, &stopped);
    let engines = [
        engine(test.store().await, &transport, &saga),
        engine(test.store().await, &transport, &saga),
    ];
    let running: Vec<_> = engines.iter().map(|e| e.clone().spawn()).collect();
    let mut ids = Vec::new();
    for number in 0..40u32 {
        let starter = &engines[number as usize % 2];
        ids.push(
            starter
                .start(&saga, Order::new(number))
                .await
                .expect("start"),
        );
    }
    for id in &ids {
        let done = engines[0]
            .wait(*id, Duration::from_secs(30))
            .await
            .expect("finishes");
        assert!(done.is_terminal());
        let logs = engines[1].logs(*id).await.expect("logs");
        assert_eq!(
            saga_core::testing::dispatched_twice(&logs),
            Vec::<String>::new(),
            "saga {id}"
        );
        assert_eq!(effects.of(*id, "reserve"), 1, "saga {id}");
    }
    for engine in running {
        engine.shutdown().await.expect("engine stops");
    }
    drop(stop);
    for task in serving {
        task.await.expect("participant");
    }
}
