//! The order service: creates orders (`PENDING`), confirms them
//! (`CONFIRMED`) and cancels them (`CANCELLED`, the compensation).
//!
//! Its participant serves the `order` endpoint with `create_order`,
//! `confirm_order` and `cancel_order`. Every handler is idempotent per order
//! id and commits its change atomically (`create_order` on PostgreSQL and
//! `confirm_order` as one statement each, the others in one transaction):
//!
//! - `create_order` inserts the order and its lines; a redelivery finds the
//!   order and answers the same reply. An order that exists as `CANCELLED` (a
//!   tombstone left by a `cancel_order` that arrived first) is refused.
//! - `cancel_order` sets `CANCELLED` with a reason; for an order that does not
//!   exist yet it inserts a `CANCELLED` tombstone so a late `create_order` is
//!   refused. Cancelling a cancelled order succeeds; a confirmed one is refused.
//! - `confirm_order` moves `PENDING` to `CONFIRMED`; confirming a confirmed
//!   order succeeds, a cancelled one is refused. [`OrderConfig`] can inject
//!   confirmation failures to demonstrate the compensation of a payment.
//!
//! Concurrent duplicates are safe: inserts use `ON CONFLICT DO NOTHING` on the
//! primary key and re-read; status changes are conditional updates
//! (`WHERE status = 'PENDING'`), which PostgreSQL re-evaluates after waiting
//! for a concurrent writer.

pub mod entity;
pub mod migration;

use std::collections::HashMap;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::routing::get;
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use saga_core::{CommandContext, Participant, StepError};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseConnection, DbBackend, DbErr,
    EntityTrait, QueryFilter, QueryOrder, QuerySelect, Statement, TransactionTrait,
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use self::entity::orders::OrderStatus;
use self::entity::{order_items, orders};
use crate::error::Result;
use crate::http::{ApiError, AppJson};
use crate::messages::{CancelOrder, ConfirmOrder, CreateOrder, OrderCreated};
use crate::service::{Tombstones, db_failure, inserted, money, parse_id};

/// The endpoint (queue) the order participant serves.
pub const ENDPOINT: &str = "order";

/// Tuning of the order service.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OrderConfig {
    /// Probability in `[0, 1]` that `confirm_order` is rejected (fault
    /// injection, so the refund path can be shown). The choice is
    /// deterministic per order: a hash of `seed` and the order id.
    pub confirm_failure_rate: f64,
    /// Seed of the fault-injection choice.
    pub seed: u64,
}

impl Default for OrderConfig {
    fn default() -> Self {
        Self {
            confirm_failure_rate: 0.0,
            seed: 0,
        }
    }
}

/// Mixed into the seed so confirmation faults do not correlate with payment declines.
const CONFIRM_SALT: u64 = 0x0C0F_1A3E_D00D_F00D;

/// Advisory lock key serializing concurrent migrations on PostgreSQL.
const MIGRATION_LOCK: i64 = 0x5A6A_0101;

/// How often a handler re-reads after losing a race with a concurrent duplicate.
const RACE_ATTEMPTS: usize = 3;

/// Creates or upgrades the `orders` and `order_items` tables.
///
/// Idempotent; on PostgreSQL concurrent callers serialize on an advisory lock.
///
/// # Errors
/// A database error when the database is unreachable or a migration fails.
pub async fn migrate(db: &DatabaseConnection) -> Result<()> {
    crate::service::migrate::<migration::Migrator>(db, MIGRATION_LOCK).await
}

/// The order participant: endpoint `order`, commands `create_order`,
/// `confirm_order` and `cancel_order`.
///
/// # Errors
/// Never in practice: the three commands go to `order`.
pub fn participant(db: DatabaseConnection, config: OrderConfig) -> Result<Participant> {
    participant_with(db, config, None)
}

/// The order tombstones: `CANCELLED` rows without a buyer, written by a
/// `cancel_order` that arrived before its `create_order`.
pub(crate) const TOMBSTONES: Tombstones = Tombstones {
    table: "orders",
    marker: "status = 'CANCELLED' AND user_id = ''",
};

