//! What carrying several saga messages in one AMQP message would save the
//! broker, measured: the design question behind issue 16's RabbitMQ floor.
//!
//! A checkout costs the broker about 0.3 ms of CPU per message (eight
//! messages: four commands, four replies). Batching several sagas' commands
//! to one queue into one AMQP message ("envelopes") would cut the number of
//! AMQP messages, not the bytes. This probe measures the broker's CPU per
//! *logical* message for envelopes of 1, 2, 4, 8... logical messages, at the
//! same logical rate, the way the transport uses the broker: persistent
//! messages to a durable queue (quorum by default), publisher confirms
//! awaited, a consumer on another connection acknowledging each AMQP message
//! by hand.
//!
//! ```text
//! cargo run --release -p checkout-bench --bin broker-probe -- \
//!     --broker-pid "$(rabbitmqctl status | awk '/OS PID/{print $3}')" --tick-ms 1,5,20
//! ```
//!
//! The publisher sends each tick's share of messages back to back, so the
//! broker sees one burst per tick: the broker's cost depends on the bursts
//! as much as on the messages (it writes and syncs a burst together), so
//! sweep `--tick-ms` and compare envelope sizes at the same tick. The
//! broker's CPU time comes from `/proc/<broker-pid>/stat` over the measured
//! window (after a warm-up), divided by the logical messages consumed in
//! it. Run it on an otherwise idle machine.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use clap::Parser;
use lapin::message::DeliveryResult;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use test_kit::procfs::{TICKS_PER_S, cpu_ticks};
use tokio::time::Instant;

/// The probe's settings.
#[derive(Debug, Parser)]
#[command(
    name = "broker-probe",
    about = "The broker's CPU per logical message, by envelope size"
)]
struct Args {
    /// The broker's AMQP URL (with its vhost).
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    url: String,
    /// The process id of the broker's Erlang VM (`beam.smp`) behind `url`.
    #[arg(long)]
    broker_pid: u32,
    /// Logical messages per second, whatever the envelope size (a checkout
    /// at 235/s is about 1,900 messages/s).
    #[arg(long, default_value_t = 2_000)]
    rate: u32,
    /// Seconds measured per envelope size (after a 3 s warm-up).
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Envelope sizes: logical messages per AMQP message.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8")]
    envelopes: Vec<u32>,
    /// Bytes of one logical message (a checkout's command is about 600).
    #[arg(long, default_value_t = 600)]
    message_bytes: usize,
    /// `quorum` or `classic`.
    #[arg(long, default_value = "quorum")]
    queue_type: String,
    /// Publishing ticks in milliseconds, each measured: a tick's messages go
    /// out back to back, as one burst.
    #[arg(long, value_delimiter = ',', default_value = "5")]
    tick_ms: Vec<u64>,
}

/// One envelope size's figures.
struct Measured {
    envelope: u32,
    tick_ms: u64,
    amqp_per_s: f64,
    logical_per_s: f64,
    broker_cores: f64,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    if cpu_ticks(args.broker_pid).is_none() {
        eprintln!(
            "broker-probe: no process {} to measure (--broker-pid)",
            args.broker_pid
        );
        return std::process::ExitCode::FAILURE;
    }
    println!(
        "broker-probe: {} logical messages/s of {} bytes, {} queue, {} s per size",
        args.rate, args.message_bytes, args.queue_type, args.seconds
    );
    println!(
        "| tick (bursts/s) | logical messages per AMQP message | AMQP messages/s | logical messages/s | broker CPU (cores) | broker CPU per logical message |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    for &tick_ms in &args.tick_ms {
        for &envelope in &args.envelopes {
            match measure(&args, envelope.max(1), tick_ms.max(1)).await {
                Ok(m) => println!(
                    "| {} ms ({}) | {} | {:.0} | {:.0} | {:.3} | {:.1} µs |",
                    m.tick_ms,
                    1_000 / m.tick_ms,
                    m.envelope,
                    m.amqp_per_s,
                    m.logical_per_s,
                    m.broker_cores,
                    m.broker_cores / m.logical_per_s * 1e6
                ),
                Err(e) => {
                    eprintln!("broker-probe: envelopes of {envelope}, tick {tick_ms} ms: {e}");
                    return std::process::ExitCode::FAILURE;
                }
            }
        }
    }
    std::process::ExitCode::SUCCESS
}

