//! `POST /api/v1/events` and `GET /api/v1/events`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::Json;
use dataflows::event::{parse_value, DeadLetter, DeadReason, EventSource, ParseError};
use dataflows::windows::contribute;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::params::TimeRange;
use crate::{AppError, AppState};

/// Accepts one event or an array of events. Answers 201 only after the
/// rows are committed in PostgreSQL; a batch is all or nothing.
pub async fn ingest(
    State(state): State<AppState>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), AppError> {
    let now_us = dataflows::time::now_ms() as i64 * 1000;
    let dead_letter = |reason: DeadReason, detail: String, payload: &[u8]| DeadLetter {
        reason,
        detail,
        payload: payload.to_vec(),
        source: EventSource::Rest,
        received_at_us: now_us,
    };
    let text = match std::str::from_utf8(&body) {
        Ok(t) => t,
        Err(e) => {
            let dl = dead_letter(DeadReason::InvalidUtf8, e.to_string(), &body);
            return Err(refuse(
                &state,
                vec![dl],
                json!([{"index": null, "reason": "invalid_utf8", "error": e.to_string()}]),
            )
            .await);
        }
    };
    let (items, batch): (Vec<&RawValue>, bool) = match parse_body(text) {
        Ok(parsed) => parsed,
        Err(e) => {
            let dl = dead_letter(DeadReason::MalformedJson, e.clone(), &body);
            return Err(refuse(
                &state,
                vec![dl],
                json!([{"index": null, "reason": "malformed_json", "error": e}]),
            )
            .await);
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
    let mut events = Vec::with_capacity(items.len());
    let mut errors = Vec::new();
    let mut dead = Vec::new();
    for (index, raw) in items.iter().enumerate() {
        match parse_value(
            raw,
            EventSource::Rest,
            Uuid::new_v4,
            now_us,
            state.settings.time_bounds,
        ) {
            Ok(e) => events.push(e),
            Err(ParseError { reason, detail }) => {
                errors.push(json!({"index": index, "reason": reason.as_str(), "error": detail}));
                dead.push(dead_letter(reason, detail, raw.get().as_bytes()));
            }
        }
    }
    if !errors.is_empty() {
        return Err(refuse(&state, dead, Value::Array(errors)).await);
    }
    let spec = Arc::clone(&state.windows);
    let guard = Arc::clone(&state.guard);
    let committed = sink::rest::commit_rest(&state.pool, &state.partitions, &events, &[], |new| {
        let mut partials = HashMap::new();
        if let Ok(mut guard) = guard.lock() {
            for event in new {
                contribute(event, &spec, &mut guard, &mut partials);
            }
        }
        partials.into_iter().collect()
    })
    .await?;
    state.committed_windows.push(committed.windows);
    sink::writer::publish_committed(&state.feed, &committed.events);
    state.committed.push(committed.events);
    let ids: Vec<Uuid> = events.iter().map(|e| e.id).collect();
    let body = if batch {
        json!({"success": true, "event_ids": ids, "count": ids.len()})
    } else {
        json!({"success": true, "event_id": ids[0]})
    };
    Ok((StatusCode::CREATED, Json(body)))
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

/// Records refused inputs as dead letters and builds the 400 answer.
async fn refuse(state: &AppState, dead: Vec<DeadLetter>, details: Value) -> AppError {
    if let Err(e) =
        sink::rest::commit_rest(&state.pool, &state.partitions, &[], &dead, |_| Vec::new()).await
    {
        tracing::warn!(error = %e, "cannot store rest dead letters");
    }
    AppError::BadRequest {
        message: "invalid event".into(),
        details,
    }
}

#[derive(Debug, Deserialize)]
pub struct ListParams {
    #[serde(flatten)]
    range: TimeRange,
    event_type: Option<String>,
    limit: Option<String>,
}

/// Events from PostgreSQL, newest first.
pub async fn list(
    State(state): State<AppState>,
    Query(params): Query<ListParams>,
) -> Result<Json<Value>, AppError> {
    let (from_us, to_us) = params.range.resolve()?;
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
