use std::time::Duration;

use saga_core::{ErrorKind, SagaStore};
use saga_postgres::{Error, PgConfig, PgSagaStore, StoreConfig};
use sea_orm::ConnectionTrait;
use sea_orm_migration::MigratorTrait;

use crate::common::{TestDb, instance};

#[tokio::test]
async fn an_unreachable_database_is_unavailable_with_a_clear_message() {
    // Nothing listens on port 1.
    let config = PgConfig::new("postgres://app:s3cret@127.0.0.1:1/orchestrator")
        .acquire_timeout(Duration::from_secs(3));
    let err = PgSagaStore::connect(&config)
        .await
        .expect_err("nothing listens on port 1");
    assert!(matches!(err, Error::Unavailable { .. }), "{err:?}");
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    let message = err.to_string();
    assert!(
        message
            .contains("PostgreSQL is unavailable at postgres://app:***@127.0.0.1:1/orchestrator"),
        "{message}"
    );
    assert!(
        !message.contains("s3cret"),
        "the password is redacted: {message}"
    );
    let core: saga_core::Error = err.into();
    assert!(core.is_transient(), "callers retry an unavailable database");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_schema_tells_to_run_the_migrations() {
    let test = TestDb::empty().await;
    let err = PgSagaStore::new(test.db.clone())
        .await
        .expect_err("no tables yet");
    assert!(matches!(err, Error::Schema { .. }), "{err:?}");
    assert!(err.to_string().contains("run the migrations"), "{err}");

    // A store built without the start-up check still reports the schema kind.
    let store =
        PgSagaStore::with_config(test.db.clone(), StoreConfig::default().check_schema(false))
            .await
            .expect("no check");
    let err = store
        .load(saga_core::SagaId::new())
        .await
        .expect_err("no table");
    assert_eq!(err.kind(), ErrorKind::Schema, "{err}");
    assert!(err.to_string().contains("run the migrations"), "{err}");

    saga_postgres::migrate(&test.db).await.expect("migrate");
    PgSagaStore::new(test.db.clone())
        .await
        .expect("the schema is there now");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_are_idempotent_and_safe_to_run_concurrently() {
    let test = TestDb::empty().await;
    let other = TestDb::pool(&test.url).await;
    let (a, b, c) = tokio::join!(
        saga_postgres::migrate(&test.db),
        saga_postgres::migrate(&other),
        saga_postgres::migrate(&test.db)
    );
    a.expect("first");
    b.expect("second");
    c.expect("third");
    saga_postgres::migrate(&test.db).await.expect("again");
    saga_postgres::migration::check_schema(&test.db)
        .await
        .expect("complete");
    let applied = test
        .db
        .query_all_raw(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Postgres,
            "SELECT version FROM saga_migrations",
        ))
        .await
        .expect("migration table");
    assert_eq!(
        applied.len(),
        saga_postgres::Migrator::migrations().len(),
        "each migration recorded once"
    );

    // A partly migrated database is reported with the missing migration.
    test.db
        .execute_unprepared("DELETE FROM saga_migrations WHERE version LIKE '%inbox%'")
        .await
        .expect("forget one");
    let err = saga_postgres::migration::check_schema(&test.db)
        .await
        .expect_err("one pending");
    assert!(
        err.to_string()
            .contains("pending migrations: m20261101_000002_create_saga_inbox"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_connection_mid_life_is_unavailable_then_recovers() {
    let test = TestDb::new().await;
    let store = test.store().await;
    let saga = instance("resilient", None, None);
    store.create(&saga, &[]).await.expect("create");
    // Kill every other connection to the test database (a server restart, a failover).
    let admin = TestDb::pool(&crate::common::admin_url()).await;
    admin
        .execute_unprepared(&format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{}' AND pid <> pg_backend_pid()",
            test.name
        ))
        .await
        .expect("terminate");
    // The pool replaces dead connections; an error on the way must be a transient one.
    let mut loaded = None;
    for _ in 0..5 {
        match store.load(saga.id).await {
            Ok(found) => {
                loaded = found;
                break;
            }
            Err(e) => assert!(
                e.is_transient(),
                "a lost connection is transient: {e} ({:?})",
                e.kind()
            ),
        }
    }
    assert_eq!(loaded, Some(saga));
}
