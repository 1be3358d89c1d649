//! saga-core's store conformance suite, on a file and in memory.

use saga_sqlite::{SqliteConfig, SqliteSagaStore};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_conformance_suite_passes_on_a_file() {
    let folder = tempfile::tempdir().expect("temporary folder");
    let store = SqliteSagaStore::open(&SqliteConfig::file(folder.path().join("sagas.db")))
        .await
        .expect("open");
    saga_core::testing::store_conformance(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_conformance_suite_passes_in_memory() {
    let store = SqliteSagaStore::open(&SqliteConfig::memory())
        .await
        .expect("open");
    saga_core::testing::store_conformance(&store).await;
}
