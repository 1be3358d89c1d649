//! The orchestrator's web pages in a real browser: five `checkout-app`
//! processes on PostgreSQL and RabbitMQ, a few checkouts (completed,
//! compensated, one with hostile saga data, one held running by a stopped
//! payment service), then headless Chromium looks at `/ui` and the saga
//! pages as a person does and cancels the held saga from its page.
//!
//! Needs Debian's `chromium` and `chromium-driver` (scripts/test installs
//! them when missing); without them the test fails. With
//! `SAGA_UI_SCREENSHOTS=<dir>` it writes `ui-sagas.png` and `ui-saga.png` there.

use std::path::PathBuf;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use test_kit::cluster::{Cluster, Node, OPERATOR_TOKEN, Role};
use test_kit::webdriver::Browser;

use crate::support::{LIMITED, PRODUCT, binary};

/// A buyer whose id is markup: the pages must show it as text.
const HOSTILE_USER: &str = r#"<script>alert("ui")</script> & 'quoted' <b>bold</b>"#;

/// POSTs a checkout to the gateway; returns the status and the saga id.
async fn checkout(gateway: &str, user: &str, product: &str, quantity: i64) -> (StatusCode, String) {
    let body = json!({ "userId": user, "items": [{ "productId": product, "quantity": quantity }] });
    let response = reqwest::Client::new()
        .post(format!("{gateway}/api/checkout"))
        .json(&body)
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .expect("the gateway answers");
    let status = response.status();
    let body: Value = response.json().await.expect("JSON body");
    let saga = body["sagaId"]
        .as_str()
        .unwrap_or_else(|| panic!("no sagaId in {status} {body}"))
        .to_owned();
    (status, saga)
}

fn screenshots() -> Option<PathBuf> {
    let dir = PathBuf::from(std::env::var_os("SAGA_UI_SCREENSHOTS")?);
    std::fs::create_dir_all(&dir).expect("screenshot directory");
    Some(dir)
}

