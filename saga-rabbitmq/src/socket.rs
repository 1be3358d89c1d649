//! Connecting, keeping a handle on each connection's TCP socket.
//!
//! lapin runs every connection's socket on a thread of its own, which ends
//! only when the socket does. A connection the transport abandons (a connect
//! or a declaration that timed out, a connection given up after its
//! publishes stopped being confirmed, a close the broker never answered)
//! would otherwise keep that thread and its socket for as long as the peer
//! keeps the TCP connection open: for good, with a peer that accepts
//! connections and never speaks AMQP. [`Socket::end`] shuts the socket down
//! under lapin, which then sees its stream end and stops (it logs that at
//! ERROR level; it does not reconnect, since the transport leaves lapin's
//! own reconnection off and reconnects itself).

use std::sync::{Arc, Mutex, Weak};

use lapin::tcp::{AMQPUriTcpExt, AsyncTcpStream, TLSConfig};
use lapin::uri::AMQPUri;
use lapin::{Connection, ConnectionProperties};

use crate::connection::lock;

/// A duplicate of a socket's file descriptor (nothing on other systems).
#[cfg(unix)]
type Handle = std::os::fd::OwnedFd;
#[cfg(not(unix))]
type Handle = ();

/// Where a connection's socket stands.
#[derive(Debug, Default)]
enum State {
    /// No TCP connection yet.
    #[default]
    Pending,
    /// Connected: a handle on the socket.
    Kept(Handle),
    /// Abandoned: a socket that comes now is shut down at once.
    Ended,
}

/// A handle on the TCP socket of one connection, from the moment the
/// connection attempt reaches the broker.
#[derive(Debug, Default)]
pub(crate) struct Socket {
    state: Mutex<State>,
}

impl Socket {
    /// Abandons the connection: shuts its socket down both ways (lapin's
    /// thread for it sees its stream end and stops), now or, when the TCP
    /// connection is still being made, as soon as it is.
    pub(crate) fn end(&self) {
        if let State::Kept(handle) = std::mem::replace(&mut *lock(&self.state), State::Ended) {
            shut_down(handle);
        }
    }

    /// Keeps `handle` on the new connection's socket (if there is one);
    /// `false` when the connection was abandoned meanwhile.
    fn keep(&self, handle: Option<Handle>) -> bool {
        let mut state = lock(&self.state);
        if matches!(*state, State::Ended) {
            return false;
        }
        if let Some(handle) = handle {
            *state = State::Kept(handle);
        }
        true
    }
}

/// What a stream's socket can be held by.
trait AsSocket {
    fn handle(&self) -> Option<Handle>;
}

#[cfg(unix)]
impl<T: std::os::fd::AsFd> AsSocket for T {
    fn handle(&self) -> Option<Handle> {
        self.as_fd()
            .try_clone_to_owned()
            .inspect_err(|e| tracing::debug!(error = %e, "no handle on a RabbitMQ socket"))
            .ok()
    }
}

#[cfg(not(unix))]
impl<T> AsSocket for T {
    fn handle(&self) -> Option<Handle> {
        None
    }
}

#[cfg(unix)]
fn shut_down(handle: Handle) {
    let stream = std::net::TcpStream::from(handle);
    if let Err(e) = stream.shutdown(std::net::Shutdown::Both) {
        tracing::debug!(error = %e, "shutting down an abandoned RabbitMQ socket");
    }
}

#[cfg(not(unix))]
fn shut_down(_handle: Handle) {}

/// Connects to `url` like [`Connection::connect`], keeping a handle on the
/// socket in `socket` as soon as the TCP connection is made (so that an
/// attempt abandoned in the AMQP handshake can be ended too). An attempt
/// abandoned before its TCP connection was made fails as soon as it is.
pub(crate) async fn connect(
    url: &str,
    properties: ConnectionProperties,
    socket: &Arc<Socket>,
) -> lapin::Result<Connection> {
    let uri: AMQPUri = url
        .parse()
        .map_err(|e: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let runtime = lapin::runtime::default_runtime()?;
    // Weak: lapin keeps the closure for the connection's lifetime, and the
    // handle must go with the connection's `Live`, not outlive it there.
    let kept: Weak<Socket> = Arc::downgrade(socket);
    Connection::connector(
        uri,
        runtime,
        async move |uri, runtime| {
            let stream = uri
                .connect_with_config_async(TLSConfig::default(), &runtime)
                .await?;
            let handle = match &stream {
                AsyncTcpStream::Plain(plain) => plain.get_ref().handle(),
                // A TLS stream (not built: no TLS feature is enabled).
                _ => None,
            };
            let kept = kept.upgrade().is_some_and(|socket| socket.keep(handle));
            if kept {
                Ok(stream)
            } else {
                // Dropping the stream closes the socket.
                Err(std::io::Error::from(std::io::ErrorKind::ConnectionAborted).into())
            }
        },
        properties,
    )
    .await
}
