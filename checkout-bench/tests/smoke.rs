//! The bench itself, briefly, so it cannot rot: a spawned embedded stack,
//! two concurrency levels, about two seconds each. No timing is asserted:
//! any rate passes; the run must complete, hold every invariant and write its
//! report.

use checkout_bench::{self as bench, BenchArgs};
use clap::Parser;

fn args(out: &std::path::Path, extra: &[&str]) -> BenchArgs {
    let mut argv = vec![
        "checkout-bench",
        "--concurrency",
        "1,4",
        "--duration",
        "2s",
        "--warmup",
        "500ms",
        "--quiet",
        "--out",
    ];
    let out = out.to_str().expect("utf-8 path");
    argv.push(out);
    argv.extend_from_slice(extra);
    let mut args = BenchArgs::parse_from(argv);
    // Never pick up a developer's DB_URL / RABBITMQ_URL: this test is embedded.
    args.db_url = None;
    args.rabbitmq_url = None;
    args
}

fn out_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("bench-smoke-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn assert_report(report: &bench::report::Report, out: &std::path::Path) {
    assert_eq!(report.levels.len(), 2);
    for level in &report.levels {
        assert!(
            level.succeeded + level.compensated > 0,
            "level c={} completed nothing: {level:?}",
            level.concurrency
        );
        assert_eq!(level.errors, 0, "{:?}", level.error_kinds);
        assert!(level.p50_ms <= level.p99_ms && level.p99_ms <= level.max_ms);
    }
    let invariants = report.invariants.as_ref().expect("invariants checked");
    assert!(invariants.all_hold(), "{:?}", invariants.checks);
    assert!(invariants.checks.len() >= 5);
    for file in ["report.json", "report.md", "latency.svg"] {
        let text = std::fs::read_to_string(out.join(file)).expect(file);
        assert!(!text.is_empty(), "{file} is empty");
    }
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).expect("json"))
            .expect("valid JSON");
    assert_eq!(json["levels"][1]["concurrency"], 4);
    let _ = std::fs::remove_dir_all(out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bench_runs_on_a_spawned_embedded_stack_and_its_invariants_hold() {
    let out = out_dir("http");
    let report = bench::run(args(&out, &["--spawn"]))
        .await
        .expect("the bench completes with its invariants holding");
    assert!(report.levels[0].rss.iter().any(|r| r.max_kib > 0));
    assert_report(&report, &out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_level_bench_runs_on_the_in_memory_adapters() {
    let out = out_dir("engine");
    let report = bench::run(args(&out, &["--engine", "memory"]))
        .await
        .expect("the bench completes with its invariants holding");
    assert_report(&report, &out);
}
