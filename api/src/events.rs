//! `POST /api/v1/events` (parse, validate, commit or refuse into dead
//! letters) and `GET /api/v1/events`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use dataflows::event::{parse_value, DeadLetter, DeadReason, Event, EventSource, FieldError};
use dataflows::windows::{contribute, Partials};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{json, Value};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::openapi::ErrorBody;
use crate::params::{Query, TimeRange};
use crate::{AppError, AppState};

/// Most error entries in one refusal; every dead letter keeps its own.
const MAX_ERROR_ENTRIES: usize = 10_000;

/// An event as clients send it (`POST /api/v1/events`, Kafka messages).
#[derive(ToSchema)]
#[allow(dead_code)] // a schema only: events are parsed by `dataflows::event`
pub struct EventInput {
    /// Generated when absent; a retry with the same id is stored once.
    id: Option<Uuid>,
    /// A known type (`order.placed`, …) or a custom one; at most 255 bytes.
    #[schema(min_length = 1, max_length = 255)]
    event_type: String,
    user_id: Option<String>,
    session_id: Option<String>,
    /// Checked by the built-in rules of a known type, or by the JSON
    /// Schema of the type's active custom definition.
    #[schema(value_type = Option<Object>)]
    properties: Option<Value>,
    /// Event time; now when absent.
    timestamp: Option<chrono::DateTime<chrono::Utc>>,
}

/// One event, or an array of events (a batch: all or nothing).
#[derive(ToSchema)]
#[allow(dead_code)] // a schema only
pub enum IngestBody {
    One(EventInput),
    Batch(Vec<EventInput>),
}

/// The answer to a stored event (`event_id`) or batch (`event_ids`, `count`).
#[derive(Serialize, ToSchema)]
pub struct Accepted {
    success: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    event_id: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    event_ids: Option<Vec<Uuid>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    count: Option<usize>,
}

/// A stored event.
#[derive(ToSchema)]
#[allow(dead_code)] // a schema only: see `dataflows::event::Event::to_json`
pub struct StoredEvent {
    id: Uuid,
    event_type: String,
    user_id: Option<String>,
    session_id: Option<String>,
    #[schema(value_type = Object)]
    properties: Value,
    timestamp: chrono::DateTime<chrono::Utc>,
    created_at: chrono::DateTime<chrono::Utc>,
}

/// `GET /api/v1/events`.
#[derive(ToSchema)]
#[allow(dead_code)] // a schema only
pub struct EventList {
    events: Vec<StoredEvent>,
    count: usize,
    start_time: chrono::DateTime<chrono::Utc>,
    end_time: chrono::DateTime<chrono::Utc>,
}

