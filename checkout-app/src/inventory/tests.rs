#![allow(clippy::unwrap_used)]

use axum::body::Body;
use axum::http::{Request, StatusCode};
use saga_core::{Command, StepErrorKind};
use sea_orm::PaginatorTrait;
use tower::ServiceExt;

use super::*;

const STANDARD: Uuid = Uuid::from_u128(0x660facf7_b9cf_417a_8ee1_27afe2fb2c72);
const LIMITED: Uuid = Uuid::from_u128(0xdda60f33_8dfd_4da2_96c8_1a029d72725a);
const KEYBOARD: Uuid = Uuid::from_u128(0xe794067c_2f38_4b12_afa9_d1acb6f4ec6a);

async fn db() -> DatabaseConnection {
    let db = crate::db::connect(crate::db::EMBEDDED, 1).await.unwrap();
    migrate(&db).await.unwrap();
    assert_eq!(seed(&db).await.unwrap(), 10);
    db
}

async fn send<C: Command>(p: &Participant, command: &C) -> Result<C::Reply, StepError> {
    crate::service::test_support::send(p, "reserve_inventory", "release_inventory", command).await
}

fn line(product_id: Uuid, quantity: u32) -> LineItem {
    LineItem {
        product_id,
        quantity,
        unit_price: Decimal::new(1, 0),
    }
}

fn reserve(order_id: Uuid, items: Vec<LineItem>) -> ReserveInventory {
    ReserveInventory { order_id, items }
}

fn release(order_id: Uuid) -> ReleaseInventory {
    ReleaseInventory { order_id }
}

async fn product(db: &DatabaseConnection, id: Uuid) -> products::Model {
    products::Entity::find_by_id(id)
        .one(db)
        .await
        .unwrap()
        .unwrap()
}

async fn reservation(db: &DatabaseConnection, order_id: Uuid) -> Option<reservations::Model> {
    reservations::Entity::find()
        .filter(reservations::Column::OrderId.eq(order_id))
        .one(db)
        .await
        .unwrap()
}

#[tokio::test]
async fn seed_is_idempotent_and_keeps_existing_stock() {
    let db = db().await;
    let limited = product(&db, LIMITED).await;
    assert_eq!(limited.name, "Limited Stock Item");
    assert_eq!(limited.price, Decimal::new(1999, 2));
    assert_eq!(limited.stock, 5);
    let standard = product(&db, STANDARD).await;
    assert_eq!(standard.price, Decimal::new(2999, 2));
    assert!(standard.stock >= 100);
    set_stock(&db, LIMITED, 2).await.unwrap();
    assert_eq!(seed(&db).await.unwrap(), 0);
    assert_eq!(products::Entity::find().count(&db).await.unwrap(), 10);
    let after = product(&db, LIMITED).await;
    assert_eq!(after.stock, 2);
    assert_eq!(after.version, limited.version + 1);
    assert!(set_stock(&db, Uuid::new_v4(), 1).await.is_err());
    assert!(set_stock(&db, LIMITED, -1).await.is_err());
}

#[test]
fn the_catalogue_is_well_formed() {
    let ids: std::collections::HashSet<_> = CATALOGUE.iter().map(|p| p.0).collect();
    assert_eq!(ids.len(), CATALOGUE.len());
    for (_, name, cents, stock) in CATALOGUE {
        assert!(!name.is_empty() && cents > 0);
        assert!(name == "Limited Stock Item" || (100..=1000).contains(&stock));
    }
}

#[tokio::test]
async fn reserve_is_all_or_nothing_and_idempotent_under_redelivery() {
    let db = db().await;
    let p = participant(db.clone()).expect("valid participant");
    let order = Uuid::new_v4();
    // Duplicate lines are merged.
    let command = reserve(
        order,
        vec![line(STANDARD, 2), line(KEYBOARD, 1), line(STANDARD, 1)],
    );
    let first = send(&p, &command).await.unwrap();
    let again = send(&p, &command).await.unwrap();
    assert_eq!(first.reservation_id, again.reservation_id);
    let (a, b) = tokio::join!(send(&p, &command), send(&p, &command));
    assert_eq!(a.unwrap().reservation_id, first.reservation_id);
    assert_eq!(b.unwrap().reservation_id, first.reservation_id);

    assert_eq!(product(&db, STANDARD).await.stock, 1000 - 3);
    assert_eq!(product(&db, STANDARD).await.version, 1);
    assert_eq!(product(&db, KEYBOARD).await.stock, 250 - 1);
    let stored = reservation(&db, order).await.unwrap();
    assert_eq!(stored.id, first.reservation_id);
    assert_eq!(stored.status, ReservationStatus::Reserved);
    let mut expected = vec![
        ReservedItem {
            product_id: STANDARD,
            quantity: 3,
        },
        ReservedItem {
            product_id: KEYBOARD,
            quantity: 1,
        },
    ];
    expected.sort_by_key(|i| i.product_id);
    assert_eq!(stored.items.0, expected);
    assert_eq!(reservations::Entity::find().count(&db).await.unwrap(), 1);
}

