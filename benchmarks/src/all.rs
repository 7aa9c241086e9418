//! `bench all` (what `make bench` runs): every phase in order, each against
//! a fresh database and fresh topics, with the baseline measured in the
//! same run on the same data (same seed):
//!
//! 1. dataflow core, in this process, per worker count;
//! 2. ingest with ours, per worker count (a fresh service each);
//! 3. catch-up with ours: a backlog produced first, then the service
//!    started on it; then the same rows by one binary COPY (PostgreSQL's
//!    ceiling);
//! 4. freshness, then reads, with ours (one service);
//! 5. memory with ours (a fresh service, the default horizons);
//! 6. soak with ours (a fresh service keeping only the 1m and 5m
//!    intervals, with horizons of a few minutes, so that its state reaches
//!    its steady size within the run): RSS must stay flat;
//! 7. ingest, catch-up, then freshness and reads, with the baseline
//!    (`bench baseline` as a child process, a fresh database each).
//!
//! A failed phase is reported and the run goes on. The results are written
//! as JSON and printed as a table; a full run (not `--quick`) also writes
//! `RESULTS.md`.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;

use crate::env::{analytics_config, free_port, Child, Fixture, Services};
use crate::loadgen::{self, LoadSpec};
use crate::measure::{self, Target};
use crate::report::{self, IngestRun, Machine, Results};

/// Where the shared services are (the defaults of `make services`).
#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct ServiceArgs {
    #[arg(long, env = "KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    pub brokers: String,
    #[arg(long, default_value = "127.0.0.1")]
    pub pg_host: String,
    #[arg(long, default_value_t = 5432)]
    pub pg_port: u16,
    #[arg(long, default_value = "analytics_user")]
    pub pg_user: String,
    #[arg(long, default_value = "change_me")]
    #[serde(skip)]
    pub pg_password: String,
    /// Database to connect to for CREATE/DROP DATABASE.
    #[arg(long, default_value = "analytics")]
    pub pg_admin_db: String,
    #[arg(long, default_value = "127.0.0.1")]
    pub redis_host: String,
    #[arg(long, default_value_t = 6379)]
    pub redis_port: u16,
}

impl ServiceArgs {
    pub fn services(&self) -> Services {
        Services {
            brokers: self.brokers.clone(),
            pg_host: self.pg_host.clone(),
            pg_port: self.pg_port,
            pg_user: self.pg_user.clone(),
            pg_password: self.pg_password.clone(),
            pg_admin_db: self.pg_admin_db.clone(),
            redis_host: self.redis_host.clone(),
            redis_port: self.redis_port,
        }
    }

    pub fn db_settings(&self, database: &str) -> sink::DbSettings {
        sink::DbSettings {
            host: self.pg_host.clone(),
            port: self.pg_port,
            database: database.to_string(),
            user: self.pg_user.clone(),
            password: self.pg_password.clone(),
            max_connections: 10,
            connect_timeout: Duration::from_secs(10),
            application_name: "bench-baseline".into(),
            max_lifetime: None,
            tls: sink::TlsSettings::default(),
        }
    }
}

/// Every phase of `bench all`, in order: the default, and what a run must
/// cover to rewrite `RESULTS.md`.
const ALL_PHASES: &str = "core,ingest,catchup,freshness,reads,memory,soak,baseline";

