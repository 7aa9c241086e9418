//! Rate limiting of the `/api/v1/*` routes (middleware [`limit`]).
//!
//! Each identity (API key or client address, see [`identity`]) has a GCRA
//! bucket of `security.rate_limit.burst` requests refilled at
//! `requests_per_minute` ([`gcra`]). Buckets live in Redis and are shared
//! by every instance of the service ([`redis_store`]). When Redis fails or
//! is slow (over 150 ms), decisions move to a local in-process limiter with
//! the same parameters (each instance then grants the whole budget on its
//! own), `analytics_rate_limit_fallback_total` counts the switch, the
//! `analytics_rate_limit_local` gauge is 1 and `/health` says `degraded`
//! with `"rate_limit": "local"`. A probe runs at most once a second, off the
//! request path, and moves decisions back to Redis once it answers.
//!
//! Every limited response carries `X-RateLimit-Limit` (the burst),
//! `X-RateLimit-Remaining` and `X-RateLimit-Reset` (seconds until the
//! bucket is full again); a refusal is a 429 with `Retry-After` and the
//! JSON error body. Health paths and the health and metrics ports are
//! never limited.

pub mod gcra;
pub mod identity;
pub mod redis_store;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tracing::{debug, info, warn, Instrument};

pub use gcra::{Decision, Gcra, LocalLimiter};
pub use identity::{identify, Identity};
use redis_store::{RedisStore, StoreError};

use crate::metrics::{RATE_LIMITED, RATE_LIMIT_FALLBACKS, RATE_LIMIT_LOCAL};
use crate::AppError;

/// The rate-limit headers, also exposed to browsers through CORS.
pub const LIMIT_HEADER: &str = "x-ratelimit-limit";
pub const REMAINING_HEADER: &str = "x-ratelimit-remaining";
pub const RESET_HEADER: &str = "x-ratelimit-reset";

/// How often the Redis store is retried while decisions are local.
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// From `security.rate_limit` and `redis`.
#[derive(Clone, Debug)]
pub struct RateLimitSettings {
    pub requests_per_minute: u32,
    pub burst: u32,
    /// Take the client address from `X-Forwarded-For` (last hop).
    pub trust_forwarded_for: bool,
    pub redis_url: String,
    /// Most identities the local limiter holds.
    pub max_local_identities: usize,
}

/// Which store decided a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Store {
    Redis,
    Local,
}

impl Store {
    pub fn as_str(self) -> &'static str {
        match self {
            Store::Redis => "redis",
            Store::Local => "local",
        }
    }
}

/// The limiter shared by the router and health; cheap to clone.
#[derive(Clone, Default)]
pub struct RateLimiter {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    gcra: Gcra,
    trust_forwarded_for: bool,
    redis: RedisStore,
    local: LocalLimiter,
    /// Decisions are local (Redis unreachable, or not connected yet).
    on_local: AtomicBool,
    probing: AtomicBool,
    /// When the next probe may start, µs since `epoch`.
    next_probe_us: AtomicU64,
    epoch: Instant,
}

impl RateLimiter {
    /// Rate limiting off: every request passes, no headers.
    pub fn disabled() -> RateLimiter {
        RateLimiter { inner: None }
    }

    /// Whether requests are limited at all (off: the router leaves the
    /// layer out).
    pub fn is_enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// Limits with `settings`; local until the first probe reaches Redis
    /// (health and the first request start one).
    pub fn new(settings: &RateLimitSettings) -> RateLimiter {
        let gcra = Gcra::new(settings.requests_per_minute, settings.burst);
        RATE_LIMIT_LOCAL.set(1);
        RateLimiter {
            inner: Some(Arc::new(Inner {
                gcra,
                trust_forwarded_for: settings.trust_forwarded_for,
                redis: RedisStore::new(&settings.redis_url),
                local: LocalLimiter::new(gcra, settings.max_local_identities),
                on_local: AtomicBool::new(true),
                probing: AtomicBool::new(false),
                next_probe_us: AtomicU64::new(0),
                epoch: Instant::now(),
            })),
        }
    }

    /// Decides one request of `identity`.
    pub async fn check(&self, identity: &Identity) -> Option<(Decision, Store)> {
        let inner = self.inner.as_ref()?;
        let bucket = identity.bucket();
        if !inner.on_local.load(Ordering::Acquire) {
            match inner.redis.check(&inner.gcra, &bucket).await {
                Ok(decision) => return Some((decision, Store::Redis)),
                Err(e) => inner.fall_back(&e),
            }
        }
        if inner.probe_due() {
            let probe = Arc::clone(inner);
            tokio::spawn(
                async move { probe.probe().await }
                    .instrument(tracing::info_span!("ratelimit_probe")),
            );
        }
        Some((inner.local.check_at(&bucket, inner.now_us()), Store::Local))
    }

    /// For `/health`: `"disabled"`, `"redis"` or `"local"`. Checks the
    /// store it reports: pings Redis when on it, probes it when local.
    pub async fn health(&self) -> &'static str {
        let Some(inner) = self.inner.as_ref() else {
            return "disabled";
        };
        if inner.on_local.load(Ordering::Acquire) {
            if !inner.probing.swap(true, Ordering::AcqRel) {
                inner.probe().await;
            }
        } else if let Err(e) = inner.redis.ping().await {
            inner.fall_back(&e);
        }
        if inner.on_local.load(Ordering::Acquire) {
            "local"
        } else {
            "redis"
        }
    }
}

