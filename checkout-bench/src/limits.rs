//! The infrastructure's ceilings, measured in the same run as the load:
//! durable single-row commits per second on Postgres (`pgbench` with a
//! one-row `INSERT` script; the same with sqlx when `pgbench` is missing) and
//! confirmed persistent publishes per second on RabbitMQ (raw lapin, one at a
//! time and pipelined).

use std::sync::Arc;
use std::time::Duration;

use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use sea_orm::ConnectionTrait;
use tokio::time::Instant;

use checkout_app::runtime;

use super::BenchArgs;
use super::report::Limit;

const PROBE_DB: &str = "bench_limits";

/// Measures every ceiling the arguments give access to.
pub(crate) async fn measure(args: &BenchArgs) -> Vec<Limit> {
    let mut limits = Vec::new();
    let seconds = args.limits_duration.as_secs().max(1);
    match &args.db_url {
        Some(url) => {
            for c in [1, 32] {
                limits.push(postgres(url, c, seconds, &args.out).await);
            }
        }
        None => limits.push(Limit {
            what: "Postgres single-row commits".into(),
            concurrency: 0,
            per_second: None,
            how: "not measured: no --db-url".into(),
        }),
    }
    match &args.rabbitmq_url {
        Some(url) => {
            for c in [1, 32] {
                limits.push(rabbitmq(url, c, args.limits_duration).await);
            }
        }
        None => limits.push(Limit {
            what: "RabbitMQ confirmed publishes".into(),
            concurrency: 0,
            per_second: None,
            how: "not measured: no --rabbitmq-url".into(),
        }),
    }
    limits
}

async fn postgres(url: &str, clients: usize, seconds: u64, out: &std::path::Path) -> Limit {
    let what = "Postgres single-row commits".to_owned();
    let failed = |how: String| Limit {
        what: what.clone(),
        concurrency: clients,
        per_second: None,
        how,
    };
    if let Err(e) = runtime::ensure_database(url, PROBE_DB).await {
        return failed(format!("not measured: {e}"));
    }
    let probe_url = runtime::with_database(url, PROBE_DB);
    let db = match checkout_app::db::connect(&probe_url, clients as u32).await {
        Ok(db) => db,
        Err(e) => return failed(format!("not measured: {e}")),
    };
    if let Err(e) = db
        .execute_unprepared(
            "CREATE TABLE IF NOT EXISTS commit_probe (id bigserial PRIMARY KEY, v integer NOT NULL, at timestamptz NOT NULL DEFAULT now())",
        )
        .await
    {
        return failed(format!("not measured: {e}"));
    }
    let script = out.join("pgbench-insert.sql");
    if let Err(e) = std::fs::write(&script, "INSERT INTO commit_probe (v) VALUES (1);\n") {
        return failed(format!("not measured: {e}"));
    }
    let threads = clients.min(2);
    let redacted = checkout_app::db::redact(&probe_url);
    let how = format!(
        "pgbench -n -f {} -c {clients} -j {threads} -T {seconds} '{redacted}'",
        script.display()
    );
    let mut command = std::process::Command::new("pgbench");
    command.args(["-n", "-f"]).arg(&script).args([
        "-c",
        &clients.to_string(),
        "-j",
        &threads.to_string(),
        "-T",
        &seconds.to_string(),
        &probe_url,
    ]);
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .map_err(std::io::Error::other)
        .and_then(|r| r);
    let result = match output {
        Ok(o) if o.status.success() => {
            let text = String::from_utf8_lossy(&o.stdout);
            text.lines()
                .find(|l| l.trim_start().starts_with("tps = "))
                .and_then(|l| l.trim_start()["tps = ".len()..].split_whitespace().next())
                .and_then(|n| n.parse::<f64>().ok())
                .map(|tps| Limit {
                    what: what.clone(),
                    concurrency: clients,
                    per_second: Some(tps),
                    how: how.clone(),
                })
                .ok_or_else(|| "pgbench printed no tps".to_owned())
        }
        Ok(o) => Err(format!("pgbench failed: {}", pgbench_error(&o.stderr))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err("pgbench unavailable".to_owned()),
        Err(e) => Err(format!("pgbench did not run: {e}")),
    };
    let limit = match result {
        Ok(limit) => limit,
        // No pgbench result: the same single-row INSERT commits through sqlx,
        // with the reason in the report.
        Err(reason) => sqlx_inserts(&db, clients, Duration::from_secs(seconds))
            .await
            .map_or_else(
                |e| failed(format!("not measured: {e}")),
                |rate| Limit {
                    what: what.clone(),
                    concurrency: clients,
                    per_second: Some(rate),
                    how: format!(
                        "{reason}; {clients} sqlx connection(s) each running INSERT INTO commit_probe (v) VALUES (1) in autocommit for {seconds}s"
                    ),
                },
            ),
    };
    let _ = db.execute_unprepared("TRUNCATE commit_probe").await;
    let _ = db.close().await;
    limit
}

/// The telling line of pgbench's error output: the first that names an
/// error (the last line is often only "Run was aborted..."), else the last.
fn pgbench_error(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    lines
        .iter()
        .find(|l| {
            let lower = l.to_ascii_lowercase();
            lower.contains("error") || lower.contains("fatal")
        })
        .or(lines.last())
        .map_or_else(|| "no message".to_owned(), |l| (*l).to_owned())
}

async fn sqlx_inserts(
    db: &sea_orm::DatabaseConnection,
    clients: usize,
    duration: Duration,
) -> Result<f64, sea_orm::DbErr> {
    let end = Instant::now() + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let db = db.clone();
        tasks.spawn(async move {
            let mut n = 0_u64;
            while Instant::now() < end {
                db.execute_unprepared("INSERT INTO commit_probe (v) VALUES (1)")
                    .await?;
                n += 1;
            }
            Ok::<_, sea_orm::DbErr>(n)
        });
    }
    let mut total = 0;
    while let Some(joined) = tasks.join_next().await {
        total += joined.map_err(|e| sea_orm::DbErr::Custom(e.to_string()))??;
    }
    Ok(total as f64 / duration.as_secs_f64())
}

