use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};
use serde_json::json;

use crate::error::{Error, ErrorKind};
use crate::id::SagaId;
use crate::state::{LogEntry, LogEvent, SagaInstance, SagaStatus, StepStatus};
use crate::store::{Created, DefinitionKey, SagaQuery, SagaStore};

fn time(seconds: i64) -> DateTime<Utc> {
    // Stores keep microseconds; use whole seconds so round trips compare equal.
    (DateTime::<Utc>::UNIX_EPOCH + chrono::Duration::seconds(seconds)).trunc_subsecs(0)
}

fn instance(
    saga_type: &str,
    key: Option<&str>,
    next_wake_at: Option<DateTime<Utc>>,
) -> SagaInstance {
    let now = Utc::now().trunc_subsecs(3);
    SagaInstance {
        id: SagaId::new(),
        saga_type: saga_type.to_owned(),
        definition_version: 2,
        status: SagaStatus::Running,
        steps: vec![StepStatus::Running, StepStatus::Pending],
        cursor: Some(crate::state::Cursor::first(0, crate::Direction::Invoke)),
        data: json!({ "order": "o-1", "items": [1, 2, 3], "total": "19.99", "nested": { "a": null } }),
        error: None,
        idempotency_key: key.map(str::to_owned),
        version: 1,
        next_wake_at,
        deadline_at: None,
        log_seq: 1,
        created_at: now,
        updated_at: now,
    }
}

fn log(instance: &SagaInstance, seq: u32, event: LogEvent) -> LogEntry {
    LogEntry {
        saga_id: instance.id,
        seq,
        event,
        step: Some("reserve".to_owned()),
        attempt: Some(1),
        payload: json!({ "seq": seq }),
        at: Utc::now().trunc_subsecs(3),
    }
}

fn next(instance: &SagaInstance) -> SagaInstance {
    let mut next = instance.clone();
    next.version += 1;
    next.log_seq += 1;
    next.updated_at = Utc::now().trunc_subsecs(3);
    next
}

async fn terminate<S: SagaStore + ?Sized>(store: &S, instance: &SagaInstance) {
    let mut done = next(instance);
    done.status = SagaStatus::Completed;
    done.cursor = None;
    done.next_wake_at = None;
    store
        .save(&done, instance.version, &[])
        .await
        .expect("terminating a saga");
}

/// Runs the store conformance suite against `store`, which must start empty
/// (a fresh database or schema). Panics on the first broken rule.
pub async fn store_conformance<S: SagaStore + ?Sized>(store: &S) {
    create_then_load_round_trips(store).await;
    load_of_a_missing_saga_is_none(store).await;
    null_data_and_payloads_round_trip(store).await;
    a_second_create_with_the_same_id_is_a_duplicate(store).await;
    duplicate_idempotency_key_returns_the_first_saga(store).await;
    save_checks_the_version(store).await;
    save_of_a_missing_saga_is_not_found(store).await;
    logs_are_complete_and_ordered(store).await;
    every_cursor_field_round_trips(store).await;
    claim_due_leases_only_due_sagas(store).await;
    claim_due_takes_only_the_given_definitions(store).await;
    concurrent_claimers_get_disjoint_sagas(store).await;
    list_filters_and_orders(store).await;
    unfinished_sagas_are_listed_and_counted(store).await;
    finished_sagas_are_announced(store).await;
    prune_deletes_old_completed_and_compensated_sagas_with_their_logs(store).await;
    concurrent_prunes_delete_each_saga_once(store).await;
}

/// A saga created at `at` with one log entry, then saved in `status` at
/// `at` with a second entry: the shape of a saga that ended long ago.
async fn ended<S: SagaStore + ?Sized>(
    store: &S,
    saga_type: &str,
    key: Option<&str>,
    status: SagaStatus,
    at: DateTime<Utc>,
) -> SagaInstance {
    let mut saga = instance(saga_type, key, None);
    saga.created_at = at;
    saga.updated_at = at;
    store
        .create(&saga, &[log(&saga, 0, LogEvent::SagaStarted)])
        .await
        .expect("create");
    let mut done = next(&saga);
    done.status = status;
    done.updated_at = at;
    if status.is_terminal() {
        done.cursor = None;
    }
    store
        .save(
            &done,
            saga.version,
            &[log(&done, 1, LogEvent::StepSucceeded)],
        )
        .await
        .expect("save");
    done
}

