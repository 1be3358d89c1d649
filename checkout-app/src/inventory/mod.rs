//! The inventory service: the product catalogue, stock with optimistic
//! locking, and reservations tied to orders.
//!
//! Its participant serves the `inventory` endpoint with `reserve_inventory`
//! and `release_inventory` (the compensation). Both are idempotent per order
//! id (a unique `order_id` in `reservations`) and run in one transaction:
//!
//! - `reserve_inventory` takes stock for every line or for none. It inserts
//!   the reservation row first (so an existing reservation is answered as is,
//!   and a `RELEASED` one, a tombstone left by a release that arrived first,
//!   is refused), reads the products and refuses at once, writing nothing,
//!   when one is unknown or short. Lines are merged per product and handled
//!   in product-id order (so concurrent reservations lock rows in the same
//!   order and cannot deadlock). Each product is decremented with
//!   `UPDATE ... SET stock = stock - q, version = version + 1 WHERE id = ?
//!   AND version = ? AND stock >= q`. If another writer got there first the
//!   update matches no row; the product is then read again within the same
//!   transaction and, while its stock still suffices, updated again with the
//!   version just read. Under PostgreSQL's READ COMMITTED an update that finds
//!   the row locked waits for that writer's commit, and each lost round means
//!   another writer committed a change to the product, so buyers of a hot
//!   product with stock to spare all succeed, one after the other, without
//!   rolling back. Only a real shortage refuses (a business failure,
//!   "insufficient stock"); when `TAKE_ROUNDS` (128) updates of one product
//!   have all lost, the transaction rolls back and the command fails as
//!   retryable ("inventory contention"). Any refusal or failure rolls back
//!   the whole reservation, stock taken for earlier lines included. The
//!   version is checked and bumped on every decrement, and the stock is never
//!   oversold or negative. On PostgreSQL these steps run inside the server,
//!   as the function `inventory_reserve_v1` (installed by [`migrate`]): one
//!   statement and one round trip instead of six or more, and the products'
//!   row locks held for that statement only. It looks for an existing
//!   reservation and checks the stock before it inserts (so a refusal needs
//!   no write), and gives the same answers; a refused reservation writes
//!   nothing.
//! - `release_inventory` flips `RESERVED` to `RELEASED` with a conditional
//!   update (which serializes concurrent releases of one order) and gives the
//!   stock back with `SET stock = stock + q, version = version + 1`, in
//!   product-id order and without a version check (adding stock cannot
//!   oversell; concurrent releases of one product wait for each other's row
//!   lock and all succeed); an already released reservation needs nothing;
//!   with no reservation it writes a `RELEASED` tombstone so a late
//!   `reserve_inventory` is refused.

pub mod entity;
pub mod migration;
mod postgres_reserve;

use std::collections::BTreeMap;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::routing::get;
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use saga_core::{CommandContext, Participant, StepError};
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, DatabaseConnection, DatabaseTransaction, DbBackend, DbErr,
    EntityTrait, QueryFilter, QueryOrder, TransactionTrait, UpdateMany,
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use self::entity::products;
use self::entity::reservations::{self, ReservationStatus, ReservedItem, ReservedItems};
use crate::error::{Error, Result};
use crate::http::{ApiError, AppJson};
use crate::messages::{InventoryReserved, LineItem, ReleaseInventory, ReserveInventory};
use crate::service::{Tombstones, db_failure, inserted, money, parse_id};

/// The endpoint (queue) the inventory participant serves.
pub const ENDPOINT: &str = "inventory";

/// Advisory lock key serializing concurrent migrations on PostgreSQL.
const MIGRATION_LOCK: i64 = 0x5A6A_0102;

/// How many version-checked updates one product gets within a reservation
/// before the command fails as retryable. Every lost round means another
/// writer committed a change to that product meanwhile, so this outlasts that
/// many concurrent writers of one product (a service's pool holds 16
/// connections by default); it only bounds a transaction starved by more.
const TAKE_ROUNDS: u32 = 128;

/// How often release re-reads after losing a race with a concurrent duplicate.
const RACE_ATTEMPTS: usize = 3;

