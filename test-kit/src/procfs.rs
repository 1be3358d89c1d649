//! What `/proc` tells about the machine's processes (Linux; elsewhere
//! nothing is found): the service processes by name, their resident set
//! size sampled while a level is measured, the CPU time they and the
//! infrastructure (PostgreSQL, RabbitMQ) spend in it, and the load average.

use std::time::Duration;

use serde::Serialize;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// The highest RSS a process reached while a level was measured.
#[derive(Clone, Debug, Serialize)]
pub struct ProcessRss {
    /// Process id.
    pub pid: u32,
    /// The service (`order-service`, `all`, ...) from its command line.
    pub name: String,
    /// Highest resident set size, KiB.
    pub max_kib: u64,
    /// How many samples were taken (every 100 ms).
    pub samples: u64,
}

/// Every process named `name` (the executable's file name) but `except`.
#[must_use]
pub fn discover(name: &str, except: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<u32> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != except)
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| comm.trim() == name)
        })
        .collect();
    pids.sort_unstable();
    pids
}

/// A short label: the subcommand of a `checkout-app` command line, else the executable.
#[must_use]
pub fn label(pid: u32) -> String {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return format!("pid {pid}");
    };
    let args: Vec<String> = cmdline
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let exe = args
        .first()
        .map(|a| a.rsplit('/').next().unwrap_or(a).to_owned())
        .unwrap_or_default();
    match args.iter().skip(1).find(|a| !a.starts_with('-')) {
        Some(sub) if exe == "checkout-app" => sub.clone(),
        _ if exe == "checkout-app" => "all".to_owned(),
        _ => exe,
    }
}

/// The current RSS of `pid` in KiB.
#[must_use]
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// Samples every 100 ms between `from` and `until`.
#[derive(Debug)]
pub struct RssSampler {
    task: JoinHandle<Vec<ProcessRss>>,
}

impl RssSampler {
    /// Starts sampling `pids`.
    #[must_use]
    pub fn start(pids: Vec<u32>, from: Instant, until: Instant) -> Self {
        let task = tokio::spawn(async move {
            let mut max: Vec<ProcessRss> = pids
                .iter()
                .map(|&pid| ProcessRss {
                    pid,
                    name: label(pid),
                    max_kib: 0,
                    samples: 0,
                })
                .collect();
            tokio::time::sleep_until(from).await;
            while Instant::now() < until {
                for m in &mut max {
                    if let Some(kib) = rss_kib(m.pid) {
                        m.max_kib = m.max_kib.max(kib);
                        m.samples += 1;
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            max
        });
        Self { task }
    }

    /// The highest RSS of every sampled process.
    pub async fn finish(self) -> Vec<ProcessRss> {
        self.task.await.unwrap_or_default()
    }
}

/// CPU time one component spent while a level was measured.
#[derive(Clone, Debug, Serialize)]
pub struct ComponentCpu {
    /// The service (`order-service`, `all`...), `postgres` (every server
    /// process: backends, WAL writer, checkpointer...) or `rabbitmq` (the
    /// broker's Erlang VM).
    pub name: String,
    /// User plus system CPU time, milliseconds.
    pub cpu_ms: f64,
}

/// Kernel clock ticks per second of `/proc/PID/stat` times (`USER_HZ`, 100
/// on Linux for x86_64 and arm64).
pub const TICKS_PER_S: f64 = 100.0;

/// User plus system CPU time `pid` has used, in clock ticks.
#[must_use]
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields count from the last `)`.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // After the name: state is field 3, utime field 14, stime field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// The processes whose CPU a level counts: `services` under their labels,
/// and every `postgres` and `beam.smp` process found now.
fn cpu_components(services: &[u32]) -> Vec<(u32, String)> {
    let mut all: Vec<(u32, String)> = services.iter().map(|&pid| (pid, label(pid))).collect();
    all.extend(
        discover("postgres", 0)
            .into_iter()
            .map(|pid| (pid, "postgres".to_owned())),
    );
    all.extend(
        discover("beam.smp", 0)
            .into_iter()
            .map(|pid| (pid, "rabbitmq".to_owned())),
    );
    all
}

/// Measures the CPU time of the services and the infrastructure between two
/// instants: a snapshot at `from`, another at `until`. A process started in
/// between (a new database backend) counts from zero; one that ended in
/// between is lost.
#[derive(Debug)]
pub struct CpuMeter {
    task: JoinHandle<Vec<ComponentCpu>>,
}

impl CpuMeter {
    /// Starts measuring `services` (and PostgreSQL and RabbitMQ).
    #[must_use]
    pub fn start(services: Vec<u32>, from: Instant, until: Instant) -> Self {
        let task = tokio::spawn(async move {
            tokio::time::sleep_until(from).await;
            let before: Vec<(u32, String, u64)> = cpu_components(&services)
                .into_iter()
                .filter_map(|(pid, name)| Some((pid, name, cpu_ticks(pid)?)))
                .collect();
            tokio::time::sleep_until(until).await;
            let mut by_name: Vec<ComponentCpu> = Vec::new();
            for (pid, name) in cpu_components(&services) {
                let Some(now) = cpu_ticks(pid) else {
                    continue;
                };
                let start = before
                    .iter()
                    .find(|(p, n, _)| *p == pid && *n == name)
                    .map_or(0, |(_, _, t)| *t);
                #[allow(clippy::cast_precision_loss)]
                let cpu_ms = now.saturating_sub(start) as f64 * 1000.0 / TICKS_PER_S;
                match by_name.iter_mut().find(|c| c.name == name) {
                    Some(c) => c.cpu_ms += cpu_ms,
                    None => by_name.push(ComponentCpu { name, cpu_ms }),
                }
            }
            by_name
        });
        Self { task }
    }

    /// CPU time per component.
    pub async fn finish(self) -> Vec<ComponentCpu> {
        self.task.await.unwrap_or_default()
    }
}

/// The first line of a file (empty when it cannot be read).
#[must_use]
pub fn first_line(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.lines().next().unwrap_or_default().trim().to_owned())
        .unwrap_or_default()
}

/// The 1, 5 and 15 minute load averages from `/proc/loadavg`.
#[must_use]
pub fn loadavg() -> String {
    first_line("/proc/loadavg")
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_grow_with_work_done() {
        let me = std::process::id();
        let before = cpu_ticks(me).expect("our own /proc/PID/stat");
        let started = std::time::Instant::now();
        let mut x = 0_u64;
        while started.elapsed() < Duration::from_millis(300) {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        }
        std::hint::black_box(x);
        let after = cpu_ticks(me).expect("our own /proc/PID/stat");
        // 300 ms of busy work is about 30 ticks; at least 10 whatever the machine.
        assert!(after >= before + 10, "{before} -> {after}");
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn this_process_has_an_rss() {
        assert!(rss_kib(std::process::id()).is_some_and(|k| k > 0));
    }
}
