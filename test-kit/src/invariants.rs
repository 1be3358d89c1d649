//! The invariants checked after a run, across the three services' databases
//! (the benchmark's report and the fault suite's figures read the same
//! checks).
//!
//! - **No PENDING order left**: every saga finished (after a bounded drain).
//! - **Stock conservation**: per product, the stock at the start minus the
//!   stock at the end equals the units held by `RESERVED` reservations and
//!   the units of confirmed orders, and no stock is negative.
//! - **One SUCCESS payment per confirmed order**, none for an order that is
//!   neither confirmed nor cancelled, and never two payments for one order.
//! - **Confirmed orders hold their stock**: a `RESERVED` reservation whose
//!   lines equal the order's lines.
//! - **Nothing held for a cancelled order**: no `RESERVED` reservation and no
//!   unrefunded (`SUCCESS`) payment; and no `RESERVED` reservation for an
//!   order that is neither confirmed nor cancelled.
//! - **Client outcomes match the databases**: confirmed orders = successes
//!   seen by the clients, cancelled orders = compensations (when no request
//!   ended in an error, whose saga may have gone either way).
//!
//! Against a stack that existed before the run, only orders, reservations and
//! payments created since the run started are read, and the stock check
//! assumes nothing else changed stock during the run.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use checkout_app::error::Result;
use checkout_app::inventory::entity::{products, reservations};
use checkout_app::order::entity::{order_items, orders};
use checkout_app::payment::entity::payments;
use chrono::{DateTime, Utc};
use sea_orm::{
    ColumnTrait, DatabaseConnection, EntityTrait, PaginatorTrait, QueryFilter, QuerySelect,
    RelationTrait,
};
use serde::Serialize;
use tokio::time::Instant;
use uuid::Uuid;

use crate::load::Totals;

/// The databases the invariant checks read.
#[derive(Clone, Debug)]
pub struct StackDbs {
    /// The order service's database.
    pub orders: DatabaseConnection,
    /// The inventory service's database.
    pub inventory: DatabaseConnection,
    /// The payment service's database.
    pub payments: DatabaseConnection,
}

/// One invariant and whether it held.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    /// What is checked.
    pub name: String,
    /// Whether it held.
    pub ok: bool,
    /// Counts, or the first violations.
    pub detail: String,
}

/// The outcome of the checks.
#[derive(Clone, Debug, Serialize)]
pub struct Invariants {
    /// Which rows were checked.
    pub scope: String,
    /// How long the drain waited for PENDING orders to finish, in ms.
    pub drain_ms: u64,
    /// Confirmed orders.
    pub confirmed: u64,
    /// Cancelled orders.
    pub cancelled: u64,
    /// Orders still pending (0 when all is well).
    pub pending: u64,
    /// The checks.
    pub checks: Vec<Check>,
}

impl Invariants {
    /// Whether every check held.
    #[must_use]
    pub fn all_hold(&self) -> bool {
        self.checks.iter().all(|c| c.ok)
    }
}

/// Stock per product.
///
/// # Errors
/// A database error.
pub async fn stock(db: &DatabaseConnection) -> Result<BTreeMap<Uuid, i64>> {
    Ok(products::Entity::find()
        .all(db)
        .await?
        .into_iter()
        .map(|p| (p.id, i64::from(p.stock)))
        .collect())
}

async fn pending(dbs: &StackDbs, since: Option<DateTime<Utc>>) -> Result<u64> {
    let mut query =
        orders::Entity::find().filter(orders::Column::Status.eq(orders::OrderStatus::Pending));
    if let Some(t) = since {
        query = query.filter(orders::Column::CreatedAt.gte(t));
    }
    Ok(query.count(&dbs.orders).await?)
}

/// The rows the checks read.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// Every order.
    pub orders: Vec<orders::Model>,
    /// Units per product of every order's lines.
    pub lines: HashMap<Uuid, BTreeMap<Uuid, i64>>,
    /// Every reservation.
    pub reservations: Vec<reservations::Model>,
    /// Every payment.
    pub payments: Vec<payments::Model>,
    /// The stock of every product now.
    pub stock: BTreeMap<Uuid, i64>,
}