/// The seed catalogue: id, name, price in cents, initial stock.
const CATALOGUE: [(Uuid, &str, i64, i32); 10] = [
    (
        Uuid::from_u128(0x660facf7_b9cf_417a_8ee1_27afe2fb2c72),
        "Wireless Mouse",
        2999,
        1000,
    ),
    (
        Uuid::from_u128(0xdda60f33_8dfd_4da2_96c8_1a029d72725a),
        "Limited Stock Item",
        1999,
        5,
    ),
    (
        Uuid::from_u128(0xe794067c_2f38_4b12_afa9_d1acb6f4ec6a),
        "Mechanical Keyboard",
        8999,
        250,
    ),
    (
        Uuid::from_u128(0x2e5b2929_ad50_4c73_968e_6d0a6088619c),
        "USB-C Hub",
        3999,
        400,
    ),
    (
        Uuid::from_u128(0x39ec8af0_5c4b_4998_b73d_2063f89e7c0f),
        "27-inch 4K Monitor",
        32900,
        100,
    ),
    (
        Uuid::from_u128(0x4e4f25ec_5a8c_43b2_a2d1_1cec90c121d6),
        "Aluminium Laptop Stand",
        3450,
        300,
    ),
    (
        Uuid::from_u128(0xc752b468_248a_44ae_96a8_2b05fe38e410),
        "Noise-Cancelling Headphones",
        19900,
        150,
    ),
    (
        Uuid::from_u128(0xc8bc5026_e99c_4eee_9f8e_aea542f48cf3),
        "1080p Webcam",
        5995,
        200,
    ),
    (
        Uuid::from_u128(0x4edb7124_b241_4986_acb6_2284298db15d),
        "Portable SSD 1TB",
        11999,
        120,
    ),
    (
        Uuid::from_u128(0x39f2bfc5_efd3_4cc4_83a7_80b6ad831439),
        "LED Desk Lamp",
        2499,
        500,
    ),
];

/// Creates or upgrades the `products` and `reservations` tables, and on
/// PostgreSQL installs (replaces) the function `inventory_reserve_v1` that
/// `reserve_inventory` calls there.
///
/// Idempotent; on PostgreSQL concurrent callers serialize on an advisory lock.
///
/// # Errors
/// A database error when the database is unreachable or a migration fails.
pub async fn migrate(db: &DatabaseConnection) -> Result<()> {
    crate::service::migrate_and_install::<migration::Migrator>(
        db,
        MIGRATION_LOCK,
        &[
            postgres_reserve::DROP_FIRST_FUNCTION,
            postgres_reserve::CREATE_FUNCTION,
        ],
    )
    .await
}

/// Inserts the ten seed products (fixed ids, as in the seed guide) that do
/// not exist yet, and returns how many it inserted: 10 on an empty
/// catalogue, 0 when seeded before.
///
/// Idempotent: an existing product is left exactly as it is (its stock, price
/// and version are not reset). Among the products are
/// `660facf7-b9cf-417a-8ee1-27afe2fb2c72` (29.99, 1000 units) and
/// `dda60f33-8dfd-4da2-96c8-1a029d72725a`, "Limited Stock Item" (19.99, 5 units).
///
/// # Errors
/// A database error (nothing is inserted then).
pub async fn seed(db: &DatabaseConnection) -> Result<usize> {
    let txn = db.begin().await?;
    let mut added = 0;
    for (id, name, cents, stock) in CATALOGUE {
        let product = products::ActiveModel {
            id: Set(id),
            name: Set(name.to_owned()),
            price: Set(Decimal::new(cents, 2)),
            stock: Set(stock),
            version: Set(0),
        };
        let result = products::Entity::insert(product)
            .on_conflict_do_nothing()
            .exec_without_returning(&txn)
            .await?;
        if inserted(&result) {
            added += 1;
        }
    }
    txn.commit().await?;
    tracing::info!(inserted = added, "product catalogue seeded");
    Ok(added)
}

