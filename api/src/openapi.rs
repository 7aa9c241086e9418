//! The OpenAPI 3.1 document of the API port, generated from the handlers:
//! each handler carries its `#[utoipa::path]` (method, path, parameters,
//! responses), and [`crate::router`] registers handlers through
//! `utoipa_axum::routes!`, so a route cannot be served undocumented or
//! documented unserved. Parameters come from the handlers' own query
//! structs; request and response bodies from the schema types beside each
//! handler.
//!
//! The answers every `/api/v1/*` operation can give whatever its handler
//! does (401 and 403 with keys on, 429 over the rate limit, 408 and 504
//! past the timeouts, 503 while PostgreSQL is unreachable) are added here
//! once, by [`CommonResponses`], to every such operation.
//!
//! Served without a key at `GET /api/v1/openapi.json`, and readable at
//! `GET /api/v1/docs` (a page embedded in the binary, no CDN).

use axum::Extension;
use serde::Serialize;
use serde_json::Value;
use utoipa::openapi::header::Header;
use utoipa::openapi::path::Operation;
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::security::{
    ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
};
use utoipa::openapi::{ContentBuilder, HttpMethod, OpenApi as Document, Ref};
use utoipa::{Modify, OpenApi, ToSchema};

/// Every error answer: `{"error": "...", "details": ...}`.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong, for people.
    pub error: String,
    /// Machine-readable detail: the parameter at fault, every refused
    /// item of a batch, the scope required, or null.
    #[schema(required = true)]
    pub details: Value,
    /// Refusals of `POST /api/v1/events` only: dead letters stored.
    #[schema(required = false)]
    pub dead_letters: Option<u64>,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "analytics",
        description = "Real-time trading analytics: live numbers from the dataflow's in-memory state (`as_of`), history from PostgreSQL.\n\n\
Times are RFC 3339. Errors are `{\"error\", \"details\"}` with a 4xx or 5xx status.\n\n\
Percentiles (p50, p90, p95, p99) are DDSketch estimates (1 % relative accuracy) of the value at rank floor(q·(n−1)) of the window's n values, clamped to the window's exact [min, max].\n\n\
With `security.api_key_enabled`, every path but `/`, the health checks and this document needs a key, as `Authorization: Bearer <key>` or `X-API-Key: <key>`: `POST /api/v1/events` needs the `ingest` scope, other reads `read`, and `/api/v1/internal/*`, dead letters and custom-event writes `admin`."
    ),
    // Schemas named only by parameters (`value_type`), which `routes!`
    // does not collect; response and request bodies are collected.
    components(schemas(
        ErrorBody,
        crate::series::Aggregation,
        crate::series::IntervalName,
        crate::dead_letters::Source
    )),
    tags(
        (name = "events", description = "Ingest and read events"),
        (name = "live", description = "Answers from the live state"),
        (name = "metrics", description = "Window aggregates, live and stored"),
        (name = "trading", description = "Orders, strategies, candles and sessions (PostgreSQL)"),
        (name = "custom-events", description = "Definitions of custom event types and their JSON Schemas"),
        (name = "dead-letters", description = "Refused input, with its reason"),
        (name = "health", description = "Health checks and sink counters"),
        (name = "meta", description = "This document and the web pages"),
    )
)]
pub struct ApiDoc;

/// The document of `routes`, with [`CommonResponses`] applied (after the
/// routes are in: `#[openapi(modifiers)]` would run before).
pub fn finish(mut doc: Document) -> Document {
    CommonResponses.modify(&mut doc);
    doc
}

/// The answers of the layers around the handlers, on every `/api/v1/*`
/// operation, and the two key schemes.
struct CommonResponses;

fn error_response(description: &str) -> Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("ErrorBody")))
                .build(),
        )
        .build()
}

impl Modify for CommonResponses {
    fn modify(&self, doc: &mut Document) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-API-Key"))),
        );
        for (path, item) in doc.paths.paths.iter_mut() {
            if !path.starts_with("/api/v1/") {
                continue;
            }
            let open = crate::auth::OPEN_PATHS.contains(&path.as_str());
            let operations = [
                (HttpMethod::Get, item.get.as_mut()),
                (HttpMethod::Post, item.post.as_mut()),
                (HttpMethod::Put, item.put.as_mut()),
                (HttpMethod::Delete, item.delete.as_mut()),
            ];
            for (method, operation) in operations {
                if let Some(operation) = operation {
                    add_common(operation, method, open);
                }
            }
        }
    }
}

