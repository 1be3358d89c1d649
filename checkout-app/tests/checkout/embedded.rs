//! End to end through HTTP on the embedded stack (in-memory SQLite and the
//! in-process transport): the seed guide's success criteria.

use std::collections::HashSet;

use crate::support::{Client, LIMITED, PRODUCT, config, order, service_get, start};
use reqwest::StatusCode;
use serde_json::{Value, json};

#[tokio::test]
async fn happy_path_confirms_the_order_and_logs_the_saga() {
    let stack = start(config()).await;
    let client = Client::new(&stack);
    let (status, body) = client.checkout(order(PRODUCT, 2, "29.99"), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["success"], true);
    assert_eq!(body["message"], "Order placed successfully");
    let order_id = body["orderId"].as_str().expect("orderId").to_owned();
    let saga_id = body["sagaId"].as_str().expect("sagaId").to_owned();

    let (status, order) = client.get(&format!("/api/orders/{order_id}")).await;
    assert_eq!(status, StatusCode::OK, "{order}");
    assert_eq!(order["status"], "CONFIRMED");
    assert_eq!(order["total"], "59.98");

    let (status, saga) = client.get(&format!("/api/sagas/{saga_id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(saga["status"], "completed");
    let events: Vec<&str> = saga["logs"]
        .as_array()
        .expect("logs")
        .iter()
        .map(|l| l["event"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        events,
        [
            "saga_started",
            "step_dispatched",
            "step_succeeded",
            "step_dispatched",
            "step_succeeded",
            "step_dispatched",
            "step_succeeded",
            "step_dispatched",
            "step_succeeded",
            "saga_completed"
        ]
    );
    let (_, payment) = service_get(stack.payment, &format!("/payments/{order_id}")).await;
    assert_eq!(payment["status"], "SUCCESS");
    assert_eq!(payment["amount"], "59.98");
    stack.stop().await.expect("stops cleanly");
}

#[tokio::test]
async fn insufficient_stock_cancels_the_order_without_payment() {
    let stack = start(config()).await;
    let client = Client::new(&stack);
    let (status, body) = client.checkout(order(LIMITED, 10, "19.99"), None).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["success"], false);
    assert!(
        body["message"]
            .as_str()
            .unwrap_or_default()
            .to_lowercase()
            .contains("insufficient stock"),
        "{body}"
    );
    let order_id = body["orderId"].as_str().expect("orderId");
    let (_, order) = client.get(&format!("/api/orders/{order_id}")).await;
    assert_eq!(order["status"], "CANCELLED");
    let (status, _) = service_get(stack.payment, &format!("/payments/{order_id}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "no payment was attempted");
    let (_, product) = service_get(stack.inventory, &format!("/products/{LIMITED}")).await;
    assert_eq!(product["stock"], 5, "stock unchanged");
    stack.stop().await.expect("stops cleanly");
}

#[tokio::test]
async fn a_declined_payment_releases_stock_and_cancels_the_order() {
    let mut config = config();
    config.payment.failure_rate = 1.0;
    let stack = start(config).await;
    let client = Client::new(&stack);
    let (status, body) = client.checkout(order(LIMITED, 2, "19.99"), None).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("payment declined"),
        "{body}"
    );
    let order_id = body["orderId"].as_str().expect("orderId");
    let (_, order) = client.get(&format!("/api/orders/{order_id}")).await;
    assert_eq!(order["status"], "CANCELLED");
    let (_, product) = service_get(stack.inventory, &format!("/products/{LIMITED}")).await;
    assert_eq!(product["stock"], 5, "the reservation was released");
    let (_, reservation) = service_get(stack.inventory, &format!("/reservations/{order_id}")).await;
    assert_eq!(reservation["status"], "RELEASED");
    let (_, payment) = service_get(stack.payment, &format!("/payments/{order_id}")).await;
    assert_eq!(payment["status"], "FAILED");
    stack.stop().await.expect("stops cleanly");
}

#[tokio::test]
async fn a_failure_after_payment_refunds_it() {
    let mut config = config();
    config.order.confirm_failure_rate = 1.0;
    let stack = start(config).await;
    let client = Client::new(&stack);
    let (status, body) = client.checkout(order(PRODUCT, 1, "29.99"), None).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let order_id = body["orderId"].as_str().expect("orderId");
    let (_, payment) = service_get(stack.payment, &format!("/payments/{order_id}")).await;
    assert_eq!(payment["status"], "REFUNDED");
    let (_, order) = client.get(&format!("/api/orders/{order_id}")).await;
    assert_eq!(order["status"], "CANCELLED");
    let saga_id = body["sagaId"].as_str().expect("sagaId");
    let (_, saga) = client.get(&format!("/api/sagas/{saga_id}")).await;
    let compensated: Vec<&str> = saga["logs"]
        .as_array()
        .expect("logs")
        .iter()
        .filter(|l| l["event"] == "compensation_succeeded")
        .map(|l| l["step"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        compensated,
        ["process_payment", "reserve_inventory", "create_order"]
    );
    stack.stop().await.expect("stops cleanly");
}

#[tokio::test]
async fn a_repeated_request_with_the_same_idempotency_key_returns_the_first_result() {
    let stack = start(config()).await;
    let client = Client::new(&stack);
    let (s1, first) = client
        .checkout(order(LIMITED, 1, "19.99"), Some("retry-42"))
        .await;
    let (s2, second) = client
        .checkout(order(LIMITED, 1, "19.99"), Some("retry-42"))
        .await;
    assert_eq!((s1, s2), (StatusCode::OK, StatusCode::OK));
    assert_eq!(first["orderId"], second["orderId"]);
    assert_eq!(first["sagaId"], second["sagaId"]);
    let (_, product) = service_get(stack.inventory, &format!("/products/{LIMITED}")).await;
    assert_eq!(product["stock"], 4, "one unit reserved, not two");
    let (_, third) = client
        .checkout(order(LIMITED, 1, "19.99"), Some("another-key"))
        .await;
    assert_ne!(
        third["orderId"], first["orderId"],
        "a new key is a new order"
    );
    stack.stop().await.expect("stops cleanly");
}

#[tokio::test]
async fn thirty_concurrent_buyers_of_five_units_never_oversell() {
    let stack = start(config()).await;
    let client = std::sync::Arc::new(Client::new(&stack));
    let buyers = (0..30).map(|i| {
        let client = std::sync::Arc::clone(&client);
        tokio::spawn(async move {
            let body = json!({ "userId": format!("buyer-{i}"), "items": [{ "productId": LIMITED, "quantity": 1 }] });
            client.checkout(body, None).await
        })
    });
    let mut succeeded = 0;
    let mut orders = HashSet::new();
    for buyer in buyers {
        let (status, body) = buyer.await.expect("buyer task");
        assert!(
            status == StatusCode::OK || status == StatusCode::UNPROCESSABLE_ENTITY,
            "{status} {body}"
        );
        if body["success"] == true {
            succeeded += 1;
        }
        orders.insert(body["orderId"].as_str().expect("orderId").to_owned());
    }
    assert_eq!(succeeded, 5, "exactly the stock is sold");
    assert_eq!(orders.len(), 30);
    let (_, product) = service_get(stack.inventory, &format!("/products/{LIMITED}")).await;
    assert_eq!(product["stock"], 0);
    stack.stop().await.expect("stops cleanly");
}

#[tokio::test]
async fn bad_input_is_refused_with_a_json_error_and_creates_nothing() {
    let stack = start(config()).await;
    let client = Client::new(&stack);
    let cases: Vec<(Value, &str)> = vec![
        (
            json!({"items": [{"productId": PRODUCT, "quantity": 1}]}),
            "userId is required",
        ),
        (
            json!({"userId": "", "items": [{"productId": PRODUCT, "quantity": 1}]}),
            "userId must not be empty",
        ),
        (json!({"userId": "u", "items": []}), "at least one item"),
        (
            json!({"userId": "u", "items": [{"productId": PRODUCT, "quantity": 0}]}),
            "at least 1",
        ),
        (
            json!({"userId": "u", "items": [{"productId": PRODUCT, "quantity": -1}]}),
            "at least 1",
        ),
        (
            json!({"userId": "u", "items": [{"productId": PRODUCT, "quantity": 9223372036854775807i64}]}),
            "at most",
        ),
        (
            json!({"userId": "u", "items": [{"productId": "' OR 1=1 --", "quantity": 1}]}),
            "must be a UUID",
        ),
        (
            json!({"userId": "u", "items": [{"productId": PRODUCT, "quantity": "two"}]}),
            "must be a number",
        ),
        // Wrong types, missing and empty fields.
        (json!([]), "must be a JSON object"),
        (Value::Null, "must be a JSON object"),
        (
            json!({"userId": 42, "items": [{"productId": PRODUCT, "quantity": 1}]}),
            "userId must be a string",
        ),
        (
            json!({"userId": "   ", "items": [{"productId": PRODUCT, "quantity": 1}]}),
            "userId must not be empty",
        ),
        (json!({"userId": "u"}), "items is required"),
        (
            json!({"userId": "u", "items": {"0": 1}}),
            "must be an array",
        ),
        (json!({"userId": "u", "items": [7]}), "must be an object"),
        (
            json!({"userId": "u", "items": [{"quantity": 1}]}),
            "productId is required",
        ),
        (
            json!({"userId": "u", "items": [{"productId": "", "quantity": 1}]}),
            "must be a UUID",
        ),
        (
            json!({"userId": "u", "items": [{"productId": 12, "quantity": 1}]}),
            "productId must be a string",
        ),
        (
            json!({"userId": "u", "items": [{"productId": PRODUCT}]}),
            "quantity is required",
        ),
        (
            json!({"userId": "u", "items": [{"productId": PRODUCT, "quantity": 1.5}]}),
            "whole number",
        ),
        (
            json!({"userId": "u", "items": [{"productId": PRODUCT, "quantity": -9223372036854775808i64}]}),
            "at least 1",
        ),
        (
            json!({"userId": "u", "items": [{"productId": PRODUCT, "quantity": 1}, {"productId": PRODUCT, "quantity": 1}]}),
            "repeats",
        ),
        (
            json!({"userId": "u", "items": [{"productId": PRODUCT, "quantity": 1, "price": "-29.99"}]}),
            "must not be negative",
        ),
        (
            json!({"userId": "u", "items": [{"productId": PRODUCT, "quantity": 1, "price": "free"}]}),
            "decimal",
        ),
        (
            json!({"userId": "u", "items": [{"productId": "1; DELETE FROM products", "quantity": 1}]}),
            "must be a UUID",
        ),
    ];
    for (body, expected) in cases {
        let (status, answer) = client.checkout(body.clone(), None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body} -> {answer}");
        assert_eq!(answer["success"], false);
        assert!(
            answer["message"]
                .as_str()
                .unwrap_or_default()
                .contains(expected),
            "{body} -> {answer}"
        );
    }
    let (status, answer) = client
        .checkout(
            order("00000000-0000-4000-8000-000000000000", 1, "1.00"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert!(
        answer["message"]
            .as_str()
            .unwrap_or_default()
            .contains("not in the catalogue")
    );
    let (status, answer) = client.checkout(order(PRODUCT, 1, "0.01"), None).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert!(
        answer["message"]
            .as_str()
            .unwrap_or_default()
            .contains("does not match the catalogue price 29.99")
    );
    let (status, answer) = client.raw("{not json", "application/json").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    // A quantity past 64 bits does not fit any integer type.
    let (status, answer) = client
        .raw(
            format!(r#"{{"userId":"u","items":[{{"productId":"{PRODUCT}","quantity":18446744073709551616}}]}}"#),
            "application/json",
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert_eq!(answer["success"], false);
    let (status, answer) = client.raw("", "application/json").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    let (status, answer) = client
        .raw(order(PRODUCT, 1, "29.99").to_string(), "text/plain")
        .await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{answer}");
    let huge = format!(
        "{{\"userId\": \"u\", \"pad\": \"{}\"}}",
        "x".repeat(5 * 1024 * 1024)
    );
    let (status, answer) = client.raw(huge, "application/json").await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{answer}");
    let many: Vec<Value> = (0..10_000)
        .map(|_| json!({"productId": uuid::Uuid::new_v4().to_string(), "quantity": 1}))
        .collect();
    let (status, _) = client
        .raw(
            json!({"userId": "u", "items": many}).to_string(),
            "application/json",
        )
        .await;
    assert!(
        status == StatusCode::BAD_REQUEST || status == StatusCode::PAYLOAD_TOO_LARGE,
        "{status}"
    );

    let sagas = stack
        .engine
        .list(&saga_core::adapter::SagaQuery::new())
        .await
        .expect("list");
    assert!(sagas.is_empty(), "no saga was started for bad input");
    let (_, orders) = service_get(stack.order, "/orders").await;
    assert_eq!(
        orders.as_array().map_or(usize::MAX, Vec::len),
        0,
        "no order was written: {orders}"
    );
    let (status, health) = client.get("/health").await;
    assert_eq!(
        (status, health["status"].as_str()),
        (StatusCode::OK, Some("ok"))
    );
    stack.stop().await.expect("stops cleanly");
}

#[tokio::test]
async fn unknown_ids_answer_404_and_malformed_ids_400() {
    let stack = start(config()).await;
    let client = Client::new(&stack);
    let (status, _) = client
        .get(&format!("/api/orders/{}", uuid::Uuid::new_v4()))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = client
        .get(&format!("/api/sagas/{}", uuid::Uuid::new_v4()))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = client.get("/api/orders/not-a-uuid").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    stack.stop().await.expect("stops cleanly");
}

#[tokio::test]
async fn the_catalogue_lists_ids_names_prices_and_stock_that_a_checkout_takes_from() {
    let stack = start(config()).await;
    let client = Client::new(&stack);
    let stock_of = |body: &serde_json::Value, id: &str| {
        body["products"]
            .as_array()
            .expect("a product list")
            .iter()
            .find(|p| p["id"] == id)
            .map(|p| p["stock"].as_i64().expect("stock"))
            .expect("the product is listed")
    };
    let (status, before) = client.get("/api/products").await;
    assert_eq!(status, StatusCode::OK, "{before}");
    let products = before["products"].as_array().expect("a product list");
    assert!(products.len() >= 2, "{before}");
    let wireless = products
        .iter()
        .find(|p| p["id"] == PRODUCT)
        .expect("the seed guide's product");
    assert_eq!(wireless["price"], "29.99");
    assert!(wireless["name"].as_str().is_some_and(|n| !n.is_empty()));
    let keys: Vec<&String> = wireless.as_object().expect("object").keys().collect();
    assert_eq!(
        keys,
        ["id", "name", "price", "stock"],
        "only the public fields"
    );

    let (status, body) = client.checkout(order(PRODUCT, 3, "29.99"), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, after) = client.get("/api/products").await;
    assert_eq!(stock_of(&after, PRODUCT), stock_of(&before, PRODUCT) - 3);
    stack.stop().await.expect("stops cleanly");
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_with_the_json_error_shape_on_every_service() {
    let stack = start(config()).await;
    let http = reqwest::Client::new();
    for addr in [
        stack.gateway,
        stack.order,
        stack.inventory,
        stack.payment,
        stack.orchestrator,
    ] {
        let response = http
            .get(format!("http://{addr}/no/such/route"))
            .send()
            .await
            .expect("answers");
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{addr}");
        let body: serde_json::Value = response.json().await.expect("a JSON body");
        assert_eq!(body["success"], false, "{addr}: {body}");
        assert_eq!(body["error"], "not_found", "{addr}: {body}");
        assert!(
            body["message"]
                .as_str()
                .is_some_and(|m| m.contains("/no/such/route")),
            "{addr}: {body}"
        );

        // `/health` exists, for GET only.
        let response = http
            .delete(format!("http://{addr}/health"))
            .send()
            .await
            .expect("answers");
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED, "{addr}");
        let body: serde_json::Value = response.json().await.expect("a JSON body");
        assert_eq!(body["error"], "method_not_allowed", "{addr}: {body}");
        assert_eq!(
            body["message"], "DELETE is not allowed on /health",
            "{addr}"
        );
    }
    // The gateway's own routes too: GET on the checkout route.
    let (status, body) = Client::new(&stack).get("/api/checkout").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{body}");
    assert_eq!(body["success"], false);
    stack.stop().await.expect("stops cleanly");
}

#[tokio::test]
async fn operator_actions_need_the_token() {
    let mut config = config();
    config.orchestrator.operator_token = Some("s3cret-operator-token".into());
    let stack = start(config).await;
    let http = reqwest::Client::new();
    let id = uuid::Uuid::new_v4();
    let url = format!("http://{}/sagas/{id}/retry", stack.orchestrator);
    let status = http.post(&url).send().await.expect("answers").status();
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let status = http
        .post(&url)
        .bearer_auth("wrong")
        .send()
        .await
        .expect("answers")
        .status();
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let status = http
        .post(&url)
        .bearer_auth("s3cret-operator-token")
        .send()
        .await
        .expect("answers")
        .status();
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "authorized, but no such saga"
    );
    stack.stop().await.expect("stops cleanly");
}

#[tokio::test]
async fn log_format_json_writes_one_json_object_per_line() {
    use tokio::io::AsyncBufReadExt;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("a free port")
        .local_addr()
        .expect("address")
        .port();
    let mut gateway = tokio::process::Command::new(env!("CARGO_BIN_EXE_checkout-app"))
        .args(["gateway", "--port", &port.to_string()])
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the binary starts");
    let mut lines = tokio::io::BufReader::new(gateway.stdout.take().expect("stdout")).lines();
    let listening = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.expect("reads") {
            let entry: serde_json::Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
            if entry["fields"]["message"] == "listening" {
                return entry;
            }
        }
        panic!("the gateway exited without logging `listening`");
    })
    .await
    .expect("logs `listening` in time");
    assert_eq!(listening["level"], "INFO", "{listening}");
    assert_eq!(listening["fields"]["service"], "api-gateway", "{listening}");
    assert!(listening["timestamp"].is_string(), "{listening}");
    gateway.kill().await.expect("stops");
}