/// Sets the stock of a product (for tests and benchmarks), bumping its version.
///
/// # Errors
/// [`Error::Config`] for a negative stock; a database error, including
/// `RecordNotFound` for an unknown product.
pub async fn set_stock(db: &DatabaseConnection, product_id: Uuid, stock: i32) -> Result<()> {
    if stock < 0 {
        return Err(Error::Config(format!(
            "stock must not be negative (got {stock} for product {product_id})"
        )));
    }
    let updated = products::Entity::update_many()
        .col_expr(products::Column::Stock, Expr::value(stock))
        .col_expr(
            products::Column::Version,
            Expr::col(products::Column::Version).add(1),
        )
        .filter(products::Column::Id.eq(product_id))
        .exec(db)
        .await?;
    if updated.rows_affected == 0 {
        return Err(DbErr::RecordNotFound(format!("product {product_id}")).into());
    }
    tracing::info!(%product_id, stock, "stock set");
    Ok(())
}

/// The inventory participant: endpoint `inventory`, commands
/// `reserve_inventory` and `release_inventory`.
///
/// # Errors
/// Never in practice: both commands go to `inventory`.
pub fn participant(db: DatabaseConnection) -> Result<Participant> {
    participant_with(db, None)
}

/// The inventory tombstones: `RELEASED` reservations of nothing, written by a
/// `release_inventory` that arrived before its `reserve_inventory`.
pub(crate) const TOMBSTONES: Tombstones = Tombstones {
    table: "reservations",
    marker: "status = 'RELEASED' AND items = '[]'",
};

/// [`participant`] that deletes its tombstones once older than
/// `inbox_retention` (`INBOX_RETENTION`; `None` keeps them).
///
/// # Errors
/// As [`participant`].
pub fn participant_with(
    db: DatabaseConnection,
    inbox_retention: Option<std::time::Duration>,
) -> Result<Participant> {
    let builder = crate::telemetry::traced_participant(Participant::builder())
        .state(db.clone())
        .on(
            |cmd: ReserveInventory, ctx, db: DatabaseConnection| async move {
                reserve_inventory(&db, &cmd, &ctx).await
            },
        )
        .on(
            |cmd: ReleaseInventory, ctx, db: DatabaseConnection| async move {
                release_inventory(&db, &cmd, &ctx).await
            },
        );
    Ok(crate::service::retaining(builder, &db, TOMBSTONES, inbox_retention).build()?)
}

/// Merges the lines per product, sorted by product id; a bad line is a
/// business refusal.
fn merge_lines(items: &[LineItem]) -> Result<Vec<ReservedItem>, StepError> {
    if items.is_empty() {
        return Err(StepError::business("nothing to reserve: no items"));
    }
    let mut merged: BTreeMap<Uuid, i32> = BTreeMap::new();
    for line in items {
        let quantity = i32::try_from(line.quantity)
            .ok()
            .filter(|q| *q > 0)
            .ok_or_else(|| {
                StepError::business(format!(
                    "invalid quantity {} for product {}",
                    line.quantity, line.product_id
                ))
            })?;
        let total = merged.entry(line.product_id).or_insert(0);
        *total = total.checked_add(quantity).ok_or_else(|| {
            StepError::business(format!(
                "quantity overflows for product {}",
                line.product_id
            ))
        })?;
    }
    Ok(merged
        .into_iter()
        .map(|(product_id, quantity)| ReservedItem {
            product_id,
            quantity,
        })
        .collect())
}

/// The reply an existing reservation gives to `reserve_inventory`.
fn answer(reservation: &reservations::Model) -> Result<InventoryReserved, StepError> {
    match reservation.status {
        ReservationStatus::Reserved => Ok(InventoryReserved {
            reservation_id: reservation.id,
        }),
        ReservationStatus::Released => Err(StepError::business(format!(
            "reservation for order {} was released",
            reservation.order_id
        ))),
    }
}

#[tracing::instrument(name = "inventory.reserve", skip_all, fields(order_id = %cmd.order_id, saga_id = %ctx.saga_id))]
async fn reserve_inventory(
    db: &DatabaseConnection,
    cmd: &ReserveInventory,
    ctx: &CommandContext,
) -> Result<InventoryReserved, StepError> {
    let lines = merge_lines(&cmd.items)?;
    try_reserve(db, cmd.order_id, &lines)
        .await
        .unwrap_or_else(|e| Err(db_failure("inventory", ctx, cmd.order_id, &e)))
}

