//! The baseline: the replaced service's design, rebuilt on the same
//! machine, data and schema so that our figures have something to be
//! divided by. One Kafka consumer reads the four topics, parses each
//! message (refusing bad JSON and a missing `event_type`, as the old
//! service did, by skipping it), and writes 1,000 rows per multi-row
//! `INSERT` into `events` (the schema of `migrations/`, in a database of
//! its own), then commits the consumer offsets (at least once). A partial
//! batch is written after `flush_ms`. The API answers the same paths as
//! ours with SQL over the raw rows:
//!
//! - `/api/v1/events/stats`: `GROUP BY event_type` over `[start_time,
//!   end_time)`, by default the last hour;
//! - `/api/v1/dashboard/metrics`: `COUNT(DISTINCT user_id)`, filtered
//!   counts, sums and averages over the last hour, and a `GROUP BY
//!   event_type` for the order counts and custom types;
//! - `/api/v1/metrics`: `date_bin` buckets with count, sum, avg, min, max
//!   and percentiles of one numeric property.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use dataflows::event::KNOWN_TYPES;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{ClientConfig, Message};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio_postgres::types::ToSql;
use tokio_postgres::{NoTls, Statement};

/// How the baseline is run.
#[derive(Debug, Clone)]
pub struct BaselineArgs {
    pub brokers: String,
    pub topics: Vec<String>,
    pub group: String,
    pub db: sink::DbSettings,
    pub port: u16,
    pub batch_rows: usize,
    pub flush_ms: u64,
}

/// One row of `events`.
struct Row {
    id: uuid::Uuid,
    event_type: String,
    user_id: Option<String>,
    session_id: Option<String>,
    properties: Value,
    timestamp: DateTime<Utc>,
    topic: String,
    partition: i32,
    offset: i64,
}

#[derive(Deserialize)]
struct Incoming {
    id: Option<uuid::Uuid>,
    event_type: Option<String>,
    user_id: Option<String>,
    session_id: Option<String>,
    properties: Option<Value>,
    timestamp: Option<String>,
}

fn parse(payload: &[u8], topic: &str, partition: i32, offset: i64) -> Option<Row> {
    let e: Incoming = serde_json::from_slice(payload).ok()?;
    let event_type = e.event_type.filter(|t| !t.is_empty())?;
    let timestamp = match e.timestamp {
        Some(t) => DateTime::parse_from_rfc3339(&t).ok()?.with_timezone(&Utc),
        None => Utc::now(),
    };
    Some(Row {
        id: e.id.unwrap_or_else(uuid::Uuid::new_v4),
        event_type,
        user_id: e.user_id,
        session_id: e.session_id,
        properties: e.properties.unwrap_or_else(|| json!({})),
        timestamp,
        topic: topic.to_string(),
        partition,
        offset,
    })
}

const COLUMNS: usize = 10;

fn insert_sql(rows: usize) -> String {
    let mut sql = String::from(
        "INSERT INTO events (id, event_type, user_id, session_id, properties, \"timestamp\", source, kafka_topic, kafka_partition, kafka_offset) VALUES ",
    );
    for r in 0..rows {
        if r > 0 {
            sql.push(',');
        }
        sql.push('(');
        for c in 0..COLUMNS {
            if c > 0 {
                sql.push(',');
            }
            sql.push_str(&format!("${}", r * COLUMNS + c + 1));
        }
        sql.push(')');
    }
    sql
}

/// The writer: one connection, one multi-row statement per batch.
struct Writer {
    client: tokio_postgres::Client,
    statements: HashMap<usize, Statement>,
}

impl Writer {
    async fn insert(&mut self, rows: &[Row]) -> anyhow::Result<()> {
        let statement = match self.statements.get(&rows.len()) {
            Some(s) => s.clone(),
            None => {
                let s = self.client.prepare(&insert_sql(rows.len())).await?;
                self.statements.insert(rows.len(), s.clone());
                s
            }
        };
        let source = "kafka";
        let mut params: Vec<&(dyn ToSql + Sync)> = Vec::with_capacity(rows.len() * COLUMNS);
        for r in rows {
            params.push(&r.id);
            params.push(&r.event_type);
            params.push(&r.user_id);
            params.push(&r.session_id);
            params.push(&r.properties);
            params.push(&r.timestamp);
            params.push(&source);
            params.push(&r.topic);
            params.push(&r.partition);
            params.push(&r.offset);
        }
        self.client.execute(&statement, &params).await?;
        Ok(())
    }
}

