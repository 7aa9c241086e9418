//! API keys on the API port, when `security.api_key_enabled` is set.
//!
//! Every request but the health endpoints (`/health`, `/healthz`,
//! `/ready`) must present a key, as `Authorization: Bearer <key>` or
//! `X-API-Key: <key>`. The key is hashed (SHA-256, see `sink::api_keys`),
//! looked up in PostgreSQL, and the route's scope checked: `POST
//! /api/v1/events` needs `ingest`, other reads `read`, and
//! `/api/v1/internal/*`, dead letters, custom-event writes and any other
//! write need `admin` (which implies every scope). No key, a malformed,
//! unknown or revoked key: 401 with `WWW-Authenticate`; a valid key
//! without the scope: 403.
//!
//! Lookups are cached in memory, keyed by the hash (never the key), for
//! `security.api_key_cache_ttl` (default 30 s): a valid key costs one
//! PostgreSQL query per TTL, and an unknown or revoked one too. So a
//! revocation takes effect within one TTL on every process, and a key
//! presented before it was created may be refused for up to one TTL.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sink::api_keys::{allows, hash_key, parse_key, ActiveKey, KeyHash, Scope};
use sink::Pool;
use tracing::info;

use crate::AppError;

/// Paths served without a key: health, the web page (it holds no data;
/// its API calls need keys like any client's), and the API's description.
pub const OPEN_PATHS: &[&str] = &[
    "/",
    "/health",
    "/healthz",
    "/ready",
    "/livez",
    "/api/v1/openapi.json",
    "/api/v1/docs",
];

/// Most cached lookups; past it, expired entries are dropped first.
const MAX_ENTRIES: usize = 10_000;

/// The scope a request needs; `None` for the open health endpoints.
/// `path` is the matched route when there is one, else the request path.
pub fn required_scope(method: &Method, path: &str) -> Option<Scope> {
    if OPEN_PATHS.contains(&path) {
        return None;
    }
    let read = method == Method::GET || method == Method::HEAD;
    let admin = path.starts_with("/api/v1/internal")
        || path.starts_with("/api/v1/dead-letters")
        || (path.starts_with("/api/v1/custom-events") && !read);
    Some(if admin {
        Scope::Admin
    } else if method == Method::POST && path == "/api/v1/events" {
        Scope::Ingest
    } else if read {
        Scope::Read
    } else {
        Scope::Admin
    })
}

/// The key a request presents: `Authorization: Bearer <key>` (scheme
/// case-insensitive), else `X-API-Key: <key>`. Values that are not
/// visible ASCII count as absent.
pub fn presented_key(headers: &HeaderMap) -> Option<&str> {
    let bearer = headers
        .get_all(axum::http::header::AUTHORIZATION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| {
            let (scheme, token) = v.trim().split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| token.trim())
                .filter(|t| !t.is_empty())
        });
    bearer.or_else(|| {
        headers
            .get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|t| !t.is_empty())
    })
}

/// Lookups by key hash, each kept for `ttl`: `Some(key)` when active,
/// `None` when unknown or revoked.
#[derive(Debug)]
pub struct KeyCache {
    ttl: Duration,
    entries: Mutex<HashMap<KeyHash, (Instant, Option<ActiveKey>)>>,
}

