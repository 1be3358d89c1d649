//! The OpenAPI documents and the docs pages, through HTTP: the gateway's
//! (`/api/docs`) and the orchestrator's (`/docs`) documents list every route
//! and no route the service lacks, and the pages load only same-origin assets.

use std::collections::BTreeSet;
use std::net::SocketAddr;

use checkout_app::runtime::RunningStack;
use reqwest::StatusCode;
use reqwest::header::{CACHE_CONTROL, CONTENT_TYPE};
use serde_json::Value;

use crate::support::{config, start};

/// The gateway's routes: the public API.
const GATEWAY_ROUTES: [(&str, &str); 5] = [
    ("POST", "/api/checkout"),
    ("GET", "/api/products"),
    ("GET", "/api/orders/{id}"),
    ("GET", "/api/sagas/{id}"),
    ("GET", "/health"),
];

/// The orchestrator's routes: checkouts, saga state and the operator actions.
const ORCHESTRATOR_ROUTES: [(&str, &str); 8] = [
    ("POST", "/checkouts"),
    ("GET", "/sagas"),
    ("GET", "/sagas/{id}"),
    ("POST", "/sagas/{id}/retry"),
    ("POST", "/sagas/{id}/cancel"),
    ("POST", "/sagas/{id}/resume"),
    ("POST", "/sagas/prune"),
    ("GET", "/health"),
];

fn set(routes: &[(&str, &str)]) -> BTreeSet<(String, String)> {
    routes
        .iter()
        .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
        .collect()
}

/// Every (METHOD, path) of an OpenAPI document.
fn operations(doc: &Value) -> BTreeSet<(String, String)> {
    let mut found = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("a path item").keys() {
            found.insert((method.to_uppercase(), path.clone()));
        }
    }
    found
}

/// The document at `url`, checked to be OpenAPI 3.1 served as JSON.
async fn document(http: &reqwest::Client, url: &str) -> Value {
    let response = http.get(url).send().await.expect("answers");
    assert_eq!(response.status(), StatusCode::OK, "{url}");
    let content_type = response.headers()[CONTENT_TYPE].to_str().expect("ascii");
    assert!(
        content_type.starts_with("application/json"),
        "{url}: {content_type}"
    );
    let doc: Value = response.json().await.expect("JSON");
    assert!(
        doc["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1.")),
        "{url}: openapi {}",
        doc["openapi"]
    );
    assert!(doc["info"]["title"].is_string(), "{url}: no info.title");
    doc
}

