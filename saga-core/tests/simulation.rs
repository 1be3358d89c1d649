//! Property tests: random interleavings of replies, failures, timeouts,
//! duplicates, reorderings, lost messages and engine crashes never break the
//! saga guarantees (see `saga_core::testing::simulation`).

use proptest::prelude::*;
use saga_core::testing::simulation::{SimConfig, SimReport, simulate};

fn run(seed: u64, config: SimConfig) -> SimReport {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
        .block_on(simulate(seed, config))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]

    #[test]
    fn guarantees_hold_under_random_faults(
        seed in any::<u64>(),
        duplicate in 0.0f64..0.4,
        drop in 0.0f64..0.15,
        crash in 0.0f64..0.08,
        send_failure in 0.0f64..0.2,
        business_failure in 0.0f64..0.5,
        transient_failure in 0.0f64..0.5,
    ) {
        let config = SimConfig {
            sagas: 12,
            chaos_steps: 300,
            duplicate,
            drop,
            crash,
            send_failure,
            business_failure,
            transient_failure,
        };
        let report = run(seed, config);
        prop_assert!(report.violations.is_empty(), "{:#?}", report.violations);
        prop_assert_eq!(report.completed + report.compensated, 12);
    }
}

#[test]
fn a_long_chaotic_run_keeps_every_guarantee() {
    let config = SimConfig {
        sagas: 60,
        chaos_steps: 3_000,
        duplicate: 0.3,
        drop: 0.1,
        crash: 0.05,
        send_failure: 0.1,
        business_failure: 0.2,
        transient_failure: 0.3,
    };
    let report = run(7, config);
    eprintln!("{report:?}");
    assert!(report.violations.is_empty(), "{:#?}", report.violations);
    assert_eq!(report.completed + report.compensated, 60);
    assert!(report.completed > 0 && report.compensated > 0, "{report:?}");
    assert!(
        report.crashes > 0 && report.duplicates > 0 && report.dropped > 0,
        "{report:?}"
    );
}

#[test]
fn the_same_seed_replays_the_same_run() {
    let a = run(42, SimConfig::default());
    let b = run(42, SimConfig::default());
    assert_eq!(
        (
            a.completed,
            a.compensated,
            a.crashes,
            a.duplicates,
            a.dropped
        ),
        (
            b.completed,
            b.compensated,
            b.crashes,
            b.duplicates,
            b.dropped
        )
    );
}
