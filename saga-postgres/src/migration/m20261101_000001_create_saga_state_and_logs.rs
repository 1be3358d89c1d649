use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub(super) struct Migration;

#[derive(DeriveIden)]
enum SagaState {
    Table,
    Id,
    SagaType,
    DefinitionVersion,
    Status,
    CurrentStep,
    Phase,
    Attempt,
    Waiting,
    Uncertain,
    Steps,
    Data,
    Error,
    IdempotencyKey,
    Version,
    NextWakeAt,
    DeadlineAt,
    LogSeq,
    LeaseOwner,
    LeaseUntil,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum SagaLogs {
    Table,
    SagaId,
    Seq,
    Event,
    Step,
    Attempt,
    Payload,
    CreatedAt,
}

/// Announces terminal sagas on the `saga_finished` channel, in the writing
/// transaction (so only on commit), whoever writes them.
const NOTIFY_FUNCTION: &str = r"
CREATE OR REPLACE FUNCTION saga_notify_finished() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('saga_finished', NEW.id::text);
    RETURN NULL;
END
$$";

const NOTIFY_TRIGGER: &str = r"
CREATE TRIGGER saga_state_finished
    AFTER INSERT OR UPDATE OF status ON saga_state
    FOR EACH ROW
    WHEN (NEW.status IN ('completed', 'compensated', 'failed'))
    EXECUTE FUNCTION saga_notify_finished()";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(SagaState::Table)
                    .col(
                        ColumnDef::new(SagaState::Id)
                            .uuid()
                            .not_null()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(SagaState::SagaType).text().not_null())
                    .col(
                        ColumnDef::new(SagaState::DefinitionVersion)
                            .integer()
                            .not_null(),
                    )
                    .col(ColumnDef::new(SagaState::Status).text().not_null())
                    .col(ColumnDef::new(SagaState::CurrentStep).integer().null())
                    .col(ColumnDef::new(SagaState::Phase).text().null())
                    .col(ColumnDef::new(SagaState::Attempt).integer().null())
                    .col(ColumnDef::new(SagaState::Waiting).text().null())
                    .col(
                        ColumnDef::new(SagaState::Uncertain)
                            .boolean()
                            .not_null()
                            .default(false),
                    )
                    .col(ColumnDef::new(SagaState::Steps).json_binary().not_null())
                    .col(ColumnDef::new(SagaState::Data).json_binary().not_null())
                    .col(ColumnDef::new(SagaState::Error).text().null())
                    .col(
                        ColumnDef::new(SagaState::IdempotencyKey)
                            .text()
                            .null()
                            .unique_key(),
                    )
                    .col(ColumnDef::new(SagaState::Version).big_integer().not_null())
                    .col(
                        ColumnDef::new(SagaState::NextWakeAt)
                            .timestamp_with_time_zone()
                            .null(),
                    )
                    .col(
                        ColumnDef::new(SagaState::DeadlineAt)
                            .timestamp_with_time_zone()
                            .null(),
                    )
                    .col(ColumnDef::new(SagaState::LogSeq).big_integer().not_null())
                    .col(ColumnDef::new(SagaState::LeaseOwner).text().null())
                    .col(
                        ColumnDef::new(SagaState::LeaseUntil)
                            .timestamp_with_time_zone()
                            .null(),
                    )
                    .col(
                        ColumnDef::new(SagaState::CreatedAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(SagaState::UpdatedAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .check(Expr::col(SagaState::Status).is_in([
                        "running",
                        "compensating",
                        "completed",
                        "compensated",
                        "failed",
                    ]))
                    .to_owned(),
            )
            .await?;
        // The due-saga query: only sagas with a wake-up time are indexed.
        manager
            .create_index(
                Index::create()
                    .name("saga_state_due_idx")
                    .table(SagaState::Table)
                    .col(SagaState::NextWakeAt)
                    .and_where(Expr::col(SagaState::NextWakeAt).is_not_null())
                    .to_owned(),
            )
            .await?;
        // Operator listings: by status, newest or oldest (stuck) first.
        manager
            .create_index(
                Index::create()
                    .name("saga_state_status_updated_idx")
                    .table(SagaState::Table)
                    .col(SagaState::Status)
                    .col(SagaState::UpdatedAt)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(SagaLogs::Table)
                    .col(ColumnDef::new(SagaLogs::SagaId).uuid().not_null())
                    .col(ColumnDef::new(SagaLogs::Seq).big_integer().not_null())
                    .col(ColumnDef::new(SagaLogs::Event).text().not_null())
                    .col(ColumnDef::new(SagaLogs::Step).text().null())
                    .col(ColumnDef::new(SagaLogs::Attempt).integer().null())
                    .col(ColumnDef::new(SagaLogs::Payload).json_binary().not_null())
                    .col(
                        ColumnDef::new(SagaLogs::CreatedAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .primary_key(Index::create().col(SagaLogs::SagaId).col(SagaLogs::Seq))
                    .foreign_key(
                        ForeignKey::create()
                            .name("saga_logs_saga_id_fkey")
                            .from(SagaLogs::Table, SagaLogs::SagaId)
                            .to(SagaState::Table, SagaState::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        let db = manager.get_connection();
        db.execute_unprepared(NOTIFY_FUNCTION).await?;
        db.execute_unprepared(NOTIFY_TRIGGER).await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(SagaLogs::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(SagaState::Table).to_owned())
            .await?;
        manager
            .get_connection()
            .execute_unprepared("DROP FUNCTION IF EXISTS saga_notify_finished()")
            .await?;
        Ok(())
    }
}