/// `bench all` options; every duration has a full default and a `--quick` one.
#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct AllArgs {
    /// Smoke run: 10 s phases, 60 s of memory, 90 s of soak, 200,000 core events, a 100,000-event backlog; no RESULTS.md.
    #[arg(long)]
    pub quick: bool,
    /// Phases to run (comma separated): core, ingest, catchup, freshness, reads, memory, soak, baseline.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = ALL_PHASES
    )]
    pub phases: Vec<String>,
    /// Seed of the generated events (the same for ours and the baseline).
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Events in memory for the dataflow core [default: 2,000,000; quick 200,000].
    #[arg(long)]
    pub core_events: Option<u64>,
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    pub core_workers: Vec<usize>,
    /// Longest wait for the core's snapshot to count everything [default: 300; quick 60].
    #[arg(long)]
    pub core_max_secs: Option<u64>,
    /// Seconds of producing in the ingest phase [default: 60; quick 10].
    #[arg(long)]
    pub ingest_secs: Option<u64>,
    /// Ingest rate, events/s [default: as fast as the producer goes].
    #[arg(long)]
    pub ingest_rate: Option<f64>,
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    pub ingest_workers: Vec<usize>,
    /// Longest wait for stats to count everything after producing [default: 600; quick 60].
    #[arg(long)]
    pub drain_secs: Option<u64>,
    /// Events in the catch-up phase's backlog [default: 1,000,000; quick 100,000].
    #[arg(long)]
    pub catchup_events: Option<u64>,
    /// Longest wait for stats to count the whole backlog [default: 600; quick 120].
    #[arg(long)]
    pub catchup_secs: Option<u64>,
    /// Worker threads of the service in the catch-up, freshness, reads and memory phases.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    #[arg(long, default_value_t = 50_000.0)]
    pub freshness_rate: f64,
    /// [default: 60; quick 10]
    #[arg(long)]
    pub freshness_secs: Option<u64>,
    #[arg(long, default_value_t = 100)]
    pub marker_interval_ms: u64,
    /// Pause between two dashboard polls of the freshness phase.
    #[arg(long, default_value_t = 2)]
    pub poll_pause_ms: u64,
    /// Read requests per second, over the three endpoints in turn.
    #[arg(long, default_value_t = 2_000.0)]
    pub read_rate: f64,
    /// Ingest rate during the reads phase.
    #[arg(long, default_value_t = 50_000.0)]
    pub read_load_rate: f64,
    /// [default: 60; quick 10]
    #[arg(long)]
    pub reads_secs: Option<u64>,
    #[arg(long, default_value_t = 20_000.0)]
    pub memory_rate: f64,
    /// [default: 600; quick 60]
    #[arg(long)]
    pub memory_secs: Option<u64>,
    /// [default: 60; quick 10]
    #[arg(long)]
    pub memory_warmup_secs: Option<u64>,
    #[arg(long, default_value_t = 5)]
    pub memory_interval_secs: u64,
    /// The soak's rate: one the service sustains, so that what it holds
    /// settles instead of following a growing backlog.
    #[arg(long, default_value_t = 10_000.0)]
    pub soak_rate: f64,
    /// Length of the soak (short horizons) [default: 1200; quick 90].
    #[arg(long)]
    pub soak_secs: Option<u64>,
    /// Soak samples before this are its warm-up [default: 600; quick 30].
    #[arg(long)]
    pub soak_warmup_secs: Option<u64>,
    /// Partitions per topic.
    #[arg(long, default_value_t = 4)]
    pub partitions: i32,
    /// The service binary (built with --release).
    #[arg(long, default_value = "target/release/analytics")]
    pub analytics: PathBuf,
    /// Log level of the services under test (`RUST_LOG`).
    #[arg(long, default_value = "warn")]
    pub service_log: String,
    #[arg(long, default_value = "benchmarks/results")]
    pub out_dir: PathBuf,
    /// Where a full run writes its table [default: benchmarks/RESULTS.md].
    #[arg(long, default_value = "benchmarks/RESULTS.md")]
    pub results_md: PathBuf,
    /// Do not write RESULTS.md even for a full run.
    #[arg(long)]
    pub no_results_md: bool,
    #[command(flatten)]
    pub services: ServiceArgs,
}

impl AllArgs {
    fn pick(&self, explicit: Option<u64>, full: u64, quick: u64) -> Duration {
        Duration::from_secs(explicit.unwrap_or(if self.quick { quick } else { full }))
    }

    fn wants(&self, phase: &str) -> bool {
        self.phases.iter().any(|p| p == phase)
    }

    fn load(&self, topics: &[String], rate: Option<f64>, duration: Duration) -> LoadSpec {
        LoadSpec {
            brokers: self.services.brokers.clone(),
            topics: topics.to_vec(),
            rate,
            duration,
            events: None,
            seed: self.seed,
        }
    }
}