/// The status a saga's page shows, reloaded until `expected` or `limit`.
async fn await_page_status(browser: &Browser, expected: &str, limit: Duration) {
    let deadline = std::time::Instant::now() + limit;
    loop {
        // The page may be reloading (the operator script reloads it).
        let shown = browser
            .try_text_of("#saga-status")
            .await
            .unwrap_or_default();
        if shown == expected {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the saga page still shows {shown:?}, not {expected:?}, after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        browser.refresh().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_saga_pages_show_checkouts_and_an_operator_cancels_one_in_a_browser() {
    // The browser first: a missing Chromium fails the test before anything starts.
    let browser = Browser::start().await;
    let mut cluster = Cluster::new("ui", &binary()).await;
    // Payments never fail by chance; a step waits up to two minutes for its
    // reply, so a saga whose participant is down stays visibly running.
    cluster.overrides.insert(
        Node::new(Role::Payment),
        vec![("PAYMENT_FAILURE_RATE".into(), "0".into())],
    );
    cluster.overrides.insert(
        Node::new(Role::Orchestrator),
        vec![("STEP_TIMEOUT_MS".into(), "120000".into())],
    );
    cluster.start_all().await;
    let gateway = cluster.url(Node::new(Role::Gateway));
    let orchestrator = cluster.url(Node::new(Role::Orchestrator));

    let (status, completed) = checkout(&gateway, "ui-buyer", PRODUCT, 2).await;
    assert_eq!(status, StatusCode::OK);
    let (status, compensated) = checkout(&gateway, "ui-buyer", LIMITED, 10).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "too little stock");
    let (status, hostile) = checkout(&gateway, HOSTILE_USER, PRODUCT, 1).await;
    assert_eq!(status, StatusCode::OK);
    // With the payment service down, this saga waits at process_payment.
    let payment = Node::new(Role::Payment);
    cluster.kill(payment).await;
    let (status, held) = checkout(&gateway, "ui-held", PRODUCT, 1).await;
    assert_eq!(status, StatusCode::ACCEPTED, "still running");

    // Every UI response is HTML with a strict Content-Security-Policy.
    let http = reqwest::Client::new();
    for (path, expected) in [
        ("/ui".to_owned(), StatusCode::OK),
        (format!("/ui/sagas/{held}"), StatusCode::OK),
        (
            format!("/ui/sagas/{}", uuid::Uuid::new_v4()),
            StatusCode::NOT_FOUND,
        ),
        ("/ui/sagas/not-a-uuid".to_owned(), StatusCode::BAD_REQUEST),
        ("/ui?status=lost".to_owned(), StatusCode::BAD_REQUEST),
        ("/ui/no-such-page".to_owned(), StatusCode::NOT_FOUND),
    ] {
        let response = http
            .get(format!("{orchestrator}{path}"))
            .send()
            .await
            .expect("the orchestrator answers");
        assert_eq!(response.status(), expected, "{path}");
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        assert!(
            header("content-security-policy").starts_with("default-src 'self'"),
            "{path}: {}",
            header("content-security-policy")
        );
        assert!(header("content-type").starts_with("text/html"), "{path}");
    }

    // ---- the list page -----------------------------------------------------
    browser.goto(&format!("{orchestrator}/ui")).await;
    assert!(
        browser.title().await.starts_with("Sagas"),
        "{}",
        browser.title().await
    );
    let count = |status: &'static str| {
        let browser = &browser;
        async move {
            browser
                .text_of(&format!("#counts li[data-status={status}] .count"))
                .await
        }
    };
    assert_eq!(count("completed").await, "2");
    assert_eq!(count("compensated").await, "1");
    assert_eq!(count("running").await, "1");
    assert_eq!(count("failed").await, "0");
    assert_eq!(count("all").await, "4");
    for (saga, status) in [
        (&completed, "completed"),
        (&compensated, "compensated"),
        (&hostile, "completed"),
        (&held, "running"),
    ] {
        let row = format!("#sagas tr[data-saga-id='{saga}']");
        assert_eq!(
            browser.text_of(&format!("{row} td:nth-child(1)")).await,
            *saga
        );
        assert_eq!(
            browser.text_of(&format!("{row} td:nth-child(2)")).await,
            "checkout"
        );
        assert_eq!(
            browser.text_of(&format!("{row} td:nth-child(3)")).await,
            status
        );
    }
    let held_row = format!("#sagas tr[data-saga-id='{held}']");
    assert_eq!(
        browser
            .text_of(&format!("{held_row} td:nth-child(4)"))
            .await,
        "process_payment",
        "the held saga's current step"
    );
    // The stylesheet loaded despite the CSP (no inline styles are needed).
    let header_colour = browser
        .execute(
            "return getComputedStyle(document.querySelector('header.top')).backgroundColor;",
            json!([]),
        )
        .await;
    assert_eq!(header_colour, "rgb(36, 41, 47)");
    if let Some(dir) = screenshots() {
        browser.screenshot(&dir.join("ui-sagas.png")).await;
    }

    // The filter form, used as a person would: only compensated sagas.
    browser
        .click(
            &browser
                .find("select[name=status] option[value=compensated]")
                .await,
        )
        .await;
    browser
        .click(&browser.find("form.filters button[type=submit]").await)
        .await;
    browser
        .wait_text("#shown", Duration::from_secs(10), |t| {
            t.starts_with("1 saga shown")
        })
        .await;
    assert!(browser.current_url().await.contains("status=compensated"));
    let shown: Vec<String> = browser.texts_of("#sagas tbody td:nth-child(1)").await;
    assert_eq!(shown, std::slice::from_ref(&compensated));
    // Type and age filters: all four are checkouts created in the last 5 minutes.
    browser
        .goto(&format!("{orchestrator}/ui?type=checkout&age=5m"))
        .await;
    assert_eq!(browser.find_all("#sagas tbody tr").await.len(), 4);
    browser
        .goto(&format!("{orchestrator}/ui?type=refund"))
        .await;
    assert!(browser.find_all("#sagas tbody tr").await.is_empty());
    // Nothing is stuck yet (nothing has waited a minute); the checkbox filters.
    browser.goto(&format!("{orchestrator}/ui?stuck=on")).await;
    assert!(browser.find_all("#sagas tbody tr").await.is_empty());
    assert_eq!(
        browser.text_of(".empty").await,
        "No sagas match these filters."
    );

    // ---- a completed saga --------------------------------------------------
    browser
        .click(&browser.find("nav a[href='/ui']").await)
        .await;
    browser
        .click(
            &browser
                .find(&format!("#sagas tr[data-saga-id='{completed}'] a"))
                .await,
        )
        .await;
    assert_eq!(browser.text_of("#saga-status").await, "completed");
    let steps = browser.texts_of("#steps tbody td.step-name").await;
    assert_eq!(
        steps,
        [
            "create_order",
            "reserve_inventory",
            "process_payment",
            "confirm_order"
        ]
    );
    assert_eq!(
        browser.texts_of("#steps tbody td.step-status").await,
        ["succeeded"; 4]
    );
    assert_eq!(
        browser.find_all("svg#diagram g.step-succeeded").await.len(),
        4
    );
    let events = browser.texts_of("#timeline tbody tr td:nth-child(4)").await;
    assert_eq!(events.first().map(String::as_str), Some("saga_started"));
    assert!(events.iter().any(|e| e == "saga_completed"), "{events:?}");
    assert!(
        browser
            .text_of("#saga-data")
            .await
            .contains("\"userId\": \"ui-buyer\""),
        "the data is shown"
    );
    // Nothing can be done to a completed saga.
    for action in ["retry", "resume", "cancel"] {
        let button = browser.find(&format!("button[data-action={action}]")).await;
        assert!(
            !browser.is_enabled(&button).await,
            "{action} on a completed saga"
        );
    }

    // ---- a compensated saga: the diagram shows the compensation -------------
    browser
        .goto(&format!("{orchestrator}/ui/sagas/{compensated}"))
        .await;
    assert_eq!(browser.text_of("#saga-status").await, "compensated");
    let statuses = browser.texts_of("#steps tbody td.step-status").await;
    assert_eq!(statuses[0], "compensated", "{statuses:?}");
    assert_eq!(statuses[2..], ["pending", "pending"], "{statuses:?}");
    assert!(!browser.find_all("svg#diagram g.comp-done").await.is_empty());
    let events = browser.texts_of("#timeline tbody tr td:nth-child(4)").await;
    assert!(
        events.iter().any(|e| e == "compensation_started"),
        "{events:?}"
    );
    assert!(events.iter().any(|e| e == "saga_compensated"), "{events:?}");
    let summary = browser.text_of("#summary").await;
    assert!(
        summary.contains("insufficient stock for Limited Stock Item"),
        "the error is shown: {summary}"
    );
    if let Some(dir) = screenshots() {
        browser.screenshot(&dir.join("ui-saga.png")).await;
    }

    // ---- hostile data is text, never markup --------------------------------
    browser
        .goto(&format!("{orchestrator}/ui/sagas/{hostile}"))
        .await;
    let data = browser.text_of("#saga-data").await;
    assert!(
        data.contains(r#"<script>alert(\"ui\")</script> & 'quoted' <b>bold</b>"#),
        "{data}"
    );
    // No alert opened (WebDriver would refuse every command), no injected
    // element exists: the only script is the page's own.
    let injected = browser
        .execute(
            "return [document.scripts.length, document.querySelectorAll('#saga-data b, #saga-data script').length];",
            json!([]),
        )
        .await;
    assert_eq!(injected, json!([1, 0]));

    // ---- an operator cancels the held saga ---------------------------------
    browser
        .goto(&format!("{orchestrator}/ui/sagas/{held}"))
        .await;
    assert_eq!(browser.text_of("#saga-status").await, "running");
    let cancel = browser.find("button[data-action=cancel]").await;
    assert!(
        browser.is_enabled(&cancel).await,
        "a running saga before its pivot can be cancelled"
    );
    assert!(
        !browser
            .is_enabled(&browser.find("button[data-action=retry]").await)
            .await
    );
    // Without a token nothing is sent.
    browser.click(&cancel).await;
    browser
        .wait_text("#operator-message", Duration::from_secs(5), |t| {
            t.contains("Enter the operator token")
        })
        .await;
    // A wrong token: the server's refusal is shown, the saga is untouched.
    let token = browser.find("#operator-token").await;
    browser.type_text(&token, "not-the-operator-token").await;
    browser.click(&cancel).await;
    let refusal = browser
        .wait_text("#operator-message", Duration::from_secs(10), |t| {
            t.contains("401")
        })
        .await;
    assert!(
        refusal.contains("Wrong or missing operator token"),
        "{refusal}"
    );
    browser.refresh().await;
    assert_eq!(browser.text_of("#saga-status").await, "running");
    // The token stays in the tab (sessionStorage): clear it and type the right one.
    let token = browser.find("#operator-token").await;
    assert_eq!(
        browser.property(&token, "value").await,
        "not-the-operator-token"
    );
    browser.clear(&token).await;
    browser.type_text(&token, OPERATOR_TOKEN).await;
    browser
        .click(&browser.find("button[data-action=cancel]").await)
        .await;
    // The page reloads: the saga compensates; the refund waits for the payment service.
    await_page_status(&browser, "compensating", Duration::from_secs(15)).await;
    let events = browser.texts_of("#timeline tbody tr td:nth-child(4)").await;
    assert!(events.iter().any(|e| e == "operator_cancel"), "{events:?}");
    cluster.restart(payment).await;
    await_page_status(&browser, "compensated", Duration::from_secs(60)).await;
    let statuses = browser.texts_of("#steps tbody td.step-status").await;
    assert_eq!(statuses[..3], ["compensated"; 3], "{statuses:?}");

    browser.quit().await;
    cluster.shutdown().await;
}
