//! The payment service: simulated charges (`SUCCESS` or `FAILED`) and refunds
//! (`REFUNDED`, the compensation), at most one payment per order.
//!
//! Its participant serves the `payment` endpoint with `process_payment` and
//! `refund_payment`. Both are idempotent per order id (a unique `order_id`);
//! each commits its change atomically (a refund in one transaction, a new
//! payment as one statement):
//!
//! - `process_payment` answers an existing payment's outcome (`SUCCESS`: the
//!   same reply; `FAILED`: "payment declined"; `REFUNDED`: refused). Otherwise
//!   it decides deterministically from the seed and the order id whether the
//!   payment is declined ([`PaymentConfig::failure_rate`], 5% by default),
//!   and records the payment.
//! - `refund_payment` moves `SUCCESS` to `REFUNDED`; a refunded or failed
//!   payment needs nothing; with no payment at all it inserts a `REFUNDED`
//!   tombstone (amount 0) so a late `process_payment` is refused.
//!
//! Concurrent duplicates are safe: inserts use `ON CONFLICT (order_id) DO
//! NOTHING` and re-read; the refund is a conditional update
//! (`WHERE status = 'SUCCESS'`).

pub mod entity;
pub mod migration;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::routing::get;
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use saga_core::{CommandContext, Participant, StepError};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect, TransactionTrait,
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use self::entity::payments::{self, PaymentStatus};
use crate::error::Result;
use crate::http::{ApiError, AppJson};
use crate::messages::{PaymentProcessed, ProcessPayment, RefundPayment};
use crate::service::{Tombstones, db_failure, inserted, money};

/// The endpoint (queue) the payment participant serves.
pub const ENDPOINT: &str = "payment";

/// Tuning of the simulated payment provider.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PaymentConfig {
    /// Probability in `[0, 1]` that a payment is declined (0.05 by default,
    /// like the original system). The choice is deterministic per order: a
    /// hash of `seed` and the order id, so redeliveries agree.
    pub failure_rate: f64,
    /// Seed of the decline choice.
    pub seed: u64,
}

impl Default for PaymentConfig {
    fn default() -> Self {
        Self {
            failure_rate: 0.05,
            seed: 0,
        }
    }
}

/// Advisory lock key serializing concurrent migrations on PostgreSQL.
const MIGRATION_LOCK: i64 = 0x5A6A_0103;

/// How often a handler tries again when its insert lost to a row it then
/// could not read, or its refund raced a concurrent writer.
const RACE_ATTEMPTS: usize = 3;

/// The reason a declined payment gives.
const DECLINED: &str = "payment declined";

/// Creates or upgrades the `payments` table.
///
/// Idempotent; on PostgreSQL concurrent callers serialize on an advisory lock.
///
/// # Errors
/// A database error when the database is unreachable or a migration fails.
pub async fn migrate(db: &DatabaseConnection) -> Result<()> {
    crate::service::migrate::<migration::Migrator>(db, MIGRATION_LOCK).await
}

/// The payment participant: endpoint `payment`, commands `process_payment`
/// and `refund_payment`.
///
/// # Errors
/// Never in practice: both commands go to `payment`.
pub fn participant(db: DatabaseConnection, config: PaymentConfig) -> Result<Participant> {
    participant_with(db, config, None)
}

/// The payment tombstones: `REFUNDED` rows without a buyer, written by a
/// `refund_payment` that arrived before its `process_payment`.
pub(crate) const TOMBSTONES: Tombstones = Tombstones {
    table: "payments",
    marker: "status = 'REFUNDED' AND user_id = ''",
};

/// [`participant`] that deletes its tombstones once older than
/// `inbox_retention` (`INBOX_RETENTION`; `None` keeps them).
///
/// # Errors
/// As [`participant`].
pub fn participant_with(
    db: DatabaseConnection,
    config: PaymentConfig,
    inbox_retention: Option<std::time::Duration>,
) -> Result<Participant> {
    let builder = crate::telemetry::traced_participant(Participant::builder())
        .state(db.clone())
        .on(
            move |cmd: ProcessPayment, ctx, db: DatabaseConnection| async move {
                process_payment(&db, config, &cmd, &ctx).await
            },
        )
        .on(
            |cmd: RefundPayment, ctx, db: DatabaseConnection| async move {
                refund_payment(&db, &cmd, &ctx).await
            },
        );
    Ok(crate::service::retaining(builder, &db, TOMBSTONES, inbox_retention).build()?)
}

/// The reply an existing payment gives to `process_payment`.
fn answer(payment: &payments::Model) -> Result<PaymentProcessed, StepError> {
    match payment.status {
        PaymentStatus::Success => Ok(PaymentProcessed {
            payment_id: payment.id,
        }),
        PaymentStatus::Failed => Err(StepError::business(DECLINED)),
        PaymentStatus::Refunded => Err(StepError::business(format!(
            "payment for order {} was refunded",
            payment.order_id
        ))),
    }
}

