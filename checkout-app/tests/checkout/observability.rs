//! What an operator sees on the five-process stack (PostgreSQL, RabbitMQ):
//! `GET /metrics` on every service, with figures that match the checkouts run,
//! and the stuck-saga listing.

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use test_kit::cluster::{Cluster, Node, OPERATOR_TOKEN, Role};

use crate::support::{LIMITED, PRODUCT, binary, order};

/// The value of the series `name{labels}` in a Prometheus text exposition,
/// `None` when absent. The labels must match exactly (all of them, no more).
fn series(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let wanted: BTreeMap<&str, &str> = labels.iter().copied().collect();
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .find_map(|line| {
            let (key, value) = line.rsplit_once(' ')?;
            let (metric, labels) = match key.split_once('{') {
                Some((metric, rest)) => (metric, rest.strip_suffix('}')?),
                None => (key, ""),
            };
            let found: BTreeMap<&str, &str> = labels
                .split("\",")
                .filter(|pair| !pair.is_empty())
                .filter_map(|pair| {
                    let (k, v) = pair.split_once("=\"")?;
                    Some((k, v.trim_end_matches('"')))
                })
                .collect();
            (metric == name && found == wanted).then(|| value.parse().ok())?
        })
}

#[test]
fn the_exposition_parser_finds_exact_series_only() {
    let text = "# TYPE a counter\na{x=\"1\",y=\"2\"} 3\na{x=\"1\"} 4\nb 5\n";
    assert_eq!(series(text, "a", &[("x", "1"), ("y", "2")]), Some(3.0));
    assert_eq!(series(text, "a", &[("x", "1")]), Some(4.0));
    assert_eq!(series(text, "b", &[]), Some(5.0));
    assert_eq!(series(text, "a", &[("x", "2")]), None);
    assert_eq!(series(text, "c", &[]), None);
}

