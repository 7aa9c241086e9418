//! Windowed aggregates end to end, against the real services: trading
//! events with skewed prices spread over several hours of event time (out
//! of order, many of them older than the 1m windows' in-memory horizon)
//! go through Kafka (written by Kafka's own console producer); every 1m and 1h window that `/api/v1/metrics` returns
//! is compared with a from-scratch computation: count, sum, min and max
//! exactly, p50/p95/p99 within 1 %. The same holds after SIGKILL
//! mid-ingestion and a restart, and for a dimension filter.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DurationRound, Utc};
use common::produce::produce_independently;
use common::*;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

const SYMBOLS: &[&str] = &["BTCUSDT", "ETHUSDT", "SOLUSDT"];

/// Events over the last `hours` of event time, shuffled.
fn skewed_events(n: usize, seed: u64, now: chrono::DateTime<Utc>, hours: i64) -> Vec<Value> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n)
        .map(|i| {
            let symbol = SYMBOLS[(rng.random::<f64>().powi(2) * SYMBOLS.len() as f64) as usize % SYMBOLS.len()];
            // Lognormal prices with a heavy upper tail.
            let price = (8.0 + 1.2 * normal(&mut rng)).exp();
            let quantity = (rng.random::<f64>() * 10.0 * 1000.0).round() / 1000.0 + 0.001;
            let ts = now - chrono::Duration::milliseconds(rng.random_range(0..hours * 3_600_000));
            let event_type = if rng.random::<f64>() < 0.6 { "order.filled" } else { "order.placed" };
            json!({
                "event_type": event_type,
                "user_id": format!("u{}", i % 50),
                "properties": {"symbol": symbol, "side": if rng.random::<bool>() { "BUY" } else { "SELL" }, "price": price, "quantity": quantity, "strategy_id": format!("s{}", i % 3)},
                "timestamp": ts.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            })
        })
        .collect()
}

/// From-scratch windows of `metric` (`<type>.price` or `<type>.notional` or
/// `events.count.<type>`) for an interval of `len` seconds: start → values.
fn oracle(
    events: &[Value],
    metric: &str,
    len: i64,
    filter: &[(&str, &str)],
) -> BTreeMap<i64, Vec<f64>> {
    let mut out: BTreeMap<i64, Vec<f64>> = BTreeMap::new();
    for e in events {
        let t = e["event_type"].as_str().expect("type");
        if filter.iter().any(|(k, v)| e["properties"][*k] != *v) {
            continue;
        }
        let value = if metric == format!("events.count.{t}") {
            Some(0.0)
        } else if metric == format!("{t}.price") {
            e["properties"]["price"].as_f64()
        } else if metric == format!("{t}.notional") {
            Some(
                e["properties"]["price"].as_f64().expect("price")
                    * e["properties"]["quantity"].as_f64().expect("qty"),
            )
        } else {
            None
        };
        let Some(v) = value else { continue };
        let ts = chrono::DateTime::parse_from_rfc3339(e["timestamp"].as_str().expect("ts"))
            .expect("rfc3339");
        let second = ts.timestamp();
        out.entry(second.div_euclid(len) * len).or_default().push(v);
    }
    for values in out.values_mut() {
        values.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
    }
    out
}

fn close(got: &Value, exact: f64, what: &str) {
    let got = got.as_f64().unwrap_or_else(|| panic!("{what}: missing"));
    assert!(
        (got - exact).abs() <= 0.01 * exact.abs(),
        "{what}: {got} is not within 1% of {exact}"
    );
}

