//! The trading tables and their endpoints against an independent,
//! from-scratch computation over the same events, through real Kafka and
//! PostgreSQL: orders joined by `order_id` (partial fills, cancels,
//! rejects, orders still open), strategy performance and OHLCV candles per
//! interval, and user sessions (part of them posted over REST). The service
//! is SIGKILLed after part of the Kafka events is stored and restarted with
//! the rest waiting in Kafka, so that redelivered messages would show up as
//! double counts.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::Utc;
use common::*;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

const SYMBOLS: [&str; 3] = ["AAA", "BBB", "CCC"];

/// Events in logical order, each at a distinct millisecond, starting an
/// hour ago (so that sessions have ended).
fn events() -> Vec<Value> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let mut t = Utc::now().timestamp_millis() - 3_600_000;
    let mut out = Vec::new();
    let mut at = |rng: &mut rand::rngs::StdRng| {
        t += rng.random_range(1..400);
        chrono::DateTime::from_timestamp_millis(t)
            .expect("time")
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    };
    for i in 0..60 {
        let order = format!("o{i}");
        let symbol = SYMBOLS[i % 3];
        let strategy = format!("s{}", i % 4);
        let quantity = rng.random_range(1..10) as f64;
        let price = 100.0 + rng.random_range(0..40) as f64 * 0.25;
        out.push(json!({
            "event_type": "order.placed", "user_id": format!("t{}", i % 5),
            "properties": {"order_id": order, "symbol": symbol, "side": if i % 2 == 0 { "BUY" } else { "SELL" },
                "quantity": quantity, "price": price, "strategy_id": strategy,
                "latency_ms": rng.random_range(1..20)},
            "timestamp": at(&mut rng),
        }));
        match rng.random_range(0..100) {
            0..50 => {
                // One to three fills; some orders stay partially filled.
                let fills = rng.random_range(1..4);
                let mut left = quantity;
                for f in 0..fills {
                    let q = if f == fills - 1 && rng.random_bool(0.7) {
                        left
                    } else {
                        (left / 2.0).floor().max(0.5)
                    };
                    left -= q;
                    out.push(json!({
                        "event_type": "order.filled",
                        "properties": {"order_id": order, "symbol": symbol, "quantity": q,
                            "price": price + rng.random_range(-4..5) as f64 * 0.25,
                            "pnl": rng.random_range(-10..11) as f64 * 0.5,
                            "commission": 0.01 * q, "is_maker": rng.random_bool(0.5),
                            "strategy_id": strategy, "latency_ms": rng.random_range(1..50)},
                        "timestamp": at(&mut rng),
                    }));
                }
            }
            50..70 => out.push(json!({
                "event_type": "order.canceled",
                "properties": {"order_id": order, "symbol": symbol, "strategy_id": strategy},
                "timestamp": at(&mut rng),
            })),
            70..85 => out.push(json!({
                "event_type": "order.rejected",
                "properties": {"order_id": order, "symbol": symbol, "reason": "risk"},
                "timestamp": at(&mut rng),
            })),
            _ => {}
        }
        for _ in 0..3 {
            out.push(json!({
                "event_type": "market.data.update",
                "properties": {"symbol": SYMBOLS[rng.random_range(0..3)],
                    "price": 100.0 + rng.random_range(0..80) as f64 * 0.125,
                    "volume": rng.random_range(1..1000)},
                "timestamp": at(&mut rng),
            }));
        }
    }
    for user in 0..5 {
        for s in 0..2 {
            let session = format!("sess-{user}-{s}");
            for _ in 0..rng.random_range(3..9) {
                let t = ["page.view", "page.view", "button.click", "user.login"]
                    [rng.random_range(0..4)];
                out.push(json!({
                    "event_type": t, "user_id": format!("u{user}"), "session_id": session,
                    "timestamp": at(&mut rng),
                }));
            }
        }
    }
    out
}

fn ts_us(e: &Value) -> i64 {
    chrono::DateTime::parse_from_rfc3339(e["timestamp"].as_str().expect("ts"))
        .expect("rfc3339")
        .timestamp_micros()
}

fn num(v: &Value) -> f64 {
    match v {
        Value::Number(n) => n.as_f64().expect("f64"),
        Value::String(s) => s.parse().expect("numeric text"),
        other => panic!("not a number: {other}"),
    }
}

