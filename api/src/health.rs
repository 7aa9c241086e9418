//! Health, readiness and the internal ingestion counters.

use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

use crate::AppState;

const CHECK_TIMEOUT: Duration = Duration::from_millis(1500);

async fn check(state: &AppState) -> (StatusCode, Value) {
    let (db, cache, rate_limit) = tokio::join!(
        tokio::time::timeout(CHECK_TIMEOUT, sink::queries::ping(&state.pool)),
        state.cache.ping(),
        state.rate_limiter.health()
    );
    let db_ok = matches!(db, Ok(Ok(())));
    let sink_ok = !state.sink_degraded.load(Ordering::Relaxed);
    let status = if !db_ok {
        "unhealthy"
    } else if !cache || !sink_ok || rate_limit == "local" {
        "degraded"
    } else {
        "healthy"
    };
    let code = if db_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let snapshot = state.snapshot();
    (
        code,
        json!({
            "status": status,
            "database": if db_ok { "connected" } else { "disconnected" },
            "cache": if cache { "connected" } else { "disconnected" },
            "sink": if sink_ok { "ok" } else { "retrying" },
            "rate_limit": rate_limit,
            "dataflow": if snapshot.as_of_ms > 0 { "running" } else { "starting" },
            "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "service": "analytics",
        }),
    )
}

/// `/health`, `/healthz`.
pub async fn health(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let (code, body) = check(&state).await;
    (code, Json(body))
}

/// `/ready`: also 503 until the dataflow has published its first snapshot.
pub async fn ready(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let (mut code, body) = check(&state).await;
    if state.snapshot().as_of_ms == 0 {
        code = StatusCode::SERVICE_UNAVAILABLE;
    }
    (code, Json(body))
}

/// `GET /api/v1/internal/ingestion-metrics`.
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
