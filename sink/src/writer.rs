//! The group-commit writer: makes dataflow ticks durable.
//!
//! Batches arrive from every local worker's durability operator in tick
//! order per worker. Each local worker has its own writer lane (its own
//! transactions on its own connection): a worker owns its Kafka partitions
//! (`kafka_source::owner`), so the offsets a lane commits are never another
//! lane's, and two lanes' transactions overlap, as those of a cluster's
//! processes do; one PostgreSQL backend per lane. A lane takes what is
//! queued (up to a row budget), writes raw events with binary COPY, dead
//! letters, per-second counts and the Kafka offsets the rows came from in
//! ONE transaction, then acknowledges each batch to its worker. A failed
//! transaction is retried with backoff and the same rows, so a PostgreSQL
//! outage pauses ingestion (the sources stop polling when too many rows
//! wait) without loss.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dataflows::dashboard::DashboardDelta;
use dataflows::durable::SinkBatch;
use dataflows::event::{DeadLetter, Event, EventSource, FieldError, Partition, PartitionOffset};
use dataflows::rows::{EventRows, COPY_EVENTS, COPY_HEADER, COPY_TRAILER};
use dataflows::trading::SealedTrading;
use dataflows::windows::{Agg, WindowKey};
use futures::{pin_mut, SinkExt};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};
use tokio_postgres::Transaction;
use tracing::{debug, error, info_span, Instrument};

use crate::metrics::{self, IngestionStats};
use crate::partitions::Partitions;
use crate::{Pool, SinkError};

/// Committed offsets per partition, shared with the lag monitor.
pub type Positions = Arc<RwLock<HashMap<Partition, i64>>>;

/// Called after each commit with the partitions' committed next offsets
/// (used to commit consumer-group offsets to Kafka for lag monitoring).
pub type OffsetsCommitted = Box<dyn Fn(&[PartitionOffset]) + Send + Sync>;

/// Committed events, for live subscribers (`/api/v1/stream`); a lagging
/// receiver skips ahead, so memory stays bounded by the channel capacity.
pub type EventFeed = tokio::sync::broadcast::Sender<Arc<Event>>;

/// Sends committed events to the feed when anyone listens.
pub fn publish_committed(feed: &EventFeed, events: impl IntoIterator<Item = Event>) {
    if feed.receiver_count() == 0 {
        return;
    }
    for event in events {
        // An error means every receiver left meanwhile.
        let _ = feed.send(Arc::new(event));
    }
}

/// What the writer needs.
pub struct WriterContext {
    pub pool: Pool,
    pub partitions: Arc<Partitions>,
    pub stats: Arc<IngestionStats>,
    pub positions: Positions,
    pub on_commit: Option<OffsetsCommitted>,
    /// Set while the last transaction failed.
    pub degraded: Arc<AtomicBool>,
    /// Most rows committed in one transaction.
    pub max_group_rows: usize,
    /// Where committed events are announced.
    pub feed: Option<EventFeed>,
}

/// Runs `lanes` writer lanes (at least one), each batch on lane
/// `worker % lanes` (one lane per local worker when `lanes` is the number
/// of local workers, whose indices are consecutive), until every sender is
/// dropped and every lane's queue is drained.
pub async fn run(ctx: WriterContext, mut rx: UnboundedReceiver<SinkBatch>, lanes: usize) {
    let ctx = Arc::new(ctx);
    let health = Arc::new(LaneHealth {
        failing: AtomicUsize::new(0),
        degraded: Arc::clone(&ctx.degraded),
    });
    let (senders, handles): (Vec<_>, Vec<_>) = (0..lanes.max(1))
        .map(|lane| {
            let (tx, rx) = unbounded_channel();
            let task = run_lane(Arc::clone(&ctx), rx, Arc::clone(&health))
                .instrument(info_span!("sink_lane", lane));
            (tx, tokio::spawn(task))
        })
        .collect();
    let mut gone = vec![false; senders.len()];
    while let Some(batch) = rx.recv().await {
        let lane = batch.worker % senders.len();
        if let Err(lost) = senders[lane].send(batch) {
            // Only if the lane panicked: its worker's ticks never become
            // durable. It counts as failing for good, so the other lanes'
            // commits cannot report the sink healthy again.
            if !std::mem::replace(&mut gone[lane], true) {
                health.report(&mut false, false);
            }
            error!(lane, tick = lost.0.tick, "sink lane is gone");
        }
    }
    drop(senders);
    for handle in handles {
        if let Err(e) = handle.await {
            error!(error = %e, "sink lane failed");
        }
    }
    debug!("sink writer finished");
}

/// The lanes' shared health: the sink is degraded while any lane's last
/// transaction failed.
struct LaneHealth {
    /// Lanes whose last transaction failed.
    failing: AtomicUsize,
    /// What health checks read.
    degraded: Arc<AtomicBool>,
}