/// Which service a phase runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `extra`: lines added to the config's `analytics` section.
    Ours {
        workers: usize,
        extra: &'static str,
    },
    Baseline,
}

impl Kind {
    fn ours(workers: usize) -> Kind {
        Kind::Ours { workers, extra: "" }
    }
}

/// The soak's `analytics` settings, chosen so that the state reaches a
/// steady state within the warm-up: only the 1m and 5m intervals, each
/// closed window held for a whole number of its intervals (both 5m), so
/// that a window leaves memory exactly when a newer one closes: once the
/// service has held a full closed window of each interval (the 1m ones
/// after six minutes, a 5m one from the second 5m boundary, at most ten
/// minutes after the start) the windows per series and their fill are
/// the same at the same point of every five minutes. Seconds of counts
/// leave after two minutes, and the dashboard's windows span a minute or
/// two.
///
/// Longer intervals cannot reach a steady state in a run of minutes: their
/// open window grows until it closes (an hour to a day), and a closed one
/// stays at least a minute (the shortest horizon accepted), so at their
/// boundaries the windows per series double. With every interval at a
/// one-minute horizon, a soak across midnight (where 5m to 1d all close)
/// held 161k windows before and 282k during the minute after, and its RSS
/// deviated 43.7 % from the mean (benchmarks/RESULTS.md, "Soak: interval
/// boundaries").
const SOAK_ANALYTICS: &str = r#"  dataflow:
    live_horizon: 2m
  aggregation:
    intervals: ["1m", "5m"]
    horizons: {"1m": 5m, "5m": 5m}
  dashboard:
    orders_window: 2m
    active_users_window: 1m
"#;

/// Runs `f` on a fresh fixture (database and topics), then drops the
/// fixture whatever happened.
async fn with_fixture<T>(
    args: &AllArgs,
    name: &str,
    f: impl AsyncFnOnce(&Fixture) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let services = args.services.services();
    let fx = Fixture::new(&services, name, args.partitions).await?;
    let result = f(&fx).await;
    if let Err(e) = fx.cleanup().await {
        eprintln!("cleanup of {}: {e:#}", fx.name);
    }
    result
}

/// Starts a service of `kind` on `fx`, its API on a free port (not
/// waiting for it).
fn spawn(args: &AllArgs, kind: Kind, fx: &Fixture) -> anyhow::Result<Child> {
    let api = free_port()?;
    match kind {
        Kind::Ours { workers, extra } => {
            let config = fx.dir.join("config.yaml");
            std::fs::write(
                &config,
                analytics_config(
                    fx,
                    workers,
                    api,
                    free_port()?,
                    free_port()?,
                    &args.service_log,
                    extra,
                ),
            )?;
            Child::spawn(
                "analytics",
                &args.analytics,
                &[
                    "--config".into(),
                    config.display().to_string(),
                    "-w".into(),
                    workers.to_string(),
                    "run".into(),
                ],
                api,
                fx.dir.join("service.log"),
                &args.service_log,
            )
        }
        Kind::Baseline => {
            let exe = std::env::current_exe()?;
            let s = &args.services;
            Child::spawn(
                "baseline",
                &exe,
                &[
                    "baseline".into(),
                    "--brokers".into(),
                    s.brokers.clone(),
                    "--topics".into(),
                    fx.topics.join(","),
                    "--database".into(),
                    fx.database.clone(),
                    "--port".into(),
                    api.to_string(),
                    "--pg-host".into(),
                    s.pg_host.clone(),
                    "--pg-port".into(),
                    s.pg_port.to_string(),
                    "--pg-user".into(),
                    s.pg_user.clone(),
                    "--pg-password".into(),
                    s.pg_password.clone(),
                ],
                api,
                fx.dir.join("baseline.log"),
                &args.service_log,
            )
        }
    }
}

