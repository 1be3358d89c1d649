//! `reserve_inventory` on PostgreSQL: one call of the function
//! `inventory_reserve`, and the migration that creates it.
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
//! Only on PostgreSQL; on SQLite (in process, no round trips) the service
//! runs the steps itself and this migration does nothing.
use chrono::{DateTime, Utc};
use saga_core::StepError;
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, RuntimeErr, Statement};
use sea_orm_migration::prelude::*;
use uuid::Uuid;

use super::entity::reservations::ReservedItems;

/// SQLSTATE of a business refusal raised by `inventory_reserve`.
const REFUSED: &str = "CK001";
/// SQLSTATE of a reservation that lost too many version checks (retryable).
const CONTENDED: &str = "CK002";

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
        "SELECT inventory_reserve($1, $2, $3, $4, $5::integer) AS id",
        [
            id.into(),
            order_id.into(),
            items.into(),
            now.into(),
            i64::from(rounds).into(),
        ],
    );
    match db.query_one_raw(call).await {
        Ok(Some(row)) => Ok(Ok(row.try_get::<Uuid>("", "id")?)),
        Ok(None) => Err(DbErr::RecordNotFound(
            "inventory_reserve returned no row".into(),
        )),
        Err(e) => match raised(&e) {
            Some((REFUSED, message)) => Ok(Err(StepError::business(message))),
            Some((CONTENDED, message)) => Ok(Err(StepError::retryable(message))),
            _ => Err(e),
        },
    }
}

/// The SQLSTATE and message of an error the server raised.
fn raised(error: &DbErr) -> Option<(&str, String)> {
    let (DbErr::Query(RuntimeErr::SqlxError(e)) | DbErr::Exec(RuntimeErr::SqlxError(e))) = error
    else {
        return None;
    };
    let sea_orm::sqlx::Error::Database(db) = e.as_ref() else {
        return None;
    };
    let code = match db.code()?.as_ref() {
        REFUSED => REFUSED,
        CONTENDED => CONTENDED,
        _ => return None,
    };
    Some((code, db.message().to_owned()))
}

/// `inventory_reserve(id, order_id, items, now, rounds)`: the reservation's
/// id (`id`, or the existing reservation's for a duplicate), or an error
/// whose SQLSTATE says why nothing was taken: `CK001` a business refusal
/// (unknown product, stock short, reservation released), `CK002` contention
/// (`rounds` version-checked updates of one product all lost). Both roll the
/// whole statement back.
///
/// The steps, with the answers the service gives on SQLite: insert the
/// reservation (`ON CONFLICT (order_id) DO NOTHING`; a duplicate is answered
/// from the existing row, a released one refused), then, product by product
/// in product-id order (the order every reservation locks them in): read
/// it, refuse if it is unknown or short, and take the stock with
/// `UPDATE ... WHERE version = v AND stock >= q`; when the version moved,
/// read it again (a volatile function takes a new snapshot per statement)
/// and try again. A refusal after some products were taken rolls them back
/// with the statement, so the result is the service's all-or-nothing:
/// nothing is written.
const CREATE_FUNCTION: &str = r#"
CREATE OR REPLACE FUNCTION inventory_reserve(
    p_id uuid, p_order_id uuid, p_items jsonb, p_now timestamptz, p_rounds integer)
RETURNS uuid
LANGUAGE plpgsql
AS $fn$
DECLARE
    existing reservations%ROWTYPE;
    line record;
    product products%ROWTYPE;
    lost integer;
BEGIN
    INSERT INTO reservations (id, order_id, status, items, created_at, updated_at)
    VALUES (p_id, p_order_id, 'RESERVED', p_items, p_now, p_now)
    ON CONFLICT (order_id) DO NOTHING;
    IF NOT FOUND THEN
        SELECT * INTO existing FROM reservations WHERE order_id = p_order_id;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'reservation for order % changed concurrently', p_order_id
                USING ERRCODE = 'CK002';
        END IF;
        IF existing.status = 'RELEASED' THEN
            RAISE EXCEPTION 'reservation for order % was released', p_order_id
                USING ERRCODE = 'CK001';
        END IF;
        RETURN existing.id;
    END IF;
    FOR line IN
        SELECT l.product_id, l.quantity
        FROM jsonb_to_recordset(p_items) AS l(product_id uuid, quantity integer)
        ORDER BY l.product_id
    LOOP
        lost := 0;
        LOOP
            SELECT * INTO product FROM products WHERE id = line.product_id;
            IF NOT FOUND THEN
                RAISE EXCEPTION 'unknown product %', line.product_id USING ERRCODE = 'CK001';
            END IF;
            IF product.stock < line.quantity THEN
                RAISE EXCEPTION 'insufficient stock for %: requested %, available %',
                    product.name, line.quantity, product.stock USING ERRCODE = 'CK001';
            END IF;
            UPDATE products SET stock = stock - line.quantity, version = version + 1
            WHERE id = line.product_id AND version = product.version AND stock >= line.quantity;
            EXIT WHEN FOUND;
            lost := lost + 1;
            IF lost = p_rounds THEN
                RAISE EXCEPTION 'inventory contention' USING ERRCODE = 'CK002';
            END IF;
        END LOOP;
    END LOOP;
    RETURN p_id;
END
$fn$"#;

/// Creates `inventory_reserve` on PostgreSQL.
pub(super) struct CreateReserveFunction;

impl MigrationName for CreateReserveFunction {
    fn name(&self) -> &str {
        "m20261206_000001_create_inventory_reserve"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for CreateReserveFunction {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() != DbBackend::Postgres {
            return Ok(());
        }
        manager
            .get_connection()
            .execute_unprepared(CREATE_FUNCTION)
            .await
            .map(|_| ())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() != DbBackend::Postgres {
            return Ok(());
        }
        manager
            .get_connection()
            .execute_unprepared(
                "DROP FUNCTION IF EXISTS inventory_reserve(uuid, uuid, jsonb, timestamptz, integer)",
            )
            .await
            .map(|_| ())
    }
}
