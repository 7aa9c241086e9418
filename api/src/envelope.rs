//! The envelope of every API request: one layer, around each route, for
//! what every request needs whatever it asks.
//!
//! - its id ([`request_id::fix`]), echoed in the response;
//! - its span ([`request_id::make_span`]), entered whenever the request's
//!   future runs, so every log line written while serving it carries the
//!   id, and its access log line ([`request_id::access_log`]);
//! - its deadline, one timer: `server.write_timeout` (408) for every
//!   request, and for a GET also `analytics.query.timeout` (504) when that
//!   is the earlier of the two; a stream, once its answer has started, is
//!   not cut by either;
//! - the in-flight gauge and the latency histogram by matched route and
//!   status class ([`metrics::observe`]).
//!
//! These were five layers (two `from_fn`s, tower-http's timeout and trace
//! layers, and a second timeout), each boxing and moving the request's
//! future once more and two of them arming a timer: on the closed-loop
//! dashboard benchmark they took more of the service's CPU than the
//! handler itself. Timeouts and the access log now also cover refusals by
//! the key check and the rate limiter, which run inside.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use tower::{Layer, Service};
use tracing::Instrument;

use crate::{metrics, request_id};

/// The two deadlines of a request.
#[derive(Clone, Copy, Debug)]
pub struct Deadlines {
    /// `server.write_timeout`: 408 when no answer has started within it.
    pub request: Duration,
    /// `analytics.query.timeout`: 504 when a GET's answer has not started
    /// within it.
    pub query: Duration,
}

