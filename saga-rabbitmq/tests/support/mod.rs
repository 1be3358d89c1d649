//! Test support: a vhost per test through the RabbitMQ management HTTP API,
//! with a tiny HTTP/1.1 client over a Tokio `TcpStream`.
//!
//! Environment:
//! - `SAGA_TEST_AMQP_URL` (default `amqp://guest:guest@127.0.0.1:5672/%2f`):
//!   its scheme, credentials, host and port are used, with the test's vhost.
//! - `SAGA_TEST_RABBITMQ_API` (default `http://guest:guest@127.0.0.1:15672/api`).
//!
//! Tests fail with a clear message when RabbitMQ is unreachable; they never skip.

#![allow(dead_code, unreachable_pub, missing_docs)]

use std::sync::Arc;
use std::time::Duration;

use saga_rabbitmq::{Config, RabbitTransport};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const DEFAULT_AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const DEFAULT_API: &str = "http://guest:guest@127.0.0.1:15672/api";

/// The management API's address, from `SAGA_TEST_RABBITMQ_API`.
#[derive(Clone, Debug)]
pub struct Api {
    host: String,
    port: u16,
    base_path: String,
    authorization: Option<String>,
}

/// An HTTP response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Response {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "management API answered {} with non-JSON ({e}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

impl Api {
    pub fn from_env() -> Self {
        let url =
            std::env::var("SAGA_TEST_RABBITMQ_API").unwrap_or_else(|_| DEFAULT_API.to_owned());
        Self::parse(&url).unwrap_or_else(|| {
            panic!("SAGA_TEST_RABBITMQ_API=`{url}` is not an http://user:pass@host:port/api URL")
        })
    }

    fn parse(url: &str) -> Option<Self> {
        let rest = url.strip_prefix("http://")?;
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), p.parse().ok()?),
            None => (hostport.to_owned(), 80),
        };
        Some(Self {
            host,
            port,
            base_path: path.trim_end_matches('/').to_owned(),
            authorization: userinfo
                .map(|u| format!("Basic {}", base64(percent_decode(u).as_bytes()))),
        })
    }

    /// Sends one request (`Connection: close`) and reads the whole response.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> Result<Response, String> {
        let target = format!("{}{}", self.base_path, path);
        let mut request = format!(
            "{method} {target} HTTP/1.1\r\nHost: {}:{}\r\nConnection: close\r\nAccept: application/json\r\n",
            self.host, self.port
        );
        if let Some(auth) = &self.authorization {
            request.push_str(&format!("Authorization: {auth}\r\n"));
        }
        let body = body.unwrap_or("");
        if !body.is_empty() || method == "PUT" || method == "POST" {
            request.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        request.push_str("\r\n");
        request.push_str(body);

        let io = async {
            let mut stream = TcpStream::connect((self.host.as_str(), self.port)).await?;
            stream.write_all(request.as_bytes()).await?;
            let mut raw = Vec::new();
            stream.read_to_end(&mut raw).await?;
            Ok::<_, std::io::Error>(raw)
        };
        let raw = tokio::time::timeout(Duration::from_secs(10), io)
            .await
            .map_err(|_| format!("{method} {target}: no answer within 10 s"))?
            .map_err(|e| format!("{method} {target} to {}:{}: {e}", self.host, self.port))?;
        parse_response(&raw).ok_or_else(|| format!("{method} {target}: malformed HTTP response"))
    }

    /// Like [`request`], panicking unless the status is 2xx.
    pub async fn ok(&self, method: &str, path: &str, body: Option<&str>) -> Response {
        let response = self.request(method, path, body).await.unwrap_or_else(|e| {
            panic!(
                "the RabbitMQ management API is unreachable ({e}). Start RabbitMQ with the management plugin \
                 (docker compose up -d rabbitmq) or set SAGA_TEST_RABBITMQ_API"
            )
        });
        assert!(
            (200..300).contains(&response.status),
            "{method} {path} answered {}: {}",
            response.status,
            String::from_utf8_lossy(&response.body)
        );
        response
    }
}

fn parse_response(raw: &[u8]) -> Option<Response> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..split]).ok()?;
    let mut body = raw[split + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let chunked = lines.any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    if chunked {
        body = dechunk(&body)?;
    }
    Some(Response { status, body })
}

fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&data[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
    }
}

