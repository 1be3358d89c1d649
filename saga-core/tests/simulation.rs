//! The deterministic simulation (see `saga_core::testing::simulation`): many
//! seeded schedules of faults on the real engine, participants and inboxes,
//! and the negative controls that prove its checker can fail.

use saga_core::testing::simulation::{Broken, SimConfig, SimReport, run};

fn assert_sound(seed: u64, report: &SimReport) {
    assert!(
        report.violations.is_empty(),
        "seed {seed} broke a guarantee (replay it with `run({seed}, ..)`):\n{:#?}\n{report:#?}",
        report.violations
    );
}

/// Runs `seeds` schedules and returns what they saw in total.
fn schedules(seeds: std::ops::Range<u64>, config: &SimConfig) -> SimReport {
    let mut total = SimReport::default();
    for seed in seeds {
        let report = run(seed, config.clone());
        assert_sound(seed, &report);
        total.completed += report.completed;
        total.compensated += report.compensated;
        total.operator_retries += report.operator_retries;
        total.engine_crashes += report.engine_crashes;
        total.participant_crashes += report.participant_crashes;
        total.store_or_send_faults += report.store_or_send_faults;
        total.duplicates += report.duplicates;
        total.dropped += report.dropped;
    }
    total
}

#[test]
fn a_thousand_seeded_schedules_keep_every_guarantee() {
    let total = schedules(0..1_000, &SimConfig::default());
    eprintln!("{total:#?}");
    // The schedules reached every kind of fault and ending.
    assert!(total.completed > 0 && total.compensated > 0, "{total:?}");
    assert!(total.operator_retries > 0, "{total:?}");
    assert!(
        total.engine_crashes > 0 && total.participant_crashes > 0 && total.store_or_send_faults > 0,
        "{total:?}"
    );
}

#[test]
#[ignore = "long: run with --ignored (about a minute)"]
fn twenty_thousand_seeded_schedules_keep_every_guarantee() {
    schedules(1_000..21_000, &SimConfig::default());
}

#[test]
#[ignore = "long: run with --ignored"]
fn harsher_schedules_keep_every_guarantee() {
    let mut config = SimConfig::default();
    config.sagas = 30;
    config.chaos_steps = 1_500;
    config.engine_crash = 0.05;
    config.participant_crash = 0.05;
    config.fault = 0.1;
    config.slow_handler = 0.3;
    config.duplicate = 0.3;
    schedules(50_000..52_000, &config);
}

#[test]
fn the_same_seed_replays_the_same_run() {
    let a = run(42, SimConfig::default());
    let b = run(42, SimConfig::default());
    assert_eq!(format!("{a:?}"), format!("{b:?}"));
}

/// Runs broken schedules until the checker objects; returns what it said.
fn first_objection(broken: Broken) -> Vec<String> {
    let mut config = SimConfig::default();
    config.broken = Some(broken);
    config.slow_handler = 0.3;
    for seed in 0..500 {
        let report = run(seed, config.clone());
        if !report.violations.is_empty() {
            return report.violations;
        }
    }
    Vec::new()
}

#[test]
fn the_checker_catches_an_inbox_that_checks_then_acts() {
    let found = first_objection(Broken::CheckThenAct);
    assert!(
        found.iter().any(|v| v.contains("applied 2 times")
            || v.contains("applied after its compensation ran")
            || v.contains("never undone")),
        "the 0.1 inbox went unnoticed: {found:#?}"
    );
}

#[test]
fn the_checker_catches_an_inbox_that_never_tombstones() {
    let found = first_objection(Broken::NoTombstone);
    assert!(
        found
            .iter()
            .any(|v| v.contains("applied after its compensation ran") || v.contains("never undone")),
        "the missing tombstone went unnoticed: {found:#?}"
    );
}

/// Seeds whose schedules broke a guarantee before the fix they led to.
#[test]
fn seeds_that_once_broke_a_guarantee() {
    // 1111: two engines ran one local attempt after an ambiguous save;
    // 1000: a local compensation dropped at its timeout over and over;
    // 5072: an operator's resume started a compensation while its local
    // step still ran.
    for seed in [1000, 1111, 5072] {
        assert_sound(seed, &run(seed, SimConfig::default()));
    }
}