#[tokio::test]
async fn insufficient_stock_is_a_business_refusal_that_changes_nothing() {
    let db = db().await;
    let p = participant(db.clone()).expect("valid participant");
    let order = Uuid::new_v4();
    // The first line would fit; the second does not: nothing is taken.
    let err = send(
        &p,
        &reserve(order, vec![line(STANDARD, 2), line(LIMITED, 10)]),
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind, StepErrorKind::Business);
    assert_eq!(
        err.message,
        "insufficient stock for Limited Stock Item: requested 10, available 5"
    );
    assert_eq!(product(&db, STANDARD).await.stock, 1000);
    assert_eq!(product(&db, STANDARD).await.version, 0);
    assert_eq!(product(&db, LIMITED).await.stock, 5);
    assert!(reservation(&db, order).await.is_none());

    let unknown = send(&p, &reserve(order, vec![line(Uuid::new_v4(), 1)]))
        .await
        .unwrap_err();
    assert_eq!(unknown.kind, StepErrorKind::Business);
    let empty = send(&p, &reserve(order, vec![])).await.unwrap_err();
    assert_eq!(empty.kind, StepErrorKind::Business);
    let zero = send(&p, &reserve(order, vec![line(STANDARD, 0)]))
        .await
        .unwrap_err();
    assert_eq!(zero.kind, StepErrorKind::Business);
    assert!(reservation(&db, order).await.is_none());
}

#[tokio::test]
async fn release_restores_stock_once() {
    let db = db().await;
    let p = participant(db.clone()).expect("valid participant");
    let order = Uuid::new_v4();
    send(
        &p,
        &reserve(order, vec![line(LIMITED, 3), line(STANDARD, 5)]),
    )
    .await
    .unwrap();
    assert_eq!(product(&db, LIMITED).await.stock, 2);
    send(&p, &release(order)).await.unwrap();
    assert_eq!(product(&db, LIMITED).await.stock, 5);
    assert_eq!(product(&db, STANDARD).await.stock, 1000);
    let released = reservation(&db, order).await.unwrap();
    assert_eq!(released.status, ReservationStatus::Released);
    // Redelivered and concurrent releases give nothing back twice.
    let command = release(order);
    let (a, b) = tokio::join!(send(&p, &command), send(&p, &command));
    a.unwrap();
    b.unwrap();
    assert_eq!(product(&db, LIMITED).await.stock, 5);
    assert_eq!(product(&db, LIMITED).await.version, 2);
    // A late redelivery of the reservation is refused.
    let err = send(&p, &reserve(order, vec![line(LIMITED, 3)]))
        .await
        .unwrap_err();
    assert_eq!(err.kind, StepErrorKind::Business);
    assert_eq!(
        err.message,
        format!("reservation for order {order} was released")
    );
    assert_eq!(product(&db, LIMITED).await.stock, 5);
}

#[tokio::test]
async fn release_before_reserve_leaves_a_tombstone_that_refuses_the_reservation() {
    let db = db().await;
    let p = participant(db.clone()).expect("valid participant");
    let order = Uuid::new_v4();
    send(&p, &release(order)).await.unwrap();
    let tombstone = reservation(&db, order).await.unwrap();
    assert_eq!(tombstone.status, ReservationStatus::Released);
    assert!(tombstone.items.0.is_empty());
    let err = send(&p, &reserve(order, vec![line(LIMITED, 1)]))
        .await
        .unwrap_err();
    assert_eq!(err.kind, StepErrorKind::Business);
    assert_eq!(product(&db, LIMITED).await.stock, 5);
    send(&p, &release(order)).await.unwrap();
    assert_eq!(product(&db, LIMITED).await.stock, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_buyers_never_oversell_the_limited_item() {
    let db = db().await;
    let p = participant(db.clone()).expect("valid participant");
    let tasks: Vec<_> = (0..30)
        .map(|_| {
            let p = p.clone();
            tokio::spawn(
                async move { send(&p, &reserve(Uuid::new_v4(), vec![line(LIMITED, 1)])).await },
            )
        })
        .collect();
    let mut reserved = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => reserved += 1,
            Err(e) => {
                assert_eq!(e.kind, StepErrorKind::Business, "{e}");
                assert!(e.message.starts_with("insufficient stock"), "{e}");
            }
        }
    }
    assert_eq!(reserved, 5);
    let limited = product(&db, LIMITED).await;
    assert_eq!(limited.stock, 0);
    assert_eq!(limited.version, 5);
    assert_eq!(reservations::Entity::find().count(&db).await.unwrap(), 5);
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
async fn the_router_shows_products_and_reservations() {
    let db = db().await;
    let p = participant(db.clone()).expect("valid participant");
    let order = Uuid::new_v4();
    send(&p, &reserve(order, vec![line(LIMITED, 2)]))
        .await
        .unwrap();
    let router = router(db);

    let (status, body) = get(&router, "/products").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body.as_array().unwrap().len(), 10);

    let unknown = Uuid::new_v4();
    let (status, body) = get(
        &router,
        &format!("/products?ids={STANDARD},{LIMITED},{unknown}"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let list = body.as_array().unwrap();
    assert_eq!(list.len(), 2);
    let limited = list
        .iter()
        .find(|p| p["id"] == LIMITED.to_string())
        .unwrap();
    assert_eq!(limited["name"], "Limited Stock Item");
    assert_eq!(limited["price"], "19.99");
    assert_eq!(limited["stock"], 3);
    assert_eq!(limited["version"], 1);

    let (status, body) = get(&router, &format!("/products/{STANDARD}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["price"], "29.99");
    assert_eq!(body["stock"], 1000);

    let (status, body) = get(&router, &format!("/reservations/{order}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["orderId"], order.to_string());
    assert_eq!(body["status"], "RESERVED");
    assert_eq!(body["items"][0]["productId"], LIMITED.to_string());
    assert_eq!(body["items"][0]["quantity"], 2);

    let (status, _) = get(&router, &format!("/products/{unknown}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = get(&router, &format!("/reservations/{unknown}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = get(&router, "/products/xyz").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = get(&router, "/products?ids=xyz").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, body) = get(&router, "/products?ids=").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, serde_json::json!([]));
    let (status, body) = get(&router, "/health").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["service"], "inventory-service");
}
