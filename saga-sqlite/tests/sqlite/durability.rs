//! What the file keeps: every acknowledged write across a reopen, a failing
//! write that fails alone inside a commit group, the pragmas that make a
//! commit durable, and clear errors.

use chrono::{SubsecRound, Utc};
use saga_core::{ErrorKind, LogEntry, LogEvent, SagaId, SagaInstance, SagaStatus, SagaStore};
use saga_sqlite::sea_orm::{ConnectionTrait, DbBackend, Statement};
use saga_sqlite::{Durability, Error, SqliteConfig, SqliteSagaStore};
use serde_json::json;

fn instance(n: u32) -> SagaInstance {
    let now = Utc::now().trunc_subsecs(6);
    SagaInstance {
        id: SagaId::new(),
        saga_type: "checkout".to_owned(),
        definition_version: 1,
        status: SagaStatus::Running,
        steps: vec![saga_core::StepStatus::Running],
        cursor: Some(saga_core::adapter::Cursor::first(
            0,
            saga_core::Direction::Invoke,
        )),
        data: json!({ "order": n, "note": "it's \"quoted\" ✓" }),
        error: None,
        idempotency_key: Some(format!("order-{n}")),
        version: 1,
        next_wake_at: Some(now),
        deadline_at: None,
        log_seq: 1,
        created_at: now,
        updated_at: now,
    }
}

