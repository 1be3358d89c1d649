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
    let telemetry = checkout_app::telemetry::init(
        cli.log_format,
        cli.service_name(),
        cli.otlp_endpoint.as_deref(),
    );
    let _guard = match telemetry {
        Ok(guard) => guard,
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match checkout_app::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
