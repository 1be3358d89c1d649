//! The gateway's router and its OpenAPI document agree.

use std::collections::BTreeSet;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use tower::ServiceExt;

use super::*;

/// Every (METHOD, path) the document lists.
fn documented() -> BTreeSet<(String, String)> {
    let doc = serde_json::to_value(openapi()).expect("serializes");
    let mut found = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("path item").keys() {
            found.insert((method.to_uppercase(), path.clone()));
        }
    }
    found
}

#[test]
fn the_document_lists_every_gateway_route() {
    let expected: BTreeSet<(String, String)> = [
        ("POST", "/api/checkout"),
        ("GET", "/api/products"),
        ("GET", "/api/orders/{id}"),
        ("GET", "/api/sagas/{id}"),
        ("GET", "/health"),
    ]
    .iter()
    .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
    .collect();
    assert_eq!(documented(), expected);
}

#[tokio::test]
async fn every_documented_route_is_served() {
    // Upstreams on a closed port: forwarded requests fail fast with 503.
    let closed = "http://127.0.0.1:9".to_owned();
    let router = crate::http::with_json_fallbacks(
        router(GatewayConfig {
            orchestrator_url: closed.clone(),
            order_url: closed.clone(),
            inventory_url: closed,
            ..GatewayConfig::default()
        })
        .expect("router"),
    );
    for (method, path) in documented() {
        let uri = path.replace("{id}", "not-a-uuid");
        let request = Request::builder()
            .method(Method::from_bytes(method.as_bytes()).expect("method"))
            .uri(&uri)
            .body(Body::empty())
            .expect("request");
        let response = router.clone().oneshot(request).await.expect("answers");
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .expect("body");
        // Not every route answers JSON (`/metrics` is text); the fallbacks do.
        let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        assert_ne!(
            status,
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {uri}: {body}"
        );
        assert!(
            body["error"] != "not_found" || status != StatusCode::NOT_FOUND,
            "{method} {uri} is documented but not served: {body}"
        );
    }
}

#[tokio::test]
async fn the_served_document_states_the_configured_limits() {
    let router = router(GatewayConfig {
        limits: Limits {
            max_items: 7,
            max_quantity: 9,
            max_user_id: 11,
        },
        ..GatewayConfig::default()
    })
    .expect("router");
    let request = Request::get("/api/docs/openapi.json")
        .body(Body::empty())
        .expect("request");
    let response = router.oneshot(request).await.expect("answers");
    assert_eq!(response.status(), StatusCode::OK);
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 22)
        .await
        .expect("body");
    let doc: serde_json::Value = serde_json::from_slice(&bytes).expect("JSON");
    let schemas = &doc["components"]["schemas"];
    let request = &schemas["CheckoutRequest"]["properties"];
    assert_eq!(request["items"]["maxItems"], 7, "{request}");
    assert_eq!(request["userId"]["maxLength"], 11, "{request}");
    let quantity = &schemas["RequestedItem"]["properties"]["quantity"];
    assert_eq!(quantity["maximum"], 9, "{quantity}");
    // The library's document has the defaults.
    let default = serde_json::to_value(openapi()).expect("serializes");
    assert_eq!(
        default["components"]["schemas"]["CheckoutRequest"]["properties"]["items"]["maxItems"],
        100
    );
}

#[test]
fn the_document_is_openapi_3_1_with_the_shared_shapes() {
    let doc = serde_json::to_value(openapi()).expect("serializes");
    assert!(
        doc["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1")),
        "{}",
        doc["openapi"]
    );
    let schemas = doc["components"]["schemas"].as_object().expect("schemas");
    for name in [
        "ErrorBody",
        "CheckoutRequest",
        "CheckoutOutcome",
        "OrderView",
        "SagaDetail",
        "ProductList",
    ] {
        assert!(schemas.contains_key(name), "{name} missing");
    }
    let checkout = &doc["paths"]["/api/checkout"]["post"];
    assert!(
        checkout["parameters"]
            .as_array()
            .expect("parameters")
            .iter()
            .any(|p| p["name"] == "Idempotency-Key" && p["in"] == "header"),
        "{checkout}"
    );
    let request = &checkout["requestBody"]["content"]["application/json"]["schema"]["$ref"];
    assert_eq!(request, "#/components/schemas/CheckoutRequest");
}
