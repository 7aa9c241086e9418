//! `/api/v1/custom-events`: definitions of custom event types and their
//! JSON Schemas (create, read, list, new version, deactivate).
//!
//! A definition's schema applies to the `properties` of events of that
//! type. After every change the handler reloads this process's validator
//! registry before it answers, so the change is in force on the REST path
//! and the Kafka source of this process once the answer is sent; other
//! processes follow through PostgreSQL `NOTIFY`.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use sink::custom_events::{DefinitionUpdate, NewDefinition};
use utoipa::ToSchema;

use crate::openapi::ErrorBody;
use crate::params::Path;
use crate::{AppError, AppState};

/// Longest name, as for `event_type`.
const MAX_NAME_BYTES: usize = 255;
const MAX_DISPLAY_NAME_BYTES: usize = 255;
const MAX_DESCRIPTION_BYTES: usize = 4096;

/// The fields a client sets; others (`id`, `version`, times: what a GET
/// returns) are ignored, so a fetched definition can be PUT back edited.
#[derive(Debug, Deserialize)]
struct DefinitionBody {
    name: Option<String>,
    display_name: Option<String>,
    description: Option<String>,
    schema: Option<Value>,
    is_active: Option<bool>,
}

fn parse_body(body: &[u8]) -> Result<DefinitionBody, AppError> {
    let text = std::str::from_utf8(body).map_err(|e| AppError::bad_param("body", e.to_string()))?;
    let parsed: DefinitionBody =
        serde_json::from_str(text).map_err(|e| AppError::bad_param("body", e.to_string()))?;
    // What PostgreSQL cannot store (`\u0000`, lone surrogates, huge
    // numbers) is refused here, not by a failed INSERT.
    dataflows::event::check_storable_json(text).map_err(|e| AppError::bad_param("body", e))?;
    Ok(parsed)
}

/// Names a custom type may have: not empty, at most 255 bytes, no
/// whitespace, control characters or `/`, and not a built-in type.
fn check_name(name: &str) -> Result<(), AppError> {
    if name.is_empty() {
        return Err(AppError::bad_param("name", "must not be empty"));
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(AppError::bad_param(
            "name",
            format!("longer than {MAX_NAME_BYTES} bytes"),
        ));
    }
    if name
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == '/')
    {
        return Err(AppError::bad_param(
            "name",
            "must not contain whitespace, control characters or '/'",
        ));
    }
    if dataflows::validate::is_known_type(name) {
        return Err(AppError::bad_param(
            "name",
            format!("{name} is a built-in event type"),
        ));
    }
    Ok(())
}

fn check_text(param: &str, value: &Option<String>, max: usize) -> Result<(), AppError> {
    match value {
        Some(v) if v.len() > max => Err(AppError::bad_param(
            param,
            format!("longer than {max} bytes"),
        )),
        _ => Ok(()),
    }
}

fn check_schema(schema: &Value) -> Result<(), AppError> {
    dataflows::validate::compile(schema)
        .map(|_| ())
        .map_err(|e| AppError::bad_param("schema", e.0))
}

/// Puts the change in force on this process; the periodic refresh and
/// `NOTIFY` catch up if this fails.
async fn reload(state: &AppState) {
    if let Err(e) = state.schemas.reload().await {
        tracing::warn!(error = %e, "custom event schemas not reloaded after a change");
    }
}

/// `POST /api/v1/custom-events`: 201 with the stored definition, 409 when
/// the name exists, 400 for a bad name or schema.
/// A definition as clients send it (POST; PUT takes the same fields, all
/// optional, and refuses a different `name`).
#[derive(ToSchema)]
#[allow(dead_code)] // a schema only: bodies are read into `DefinitionBody`
pub struct DefinitionInput {
    /// The event type: 1 to 255 bytes, no whitespace, control characters
    /// or `/`, not a built-in type. Required on POST.
    #[schema(min_length = 1, max_length = 255)]
    name: Option<String>,
    /// Default `name`; at most 255 bytes.
    #[schema(max_length = 255)]
    display_name: Option<String>,
    /// At most 4096 bytes.
    #[schema(max_length = 4096)]
    description: Option<String>,
    /// A JSON Schema (an object, or `true`/`false`) for the events'
    /// `properties`. Required on POST.
    schema: Option<Value>,
    /// Default true.
    is_active: Option<bool>,
}

/// A stored definition (see `sink::custom_events::Definition::to_json`).
#[derive(ToSchema)]
#[allow(dead_code)] // a schema only
pub struct Definition {
    id: uuid::Uuid,
    name: String,
    display_name: String,
    description: String,
    /// A JSON Schema: an object, or `true`/`false`.
    schema: Value,
    version: i32,
    is_active: bool,
    created_at: chrono::DateTime<chrono::Utc>,
    updated_at: chrono::DateTime<chrono::Utc>,
}

/// `GET /api/v1/custom-events`.
#[derive(ToSchema)]
#[allow(dead_code)] // a schema only
pub struct DefinitionList {
    definitions: Vec<Definition>,
    count: usize,
}

