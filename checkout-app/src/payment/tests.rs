#![allow(clippy::unwrap_used)]

use axum::body::Body;
use axum::http::{Request, StatusCode};
use saga_core::{Command, StepErrorKind};
use sea_orm::PaginatorTrait;
use tower::ServiceExt;

use super::*;

async fn db() -> DatabaseConnection {
    let db = crate::db::connect(crate::db::EMBEDDED, 1).await.unwrap();
    migrate(&db).await.unwrap();
    db
}

async fn send<C: Command>(p: &Participant, command: &C) -> Result<C::Reply, StepError> {
    crate::service::test_support::send(p, "process_payment", "refund_payment", command).await
}

fn pay(order_id: Uuid) -> ProcessPayment {
    ProcessPayment {
        order_id,
        user_id: "user-123".into(),
        amount: Decimal::new(5998, 2),
    }
}

fn refund(order_id: Uuid) -> RefundPayment {
    RefundPayment { order_id }
}

fn config(failure_rate: f64) -> PaymentConfig {
    PaymentConfig {
        failure_rate,
        seed: 11,
    }
}

async fn load(db: &DatabaseConnection, order_id: Uuid) -> Option<payments::Model> {
    payments::Entity::find()
        .filter(payments::Column::OrderId.eq(order_id))
        .one(db)
        .await
        .unwrap()
}

#[test]
fn the_default_config_declines_five_percent() {
    assert_eq!(PaymentConfig::default().failure_rate, 0.05);
}

#[tokio::test]
async fn payment_is_idempotent_under_redelivery() {
    let db = db().await;
    let p = participant(db.clone(), config(0.0)).expect("valid participant");
    let id = Uuid::new_v4();
    let first = send(&p, &pay(id)).await.unwrap();
    let again = send(&p, &pay(id)).await.unwrap();
    assert_eq!(first.payment_id, again.payment_id);
    let command = pay(id);
    let (a, b) = tokio::join!(send(&p, &command), send(&p, &command));
    assert_eq!(a.unwrap().payment_id, first.payment_id);
    assert_eq!(b.unwrap().payment_id, first.payment_id);
    let payment = load(&db, id).await.unwrap();
    assert_eq!(payment.status, PaymentStatus::Success);
    assert_eq!(payment.amount, Decimal::new(5998, 2));
    assert_eq!(payment.user_id, "user-123");
    assert_eq!(payments::Entity::find().count(&db).await.unwrap(), 1);
}

#[tokio::test]
async fn failure_rate_one_declines_every_payment_and_records_it() {
    let db = db().await;
    let p = participant(db.clone(), config(1.0)).expect("valid participant");
    for _ in 0..20 {
        let id = Uuid::new_v4();
        let err = send(&p, &pay(id)).await.unwrap_err();
        assert_eq!(err.kind, StepErrorKind::Business);
        assert_eq!(err.message, "payment declined");
        assert_eq!(load(&db, id).await.unwrap().status, PaymentStatus::Failed);
        // A redelivery gives the same answer, and so does a service whose
        // rate changed meanwhile: the recorded outcome wins.
        assert_eq!(
            send(&p, &pay(id)).await.unwrap_err().message,
            "payment declined"
        );
        let lenient = participant(db.clone(), config(0.0)).expect("valid participant");
        assert!(send(&lenient, &pay(id)).await.is_err());
        // Nothing to refund for a failed payment.
        send(&p, &refund(id)).await.unwrap();
        assert_eq!(load(&db, id).await.unwrap().status, PaymentStatus::Failed);
    }
}

#[tokio::test]
async fn failure_rate_zero_never_declines() {
    let db = db().await;
    let p = participant(db.clone(), config(0.0)).expect("valid participant");
    for _ in 0..50 {
        send(&p, &pay(Uuid::new_v4())).await.unwrap();
    }
    let failed = payments::Entity::find()
        .filter(payments::Column::Status.eq(PaymentStatus::Failed))
        .count(&db)
        .await
        .unwrap();
    assert_eq!(failed, 0);
}

