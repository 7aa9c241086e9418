//! Health, readiness, liveness and the internal ingestion counters.
//!
//! Which endpoint answers which question (a supervisor probes the first
//! two; see `dataflows::liveness` for the states):
//!
//! | endpoint | question | 503 when |
//! |---|---|---|
//! | `/livez` | is this process broken (restart it)? | a worker is stuck (`"dataflow": "failed"`); never because of PostgreSQL, Kafka or Redis |
//! | `/ready` | may it take traffic now? | PostgreSQL is down, or the dataflow is `starting`, `stalled` or `failed` |
//! | `/health`, `/healthz` | overall status, as the replaced service answered | PostgreSQL is down, or the dataflow is `failed` |

use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};
use utoipa::ToSchema;

use dataflows::liveness::{DataflowState, DataflowWatch};

use crate::AppState;

const CHECK_TIMEOUT: Duration = Duration::from_millis(1500);

/// The overall status, its code, and the dataflow's state it reports.
async fn check(state: &AppState) -> (StatusCode, Value, DataflowState) {
    let (db, cache, rate_limit) = tokio::join!(
        tokio::time::timeout(CHECK_TIMEOUT, sink::queries::ping(&state.pool)),
        state.cache.ping(),
        state.rate_limiter.health()
    );
    let db_ok = matches!(db, Ok(Ok(())));
    let sink_ok = !state.sink_degraded.load(Ordering::Relaxed);
    let dataflow = state.dataflow_state();
    let failed = dataflow == DataflowState::Failed;
    let status = if !db_ok || failed {
        "unhealthy"
    } else if !cache || !sink_ok || rate_limit == "local" || dataflow == DataflowState::Stalled {
        "degraded"
    } else {
        "healthy"
    };
    let code = if db_ok && !failed {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        json!({
            "status": status,
            "database": if db_ok { "connected" } else { "disconnected" },
            "cache": if cache { "connected" } else { "disconnected" },
            "sink": if sink_ok { "ok" } else { "retrying" },
            "rate_limit": rate_limit,
            "dataflow": dataflow.as_str(),
            "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "service": "analytics",
        }),
        dataflow,
    )
}

/// The overall status (`/health`, `/healthz`, `/ready`).
#[derive(ToSchema)]
#[allow(dead_code)] // a schema only: see `check`
pub struct Health {
    /// `healthy`, `degraded` (the cache, the sink, the rate-limit store
    /// or the dataflow lagging) or `unhealthy` (PostgreSQL down or the
    /// dataflow failed).
    status: String,
    /// `connected` or `disconnected`.
    database: String,
    /// `connected` or `disconnected`.
    cache: String,
    /// `ok` or `retrying`.
    sink: String,
    rate_limit: String,
    dataflow: String,
    timestamp: chrono::DateTime<chrono::Utc>,
    service: String,
}

/// `/livez`.
#[derive(ToSchema)]
#[allow(dead_code)] // a schema only: see `live`
pub struct Liveness {
    /// `alive` or `broken`.
    status: String,
    dataflow: String,
    as_of_age_seconds: f64,
    service: String,
}

/// Sink counters.
#[derive(ToSchema)]
#[allow(dead_code)] // a schema only: see `ingestion_metrics`
pub struct IngestionMetrics {
    events_ingested: u64,
    events_failed: u64,
    batches_processed: u64,
    last_batch_size: u64,
    /// e.g. `12.5ms`
    last_batch_duration: String,
    last_batch_duration_ms: f64,
    /// e.g. `1234.5ms`
    total_latency: String,
    total_latency_ms: f64,
    average_latency_ms: f64,
}

/// `/health`.
#[utoipa::path(
    get,
    path = "/health",
    tag = "health",
    responses(
        (status = 200, description = "Healthy or degraded", body = Health),
        (status = 503, description = "Unhealthy: PostgreSQL down or the dataflow failed", body = Health),
    )
)]
pub async fn health(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let (code, body, _) = check(&state).await;
    (code, Json(body))
}

/// `/healthz`: the same as `/health`.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "health",
    responses(
        (status = 200, description = "Healthy or degraded", body = Health),
        (status = 503, description = "Unhealthy: PostgreSQL down or the dataflow failed", body = Health),
    )
)]
pub async fn healthz(state: State<AppState>) -> (StatusCode, Json<Value>) {
    health(state).await
}

/// `/ready`: also 503 unless the dataflow is `running` (its snapshot is at
/// most `health.max_staleness` old).
#[utoipa::path(
    get,
    path = "/ready",
    tag = "health",
    responses(
        (status = 200, description = "Ready for traffic", body = Health),
        (status = 503, description = "Not ready: unhealthy, or the dataflow is not running", body = Health),
    )
)]
pub async fn ready(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let (mut code, body, dataflow) = check(&state).await;
    if dataflow != DataflowState::Running {
        code = StatusCode::SERVICE_UNAVAILABLE;
    }
    (code, Json(body))
}

/// `/livez`: 503 only when this process is broken (a stuck worker); no
/// dependency is checked, so an outage of one never restarts the process.
#[utoipa::path(
    get,
    path = "/livez",
    tag = "health",
    responses(
        (status = 200, description = "Alive", body = Liveness),
        (status = 503, description = "A worker is stuck", body = Liveness),
    )
)]
pub async fn live(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    // One read of the snapshot for the state and the age.
    let as_of_ms = state.snapshot().as_of_ms;
    let now_ms = dataflows::time::now_ms();
    let dataflow = state.dataflow.state(as_of_ms, now_ms);
    let code = if dataflow == DataflowState::Failed {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    let body = json!({
        "status": if code == StatusCode::OK { "alive" } else { "broken" },
        "dataflow": dataflow.as_str(),
        "as_of_age_seconds": DataflowWatch::age_seconds(as_of_ms, now_ms),
        "service": "analytics",
    });
    (code, Json(body))
}

/// `GET /api/v1/internal/ingestion-metrics`.
#[utoipa::path(
    get,
    path = "/api/v1/internal/ingestion-metrics",
    tag = "health",
    responses((status = 200, description = "Counters of this process's sink", body = IngestionMetrics))
)]
pub async fn ingestion_metrics(State(state): State<AppState>) -> Json<Value> {
    let s = &state.stats;
    let ingested = s.events_ingested.load(Ordering::Relaxed);
    let total_latency_ms = s.total_latency_us.load(Ordering::Relaxed) as f64 / 1000.0;
    Json(json!({
        "events_ingested": ingested,
        "events_failed": s.events_failed.load(Ordering::Relaxed),
        "batches_processed": s.batches_processed.load(Ordering::Relaxed),
        "last_batch_size": s.last_batch_size.load(Ordering::Relaxed),
        "last_batch_duration": format!("{}ms", s.last_batch_duration_us.load(Ordering::Relaxed) as f64 / 1000.0),
        "last_batch_duration_ms": s.last_batch_duration_us.load(Ordering::Relaxed) as f64 / 1000.0,
        "total_latency": format!("{total_latency_ms}ms"),
        "total_latency_ms": total_latency_ms,
        "average_latency_ms": if ingested > 0 { total_latency_ms / ingested as f64 } else { 0.0 },
    }))
}
