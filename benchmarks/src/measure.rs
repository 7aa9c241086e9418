//! The measurements against a running service (ours or the baseline, the
//! same code for both): ingest, freshness, reads and memory. Each one runs
//! the load generator on a thread of its own and observes the service only
//! through its HTTP API and `/proc`, as a client would.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use serde_json::Value;

use crate::env::rss_kib;
use crate::gen::MARKER_TYPE;
use crate::loadgen::{self, LoadReport, LoadSpec, Markers};
use crate::stats::{summarize, Summary};

/// A service under test.
#[derive(Debug, Clone)]
pub struct Target {
    pub label: String,
    pub base_url: String,
    pub http: reqwest::Client,
    pub pid: Option<u32>,
}

/// A stats answer.
#[derive(Debug, Clone, Default)]
struct Stats {
    total: i64,
    by_type: BTreeMap<String, i64>,
    source: String,
}

impl Target {
    pub fn new(label: &str, base_url: String, pid: Option<u32>) -> anyhow::Result<Target> {
        Ok(Target {
            label: label.into(),
            base_url,
            http: reqwest::Client::builder()
                .timeout(REQUEST_TIMEOUT)
                .pool_max_idle_per_host(1_024)
                .build()?,
            pid,
        })
    }

    async fn get_json(&self, path: &str) -> anyhow::Result<Value> {
        let r = self
            .http
            .get(format!("{}{path}", self.base_url))
            .send()
            .await?;
        let status = r.status();
        let body: Value = r.json().await?;
        anyhow::ensure!(status.is_success(), "GET {path}: {status} {body}");
        Ok(body)
    }

    /// `/api/v1/events/stats` over `[from, to)` (whole seconds, so that ours
    /// may answer from live state).
    async fn stats(&self, from_s: i64, to_s: i64) -> anyhow::Result<Stats> {
        let fmt = |s: i64| {
            chrono::DateTime::from_timestamp(s, 0)
                .unwrap_or_default()
                .format("%Y-%m-%dT%H:%M:%SZ")
                .to_string()
        };
        let body = self
            .get_json(&format!(
                "/api/v1/events/stats?start_time={}&end_time={}",
                fmt(from_s),
                fmt(to_s)
            ))
            .await?;
        let by_type = body["by_type"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_i64().unwrap_or(-1)))
                    .collect()
            })
            .unwrap_or_default();
        Ok(Stats {
            total: body["total_events"].as_i64().unwrap_or(-1),
            by_type,
            source: body["source"].as_str().unwrap_or("").to_string(),
        })
    }
}

fn now_s() -> i64 {
    chrono::Utc::now().timestamp()
}

/// The stats range every phase checks: an hour before now (late events are
/// at most ten minutes old) to a day after.
fn check_range() -> (i64, i64) {
    (now_s() - 3_600, now_s() + 86_400)
}

/// End to end: produce → durable in PostgreSQL and counted by stats.
#[derive(Debug, Clone, Serialize)]
pub struct IngestResult {
    pub target: String,
    pub load: LoadReport,
    /// Valid events produced (what stats must count).
    pub expected: i64,
    /// What stats counted at the end (minus what it counted before).
    pub reflected: i64,
    /// Whether every type's count equals what was produced.
    pub exact: bool,
    pub mismatches: Vec<String>,
    /// Seconds from the first send to the stats answer that counted all.
    pub seconds: f64,
    /// `expected / seconds`: the figure.
    pub events_per_s: f64,
    /// Seconds between the end of sending and that answer.
    pub drain_s: f64,
    /// False when the drain deadline passed first.
    pub completed: bool,
    /// `live` or `postgres` (ours answers from live state).
    pub stats_source: String,
    /// (seconds since start, events counted), about once a second.
    pub timeline: Vec<(f64, i64)>,
}