impl Snapshot {
    /// Reads the rows; `since`, when set, limits them to rows created from
    /// then on (the stock is always read whole).
    ///
    /// # Errors
    /// A database error.
    pub async fn read(dbs: &StackDbs, since: Option<DateTime<Utc>>) -> Result<Self> {
        let mut order_query = orders::Entity::find();
        let mut item_query = order_items::Entity::find().join(
            sea_orm::JoinType::InnerJoin,
            order_items::Relation::Order.def(),
        );
        let mut reservation_query = reservations::Entity::find();
        let mut payment_query = payments::Entity::find();
        if let Some(t) = since {
            order_query = order_query.filter(orders::Column::CreatedAt.gte(t));
            item_query = item_query.filter(orders::Column::CreatedAt.gte(t));
            reservation_query = reservation_query.filter(reservations::Column::CreatedAt.gte(t));
            payment_query = payment_query.filter(payments::Column::CreatedAt.gte(t));
        }
        let orders = order_query.all(&dbs.orders).await?;
        let items = item_query.all(&dbs.orders).await?;
        let reservations = reservation_query.all(&dbs.inventory).await?;
        let payments = payment_query.all(&dbs.payments).await?;
        let stock = stock(&dbs.inventory).await?;
        let mut lines: HashMap<Uuid, BTreeMap<Uuid, i64>> = HashMap::new();
        for item in &items {
            *lines
                .entry(item.order_id)
                .or_default()
                .entry(item.product_id)
                .or_default() += i64::from(item.quantity);
        }
        Ok(Self {
            orders,
            lines,
            reservations,
            payments,
            stock,
        })
    }
}

/// What the checks found in a [`Snapshot`]: counts, and every violation by
/// kind (an empty list is an invariant that holds).
#[derive(Clone, Debug, Default)]
pub struct Findings {
    /// Orders per status (`CONFIRMED`, `CANCELLED`, `PENDING`).
    pub orders: BTreeMap<String, i64>,
    /// Confirmed orders.
    pub confirmed: u64,
    /// Cancelled orders.
    pub cancelled: u64,
    /// Orders still pending.
    pub pending: u64,
    /// Units the stock went down by (start - end, over every product).
    pub units_taken: i64,
    /// Units held by `RESERVED` reservations.
    pub units_held: i64,
    /// Units of confirmed orders.
    pub units_confirmed: i64,
    /// Orders still pending.
    pub pending_orders: Vec<String>,
    /// Products whose stock is not conserved, or negative.
    pub stock: Vec<String>,
    /// Confirmed orders without exactly one `SUCCESS` payment.
    pub confirmed_without_one_success: Vec<String>,
    /// Confirmed orders without a `RESERVED` reservation of their lines.
    pub confirmed_without_reservation: Vec<String>,
    /// Cancelled orders whose reservation still holds stock.
    pub cancelled_with_reservation: Vec<String>,
    /// Cancelled orders with a `SUCCESS` payment.
    pub cancelled_with_unrefunded_payment: Vec<String>,
    /// `RESERVED` reservations of orders neither confirmed nor cancelled.
    pub orphan_reservations: Vec<String>,
    /// `SUCCESS` payments of orders neither confirmed nor cancelled.
    pub orphan_payments: Vec<String>,
    /// Orders with more than one payment.
    pub orders_with_two_payments: Vec<String>,
}