/// [`participant`] that deletes its tombstones once older than
/// `inbox_retention` (`INBOX_RETENTION`; `None` keeps them).
///
/// # Errors
/// As [`participant`].
pub fn participant_with(
    db: DatabaseConnection,
    config: OrderConfig,
    inbox_retention: Option<std::time::Duration>,
) -> Result<Participant> {
    let builder = crate::telemetry::traced_participant(Participant::builder())
        .state(db.clone())
        .on(|cmd: CreateOrder, ctx, db: DatabaseConnection| async move {
            create_order(&db, &cmd, &ctx).await
        })
        .on(
            move |cmd: ConfirmOrder, ctx, db: DatabaseConnection| async move {
                confirm_order(&db, config, &cmd, &ctx).await
            },
        )
        .on(|cmd: CancelOrder, ctx, db: DatabaseConnection| async move {
            cancel_order(&db, &cmd, &ctx).await
        });
    Ok(crate::service::retaining(builder, &db, TOMBSTONES, inbox_retention).build()?)
}

/// A business refusal for an amount a `decimal(12, 2)` column cannot hold exactly.
fn check_money(what: &str, amount: Decimal) -> Result<(), StepError> {
    let limit = Decimal::from(10_000_000_000_i64);
    if amount.is_sign_negative() && !amount.is_zero() {
        Err(StepError::business(format!("{what} {amount} is negative")))
    } else if amount >= limit {
        Err(StepError::business(format!("{what} {amount} is too large")))
    } else if amount.normalize().scale() > 2 {
        Err(StepError::business(format!(
            "{what} {amount} has more than 2 decimal places"
        )))
    } else {
        Ok(())
    }
}

/// Checks a `create_order` command; a bad one is a business refusal.
fn validate(cmd: &CreateOrder) -> Result<(), StepError> {
    // An order without a buyer would read as a tombstone and be pruned.
    if cmd.user_id.is_empty() {
        return Err(StepError::business("an order needs a user id"));
    }
    if cmd.items.is_empty() {
        return Err(StepError::business("an order needs at least one item"));
    }
    let mut sum = Decimal::ZERO;
    for line in &cmd.items {
        if line.quantity == 0 || i32::try_from(line.quantity).is_err() {
            return Err(StepError::business(format!(
                "invalid quantity {} for product {}",
                line.quantity, line.product_id
            )));
        }
        check_money("unit price", line.unit_price)?;
        sum = Decimal::from(line.quantity)
            .checked_mul(line.unit_price)
            .and_then(|amount| sum.checked_add(amount))
            .ok_or_else(|| StepError::business("order total overflows"))?;
    }
    check_money("order total", cmd.total)?;
    if sum != cmd.total {
        return Err(StepError::business(format!(
            "order total {} does not match its items ({sum})",
            cmd.total
        )));
    }
    Ok(())
}

#[tracing::instrument(name = "order.create", skip_all, fields(order_id = %cmd.order_id, saga_id = %ctx.saga_id))]
async fn create_order(
    db: &DatabaseConnection,
    cmd: &CreateOrder,
    ctx: &CommandContext,
) -> Result<OrderCreated, StepError> {
    validate(cmd)?;
    try_create_order(db, cmd)
        .await
        .unwrap_or_else(|e| Err(db_failure("order", ctx, cmd.order_id, &e)))
}

/// On PostgreSQL the order and its lines go in with one statement (one round
/// trip, committed on its own): the lines are inserted only when the order
/// was, and the statement answers how many orders it inserted (0 or 1). `jsonb_to_recordset` reads the lines from one JSON parameter; prices
/// travel as strings so no digit is lost on the way to `decimal(12, 2)`.
const CREATE_ORDER_SQL: &str = "\
WITH created AS (
    INSERT INTO orders (id, user_id, status, total, reason, created_at, updated_at)
    VALUES ($1, $2, $3, $4, NULL, $5, $5)
    ON CONFLICT (id) DO NOTHING
    RETURNING id
), lines AS (
    INSERT INTO order_items (id, order_id, product_id, quantity, unit_price)
    SELECT line.id, created.id, line.product_id, line.quantity, line.unit_price
    FROM created CROSS JOIN jsonb_to_recordset($6)
        AS line(id uuid, product_id uuid, quantity integer, unit_price numeric)
)
SELECT count(*) AS created FROM created";

async fn try_create_order(
    db: &DatabaseConnection,
    cmd: &CreateOrder,
) -> Result<Result<OrderCreated, StepError>, DbErr> {
    if insert_order(db, cmd).await? {
        tracing::info!(total = %cmd.total, "order created");
        return Ok(Ok(OrderCreated {
            order_id: cmd.order_id,
        }));
    }
    // A redelivery, or a concurrent duplicate that committed first.
    let existing = orders::Entity::find_by_id(cmd.order_id).one(db).await?;
    match existing {
        Some(order) if order.status == OrderStatus::Cancelled => {
            tracing::info!("create_order refused: the order was cancelled");
            Ok(Err(StepError::business(format!(
                "order {} was cancelled",
                cmd.order_id
            ))))
        }
        Some(_) => {
            tracing::debug!("duplicate create_order answered from the existing order");
            Ok(Ok(OrderCreated {
                order_id: cmd.order_id,
            }))
        }
        None => Err(DbErr::RecordNotFound(format!(
            "order {} conflicted on insert but cannot be read",
            cmd.order_id
        ))),
    }
}