/// A business refusal for an amount a `decimal(12, 2)` column cannot hold exactly.
fn check_amount(amount: Decimal) -> Result<(), StepError> {
    if amount.is_sign_negative() && !amount.is_zero() {
        Err(StepError::business(format!("amount {amount} is negative")))
    } else if amount >= Decimal::from(10_000_000_000_i64) {
        Err(StepError::business(format!("amount {amount} is too large")))
    } else if amount.normalize().scale() > 2 {
        Err(StepError::business(format!(
            "amount {amount} has more than 2 decimal places"
        )))
    } else {
        Ok(())
    }
}

#[tracing::instrument(name = "payment.process", skip_all, fields(order_id = %cmd.order_id, saga_id = %ctx.saga_id))]
async fn process_payment(
    db: &DatabaseConnection,
    config: PaymentConfig,
    cmd: &ProcessPayment,
    ctx: &CommandContext,
) -> Result<PaymentProcessed, StepError> {
    check_amount(cmd.amount)?;
    // A payment without a buyer would read as a tombstone and be pruned,
    // and a later copy of the command would charge again.
    if cmd.user_id.is_empty() {
        return Err(StepError::business("a payment needs a user id"));
    }
    for _ in 0..RACE_ATTEMPTS {
        match try_process_payment(db, config, cmd).await {
            Ok(Some(outcome)) => return outcome,
            Ok(None) => tracing::debug!(
                "process_payment lost its insert but found no payment; trying again"
            ),
            Err(e) => return Err(db_failure("payment", ctx, cmd.order_id, &e)),
        }
    }
    Err(StepError::retryable(format!(
        "payment for order {} changed concurrently",
        cmd.order_id
    )))
}

/// One attempt; `None` when the payment that won the insert is gone again
/// (it cannot be, payments are never deleted; try again all the same).
///
/// The common case is one statement and one commit: the new payment is
/// inserted with `ON CONFLICT (order_id) DO NOTHING`. Only a duplicate (a
/// redelivery, a concurrent twin, or a refund tombstone) reads the row that
/// is there and answers from it. The decline is a function of the seed and
/// the order id, so inserting before looking cannot decide differently.
async fn try_process_payment(
    db: &DatabaseConnection,
    config: PaymentConfig,
    cmd: &ProcessPayment,
) -> Result<Option<Result<PaymentProcessed, StepError>>, DbErr> {
    let declined = crate::fault_injection::fails(config.failure_rate, config.seed, cmd.order_id);
    let now = Utc::now();
    let payment = payments::Model {
        id: Uuid::now_v7(),
        order_id: cmd.order_id,
        user_id: cmd.user_id.clone(),
        amount: cmd.amount,
        status: if declined {
            PaymentStatus::Failed
        } else {
            PaymentStatus::Success
        },
        created_at: now,
        updated_at: now,
    };
    let result = payments::Entity::insert(payments::ActiveModel {
        id: Set(payment.id),
        order_id: Set(payment.order_id),
        user_id: Set(payment.user_id.clone()),
        amount: Set(payment.amount),
        status: Set(payment.status),
        created_at: Set(now),
        updated_at: Set(now),
    })
    .on_conflict_do_nothing_on([payments::Column::OrderId])
    .exec_without_returning(db)
    .await?;
    if inserted(&result) {
        if declined {
            tracing::info!(amount = %cmd.amount, "payment declined");
        } else {
            tracing::info!(amount = %cmd.amount, "payment succeeded");
        }
        return Ok(Some(answer(&payment)));
    }
    let existing = payments::Entity::find()
        .filter(payments::Column::OrderId.eq(cmd.order_id))
        .one(db)
        .await?;
    Ok(existing.map(|payment| {
        tracing::debug!(
            status = payment.status.as_str(),
            "duplicate process_payment answered from the existing payment"
        );
        answer(&payment)
    }))
}

#[tracing::instrument(name = "payment.refund", skip_all, fields(order_id = %cmd.order_id, saga_id = %ctx.saga_id))]
async fn refund_payment(
    db: &DatabaseConnection,
    cmd: &RefundPayment,
    ctx: &CommandContext,
) -> Result<(), StepError> {
    for _ in 0..RACE_ATTEMPTS {
        match try_refund_payment(db, cmd).await {
            Ok(true) => return Ok(()),
            Ok(false) => tracing::debug!("refund_payment raced a concurrent writer; re-reading"),
            Err(e) => return Err(db_failure("payment", ctx, cmd.order_id, &e)),
        }
    }
    Err(StepError::retryable(format!(
        "payment for order {} changed concurrently",
        cmd.order_id
    )))
}

