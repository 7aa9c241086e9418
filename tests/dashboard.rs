//! `/api/v1/dashboard/metrics` against a from-scratch computation over the
//! same events as of the reported `as_of`, through real Kafka and
//! PostgreSQL: every field, including the sliding expiry of active users
//! (a 30 s window here, so that users drop out during the test), and
//! again after SIGKILL and a restart (restored from PostgreSQL).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::Utc;
use common::*;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

const USERS_WINDOW_MS: i64 = 30_000;
const STRATEGY_TIMEOUT_US: i64 = 120_000_000;

fn events(now: chrono::DateTime<Utc>) -> Vec<Value> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let mut out = Vec::new();
    let at = |ms: i64| {
        (now - chrono::Duration::milliseconds(ms))
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    };
    for i in 0..3_000 {
        // Most events in the last hour, some older, a few just now.
        let age = if i % 10 == 0 {
            rng.random_range(3_600_000..4_000_000)
        } else {
            rng.random_range(0..3_600_000)
        };
        let t = [
            "order.placed",
            "order.filled",
            "order.canceled",
            "order.rejected",
            "page.view",
            "my.custom",
        ][i % 6];
        out.push(json!({
            "event_type": t,
            "user_id": format!("u{}", i % 40),
            "properties": {"symbol": "BTCUSDT", "price": 100.0 + (i % 7) as f64 * 0.25, "quantity": 0.5 + (i % 3) as f64, "latency_ms": (i % 50) as f64, "strategy_id": format!("s{}", i % 3)},
            "timestamp": at(age),
        }));
    }
    // Strategies: s-run started and active; s-stop started then stopped;
    // s-silent started but silent for longer than the timeout.
    for (id, t, age) in [
        ("s-run", "strategy.started", 60_000),
        ("s-run", "signal.generated", 2_000),
        ("s-stop", "strategy.started", 90_000),
        ("s-stop", "strategy.stopped", 30_000),
        ("s-silent", "strategy.started", 600_000),
    ] {
        out.push(json!({"event_type": t, "properties": {"strategy_id": id}, "timestamp": at(age)}));
    }
    out
}

fn ts_us(e: &Value) -> i64 {
    chrono::DateTime::parse_from_rfc3339(e["timestamp"].as_str().expect("ts"))
        .expect("rfc3339")
        .timestamp_micros()
}

/// The dashboard computed from scratch as of `as_of_ms`.
fn oracle(events: &[Value], as_of_ms: i64) -> Value {
    let s = as_of_ms / 1000;
    let second = |e: &Value| ts_us(e).div_euclid(1_000_000);
    let in_window = |e: &Value, secs: i64| (s - secs..s).contains(&second(e));
    let count = |t: &str, secs: i64| {
        events
            .iter()
            .filter(|e| e["event_type"] == t && in_window(e, secs))
            .count() as i64
    };
    let (placed, filled, canceled, rejected) = (
        count("order.placed", 3600),
        count("order.filled", 3600),
        count("order.canceled", 3600),
        count("order.rejected", 3600),
    );
    let last_minute = events.iter().filter(|e| in_window(e, 60)).count();
    let mut volume: i128 = 0;
    let (mut latencies, mut latency_sum) = (0i64, 0i128);
    for e in events.iter().filter(|e| in_window(e, 3600)) {
        let t = e["event_type"].as_str().expect("type");
        let p = &e["properties"];
        if t == "order.filled" {
            volume +=
                to_nano(p["price"].as_f64().expect("price") * p["quantity"].as_f64().expect("qty"));
        }
        if t.starts_with("order.") {
            if let Some(l) = p["latency_ms"].as_f64() {
                latencies += 1;
                latency_sum += to_nano(l);
            }
        }
    }
    let users: BTreeSet<&str> = events
        .iter()
        .filter(|e| (second(e) + 1) * 1000 + USERS_WINDOW_MS >= as_of_ms)
        .filter_map(|e| e["user_id"].as_str())
        .collect();
    let mut strategies: BTreeMap<&str, ((i64, u8), i64)> = BTreeMap::new();
    for e in events {
        let Some(id) = e["properties"]["strategy_id"].as_str() else {
            continue;
        };
        let slot = strategies.entry(id).or_insert(((i64::MIN, 1), i64::MIN));
        let kind = match e["event_type"].as_str() {
            Some("strategy.started") => Some(0u8),
            Some("strategy.stopped") => Some(1u8),
            _ => None,
        };
        if let Some(k) = kind {
            slot.0 = slot.0.max((ts_us(e), k));
        }
        slot.1 = slot.1.max(ts_us(e));
    }
    let active_strategies = strategies
        .values()
        .filter(|((at, k), seen)| {
            *k == 0 && *at != i64::MIN && *seen >= as_of_ms * 1000 - STRATEGY_TIMEOUT_US
        })
        .count();
    let ratio = |a: i64, b: i64| if b > 0 { a as f64 / b as f64 } else { 0.0 };
    json!({
        "active_users": users.len(),
        "events_per_second": last_minute as f64 / 60.0,
        "orders_placed": placed,
        "orders_filled": filled,
        "orders_canceled": canceled,
        "orders_rejected": rejected,
        "fill_rate": ratio(filled, placed),
        "error_rate": ratio(rejected, placed),
        "total_volume": volume as f64 / 1e9,
        "average_latency": if latencies > 0 { latency_sum as f64 / 1e9 / latencies as f64 } else { 0.0 },
        "active_strategies": active_strategies,
        "custom_metrics": {"my.custom": count("my.custom", 3600)},
    })
}