fn close(actual: &Value, expected: f64, what: &str) {
    let a = num(actual);
    assert!(
        (a - expected).abs() <= 1e-9 * expected.abs().max(1.0),
        "{what}: {a} != {expected}"
    );
}

fn prop<'a>(e: &'a Value, name: &str) -> &'a Value {
    &e["properties"][name]
}

/// Checks every order's row against its events.
async fn check_orders(env: &TestEnv, events: &[Value]) {
    let mut orders: BTreeMap<&str, Vec<&Value>> = BTreeMap::new();
    for e in events {
        if let Some(id) = prop(e, "order_id").as_str() {
            orders.entry(id).or_default().push(e);
        }
    }
    assert_eq!(orders.len(), 60);
    for (id, evs) in &orders {
        let (status, row) = env.get_json(&format!("/api/v1/trading/orders/{id}")).await;
        assert_eq!(status, 200, "{id}: {row}");
        let placed = evs
            .iter()
            .find(|e| e["event_type"] == "order.placed")
            .expect("placed");
        let fills: Vec<&&Value> = evs
            .iter()
            .filter(|e| e["event_type"] == "order.filled")
            .collect();
        let last = evs.iter().max_by_key(|e| ts_us(e)).expect("an event");
        let filled: f64 = fills.iter().map(|e| num(prop(e, "quantity"))).sum();
        let quantity = num(prop(placed, "quantity"));
        let expected_status = match last["event_type"].as_str() {
            Some("order.placed") => "placed",
            Some("order.filled") if filled < quantity => "partially_filled",
            Some("order.filled") => "filled",
            Some("order.canceled") => "canceled",
            _ => "rejected",
        };
        assert_eq!(row["status"], expected_status, "{id}: {row}");
        assert_eq!(row["symbol"], *prop(placed, "symbol"), "{id}");
        assert_eq!(row["side"], *prop(placed, "side"), "{id}");
        assert_eq!(row["strategy_id"], *prop(placed, "strategy_id"), "{id}");
        assert_eq!(row["user_id"], placed["user_id"], "{id}");
        close(&row["quantity"], quantity, "quantity");
        close(&row["filled_quantity"], filled, "filled_quantity");
        assert_eq!(row["fills"], fills.len(), "{id}");
        let sum = |name: &str| -> f64 { evs.iter().filter_map(|e| prop(e, name).as_f64()).sum() };
        close(&row["pnl"], sum("pnl"), "pnl");
        close(&row["commission"], sum("commission"), "commission");
        if fills.is_empty() {
            assert_eq!(row["avg_fill_price"], Value::Null, "{id}");
            assert_eq!(row["is_maker"], Value::Null, "{id}");
        } else {
            let notional: f64 = fills
                .iter()
                .map(|e| num(prop(e, "price")) * num(prop(e, "quantity")))
                .sum();
            close(&row["avg_fill_price"], notional / filled, "avg_fill_price");
            let latest = fills.iter().max_by_key(|e| ts_us(e)).expect("fill");
            assert_eq!(row["is_maker"], *prop(latest, "is_maker"), "{id}");
        }
        let at = |name: &str| {
            chrono::DateTime::parse_from_rfc3339(row[name].as_str().expect(name))
                .expect("rfc3339")
                .timestamp_micros()
        };
        let first = evs.iter().map(|e| ts_us(e)).min().expect("an event");
        assert_eq!(
            (at("placed_at"), at("first_seen")),
            (ts_us(placed), first),
            "{id}"
        );
        if last["event_type"] == "order.placed" {
            assert_eq!(row["latency_ms"], Value::Null, "{id}");
            assert_eq!(row["closed_at"], Value::Null, "{id}");
        } else {
            let ms = (ts_us(last) - ts_us(placed)) as f64 / 1000.0;
            close(&row["latency_ms"], ms, "latency_ms");
            assert_eq!(at("closed_at"), ts_us(last), "{id}");
        }
    }
    let (status, _) = env.get_json("/api/v1/trading/orders/no-such-order").await;
    assert_eq!(status, 404);
}