pub async fn ingest(
    target: &Target,
    load: LoadSpec,
    drain_timeout: Duration,
) -> anyhow::Result<IngestResult> {
    let (from, to) = check_range();
    let before = target.stats(from, to).await?;
    let start = Instant::now();
    let handle = loadgen::spawn(load, None, Arc::new(AtomicBool::new(false)))?;
    let mut timeline = Vec::new();
    let mut next_sample = start;
    while !handle.is_finished() {
        if Instant::now() >= next_sample {
            if let Ok(s) = target.stats(from, to).await {
                timeline.push((start.elapsed().as_secs_f64(), s.total - before.total));
            }
            next_sample += Duration::from_secs(1);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let report = handle
        .join()
        .map_err(|_| anyhow::anyhow!("load generator panicked"))??;
    let sent_at = start.elapsed();
    let expected = report.tally.valid as i64;
    let (last, completed) = counted(
        target,
        (from, to),
        &before,
        expected,
        start,
        Instant::now() + drain_timeout,
        &mut timeline,
    )
    .await?;
    let seconds = start.elapsed().as_secs_f64();
    let reflected = last.total - before.total;
    let mismatches = mismatches(&report.tally, &before, &last);
    Ok(IngestResult {
        target: target.label.clone(),
        expected,
        reflected,
        exact: mismatches.is_empty(),
        mismatches,
        seconds,
        events_per_s: if completed {
            expected as f64 / seconds
        } else {
            reflected as f64 / seconds
        },
        drain_s: seconds - sent_at.as_secs_f64(),
        completed,
        stats_source: last.source,
        timeline,
        load: report,
    })
}

/// Polls stats (every 100 ms) until it counts `expected` events more than
/// `before`, or `deadline` passes; each answer goes into `timeline` as
/// (seconds since `start`, events counted). Returns the last answer and
/// whether it counted them all.
async fn counted(
    target: &Target,
    (from, to): (i64, i64),
    before: &Stats,
    expected: i64,
    start: Instant,
    deadline: Instant,
    timeline: &mut Vec<(f64, i64)>,
) -> anyhow::Result<(Stats, bool)> {
    loop {
        let s = target.stats(from, to).await?;
        timeline.push((start.elapsed().as_secs_f64(), s.total - before.total));
        if s.total - before.total >= expected {
            return Ok((s, true));
        }
        if Instant::now() >= deadline {
            return Ok((s, false));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every event type whose count in `last`, less `before`, differs from what
/// was produced.
fn mismatches(produced: &crate::gen::Tally, before: &Stats, last: &Stats) -> Vec<String> {
    let mut types: Vec<&String> = produced.by_type.keys().collect();
    types.extend(last.by_type.keys());
    types.sort();
    types.dedup();
    types
        .into_iter()
        .filter_map(|t| {
            let want = produced.by_type.get(t).copied().unwrap_or(0) as i64;
            let got = last.by_type.get(t).copied().unwrap_or(0)
                - before.by_type.get(t).copied().unwrap_or(0);
            (want != got).then(|| format!("{t}: produced {want}, counted {got}"))
        })
        .collect()
}

/// Catch-up: a backlog already in Kafka, then the service started on it.
#[derive(Debug, Clone, Serialize)]
pub struct CatchUpResult {
    pub target: String,
    /// How the backlog was produced (before the service started).
    pub backlog: LoadReport,
    /// Valid events in the backlog (what stats must count).
    pub expected: i64,
    pub reflected: i64,
    pub exact: bool,
    pub mismatches: Vec<String>,
    /// Seconds from starting the service's process to the stats answer
    /// that counted every event of the backlog.
    pub seconds: f64,
    /// `expected / seconds`: the figure.
    pub events_per_s: f64,
    pub completed: bool,
    pub stats_source: String,
    pub timeline: Vec<(f64, i64)>,
}

/// Waits until `target`, whose process started at `started` on a fresh
/// database, counts the whole `backlog` in stats (or `timeout` passes).
pub async fn catch_up(
    target: &Target,
    backlog: LoadReport,
    started: Instant,
    timeout: Duration,
) -> anyhow::Result<CatchUpResult> {
    let range = check_range();
    let before = Stats::default();
    let expected = backlog.tally.valid as i64;
    let mut timeline = Vec::new();
    let (last, completed) = counted(
        target,
        range,
        &before,
        expected,
        started,
        started + timeout,
        &mut timeline,
    )
    .await?;
    let seconds = started.elapsed().as_secs_f64();
    let mismatches = mismatches(&backlog.tally, &before, &last);
    Ok(CatchUpResult {
        target: target.label.clone(),
        expected,
        reflected: last.total,
        exact: mismatches.is_empty(),
        mismatches,
        seconds,
        events_per_s: last.total as f64 / seconds,
        completed,
        stats_source: last.source,
        timeline,
        backlog,
    })
}

/// PostgreSQL's ceiling for the same rows: one binary COPY of them into the
/// same `events` table, with nothing else in the transaction.
#[derive(Debug, Clone, Serialize)]
pub struct CopyCeiling {
    pub rows: u64,
    /// Bytes of the COPY stream.
    pub bytes: u64,
    /// From the COPY statement to its commit.
    pub seconds: f64,
    pub rows_per_s: f64,
}

/// Reads every row of `events` in `database` (binary COPY out, with the
/// columns and statement our sink writes them with), empties the table, and
/// times writing them back with one binary COPY in one transaction.
pub async fn copy_ceiling(conn: &str) -> anyhow::Result<CopyCeiling> {
    use futures::{SinkExt, TryStreamExt};
    let (mut client, connection) = tokio_postgres::connect(conn, tokio_postgres::NoTls)
        .await
        .context("connect for the COPY ceiling")?;
    tokio::spawn(connection);
    let out = client
        .copy_out(
            "COPY (SELECT id, event_type, user_id, session_id, properties, \"timestamp\", \
             created_at, source, kafka_topic, kafka_partition, kafka_offset FROM events) \
             TO STDOUT (FORMAT binary)",
        )
        .await?;
    let chunks: Vec<bytes::Bytes> = out.try_collect().await?;
    let bytes = chunks.iter().map(|c| c.len() as u64).sum();
    client.batch_execute("TRUNCATE events").await?;
    let start = Instant::now();
    let tx = client.transaction().await?;
    let sink = tx.copy_in(dataflows::rows::COPY_EVENTS).await?;
    futures::pin_mut!(sink);
    for chunk in chunks {
        sink.feed(chunk).await?;
    }
    let rows = sink.as_mut().finish().await?;
    tx.commit().await?;
    let seconds = start.elapsed().as_secs_f64();
    Ok(CopyCeiling {
        rows,
        bytes,
        seconds,
        rows_per_s: rows as f64 / seconds,
    })
}

/// Produce → visible in `/api/v1/dashboard/metrics`.
#[derive(Debug, Clone, Serialize)]
pub struct FreshnessResult {
    pub target: String,
    pub load: LoadReport,
    pub markers_sent: u64,
    pub markers_seen: u64,
    /// Milliseconds from a marker's send to the first dashboard answer
    /// (received) that counts it.
    pub latency_ms: Summary,
    pub polls: u64,
    /// Mean time of one dashboard request, ms.
    pub poll_ms: f64,
}

fn marker_count(body: &Value) -> i64 {
    body["custom_metrics"][MARKER_TYPE].as_i64().unwrap_or(0)
}

pub async fn freshness(
    target: &Target,
    load: LoadSpec,
    marker_interval: Duration,
    poll_pause: Duration,
) -> anyhow::Result<FreshnessResult> {
    let base = marker_count(&target.get_json("/api/v1/dashboard/metrics").await?);
    let (tx, rx) = std::sync::mpsc::channel();
    let markers = Markers {
        interval: marker_interval,
        backdate: Duration::from_secs(1),
        sent: tx,
    };
    let handle = loadgen::spawn(load, Some(markers), Arc::new(AtomicBool::new(false)))?;
    let mut sent: Vec<Instant> = Vec::new();
    let mut latencies = Vec::new();
    let mut seen = 0usize;
    let mut polls = 0u64;
    let mut poll_time = Duration::ZERO;
    let mut deadline: Option<Instant> = None;
    loop {
        let asked = Instant::now();
        let body = target.get_json("/api/v1/dashboard/metrics").await;
        let answered = Instant::now();
        polls += 1;
        poll_time += answered - asked;
        while let Ok((seq, at)) = rx.try_recv() {
            debug_assert_eq!(seq as usize, sent.len());
            sent.push(at);
        }
        if let Ok(body) = body {
            let visible = (marker_count(&body) - base).max(0) as usize;
            while seen < visible.min(sent.len()) {
                latencies.push((answered - sent[seen]).as_secs_f64() * 1e3);
                seen += 1;
            }
        }
        if deadline.is_none() && handle.is_finished() {
            // Sending is over: wait for the last markers, with a deadline.
            deadline = Some(Instant::now() + Duration::from_secs(60));
        }
        if let Some(d) = deadline {
            while let Ok((_, at)) = rx.try_recv() {
                sent.push(at);
            }
            if seen >= sent.len() || Instant::now() >= d {
                break;
            }
        }
        tokio::time::sleep(poll_pause).await;
    }
    let load = handle
        .join()
        .map_err(|_| anyhow::anyhow!("load generator panicked"))??;
    Ok(FreshnessResult {
        target: target.label.clone(),
        markers_sent: load.markers,
        markers_seen: seen as u64,
        latency_ms: summarize(&mut latencies),
        polls,
        poll_ms: poll_time.as_secs_f64() * 1e3 / polls.max(1) as f64,
        load,
    })
}

/// A request that takes longer fails.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Most read requests outstanding at once (file descriptors are finite);
/// beyond it a request is counted as failed without being sent.
const MAX_IN_FLIGHT: usize = 4_096;

/// Read latency at a fixed request rate, open loop.
#[derive(Debug, Clone, Serialize)]
pub struct EndpointResult {
    pub path: String,
    pub requests: u64,
    pub ok: u64,
    pub errors: u64,
    /// From the request's scheduled instant to its answer, ms.
    pub latency_ms: Summary,
    /// Successful answers per second of the phase.
    pub throughput: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReadsResult {
    pub target: String,
    pub load: LoadReport,
    pub rate: f64,
    pub seconds: f64,
    pub endpoints: Vec<EndpointResult>,
    pub all: EndpointResult,
    /// Per second of the schedule: (second, requests due, worst latency ms).
    pub timeline: Vec<(u64, u64, f64)>,
}

/// The three live read paths, with the parameters a dashboard sends.
pub fn read_paths() -> Vec<String> {
    let now = chrono::Utc::now().timestamp();
    let end = (now / 60 + 1) * 60;
    let fmt = |s: i64| {
        chrono::DateTime::from_timestamp(s, 0)
            .unwrap_or_default()
            .format("%Y-%m-%dT%H:%M:%SZ")
            .to_string()
    };
    vec![
        "/api/v1/dashboard/metrics".to_string(),
        "/api/v1/events/stats".to_string(),
        format!(
            "/api/v1/metrics?metric_name=order.filled.price&interval=1m&start_time={}&end_time={}",
            fmt(end - 3_600),
            fmt(end)
        ),
    ]
}

pub async fn reads(
    target: &Target,
    load: LoadSpec,
    rate: f64,
    duration: Duration,
) -> anyhow::Result<ReadsResult> {
    let paths = read_paths();
    let handle = loadgen::spawn(load, None, Arc::new(AtomicBool::new(false)))?;
    // Let the load reach its rate before the first request.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(usize, u64, f64, bool)>();
    let in_flight = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    let start = tokio::time::Instant::now();
    let period = Duration::from_secs_f64(1.0 / rate);
    let mut i: u32 = 0;
    loop {
        let due = start + period * i;
        if due >= start + duration {
            break;
        }
        tokio::time::sleep_until(due).await;
        let endpoint = i as usize % paths.len();
        let url = format!("{}{}", target.base_url, paths[endpoint]);
        let (http, tx) = (target.http.clone(), tx.clone());
        let second = (due - start).as_secs();
        let Ok(permit) = Arc::clone(&in_flight).try_acquire_owned() else {
            // Too many requests already waiting: the service has fallen
            // over; count this one as failed at the timeout.
            let _ = tx.send((endpoint, second, REQUEST_TIMEOUT.as_secs_f64() * 1e3, false));
            i += 1;
            continue;
        };
        tokio::spawn(async move {
            let _permit = permit;
            let ok = match http.get(&url).send().await {
                Ok(r) => {
                    let status = r.status();
                    r.bytes().await.is_ok() && status.is_success()
                }
                Err(_) => false,
            };
            let latency = (tokio::time::Instant::now() - due).as_secs_f64() * 1e3;
            let _ = tx.send((endpoint, second, latency, ok));
        });
        i += 1;
    }
    drop(tx);
    let mut per: Vec<(Vec<f64>, u64, u64)> = vec![(Vec::new(), 0, 0); paths.len()];
    let mut all: (Vec<f64>, u64, u64) = (Vec::new(), 0, 0);
    let mut timeline: BTreeMap<u64, (u64, f64)> = BTreeMap::new();
    while let Some((endpoint, second, latency, ok)) = rx.recv().await {
        let slot = timeline.entry(second).or_default();
        slot.0 += 1;
        slot.1 = slot.1.max(latency);
        for slot in [&mut per[endpoint], &mut all] {
            slot.0.push(latency);
            if ok {
                slot.1 += 1;
            } else {
                slot.2 += 1;
            }
        }
    }
    let seconds = duration.as_secs_f64();
    let result = |path: &str, (mut lat, ok, errors): (Vec<f64>, u64, u64)| EndpointResult {
        path: path.to_string(),
        requests: ok + errors,
        ok,
        errors,
        latency_ms: summarize(&mut lat),
        throughput: ok as f64 / seconds,
    };
    let endpoints = per
        .into_iter()
        .zip(&paths)
        .map(|(p, path)| result(path.split('?').next().unwrap_or(path), p))
        .collect();
    let load = handle
        .join()
        .map_err(|_| anyhow::anyhow!("load generator panicked"))??;
    Ok(ReadsResult {
        target: target.label.clone(),
        load,
        rate,
        seconds,
        endpoints,
        all: result("all", all),
        timeline: timeline
            .into_iter()
            .map(|(s, (n, max))| (s, n, max))
            .collect(),
    })
}

/// Resident memory under a steady load.
#[derive(Debug, Clone, Serialize)]
pub struct MemoryResult {
    pub target: String,
    pub load: LoadReport,
    pub interval_s: f64,
    pub warmup_s: f64,
    /// (seconds since start, RSS in KiB).
    pub samples: Vec<(f64, u64)>,
    /// The first sample at or after the warm-up.
    pub warm_kib: u64,
    pub last_kib: u64,
    pub max_kib: u64,
    /// Largest |sample − warm| / warm after the warm-up, percent.
    pub max_deviation_pct: f64,
    /// The mean of the samples at or after the warm-up.
    pub mean_kib: u64,
    /// Largest |sample − mean| / mean after the warm-up, percent: how far
    /// RSS strays from its steady level (one sample's ups and downs do not
    /// move the reference, as they move `warm_kib`).
    pub max_deviation_from_mean_pct: f64,
}

pub async fn memory(
    target: &Target,
    load: LoadSpec,
    interval: Duration,
    warmup: Duration,
) -> anyhow::Result<MemoryResult> {
    let pid = target.pid.context("memory needs the service's pid")?;
    let duration = load.duration;
    let handle = loadgen::spawn(load, None, Arc::new(AtomicBool::new(false)))?;
    let start = tokio::time::Instant::now();
    let mut ticker = tokio::time::interval(interval);
    let mut samples = Vec::new();
    loop {
        ticker.tick().await;
        let t = start.elapsed();
        let rss = rss_kib(pid).context("service exited during the memory phase")?;
        samples.push((t.as_secs_f64(), rss));
        if t >= duration {
            break;
        }
    }
    let load = handle
        .join()
        .map_err(|_| anyhow::anyhow!("load generator panicked"))??;
    let after: Vec<u64> = samples
        .iter()
        .filter(|(t, _)| *t >= warmup.as_secs_f64())
        .map(|(_, r)| *r)
        .collect();
    let warm = after.first().copied().unwrap_or(0);
    let deviation = |from: u64| {
        after
            .iter()
            .map(|r| (*r as f64 - from as f64).abs() / from.max(1) as f64 * 100.0)
            .fold(0.0, f64::max)
    };
    let mean = after.iter().sum::<u64>() / (after.len().max(1) as u64);
    Ok(MemoryResult {
        target: target.label.clone(),
        load,
        interval_s: interval.as_secs_f64(),
        warmup_s: warmup.as_secs_f64(),
        warm_kib: warm,
        last_kib: samples.last().map_or(0, |s| s.1),
        max_kib: samples.iter().map(|s| s.1).max().unwrap_or(0),
        max_deviation_pct: deviation(warm),
        mean_kib: mean,
        max_deviation_from_mean_pct: deviation(mean),
        samples,
    })
}
