//! The web dashboard at `/`: one HTML page with its script and styles,
//! embedded in the binary (no CDN). It reads `/api/v1/stream` for the
//! tiles and the latest events, and `/api/v1/metrics` for the charts.

use axum::body::Bytes;
use axum::http::header;
use axum::response::{IntoResponse, Response};

const INDEX: &str = include_str!("web/index.html");

#[utoipa::path(
    get,
    path = "/",
    tag = "meta",
    responses((status = 200, description = "The web dashboard", content_type = "text/html"))
)]
pub async fn index() -> Response {
    page(INDEX)
}

/// An HTML page embedded in the binary (this one, the API docs).
pub fn page(html: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        html,
    )
        .into_response()
}

/// JSON already serialized (an answer shared per snapshot, the OpenAPI
/// document).
pub fn json_bytes(body: Bytes) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}