/// The all-or-nothing reservation in one transaction.
///
/// The reservation row goes in first (`ON CONFLICT (order_id) DO NOTHING`):
/// a duplicate or a release tombstone is found at once, and on PostgreSQL a
/// concurrent twin waits on the unique index until this transaction ends.
/// Then every product is read in one query and checked, and decremented in
/// product-id order with the version check. A product another writer changed
/// in the meantime (perhaps while the update waited for its row lock) is read
/// again, checked again and updated again with the version just read, until
/// the update wins (or the stock runs short, or [`TAKE_ROUNDS`] run out).
/// Round trips without contention: `BEGIN`, insert, read, one update per
/// product, `COMMIT`; each lost round adds a read and an update. On
/// PostgreSQL the same steps are one call of `inventory_reserve_v1`.
async fn try_reserve(
    db: &DatabaseConnection,
    order_id: Uuid,
    lines: &[ReservedItem],
) -> Result<Result<InventoryReserved, StepError>, DbErr> {
    let now = Utc::now();
    let id = Uuid::now_v7();
    if db.get_database_backend() == DbBackend::Postgres {
        let items = ReservedItems(lines.to_vec());
        let reserved =
            postgres_reserve::reserve(db, id, order_id, &items, now, TAKE_ROUNDS).await?;
        return Ok(match reserved {
            Ok(reservation_id) => {
                if reservation_id == id {
                    tracing::info!(%reservation_id, lines = lines.len(), "inventory reserved");
                } else {
                    tracing::debug!(
                        "duplicate reserve_inventory answered from the existing reservation"
                    );
                }
                Ok(InventoryReserved { reservation_id })
            }
            Err(refusal) if refusal.kind == saga_core::StepErrorKind::Retryable => {
                tracing::warn!(reason = %refusal.message, rounds = TAKE_ROUNDS, "reservation gave up under contention");
                Err(refusal)
            }
            Err(refusal) => {
                tracing::info!(reason = %refusal.message, "reserve_inventory refused");
                Err(refusal)
            }
        });
    }
    let txn = db.begin().await?;
    let reservation = reservations::ActiveModel {
        id: Set(id),
        order_id: Set(order_id),
        status: Set(ReservationStatus::Reserved),
        items: Set(ReservedItems(lines.to_vec())),
        created_at: Set(now),
        updated_at: Set(now),
    };
    let result = reservations::Entity::insert(reservation)
        .on_conflict_do_nothing_on([reservations::Column::OrderId])
        .exec_without_returning(&txn)
        .await?;
    if !inserted(&result) {
        let existing = reservations::Entity::find()
            .filter(reservations::Column::OrderId.eq(order_id))
            .one(&txn)
            .await?;
        txn.rollback().await?;
        let Some(reservation) = existing else {
            // Cannot happen (reservations are never deleted).
            return Ok(Err(StepError::retryable(format!(
                "reservation for order {order_id} changed concurrently"
            ))));
        };
        tracing::debug!(
            status = reservation.status.as_str(),
            "duplicate reserve_inventory answered from the existing reservation"
        );
        return Ok(answer(&reservation));
    }
    let products: BTreeMap<Uuid, products::Model> = products::Entity::find()
        .filter(products::Column::Id.is_in(lines.iter().map(|line| line.product_id)))
        .all(&txn)
        .await?
        .into_iter()
        .map(|product| (product.id, product))
        .collect();
    for line in lines {
        if let Err(refusal) = check_stock(products.get(&line.product_id), line) {
            txn.rollback().await?;
            return Ok(Err(refusal));
        }
    }
    for line in lines {
        let mut version = products.get(&line.product_id).map_or(0, |p| p.version);
        let mut round = 1;
        while !take_stock(&txn, line, version).await? {
            // Another writer changed the product since it was read (under
            // READ COMMITTED an update that found the row locked waited for
            // that writer's commit): read it again, check again, and try
            // again with the version just read.
            if round == TAKE_ROUNDS {
                txn.rollback().await?;
                tracing::warn!(product_id = %line.product_id, rounds = TAKE_ROUNDS, "reservation gave up under contention");
                return Ok(Err(StepError::retryable("inventory contention")));
            }
            round += 1;
            let fresh = products::Entity::find_by_id(line.product_id)
                .one(&txn)
                .await?;
            if let Err(refusal) = check_stock(fresh.as_ref(), line) {
                txn.rollback().await?;
                return Ok(Err(refusal));
            }
            version = fresh.map_or(0, |p| p.version);
        }
        if round > 1 {
            tracing::debug!(product_id = %line.product_id, rounds = round, "stock taken after concurrent writers won the version check");
        }
    }
    txn.commit().await?;
    tracing::info!(reservation_id = %id, lines = lines.len(), "inventory reserved");
    Ok(Ok(InventoryReserved { reservation_id: id }))
}