impl Deadlines {
    /// The one timer a request with `method` needs, and what it answers
    /// when it fires. The query deadline wins a tie, as it did when it was
    /// the inner of two timers.
    fn for_method(&self, method: &Method) -> (Duration, Expiry) {
        if method == Method::GET && self.query <= self.request {
            (self.query, Expiry::Query)
        } else {
            (self.request, Expiry::Request)
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Expiry {
    Request,
    Query,
}

impl Expiry {
    fn response(self, limit: Duration) -> Response {
        match self {
            Expiry::Request => StatusCode::REQUEST_TIMEOUT.into_response(),
            Expiry::Query => (
                StatusCode::GATEWAY_TIMEOUT,
                axum::Json(serde_json::json!({
                    "error": format!("query did not finish within {limit:?} (analytics.query.timeout)"),
                    "details": null,
                })),
            )
                .into_response(),
        }
    }
}

/// The layer: `router.layer(EnvelopeLayer::new(deadlines))`.
#[derive(Clone, Copy, Debug)]
pub struct EnvelopeLayer {
    deadlines: Deadlines,
}

impl EnvelopeLayer {
    pub fn new(deadlines: Deadlines) -> EnvelopeLayer {
        EnvelopeLayer { deadlines }
    }
}

impl<S> Layer<S> for EnvelopeLayer {
    type Service = Envelope<S>;

    fn layer(&self, inner: S) -> Envelope<S> {
        Envelope {
            inner,
            deadlines: self.deadlines,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Envelope<S> {
    inner: S,
    deadlines: Deadlines,
}

/// Holds one count of the in-flight gauge until the request ends, answered
/// or dropped (a client that hangs up).
struct InFlight;

impl InFlight {
    fn enter() -> InFlight {
        metrics::ACTIVE_CONNECTIONS.inc();
        InFlight
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        metrics::ACTIVE_CONNECTIONS.dec();
    }
}

impl<S> Service<Request> for Envelope<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request) -> Self::Future {
        // The clone is the one `poll_ready` did not see; the ready one serves.
        let ready = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, ready);
        let in_flight = InFlight::enter();
        let started = Instant::now();
        let id = request_id::fix(&mut request);
        let span = request_id::make_span(&request, &id);
        let route = request.extensions().get::<MatchedPath>().cloned();
        let (limit, expiry) = self.deadlines.for_method(request.method());
        let answer = span.in_scope(|| inner.call(request));
        Box::pin(
            async move {
                let mut response = match tokio::time::timeout(limit, answer).await {
                    Ok(Ok(response)) => response,
                    Ok(Err(never)) => match never {},
                    Err(_) => expiry.response(limit),
                };
                let latency = started.elapsed();
                drop(in_flight);
                metrics::observe(route.as_ref(), response.status(), latency);
                request_id::access_log(response.status(), latency);
                response.headers_mut().insert(request_id::X_REQUEST_ID, id);
                Ok(response)
            }
            .instrument(span),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::routing::{get, post};
    use axum::Router;
    use tower::ServiceExt;

    const SHORT: Duration = Duration::from_millis(50);
    const LONG: Duration = Duration::from_secs(30);

    /// The in-flight gauge is global: tests that move it take turns.
    static GAUGE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

    fn app(deadlines: Deadlines) -> Router {
        async fn slow() -> &'static str {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            "late"
        }
        Router::new()
            .route("/slow", get(slow).post(slow))
            .route("/fast", post(|| async { "ok" }))
            .layer(EnvelopeLayer::new(deadlines))
    }

    async fn status(app: Router, method: Method, uri: &str) -> (StatusCode, Response) {
        let request = Request::builder()
            .method(method)
            .uri(uri)
            .body(Body::empty())
            .expect("request");
        let response = app.oneshot(request).await.expect("infallible");
        (response.status(), response)
    }

    #[tokio::test(start_paused = true)]
    async fn a_get_gets_the_earlier_deadline_and_its_status() {
        let _turn = GAUGE.lock().await;
        let query_first = Deadlines {
            request: LONG,
            query: SHORT,
        };
        let (code, response) = status(app(query_first), Method::GET, "/slow").await;
        assert_eq!(code, StatusCode::GATEWAY_TIMEOUT);
        let body = axum::body::to_bytes(response.into_body(), 4096)
            .await
            .expect("body");
        let body: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert!(
            body["error"]
                .as_str()
                .is_some_and(|e| e.contains("analytics.query.timeout")),
            "{body}"
        );
        // Only GETs are queries.
        let (code, _) = status(app(query_first), Method::POST, "/slow").await;
        assert_eq!(code, StatusCode::REQUEST_TIMEOUT);
        // The request deadline first: it answers, for a GET too.
        let request_first = Deadlines {
            request: SHORT,
            query: LONG,
        };
        let (code, _) = status(app(request_first), Method::GET, "/slow").await;
        assert_eq!(code, StatusCode::REQUEST_TIMEOUT);
    }

    #[tokio::test(start_paused = true)]
    async fn every_answer_carries_an_id_and_leaves_nothing_in_flight() {
        let _turn = GAUGE.lock().await;
        let deadlines = Deadlines {
            request: SHORT,
            query: SHORT,
        };
        let before = metrics::ACTIVE_CONNECTIONS.get();
        // A client that hangs up: its request is dropped while in flight.
        let pending = status(
            app(Deadlines {
                request: LONG,
                query: LONG,
            }),
            Method::GET,
            "/slow",
        );
        let hung_up = tokio::time::timeout(SHORT, pending).await;
        assert!(hung_up.is_err(), "the slow request was still in flight");
        assert_eq!(metrics::ACTIVE_CONNECTIONS.get(), before);
        for (method, uri, expected) in [
            (Method::POST, "/fast", StatusCode::OK),
            (Method::GET, "/slow", StatusCode::GATEWAY_TIMEOUT),
            (Method::GET, "/nowhere", StatusCode::NOT_FOUND),
        ] {
            let (code, response) = status(app(deadlines), method, uri).await;
            assert_eq!(code, expected, "{uri}");
            if uri != "/nowhere" {
                let id = response
                    .headers()
                    .get(request_id::X_REQUEST_ID)
                    .and_then(|v| v.to_str().ok())
                    .expect("x-request-id");
                let uuid = uuid::Uuid::parse_str(id).expect("a uuid");
                assert_eq!(uuid.get_version_num(), 4);
            }
        }
        assert_eq!(metrics::ACTIVE_CONNECTIONS.get(), before);
    }
}
