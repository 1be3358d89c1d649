//! The invariants checked after a run, across the three services' databases.
//!
//! - **No PENDING order left**: every saga finished (after a bounded drain).
//! - **Stock conservation**: per product, the stock at the start minus the
//!   stock at the end equals the units held by `RESERVED` reservations, and no
//!   stock is negative.
//! - **One SUCCESS payment per confirmed order**, and none for any other order.
//! - **Confirmed orders hold their stock**: a `RESERVED` reservation whose
//!   lines equal the order's lines.
//! - **Nothing held for a cancelled order**: no `RESERVED` reservation and no
//!   unrefunded (`SUCCESS`) payment.
//! - **Client outcomes match the databases**: confirmed orders = successes
//!   seen by the clients, cancelled orders = compensations (when no request
//!   ended in an error, whose saga may have gone either way).
//!
//! Against a stack that existed before the run, only orders, reservations and
//! payments created since the run started are read, and the stock check
//! assumes nothing else changed stock during the run.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use chrono::{DateTime, Utc};
use sea_orm::{
    ColumnTrait, DatabaseConnection, EntityTrait, PaginatorTrait, QueryFilter, QuerySelect,
    RelationTrait,
};
use serde::Serialize;
use tokio::time::Instant;
use uuid::Uuid;

use super::StackDbs;
use super::load::Totals;
use crate::error::Result;
use crate::inventory::entity::{products, reservations};
use crate::order::entity::{order_items, orders};
use crate::payment::entity::payments;

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

fn check(name: &str, violations: &[String], ok_detail: String) -> Check {
    Check {
        name: name.to_owned(),
        ok: violations.is_empty(),
        detail: if violations.is_empty() {
            ok_detail
        } else {
            let shown: Vec<&str> = violations.iter().take(5).map(String::as_str).collect();
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
pub(crate) async fn check_all(
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
    let after = stock(&dbs.inventory).await?;

    let status: HashMap<Uuid, orders::OrderStatus> =
        orders.iter().map(|o| (o.id, o.status)).collect();
    let count = |s| orders.iter().filter(|o| o.status == s).count() as u64;
    let confirmed = count(orders::OrderStatus::Confirmed);
    let cancelled = count(orders::OrderStatus::Cancelled);
    let pending_left = count(orders::OrderStatus::Pending);

    let mut lines: HashMap<Uuid, BTreeMap<Uuid, i64>> = HashMap::new();
    for item in &items {
        *lines
            .entry(item.order_id)
            .or_default()
            .entry(item.product_id)
            .or_default() += i64::from(item.quantity);
    }
    let reservation_of: HashMap<Uuid, &reservations::Model> =
        reservations.iter().map(|r| (r.order_id, r)).collect();
    let payment_of: HashMap<Uuid, &payments::Model> =
        payments.iter().map(|p| (p.order_id, p)).collect();
    let held = |r: &reservations::Model| -> BTreeMap<Uuid, i64> {
        let mut m = BTreeMap::new();
        for i in &r.items.0 {
            *m.entry(i.product_id).or_default() += i64::from(i.quantity);
        }
        m
    };
    let is_reserved =
        |r: &&reservations::Model| r.status == reservations::ReservationStatus::Reserved;

    let mut checks = Vec::new();

    // No PENDING order.
    let pending_ids: Vec<String> = orders
        .iter()
        .filter(|o| o.status == orders::OrderStatus::Pending)
        .map(|o| format!("order {} PENDING", o.id))
        .collect();
    checks.push(check(
        "no PENDING order left",
        &pending_ids,
        format!(
            "{} orders: {confirmed} confirmed, {cancelled} cancelled",
            orders.len()
        ),
    ));

    // Stock conservation.
    let mut reserved: BTreeMap<Uuid, i64> = BTreeMap::new();
    for r in reservations.iter().filter(is_reserved) {
        for (product, q) in held(r) {
            *reserved.entry(product).or_default() += q;
        }
    }
    let mut violations = Vec::new();
    for (product, start) in before {
        let end = after.get(product).copied().unwrap_or_default();
        let held = reserved.get(product).copied().unwrap_or_default();
        if start - end != held || end < 0 {
            violations.push(format!(
                "product {product}: start {start}, end {end}, held by reservations {held}"
            ));
        }
    }
    let units: i64 = reserved.values().sum();
    checks.push(check(
        "stock conservation",
        &violations,
        format!(
            "{} products: start - end = units held by RESERVED reservations ({units})",
            before.len()
        ),
    ));

    // One SUCCESS payment per confirmed order, none for any other.
    let mut violations = Vec::new();
    for o in orders
        .iter()
        .filter(|o| o.status == orders::OrderStatus::Confirmed)
    {
        match payment_of.get(&o.id) {
            Some(p) if p.status == payments::PaymentStatus::Success => {}
            Some(p) => violations.push(format!(
                "confirmed order {} has payment {}",
                o.id,
                p.status.as_str()
            )),
            None => violations.push(format!("confirmed order {} has no payment", o.id)),
        }
    }
    for p in payments
        .iter()
        .filter(|p| p.status == payments::PaymentStatus::Success)
    {
        if status.get(&p.order_id) != Some(&orders::OrderStatus::Confirmed) {
            violations.push(format!(
                "SUCCESS payment {} for order {} that is not confirmed",
                p.id, p.order_id
            ));
        }
    }
    checks.push(check(
        "one SUCCESS payment per confirmed order",
        &violations,
        format!("{confirmed} confirmed orders, {confirmed} SUCCESS payments"),
    ));

    // Confirmed orders hold exactly their lines.
    let mut violations = Vec::new();
    for o in orders
        .iter()
        .filter(|o| o.status == orders::OrderStatus::Confirmed)
    {
        match reservation_of
            .get(&o.id)
            .copied()
            .filter(|r| is_reserved(r))
        {
            Some(r) if Some(&held(r)) == lines.get(&o.id) => {}
            Some(_) => violations.push(format!(
                "confirmed order {}: reservation differs from its lines",
                o.id
            )),
            None => violations.push(format!("confirmed order {} holds no reservation", o.id)),
        }
    }
    checks.push(check(
        "confirmed orders hold their stock",
        &violations,
        format!("{confirmed} RESERVED reservations equal their order's lines"),
    ));

    // Nothing held for cancelled (or unknown) orders.
    let mut violations = Vec::new();
    for o in orders
        .iter()
        .filter(|o| o.status == orders::OrderStatus::Cancelled)
    {
        if reservation_of.get(&o.id).is_some_and(is_reserved) {
            violations.push(format!("cancelled order {} still holds stock", o.id));
        }
        if payment_of
            .get(&o.id)
            .is_some_and(|p| p.status == payments::PaymentStatus::Success)
        {
            violations.push(format!(
                "cancelled order {} has an unrefunded payment",
                o.id
            ));
        }
    }
    for r in reservations.iter().filter(is_reserved) {
        if !status.contains_key(&r.order_id) {
            violations.push(format!(
                "reservation {} for unknown order {}",
                r.id, r.order_id
            ));
        }
    }
    checks.push(check(
        "no reservation or unrefunded payment on a cancelled order",
        &violations,
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
        &violations,
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
        pending: pending_left.max(still_pending),
        checks,
    })
}
