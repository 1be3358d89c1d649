//! Property tests with hostile input: random bodies at the gateway's handler
//! (through `Router::oneshot`, no socket) and random bytes at the message
//! decoders. Nothing may panic, and a client error is never answered with a 5xx.

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use checkout_app::gateway::{GatewayConfig, router};
use checkout_app::request::{Limits, parse};
use proptest::prelude::*;
use saga_core::adapter::{CommandMessage, ReplyMessage};
use serde_json::{Value, json};
use tower::ServiceExt;

const PRODUCT: &str = "660facf7-b9cf-417a-8ee1-27afe2fb2c72";

/// Any JSON value, a few levels deep.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        ".{0,40}".prop_map(Value::from),
        Just(Value::from(PRODUCT)),
        Just(Value::from("' OR 1=1; DROP TABLE orders; --")),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    Just("userId".to_owned()),
                    Just("items".to_owned()),
                    Just("productId".to_owned()),
                    Just("quantity".to_owned()),
                    Just("price".to_owned()),
                    ".{0,10}"
                ],
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Bodies close to a valid checkout, with one field off.
fn near_valid() -> impl Strategy<Value = Value> {
    let quantity = prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        Just(json!(1.5)),
        Just(json!("2")),
        Just(json!(18_446_744_073_709_551_616.0_f64)),
        Just(Value::Null),
    ];
    let product = prop_oneof![
        Just(Value::from(PRODUCT)),
        "[0-9a-f-]{0,40}".prop_map(Value::from),
        Just(Value::from("")),
        Just(Value::from(1)),
    ];
    let price = prop_oneof![
        Just(Value::Null),
        Just(Value::from("29.99")),
        Just(Value::from("0.01")),
        Just(Value::from("-1")),
        Just(Value::from("1e400")),
        any::<f64>().prop_map(|f| Value::from(f.to_string())),
    ];
    let user = prop_oneof![
        Just(Value::from("user-1")),
        Just(Value::from("")),
        Just(Value::from("   ")),
        ".{0,200}".prop_map(Value::from),
        Just(Value::from(42)),
    ];
    let item = (product, quantity, price).prop_map(|(p, q, price)| {
        let mut item = json!({ "productId": p, "quantity": q });
        if !price.is_null() {
            item["price"] = price;
        }
        item
    });
    (user, prop::collection::vec(item, 0..4))
        .prop_map(|(u, items)| json!({ "userId": u, "items": items }))
}

fn gateway() -> axum::Router {
    router(GatewayConfig {
        // Nothing listens there: a valid request ends in 502/503, never reaches anything.
        orchestrator_url: "http://127.0.0.1:1".into(),
        order_url: "http://127.0.0.1:1".into(),
        inventory_url: "http://127.0.0.1:1".into(),
        limits: Limits::default(),
        max_body_bytes: 64 * 1024,
        upstream_timeout: Duration::from_secs(2),
        // The default retries and breaker: the closed port soon opens it, so
        // the valid requests are refused at once.
        ..GatewayConfig::default()
    })
    .expect("gateway router")
}

