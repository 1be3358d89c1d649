//! The report: figures per concurrency level, the invariants, the limits and
//! the machine; written as `report.json`, `report.md` and `latency.svg`, and
//! printed.

use std::path::Path;

use serde::Serialize;

use checkout_app::error::Result;
use test_kit::invariants::Invariants;
use test_kit::load::LevelResult;
pub use test_kit::procfs::{ComponentCpu, ProcessRss};
use test_kit::procfs::{first_line, loadavg};

use super::BenchArgs;

/// One infrastructure ceiling measured in the same run.
#[derive(Clone, Debug, Serialize)]
pub struct Limit {
    /// What was measured.
    pub what: String,
    /// Clients or messages in flight.
    pub concurrency: usize,
    /// Operations per second; `None` when it could not be measured.
    pub per_second: Option<f64>,
    /// The command or method that reproduces it, or why it is missing.
    pub how: String,
}

/// Where and how the run happened.
#[derive(Clone, Debug, Serialize)]
pub struct RunInfo {
    /// The target (a running stack, a spawned one, the engine level).
    pub target: String,
    /// The command line.
    pub command: String,
    /// Start time (UTC, RFC 3339).
    pub started_at: String,
    /// Seed of the carts.
    pub seed: u64,
    /// Measured seconds per level.
    pub duration_s: f64,
    /// Warm-up seconds per level.
    pub warmup_s: f64,
    /// Stock set on every product before the run (when the databases were reachable).
    pub stock: i32,
    /// `release` or `debug`.
    pub build: String,
    /// CPU model.
    pub cpu: String,
    /// Logical cores available.
    pub cores: usize,
    /// Total memory, MiB.
    pub memory_mib: u64,
    /// Kernel release.
    pub kernel: String,
    /// `/proc/loadavg` when the run started.
    pub loadavg_start: String,
    /// `/proc/loadavg` when the report was written.
    pub loadavg_end: String,
    /// Processes whose RSS was sampled.
    pub pids: Vec<u32>,
}

impl RunInfo {
    pub(crate) fn collect(args: &BenchArgs, target: &str, pids: Vec<u32>) -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_owned())
            .unwrap_or_else(|| "unknown".to_owned());
        let memory_mib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find_map(|l| l.strip_prefix("MemTotal:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            })
            .map_or(0, |kib| kib / 1024);
        let command = std::env::args()
            .map(|a| {
                if a.contains("://") {
                    checkout_app::db::redact(&a)
                } else {
                    a
                }
            })
            .collect::<Vec<_>>()
            .join(" ");
        Self {
            target: target.to_owned(),
            command,
            started_at: chrono::Utc::now().to_rfc3339(),
            seed: args.seed,
            duration_s: args.duration.as_secs_f64(),
            warmup_s: args.warmup.as_secs_f64(),
            stock: args.stock,
            build: if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            }
            .to_owned(),
            cpu,
            cores: std::thread::available_parallelism().map_or(1, usize::from),
            memory_mib,
            kernel: first_line("/proc/sys/kernel/osrelease"),
            loadavg_start: loadavg(),
            loadavg_end: String::new(),
            pids,
        }
    }
}

/// The figures of one concurrency level.
#[derive(Clone, Debug, Serialize)]
pub struct LevelReport {
    /// Closed-loop clients.
    pub concurrency: usize,
    /// Measured seconds.
    pub duration_s: f64,
    /// Completed sagas (succeeded + compensated) per second.
    pub sagas_per_s: f64,
    /// Checkouts whose saga completed (order confirmed).
    pub succeeded: u64,
    /// Checkouts whose saga compensated (order cancelled).
    pub compensated: u64,
    /// Requests that ended otherwise (HTTP errors, timeouts, failed sagas).
    pub errors: u64,
    /// Error descriptions and counts.
    pub error_kinds: Vec<(String, u64)>,
    /// Median latency of completed sagas, ms.
    pub p50_ms: f64,
    /// 95th percentile, ms.
    pub p95_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Slowest, ms.
    pub max_ms: f64,
    /// Mean, ms.
    pub mean_ms: f64,
    /// Completed sagas in each second of the measured window.
    pub per_second: Vec<u64>,
    /// Highest RSS of each sampled process during the window.
    pub rss: Vec<ProcessRss>,
    /// CPU time per component (each service, `postgres`, `rabbitmq`) during the window.
    pub cpu: Vec<ComponentCpu>,
    /// All of `cpu` divided by the completed checkouts, milliseconds
    /// (`None` when nothing completed or no process was measured).
    pub cpu_ms_per_checkout: Option<f64>,
    /// `/proc/loadavg` at the end of the level.
    pub loadavg: String,
}

