//! `/api/v1/dead-letters`: inspect refused inputs, and replay one once its
//! type's definition accepts it.
//!
//! Replay re-reads the stored payload as a REST event, checks it against
//! the definitions in force NOW (built-in checks, custom schemas, time
//! bounds) and commits it through the REST write path under a
//! deterministic id (UUID v5 of the dead letter's id), so a second replay
//! stores nothing and answers `"already": true`. An event without its own
//! `timestamp` takes the dead letter's `received_at`. The dead letter is
//! kept, marked with `replayed_at` and `replayed_event_id`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use base64::Engine;
use chrono::{DateTime, SecondsFormat, Utc};
use dataflows::event::{
    parse_event, replay_event_id, DeadReason, EventSource, FieldError, TimeBounds,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sink::dead_letters::{DeadLetterFilter, Page, StoredDeadLetter};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::openapi::ErrorBody;
use crate::params::{non_empty, parse_int, parse_time, Path, Query};
use crate::{AppError, AppState};

fn time(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// A dead letter as the API's JSON object: the payload as UTF-8 text when
/// it is, base64 otherwise (`payload_encoding`).
fn to_json(d: &StoredDeadLetter) -> Value {
    let (payload, encoding) = match std::str::from_utf8(&d.payload) {
        Ok(text) => (text.to_string(), "utf8"),
        // A listing may cut a multi-byte character at its end.
        Err(e) if e.error_len().is_none() && d.payload.len() < d.payload_bytes as usize => (
            String::from_utf8_lossy(&d.payload[..e.valid_up_to()]).into_owned(),
            "utf8",
        ),
        Err(_) => (
            base64::engine::general_purpose::STANDARD.encode(&d.payload),
            "base64",
        ),
    };
    json!({
        "id": d.id,
        "received_at": time(&d.received_at),
        "source": d.source,
        "topic": d.kafka_topic,
        "partition": d.kafka_partition,
        "offset": d.kafka_offset,
        "reason": d.reason,
        "detail": d.detail,
        "errors": d.errors.clone().unwrap_or_else(|| json!([])),
        "event_type": d.event_type,
        "payload": payload,
        "payload_encoding": encoding,
        "payload_bytes": d.payload_bytes,
        "payload_truncated": (d.payload.len() as i64) < i64::from(d.payload_bytes),
        "replayed_at": d.replayed_at.as_ref().map(time),
        "replayed_event_id": d.replayed_event_id,
    })
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Received at or after it.
    #[param(value_type = Option<chrono::DateTime<chrono::Utc>>)]
    start_time: Option<String>,
    /// Received before it.
    #[param(value_type = Option<chrono::DateTime<chrono::Utc>>)]
    end_time: Option<String>,
    /// Only this reason (e.g. `invalid_json`, `schema_violation`).
    reason: Option<String>,
    /// Only this event type.
    event_type: Option<String>,
    /// `kafka` or `rest`.
    #[param(value_type = Option<Source>)]
    source: Option<String>,
    /// Page size: 1 to `analytics.query.max_results`.
    #[param(value_type = Option<i64>, minimum = 1)]
    limit: Option<String>,
    /// The previous page's `next_cursor`.
    #[param(value_type = Option<i64>, minimum = 1)]
    cursor: Option<String>,
    /// Items to skip.
    #[param(value_type = Option<i64>, minimum = 0)]
    offset: Option<String>,
}

/// Where a dead letter came from.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)] // a schema only
pub enum Source {
    Kafka,
    Rest,
}

/// One error of a refused item.
#[derive(ToSchema)]
#[allow(dead_code)] // a schema only
pub struct ItemError {
    /// JSON pointer into the item.
    pointer: String,
    message: String,
}

/// A dead letter (see `to_json`).
#[derive(ToSchema)]
#[allow(dead_code)] // a schema only
pub struct DeadLetterItem {
    id: i64,
    received_at: chrono::DateTime<chrono::Utc>,
    source: Source,
    topic: Option<String>,
    partition: Option<i32>,
    offset: Option<i64>,
    reason: String,
    detail: String,
    errors: Vec<ItemError>,
    event_type: Option<String>,
    /// UTF-8 text, or base64 (`payload_encoding`).
    payload: String,
    /// `utf8` or `base64`.
    payload_encoding: String,
    payload_bytes: i64,
    /// The listing cut the payload at 64 KiB; GET it by id for all of it.
    payload_truncated: bool,
    replayed_at: Option<chrono::DateTime<chrono::Utc>>,
    replayed_event_id: Option<Uuid>,
}

/// `GET /api/v1/dead-letters`.
#[derive(ToSchema)]
#[allow(dead_code)] // a schema only
pub struct DeadLetterPage {
    /// Newest first.
    dead_letters: Vec<DeadLetterItem>,
    count: usize,
    /// The `cursor` of the next page; null on the last.
    #[schema(value_type = Option<String>)]
    next_cursor: Option<String>,
}

/// `POST /api/v1/dead-letters/{id}/replay`.
#[derive(ToSchema)]
#[allow(dead_code)] // a schema only
pub struct Replayed {
    replayed: bool,
    /// Replayed before: nothing stored this time.
    already: bool,
    event_id: Uuid,
    dead_letter_id: i64,
    replayed_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// `GET /api/v1/dead-letters`: newest first; filters `start_time`,
/// `end_time` (on `received_at`, half-open), `reason`, `event_type`,
/// `source` (`kafka`, `rest`); pages by `limit` (≤ `query.max_results`)
/// and `cursor` (the `next_cursor` of the previous page) or `offset`.
/// Payloads are cut at 64 KiB here (`payload_truncated`); GET one by id
/// for all of it.
#[utoipa::path(
    get,
    path = "/api/v1/dead-letters",
    tag = "dead-letters",
    params(ListParams),
    responses(
        (status = 200, description = "A page of dead letters", body = DeadLetterPage),
        (status = 400, description = "A bad parameter, named in `details`", body = ErrorBody),
    )
)]
pub async fn list(
    State(state): State<AppState>,
    Query(params): Query<ListParams>,
) -> Result<Json<Value>, AppError> {
    let from_us = parse_time("start_time", non_empty(&params.start_time))?;
    let to_us = parse_time("end_time", non_empty(&params.end_time))?;
    if let (Some(f), Some(t)) = (from_us, to_us) {
        if t < f {
            return Err(AppError::bad_param(
                "end_time",
                "end_time is before start_time",
            ));
        }
    }
    let reason = match non_empty(&params.reason) {
        None => None,
        Some(r) => match DeadReason::parse(r) {
            Some(reason) => Some(reason.as_str().to_string()),
            None => {
                let known: Vec<&str> = DeadReason::ALL.iter().map(|r| r.as_str()).collect();
                return Err(AppError::bad_param(
                    "reason",
                    format!("{r:?} is not one of {}", known.join(", ")),
                ));
            }
        },
    };
    let source = match non_empty(&params.source) {
        None => None,
        Some(s @ ("kafka" | "rest")) => Some(s.to_string()),
        Some(s) => {
            return Err(AppError::bad_param(
                "source",
                format!("{s:?} is not kafka or rest"),
            ))
        }
    };
    let limit = parse_int(
        "limit",
        non_empty(&params.limit),
        1,
        state.settings.max_results,
    )?
    .unwrap_or(state.settings.default_limit.min(state.settings.max_results));
    let before_id = parse_int("cursor", non_empty(&params.cursor), 1, i64::MAX)?;
    let offset = parse_int("offset", non_empty(&params.offset), 0, i64::MAX)?.unwrap_or(0);
    let filter = DeadLetterFilter {
        from_us,
        to_us,
        reason,
        event_type: non_empty(&params.event_type).map(str::to_string),
        source,
    };
    let rows = sink::dead_letters::list(
        &state.pool,
        &filter,
        Page {
            limit,
            before_id,
            offset,
        },
    )
    .await?;
    let next_cursor = (rows.len() as i64 == limit)
        .then(|| rows.last().map(|d| d.id.to_string()))
        .flatten();
    let items: Vec<Value> = rows.iter().map(to_json).collect();
    Ok(Json(json!({
        "dead_letters": items,
        "count": items.len(),
        "next_cursor": next_cursor,
    })))
}

fn parse_id(id: &str) -> Result<i64, AppError> {
    id.parse::<i64>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| AppError::bad_param("id", format!("{id:?} is not a dead letter id")))
}