async fn prune_deletes_old_completed_and_compensated_sagas_with_their_logs<
    S: SagaStore + ?Sized,
>(
    store: &S,
) {
    let cutoff = time(1_000_000);
    let key = format!("pruned-{}", SagaId::new());
    // Oldest first: the order in which batches take them.
    let old = [
        ended(
            store,
            "pruned",
            Some(&key),
            SagaStatus::Completed,
            time(1_000),
        )
        .await,
        ended(store, "pruned", None, SagaStatus::Compensated, time(2_000)).await,
        ended(store, "pruned", None, SagaStatus::Completed, time(3_000)).await,
        ended(store, "pruned", None, SagaStatus::Compensated, time(4_000)).await,
        ended(store, "pruned", None, SagaStatus::Completed, time(5_000)).await,
    ];
    let kept = [
        ended(store, "kept", None, SagaStatus::Failed, time(500)).await,
        ended(store, "kept", None, SagaStatus::Running, time(600)).await,
        ended(store, "kept", None, SagaStatus::Compensating, time(700)).await,
        // Ended after the cutoff.
        ended(store, "kept", None, SagaStatus::Completed, time(1_000_001)).await,
        ended(
            store,
            "kept",
            None,
            SagaStatus::Compensated,
            time(2_000_000),
        )
        .await,
    ];
    assert_eq!(
        store.prune(cutoff, 0).await.expect("prune"),
        0,
        "a batch of 0 deletes nothing"
    );
    assert_eq!(
        store.prune(cutoff, 2).await.expect("prune"),
        2,
        "the batch size is respected"
    );
    for saga in &old[..2] {
        assert!(
            store.load(saga.id).await.expect("load").is_none(),
            "the oldest go first"
        );
    }
    for saga in &old[2..] {
        assert!(
            store.load(saga.id).await.expect("load").is_some(),
            "a batch takes no more than its size"
        );
    }
    assert_eq!(store.prune(cutoff, 2).await.expect("prune"), 2);
    assert_eq!(
        store.prune(cutoff, 2).await.expect("prune"),
        1,
        "the last one"
    );
    assert_eq!(
        store.prune(cutoff, 100).await.expect("prune"),
        0,
        "nothing left to prune"
    );
    for saga in &old {
        assert!(
            store.load(saga.id).await.expect("load").is_none(),
            "a {:?} saga older than the cutoff is deleted",
            saga.status
        );
        assert!(
            store.logs(saga.id).await.expect("logs").is_empty(),
            "its log goes with it"
        );
    }
    for saga in &kept {
        let stored = store.load(saga.id).await.expect("load");
        assert_eq!(
            stored.as_ref().map(|s| s.status),
            Some(saga.status),
            "a {:?} saga last updated at {} stays",
            saga.status,
            saga.updated_at
        );
        assert_eq!(
            store.logs(saga.id).await.expect("logs").len(),
            2,
            "with its log"
        );
    }
    // The deleted saga's idempotency key starts a new saga.
    let again = instance("pruned", Some(&key), None);
    assert_eq!(
        store.create(&again, &[]).await.expect("create"),
        Created::New,
        "a pruned saga's idempotency key is free again"
    );
    terminate(store, &again).await;
    let stuck: Vec<&SagaInstance> = kept.iter().filter(|s| !s.is_terminal()).collect();
    for saga in stuck {
        terminate(store, saga).await;
    }
}

async fn concurrent_prunes_delete_each_saga_once<S: SagaStore + ?Sized>(store: &S) {
    let cutoff = time(1_000_000);
    let mut old = Vec::new();
    for i in 0..7 {
        old.push(
            ended(
                store,
                "pruned_concurrently",
                None,
                SagaStatus::Completed,
                time(10_000 + i),
            )
            .await,
        );
    }
    let (a, b) = tokio::join!(store.prune(cutoff, 4), store.prune(cutoff, 4));
    let (a, b) = (a.expect("prune a"), b.expect("prune b"));
    assert!(a <= 4 && b <= 4, "each respects its batch: {a} and {b}");
    let rest = store.prune(cutoff, 100).await.expect("prune");
    assert_eq!(
        a + b + rest,
        old.len(),
        "concurrent pruners delete every saga exactly once ({a} + {b} + {rest})"
    );
    for saga in &old {
        assert!(store.load(saga.id).await.expect("load").is_none());
    }
}