/// Sends every documented operation to the service at `addr` and checks that
/// none answers as an unknown route (404 `no route for ...`) or method (405):
/// the document describes no route the service lacks.
async fn assert_every_operation_is_served(http: &reqwest::Client, addr: SocketAddr, doc: &Value) {
    for (method, path) in operations(doc) {
        let url = format!(
            "http://{addr}{}",
            path.replace("{id}", &uuid::Uuid::new_v4().to_string())
        );
        let request = match method.as_str() {
            "GET" => http.get(&url),
            "POST" => http.post(&url).json(&serde_json::json!({})),
            other => panic!("{other} {path}: a method the test does not send"),
        };
        let response = request.send().await.expect("answers");
        let status = response.status();
        // Not every route answers JSON (`/metrics` is text); the fallbacks do.
        let text = response.text().await.expect("a body");
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        assert_ne!(
            status,
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {url}: {text}"
        );
        let unknown_route = status == StatusCode::NOT_FOUND
            && body["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("no route for"));
        assert!(
            !unknown_route,
            "{method} {path} is documented but not served: {body}"
        );
    }
}

/// Every `src="..."` and `href="..."` value of `html`.
fn references(html: &str) -> Vec<String> {
    let mut found = Vec::new();
    for attribute in ["src=\"", "href=\""] {
        for (start, _) in html.match_indices(attribute) {
            let rest = &html[start + attribute.len()..];
            let end = rest.find('"').expect("a closing quote");
            found.push(rest[..end].to_owned());
        }
    }
    found
}

/// The docs page at `base` on `addr`: HTML whose every asset is a same-origin
/// path that loads with the right content type, and no other host named.
async fn assert_docs_page(http: &reqwest::Client, addr: SocketAddr, base: &str) {
    let response = http
        .get(format!("http://{addr}{base}"))
        .send()
        .await
        .expect("answers");
    assert_eq!(response.status(), StatusCode::OK, "{base}");
    let headers = response.headers().clone();
    assert!(
        headers[CONTENT_TYPE]
            .to_str()
            .expect("ascii")
            .starts_with("text/html"),
        "{base}: {:?}",
        headers[CONTENT_TYPE]
    );
    let policy = headers["content-security-policy"].to_str().expect("ascii");
    assert!(policy.contains("default-src 'none'"), "{policy}");
    assert!(policy.contains("script-src 'self'"), "{policy}");
    let html = response.text().await.expect("a body");
    assert!(
        !html.contains("http://") && !html.contains("https://") && !html.contains("//cdn"),
        "{base} names another host:\n{html}"
    );
    let assets = references(&html);
    for expected in ["/swagger-ui-bundle.js", "/swagger-ui.css", "/openapi.json"] {
        assert!(
            assets.iter().any(|a| a == &format!("{base}{expected}")),
            "{base} does not reference {base}{expected}: {assets:?}"
        );
    }
    for asset in assets {
        assert!(
            asset.starts_with('/') && !asset.starts_with("//"),
            "{base}: {asset} is not a same-origin path"
        );
        let response = http
            .get(format!("http://{addr}{asset}"))
            .send()
            .await
            .expect("answers");
        assert_eq!(response.status(), StatusCode::OK, "{asset}");
        let content_type = response.headers()[CONTENT_TYPE].to_str().expect("ascii");
        let expected = match asset.rsplit('.').next() {
            Some("js") => "text/javascript",
            Some("css") => "text/css",
            Some("json") => "application/json",
            _ => panic!("{asset}: an asset of an unexpected kind"),
        };
        assert!(
            content_type.starts_with(expected),
            "{asset}: {content_type}"
        );
        if expected != "application/json" {
            let cache = response.headers()[CACHE_CONTROL].to_str().expect("ascii");
            assert!(cache.contains("max-age="), "{asset}: cache-control {cache}");
        }
        let body = response.bytes().await.expect("a body");
        assert!(body.len() > 100, "{asset}: {} bytes", body.len());
    }
}

/// The documents served by `stack` are the library's, list exactly the
/// expected routes, and describe no route the services lack.
pub(crate) async fn assert_documents_served(stack: &RunningStack) {
    let http = reqwest::Client::new();
    let gateway = document(
        &http,
        &format!("http://{}/api/docs/openapi.json", stack.gateway),
    )
    .await;
    assert_eq!(
        gateway,
        serde_json::to_value(checkout_app::gateway::openapi()).expect("serializes")
    );
    assert_eq!(operations(&gateway), set(&GATEWAY_ROUTES));
    assert_every_operation_is_served(&http, stack.gateway, &gateway).await;

    let orchestrator = document(
        &http,
        &format!("http://{}/docs/openapi.json", stack.orchestrator),
    )
    .await;
    assert_eq!(
        orchestrator,
        serde_json::to_value(checkout_app::orchestrator::openapi()).expect("serializes")
    );
    assert_eq!(operations(&orchestrator), set(&ORCHESTRATOR_ROUTES));
    assert_every_operation_is_served(&http, stack.orchestrator, &orchestrator).await;
}

#[tokio::test]
async fn the_documents_list_every_route_and_none_the_services_lack() {
    let stack = start(config()).await;
    assert_documents_served(&stack).await;
    stack.stop().await.expect("stops cleanly");
}

#[tokio::test]
async fn the_gateway_document_describes_the_checkout() {
    let stack = start(config()).await;
    let http = reqwest::Client::new();
    let doc = document(
        &http,
        &format!("http://{}/api/docs/openapi.json", stack.gateway),
    )
    .await;
    let checkout = &doc["paths"]["/api/checkout"]["post"];
    assert_eq!(
        checkout["requestBody"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/CheckoutRequest"
    );
    let statuses: BTreeSet<&str> = checkout["responses"]
        .as_object()
        .expect("responses")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        statuses,
        BTreeSet::from([
            "200", "202", "400", "413", "415", "422", "429", "500", "503"
        ])
    );
    assert!(
        checkout["parameters"]
            .as_array()
            .expect("parameters")
            .iter()
            .any(|p| p["name"] == "Idempotency-Key" && p["in"] == "header"),
        "{checkout}"
    );
    let schemas = &doc["components"]["schemas"];
    let request = &schemas["CheckoutRequest"];
    assert_eq!(request["required"], serde_json::json!(["userId", "items"]));
    let item = &schemas["RequestedItem"];
    assert_eq!(
        item["required"],
        serde_json::json!(["productId", "quantity"])
    );
    assert!(item["properties"]["price"].is_object(), "{item}");
    let error = &schemas["ErrorBody"];
    assert_eq!(
        error["required"],
        serde_json::json!(["error", "message", "success"])
    );
    // What the gateway answers has the documented shape.
    let response = http
        .post(format!("http://{}/api/checkout", stack.gateway))
        .json(&serde_json::json!({"items": []}))
        .send()
        .await
        .expect("answers");
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body: Value = response.json().await.expect("JSON");
    let keys: BTreeSet<&str> = body
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        BTreeSet::from(["error", "message", "success"]),
        "{body}"
    );
    stack.stop().await.expect("stops cleanly");
}

