//! The SQLite inbox: the rules of `saga_core::participant` on `saga_inbox`,
//! and the deterministic simulation with every participant deduplicating
//! through it.

use std::sync::Arc;
use std::time::Duration;

use saga_core::adapter::ReplyOutcome;
use saga_core::testing::simulation::{SimConfig, simulate_with};
use saga_core::{Direction, IdempotencyKey, Inbox, SagaId, StepError, StepErrorKind};
use saga_sqlite::inbox::{self, SqliteInbox};
use saga_sqlite::sea_orm::{DatabaseConnection, TransactionTrait};
use saga_sqlite::{Durability, SqliteConfig};
use serde_json::json;

async fn database(folder: &tempfile::TempDir, name: &str) -> DatabaseConnection {
    // `Normal`: these tests are about the inbox's rules, not power loss, and
    // a flush per commit would make the simulation slow.
    let db = SqliteConfig::file(folder.path().join(name))
        .durability(Durability::Normal)
        .max_connections(1)
        .connect()
        .await
        .expect("connect");
    saga_sqlite::migrate(&db).await.expect("migrate");
    db
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compensation_tombstones_its_invoke_and_outcomes_are_kept() {
    let folder = tempfile::tempdir().expect("temporary folder");
    let db = database(&folder, "participant.db").await;
    let saga = SagaId::new();
    let invoke = IdempotencyKey::new(saga, "reserve", Direction::Invoke);
    let compensate = IdempotencyKey::new(saga, "reserve", Direction::Compensate);

    // The compensation arrives first: its invoke key gets a refusal.
    let txn = db.begin().await.expect("begin");
    assert_eq!(
        inbox::check_key_in(&txn, &compensate, Some(&invoke))
            .await
            .expect("claim"),
        None
    );
    let done = ReplyOutcome::Success(json!(null));
    assert_eq!(
        inbox::record_in(&txn, &compensate, &done)
            .await
            .expect("record"),
        done
    );
    txn.commit().await.expect("commit");
    let late = inbox::check_key_in(&db, &invoke, None)
        .await
        .expect("check");
    match late {
        Some(ReplyOutcome::Failure(e)) => {
            assert_eq!(
                (e.kind, e.message.as_str()),
                (StepErrorKind::Business, inbox::COMPENSATED_REFUSAL)
            );
        }
        other => panic!("the late invoke must be refused, got {other:?}"),
    }

    // A retryable failure is not recorded: the next delivery runs again.
    let charge = IdempotencyKey::new(saga, "charge", Direction::Invoke);
    let txn = db.begin().await.expect("begin");
    assert_eq!(
        inbox::check_key_in(&txn, &charge, None)
            .await
            .expect("claim"),
        None
    );
    let retry = ReplyOutcome::Failure(StepError::retryable("timed out"));
    assert_eq!(
        inbox::record_in(&txn, &charge, &retry)
            .await
            .expect("release"),
        retry
    );
    txn.commit().await.expect("commit");
    let txn = db.begin().await.expect("begin");
    assert_eq!(
        inbox::check_key_in(&txn, &charge, None)
            .await
            .expect("claim again"),
        None
    );
    // The first recorded outcome wins.
    let declined = ReplyOutcome::Failure(StepError::business("card declined"));
    assert_eq!(
        inbox::record_in(&txn, &charge, &declined)
            .await
            .expect("record"),
        declined
    );
    let later = ReplyOutcome::Success(json!(1));
    assert_eq!(
        inbox::record_in(&txn, &charge, &later)
            .await
            .expect("record"),
        declined
    );
    txn.commit().await.expect("commit");

    // Pruning takes records, oldest first, in batches.
    let inbox = SqliteInbox::new(db.clone());
    let future = chrono::Utc::now() + chrono::Duration::seconds(1);
    assert_eq!(inbox.prune(future, 2).await.expect("prune"), 2);
    assert_eq!(inbox.prune(future, 2).await.expect("prune"), 1);
    assert_eq!(inbox.prune(future, 2).await.expect("prune"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolled_back_claim_leaves_no_trace() {
    let folder = tempfile::tempdir().expect("temporary folder");
    let db = database(&folder, "participant.db").await;
    let key = IdempotencyKey::new(SagaId::new(), "reserve", Direction::Invoke);
    let txn = db.begin().await.expect("begin");
    assert_eq!(
        inbox::check_key_in(&txn, &key, None).await.expect("claim"),
        None
    );
    txn.rollback().await.expect("rollback");
    let txn = db.begin().await.expect("begin");
    assert_eq!(
        inbox::check_key_in(&txn, &key, None).await.expect("claim"),
        None,
        "the key is free again: the handler runs on redelivery"
    );
}

/// The simulation's participants each keep their inbox in a file of their
/// own; every claim is a real transaction on it.
#[tokio::test(flavor = "current_thread")]
async fn the_simulation_keeps_every_guarantee_with_the_sqlite_inbox() {
    let folder = tempfile::tempdir().expect("temporary folder");
    let mut files = std::collections::HashMap::new();
    for endpoint in [
        "inventory",
        "payment",
        "shipping",
        "order",
        "notify",
        "audit",
    ] {
        files.insert(
            endpoint.to_owned(),
            database(&folder, &format!("{endpoint}.db")).await,
        );
    }
    let spare = database(&folder, "other.db").await;
    let inboxes = move |endpoint: &str| -> Arc<dyn Inbox> {
        let db = files.get(endpoint).unwrap_or(&spare).clone();
        Arc::new(SqliteInbox::new(db))
    };
    let mut config = SimConfig::default();
    config.sagas = 8;
    config.chaos_steps = 150;
    config.io_quiet = Some(Duration::from_millis(2));
    let (mut completed, mut compensated) = (0, 0);
    for seed in 0..8 {
        let report = simulate_with(seed, config.clone(), &inboxes).await;
        assert!(
            report.violations.is_empty(),
            "seed {seed}: {:#?}\n{}",
            report.violations,
            report.details.join("\n")
        );
        completed += report.completed;
        compensated += report.compensated;
    }
    assert!(
        completed > 0 && compensated > 0,
        "{completed} {compensated}"
    );
}