/// `open`: served without a key (no 401 or 403, no security).
fn add_common(operation: &mut Operation, method: HttpMethod, open: bool) {
    if !open {
        operation.security = Some(vec![
            SecurityRequirement::new::<&str, [&str; 0], &str>("bearer", []),
            SecurityRequirement::new::<&str, [&str; 0], &str>("api_key", []),
        ]);
    }
    let responses = &mut operation.responses.responses;
    let mut add = |code: &str, response: Response| {
        responses
            .entry(code.to_string())
            .or_insert_with(|| response.into());
    };
    if !open {
        add(
            "401",
            ResponseBuilder::from(error_response(
                "API keys are on and the request has no valid key",
            ))
            .header(
                "WWW-Authenticate",
                Header::new(ObjectBuilder::new().schema_type(Type::String).build()),
            )
            .build(),
        );
        add(
            "403",
            error_response("the key lacks the scope this operation needs"),
        );
    }
    add(
        "408",
        ResponseBuilder::new()
            .description("no answer within `server.write_timeout`, or the body took longer than `server.read_timeout`")
            .build(),
    );
    add(
        "429",
        ResponseBuilder::from(error_response(
            "over the rate limit (`security.rate_limit`)",
        ))
        .header(
            "Retry-After",
            Header::new(ObjectBuilder::new().schema_type(Type::Integer).build()),
        )
        .build(),
    );
    if open {
        return;
    }
    add(
        "503",
        error_response("PostgreSQL is unreachable, or the live state is not ready yet; retry"),
    );
    if method == HttpMethod::Get {
        add(
            "504",
            error_response("the query did not finish within `analytics.query.timeout`"),
        );
    }
}

/// The serialized document, handed to [`document`] as a request extension
/// by [`crate::router`] (serialized once, when the router is built).
#[derive(Clone)]
pub struct DocumentBytes(pub axum::body::Bytes);

impl DocumentBytes {
    pub fn new(doc: &Document) -> Self {
        DocumentBytes(
            serde_json::to_vec(doc)
                .expect("an OpenAPI document always serializes")
                .into(),
        )
    }
}

/// `GET /api/v1/openapi.json`.
#[utoipa::path(
    get,
    path = "/api/v1/openapi.json",
    tag = "meta",
    responses((status = 200, description = "This document", content_type = "application/json", body = Object))
)]
pub async fn document(Extension(doc): Extension<DocumentBytes>) -> axum::response::Response {
    crate::web::json_bytes(doc.0)
}

const DOCS: &str = include_str!("web/docs.html");

/// `GET /api/v1/docs`: the document as a page (operations, parameters,
/// answers), rendered by a small script embedded in the binary.
#[utoipa::path(
    get,
    path = "/api/v1/docs",
    tag = "meta",
    responses((status = 200, description = "The API reference as HTML", content_type = "text/html"))
)]
pub async fn docs() -> axum::response::Response {
    crate::web::page(DOCS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refs<'a>(value: &'a Value, out: &mut Vec<&'a str>) {
        match value {
            Value::Object(map) => {
                if let Some(Value::String(r)) = map.get("$ref") {
                    out.push(r);
                }
                map.values().for_each(|v| refs(v, out));
            }
            Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }

    #[test]
    fn every_reference_resolves_and_keyed_operations_say_so() {
        let doc = serde_json::to_value(crate::openapi_document()).expect("json");
        assert_eq!(doc["openapi"], "3.1.0");
        let mut found = Vec::new();
        refs(&doc, &mut found);
        assert!(found.len() > 20, "{found:?}");
        for r in found {
            let name = r
                .strip_prefix("#/components/schemas/")
                .unwrap_or_else(|| panic!("{r}"));
            assert!(
                doc["components"]["schemas"].get(name).is_some(),
                "{r} is not in components.schemas"
            );
        }
        let paths = doc["paths"].as_object().expect("paths");
        for (path, item) in paths {
            for (method, op) in item.as_object().expect("path item") {
                let responses = op["responses"].as_object().expect("responses");
                let keyed = path.starts_with("/api/v1/")
                    && !crate::auth::OPEN_PATHS.contains(&path.as_str());
                assert_eq!(responses.contains_key("401"), keyed, "{method} {path}");
                assert_eq!(op.get("security").is_some(), keyed, "{method} {path}");
                if path.starts_with("/api/v1/") {
                    assert!(responses.contains_key("429"), "{method} {path}");
                }
            }
        }
        assert!(paths.len() >= 23, "{}", paths.len());
    }
}