fn base64(input: &[u8]) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(TABLE[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Percent-encodes a path segment (connection names contain spaces and `>`).
pub fn encode(segment: &str) -> String {
    let mut out = String::new();
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A vhost that exists for one test; deleted on drop.
pub struct TestVhost {
    pub name: String,
    pub api: Api,
}

impl TestVhost {
    /// Creates `saga-test-{label}-{random}`.
    pub async fn new(label: &str) -> Self {
        let api = Api::from_env();
        let name = format!("saga-test-{label}-{}", uuid::Uuid::new_v4().simple());
        api.ok("PUT", &format!("/vhosts/{}", encode(&name)), Some("{}"))
            .await;
        // The creating user gets permissions automatically; make sure they landed.
        for _ in 0..50 {
            let r = api
                .request(
                    "GET",
                    &format!("/permissions/{}/{}", encode(&name), encode(&amqp_user())),
                    None,
                )
                .await;
            if r.is_ok_and(|r| r.status == 200) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Self { name, api }
    }

    /// The AMQP URL of this vhost.
    pub fn amqp_url(&self) -> String {
        let base = std::env::var("SAGA_TEST_AMQP_URL").unwrap_or_else(|_| DEFAULT_AMQP.to_owned());
        let (scheme, rest) = base
            .split_once("://")
            .unwrap_or(("amqp", "guest:guest@127.0.0.1:5672"));
        let authority = rest.split('/').next().unwrap_or(rest);
        format!("{scheme}://{authority}/{}", encode(&self.name))
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
        let r = self
            .api
            .ok(
                "GET",
                &format!("/vhosts/{}/connections", encode(&self.name)),
                None,
            )
            .await;
        r.json()
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|c| c["name"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Closes every client connection of this vhost (like `rabbitmqctl
    /// close_all_connections`, but only this test's); returns how many.
    ///
    /// The management API lists a new connection only once the broker has
    /// emitted its first statistics (every 5 s by default), so this polls for
    /// up to 30 s.
    pub async fn close_connections(&self) -> usize {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let mut names = self.connections().await;
        while names.is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
            names = self.connections().await;
        }
        for name in &names {
            let r = self
                .api
                .request("DELETE", &format!("/connections/{}", encode(name)), None)
                .await
                .expect("management API reachable");
            assert!(
                r.status == 204 || r.status == 404,
                "closing {name}: {}",
                r.status
            );
        }
        names.len()
    }

    /// A queue's details (`messages`, `arguments`, `durable`, `type`, ...).
    pub async fn queue(&self, queue: &str) -> Value {
        self.api
            .ok(
                "GET",
                &format!("/queues/{}/{}", encode(&self.name), encode(queue)),
                None,
            )
            .await
            .json()
    }

    /// Deletes a queue (and with it its bindings).
    pub async fn delete_queue(&self, queue: &str) {
        self.api
            .ok(
                "DELETE",
                &format!("/queues/{}/{}", encode(&self.name), encode(queue)),
                None,
            )
            .await;
    }

    /// The bindings from `exchange` to `queue`.
    pub async fn bindings(&self, exchange: &str, queue: &str) -> Value {
        self.api
            .ok(
                "GET",
                &format!(
                    "/bindings/{}/e/{}/q/{}",
                    encode(&self.name),
                    encode(exchange),
                    encode(queue)
                ),
                None,
            )
            .await
            .json()
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
            .ok(
                "PUT",
                &format!("/policies/{}/{}", encode(&self.name), encode(name)),
                Some(&body.to_string()),
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
        let _ = api
            .request("DELETE", &format!("/vhosts/{}", encode(&name)), None)
            .await;
    }
}

impl Drop for TestVhost {
    fn drop(&mut self) {
        // A panicking test: delete the vhost anyway, blocking briefly.
        let api = self.api.clone();
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                let _ =
                    rt.block_on(api.request("DELETE", &format!("/vhosts/{}", encode(&name)), None));
            }
        })
        .join();
    }
}

fn amqp_user() -> String {
    let api = std::env::var("SAGA_TEST_RABBITMQ_API").unwrap_or_else(|_| DEFAULT_API.to_owned());
    api.strip_prefix("http://")
        .and_then(|r| r.split_once('@'))
        .and_then(|(u, _)| u.split(':').next())
        .map_or_else(|| "guest".to_owned(), percent_decode)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helpers() {
        assert_eq!(base64(b"guest:guest"), "Z3Vlc3Q6Z3Vlc3Q=");
        assert_eq!(base64(b"ab"), "YWI=");
        assert_eq!(encode("127.0.0.1:1 -> 2"), "127.0.0.1%3A1%20-%3E%202");
        let api = Api::parse("http://guest:guest@127.0.0.1:15672/api").expect("parses");
        assert_eq!(api.port, 15672);
        assert_eq!(api.base_path, "/api");
        let r = parse_response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        )
        .expect("ok");
        assert_eq!(r.body, b"abc");
    }
}
