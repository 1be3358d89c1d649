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
