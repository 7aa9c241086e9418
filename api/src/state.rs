//! Shared state of the handlers.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use dataflows::counts::CommittedQueue;
use dataflows::event::Event;
use dataflows::windows::{Agg, DimensionGuard, WindowKey, WindowSpec};
use dataflows::LiveSnapshot;
use sink::metrics::IngestionStats;
use sink::partitions::Partitions;
use sink::Pool;
use tokio::sync::watch;

use crate::snapshot_cache::PerSnapshot;

/// API settings taken from the configuration.
#[derive(Clone, Debug)]
pub struct ApiSettings {
    pub default_limit: i64,
    pub max_results: i64,
    pub max_body_bytes: usize,
    pub max_batch_events: usize,
    pub request_timeout: Duration,
    pub cors_enabled: bool,
    pub cors_origins: Vec<String>,
    pub cors_methods: Vec<String>,
    pub cors_headers: Vec<String>,
    pub time_bounds: dataflows::event::TimeBounds,
    /// Most windows one `/api/v1/metrics` answer may span.
    pub max_points: i64,
    /// Orders, volume, latency and error rate cover this many seconds.
    pub orders_window_secs: i64,
    /// A strategy silent for this long is not active.
    pub strategy_timeout_us: i64,
    /// A session with no event for this long has ended.
    pub session_timeout: Duration,
    /// Require API keys on `/api/v1/*` (see [`crate::auth`]).
    pub api_key_enabled: bool,
    /// How long a key lookup is cached (revocations take this long).
    pub api_key_cache_ttl: Duration,
    /// Longest time to receive a request body (`server.read_timeout`).
    pub read_timeout: Duration,
    /// Longest time a GET may take before its answer starts
    /// (`analytics.query.timeout`): 504 after it.
    pub query_timeout: Duration,
    /// Another path of `/health` on the health port (`health.path`).
    pub health_path: String,
}

/// Handles every handler may use: one reference count to clone (the
/// router clones it for every request and middleware).
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    pub fn new(shared: Shared) -> Self {
        AppState(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// What [`AppState`] shares.
pub struct Shared {
    pub settings: Arc<ApiSettings>,
    pub pool: Pool,
    pub partitions: Arc<Partitions>,
    pub snapshots: watch::Receiver<Arc<LiveSnapshot>>,
    /// REST events committed here, for the live counts.
    pub committed: Arc<CommittedQueue<Event>>,
    /// Their window contributions, for the live windows.
    pub committed_windows: Arc<CommittedQueue<(WindowKey, Agg)>>,
    /// Which windows exist and for how long they stay in memory.
    pub windows: Arc<WindowSpec>,
    /// The REST path's cardinality guard.
    pub guard: Arc<std::sync::Mutex<DimensionGuard>>,
    /// Committed events, for `/api/v1/stream`.
    pub feed: sink::writer::EventFeed,
    /// Redis connection for the history cache (`None` while unreachable).
    pub cache: crate::cache::Cache,
    pub stats: Arc<IngestionStats>,
    /// Set by the sink writer while its commits fail.
    pub sink_degraded: Arc<AtomicBool>,
    /// Rate limiting of `/api/v1/*` (Redis, local fallback, or disabled).
    pub rate_limiter: crate::ratelimit::RateLimiter,
    /// The validators shared with the Kafka source, and how to refresh them.
    pub schemas: Arc<sink::schema_sync::SchemaSync>,
    /// The local workers' heartbeats and the staleness bounds.
    pub dataflow: Arc<dataflows::liveness::DataflowWatch>,
    /// Live answers serialized once per snapshot.
    pub live_answers: Arc<LiveAnswers>,
}

/// Live answers kept for the snapshot they were computed from (see
/// [`crate::snapshot_cache`]).
#[derive(Debug, Default)]
pub struct LiveAnswers {
    /// `/api/v1/dashboard/metrics`.
    pub dashboard: PerSnapshot<()>,
    /// `/api/v1/events/stats` from the live state, by `[from, to)` in µs.
    pub stats: PerSnapshot<(i64, i64)>,
}

impl Shared {
    pub fn snapshot(&self) -> Arc<LiveSnapshot> {
        Arc::clone(&self.snapshots.borrow())
    }

    /// The dataflow's state now, judged from the latest snapshot.
    pub fn dataflow_state(&self) -> dataflows::liveness::DataflowState {
        let as_of_ms = self.snapshots.borrow().as_of_ms;
        self.dataflow.state(as_of_ms, dataflows::time::now_ms())
    }
}
