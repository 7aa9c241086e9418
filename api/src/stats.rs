//! `GET /api/v1/events/stats`: counts by event type over `[start_time,
//! end_time)` of event time. Answered from the live snapshot (with
//! `as_of`) when its horizon covers the range and both ends fall on whole
//! seconds; from PostgreSQL otherwise.

use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

use utoipa::ToSchema;

use crate::openapi::ErrorBody;
use crate::params::Query;
use crate::params::TimeRange;
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
) -> Result<Json<Value>, AppError> {
    let (from_us, to_us) = range.resolve()?;
    let snapshot = state.snapshot();
    let aligned = from_us % 1_000_000 == 0 && to_us % 1_000_000 == 0;
    let from_second = from_us.div_euclid(1_000_000);
    let (by_type, as_of, source) = if aligned && snapshot.covers(from_second) {
        let by_type = snapshot
            .counts
            .by_type(from_second, to_us.div_euclid(1_000_000));
        (
            by_type,
            Some(dataflows::event::format_us(snapshot.as_of_ms as i64 * 1000)),
            "live",
        )
    } else {
        (
            sink::queries::stats_by_type(&state.pool, from_us, to_us).await?,
            None,
            "postgres",
        )
    };
    let total: i64 = by_type.values().sum();
    let mut body = json!({
        "start_time": dataflows::event::format_us(from_us),
        "end_time": dataflows::event::format_us(to_us),
        "total_events": total,
        "by_type": by_type,
        "source": source,
    });
    if let Some(as_of) = as_of {
        body["as_of"] = Value::String(as_of);
    }
    Ok(Json(body))
}
