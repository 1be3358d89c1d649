//! The Tokio runtime of a process: how many worker threads it gets.

/// The Tokio runtime for a process: `threads` worker threads when given
/// (`--worker-threads`, `WORKER_THREADS`), else one thread when
/// `single_service` (one service per process: several such processes share
/// the machine's cores, and a thread hand-off costs more than the work of one
/// message), else every core.
///
/// # Errors
/// When the runtime cannot be built.
pub fn executor(
    threads: Option<usize>,
    single_service: bool,
) -> std::io::Result<tokio::runtime::Runtime> {
    let threads = threads.filter(|&n| n > 0).or(single_service.then_some(1));
    match threads {
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
    }
}
