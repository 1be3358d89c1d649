//! `checkout-app`: see `checkout-app --help`.

use clap::Parser;

/// mimalloc: the services allocate many small short-lived buffers per message
/// (frames, JSON, rows); glibc's malloc showed up at ~7 % of their CPU in the
/// c=32 profile (docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    // A missing .env file is normal.
    let _ = dotenvy::dotenv();
    let cli = checkout_app::cli::Cli::parse();
    // One service per process: one thread (`WORKER_THREADS` overrides);
    // everything else (all services in one process): all cores.
    let threads = std::env::var("WORKER_THREADS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
        .or(cli.is_single_service().then_some(1));
    let runtime = match threads {
        Some(1) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        Some(n) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build(),
        None => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
    };
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the Tokio runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(cli))
}

async fn run(cli: checkout_app::cli::Cli) -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new(
                    "info,sqlx=warn,lapin=warn,sea_orm_migration=warn",
                )
            }),
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