async fn rabbitmq(url: &str, in_flight: usize, duration: Duration) -> Limit {
    let what = if in_flight == 1 {
        "RabbitMQ confirmed publishes, awaited one by one".to_owned()
    } else {
        "RabbitMQ confirmed publishes, pipelined".to_owned()
    };
    let how = format!(
        "raw lapin, one channel in confirm mode, {in_flight} task(s) each publishing a persistent ~600-byte message to a quorum queue and awaiting its confirm, {}s",
        duration.as_secs()
    );
    match publish(url, in_flight, duration).await {
        Ok(rate) => Limit {
            what,
            concurrency: in_flight,
            per_second: Some(rate),
            how,
        },
        Err(e) => Limit {
            what,
            concurrency: in_flight,
            per_second: None,
            how: format!("not measured: {e}"),
        },
    }
}

async fn publish(url: &str, in_flight: usize, duration: Duration) -> Result<f64, lapin::Error> {
    let connection = Connection::connect(url, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    let queue = format!("bench_limits_{}", uuid::Uuid::new_v4().simple());
    declare_with_confirms(&channel, &queue, "quorum").await?;
    let body: Arc<Vec<u8>> = Arc::new(vec![b'x'; 600]);
    let end = Instant::now() + duration;
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..in_flight {
        let channel = channel.clone();
        let body = Arc::clone(&body);
        let queue = queue.clone();
        tasks.spawn(async move {
            let mut n = 0_u64;
            while Instant::now() < end {
                let confirm = channel
                    .basic_publish(
                        "".into(),
                        queue.as_str().into(),
                        BasicPublishOptions::default(),
                        &body,
                        BasicProperties::default().with_delivery_mode(2),
                    )
                    .await?;
                if confirm.await?.is_ack() {
                    n += 1;
                }
            }
            Ok::<_, lapin::Error>(n)
        });
    }
    let mut total = 0;
    let mut first_error = None;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok(n)) => total += n,
            Ok(Err(e)) => first_error = first_error.or(Some(e)),
            Err(_) => {}
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let _ = channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await;
    let _ = connection.close(200, "OK".into()).await;
    match first_error {
        Some(e) => Err(e),
        None => Ok(total as f64 / elapsed),
    }
}

/// Declares the durable queue `queue` of `queue_type` (`quorum`,
/// `classic`) and puts `channel` in confirm mode, as a probe of the broker
/// needs them.
///
/// # Errors
/// The broker's refusal.
pub async fn declare_with_confirms(
    channel: &lapin::Channel,
    queue: &str,
    queue_type: &str,
) -> Result<(), lapin::Error> {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from(queue_type)),
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
        .await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
}

#[cfg(test)]
mod tests {
    use super::pgbench_error;

    #[test]
    fn pgbench_errors_name_the_cause_not_the_abort() {
        let stderr = b"pgbench: error: connection to server failed: FATAL:  sorry, too many clients already\npgbench: error: could not create connection for client 31\npgbench: fatal: Run was aborted; the above results are incomplete.\n";
        assert_eq!(
            pgbench_error(stderr),
            "pgbench: error: connection to server failed: FATAL:  sorry, too many clients already"
        );
        assert_eq!(pgbench_error(b"\n  something odd\n\n"), "something odd");
        assert_eq!(pgbench_error(b""), "no message");
    }
}