/// Waits until the dashboard equals the oracle at its own `as_of`; returns it.
async fn matches(env: &TestEnv, events: &[Value]) -> Value {
    wait_for(
        "dashboard to equal the oracle",
        Duration::from_secs(60),
        || async {
            let (status, body) = env.get_json("/api/v1/dashboard/metrics").await;
            if status != 200 {
                return None;
            }
            let as_of = chrono::DateTime::parse_from_rfc3339(body["as_of"].as_str()?)
                .ok()?
                .timestamp_millis();
            let expected = oracle(events, as_of);
            let fields = expected.as_object()?;
            fields.iter().all(|(k, v)| &body[k] == v).then_some(body)
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_equals_a_from_scratch_computation_as_of_its_tick() {
    let mut env = TestEnv::new("dashboard", 3).await;
    env.set_dashboard("30s", "2m");
    env.start().await;
    let mut events = events(Utc::now());
    env.produce(&kafka_records(&env.topics, &events, 31)).await;
    env.wait_count(
        "SELECT count(*) FROM events",
        events.len() as i64,
        Duration::from_secs(120),
    )
    .await;
    let bulk = matches(&env, &events).await;
    assert_eq!(
        bulk["active_strategies"], 1,
        "only s-run is running: {bulk}"
    );
    assert_eq!(bulk["last_updated"], bulk["as_of"]);

    // Users active right now: they count for the next 30 s of event time.
    let now = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let fresh: Vec<Value> = ["fresh1", "fresh2", "fresh3"]
        .iter()
        .map(|u| json!({"event_type": "page.view", "user_id": u, "timestamp": now}))
        .collect();
    env.produce(&kafka_records(&env.topics, &fresh, 3)).await;
    events.extend(fresh);
    env.wait_count(
        "SELECT count(*) FROM events",
        events.len() as i64,
        Duration::from_secs(30),
    )
    .await;
    let first = matches(&env, &events).await;
    assert!(first["active_users"].as_u64().unwrap_or(0) >= 3, "{first}");

    // Sliding expiry: users drop out as event time passes, and the
    // dashboard keeps equalling the oracle.
    let fewer = wait_for(
        "an active user to drop out",
        Duration::from_secs(60),
        || async {
            let body = matches(&env, &events).await;
            (body["active_users"].as_u64() < first["active_users"].as_u64()).then_some(body)
        },
    )
    .await;
    assert!(fewer["active_users"].as_u64() < first["active_users"].as_u64());

    // SIGKILL and restart: state restored from PostgreSQL.
    env.kill9();
    env.start().await;
    matches(&env, &events).await;
    env.stop().await;
}

/// Reads server-sent events from `response` until `done` accepts one
/// `(event, data)` pair, or the deadline passes.
async fn read_sse(
    response: &mut reqwest::Response,
    timeout: Duration,
    mut done: impl FnMut(&str, &Value) -> bool,
) -> Vec<(String, Value)> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buffer = String::new();
    let mut seen = Vec::new();
    loop {
        let chunk = tokio::time::timeout_at(deadline, response.chunk())
            .await
            .expect("an SSE message before the deadline")
            .expect("stream readable")
            .expect("stream still open");
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let message: String = buffer.drain(..end + 2).collect();
            let mut name = String::from("message");
            let mut data = String::new();
            for line in message.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    name = v.trim().to_string();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim_start());
                }
            }
            if data.is_empty() {
                continue;
            }
            let value: Value = serde_json::from_str(&data).expect("json data");
            let stop = done(&name, &value);
            seen.push((name, value));
            if stop {
                return seen;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_pushes_snapshots_and_the_events_asked_for() {
    let mut env = TestEnv::new("stream", 1).await;
    env.start().await;
    let mut response = env
        .http
        .get(env.url("/api/v1/stream?events=order.placed"))
        .timeout(Duration::from_secs(120))
        .send()
        .await
        .expect("connect");
    assert_eq!(response.status().as_u16(), 200);
    assert!(response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream")));
    let first = read_sse(&mut response, Duration::from_secs(30), |name, _| {
        name == "dashboard"
    })
    .await;
    let before = first.last().expect("a snapshot").1.clone();

    let id = uuid::Uuid::new_v4().to_string();
    let placed = json!({"id": id, "event_type": "order.placed", "user_id": "sse-user", "properties": {"symbol": "ETHUSDT"}});
    let ignored = json!({"event_type": "page.view", "user_id": "sse-user"});
    env.produce(&kafka_records(&env.topics, &[ignored, placed], 2))
        .await;
    let seen = read_sse(&mut response, Duration::from_secs(60), |name, value| {
        name == "event" && value["id"] == id
    })
    .await;
    assert!(
        seen.iter()
            .all(|(name, value)| name != "event" || value["event_type"] == "order.placed"),
        "only the asked-for type is pushed: {seen:?}"
    );
    // A later snapshot counts the new order.
    read_sse(&mut response, Duration::from_secs(30), |name, value| {
        name == "dashboard" && value["orders_placed"].as_i64() > before["orders_placed"].as_i64()
    })
    .await;
    env.stop().await;
}
