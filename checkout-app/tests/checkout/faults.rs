//! The fault suite: the checkout stack as five OS processes on real
//! PostgreSQL and RabbitMQ, under a steady checkout load, with processes
//! killed (SIGKILL), connections cut and poison messages injected. After each
//! fault every saga must reach a terminal state and the invariants must hold;
//! each scenario prints its figures (run with `--nocapture`, or see
//! nextest's output of a passing test with `--success-output immediate`).
//!
//! `cargo nextest run -p checkout-app --test checkout faults:: --success-output immediate`
//! reproduces the figures of docs/reliability.md.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use test_kit::cluster::{Cluster, Figures, Node, OPERATOR_TOKEN, Role};
use test_kit::load::{LoadHandle, LoadReport, load};

use crate::support::binary;

/// Checkouts per scenario and concurrent clients.
const LOAD: usize = 240;
const CLIENTS: usize = 24;
/// How long every saga has to become terminal after the load ends.
const SETTLE: Duration = Duration::from_secs(90);

fn gateway(cluster: &mut Cluster) -> Vec<String> {
    vec![cluster.url(Node::new(Role::Gateway))]
}

/// Waits for the sagas, reads and prints the figures, checks the invariants
/// and that no secret reached a log.
pub(crate) async fn verify(
    cluster: &Cluster,
    scenario: &str,
    report: &LoadReport,
    failed: i64,
    dead: u64,
) -> Figures {
    let settle = cluster.await_terminal(SETTLE).await;
    let figures = cluster.figures(dead).await;
    println!("{}", figures.table(scenario, report, settle));
    if report.other != 0 {
        cluster.dump_logs();
    }
    assert_eq!(
        report.other, 0,
        "unexpected answers to the load: {report:?}"
    );
    if std::panic::catch_unwind(|| figures.assert_invariants(scenario, failed, dead)).is_err() {
        cluster.dump_logs();
        figures.assert_invariants(scenario, failed, dead);
    }
    assert_no_secrets(cluster);
    figures
}

/// Passwords never appear in any process's output.
fn assert_no_secrets(cluster: &Cluster) {
    let logs = cluster.logs();
    assert!(
        !logs.contains(&cluster.amqp_password),
        "the RabbitMQ password appears in a log"
    );
    assert!(
        !logs.contains(OPERATOR_TOKEN),
        "the operator token appears in a log"
    );
}