#[tokio::test]
async fn refund_moves_success_to_refunded_once_and_blocks_a_late_payment() {
    let db = db().await;
    let p = participant(db.clone(), config(0.0)).expect("valid participant");
    let id = Uuid::new_v4();
    send(&p, &pay(id)).await.unwrap();
    send(&p, &refund(id)).await.unwrap();
    let refunded = load(&db, id).await.unwrap();
    assert_eq!(refunded.status, PaymentStatus::Refunded);
    assert_eq!(refunded.amount, Decimal::new(5998, 2));
    send(&p, &refund(id)).await.unwrap();
    assert_eq!(load(&db, id).await.unwrap().updated_at, refunded.updated_at);
    let err = send(&p, &pay(id)).await.unwrap_err();
    assert_eq!(err.kind, StepErrorKind::Business);
    assert_eq!(err.message, format!("payment for order {id} was refunded"));
}

#[tokio::test]
async fn refund_before_payment_leaves_a_tombstone_that_refuses_the_payment() {
    let db = db().await;
    let p = participant(db.clone(), config(0.0)).expect("valid participant");
    let id = Uuid::new_v4();
    send(&p, &refund(id)).await.unwrap();
    let tombstone = load(&db, id).await.unwrap();
    assert_eq!(tombstone.status, PaymentStatus::Refunded);
    assert_eq!(tombstone.amount, Decimal::ZERO);
    let err = send(&p, &pay(id)).await.unwrap_err();
    assert_eq!(err.kind, StepErrorKind::Business);
    assert_eq!(payments::Entity::find().count(&db).await.unwrap(), 1);
    send(&p, &refund(id)).await.unwrap();
}

#[tokio::test]
async fn an_invalid_amount_is_refused_without_a_record() {
    let db = db().await;
    let p = participant(db.clone(), config(0.0)).expect("valid participant");
    for amount in [
        Decimal::new(-1, 0),
        Decimal::new(1_234, 3),
        Decimal::new(10_000_000_000, 0),
    ] {
        let id = Uuid::new_v4();
        let command = ProcessPayment { amount, ..pay(id) };
        assert_eq!(
            send(&p, &command).await.unwrap_err().kind,
            StepErrorKind::Business
        );
        assert!(load(&db, id).await.is_none());
    }
    let id = Uuid::new_v4();
    let no_buyer = ProcessPayment {
        user_id: String::new(),
        ..pay(id)
    };
    assert_eq!(
        send(&p, &no_buyer).await.unwrap_err().kind,
        StepErrorKind::Business
    );
    assert!(load(&db, id).await.is_none());
}

async fn get(router: &Router, uri: &str) -> (StatusCode, serde_json::Value) {
    let response = router
        .clone()
        .oneshot(Request::get(uri).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    (status, serde_json::from_slice(&bytes).unwrap())
}

#[tokio::test]
async fn the_router_shows_payments() {
    let db = db().await;
    let ok = participant(db.clone(), config(0.0)).expect("valid participant");
    let declining = participant(db.clone(), config(1.0)).expect("valid participant");
    let paid = Uuid::new_v4();
    let declined = Uuid::new_v4();
    send(&ok, &pay(paid)).await.unwrap();
    send(&declining, &pay(declined)).await.unwrap_err();
    let router = router(db);

    let (status, body) = get(&router, &format!("/payments/{paid}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["orderId"], paid.to_string());
    assert_eq!(body["userId"], "user-123");
    assert_eq!(body["amount"], "59.98");
    assert_eq!(body["status"], "SUCCESS");
    assert!(body["id"].is_string() && body["createdAt"].is_string());

    let (status, body) = get(&router, "/payments?status=FAILED").await;
    assert_eq!(status, StatusCode::OK);
    let list = body.as_array().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["orderId"], declined.to_string());
    let (_, body) = get(&router, "/payments").await;
    assert_eq!(body.as_array().unwrap().len(), 2);

    let (status, _) = get(&router, &format!("/payments/{}", Uuid::new_v4())).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = get(&router, "/payments/nope").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = get(&router, "/payments?status=PAID").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, body) = get(&router, "/health").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["service"], "payment-service");
}