async fn check_metric(
    env: &TestEnv,
    events: &[Value],
    metric: &str,
    interval: &str,
    filter: &[(&str, &str)],
    range: (&str, &str),
) -> bool {
    let len = match interval {
        "1m" => 60,
        "15m" => 900,
        _ => 3_600,
    };
    let expected = oracle(events, metric, len, filter);
    let mut path = format!(
        "/api/v1/metrics?metric_name={metric}&interval={interval}&aggregation=sum&start_time={}&end_time={}",
        range.0, range.1
    );
    for (k, v) in filter {
        path.push_str(&format!("&{k}={v}"));
    }
    let (status, body) = env.get_json(&path).await;
    assert_eq!(status, 200, "{body}");
    // symbol × strategy_id is not a kept dimension set: answered exactly
    // from the raw events in PostgreSQL, never from the live windows.
    let kept = filter.len() < 2 || filter.iter().all(|(k, _)| *k != "strategy_id");
    if !kept {
        assert_eq!(body["result"]["source"], "postgres", "{body}");
    }
    let points = body["result"]["data_points"].as_array().expect("points");
    let total: usize = expected.values().map(Vec::len).sum();
    if body["result"]["total_count"].as_i64() != Some(total as i64)
        || points.len() != expected.len()
    {
        return false;
    }
    let count_only = metric.starts_with("events.count.");
    for (point, (start, values)) in points.iter().zip(&expected) {
        let ts = chrono::DateTime::parse_from_rfc3339(point["timestamp"].as_str().expect("ts"))
            .expect("ts");
        assert_eq!(ts.timestamp(), *start, "{metric} {interval}: window order");
        assert_eq!(
            point["count"].as_i64(),
            Some(values.len() as i64),
            "{metric} {interval} {start}: count"
        );
        if count_only {
            assert_eq!(point["value"].as_f64(), Some(values.len() as f64));
            continue;
        }
        let sum: i128 = values.iter().map(|v| to_nano(*v)).sum();
        assert_eq!(
            point["sum"].as_f64(),
            Some(sum as f64 / 1e9),
            "{metric} {interval} {start}: sum"
        );
        assert_eq!(
            point["value"], point["sum"],
            "aggregation=sum picks the sum"
        );
        assert_eq!(
            point["min"].as_f64(),
            Some(to_nano(values[0]) as f64 / 1e9),
            "{metric} {start}: min"
        );
        assert_eq!(
            point["max"].as_f64(),
            Some(to_nano(values[values.len() - 1]) as f64 / 1e9),
            "{metric} {start}: max"
        );
        for (q, name) in [(0.5, "p50"), (0.95, "p95"), (0.99, "p99")] {
            let estimate = point[name].as_f64().expect(name);
            assert!(
                point["min"].as_f64() <= Some(estimate) && Some(estimate) <= point["max"].as_f64(),
                "{metric} {interval} {start}: {name} {estimate} outside [min, max] {point}"
            );
            close(
                &point[name],
                exact_quantile(values, q),
                &format!("{metric} {interval} {start} {name}"),
            );
        }
    }
    true
}

