//! What a run reports: every result as JSON (`benchmarks/results/<UTC
//! timestamp>.json`) and a markdown table (figure, ours, baseline, ours /
//! baseline, the target of `DESIGN.md`, met?), printed and, for a full run,
//! written to `benchmarks/RESULTS.md` with the machine, date and command.

use serde::Serialize;

use crate::core::CoreResult;
use crate::measure::{
    CatchUpResult, CopyCeiling, FreshnessResult, IngestResult, MemoryResult, ReadsResult,
};

/// The machine a run was made on.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Machine {
    pub hostname: String,
    pub cpu_model: String,
    pub cpus: usize,
    pub memory_gib: f64,
    pub kernel: String,
}

impl Machine {
    pub fn detect() -> Machine {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let cpuinfo = read("/proc/cpuinfo");
        let meminfo = read("/proc/meminfo");
        Machine {
            hostname: read("/proc/sys/kernel/hostname").trim().to_string(),
            cpu_model: cpuinfo
                .lines()
                .find_map(|l| l.strip_prefix("model name"))
                .and_then(|l| l.split(':').nth(1))
                .unwrap_or("unknown")
                .trim()
                .to_string(),
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            memory_gib: meminfo
                .lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<f64>().ok())
                .map_or(0.0, |kib| kib / 1_048_576.0),
            kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
        }
    }

    pub fn describe(&self) -> String {
        format!(
            "{} ({} CPUs: {}, {:.1} GiB, Linux {})",
            self.hostname, self.cpus, self.cpu_model, self.memory_gib, self.kernel
        )
    }
}

/// One ingest run of ours.
#[derive(Debug, Clone, Serialize)]
pub struct IngestRun {
    pub workers: usize,
    pub result: IngestResult,
}

/// Everything one `bench all` measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Results {
    pub started_at: String,
    pub finished_at: String,
    pub command: String,
    pub quick: bool,
    pub machine: Machine,
    pub options: serde_json::Value,
    pub core: Vec<CoreResult>,
    pub ingest: Vec<IngestRun>,
    /// A backlog already in Kafka, then the service started on it.
    pub catch_up: Option<CatchUpResult>,
    /// The same rows as ours caught up with, by one binary COPY.
    pub copy_ceiling: Option<CopyCeiling>,
    pub freshness: Option<FreshnessResult>,
    pub reads: Option<ReadsResult>,
    pub memory: Option<MemoryResult>,
    /// The memory phase again, with horizons short enough to reach a steady state.
    pub soak: Option<MemoryResult>,
    pub baseline_ingest: Option<IngestResult>,
    pub baseline_catch_up: Option<CatchUpResult>,
    pub baseline_freshness: Option<FreshnessResult>,
    pub baseline_reads: Option<ReadsResult>,
    /// Phases that failed, with the error.
    pub errors: Vec<String>,
}

