//! `checkout-app`: see `checkout-app --help`.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // A missing .env file is normal.
    let _ = dotenvy::dotenv();
    let cli = checkout_app::cli::Cli::parse();
    // The bench draws a progress bar and prints a report: only warnings from the stack it may run.
    let default_filter = if matches!(cli.command, Some(checkout_app::cli::Command::Bench(_))) {
        "warn"
    } else {
        "info,sqlx=warn,lapin=warn,sea_orm_migration=warn"
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter)),
        )
        .init();
    match checkout_app::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