/// Reads Kafka and writes batches until `stop`.
fn consume(
    args: &BaselineArgs,
    rt: tokio::runtime::Handle,
    mut writer: Writer,
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &args.brokers)
        .set("group.id", &args.group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "10")
        .create()
        .context("kafka consumer")?;
    let topics: Vec<&str> = args.topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics)?;
    let mut rows: Vec<Row> = Vec::with_capacity(args.batch_rows);
    let mut first_row: Option<Instant> = None;
    let flush = Duration::from_millis(args.flush_ms);
    let mut skipped = 0u64;
    while !stop.load(Ordering::Relaxed) {
        if let Some(message) = consumer.poll(Duration::from_millis(20)) {
            let m = message.context("kafka poll")?;
            match parse(
                m.payload().unwrap_or_default(),
                m.topic(),
                m.partition(),
                m.offset(),
            ) {
                Some(row) => {
                    rows.push(row);
                    first_row.get_or_insert_with(Instant::now);
                }
                None => skipped += 1,
            }
        }
        let due = first_row.is_some_and(|t| t.elapsed() >= flush);
        if rows.len() >= args.batch_rows || (due && !rows.is_empty()) {
            rt.block_on(writer.insert(&rows))?;
            consumer.commit_consumer_state(CommitMode::Async)?;
            rows.clear();
            first_row = None;
        }
    }
    if !rows.is_empty() {
        rt.block_on(writer.insert(&rows))?;
        consumer.commit_consumer_state(CommitMode::Sync)?;
    }
    tracing::info!(skipped, "baseline consumer stopped");
    Ok(())
}

/// `bench baseline`: migrations, the consumer and the API, until SIGTERM.
pub fn run(args: BaselineArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let pool = rt.block_on(async {
        let (mut client, conn) = args.db.pg_config().connect(NoTls).await?;
        tokio::spawn(conn);
        sink::migrate::run(&mut client).await?;
        sink::partitions::Partitions::default()
            .ensure_ahead(&client, Utc::now().timestamp_micros(), 3)
            .await?;
        anyhow::Ok(sink::connect_pool(&args.db)?)
    })?;
    let writer = rt.block_on(async {
        let (client, conn) = args.db.pg_config().connect(NoTls).await?;
        tokio::spawn(conn);
        anyhow::Ok(Writer {
            client,
            statements: HashMap::new(),
        })
    })?;
    let stop = Arc::new(AtomicBool::new(false));
    let consumer = {
        let (args, handle, stop) = (args.clone(), rt.handle().clone(), Arc::clone(&stop));
        std::thread::Builder::new()
            .name("baseline-consumer".into())
            .spawn(move || consume(&args, handle, writer, &stop))?
    };
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", args.port)).await?;
        let app = router(pool);
        let stopping = Arc::clone(&stop);
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                shutdown_signal().await;
                stopping.store(true, Ordering::SeqCst);
            })
            .await?;
        anyhow::Ok(())
    })?;
    stop.store(true, Ordering::SeqCst);
    consumer
        .join()
        .map_err(|_| anyhow::anyhow!("consumer panicked"))??;
    rt.shutdown_timeout(Duration::from_secs(1));
    Ok(())
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term => {},
    }
}

fn router(pool: sink::Pool) -> Router {
    Router::new()
        .route("/ready", get(|| async { "ok" }))
        .route("/api/v1/events/stats", get(stats))
        .route("/api/v1/dashboard/metrics", get(dashboard))
        .route("/api/v1/metrics", get(metrics))
        .with_state(pool)
}

struct Failure(String);

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"error": self.0})),
        )
            .into_response()
    }
}

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure(e.to_string())
    }
}

