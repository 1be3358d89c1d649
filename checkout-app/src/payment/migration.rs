//! The payment service's schema, as sea-orm-migration migrations.
//!
//! Written with the portable schema builder, so the same migrations run on
//! PostgreSQL and SQLite. Applied migrations are recorded in
//! `payment_migrations` (not sea-orm's default table), so the three services'
//! schemas can share one database in the embedded mode.

use sea_orm_migration::prelude::*;

/// The table recording which payment migrations ran.
pub const MIGRATIONS_TABLE: &str = "payment_migrations";

/// The payment service's migrations; use with [`MigratorTrait`], or call
/// [`migrate`](super::migrate).
#[derive(Debug, Clone, Copy, Default)]
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(CreatePayments),
            Box::new(crate::service::TombstoneIndex {
                name: "m20261210_000001_index_payment_tombstones",
                tombstones: super::TOMBSTONES,
            }),
        ]
    }

    fn migration_table_name() -> DynIden {
        MIGRATIONS_TABLE.into_iden()
    }
}

#[derive(DeriveIden)]
enum Payments {
    Table,
    Id,
    OrderId,
    UserId,
    Amount,
    Status,
    CreatedAt,
    UpdatedAt,
}

/// Creates `payments`.
struct CreatePayments;

impl MigrationName for CreatePayments {
    fn name(&self) -> &str {
        "m20261101_000001_create_payments"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for CreatePayments {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Payments::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(Payments::Id).uuid().not_null().primary_key())
                    .col(
                        ColumnDef::new(Payments::OrderId)
                            .uuid()
                            .not_null()
                            .unique_key(),
                    )
                    .col(ColumnDef::new(Payments::UserId).string_len(255).not_null())
                    .col(
                        ColumnDef::new(Payments::Amount)
                            .decimal_len(12, 2)
                            .not_null()
                            .check(Expr::col(Payments::Amount).gte(0)),
                    )
                    .col(ColumnDef::new(Payments::Status).string_len(16).not_null())
                    .col(
                        ColumnDef::new(Payments::CreatedAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(Payments::UpdatedAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .to_owned(),
            )
            .await?;
        // Operators list payments by status, newest first.
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name("payments_status_created_idx")
                    .table(Payments::Table)
                    .col(Payments::Status)
                    .col(Payments::CreatedAt)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(Payments::Table).if_exists().to_owned())
            .await
    }
}
