//! Prometheus metrics of the sink, and the counters behind
//! `/api/v1/internal/ingestion-metrics`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::LazyLock;

use dataflows::metrics::or_die;
use prometheus::{
    register_histogram, register_int_counter, register_int_counter_vec, Histogram, IntCounter,
    IntCounterVec,
};

pub static EVENTS_INGESTED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    or_die(
        register_int_counter_vec!(
            "analytics_events_ingested_total",
            "Events committed to PostgreSQL",
            &["source"]
        ),
        "analytics_events_ingested_total",
    )
});

pub static EVENTS_FAILED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    or_die(
        register_int_counter_vec!(
            "analytics_events_failed_total",
            "Inputs refused, by reason",
            &["reason"]
        ),
        "analytics_events_failed_total",
    )
});

pub static DEAD_LETTERS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    or_die(
        register_int_counter_vec!(
            "analytics_dead_letters_total",
            "Rows committed to dead_letters, by source",
            &["source"]
        ),
        "analytics_dead_letters_total",
    )
});

pub static BATCHES: LazyLock<IntCounter> = LazyLock::new(|| {
    or_die(
        register_int_counter!(
            "analytics_batches_processed_total",
            "Transactions committed by the sink"
        ),
        "analytics_batches_processed_total",
    )
});

pub static BATCH_DURATION: LazyLock<Histogram> = LazyLock::new(|| {
    or_die(
        register_histogram!(
            "analytics_batch_duration_seconds",
            "Time to commit one group of ticks",
            vec![0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]
        ),
        "analytics_batch_duration_seconds",
    )
});

pub static SINK_ERRORS: LazyLock<IntCounter> = LazyLock::new(|| {
    or_die(
        register_int_counter!(
            "analytics_sink_errors_total",
            "Failed sink transactions (retried)"
        ),
        "analytics_sink_errors_total",
    )
});

pub static SINK_PHASE_SECONDS: LazyLock<prometheus::CounterVec> = LazyLock::new(|| {
    or_die(
        prometheus::register_counter_vec!(
            "analytics_sink_phase_seconds_total",
            "Time spent in each phase of the sink's commits (share of a commit = rate of a phase / rate of all)",
            &["phase"]
        ),
        "analytics_sink_phase_seconds_total",
    )
});

pub static ROLLUP_DELTAS_FOLDED: LazyLock<IntCounter> = LazyLock::new(|| {
    or_die(
        register_int_counter!(
            "analytics_rollup_deltas_folded_total",
            "Rollup deltas folded into metric_aggregations by the compactor"
        ),
        "analytics_rollup_deltas_folded_total",
    )
});

pub static ROLLUP_COMPACTION_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    or_die(
        register_histogram!(
            "analytics_rollup_compaction_seconds",
            "Time of one compaction turn that folded rollup deltas",
            vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]
        ),
        "analytics_rollup_compaction_seconds",
    )
});

/// The phases of [`SINK_PHASE_SECONDS`], in commit order.
pub const SINK_PHASES: [&str; 9] = [
    "partitions",
    "copy_events",
    "dead_letters",
    "counts",
    "dashboard",
    "trading",
    "offsets",
    "rollups",
    "commit",
];

/// Adds the time since the previous lap to a phase of a commit.
pub struct PhaseClock(std::time::Instant);

impl PhaseClock {
    pub fn start() -> PhaseClock {
        PhaseClock(std::time::Instant::now())
    }

    pub fn lap(&mut self, phase: &str) {
        let now = std::time::Instant::now();
        SINK_PHASE_SECONDS
            .with_label_values(&[phase])
            .inc_by(now.duration_since(self.0).as_secs_f64());
        self.0 = now;
    }
}

/// Registers the sink's metrics with a series for each known label value
/// (see `dataflows::metrics::init`).
pub fn init() {
    for source in ["kafka", "rest"] {
        EVENTS_INGESTED.with_label_values(&[source]);
        DEAD_LETTERS.with_label_values(&[source]);
    }
    for reason in dataflows::DeadReason::ALL {
        EVENTS_FAILED.with_label_values(&[reason.as_str()]);
    }
    LazyLock::force(&BATCHES);
    LazyLock::force(&BATCH_DURATION);
    LazyLock::force(&SINK_ERRORS);
    LazyLock::force(&ROLLUP_DELTAS_FOLDED);
    LazyLock::force(&ROLLUP_COMPACTION_SECONDS);
    for phase in SINK_PHASES {
        SINK_PHASE_SECONDS.with_label_values(&[phase]);
    }
}

/// Counters for the internal ingestion endpoint.
#[derive(Debug, Default)]
pub struct IngestionStats {
    pub events_ingested: AtomicU64,
    pub events_failed: AtomicU64,
    pub batches_processed: AtomicU64,
    pub last_batch_size: AtomicU64,
    pub last_batch_duration_us: AtomicU64,
    /// Sum over committed events of (commit time - created_at), in microseconds.
    pub total_latency_us: AtomicU64,
}

impl IngestionStats {
    pub fn record_batch(&self, events: u64, failed: u64, duration_us: u64, latency_us: u64) {
        self.events_ingested.fetch_add(events, Ordering::Relaxed);
        self.events_failed.fetch_add(failed, Ordering::Relaxed);
        self.batches_processed.fetch_add(1, Ordering::Relaxed);
        self.last_batch_size
            .store(events + failed, Ordering::Relaxed);
        self.last_batch_duration_us
            .store(duration_us, Ordering::Relaxed);
        self.total_latency_us
            .fetch_add(latency_us, Ordering::Relaxed);
    }
}