impl Findings {
    /// Checks `rows` against `before`, the stock at the start.
    #[must_use]
    pub fn new(before: &BTreeMap<Uuid, i64>, rows: &Snapshot) -> Self {
        use orders::OrderStatus::{Cancelled, Confirmed, Pending};
        let mut found = Self::default();
        let status: HashMap<Uuid, orders::OrderStatus> =
            rows.orders.iter().map(|o| (o.id, o.status)).collect();
        for o in &rows.orders {
            *found
                .orders
                .entry(o.status.as_str().to_owned())
                .or_insert(0) += 1;
        }
        let count = |s| rows.orders.iter().filter(|o| o.status == s).count() as u64;
        found.confirmed = count(Confirmed);
        found.cancelled = count(Cancelled);
        found.pending = count(Pending);
        let settled = |order: &Uuid| matches!(status.get(order), Some(Confirmed | Cancelled));

        let reservation_of: HashMap<Uuid, &reservations::Model> =
            rows.reservations.iter().map(|r| (r.order_id, r)).collect();
        let mut payments_of: HashMap<Uuid, Vec<&payments::Model>> = HashMap::new();
        for p in &rows.payments {
            payments_of.entry(p.order_id).or_default().push(p);
        }
        let held = |r: &reservations::Model| -> BTreeMap<Uuid, i64> {
            let mut m = BTreeMap::new();
            for i in &r.items.0 {
                *m.entry(i.product_id).or_default() += i64::from(i.quantity);
            }
            m
        };
        let is_reserved =
            |r: &&reservations::Model| r.status == reservations::ReservationStatus::Reserved;
        let success = |p: &&&payments::Model| p.status == payments::PaymentStatus::Success;

        found.pending_orders = rows
            .orders
            .iter()
            .filter(|o| o.status == Pending)
            .map(|o| format!("order {} PENDING", o.id))
            .collect();

        // Stock conservation.
        let mut reserved: BTreeMap<Uuid, i64> = BTreeMap::new();
        for r in rows.reservations.iter().filter(is_reserved) {
            for (product, q) in held(r) {
                *reserved.entry(product).or_default() += q;
            }
        }
        let mut confirmed_units: BTreeMap<Uuid, i64> = BTreeMap::new();
        for o in rows.orders.iter().filter(|o| o.status == Confirmed) {
            for (product, q) in rows.lines.get(&o.id).into_iter().flatten() {
                *confirmed_units.entry(*product).or_default() += q;
            }
        }
        for (product, start) in before {
            let end = rows.stock.get(product).copied().unwrap_or_default();
            let held = reserved.get(product).copied().unwrap_or_default();
            let confirmed = confirmed_units.get(product).copied().unwrap_or_default();
            found.units_taken += start - end;
            if start - end != held || start - end != confirmed || end < 0 {
                found.stock.push(format!(
                    "product {product}: start {start}, end {end}, held by reservations {held}, \
                     in confirmed orders {confirmed}"
                ));
            }
        }
        found.units_held = reserved.values().sum();
        found.units_confirmed = confirmed_units.values().sum();

        for o in &rows.orders {
            let paid = payments_of
                .get(&o.id)
                .map(Vec::as_slice)
                .unwrap_or_default();
            let successes = paid.iter().filter(success).count();
            let reservation = reservation_of
                .get(&o.id)
                .copied()
                .filter(|r| is_reserved(r));
            match o.status {
                Confirmed => {
                    if successes != 1 {
                        found
                            .confirmed_without_one_success
                            .push(if paid.is_empty() {
                                format!("confirmed order {} has no payment", o.id)
                            } else {
                                let statuses: Vec<&str> =
                                    paid.iter().map(|p| p.status.as_str()).collect();
                                format!(
                                    "confirmed order {} has payment {}",
                                    o.id,
                                    statuses.join(", ")
                                )
                            });
                    }
                    match reservation {
                        Some(r) if Some(&held(r)) == rows.lines.get(&o.id) => {}
                        Some(_) => found.confirmed_without_reservation.push(format!(
                            "confirmed order {}: reservation differs from its lines",
                            o.id
                        )),
                        None => found
                            .confirmed_without_reservation
                            .push(format!("confirmed order {} holds no reservation", o.id)),
                    }
                }
                Cancelled => {
                    if reservation.is_some() {
                        found
                            .cancelled_with_reservation
                            .push(format!("cancelled order {} still holds stock", o.id));
                    }
                    if successes > 0 {
                        found.cancelled_with_unrefunded_payment.push(format!(
                            "cancelled order {} has an unrefunded payment",
                            o.id
                        ));
                    }
                }
                Pending => {}
            }
        }
        for r in rows.reservations.iter().filter(is_reserved) {
            if !settled(&r.order_id) {
                found.orphan_reservations.push(format!(
                    "RESERVED reservation {} for order {} that is neither confirmed nor cancelled",
                    r.id, r.order_id
                ));
            }
        }
        for p in rows.payments.iter().filter(|p| success(&p)) {
            if !settled(&p.order_id) {
                found.orphan_payments.push(format!(
                    "SUCCESS payment {} for order {} that is neither confirmed nor cancelled",
                    p.id, p.order_id
                ));
            }
        }
        for (order, paid) in &payments_of {
            if paid.len() > 1 {
                found
                    .orders_with_two_payments
                    .push(format!("order {order} has {} payments", paid.len()));
            }
        }
        found
    }
}

