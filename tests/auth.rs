//! API keys and request ids against the real binary and PostgreSQL: keys
//! made with `analytics api-key`, 401 without a key or with a wrong or
//! revoked one, 403 without the scope, the open health and metrics ports,
//! revocation within the cache TTL, and `X-Request-ID` echoed and carried
//! by the service's log lines of the request.

mod common;

use std::time::{Duration, Instant};

use common::*;
use reqwest::{Method, Response};
use serde_json::{json, Value};

const STATS: &str = "/api/v1/events/stats";

enum Key<'a> {
    None,
    Bearer(&'a str),
    Header(&'a str),
}

async fn call(
    env: &TestEnv,
    method: Method,
    path: &str,
    key: Key<'_>,
    body: Option<&Value>,
) -> Response {
    let mut req = env.http.request(method, env.url(path));
    req = match key {
        Key::None => req,
        Key::Bearer(k) => req.bearer_auth(k),
        Key::Header(k) => req.header("X-API-Key", k),
    };
    if let Some(b) = body {
        req = req.json(b);
    }
    req.send().await.expect("request")
}

/// Asserts the status and a clean JSON error body; returns the body.
async fn expect_error(r: Response, status: u16) -> Value {
    assert_eq!(r.status().as_u16(), status);
    if status == 401 {
        let challenge = r
            .headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        assert!(challenge.starts_with("Bearer"), "{challenge:?}");
    }
    assert!(r.headers().contains_key("x-request-id"));
    let body: Value = r.json().await.expect("json error body");
    assert!(body["error"].is_string(), "{body}");
    let text = body.to_string().to_lowercase();
    for leak in ["select", "postgres", "sql", "api_keys", "ak_"] {
        assert!(!text.contains(leak), "{leak} leaks in {body}");
    }
    body
}

fn event(n: usize) -> Value {
    json!({
        "event_type": "order.placed",
        "user_id": format!("auth-user-{n}"),
        "properties": {"symbol": "BTCUSDT", "price": 50000.0, "quantity": 0.1, "side": "BUY"},
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_scopes_and_revocation() {
    let mut env = TestEnv::new("auth", 1).await;
    // Long enough to see a revoked key still served from the cache, short
    // enough for the test.
    env.enable_api_keys("3s");
    let reader = env.create_key("reader", "read");
    let ingester = env.create_key("ingester", "ingest");
    let admin = env.create_key("admin", "admin");
    let doomed = env.create_key("doomed", "read,ingest");
    let dup = env.cli(&["api-key", "create", "--name", "reader", "--scopes", "read"]);
    assert!(!dup.status.success(), "a second active key named reader");
    let bad = env.cli(&["api-key", "create", "--name", "x", "--scopes", "write"]);
    assert!(!bad.status.success(), "unknown scope");

    let list = env.cli(&["api-key", "list"]);
    assert!(list.status.success());
    let listing = String::from_utf8(list.stdout).expect("utf-8");
    for (name, key) in [
        ("reader", &reader),
        ("ingester", &ingester),
        ("admin", &admin),
        ("doomed", &doomed),
    ] {
        let prefix = &key[..11]; // "ak_" + 8
        let secret = &key[12..];
        assert!(
            listing
                .lines()
                .any(|l| l.starts_with(name) && l.contains(prefix)),
            "{listing}"
        );
        assert!(!listing.contains(secret), "list shows a secret: {listing}");
    }
    let stored: Vec<Vec<u8>> = env
        .pg()
        .await
        .query("SELECT key_hash FROM api_keys", &[])
        .await
        .expect("api_keys")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(stored.len(), 4);
    assert!(stored.iter().all(|h| h.len() == 32), "hashes, not keys");
    let dump = env
        .pg()
        .await
        .query_one("SELECT string_agg(t::text, ' ') FROM api_keys t", &[])
        .await
        .expect("dump")
        .get::<_, String>(0);
    assert!(!dump.contains(&reader[12..]), "a secret in PostgreSQL");

    env.start().await;

    // Health and Prometheus stay open.
    for path in ["/health", "/healthz", "/ready", "/livez"] {
        let r = call(&env, Method::GET, path, Key::None, None).await;
        assert_eq!(r.status().as_u16(), 200, "{path}");
        let r = env
            .http
            .get(format!("http://127.0.0.1:{}{path}", env.health_port))
            .send()
            .await
            .expect("health port");
        assert_eq!(r.status().as_u16(), 200, "health port {path}");
    }
    let r = env
        .http
        .get(format!("http://127.0.0.1:{}/metrics", env.metrics_port))
        .send()
        .await
        .expect("metrics port");
    assert_eq!(r.status().as_u16(), 200);

    // No key, a malformed key, a well-formed unknown key: 401.
    let body = expect_error(call(&env, Method::GET, STATS, Key::None, None).await, 401).await;
    assert_eq!(body["error"], "missing api key");
    expect_error(
        call(
            &env,
            Method::POST,
            "/api/v1/events",
            Key::None,
            Some(&event(0)),
        )
        .await,
        401,
    )
    .await;
    let unknown = format!("ak_AAAAAAAA_{}", "a".repeat(43));
    for wrong in [
        Key::Bearer("nope"),
        Key::Bearer(&unknown),
        Key::Header(&unknown),
    ] {
        let body = expect_error(call(&env, Method::GET, STATS, wrong, None).await, 401).await;
        assert_eq!(body["error"], "invalid api key");
    }
    let basic = env
        .http
        .get(env.url(STATS))
        .basic_auth("reader", Some(&reader))
        .send()
        .await
        .expect("basic");
    expect_error(basic, 401).await;
    // A key with a tampered secret.
    let mut tampered = reader.clone();
    tampered.pop();
    tampered.push(if reader.ends_with('x') { 'y' } else { 'x' });
    expect_error(
        call(&env, Method::GET, STATS, Key::Bearer(&tampered), None).await,
        401,
    )
    .await;

    // Scopes.
    let body = expect_error(
        call(
            &env,
            Method::POST,
            "/api/v1/events",
            Key::Bearer(&reader),
            Some(&event(1)),
        )
        .await,
        403,
    )
    .await;
    assert_eq!(body["details"]["required_scope"], "ingest");
    assert_eq!(
        env.count("SELECT count(*) FROM events").await,
        0,
        "refused posts store nothing"
    );
    let r = call(
        &env,
        Method::POST,
        "/api/v1/events",
        Key::Bearer(&ingester),
        Some(&event(2)),
    )
    .await;
    assert_eq!(r.status().as_u16(), 201);
    let r = call(
        &env,
        Method::POST,
        "/api/v1/events",
        Key::Header(&ingester),
        Some(&event(3)),
    )
    .await;
    assert_eq!(r.status().as_u16(), 201);
    let r = call(
        &env,
        Method::POST,
        "/api/v1/events",
        Key::Bearer(&admin),
        Some(&event(4)),
    )
    .await;
    assert_eq!(r.status().as_u16(), 201, "admin implies ingest");
    assert_eq!(env.count("SELECT count(*) FROM events").await, 3);
    for key in [
        Key::Bearer(&reader),
        Key::Header(&reader),
        Key::Bearer(&admin),
    ] {
        let r = call(&env, Method::GET, STATS, key, None).await;
        assert_eq!(r.status().as_u16(), 200);
    }
    let r = call(
        &env,
        Method::GET,
        "/api/v1/events?limit=5",
        Key::Bearer(&reader),
        None,
    )
    .await;
    assert_eq!(r.status().as_u16(), 200);
    let body = expect_error(
        call(&env, Method::GET, STATS, Key::Bearer(&ingester), None).await,
        403,
    )
    .await;
    assert_eq!(body["details"]["required_scope"], "read");
    let internal = "/api/v1/internal/ingestion-metrics";
    let body = expect_error(
        call(&env, Method::GET, internal, Key::Bearer(&reader), None).await,
        403,
    )
    .await;
    assert_eq!(body["details"]["required_scope"], "admin");
    let r = call(&env, Method::GET, internal, Key::Bearer(&admin), None).await;
    assert_eq!(r.status().as_u16(), 200);

    // Refusals are logged with the request's id, never with the key.
    let r = env
        .http
        .get(env.url(STATS))
        .bearer_auth(&unknown)
        .header("X-Request-ID", "it-refused-0042")
        .send()
        .await
        .expect("request");
    assert_eq!(
        r.headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok()),
        Some("it-refused-0042")
    );
    expect_error(r, 401).await;
    wait_for(
        "the refusal in the log",
        Duration::from_secs(10),
        || async {
            env.log()
                .lines()
                .any(|l| {
                    l.contains("refused unknown or revoked api key")
                        && l.contains("it-refused-0042")
                })
                .then_some(())
        },
    )
    .await;
    let log = env.log();
    for key in [&reader, &ingester, &admin, &doomed] {
        assert!(!log.contains(&key[12..]), "a secret in the log");
    }

    // Revocation: still served from the cache right after, refused within the TTL.
    let r = call(&env, Method::GET, STATS, Key::Bearer(&doomed), None).await;
    assert_eq!(r.status().as_u16(), 200);
    let used = Instant::now();
    let out = env.cli(&["api-key", "revoke", "doomed"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let revoked = Instant::now();
    if revoked - used < Duration::from_secs(2) {
        let r = call(&env, Method::GET, STATS, Key::Bearer(&doomed), None).await;
        assert_eq!(r.status().as_u16(), 200, "cached: no lookup per request");
    }
    wait_for(
        "the revoked key to be refused",
        Duration::from_secs(15),
        || async {
            let r = call(&env, Method::GET, STATS, Key::Bearer(&doomed), None).await;
            (r.status().as_u16() == 401).then_some(())
        },
    )
    .await;
    let took = revoked.elapsed();
    assert!(
        took < Duration::from_secs(3 + 2),
        "refused after {took:?}, TTL 3 s"
    );
    // Other keys are unaffected, and the listing shows the revocation.
    let r = call(&env, Method::GET, STATS, Key::Bearer(&reader), None).await;
    assert_eq!(r.status().as_u16(), 200);
    let listing = String::from_utf8(env.cli(&["api-key", "list"]).stdout).expect("utf-8");
    let line = listing
        .lines()
        .find(|l| l.starts_with("doomed"))
        .expect("doomed listed");
    assert!(!line.trim_end().ends_with('-'), "revoked_at shown: {line}");
    let again = env.cli(&["api-key", "revoke", "doomed"]);
    assert!(!again.status.success(), "nothing left to revoke");
    // The name can be reused for a new key.
    let renewed = env.create_key("doomed", "read");
    wait_for(
        "the new key to be accepted",
        Duration::from_secs(10),
        || async {
            let r = call(&env, Method::GET, STATS, Key::Bearer(&renewed), None).await;
            (r.status().as_u16() == 200).then_some(())
        },
    )
    .await;

    // Refusals are counted in Prometheus.
    let metrics = env.prometheus().await;
    for reason in ["missing", "invalid", "forbidden"] {
        assert!(
            metrics.contains(&format!(
                "analytics_api_key_refused_total{{reason=\"{reason}\"}}"
            )),
            "{reason}"
        );
    }
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_are_echoed_and_logged() {
    let mut env = TestEnv::new("reqid", 1).await;
    // Fast successful answers are logged at DEBUG (`api::access`).
    env.env.push((
        "RUST_LOG".into(),
        "info,rdkafka=warn,api::access=debug".into(),
    ));
    env.start().await;
    let id_of = |r: &Response| {
        r.headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .expect("x-request-id echoed")
            .to_string()
    };
    let logged = |id: String| {
        let env = &env;
        async move {
            wait_for(
                &format!("a log line of request {id}"),
                Duration::from_secs(10),
                || async {
                    env.log()
                        .lines()
                        .any(|l| {
                            l.contains(&id)
                                && l.contains(STATS)
                                && l.contains("finished processing request")
                        })
                        .then_some(())
                },
            )
            .await
        }
    };

    // Given and sane: kept.
    let given = format!("it-{}", rand::random::<u32>());
    let r = env
        .http
        .get(env.url(STATS))
        .header("X-Request-ID", &given)
        .send()
        .await
        .expect("GET");
    assert_eq!(
        r.status().as_u16(),
        200,
        "no key needed when api_key_enabled is false"
    );
    assert_eq!(id_of(&r), given);
    logged(given).await;

    // Absent, too long, or with a space: a fresh UUID v4.
    let long = "x".repeat(129);
    for sent in [None, Some(long.as_str()), Some("two words")] {
        let mut req = env.http.get(env.url(STATS));
        if let Some(s) = sent {
            req = req.header("X-Request-ID", s);
        }
        let r = req.send().await.expect("GET");
        let id = id_of(&r);
        let uuid = uuid::Uuid::parse_str(&id).expect("a generated uuid");
        assert_eq!(uuid.get_version_num(), 4);
        logged(id).await;
    }
    let max = "y".repeat(128);
    let r = env
        .http
        .get(env.url(STATS))
        .header("X-Request-ID", &max)
        .send()
        .await
        .expect("GET");
    assert_eq!(id_of(&r), max, "128 characters are accepted");

    // Error answers carry it too.
    let r = env
        .http
        .get(env.url("/api/v1/events?limit=0"))
        .send()
        .await
        .expect("GET");
    assert_eq!(r.status().as_u16(), 400);
    uuid::Uuid::parse_str(&id_of(&r)).expect("uuid on a 400");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_from_files_work_and_a_wrong_one_never_reaches_the_log() {
    let mut env = TestEnv::new("secrets", 1).await;
    // A wrong password from a file: start-up fails at once (no retries for
    // refused credentials), names the settings, never shows the secret.
    let wrong = "Wr0ng-s3cret-from-a-file";
    env.use_password_file(wrong);
    env.spawn();
    let status = env.wait_exit(Duration::from_secs(60)).await;
    let log = env.log();
    assert!(!status.success(), "{log}");
    assert!(
        log.contains("refused the credentials") && log.contains("database.password_file"),
        "a clear error naming the setting:\n{log}"
    );
    assert!(!log.contains(wrong), "the secret is in the log:\n{log}");
    let shown = env.cli(&["check-config"]);
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(!shown.contains(wrong) && shown.contains("***"), "{shown}");
    // The right one, with the trailing newline `echo` writes: it starts.
    env.use_password_file("change_me\n");
    env.start().await;
    env.stop().await;
}
