//! The dataflow-core benchmark: the service's real dataflow
//! ([`dataflows::pipeline::build`]) on N timely worker threads of this
//! process, fed from memory ([`dataflows::memory_source`]) instead of
//! Kafka, with a sink that acknowledges every batch at once instead of
//! writing PostgreSQL. Payloads are generated before the clock starts; the
//! clock stops when the published [`LiveSnapshot`] counts every valid
//! event. Parsing, validation, window partials, the durability gate, the
//! arrangements, the dashboard state and the snapshot are all measured.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use dataflows::counts::CommittedQueue;
use dataflows::durable::{SinkBatch, WorkerAck};
use dataflows::event::TimeBounds;
use dataflows::kafka_source::{KafkaSettings, PartitionDirectory};
use dataflows::memory_source::PayloadFeed;
use dataflows::pipeline::{self, ProcessContext, Restored};
use dataflows::windows::{Interval, WindowSpec, DEFAULT_NUMERIC, INTERVALS};
use dataflows::LiveSnapshot;
use tokio::sync::watch;

use crate::gen::{Generator, Tally};

/// The service's defaults (`config.rs`): tick, horizons, limits.
pub const TICK_MS: u64 = 100;
/// The service's default `analytics.dataflow.catch_up_tick`, ms.
pub const CATCH_UP_TICK_MS: u64 = 1_000;
const LIVE_HORIZON_MS: u64 = 25 * 3_600_000;
const ACTIVE_USERS_MS: u64 = 5 * 60_000;
const MAX_DIMENSION_VALUES: usize = 1_000;
const POLL_BUDGET: usize = 4_096;
const MAX_PENDING_ROWS: i64 = 50_000;

/// In-memory horizon per interval, as the service's default.
fn default_horizon_ms(interval: &str) -> u64 {
    dataflows::windows::default_horizon_hours(interval) * 3_600_000
}

/// The window spec the service builds from its default configuration.
pub fn default_window_spec(tick_ms: u64) -> WindowSpec {
    WindowSpec {
        intervals: INTERVALS
            .iter()
            .filter_map(|(name, _)| Interval::parse(name).map(|i| (i, default_horizon_ms(name))))
            .collect(),
        numeric: DEFAULT_NUMERIC.iter().map(|s| s.to_string()).collect(),
        max_dimension_values: MAX_DIMENSION_VALUES,
        dimension_sets: dataflows::windows::DimSet::defaults(),
        tick_ms,
    }
}

/// Pre-generated payloads, one share per worker, handed out by moving.
struct Feed {
    shares: Vec<Mutex<std::vec::IntoIter<Vec<u8>>>>,
}

impl PayloadFeed for Feed {
    fn topic(&self) -> &str {
        "bench.core"
    }

    fn fill(&self, worker: usize, budget: usize, out: &mut Vec<Vec<u8>>) -> bool {
        let Some(share) = self.shares.get(worker) else {
            return false;
        };
        let Ok(mut share) = share.lock() else {
            return false;
        };
        let before = out.len();
        out.extend(share.by_ref().take(budget));
        out.len() > before
    }
}

/// The result of one run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CoreResult {
    pub workers: usize,
    pub events: u64,
    pub valid: u64,
    pub invalid: u64,
    pub seconds: f64,
    /// All events (valid and invalid) per second.
    pub events_per_s: f64,
    pub events_per_s_per_worker: f64,
    /// Rows the sink received (events + dead letters); must equal `events`.
    pub sink_rows: u64,
    pub sink_dead: u64,
    pub generate_s: f64,
    /// False when `max_wait` passed before the snapshot counted every
    /// event; the rate is then what it counted by then, per second.
    pub completed: bool,
    /// Valid events the last snapshot counted.
    pub reflected: u64,
    /// Windows held live by the last snapshot.
    pub live_windows: u64,
    /// This process's RSS just before the dataflow started (the generated
    /// events already in memory) and once the last snapshot counted them.
    pub rss_before_mib: f64,
    pub rss_end_mib: f64,
    /// (RSS at the end − RSS before) / live windows: what a live window
    /// costs in all (its arrangement records, batcher, snapshot entry and
    /// the allocator's slack), an upper bound since the dashboard, counts
    /// and channels grow with it.
    pub bytes_per_live_window: Option<f64>,
    /// The same from jemalloc's count of allocated bytes instead of RSS
    /// (no allocator slack, no pages not yet returned).
    pub heap_bytes_per_live_window: Option<f64>,
    /// Of those, what the last published snapshot alone holds (bytes freed
    /// by dropping it once the workers have stopped) per live window:
    /// the window map's entries and nodes, counts and the dashboard.
    pub snapshot_bytes_per_live_window: Option<f64>,
}