impl LevelReport {
    fn from_result(level: LevelResult) -> Self {
        let h = &level.latency;
        let ms = |micros: u64| micros as f64 / 1000.0;
        let completed = level.measured.succeeded + level.measured.compensated;
        let empty = h.is_empty();
        let q = |quantile: f64| {
            if empty {
                0.0
            } else {
                ms(h.value_at_quantile(quantile))
            }
        };
        Self {
            concurrency: level.clients,
            duration_s: level.duration.as_secs_f64(),
            sagas_per_s: completed as f64 / level.duration.as_secs_f64().max(1e-9),
            succeeded: level.measured.succeeded,
            compensated: level.measured.compensated,
            errors: level.measured.errors,
            error_kinds: level.error_kinds,
            p50_ms: q(0.50),
            p95_ms: q(0.95),
            p99_ms: q(0.99),
            max_ms: if empty { 0.0 } else { ms(h.max()) },
            mean_ms: if empty { 0.0 } else { h.mean() / 1000.0 },
            per_second: level.timeline,
            rss: level.rss,
            cpu_ms_per_checkout: per_checkout(&level.cpu, completed),
            cpu: level.cpu,
            loadavg: level.loadavg,
        }
    }
}

/// A whole run.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// The machine and the settings.
    pub info: RunInfo,
    /// One entry per concurrency level.
    pub levels: Vec<LevelReport>,
    /// The invariant checks (`None` without database access).
    pub invariants: Option<Invariants>,
    /// The infrastructure's ceilings (`None` without `--limits`).
    pub limits: Option<Vec<Limit>>,
}

impl Report {
    pub(crate) fn new(
        mut info: RunInfo,
        levels: Vec<LevelResult>,
        invariants: Option<Invariants>,
        limits: Option<Vec<Limit>>,
    ) -> Self {
        info.loadavg_end = loadavg();
        Self {
            info,
            levels: levels.into_iter().map(LevelReport::from_result).collect(),
            invariants,
            limits,
        }
    }

    /// Writes `report.json`, `report.md` and `latency.svg` into `out`.
    ///
    /// # Errors
    /// When a file cannot be written.
    pub fn write(&self, out: &Path) -> Result<()> {
        std::fs::create_dir_all(out)?;
        let json = serde_json::to_vec_pretty(self)
            .map_err(|e| checkout_app::error::Error::Config(format!("report: {e}")))?;
        std::fs::write(out.join("report.json"), json)?;
        std::fs::write(out.join("report.md"), self.markdown())?;
        std::fs::write(out.join("latency.svg"), super::plot::svg(&self.levels))?;
        Ok(())
    }