fn range(
    params: &HashMap<String, String>,
    default_span: chrono::Duration,
) -> Result<(DateTime<Utc>, DateTime<Utc>), Failure> {
    let parse = |key: &str| -> Result<Option<DateTime<Utc>>, Failure> {
        params
            .get(key)
            .map(|s| DateTime::parse_from_rfc3339(s).map(|t| t.with_timezone(&Utc)))
            .transpose()
            .map_err(|e| Failure(format!("{key}: {e}")))
    };
    let end = parse("end_time")?.unwrap_or_else(Utc::now);
    let start = parse("start_time")?.unwrap_or(end - default_span);
    Ok((start, end))
}

async fn stats(
    State(pool): State<sink::Pool>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<Value>, Failure> {
    let (start, end) = range(&params, chrono::Duration::hours(1))?;
    let client = pool.get().await?;
    let rows = client
        .query(
            "SELECT event_type, count(*) FROM events WHERE \"timestamp\" >= $1 AND \"timestamp\" < $2 GROUP BY event_type",
            &[&start, &end],
        )
        .await?;
    let by_type: BTreeMap<String, i64> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    Ok(Json(json!({
        "start_time": start.to_rfc3339(),
        "end_time": end.to_rfc3339(),
        "total_events": by_type.values().sum::<i64>(),
        "by_type": by_type,
        "source": "postgres",
    })))
}

async fn dashboard(State(pool): State<sink::Pool>) -> Result<Json<Value>, Failure> {
    let client = pool.get().await?;
    let agg = client
        .query_one(
            "SELECT count(DISTINCT user_id),
                    count(*) FILTER (WHERE \"timestamp\" >= now() - interval '1 minute'),
                    count(DISTINCT properties->>'strategy_id') FILTER (WHERE event_type = 'strategy.started'),
                    coalesce(sum((properties->>'price')::float8 * (properties->>'quantity')::float8)
                             FILTER (WHERE event_type = 'order.filled'), 0),
                    coalesce(avg((properties->>'latency_ms')::float8) FILTER (WHERE event_type LIKE 'order.%'), 0)
             FROM events WHERE \"timestamp\" >= now() - interval '1 hour'",
            &[],
        )
        .await?;
    let by_type: BTreeMap<String, i64> = client
        .query(
            "SELECT event_type, count(*) FROM events WHERE \"timestamp\" >= now() - interval '1 hour' GROUP BY event_type",
            &[],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let count = |t: &str| by_type.get(t).copied().unwrap_or(0);
    let placed = count("order.placed");
    let custom: serde_json::Map<String, Value> = by_type
        .iter()
        .filter(|(t, _)| !KNOWN_TYPES.contains(&t.as_str()))
        .map(|(t, n)| (t.clone(), json!(n)))
        .collect();
    let now = Utc::now().to_rfc3339();
    Ok(Json(json!({
        "active_users": agg.get::<_, i64>(0),
        "events_per_second": agg.get::<_, i64>(1) as f64 / 60.0,
        "orders_placed": placed,
        "orders_filled": count("order.filled"),
        "orders_canceled": count("order.canceled"),
        "orders_rejected": count("order.rejected"),
        "active_strategies": agg.get::<_, i64>(2),
        "total_volume": agg.get::<_, f64>(3),
        "average_latency": agg.get::<_, f64>(4),
        "error_rate": if placed > 0 { count("order.rejected") as f64 / placed as f64 } else { 0.0 },
        "custom_metrics": custom,
        "last_updated": now,
    })))
}

fn interval_sql(name: &str) -> Option<&'static str> {
    Some(match name {
        "1m" => "1 minute",
        "5m" => "5 minutes",
        "15m" => "15 minutes",
        "30m" => "30 minutes",
        "1h" => "1 hour",
        "4h" => "4 hours",
        "1d" => "1 day",
        _ => return None,
    })
}

async fn metrics(
    State(pool): State<sink::Pool>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, Failure> {
    let Some(metric) = params.get("metric_name").filter(|m| !m.is_empty()) else {
        return Ok((
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "metric_name is required"})),
        )
            .into_response());
    };
    let interval_name = params.get("interval").map_or("1h", String::as_str);
    let Some(interval) = interval_sql(interval_name) else {
        return Ok((
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "bad interval"})),
        )
            .into_response());
    };
    // Like ours, the last 24 hours by default.
    let (start, end) = range(&params, chrono::Duration::hours(24))?;
    let client = pool.get().await?;
    let points: Vec<Value> = if let Some(event_type) = metric.strip_prefix("events.count.") {
        client
            .query(
                "SELECT date_bin(($1::text)::interval, \"timestamp\", TIMESTAMPTZ '2000-01-01') AS b, count(*)
                 FROM events WHERE event_type = $2 AND \"timestamp\" >= $3 AND \"timestamp\" < $4
                 GROUP BY b ORDER BY b",
                &[&interval, &event_type, &start, &end],
            )
            .await?
            .iter()
            .map(|r| {
                let t: DateTime<Utc> = r.get(0);
                let n: i64 = r.get(1);
                json!({"timestamp": t.to_rfc3339(), "value": n, "dimensions": {}, "count": n})
            })
            .collect()
    } else {
        let Some((event_type, property)) = metric.rsplit_once('.') else {
            return Ok((
                StatusCode::BAD_REQUEST,
                Json(json!({"error": "bad metric_name"})),
            )
                .into_response());
        };
        client
            .query(
                "SELECT date_bin(($1::text)::interval, \"timestamp\", TIMESTAMPTZ '2000-01-01') AS b,
                        count(*), sum(v), avg(v), min(v), max(v),
                        percentile_cont(0.5) WITHIN GROUP (ORDER BY v),
                        percentile_cont(0.99) WITHIN GROUP (ORDER BY v)
                 FROM (SELECT \"timestamp\", (properties->>$5)::float8 AS v FROM events
                       WHERE event_type = $2 AND \"timestamp\" >= $3 AND \"timestamp\" < $4
                         AND properties ? $5) e
                 GROUP BY b ORDER BY b",
                &[&interval, &event_type, &start, &end, &property],
            )
            .await?
            .iter()
            .map(|r| {
                let t: DateTime<Utc> = r.get(0);
                json!({
                    "timestamp": t.to_rfc3339(),
                    "value": r.get::<_, Option<f64>>(3),
                    "dimensions": {},
                    "count": r.get::<_, i64>(1),
                    "sum": r.get::<_, Option<f64>>(2),
                    "avg": r.get::<_, Option<f64>>(3),
                    "min": r.get::<_, Option<f64>>(4),
                    "max": r.get::<_, Option<f64>>(5),
                    "p50": r.get::<_, Option<f64>>(6),
                    "p99": r.get::<_, Option<f64>>(7),
                })
            })
            .collect()
    };
    let total: i64 = points
        .iter()
        .map(|p| p["count"].as_i64().unwrap_or(0))
        .sum();
    Ok(Json(json!({
        "cached": false,
        "result": {
            "metric_name": metric,
            "interval": interval_name,
            "start_time": start.to_rfc3339(),
            "end_time": end.to_rfc3339(),
            "data_points": points,
            "total_count": total,
            "aggregation": "avg",
        }
    }))
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_statement_shape() {
        let sql = insert_sql(2);
        assert!(sql.ends_with(
            "($1,$2,$3,$4,$5,$6,$7,$8,$9,$10),($11,$12,$13,$14,$15,$16,$17,$18,$19,$20)"
        ));
    }

    #[test]
    fn refuses_what_the_old_service_refused() {
        assert!(parse(b"{\"event_type\":\"x\"", "t", 0, 0).is_none());
        assert!(parse(b"{\"user_id\":\"u\"}", "t", 0, 0).is_none());
        assert!(parse(b"{\"event_type\":\"\"}", "t", 0, 0).is_none());
        let row = parse(
            b"{\"event_type\":\"order.placed\",\"timestamp\":\"2025-10-09T08:53:20.123Z\"}",
            "t",
            1,
            2,
        )
        .expect("valid");
        assert_eq!(row.event_type, "order.placed");
        assert_eq!(row.timestamp.timestamp_millis(), 1_760_000_000_123);
    }
}