async fn create_then_load_round_trips<S: SagaStore + ?Sized>(store: &S) {
    let mut saga = instance("round_trip", Some("rt-key"), None);
    saga.error = Some("a reason with 'quotes' and \"doubles\"".to_owned());
    saga.deadline_at = Some(time(4_000_000_000));
    let first = log(&saga, 0, LogEvent::SagaStarted);
    assert_eq!(
        store
            .create(&saga, std::slice::from_ref(&first))
            .await
            .expect("create"),
        Created::New
    );
    let loaded = store
        .load(saga.id)
        .await
        .expect("load")
        .expect("saga exists");
    assert_eq!(loaded, saga, "a loaded saga equals the created one");
    assert_eq!(store.logs(saga.id).await.expect("logs"), vec![first]);
    terminate(store, &saga).await;
}

async fn every_cursor_field_round_trips<S: SagaStore + ?Sized>(store: &S) {
    let mut saga = instance("cursor", None, Some(time(5_000)));
    saga.cursor = Some(crate::state::Cursor {
        step: 1,
        direction: crate::Direction::Compensate,
        attempt: 9,
        waiting: crate::state::Waiting::Send,
        uncertain: true,
        round_from: 7,
        key_from: 4,
        refused: true,
    });
    store.create(&saga, &[]).await.expect("create");
    let loaded = store.load(saga.id).await.expect("load").expect("exists");
    assert_eq!(loaded.cursor, saga.cursor, "every cursor field is kept");
    for waiting in [crate::state::Waiting::Reply, crate::state::Waiting::Retry] {
        let mut current = store.load(saga.id).await.expect("load").expect("exists");
        let mut changed = next(&current);
        changed.cursor = changed.cursor.map(|c| crate::state::Cursor {
            waiting,
            refused: false,
            ..c
        });
        store
            .save(&changed, current.version, &[])
            .await
            .expect("save");
        current = store.load(saga.id).await.expect("load").expect("exists");
        assert_eq!(current.cursor, changed.cursor, "a saved cursor is kept");
    }
    let current = store.load(saga.id).await.expect("load").expect("exists");
    terminate(store, &current).await;
}

async fn load_of_a_missing_saga_is_none<S: SagaStore + ?Sized>(store: &S) {
    assert!(store.load(SagaId::new()).await.expect("load").is_none());
    assert!(store.logs(SagaId::new()).await.expect("logs").is_empty());
}

async fn null_data_and_payloads_round_trip<S: SagaStore + ?Sized>(store: &S) {
    let mut saga = instance("nulls", None, None);
    saga.data = serde_json::Value::Null;
    let mut entry = log(&saga, 0, LogEvent::SagaStarted);
    entry.payload = serde_json::Value::Null;
    entry.step = None;
    entry.attempt = None;
    store
        .create(&saga, std::slice::from_ref(&entry))
        .await
        .expect("create with null data");
    let updated = next(&saga);
    let mut second = log(&updated, 1, LogEvent::CompensationSucceeded);
    second.payload = serde_json::Value::Null;
    store
        .save(&updated, saga.version, std::slice::from_ref(&second))
        .await
        .expect("a null log payload (a `()` reply) is saved");
    assert_eq!(
        store
            .load(saga.id)
            .await
            .expect("load")
            .expect("exists")
            .data,
        serde_json::Value::Null
    );
    assert_eq!(
        store.logs(saga.id).await.expect("logs"),
        vec![entry, second]
    );
    terminate(store, &updated).await;
}

async fn a_second_create_with_the_same_id_is_a_duplicate<S: SagaStore + ?Sized>(store: &S) {
    let saga = instance("dup_id", None, None);
    store.create(&saga, &[]).await.expect("create");
    let err = store
        .create(&saga, &[])
        .await
        .expect_err("the same id twice");
    assert_eq!(err.kind(), ErrorKind::Duplicate, "{err}");
    terminate(store, &saga).await;
}