/// Runs `f` against a fresh service of `kind` on a fresh fixture, once it
/// is ready, then stops the service and drops the fixture whatever
/// happened.
async fn with_service<T, F, Fut>(args: &AllArgs, kind: Kind, name: &str, f: F) -> anyhow::Result<T>
where
    F: FnOnce(Target, Vec<String>) -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    with_fixture(args, name, async |fx| {
        let mut child = spawn(args, kind, fx)?;
        let target = Target::new(name, child.base_url(), child.pid())?;
        child.wait_ready(&target.http, "/ready").await?;
        let r = f(target, fx.topics.clone()).await;
        child.stop().await;
        r
    })
    .await
}

/// Catch-up: produces a backlog of `events` into a fresh fixture's topics
/// (as fast as the producer goes), then starts a service of `kind` on it
/// and times it until stats count the whole backlog. For ours, then
/// PostgreSQL's ceiling on the same rows ([`measure::copy_ceiling`]).
async fn catch_up(
    args: &AllArgs,
    kind: Kind,
    name: &str,
    events: u64,
    timeout: Duration,
) -> anyhow::Result<(measure::CatchUpResult, Option<measure::CopyCeiling>)> {
    with_fixture(args, name, async |fx| {
        let spec = LoadSpec {
            events: Some(events),
            ..args.load(&fx.topics, None, Duration::from_secs(3_600))
        };
        let backlog =
            tokio::task::spawn_blocking(move || loadgen::run(&spec, None, &AtomicBool::new(false)))
                .await
                .context("load generator thread")??;
        anyhow::ensure!(
            backlog.failed == 0,
            "{} events of the backlog not delivered",
            backlog.failed
        );
        say(&format!(
            "  backlog: {} events ({} valid) in {:.1} s",
            backlog.tally.total, backlog.tally.valid, backlog.send_s
        ));
        let started = Instant::now();
        let mut child = spawn(args, kind, fx)?;
        let target = Target::new(name, child.base_url(), child.pid())?;
        // Ours is ready only once its snapshot is fresh: alive is enough
        // to poll stats (the clock runs from the process start either way).
        let alive = match kind {
            Kind::Ours { .. } => "/livez",
            Kind::Baseline => "/ready",
        };
        let r = match child.wait_ready(&target.http, alive).await {
            Ok(()) => measure::catch_up(&target, backlog, started, timeout).await,
            Err(e) => Err(e),
        };
        child.stop().await;
        let r = r?;
        let copy = match kind {
            Kind::Ours { .. } if r.completed => Some(
                measure::copy_ceiling(&fx.services.pg_conn(&fx.database))
                    .await
                    .context("COPY ceiling")?,
            ),
            _ => None,
        };
        Ok((r, copy))
    })
    .await
}

fn catch_up_line(c: &measure::CatchUpResult) -> String {
    format!(
        "{} of {} valid events counted ({}, exact: {}) {:.1} s after the process started: {:.0} events/s{}",
        c.reflected,
        c.expected,
        c.stats_source,
        c.exact,
        c.seconds,
        c.events_per_s,
        if c.completed { "" } else { " (NOT complete)" }
    )
}

fn note<T>(errors: &mut Vec<String>, phase: &str, r: anyhow::Result<T>) -> Option<T> {
    match r {
        Ok(v) => Some(v),
        Err(e) => {
            eprintln!("[bench] {phase} FAILED: {e:#}");
            errors.push(format!("{phase}: {e:#}"));
            None
        }
    }
}

fn say(msg: &str) {
    eprintln!("[bench {}] {msg}", chrono::Utc::now().format("%H:%M:%S"));
}

fn ingest_line(i: &measure::IngestResult) -> String {
    format!(
        "produced {} ({} valid, {} invalid, {} late) at {:.0}/s in {:.1} s; stats counted {} of {} ({}, exact: {}) after {:.1} s (drain {:.1} s): {:.0} events/s{}",
        i.load.tally.total,
        i.load.tally.valid,
        i.load.tally.invalid,
        i.load.tally.late,
        i.load.rate,
        i.load.send_s,
        i.reflected,
        i.expected,
        i.stats_source,
        i.exact,
        i.seconds,
        i.drain_s,
        i.events_per_s,
        if i.mismatches.is_empty() || !i.completed { String::new() } else { format!("; {:?}", i.mismatches) }
    )
}

