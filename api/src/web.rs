//! The web dashboard at `/`: one HTML page with its script and styles,
//! embedded in the binary (no CDN). It reads `/api/v1/stream` for the
//! tiles and the latest events, and `/api/v1/metrics` for the charts.

use axum::http::header;
use axum::response::IntoResponse;

const INDEX: &str = include_str!("web/index.html");

#[utoipa::path(
    get,
    path = "/",
    tag = "meta",
    responses((status = 200, description = "The web dashboard", content_type = "text/html"))
)]
pub async fn index() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        INDEX,
    )
}