fn num(v: f64) -> String {
    if v >= 100.0 {
        let s = format!("{:.0}", v);
        let mut out = String::new();
        for (i, c) in s.chars().enumerate() {
            if i > 0 && (s.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        out
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// Three significant digits, for ratios far from 1.
fn significant(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return format!("{v}");
    }
    let digits = (2 - v.abs().log10().floor() as i32).max(0) as usize;
    format!("{v:.digits$}")
}

struct Table {
    rows: Vec<String>,
}

impl Table {
    fn row(
        &mut self,
        figure: &str,
        ours: Option<f64>,
        baseline: Option<f64>,
        target: &str,
        met: Option<bool>,
    ) {
        let cell = |v: Option<f64>| v.map_or("—".to_string(), num);
        let ratio = match (ours, baseline) {
            (Some(o), Some(b)) if b > 0.0 => format!("{}×", significant(o / b)),
            _ => "—".to_string(),
        };
        let met = match met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "—",
        };
        self.rows.push(format!(
            "| {figure} | {} | {} | {ratio} | {target} | {met} |",
            cell(ours),
            cell(baseline)
        ));
    }
}

/// The markdown table of a run.
pub fn table(r: &Results) -> String {
    let mut t = Table { rows: Vec::new() };
    for c in &r.core {
        t.row(
            &format!(
                "dataflow core -w {}, events/s per worker (total {}){}",
                c.workers,
                num(c.events_per_s),
                if c.completed { "" } else { " (NOT complete)" }
            ),
            Some(c.events_per_s_per_worker),
            None,
            "≥ 1,000,000",
            Some(c.events_per_s_per_worker >= 1_000_000.0 && c.completed),
        );
        t.row(
            &format!(
                "bytes per live window, core -w {} ((RSS end − RSS before) / {} live windows)",
                c.workers, c.live_windows
            ),
            c.bytes_per_live_window,
            None,
            "reported",
            None,
        );
    }
    let base_ingest = r.baseline_ingest.as_ref().map(|b| b.events_per_s);
    for run in &r.ingest {
        let i = &run.result;
        let flag = if i.completed && i.exact {
            ""
        } else if !i.completed {
            " (NOT drained)"
        } else {
            " (counts differ)"
        };
        t.row(
            &format!(
                "end to end -w {}, events/s, Kafka → PostgreSQL + stats{flag}",
                run.workers
            ),
            Some(i.events_per_s),
            base_ingest,
            "≥ 100,000",
            Some(i.events_per_s >= 100_000.0 && i.completed && i.exact),
        );
    }
    if let (Some(best), Some(b)) = (
        r.ingest
            .iter()
            .map(|run| run.result.events_per_s)
            .reduce(f64::max),
        base_ingest,
    ) {
        if b > 0.0 {
            t.row(
                "end to end, best ours / baseline",
                Some(best / b),
                None,
                "≥ 10×",
                Some(best / b >= 10.0),
            );
        }
    }
    if let Some(c) = &r.catch_up {
        let base = r.baseline_catch_up.as_ref();
        let ratio = base
            .filter(|b| b.completed && b.events_per_s > 0.0)
            .map(|b| c.events_per_s / b.events_per_s);
        t.row(
            &format!(
                "catch-up, events/s: a {}-event backlog in Kafka, process start → all durable and counted ({:.1} s{}){}",
                num(c.backlog.tally.total as f64),
                c.seconds,
                base.map_or(String::new(), |b| format!(" vs {:.1} s", b.seconds)),
                if c.completed && c.exact { "" } else { " (NOT complete or counts differ)" }
            ),
            Some(c.events_per_s),
            base.map(|b| b.events_per_s),
            "≥ 3× baseline",
            ratio.map(|x| x >= 3.0 && c.completed && c.exact),
        );
        if let Some(copy) = &r.copy_ceiling {
            t.row(
                &format!(
                    "catch-up / COPY ceiling (the same {} rows by one binary COPY into `events`: {:.2} s, {}/s)",
                    num(copy.rows as f64),
                    copy.seconds,
                    num(copy.rows_per_s)
                ),
                Some(c.events_per_s / copy.rows_per_s),
                None,
                "≥ 0.5",
                Some(c.events_per_s / copy.rows_per_s >= 0.5 && c.completed),
            );
        }
    }
    let bf = r.baseline_freshness.as_ref();
    if let Some(f) = &r.freshness {
        t.row(
            &format!(
                "freshness p50, ms, produce → dashboard at {} events/s",
                num(f.load.rate)
            ),
            Some(f.latency_ms.p50),
            bf.map(|b| b.latency_ms.p50),
            "—",
            None,
        );
        t.row(
            &format!(
                "freshness p99, ms ({} of {} markers seen)",
                f.markers_seen, f.markers_sent
            ),
            Some(f.latency_ms.p99),
            bf.map(|b| b.latency_ms.p99),
            "≤ 300",
            Some(f.latency_ms.p99 <= 300.0 && f.markers_seen == f.markers_sent),
        );
    }
    if let Some(reads) = &r.reads {
        let base = r.baseline_reads.as_ref();
        for (i, e) in reads.endpoints.iter().enumerate() {
            let b = base.and_then(|b| b.endpoints.get(i));
            t.row(
                &format!("{} p50, ms", e.path),
                Some(e.latency_ms.p50),
                b.map(|b| b.latency_ms.p50),
                "—",
                None,
            );
            t.row(
                &format!("{} p99, ms ({} errors)", e.path, e.errors),
                Some(e.latency_ms.p99),
                b.map(|b| b.latency_ms.p99),
                "≤ 5",
                Some(e.latency_ms.p99 <= 5.0 && e.errors == 0),
            );
        }
        t.row(
            &format!(
                "reads answered/s (asked {} req/s, ingest {} events/s)",
                num(reads.rate),
                num(reads.load.rate)
            ),
            Some(reads.all.throughput),
            base.map(|b| b.all.throughput),
            &num(reads.rate),
            Some(reads.all.throughput >= 0.99 * reads.rate),
        );
    }
    let mib = |k: u64| k as f64 / 1024.0;
    if let Some(m) = &r.memory {
        t.row(
            &format!("RSS MiB after {:.0} s warm-up", m.warmup_s),
            Some(mib(m.warm_kib)),
            None,
            "—",
            None,
        );
        t.row(
            &format!(
                "RSS MiB at the end ({:.0} s at {} events/s, default horizons)",
                m.samples.last().map_or(0.0, |s| s.0),
                num(m.load.rate)
            ),
            Some(mib(m.last_kib)),
            None,
            "≤ 1,024",
            Some(mib(m.last_kib) <= 1024.0),
        );
        t.row(
            "RSS growth from warm-up, % (default horizons: hours of windows, no steady state)",
            Some(m.max_deviation_pct),
            None,
            "—",
            None,
        );
    }
    if let Some(m) = &r.soak {
        t.row(
            &format!(
                "soak RSS MiB, max ({:.0} s at {} events/s, 1m and 5m windows, horizons 5 min)",
                m.samples.last().map_or(0.0, |s| s.0),
                num(m.load.rate)
            ),
            Some(mib(m.max_kib)),
            None,
            "—",
            None,
        );
        t.row(
            &format!("soak RSS MiB, mean after {:.0} s warm-up", m.warmup_s),
            Some(mib(m.mean_kib)),
            None,
            "—",
            None,
        );
        t.row(
            "soak RSS max deviation from that mean, %",
            Some(m.max_deviation_from_mean_pct),
            None,
            "≤ 10",
            Some(m.max_deviation_from_mean_pct <= 10.0),
        );
    }
    let mut out = String::from(
        "| figure | ours | baseline | ours / baseline | target | met? |\n|---|---|---|---|---|---|\n",
    );
    for row in t.rows {
        out.push_str(&row);
        out.push('\n');
    }
    for e in &r.errors {
        out.push_str(&format!("\nFAILED: {e}\n"));
    }
    out
}

/// The `RESULTS.md` of a full run.
pub fn results_md(r: &Results, json_path: &str) -> String {
    format!(
        "# Benchmark results\n\n\
         The latest full run of `make bench` (see `README.md` for what each figure means).\n\n\
         - date: {} to {} (UTC)\n\
         - machine: {}\n\
         - command: `{}`\n\
         - every figure: `{}`\n\n\
         {}",
        r.started_at,
        r.finished_at,
        r.machine.describe(),
        r.command,
        json_path,
        table(r)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers() {
        assert_eq!(num(1_234_567.8), "1,234,568");
        assert_eq!(num(100.0), "100");
        assert_eq!(num(12.34), "12.3");
        assert_eq!(num(0.256), "0.26");
        assert_eq!(significant(0.000577), "0.000577");
        assert_eq!(significant(36.88), "36.9");
        assert_eq!(significant(1.0), "1.00");
        assert_eq!(significant(1234.6), "1235");
    }

    fn rss_run(warm_mib: u64, samples_mib: &[u64]) -> MemoryResult {
        let kib = |m: u64| m * 1024;
        MemoryResult {
            target: "ours".into(),
            load: crate::loadgen::LoadReport {
                rate: 20_000.0,
                ..Default::default()
            },
            interval_s: 5.0,
            warmup_s: 300.0,
            samples: samples_mib
                .iter()
                .enumerate()
                .map(|(i, m)| (i as f64 * 300.0, kib(*m)))
                .collect(),
            warm_kib: kib(warm_mib),
            last_kib: kib(*samples_mib.last().expect("samples")),
            max_kib: kib(*samples_mib.iter().max().expect("samples")),
            max_deviation_pct: 0.0,
            mean_kib: 0,
            max_deviation_from_mean_pct: 0.0,
        }
    }

    #[test]
    fn memory_and_soak_rows_judge_their_own_targets() {
        let memory = MemoryResult {
            max_deviation_pct: 80.0,
            ..rss_run(600, &[500, 600, 1_100])
        };
        let soak = MemoryResult {
            max_deviation_pct: 25.0,
            mean_kib: 700 * 1024,
            max_deviation_from_mean_pct: 4.5,
            ..rss_run(700, &[600, 700, 720, 690])
        };
        let t = table(&Results {
            memory: Some(memory),
            soak: Some(soak),
            ..Results::default()
        });
        let row = |start: &str| {
            t.lines()
                .find(|l| l.starts_with(start))
                .unwrap_or_else(|| panic!("no row {start:?} in\n{t}"))
                .to_string()
        };
        // 1,100 MiB at the end is over 1 GiB; the default-horizon growth
        // is reported, not judged.
        assert!(
            row("| RSS MiB at the end (600 s").ends_with("| 1,100 | — | — | ≤ 1,024 | **no** |")
        );
        assert!(row("| RSS growth from warm-up").ends_with("| 80.0 | — | — | — | — |"));
        assert!(row("| soak RSS MiB, max (900 s").contains("| 720 |"));
        assert!(row("| soak RSS MiB, mean after 300 s").contains("| 700 |"));
        // Judged on the deviation from the mean, not from one sample.
        assert!(row("| soak RSS max deviation from that mean")
            .ends_with("| 4.50 | — | — | ≤ 10 | yes |"));
    }

    fn caught_up(label: &str, seconds: f64, complete: bool) -> CatchUpResult {
        let expected = 990_000;
        let reflected = if complete { expected } else { expected / 2 };
        CatchUpResult {
            target: label.into(),
            backlog: crate::loadgen::LoadReport {
                tally: crate::gen::Tally {
                    total: 1_000_000,
                    valid: expected as u64,
                    ..Default::default()
                },
                ..Default::default()
            },
            expected,
            reflected,
            exact: complete,
            mismatches: Vec::new(),
            seconds,
            events_per_s: reflected as f64 / seconds,
            completed: complete,
            stats_source: "live".into(),
            timeline: Vec::new(),
        }
    }

    #[test]
    fn catch_up_rows_judge_the_ratios() {
        let row = |r: &Results, start: &str| {
            let t = table(r);
            t.lines()
                .find(|l| l.starts_with(start))
                .unwrap_or_else(|| panic!("no row {start:?} in\n{t}"))
                .to_string()
        };
        let copy = CopyCeiling {
            rows: 990_000,
            bytes: 0,
            seconds: 5.0,
            rows_per_s: 198_000.0,
        };
        // 99,000/s against 33,000/s: 3×, and half the ceiling.
        let fast = Results {
            catch_up: Some(caught_up("ours", 10.0, true)),
            baseline_catch_up: Some(caught_up("baseline", 30.0, true)),
            copy_ceiling: Some(copy.clone()),
            ..Results::default()
        };
        assert!(
            row(&fast, "| catch-up, events/s: a 1,000,000-event backlog")
                .ends_with("| 99,000 | 33,000 | 3.00× | ≥ 3× baseline | yes |")
        );
        assert!(row(&fast, "| catch-up / COPY ceiling").ends_with("| 0.50 | — | — | ≥ 0.5 | yes |"));
        // Twice as slow: neither; one that never caught up is never met.
        let slow = Results {
            catch_up: Some(caught_up("ours", 20.0, true)),
            ..fast.clone()
        };
        assert!(row(&slow, "| catch-up, events/s").ends_with("| 1.50× | ≥ 3× baseline | **no** |"));
        assert!(row(&slow, "| catch-up / COPY ceiling").ends_with("| ≥ 0.5 | **no** |"));
        let stuck = Results {
            catch_up: Some(caught_up("ours", 1.0, false)),
            ..fast
        };
        assert!(row(&stuck, "| catch-up, events/s").contains("NOT complete"));
        assert!(row(&stuck, "| catch-up, events/s").ends_with("| **no** |"));
    }

    #[test]
    fn empty_table_has_a_header() {
        let t = table(&Results::default());
        assert!(t.starts_with("| figure | ours | baseline |"));
    }
}
