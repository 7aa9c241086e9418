//! The HTTP face of the service: the axum router ([`router`]), its
//! handlers, the one error type ([`error::AppError`]), health checks, and
//! the Prometheus endpoint.
//!
//! Live answers come from the latest [`dataflows::LiveSnapshot`] published
//! by the dataflow (read without locks through a `watch` channel) and carry
//! its `as_of`; history comes from PostgreSQL through the `sink` crate.

pub mod cache;
pub mod custom_events;
pub mod dead_letters;
pub mod error;
pub mod events;
pub mod health;
pub mod metrics;
pub mod params;
pub mod series;
pub mod state;
pub mod stats;

use std::future::Future;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use tokio::net::TcpListener;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

pub use error::AppError;
pub use state::{ApiSettings, AppState};

/// The API on port 9097.
pub fn router(state: AppState) -> Router {
    let settings = state.settings.clone();
    let api = Router::new()
        .route("/api/v1/events", get(events::list).post(events::ingest))
        .route("/api/v1/events/stats", get(stats::stats))
        .route("/api/v1/metrics", get(series::series))
        .route("/api/v1/metrics/names", get(series::names))
        .route(
            "/api/v1/custom-events",
            get(custom_events::list).post(custom_events::create),
        )
        .route(
            "/api/v1/custom-events/{name}",
            get(custom_events::get)
                .put(custom_events::update)
                .delete(custom_events::deactivate),
        )
        .route("/api/v1/dead-letters", get(dead_letters::list))
        .route("/api/v1/dead-letters/{id}", get(dead_letters::get))
        .route(
            "/api/v1/dead-letters/{id}/replay",
            post(dead_letters::replay),
        )
        .route(
            "/api/v1/internal/ingestion-metrics",
            get(health::ingestion_metrics),
        )
        .route("/health", get(health::health))
        .route("/healthz", get(health::health))
        .route("/ready", get(health::ready))
        .layer(DefaultBodyLimit::max(settings.max_body_bytes))
        .layer(axum::middleware::from_fn(metrics::track))
        .layer(TraceLayer::new_for_http())
        .layer(TimeoutLayer::with_status_code(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            settings.request_timeout,
        ));
    let api = if settings.cors_enabled {
        api.layer(cors(&settings))
    } else {
        api
    };
    api.with_state(state)
}

fn cors(settings: &ApiSettings) -> CorsLayer {
    let origins: Vec<_> = settings
        .cors_origins
        .iter()
        .filter_map(|o| o.parse().ok())
        .collect();
    let methods: Vec<_> = settings
        .cors_methods
        .iter()
        .filter_map(|m| m.parse().ok())
        .collect();
    let headers: Vec<_> = settings
        .cors_headers
        .iter()
        .filter_map(|h| h.parse().ok())
        .collect();
    CorsLayer::new()
        .allow_origin(AllowOrigin::list(origins))
        .allow_methods(methods)
        .allow_headers(headers)
        .max_age(Duration::from_secs(600))
}

/// The health port (9099): health endpoints only.
pub fn health_router(state: AppState) -> Router {
    Router::new()
        .route("/health", get(health::health))
        .route("/healthz", get(health::health))
        .route("/ready", get(health::ready))
        .with_state(state)
}

/// The metrics port (9098): Prometheus text format at `path`.
pub fn metrics_router(path: &str) -> Router {
    Router::new().route(path, get(metrics::prometheus))
}

/// Serves `app` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}
