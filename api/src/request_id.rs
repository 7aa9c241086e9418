//! Request ids: a client's `X-Request-ID` is kept when it is sane (1 to
//! 128 visible ASCII characters, so it cannot forge log lines), otherwise
//! a UUID v4 replaces it. The id is echoed in the response and is a field
//! of the request's span ([`make_span`]), so every log line written while
//! serving the request carries it.

use std::time::Duration;

use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use tracing::Span;
use uuid::Uuid;

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Longest id accepted from a client.
pub const MAX_LEN: usize = 128;

/// 1 to [`MAX_LEN`] visible ASCII characters (`!` to `~`).
pub fn is_sane(value: &HeaderValue) -> bool {
    let bytes = value.as_bytes();
    !bytes.is_empty() && bytes.len() <= MAX_LEN && bytes.iter().all(|b| (0x21..=0x7e).contains(b))
}

fn generate() -> HeaderValue {
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let text = Uuid::new_v4().hyphenated().encode_lower(&mut buf);
    HeaderValue::from_str(text).unwrap_or(HeaderValue::from_static("unknown"))
}

/// Fixes the request's id: the client's when sane, else a fresh UUID v4;
/// written into the request's headers (handlers that forward the request
/// see it) and returned for the response.
pub fn fix(request: &mut Request) -> HeaderValue {
    let id = match request.headers().get(&X_REQUEST_ID) {
        Some(given) if is_sane(given) => return given.clone(),
        _ => generate(),
    };
    request.headers_mut().insert(X_REQUEST_ID, id.clone());
    id
}

/// The span of one request, at INFO so that it shows with the default log
/// level: method, uri, request id, and the name of the API key once it is
/// verified.
pub fn make_span(request: &Request, id: &HeaderValue) -> Span {
    let id = id.to_str().unwrap_or("-");
    tracing::info_span!(
        "request",
        method = %request.method(),
        uri = %request.uri(),
        request_id = %id,
        api_key = tracing::field::Empty,
    )
}

/// A request at least this slow is logged at INFO whatever its status.
pub const SLOW_REQUEST: Duration = Duration::from_millis(100);

/// The access log, target `api::access`, written in the request's span
/// (so it carries the method, uri and request id): a fast answer below 400
/// at DEBUG (a line per request at INFO costs more than serving a live
/// read), a 4xx or one slower than [`SLOW_REQUEST`] at INFO, a 5xx at
/// WARN. `logging.level: debug`, or `RUST_LOG` with `api::access=debug`,
/// logs every request.
pub fn access_log(status: StatusCode, latency: Duration) {
    let status = status.as_u16();
    let latency_ms = latency.as_secs_f64() * 1e3;
    if status >= 500 {
        tracing::warn!(target: "api::access", status, latency_ms, "finished processing request");
    } else if status >= 400 || latency >= SLOW_REQUEST {
        tracing::info!(target: "api::access", status, latency_ms, "finished processing request");
    } else {
        tracing::debug!(target: "api::access", status, latency_ms, "finished processing request");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::routing::get;
    use axum::Router;
    use tower::ServiceExt;

    #[test]
    fn sanity() {
        let ok = |s: &str| is_sane(&HeaderValue::from_str(s).expect("header"));
        assert!(ok("abc-123_XYZ.~!"));
        assert!(ok(&"a".repeat(MAX_LEN)));
        assert!(!ok(&"a".repeat(MAX_LEN + 1)));
        assert!(!ok(""));
        assert!(!ok("has space"));
        assert!(!ok("tab\there"));
        assert!(!is_sane(
            &HeaderValue::from_bytes("caf\u{e9}".as_bytes()).expect("obs-text header")
        ));
    }

    async fn id_of(given: Option<&str>) -> (String, String) {
        let app = Router::new()
            .route(
                "/",
                get(|request: Request| async move {
                    request
                        .headers()
                        .get(&X_REQUEST_ID)
                        .and_then(|id| id.to_str().ok())
                        .unwrap_or_default()
                        .to_string()
                }),
            )
            .layer(crate::envelope::EnvelopeLayer::new(
                crate::envelope::Deadlines {
                    request: Duration::from_secs(30),
                    query: Duration::from_secs(30),
                },
            ));
        let mut req = Request::builder().uri("/");
        if let Some(g) = given {
            req = req.header("x-request-id", g);
        }
        let response = app
            .oneshot(req.body(Body::empty()).expect("request"))
            .await
            .expect("infallible");
        let echoed = response
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .expect("echoed")
            .to_string();
        let bytes = axum::body::to_bytes(response.into_body(), 1024)
            .await
            .expect("body");
        (echoed, String::from_utf8(bytes.to_vec()).expect("utf-8"))
    }

    #[tokio::test]
    async fn given_ids_are_kept_and_others_generated() {
        let (echoed, seen) = id_of(Some("client-42")).await;
        assert_eq!((echoed.as_str(), seen.as_str()), ("client-42", "client-42"));
        for given in [None, Some("two words"), Some(&*"x".repeat(200))] {
            let (echoed, seen) = id_of(given).await;
            assert_eq!(echoed, seen);
            let uuid = Uuid::parse_str(&echoed).expect("a uuid");
            assert_eq!(uuid.get_version_num(), 4);
        }
    }
}