async fn check_all(env: &TestEnv, events: &[Value], range: (&str, &str)) {
    for (metric, filter) in [
        ("order.filled.price", &[][..]),
        ("order.filled.notional", &[]),
        ("events.count.order.placed", &[]),
        ("order.filled.price", &[("symbol", "ETHUSDT")]),
        (
            "order.filled.price",
            &[("symbol", "ETHUSDT"), ("strategy_id", "s1")],
        ),
    ] {
        for interval in ["1m", "15m", "1h"] {
            wait_for(
                &format!("{metric} {interval} {filter:?} to match"),
                Duration::from_secs(60),
                || async {
                    check_metric(env, events, metric, interval, filter, range)
                        .await
                        .then_some(())
                },
            )
            .await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windows_match_an_oracle_before_and_after_sigkill() {
    const N: usize = 20_000;
    let mut env = TestEnv::new("metrics", 4).await;
    // No compaction until the clean restart below: the restart after
    // SIGKILL restores from pending rollup deltas alone, and history is
    // read from them.
    env.set_rollup_compaction_interval("1h");
    env.start().await;
    let now = Utc::now();
    let events = skewed_events(N, 5, now, 5);
    let second = now
        .duration_trunc(chrono::Duration::seconds(1))
        .expect("trunc");
    let start =
        (second - chrono::Duration::hours(6)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let end =
        (second + chrono::Duration::hours(1)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);

    // Kafka's own console producer, not this project's client.
    produce_independently(&env, &events[..N / 2], "first");
    wait_for("ingestion under way", Duration::from_secs(120), || async {
        (env.count("SELECT count(*) FROM events").await >= (N / 8) as i64).then_some(())
    })
    .await;
    env.kill9();
    produce_independently(&env, &events[N / 2..], "second");
    env.start().await;
    env.wait_count(
        "SELECT count(*) FROM events",
        N as i64,
        Duration::from_secs(180),
    )
    .await;
    check_all(&env, &events, (&start, &end)).await;
    assert_eq!(
        env.count("SELECT count(*) FROM metric_aggregations").await,
        0,
        "nothing compacted yet"
    );
    assert!(
        env.count("SELECT count(*) FROM metric_aggregation_deltas")
            .await
            > 0
    );

    // The historical part is now cached in Redis under the same key.
    let path = format!("/api/v1/metrics?metric_name=order.filled.price&interval=1m&start_time={start}&end_time={end}");
    let (_, first) = env.get_json(&path).await;
    let (_, again) = env.get_json(&path).await;
    assert_eq!(again["cached"], true, "{again}");
    assert_eq!(
        first["result"]["data_points"],
        again["result"]["data_points"]
    );
    assert!(
        first["result"]["as_of"].is_string(),
        "recent windows come from live state"
    );

    // Bad parameters say which.
    for (query, param) in [
        ("metric_name=x&interval=2m", "interval"),
        ("interval=1m", "metric_name"),
        ("metric_name=x&start_time=2025-01-02T00:00:00Z&end_time=2025-01-01T00:00:00Z", "end_time"),
        ("metric_name=x&interval=1m&start_time=2020-01-01T00:00:00Z&end_time=2025-01-01T00:00:00Z", "end_time"),
        ("metric_name=x&aggregation=median", "aggregation"),
    ] {
        let (status, body) = env.get_json(&format!("/api/v1/metrics?{query}")).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["details"]["parameter"], param, "{query}: {body}");
    }
    let (status, names) = env.get_json("/api/v1/metrics/names").await;
    assert_eq!(status, 200);
    let names: Vec<&str> = names["metric_names"]
        .as_array()
        .expect("names")
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    for wanted in [
        "order.filled.price",
        "order.filled.notional",
        "order.filled.quantity",
        "events.count.order.placed",
        "trading.order_fill_rate",
        "trading.total_volume",
    ] {
        assert!(names.contains(&wanted), "{wanted} missing from {names:?}");
    }

    // Derived trading metrics: fill rate per window and the volume of fills.
    let placed = oracle(&events, "events.count.order.placed", 3_600, &[]);
    let filled = oracle(&events, "events.count.order.filled", 3_600, &[]);
    let (_, rate) = env
        .get_json(&format!("/api/v1/metrics?metric_name=trading.order_fill_rate&interval=1h&start_time={start}&end_time={end}"))
        .await;
    let points = rate["result"]["data_points"].as_array().expect("points");
    assert_eq!(
        points.len(),
        placed
            .keys()
            .chain(filled.keys())
            .collect::<std::collections::BTreeSet<_>>()
            .len()
    );
    for p in points {
        let s = chrono::DateTime::parse_from_rfc3339(p["timestamp"].as_str().expect("ts"))
            .expect("ts")
            .timestamp();
        let (np, nf) = (
            placed.get(&s).map_or(0, Vec::len),
            filled.get(&s).map_or(0, Vec::len),
        );
        assert_eq!(
            (p["placed"].as_u64(), p["filled"].as_u64()),
            (Some(np as u64), Some(nf as u64)),
            "{p}"
        );
        if np > 0 {
            assert_eq!(p["value"].as_f64(), Some(nf as f64 / np as f64));
        }
    }
    let (_, volume) = env
        .get_json(&format!("/api/v1/metrics?metric_name=trading.total_volume&interval=1h&start_time={start}&end_time={end}"))
        .await;
    let (_, notional) = env
        .get_json(&format!("/api/v1/metrics?metric_name=order.filled.notional&interval=1h&aggregation=sum&start_time={start}&end_time={end}"))
        .await;
    assert_eq!(
        volume["result"]["data_points"],
        notional["result"]["data_points"]
    );
    assert_eq!(volume["result"]["aggregation"], "sum");

    // One short compaction turn, run here so that its state can be seen:
    // the rows of the short intervals (1m, 5m, 15m) hold every delta, and
    // their sums wait as 30m deltas for the long intervals, which count
    // them instead of the 1m ones. Restored from and read, that state
    // still equals the oracle.
    env.stop().await;
    {
        let mut client = env.pg().await;
        // The service's intervals: the test's config leaves the defaults.
        let intervals: Vec<_> = dataflows::windows::INTERVALS
            .iter()
            .map(|(name, _)| dataflows::windows::Interval::parse(name).expect("interval"))
            .collect();
        let folds = sink::rollups::Folds::of(&intervals);
        let partitions = sink::partitions::Partitions::default();
        // Deltas read and rows rewritten in parts of 7 (the service's are
        // 20,000), so that the turn's deltas and rows span several parts.
        let taken = sink::rollups::compact(&mut client, &partitions, &folds, false, i64::MAX, 7)
            .await
            .expect("a short compaction turn");
        assert!(taken > 7, "the turn's deltas span several parts");
    }
    let pending = |interval: &str| {
        format!("SELECT count(*) FROM metric_aggregation_deltas WHERE \"interval\" = '{interval}'")
    };
    let rows = |interval: &str| {
        format!("SELECT count(*) FROM metric_aggregations WHERE \"interval\" = '{interval}'")
    };
    assert_eq!(env.count(&pending("1m")).await, 0);
    assert!(env.count(&pending("30m")).await > 0);
    assert!(env.count(&rows("15m")).await > 0);
    assert!(
        env.count(&rows("1m")).await > 7,
        "the turn's rows span several parts"
    );
    assert_eq!(
        env.count(&rows("30m")).await + env.count(&rows("1h")).await,
        0
    );
    env.start().await;
    check_all(&env, &events, (&start, &end)).await;

    // With compaction on, every delta is folded into metric_aggregations,
    // whose readable columns then equal the oracle.
    env.stop().await;
    env.set_rollup_compaction_interval("100ms");
    env.start().await;
    env.wait_count(
        "SELECT count(*) FROM metric_aggregation_deltas",
        0,
        Duration::from_secs(60),
    )
    .await;
    let expected = oracle(&events, "order.filled.price", 3_600, &[]);
    let rows = env
        .pg()
        .await
        .query(
            "SELECT extract(epoch FROM time_bucket)::bigint, count, sum, min, max
             FROM metric_aggregations
             WHERE metric_name = 'order.filled.price' AND \"interval\" = '1h'
               AND dimensions = '{}'::jsonb
             ORDER BY time_bucket",
            &[],
        )
        .await
        .expect("rollup rows");
    assert_eq!(rows.len(), expected.len(), "1h rollup rows");
    for (row, (start, values)) in rows.iter().zip(&expected) {
        assert_eq!(row.get::<_, i64>(0), *start);
        assert_eq!(row.get::<_, i64>(1), values.len() as i64, "{start}: count");
        let sum: i128 = values.iter().map(|v| to_nano(*v)).sum();
        assert_eq!(
            row.get::<_, Option<f64>>(2),
            Some(sum as f64 / 1e9),
            "{start}: sum"
        );
        assert_eq!(
            row.get::<_, Option<f64>>(3),
            Some(to_nano(values[0]) as f64 / 1e9)
        );
        assert_eq!(
            row.get::<_, Option<f64>>(4),
            Some(to_nano(values[values.len() - 1]) as f64 / 1e9)
        );
    }
    check_all(&env, &events, (&start, &end)).await;

    // A clean restart restores live windows from the stored rollups.
    env.stop().await;
    env.start().await;
    check_all(&env, &events, (&start, &end)).await;
    env.stop().await;
}