/// Accepts one event or an array of events. Answers 201 only after the
/// rows are committed in PostgreSQL; a batch is all or nothing. A refusal
/// lists every error with the item's `index` and a JSON `pointer` into it:
/// 400 when an item is malformed (not JSON, missing or mistyped fields),
/// 422 when every refused item is well-formed but breaks the rules of its
/// type (its custom JSON Schema, or the built-in checks of a known type).
/// Each refused item is stored as a dead letter before the answer.
#[utoipa::path(
    post,
    path = "/api/v1/events",
    tag = "events",
    request_body(content = IngestBody, description = "One event, or an array of events", content_type = "application/json"),
    responses(
        (status = 201, description = "Committed in PostgreSQL", body = Accepted),
        (status = 400, description = "Malformed: not UTF-8 or JSON, missing or mistyped fields; every error listed in `details` as `{index, reason, pointer, error}`, every refused item stored as a dead letter", body = ErrorBody),
        (status = 413, description = "Larger than `server.max_body_bytes`"),
        (status = 422, description = "Well-formed but against its type's rules (custom JSON Schema or built-in checks); errors as for 400", body = ErrorBody),
    )
)]
pub async fn ingest(
    State(state): State<AppState>,
    body: Bytes,
) -> Result<(StatusCode, Json<Accepted>), AppError> {
    let now_us = dataflows::time::now_ms() as i64 * 1000;
    let whole = |reason: DeadReason, detail: String| {
        let entry =
            json!([{"index": null, "reason": reason.as_str(), "pointer": "", "error": detail}]);
        let dead = DeadLetter {
            reason,
            detail: detail.clone(),
            errors: vec![FieldError {
                pointer: String::new(),
                message: detail,
            }],
            payload: body.to_vec(),
            source: EventSource::Rest,
            received_at_us: now_us,
        };
        (vec![dead], entry)
    };
    let text = match std::str::from_utf8(&body) {
        Ok(t) => t,
        Err(e) => {
            let (dead, details) = whole(DeadReason::InvalidUtf8, e.to_string());
            return Err(refuse(&state, dead, details, true).await);
        }
    };
    let (items, batch): (Vec<&RawValue>, bool) = match parse_body(text) {
        Ok(parsed) => parsed,
        Err(e) => {
            let (dead, details) = whole(DeadReason::MalformedJson, e);
            return Err(refuse(&state, dead, details, true).await);
        }
    };
    if items.is_empty() {
        return Err(AppError::bad_param("body", "an empty batch holds no event"));
    }
    if items.len() > state.settings.max_batch_events {
        return Err(AppError::bad_param(
            "body",
            format!(
                "a batch holds at most {} events",
                state.settings.max_batch_events
            ),
        ));
    }
    let validators = state.schemas.registry().snapshot();
    let mut events = Vec::with_capacity(items.len());
    let mut errors = Vec::new();
    let mut dead = Vec::new();
    let mut malformed = false;
    for (index, raw) in items.iter().enumerate() {
        let payload = raw.get().as_bytes();
        match parse_value(
            raw,
            EventSource::Rest,
            Uuid::new_v4,
            now_us,
            state.settings.time_bounds,
        ) {
            Ok(mut event) => match validators.validate(&mut event) {
                Ok(()) => events.push(event),
                Err(rejection) => {
                    for e in &rejection.errors {
                        errors.push(json!({
                            "index": index,
                            "reason": rejection.reason.as_str(),
                            "pointer": e.pointer,
                            "error": e.message,
                        }));
                    }
                    dead.push(rejection.into_dead_letter(payload, EventSource::Rest, now_us));
                }
            },
            Err(err) => {
                malformed = true;
                errors.push(json!({
                    "index": index,
                    "reason": err.reason.as_str(),
                    "pointer": err.pointer,
                    "error": err.detail,
                }));
                dead.push(DeadLetter::parse_failure(
                    err,
                    payload,
                    EventSource::Rest,
                    now_us,
                ));
            }
        }
    }
    if !dead.is_empty() {
        if errors.len() > MAX_ERROR_ENTRIES {
            let more = errors.len() - MAX_ERROR_ENTRIES;
            errors.truncate(MAX_ERROR_ENTRIES);
            errors.push(json!({"index": null, "reason": null, "pointer": "", "error": format!("{more} more errors not listed")}));
        }
        return Err(refuse(&state, dead, Value::Array(errors), malformed).await);
    }
    commit_events(&state, &events).await?;
    let ids: Vec<Uuid> = events.iter().map(|e| e.id).collect();
    let body = if batch {
        Accepted {
            success: true,
            count: Some(ids.len()),
            event_ids: Some(ids),
            event_id: None,
        }
    } else {
        Accepted {
            success: true,
            event_id: Some(ids[0]),
            event_ids: None,
            count: None,
        }
    };
    Ok((StatusCode::CREATED, Json(body)))
}

/// Commits valid events through the REST write path and hands the new
/// ones (not stored before under the same id) to the live state; returns them.
pub(crate) async fn commit_events(
    state: &AppState,
    events: &[Event],
) -> Result<Vec<Event>, AppError> {
    let spec = Arc::clone(&state.windows);
    let guard = Arc::clone(&state.guard);
    let committed = sink::rest::commit_rest(&state.pool, &state.partitions, events, &[], |new| {
        let mut partials = Partials::default();
        if let Ok(mut guard) = guard.lock() {
            for event in new {
                contribute(event, &spec, &mut guard, &mut partials);
            }
        }
        partials.drain(&spec).collect()
    })
    .await?;
    state.committed_windows.push(committed.windows);
    sink::writer::publish_committed(&state.feed, committed.events.iter().cloned());
    let new = committed.events.clone();
    state.committed.push(committed.events);
    Ok(new)
}