impl LaneHealth {
    /// Records a lane's transaction outcome; `failed` is that lane's own
    /// state, updated here. Every report stores the flag again, so a
    /// store that raced another lane's is corrected by the next report
    /// (a failing lane retries within seconds).
    fn report(&self, failed: &mut bool, ok: bool) {
        if ok == *failed {
            *failed = !ok;
            if ok {
                self.failing.fetch_sub(1, Ordering::AcqRel);
            } else {
                self.failing.fetch_add(1, Ordering::AcqRel);
            }
        }
        let any = self.failing.load(Ordering::Acquire) > 0;
        self.degraded.store(any, Ordering::Relaxed);
    }
}

/// One lane: groups what its queue holds and commits it, retrying a
/// failed transaction with the same rows.
async fn run_lane(
    ctx: Arc<WriterContext>,
    mut rx: UnboundedReceiver<SinkBatch>,
    health: Arc<LaneHealth>,
) {
    let mut failed = false;
    while let Some(first) = rx.recv().await {
        let mut group = vec![first];
        let mut rows = group[0].rows();
        while rows < ctx.max_group_rows {
            match rx.try_recv() {
                Ok(batch) => {
                    rows += batch.rows();
                    group.push(batch);
                }
                Err(_) => break,
            }
        }
        let mut backoff = Duration::from_millis(50);
        loop {
            let started = Instant::now();
            let span = info_span!("sink_commit", batches = group.len(), rows);
            match write_group(&ctx, &group).instrument(span).await {
                Ok(()) => {
                    health.report(&mut failed, true);
                    let elapsed = started.elapsed();
                    metrics::BATCH_DURATION.observe(elapsed.as_secs_f64());
                    metrics::BATCHES.inc();
                    finish(&ctx, &group, elapsed);
                    break;
                }
                Err(e) => {
                    health.report(&mut failed, false);
                    metrics::SINK_ERRORS.inc();
                    error!(error = %e, retry_in_ms = backoff.as_millis() as u64, "sink commit failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

fn finish(ctx: &WriterContext, group: &[SinkBatch], elapsed: Duration) {
    let now_us = dataflows::time::now_ms() as i64 * 1000;
    let mut events = 0u64;
    let mut failed = 0u64;
    let mut latency = 0u64;
    let mut offsets: BTreeMap<Partition, i64> = BTreeMap::new();
    for batch in group {
        events += batch.events.len() as u64;
        failed += batch.dead.len() as u64;
        latency += batch.events.latency_sum_us(now_us);
        for d in &batch.dead {
            metrics::EVENTS_FAILED
                .with_label_values(&[d.reason.as_str()])
                .inc();
        }
        for (t, p, o) in &batch.offsets {
            let slot = offsets.entry((Arc::clone(t), *p)).or_insert(*o);
            *slot = (*slot).max(*o);
        }
    }
    metrics::EVENTS_INGESTED
        .with_label_values(&["kafka"])
        .inc_by(events);
    metrics::DEAD_LETTERS
        .with_label_values(&["kafka"])
        .inc_by(failed);
    ctx.stats
        .record_batch(events, failed, elapsed.as_micros() as u64, latency);
    if let Ok(mut positions) = ctx.positions.write() {
        for ((t, p), o) in &offsets {
            positions.insert((Arc::clone(t), *p), *o);
        }
    }
    if let Some(on_commit) = ctx.on_commit.as_ref() {
        let list: Vec<_> = offsets.into_iter().map(|((t, p), o)| (t, p, o)).collect();
        on_commit(&list);
    }
    if let Some(feed) = ctx.feed.as_ref() {
        publish_committed(feed, group.iter().flat_map(|b| b.events.events()));
    }
    for batch in group {
        batch.ack.acknowledge(batch.tick, batch.rows());
    }
}

async fn write_group(ctx: &WriterContext, group: &[SinkBatch]) -> Result<(), SinkError> {
    let mut client = ctx.pool.get().await?;
    let mut clock = crate::metrics::PhaseClock::start();
    let days: Vec<i64> = group.iter().flat_map(|b| b.events.days()).collect();
    ctx.partitions.ensure(&**client, "events", days).await?;
    let tx = client.transaction().await?;
    clock.lap("partitions");
    let events: Vec<&EventRows> = group.iter().map(|b| &b.events).collect();
    copy_events(&tx, &events).await?;
    clock.lap("copy_events");
    let dead: Vec<&DeadLetter> = group.iter().flat_map(|b| b.dead.iter()).collect();
    insert_dead_letters(&tx, &dead).await?;
    clock.lap("dead_letters");
    let mut offsets: BTreeMap<(&str, i32), i64> = BTreeMap::new();
    for batch in group {
        for (t, p, o) in &batch.offsets {
            let slot = offsets.entry((t.as_ref(), *p)).or_insert(*o);
            *slot = (*slot).max(*o);
        }
    }
    upsert_offsets(&tx, &offsets).await?;
    clock.lap("offsets");
    // Ids become strings here, on the writer, not on the workers. Every id
    // was interned by this process's workers, and its dictionary only
    // grows, so none can be missing; if one were, say so rather than drop
    // it silently.
    // The batches hold the finest interval's windows only (the workers
    // leave out the others, see `pipeline::build_windows`), the only ones
    // stored (see rollups::append).
    let mut keyed: Vec<(WindowKey, &Agg)> = Vec::new();
    for (id, a) in group.iter().flat_map(|b| b.rollups.iter()) {
        match id.key() {
            Some(key) => keyed.push((key, a)),
            None => tracing::error!(
                ?id,
                "rollup id unknown to this process; contribution not stored"
            ),
        }
    }
    let rollups: Vec<(&WindowKey, &Agg)> = keyed.iter().map(|(k, a)| (k, *a)).collect();
    crate::rollups::append(&tx, &rollups).await?;
    clock.lap("rollups");
    // Last, so that the rows other lanes (and processes, and the REST
    // path) also write are locked for as short a time as possible: the
    // per-second counts and dashboard rows (row locks, keys sorted) and
    // the trading tables (one merge lock per table).
    upsert_counts(&tx, &events).await?;
    clock.lap("counts");
    let dashboard: Vec<&DashboardDelta> = events.iter().map(|r| &r.dashboard).collect();
    crate::dashboard::merge(&tx, &dashboard).await?;
    clock.lap("dashboard");
    let trading: Vec<&SealedTrading> = group.iter().map(|b| &b.trading).collect();
    crate::trading::merge(&tx, &trading).await?;
    clock.lap("trading");
    tx.commit().await?;
    clock.lap("commit");
    Ok(())
}

/// Largest COPY data message the writer sends.
const COPY_CHUNK_BYTES: usize = 64 * 1024;

/// Writes the events' rows with binary COPY; they were encoded by whoever
/// built the rows (see [`EventRows`]).
pub async fn copy_events(tx: &Transaction<'_>, rows: &[&EventRows]) -> Result<(), SinkError> {
    let expected: usize = rows.iter().map(|r| r.len()).sum();
    if expected == 0 {
        return Ok(());
    }
    let sink = tx.copy_in(COPY_EVENTS).await?;
    pin_mut!(sink);
    sink.feed(Bytes::from_static(COPY_HEADER)).await?;
    // In chunks: the connection copies each message into its write buffer,
    // which keeps the largest size it ever had (a whole group's rows as
    // one message grew it to tens of MB per connection).
    for chunk in rows
        .iter()
        .flat_map(|r| r.tuples().chunks(COPY_CHUNK_BYTES))
    {
        sink.feed(Bytes::copy_from_slice(chunk)).await?;
    }
    sink.feed(Bytes::from_static(COPY_TRAILER)).await?;
    let copied = sink.finish().await?;
    if copied != expected as u64 {
        return Err(SinkError::Invariant(format!(
            "COPY stored {copied} events, {expected} were sent"
        )));
    }
    Ok(())
}

/// Adds the events to `event_counts`, keys sorted so that concurrent
/// writers lock rows in the same order.
pub async fn upsert_counts(tx: &Transaction<'_>, rows: &[&EventRows]) -> Result<(), SinkError> {
    let mut counts: BTreeMap<(i64, &str), i64> = BTreeMap::new();
    for (second, event_type, n) in rows.iter().flat_map(|r| r.counts()) {
        *counts.entry((second, event_type)).or_insert(0) += n;
    }
    if counts.is_empty() {
        return Ok(());
    }
    let seconds: Vec<i64> = counts.keys().map(|(s, _)| *s).collect();
    let types: Vec<&str> = counts.keys().map(|(_, t)| *t).collect();
    let ns: Vec<i64> = counts.values().copied().collect();
    tx.execute(
        "INSERT INTO event_counts (second, event_type, count)
         SELECT to_timestamp(s), t, n FROM unnest($1::bigint[], $2::text[], $3::bigint[]) AS u(s, t, n)
         ORDER BY 1, 2
         ON CONFLICT (second, event_type) DO UPDATE SET count = event_counts.count + EXCLUDED.count",
        &[&seconds, &types, &ns],
    )
    .await?;
    Ok(())
}

async fn upsert_offsets(
    tx: &Transaction<'_>,
    offsets: &BTreeMap<(&str, i32), i64>,
) -> Result<(), SinkError> {
    if offsets.is_empty() {
        return Ok(());
    }
    let topics: Vec<&str> = offsets.keys().map(|(t, _)| *t).collect();
    let partitions: Vec<i32> = offsets.keys().map(|(_, p)| *p).collect();
    let next: Vec<i64> = offsets.values().copied().collect();
    tx.execute(
        "INSERT INTO kafka_offsets (topic, \"partition\", next_offset, updated_at)
         SELECT t, p, o, now() FROM unnest($1::text[], $2::int[], $3::bigint[]) AS u(t, p, o)
         ON CONFLICT (topic, \"partition\") DO UPDATE
         SET next_offset = EXCLUDED.next_offset, updated_at = EXCLUDED.updated_at",
        &[&topics, &partitions, &next],
    )
    .await?;
    Ok(())
}

/// PostgreSQL text cannot hold NUL; error messages may quote the input.
fn without_nul(s: &str) -> std::borrow::Cow<'_, str> {
    if s.contains('\0') {
        std::borrow::Cow::Owned(s.replace('\0', "\u{FFFD}"))
    } else {
        std::borrow::Cow::Borrowed(s)
    }
}

/// Stores refused inputs, with their errors (`jsonb`: `[{pointer, message}]`)
/// and the `event_type` read from the payload when it has one.
pub async fn insert_dead_letters(
    tx: &Transaction<'_>,
    dead: &[&DeadLetter],
) -> Result<(), SinkError> {
    if dead.is_empty() {
        return Ok(());
    }
    let mut sources = Vec::with_capacity(dead.len());
    let mut topics = Vec::with_capacity(dead.len());
    let mut partitions = Vec::with_capacity(dead.len());
    let mut offsets = Vec::with_capacity(dead.len());
    let mut reasons = Vec::with_capacity(dead.len());
    let mut details = Vec::with_capacity(dead.len());
    let mut payloads = Vec::with_capacity(dead.len());
    let mut received = Vec::with_capacity(dead.len());
    let mut errors: Vec<Option<String>> = Vec::with_capacity(dead.len());
    let mut event_types: Vec<Option<String>> = Vec::with_capacity(dead.len());
    for d in dead {
        errors.push(if d.errors.is_empty() {
            None
        } else {
            let clean: Vec<FieldError> = d
                .errors
                .iter()
                .map(|e| FieldError {
                    pointer: without_nul(&e.pointer).into_owned(),
                    message: without_nul(&e.message).into_owned(),
                })
                .collect();
            serde_json::to_string(&clean).ok()
        });
        event_types.push(dataflows::event::extract_event_type(&d.payload));
        match &d.source {
            EventSource::Kafka {
                topic,
                partition,
                offset,
            } => {
                sources.push("kafka");
                topics.push(Some(topic.as_ref()));
                partitions.push(Some(*partition));
                offsets.push(Some(*offset));
            }
            EventSource::Rest => {
                sources.push("rest");
                topics.push(None);
                partitions.push(None);
                offsets.push(None);
            }
        }
        reasons.push(d.reason.as_str());
        details.push(without_nul(&d.detail));
        payloads.push(d.payload.as_slice());
        received.push(d.received_at_us);
    }
    tx.execute(
        "INSERT INTO dead_letters (received_at, source, kafka_topic, kafka_partition, kafka_offset, reason, detail, payload, errors, event_type)
         SELECT to_timestamp(r / 1000000.0), s, t, p, o, re, de, pa, er::jsonb, et
         FROM unnest($1::bigint[], $2::text[], $3::text[], $4::int[], $5::bigint[], $6::text[], $7::text[], $8::bytea[], $9::text[], $10::text[])
           AS u(r, s, t, p, o, re, de, pa, er, et)
         ON CONFLICT DO NOTHING",
        &[&received, &sources, &topics, &partitions, &offsets, &reasons, &details, &payloads, &errors, &event_types],
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sink_is_degraded_while_any_lane_fails() {
        let health = LaneHealth {
            failing: AtomicUsize::new(0),
            degraded: Arc::new(AtomicBool::new(false)),
        };
        let degraded = || health.degraded.load(Ordering::Relaxed);
        let (mut a, mut b) = (false, false);
        health.report(&mut a, false);
        assert!(degraded(), "lane a failed");
        health.report(&mut b, true);
        assert!(
            degraded(),
            "lane b's success does not hide lane a's failure"
        );
        health.report(&mut a, false);
        health.report(&mut b, false);
        health.report(&mut a, true);
        assert!(degraded(), "lane b still fails");
        health.report(&mut b, true);
        assert!(!degraded(), "both lanes committed");
        assert_eq!(health.failing.load(Ordering::Relaxed), 0);
        // How `run` reports a lane that is gone: no later success of
        // another lane clears it.
        health.report(&mut false, false);
        health.report(&mut a, true);
        assert!(degraded(), "a lane is gone");
    }
}
