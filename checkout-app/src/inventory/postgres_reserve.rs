//! `reserve_inventory` on PostgreSQL: one call of the function
//! `inventory_reserve_v1`, which [`super::migrate`] installs.
//!
//! `reserve_inventory` takes stock for every line of an order or for none,
//! checking and bumping each product's `version`. Sent as statements, that is
//! `BEGIN`, the reservation's insert, a read of the products, an update per
//! product (and a read and an update more per lost version check) and
//! `COMMIT`: six or more round trips, with the products' row locks held
//! across the ones after the first update. The function runs the same steps
//! inside the server, in one statement: one round trip, and the locks held
//! only for the statement.
//!
//! The function is not a migration: `migrate` replaces it on every start
//! (`CREATE OR REPLACE`, under the migrations' advisory lock), so a
//! database holds the body of the build that started last. Its name carries
//! a version, and every change of its body must get a new name: then each
//! build, during a rolling deploy too, calls the body it was built with.
//!
//! Only on PostgreSQL; on SQLite (in process, no round trips) the service
//! runs the steps itself.

use chrono::{DateTime, Utc};
use saga_core::StepError;
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, DbErr, RuntimeErr, Statement};
use uuid::Uuid;

use super::entity::reservations::ReservedItems;

/// SQLSTATE of a reservation that lost too many version checks (retryable).
const CONTENDED: &str = "CK002";

/// Drops `inventory_reserve`, the function as a development build of 0.2
/// installed it (by a migration), if it is there.
pub(super) const DROP_FIRST_FUNCTION: &str =
    "DROP FUNCTION IF EXISTS inventory_reserve(uuid, uuid, jsonb, timestamptz, integer)";

/// `inventory_reserve_v1(id, order_id, items, now, rounds)`: one row,
/// `(reservation_id, refusal)`.
///
/// - The reservation's id (`id`, or the existing reservation's for a
///   duplicate) and no refusal; or no id and the business refusal (unknown
///   product, stock short, reservation released), with nothing written. A
///   refusal is an answer, not an error, so a sold-out product does not fill
///   the server's log with errors: one found while taking stock (a product
///   changed by concurrent buyers) is raised inside the function (`CK001`)
///   and caught by the block around the insert and the updates, which undoes
///   them.
/// - Raised, rolling the whole statement back: `CK002` when `rounds`
///   version-checked updates of one product all lost.
///
/// The steps, with the answers the service gives on SQLite: an existing
/// reservation for the order answers (its id, or "released"); otherwise
/// every product is read and checked (a refusal there looks for the
/// reservation once more: a duplicate that committed in between, taking the
/// stock the check found missing, answers instead), the reservation inserted (`ON
/// CONFLICT (order_id) DO NOTHING`: a concurrent twin that committed first is
/// answered from its row), and the stock taken product by product in
/// product-id order (the order releases lock them in too) with `UPDATE ...
/// WHERE version = v AND stock >= q`. When the version moved, the product is
/// read again (under `READ COMMITTED` each statement of a volatile function
/// sees what committed before it), checked again and updated again.
pub(super) const CREATE_FUNCTION: &str = r#"
CREATE OR REPLACE FUNCTION inventory_reserve_v1(
    p_id uuid, p_order_id uuid, p_items jsonb, p_now timestamptz, p_rounds integer)
RETURNS TABLE (reservation_id uuid, refusal text)
LANGUAGE plpgsql
AS $fn$
DECLARE
    existing reservations%ROWTYPE;
    line record;
    product products%ROWTYPE;
    lost integer;
    early text;