fn parse_body(text: &str) -> Result<(Vec<&RawValue>, bool), String> {
    if text.trim_start().starts_with('[') {
        serde_json::from_str::<Vec<&RawValue>>(text)
            .map(|v| (v, true))
            .map_err(|e| e.to_string())
    } else {
        serde_json::from_str::<&RawValue>(text)
            .map(|v| (vec![v], false))
            .map_err(|e| e.to_string())
    }
}

/// Stores refused inputs as dead letters, then builds the 400 (malformed)
/// or 422 (rules of the type) answer; 503 when they cannot be stored.
async fn refuse(
    state: &AppState,
    dead: Vec<DeadLetter>,
    details: Value,
    malformed: bool,
) -> AppError {
    if let Err(e) =
        sink::rest::commit_rest(&state.pool, &state.partitions, &[], &dead, |_| Vec::new()).await
    {
        tracing::warn!(error = %e, "cannot store rest dead letters");
        return AppError::from(e);
    }
    let schema = dead.iter().any(|d| d.reason == DeadReason::SchemaViolation);
    let (status, message) = match (malformed, schema) {
        (true, _) => (StatusCode::BAD_REQUEST, "invalid event"),
        (false, true) => (StatusCode::UNPROCESSABLE_ENTITY, "schema violation"),
        (false, false) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid event fields"),
    };
    AppError::Rejected {
        status,
        message: message.into(),
        details,
        dead_letters: Some(dead.len()),
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Event time at or after it; default `end_time` − 24 h.
    #[param(value_type = Option<chrono::DateTime<chrono::Utc>>)]
    start_time: Option<String>,
    /// Event time before it; default the next whole second.
    #[param(value_type = Option<chrono::DateTime<chrono::Utc>>)]
    end_time: Option<String>,
    /// Only events of this type.
    event_type: Option<String>,
    /// Most events answered: 1 to `analytics.query.max_results`; default
    /// `analytics.query.default_limit`.
    #[param(value_type = Option<i64>, minimum = 1)]
    limit: Option<String>,
}

/// Events from PostgreSQL, newest first.
#[utoipa::path(
    get,
    path = "/api/v1/events",
    tag = "events",
    params(ListParams),
    responses(
        (status = 200, description = "Events with event time in `[start_time, end_time)`", body = EventList),
        (status = 400, description = "A bad parameter, named in `details`", body = ErrorBody),
    )
)]
pub async fn list(
    State(state): State<AppState>,
    Query(params): Query<ListParams>,
) -> Result<Json<Value>, AppError> {
    let (from_us, to_us) = TimeRange::of(&params.start_time, &params.end_time).resolve()?;
    let limit = match params.limit.as_deref() {
        None | Some("") => state.settings.default_limit,
        Some(s) => match s.parse::<i64>() {
            Ok(n) if n >= 1 && n <= state.settings.max_results => n,
            Ok(_) => {
                return Err(AppError::bad_param(
                    "limit",
                    format!("must be between 1 and {}", state.settings.max_results),
                ))
            }
            Err(_) => {
                return Err(AppError::bad_param(
                    "limit",
                    format!("{s:?} is not an integer"),
                ))
            }
        },
    };
    let event_type = params.event_type.as_deref().filter(|t| !t.is_empty());
    let events = sink::queries::list_events(&state.pool, from_us, to_us, event_type, limit).await?;
    let items: Vec<Value> = events.iter().map(|e| e.to_json()).collect();
    Ok(Json(json!({
        "events": items,
        "count": items.len(),
        "start_time": dataflows::event::format_us(from_us),
        "end_time": dataflows::event::format_us(to_us),
    })))
}
