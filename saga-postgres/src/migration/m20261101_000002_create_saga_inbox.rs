use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub(super) struct Migration;

#[derive(DeriveIden)]
enum SagaInbox {
    Table,
    IdempotencyKey,
    Outcome,
    CreatedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(SagaInbox::Table)
                    .col(
                        ColumnDef::new(SagaInbox::IdempotencyKey)
                            .text()
                            .not_null()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(SagaInbox::Outcome).json_binary().null())
                    .col(
                        ColumnDef::new(SagaInbox::CreatedAt)
                            .timestamp_with_time_zone()
                            .not_null()
                            .default(Expr::current_timestamp()),
                    )
                    .to_owned(),
            )
            .await?;
        // For pruning old records.
        manager
            .create_index(
                Index::create()
                    .name("saga_inbox_created_idx")
                    .table(SagaInbox::Table)
                    .col(SagaInbox::CreatedAt)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(SagaInbox::Table).to_owned())
            .await
    }
}