impl Inner {
    fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    fn fall_back(&self, error: &StoreError) {
        self.redis.forget();
        self.next_probe_us.store(
            self.now_us() + PROBE_EVERY.as_micros() as u64,
            Ordering::Release,
        );
        if !self.on_local.swap(true, Ordering::AcqRel) {
            RATE_LIMIT_FALLBACKS.inc();
            RATE_LIMIT_LOCAL.set(1);
            warn!(error = %error, "rate limiting falls back to the local limiter: redis unreachable");
        }
    }

    /// Whether this caller should start a probe (and now owns it).
    fn probe_due(&self) -> bool {
        self.now_us() >= self.next_probe_us.load(Ordering::Acquire)
            && !self.probing.swap(true, Ordering::AcqRel)
    }

    /// Reconnects to Redis; on success decisions go back to it. The caller
    /// has set `probing`.
    async fn probe(&self) {
        match self.redis.connect().await {
            Ok(()) => {
                if self.on_local.swap(false, Ordering::AcqRel) {
                    RATE_LIMIT_LOCAL.set(0);
                    info!("rate limiting on redis");
                }
            }
            Err(e) => {
                debug!(error = %e, "rate limit store still unreachable");
                self.next_probe_us.store(
                    self.now_us() + PROBE_EVERY.as_micros() as u64,
                    Ordering::Release,
                );
            }
        }
        self.probing.store(false, Ordering::Release);
    }
}

/// Middleware on the API router: limits `/api/v1/*`, passes the rest.
pub async fn limit(State(limiter): State<RateLimiter>, request: Request, next: Next) -> Response {
    let Some(inner) = limiter.inner.as_ref() else {
        return next.run(request).await;
    };
    let path = request.uri().path();
    if !(path.starts_with("/api/v1/") || path == "/api/v1") {
        return next.run(request).await;
    }
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let identity = identify(request.headers(), peer, inner.trust_forwarded_for);
    let Some((decision, store)) = limiter.check(&identity).await else {
        return next.run(request).await;
    };
    let mut response = if decision.allowed {
        next.run(request).await
    } else {
        RATE_LIMITED.with_label_values(&[store.as_str()]).inc();
        debug!(bucket = %identity.bucket(), store = store.as_str(), "rate limited");
        AppError::RateLimited {
            retry_after_s: Decision::seconds_up(decision.retry_after).max(1),
        }
        .into_response()
    };
    let headers = response.headers_mut();
    for (name, value) in [
        (LIMIT_HEADER, u64::from(decision.limit)),
        (REMAINING_HEADER, u64::from(decision.remaining)),
        (RESET_HEADER, Decision::seconds_up(decision.reset_after)),
    ] {
        headers.insert(HeaderName::from_static(name), HeaderValue::from(value));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::{Request as HttpRequest, StatusCode};
    use axum::routing::get;
    use axum::Router;
    use tower::ServiceExt;

    /// A limiter whose Redis never answers: decisions are local.
    fn unreachable(rpm: u32, burst: u32) -> RateLimiter {
        RateLimiter::new(&RateLimitSettings {
            requests_per_minute: rpm,
            burst,
            trust_forwarded_for: false,
            // Port 1: refused at once.
            redis_url: "redis://127.0.0.1:1/0".into(),
            max_local_identities: 1000,
        })
    }

    fn app(limiter: RateLimiter) -> Router {
        Router::new()
            .route("/api/v1/thing", get(|| async { "ok" }))
            .route("/health", get(|| async { "ok" }))
            .layer(axum::middleware::from_fn_with_state(limiter, limit))
    }

    async fn call(app: &Router, path: &str, key: &str) -> Response {
        app.clone()
            .oneshot(
                HttpRequest::get(path)
                    .header("x-api-key", key)
                    .body(Body::empty())
                    .expect("request"),
            )
            .await
            .expect("infallible")
    }

    fn header(r: &Response, name: &str) -> Option<String> {
        r.headers()
            .get(name)
            .map(|v| v.to_str().expect("ascii").to_owned())
    }

    #[tokio::test]
    async fn refuses_past_the_burst_with_headers_and_json() {
        let limiter = unreachable(1, 2);
        let app = app(limiter.clone());
        for remaining in ["1", "0"] {
            let r = call(&app, "/api/v1/thing", "k").await;
            assert_eq!(r.status(), StatusCode::OK);
            assert_eq!(header(&r, "x-ratelimit-limit").as_deref(), Some("2"));
            assert_eq!(
                header(&r, "x-ratelimit-remaining").as_deref(),
                Some(remaining)
            );
        }
        let r = call(&app, "/api/v1/thing", "k").await;
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(header(&r, "retry-after").as_deref(), Some("60"));
        assert_eq!(header(&r, "x-ratelimit-remaining").as_deref(), Some("0"));
        assert_eq!(header(&r, "x-ratelimit-reset").as_deref(), Some("120"));
        let body = axum::body::to_bytes(r.into_body(), 1 << 16)
            .await
            .expect("body");
        let body: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(body["error"], "rate limit exceeded");
        assert_eq!(body["details"]["retry_after_seconds"], 60);
        // Another key has its own bucket; health is never limited.
        assert_eq!(
            call(&app, "/api/v1/thing", "other").await.status(),
            StatusCode::OK
        );
        let h = call(&app, "/health", "k").await;
        assert_eq!(h.status(), StatusCode::OK);
        assert_eq!(header(&h, "x-ratelimit-limit"), None);
        assert_eq!(limiter.health().await, "local");
    }

    #[tokio::test]
    async fn disabled_passes_everything_without_headers() {
        let app = app(RateLimiter::disabled());
        for _ in 0..10 {
            let r = call(&app, "/api/v1/thing", "k").await;
            assert_eq!(r.status(), StatusCode::OK);
            assert_eq!(header(&r, "x-ratelimit-limit"), None);
        }
        assert_eq!(RateLimiter::disabled().health().await, "disabled");
    }
}
