//! Transport benchmark: confirmed publishes per second and request/reply
//! latency of `RabbitTransport`, next to raw lapin publish-with-confirms
//! measured in the same run against the same broker.
//!
//! ```text
//! cargo run --release -p saga-rabbitmq --example transport_bench -- [--messages 20000] [--round-trips 8000] [--classic] [--channels 4]
//! ```
//!
//! Uses `RABBITMQ_URL` (default `amqp://guest:guest@127.0.0.1:5672/%2f`).
//! Queues get a per-run suffix and are deleted at the end.
//!
//! Method:
//! - *raw lapin*: one channel in confirm mode; `k` tasks each publish a
//!   persistent message to the default exchange and await its confirm, in a
//!   loop (so `k` confirms are outstanding at any time).
//! - *transport send*: `k` tasks each call `Transport::send_command` in a loop
//!   (persistent, mandatory, confirmed; spread over the publisher channel pool).
//! - *request/reply*: an echo participant consumes commands, sends the reply
//!   and acks; `k` tasks each send a command and wait for its reply. Latency is
//!   measured per round trip, from `send_command` to the reply's delivery.
//!
//! The same JSON command body (~600 bytes) is used everywhere. In-flight
//! levels are 1, 8, 32 and 128; the full message counts run at 32 and above,
//! fewer below (at least 1,000). Results: `docs/benchmarks/rabbitmq.md`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use saga_core::adapter::Transport;
use saga_core::adapter::{CommandMessage, ReplyOutcome};
use saga_core::{Direction, IdempotencyKey, SagaId};
use saga_rabbitmq::{Config, QueueType, RabbitTransport};
use tokio::sync::oneshot;

const LEVELS: [usize; 4] = [1, 8, 32, 128];

/// Messages for in-flight level `k`: the full count from 32 in flight up, fewer
/// below (one in flight is bounded by the broker's confirm latency).
fn scaled(total: usize, k: usize) -> usize {
    (total * k.min(32) / 32).max(total.min(1_000))
}

struct Args {
    messages: usize,
    round_trips: usize,
    queue_type: QueueType,
    channels: usize,
}

fn args() -> Args {
    let mut args = Args {
        messages: 20_000,
        round_trips: 8_000,
        queue_type: QueueType::Quorum,
        channels: 4,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--messages" => {
                args.messages = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(args.messages)
            }
            "--round-trips" => {
                args.round_trips = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(args.round_trips);
            }
            "--classic" => args.queue_type = QueueType::Classic,
            "--channels" => {
                args.channels = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(args.channels)
            }
            other => {
                eprintln!("unknown argument `{other}`");
                std::process::exit(2);
            }
        }
    }
    args
}