/// `GET /api/v1/dead-letters/:id`: one dead letter with its whole payload.
#[utoipa::path(
    get,
    path = "/api/v1/dead-letters/{id}",
    tag = "dead-letters",
    params(("id" = i64, Path, minimum = 1)),
    responses(
        (status = 200, description = "The dead letter, whole payload", body = DeadLetterItem),
        (status = 400, description = "Not a dead letter id", body = ErrorBody),
        (status = 404, description = "Unknown", body = ErrorBody),
    )
)]
pub async fn get(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, AppError> {
    let id = parse_id(&id)?;
    sink::dead_letters::get(&state.pool, id)
        .await?
        .map(|d| Json(to_json(&d)))
        .ok_or(AppError::NotFound)
}

fn still_invalid(reason: DeadReason, errors: Vec<FieldError>) -> AppError {
    let details: Vec<Value> = errors
        .into_iter()
        .map(|e| json!({"reason": reason.as_str(), "pointer": e.pointer, "error": e.message}))
        .collect();
    AppError::Rejected {
        status: StatusCode::UNPROCESSABLE_ENTITY,
        message: "the dead letter is still invalid".into(),
        details: Value::Array(details),
        dead_letters: None,
    }
}

/// `POST /api/v1/dead-letters/:id/replay`: 200 `{"replayed": true,
/// "already": bool, "event_id"}`; 422 with every error when the payload is
/// still refused; 404 when unknown.
#[utoipa::path(
    post,
    path = "/api/v1/dead-letters/{id}/replay",
    tag = "dead-letters",
    params(("id" = i64, Path, minimum = 1)),
    responses(
        (status = 200, description = "Stored once (`already`: an earlier replay stored it)", body = Replayed),
        (status = 400, description = "Not a dead letter id", body = ErrorBody),
        (status = 404, description = "Unknown", body = ErrorBody),
        (status = 422, description = "Still refused: every error in `details`", body = ErrorBody),
    )
)]
pub async fn replay(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, AppError> {
    let id = parse_id(&id)?;
    let dead = sink::dead_letters::get(&state.pool, id)
        .await?
        .ok_or(AppError::NotFound)?;
    let event_id = replay_event_id(id);
    if let Some(at) = dead.replayed_at {
        return Ok(Json(json!({
            "replayed": true,
            "already": true,
            "event_id": dead.replayed_event_id.unwrap_or(event_id),
            "dead_letter_id": id,
            "replayed_at": time(&at),
        })));
    }
    let now_us = dataflows::time::now_ms() as i64 * 1000;
    let mut event = parse_event(
        &dead.payload,
        EventSource::Rest,
        || event_id,
        dead.received_at_us(),
        TimeBounds::UNBOUNDED,
    )
    .map_err(|e| still_invalid(e.reason, vec![e.field_error()]))?;
    event.id = event_id;
    event.created_at_us = now_us;
    if !state
        .settings
        .time_bounds
        .admits(now_us, event.timestamp_us)
    {
        return Err(still_invalid(
            DeadReason::TimestampOutOfRange,
            vec![FieldError {
                pointer: "/timestamp".into(),
                message: "timestamp outside the accepted range".into(),
            }],
        ));
    }
    state
        .schemas
        .registry()
        .snapshot()
        .validate(&mut event)
        .map_err(|r| still_invalid(r.reason, r.errors))?;
    let new = crate::events::commit_events(&state, &[event]).await?;
    let replayed_at = sink::dead_letters::mark_replayed(&state.pool, id, event_id).await?;
    Ok(Json(json!({
        "replayed": true,
        "already": new.is_empty(),
        "event_id": event_id,
        "dead_letter_id": id,
        "replayed_at": replayed_at.as_ref().map(time),
    })))
}
