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

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use base64::Engine;
use chrono::{DateTime, SecondsFormat, Utc};
use dataflows::event::{
    parse_event, replay_event_id, DeadReason, EventSource, FieldError, TimeBounds,
};
use serde::Deserialize;
use serde_json::{json, Value};
use sink::dead_letters::{DeadLetterFilter, Page, StoredDeadLetter};

use crate::params::{non_empty, parse_int, parse_time};
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

#[derive(Debug, Deserialize)]
pub struct ListParams {
    start_time: Option<String>,
    end_time: Option<String>,
    reason: Option<String>,
    event_type: Option<String>,
    source: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
    offset: Option<String>,
}

/// `GET /api/v1/dead-letters`: newest first; filters `start_time`,
/// `end_time` (on `received_at`, half-open), `reason`, `event_type`,
/// `source` (`kafka`, `rest`); pages by `limit` (≤ `query.max_results`)
/// and `cursor` (the `next_cursor` of the previous page) or `offset`.
/// Payloads are cut at 64 KiB here (`payload_truncated`); GET one by id
/// for all of it.
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
