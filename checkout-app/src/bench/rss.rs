//! Resident set size of the service processes, sampled from `/proc` while a
//! level is measured (Linux; elsewhere nothing is sampled).

use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;

pub(crate) use super::report::ProcessRss as RssMax;

/// Every process named `name` (the executable's file name) but `except`.
pub(crate) fn discover(name: &str, except: u32) -> Vec<u32> {
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
pub(crate) fn label(pid: u32) -> String {
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
pub(crate) fn rss_kib(pid: u32) -> Option<u64> {
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
pub(crate) struct RssSampler {
    task: JoinHandle<Vec<RssMax>>,
}

impl RssSampler {
    pub(crate) fn start(pids: Vec<u32>, from: Instant, until: Instant) -> Self {
        let task = tokio::spawn(async move {
            let mut max: Vec<RssMax> = pids
                .iter()
                .map(|&pid| RssMax {
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

    pub(crate) async fn finish(self) -> Vec<RssMax> {
        self.task.await.unwrap_or_default()
    }
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
