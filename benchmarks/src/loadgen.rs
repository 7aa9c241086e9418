//! The Kafka load generator: [`crate::gen`] events written with one
//! rdkafka `ThreadedProducer` (batched: linger 5 ms, up to 10,000 messages
//! and 1 MiB per batch, lz4) to the four topics, at a fixed rate (paced
//! against the clock every millisecond, so a slow moment is made up at
//! once) or as fast as the producer accepts them. Optionally interleaves
//! freshness markers at a fixed interval and reports the instant each one
//! was handed to the producer.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientConfig, ClientContext};

use crate::gen::{Generator, Tally, TOPIC_SUFFIXES};

/// What to produce.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    pub brokers: String,
    /// Topic names, in the order of [`TOPIC_SUFFIXES`].
    pub topics: Vec<String>,
    /// Events per second; `None`: as fast as possible.
    pub rate: Option<f64>,
    pub duration: Duration,
    /// Stop after this many events (markers not counted), if sooner than
    /// `duration`: a backlog of a known size.
    pub events: Option<u64>,
    pub seed: u64,
}

impl LoadSpec {
    /// The four topic names for a prefix (`""` gives the service's defaults).
    pub fn topics_for(prefix: &str) -> Vec<String> {
        TOPIC_SUFFIXES
            .iter()
            .map(|s| format!("{prefix}{s}"))
            .collect()
    }
}

/// Freshness markers: one every `interval`, each reported as `(seq, sent)`.
#[derive(Debug)]
pub struct Markers {
    pub interval: Duration,
    /// Event time = send time minus this (see the README: a marker's
    /// second must be closed for the dashboard to count it).
    pub backdate: Duration,
    pub sent: Sender<(u64, Instant)>,
}

/// What was produced.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct LoadReport {
    /// Events generated and handed to the producer (markers included).
    pub tally: Tally,
    pub markers: u64,
    pub delivered: u64,
    pub failed: u64,
    /// From the first send to the last delivery report.
    pub elapsed_s: f64,
    /// Seconds spent sending (the phase duration, or longer if behind).
    pub send_s: f64,
    /// Events handed to the producer per second of `send_s`.
    pub rate: f64,
}

#[derive(Default)]
struct Counting {
    delivered: AtomicU64,
    failed: AtomicU64,
}

impl ClientContext for Counting {}

impl ProducerContext for Counting {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => self.delivered.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.failed.fetch_add(1, Ordering::Relaxed),
        };
    }
}

fn producer(brokers: &str) -> anyhow::Result<ThreadedProducer<Counting>> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("batch.num.messages", "10000")
        .set("batch.size", "1048576")
        .set("compression.type", "lz4")
        .set("queue.buffering.max.messages", "1000000")
        .set("queue.buffering.max.kbytes", "1048576")
        .set("message.timeout.ms", "120000")
        .create_with_context(Counting::default())
        .context("kafka producer")
}

fn now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

/// Sends one message, waiting while librdkafka's queue is full.
fn send(
    producer: &ThreadedProducer<Counting>,
    topic: &str,
    key: &[u8],
    payload: &[u8],
) -> anyhow::Result<()> {
    loop {
        match producer.send(BaseRecord::to(topic).key(key).payload(payload)) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                // The producer's own thread drains the queue.
                std::thread::sleep(Duration::from_micros(500));
            }
            Err((e, _)) => return Err(e).context("produce"),
        }
    }
}

/// Produces `spec` (and markers); returns once every message is delivered
/// or failed. `stop` ends the sending early.
pub fn run(
    spec: &LoadSpec,
    markers: Option<Markers>,
    stop: &AtomicBool,
) -> anyhow::Result<LoadReport> {
    anyhow::ensure!(spec.topics.len() == 4, "four topics are needed");
    let producer = producer(&spec.brokers)?;
    let mut gen = Generator::new(spec.seed);
    let mut marker_gen = Generator::new(spec.seed ^ 0x6d61_726b);
    let mut tally = Tally::default();
    let mut marker_seq = 0u64;
    let start = Instant::now();
    let mut next_marker = markers.as_ref().map(|m| start + m.interval);
    let mut sent = 0u64;
    loop {
        let elapsed = start.elapsed();
        if elapsed >= spec.duration || stop.load(Ordering::Relaxed) {
            break;
        }
        if spec.events.is_some_and(|n| sent >= n) {
            break;
        }
        let target = match spec.rate {
            Some(rate) => (elapsed.as_secs_f64() * rate) as u64,
            None => sent + 1_000,
        };
        let target = spec.events.map_or(target, |n| target.min(n));
        while sent < target {
            if let (Some(m), Some(due)) = (markers.as_ref(), next_marker) {
                if Instant::now() >= due {
                    let ts = now_us() - m.backdate.as_micros() as i64;
                    let meta = marker_gen.marker(marker_seq, ts);
                    let at = Instant::now();
                    send(
                        &producer,
                        &spec.topics[meta.topic],
                        marker_gen.key(),
                        marker_gen.payload(),
                    )?;
                    tally.add(&meta);
                    let _ = m.sent.send((marker_seq, at));
                    marker_seq += 1;
                    next_marker = Some(due + m.interval);
                }
            }
            let meta = gen.next(now_us());
            send(
                &producer,
                &spec.topics[meta.topic],
                gen.key(),
                gen.payload(),
            )?;
            tally.add(&meta);
            sent += 1;
        }
        if spec.rate.is_some() {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    let send_s = start.elapsed().as_secs_f64();
    producer
        .flush(Duration::from_secs(120))
        .context("flush producer")?;
    let ctx = producer.context();
    Ok(LoadReport {
        delivered: ctx.delivered.load(Ordering::Relaxed),
        failed: ctx.failed.load(Ordering::Relaxed),
        tally: tally.clone(),
        markers: marker_seq,
        elapsed_s: start.elapsed().as_secs_f64(),
        send_s,
        rate: tally.total as f64 / send_s.max(1e-9),
    })
}

/// Runs [`run`] on a thread of its own.
pub fn spawn(
    spec: LoadSpec,
    markers: Option<Markers>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<anyhow::Result<LoadReport>>> {
    std::thread::Builder::new()
        .name("loadgen".into())
        .spawn(move || run(&spec, markers, &stop))
}
