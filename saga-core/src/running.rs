//! [`Running`]: an engine or a participant at work in a task of its own.

use std::future::Future;
use std::pin::Pin;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::error::{Error, Result};

/// A future that resolves when it is time to stop.
pub(crate) type StopSignal = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// An [`Engine`](crate::Engine) or a [`Participant`](crate::Participant)
/// running in a task of its own, from [`Engine::spawn`](crate::Engine::spawn)
/// or [`Participant::spawn`](crate::Participant::spawn).
///
/// [`shutdown`](Self::shutdown) stops it gracefully (it stops taking
/// messages, finishes the ones in hand and returns) and waits for it.
/// Dropping the handle asks it to stop too, without waiting.
///
/// ```
/// # use saga_core::{Engine, memory::{InMemoryStore, InMemoryTransport}};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), saga_core::Error> {
/// let engine = Engine::builder(InMemoryStore::new(), InMemoryTransport::new()).build();
/// let running = engine.spawn();
/// // ... start sagas, wait for them ...
/// running.shutdown().await?;
/// # Ok(()) }
/// ```
#[must_use = "dropping a Running stops it"]
#[derive(Debug)]
pub struct Running {
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<Result<()>>>,
}

impl Running {
    /// Runs `work` in a task; `work` gets the signal to watch.
    pub(crate) fn spawn<F, Fut>(work: F) -> Self
    where
        F: FnOnce(StopSignal) -> Fut,
        Fut: Future<Output = Result<()>> + Send + 'static,
    {
        let (stop, mut stopped) = watch::channel(false);
        let signal: StopSignal = Box::pin(async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        });
        Self {
            stop,
            task: Some(tokio::spawn(work(signal))),
        }
    }

    /// Asks it to stop, without waiting.
    pub fn stop(&self) {
        self.stop.send_replace(true);
    }

    /// Waits until it has stopped (after [`stop`](Self::stop), or on its own
    /// when its subscription closes for good).
    ///
    /// # Errors
    /// What it stopped with: a subscription that cannot be opened for a reason
    /// that is not transient. A panic in it is resumed here.
    pub async fn join(mut self) -> Result<()> {
        let Some(task) = self.task.take() else {
            return Ok(());
        };
        match task.await {
            Ok(result) => result,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => Err(Error::Shutdown),
        }
    }

    /// Stops it gracefully and waits until it has: [`stop`](Self::stop),
    /// then [`join`](Self::join).
    ///
    /// # Errors
    /// As [`join`](Self::join).
    pub async fn shutdown(self) -> Result<()> {
        self.stop();
        self.join().await
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}