async fn duplicate_idempotency_key_returns_the_first_saga<S: SagaStore + ?Sized>(store: &S) {
    let key = format!("dup-{}", SagaId::new());
    let first = instance("dup", Some(&key), None);
    let second = instance("dup", Some(&key), None);
    assert_eq!(
        store
            .create(&first, &[log(&first, 0, LogEvent::SagaStarted)])
            .await
            .expect("create"),
        Created::New
    );
    match store
        .create(&second, &[log(&second, 0, LogEvent::SagaStarted)])
        .await
        .expect("create")
    {
        Created::Existing(existing) => {
            assert_eq!(existing.id, first.id, "the first saga is returned")
        }
        Created::New => panic!("a duplicate idempotency key must not create a second saga"),
    }
    assert!(
        store.load(second.id).await.expect("load").is_none(),
        "nothing of the second saga is written"
    );
    assert!(
        store.logs(second.id).await.expect("logs").is_empty(),
        "no log of the second saga is written"
    );
    terminate(store, &first).await;
}

async fn save_checks_the_version<S: SagaStore + ?Sized>(store: &S) {
    let saga = instance("versioned", None, None);
    store.create(&saga, &[]).await.expect("create");
    let mut a = next(&saga);
    a.data = json!({ "writer": "a" });
    let mut b = next(&saga);
    b.data = json!({ "writer": "b" });
    store
        .save(&a, saga.version, &[])
        .await
        .expect("first writer wins");
    let err = store
        .save(&b, saga.version, &[log(&b, 0, LogEvent::StepSucceeded)])
        .await
        .expect_err("a stale writer must get a conflict");
    assert_eq!(err.kind(), ErrorKind::Conflict, "conflict is typed: {err}");
    assert!(
        matches!(err, Error::Conflict { .. }),
        "Error::Conflict, got {err:?}"
    );
    let stored = store.load(saga.id).await.expect("load").expect("exists");
    assert_eq!(
        stored.data,
        json!({ "writer": "a" }),
        "the losing write left no trace"
    );
    assert!(
        store.logs(saga.id).await.expect("logs").is_empty(),
        "the losing write's logs are not kept"
    );
    terminate(store, &stored).await;
}

async fn save_of_a_missing_saga_is_not_found<S: SagaStore + ?Sized>(store: &S) {
    let ghost = instance("ghost", None, None);
    let err = store
        .save(&next(&ghost), ghost.version, &[])
        .await
        .expect_err("missing saga");
    assert_eq!(
        err.kind(),
        ErrorKind::NotFound,
        "saving a missing saga: {err}"
    );
}

async fn logs_are_complete_and_ordered<S: SagaStore + ?Sized>(store: &S) {
    let saga = instance("logged", None, None);
    store
        .create(&saga, &[log(&saga, 0, LogEvent::SagaStarted)])
        .await
        .expect("create");
    let mut current = saga.clone();
    let mut seq = 1;
    for round in 0..5 {
        let updated = next(&current);
        let entries: Vec<LogEntry> = (0..=round)
            .map(|_| {
                seq += 1;
                log(&updated, seq - 1, LogEvent::StepDispatched)
            })
            .collect();
        store
            .save(&updated, current.version, &entries)
            .await
            .expect("save");
        current = updated;
    }
    let logs = store.logs(saga.id).await.expect("logs");
    let seqs: Vec<u32> = logs.iter().map(|l| l.seq).collect();
    assert_eq!(
        seqs,
        (0..seq).collect::<Vec<_>>(),
        "logs come back complete and in order"
    );
    assert_eq!(logs[0].event, LogEvent::SagaStarted);
    terminate(store, &current).await;
}

async fn claim_due_leases_only_due_sagas<S: SagaStore + ?Sized>(store: &S) {
    let lease = Duration::from_secs(30);
    let now = time(1_000);
    let due = instance("claim", None, Some(time(990)));
    let later = instance("claim", None, Some(time(2_000)));
    let idle = instance("claim", None, None);
    for saga in [&due, &later, &idle] {
        store.create(saga, &[]).await.expect("create");
    }
    let claim = [DefinitionKey::new("claim", 2)];
    let claimed = store
        .claim_due(now, 10, "a", lease, &claim)
        .await
        .expect("claim");
    assert_eq!(
        claimed.iter().map(|s| s.id).collect::<Vec<_>>(),
        vec![due.id],
        "only the due saga is claimed"
    );
    assert!(
        store
            .claim_due(now, 10, "b", lease, &claim)
            .await
            .expect("claim")
            .is_empty(),
        "a leased saga is not claimed again"
    );
    let after_lease = time(1_031);
    let reclaimed = store
        .claim_due(after_lease, 10, "b", lease, &claim)
        .await
        .expect("claim");
    assert_eq!(
        reclaimed.iter().map(|s| s.id).collect::<Vec<_>>(),
        vec![due.id],
        "an expired lease is claimed again"
    );
    // A save releases the lease: still due, it can be claimed at once.
    let saved = next(&due);
    store.save(&saved, due.version, &[]).await.expect("save");
    let again = store
        .claim_due(after_lease, 10, "c", lease, &claim)
        .await
        .expect("claim");
    assert_eq!(again.len(), 1, "a save releases the lease");
    for saga in [&saved, &later, &idle] {
        terminate(store, saga).await;
    }
}