/// Inserts the order (`PENDING`) and its lines, atomically; `false` when an
/// order with this id exists (nothing is written then).
async fn insert_order(db: &DatabaseConnection, cmd: &CreateOrder) -> Result<bool, DbErr> {
    let now = Utc::now();
    let lines: Vec<order_items::Model> = cmd
        .items
        .iter()
        .map(|line| order_items::Model {
            id: Uuid::now_v7(),
            order_id: cmd.order_id,
            product_id: line.product_id,
            quantity: i32::try_from(line.quantity).unwrap_or(i32::MAX),
            unit_price: line.unit_price,
        })
        .collect();
    if db.get_database_backend() == DbBackend::Postgres {
        let lines: Vec<serde_json::Value> = lines
            .iter()
            .map(|line| {
                serde_json::json!({
                    "id": line.id,
                    "product_id": line.product_id,
                    "quantity": line.quantity,
                    "unit_price": line.unit_price.to_string(),
                })
            })
            .collect();
        let created = db
            .query_one_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                CREATE_ORDER_SQL,
                [
                    cmd.order_id.into(),
                    cmd.user_id.clone().into(),
                    OrderStatus::Pending.as_str().into(),
                    cmd.total.into(),
                    now.into(),
                    serde_json::Value::Array(lines).into(),
                ],
            ))
            .await?
            .ok_or_else(|| DbErr::RecordNotFound("the order's insert answered no row".into()))?
            .try_get::<i64>("", "created")?;
        return Ok(created == 1);
    }
    // SQLite has no data-modifying `WITH`: a transaction, which costs no
    // round trip in process.
    let txn = db.begin().await?;
    let order = orders::ActiveModel {
        id: Set(cmd.order_id),
        user_id: Set(cmd.user_id.clone()),
        status: Set(OrderStatus::Pending),
        total: Set(cmd.total),
        reason: Set(None),
        created_at: Set(now),
        updated_at: Set(now),
    };
    let result = orders::Entity::insert(order)
        .on_conflict_do_nothing()
        .exec_without_returning(&txn)
        .await?;
    if !inserted(&result) {
        txn.rollback().await?;
        return Ok(false);
    }
    let lines = lines.into_iter().map(|line| order_items::ActiveModel {
        id: Set(line.id),
        order_id: Set(line.order_id),
        product_id: Set(line.product_id),
        quantity: Set(line.quantity),
        unit_price: Set(line.unit_price),
    });
    order_items::Entity::insert_many(lines)
        .exec_without_returning(&txn)
        .await?;
    txn.commit().await?;
    Ok(true)
}

#[tracing::instrument(name = "order.cancel", skip_all, fields(order_id = %cmd.order_id, saga_id = %ctx.saga_id))]
async fn cancel_order(
    db: &DatabaseConnection,
    cmd: &CancelOrder,
    ctx: &CommandContext,
) -> Result<(), StepError> {
    for _ in 0..RACE_ATTEMPTS {
        match try_cancel_order(db, cmd).await {
            Ok(Some(outcome)) => return outcome,
            Ok(None) => tracing::debug!("cancel_order raced a concurrent writer; re-reading"),
            Err(e) => return Err(db_failure("order", ctx, cmd.order_id, &e)),
        }
    }
    Err(StepError::retryable(format!(
        "order {} changed concurrently",
        cmd.order_id
    )))
}

