//! Connecting, keeping a handle on each connection's TCP socket.
//!
//! lapin runs every connection's socket on a thread of its own, which ends
//! only when the socket does. A connection the transport abandons (a connect
//! or a declaration that timed out, a connection given up after its
//! publishes stopped being confirmed, a close the broker never answered)
//! would otherwise keep that thread and its socket for as long as the peer
//! keeps the TCP connection open: for good, with a peer that accepts
//! connections and never speaks AMQP. [`Socket::end`] shuts the socket down
//! under lapin, which then sees its stream end and stops.

use std::sync::{Arc, Mutex, Weak};

use lapin::tcp::{AMQPUriTcpExt, AsyncTcpStream, TLSConfig};
use lapin::uri::AMQPUri;
use lapin::{Connection, ConnectionProperties};

use crate::connection::lock;

/// A handle on the TCP socket of one connection (a duplicate of its file
/// descriptor), from the moment the connection attempt reaches the broker.
#[derive(Debug, Default)]
pub(crate) struct Socket {
    #[cfg(unix)]
    fd: Mutex<Option<std::os::fd::OwnedFd>>,
    #[cfg(not(unix))]
    fd: Mutex<Option<()>>,
}

impl Socket {
    /// Shuts the socket down both ways and lets go of the handle: lapin's
    /// thread for the connection sees its stream end and stops. Does
    /// nothing when there is no socket (yet) or it was ended before.
    pub(crate) fn end(&self) {
        let fd = lock(&self.fd).take();
        #[cfg(unix)]
        if let Some(fd) = fd {
            let stream = std::net::TcpStream::from(fd);
            if let Err(e) = stream.shutdown(std::net::Shutdown::Both) {
                tracing::debug!(error = %e, "shutting down an abandoned RabbitMQ socket");
            }
        }
        #[cfg(not(unix))]
        drop(fd);
    }

    /// Keeps a duplicate of the socket of `stream`'s descriptor.
    #[cfg(unix)]
    fn keep<S: std::os::fd::AsFd>(&self, stream: &S) {
        match stream.as_fd().try_clone_to_owned() {
            Ok(fd) => *lock(&self.fd) = Some(fd),
            Err(e) => tracing::debug!(error = %e, "no handle on a RabbitMQ socket"),
        }
    }
}

/// Connects to `url` like [`Connection::connect`], keeping a handle on the
/// socket in `socket` as soon as the TCP connection is made (so that an
/// attempt abandoned in the AMQP handshake can be ended too).
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
            #[cfg(unix)]
            if let (Some(socket), AsyncTcpStream::Plain(plain)) = (kept.upgrade(), &stream) {
                socket.keep(plain.get_ref());
            }
            Ok(stream)
        },
        properties,
    )
    .await
}