/// One attempt; `false` when a concurrent writer won a race (try again).
async fn try_refund_payment(db: &DatabaseConnection, cmd: &RefundPayment) -> Result<bool, DbErr> {
    let now = Utc::now();
    let txn = db.begin().await?;
    let updated = payments::Entity::update_many()
        .col_expr(
            payments::Column::Status,
            Expr::value(PaymentStatus::Refunded.as_str()),
        )
        .col_expr(payments::Column::UpdatedAt, Expr::value(now))
        .filter(payments::Column::OrderId.eq(cmd.order_id))
        .filter(payments::Column::Status.eq(PaymentStatus::Success))
        .exec(&txn)
        .await?;
    if updated.rows_affected == 1 {
        txn.commit().await?;
        tracing::info!("payment refunded");
        return Ok(true);
    }
    let existing = payments::Entity::find()
        .filter(payments::Column::OrderId.eq(cmd.order_id))
        .one(&txn)
        .await?;
    let done = match existing.map(|p| p.status) {
        Some(PaymentStatus::Refunded) => {
            tracing::debug!("payment already refunded");
            true
        }
        Some(PaymentStatus::Failed) => {
            tracing::debug!("payment failed: nothing to refund");
            true
        }
        // Inserted by a concurrent process_payment after our update looked.
        Some(PaymentStatus::Success) => false,
        None => {
            // Refund before payment: a tombstone refuses a late process_payment.
            let tombstone = payments::ActiveModel {
                id: Set(Uuid::now_v7()),
                order_id: Set(cmd.order_id),
                user_id: Set(String::new()),
                amount: Set(Decimal::ZERO),
                status: Set(PaymentStatus::Refunded),
                created_at: Set(now),
                updated_at: Set(now),
            };
            let result = payments::Entity::insert(tombstone)
                .on_conflict_do_nothing_on([payments::Column::OrderId])
                .exec_without_returning(&txn)
                .await?;
            let done = inserted(&result);
            if done {
                tracing::info!("refund before any payment: tombstone written");
            }
            done
        }
    };
    if done {
        txn.commit().await?;
    } else {
        txn.rollback().await?;
    }
    Ok(done)
}

/// The HTTP routes of the payment service: `GET /payments/{order_id}`,
/// `GET /payments?status=&limit=` and `GET /health`.
pub fn router(db: DatabaseConnection) -> Router {
    Router::new()
        .route("/payments", get(list_payments))
        .route("/payments/{order_id}", get(get_payment))
        .with_state(db)
        .merge(crate::http::health("payment-service"))
}

/// A payment as the HTTP API shows it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct PaymentView {
    id: Uuid,
    order_id: Uuid,
    user_id: String,
    amount: Decimal,
    status: PaymentStatus,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl From<payments::Model> for PaymentView {
    fn from(p: payments::Model) -> Self {
        Self {
            id: p.id,
            order_id: p.order_id,
            user_id: p.user_id,
            amount: money(p.amount),
            status: p.status,
            created_at: p.created_at,
            updated_at: p.updated_at,
        }
    }
}

async fn get_payment(
    State(db): State<DatabaseConnection>,
    Path(order_id): Path<String>,
) -> Result<AppJson<PaymentView>, ApiError> {
    let order_id = Uuid::parse_str(&order_id)
        .map_err(|_| ApiError::bad_request(format!("invalid order id `{order_id}`")))?;
    payments::Entity::find()
        .filter(payments::Column::OrderId.eq(order_id))
        .one(&db)
        .await?
        .map(|p| AppJson(p.into()))
        .ok_or_else(|| ApiError::not_found(format!("no payment for order {order_id}")))
}

/// Query of `GET /payments`.
#[derive(Debug, Deserialize)]
struct ListParams {
    status: Option<String>,
    limit: Option<String>,
}

/// Default and maximum page size of the list endpoint.
const DEFAULT_LIMIT: u64 = 50;
const MAX_LIMIT: u64 = 500;

async fn list_payments(
    State(db): State<DatabaseConnection>,
    Query(params): Query<ListParams>,
) -> Result<AppJson<Vec<PaymentView>>, ApiError> {
    let limit = match params.limit.as_deref() {
        None => DEFAULT_LIMIT,
        Some(raw) => match raw.parse::<u64>() {
            Ok(limit) if (1..=MAX_LIMIT).contains(&limit) => limit,
            _ => {
                return Err(ApiError::bad_request(format!(
                    "limit must be an integer from 1 to {MAX_LIMIT}, got `{raw}`"
                )));
            }
        },
    };
    let mut query = payments::Entity::find();
    if let Some(status) = params.status.as_deref() {
        let status = PaymentStatus::parse(status).ok_or_else(|| {
            ApiError::bad_request(format!(
                "unknown status `{status}`; expected SUCCESS, FAILED or REFUNDED"
            ))
        })?;
        query = query.filter(payments::Column::Status.eq(status));
    }
    let payments = query
        .order_by_desc(payments::Column::CreatedAt)
        .order_by_desc(payments::Column::Id)
        .limit(limit)
        .all(&db)
        .await?;
    Ok(AppJson(payments.into_iter().map(Into::into).collect()))
}

#[cfg(test)]
mod tests;