/// One attempt; `None` when a concurrent writer won a race (try again).
async fn try_cancel_order(
    db: &DatabaseConnection,
    cmd: &CancelOrder,
) -> Result<Option<Result<(), StepError>>, DbErr> {
    let now = Utc::now();
    let txn = db.begin().await?;
    let updated = orders::Entity::update_many()
        .col_expr(
            orders::Column::Status,
            Expr::value(OrderStatus::Cancelled.as_str()),
        )
        .col_expr(orders::Column::Reason, Expr::value(cmd.reason.clone()))
        .col_expr(orders::Column::UpdatedAt, Expr::value(now))
        .filter(orders::Column::Id.eq(cmd.order_id))
        .filter(orders::Column::Status.eq(OrderStatus::Pending))
        .exec(&txn)
        .await?;
    if updated.rows_affected == 1 {
        txn.commit().await?;
        tracing::info!(reason = %cmd.reason, "order cancelled");
        return Ok(Some(Ok(())));
    }
    let existing = orders::Entity::find_by_id(cmd.order_id).one(&txn).await?;
    let outcome = match existing.map(|o| o.status) {
        Some(OrderStatus::Cancelled) => {
            tracing::debug!("order already cancelled");
            Some(Ok(()))
        }
        Some(OrderStatus::Confirmed) => {
            tracing::warn!("cancel_order refused: the order is confirmed");
            Some(Err(StepError::business(format!(
                "order {} is CONFIRMED and cannot be cancelled",
                cmd.order_id
            ))))
        }
        // Inserted by a concurrent create after our update looked.
        Some(OrderStatus::Pending) => None,
        None => {
            // Cancel before create: a tombstone refuses a late create_order.
            let tombstone = orders::ActiveModel {
                id: Set(cmd.order_id),
                user_id: Set(String::new()),
                status: Set(OrderStatus::Cancelled),
                total: Set(Decimal::ZERO),
                reason: Set(Some(cmd.reason.clone())),
                created_at: Set(now),
                updated_at: Set(now),
            };
            let result = orders::Entity::insert(tombstone)
                .on_conflict_do_nothing()
                .exec_without_returning(&txn)
                .await?;
            if inserted(&result) {
                tracing::info!("order cancelled before it was created: tombstone written");
                Some(Ok(()))
            } else {
                None
            }
        }
    };
    if outcome.is_some() {
        txn.commit().await?;
    } else {
        txn.rollback().await?;
    }
    Ok(outcome)
}

#[tracing::instrument(name = "order.confirm", skip_all, fields(order_id = %cmd.order_id, saga_id = %ctx.saga_id))]
async fn confirm_order(
    db: &DatabaseConnection,
    config: OrderConfig,
    cmd: &ConfirmOrder,
    ctx: &CommandContext,
) -> Result<(), StepError> {
    if crate::fault_injection::fails(
        config.confirm_failure_rate,
        config.seed ^ CONFIRM_SALT,
        cmd.order_id,
    ) {
        tracing::info!("confirm_order rejected by fault injection");
        return Err(StepError::business(
            "confirmation rejected (fault injection)",
        ));
    }
    for _ in 0..RACE_ATTEMPTS {
        match try_confirm_order(db, cmd).await {
            Ok(Some(outcome)) => return outcome,
            Ok(None) => tracing::debug!("confirm_order raced a concurrent writer; re-reading"),
            Err(e) => return Err(db_failure("order", ctx, cmd.order_id, &e)),
        }
    }
    Err(StepError::retryable(format!(
        "order {} changed concurrently",
        cmd.order_id
    )))
}

async fn try_confirm_order(
    db: &DatabaseConnection,
    cmd: &ConfirmOrder,
) -> Result<Option<Result<(), StepError>>, DbErr> {
    // One conditional update, committed on its own: the common case is one
    // statement. Only when it matched no row is the order read.
    let updated = orders::Entity::update_many()
        .col_expr(
            orders::Column::Status,
            Expr::value(OrderStatus::Confirmed.as_str()),
        )
        .col_expr(orders::Column::UpdatedAt, Expr::value(Utc::now()))
        .filter(orders::Column::Id.eq(cmd.order_id))
        .filter(orders::Column::Status.eq(OrderStatus::Pending))
        .exec(db)
        .await?;
    if updated.rows_affected == 1 {
        tracing::info!("order confirmed");
        return Ok(Some(Ok(())));
    }
    let existing = orders::Entity::find_by_id(cmd.order_id).one(db).await?;
    Ok(match existing.map(|o| o.status) {
        Some(OrderStatus::Confirmed) => Some(Ok(())),
        Some(OrderStatus::Cancelled) => Some(Err(StepError::business(format!(
            "order {} was cancelled",
            cmd.order_id
        )))),
        Some(OrderStatus::Pending) => None,
        None => Some(Err(StepError::business(format!(
            "order {} does not exist",
            cmd.order_id
        )))),
    })
}

/// The HTTP routes of the order service:
/// `GET /orders/{id}`, `GET /orders?status=&limit=` and `GET /health`.
pub fn router(db: DatabaseConnection) -> Router {
    Router::new()
        .route("/orders", get(list_orders))
        .route("/orders/{id}", get(get_order))
        .with_state(db)
        .merge(crate::http::health("order-service"))
}

