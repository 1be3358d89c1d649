use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use saga_core::{
    Command, CommandContext, Direction, IdempotencyKey, Participant, SagaId, StepError,
    StepErrorKind,
    adapter::{CommandMessage, ReplyOutcome},
};
use saga_postgres::entity::saga_inbox;
use saga_postgres::inbox::{self, PgInbox};
use sea_orm::{ConnectionTrait, EntityTrait, PaginatorTrait, TransactionTrait};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::common::TestDb;

fn context(saga: SagaId, direction: Direction) -> CommandContext {
    CommandContext {
        saga_id: saga,
        saga_type: "checkout".to_owned(),
        step: "reserve".to_owned(),
        direction,
        attempt: 1,
        idempotency_key: IdempotencyKey::new(saga, "reserve", direction),
        delivery_count: 1,
    }
}

async fn business_rows(db: &sea_orm::DatabaseConnection) -> i64 {
    let row = db
        .query_one_raw(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Postgres,
            "SELECT count(*) AS n FROM reservations",
        ))
        .await
        .expect("count")
        .expect("row");
    row.try_get::<i64>("", "n").expect("n")
}

async fn with_business_table() -> TestDb {
    let test = TestDb::new().await;
    test.db
        .execute_unprepared(
            "CREATE TABLE reservations (saga_id uuid PRIMARY KEY, sku text NOT NULL)",
        )
        .await
        .expect("business table");
    test
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Reserved {
    reservation: String,
}

/// A participant handler in the recommended shape: inbox + business change in one transaction.
async fn reserve(
    db: &sea_orm::DatabaseConnection,
    ctx: &CommandContext,
    commit: bool,
) -> Result<Reserved, StepError> {
    let txn = db.begin().await.map_err(saga_postgres::Error::from)?;
    if let Some(done) = inbox::check_in(&txn, ctx).await? {
        return inbox::decode_reply(done);
    }
    txn.execute_raw(sea_orm::Statement::from_sql_and_values(
        sea_orm::DbBackend::Postgres,
        "INSERT INTO reservations (saga_id, sku) VALUES ($1, 'book')",
        [(*ctx.saga_id.as_uuid()).into()],
    ))
    .await
    .map_err(saga_postgres::Error::from)?;
    let reply = Ok(Reserved {
        reservation: format!("r-{}", ctx.saga_id),
    });
    let reply = inbox::record_reply_in(&txn, &ctx.idempotency_key, reply).await?;
    if commit {
        txn.commit().await.map_err(saga_postgres::Error::from)?;
    } else {
        txn.rollback().await.map_err(saga_postgres::Error::from)?;
    }
    reply
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbox_dedupe_inside_a_rolled_back_transaction_leaves_no_trace() {
    let test = with_business_table().await;
    let saga = SagaId::new();
    // Invoke, then roll back (the handler crashed before commit).
    reserve(&test.db, &context(saga, Direction::Invoke), false)
        .await
        .expect("handled, then rolled back");
    // A compensation in a transaction that rolls back: neither its claim nor the tombstone stays.
    let txn = test.db.begin().await.expect("begin");
    assert_eq!(
        inbox::check_in(&txn, &context(saga, Direction::Compensate))
            .await
            .expect("check"),
        None
    );
    txn.rollback().await.expect("rollback");

    assert_eq!(
        saga_inbox::Entity::find()
            .count(&test.db)
            .await
            .expect("count"),
        0,
        "no inbox row remains"
    );
    assert_eq!(business_rows(&test.db).await, 0, "no business row remains");

    // The redelivery runs the handler for real, once.
    let first = reserve(&test.db, &context(saga, Direction::Invoke), true)
        .await
        .expect("handled");
    let again = reserve(&test.db, &context(saga, Direction::Invoke), true)
        .await
        .expect("answered from the inbox");
    assert_eq!(first, again, "a duplicate gets the recorded reply");
    assert_eq!(business_rows(&test.db).await, 1, "the effect happened once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrent_duplicate_waits_for_the_first_and_gets_its_reply() {
    let test = with_business_table().await;
    let other = TestDb::pool(&test.url).await;
    let ctx = context(SagaId::new(), Direction::Invoke);

    let first = test.db.begin().await.expect("begin");
    assert_eq!(inbox::check_in(&first, &ctx).await.expect("claim"), None);
    // The duplicate's check blocks on the first transaction's claim.
    let duplicate = tokio::spawn({
        let ctx = ctx.clone();
        async move { reserve(&other, &ctx, true).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !duplicate.is_finished(),
        "the duplicate waits for the first transaction"
    );
    let outcome = ReplyOutcome::Success(json!({ "reservation": "from-first" }));
    inbox::record_in(&first, &ctx.idempotency_key, &outcome)
        .await
        .expect("record");
    first.commit().await.expect("commit");

    let reply = duplicate.await.expect("task").expect("answered");
    assert_eq!(
        reply,
        Reserved {
            reservation: "from-first".into()
        }
    );
    assert_eq!(
        business_rows(&test.db).await,
        0,
        "the duplicate did not run the business change"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compensation_tombstones_its_invoke_so_a_late_invoke_is_refused() {
    let test = with_business_table().await;
    let saga = SagaId::new();
    // The compensation arrives first (the invoke was delayed in the broker).
    let txn = test.db.begin().await.expect("begin");
    assert_eq!(
        inbox::check_in(&txn, &context(saga, Direction::Compensate))
            .await
            .expect("check"),
        None
    );
    let recorded = inbox::record_in(
        &txn,
        &IdempotencyKey::new(saga, "reserve", Direction::Compensate),
        &ReplyOutcome::Success(json!(null)),
    )
    .await
    .expect("record");
    assert_eq!(recorded, ReplyOutcome::Success(json!(null)));
    txn.commit().await.expect("commit");

    let late = reserve(&test.db, &context(saga, Direction::Invoke), true)
        .await
        .expect_err("refused");
    assert_eq!(late.kind, StepErrorKind::Business);
    assert_eq!(late.message, inbox::COMPENSATED_REFUSAL);
    assert_eq!(
        business_rows(&test.db).await,
        0,
        "the late invoke created no effect"
    );

    // An invoke that did run keeps its outcome: the compensation does not overwrite it.
    let ran = SagaId::new();
    let reply = reserve(&test.db, &context(ran, Direction::Invoke), true)
        .await
        .expect("invoke");
    let txn = test.db.begin().await.expect("begin");
    assert_eq!(
        inbox::check_in(&txn, &context(ran, Direction::Compensate))
            .await
            .expect("check"),
        None
    );
    txn.commit().await.expect("commit");
    let again = reserve(&test.db, &context(ran, Direction::Invoke), true)
        .await
        .expect("recorded reply");
    assert_eq!(again, reply);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_successes_and_business_failures_are_recorded() {
    let test = TestDb::new().await;
    let key = IdempotencyKey::new(SagaId::new(), "charge", Direction::Invoke);
    let ctx = |key: &IdempotencyKey| (key.clone(), None::<&IdempotencyKey>);

    // A retryable failure releases the claim: the next delivery runs the handler.
    let txn = test.db.begin().await.expect("begin");
    let (k, tomb) = ctx(&key);
    assert_eq!(
        inbox::check_key_in(&txn, &k, tomb).await.expect("claim"),
        None
    );
    let retry = ReplyOutcome::Failure(StepError::retryable("card processor timed out"));
    assert_eq!(
        inbox::record_in(&txn, &key, &retry)
            .await
            .expect("not recorded"),
        retry
    );
    txn.commit().await.expect("commit");
    assert_eq!(
        saga_inbox::Entity::find()
            .count(&test.db)
            .await
            .expect("count"),
        0
    );

    // A business failure is recorded, and the first recorded outcome wins.
    let declined = ReplyOutcome::Failure(StepError::business("card declined"));
    let txn = test.db.begin().await.expect("begin");
    assert_eq!(
        inbox::check_key_in(&txn, &key, None).await.expect("claim"),
        None
    );
    assert_eq!(
        inbox::record_in(&txn, &key, &declined)
            .await
            .expect("record"),
        declined
    );
    let later = ReplyOutcome::Success(json!({ "charged": true }));
    assert_eq!(
        inbox::record_in(&txn, &key, &later).await.expect("record"),
        declined,
        "first outcome wins"
    );
    txn.commit().await.expect("commit");
    assert_eq!(
        inbox::check_key_in(&test.db, &key, None)
            .await
            .expect("check"),
        Some(declined)
    );
    let typed: Result<Reserved, StepError> =
        inbox::decode_reply(ReplyOutcome::Success(json!({ "nope": 1 })));
    assert_eq!(
        typed.expect_err("does not decode").kind,
        StepErrorKind::Unknown
    );

    // Pruning removes old records.
    assert_eq!(
        inbox::prune_in(&test.db, chrono::Utc::now() + chrono::Duration::seconds(1))
            .await
            .expect("prune"),
        1
    );
}

#[derive(Serialize, Deserialize)]
struct Charge {
    amount: u32,
}

impl Command for Charge {
    const NAME: &'static str = "charge";
    const ENDPOINT: &'static str = "payment";
    type Reply = u32;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_inbox_makes_a_participant_effectively_once() {
    let test = TestDb::new().await;
    let calls = Arc::new(AtomicU32::new(0));
    let participant = Participant::builder()
        .inbox(PgInbox::new(test.db.clone()))
        .on({
            let calls = Arc::clone(&calls);
            move |cmd: Charge, _ctx| {
                let calls = Arc::clone(&calls);
                async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    Ok(cmd.amount * 2)
                }
            }
        })
        .build()
        .expect("valid participant");
    let saga = SagaId::new();
    let command = CommandMessage {
        message_id: format!("{saga}:charge:invoke:1"),
        idempotency_key: IdempotencyKey::new(saga, "charge", Direction::Invoke),
        saga_id: saga,
        saga_type: "checkout".to_owned(),
        step: 0,
        step_name: "charge".to_owned(),
        direction: Direction::Invoke,
        attempt: 1,
        endpoint: "payment".to_owned(),
        command: "charge".to_owned(),
        payload: json!({ "amount": 21 }),
        reply_to: Some("saga_replies".to_owned()),
        headers: Default::default(),
    };
    let first = participant.handle(&command, 1).await.expect("handled");
    let second = participant.handle(&command, 2).await.expect("redelivery");
    assert_eq!(first.outcome, ReplyOutcome::Success(json!(42)));
    assert_eq!(
        second.outcome, first.outcome,
        "the redelivery is answered from the inbox"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1, "the handler ran once");
}

#[derive(Serialize, Deserialize)]
struct Refund {
    amount: u32,
}

impl Command for Refund {
    const NAME: &'static str = "refund";
    const ENDPOINT: &'static str = "payment";
    type Reply = ();
}

/// A payment participant on `PgInbox` whose charge waits for `release` before
/// it takes effect; the refund undoes a charge if there is one.
fn held_payment(
    db: &sea_orm::DatabaseConnection,
    effects: &Arc<std::sync::Mutex<Vec<&'static str>>>,
    started: &Arc<tokio::sync::Notify>,
    release: &Arc<tokio::sync::Notify>,
) -> Participant {
    let (charge_effects, refund_effects) = (Arc::clone(effects), Arc::clone(effects));
    let (started, release) = (Arc::clone(started), Arc::clone(release));
    Participant::builder()
        .inbox(PgInbox::new(db.clone()))
        .on(move |cmd: Charge, _ctx| {
            let (effects, started, release) = (
                Arc::clone(&charge_effects),
                Arc::clone(&started),
                Arc::clone(&release),
            );
            async move {
                started.notify_one();
                release.notified().await;
                effects.lock().expect("effects").push("charged");
                Ok(cmd.amount)
            }
        })
        .on(move |_cmd: Refund, _ctx| {
            let effects = Arc::clone(&refund_effects);
            async move {
                let mut effects = effects.lock().expect("effects");
                if effects.contains(&"charged") {
                    effects.push("refunded");
                }
                Ok(())
            }
        })
        .build()
        .expect("valid participant")
}

fn payment_command(saga: SagaId, direction: Direction, attempt: u32) -> CommandMessage {
    let (command, payload) = match direction {
        Direction::Invoke => ("charge", json!({ "amount": 21 })),
        Direction::Compensate => ("refund", json!({ "amount": 21 })),
    };
    CommandMessage {
        message_id: format!("{saga}:charge:{direction}:{attempt}"),
        idempotency_key: IdempotencyKey::new(saga, "charge", direction),
        saga_id: saga,
        saga_type: "checkout".to_owned(),
        step: 0,
        step_name: "charge".to_owned(),
        direction,
        attempt,
        endpoint: "payment".to_owned(),
        command: command.to_owned(),
        payload,
        reply_to: Some("saga_replies".to_owned()),
        headers: Default::default(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_inbox_makes_a_duplicate_of_a_command_in_flight_wait() {
    let test = TestDb::new().await;
    let effects = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (started, release) = (
        Arc::new(tokio::sync::Notify::new()),
        Arc::new(tokio::sync::Notify::new()),
    );
    let payment = held_payment(&test.db, &effects, &started, &release);
    let saga = SagaId::new();
    let first = tokio::spawn({
        let payment = payment.clone();
        async move {
            payment
                .handle(&payment_command(saga, Direction::Invoke, 1), 1)
                .await
        }
    });
    started.notified().await;
    // The step timed out; attempt 2 (same key) arrives while attempt 1 runs.
    let second = tokio::spawn({
        let payment = payment.clone();
        async move {
            payment
                .handle(&payment_command(saga, Direction::Invoke, 2), 1)
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !second.is_finished(),
        "the duplicate waits for the first copy"
    );
    release.notify_one();
    let first = first.await.expect("task").expect("handled");
    let second = second.await.expect("task").expect("handled");
    assert_eq!(first.outcome, ReplyOutcome::Success(json!(21)));
    assert_eq!(second.outcome, first.outcome, "answered from the record");
    assert_eq!(*effects.lock().expect("effects"), vec!["charged"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_inbox_makes_a_compensation_wait_for_its_invoke_and_undo_it() {
    let test = TestDb::new().await;
    let effects = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (started, release) = (
        Arc::new(tokio::sync::Notify::new()),
        Arc::new(tokio::sync::Notify::new()),
    );
    let payment = held_payment(&test.db, &effects, &started, &release);
    let saga = SagaId::new();
    let charge = tokio::spawn({
        let payment = payment.clone();
        async move {
            payment
                .handle(&payment_command(saga, Direction::Invoke, 1), 1)
                .await
        }
    });
    started.notified().await;
    let refund = tokio::spawn({
        let payment = payment.clone();
        async move {
            payment
                .handle(&payment_command(saga, Direction::Compensate, 1), 1)
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !refund.is_finished(),
        "the compensation waits for the charge in flight"
    );
    release.notify_one();
    let charge = charge.await.expect("task").expect("handled");
    let refund = refund.await.expect("task").expect("handled");
    assert_eq!(charge.outcome, ReplyOutcome::Success(json!(21)));
    assert_eq!(refund.outcome, ReplyOutcome::Success(json!(null)));
    assert_eq!(
        *effects.lock().expect("effects"),
        vec!["charged", "refunded"],
        "the charge that ran is refunded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pruning_deletes_old_outcomes_and_tombstones_in_batches_and_nothing_else() {
    use saga_core::Inbox;
    let test = with_business_table().await;
    let pg = PgInbox::new(test.db.clone());
    // Three sagas handled: an invoke each, and one compensation (with its tombstone).
    let sagas: Vec<SagaId> = (0..3).map(|_| SagaId::new()).collect();
    for saga in &sagas {
        reserve(&test.db, &context(*saga, Direction::Invoke), true)
            .await
            .expect("handled");
    }
    let compensated = SagaId::new();
    let txn = test.db.begin().await.expect("begin");
    let compensation = context(compensated, Direction::Compensate);
    assert_eq!(
        inbox::check_in(&txn, &compensation).await.expect("check"),
        None
    );
    inbox::record_in(
        &txn,
        &compensation.idempotency_key,
        &ReplyOutcome::Success(json!(null)),
    )
    .await
    .expect("record");
    txn.commit().await.expect("commit");
    // A committed claim without an outcome, and a recent record.
    let bare = context(SagaId::new(), Direction::Invoke);
    let txn = test.db.begin().await.expect("begin");
    assert_eq!(inbox::check_in(&txn, &bare).await.expect("check"), None);
    txn.commit().await.expect("commit");
    test.db
        .execute_unprepared("UPDATE saga_inbox SET created_at = now() - interval '30 days'")
        .await
        .expect("age every record");
    let recent = context(SagaId::new(), Direction::Invoke);
    reserve(&test.db, &recent, true).await.expect("handled");
    assert_eq!(
        saga_inbox::Entity::find()
            .count(&test.db)
            .await
            .expect("count"),
        7
    );

    let cutoff = chrono::Utc::now() - chrono::Duration::days(7);
    assert_eq!(
        pg.prune(cutoff, 2).await.expect("prune"),
        2,
        "the batch is respected"
    );
    assert_eq!(pg.prune(cutoff, 2).await.expect("prune"), 2);
    assert_eq!(
        pg.prune(cutoff, 2).await.expect("prune"),
        1,
        "3 invokes, a compensation, its tombstone"
    );
    assert_eq!(pg.prune(cutoff, 2).await.expect("prune"), 0);
    let left: Vec<String> = saga_inbox::Entity::find()
        .all(&test.db)
        .await
        .expect("rows")
        .into_iter()
        .map(|row| row.idempotency_key)
        .collect();
    let mut expected = vec![
        bare.idempotency_key.as_str().to_owned(),
        recent.idempotency_key.as_str().to_owned(),
    ];
    expected.sort();
    let mut left = left;
    left.sort();
    assert_eq!(
        left, expected,
        "a claim without an outcome and a recent record stay"
    );
    // The pruned invoke's key is unknown again: a duplicate this late would run.
    assert_eq!(
        inbox::check_in(&test.db, &context(sagas[0], Direction::Invoke))
            .await
            .expect("check"),
        None
    );
}
