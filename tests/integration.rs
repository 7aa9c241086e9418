//! Integration tests against the real Kafka, PostgreSQL and Redis started
//! by `make services`: events through Kafka and REST end up exactly once
//! in PostgreSQL and in `/api/v1/events/stats`, bad input becomes dead
//! letters without stopping ingestion, and a SIGKILL mid-ingestion loses
//! and duplicates nothing.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DurationRound, Utc};
use common::produce::spawn_independent_producers;
use common::*;
use serde_json::{json, Value};

fn aligned_range(base: chrono::DateTime<Utc>) -> (String, String) {
    let second = base
        .duration_trunc(chrono::Duration::seconds(1))
        .expect("trunc");
    let start =
        (second - chrono::Duration::hours(1)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let end =
        (second + chrono::Duration::hours(1)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    (start, end)
}

async fn wait_for_stats(
    env: &TestEnv,
    start: &str,
    end: &str,
    expected: &BTreeMap<String, i64>,
    source: &str,
) -> Value {
    let total: i64 = expected.values().sum();
    wait_for(
        "stats to match the oracle",
        Duration::from_secs(60),
        || async {
            let body = env.stats(start, end).await;
            (body["total_events"].as_i64() == Some(total) && body["source"] == source)
                .then_some(body)
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_events_land_exactly_once_and_bad_messages_become_dead_letters() {
    let mut env = TestEnv::new("kafka", 3).await;
    env.start().await;
    let base = Utc::now();
    let events = trading_events(3_000, 11, base, 600);
    let records = kafka_records(&env.topics, &events, 101);
    let (first, second) = records.split_at(1_500);
    env.produce(first).await;
    env.produce(&[
        (env.topics[0].clone(), "bad".into(), "{not json".into()),
        (
            env.topics[3].clone(),
            "bad".into(),
            r#"{"user_id":"u1"}"#.into(),
        ),
    ])
    .await;
    env.produce(second).await;

    env.wait_count(
        "SELECT count(*) FROM events",
        3_000,
        Duration::from_secs(120),
    )
    .await;
    assert_eq!(
        env.count("SELECT count(DISTINCT id) FROM events").await,
        3_000
    );
    assert_eq!(
        env.count(
            "SELECT count(DISTINCT (kafka_topic, kafka_partition, kafka_offset)) FROM events"
        )
        .await,
        3_000
    );
    assert!(
        env.count("SELECT count(DISTINCT (kafka_topic, kafka_partition)) FROM events")
            .await
            >= 8,
        "events should come from several partitions of every topic"
    );
    env.wait_count(
        "SELECT count(*) FROM dead_letters",
        2,
        Duration::from_secs(30),
    )
    .await;
    let reasons: Vec<String> = env
        .pg()
        .await
        .query("SELECT reason FROM dead_letters ORDER BY reason", &[])
        .await
        .expect("reasons")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(reasons, vec!["malformed_json", "missing_field"]);
    assert_eq!(
        env.count("SELECT sum(next_offset)::bigint FROM kafka_offsets")
            .await,
        3_002,
        "offsets cover every message, dead letters included"
    );

    let expected = by_type(&events);
    let (start, end) = aligned_range(base);
    let live = wait_for_stats(&env, &start, &end, &expected, "live").await;
    assert_eq!(stats_map(&live), expected);
    assert!(live["as_of"].is_string());
    // A range that is not whole seconds is answered from PostgreSQL, exactly.
    let start_frac = start.replace('Z', ".5Z").replace(":00.5Z", ":00.500Z");
    let from_pg = env.stats(&start_frac, &end).await;
    assert_eq!(from_pg["source"], "postgres", "{from_pg}");
    assert_eq!(stats_map(&from_pg), expected);

    let metrics = env.prometheus().await;
    assert!(
        metrics.contains("analytics_events_ingested_total{source=\"kafka\"} 3000"),
        "{metrics}"
    );
    assert!(metrics.contains("analytics_events_failed_total{reason=\"malformed_json\"} 1"));
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_events_are_committed_before_201_and_stored_once() {
    let mut env = TestEnv::new("rest", 1).await;
    env.start().await;
    let id = uuid::Uuid::new_v4();
    let event =
        json!({"id": id, "event_type": "rest.test", "user_id": "u1", "properties": {"a": 1}});
    for attempt in 0..2 {
        let r = env
            .http
            .post(env.url("/api/v1/events"))
            .json(&event)
            .send()
            .await
            .expect("post");
        assert_eq!(r.status().as_u16(), 201, "attempt {attempt}");
        let body: Value = r.json().await.expect("json");
        assert_eq!(body["success"], true);
        assert_eq!(body["event_id"], id.to_string());
        // Committed before the answer: visible at once, and only once.
        let n = env
            .count(&format!("SELECT count(*) FROM events WHERE id = '{id}'"))
            .await;
        assert_eq!(n, 1, "attempt {attempt}");
    }
    let batch = json!([
        {"event_type": "rest.test"},
        {"event_type": "rest.test", "timestamp": Utc::now().to_rfc3339()},
        {"event_type": "rest.other", "session_id": "s1"},
    ]);
    let r = env
        .http
        .post(env.url("/api/v1/events"))
        .json(&batch)
        .send()
        .await
        .expect("post");
    assert_eq!(r.status().as_u16(), 201);
    let body: Value = r.json().await.expect("json");
    let ids = body["event_ids"].as_array().expect("ids");
    assert_eq!(ids.len(), 3);
    for id in ids {
        let n = env
            .count(&format!(
                "SELECT count(*) FROM events WHERE id = '{}'",
                id.as_str().expect("id")
            ))
            .await;
        assert_eq!(n, 1);
    }

    let r = env
        .http
        .post(env.url("/api/v1/events"))
        .body(r#"[{"event_type":"ok"},{"properties":{}}]"#)
        .send()
        .await
        .expect("post");
    assert_eq!(r.status().as_u16(), 400);
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["details"][0]["index"], 1, "{body}");
    assert_eq!(body["details"][0]["reason"], "missing_field");
    assert_eq!(
        env.count("SELECT count(*) FROM events WHERE event_type = 'ok'")
            .await,
        0,
        "a refused batch stores nothing"
    );
    assert_eq!(
        env.count("SELECT count(*) FROM dead_letters WHERE source = 'rest'")
            .await,
        1
    );

    let (status, listed) = env
        .get_json("/api/v1/events?event_type=rest.test&limit=10")
        .await;
    assert_eq!(status, 200);
    assert_eq!(listed["count"], 3);
    let (status, bad) = env.get_json("/api/v1/events?limit=0").await;
    assert_eq!(status, 400);
    assert!(
        bad["error"].as_str().unwrap_or("").contains("limit"),
        "{bad}"
    );

    let (start, end) = aligned_range(Utc::now());
    let expected: BTreeMap<String, i64> =
        [("rest.test".to_string(), 3), ("rest.other".to_string(), 1)].into();
    let live = wait_for_stats(&env, &start, &end, &expected, "live").await;
    assert_eq!(stats_map(&live), expected);
    env.stop().await;
}

/// How the service is stopped in the middle of a backlog.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Stop {
    /// SIGKILL, no goodbye.
    Kill,
    /// SIGTERM: it must exit, successfully, within its grace period
    /// (`server.shutdown_timeout`, 10 s here), even with a backlog waiting.
    Term,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_ingestion_loses_nothing_and_counts_nothing_twice() {
    stop_mid_ingestion(Stop::Kill).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_a_backlog_ends_within_the_grace_period_and_loses_nothing() {
    stop_mid_ingestion(Stop::Term).await;
}

async fn stop_mid_ingestion(stop: Stop) {
    const N: i64 = 100_000;
    let mut env = TestEnv::new(&format!("{stop:?}").to_lowercase(), 6).await;
    // Few rows in flight, so that the stop lands with most of the backlog
    // still unread: a source reads on while one batch commits, and with
    // the default limit a graceful stop could drain all N.
    env.set_max_pending_rows(5_000);
    env.start().await;
    let base = Utc::now();
    let events = trading_events(N as usize, 42, base, 1_800);
    let mut producers = spawn_independent_producers(&env, &events, "all");

    wait_for("ingestion under way", Duration::from_secs(180), || async {
        let n = env.count("SELECT count(*) FROM events").await;
        (n >= N / 5).then_some(n)
    })
    .await;
    match stop {
        Stop::Kill => env.kill9(),
        Stop::Term => {
            // The grace period plus what a loaded machine needs to reap it.
            let status = env.stop_within(Duration::from_secs(10 + 10)).await;
            assert!(
                status.success(),
                "exit status {status}; log:\n{}",
                env.log()
            );
        }
    }
    let stored_at_kill = env.count("SELECT count(*) FROM events").await;
    assert!(
        stored_at_kill < N,
        "the kill should land mid-ingestion ({stored_at_kill} stored)"
    );
    for p in producers.iter_mut() {
        let status = p.wait().expect("producer exit");
        assert!(status.success(), "console producer failed: {status}");
    }

    env.start().await;
    wait_for(
        "all events in postgres",
        Duration::from_secs(300),
        || async {
            let n = env.count("SELECT count(*) FROM events").await;
            assert!(n <= N, "more rows than events produced: {n}");
            (n == N).then_some(())
        },
    )
    .await;
    assert_eq!(env.count("SELECT count(DISTINCT id) FROM events").await, N);
    assert_eq!(
        env.count("SELECT sum(count)::bigint FROM event_counts")
            .await,
        N
    );
    assert_eq!(
        env.count("SELECT sum(next_offset)::bigint FROM kafka_offsets")
            .await,
        N
    );
    assert_eq!(env.count("SELECT count(*) FROM dead_letters").await, 0);

    let expected = by_type(&events);
    let (start, end) = aligned_range(base);
    let live = wait_for_stats(&env, &start, &end, &expected, "live").await;
    assert_eq!(stats_map(&live), expected, "live stats after restart");
    let start_frac = start.replace('Z', ".250Z");
    let from_pg = env.stats(&start_frac, &end).await;
    assert_eq!(from_pg["source"], "postgres");
    assert_eq!(stats_map(&from_pg), expected, "stats from postgresql");

    // A second restart, after a clean stop, still agrees. Idle, the stop
    // waits for nothing: the sink writer finishes as soon as the workers
    // have (it used to wait out the grace period, then warn).
    let logged_before = env.log().len();
    let status = env.stop_within(Duration::from_secs(10 + 10)).await;
    assert!(status.success(), "exit status {status}");
    let stop_log = env.log().split_off(logged_before);
    assert!(stop_log.contains("stopped"), "{stop_log}");
    assert!(
        !stop_log.contains("did not finish in time") && !stop_log.contains("grace period spent"),
        "an idle service's stop: {stop_log}"
    );
    env.start().await;
    let live = wait_for_stats(&env, &start, &end, &expected, "live").await;
    assert_eq!(
        stats_map(&live),
        expected,
        "live stats after a clean restart"
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_pauses_ingestion_and_resumes_without_loss() {
    let proxy = Proxy::start(5432).await;
    let mut env = TestEnv::new("outage", 2).await;
    env.set_ports(proxy.port, 6379);
    env.start().await;
    let base = Utc::now();
    let events = trading_events(2_000, 7, base, 300);
    let records = kafka_records(&env.topics, &events, events.len());
    env.produce(&records[..1_000]).await;
    env.wait_count(
        "SELECT count(*) FROM events",
        1_000,
        Duration::from_secs(60),
    )
    .await;

    proxy.cut();
    let health = wait_for(
        "health to report postgresql down",
        Duration::from_secs(30),
        || async {
            let (status, body) = env.get_json("/health").await;
            (status == 503).then_some(body)
        },
    )
    .await;
    assert_eq!(health["status"], "unhealthy");
    assert_eq!(health["database"], "disconnected");
    let r = env
        .http
        .post(env.url("/api/v1/events"))
        .json(&json!({"event_type": "during.outage"}))
        .send()
        .await
        .expect("post");
    assert_eq!(
        r.status().as_u16(),
        503,
        "REST refuses while PostgreSQL is down"
    );
    env.produce(&records[1_000..]).await;
    // Readiness covers dependencies and staleness; liveness does not, or
    // an outage of PostgreSQL would become a restart storm.
    let ready = wait_for(
        "ready to report a stalled dataflow",
        Duration::from_secs(60),
        || async {
            let (status, body) = env.get_json("/ready").await;
            (status == 503 && body["dataflow"] == "stalled").then_some(body)
        },
    )
    .await;
    assert_eq!(ready["database"], "disconnected", "{ready}");
    let (status, live) = env.get_json("/livez").await;
    assert_eq!(status, 200, "liveness during a PostgreSQL outage: {live}");
    assert_eq!(live["dataflow"], "stalled", "{live}");
    let age = metric_value(&env.prometheus().await, "analytics_live_as_of_age_seconds");
    assert!(
        age > 5.0,
        "as_of age {age} s while stalled past the 5 s bound"
    );
    // The live stats never run ahead of what is durable.
    let (start, end) = aligned_range(base);
    let during = env.stats(&start, &end).await;
    assert_eq!(during["source"], "live");
    assert!(
        during["total_events"].as_i64().unwrap_or(i64::MAX) <= 1_000,
        "{during}"
    );

    proxy.restore();
    env.wait_count(
        "SELECT count(*) FROM events",
        2_000,
        Duration::from_secs(120),
    )
    .await;
    assert_eq!(
        env.count("SELECT count(DISTINCT id) FROM events").await,
        2_000
    );
    assert_eq!(
        env.count("SELECT count(*) FROM events WHERE event_type = 'during.outage'")
            .await,
        0
    );
    let expected = by_type(&events);
    let live = wait_for_stats(&env, &start, &end, &expected, "live").await;
    assert_eq!(stats_map(&live), expected);
    let (status, health) = env.get_json("/health").await;
    assert_eq!(status, 200, "{health}");
    wait_for("ready again", Duration::from_secs(60), || async {
        let (status, body) = env.get_json("/ready").await;
        (status == 200 && body["dataflow"] == "running").then_some(())
    })
    .await;

    // SIGTERM while rows wait for an unreachable PostgreSQL: the process
    // still ends within its grace period (10 s), abandoning them, and the
    // next start reads them again from Kafka.
    let consumed = metric_value(
        &env.prometheus().await,
        "analytics_kafka_messages_consumed_total",
    );
    let more = trading_events(500, 8, base, 300);
    proxy.cut();
    env.produce(&kafka_records(&env.topics, &more, more.len()))
        .await;
    wait_for("the new records read", Duration::from_secs(60), || async {
        let now = metric_value(
            &env.prometheus().await,
            "analytics_kafka_messages_consumed_total",
        );
        (now >= consumed + 500.0).then_some(())
    })
    .await;
    let status = env.stop_within(Duration::from_secs(10 + 10)).await;
    assert!(
        status.success(),
        "exit status {status}; log:\n{}",
        env.log()
    );
    assert!(
        env.log().contains("shutdown grace period spent"),
        "what was abandoned is logged; log:\n{}",
        env.log()
    );
    proxy.restore();
    env.start().await;
    env.wait_count(
        "SELECT count(*) FROM events",
        2_500,
        Duration::from_secs(120),
    )
    .await;
    assert_eq!(
        env.count("SELECT count(DISTINCT id) FROM events").await,
        2_500
    );
    let mut all = events.clone();
    all.extend(more);
    let expected = by_type(&all);
    let live = wait_for_stats(&env, &start, &end, &expected, "live").await;
    assert_eq!(stats_map(&live), expected, "after an abandoned shutdown");
    env.stop().await;
}

/// Every event of `events` is stored exactly once, and every process of
/// the cluster serves the oracle's live stats over `range`.
async fn stored_once_and_served_by_all(
    cluster: &[&TestEnv],
    events: &[Value],
    range: &(String, String),
) {
    let n = events.len() as i64;
    cluster[0]
        .wait_count("SELECT count(*) FROM events", n, Duration::from_secs(180))
        .await;
    assert_eq!(
        cluster[0]
            .count("SELECT count(DISTINCT id) FROM events")
            .await,
        n
    );
    let expected = by_type(events);
    for env in cluster {
        let live = wait_for_stats(env, &range.0, &range.1, &expected, "live").await;
        assert_eq!(stats_map(&live), expected, "process {}", env.name);
    }
}

/// The sum of the samples of `name` (over all its label values) in
/// Prometheus text.
fn metric_value(text: &str, name: &str) -> f64 {
    let values: Vec<f64> = text
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            let rest = match rest.strip_prefix('{') {
                Some(labelled) => &labelled[labelled.find('}')? + 1..],
                None => rest,
            };
            rest.strip_prefix(' ')?.trim().parse().ok()
        })
        .collect();
    assert!(!values.is_empty(), "{name} not in /metrics:\n{text}");
    values.iter().sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_degraded_but_serving_without_redis() {
    let unused = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let mut env = TestEnv::new("noredis", 1).await;
    env.set_ports(5432, unused);
    env.start().await;
    let (status, health) = env.get_json("/health").await;
    assert_eq!(status, 200, "{health}");
    assert_eq!(health["status"], "degraded");
    assert_eq!(health["cache"], "disconnected");
    assert_eq!(health["database"], "connected");
    let r = env
        .http
        .post(env.url("/api/v1/events"))
        .json(&json!({"event_type": "still.served"}))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status().as_u16(), 201);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_process_cluster_stores_once_and_every_process_serves_the_same_counts() {
    let mut p0 = TestEnv::new("cluster", 4).await;
    let mut p1 = p0.peer("p1");
    let hostfile = p0.config_path.with_file_name("hosts.txt");
    std::fs::write(
        &hostfile,
        format!("127.0.0.1:{}\n127.0.0.1:{}\n", free_port(), free_port()),
    )
    .expect("hostfile");
    for (env, index) in [(&mut p0, "0"), (&mut p1, "1")] {
        env.args = ["-w", "2", "-n", "2", "-p", index, "--hostfile"]
            .iter()
            .map(|s| s.to_string())
            .chain([hostfile.display().to_string()])
            .collect();
        env.spawn();
    }
    p0.wait_ready().await;
    p1.wait_ready().await;

    let base = Utc::now();
    let mut events = trading_events(4_000, 99, base, 120);
    let records = kafka_records(&p0.topics, &events, events.len());
    p0.produce(&records).await;
    let posted = json!({"event_type": "cluster.rest", "timestamp": base.to_rfc3339()});
    let r = p1
        .http
        .post(p1.url("/api/v1/events"))
        .json(&posted)
        .send()
        .await
        .expect("post");
    assert_eq!(r.status().as_u16(), 201);
    events.push(posted);

    let range = aligned_range(base);
    stored_once_and_served_by_all(&[&p0, &p1], &events, &range).await;

    // Losing a peer under load ends the survivor with a failure status
    // within 15 s, instead of serving frozen live state as healthy.
    let load = trading_events(20_000, 101, base, 120);
    p0.produce(&kafka_records(&p0.topics, &load, load.len()))
        .await;
    events.extend(load);
    p1.kill9();
    let killed = std::time::Instant::now();
    let status = p0.wait_exit(Duration::from_secs(15)).await;
    eprintln!(
        "survivor exited {:?} after its peer's SIGKILL",
        killed.elapsed()
    );
    assert_eq!(
        status.code(),
        Some(70),
        "survivor's exit status; log:\n{}",
        p0.log()
    );
    assert!(
        p0.log().contains("dataflow thread panicked"),
        "one clear line names the cause; log:\n{}",
        p0.log()
    );
    // Restarted, the cluster resumes exactly once from PostgreSQL.
    p0.spawn();
    p1.spawn();
    p0.wait_ready().await;
    p1.wait_ready().await;
    let more = trading_events(1_000, 100, base, 120);
    p1.produce(&kafka_records(&p1.topics, &more, more.len()))
        .await;
    events.extend(more);
    stored_once_and_served_by_all(&[&p0, &p1], &events, &range).await;
    p1.stop().await;
    p0.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_panic_ends_the_process_with_a_failure_status() {
    let mut env = TestEnv::new("panic", 1).await;
    // Debug builds only: worker 0 panics 3 s after its dataflow starts.
    env.env = vec![("ANALYTICS_TEST_WORKER_PANIC_AFTER_MS".into(), "3000".into())];
    env.args = vec!["-w".into(), "2".into()];
    env.spawn();
    let status = env.wait_exit(Duration::from_secs(60)).await;
    assert_eq!(status.code(), Some(70), "exit status; log:\n{}", env.log());
    let log = env.log();
    assert!(
        log.contains("dataflow thread panicked") && log.contains("timely:work-0"),
        "one line names the thread and the cause; log:\n{log}"
    );
}