/// Runs `events` events through `workers` worker threads, waiting at most
/// `max_wait` for the snapshot to count them all.
pub fn run(
    workers: usize,
    events: u64,
    seed: u64,
    tick_ms: u64,
    catch_up_tick_ms: u64,
    max_wait: Duration,
) -> anyhow::Result<CoreResult> {
    anyhow::ensure!(workers >= 1, "-w must be at least 1");
    let gen_start = Instant::now();
    let mut gen = Generator::new(seed);
    let mut tally = Tally::default();
    let base_us = chrono::Utc::now().timestamp_micros();
    let mut shares: Vec<Vec<Vec<u8>>> = (0..workers)
        .map(|_| Vec::with_capacity(events as usize / workers + 1))
        .collect();
    let (mut min_us, mut max_us) = (i64::MAX, i64::MIN);
    for i in 0..events {
        // Event times spread over the generation, 10 µs apart.
        let now = base_us + i as i64 * 10;
        let meta = gen.next(now);
        tally.add(&meta);
        min_us = min_us.min(now - 600_000_000);
        max_us = max_us.max(now);
        shares[(i % workers as u64) as usize].push(gen.payload().to_vec());
    }
    let generate_s = gen_start.elapsed().as_secs_f64();
    let from_second = min_us.div_euclid(1_000_000) - 2;
    let to_second = max_us.div_euclid(1_000_000) + 2;
    let feed = Arc::new(Feed {
        shares: shares
            .into_iter()
            .map(|s| Mutex::new(s.into_iter()))
            .collect(),
    });

    let shutdown = Arc::new(AtomicBool::new(false));
    let (sink_tx, mut sink_rx) = tokio::sync::mpsc::unbounded_channel::<SinkBatch>();
    let (snap_tx, mut snap_rx) = watch::channel(Arc::new(LiveSnapshot::default()));
    let sink_rows = Arc::new(AtomicU64::new(0));
    let sink_dead = Arc::new(AtomicU64::new(0));
    let acker = {
        let (rows, dead) = (Arc::clone(&sink_rows), Arc::clone(&sink_dead));
        std::thread::Builder::new()
            .name("bench-ack".into())
            .spawn(move || {
                while let Some(batch) = sink_rx.blocking_recv() {
                    rows.fetch_add(batch.rows() as u64, Ordering::Relaxed);
                    dead.fetch_add(batch.dead.len() as u64, Ordering::Relaxed);
                    batch.ack.acknowledge(batch.tick, batch.rows());
                }
            })?
    };
    let ctx = Arc::new(ProcessContext {
        kafka: KafkaSettings {
            brokers: String::new(),
            group_id: "bench-core".into(),
            topics: Vec::new(),
            session_timeout_ms: 30_000,
            poll_budget: POLL_BUDGET,
            max_pending_rows: MAX_PENDING_ROWS,
            catch_up_tick_ms,
            time_bounds: TimeBounds {
                max_age_us: 90 * 86_400 * 1_000_000,
                max_future_us: 86_400 * 1_000_000,
            },
            security: Default::default(),
        },
        tick_ms,
        horizon_ms: LIVE_HORIZON_MS,
        active_users_ms: ACTIVE_USERS_MS,
        windows: Arc::new(default_window_spec(tick_ms)),
        workers_per_process: workers,
        directory: Arc::new(PartitionDirectory::default()),
        sink: sink_tx,
        acks: (0..workers)
            .map(|_| Arc::new(WorkerAck::default()))
            .collect(),
        committed: Arc::new(CommittedQueue::default()),
        committed_windows: Arc::new(CommittedQueue::default()),
        snapshots: Arc::new(snap_tx),
        restored: Mutex::new(Some(Restored::default())),
        shutdown: Arc::clone(&shutdown),
        validators: Arc::new(dataflows::validate::Registry::default()),
        feed: Some(feed),
    });
    let config = timely::Config {
        communication: if workers > 1 {
            timely::CommunicationConfig::Process(workers)
        } else {
            timely::CommunicationConfig::Thread
        },
        worker: pipeline::worker_config(),
    };
    let rss_before = crate::env::rss_kib(std::process::id()).unwrap_or(0);
    let heap = || dataflows::alloc::heap_bytes().map_or(0, |(allocated, _)| allocated);
    let heap_before = heap();
    let start = Instant::now();
    let worker_ctx = Arc::clone(&ctx);
    let guards = timely::execute(config, move |worker| {
        pipeline::run_worker(worker, &worker_ctx);
    })
    .map_err(|e| anyhow::anyhow!("timely: {e}"))?;
    drop(ctx);

    // Wait for the snapshot that counts every valid event.
    let expected = tally.valid as i64;
    let count = |snapshot: &LiveSnapshot| -> i64 {
        snapshot
            .counts
            .by_type(from_second, to_second)
            .values()
            .sum()
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()?;
    let waited = rt.block_on(async {
        tokio::time::timeout(max_wait, async {
            loop {
                if count(&snap_rx.borrow_and_update()) >= expected {
                    return Ok::<(), anyhow::Error>(());
                }
                snap_rx.changed().await.context("dataflow stopped")?;
            }
        })
        .await
    });
    let seconds = start.elapsed().as_secs_f64();
    let completed = match waited {
        Ok(r) => {
            r?;
            true
        }
        Err(_) => false,
    };
    let counted = count(&snap_rx.borrow());
    let live_windows = snap_rx.borrow().windows.len() as u64;
    let rss_end = crate::env::rss_kib(std::process::id()).unwrap_or(0);
    let heap_end = heap();
    shutdown.store(true, Ordering::SeqCst);
    for r in guards.join() {
        r.map_err(|e| anyhow::anyhow!("worker: {e}"))?;
    }
    let _ = acker.join();
    let rows = sink_rows.load(Ordering::Relaxed);
    let dead = sink_dead.load(Ordering::Relaxed);
    if completed {
        anyhow::ensure!(
            counted == expected,
            "snapshot counts {counted} events, {expected} were valid"
        );
        let snapshot_types: HashMap<String, i64> = snap_rx
            .borrow()
            .counts
            .by_type(from_second, to_second)
            .into_iter()
            .collect();
        for (t, n) in &tally.by_type {
            let got = snapshot_types.get(t).copied().unwrap_or(0);
            anyhow::ensure!(got == *n as i64, "{t}: snapshot {got}, generated {n}");
        }
        anyhow::ensure!(
            rows == events && dead == tally.invalid,
            "sink saw {rows} rows ({dead} dead), generated {events} ({} invalid)",
            tally.invalid
        );
    }
    // The last snapshot alone: what dropping it frees once nothing else
    // holds it (the workers and the publisher have stopped, so the
    // channel's sender is gone).
    let closing = Instant::now() + Duration::from_secs(5);
    while snap_rx.has_changed().is_ok() && Instant::now() < closing {
        std::thread::sleep(Duration::from_millis(10));
    }
    let snapshot_bytes = if snap_rx.has_changed().is_err() {
        let held = heap();
        drop(snap_rx);
        held.checked_sub(heap())
    } else {
        None
    };
    let per_window = |bytes: u64| (live_windows > 0).then(|| bytes as f64 / live_windows as f64);
    let events_per_s = if completed {
        events as f64 / seconds
    } else {
        counted as f64 / seconds
    };
    Ok(CoreResult {
        workers,
        events,
        valid: tally.valid,
        invalid: tally.invalid,
        seconds,
        events_per_s,
        events_per_s_per_worker: events_per_s / workers as f64,
        sink_rows: rows,
        sink_dead: dead,
        generate_s,
        completed,
        reflected: counted.max(0) as u64,
        live_windows,
        rss_before_mib: rss_before as f64 / 1024.0,
        rss_end_mib: rss_end as f64 / 1024.0,
        bytes_per_live_window: (live_windows > 0 && rss_end > rss_before)
            .then(|| (rss_end - rss_before) as f64 * 1024.0 / live_windows as f64),
        heap_bytes_per_live_window: heap_end.checked_sub(heap_before).and_then(per_window),
        snapshot_bytes_per_live_window: snapshot_bytes.and_then(per_window),
    })
}
