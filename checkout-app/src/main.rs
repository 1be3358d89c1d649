//! `checkout-app`: see `checkout-app --help`.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // A missing .env file is normal.
    let _ = dotenvy::dotenv();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new(
                    "info,sqlx=warn,lapin=warn,sea_orm_migration=warn",
                )
            }),
        )
        .init();
    let cli = checkout_app::cli::Cli::parse();
    match checkout_app::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