impl KeyCache {
    pub fn new(ttl: Duration) -> KeyCache {
        KeyCache {
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The cached answer for `hash` at `now`; outer `None` on a miss.
    pub fn get(&self, hash: &KeyHash, now: Instant) -> Option<Option<ActiveKey>> {
        let entries = self.entries.lock().ok()?;
        entries
            .get(hash)
            .filter(|(at, _)| now.duration_since(*at) < self.ttl)
            .map(|(_, key)| key.clone())
    }

    /// Remembers the answer for `hash`, looked up at `now`.
    pub fn put(&self, hash: KeyHash, key: Option<ActiveKey>, now: Instant) {
        if self.ttl.is_zero() {
            return;
        }
        let Ok(mut entries) = self.entries.lock() else {
            return;
        };
        if entries.len() >= MAX_ENTRIES && !entries.contains_key(&hash) {
            let ttl = self.ttl;
            entries.retain(|_, (at, _)| now.duration_since(*at) < ttl);
            if entries.len() >= MAX_ENTRIES {
                // Full of live entries: a flood of unknown keys. Keep the
                // valid ones; an unknown key is simply not cached.
                if key.is_none() {
                    return;
                }
                entries.retain(|_, (_, k)| k.is_some());
                if entries.len() >= MAX_ENTRIES {
                    entries.clear();
                }
            }
        }
        entries.insert(hash, (now, key));
    }

    pub fn len(&self) -> usize {
        self.entries.lock().map(|e| e.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What the middleware needs: the pool and the cache.
#[derive(Debug)]
pub struct Auth {
    pool: Pool,
    pub cache: KeyCache,
}

impl Auth {
    pub fn new(pool: Pool, cache_ttl: Duration) -> Auth {
        Auth {
            pool,
            cache: KeyCache::new(cache_ttl),
        }
    }

    /// The active key with this hash, from the cache or PostgreSQL.
    pub async fn resolve(&self, hash: &KeyHash) -> Result<Option<ActiveKey>, AppError> {
        if let Some(cached) = self.cache.get(hash, Instant::now()) {
            return Ok(cached);
        }
        let found = sink::api_keys::lookup(&self.pool, hash).await?;
        self.cache.put(*hash, found.clone(), Instant::now());
        Ok(found)
    }
}

/// Middleware: authenticates and authorises every request but the open
/// paths; records the key's name (never the key) in the request span.
pub async fn require(State(auth): State<Arc<Auth>>, mut request: Request, next: Next) -> Response {
    let path = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str())
        .unwrap_or_else(|| request.uri().path());
    let Some(required) = required_scope(request.method(), path) else {
        return next.run(request).await;
    };
    let Some(key) = presented_key(request.headers()) else {
        crate::metrics::AUTH_REFUSED
            .with_label_values(&["missing"])
            .inc();
        return AppError::Unauthorized("missing api key").into_response();
    };
    // A malformed key is refused without a lookup.
    let found = match parse_key(key) {
        None => None,
        Some(_) => match auth.resolve(&hash_key(key)).await {
            Ok(found) => found,
            Err(e) => return e.into_response(),
        },
    };
    let Some(active) = found else {
        crate::metrics::AUTH_REFUSED
            .with_label_values(&["invalid"])
            .inc();
        info!("refused unknown or revoked api key");
        return AppError::Unauthorized("invalid api key").into_response();
    };
    tracing::Span::current().record("api_key", active.name.as_str());
    if !allows(&active.scopes, required) {
        crate::metrics::AUTH_REFUSED
            .with_label_values(&["forbidden"])
            .inc();
        info!(required = required.as_str(), "api key lacks the scope");
        return AppError::Forbidden {
            required: required.as_str(),
        }
        .into_response();
    }
    request.extensions_mut().insert(active);
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::{HeaderValue, StatusCode};
    use axum::routing::get;
    use axum::Router;
    use tower::ServiceExt;

    #[test]
    fn scopes_per_route() {
        let cases = [
            (Method::GET, "/health", None),
            (Method::GET, "/healthz", None),
            (Method::GET, "/ready", None),
            (Method::GET, "/livez", None),
            (Method::POST, "/api/v1/events", Some(Scope::Ingest)),
            (Method::GET, "/api/v1/events", Some(Scope::Read)),
            (Method::GET, "/api/v1/events/stats", Some(Scope::Read)),
            (Method::HEAD, "/api/v1/metrics", Some(Scope::Read)),
            (
                Method::GET,
                "/api/v1/internal/ingestion-metrics",
                Some(Scope::Admin),
            ),
            (Method::POST, "/api/v1/custom-events", Some(Scope::Admin)),
            (
                Method::GET,
                "/api/v1/custom-events/{name}",
                Some(Scope::Read),
            ),
            (
                Method::POST,
                "/api/v1/dead-letters/replay",
                Some(Scope::Admin),
            ),
            (Method::DELETE, "/api/v1/events", Some(Scope::Admin)),
            (Method::GET, "/health/../api/v1/events", Some(Scope::Read)),
            (Method::POST, "//api/v1/events", Some(Scope::Admin)),
        ];
        for (method, path, want) in cases {
            assert_eq!(required_scope(&method, path), want, "{method} {path}");
        }
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).expect("test header"));
        }
        h
    }

    #[test]
    fn keys_from_headers() {
        assert_eq!(
            presented_key(&headers(&[("authorization", "Bearer ak_x_y")])),
            Some("ak_x_y")
        );
        assert_eq!(
            presented_key(&headers(&[("authorization", "bearer   ak_x_y ")])),
            Some("ak_x_y")
        );
        assert_eq!(
            presented_key(&headers(&[("x-api-key", " ak_x_y")])),
            Some("ak_x_y")
        );
        assert_eq!(
            presented_key(&headers(&[
                ("authorization", "Basic dXNlcjpwdw=="),
                ("x-api-key", "ak_k")
            ])),
            Some("ak_k")
        );
        assert_eq!(
            presented_key(&headers(&[
                ("authorization", "Bearer a"),
                ("x-api-key", "b")
            ])),
            Some("a")
        );
        assert_eq!(
            presented_key(&headers(&[("authorization", "Basic dXNlcjpwdw==")])),
            None
        );
        assert_eq!(
            presented_key(&headers(&[("authorization", "Bearer")])),
            None
        );
        assert_eq!(presented_key(&headers(&[("x-api-key", "")])), None);
        assert_eq!(presented_key(&HeaderMap::new()), None);
    }

    fn active(name: &str, scopes: &[Scope]) -> ActiveKey {
        ActiveKey {
            name: name.into(),
            prefix: "abcdefgh".into(),
            scopes: scopes.to_vec(),
        }
    }

    #[test]
    fn cache_entries_expire_after_the_ttl() {
        let cache = KeyCache::new(Duration::from_secs(30));
        let t0 = Instant::now();
        let h = [1u8; 32];
        assert_eq!(cache.get(&h, t0), None);
        cache.put(h, Some(active("a", &[Scope::Read])), t0);
        cache.put([2u8; 32], None, t0);
        assert_eq!(
            cache.get(&h, t0 + Duration::from_secs(29)),
            Some(Some(active("a", &[Scope::Read])))
        );
        assert_eq!(
            cache.get(&[2u8; 32], t0),
            Some(None),
            "negative answers too"
        );
        assert_eq!(cache.get(&h, t0 + Duration::from_secs(30)), None);
        let off = KeyCache::new(Duration::ZERO);
        off.put(h, None, t0);
        assert!(off.is_empty(), "a zero ttl caches nothing");
    }

    #[test]
    fn cache_stays_bounded_under_a_flood_of_unknown_keys() {
        let cache = KeyCache::new(Duration::from_secs(30));
        let t0 = Instant::now();
        cache.put([0u8; 32], Some(active("good", &[Scope::Read])), t0);
        for i in 1..(MAX_ENTRIES as u32 + 500) {
            let mut h = [0u8; 32];
            h[..4].copy_from_slice(&i.to_le_bytes());
            cache.put(h, None, t0);
        }
        assert!(cache.len() <= MAX_ENTRIES);
        assert!(cache.get(&[0u8; 32], t0).is_some(), "valid key kept");
    }

    /// An `Auth` whose PostgreSQL is unreachable: only cached keys resolve.
    fn offline_auth() -> Arc<Auth> {
        let pool = sink::connect_pool(&sink::DbSettings {
            host: "127.0.0.1".into(),
            port: 1,
            database: "none".into(),
            user: "none".into(),
            password: "none".into(),
            max_connections: 2,
            connect_timeout: Duration::from_millis(500),
            application_name: "auth-test".into(),
            max_lifetime: None,
            tls: sink::TlsSettings::default(),
        })
        .expect("pool");
        Arc::new(Auth::new(pool, Duration::from_secs(60)))
    }

    fn app(auth: Arc<Auth>) -> Router {
        Router::new()
            .route(
                "/api/v1/events",
                get(|| async { "events" }).post(|| async { "in" }),
            )
            .route("/health", get(|| async { "ok" }))
            .layer(axum::middleware::from_fn_with_state(auth, require))
    }

    async fn call(app: &Router, method: Method, path: &str, key: Option<&str>) -> Response {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(k) = key {
            req = req.header("authorization", format!("Bearer {k}"));
        }
        app.clone()
            .oneshot(req.body(Body::empty()).expect("request"))
            .await
            .expect("infallible")
    }

    async fn body_json(r: Response) -> serde_json::Value {
        let bytes = axum::body::to_bytes(r.into_body(), 1 << 20)
            .await
            .expect("body");
        serde_json::from_slice(&bytes).expect("json body")
    }

    #[tokio::test]
    async fn statuses_from_the_middleware() {
        let auth = offline_auth();
        let reader = sink::api_keys::generate();
        auth.cache.put(
            reader.hash,
            Some(active("reader", &[Scope::Read])),
            Instant::now(),
        );
        let revoked = sink::api_keys::generate();
        auth.cache.put(revoked.hash, None, Instant::now());
        let app = app(auth);

        let r = call(&app, Method::GET, "/health", None).await;
        assert_eq!(r.status(), StatusCode::OK);

        let r = call(&app, Method::GET, "/api/v1/events", None).await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            r.headers()
                .get("www-authenticate")
                .and_then(|v| v.to_str().ok()),
            Some("Bearer realm=\"analytics\"")
        );
        let body = body_json(r).await;
        assert_eq!(body["error"], "missing api key");

        let r = call(&app, Method::GET, "/api/v1/events", Some("not-a-key")).await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

        let r = call(&app, Method::GET, "/api/v1/events", Some(&revoked.key)).await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(body_json(r).await["error"], "invalid api key");

        let r = call(&app, Method::GET, "/api/v1/events", Some(&reader.key)).await;
        assert_eq!(r.status(), StatusCode::OK);

        let r = call(&app, Method::POST, "/api/v1/events", Some(&reader.key)).await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        let body = body_json(r).await;
        assert_eq!(body["details"]["required_scope"], "ingest");

        // Unknown to the cache, and PostgreSQL is down: 503, no internals.
        let other = sink::api_keys::generate();
        let r = call(&app, Method::GET, "/api/v1/events", Some(&other.key)).await;
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        let text = body_json(r).await.to_string();
        assert!(
            !text.contains("127.0.0.1") && !text.contains("pool"),
            "{text}"
        );
    }
}