/// Sends `body` with `content_type`; checks the answer; returns the status.
fn check(runtime: &tokio::runtime::Runtime, body: Vec<u8>, content_type: &str) -> StatusCode {
    let request = Request::post("/api/checkout")
        .header("content-type", content_type)
        .body(Body::from(body.clone()))
        .expect("request");
    let response = runtime
        .block_on(gateway().oneshot(request))
        .expect("infallible");
    let status = response.status();
    let bytes = runtime
        .block_on(axum::body::to_bytes(response.into_body(), usize::MAX))
        .expect("body");
    let answer: Value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("{status} without a JSON body ({e}): {bytes:?}"));
    assert_eq!(answer["success"], false, "{answer}");
    let valid = content_type == "application/json"
        && serde_json::from_slice::<Value>(&body)
            .ok()
            .is_some_and(|v| parse(&v, &Limits::default()).is_ok());
    if valid {
        // Only a valid request reaches the (absent) orchestrator.
        assert!(
            status == StatusCode::BAD_GATEWAY || status == StatusCode::SERVICE_UNAVAILABLE,
            "valid request: {status} {answer}"
        );
    } else {
        assert!(
            status.is_client_error(),
            "client error answered {status}: {answer}"
        );
    }
    status
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_bytes_at_the_gateway_get_a_json_4xx(body in prop::collection::vec(any::<u8>(), 0..512)) {
        let runtime = runtime();
        check(&runtime, body, "application/json");
    }

    #[test]
    fn random_json_at_the_gateway_gets_a_json_4xx(body in any_json()) {
        let runtime = runtime();
        check(&runtime, body.to_string().into_bytes(), "application/json");
    }

    #[test]
    fn near_valid_bodies_are_refused_or_forwarded_never_a_500(body in near_valid()) {
        let runtime = runtime();
        check(&runtime, body.to_string().into_bytes(), "application/json");
    }

    #[test]
    fn the_wrong_content_type_is_refused(body in any_json(), content_type in "(text/plain|application/xml|multipart/form-data|)") {
        let runtime = runtime();
        let status = check(&runtime, body.to_string().into_bytes(), &content_type);
        prop_assert!(status.is_client_error());
    }

    #[test]
    fn parse_never_panics_and_what_it_accepts_is_within_the_limits(body in prop_oneof![any_json(), near_valid()]) {
        let limits = Limits::default();
        if let Ok(request) = parse(&body, &limits) {
            prop_assert!(!request.user_id.trim().is_empty());
            prop_assert!(request.user_id.chars().count() <= limits.max_user_id);
            prop_assert!(!request.items.is_empty() && request.items.len() <= limits.max_items);
            let mut ids = std::collections::HashSet::new();
            for item in &request.items {
                prop_assert!((1..=limits.max_quantity).contains(&item.quantity));
                prop_assert!(ids.insert(item.product_id), "duplicate product id accepted");
            }
        }
    }

    #[test]
    fn message_decoders_never_panic_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = serde_json::from_slice::<CommandMessage>(&bytes);
        let _ = serde_json::from_slice::<ReplyMessage>(&bytes);
    }

    #[test]
    fn message_decoders_never_panic_on_json(value in any_json(), field in 0usize..12, replacement in any_json()) {
        // A valid message with one field replaced by anything.
        let mut command = json!({
            "message_id": "m", "idempotency_key": format!("{}:create_order:invoke", uuid::Uuid::nil()),
            "saga_id": uuid::Uuid::nil(), "saga_type": "checkout", "step": 0, "step_name": "create_order",
            "direction": "invoke", "attempt": 1, "endpoint": "order", "command": "create_order",
            "payload": {}, "reply_to": "orchestrator_replies"
        });
        let mut reply = json!({
            "message_id": "m", "saga_id": uuid::Uuid::nil(), "step": 0, "step_name": "create_order",
            "direction": "invoke", "attempt": 1, "reply_to": null, "outcome": { "success": {} }
        });
        for message in [&mut command, &mut reply] {
            if let Some(object) = message.as_object_mut() {
                let key = object.keys().nth(field % object.len()).cloned().unwrap_or_default();
                object.insert(key, replacement.clone());
            }
            let bytes = message.to_string();
            if let Ok(decoded) = serde_json::from_str::<CommandMessage>(&bytes) {
                // What decodes, encodes back and decodes to the same message.
                let again: CommandMessage = serde_json::from_str(&serde_json::to_string(&decoded).expect("encodes")).expect("decodes");
                // (Floats inside the payload may lose their last digit: compare the envelope.)
                prop_assert_eq!(&again.message_id, &decoded.message_id);
                prop_assert_eq!(&again.idempotency_key, &decoded.idempotency_key);
                prop_assert_eq!(again.saga_id, decoded.saga_id);
                prop_assert_eq!((again.step, again.attempt), (decoded.step, decoded.attempt));
                prop_assert_eq!(again.direction, decoded.direction);
                prop_assert_eq!(&again.command, &decoded.command);
            }
            let _ = serde_json::from_str::<ReplyMessage>(&bytes);
        }
        let _ = serde_json::from_value::<CommandMessage>(value.clone());
        let _ = serde_json::from_value::<ReplyMessage>(value);
    }
}

#[test]
fn oversized_and_overlong_bodies_are_refused_without_a_500() {
    let runtime = runtime();
    let big = format!(
        "{{\"userId\":\"u\",\"pad\":\"{}\"}}",
        "x".repeat(5 * 1024 * 1024)
    );
    assert_eq!(
        check(&runtime, big.into_bytes(), "application/json"),
        StatusCode::PAYLOAD_TOO_LARGE
    );
    let items: Vec<Value> = (0..10_000)
        .map(|i| json!({ "productId": uuid::Uuid::from_u128(i).to_string(), "quantity": 1 }))
        .collect();
    let body = json!({ "userId": "u", "items": items }).to_string();
    assert!(check(&runtime, body.into_bytes(), "application/json").is_client_error());
    let nested = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    assert!(check(&runtime, nested.into_bytes(), "application/json").is_client_error());
}
