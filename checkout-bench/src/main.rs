//! `checkout-bench`: see `checkout-bench --help` and docs/benchmarks.md.

use clap::Parser;

/// mimalloc, as in `checkout-app`: with `--spawn` or `--engine` the whole
/// stack runs in this process, and it should allocate as the services do.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    // A missing .env file is normal.
    let _ = dotenvy::dotenv();
    let args = checkout_bench::BenchArgs::parse();
    // Every core (`--worker-threads` overrides): the clients and, with
    // --spawn or --engine, the whole stack share this process.
    let runtime = checkout_app::runtime::executor(args.worker_threads, false);
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the Tokio runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(args))
}

async fn run(args: checkout_bench::BenchArgs) -> std::process::ExitCode {
    // A progress bar and a report: only warnings from the stack it may run.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    match checkout_bench::run(args).await {
        Ok(_) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