/// Buckets events of `interval_s` by `key`, folding with `f`.
fn buckets<'a, T: Default>(
    events: &'a [Value],
    interval_s: i64,
    key: impl Fn(&'a Value) -> Option<String>,
    mut f: impl FnMut(&mut T, &'a Value),
) -> BTreeMap<(String, i64), T> {
    let mut out: BTreeMap<(String, i64), T> = BTreeMap::new();
    let mut sorted: Vec<&Value> = events.iter().collect();
    sorted.sort_by_key(|e| ts_us(e));
    for e in sorted {
        if let Some(k) = key(e) {
            let start = ts_us(e).div_euclid(1_000_000).div_euclid(interval_s) * interval_s;
            f(out.entry((k, start)).or_default(), e);
        }
    }
    out
}

fn bucket_start(row: &Value) -> i64 {
    chrono::DateTime::parse_from_rfc3339(row["bucket_start"].as_str().expect("bucket_start"))
        .expect("rfc3339")
        .timestamp()
}

fn range_query(events: &[Value]) -> String {
    let first = events.iter().map(ts_us).min().expect("events") / 1_000_000 - 86_400;
    let last = events.iter().map(ts_us).max().expect("events") / 1_000_000 + 86_400;
    let fmt = |s: i64| {
        chrono::DateTime::from_timestamp(s, 0)
            .expect("time")
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    };
    format!("start_time={}&end_time={}", fmt(first), fmt(last))
}

#[derive(Default, Debug)]
struct Perf {
    trades: i64,
    wins: i64,
    losses: i64,
    pnl: f64,
    profit: f64,
    loss: f64,
    best: Option<f64>,
    worst: Option<f64>,
    latencies: Vec<f64>,
}

async fn check_strategies(env: &TestEnv, events: &[Value]) {
    for (interval, secs) in [("1m", 60), ("1h", 3_600)] {
        let expected = buckets(
            events,
            secs,
            |e| prop(e, "strategy_id").as_str().map(str::to_string),
            |p: &mut Perf, e| {
                let t = e["event_type"].as_str().expect("type");
                if !t.starts_with("order.") {
                    return;
                }
                if let Some(l) = prop(e, "latency_ms").as_f64() {
                    p.latencies.push(l);
                }
                if t == "order.filled" {
                    let pnl = prop(e, "pnl").as_f64().unwrap_or(0.0);
                    p.trades += 1;
                    p.pnl += pnl;
                    if pnl > 0.0 {
                        p.wins += 1;
                        p.profit += pnl;
                        p.best = Some(p.best.map_or(pnl, |b: f64| b.max(pnl)));
                    } else if pnl < 0.0 {
                        p.losses += 1;
                        p.loss -= pnl;
                        p.worst = Some(p.worst.map_or(pnl, |w: f64| w.min(pnl)));
                    }
                }
            },
        );
        // Events of a strategy without a trade or a latency contribute nothing.
        let expected: BTreeMap<_, _> = expected
            .into_iter()
            .filter(|(_, p)| p.trades > 0 || !p.latencies.is_empty())
            .collect();
        let (status, body) = env
            .get_json(&format!(
                "/api/v1/trading/strategies?interval={interval}&{}",
                range_query(events)
            ))
            .await;
        assert_eq!(status, 200, "{body}");
        let rows = body["strategies"].as_array().expect("rows");
        assert_eq!(rows.len(), expected.len(), "{interval}: {body}");
        for row in rows {
            let key = (
                row["strategy_id"].as_str().expect("id").to_string(),
                bucket_start(row),
            );
            let p = &expected[&key];
            let what = format!("{interval} {key:?}");
            assert_eq!(row["interval"], interval);
            assert_eq!(row["trades"], p.trades, "{what}");
            assert_eq!(row["winning_trades"], p.wins, "{what}");
            assert_eq!(row["losing_trades"], p.losses, "{what}");
            close(&row["total_pnl"], p.pnl, &what);
            close(&row["gross_profit"], p.profit, &what);
            close(&row["gross_loss"], p.loss, &what);
            let rate = if p.trades > 0 {
                p.wins as f64 / p.trades as f64
            } else {
                0.0
            };
            close(&row["win_rate"], rate, &what);
            match p.loss > 0.0 {
                true => close(&row["profit_factor"], p.profit / p.loss, &what),
                false => assert_eq!(row["profit_factor"], Value::Null, "{what}"),
            }
            match p.best {
                Some(b) => close(&row["largest_win"], b, &what),
                None => assert_eq!(row["largest_win"], Value::Null, "{what}"),
            }
            match p.worst {
                Some(w) => close(&row["largest_loss"], w, &what),
                None => assert_eq!(row["largest_loss"], Value::Null, "{what}"),
            }
            if p.latencies.is_empty() {
                assert_eq!(row["avg_latency_ms"], Value::Null, "{what}");
            } else {
                let avg = p.latencies.iter().sum::<f64>() / p.latencies.len() as f64;
                close(&row["avg_latency_ms"], avg, &what);
            }
        }
    }
}

#[derive(Default, Debug)]
struct Candle {
    prices: Vec<f64>,
    volume: f64,
    trades: i64,
}

async fn check_market(env: &TestEnv, events: &[Value]) {
    for (interval, secs) in [("1m", 60), ("1h", 3_600)] {
        let expected = buckets(
            events,
            secs,
            |e| {
                let t = e["event_type"].as_str()?;
                (t == "market.data.update" || t == "order.filled")
                    .then(|| prop(e, "symbol").as_str().map(str::to_string))?
            },
            |c: &mut Candle, e| {
                c.prices.push(num(prop(e, "price")));
                if e["event_type"] == "order.filled" {
                    c.trades += 1;
                    c.volume += num(prop(e, "quantity"));
                } else {
                    c.volume += num(prop(e, "volume"));
                }
            },
        );
        for symbol in SYMBOLS {
            let (status, body) = env
                .get_json(&format!(
                    "/api/v1/trading/market/{symbol}?interval={interval}&{}",
                    range_query(events)
                ))
                .await;
            assert_eq!(status, 200, "{body}");
            let candles = body["candles"].as_array().expect("candles");
            let mine: Vec<_> = expected.iter().filter(|((s, _), _)| s == symbol).collect();
            assert_eq!(candles.len(), mine.len(), "{symbol} {interval}");
            for (row, ((_, start), c)) in candles.iter().zip(mine) {
                let what = format!("{symbol} {interval} {start}");
                assert_eq!(bucket_start(row), *start, "{what}");
                close(&row["open"], c.prices[0], &what);
                close(&row["close"], *c.prices.last().expect("a price"), &what);
                let high = c.prices.iter().copied().fold(f64::MIN, f64::max);
                let low = c.prices.iter().copied().fold(f64::MAX, f64::min);
                close(&row["high"], high, &what);
                close(&row["low"], low, &what);
                close(&row["volume"], c.volume, &what);
                assert_eq!(row["trades_count"], c.trades, "{what}");
            }
        }
    }
    let (status, _) = env.get_json("/api/v1/trading/market/AAA?interval=2m").await;
    assert_eq!(status, 400, "unknown interval");
}

async fn check_sessions(env: &TestEnv, events: &[Value]) {
    for user in 0..5 {
        let user = format!("u{user}");
        let mine: Vec<&Value> = events.iter().filter(|e| e["user_id"] == user).collect();
        let mut sessions: BTreeMap<&str, Vec<&Value>> = BTreeMap::new();
        for e in &mine {
            sessions
                .entry(e["session_id"].as_str().expect("session"))
                .or_default()
                .push(e);
        }
        let (status, body) = env
            .get_json(&format!("/api/v1/users/{user}/sessions"))
            .await;
        assert_eq!(status, 200, "{body}");
        let rows = body["sessions"].as_array().expect("sessions");
        assert_eq!(rows.len(), sessions.len(), "{user}: {body}");
        for row in rows {
            let id = row["session_id"].as_str().expect("id");
            let evs = &sessions[id];
            let start = evs.iter().map(|e| ts_us(e)).min().expect("start");
            let end = evs.iter().map(|e| ts_us(e)).max().expect("end");
            let types: BTreeSet<&str> = evs
                .iter()
                .filter_map(|e| e["event_type"].as_str())
                .collect();
            let views = evs
                .iter()
                .filter(|e| e["event_type"] == "page.view")
                .count();
            assert_eq!(row["events"], evs.len(), "{id}");
            assert_eq!(row["page_views"], views, "{id}");
            assert_eq!(row["distinct_event_types"], types.len(), "{id}");
            close(
                &row["duration_seconds"],
                (end - start) as f64 / 1e6,
                "duration",
            );
            let at = |name: &str| {
                chrono::DateTime::parse_from_rfc3339(row[name].as_str().expect(name))
                    .expect("rfc3339")
                    .timestamp_micros()
            };
            assert_eq!(
                (at("session_start"), at("last_event")),
                (start, end),
                "{id}"
            );
            assert_eq!(row["active"], false, "an hour old: ended");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trading_tables_equal_a_from_scratch_computation() {
    let mut env = TestEnv::new("trading", 3).await;
    env.start().await;
    let mut events = events();
    events.shuffle(&mut rand::rngs::StdRng::seed_from_u64(5));
    // Sessions of u0 arrive over REST, the rest over Kafka.
    let (rest, kafka): (Vec<Value>, Vec<Value>) =
        events.iter().cloned().partition(|e| e["user_id"] == "u0");
    let r = env
        .http
        .post(env.url("/api/v1/events"))
        .json(&rest)
        .send()
        .await
        .expect("post");
    assert_eq!(r.status().as_u16(), 201);
    // Half the Kafka events, SIGKILL once some of them are stored, the
    // other half while the service is down: after the restart it resumes
    // from the stored offsets, and any message read again must not be
    // merged twice.
    let records = kafka_records(&env.topics, &kafka, 7);
    let (first, second) = records.split_at(records.len() / 2);
    env.produce(first).await;
    wait_for(
        "some Kafka events stored",
        Duration::from_secs(60),
        || async {
            (env.count("SELECT count(*) FROM events").await > rest.len() as i64).then_some(())
        },
    )
    .await;
    env.kill9();
    env.produce(second).await;
    env.start().await;
    env.wait_count(
        "SELECT count(*) FROM events",
        events.len() as i64,
        Duration::from_secs(120),
    )
    .await;
    check_orders(&env, &events).await;
    check_strategies(&env, &events).await;
    check_market(&env, &events).await;
    check_sessions(&env, &events).await;
    // Rows merge, never duplicate: one row per order and per session.
    assert_eq!(env.count("SELECT count(*) FROM order_analytics").await, 60);
    assert_eq!(env.count("SELECT count(*) FROM user_behavior").await, 10);
    env.stop().await;
}

/// Two transactions merging the same NEW key at once (the sink writers of
/// two processes, or the sink and the REST path): the second must wait
/// for the first and merge into its row, not overwrite it. The first is
/// held open until the second is seen waiting on a lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_merges_of_a_new_key_add_up() {
    use dataflows::event::{Event, EventSource};
    use dataflows::trading::TradingBatch;

    let env = TestEnv::new("mergerace", 1).await;
    let out = env.cli(&["migrate"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let batch = |t: i64| {
        TradingBatch::of([&Event {
            id: uuid::Uuid::new_v4(),
            event_type: "page.view".into(),
            user_id: Some("racer".into()),
            session_id: Some("race".into()),
            properties: format!(
                r#"{{"order_id":"race-order","symbol":"RACE","quantity":1,"price":{t}}}"#
            ),
            timestamp_us: 1_700_000_000_000_000 + t,
            created_at_us: 0,
            source: EventSource::Rest,
            parsed: Default::default(),
        }])
        .seal()
    };
    let mut a = env.pg().await;
    let b = env.pg().await;
    let b_pid: i32 = b
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("pid")
        .get(0);
    let first = a.transaction().await.expect("begin a");
    sink::trading::merge(&first, &[&batch(1)])
        .await
        .expect("merge a");
    let second = tokio::spawn(async move {
        let mut b = b;
        let tx = b.transaction().await.expect("begin b");
        sink::trading::merge(&tx, &[&batch(2)])
            .await
            .expect("merge b");
        tx.commit().await.expect("commit b");
    });
    let watcher = env.pg().await;
    wait_for("the second merge to wait on a lock", Duration::from_secs(30), || async {
        let waiting: bool = watcher
            .query_one(
                "SELECT count(*) > 0 FROM pg_stat_activity WHERE pid = $1 AND wait_event_type = 'Lock'",
                &[&b_pid],
            )
            .await
            .expect("pg_stat_activity")
            .get(0);
        waiting.then_some(())
    })
    .await;
    first.commit().await.expect("commit a");
    second.await.expect("second merge");
    assert_eq!(
        env.count("SELECT events FROM user_behavior WHERE session_id = 'race'")
            .await,
        2,
        "both merges count"
    );
}