async fn claim_due_takes_only_the_given_definitions<S: SagaStore + ?Sized>(store: &S) {
    let lease = Duration::from_secs(30);
    let now = time(20_000);
    let known = instance("versioned", None, Some(time(19_000)));
    let mut newer = instance("versioned", None, Some(time(19_001)));
    newer.definition_version = 3;
    let other = instance("unregistered", None, Some(time(19_002)));
    for saga in [&known, &newer, &other] {
        store.create(saga, &[]).await.expect("create");
    }
    let v2 = [DefinitionKey::new("versioned", 2)];
    let claimed: Vec<SagaId> = store
        .claim_due(now, 10, "old-engine", lease, &v2)
        .await
        .expect("claim")
        .iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(
        claimed,
        vec![known.id],
        "an engine claims only sagas whose definition it has"
    );
    let both = [
        DefinitionKey::new("versioned", 2),
        DefinitionKey::new("versioned", 3),
    ];
    let claimed: Vec<SagaId> = store
        .claim_due(now, 10, "new-engine", lease, &both)
        .await
        .expect("claim")
        .iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(
        claimed,
        vec![newer.id],
        "the newer version is left for an engine that has it"
    );
    assert!(
        store
            .claim_due(now, 10, "nobody", lease, &[])
            .await
            .expect("claim")
            .is_empty(),
        "no definitions, no claims"
    );
    for saga in [&known, &newer, &other] {
        terminate(store, saga).await;
    }
}

async fn concurrent_claimers_get_disjoint_sagas<S: SagaStore + ?Sized>(store: &S) {
    let lease = Duration::from_secs(30);
    let now = time(10_000);
    let mut sagas = Vec::new();
    for i in 0..20 {
        let saga = instance("concurrent", None, Some(time(9_000 + i)));
        store.create(&saga, &[]).await.expect("create");
        sagas.push(saga);
    }
    let concurrent = [DefinitionKey::new("concurrent", 2)];
    let (a, b) = tokio::join!(
        store.claim_due(now, 12, "a", lease, &concurrent),
        store.claim_due(now, 12, "b", lease, &concurrent)
    );
    let (a, b) = (a.expect("claim a"), b.expect("claim b"));
    let ids_a: HashSet<SagaId> = a.iter().map(|s| s.id).collect();
    let ids_b: HashSet<SagaId> = b.iter().map(|s| s.id).collect();
    assert!(
        ids_a.is_disjoint(&ids_b),
        "two claimers never get the same saga"
    );
    assert_eq!(
        ids_a.len() + ids_b.len(),
        20,
        "together they claim every due saga"
    );
    let oldest: Vec<SagaId> = store
        .claim_due(time(10_001), 100, "c", lease, &concurrent)
        .await
        .expect("claim")
        .iter()
        .map(|s| s.id)
        .collect();
    assert!(oldest.is_empty(), "all are leased");
    for saga in &sagas {
        terminate(store, saga).await;
    }
}

