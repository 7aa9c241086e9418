//! `GET /api/v1/events/stats`: counts by event type over `[start_time,
//! end_time)` of event time. Answered from the live snapshot (with
//! `as_of`) when its horizon covers the range and both ends fall on whole
//! seconds; from PostgreSQL otherwise.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use dataflows::event::format_us;
use serde_json::{json, Value};
use utoipa::ToSchema;

use crate::openapi::ErrorBody;
use crate::params::{Query, TimeRange};
use crate::{AppError, AppState};

/// Counts of a range.
#[derive(ToSchema)]
#[allow(dead_code)] // a schema only
pub struct Stats {
    start_time: chrono::DateTime<chrono::Utc>,
    end_time: chrono::DateTime<chrono::Utc>,
    total_events: i64,
    /// Events per type.
    #[schema(value_type = std::collections::HashMap<String, i64>)]
    by_type: Value,
    /// `live` or `postgres`.
    source: String,
    /// The tick the numbers reflect (live answers only).
    #[schema(required = false)]
    as_of: Option<chrono::DateTime<chrono::Utc>>,
}

#[utoipa::path(
    get,
    path = "/api/v1/events/stats",
    tag = "events",
    params(TimeRange),
    responses(
        (status = 200, description = "Counts by event type over `[start_time, end_time)` of event time", body = Stats),
        (status = 400, description = "A bad parameter, named in `details`", body = ErrorBody),
    )
)]
pub async fn stats(
    State(state): State<AppState>,
    Query(range): Query<TimeRange>,
) -> Result<Response, AppError> {
    let (from_us, to_us) = range.resolve()?;
    let snapshot = state.snapshot();
    let aligned = from_us % 1_000_000 == 0 && to_us % 1_000_000 == 0;
    let from_second = from_us.div_euclid(1_000_000);
    if aligned && snapshot.covers(from_second) {
        // Once per snapshot and range: every client asking for the default
        // range within the same second shares one answer.
        let bytes = state
            .live_answers
            .stats
            .get_or_make(&snapshot, &(from_us, to_us), || {
                let by_type = snapshot
                    .counts
                    .by_type(from_second, to_us.div_euclid(1_000_000));
                let as_of = format_us(snapshot.as_of_ms as i64 * 1000);
                Some(Bytes::from(
                    body(from_us, to_us, by_type, "live", Some(as_of)).to_string(),
                ))
            })
            .ok_or_else(|| AppError::Internal("live stats answer missing".into()))?;
        return Ok(crate::web::json_bytes(bytes));
    }
    let by_type = sink::queries::stats_by_type(&state.pool, from_us, to_us).await?;
    Ok(Json(body(from_us, to_us, by_type, "postgres", None)).into_response())
}

fn body(
    from_us: i64,
    to_us: i64,
    by_type: BTreeMap<String, i64>,
    source: &str,
    as_of: Option<String>,
) -> Value {
    let total: i64 = by_type.values().sum();
    let mut body = json!({
        "start_time": format_us(from_us),
        "end_time": format_us(to_us),
        "total_events": total,
        "by_type": by_type,
        "source": source,
    });
    if let Some(as_of) = as_of {
        body["as_of"] = Value::String(as_of);
    }
    body
}
