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
    // One service per process: one thread (`--worker-threads` overrides);
    // all services in one process: all cores.
    let runtime = checkout_app::runtime::executor(cli.worker_threads, cli.is_single_service());
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
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,sqlx=warn,lapin=warn,sea_orm_migration=warn")
    });
    let logs = tracing_subscriber::fmt().with_env_filter(filter);
    match cli.log_format {
        checkout_app::cli::LogFormat::Text => logs.init(),
        checkout_app::cli::LogFormat::Json => logs.json().with_span_list(true).init(),
    }
    match checkout_app::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