fn freshness_line(f: &measure::FreshnessResult) -> String {
    format!(
        "load {:.0}/s; markers {}/{} seen; produce → dashboard ms: p50 {:.1}, p90 {:.1}, p99 {:.1}, max {:.1}; {} polls of {:.2} ms",
        f.load.rate,
        f.markers_seen,
        f.markers_sent,
        f.latency_ms.p50,
        f.latency_ms.p90,
        f.latency_ms.p99,
        f.latency_ms.max,
        f.polls,
        f.poll_ms
    )
}

fn reads_line(r: &measure::ReadsResult) -> String {
    let mut s = format!(
        "load {:.0}/s, asked {:.0} req/s, answered {:.0}/s",
        r.load.rate, r.rate, r.all.throughput
    );
    for e in &r.endpoints {
        s.push_str(&format!(
            "; {} p50 {:.2} p99 {:.2} max {:.1} ms ({} ok, {} errors)",
            e.path, e.latency_ms.p50, e.latency_ms.p99, e.latency_ms.max, e.ok, e.errors
        ));
    }
    s
}

/// Runs every phase asked for and writes the report.
pub async fn run(args: AllArgs) -> anyhow::Result<Results> {
    anyhow::ensure!(
        !args.wants("ingest")
            && !args.wants("catchup")
            && !args.wants("freshness")
            && !args.wants("reads")
            && !args.wants("memory")
            && !args.wants("soak")
            || args.analytics.exists(),
        "{} not found: build it with `cargo build --release --bin analytics`",
        args.analytics.display()
    );
    let mut results = Results {
        started_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        quick: args.quick,
        machine: Machine::detect(),
        options: serde_json::to_value(&args)?,
        ..Results::default()
    };
    let mut errors = Vec::new();
    let ingest_d = args.pick(args.ingest_secs, 60, 10);
    let drain = args.pick(args.drain_secs, 600, 60);
    let fresh_d = args.pick(args.freshness_secs, 60, 10);
    let reads_d = args.pick(args.reads_secs, 60, 10);
    let mem_d = args.pick(args.memory_secs, 600, 60);
    let mem_warm = args.pick(args.memory_warmup_secs, 60, 10);
    let soak_d = args.pick(args.soak_secs, 1200, 90);
    let soak_warm = args.pick(args.soak_warmup_secs, 600, 30);
    let catchup_events =
        args.catchup_events
            .unwrap_or(if args.quick { 100_000 } else { 1_000_000 });
    let catchup_d = args.pick(args.catchup_secs, 600, 120);
    let core_events = args
        .core_events
        .unwrap_or(if args.quick { 200_000 } else { 2_000_000 });

    if args.wants("core") {
        for &w in &args.core_workers {
            say(&format!("dataflow core -w {w}, {core_events} events"));
            let seed = args.seed;
            let max_wait = args.pick(args.core_max_secs, 300, 60);
            let r = tokio::task::spawn_blocking(move || {
                crate::core::run(
                    w,
                    core_events,
                    seed,
                    crate::core::TICK_MS,
                    crate::core::CATCH_UP_TICK_MS,
                    max_wait,
                )
            })
            .await
            .context("core benchmark thread")
            .and_then(|r| r);
            if let Some(c) = note(&mut errors, &format!("core -w {w}"), r) {
                say(&format!(
                    "  {:.0} events/s ({:.0} per worker) in {:.2} s; snapshot counted {} of {} valid; sink rows {} ({} dead); {} live windows, {} bytes each{}",
                    c.events_per_s,
                    c.events_per_s_per_worker,
                    c.seconds,
                    c.reflected,
                    c.valid,
                    c.sink_rows,
                    c.sink_dead,
                    c.live_windows,
                    c.bytes_per_live_window
                        .map_or("-".to_string(), |b| format!("{b:.0}")),
                    if c.completed { "" } else { " INCOMPLETE" }
                ));
                results.core.push(c);
            }
        }
    }

    if args.wants("ingest") {
        for &w in &args.ingest_workers {
            say(&format!("ingest, ours -w {w}, {ingest_d:?}"));
            let r = with_service(
                &args,
                Kind::ours(w),
                &format!("ingest_w{w}"),
                |t, topics| {
                    let load = args.load(&topics, args.ingest_rate, ingest_d);
                    async move { measure::ingest(&t, load, drain).await }
                },
            )
            .await;
            if let Some(i) = note(&mut errors, &format!("ingest -w {w}"), r) {
                say(&format!("  {}", ingest_line(&i)));
                results.ingest.push(IngestRun {
                    workers: w,
                    result: i,
                });
            }
        }
    }

    if args.wants("catchup") {
        say(&format!(
            "catch-up, ours -w {}, {catchup_events} events",
            args.workers
        ));
        let r = catch_up(
            &args,
            Kind::ours(args.workers),
            "catchup",
            catchup_events,
            catchup_d,
        )
        .await;
        if let Some((c, copy)) = note(&mut errors, "catch-up", r) {
            say(&format!("  {}", catch_up_line(&c)));
            if let Some(copy) = &copy {
                say(&format!(
                    "  COPY ceiling: {} rows ({} MB) in {:.2} s: {:.0} rows/s",
                    copy.rows,
                    copy.bytes / 1_000_000,
                    copy.seconds,
                    copy.rows_per_s
                ));
            }
            results.catch_up = Some(c);
            results.copy_ceiling = copy;
        }
    }

    if args.wants("freshness") || args.wants("reads") {
        let (fresh, reads) = live_phases(
            &args,
            Kind::ours(args.workers),
            fresh_d,
            reads_d,
            &mut errors,
        )
        .await;
        results.freshness = fresh;
        results.reads = reads;
    }

    let interval = Duration::from_secs(args.memory_interval_secs.max(1));
    for (phase, extra, rate, secs, warm, slot) in [
        (
            "memory",
            "",
            args.memory_rate,
            mem_d,
            mem_warm,
            &mut results.memory,
        ),
        (
            "soak",
            SOAK_ANALYTICS,
            args.soak_rate,
            soak_d,
            soak_warm,
            &mut results.soak,
        ),
    ] {
        if !args.wants(phase) {
            continue;
        }
        say(&format!(
            "{phase}, ours -w {}, {secs:?} at {rate}/s",
            args.workers
        ));
        let kind = Kind::Ours {
            workers: args.workers,
            extra,
        };
        let r = with_service(&args, kind, phase, |t, topics| {
            let load = args.load(&topics, Some(rate), secs);
            async move { measure::memory(&t, load, interval, warm).await }
        })
        .await;
        if let Some(m) = note(&mut errors, phase, r) {
            say(&format!(
                "  RSS KiB: warm {} last {} max {}; max deviation {:.1} % (from the mean after warm-up {:.1} %); {} samples; load {:.0}/s",
                m.warm_kib,
                m.last_kib,
                m.max_kib,
                m.max_deviation_pct,
                m.max_deviation_from_mean_pct,
                m.samples.len(),
                m.load.rate
            ));
            *slot = Some(m);
        }
    }

    if args.wants("baseline") {
        if args.wants("ingest") {
            say(&format!("ingest, baseline, {ingest_d:?}"));
            let r = with_service(&args, Kind::Baseline, "base_ingest", |t, topics| {
                let load = args.load(&topics, args.ingest_rate, ingest_d);
                async move { measure::ingest(&t, load, drain).await }
            })
            .await;
            if let Some(i) = note(&mut errors, "baseline ingest", r) {
                say(&format!("  {}", ingest_line(&i)));
                results.baseline_ingest = Some(i);
            }
        }
        if args.wants("catchup") {
            say(&format!("catch-up, baseline, {catchup_events} events"));
            let r = catch_up(
                &args,
                Kind::Baseline,
                "base_catchup",
                catchup_events,
                catchup_d,
            )
            .await;
            if let Some((c, _)) = note(&mut errors, "baseline catch-up", r) {
                say(&format!("  {}", catch_up_line(&c)));
                results.baseline_catch_up = Some(c);
            }
        }
        if args.wants("freshness") || args.wants("reads") {
            let (fresh, reads) =
                live_phases(&args, Kind::Baseline, fresh_d, reads_d, &mut errors).await;
            results.baseline_freshness = fresh;
            results.baseline_reads = reads;
        }
    }

    results.errors = errors;
    results.finished_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    write_report(&args, &results)?;
    Ok(results)
}

