//! The fault suite: the checkout stack as five OS processes on real
//! PostgreSQL and RabbitMQ, under a steady checkout load, with processes
//! killed (SIGKILL), connections cut and poison messages injected. After each
//! fault every saga must reach a terminal state and the invariants must hold;
//! each scenario prints its figures (run with `--nocapture`, or see
//! nextest's output of a passing test with `--success-output immediate`).
//!
//! `cargo nextest run -p checkout-app --test faults --success-output immediate`
//! reproduces the figures of docs/reliability.md.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::processes::{Cluster, Figures, LoadReport, Node, OPERATOR_TOKEN, Role, load};

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
async fn verify(
    cluster: &Cluster,
    scenario: &str,
    report: &LoadReport,
    failed: i64,
    dead: u64,
) -> Figures {
    let settle = cluster.await_terminal(SETTLE).await;
    let figures = cluster.figures(dead).await;
    println!("{}", figures.table(scenario, report, settle));
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

async fn run_load(
    cluster: &mut Cluster,
    total: usize,
    seed: u64,
) -> support::processes::LoadHandle {
    let gateways = gateway(cluster);
    let products = cluster.products().await;
    load(gateways, products, CLIENTS, total, seed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orchestrator_killed_mid_load_then_restarted_loses_nothing() {
    let mut cluster = Cluster::new("f_orch_kill").await;
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
    let mut cluster = Cluster::new("f_part_kill").await;
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
    let mut cluster = Cluster::new("f_two_orch").await;
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
    let mut cluster = Cluster::new("f_amqp_close").await;
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
    let mut cluster = Cluster::new("f_pg_term").await;
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
             (scripts/test does: cargo nextest run -p checkout-app --test faults --profile broker-restart)"
        );
    }
    let mut cluster = Cluster::new("f_broker").await;
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
    let mut cluster = Cluster::new("f_poison").await;
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
    let mut cluster = Cluster::new("f_silent").await;
    cluster.start_all().await;
    let payment = Node::new(Role::Payment);
    cluster.kill(payment).await;
    let (_, handle) = run_load(&mut cluster, 12, 9).await;
    let report = handle.await.expect("load");
    // process_payment times out, is retried 5 times (1.5 s each plus backoff),
    // then the saga compensates; the refund waits for the service to come back.
    let orchestrator =
        support::processes::connect(&cluster.infra.postgres, &cluster.databases.orchestrator).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let compensating = support::processes::scalar(
            &orchestrator,
            "SELECT count(*)::bigint FROM saga_state WHERE status = 'compensating'",
        )
        .await;
        let open = support::processes::scalar(
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
    let timeouts = support::processes::scalar(
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
    let mut cluster = Cluster::new("f_comp_fail").await;
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
    let mut cluster = Cluster::new("f_creds").await;
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
            .env("PORT", support::processes::free_port().to_string())
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
