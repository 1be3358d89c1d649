use std::collections::HashSet;
use std::time::Duration;

use chrono::{SubsecRound, Utc};
use saga_core::adapter::{Created, DefinitionKey, SagaQuery};
use saga_core::{
    Direction, Error, ErrorKind, LogEvent, SagaId, SagaStatus, SagaStore, StepStatus,
    adapter::{Cursor, Waiting},
};
use saga_postgres::entity::saga_state;
use sea_orm::{ConnectionTrait, EntityTrait};
use serde_json::json;

use crate::common::{TestDb, at, instance, log, next};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn optimistic_conflict_between_two_writers() {
    let test = TestDb::new().await;
    // Two stores on separate pools: two orchestrator processes.
    let (a, b) = (test.store().await, test.other_store().await);
    let saga = instance("conflict", None, None);
    a.create(&saga, &[log(&saga, 0, LogEvent::SagaStarted)])
        .await
        .expect("create");

    for round in 0..10 {
        let current = a.load(saga.id).await.expect("load").expect("exists");
        let mut from_a = next(&current, 1);
        from_a.data = json!({ "writer": "a", "round": round });
        let mut from_b = next(&current, 1);
        from_b.data = json!({ "writer": "b", "round": round });
        let seq = current.log_seq;
        let (log_a, log_b) = (
            [log(&from_a, seq, LogEvent::StepSucceeded)],
            [log(&from_b, seq, LogEvent::StepFailed)],
        );
        let (ra, rb) = tokio::join!(
            a.save(&from_a, current.version, &log_a),
            b.save(&from_b, current.version, &log_b),
        );
        let winner = match (ra, rb) {
            (Ok(()), Err(Error::Conflict { id, expected })) => {
                assert_eq!((id, expected), (saga.id, current.version));
                from_a
            }
            (Err(Error::Conflict { .. }), Ok(())) => from_b,
            other => {
                panic!("exactly one writer must win and the other get Error::Conflict: {other:?}")
            }
        };
        let stored = b.load(saga.id).await.expect("load").expect("exists");
        assert_eq!(
            stored, winner,
            "the winner's state is stored, nothing of the loser's"
        );
    }
    let logs = a.logs(saga.id).await.expect("logs");
    assert_eq!(
        logs.len(),
        11,
        "one entry per winning save, none of the losers'"
    );
    assert_eq!(
        logs.iter().map(|l| l.seq).collect::<Vec<_>>(),
        (0..11).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_claimers_get_disjoint_sagas() {
    let test = TestDb::new().await;
    let (a, b) = (test.store().await, test.other_store().await);
    let mut ids = HashSet::new();
    for i in 0..120 {
        let saga = instance("claimed", None, Some(at(1_000 + i)));
        a.create(&saga, &[]).await.expect("create");
        ids.insert(saga.id);
    }
    let lease = Duration::from_secs(60);
    let claimer = |store: saga_postgres::PgSagaStore, owner: &'static str| async move {
        let mut mine = Vec::new();
        loop {
            let batch = store
                .claim_due(
                    at(5_000),
                    7,
                    owner,
                    lease,
                    &[DefinitionKey::new("claimed", 1)],
                )
                .await
                .expect("claim");
            if batch.is_empty() {
                return mine;
            }
            mine.extend(batch.into_iter().map(|s| s.id));
        }
    };
    let (mine_a, mine_b) = tokio::join!(
        tokio::spawn(claimer(a.clone(), "a")),
        tokio::spawn(claimer(b.clone(), "b"))
    );
    let (mine_a, mine_b) = (mine_a.expect("claimer a"), mine_b.expect("claimer b"));
    let set_a: HashSet<SagaId> = mine_a.iter().copied().collect();
    let set_b: HashSet<SagaId> = mine_b.iter().copied().collect();
    assert_eq!(set_a.len(), mine_a.len(), "no saga claimed twice by a");
    assert!(set_a.is_disjoint(&set_b), "no saga claimed by both");
    assert_eq!(&set_a | &set_b, ids, "every due saga claimed");
    assert!(
        !set_a.is_empty() && !set_b.is_empty(),
        "both claimers got work ({} / {})",
        set_a.len(),
        set_b.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_lease_is_reclaimed_by_another_owner() {
    let test = TestDb::new().await;
    let store = test.store().await;
    let saga = instance("leased", None, Some(at(100)));
    store.create(&saga, &[]).await.expect("create");
    let lease = Duration::from_secs(30);

    let first = store
        .claim_due(
            at(200),
            10,
            "engine-a",
            lease,
            &[DefinitionKey::new("leased", 1)],
        )
        .await
        .expect("claim");
    assert_eq!(
        first.iter().map(|s| s.id).collect::<Vec<_>>(),
        vec![saga.id]
    );
    assert_eq!(first[0], saga, "a claimed saga is returned as stored");
    let row = saga_state::Entity::find_by_id(*saga.id.as_uuid())
        .one(&test.db)
        .await
        .expect("row")
        .expect("exists");
    assert_eq!(row.lease_owner.as_deref(), Some("engine-a"));
    assert_eq!(row.lease_until, Some(at(230)));

    assert!(
        store
            .claim_due(
                at(229),
                10,
                "engine-b",
                lease,
                &[DefinitionKey::new("leased", 1)]
            )
            .await
            .expect("claim")
            .is_empty(),
        "lease still held"
    );
    let second = store
        .claim_due(
            at(230),
            10,
            "engine-b",
            lease,
            &[DefinitionKey::new("leased", 1)],
        )
        .await
        .expect("claim");
    assert_eq!(second.len(), 1, "the lease expired: engine-b takes over");
    let row = saga_state::Entity::find_by_id(*saga.id.as_uuid())
        .one(&test.db)
        .await
        .expect("row")
        .expect("exists");
    assert_eq!(row.lease_owner.as_deref(), Some("engine-b"));

    // Saving releases the lease; a saga that is not due is never claimed.
    let mut idle = next(&saga, 0);
    idle.next_wake_at = None;
    store.save(&idle, saga.version, &[]).await.expect("save");
    let row = saga_state::Entity::find_by_id(*saga.id.as_uuid())
        .one(&test.db)
        .await
        .expect("row")
        .expect("exists");
    assert_eq!((row.lease_owner, row.lease_until), (None, None));
    assert!(
        store
            .claim_due(
                at(10_000),
                10,
                "engine-c",
                lease,
                &[DefinitionKey::new("leased", 1)]
            )
            .await
            .expect("claim")
            .is_empty()
    );
}

/// A due saga whose row cannot be read (edited by hand, written by a newer
/// version) is skipped: the others of its batch are claimed and returned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_due_saga_that_cannot_be_read_does_not_hold_up_the_others() {
    let test = TestDb::new().await;
    let store = test.store().await;
    let unreadable = instance("unreadable", None, Some(at(100)));
    let fine = instance("unreadable", None, Some(at(150)));
    store.create(&unreadable, &[]).await.expect("create");
    store.create(&fine, &[]).await.expect("create");
    test.db
        .execute_raw(sea_orm::Statement::from_sql_and_values(
            sea_orm::DbBackend::Postgres,
            "UPDATE saga_state SET steps = '[\"a step status from the future\"]' WHERE id = $1",
            [(*unreadable.id.as_uuid()).into()],
        ))
        .await
        .expect("corrupt the row");
    let claimed = store
        .claim_due(
            at(200),
            10,
            "engine-a",
            Duration::from_secs(30),
            &[DefinitionKey::new("unreadable", 1)],
        )
        .await
        .expect("the claim does not fail");
    assert_eq!(
        claimed.iter().map(|s| s.id).collect::<Vec<_>>(),
        vec![fine.id]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_idempotency_key_returns_the_first_saga_even_under_a_race() {
    let test = TestDb::new().await;
    let (a, b) = (test.store().await, test.other_store().await);
    let first = instance("dup", Some("order-42"), None);
    assert_eq!(
        a.create(&first, &[log(&first, 0, LogEvent::SagaStarted)])
            .await
            .expect("create"),
        Created::New
    );
    let again = instance("dup", Some("order-42"), None);
    match b
        .create(&again, &[log(&again, 0, LogEvent::SagaStarted)])
        .await
        .expect("create")
    {
        Created::Existing(existing) => assert_eq!(*existing, first, "the first saga, as stored"),
        Created::New => panic!("a duplicate key must not create a second saga"),
    }

    // Sixteen concurrent starts with one fresh key: one wins, all see its id.
    let racers: Vec<_> = (0..16)
        .map(|_| instance("dup", Some("order-43"), None))
        .collect();
    let results = futures_join_all(racers.iter().enumerate().map(|(i, saga)| {
        let store = if i % 2 == 0 { a.clone() } else { b.clone() };
        let saga = saga.clone();
        async move {
            (
                saga.id,
                store
                    .create(&saga, &[log(&saga, 0, LogEvent::SagaStarted)])
                    .await
                    .expect("create"),
            )
        }
    }))
    .await;
    let winners: Vec<SagaId> = results
        .iter()
        .filter(|(_, c)| *c == Created::New)
        .map(|(id, _)| *id)
        .collect();
    assert_eq!(winners.len(), 1, "exactly one start creates the saga");
    for (_, created) in &results {
        if let Created::Existing(existing) = created {
            assert_eq!(existing.id, winners[0]);
        }
    }
    for saga in &racers {
        if saga.id != winners[0] {
            assert!(a.load(saga.id).await.expect("load").is_none());
            assert!(
                a.logs(saga.id).await.expect("logs").is_empty(),
                "a losing start writes no log"
            );
        }
    }
    assert_eq!(
        saga_state::Entity::find()
            .all(&test.db)
            .await
            .expect("rows")
            .len(),
        2
    );

    // The same id twice (without a key) is a typed duplicate, not a silent overwrite.
    let err = a
        .create(&first_without_key(&first), &[])
        .await
        .expect_err("duplicate id");
    assert_eq!(err.kind(), ErrorKind::Duplicate, "{err}");
}

fn first_without_key(saga: &saga_core::SagaInstance) -> saga_core::SagaInstance {
    let mut copy = saga.clone();
    copy.idempotency_key = None;
    copy
}

async fn futures_join_all<F: std::future::Future + Send + 'static>(
    futures: impl Iterator<Item = F>,
) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for handle in handles {
        out.push(handle.await.expect("task"));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_are_ordered_and_complete() {
    let test = TestDb::new().await;
    let store = test.store().await;
    let saga = instance("logged", None, None);
    let mut written = vec![log(&saga, 0, LogEvent::SagaStarted)];
    store.create(&saga, &written).await.expect("create");
    let mut current = saga.clone();
    let events = [
        LogEvent::StepDispatched,
        LogEvent::StepSucceeded,
        LogEvent::RetryScheduled,
        LogEvent::ReplyIgnored,
    ];
    for round in 0..25u32 {
        let count = round % 4; // some transitions write no entry, some several
        let updated = next(&current, count);
        let entries: Vec<_> = (0..count)
            .map(|i| {
                let mut entry = log(
                    &updated,
                    current.log_seq + i,
                    events[(round + i) as usize % events.len()],
                );
                entry.step = (i % 2 == 0).then(|| format!("step-{round}"));
                entry.attempt = (i % 2 == 1).then_some(round);
                entry.payload = match i {
                    0 => {
                        json!({ "round": round, "i": i, "text": "naïve \"quoted\" 🚀", "n": null })
                    }
                    1 => json!(null), // a unit reply
                    _ => json!([round, "x"]),
                };
                entry
            })
            .collect();
        store
            .save(&updated, current.version, &entries)
            .await
            .expect("save");
        written.extend(entries);
        current = updated;
    }
    assert_eq!(
        store.logs(saga.id).await.expect("logs"),
        written,
        "every entry, in order, exactly as written"
    );
    assert_eq!(current.log_seq as usize, written.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_returns_exactly_what_was_saved() {
    let test = TestDb::new().await;
    let store = test.store().await;
    let mut saga = instance("faithful", Some("key-ü"), Some(Utc::now().trunc_subsecs(6)));
    saga.definition_version = 7;
    saga.deadline_at = Some(Utc::now().trunc_subsecs(6) + chrono::Duration::days(1));
    saga.data = json!({ "big": u64::MAX, "float": 1.5, "neg": -3, "list": [1, "two", null], "s": "O'Reilly" });
    store.create(&saga, &[]).await.expect("create");
    assert_eq!(store.load(saga.id).await.expect("load"), Some(saga.clone()));

    let mut compensating = next(&saga, 0);
    compensating.status = SagaStatus::Compensating;
    compensating.steps = vec![
        StepStatus::Uncertain,
        StepStatus::Compensating,
        StepStatus::Failed,
    ];
    compensating.cursor = Some(Cursor {
        step: 1,
        direction: Direction::Compensate,
        attempt: 4,
        waiting: Waiting::Retry,
        uncertain: true,
        round_from: 3,
        key_from: 3,
        refused: false,
    });
    compensating.error = Some("payment declined: \"insufficient funds\"".to_owned());
    store
        .save(&compensating, saga.version, &[])
        .await
        .expect("save");
    assert_eq!(
        store.load(saga.id).await.expect("load"),
        Some(compensating.clone())
    );

    let mut nothing = next(&compensating, 0);
    nothing.data = json!(null);
    store
        .save(&nothing, compensating.version, &[])
        .await
        .expect("save");
    assert_eq!(
        store.load(saga.id).await.expect("load"),
        Some(nothing.clone()),
        "JSON null data stays JSON null"
    );
    let compensating = nothing;

    let mut done = next(&compensating, 0);
    done.status = SagaStatus::Compensated;
    done.cursor = None;
    done.next_wake_at = None;
    done.steps = vec![
        StepStatus::Compensated,
        StepStatus::Compensated,
        StepStatus::Failed,
    ];
    store
        .save(&done, compensating.version, &[])
        .await
        .expect("save");
    assert_eq!(store.load(saga.id).await.expect("load"), Some(done));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_list_by_status_type_and_age() {
    let test = TestDb::new().await;
    let store = test.store().await;
    let old = Utc::now().trunc_subsecs(6) - chrono::Duration::hours(2);
    let mut sagas = Vec::new();
    for (i, status) in [
        SagaStatus::Running,
        SagaStatus::Running,
        SagaStatus::Failed,
        SagaStatus::Completed,
    ]
    .into_iter()
    .enumerate()
    {
        let mut saga = instance(if i == 3 { "other" } else { "checkout" }, None, None);
        saga.status = status;
        saga.updated_at = old + chrono::Duration::minutes(i as i64 * 30);
        store.create(&saga, &[]).await.expect("create");
        sagas.push(saga);
    }
    let ids =
        |list: Vec<saga_core::SagaInstance>| list.into_iter().map(|s| s.id).collect::<Vec<_>>();
    let all = store.list(&SagaQuery::default()).await.expect("list");
    assert_eq!(
        ids(all),
        vec![sagas[3].id, sagas[2].id, sagas[1].id, sagas[0].id],
        "newest first"
    );
    let failed = store
        .list(&SagaQuery::new().status(SagaStatus::Failed))
        .await
        .expect("list");
    assert_eq!(ids(failed), vec![sagas[2].id]);
    let stuck = store
        .list(
            &SagaQuery::new()
                .status(SagaStatus::Running)
                .updated_before(old + chrono::Duration::minutes(15)),
        )
        .await
        .expect("list");
    assert_eq!(
        ids(stuck),
        vec![sagas[0].id],
        "running and not updated for long: stuck"
    );
    let typed = store
        .list(&SagaQuery::new().saga_type("checkout").limit(2))
        .await
        .expect("list");
    assert_eq!(ids(typed), vec![sagas[2].id, sagas[1].id]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saga_finished_through_one_store_is_announced_on_another() {
    let test = TestDb::new().await;
    let (waiter, finisher) = (test.store().await, test.other_store().await);
    let mut events = waiter
        .finished_events()
        .expect("the Postgres store notifies");
    let saga = instance("announced", None, None);
    finisher.create(&saga, &[]).await.expect("create");
    let running = next(&saga, 0);
    finisher
        .save(&running, saga.version, &[])
        .await
        .expect("save");
    let mut done = next(&running, 0);
    done.status = SagaStatus::Failed;
    done.cursor = None;
    finisher
        .save(&done, running.version, &[])
        .await
        .expect("save");
    let id = tokio::time::timeout(Duration::from_secs(10), events.recv())
        .await
        .expect("announced within 10 s")
        .expect("channel open");
    assert_eq!(id, saga.id, "only the terminal save is announced");

    // A save that loses its version check announces nothing (it never commits).
    let other = instance("announced", None, None);
    finisher.create(&other, &[]).await.expect("create");
    let mut stale = next(&other, 0);
    stale.status = SagaStatus::Completed;
    finisher.save(&stale, 99, &[]).await.expect_err("conflict");
    assert!(
        tokio::time::timeout(Duration::from_millis(300), events.recv())
            .await
            .is_err(),
        "nothing announced for a rolled-back save"
    );
}

/// A store that runs one save statement at a time, so saves issued
/// together pile up into batches.
async fn one_save_statement_at_a_time(test: &TestDb) -> saga_postgres::PgSagaStore {
    let config = saga_postgres::StoreConfig::default().save_batching(16, 1);
    saga_postgres::PgSagaStore::with_config(test.db.clone(), config)
        .await
        .expect("store")
}

/// `n` sagas created one after the other, each with its start entry.
async fn started(store: &saga_postgres::PgSagaStore, n: usize) -> Vec<saga_core::SagaInstance> {
    let mut sagas = Vec::new();
    for _ in 0..n {
        let saga = instance("grouped", None, None);
        store
            .create(&saga, &[log(&saga, 0, LogEvent::SagaStarted)])
            .await
            .expect("create");
        sagas.push(saga);
    }
    sagas
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grouped_saves_are_each_checked_on_their_own() {
    let test = TestDb::new().await;
    let store = one_save_statement_at_a_time(&test).await;
    let sagas = started(&store, 30).await;
    // Per saga, all at once: two writers racing from the same version (one
    // must win, whatever batch each lands in), and a writer with a stale
    // version. Saga 0's second writer also repeats log entry 0, a primary key
    // violation that fails its batch: only that save may fail.
    let mut saves = tokio::task::JoinSet::new();
    for (i, saga) in sagas.iter().enumerate() {
        for writer in 0..3u32 {
            let store = store.clone();
            // Writers 1 and 2 write no log entry, so that no log key can
            // stop a wrong update (except saga 0's second writer).
            let entries = match (i, writer) {
                (_, 0) | (0, 1) => 1,
                _ => 0,
            };
            let mut after = next(saga, entries);
            after.data = json!({ "writer": writer });
            let seq = if i == 0 && writer == 1 {
                0
            } else {
                saga.log_seq
            };
            let entries: Vec<_> = (0..entries)
                .map(|_| log(&after, seq, LogEvent::StepSucceeded))
                .collect();
            let expected = if writer == 2 {
                saga.version - 1
            } else {
                saga.version
            };
            saves.spawn(async move {
                let result = store.save(&after, expected, &entries).await;
                (i, writer, after, result)
            });
        }
    }
    let mut winners = vec![None; sagas.len()];
    while let Some(joined) = saves.join_next().await {
        let (i, writer, after, result) = joined.expect("save task");
        match (writer, result) {
            (2, Err(Error::Conflict { .. })) => {}
            (2, other) => panic!("a stale version must conflict: {other:?}"),
            (_, Ok(())) => {
                assert!(winners[i].is_none(), "saga {i}: two writers won");
                winners[i] = Some(after);
            }
            (_, Err(Error::Conflict { .. })) => {}
            (1, Err(e)) if i == 0 => assert_ne!(e.kind(), ErrorKind::Conflict),
            (_, Err(e)) => panic!("saga {i} writer {writer}: unexpected {e}"),
        }
    }
    for (i, (saga, winner)) in sagas.iter().zip(winners).enumerate() {
        let winner = winner.unwrap_or_else(|| panic!("saga {i}: no writer won"));
        let stored = store.load(saga.id).await.expect("load").expect("exists");
        assert_eq!(stored, winner, "saga {i}: the winner's state is stored");
        let logs = store.logs(saga.id).await.expect("logs");
        let expected: Vec<u32> = (0..stored.log_seq).collect();
        assert_eq!(
            logs.iter().map(|l| l.seq).collect::<Vec<_>>(),
            expected,
            "saga {i}: the start entry and the winner's, nothing else"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_amid_grouped_saves_are_each_checked_on_their_own() {
    let test = TestDb::new().await;
    let store = one_save_statement_at_a_time(&test).await;
    let existing = started(&store, 10).await;

    // All at once: 20 creates with no key, 5 pairs of creates sharing a key,
    // a create reusing an existing id (only it may fail), and a save of each
    // existing saga (grouped into batches while the creates run).
    let mut creates: Vec<(Option<usize>, saga_core::SagaInstance)> = (0..20)
        .map(|_| (None, instance("grouped", None, None)))
        .collect();
    for pair in 0..5 {
        for _ in 0..2 {
            let key = format!("pair-{pair}");
            creates.push((Some(pair), instance("grouped", Some(&key), None)));
        }
    }
    let reused = first_without_key(&existing[0]);
    let mut tasks = tokio::task::JoinSet::new();
    for (pair, saga) in creates.clone() {
        let store = store.clone();
        tasks.spawn(async move {
            let created = store
                .create(&saga, &[log(&saga, 0, LogEvent::SagaStarted)])
                .await;
            (Some((pair, saga)), created.map(Some))
        });
    }
    {
        let store = store.clone();
        let reused = reused.clone();
        tasks.spawn(async move {
            let created = store.create(&reused, &[]).await;
            (None, created.map(Some))
        });
    }
    for saga in &existing {
        let store = store.clone();
        let after = next(saga, 1);
        let expected = saga.version;
        tasks.spawn(async move {
            let entries = [log(&after, 1, LogEvent::StepSucceeded)];
            let saved = store.save(&after, expected, &entries).await;
            (None, saved.map(|()| None))
        });
    }

    let mut pair_winners: Vec<Vec<SagaId>> = vec![Vec::new(); 5];
    let mut pair_answers: Vec<Vec<SagaId>> = vec![Vec::new(); 5];
    let (mut duplicate_refused, mut saves) = (false, 0);
    while let Some(joined) = tasks.join_next().await {
        match joined.expect("task") {
            (Some((None, saga)), result) => {
                assert_eq!(
                    result.expect("a fresh create"),
                    Some(Created::New),
                    "{}",
                    saga.id
                );
            }
            (Some((Some(pair), saga)), result) => match result.expect("a keyed create") {
                Some(Created::New) => pair_winners[pair].push(saga.id),
                Some(Created::Existing(first)) => pair_answers[pair].push(first.id),
                None => unreachable!("creates answer Created"),
            },
            (None, Ok(None)) => saves += 1,
            (None, Err(e)) => {
                assert_eq!(e.kind(), ErrorKind::Duplicate, "{e}");
                duplicate_refused = true;
            }
            (None, Ok(Some(c))) => panic!("reusing an existing id must fail, got {c:?}"),
        }
    }
    assert!(duplicate_refused, "the reused id is refused");
    assert_eq!(
        saves,
        existing.len(),
        "every save in the batches went through"
    );
    for pair in 0..5 {
        assert_eq!(
            pair_winners[pair].len(),
            1,
            "pair {pair}: exactly one start creates"
        );
        assert_eq!(
            pair_answers[pair], pair_winners[pair],
            "pair {pair}: the other sees the winner"
        );
    }

    // Only what was created is stored, each with its own start entry.
    for (_, saga) in &creates {
        let stored = store.load(saga.id).await.expect("load");
        let logs = store.logs(saga.id).await.expect("logs");
        let won = stored.is_some();
        assert_eq!(
            logs.len(),
            usize::from(won),
            "saga {}: one entry if created, none if not",
            saga.id
        );
        if let Some(stored) = stored {
            assert_eq!(&stored, saga, "saga {}: stored as created", saga.id);
        }
    }
    let stored_first = store
        .load(existing[0].id)
        .await
        .expect("load")
        .expect("exists");
    assert_eq!(
        stored_first.version,
        existing[0].version + 1,
        "the saved state, not the reused id's"
    );
    assert_eq!(store.logs(existing[0].id).await.expect("logs").len(), 2);
}

/// Two pruning engines and an engine's own writes never wait for each other:
/// a row another transaction holds is skipped, and taken by the next prune.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_skips_a_saga_another_transaction_holds_instead_of_waiting() {
    use sea_orm::{ConnectionTrait, TransactionTrait};
    let test = TestDb::new().await;
    let store = test.store().await;
    let mut ended = Vec::new();
    for _ in 0..2 {
        let mut saga = instance("pruned", None, None);
        saga.created_at = at(100);
        saga.updated_at = at(100);
        store
            .create(&saga, &[log(&saga, 0, LogEvent::SagaStarted)])
            .await
            .expect("create");
        let mut done = next(&saga, 1);
        done.status = SagaStatus::Completed;
        done.cursor = None;
        done.updated_at = at(100);
        store
            .save(
                &done,
                saga.version,
                &[log(&done, 1, LogEvent::SagaCompleted)],
            )
            .await
            .expect("save");
        ended.push(done);
    }
    // Another process holds the first saga's row (an engine saving it).
    let other = TestDb::pool(&test.url).await;
    let txn = other.begin().await.expect("begin");
    txn.execute_raw(sea_orm::Statement::from_sql_and_values(
        sea_orm::DbBackend::Postgres,
        "SELECT id FROM saga_state WHERE id = $1 FOR UPDATE",
        [(*ended[0].id.as_uuid()).into()],
    ))
    .await
    .expect("lock the row");
    let pruned = tokio::time::timeout(Duration::from_secs(5), store.prune(at(1_000), 10))
        .await
        .expect("the prune does not wait for the held row")
        .expect("prune");
    assert_eq!(pruned, 1, "the free saga goes, the held one is skipped");
    assert!(store.load(ended[0].id).await.expect("load").is_some());
    assert!(store.load(ended[1].id).await.expect("load").is_none());
    txn.rollback().await.expect("rollback");
    assert_eq!(
        store.prune(at(1_000), 10).await.expect("prune"),
        1,
        "taken next time"
    );
    let logs = test
        .db
        .query_one_raw(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Postgres,
            "SELECT count(*) AS n FROM saga_logs",
        ))
        .await
        .expect("count")
        .expect("row")
        .try_get::<i64>("", "n")
        .expect("n");
    assert_eq!(
        logs, 0,
        "the logs went with their sagas (ON DELETE CASCADE)"
    );
}

/// Sequential scans of `saga_state` so far, as the statistics of the one
/// backend behind `db` report them (flushed first).
async fn seq_scans(db: &sea_orm::DatabaseConnection) -> i64 {
    use sea_orm::ConnectionTrait;
    db.execute_unprepared("SELECT pg_stat_force_next_flush()")
        .await
        .expect("flush");
    let row = db
        .query_one_raw(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Postgres,
            "SELECT seq_scan FROM pg_stat_user_tables WHERE relname = 'saga_state'",
        ))
        .await
        .expect("statistics")
        .expect("saga_state is a table");
    row.try_get::<i64>("", "seq_scan").expect("seq_scan")
}

/// A batched save finds its rows by primary key whatever plan Postgres
/// cached for it. Sent as a prepared statement, it got a generic plan after
/// five runs, made for the table as it was then: on a fresh table of a few
/// rows, a sequential scan, which it kept (until the next ANALYZE) while the
/// table grew, so every save read the whole table.
#[tokio::test]
async fn a_batched_save_never_scans_the_table_with_a_plan_made_when_it_was_small() {
    use sea_orm::ConnectionTrait;
    let test = TestDb::new().await;
    // One connection: the saves run on the backend whose statistics are read.
    let db = saga_postgres::PgConfig::new(&test.url)
        .max_connections(1)
        .connect()
        .await
        .expect("pool");
    let mut config = saga_postgres::StoreConfig::default();
    config.notifications = false;
    let store = saga_postgres::PgSagaStore::with_config(db.clone(), config)
        .await
        .expect("store");
    let mut sagas = Vec::new();
    for _ in 0..20 {
        let saga = instance("small", None, None);
        store
            .create(&saga, &[log(&saga, 1, LogEvent::SagaStarted)])
            .await
            .expect("create");
        sagas.push(saga);
    }
    let save_all = |sagas: Vec<saga_core::SagaInstance>| {
        let store = store.clone();
        async move {
            let mut saved = Vec::new();
            for saga in sagas {
                let after = next(&saga, 1);
                let entry = log(&after, after.log_seq, LogEvent::StepDispatched);
                store
                    .save(&after, saga.version, &[entry])
                    .await
                    .expect("save");
                saved.push(after);
            }
            saved
        }
    };
    // Eight saves each on the small table: the plan is the cached one now.
    for _ in 0..8 {
        sagas = save_all(sagas).await;
    }
    // The table grows to 5,020 rows, not analyzed.
    db.execute_unprepared(
        "INSERT INTO saga_state SELECT (jsonb_populate_record(s, jsonb_build_object(\
         'id', gen_random_uuid(), 'idempotency_key', NULL))).* \
         FROM saga_state s, generate_series(1, 250)",
    )
    .await
    .expect("grow the table");

    let before = seq_scans(&db).await;
    save_all(sagas).await;
    let scans = seq_scans(&db).await - before;
    assert_eq!(scans, 0, "20 saves scanned saga_state {scans} times");
}
