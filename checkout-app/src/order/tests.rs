#![allow(clippy::unwrap_used)]

use axum::body::Body;
use axum::http::{Request, StatusCode};
use saga_core::{Command, StepErrorKind};
use sea_orm::PaginatorTrait;
use tower::ServiceExt;

use super::*;
use crate::messages::LineItem;

async fn db() -> DatabaseConnection {
    let db = crate::db::connect(crate::db::EMBEDDED, 1).await.unwrap();
    migrate(&db).await.unwrap();
    db
}

async fn send<C: Command>(p: &Participant, command: &C) -> Result<C::Reply, StepError> {
    crate::service::test_support::send(p, "order_step", "cancel_order", command).await
}

fn create(order_id: Uuid) -> CreateOrder {
    CreateOrder {
        order_id,
        user_id: "user-123".into(),
        items: vec![
            LineItem {
                product_id: Uuid::from_u128(1),
                quantity: 2,
                unit_price: Decimal::new(2999, 2),
            },
            LineItem {
                product_id: Uuid::from_u128(2),
                quantity: 1,
                unit_price: Decimal::new(1999, 2),
            },
        ],
        total: Decimal::new(7997, 2),
    }
}

fn cancel(order_id: Uuid) -> CancelOrder {
    CancelOrder {
        order_id,
        reason: "payment declined".into(),
    }
}

async fn load(db: &DatabaseConnection, id: Uuid) -> Option<orders::Model> {
    orders::Entity::find_by_id(id).one(db).await.unwrap()
}

async fn item_count(db: &DatabaseConnection, id: Uuid) -> u64 {
    order_items::Entity::find()
        .filter(order_items::Column::OrderId.eq(id))
        .count(db)
        .await
        .unwrap()
}

#[tokio::test]
async fn create_is_idempotent_under_redelivery() {
    let db = db().await;
    let p = participant(db.clone(), OrderConfig::default()).expect("valid participant");
    let id = Uuid::new_v4();
    let first = send(&p, &create(id)).await.unwrap();
    let again = send(&p, &create(id)).await.unwrap();
    assert_eq!(first.order_id, id);
    assert_eq!(again.order_id, id);
    // Concurrent duplicates too.
    let command = create(id);
    let (a, b) = tokio::join!(send(&p, &command), send(&p, &command));
    assert!(a.is_ok() && b.is_ok());
    let order = load(&db, id).await.unwrap();
    assert_eq!(order.status, OrderStatus::Pending);
    assert_eq!(order.total, Decimal::new(7997, 2));
    assert_eq!(order.user_id, "user-123");
    assert_eq!(orders::Entity::find().count(&db).await.unwrap(), 1);
    assert_eq!(item_count(&db, id).await, 2);
}

#[tokio::test]
async fn a_bad_create_is_a_business_refusal_and_writes_nothing() {
    let db = db().await;
    let p = participant(db.clone(), OrderConfig::default()).expect("valid participant");
    let id = Uuid::new_v4();
    let mut wrong_total = create(id);
    wrong_total.total = Decimal::new(1, 0);
    let mut no_items = create(id);
    no_items.items.clear();
    let mut zero_quantity = create(id);
    zero_quantity.items[0].quantity = 0;
    let mut no_buyer = create(id);
    no_buyer.user_id.clear();
    for bad in [wrong_total, no_items, zero_quantity, no_buyer] {
        let err = send(&p, &bad).await.unwrap_err();
        assert_eq!(err.kind, StepErrorKind::Business, "{err}");
    }
    assert!(load(&db, id).await.is_none());
}

#[tokio::test]
async fn cancel_before_create_leaves_a_tombstone_that_refuses_the_create() {
    let db = db().await;
    let p = participant(db.clone(), OrderConfig::default()).expect("valid participant");
    let id = Uuid::new_v4();
    send(&p, &cancel(id)).await.unwrap();
    let err = send(&p, &create(id)).await.unwrap_err();
    assert_eq!(err.kind, StepErrorKind::Business);
    assert_eq!(err.message, format!("order {id} was cancelled"));
    let order = load(&db, id).await.unwrap();
    assert_eq!(order.status, OrderStatus::Cancelled);
    assert_eq!(order.reason.as_deref(), Some("payment declined"));
    assert_eq!(item_count(&db, id).await, 0);
    // Cancelling again is a no-op success.
    send(&p, &cancel(id)).await.unwrap();
}

#[tokio::test]
async fn cancel_after_create_cancels_with_the_reason_once() {
    let db = db().await;
    let p = participant(db.clone(), OrderConfig::default()).expect("valid participant");
    let id = Uuid::new_v4();
    send(&p, &create(id)).await.unwrap();
    send(&p, &cancel(id)).await.unwrap();
    let cancelled = load(&db, id).await.unwrap();
    assert_eq!(cancelled.status, OrderStatus::Cancelled);
    assert_eq!(cancelled.reason.as_deref(), Some("payment declined"));
    let second = CancelOrder {
        order_id: id,
        reason: "another reason".into(),
    };
    send(&p, &second).await.unwrap();
    let unchanged = load(&db, id).await.unwrap();
    assert_eq!(unchanged.reason.as_deref(), Some("payment declined"));
    assert_eq!(unchanged.updated_at, cancelled.updated_at);
    // A redelivered create after the cancel is refused.
    assert_eq!(
        send(&p, &create(id)).await.unwrap_err().kind,
        StepErrorKind::Business
    );
}

