//! The pieces both start-up paths spawn: a bound listener serving a router,
//! a participant consuming its queue, the orchestrator's engine; each a task
//! of one `JoinSet` that stops on the shared [`Shutdown`].

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use saga_core::{Engine, SagaStore, Transport};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use super::Shutdown;
use crate::error::{Error, Result};
use crate::saga::Timing;

/// A bound listener and its address.
pub(super) async fn bind(ip: IpAddr, port: u16, name: &str) -> Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind((ip, port))
        .await
        .map_err(|e| Error::Config(format!("{name}: cannot listen on {ip}:{port}: {e}")))?;
    let addr = listener.local_addr()?;
    Ok((listener, addr))
}

pub(super) fn url(addr: SocketAddr) -> String {
    format!("http://{addr}")
}

pub(super) fn serve(
    tasks: &mut JoinSet<Result<()>>,
    name: &'static str,
    listener: TcpListener,
    router: axum::Router,
    shutdown: &Shutdown,
) {
    let stop = shutdown.wait();
    let router = crate::metrics::count_requests(
        crate::http::with_json_fallbacks(router.merge(crate::metrics::route())),
        name,
    );
    tasks.spawn(async move {
        tracing::info!(service = name, addr = %listener.local_addr()?, "listening");
        // With the peer's address, for the gateway's per-client rate limit.
        axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(stop)
        .await?;
        Ok(())
    });
}

pub(super) fn participate(
    tasks: &mut JoinSet<Result<()>>,
    participant: saga_core::Participant,
    transport: &Arc<dyn Transport>,
    shutdown: &Shutdown,
) {
    let transport = Arc::clone(transport);
    let stop = shutdown.wait();
    tasks.spawn(async move {
        participant.run(transport, stop).await?;
        Ok(())
    });
}

/// The orchestrator's engine with the checkout saga registered; with a
/// `retention`, it deletes completed and compensated sagas that old in the
/// background (`SAGA_RETENTION`).
///
/// # Errors
/// Never in practice (the definition is valid).
pub fn orchestrator_engine(
    store: Arc<dyn SagaStore>,
    transport: Arc<dyn Transport>,
    timing: Timing,
    retention: Option<Duration>,
) -> Result<Engine> {
    let saga = crate::saga::definition(timing)?;
    let mut builder = crate::telemetry::traced_engine(Engine::builder(store, transport))
        .register(&saga)
        .reply_queue("orchestrator_replies");
    if let Some(retention) = retention {
        builder = builder.retention(retention);
    }
    Ok(builder.build())
}

pub(super) fn run_engine(tasks: &mut JoinSet<Result<()>>, engine: &Engine, shutdown: &Shutdown) {
    let engine = engine.clone();
    let stop = shutdown.wait();
    tasks.spawn(async move {
        engine.run(stop).await?;
        Ok(())
    });
}