/// Freshness, then reads, on one service.
async fn live_phases(
    args: &AllArgs,
    kind: Kind,
    fresh_d: Duration,
    reads_d: Duration,
    errors: &mut Vec<String>,
) -> (
    Option<measure::FreshnessResult>,
    Option<measure::ReadsResult>,
) {
    let label = match kind {
        Kind::Ours { .. } => "ours",
        Kind::Baseline => "baseline",
    };
    say(&format!(
        "freshness ({fresh_d:?} at {}/s) and reads ({reads_d:?}, {} req/s during {}/s), {label}",
        args.freshness_rate, args.read_rate, args.read_load_rate
    ));
    let r = with_service(args, kind, &format!("{label}_live"), |t, topics| {
        let fresh_load = args.load(&topics, Some(args.freshness_rate), fresh_d);
        let reads_load = args.load(
            &topics,
            Some(args.read_load_rate),
            reads_d + Duration::from_secs(3),
        );
        let (want_fresh, want_reads) = (args.wants("freshness"), args.wants("reads"));
        let marker = Duration::from_millis(args.marker_interval_ms);
        let pause = Duration::from_millis(args.poll_pause_ms);
        let rate = args.read_rate;
        async move {
            let fresh = if want_fresh {
                Some(measure::freshness(&t, fresh_load, marker, pause).await)
            } else {
                None
            };
            let reads = if want_reads {
                Some(measure::reads(&t, reads_load, rate, reads_d).await)
            } else {
                None
            };
            Ok((fresh, reads))
        }
    })
    .await;
    let Some((fresh, reads)) = note(errors, &format!("{label} freshness/reads"), r) else {
        return (None, None);
    };
    let fresh = fresh.and_then(|f| note(errors, &format!("{label} freshness"), f));
    if let Some(f) = &fresh {
        say(&format!("  freshness {label}: {}", freshness_line(f)));
    }
    let reads = reads.and_then(|r| note(errors, &format!("{label} reads"), r));
    if let Some(r) = &reads {
        say(&format!("  reads {label}: {}", reads_line(r)));
    }
    (fresh, reads)
}

fn write_report(args: &AllArgs, results: &Results) -> anyhow::Result<()> {
    // Smoke runs go to a git-ignored folder of their own.
    let dir = if args.quick {
        args.out_dir.join("quick")
    } else {
        args.out_dir.clone()
    };
    std::fs::create_dir_all(&dir)?;
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ");
    let json_path = dir.join(format!("{stamp}.json"));
    std::fs::write(&json_path, serde_json::to_string_pretty(results)?)?;
    let table = report::table(results);
    println!("\n{table}");
    println!("command: {}", results.command);
    println!("machine: {}", results.machine.describe());
    println!(
        "date: {} to {} (UTC){}",
        results.started_at,
        results.finished_at,
        if args.quick {
            "; --quick: a smoke run, not a measurement"
        } else {
            ""
        }
    );
    println!("results: {}", json_path.display());
    let complete = ALL_PHASES.split(',').all(|p| args.wants(p)) && results.errors.is_empty();
    if !args.quick && !args.no_results_md && complete {
        std::fs::write(
            &args.results_md,
            report::results_md(results, &display(&json_path)),
        )?;
        println!("table written to {}", args.results_md.display());
    }
    Ok(())
}

fn display(p: &Path) -> String {
    p.display().to_string()
}
