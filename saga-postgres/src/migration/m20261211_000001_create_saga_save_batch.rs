use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub(super) struct Migration;

/// The batched save as a function whose plan never scans `saga_state`.
///
/// A batch save updates the rows of several sagas by primary key in one
/// statement. Sent as a prepared statement, it got a generic plan (after five
/// runs) made for the table as it was then: on a fresh table, a few pages, for
/// which a sequential scan feeding a hash join is cheapest. That plan was kept
/// until the next `ANALYZE` of `saga_state` (autovacuum's first one comes
/// about a minute after the writes start), so every save read the whole
/// table: on the benchmark, 0.5 ms of Postgres CPU per checkout.
/// `SET enable_seqscan = off` for the function pins the plan to the primary
/// key (a bitmap scan of the batch's ids) whatever the table's size or
/// statistics; PL/pgSQL keeps the plan per connection.
///
/// The statement: every row of the batch whose version is the expected one
/// is updated and the log entries of exactly those rows appended; returns
/// their ids. (`jsonb_to_recordset` turns a JSON `null` into SQL NULL; the
/// COALESCEs store it back as the JSON `null` it was.)
const CREATE_FUNCTION: &str = r#"
CREATE OR REPLACE FUNCTION saga_save_batch(batch jsonb) RETURNS SETOF uuid
LANGUAGE plpgsql
SET enable_seqscan = off
AS $fn$
BEGIN
    RETURN QUERY
WITH input AS (
    SELECT * FROM jsonb_to_recordset(batch) AS i(
        id uuid, saga_type text, definition_version integer, status text, current_step integer,
        phase text, attempt integer, waiting text, uncertain boolean, round_from integer,
        key_from integer, refused boolean, steps jsonb, data jsonb,
        error text, idempotency_key text, version bigint, next_wake_at timestamptz,
        deadline_at timestamptz, log_seq bigint, created_at timestamptz, updated_at timestamptz,
        expected bigint, logs jsonb)
), updated AS (
    UPDATE saga_state s SET saga_type = i.saga_type, definition_version = i.definition_version,
        status = i.status, current_step = i.current_step, phase = i.phase, attempt = i.attempt,
        waiting = i.waiting, uncertain = i.uncertain, round_from = i.round_from,
        key_from = i.key_from, refused = i.refused, steps = i.steps,
        data = COALESCE(i.data, 'null'), error = i.error, idempotency_key = i.idempotency_key,
        version = i.version, next_wake_at = i.next_wake_at, deadline_at = i.deadline_at,
        log_seq = i.log_seq, created_at = i.created_at, updated_at = i.updated_at,
        lease_owner = NULL, lease_until = NULL
    FROM input i
    -- `= ANY(ARRAY(...))` hands the planner the batch's ids to look up in
    -- the primary key: without it, `s.id = i.id` alone leaves a join with
    -- saga_state read whole as the only plan, sequential scan or not.
    WHERE s.id = ANY(ARRAY(SELECT id FROM input)) AND s.id = i.id AND s.version = i.expected
    RETURNING s.id
), logged AS (
    INSERT INTO saga_logs (saga_id, seq, event, step, attempt, payload, created_at)
    SELECT i.id, l.seq, l.event, l.step, l.attempt, COALESCE(l.payload, 'null'), l.created_at
    FROM input i JOIN updated u ON u.id = i.id
    CROSS JOIN LATERAL jsonb_to_recordset(i.logs)
        AS l(seq bigint, event text, step text, attempt integer, payload jsonb, created_at timestamptz)
)
SELECT id FROM updated;
END
$fn$"#;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(CREATE_FUNCTION)
            .await
            .map(|_| ())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared("DROP FUNCTION IF EXISTS saga_save_batch(jsonb)")
            .await
            .map(|_| ())
    }
}
