//! Rate limiting against the real Redis: a burst past the limit gets 429
//! with the headers and recovers; two instances sharing Redis share one
//! budget per identity; a Redis outage (through a test proxy) moves
//! decisions to the local limiter, health says degraded, and restoring
//! Redis moves them back; a Redis that hangs (connections open, no
//! answers) does not stall requests either. Each test uses its own API keys, so tests never
//! share a bucket in the shared Redis.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// A key no other test (or run) uses.
fn unique_key(name: &str) -> String {
    format!("it-{name}-{}-{}", std::process::id(), rand::random::<u64>())
}

/// One limited request (the cheapest `/api/v1` route) as `key`.
async fn hit(env: &TestEnv, key: &str) -> reqwest::Response {
    env.http
        .get(env.url("/api/v1/internal/ingestion-metrics"))
        .header("X-API-Key", key)
        .send()
        .await
        .expect("request answered")
}

fn header(r: &reqwest::Response, name: &str) -> Option<u64> {
    r.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// (status, Remaining) of one request, checking the headers are there.
async fn hit_remaining(env: &TestEnv, key: &str) -> (u16, u64) {
    let r = hit(env, key).await;
    let remaining = header(&r, "x-ratelimit-remaining").expect("X-RateLimit-Remaining");
    assert!(
        header(&r, "x-ratelimit-limit").is_some(),
        "X-RateLimit-Limit"
    );
    assert!(
        header(&r, "x-ratelimit-reset").is_some(),
        "X-RateLimit-Reset"
    );
    (r.status().as_u16(), remaining)
}

async fn health(env: &TestEnv) -> (u16, Value) {
    let r = env
        .http
        .get(format!("http://127.0.0.1:{}/health", env.health_port))
        .send()
        .await
        .expect("health answered");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Waits until `/health` reports the rate limiter on `store`.
async fn wait_store(env: &TestEnv, store: &str) -> Value {
    wait_for(
        &format!("rate limiter on {store}"),
        Duration::from_secs(30),
        || async {
            let (_, body) = health(env).await;
            (body["rate_limit"] == store).then_some(body)
        },
    )
    .await
}

/// The value of one Prometheus sample (`name{labels}` exactly), 0 if absent.
async fn metric(env: &TestEnv, sample: &str) -> f64 {
    let text = env.prometheus().await;
    text.lines()
        .find_map(|l| {
            l.strip_prefix(sample)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

fn redis() -> redis::Connection {
    redis::Client::open("redis://127.0.0.1:6379/0")
        .expect("redis url")
        .get_connection()
        .expect("redis is up: run `make services`")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_past_the_limit_gets_429_with_headers_and_then_recovers() {
    let mut env = TestEnv::new("rl_burst", 1).await;
    // One request a second, three at once.
    env.set_rate_limit(60, 3);
    env.start().await;
    wait_store(&env, "redis").await;
    let key = unique_key("burst");

    for (i, expected_remaining) in [2, 1, 0].into_iter().enumerate() {
        let r = hit(&env, &key).await;
        assert_eq!(r.status().as_u16(), 200, "request {i} of the burst");
        assert_eq!(header(&r, "x-ratelimit-limit"), Some(3));
        assert_eq!(
            header(&r, "x-ratelimit-remaining"),
            Some(expected_remaining)
        );
        let reset = header(&r, "x-ratelimit-reset").expect("X-RateLimit-Reset");
        assert!((1..=3).contains(&reset), "reset {reset}");
    }
    let refused = hit(&env, &key).await;
    assert_eq!(refused.status().as_u16(), 429);
    assert_eq!(header(&refused, "retry-after"), Some(1));
    assert_eq!(header(&refused, "x-ratelimit-limit"), Some(3));
    assert_eq!(header(&refused, "x-ratelimit-remaining"), Some(0));
    assert!(header(&refused, "x-ratelimit-reset").is_some());
    let body: Value = refused.json().await.expect("json error body");
    assert_eq!(body["error"], "rate limit exceeded", "{body}");
    assert_eq!(body["details"]["retry_after_seconds"], 1, "{body}");

    // Other identities and the health paths are not limited.
    assert_eq!(hit(&env, &unique_key("other")).await.status().as_u16(), 200);
    let h = env
        .http
        .get(env.url("/health"))
        .header("X-API-Key", &key)
        .send()
        .await
        .expect("health on the api port");
    assert_eq!(h.status().as_u16(), 200);
    assert!(h.headers().get("x-ratelimit-limit").is_none());
    let (status, body) = health(&env).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "healthy", "{body}");
    assert_eq!(body["rate_limit"], "redis", "{body}");

    // The bucket is named by the key's hash; the key itself is not in Redis.
    let mut conn = redis();
    let hash: String = Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let ttl: i64 = redis::cmd("PTTL")
        .arg(format!("analytics:ratelimit:key:{hash}"))
        .query(&mut conn)
        .expect("PTTL");
    assert!(ttl > 0 && ttl <= 3_000, "bucket ttl {ttl} ms");
    let leaked: Vec<String> = redis::cmd("KEYS")
        .arg(format!("*{key}*"))
        .query(&mut conn)
        .expect("KEYS");
    assert!(leaked.is_empty(), "{leaked:?}");

    // After Retry-After, requests pass again.
    let refused_at = Instant::now();
    wait_for(
        "a request to pass again",
        Duration::from_secs(10),
        || async { (hit(&env, &key).await.status().as_u16() == 200).then_some(()) },
    )
    .await;
    assert!(refused_at.elapsed() < Duration::from_secs(10));
    assert!(metric(&env, "analytics_rate_limited_total{store=\"redis\"}").await >= 1.0);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_sharing_redis_share_one_budget() {
    let mut a = TestEnv::new("rl_shared", 1).await;
    // One request a minute, four at once: nothing refills during the test.
    a.set_rate_limit(1, 4);
    let mut b = a.peer("b");
    a.start().await;
    b.start().await;
    wait_store(&a, "redis").await;
    wait_store(&b, "redis").await;
    let key = unique_key("shared");

    assert_eq!(hit_remaining(&a, &key).await, (200, 3));
    assert_eq!(hit_remaining(&b, &key).await, (200, 2));
    assert_eq!(hit_remaining(&a, &key).await, (200, 1));
    assert_eq!(hit_remaining(&b, &key).await, (200, 0));
    for env in [&a, &b] {
        let r = hit(env, &key).await;
        assert_eq!(r.status().as_u16(), 429);
        let retry = header(&r, "retry-after").expect("Retry-After");
        assert!((1..=60).contains(&retry), "retry after {retry}");
    }
    // Each instance refused one.
    for env in [&a, &b] {
        assert_eq!(
            metric(env, "analytics_rate_limited_total{store=\"redis\"}").await,
            1.0
        );
    }
    b.stop().await;
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_falls_back_to_the_local_limiter_and_recovers() {
    let proxy = Proxy::start(6379).await;
    let mut env = TestEnv::new("rl_outage", 1).await;
    env.set_ports(5432, proxy.port);
    // One request a minute, three at once: an exhausted bucket stays so
    // for the whole test.
    env.set_rate_limit(1, 3);
    env.start().await;
    wait_store(&env, "redis").await;
    let exhausted_in_redis = unique_key("outage-redis");
    let during_outage = unique_key("outage-local");
    for expected in [2, 1, 0] {
        assert_eq!(
            hit_remaining(&env, &exhausted_in_redis).await,
            (200, expected)
        );
    }
    assert_eq!(hit_remaining(&env, &exhausted_in_redis).await, (429, 0));

    proxy.cut();
    // Still answered, without stalling, and the local limiter still
    // refuses a burst.
    for expected in [(200, 2), (200, 1), (200, 0), (429, 0)] {
        let started = Instant::now();
        assert_eq!(hit_remaining(&env, &during_outage).await, expected);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "request took {:?}",
            started.elapsed()
        );
    }
    let (status, body) = health(&env).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "degraded", "{body}");
    assert_eq!(body["rate_limit"], "local", "{body}");
    assert_eq!(body["database"], "connected", "{body}");
    assert!(metric(&env, "analytics_rate_limit_fallback_total").await >= 1.0);
    assert_eq!(metric(&env, "analytics_rate_limit_local").await, 1.0);
    assert!(metric(&env, "analytics_rate_limited_total{store=\"local\"}").await >= 1.0);

    proxy.restore();
    wait_store(&env, "redis").await;
    assert_eq!(metric(&env, "analytics_rate_limit_local").await, 0.0);
    // Decisions come from Redis again: it still remembers the bucket
    // exhausted before the outage, and never saw the local requests.
    assert_eq!(hit_remaining(&env, &exhausted_in_redis).await, (429, 0));
    assert_eq!(hit_remaining(&env, &during_outage).await, (200, 2));
    let body = wait_for(
        "health to be healthy again",
        Duration::from_secs(30),
        || async {
            let (_, body) = health(&env).await;
            (body["status"] == "healthy").then_some(body)
        },
    )
    .await;
    assert_eq!(body["cache"], "connected", "{body}");
    env.stop().await;
}

/// A proxy to Redis that can *hang*: connections stay open but bytes stop
/// flowing, as with a stalled server or a black-holed network.
struct HangingProxy {
    port: u16,
    hung: tokio::sync::watch::Sender<bool>,
}

impl HangingProxy {
    async fn start(target_port: u16) -> HangingProxy {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        async fn pump(
            mut from: tokio::net::tcp::OwnedReadHalf,
            mut to: tokio::net::tcp::OwnedWriteHalf,
            mut hung: tokio::sync::watch::Receiver<bool>,
        ) {
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                let n = match from.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                if hung.wait_for(|h| !*h).await.is_err() {
                    return;
                }
                if to.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let (hung, _) = tokio::sync::watch::channel(false);
        let rx = hung.subscribe();
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let rx = rx.clone();
                tokio::spawn(async move {
                    let Ok(outbound) =
                        tokio::net::TcpStream::connect(("127.0.0.1", target_port)).await
                    else {
                        return;
                    };
                    let (in_read, in_write) = inbound.into_split();
                    let (out_read, out_write) = outbound.into_split();
                    tokio::join!(
                        pump(in_read, out_write, rx.clone()),
                        pump(out_read, in_write, rx)
                    );
                });
            }
        });
        HangingProxy { port, hung }
    }

    fn hang(&self, hung: bool) {
        self.hung.send_replace(hung);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_redis_does_not_stall_requests() {
    let proxy = HangingProxy::start(6379).await;
    let mut env = TestEnv::new("rl_hang", 1).await;
    env.set_ports(5432, proxy.port);
    env.set_rate_limit(1, 3);
    env.start().await;
    wait_store(&env, "redis").await;
    let key = unique_key("hang");
    assert_eq!(hit_remaining(&env, &key).await, (200, 2));

    proxy.hang(true);
    // The first request waits out the Redis timeout (150 ms), the next
    // ones go straight to the local limiter.
    let mut slowest = Duration::ZERO;
    for expected in [(200, 2), (200, 1), (200, 0), (429, 0)] {
        let started = Instant::now();
        assert_eq!(hit_remaining(&env, &key).await, expected);
        slowest = slowest.max(started.elapsed());
    }
    assert!(
        slowest < Duration::from_secs(1),
        "slowest request {slowest:?}"
    );
    let (_, body) = health(&env).await;
    assert_eq!(body["rate_limit"], "local", "{body}");
    assert_eq!(body["status"], "degraded", "{body}");

    proxy.hang(false);
    wait_store(&env, "redis").await;
    // Decisions come from Redis again. It saw one request of this key
    // before the hang, and also the one that timed out: its script call
    // was already on the wire and ran when Redis woke up (a refill's
    // worth, charged once), so this third request takes the last token.
    assert_eq!(hit_remaining(&env, &key).await, (200, 0));
    env.stop().await;
}