#[tokio::test]
async fn confirm_moves_pending_to_confirmed_idempotently() {
    let db = db().await;
    let p = participant(db.clone(), OrderConfig::default()).expect("valid participant");
    let id = Uuid::new_v4();
    send(&p, &create(id)).await.unwrap();
    send(&p, &ConfirmOrder { order_id: id }).await.unwrap();
    send(&p, &ConfirmOrder { order_id: id }).await.unwrap();
    assert_eq!(load(&db, id).await.unwrap().status, OrderStatus::Confirmed);
    // A confirmed order is not cancelled.
    let err = send(&p, &cancel(id)).await.unwrap_err();
    assert_eq!(err.kind, StepErrorKind::Business);
    assert_eq!(load(&db, id).await.unwrap().status, OrderStatus::Confirmed);
}

#[tokio::test]
async fn confirm_refuses_cancelled_and_unknown_orders() {
    let db = db().await;
    let p = participant(db.clone(), OrderConfig::default()).expect("valid participant");
    let id = Uuid::new_v4();
    send(&p, &create(id)).await.unwrap();
    send(&p, &cancel(id)).await.unwrap();
    let err = send(&p, &ConfirmOrder { order_id: id }).await.unwrap_err();
    assert_eq!(err.kind, StepErrorKind::Business);
    assert_eq!(load(&db, id).await.unwrap().status, OrderStatus::Cancelled);
    let unknown = send(
        &p,
        &ConfirmOrder {
            order_id: Uuid::new_v4(),
        },
    )
    .await
    .unwrap_err();
    assert_eq!(unknown.kind, StepErrorKind::Business);
}

#[tokio::test]
async fn confirm_fault_injection_rejects_deterministically_and_records_nothing() {
    let db = db().await;
    let always = participant(
        db.clone(),
        OrderConfig {
            confirm_failure_rate: 1.0,
            seed: 7,
        },
    )
    .expect("valid participant");
    let id = Uuid::new_v4();
    send(&always, &create(id)).await.unwrap();
    let err = send(&always, &ConfirmOrder { order_id: id })
        .await
        .unwrap_err();
    assert_eq!(err.kind, StepErrorKind::Business);
    assert_eq!(err.message, "confirmation rejected (fault injection)");
    assert_eq!(load(&db, id).await.unwrap().status, OrderStatus::Pending);
    // The compensation still works afterwards.
    send(&always, &cancel(id)).await.unwrap();
    assert_eq!(load(&db, id).await.unwrap().status, OrderStatus::Cancelled);

    // A partial rate decides per order, the same way on every delivery.
    let half = participant(
        db.clone(),
        OrderConfig {
            confirm_failure_rate: 0.5,
            seed: 7,
        },
    )
    .expect("valid participant");
    let mut rejected = 0;
    for _ in 0..40 {
        let id = Uuid::new_v4();
        send(&half, &create(id)).await.unwrap();
        let first = send(&half, &ConfirmOrder { order_id: id }).await;
        let second = send(&half, &ConfirmOrder { order_id: id }).await;
        assert_eq!(first.is_ok(), second.is_ok());
        if first.is_err() {
            rejected += 1;
        }
    }
    assert!((1..40).contains(&rejected), "{rejected} of 40 rejected");
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
async fn the_router_shows_orders() {
    let db = db().await;
    let p = participant(db.clone(), OrderConfig::default()).expect("valid participant");
    let pending = Uuid::new_v4();
    let cancelled = Uuid::new_v4();
    send(&p, &create(pending)).await.unwrap();
    send(&p, &create(cancelled)).await.unwrap();
    send(&p, &cancel(cancelled)).await.unwrap();
    let router = router(db);

    let (status, body) = get(&router, &format!("/orders/{pending}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["id"], pending.to_string());
    assert_eq!(body["userId"], "user-123");
    assert_eq!(body["status"], "PENDING");
    assert_eq!(body["total"], "79.97");
    assert_eq!(body["reason"], serde_json::Value::Null);
    assert!(body["createdAt"].is_string() && body["updatedAt"].is_string());
    let items = body["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(items[0]["productId"], Uuid::from_u128(1).to_string());
    assert_eq!(items[0]["quantity"], 2);
    assert_eq!(items[0]["unitPrice"], "29.99");

    let (status, body) = get(&router, "/orders?status=cancelled").await;
    assert_eq!(status, StatusCode::OK);
    let list = body.as_array().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["id"], cancelled.to_string());
    assert_eq!(list[0]["reason"], "payment declined");
    assert_eq!(list[0]["items"].as_array().unwrap().len(), 2);

    let (_, body) = get(&router, "/orders?limit=1").await;
    assert_eq!(body.as_array().unwrap().len(), 1);
    let (_, body) = get(&router, "/orders").await;
    assert_eq!(body.as_array().unwrap().len(), 2);

    let (status, _) = get(&router, &format!("/orders/{}", Uuid::new_v4())).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = get(&router, "/orders/not-a-uuid").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["success"], false);
    let (status, _) = get(&router, "/orders?status=SHIPPED").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = get(&router, "/orders?limit=0").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let (status, body) = get(&router, "/health").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["service"], "order-service");
}

#[tokio::test]
async fn migrate_is_idempotent() {
    let db = db().await;
    migrate(&db).await.unwrap();
    migrate(&db).await.unwrap();
    // The three services' schemas can share one database.
    crate::inventory::migrate(&db).await.unwrap();
    crate::payment::migrate(&db).await.unwrap();
    migrate(&db).await.unwrap();
}