    /// The report as Markdown tables.
    #[must_use]
    pub fn markdown(&self) -> String {
        use std::fmt::Write as _;
        let mut md = String::new();
        let i = &self.info;
        let _ = writeln!(md, "## Load: {}\n", i.target);
        let _ = writeln!(
            md,
            "`{}`\n\n{} build; {} s per level after {} s warm-up; seed {}; {}; {} cores, {} MiB; kernel {}; load average {} at the start, {} at the end.\n",
            i.command,
            i.build,
            i.duration_s,
            i.warmup_s,
            i.seed,
            i.cpu,
            i.cores,
            i.memory_mib,
            i.kernel,
            i.loadavg_start,
            i.loadavg_end
        );
        md.push_str("| clients | sagas/s | succeeded | compensated | errors | p50 ms | p95 ms | p99 ms | max ms | load avg |\n");
        md.push_str("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n");
        for l in &self.levels {
            let _ = writeln!(
                md,
                "| {} | {:.1} | {} | {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {} |",
                l.concurrency,
                l.sagas_per_s,
                l.succeeded,
                l.compensated,
                l.errors,
                l.p50_ms,
                l.p95_ms,
                l.p99_ms,
                l.max_ms,
                l.loadavg
            );
        }
        let errors: Vec<String> = self
            .levels
            .iter()
            .flat_map(|l| {
                l.error_kinds
                    .iter()
                    .map(move |(k, n)| format!("c={}: {n} × {k}", l.concurrency))
            })
            .collect();
        if !errors.is_empty() {
            let _ = writeln!(md, "\nErrors: {}.", errors.join("; "));
        }
        if self.levels.iter().any(|l| l.cpu_ms_per_checkout.is_some()) {
            self.cpu_table(&mut md);
        }
        if self.levels.iter().any(|l| !l.rss.is_empty()) {
            md.push_str(
                "\nMax RSS (MiB) per process while each level was measured:\n\n| process | pid |",
            );
            for l in &self.levels {
                let _ = write!(md, " c={} |", l.concurrency);
            }
            md.push_str("\n|---|---:|");
            for _ in &self.levels {
                md.push_str("---:|");
            }
            md.push('\n');
            let processes: Vec<(u32, String)> = self
                .levels
                .iter()
                .flat_map(|l| l.rss.iter().map(|r| (r.pid, r.name.clone())))
                .fold(Vec::new(), |mut acc, p| {
                    if !acc.contains(&p) {
                        acc.push(p);
                    }
                    acc
                });
            for (pid, name) in processes {
                let _ = write!(md, "| {name} | {pid} |");
                for l in &self.levels {
                    match l.rss.iter().find(|r| r.pid == pid && r.samples > 0) {
                        Some(r) => {
                            let _ = write!(md, " {:.1} |", r.max_kib as f64 / 1024.0);
                        }
                        None => md.push_str(" – |"),
                    }
                }
                md.push('\n');
            }
        }
        match &self.invariants {
            Some(inv) => {
                let _ = writeln!(
                    md,
                    "\nInvariants ({}; drained in {} ms): {}\n",
                    inv.scope,
                    inv.drain_ms,
                    if inv.all_hold() {
                        "all hold"
                    } else {
                        "VIOLATED"
                    }
                );
                md.push_str("| check | holds | detail |\n|---|---|---|\n");
                for c in &inv.checks {
                    let _ = writeln!(
                        md,
                        "| {} | {} | {} |",
                        c.name,
                        if c.ok { "yes" } else { "**NO**" },
                        c.detail.replace('|', "/")
                    );
                }
            }
            None => md.push_str("\nInvariants: not checked (no database access: pass --db-url).\n"),
        }
        if let Some(limits) = &self.limits {
            md.push_str("\nLimits measured in the same run:\n\n| ceiling | concurrency | per second | how |\n|---|---:|---:|---|\n");
            for l in limits {
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} |",
                    l.what,
                    l.concurrency,
                    l.per_second.map_or("–".to_owned(), |r| format!("{r:.0}")),
                    l.how.replace('|', "/")
                );
            }
        }
        md
    }

    /// Prints the report (the bench is a command-line tool: this is its output).
    pub fn print(&self, out: &Path) {
        println!("{}", self.markdown());
        println!(
            "wrote {}, {} and {}",
            out.join("report.json").display(),
            out.join("report.md").display(),
            out.join("latency.svg").display()
        );
    }
}

/// Milliseconds of CPU per completed checkout.
fn per_checkout(cpu: &[ComponentCpu], completed: u64) -> Option<f64> {
    let total: f64 = cpu.iter().map(|c| c.cpu_ms).sum();
    #[allow(clippy::cast_precision_loss)]
    (completed > 0 && total > 0.0).then(|| total / completed as f64)
}

impl Report {
    /// CPU per checkout by component, one column per level.
    fn cpu_table(&self, md: &mut String) {
        use std::fmt::Write as _;
        md.push_str(
            "\nCPU per checkout (ms: user + system time of each component over the \
             measured window ÷ completed checkouts; the load generator apart):\n\n| component |",
        );
        for l in &self.levels {
            let _ = write!(md, " c={} |", l.concurrency);
        }
        md.push_str("\n|---|");
        for _ in &self.levels {
            md.push_str("---:|");
        }
        md.push('\n');
        let names: Vec<String> = self
            .levels
            .iter()
            .flat_map(|l| l.cpu.iter().map(|c| c.name.clone()))
            .fold(Vec::new(), |mut acc, n| {
                if !acc.contains(&n) {
                    acc.push(n);
                }
                acc
            });
        for name in names {
            let _ = write!(md, "| {name} |");
            for l in &self.levels {
                let completed = l.succeeded + l.compensated;
                match l.cpu.iter().find(|c| c.name == name) {
                    #[allow(clippy::cast_precision_loss)]
                    Some(c) if completed > 0 => {
                        let _ = write!(md, " {:.2} |", c.cpu_ms / completed as f64);
                    }
                    _ => md.push_str(" – |"),
                }
            }
            md.push('\n');
        }
        md.push_str("| **all** |");
        for l in &self.levels {
            match l.cpu_ms_per_checkout {
                Some(ms) => {
                    let _ = write!(md, " **{ms:.2}** |");
                }
                None => md.push_str(" – |"),
            }
        }
        md.push('\n');
    }
}