#[utoipa::path(
    post,
    path = "/api/v1/custom-events",
    tag = "custom-events",
    request_body(content = DefinitionInput, content_type = "application/json"),
    responses(
        (status = 201, description = "Stored as version 1, in force when answered", body = Definition),
        (status = 400, description = "Not JSON, a bad name or text field, or not a JSON Schema", body = ErrorBody),
        (status = 409, description = "The name exists", body = ErrorBody),
        (status = 413, description = "Larger than `server.max_body_bytes`"),
    )
)]
pub async fn create(
    State(state): State<AppState>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), AppError> {
    let body = parse_body(&body)?;
    let name = body
        .name
        .ok_or_else(|| AppError::bad_param("name", "is required"))?;
    check_name(&name)?;
    check_text("display_name", &body.display_name, MAX_DISPLAY_NAME_BYTES)?;
    check_text("description", &body.description, MAX_DESCRIPTION_BYTES)?;
    let schema = body
        .schema
        .ok_or_else(|| AppError::bad_param("schema", "is required"))?;
    check_schema(&schema)?;
    let new = NewDefinition {
        display_name: body.display_name.unwrap_or_else(|| name.clone()),
        name,
        description: body.description.unwrap_or_default(),
        schema,
        is_active: body.is_active.unwrap_or(true),
    };
    let Some(stored) = sink::custom_events::create(&state.pool, &new).await? else {
        return Err(AppError::Conflict(format!(
            "custom event type {} already exists",
            new.name
        )));
    };
    reload(&state).await;
    Ok((StatusCode::CREATED, Json(stored.to_json())))
}

/// `GET /api/v1/custom-events/:name`.
#[utoipa::path(
    get,
    path = "/api/v1/custom-events/{name}",
    tag = "custom-events",
    params(("name" = String, Path)),
    responses(
        (status = 200, description = "The definition, active or not", body = Definition),
        (status = 404, description = "Unknown", body = ErrorBody),
    )
)]
pub async fn get(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, AppError> {
    sink::custom_events::get(&state.pool, &name)
        .await?
        .map(|d| Json(d.to_json()))
        .ok_or(AppError::NotFound)
}

/// `GET /api/v1/custom-events`: every definition, active or not, by name.
#[utoipa::path(
    get,
    path = "/api/v1/custom-events",
    tag = "custom-events",
    responses((status = 200, description = "Every definition, by name", body = DefinitionList))
)]
pub async fn list(State(state): State<AppState>) -> Result<Json<Value>, AppError> {
    let all = sink::custom_events::list(&state.pool).await?;
    let items: Vec<Value> = all.iter().map(|d| d.to_json()).collect();
    Ok(Json(json!({"definitions": items, "count": items.len()})))
}

/// `PUT /api/v1/custom-events/:name`: a new version (fields left out keep
/// their values); 404 when unknown.
#[utoipa::path(
    put,
    path = "/api/v1/custom-events/{name}",
    tag = "custom-events",
    params(("name" = String, Path)),
    request_body(content = DefinitionInput, content_type = "application/json"),
    responses(
        (status = 200, description = "The new version", body = Definition),
        (status = 400, description = "Not JSON, a rename, a bad text field, or not a JSON Schema", body = ErrorBody),
        (status = 404, description = "Unknown", body = ErrorBody),
        (status = 413, description = "Larger than `server.max_body_bytes`"),
    )
)]
pub async fn update(
    State(state): State<AppState>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, AppError> {
    let body = parse_body(&body)?;
    if body.name.as_ref().is_some_and(|n| *n != name) {
        return Err(AppError::bad_param(
            "name",
            "a definition cannot be renamed",
        ));
    }
    check_text("display_name", &body.display_name, MAX_DISPLAY_NAME_BYTES)?;
    check_text("description", &body.description, MAX_DESCRIPTION_BYTES)?;
    if let Some(schema) = &body.schema {
        check_schema(schema)?;
    }
    let update = DefinitionUpdate {
        display_name: body.display_name,
        description: body.description,
        schema: body.schema,
        is_active: body.is_active,
    };
    let stored = sink::custom_events::update(&state.pool, &name, &update)
        .await?
        .ok_or(AppError::NotFound)?;
    reload(&state).await;
    Ok(Json(stored.to_json()))
}

/// `DELETE /api/v1/custom-events/:name`: deactivates the definition (kept,
/// with its versions; events of the type are no longer validated); 200
/// with the definition, 404 when unknown.
#[utoipa::path(
    delete,
    path = "/api/v1/custom-events/{name}",
    tag = "custom-events",
    params(("name" = String, Path)),
    responses(
        (status = 200, description = "Deactivated, kept with its versions", body = Definition),
        (status = 404, description = "Unknown", body = ErrorBody),
    )
)]
pub async fn deactivate(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, AppError> {
    let stored = sink::custom_events::deactivate(&state.pool, &name)
        .await?
        .ok_or(AppError::NotFound)?;
    reload(&state).await;
    Ok(Json(stored.to_json()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["deposit", "kyc.completed", "a-b_c:1", "ÜberEvent"] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        let long = "x".repeat(256);
        for bad in [
            "",
            "order.placed",
            "page.view",
            "a b",
            "a/b",
            "a\u{0}",
            long.as_str(),
        ] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn schemas() {
        assert!(check_schema(&json!({"type": "object"})).is_ok());
        assert!(check_schema(&json!({"type": "nope"})).is_err());
        assert!(check_schema(&json!("object")).is_err());
    }

    #[test]
    fn bodies() {
        assert!(parse_body(br#"{"name":"a","schema":{}}"#).is_ok());
        assert!(parse_body(br#"{"name":"a","schema":{},"version":3,"id":"x"}"#).is_ok());
        assert!(parse_body(b"not json").is_err());
        assert!(parse_body(br#"{"name":7}"#).is_err());
    }
}
