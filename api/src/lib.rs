//! The HTTP face of the service: the axum router ([`router`]), its
//! handlers, the one error type ([`error::AppError`]), health checks, and
//! the Prometheus endpoint.
//!
//! Live answers come from the latest [`dataflows::LiveSnapshot`] published
//! by the dataflow (read without locks through a `watch` channel) and carry
//! its `as_of`; history comes from PostgreSQL through the `sink` crate.

pub mod auth;
pub mod cache;
pub mod custom_events;
pub mod dashboard;
pub mod dead_letters;
pub mod envelope;
pub mod error;
pub mod events;
pub mod health;
pub mod metrics;
pub mod openapi;
pub mod params;
pub mod ratelimit;
pub mod request_id;
pub mod series;
pub mod snapshot_cache;
pub mod state;
pub mod stats;
pub mod stream;
pub mod tls;
pub mod trading;
pub mod web;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::routing::get;
use axum::Router;
use dataflows::LiveSnapshot;
use tokio::sync::watch;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::timeout::RequestBodyTimeoutLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use error::AppError;
pub use state::{ApiSettings, AppState, LiveAnswers, Shared};

/// The API on port 9097.
pub fn router(state: AppState) -> Router {
    let settings = state.settings.clone();
    let (api, doc) = routes().split_for_parts();
    let doc = openapi::finish(doc);
    let api = api
        .layer(axum::Extension(openapi::DocumentBytes::new(&doc)))
        .layer(DefaultBodyLimit::max(settings.max_body_bytes))
        .layer(RequestBodyTimeoutLayer::new(settings.read_timeout));
    // Inside the key check: with keys enabled, only verified keys name a
    // bucket (random fake keys are refused before they get one).
    let api = if state.rate_limiter.is_enabled() {
        api.layer(axum::middleware::from_fn_with_state(
            state.rate_limiter.clone(),
            ratelimit::limit,
        ))
    } else {
        api
    };
    // Inside the envelope: refusals are counted, logged with the request
    // id, and bounded in time like any request.
    let api = if settings.api_key_enabled {
        let auth = Arc::new(auth::Auth::new(
            state.pool.clone(),
            settings.api_key_cache_ttl,
        ));
        api.layer(axum::middleware::from_fn_with_state(auth, auth::require))
    } else {
        api
    };
    let api = api.layer(envelope::EnvelopeLayer::new(envelope::Deadlines {
        request: settings.request_timeout,
        query: settings.query_timeout,
    }));
    let api = if settings.cors_enabled {
        api.layer(cors(&settings))
    } else {
        api
    };
    api.with_state(state)
}

/// The API's OpenAPI document, as `GET /api/v1/openapi.json` serves it.
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    openapi::finish(routes().into_openapi())
}

/// Every handler of the API port goes through `routes!`, which also adds
/// its `#[utoipa::path]` to the document: see [`openapi`].
fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(events::list, events::ingest))
        .routes(routes!(stats::stats))
        .routes(routes!(web::index))
        .routes(routes!(dashboard::metrics))
        .routes(routes!(stream::stream))
        .routes(routes!(series::series))
        .routes(routes!(series::names))
        .routes(routes!(custom_events::list, custom_events::create))
        .routes(routes!(
            custom_events::get,
            custom_events::update,
            custom_events::deactivate
        ))
        .routes(routes!(trading::order))
        .routes(routes!(trading::strategies))
        .routes(routes!(trading::market))
        .routes(routes!(trading::sessions))
        .routes(routes!(dead_letters::list))
        .routes(routes!(dead_letters::get))
        .routes(routes!(dead_letters::replay))
        .routes(routes!(health::ingestion_metrics))
        .routes(routes!(health::health))
        .routes(routes!(health::healthz))
        .routes(routes!(health::ready))
        .routes(routes!(health::live))
        .routes(routes!(openapi::document))
        .routes(routes!(openapi::docs))
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
        .expose_headers([
            axum::http::HeaderName::from_static(ratelimit::LIMIT_HEADER),
            axum::http::HeaderName::from_static(ratelimit::REMAINING_HEADER),
            axum::http::HeaderName::from_static(ratelimit::RESET_HEADER),
            axum::http::header::RETRY_AFTER,
        ])
        .max_age(Duration::from_secs(600))
}

/// The health port (9099): health endpoints only. `/livez` answers
/// liveness, `/ready` readiness, `/health` and `/healthz` the overall status
/// (see [`health`]), also at `health.path`.
pub fn health_router(state: AppState) -> Router {
    let fixed = ["/health", "/healthz", "/ready", "/livez"];
    let router = Router::new()
        .route("/health", get(health::health))
        .route("/healthz", get(health::health))
        .route("/ready", get(health::ready))
        .route("/livez", get(health::live));
    let path = state.settings.health_path.as_str();
    let router = if path.starts_with('/') && !fixed.contains(&path) {
        router.route(path, get(health::health))
    } else {
        router
    };
    router.with_state(state)
}

/// The metrics port (9098): Prometheus text format at `path`. The age of
/// the snapshot in `snapshots` is measured at each scrape.
pub fn metrics_router(path: &str, snapshots: watch::Receiver<Arc<LiveSnapshot>>) -> Router {
    Router::new()
        .route(path, get(metrics::prometheus))
        .with_state(snapshots)
}

/// Serves `app` on `listener` until `shutdown` resolves.
pub async fn serve<L>(
    listener: L,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    L: axum::serve::Listener<Addr = std::net::SocketAddr>,
{
    use axum::serve::ListenerExt;
    // Through `tap_io`, whose remote address axum gives as ConnectInfo for
    // any listener (the TLS one included).
    axum::serve(
        listener.tap_io(|_| {}),
        app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}