BEGIN
    SELECT * INTO existing FROM reservations WHERE order_id = p_order_id;
    IF NOT FOUND THEN
        FOR line IN
            SELECT l.product_id, l.quantity, p.id AS found, p.name, p.stock
            FROM jsonb_to_recordset(p_items) AS l(product_id uuid, quantity integer)
            LEFT JOIN products p ON p.id = l.product_id
            ORDER BY l.product_id
        LOOP
            IF line.found IS NULL THEN
                early := format('unknown product %s', line.product_id);
            ELSIF line.stock < line.quantity THEN
                early := format('insufficient stock for %s: requested %s, available %s',
                    line.name, line.quantity, line.stock);
            END IF;
            EXIT WHEN early IS NOT NULL;
        END LOOP;
        IF early IS NOT NULL THEN
            -- A duplicate that committed after the look-up above may be what
            -- took the stock: its reservation (committed with that stock
            -- change, so visible now) answers, as on SQLite.
            SELECT * INTO existing FROM reservations WHERE order_id = p_order_id;
            IF NOT FOUND THEN
                RETURN QUERY SELECT NULL::uuid, early;
                RETURN;
            END IF;
        ELSE
            -- A refusal found while taking stock (a product changed by concurrent
            -- buyers) undoes the reservation's insert and the stock taken so far
            -- with this block, and is answered, not raised to the client.
            BEGIN
                INSERT INTO reservations (id, order_id, status, items, created_at, updated_at)
                VALUES (p_id, p_order_id, 'RESERVED', p_items, p_now, p_now)
                ON CONFLICT (order_id) DO NOTHING;
                IF FOUND THEN
                    FOR line IN
                        SELECT l.product_id, l.quantity
                        FROM jsonb_to_recordset(p_items) AS l(product_id uuid, quantity integer)
                        ORDER BY l.product_id
                    LOOP
                        lost := 0;
                        LOOP
                            SELECT * INTO product FROM products WHERE id = line.product_id;
                            IF NOT FOUND THEN
                                RAISE EXCEPTION 'unknown product %', line.product_id
                                    USING ERRCODE = 'CK001';
                            END IF;
                            IF product.stock < line.quantity THEN
                                RAISE EXCEPTION 'insufficient stock for %: requested %, available %',
                                    product.name, line.quantity, product.stock USING ERRCODE = 'CK001';
                            END IF;
                            UPDATE products SET stock = stock - line.quantity, version = version + 1
                            WHERE id = line.product_id AND version = product.version
                                AND stock >= line.quantity;
                            EXIT WHEN FOUND;
                            lost := lost + 1;
                            IF lost >= p_rounds THEN
                                RAISE EXCEPTION 'inventory contention' USING ERRCODE = 'CK002';
                            END IF;
                        END LOOP;
                    END LOOP;
                    RETURN QUERY SELECT p_id, NULL::text;
                    RETURN;
                END IF;
            EXCEPTION WHEN SQLSTATE 'CK001' THEN
                RETURN QUERY SELECT NULL::uuid, SQLERRM;
                RETURN;
            END;
            SELECT * INTO existing FROM reservations WHERE order_id = p_order_id;
            IF NOT FOUND THEN
                RAISE EXCEPTION 'reservation for order % changed concurrently', p_order_id
                    USING ERRCODE = 'CK002';
            END IF;
        END IF;
    END IF;
    IF existing.status = 'RELEASED' THEN
        RETURN QUERY SELECT NULL::uuid, format('reservation for order %s was released', p_order_id);
        RETURN;
    END IF;
    RETURN QUERY SELECT existing.id, NULL::text;
END
$fn$"#;

/// Reserves `lines` for `order_id` under the new reservation id `id` with one
/// statement: `Ok(Ok(id))` with the reservation's id (the existing one for a
/// duplicate), `Ok(Err(_))` a refusal or contention (nothing was written),
/// `Err(_)` a database failure.
pub(super) async fn reserve(
    db: &DatabaseConnection,
    id: Uuid,
    order_id: Uuid,
    lines: &ReservedItems,
    now: DateTime<Utc>,
    rounds: u32,
) -> Result<Result<Uuid, StepError>, DbErr> {
    let items = serde_json::to_value(lines).map_err(|e| DbErr::Json(e.to_string()))?;
    let call = Statement::from_sql_and_values(
        DbBackend::Postgres,
        "SELECT reservation_id, refusal FROM inventory_reserve_v1($1, $2, $3, $4, $5::integer)",
        [
            id.into(),
            order_id.into(),
            items.into(),
            now.into(),
            i64::from(rounds).into(),
        ],
    );
    let row = match db.query_one_raw(call).await {
        Ok(Some(row)) => row,
        Ok(None) => {
            return Err(DbErr::RecordNotFound(
                "inventory_reserve_v1 returned no row".into(),
            ));
        }
        Err(e) => {
            return match contended(&e) {
                Some(message) => Ok(Err(StepError::retryable(message))),
                None => Err(e),
            };
        }
    };
    let reservation: Option<Uuid> = row.try_get("", "reservation_id")?;
    let refusal: Option<String> = row.try_get("", "refusal")?;
    match (reservation, refusal) {
        (_, Some(refusal)) => Ok(Err(StepError::business(refusal))),
        (Some(reservation), None) => Ok(Ok(reservation)),
        (None, None) => Err(DbErr::RecordNotFound(
            "inventory_reserve_v1 answered neither a reservation nor a refusal".into(),
        )),
    }
}