fn check(name: &str, violations: &[&[String]], ok_detail: String) -> Check {
    let violations: Vec<&String> = violations.iter().flat_map(|v| v.iter()).collect();
    Check {
        name: name.to_owned(),
        ok: violations.is_empty(),
        detail: if violations.is_empty() {
            ok_detail
        } else {
            let shown: Vec<&str> = violations.iter().take(5).map(|v| v.as_str()).collect();
            format!("{} violation(s): {}", violations.len(), shown.join("; "))
        },
    }
}

/// Waits up to `drain` for PENDING orders to finish, then checks every invariant.
///
/// `before` is the stock at the start; `since`, when set, limits the check to
/// rows created from then on; `totals` are the outcomes the clients saw.
///
/// # Errors
/// A database error (a violated invariant is a failed [`Check`], not an error).
pub async fn check_all(
    dbs: &StackDbs,
    before: &BTreeMap<Uuid, i64>,
    since: Option<DateTime<Utc>>,
    totals: &Totals,
    drain: Duration,
) -> Result<Invariants> {
    let started = Instant::now();
    let deadline = started + drain;
    let mut still_pending = pending(dbs, since).await?;
    while still_pending > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        still_pending = pending(dbs, since).await?;
    }
    let drain_ms = started.elapsed().as_millis() as u64;

    let rows = Snapshot::read(dbs, since).await?;
    let found = Findings::new(before, &rows);
    let (confirmed, cancelled) = (found.confirmed, found.cancelled);

    let mut checks = Vec::new();
    checks.push(check(
        "no PENDING order left",
        &[&found.pending_orders],
        format!(
            "{} orders: {confirmed} confirmed, {cancelled} cancelled",
            rows.orders.len()
        ),
    ));
    checks.push(check(
        "stock conservation",
        &[&found.stock],
        format!(
            "{} products: start - end = units held by RESERVED reservations ({}) = units of confirmed orders ({})",
            before.len(),
            found.units_held,
            found.units_confirmed
        ),
    ));
    checks.push(check(
        "one SUCCESS payment per confirmed order",
        &[
            &found.confirmed_without_one_success,
            &found.orphan_payments,
            &found.orders_with_two_payments,
        ],
        format!("{confirmed} confirmed orders, {confirmed} SUCCESS payments"),
    ));
    checks.push(check(
        "confirmed orders hold their stock",
        &[&found.confirmed_without_reservation],
        format!("{confirmed} RESERVED reservations equal their order's lines"),
    ));
    checks.push(check(
        "no reservation or unrefunded payment on a cancelled order",
        &[
            &found.cancelled_with_reservation,
            &found.cancelled_with_unrefunded_payment,
            &found.orphan_reservations,
        ],
        format!("{cancelled} cancelled orders checked"),
    ));

    // The clients' view agrees with the databases.
    let mut violations = Vec::new();
    let detail = if totals.errors > 0 {
        format!(
            "not compared: {} request(s) ended in an error; databases: {confirmed} confirmed, {cancelled} cancelled",
            totals.errors
        )
    } else {
        if confirmed != totals.succeeded {
            violations.push(format!(
                "{confirmed} confirmed orders, {} successes seen",
                totals.succeeded
            ));
        }
        if cancelled != totals.compensated {
            violations.push(format!(
                "{cancelled} cancelled orders, {} compensations seen",
                totals.compensated
            ));
        }
        format!(
            "{} successes = {confirmed} confirmed, {} compensations = {cancelled} cancelled",
            totals.succeeded, totals.compensated
        )
    };
    checks.push(check(
        "client outcomes match the databases",
        &[&violations],
        detail,
    ));

    Ok(Invariants {
        scope: match since {
            Some(t) => format!("rows created since {}", t.to_rfc3339()),
            None => "the whole (fresh) databases".to_owned(),
        },
        drain_ms,
        confirmed,
        cancelled,
        pending: found.pending.max(still_pending),
        checks,
    })
}