/// Publishes envelopes of `envelope` logical messages at the logical rate,
/// one burst per tick, consumes them, and measures the broker over the
/// window; the queue is deleted however it ends.
async fn measure(args: &Args, envelope: u32, tick_ms: u64) -> Result<Measured, String> {
    let queue = format!("broker_probe_{}", uuid::Uuid::new_v4().simple());
    let publisher = Connection::connect(&args.url, ConnectionProperties::default())
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let consumer = Connection::connect(&args.url, ConnectionProperties::default())
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let channel = publisher
        .create_channel()
        .await
        .map_err(|e| format!("channel: {e}"))?;
    let measured = run(args, envelope, tick_ms, &queue, &channel, &consumer)
        .await
        .map_err(|e| e.to_string());
    let _ = channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await;
    let _ = consumer.close(200, "OK".into()).await;
    let _ = publisher.close(200, "OK".into()).await;
    measured
}

/// [`measure`] on open connections.
async fn run(
    args: &Args,
    envelope: u32,
    tick_ms: u64,
    queue: &str,
    channel: &lapin::Channel,
    consumer: &Connection,
) -> Result<Measured, lapin::Error> {
    checkout_bench::declare_with_confirms(channel, queue, &args.queue_type).await?;

    let consumed = Arc::new(AtomicU64::new(0));
    let consuming = consumer.create_channel().await?;
    consuming.basic_qos(64, BasicQosOptions::default()).await?;
    let deliveries = consuming
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let counter = Arc::clone(&consumed);
    let per_envelope = u64::from(envelope);
    deliveries.set_delegate(move |delivery: DeliveryResult| {
        let counter = Arc::clone(&counter);
        async move {
            if let Ok(Some(delivery)) = delivery
                && let Ok(true) = delivery.acker.ack(BasicAckOptions::default()).await
            {
                counter.fetch_add(per_envelope, Ordering::Relaxed);
            }
        }
    });

    let body: Arc<Vec<u8>> = Arc::new(vec![b'x'; args.message_bytes * envelope as usize]);
    let envelopes_per_s = f64::from(args.rate) / f64::from(envelope);
    let tick = Duration::from_millis(tick_ms);
    let per_tick = envelopes_per_s * tick.as_secs_f64();
    let warm_up = Duration::from_secs(3);
    let window = Duration::from_secs(args.seconds);
    let started = Instant::now();
    let mut interval = tokio::time::interval(tick);
    let mut owed = 0.0_f64;
    let mut mark: Option<(Instant, u64, u64)> = None;
    let mut confirms = tokio::task::JoinSet::new();
    let mut nacked = 0_u64;
    loop {
        interval.tick().await;
        let now = Instant::now();
        if mark.is_none() && now >= started + warm_up {
            let ticks = cpu_ticks(args.broker_pid).unwrap_or(0);
            mark = Some((now, ticks, consumed.load(Ordering::Relaxed)));
        }
        if let Some((from, _, _)) = mark
            && now >= from + window
        {
            break;
        }
        owed += per_tick;
        while owed >= 1.0 {
            owed -= 1.0;
            let confirm = channel
                .basic_publish(
                    "".into(),
                    queue.into(),
                    BasicPublishOptions::default(),
                    &body,
                    BasicProperties::default().with_delivery_mode(2),
                )
                .await?;
            confirms.spawn(async move { confirm.await.map(|c| c.is_ack()) });
        }
        while let Some(done) = confirms.try_join_next() {
            match done {
                Ok(Err(e)) => return Err(e),
                Ok(Ok(false)) => nacked += 1,
                _ => {}
            }
        }
    }
    let (from, ticks_from, consumed_from) = mark.unwrap_or((started, 0, 0));
    let elapsed = from.elapsed().as_secs_f64();
    let ticks = cpu_ticks(args.broker_pid)
        .unwrap_or(ticks_from)
        .saturating_sub(ticks_from);
    let logical = consumed
        .load(Ordering::Relaxed)
        .saturating_sub(consumed_from);
    while let Some(done) = confirms.join_next().await {
        if let Ok(Ok(false)) = done {
            nacked += 1;
        }
    }
    if nacked > 0 {
        eprintln!("broker-probe: the broker refused {nacked} publishes (nacks)");
    }
    let logical_per_s = logical as f64 / elapsed;
    Ok(Measured {
        envelope,
        tick_ms,
        amqp_per_s: logical_per_s / f64::from(envelope),
        logical_per_s,
        broker_cores: ticks as f64 / TICKS_PER_S / elapsed,
    })
}