/// The message of a `CK002` (contention) raised by `inventory_reserve_v1`.
fn contended(error: &DbErr) -> Option<String> {
    let (DbErr::Query(RuntimeErr::SqlxError(e)) | DbErr::Exec(RuntimeErr::SqlxError(e))) = error
    else {
        return None;
    };
    let sea_orm::sqlx::Error::Database(db) = e.as_ref() else {
        return None;
    };
    (db.code()?.as_ref() == CONTENDED).then(|| db.message().to_owned())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::time::{Duration, Instant};

    use saga_core::StepErrorKind;
    use sea_orm::TransactionTrait;

    use test_kit::cluster::scalar;

    use super::*;
    use crate::inventory::entity::reservations::ReservedItem;

    const STANDARD: Uuid = Uuid::from_u128(0x660facf7_b9cf_417a_8ee1_27afe2fb2c72);

    /// The bound on lost version checks, through the service's call: with
    /// one round, a reservation whose product another transaction changes
    /// while it waits for the row gives up as retryable "inventory
    /// contention" (so the saga retries it, not compensates) and takes
    /// nothing; with the service's bound it waits and wins.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_reservation_that_loses_every_version_check_is_retryable_and_takes_nothing() {
        test_kit::infra::with_fresh_postgres(8, |db| async move {
            crate::inventory::migrate(&db).await.unwrap();
            crate::inventory::seed(&db).await.unwrap();
            let lines = ReservedItems(vec![ReservedItem {
                product_id: STANDARD,
                quantity: 1,
            }]);
            for rounds in [1, 128] {
                // Another writer holds the product (changed, not committed).
                let writer = db.begin().await.unwrap();
                writer
                    .execute_unprepared(&format!(
                        "UPDATE products SET stock = stock - 1, version = version + 1 \
                         WHERE id = '{STANDARD}'"
                    ))
                    .await
                    .unwrap();
                let (db2, lines2) = (db.clone(), lines.clone());
                let reservation = tokio::spawn(async move {
                    let id = Uuid::now_v7();
                    reserve(&db2, id, Uuid::new_v4(), &lines2, Utc::now(), rounds)
                        .await
                        .map(|answer| answer.map(|reserved| (id, reserved)))
                });
                // Commit once the reservation waits for the writer's row lock.
                let waiting = "SELECT count(*) FROM pg_stat_activity \
                               WHERE datname = current_database() AND wait_event_type = 'Lock'";
                let deadline = Instant::now() + Duration::from_secs(30);
                while scalar(&db, waiting).await == 0 {
                    assert!(Instant::now() < deadline, "the reservation never waited");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                writer.commit().await.unwrap();
                let answer = reservation.await.unwrap().expect("no database failure");
                if rounds == 1 {
                    let refusal = answer.expect_err("one round cannot outlast the writer");
                    assert_eq!(refusal.kind, StepErrorKind::Retryable, "{refusal}");
                    assert_eq!(refusal.message, "inventory contention");
                } else {
                    let (id, reserved) = answer.expect("the service's bound outlasts one writer");
                    assert_eq!(reserved, id);
                }
            }
            // The writer's two units and the winner's one; nothing from the
            // reservation that gave up.
            let stock = format!("SELECT stock::bigint FROM products WHERE id = '{STANDARD}'");
            assert_eq!(scalar(&db, &stock).await, 997);
            let version = format!("SELECT version::bigint FROM products WHERE id = '{STANDARD}'");
            assert_eq!(scalar(&db, &version).await, 3);
            assert_eq!(scalar(&db, "SELECT count(*) FROM reservations").await, 1);
        })
        .await;
    }
}