async fn scrape(http: &reqwest::Client, base: &str) -> String {
    let response = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("GET /metrics");
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    response.text().await.expect("metrics text")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_exports_metrics_that_match_the_checkouts_run() {
    let mut cluster = Cluster::new("obs_metrics", &binary()).await;
    // No random payment failures: the figures must be known in advance.
    cluster.overrides.insert(
        Node::new(Role::Payment),
        vec![("PAYMENT_FAILURE_RATE".to_owned(), "0".to_owned())],
    );
    cluster.start_all().await;
    let http = reqwest::Client::new();
    let gateway = cluster.url(Node::new(Role::Gateway));

    // 4 checkouts complete; 2 ask for more than the stock and are compensated.
    for (body, expected) in [
        (order(PRODUCT, 1, "29.99"), StatusCode::OK),
        (order(PRODUCT, 1, "29.99"), StatusCode::OK),
        (
            order(LIMITED, 10, "19.99"),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (order(PRODUCT, 2, "29.99"), StatusCode::OK),
        (
            order(LIMITED, 10, "19.99"),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (order(PRODUCT, 1, "29.99"), StatusCode::OK),
    ] {
        let response = http
            .post(format!("{gateway}/api/checkout"))
            .json(&body)
            .send()
            .await
            .expect("checkout");
        assert_eq!(response.status(), expected);
    }
    // A poison message the order service dead-letters.
    cluster.publish_raw("order_commands", "not a command").await;

    let orchestrator = scrape(&http, &cluster.url(Node::new(Role::Orchestrator))).await;
    let saga = |name, labels: &[(&str, &str)]| series(&orchestrator, name, labels);
    assert_eq!(
        saga("saga_started_total", &[("saga", "checkout")]),
        Some(6.0)
    );
    assert_eq!(
        saga(
            "saga_finished_total",
            &[("saga", "checkout"), ("status", "completed")]
        ),
        Some(4.0),
        "{orchestrator}"
    );
    assert_eq!(
        saga(
            "saga_finished_total",
            &[("saga", "checkout"), ("status", "compensated")]
        ),
        Some(2.0)
    );
    let step = |step, outcome| {
        saga(
            "saga_step_duration_seconds_count",
            &[("saga", "checkout"), ("step", step), ("outcome", outcome)],
        )
    };
    assert_eq!(step("create_order", "succeeded"), Some(6.0));
    assert_eq!(step("reserve_inventory", "succeeded"), Some(4.0));
    assert_eq!(step("reserve_inventory", "failed"), Some(2.0));
    assert_eq!(step("process_payment", "succeeded"), Some(4.0));
    assert_eq!(step("confirm_order", "succeeded"), Some(4.0));
    assert_eq!(step("create_order", "compensated"), Some(2.0));
    assert!(
        orchestrator.contains("saga_step_duration_seconds_bucket{"),
        "step durations are histograms with buckets"
    );
    // The census ran at start-up (it runs every 15 s): it may have seen the
    // first checkouts in flight, never more than were run.
    for status in ["running", "compensating"] {
        let running = saga("saga_running", &[("saga", "checkout"), ("status", status)]);
        assert!(
            running.is_some_and(|n| (0.0..=6.0).contains(&n)),
            "{running:?}"
        );
    }
    assert!(saga("saga_oldest_running_seconds", &[("saga", "checkout")]).is_some());
    assert_eq!(saga("saga_stuck", &[("saga", "checkout")]), Some(0.0));

    let handled = |text: &str, command, outcome| {
        series(
            text,
            "saga_commands_handled_total",
            &[("command", command), ("outcome", outcome)],
        )
    };
    let orders = scrape(&http, &cluster.url(Node::new(Role::Order))).await;
    assert_eq!(handled(&orders, "create_order", "succeeded"), Some(6.0));
    assert_eq!(handled(&orders, "confirm_order", "succeeded"), Some(4.0));
    assert_eq!(handled(&orders, "cancel_order", "succeeded"), Some(2.0));
    assert_eq!(
        series(
            &orders,
            "saga_command_duration_seconds_count",
            &[("command", "create_order")]
        ),
        Some(6.0)
    );
    let mut dead = None;
    for _ in 0..50 {
        let orders = scrape(&http, &cluster.url(Node::new(Role::Order))).await;
        dead = series(
            &orders,
            "saga_messages_dead_lettered_total",
            &[("queue", "order_commands")],
        );
        if dead.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(dead, Some(1.0), "the poison message was dead-lettered");

    let inventory = scrape(&http, &cluster.url(Node::new(Role::Inventory))).await;
    assert_eq!(
        handled(&inventory, "reserve_inventory", "succeeded"),
        Some(4.0)
    );
    assert_eq!(
        handled(&inventory, "reserve_inventory", "refused"),
        Some(2.0)
    );
    let payments = scrape(&http, &cluster.url(Node::new(Role::Payment))).await;
    assert_eq!(
        handled(&payments, "process_payment", "succeeded"),
        Some(4.0)
    );
    assert_eq!(handled(&payments, "process_payment", "refused"), None);

    let front = scrape(&http, &gateway).await;
    let requests = |status| {
        series(
            &front,
            "http_requests_total",
            &[
                ("service", "api-gateway"),
                ("route", "/api/checkout"),
                ("method", "POST"),
                ("status", status),
            ],
        )
    };
    assert_eq!(requests("200"), Some(4.0), "{front}");
    assert_eq!(requests("422"), Some(2.0));

    // Nothing is stuck, through the API the operator uses.
    let stuck: Value = http
        .get(format!(
            "{}/sagas?stuck=true",
            cluster.url(Node::new(Role::Orchestrator))
        ))
        .bearer_auth(OPERATOR_TOKEN)
        .send()
        .await
        .expect("stuck list")
        .json()
        .await
        .expect("json");
    assert_eq!(stuck, json!({ "sagas": [] }));

    // The API description lists the checkout.
    let document: Value = http
        .get(format!("{gateway}/api/docs/openapi.json"))
        .send()
        .await
        .expect("the gateway's OpenAPI document")
        .json()
        .await
        .expect("json");
    assert!(
        document["paths"]["/api/checkout"]["post"].is_object(),
        "{document}"
    );

    // An operator prunes every finished saga with the CLI.
    let orchestrator_url = cluster.url(Node::new(Role::Orchestrator));
    let output = tokio::process::Command::new(binary().exe())
        .args(["saga", "prune", "--older-than", "0s"])
        .args([
            "--orchestrator-url",
            &orchestrator_url,
            "--token",
            OPERATOR_TOKEN,
        ])
        .output()
        .await
        .expect("checkout-app saga prune");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    let pruned: Value = serde_json::from_str(&stdout).expect("JSON answer");
    assert_eq!(pruned, json!({ "pruned": 6 }));
    let left: Value = http
        .get(format!("{orchestrator_url}/sagas"))
        .send()
        .await
        .expect("saga list")
        .json()
        .await
        .expect("json");
    assert_eq!(left, json!({ "sagas": [] }));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saga_whose_participant_is_gone_is_listed_as_stuck_with_its_reason() {
    let mut cluster = Cluster::new("obs_stuck", &binary()).await;
    // Short steps; the payment step may retry long enough for the test to
    // take the order service away before the pivot, `confirm_order`, which
    // retries without limit: at its 10th attempt the saga counts as stuck.
    for role in Role::ALL {
        cluster.overrides.insert(
            Node::new(role),
            vec![
                ("STEP_TIMEOUT_MS".to_owned(), "300".to_owned()),
                ("RETRY_MAX_DELAY_MS".to_owned(), "50".to_owned()),
                ("STEP_MAX_ATTEMPTS".to_owned(), "200".to_owned()),
                ("PAYMENT_FAILURE_RATE".to_owned(), "0".to_owned()),
                ("CHECKOUT_WAIT_MS".to_owned(), "500".to_owned()),
            ],
        );
    }
    cluster.start_all().await;
    cluster.kill(Node::new(Role::Payment)).await;
    let http = reqwest::Client::new();
    let gateway = cluster.url(Node::new(Role::Gateway));
    let response = http
        .post(format!("{gateway}/api/checkout"))
        .json(&order(PRODUCT, 1, "29.99"))
        .send()
        .await
        .expect("checkout");
    assert_eq!(response.status(), StatusCode::ACCEPTED, "still processing");
    let body: Value = response.json().await.expect("json");
    let saga_id = body["sagaId"].as_str().expect("sagaId").to_owned();
    // The saga retries the payment; the order service goes, payment comes back.
    cluster.kill(Node::new(Role::Order)).await;
    cluster.restart(Node::new(Role::Payment)).await;

    let orchestrator = cluster.url(Node::new(Role::Orchestrator));
    let mut listed = Value::Null;
    for _ in 0..100 {
        listed = http
            .get(format!("{orchestrator}/sagas?stuck=true"))
            .send()
            .await
            .expect("stuck list")
            .json()
            .await
            .expect("json");
        if listed["sagas"].as_array().is_some_and(|s| !s.is_empty()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let sagas = listed["sagas"].as_array().expect("sagas");
    assert_eq!(sagas.len(), 1, "{listed}");
    assert_eq!(sagas[0]["id"], saga_id.as_str());
    assert_eq!(sagas[0]["currentStep"], "confirm_order");
    assert_eq!(sagas[0]["stuck"]["reason"], "retrying", "{listed}");

    // The CLI lists it too, with the reason.
    let output = tokio::process::Command::new(binary().exe())
        .args([
            "saga",
            "list",
            "--stuck",
            "--orchestrator-url",
            &orchestrator,
        ])
        .output()
        .await
        .expect("checkout-app saga list --stuck");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert!(stdout.contains(&saga_id), "{stdout}");
    assert!(stdout.contains("stuck: step `confirm_order`"), "{stdout}");
    assert!(stdout.contains("1 saga(s)"), "{stdout}");

    // Once the order service is back the saga finishes and is no longer stuck.
    cluster.restart(Node::new(Role::Order)).await;
    let mut finished = false;
    for _ in 0..100 {
        let listed: Value = http
            .get(format!("{orchestrator}/sagas?stuck=true"))
            .send()
            .await
            .expect("stuck list")
            .json()
            .await
            .expect("json");
        if listed["sagas"].as_array().is_some_and(Vec::is_empty) {
            finished = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(finished, "the saga is no longer stuck once payment is back");
    cluster.shutdown().await;
}
