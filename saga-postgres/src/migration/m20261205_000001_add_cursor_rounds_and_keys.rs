use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub(super) struct Migration;

#[derive(DeriveIden)]
enum SagaState {
    Table,
    RoundFrom,
    KeyFrom,
    Refused,
}

/// The cursor fields of saga-core 0.2: where the current round of attempts and
/// the current idempotency key began (an operator's retry starts a round, and
/// a new key after a refusal), and whether the participant refused the key.
/// Existing rows get the values of a saga no operator retried.
#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(SagaState::Table)
                    .add_column(
                        ColumnDef::new(SagaState::RoundFrom)
                            .integer()
                            .not_null()
                            .default(1),
                    )
                    .add_column(
                        ColumnDef::new(SagaState::KeyFrom)
                            .integer()
                            .not_null()
                            .default(1),
                    )
                    .add_column(
                        ColumnDef::new(SagaState::Refused)
                            .boolean()
                            .not_null()
                            .default(false),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(SagaState::Table)
                    .drop_column(SagaState::RoundFrom)
                    .drop_column(SagaState::KeyFrom)
                    .drop_column(SagaState::Refused)
                    .to_owned(),
            )
            .await
    }
}