/// Whether `product` can give `line.quantity`; a business refusal if not
/// (unknown product, or too little stock).
fn check_stock(product: Option<&products::Model>, line: &ReservedItem) -> Result<(), StepError> {
    let Some(product) = product else {
        return Err(StepError::business(format!(
            "unknown product {}",
            line.product_id
        )));
    };
    if product.stock < line.quantity {
        tracing::info!(product_id = %product.id, requested = line.quantity, available = product.stock, "insufficient stock");
        return Err(StepError::business(format!(
            "insufficient stock for {}: requested {}, available {}",
            product.name, line.quantity, product.stock
        )));
    }
    Ok(())
}

/// Takes `line.quantity` from the product if its version is still
/// `version` (and the stock suffices); `false` if another writer got there first.
async fn take_stock(
    txn: &DatabaseTransaction,
    line: &ReservedItem,
    version: i32,
) -> Result<bool, DbErr> {
    let updated = move_stock(line.product_id, -line.quantity)
        .filter(products::Column::Version.eq(version))
        .filter(products::Column::Stock.gte(line.quantity))
        .exec(txn)
        .await?;
    Ok(updated.rows_affected == 1)
}

/// The update that adds `delta` units to a product's stock and bumps its
/// version (callers add their conditions).
fn move_stock(product_id: Uuid, delta: i32) -> UpdateMany<products::Entity> {
    products::Entity::update_many()
        .col_expr(
            products::Column::Stock,
            Expr::col(products::Column::Stock).add(delta),
        )
        .col_expr(
            products::Column::Version,
            Expr::col(products::Column::Version).add(1),
        )
        .filter(products::Column::Id.eq(product_id))
}

#[tracing::instrument(name = "inventory.release", skip_all, fields(order_id = %cmd.order_id, saga_id = %ctx.saga_id))]
async fn release_inventory(
    db: &DatabaseConnection,
    cmd: &ReleaseInventory,
    ctx: &CommandContext,
) -> Result<(), StepError> {
    for _ in 0..RACE_ATTEMPTS {
        match try_release(db, cmd.order_id).await {
            Ok(true) => return Ok(()),
            Ok(false) => tracing::debug!("release_inventory raced a concurrent writer; re-reading"),
            Err(e) => return Err(db_failure("inventory", ctx, cmd.order_id, &e)),
        }
    }
    Err(StepError::retryable(format!(
        "reservation for order {} changed concurrently",
        cmd.order_id
    )))
}