/// An order as the HTTP API shows it (the gateway's `GET /api/orders/{id}`).
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderView {
    /// The order's id.
    id: Uuid,
    /// The buyer.
    user_id: String,
    /// `PENDING` while the saga runs, then `CONFIRMED` or `CANCELLED`.
    status: OrderStatus,
    /// Sum of quantity times unit price, a decimal string.
    #[schema(example = "59.98")]
    total: Decimal,
    /// The lines.
    items: Vec<ItemView>,
    /// Why the order was cancelled.
    #[schema(required = true)]
    reason: Option<String>,
    /// When it was created.
    created_at: DateTime<Utc>,
    /// When it last changed.
    updated_at: DateTime<Utc>,
}

/// An order line as the HTTP API shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ItemView {
    /// The product.
    product_id: Uuid,
    /// Units.
    quantity: i32,
    /// The catalogue price per unit, a decimal string.
    #[schema(example = "29.99")]
    unit_price: Decimal,
}

impl OrderView {
    fn new(order: orders::Model, items: Vec<ItemView>) -> Self {
        Self {
            id: order.id,
            user_id: order.user_id,
            status: order.status,
            total: money(order.total),
            items,
            reason: order.reason,
            created_at: order.created_at,
            updated_at: order.updated_at,
        }
    }
}

/// Loads the lines of `orders`, in insertion order, and builds their views.
async fn with_items(
    db: &DatabaseConnection,
    orders: Vec<orders::Model>,
) -> Result<Vec<OrderView>, DbErr> {
    let ids: Vec<Uuid> = orders.iter().map(|o| o.id).collect();
    let items = order_items::Entity::find()
        .filter(order_items::Column::OrderId.is_in(ids))
        .order_by_asc(order_items::Column::Id)
        .all(db)
        .await?;
    let mut by_order: HashMap<Uuid, Vec<ItemView>> = HashMap::new();
    for item in items {
        by_order.entry(item.order_id).or_default().push(ItemView {
            product_id: item.product_id,
            quantity: item.quantity,
            unit_price: money(item.unit_price),
        });
    }
    Ok(orders
        .into_iter()
        .map(|order| {
            let items = by_order.remove(&order.id).unwrap_or_default();
            OrderView::new(order, items)
        })
        .collect())
}

async fn get_order(
    State(db): State<DatabaseConnection>,
    Path(id): Path<String>,
) -> Result<AppJson<OrderView>, ApiError> {
    let id = parse_id(&id, "order id")?;
    let order = orders::Entity::find_by_id(id)
        .one(&db)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("order {id} not found")))?;
    let mut views = with_items(&db, vec![order]).await?;
    views
        .pop()
        .map(AppJson)
        .ok_or_else(|| ApiError::internal("order view missing"))
}

/// Query of `GET /orders`.
#[derive(Debug, Deserialize)]
struct ListParams {
    status: Option<String>,
    limit: Option<String>,
}

/// Default and maximum page size of the list endpoints.
const DEFAULT_LIMIT: u64 = 50;
const MAX_LIMIT: u64 = 500;

fn parse_limit(raw: Option<&str>) -> Result<u64, ApiError> {
    match raw {
        None => Ok(DEFAULT_LIMIT),
        Some(raw) => match raw.parse::<u64>() {
            Ok(limit) if (1..=MAX_LIMIT).contains(&limit) => Ok(limit),
            _ => Err(ApiError::bad_request(format!(
                "limit must be an integer from 1 to {MAX_LIMIT}, got `{raw}`"
            ))),
        },
    }
}

async fn list_orders(
    State(db): State<DatabaseConnection>,
    Query(params): Query<ListParams>,
) -> Result<AppJson<Vec<OrderView>>, ApiError> {
    let limit = parse_limit(params.limit.as_deref())?;
    let mut query = orders::Entity::find();
    if let Some(status) = params.status.as_deref() {
        let status = OrderStatus::parse(status).ok_or_else(|| {
            ApiError::bad_request(format!(
                "unknown status `{status}`; expected PENDING, CONFIRMED or CANCELLED"
            ))
        })?;
        query = query.filter(orders::Column::Status.eq(status));
    }
    let orders = query
        .order_by_desc(orders::Column::CreatedAt)
        .order_by_desc(orders::Column::Id)
        .limit(limit)
        .all(&db)
        .await?;
    Ok(AppJson(with_items(&db, orders).await?))
}

#[cfg(test)]
mod tests;