fn log(instance: &SagaInstance, seq: u32) -> LogEntry {
    LogEntry {
        saga_id: instance.id,
        seq,
        event: if seq == 0 {
            LogEvent::SagaStarted
        } else {
            LogEvent::StepSucceeded
        },
        step: None,
        attempt: None,
        payload: json!({ "seq": seq }),
        at: Utc::now().trunc_subsecs(6),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reopened_file_holds_every_acknowledged_write() {
    let folder = tempfile::tempdir().expect("temporary folder");
    let config = SqliteConfig::file(folder.path().join("sagas.db"));
    let store = SqliteSagaStore::open(&config).await.expect("open");
    // Concurrent writers: the writer commits them in groups.
    let writes = (0..200).map(|n| {
        let store = store.clone();
        async move {
            let created = instance(n);
            store
                .create(&created, &[log(&created, 0)])
                .await
                .expect("create");
            let mut done = created.clone();
            done.version = 2;
            done.log_seq = 2;
            done.status = SagaStatus::Completed;
            done.cursor = None;
            done.next_wake_at = None;
            store.save(&done, 1, &[log(&done, 1)]).await.expect("save");
            done
        }
    });
    let written: Vec<SagaInstance> = futures_join_all(writes).await;
    drop(store);

    let reopened = SqliteSagaStore::open(&config).await.expect("reopen");
    for saga in &written {
        let loaded = reopened.load(saga.id).await.expect("load").expect("kept");
        assert_eq!(&loaded, saga);
        let logs = reopened.logs(saga.id).await.expect("logs");
        assert_eq!(logs.iter().map(|l| l.seq).collect::<Vec<_>>(), [0, 1]);
    }
}

/// `join_all` without a futures dependency: spawn and await in order.
async fn futures_join_all<T: Send + 'static>(
    futures: impl Iterator<Item = impl Future<Output = T> + Send + 'static>,
) -> Vec<T> {
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for handle in handles {
        out.push(handle.await.expect("task"));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_write_fails_alone_in_its_commit_group() {
    let folder = tempfile::tempdir().expect("temporary folder");
    let store = SqliteSagaStore::open(&SqliteConfig::file(folder.path().join("sagas.db")))
        .await
        .expect("open");
    let first = instance(0);
    store.create(&first, &[]).await.expect("create");
    // 100 creates at once, one of them reusing `first`'s id (a duplicate
    // that fails after nothing, or after its log rows, were written).
    let mut duplicate = instance(1000);
    duplicate.id = first.id;
    let mut batch: Vec<SagaInstance> = (1..100).map(instance).collect();
    batch.insert(50, duplicate.clone());
    let results = futures_join_all(batch.clone().into_iter().map(|saga| {
        let store = store.clone();
        async move {
            let logs = [log(&saga, 0)];
            store.create(&saga, &logs).await.map(|_| saga.id)
        }
    }))
    .await;
    for (saga, result) in batch.iter().zip(&results) {
        if saga.idempotency_key == duplicate.idempotency_key {
            let error = result.as_ref().expect_err("a duplicate id is refused");
            assert_eq!(error.kind(), ErrorKind::Duplicate, "{error}");
        } else {
            result.as_ref().expect("the others are created");
            assert!(store.load(saga.id).await.expect("load").is_some());
        }
    }
    // The refused create left nothing: `first` is intact and has no log rows.
    assert_eq!(
        store.load(first.id).await.expect("load"),
        Some(first.clone())
    );
    assert!(store.logs(first.id).await.expect("logs").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_is_in_wal_mode_with_the_chosen_durability() {
    let folder = tempfile::tempdir().expect("temporary folder");
    for (durability, expected) in [(Durability::Full, 2), (Durability::Normal, 1)] {
        let config =
            SqliteConfig::file(folder.path().join(format!("{expected}.db"))).durability(durability);
        let db = config.connect().await.expect("connect");
        let pragma = |sql: &'static str| {
            let db = db.clone();
            async move {
                db.query_one_raw(Statement::from_string(DbBackend::Sqlite, sql))
                    .await
                    .expect("pragma")
                    .expect("a row")
            }
        };
        let journal: String = pragma("PRAGMA journal_mode")
            .await
            .try_get_by_index(0)
            .expect("text");
        let synchronous: i64 = pragma("PRAGMA synchronous")
            .await
            .try_get_by_index(0)
            .expect("int");
        assert_eq!((journal.as_str(), synchronous), ("wal", expected));
    }
}

#[tokio::test]
async fn a_folder_that_does_not_exist_is_a_clear_error() {
    let folder = tempfile::tempdir().expect("temporary folder");
    let path = folder.path().join("missing").join("sagas.db");
    let error = SqliteSagaStore::open(&SqliteConfig::file(&path))
        .await
        .expect_err("no folder");
    assert_eq!(error.kind(), ErrorKind::Unavailable);
    assert!(
        error.to_string().contains(&path.display().to_string()),
        "names the file: {error}"
    );
}

#[tokio::test]
async fn a_store_on_an_unmigrated_database_asks_for_the_migrations() {
    let db = SqliteConfig::memory().connect().await.expect("connect");
    let error = SqliteSagaStore::new(db.clone())
        .await
        .expect_err("no tables");
    assert!(matches!(error, Error::Schema { .. }), "{error:?}");
    assert!(error.to_string().contains("run the migrations"), "{error}");
    saga_sqlite::migrate(&db).await.expect("migrate");
    saga_sqlite::migrate(&db)
        .await
        .expect("migrate is idempotent");
    SqliteSagaStore::new(db)
        .await
        .expect("store on the migrated database");
}

/// A wake-up past year 9999 (a step timeout of `Duration::MAX` saturates at
/// chrono's last year) is stored as the last time a four-digit year holds:
/// the saga is never due, and claims and loads keep working.
#[tokio::test]
async fn a_wake_up_at_the_end_of_time_is_never_due_and_breaks_nothing() {
    let store = SqliteSagaStore::open(&SqliteConfig::memory())
        .await
        .expect("open");
    let mut forever = instance(1);
    forever.next_wake_at = Some(chrono::DateTime::<Utc>::MAX_UTC);
    forever.deadline_at = Some(chrono::DateTime::<Utc>::MAX_UTC);
    store.create(&forever, &[]).await.expect("create");
    let due = instance(2);
    store.create(&due, &[]).await.expect("create");
    let definitions = [saga_core::adapter::DefinitionKey::new("checkout", 1)];
    let claimed = store
        .claim_due(
            Utc::now(),
            10,
            "engine-a",
            std::time::Duration::MAX,
            &definitions,
        )
        .await
        .expect("claims work");
    assert_eq!(claimed.iter().map(|s| s.id).collect::<Vec<_>>(), [due.id]);
    let loaded = store.load(forever.id).await.expect("load").expect("stored");
    assert_eq!(
        loaded
            .next_wake_at
            .map(|t| t.format("%Y").to_string())
            .as_deref(),
        Some("9999")
    );
    // The endless lease holds: another engine does not take the claimed saga.
    let again = store
        .claim_due(
            Utc::now(),
            10,
            "engine-b",
            std::time::Duration::from_secs(1),
            &definitions,
        )
        .await
        .expect("claims work");
    assert!(again.is_empty(), "{again:?}");
}

/// Another connection holds the file's write lock: every write of a group
/// fails after one busy timeout, not one timeout per write in turn (which
/// made the last of 40 writes wait 40 timeouts, with the writer stuck).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_meeting_a_held_lock_fail_after_one_busy_timeout() {
    let folder = tempfile::tempdir().expect("temporary folder");
    let config = SqliteConfig::file(folder.path().join("sagas.db"))
        .busy_timeout(std::time::Duration::from_millis(250));
    let store = SqliteSagaStore::open(&config).await.expect("open");
    // One connection, so that the ROLLBACK below ends the BEGIN's transaction.
    let holder = config
        .clone()
        .max_connections(1)
        .connect()
        .await
        .expect("a second connection");
    holder
        .execute_unprepared("BEGIN IMMEDIATE")
        .await
        .expect("take the write lock");
    let started = std::time::Instant::now();
    let writes = (0..40).map(|n| {
        let store = store.clone();
        async move {
            let created = instance(n);
            let logs = vec![log(&created, 0)];
            store.create(&created, &logs).await
        }
    });
    let results = futures_join_all(writes).await;
    let waited = started.elapsed();
    holder
        .execute_unprepared("ROLLBACK")
        .await
        .expect("release");
    for result in &results {
        let e = result.as_ref().expect_err("the lock is held");
        assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    }
    // One group waits 0.25 s, or two (the first write may go alone);
    // a timeout per write would be 10 s.
    assert!(
        waited < std::time::Duration::from_secs(4),
        "40 writes took {waited:?} to fail"
    );
}

/// A due saga whose row cannot be read (edited by hand, written by a newer
/// version) is skipped: it used to fail the claim, and since it comes first
/// again on every poll, stop every saga's timeouts and retries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_due_saga_that_cannot_be_read_does_not_stop_the_others() {
    let folder = tempfile::tempdir().expect("temporary folder");
    let config = SqliteConfig::file(folder.path().join("sagas.db"));
    let store = SqliteSagaStore::open(&config).await.expect("open");
    let mut unreadable = instance(1);
    unreadable.next_wake_at = Some(Utc::now().trunc_subsecs(6) - chrono::Duration::seconds(60));
    let fine = instance(2);
    store.create(&unreadable, &[]).await.expect("create");
    store.create(&fine, &[]).await.expect("create");
    let db = config.connect().await.expect("a second connection");
    db.execute_raw(Statement::from_sql_and_values(
        DbBackend::Sqlite,
        "UPDATE saga_state SET steps = '[\"a step status from the future\"]' WHERE id = ?",
        [unreadable.id.to_string().into()],
    ))
    .await
    .expect("corrupt the row");
    let claimed = store
        .claim_due(
            Utc::now() + chrono::Duration::seconds(1),
            10,
            "engine-a",
            std::time::Duration::from_secs(30),
            &[saga_core::adapter::DefinitionKey::new("checkout", 1)],
        )
        .await
        .expect("the claim does not fail");
    assert_eq!(
        claimed.iter().map(|s| s.id).collect::<Vec<_>>(),
        vec![fine.id]
    );
}
