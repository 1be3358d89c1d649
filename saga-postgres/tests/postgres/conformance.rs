use crate::common::TestDb;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_conformance_suite_passes() {
    let test = TestDb::new().await;
    let store = test.store().await;
    saga_core::testing::store_conformance(&store).await;
}