/// One release attempt; `false` when a concurrent writer won a race (try again).
async fn try_release(db: &DatabaseConnection, order_id: Uuid) -> Result<bool, DbErr> {
    let now = Utc::now();
    let txn = db.begin().await?;
    let existing = reservations::Entity::find()
        .filter(reservations::Column::OrderId.eq(order_id))
        .one(&txn)
        .await?;
    let done = match existing {
        Some(reservation) if reservation.status == ReservationStatus::Released => {
            tracing::debug!("reservation already released");
            true
        }
        Some(reservation) => {
            // The conditional update takes the row lock: of two concurrent
            // releases, only one gives the stock back.
            let updated = reservations::Entity::update_many()
                .col_expr(
                    reservations::Column::Status,
                    Expr::value(ReservationStatus::Released.as_str()),
                )
                .col_expr(reservations::Column::UpdatedAt, Expr::value(now))
                .filter(reservations::Column::Id.eq(reservation.id))
                .filter(reservations::Column::Status.eq(ReservationStatus::Reserved))
                .exec(&txn)
                .await?;
            if updated.rows_affected == 1 {
                let mut items = reservation.items.0;
                items.sort_by_key(|item| item.product_id);
                for item in &items {
                    let restored = move_stock(item.product_id, item.quantity)
                        .exec(&txn)
                        .await?;
                    if restored.rows_affected == 0 {
                        tracing::warn!(product_id = %item.product_id, quantity = item.quantity, "released stock of a product that no longer exists");
                    }
                }
                tracing::info!(lines = items.len(), "inventory released");
                true
            } else {
                false
            }
        }
        None => {
            // Release before reserve: a tombstone refuses a late reserve_inventory.
            let tombstone = reservations::ActiveModel {
                id: Set(Uuid::now_v7()),
                order_id: Set(order_id),
                status: Set(ReservationStatus::Released),
                items: Set(ReservedItems::default()),
                created_at: Set(now),
                updated_at: Set(now),
            };
            let result = reservations::Entity::insert(tombstone)
                .on_conflict_do_nothing_on([reservations::Column::OrderId])
                .exec_without_returning(&txn)
                .await?;
            let done = inserted(&result);
            if done {
                tracing::info!("release before any reservation: tombstone written");
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

/// The HTTP routes of the inventory service: `GET /products` (all, or
/// `?ids=a,b`), `GET /products/{id}`, `GET /reservations/{order_id}` and
/// `GET /health`.
pub fn router(db: DatabaseConnection) -> Router {
    Router::new()
        .route("/products", get(list_products))
        .route("/products/{id}", get(get_product))
        .route("/reservations/{order_id}", get(get_reservation))
        .with_state(db)
        .merge(crate::http::health("inventory-service"))
}

/// A product as the HTTP API shows it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ProductView {
    id: Uuid,
    name: String,
    price: Decimal,
    stock: i32,
    version: i32,
}

impl From<products::Model> for ProductView {
    fn from(p: products::Model) -> Self {
        Self {
            id: p.id,
            name: p.name,
            price: money(p.price),
            stock: p.stock,
            version: p.version,
        }
    }
}

/// A reservation as the HTTP API shows it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ReservationView {
    id: Uuid,
    order_id: Uuid,
    status: ReservationStatus,
    items: Vec<ReservedItemView>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

/// A reserved line as the HTTP API shows it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ReservedItemView {
    product_id: Uuid,
    quantity: i32,
}

impl From<reservations::Model> for ReservationView {
    fn from(r: reservations::Model) -> Self {
        Self {
            id: r.id,
            order_id: r.order_id,
            status: r.status,
            items: r
                .items
                .0
                .into_iter()
                .map(|item| ReservedItemView {
                    product_id: item.product_id,
                    quantity: item.quantity,
                })
                .collect(),
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

/// Query of `GET /products`.
#[derive(Debug, Deserialize)]
struct ProductsParams {
    /// Comma-separated product ids; absent: all products.
    ids: Option<String>,
}

async fn list_products(
    State(db): State<DatabaseConnection>,
    Query(params): Query<ProductsParams>,
) -> Result<AppJson<Vec<ProductView>>, ApiError> {
    let mut query = products::Entity::find();
    if let Some(ids) = params.ids.as_deref() {
        let ids = ids
            .split(',')
            .filter(|id| !id.trim().is_empty())
            .map(|id| parse_id(id, "product id"))
            .collect::<Result<Vec<_>, _>>()?;
        query = query.filter(products::Column::Id.is_in(ids));
    }
    let products = query
        .order_by_asc(products::Column::Name)
        .order_by_asc(products::Column::Id)
        .all(&db)
        .await?;
    Ok(AppJson(products.into_iter().map(Into::into).collect()))
}

async fn get_product(
    State(db): State<DatabaseConnection>,
    Path(id): Path<String>,
) -> Result<AppJson<ProductView>, ApiError> {
    let id = parse_id(&id, "product id")?;
    products::Entity::find_by_id(id)
        .one(&db)
        .await?
        .map(|p| AppJson(p.into()))
        .ok_or_else(|| ApiError::not_found(format!("product {id} not found")))
}

async fn get_reservation(
    State(db): State<DatabaseConnection>,
    Path(order_id): Path<String>,
) -> Result<AppJson<ReservationView>, ApiError> {
    let order_id = parse_id(&order_id, "order id")?;
    reservations::Entity::find()
        .filter(reservations::Column::OrderId.eq(order_id))
        .one(&db)
        .await?
        .map(|r| AppJson(r.into()))
        .ok_or_else(|| ApiError::not_found(format!("no reservation for order {order_id}")))
}

#[cfg(test)]
mod tests;