fn command(endpoint: &str, n: usize) -> CommandMessage {
    let saga_id = SagaId::new();
    CommandMessage {
        message_id: format!("{saga_id}:reserve_inventory:invoke:{n}"),
        idempotency_key: IdempotencyKey::new(saga_id, "reserve_inventory", Direction::Invoke),
        saga_id,
        saga_type: "checkout".to_owned(),
        step: 1,
        step_name: "reserve_inventory".to_owned(),
        direction: Direction::Invoke,
        attempt: 1,
        endpoint: endpoint.to_owned(),
        command: "reserve_stock".to_owned(),
        payload: serde_json::json!({
            "order_id": "2f0b7f1e-8a7c-4f57-9a51-0c9e0f3f6d2a",
            "items": [{ "product_id": "prod-001", "quantity": 2 }, { "product_id": "prod-004", "quantity": 1 }],
            "n": n,
        }),
        reply_to: Some(format!("{endpoint}_bench_replies")),
        headers: [(
            "traceparent".to_owned(),
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_owned(),
        )]
        .into(),
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

/// Splits `total` over `k` workers.
fn share(total: usize, k: usize, worker: usize) -> usize {
    total / k + usize::from(worker < total % k)
}

async fn raw_lapin(url: &str, queue: &str, queue_type: QueueType, total: usize, k: usize) -> f64 {
    let connection = Connection::connect(url, ConnectionProperties::default())
        .await
        .expect("connect");
    let channel = connection.create_channel().await.expect("channel");
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from(queue_type.as_str())),
    );
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            args,
        )
        .await
        .expect("declare");
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    let body = Arc::new(serde_json::to_vec(&command("raw", 0)).expect("json"));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..k {
        let channel = channel.clone();
        let body = Arc::clone(&body);
        let queue = queue.to_owned();
        tasks.spawn(async move {
            for _ in 0..share(total, k, worker) {
                let confirm = channel
                    .basic_publish(
                        "".into(),
                        queue.as_str().into(),
                        BasicPublishOptions::default(),
                        &body,
                        BasicProperties::default().with_delivery_mode(2),
                    )
                    .await
                    .expect("publish");
                assert!(confirm.await.expect("confirm").is_ack());
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("raw publisher");
    }
    let rate = total as f64 / started.elapsed().as_secs_f64();
    let _ = channel
        .queue_delete(queue.into(), QueueDeleteOptions::default())
        .await;
    let _ = connection.close(200, "OK".into()).await;
    rate
}

async fn transport_send(
    transport: &Arc<RabbitTransport>,
    endpoint: &str,
    total: usize,
    k: usize,
) -> f64 {
    transport.declare_endpoint(endpoint).await.expect("declare");
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..k {
        let transport = Arc::clone(transport);
        let endpoint = endpoint.to_owned();
        tasks.spawn(async move {
            for n in 0..share(total, k, worker) {
                transport
                    .send_command(&command(&endpoint, n))
                    .await
                    .expect("send");
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("sender");
    }
    total as f64 / started.elapsed().as_secs_f64()
}

type Waiters = Arc<Mutex<HashMap<String, oneshot::Sender<Instant>>>>;

async fn round_trips(
    transport: &Arc<RabbitTransport>,
    endpoint: &str,
    total: usize,
    k: usize,
) -> (f64, Duration, Duration) {
    let reply_queue = format!("{endpoint}_bench_replies");
    // The echo participant.
    let mut commands = transport
        .consume_commands(endpoint)
        .await
        .expect("consume commands");
    let echo = {
        let transport = Arc::clone(transport);
        tokio::spawn(async move {
            while let Some(delivery) = commands.next().await {
                let transport = Arc::clone(&transport);
                tokio::spawn(async move {
                    let reply = delivery
                        .message
                        .reply(ReplyOutcome::Success(serde_json::json!({ "ok": true })));
                    transport.send_reply(&reply).await.expect("reply");
                    delivery.ack().await.expect("ack");
                });
            }
        })
    };
    // The orchestrator side: route replies to their waiters.
    let waiters: Waiters = Arc::default();
    let mut replies = transport
        .consume_replies(&reply_queue)
        .await
        .expect("consume replies");
    let router = {
        let waiters = Arc::clone(&waiters);
        tokio::spawn(async move {
            while let Some(delivery) = replies.next().await {
                let at = Instant::now();
                let id = delivery
                    .message
                    .message_id
                    .trim_end_matches(":reply")
                    .to_owned();
                let waiter = waiters.lock().expect("waiters").remove(&id);
                if let Some(waiter) = waiter {
                    let _ = waiter.send(at);
                }
                tokio::spawn(delivery.ack());
            }
        })
    };

    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..k {
        let transport = Arc::clone(transport);
        let waiters = Arc::clone(&waiters);
        let endpoint = endpoint.to_owned();
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            for n in 0..share(total, k, worker) {
                let cmd = command(&endpoint, n);
                let (tx, rx) = oneshot::channel();
                waiters
                    .lock()
                    .expect("waiters")
                    .insert(cmd.message_id.clone(), tx);
                let sent = Instant::now();
                transport.send_command(&cmd).await.expect("send");
                let received = tokio::time::timeout(Duration::from_secs(30), rx)
                    .await
                    .expect("reply within 30 s")
                    .expect("router alive");
                latencies.push(received - sent);
            }
            latencies
        });
    }
    let mut latencies = Vec::new();
    while let Some(r) = tasks.join_next().await {
        latencies.extend(r.expect("requester"));
    }
    let rate = total as f64 / started.elapsed().as_secs_f64();
    echo.abort();
    router.abort();
    latencies.sort();
    (
        rate,
        percentile(&latencies, 50.0),
        percentile(&latencies, 99.0),
    )
}

async fn delete_queues(url: &str, queues: &[String]) {
    let Ok(connection) = Connection::connect(url, ConnectionProperties::default()).await else {
        return;
    };
    if let Ok(channel) = connection.create_channel().await {
        for queue in queues {
            let _ = channel
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
    }
    let _ = connection.close(200, "OK".into()).await;
}

#[tokio::main]
async fn main() {
    let args = args();
    // An example binary may read its environment; the library does not.
    let url =
        std::env::var("RABBITMQ_URL").unwrap_or_else(|_| saga_rabbitmq::DEFAULT_URL.to_owned());
    let config = Config::new(url)
        .queue_type(args.queue_type)
        .prefetch(64)
        .publisher_channels(args.channels);
    let url = config.url.clone();
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let transport = Arc::new(
        RabbitTransport::connect(config.clone())
            .await
            .unwrap_or_else(|e| {
                eprintln!("{e}");
                std::process::exit(1);
            }),
    );

    println!(
        "# saga-rabbitmq transport benchmark ({} queues, up to {} publishes and {} round trips per level, {} publisher channels)\n",
        args.queue_type.as_str(),
        args.messages,
        args.round_trips,
        config.publisher_channels
    );
    println!(
        "| in-flight | raw lapin publish+confirm (msg/s) | transport send_command (cmd/s) | request/reply (round trips/s) | request/reply p50 (ms) | request/reply p99 (ms) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    let mut queues = Vec::new();
    for k in LEVELS {
        let raw_queue = format!("bench_raw_{run}_{k}");
        let messages = scaled(args.messages, k);
        let raw = raw_lapin(&url, &raw_queue, args.queue_type, messages, k).await;
        let send_endpoint = format!("bench_send_{run}_{k}");
        let send = transport_send(&transport, &send_endpoint, messages, k).await;
        let rr_endpoint = format!("bench_rr_{run}_{k}");
        let (rr, p50, p99) =
            round_trips(&transport, &rr_endpoint, scaled(args.round_trips, k), k).await;
        println!(
            "| {k} | {raw:.0} | {send:.0} | {rr:.0} | {} | {} |",
            ms(p50),
            ms(p99)
        );
        for endpoint in [&send_endpoint, &rr_endpoint] {
            let queue = transport.command_queue(endpoint);
            queues.push(transport.dead_letter_queue(&queue));
            queues.push(queue);
        }
        let reply_queue = format!("{rr_endpoint}_bench_replies");
        queues.push(transport.dead_letter_queue(&reply_queue));
        queues.push(reply_queue);
    }
    drop(transport);
    delete_queues(&url, &queues).await;
}
