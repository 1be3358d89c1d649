//! The order participant on real PostgreSQL, where `create_order` writes the
//! order and its lines with one statement: the lines arrive exactly (prices
//! to the cent, quantities, their order), concurrent first deliveries and a
//! redelivery write one order with one set of lines and all get the same
//! answer, and an order cancelled before its `create_order` (a tombstone)
//! refuses it with nothing written.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use checkout_app::messages::{CancelOrder, CreateOrder, LineItem};
use checkout_app::order::entity::{order_items, orders};
use checkout_app::order::{self, OrderConfig};
use rust_decimal::Decimal;
use saga_core::adapter::{CommandMessage, ReplyOutcome};
use saga_core::{Command, Direction, SagaId, StepErrorKind};
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder};
use uuid::Uuid;

use crate::support::{command_message, handle_concurrently, with_fresh_postgres};

/// Runs `test` on a fresh, migrated orders database.
async fn with_orders_database<F, Fut>(test: F)
where
    F: FnOnce(DatabaseConnection) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    with_fresh_postgres(16, |db| async move {
        order::migrate(&db).await.expect("migrations apply");
        test(db).await;
    })
    .await;
}

fn message<C: Command>(command: &C, saga_id: SagaId, step: &str) -> CommandMessage {
    command_message("order", command, saga_id, step, Direction::Invoke)
}

/// Three lines whose prices need every digit `decimal(12, 2)` keeps.
fn create(order_id: Uuid) -> CreateOrder {
    let line = |n: u128, quantity: u32, cents: i64| LineItem {
        product_id: Uuid::from_u128(n),
        quantity,
        unit_price: Decimal::new(cents, 2),
    };
    CreateOrder {
        order_id,
        user_id: "user-123".into(),
        items: vec![line(3, 2, 2999), line(1, 1, 1), line(2, 7, 123_456_789)],
        total: Decimal::new(2 * 2999 + 1 + 7 * 123_456_789, 2),
    }
}

async fn lines_of(db: &DatabaseConnection, id: Uuid) -> Vec<(Uuid, i32, Decimal)> {
    order_items::Entity::find()
        .filter(order_items::Column::OrderId.eq(id))
        .order_by_asc(order_items::Column::Id)
        .all(db)
        .await
        .unwrap()
        .into_iter()
        .map(|line| (line.product_id, line.quantity, line.unit_price))
        .collect()
}

fn expected_lines(command: &CreateOrder) -> Vec<(Uuid, i32, Decimal)> {
    command
        .items
        .iter()
        .map(|line| {
            (
                line.product_id,
                i32::try_from(line.quantity).unwrap(),
                line.unit_price,
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn create_writes_the_order_and_its_exact_lines_once_under_concurrent_deliveries() {
    with_orders_database(|db| async move {
        let p = order::participant(db.clone(), OrderConfig::default()).expect("valid participant");
        let id = Uuid::new_v4();
        let command = create(id);
        let saga_id = SagaId::new();
        // The first delivery and 16 duplicates at once: all but one wait on
        // the primary key for the first insert's commit, then answer from it.
        let deliveries =
            handle_concurrently(&p, vec![message(&command, saga_id, "create_order"); 17]).await;
        let again = handle_concurrently(&p, vec![message(&command, saga_id, "create_order")]).await;
        for outcome in deliveries.iter().chain(&again) {
            let ReplyOutcome::Success(reply) = outcome else {
                panic!("create_order failed: {outcome:?}");
            };
            assert_eq!(reply["orderId"], id.to_string(), "{reply}");
        }

        let order = orders::Entity::find_by_id(id)
            .one(&db)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(order.status, orders::OrderStatus::Pending);
        assert_eq!(order.user_id, "user-123");
        assert_eq!(order.total, command.total);
        assert_eq!(order.reason, None);
        assert_eq!(lines_of(&db, id).await, expected_lines(&command));
        assert_eq!(order_items::Entity::find().all(&db).await.unwrap().len(), 3);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_create_after_its_cancel_is_refused_and_writes_no_line() {
    with_orders_database(|db| async move {
        let p = order::participant(db.clone(), OrderConfig::default()).expect("valid participant");
        let id = Uuid::new_v4();
        let saga_id = SagaId::new();
        let cancel = CancelOrder {
            order_id: id,
            reason: "payment declined".into(),
        };
        let cancelled =
            handle_concurrently(&p, vec![message(&cancel, saga_id, "cancel_order")]).await;
        assert!(
            matches!(cancelled[0], ReplyOutcome::Success(_)),
            "{cancelled:?}"
        );

        let created =
            handle_concurrently(&p, vec![message(&create(id), saga_id, "create_order")]).await;
        let ReplyOutcome::Failure(refusal) = &created[0] else {
            panic!("a create after its cancel was accepted: {created:?}");
        };
        assert_eq!(refusal.kind, StepErrorKind::Business, "{refusal:?}");
        let order = orders::Entity::find_by_id(id)
            .one(&db)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(order.status, orders::OrderStatus::Cancelled);
        assert_eq!(order.total, Decimal::ZERO);
        assert!(lines_of(&db, id).await.is_empty());
    })
    .await;
}