#[tokio::test]
async fn a_malformed_saga_list_query_answers_the_documented_json_error() {
    // Found by schemathesis: axum's query rejection was plain text.
    let stack = start(config()).await;
    for query in [
        "status=failed&status=failed",
        "limit=99999999999999999999999",
        "limit=x",
    ] {
        let response = reqwest::get(format!("http://{}/sagas?{query}", stack.orchestrator))
            .await
            .expect("answers");
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{query}");
        let body: Value = response.json().await.expect("a JSON body");
        assert_eq!(body["error"], "bad_request", "{query}: {body}");
        assert_eq!(body["success"], false, "{query}: {body}");
    }
    stack.stop().await.expect("stops cleanly");
}

#[tokio::test]
async fn the_orchestrator_document_requires_the_operator_token_for_actions() {
    let stack = start(config()).await;
    let http = reqwest::Client::new();
    let doc = document(
        &http,
        &format!("http://{}/docs/openapi.json", stack.orchestrator),
    )
    .await;
    let scheme = &doc["components"]["securitySchemes"]["operator_token"];
    assert_eq!(scheme["type"], "http", "{scheme}");
    assert_eq!(scheme["scheme"], "bearer", "{scheme}");
    for (method, path) in operations(&doc) {
        let operation = &doc["paths"][&path][method.to_lowercase()];
        let secured = operation["security"] == serde_json::json!([{"operator_token": []}]);
        let is_action = path.starts_with("/sagas/{id}/");
        assert_eq!(
            secured,
            is_action || path == "/sagas/prune",
            "{method} {path}: security {}",
            operation["security"]
        );
        if is_action {
            for status in ["200", "401", "403", "404", "409"] {
                assert!(
                    operation["responses"][status].is_object(),
                    "{method} {path} does not document {status}"
                );
            }
        }
    }
    stack.stop().await.expect("stops cleanly");
}

#[tokio::test]
async fn the_docs_pages_load_only_same_origin_assets() {
    let stack = start(config()).await;
    let http = reqwest::Client::new();
    assert_docs_page(&http, stack.gateway, "/api/docs").await;
    assert_docs_page(&http, stack.orchestrator, "/docs").await;
    stack.stop().await.expect("stops cleanly");
}
