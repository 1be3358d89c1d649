//! End to end on real PostgreSQL and RabbitMQ: the five services as tasks
//! talking only through RabbitMQ, each with its own database. Covers the seed
//! guide's success criteria.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use crate::support::{Client, Infra, LIMITED, PRODUCT, order, service_get, start};
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_success_criteria_hold_on_postgres_and_rabbitmq() {
    let infra = Infra::new("criteria").await;
    let stack = start(infra.config()).await;
    let client = Arc::new(Client::new(&stack));

    // The same API documents as on the embedded stack, every route served.
    crate::docs::assert_documents_served(&stack).await;

    // Happy path.
    let (status, body) = client.checkout(order(PRODUCT, 2, "29.99"), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let order_id = body["orderId"].as_str().expect("orderId").to_owned();
    let (_, placed) = client.get(&format!("/api/orders/{order_id}")).await;
    assert_eq!(placed["status"], "CONFIRMED");

    // Insufficient stock: cancelled, no payment.
    let (status, body) = client.checkout(order(LIMITED, 10, "19.99"), None).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let refused = body["orderId"].as_str().expect("orderId").to_owned();
    let (_, cancelled) = client.get(&format!("/api/orders/{refused}")).await;
    assert_eq!(cancelled["status"], "CANCELLED");
    let (status, _) = service_get(stack.payment, &format!("/payments/{refused}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Duplicate request with an idempotency key: one order.
    let (_, first) = client
        .checkout(order(PRODUCT, 1, "29.99"), Some("dup-1"))
        .await;
    let (_, second) = client
        .checkout(order(PRODUCT, 1, "29.99"), Some("dup-1"))
        .await;
    assert_eq!(first["orderId"], second["orderId"]);

    // 30 concurrent buyers of the 5-unit item: exactly 5 succeed.
    let buyers: Vec<_> = (0..30)
        .map(|i| {
            let client = Arc::clone(&client);
            tokio::spawn(async move {
                let body = json!({ "userId": format!("buyer-{i}"), "items": [{ "productId": LIMITED, "quantity": 1 }] });
                client.checkout(body, None).await
            })
        })
        .collect();
    let mut sold = 0;
    let mut sagas = HashSet::new();
    for buyer in buyers {
        let (status, body) = buyer.await.expect("buyer");
        assert!(
            status == StatusCode::OK || status == StatusCode::UNPROCESSABLE_ENTITY,
            "{status} {body}"
        );
        sold += usize::from(body["success"] == true);
        sagas.insert(body["sagaId"].as_str().expect("sagaId").to_owned());
    }
    assert_eq!(sold, 5);
    let (_, limited) = service_get(stack.inventory, &format!("/products/{LIMITED}")).await;
    assert_eq!(limited["stock"], 0);

    // saga_logs complete: every saga starts, and ends completed or compensated.
    for saga in &sagas {
        let (_, view) = client.get(&format!("/api/sagas/{saga}")).await;
        let logs = view["logs"].as_array().expect("logs");
        let seqs: Vec<u64> = logs.iter().filter_map(|l| l["seq"].as_u64()).collect();
        assert_eq!(
            seqs,
            (0..logs.len() as u64).collect::<Vec<_>>(),
            "gap-free log"
        );
        assert_eq!(logs[0]["event"], "saga_started");
        // Late duplicate replies are logged as `reply_ignored` after the end.
        let last = logs
            .iter()
            .rev()
            .filter_map(|l| l["event"].as_str())
            .find(|e| *e != "reply_ignored")
            .unwrap_or_default()
            .to_owned();
        assert!(
            last == "saga_completed" || last == "saga_compensated",
            "{last}"
        );
    }

    // All traffic went through RabbitMQ: the seed's queues exist in this vhost and are drained.
    let queues = infra.queues().await;
    let names: HashSet<&str> = queues.iter().filter_map(|q| q["name"].as_str()).collect();
    for queue in [
        "order_commands",
        "inventory_commands",
        "payment_commands",
        "orchestrator_replies",
    ] {
        assert!(names.contains(queue), "queue {queue} missing: {names:?}");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    for queue in infra.queues().await {
        let depth = queue["messages_ready"].as_u64().unwrap_or(0);
        let name = queue["name"].as_str().unwrap_or_default();
        if !name.ends_with(".dlq") {
            assert_eq!(depth, 0, "queue {name} still holds messages");
        } else {
            assert_eq!(
                queue["messages"].as_u64().unwrap_or(0),
                0,
                "dead letters in {name}"
            );
        }
    }
    stack.stop().await.expect("stops");
    infra.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declined_payment_compensates_on_postgres_and_rabbitmq() {
    let infra = Infra::new("declined").await;
    let mut config = infra.config();
    config.payment.failure_rate = 1.0;
    let stack = start(config).await;
    let client = Client::new(&stack);
    let (status, body) = client.checkout(order(LIMITED, 2, "19.99"), None).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let order_id = body["orderId"].as_str().expect("orderId");
    let (_, cancelled) = client.get(&format!("/api/orders/{order_id}")).await;
    assert_eq!(cancelled["status"], "CANCELLED");
    let (_, limited) = service_get(stack.inventory, &format!("/products/{LIMITED}")).await;
    assert_eq!(limited["stock"], 5, "stock released");
    let (_, payment) = service_get(stack.payment, &format!("/payments/{order_id}")).await;
    assert_eq!(payment["status"], "FAILED");
    stack.stop().await.expect("stops");
    infra.cleanup().await;
}

async fn count(db: &sea_orm::DatabaseConnection, sql: &str) -> i64 {
    use sea_orm::ConnectionTrait;
    db.query_one_raw(sea_orm::Statement::from_string(
        sea_orm::DbBackend::Postgres,
        sql.to_owned(),
    ))
    .await
    .expect("query")
    .expect("row")
    .try_get::<i64>("", "n")
    .expect("n")
}

/// `checkout-app saga prune --older-than 0s` (the binary, through the
/// orchestrator's `POST /sagas/prune`) deletes every completed and
/// compensated saga with its `saga_logs` rows and keeps the failed one; the
/// route refuses a caller without the operator token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saga_prune_deletes_finished_sagas_and_their_logs_and_keeps_failed_ones() {
    const TOKEN: &str = "prune-test-operator-token";
    let infra = Infra::new("prune").await;
    let mut config = infra.config();
    config.orchestrator.operator_token = Some(TOKEN.to_owned());
    let stack = start(config).await;
    let client = Client::new(&stack);
    let orchestrator = checkout_app::runtime::service_db(
        &checkout_app::runtime::Storage::Postgres(infra.postgres.clone()),
        &infra.databases().orchestrator,
        2,
    )
    .await
    .expect("orchestrator database");

    // Three completed checkouts and one compensated (insufficient stock).
    let mut finished = Vec::new();
    for _ in 0..3 {
        let (status, body) = client.checkout(order(PRODUCT, 1, "29.99"), None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        finished.push(body["sagaId"].as_str().expect("sagaId").to_owned());
    }
    let (status, body) = client.checkout(order(LIMITED, 10, "19.99"), None).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    finished.push(body["sagaId"].as_str().expect("sagaId").to_owned());
    // A saga that failed (its compensation gave up), written through the store.
    let first: saga_core::SagaId = finished[0].parse().expect("saga id");
    let mut failed = stack
        .engine
        .get(first)
        .await
        .expect("load")
        .expect("exists");
    failed.id = saga_core::SagaId::new();
    failed.status = saga_core::SagaStatus::Failed;
    failed.error = Some("refund_payment failed: the provider is down".to_owned());
    failed.idempotency_key = None;
    failed.version = 1;
    failed.log_seq = 1;
    let started = saga_core::LogEntry {
        saga_id: failed.id,
        seq: 0,
        event: saga_core::LogEvent::SagaStarted,
        step: None,
        attempt: None,
        payload: json!(null),
        at: chrono::Utc::now(),
    };
    stack
        .engine
        .store()
        .create(&failed, &[started])
        .await
        .expect("create the failed saga");
    assert_eq!(
        count(&orchestrator, "SELECT count(*) AS n FROM saga_state").await,
        5
    );
    let logs_before = count(&orchestrator, "SELECT count(*) AS n FROM saga_logs").await;
    assert!(logs_before > 5, "{logs_before} log rows");

    // Without the token (or with a wrong one) the route refuses and deletes nothing.
    let http = reqwest::Client::new();
    let route = format!("http://{}/sagas/prune", stack.orchestrator);
    for token in [None, Some("not-the-operator-token")] {
        let mut request = http.post(&route).query(&[("olderThan", "0s")]);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.expect("orchestrator answers");
        assert!(
            matches!(
                response.status(),
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN
            ),
            "{}",
            response.status()
        );
    }
    // `prune` is not a saga id: its GET is no lookup.
    let response = http.get(&route).send().await.expect("answers");
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    // A bad duration is refused.
    let response = http
        .post(&route)
        .query(&[("olderThan", "soon")])
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("answers");
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        count(&orchestrator, "SELECT count(*) AS n FROM saga_state").await,
        5
    );
    assert_eq!(
        count(&orchestrator, "SELECT count(*) AS n FROM saga_logs").await,
        logs_before,
        "nothing deleted without the token"
    );

    // The operator's command.
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_checkout-app"))
        .args(["saga", "prune", "--older-than", "0s"])
        .arg("--orchestrator-url")
        .arg(format!("http://{}", stack.orchestrator))
        .env("OPERATOR_TOKEN", TOKEN)
        .output()
        .await
        .expect("checkout-app runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let answer: serde_json::Value = serde_json::from_str(&stdout).expect("JSON answer");
    assert_eq!(answer, json!({ "pruned": 4 }));

    let failed_id = failed.id.to_string();
    assert_eq!(
        count(&orchestrator, "SELECT count(*) AS n FROM saga_state").await,
        1,
        "only the failed saga is left"
    );
    assert_eq!(
        count(
            &orchestrator,
            &format!("SELECT count(*) AS n FROM saga_state WHERE id = '{failed_id}' AND status = 'failed'")
        )
        .await,
        1
    );
    assert_eq!(
        count(
            &orchestrator,
            &format!("SELECT count(*) AS n FROM saga_logs WHERE saga_id <> '{failed_id}'")
        )
        .await,
        0,
        "the pruned sagas' logs are gone"
    );
    assert_eq!(
        count(
            &orchestrator,
            &format!("SELECT count(*) AS n FROM saga_logs WHERE saga_id = '{failed_id}'")
        )
        .await,
        1,
        "the failed saga keeps its log"
    );
    for id in &finished {
        let (status, _) = client.get(&format!("/api/sagas/{id}")).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "saga {id} is gone");
    }
    stack.stop().await.expect("stops");
    infra.cleanup().await;
}
