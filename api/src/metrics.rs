//! HTTP metrics and the Prometheus endpoint.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use axum::extract::{MatchedPath, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use dataflows::metrics::or_die;
use prometheus::{
    register_histogram_vec, register_int_counter, register_int_counter_vec, register_int_gauge,
    Encoder, HistogramVec, IntCounter, IntCounterVec, IntGauge, TextEncoder,
};
use tokio::sync::watch;

pub static QUERY_DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    or_die(
        register_histogram_vec!(
            "analytics_query_duration_seconds",
            "Time to answer an API request, by route and status class",
            &["route", "status"],
            vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5]
        ),
        "analytics_query_duration_seconds",
    )
});

pub static ACTIVE_CONNECTIONS: LazyLock<IntGauge> = LazyLock::new(|| {
    or_die(
        register_int_gauge!("analytics_active_connections", "API requests in flight"),
        "analytics_active_connections",
    )
});

pub static CACHE_HITS: LazyLock<IntCounter> = LazyLock::new(|| {
    or_die(
        register_int_counter!(
            "analytics_cache_hits_total",
            "History answers served from Redis"
        ),
        "analytics_cache_hits_total",
    )
});

pub static CACHE_MISSES: LazyLock<IntCounter> = LazyLock::new(|| {
    or_die(
        register_int_counter!(
            "analytics_cache_misses_total",
            "History answers not found in Redis (or Redis unreachable)"
        ),
        "analytics_cache_misses_total",
    )
});

pub static AUTH_REFUSED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    or_die(
        register_int_counter_vec!(
            "analytics_api_key_refused_total",
            "API requests refused by the API key check, by reason (missing, invalid, forbidden)",
            &["reason"]
        ),
        "analytics_api_key_refused_total",
    )
});

pub static RATE_LIMITED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    or_die(
        register_int_counter_vec!(
            "analytics_rate_limited_total",
            "API requests refused with 429, by the store that refused them (redis or local)",
            &["store"]
        ),
        "analytics_rate_limited_total",
    )
});

pub static RATE_LIMIT_FALLBACKS: LazyLock<IntCounter> = LazyLock::new(|| {
    or_die(
        register_int_counter!(
            "analytics_rate_limit_fallback_total",
            "Switches of the rate limiter from Redis to the local in-process limiter"
        ),
        "analytics_rate_limit_fallback_total",
    )
});

pub static RATE_LIMIT_LOCAL: LazyLock<IntGauge> = LazyLock::new(|| {
    or_die(
        register_int_gauge!(
            "analytics_rate_limit_local",
            "1 while the rate limiter runs on the local in-process limiter (Redis unreachable)"
        ),
        "analytics_rate_limit_local",
    )
});

/// Registers the API's metrics with a series for each known label value
/// (see `dataflows::metrics::init`). Request durations get theirs with the
/// first request of each route.
pub fn init() {
    for reason in ["missing", "invalid", "forbidden"] {
        AUTH_REFUSED.with_label_values(&[reason]);
    }
    for store in [
        crate::ratelimit::Store::Redis,
        crate::ratelimit::Store::Local,
    ] {
        RATE_LIMITED.with_label_values(&[store.as_str()]);
    }
    LazyLock::force(&QUERY_DURATION);
    LazyLock::force(&ACTIVE_CONNECTIONS);
    LazyLock::force(&CACHE_HITS);
    LazyLock::force(&CACHE_MISSES);
    LazyLock::force(&RATE_LIMIT_FALLBACKS);
    LazyLock::force(&RATE_LIMIT_LOCAL);
}

/// Counts one answered request in the latency histogram, by matched
/// route ("unmatched" for none) and status class.
pub fn observe(route: Option<&MatchedPath>, status: StatusCode, latency: Duration) {
    const CLASSES: [&str; 10] = [
        "0xx", "1xx", "2xx", "3xx", "4xx", "5xx", "6xx", "7xx", "8xx", "9xx",
    ];
    // A status code has three digits.
    let class = CLASSES[usize::from(status.as_u16() / 100) % 10];
    let route = route.map_or("unmatched", MatchedPath::as_str);
    QUERY_DURATION
        .with_label_values(&[route, class])
        .observe(latency.as_secs_f64());
}

/// Prometheus text exposition of the default registry.
pub async fn prometheus(
    State(snapshots): State<watch::Receiver<Arc<dataflows::LiveSnapshot>>>,
) -> Response {
    let as_of_ms = snapshots.borrow().as_of_ms;
    dataflows::metrics::LIVE_AS_OF_AGE.set(dataflows::liveness::DataflowWatch::age_seconds(
        as_of_ms,
        dataflows::time::now_ms(),
    ));
    let encoder = TextEncoder::new();
    let mut buffer = Vec::new();
    if let Err(e) = encoder.encode(&prometheus::gather(), &mut buffer) {
        tracing::error!(error = %e, "cannot encode metrics");
    }
    ([(CONTENT_TYPE, encoder.format_type().to_owned())], buffer).into_response()
}