async fn run_load(cluster: &mut Cluster, total: usize, seed: u64) -> LoadHandle {
    let gateways = gateway(cluster);
    let products = cluster.products().await;
    load(gateways, products, CLIENTS, total, seed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orchestrator_killed_mid_load_then_restarted_loses_nothing() {
    let mut cluster = Cluster::new("f_orch_kill", &binary()).await;
    cluster.start_all().await;
    let (progress, handle) = run_load(&mut cluster, LOAD, 1).await;
    let orchestrator = Node::new(Role::Orchestrator);
    progress.reached(LOAD / 3).await;
    cluster.kill(orchestrator).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.restart(orchestrator).await;
    progress.reached(2 * LOAD / 3).await;
    cluster.kill(orchestrator).await;
    cluster.restart(orchestrator).await;
    let report = handle.await.expect("load");
    verify(
        &cluster,
        "orchestrator kill -9 (twice), restart",
        &report,
        0,
        0,
    )
    .await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_participant_killed_mid_load_then_restarted_loses_nothing() {
    let mut cluster = Cluster::new("f_part_kill", &binary()).await;
    cluster.start_all().await;
    for (i, role) in [Role::Order, Role::Inventory, Role::Payment]
        .into_iter()
        .enumerate()
    {
        let (progress, handle) = run_load(&mut cluster, LOAD / 2, 10 + i as u64).await;
        progress.reached(LOAD / 6).await;
        cluster.kill(Node::new(role)).await;
        tokio::time::sleep(Duration::from_millis(700)).await;
        cluster.restart(Node::new(role)).await;
        let report = handle.await.expect("load");
        verify(
            &cluster,
            &format!("{role} kill -9, restart (cumulative)"),
            &report,
            0,
            0,
        )
        .await;
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_orchestrators_one_killed_the_other_finishes_every_saga() {
    let mut cluster = Cluster::new("f_two_orch", &binary()).await;
    cluster.start_all().await;
    let second = Node::nth(Role::Orchestrator, 1);
    let second_gateway = Node::nth(Role::Gateway, 1);
    cluster.spawn(second).await;
    cluster.spawn(second_gateway).await;
    cluster.ready(second).await;
    cluster.ready(second_gateway).await;
    let gateways = vec![
        cluster.url(Node::new(Role::Gateway)),
        cluster.url(second_gateway),
    ];
    let products = cluster.products().await;
    let (progress, handle) = load(gateways, products, CLIENTS, LOAD, 3);
    progress.reached(LOAD / 3).await;
    // The first orchestrator dies for good; its gateway's requests fail from now on.
    cluster.kill(Node::new(Role::Orchestrator)).await;
    let report = handle.await.expect("load");
    verify(
        &cluster,
        "two orchestrators, one kill -9 (not restarted)",
        &report,
        0,
        0,
    )
    .await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_connections_closed_mid_load_lose_nothing() {
    let mut cluster = Cluster::new("f_amqp_close", &binary()).await;
    cluster.start_all().await;
    let (progress, handle) = run_load(&mut cluster, LOAD, 4).await;
    let mut closed = 0;
    for fraction in [4, 2] {
        progress.reached(LOAD / fraction).await;
        closed += cluster.close_amqp_connections().await;
    }
    let report = handle.await.expect("load");
    assert!(closed >= 4, "only {closed} AMQP connection(s) were closed");
    verify(
        &cluster,
        &format!("RabbitMQ connections force-closed twice ({closed} connections)"),
        &report,
        0,
        0,
    )
    .await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_connections_terminated_mid_load_lose_nothing() {
    let mut cluster = Cluster::new("f_pg_term", &binary()).await;
    cluster.start_all().await;
    let (progress, handle) = run_load(&mut cluster, LOAD, 5).await;
    let mut terminated = 0;
    for fraction in [4, 2] {
        progress.reached(LOAD / fraction).await;
        terminated += cluster.terminate_pg_backends().await;
    }
    let report = handle.await.expect("load");
    assert!(terminated >= 4, "only {terminated} backend(s) terminated");
    verify(
        &cluster,
        &format!("pg_terminate_backend twice ({terminated} backends)"),
        &report,
        0,
        0,
    )
    .await;
    cluster.shutdown().await;
}

/// `rabbitmqctl stop_app` / `start_app` stops the whole broker, which would
/// disturb every other test running at the same time. It therefore runs only
/// when `SAGA_TEST_BROKER_RESTART=1`, which `scripts/test` sets for a separate,
/// serial nextest invocation after the parallel run (the parallel run excludes
/// it through `.config/nextest.toml`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_stopped_and_started_mid_load_loses_nothing() {
    if std::env::var("SAGA_TEST_BROKER_RESTART").as_deref() != Ok("1") {
        panic!(
            "this test restarts the RabbitMQ broker; run it alone with SAGA_TEST_BROKER_RESTART=1 \
             (scripts/test does: cargo nextest run -p checkout-app --test checkout --profile broker-restart)"
        );
    }
    let mut cluster = Cluster::new("f_broker", &binary()).await;
    cluster.start_all().await;
    let (progress, handle) = run_load(&mut cluster, LOAD, 6).await;
    progress.reached(LOAD / 3).await;
    rabbitmqctl("stop_app").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    rabbitmqctl("start_app").await;
    rabbitmqctl("await_startup").await;
    let report = handle.await.expect("load");
    verify(&cluster, "rabbitmqctl stop_app / start_app", &report, 0, 0).await;
    cluster.shutdown().await;
}

async fn rabbitmqctl(action: &str) {
    let status = tokio::process::Command::new("rabbitmqctl")
        .arg(action)
        .stdout(std::process::Stdio::null())
        .status()
        .await
        .unwrap_or_else(|e| panic!("rabbitmqctl {action}: {e}"));
    assert!(status.success(), "rabbitmqctl {action}: {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_are_dead_lettered_with_a_reason_and_queues_keep_flowing() {
    let mut cluster = Cluster::new("f_poison", &binary()).await;
    cluster.start_all().await;
    // One checkout first, so every queue exists.
    let (_, handle) = run_load(&mut cluster, 10, 7).await;
    handle.await.expect("load");
    cluster.await_terminal(SETTLE).await;

    let saga = uuid::Uuid::new_v4();
    let unknown_command = json!({
        "message_id": "m-1", "idempotency_key": format!("{saga}:create_order:invoke"),
        "saga_id": saga, "saga_type": "checkout", "step": 0, "step_name": "create_order",
        "direction": "invoke", "attempt": 1, "endpoint": "order", "command": "launch_rockets",
        "payload": {}, "reply_to": "orchestrator_replies"
    });
    let unknown_saga_reply = json!({
        "message_id": "m-2", "saga_id": saga, "step": 0, "step_name": "create_order",
        "direction": "invoke", "attempt": 1, "reply_to": "orchestrator_replies",
        "outcome": { "success": {} }
    });
    let queues = [
        "order_commands",
        "inventory_commands",
        "payment_commands",
        "orchestrator_replies",
    ];
    let mut injected = 0;
    for queue in queues {
        cluster.publish_raw(queue, "{not json").await;
        cluster.publish_raw(queue, r#"{"hello":"world"}"#).await;
        let unknown = if queue == "orchestrator_replies" {
            &unknown_saga_reply
        } else {
            &unknown_command
        };
        let mut unknown = unknown.clone();
        if let Some(endpoint) = queue.strip_suffix("_commands") {
            unknown["endpoint"] = Value::from(endpoint);
        }
        cluster.publish_raw(queue, &unknown.to_string()).await;
        injected += 3;
    }
    // The queues keep flowing: a load after the poison completes.
    let (_, handle) = run_load(&mut cluster, LOAD / 2, 8).await;
    let report = handle.await.expect("load");
    let figures = verify(
        &cluster,
        "poison messages (3 per queue)",
        &report,
        0,
        injected,
    )
    .await;
    for queue in queues {
        let dlq = format!("{queue}.dlq");
        assert_eq!(
            figures.queues.get(&dlq).copied(),
            Some(3),
            "{dlq}: {:?}",
            figures.queues
        );
        for message in cluster.peek(&dlq, 3).await {
            let headers = &message["properties"]["headers"];
            let reason = headers["x-saga-dead-reason"]
                .as_str()
                .or_else(|| headers["x-death-reason"].as_str())
                .unwrap_or_default();
            assert!(
                !reason.is_empty(),
                "dead letter in {dlq} without a reason: {message}"
            );
            println!("  {dlq}: {reason}");
        }
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_participant_that_never_answers_times_out_retries_then_compensates() {
    let mut cluster = Cluster::new("f_silent", &binary()).await;
    cluster.start_all().await;
    let payment = Node::new(Role::Payment);
    cluster.kill(payment).await;
    let (_, handle) = run_load(&mut cluster, 12, 9).await;
    let report = handle.await.expect("load");
    // process_payment times out, is retried 5 times (1.5 s each plus backoff),
    // then the saga compensates; the refund waits for the service to come back.
    let orchestrator =
        test_kit::cluster::connect(&cluster.infra.postgres, &cluster.databases.orchestrator).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let compensating = test_kit::cluster::scalar(
            &orchestrator,
            "SELECT count(*)::bigint FROM saga_state WHERE status = 'compensating'",
        )
        .await;
        let open = test_kit::cluster::scalar(
            &orchestrator,
            "SELECT count(*)::bigint FROM saga_state WHERE status IN ('running','compensating')",
        )
        .await;
        if open > 0 && compensating == open {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "sagas did not start compensating"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let timeouts = test_kit::cluster::scalar(
        &orchestrator,
        "SELECT min(n)::bigint FROM (SELECT count(*) AS n FROM saga_logs \
         WHERE event = 'step_timed_out' AND step = 'process_payment' GROUP BY saga_id) t",
    )
    .await;
    assert_eq!(timeouts, 5, "each payment step timed out once per attempt");
    let _ = orchestrator.close().await;
    cluster.restart(payment).await;
    let figures = verify(
        &cluster,
        "payment service never answers, then returns",
        &report,
        0,
        0,
    )
    .await;
    assert_eq!(figures.orders.get("CONFIRMED").copied().unwrap_or(0), 0);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compensation_that_keeps_failing_ends_failed_and_an_operator_retries_it() {
    let mut cluster = Cluster::new("f_comp_fail", &binary()).await;
    // Confirming always fails, so every paid checkout is refunded; the
    // payments table refuses refunds (a broken database, say).
    cluster.overrides.insert(
        Node::new(Role::Order),
        vec![("ORDER_CONFIRM_FAILURE_RATE".into(), "1".into())],
    );
    cluster.overrides.insert(
        Node::new(Role::Orchestrator),
        vec![("COMPENSATION_MAX_ATTEMPTS".into(), "3".into())],
    );
    cluster.overrides.insert(
        Node::new(Role::Payment),
        vec![("PAYMENT_FAILURE_RATE".into(), "0".into())],
    );
    use sea_orm::ConnectionTrait;
    cluster
        .payment_db
        .execute_unprepared(
            "CREATE FUNCTION refuse_refunds() RETURNS trigger AS $$ BEGIN \
               RAISE EXCEPTION 'injected fault: refunds are refused'; END $$ LANGUAGE plpgsql; \
             CREATE TRIGGER refuse_refunds BEFORE INSERT OR UPDATE ON payments FOR EACH ROW \
               WHEN (NEW.status = 'REFUNDED') EXECUTE FUNCTION refuse_refunds();",
        )
        .await
        .expect("fault trigger");
    cluster.start_all().await;
    let (_, handle) = run_load(&mut cluster, 6, 11).await;
    let report = handle.await.expect("load");
    cluster.await_terminal(SETTLE).await;
    let orchestrator_url = cluster.url(Node::new(Role::Orchestrator));

    // The operator listing shows them.
    let listing = operator(&orchestrator_url, &["list", "--status", "failed"], None).await;
    assert!(listing.0, "saga list failed: {}", listing.1);
    let failed: Vec<String> = listing
        .1
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .filter(|id| uuid::Uuid::parse_str(id).is_ok())
        .map(str::to_owned)
        .collect();
    assert_eq!(
        failed.len(),
        report.sent,
        "every saga ends Failed while refunds are refused: {}",
        listing.1
    );
    assert_eq!(
        report.failed, report.sent,
        "the gateway answers 500 for a Failed saga"
    );
    println!("operator listing of failed sagas:\n{}", listing.1);

    // Operator actions need the token.
    let id = &failed[0];
    let without = operator(&orchestrator_url, &["retry", id], None).await;
    assert!(!without.0, "retry without a token succeeded");
    let wrong = operator(
        &orchestrator_url,
        &["retry", id],
        Some("wrong-token-wrong-token"),
    )
    .await;
    assert!(!wrong.0, "retry with a wrong token succeeded");

    // The fault is gone; the operator retries every failed saga to completion.
    cluster
        .payment_db
        .execute_unprepared("DROP TRIGGER refuse_refunds ON payments")
        .await
        .expect("drop trigger");
    for id in &failed {
        let retried = operator(&orchestrator_url, &["retry", id], Some(OPERATOR_TOKEN)).await;
        assert!(retried.0, "retry {id}: {}", retried.1);
    }
    let figures = verify(
        &cluster,
        "refund keeps failing -> Failed, operator retry after the fault is fixed",
        &report,
        0,
        0,
    )
    .await;
    assert_eq!(
        figures.saga_count("compensated") as usize,
        report.sent,
        "every saga compensated"
    );
    cluster.shutdown().await;
}

/// Runs `checkout-app saga ...`; returns (success, stdout + stderr).
async fn operator(orchestrator: &str, args: &[&str], token: Option<&str>) -> (bool, String) {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_checkout-app"));
    command
        .arg("saga")
        .args(args)
        .env_clear()
        .env("ORCHESTRATOR_URL", orchestrator);
    if let Some(token) = token {
        command.env("OPERATOR_TOKEN", token);
    }
    let output = command.output().await.expect("checkout-app saga runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if let Some(token) = token {
        assert!(!text.contains(token), "the operator token was printed");
    }
    (output.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_bind_loopback_and_never_print_credentials() {
    let mut cluster = Cluster::new("f_creds", &binary()).await;
    cluster.start_all().await;
    let logs = cluster.logs();
    for role in Role::ALL {
        let port = cluster.port(Node::new(role));
        assert!(
            logs.contains(&format!("127.0.0.1:{port}")),
            "{role} does not say it listens on 127.0.0.1:{port}"
        );
    }
    assert_no_secrets(&cluster);

    // Bad credentials: the error names the server but not the password.
    let secret = "hunter2-fault-suite-secret";
    let cases = [
        (
            "order-service",
            "DB_URL",
            format!("postgres://postgres:{secret}@127.0.0.1:1/orders"),
        ),
        (
            "payment-service",
            "RABBITMQ_URL",
            format!("amqp://nobody:{secret}@127.0.0.1:5672/%2f"),
        ),
    ];
    for (service, var, url) in cases {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_checkout-app"));
        command
            .arg(service)
            .env_clear()
            .env("PORT", test_kit::cluster::free_port().to_string())
            .env("DB_URL", with_db(&cluster))
            .env("RABBITMQ_URL", &cluster.amqp)
            .env(var, &url);
        let output = tokio::time::timeout(Duration::from_secs(60), command.output())
            .await
            .expect("the service gives up within 60 s")
            .expect("runs");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            !output.status.success(),
            "{service} started with {var}={url}"
        );
        assert!(
            !text.contains(secret),
            "{service} printed the password of {var}:\n{text}"
        );
        println!(
            "{service} with a bad {var}: {}",
            text.lines().last().unwrap_or_default()
        );
    }
    cluster.shutdown().await;
}

fn with_db(cluster: &Cluster) -> String {
    checkout_app::runtime::with_database(&cluster.infra.postgres, &cluster.databases.payments)
}

/// Timings of the order-outage scenario (the orchestrator's settings).
const OUTAGE_STEP_TIMEOUT: Duration = Duration::from_millis(1_000);
const OUTAGE_RETRY_MAX_DELAY: Duration = Duration::from_millis(500);
const OUTAGE_STEP_ATTEMPTS: u32 = 3;
const OUTAGE_COMPENSATION_ATTEMPTS: u32 = 40;
/// How long the order service stays down at least (three step budgets).
const OUTAGE: Duration = Duration::from_secs(10);
/// Checkouts of the order-outage scenario: some answered before the kill,
/// about half sent during the outage, the rest after the restart.
const OUTAGE_LOAD: usize = 120;

/// A step's whole retry budget with the outage scenario's settings: every
/// attempt waits out its timeout, and the backoff between attempts is at
/// most the policy's delay without jitter (the policy of `saga::definition`).
fn outage_step_budget() -> Duration {
    let initial = checkout_app::saga::Timing::default().retry_initial;
    let policy = saga_core::RetryPolicy::exponential(initial, OUTAGE_RETRY_MAX_DELAY)
        .max_attempts(OUTAGE_STEP_ATTEMPTS)
        .jitter(0.0);
    let backoff: Duration = (1..OUTAGE_STEP_ATTEMPTS)
        .map(|attempt| policy.delay_after(attempt, 0))
        .sum();
    OUTAGE_STEP_TIMEOUT * OUTAGE_STEP_ATTEMPTS + backoff
}

/// GETs `url` from the orchestrator's API.
async fn api_get(http: &reqwest::Client, url: &str) -> Value {
    http.get(url)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
        .json()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
}

/// The sagas of `status` as the orchestrator's API lists them.
async fn sagas_by_status(http: &reqwest::Client, orchestrator: &str, status: &str) -> Vec<Value> {
    let body = api_get(
        http,
        &format!("{orchestrator}/sagas?status={status}&limit=1000"),
    )
    .await;
    body["sagas"].as_array().cloned().unwrap_or_default()
}

/// The review's hole: `confirm_order` has an effect that nothing undoes.
/// With the order service down for longer than a step's whole retry budget,
/// an ordinary last step would give up and compensate (refund, release)
/// while its `confirm_order` commands still sat in the queue; the returning
/// service would then confirm orders whose payment was refunded and whose
/// stock was released, and the saga would end `Failed`. As the pivot,
/// `confirm_order` keeps retrying through the outage, while sagas still at
/// `create_order` give up and compensate as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_service_down_longer_than_a_step_budget_then_restarted_stays_consistent() {
    let step_budget = outage_step_budget();
    // While the service is down every compensation attempt waits out its timeout.
    let compensation_floor = OUTAGE_STEP_TIMEOUT * OUTAGE_COMPENSATION_ATTEMPTS;
    assert!(OUTAGE > 2 * step_budget && OUTAGE * 2 < compensation_floor);

    let mut cluster = Cluster::new("f_order_outage", &binary()).await;
    let orchestrator = Node::new(Role::Orchestrator);
    let timings = [
        (
            "STEP_TIMEOUT_MS",
            OUTAGE_STEP_TIMEOUT.as_millis().to_string(),
        ),
        (
            "RETRY_MAX_DELAY_MS",
            OUTAGE_RETRY_MAX_DELAY.as_millis().to_string(),
        ),
        ("STEP_MAX_ATTEMPTS", OUTAGE_STEP_ATTEMPTS.to_string()),
        (
            "COMPENSATION_MAX_ATTEMPTS",
            OUTAGE_COMPENSATION_ATTEMPTS.to_string(),
        ),
    ];
    cluster.overrides.insert(
        orchestrator,
        timings
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
    );
    cluster.start_all().await;
    let orchestrator_url = cluster.url(orchestrator);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("HTTP client");

    let (progress, handle) = run_load(&mut cluster, OUTAGE_LOAD, 12).await;
    progress.reached(CLIENTS).await;
    // Kill the order service while sagas are between create_order and
    // confirm_order: they reach confirm_order during the outage.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let midway = sagas_by_status(&http, &orchestrator_url, "running")
            .await
            .iter()
            .filter(|s| {
                matches!(
                    s["currentStep"].as_str(),
                    Some("reserve_inventory" | "process_payment")
                )
            })
            .count();
        if midway >= 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no sagas between create_order and confirm_order under load"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let order = Node::new(Role::Order);
    cluster.kill(order).await;
    let killed = Instant::now();
    let killed_at = chrono::Utc::now();
    let answered_before = progress.done();

    // While it is down: sagas that passed the payment wait at confirm_order,
    // checkouts sent since the kill wait at create_order.
    let mut at_confirm: HashMap<String, Instant> = HashMap::new();
    let mut at_create = HashSet::new();
    let mut max_confirm_attempt = 0;
    let mut max_compensating = 0;
    loop {
        let now = Instant::now();
        for saga in sagas_by_status(&http, &orchestrator_url, "running").await {
            let id = saga["id"].as_str().unwrap_or_default().to_owned();
            match saga["currentStep"].as_str() {
                Some("confirm_order") => {
                    at_confirm.entry(id).or_insert(now);
                    max_confirm_attempt =
                        max_confirm_attempt.max(saga["attempt"].as_u64().unwrap_or(0));
                }
                Some("create_order") => {
                    let created = saga["createdAt"]
                        .as_str()
                        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok());
                    if created.is_some_and(|t| t > killed_at) {
                        at_create.insert(id);
                    }
                }
                _ => {}
            }
        }
        let compensating = sagas_by_status(&http, &orchestrator_url, "compensating").await;
        max_compensating = max_compensating.max(compensating.len());
        // Down for OUTAGE at least, and until a saga has waited at
        // confirm_order for longer than a whole step budget.
        let confirm_waited = at_confirm
            .values()
            .min()
            .map(Instant::elapsed)
            .unwrap_or_default();
        if killed.elapsed() >= OUTAGE && !at_create.is_empty() && confirm_waited > step_budget {
            break;
        }
        assert!(
            killed.elapsed() < compensation_floor / 2,
            "after {:?} of outage: {} saga(s) seen at confirm_order (the first {confirm_waited:?} ago), \
             {} started since the kill at create_order",
            killed.elapsed(),
            at_confirm.len(),
            at_create.len()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let answered_during = progress.done() - answered_before;
    // No process at all for `down`; unavailable until healthy for `outage`.
    let down = killed.elapsed();
    cluster.restart(order).await;
    let outage = killed.elapsed();
    println!(
        "order service down {:.1}s (no process), {:.1}s from kill -9 to healthy again; \
         step budget {:.1}s (STEP_TIMEOUT_MS={} x STEP_MAX_ATTEMPTS={} + backoff, RETRY_MAX_DELAY_MS={}); \
         compensation budget at least {:.0}s (COMPENSATION_MAX_ATTEMPTS={})",
        down.as_secs_f64(),
        outage.as_secs_f64(),
        step_budget.as_secs_f64(),
        OUTAGE_STEP_TIMEOUT.as_millis(),
        OUTAGE_STEP_ATTEMPTS,
        OUTAGE_RETRY_MAX_DELAY.as_millis(),
        compensation_floor.as_secs_f64(),
        OUTAGE_COMPENSATION_ATTEMPTS
    );
    println!(
        "during the outage: {} saga(s) at confirm_order (up to attempt {max_confirm_attempt}), \
         {} started after the kill at create_order, up to {max_compensating} compensating at once; \
         {answered_before} checkouts answered before the kill, {answered_during} during it",
        at_confirm.len(),
        at_create.len()
    );
    assert!(
        down > 2 * step_budget,
        "the outage ({down:?}) must clearly outlast a step's retry budget ({step_budget:?})"
    );
    assert!(
        outage < compensation_floor,
        "the outage ({outage:?}) must end within the compensation's budget ({compensation_floor:?})"
    );
    assert!(
        !at_confirm.is_empty(),
        "no saga waited at confirm_order during the outage"
    );
    assert!(
        !at_create.is_empty(),
        "no checkout sent during the outage waited at create_order"
    );

    let report = handle.await.expect("load");
    // Every saga terminal and none Failed; every CONFIRMED order has exactly
    // one SUCCESS payment and its reservation; no SUCCESS payment and no
    // active reservation without a CONFIRMED order; stock taken equals the
    // units of CONFIRMED orders; no order PENDING; queues drained.
    verify(
        &cluster,
        "order service kill -9 for longer than a step's retry budget, restart",
        &report,
        0,
        0,
    )
    .await;
    // And every saga that waited at confirm_order through the outage completed.
    for id in at_confirm.keys() {
        let saga = api_get(&http, &format!("{orchestrator_url}/sagas/{id}")).await;
        assert_eq!(
            saga["status"], "completed",
            "saga {id} waited at confirm_order during the outage: {}",
            saga["error"]
        );
    }
    cluster.shutdown().await;
}