async fn list_filters_and_orders<S: SagaStore + ?Sized>(store: &S) {
    let saga_type = format!("listed_{}", SagaId::new().as_uuid().simple());
    let key = format!("{saga_type}-key");
    let mut ids = Vec::new();
    for i in 0..3 {
        let saga = instance(&saga_type, (i == 1).then_some(key.as_str()), None);
        store.create(&saga, &[]).await.expect("create");
        ids.push(saga);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut failed = next(&ids[0]);
    failed.status = SagaStatus::Failed;
    failed.updated_at = Utc::now().trunc_subsecs(3);
    store
        .save(&failed, ids[0].version, &[])
        .await
        .expect("save");
    let query = SagaQuery {
        saga_type: Some(saga_type.clone()),
        ..SagaQuery::default()
    };
    let all = store.list(&query).await.expect("list");
    assert_eq!(all.len(), 3);
    assert_eq!(all[0].id, failed.id, "most recently updated first");
    let only_failed = store
        .list(&SagaQuery {
            status: Some(SagaStatus::Failed),
            ..query.clone()
        })
        .await
        .expect("list");
    assert_eq!(
        only_failed.iter().map(|s| s.id).collect::<Vec<_>>(),
        vec![failed.id]
    );
    let limited = store
        .list(&SagaQuery {
            limit: 2,
            ..query.clone()
        })
        .await
        .expect("list");
    assert_eq!(limited.len(), 2, "the limit is respected");
    let oldest = store
        .list(&query.clone().oldest_first().limit(2))
        .await
        .expect("list");
    assert_eq!(
        oldest.iter().map(|s| s.id).collect::<Vec<_>>(),
        vec![ids[1].id, ids[2].id],
        "least recently updated first"
    );
    let stuck = store
        .list(&SagaQuery {
            status: Some(SagaStatus::Running),
            updated_before: Some(Utc::now() + chrono::Duration::seconds(1)),
            ..query
        })
        .await
        .expect("list");
    assert_eq!(stuck.len(), 2, "running sagas not updated since a time");
    let keyed = store
        .list(&SagaQuery::new().idempotency_key(key.clone()))
        .await
        .expect("list");
    assert_eq!(
        keyed.iter().map(|s| s.id).collect::<Vec<_>>(),
        vec![ids[1].id],
        "the saga started with the key"
    );
    let unknown = store
        .list(&SagaQuery::new().idempotency_key(format!("{key}-unused")))
        .await
        .expect("list");
    assert!(unknown.is_empty(), "no saga has that key");
    for saga in &ids[1..] {
        terminate(store, saga).await;
    }
}

async fn unfinished_sagas_are_listed_and_counted<S: SagaStore + ?Sized>(store: &S) {
    let saga_type = format!("counted_{}", SagaId::new().as_uuid().simple());
    let mut sagas = Vec::new();
    for i in 0..4_i64 {
        let mut saga = instance(&saga_type, None, None);
        saga.created_at = time(1_000 + i);
        store.create(&saga, &[]).await.expect("create");
        sagas.push(saga);
    }
    let mut compensating = next(&sagas[1]);
    compensating.status = SagaStatus::Compensating;
    store
        .save(&compensating, sagas[1].version, &[])
        .await
        .expect("save");
    terminate(store, &sagas[0]).await;
    let query = SagaQuery::new().saga_type(saga_type.clone());

    let unfinished = store.list(&query.clone().unfinished()).await.expect("list");
    let mut ids: Vec<SagaId> = unfinished.iter().map(|s| s.id).collect();
    ids.sort();
    let mut expected = vec![sagas[1].id, sagas[2].id, sagas[3].id];
    expected.sort();
    assert_eq!(ids, expected, "running and compensating, not completed");

    let counts = store.counts(&query.clone().limit(1)).await.expect("counts");
    let mut seen: Vec<(SagaStatus, u64, DateTime<Utc>)> = counts
        .iter()
        .map(|c| {
            assert_eq!(c.saga_type, saga_type);
            (c.status, c.count, c.oldest_created_at)
        })
        .collect();
    seen.sort_by_key(|(status, _, _)| status.as_str());
    assert_eq!(
        seen,
        vec![
            (SagaStatus::Compensating, 1, time(1_001)),
            (SagaStatus::Completed, 1, time(1_000)),
            (SagaStatus::Running, 2, time(1_002)),
        ],
        "by status, with the oldest creation time, whatever the limit"
    );
    let unfinished = store
        .counts(&query.clone().unfinished())
        .await
        .expect("counts");
    assert_eq!(
        unfinished.iter().map(|c| c.count).sum::<u64>(),
        3,
        "{unfinished:?}"
    );
    for saga in &sagas[2..] {
        terminate(store, saga).await;
    }
    terminate(store, &compensating).await;
}

async fn finished_sagas_are_announced<S: SagaStore + ?Sized>(store: &S) {
    let Some(mut events) = store.finished_events() else {
        return;
    };
    let saga = instance("announced", None, None);
    store.create(&saga, &[]).await.expect("create");
    terminate(store, &saga).await;
    let announced = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match events.recv().await {
                Ok(id) if id == saga.id => return true,
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return false,
            }
        }
    })
    .await;
    assert_eq!(
        announced,
        Ok(true),
        "a finished saga is announced on finished_events"
    );
}
