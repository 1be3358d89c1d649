//! What `/proc` tells about the machine's processes (Linux; elsewhere
//! nothing is found): the service processes by name, their resident set
//! size sampled while a level is measured, and the load average.

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
    #[cfg(target_os = "linux")]
    fn this_process_has_an_rss() {
        assert!(rss_kib(std::process::id()).is_some_and(|k| k > 0));
    }
}
