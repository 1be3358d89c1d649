//! Test support: a vhost per test through the RabbitMQ management API
//! (test-kit's client).
//!
//! Environment:
//! - `SAGA_TEST_AMQP_URL` (default `amqp://guest:guest@127.0.0.1:5672/%2f`):
//!   its scheme, credentials, host and port are used, with the test's vhost.
//! - `SAGA_TEST_RABBITMQ_API` (default `http://guest:guest@127.0.0.1:15672/api`).
//!
//! Tests fail with a clear message when RabbitMQ is unreachable; they never skip.

#![allow(dead_code, unreachable_pub, missing_docs)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use reqwest::Method;
use saga_rabbitmq::{Config, RabbitTransport};
use serde_json::Value;
use test_kit::rabbitmq::{self, Management, encode};

/// A vhost that exists for one test; deleted on drop.
pub struct TestVhost {
    pub name: String,
    pub api: Management,
}

impl TestVhost {
    /// Creates `saga-test-{label}-{random}`.
    pub async fn new(label: &str) -> Self {
        let api = Management::from_env();
        let name = format!("saga-test-{label}-{}", uuid::Uuid::new_v4().simple());
        api.create_vhost(&name).await;
        // The creating user gets permissions automatically; make sure they landed.
        for _ in 0..50 {
            let r = api
                .request(
                    Method::GET,
                    &format!("permissions/{}/{}", encode(&name), encode(api.user())),
                    None,
                )
                .await;
            if r.is_ok_and(|r| r.status.is_success()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Self { name, api }
    }

    /// The AMQP URL of this vhost.
    pub fn amqp_url(&self) -> String {
        rabbitmq::vhost_url(&rabbitmq::amqp_from_env(), &self.name)
    }

    /// A config for this vhost with quick reconnects and timeouts suited to tests.
    pub fn config(&self) -> Config {
        Config::new(self.amqp_url())
            .reconnect_delay(Duration::from_millis(50), Duration::from_millis(500))
            .connect_timeout(Duration::from_secs(10))
            .connection_name(format!("test-{}", self.name))
    }

    /// Connects a transport, failing the test with a clear message when RabbitMQ is down.
    pub async fn transport(&self, config: Config) -> RabbitTransport {
        RabbitTransport::connect(config).await.unwrap_or_else(|e| {
            panic!(
                "RabbitMQ is unreachable ({e}). Start it (docker compose up -d rabbitmq) or set SAGA_TEST_AMQP_URL"
            )
        })
    }

    pub async fn default_transport(&self) -> Arc<RabbitTransport> {
        Arc::new(self.transport(self.config()).await)
    }

    /// Names of this vhost's client connections.
    pub async fn connections(&self) -> Vec<String> {
        self.api.connections(&self.name).await
    }

    /// Closes every client connection of this vhost (like `rabbitmqctl
    /// close_all_connections`, but only this test's); returns how many.
    ///
    /// The management API lists a new connection only once the broker has
    /// emitted its first statistics (every 5 s by default), so this polls for
    /// up to 30 s.
    pub async fn close_connections(&self) -> usize {
        self.api
            .close_connections(&self.name, Duration::from_secs(30))
            .await
    }

    /// A queue's details (`messages`, `arguments`, `durable`, `type`, ...).
    pub async fn queue(&self, queue: &str) -> Value {
        self.api
            .get(&format!("queues/{}/{}", encode(&self.name), encode(queue)))
            .await
    }

    /// Deletes a queue (and with it its bindings).
    pub async fn delete_queue(&self, queue: &str) {
        self.api
            .ok(
                Method::DELETE,
                &format!("queues/{}/{}", encode(&self.name), encode(queue)),
                None,
            )
            .await;
    }

    /// The bindings from `exchange` to `queue`.
    pub async fn bindings(&self, exchange: &str, queue: &str) -> Value {
        self.api
            .get(&format!(
                "bindings/{}/e/{}/q/{}",
                encode(&self.name),
                encode(exchange),
                encode(queue)
            ))
            .await
    }

    /// Creates or replaces the policy `name` of this vhost (applied to queues).
    pub async fn put_policy(&self, name: &str, pattern: &str, definition: Value, priority: u32) {
        let body = serde_json::json!({
            "pattern": pattern,
            "definition": definition,
            "priority": priority,
            "apply-to": "queues",
        });
        self.api
            .put(
                &format!("policies/{}/{}", encode(&self.name), encode(name)),
                &body,
            )
            .await;
    }

    /// Polls `queue`'s details until `done` holds, for up to `within`.
    pub async fn wait_queue(
        &self,
        queue: &str,
        what: &str,
        within: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let q = self.queue(queue).await;
            if done(&q) {
                return q;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "queue {queue}: {what} not seen within {within:?}: {q}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until `queue` holds `count` ready messages.
    pub async fn wait_ready(&self, queue: &str, count: u64) {
        self.wait_stat(queue, "messages_ready", count).await;
    }

    /// Waits until the queue statistic `field` equals `count` (the management
    /// API's statistics lag by a few seconds).
    pub async fn wait_stat(&self, queue: &str, field: &str, count: u64) {
        let mut last = Value::Null;
        for _ in 0..300 {
            last = self.queue(queue).await;
            if last[field].as_u64() == Some(count) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("queue {queue} never reached {field} = {count}: {last}");
    }

    pub async fn delete(self) {
        let name = self.name.clone();
        let api = self.api.clone();
        std::mem::forget(self);
        api.delete_vhost(&name).await;
    }
}

impl Drop for TestVhost {
    fn drop(&mut self) {
        // A panicking test: delete the vhost anyway, blocking briefly, with
        // a client of its own (the test's runtime is blocked here).
        let Ok(api) = self.api.detached() else {
            return;
        };
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                rt.block_on(api.delete_vhost(&name));
            }
        })
        .join();
    }
}

/// Reads up to `max` messages from `queue` with a raw lapin connection (auto-ack).
pub async fn drain(url: &str, queue: &str, max: usize) -> Vec<lapin::message::BasicGetMessage> {
    use lapin::options::{BasicAckOptions, BasicGetOptions};
    let connection = lapin::Connection::connect(url, lapin::ConnectionProperties::default())
        .await
        .expect("raw connection");
    let channel = connection.create_channel().await.expect("channel");
    let mut out = Vec::new();
    while out.len() < max {
        match channel
            .basic_get(queue.into(), BasicGetOptions::default())
            .await
            .expect("basic.get")
        {
            Some(message) => {
                message
                    .delivery
                    .acker
                    .ack(BasicAckOptions::default())
                    .await
                    .expect("ack");
                out.push(message);
            }
            None => break,
        }
    }
    let _ = connection.close(200, "OK".into()).await;
    out
}

/// A TCP proxy in front of the broker that can stall: from then on it holds
/// whatever clients send (it reads it and never passes it on), while the
/// broker's side keeps flowing. A connection through it stays up (the
/// broker's heartbeats still arrive) but nothing it publishes reaches the
/// broker and no confirm comes back, as with a node whose disk is stuck or
/// that lost its peers without pausing. It counts the clients that ended
/// their connection, stalled or not. Stops (closing its connections) on drop.
pub struct StallingProxy {
    port: u16,
    stalled: tokio::sync::watch::Sender<bool>,
    clients_ended: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl StallingProxy {
    /// Listens on 127.0.0.1 and passes connections to the broker of `url`.
    pub async fn start(url: &str) -> Self {
        let upstream = host_port(url);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let (stalled, _) = tokio::sync::watch::channel(false);
        let held = stalled.clone();
        let clients_ended = Arc::new(AtomicUsize::new(0));
        let ended = Arc::clone(&clients_ended);
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                let Ok(broker) = tokio::net::TcpStream::connect(&upstream).await else {
                    continue;
                };
                let (mut from_client, mut to_client) = client.into_split();
                let (mut from_broker, mut to_broker) = broker.into_split();
                let stalled = held.subscribe();
                let ended = Arc::clone(&ended);
                connections.spawn(async move {
                    let mut buffer = vec![0_u8; 16 * 1024];
                    loop {
                        let n = match tokio::io::AsyncReadExt::read(&mut from_client, &mut buffer)
                            .await
                        {
                            Ok(0) | Err(_) => {
                                ended.fetch_add(1, Ordering::Relaxed);
                                return;
                            }
                            Ok(n) => n,
                        };
                        if *stalled.borrow() {
                            continue;
                        }
                        if tokio::io::AsyncWriteExt::write_all(&mut to_broker, &buffer[..n])
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                });
                connections.spawn(async move {
                    let _ = tokio::io::copy(&mut from_broker, &mut to_client).await;
                });
            }
        });
        Self {
            port,
            stalled,
            clients_ended,
            task,
        }
    }

    /// How many clients ended their connection through the proxy (closed it
    /// or shut it down).
    pub fn clients_ended(&self) -> usize {
        self.clients_ended.load(Ordering::Relaxed)
    }

    /// `url` with its host and port replaced by the proxy's.
    pub fn url(&self, url: &str) -> String {
        let upstream = host_port(url);
        url.replacen(&upstream, &format!("127.0.0.1:{}", self.port), 1)
    }

    /// Holds everything clients send from now on.
    pub fn stall(&self) {
        self.stalled.send_replace(true);
    }
}

impl Drop for StallingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A peer that accepts TCP connections and never answers (a hung node, a
/// load balancer with nothing behind it): it reads what clients send and
/// counts the connections it accepted and those the client ended. Stops on
/// drop.
pub struct SilentPeer {
    port: u16,
    accepted: Arc<AtomicUsize>,
    ended: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl SilentPeer {
    /// Listens on 127.0.0.1.
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the silent peer");
        let port = listener.local_addr().expect("silent peer address").port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let ended = Arc::new(AtomicUsize::new(0));
        let (counted, closed) = (Arc::clone(&accepted), Arc::clone(&ended));
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((mut client, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::Relaxed);
                let closed = Arc::clone(&closed);
                connections.spawn(async move {
                    let mut buffer = vec![0_u8; 4096];
                    while let Ok(1..) =
                        tokio::io::AsyncReadExt::read(&mut client, &mut buffer).await
                    {
                    }
                    closed.fetch_add(1, Ordering::Relaxed);
                });
            }
        });
        Self {
            port,
            accepted,
            ended,
            task,
        }
    }

    /// `url` with its host and port replaced by the silent peer's.
    pub fn url(&self, url: &str) -> String {
        url.replacen(&host_port(url), &format!("127.0.0.1:{}", self.port), 1)
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Connections the client ended so far.
    pub fn ended(&self) -> usize {
        self.ended.load(Ordering::Relaxed)
    }
}

impl Drop for SilentPeer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The `host:port` of an AMQP URL (port 5672 when it names none).
fn host_port(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, hp)| hp);
    if host_port.contains(':') {
        host_port.to_owned()
    } else {
        format!("{host_port}:5672")
    }
}
