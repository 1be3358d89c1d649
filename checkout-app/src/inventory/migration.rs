//! The inventory service's schema, as sea-orm-migration migrations.
//!
//! Written with the portable schema builder, so the same migrations run on
//! PostgreSQL and SQLite (one keeps the name of a development build's
//! migration and does nothing). Applied migrations are recorded in
//! `inventory_migrations` (not sea-orm's default table), so the three
//! services' schemas can share one database in the embedded mode.

use sea_orm_migration::prelude::*;

/// The table recording which inventory migrations ran.
pub const MIGRATIONS_TABLE: &str = "inventory_migrations";

/// The inventory service's migrations; use with [`MigratorTrait`], or call
/// [`migrate`](super::migrate).
#[derive(Debug, Clone, Copy, Default)]
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(CreateInventory),
            Box::new(crate::service::TombstoneIndex {
                name: "m20261210_000001_index_inventory_tombstones",
                tombstones: super::TOMBSTONES,
            }),
            Box::new(FirstReserveFunction),
        ]
    }

    fn migration_table_name() -> DynIden {
        MIGRATIONS_TABLE.into_iden()
    }
}

#[derive(DeriveIden)]
enum Products {
    Table,
    Id,
    Name,
    Price,
    Stock,
    Version,
}

#[derive(DeriveIden)]
enum Reservations {
    Table,
    Id,
    OrderId,
    Status,
    Items,
    CreatedAt,
    UpdatedAt,
}

/// Creates `products` and `reservations`.
struct CreateInventory;

impl MigrationName for CreateInventory {
    fn name(&self) -> &str {
        "m20261101_000001_create_inventory"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for CreateInventory {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Products::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(Products::Id).uuid().not_null().primary_key())
                    .col(ColumnDef::new(Products::Name).string_len(255).not_null())
                    .col(
                        ColumnDef::new(Products::Price)
                            .decimal_len(12, 2)
                            .not_null()
                            .check(Expr::col(Products::Price).gte(0)),
                    )
                    .col(
                        ColumnDef::new(Products::Stock)
                            .integer()
                            .not_null()
                            .check(Expr::col(Products::Stock).gte(0)),
                    )
                    .col(
                        ColumnDef::new(Products::Version)
                            .integer()
                            .not_null()
                            .default(0),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Reservations::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(Reservations::Id)
                            .uuid()
                            .not_null()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(Reservations::OrderId)
                            .uuid()
                            .not_null()
                            .unique_key(),
                    )
                    .col(
                        ColumnDef::new(Reservations::Status)
                            .string_len(16)
                            .not_null(),
                    )
                    .col(ColumnDef::new(Reservations::Items).json_binary().not_null())
                    .col(
                        ColumnDef::new(Reservations::CreatedAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(Reservations::UpdatedAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(
                Table::drop()
                    .table(Reservations::Table)
                    .if_exists()
                    .to_owned(),
            )
            .await?;
        manager
            .drop_table(Table::drop().table(Products::Table).if_exists().to_owned())
            .await
    }
}

/// A migration of a development build of 0.2, which installed the
/// reservation function `inventory_reserve` under this name. The function is
/// now installed by [`super::migrate`] on every start (as
/// `inventory_reserve_v1`, dropping the old one); the name stays, doing
/// nothing, so that a database migrated by that build still starts this one
/// (sea-orm-migration refuses a recorded migration it does not know).
struct FirstReserveFunction;

impl MigrationName for FirstReserveFunction {
    fn name(&self) -> &str {
        "m20261206_000001_create_inventory_reserve"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for FirstReserveFunction {
    async fn up(&self, _manager: &SchemaManager) -> Result<(), DbErr> {
        Ok(())
    }

    async fn down(&self, _manager: &SchemaManager) -> Result<(), DbErr> {
        Ok(())
    }
}
