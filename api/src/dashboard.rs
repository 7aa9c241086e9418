//! `GET /api/v1/dashboard/metrics`: every number from ONE live snapshot
//! (never a SQL query, never a cache), with its `as_of`.
//!
//! With S = `as_of` truncated to the second, and event time:
//! - `events_per_second`: events with event time in [S − 60 s, S), / 60;
//! - `orders_placed|filled|canceled|rejected`: order.* events in
//!   [S − orders_window, S); `fill_rate` = filled / placed, `error_rate` =
//!   rejected / placed (0 when nothing was placed);
//! - `total_volume`: Σ price × quantity of order.filled in that window;
//! - `average_latency`: mean `latency_ms` of order.* events in that window;
//! - `active_users`: distinct `user_id` of events whose second ends within
//!   `active_users_window` before `as_of` (or later);
//! - `active_strategies`: strategies whose latest lifecycle event (by event
//!   time) is strategy.started and that had an event within
//!   `strategy_timeout` before `as_of`;
//! - `custom_metrics`: counts per custom (not built-in) event type in the
//!   orders window.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::response::Response;
use dataflows::dashboard::{LATENCY, VOLUME};
use dataflows::event::{format_us, KNOWN_TYPES};
use dataflows::windows::from_nano;
use dataflows::LiveSnapshot;
use serde_json::{json, Map, Value};

use utoipa::ToSchema;

use crate::{AppError, AppState};

fn ratio(a: i64, b: i64) -> f64 {
    if b > 0 {
        a as f64 / b as f64
    } else {
        0.0
    }
}

/// The dashboard: every number from one live snapshot (definitions above,
/// in the module's documentation and the README).
#[derive(ToSchema)]
#[allow(dead_code)] // a schema only
pub struct Dashboard {
    active_users: u64,
    events_per_second: f64,
    orders_placed: i64,
    orders_filled: i64,
    orders_canceled: i64,
    orders_rejected: i64,
    fill_rate: f64,
    active_strategies: u64,
    total_volume: f64,
    average_latency: f64,
    error_rate: f64,
    /// Counts per custom event type in the orders window.
    #[schema(value_type = std::collections::HashMap<String, i64>)]
    custom_metrics: Value,
    last_updated: chrono::DateTime<chrono::Utc>,
    as_of: chrono::DateTime<chrono::Utc>,
}

#[utoipa::path(
    get,
    path = "/api/v1/dashboard/metrics",
    tag = "live",
    responses(
        (status = 200, description = "One live snapshot, with its `as_of`", body = Dashboard),
    )
)]
pub async fn metrics(State(state): State<AppState>) -> Result<Response, AppError> {
    let snapshot = state.snapshot();
    let bytes = serialized(&state, &snapshot)
        .ok_or_else(|| AppError::Unavailable("live state not ready yet".into()))?;
    Ok(crate::web::json_bytes(bytes))
}

/// The dashboard of `snapshot` as JSON bytes, serialized once per snapshot
/// for every reader (the endpoint and `/api/v1/stream`); `None` before
/// the first snapshot.
pub fn serialized(state: &AppState, snapshot: &Arc<LiveSnapshot>) -> Option<Bytes> {
    state.live_answers.dashboard.get_or_make(snapshot, &(), || {
        body(state, snapshot).map(|b| Bytes::from(b.to_string()))
    })
}

/// The dashboard of `snapshot`; `None` before the first snapshot.
pub fn body(state: &AppState, snapshot: &LiveSnapshot) -> Option<Value> {
    if snapshot.as_of_ms == 0 {
        return None;
    }
    let s = (snapshot.as_of_ms / 1000) as i64;
    let window = state.settings.orders_window_secs;
    let last_minute = snapshot.counts.by_type(s - 60, s);
    let recent = snapshot.counts.by_type(s - window, s);
    let count = |t: &str| recent.get(t).copied().unwrap_or(0);
    let (placed, filled, canceled, rejected) = (
        count("order.placed"),
        count("order.filled"),
        count("order.canceled"),
        count("order.rejected"),
    );
    let dash = &snapshot.dashboard;
    let (_, volume) = dash.sum(VOLUME, s - window, s);
    let (latencies, latency_sum) = dash.sum(LATENCY, s - window, s);
    let since_us = snapshot.as_of_ms as i64 * 1000 - state.settings.strategy_timeout_us;
    let active_strategies = dash
        .strategies
        .values()
        .filter(|st| st.active(since_us))
        .count();
    let custom: Map<String, Value> = recent
        .iter()
        .filter(|(t, _)| !KNOWN_TYPES.contains(&t.as_str()))
        .map(|(t, n)| (t.clone(), json!(n)))
        .collect();
    let as_of = format_us(snapshot.as_of_ms as i64 * 1000);
    Some(json!({
        "active_users": dash.users.len(),
        "events_per_second": last_minute.values().sum::<i64>() as f64 / 60.0,
        "orders_placed": placed,
        "orders_filled": filled,
        "orders_canceled": canceled,
        "orders_rejected": rejected,
        "fill_rate": ratio(filled, placed),
        "active_strategies": active_strategies,
        "total_volume": from_nano(volume),
        "average_latency": if latencies > 0 { from_nano(latency_sum) / latencies as f64 } else { 0.0 },
        "error_rate": ratio(rejected, placed),
        "custom_metrics": custom,
        "last_updated": as_of,
        "as_of": as_of,
    }))
}
