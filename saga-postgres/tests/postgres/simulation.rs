//! The deterministic simulation of saga-core with its participants' inboxes
//! on Postgres: every claim a real transaction holding the key's row, so a
//! duplicate or a racing compensation really waits on the database. The
//! schedule depends on the database's timing too, so a seed does not replay
//! exactly; the checker is the same.

use std::sync::Arc;
use std::time::Duration;

use saga_core::Inbox;
use saga_core::testing::simulation::{SimConfig, simulate_with};
use saga_postgres::PgConfig;
use saga_postgres::inbox::PgInbox;

use crate::common::TestDb;

#[tokio::test(flavor = "current_thread")]
async fn the_simulation_keeps_every_guarantee_with_the_postgres_inbox() {
    let test = TestDb::new().await;
    // Claims hold a connection while their handler works, and duplicates
    // wait holding another.
    let db = PgConfig::new(&test.url)
        .max_connections(32)
        .connect()
        .await
        .expect("pool");
    let inboxes = move |_endpoint: &str| -> Arc<dyn Inbox> { Arc::new(PgInbox::new(db.clone())) };
    let mut config = SimConfig::default();
    config.sagas = 8;
    config.chaos_steps = 150;
    config.io_quiet = Some(Duration::from_millis(2));
    let (mut completed, mut compensated) = (0, 0);
    for seed in 0..12 {
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
