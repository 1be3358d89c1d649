//! Creating the example's database: saga-postgres migrates tables in a
//! database that exists, so the application (or its deployment) creates it.

use saga_postgres::PgConfig;
use sea_orm::{ConnectionTrait, DbBackend, Statement};

/// Creates the database `url` names unless it exists, connecting to the same
/// server's `postgres` database to do so.
pub(crate) async fn create_if_missing(url: &str) -> Result<(), Box<dyn std::error::Error>> {
    let (server, rest) = url
        .rsplit_once('/')
        .ok_or_else(|| format!("{url}: no database name at the end of the URL"))?;
    let (name, query) = rest.split_once('?').unwrap_or((rest, ""));
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(format!("database name `{name}`: use letters, digits and `_`").into());
    }
    let admin_url = if query.is_empty() {
        format!("{server}/postgres")
    } else {
        format!("{server}/postgres?{query}")
    };
    let admin = PgConfig::new(admin_url)
        .max_connections(1)
        .connect()
        .await?;
    let exists = admin
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT 1 FROM pg_database WHERE datname = $1",
            [name.into()],
        ))
        .await?
        .is_some();
    if !exists {
        // The name was checked above: letters, digits and `_` only.
        admin
            .execute_unprepared(&format!("CREATE DATABASE \"{name}\""))
            .await?;
        println!("created database {name}");
    }
    admin.close().await?;
    Ok(())
}
