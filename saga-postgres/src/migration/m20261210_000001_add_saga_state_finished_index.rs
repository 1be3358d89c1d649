use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub(super) struct Migration;

#[derive(DeriveIden)]
enum SagaState {
    Table,
    Status,
    UpdatedAt,
}

/// The index of retention (`SagaStore::prune`): completed and compensated
/// sagas by `updated_at`, so a prune batch reads the oldest finished sagas in
/// order and nothing else. `saga_state_status_updated_idx (status, updated_at)`
/// also matches the filter, but for two statuses it yields two ranges that
/// must be read whole and sorted: every batch would read every prunable row.
///
/// `IF NOT EXISTS`: on a large table, create it beforehand without blocking
/// writes (`CREATE INDEX CONCURRENTLY saga_state_finished_idx ON saga_state
/// (updated_at) WHERE status IN ('completed', 'compensated')`), and this
/// migration then does nothing.
#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name("saga_state_finished_idx")
                    .table(SagaState::Table)
                    .col(SagaState::UpdatedAt)
                    .and_where(Expr::col(SagaState::Status).is_in(["completed", "compensated"]))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(
                Index::drop()
                    .if_exists()
                    .name("saga_state_finished_idx")
                    .table(SagaState::Table)
                    .to_owned(),
            )
            .await
    }
}
