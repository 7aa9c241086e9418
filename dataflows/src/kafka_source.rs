//! The Kafka source: one `BaseConsumer` per timely worker.
//!
//! Partitions are assigned by the job, not by a consumer-group rebalance:
//! worker `w` of `n` reads every partition whose stable hash of
//! `(topic, partition)` is `w` modulo `n`. A [`PartitionDirectory`],
//! refreshed off the worker threads by [`spawn_metadata_refresher`], tells
//! workers which partitions exist, so that new partitions are picked up.
//!
//! The operator emits [`Record`]s at the current processing-time tick: valid
//! events (parsed, then checked by [`crate::validate`] against the built-in
//! checks and the custom schemas in force), dead letters, and one `Progress` mark per partition that moved,
//! so that the sink can store each partition's next offset in the same
//! transaction as the rows. It never blocks: it polls with a zero timeout,
//! and pauses polling while too many rows wait for PostgreSQL.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::Operator;
use timely::dataflow::Stream;
use tracing::{debug, info, warn};

use crate::durable::WorkerAck;
use crate::event::{
    kafka_event_id, parse_event, DeadLetter, EventSource, Partition, PartitionOffset, Record,
    TimeBounds,
};
use crate::metrics;
use crate::time::now_ms;
use crate::validate::{CachedValidators, Registry};

/// How to reach Kafka, and how to read from it.
#[derive(Clone, Debug)]
pub struct KafkaSettings {
    pub brokers: String,
    pub group_id: String,
    pub topics: Vec<String>,
    pub session_timeout_ms: u64,
    /// Most messages read by one activation of one worker.
    pub poll_budget: usize,
    /// Stop polling while this many rows of this worker wait for PostgreSQL.
    pub max_pending_rows: i64,
    /// Longest tick while a source is behind (see [`crate::time::TickPolicy`]).
    pub catch_up_tick_ms: u64,
    pub time_bounds: TimeBounds,
    /// librdkafka properties of the link's security (`security.protocol`,
    /// `ssl.*`, `sasl.*`), from `kafka.security`.
    pub security: LinkSecurity,
}

/// librdkafka properties that may hold a secret: shown without values.
#[derive(Clone, Default)]
pub struct LinkSecurity(pub Vec<(String, String)>);

impl LinkSecurity {
    /// Sets these properties on a client's configuration.
    pub fn apply(&self, config: &mut ClientConfig) {
        for (key, value) in &self.0 {
            config.set(key, value);
        }
    }
}

impl std::fmt::Debug for LinkSecurity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(key, _)| key))
            .finish()
    }
}

impl KafkaSettings {
    /// The librdkafka configuration shared by the source and the helpers.
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.brokers)
            .set("group.id", &self.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", self.session_timeout_ms.to_string())
            // A fetch waits for 64 KiB or 10 ms, whichever comes first. With
            // one byte it returned at once with the few events there were:
            // at 8,400 events/s the broker spent about a sixth of this
            // 2-core machine answering fetches, and 64 KiB took a third of
            // that off (broker 17 -> 11 %, librdkafka 7.6 -> 5.6 %), for at
            // most 10 ms more latency (benchmarks/RESULTS.md).
            .set("fetch.wait.max.ms", "10")
            .set("fetch.min.bytes", "65536")
            .set("queued.max.messages.kbytes", "65536")
            .set("topic.metadata.refresh.interval.ms", "10000")
            .set("client.id", "analytics");
        self.security.apply(&mut config);
        config
    }
}

/// The partitions that exist, refreshed from Kafka metadata.
#[derive(Debug, Default)]
pub struct PartitionDirectory {
    partitions: RwLock<Arc<Vec<Partition>>>,
    version: AtomicU64,
}

impl PartitionDirectory {
    pub fn set(&self, mut partitions: Vec<Partition>) {
        partitions.sort();
        let mut guard = match self.partitions.write() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        if **guard != partitions {
            *guard = Arc::new(partitions);
            self.version.fetch_add(1, Ordering::Release);
        }
    }

    pub fn get(&self) -> (u64, Arc<Vec<Partition>>) {
        let version = self.version.load(Ordering::Acquire);
        let guard = match self.partitions.read() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        (version, Arc::clone(&guard))
    }
}

/// Which worker reads `topic/partition`: a stable FNV-1a hash, modulo `peers`.
pub fn owner(topic: &str, partition: i32, peers: usize) -> usize {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in topic.bytes().chain(partition.to_le_bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    (hash % peers.max(1) as u64) as usize
}

/// Reads topic metadata every `interval` on a thread of its own until
/// `shutdown`, publishing partitions to `directory` and consumer lag
/// (high watermark minus the offset stored in `positions`) to metrics.
pub fn spawn_metadata_refresher(
    settings: KafkaSettings,
    directory: Arc<PartitionDirectory>,
    positions: Arc<RwLock<HashMap<Partition, i64>>>,
    interval: Duration,
    shutdown: Arc<AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("kafka-metadata".into())
        .spawn(move || {
            let consumer: BaseConsumer = match settings.client_config().create() {
                Ok(c) => c,
                Err(e) => {
                    warn!(error = %e, "cannot create metadata client");
                    return;
                }
            };
            let mut last_lag = std::time::Instant::now() - Duration::from_secs(3600);
            while !shutdown.load(Ordering::Relaxed) {
                match consumer.fetch_metadata(None, Duration::from_secs(5)) {
                    Ok(metadata) => {
                        let mut found = Vec::new();
                        for topic in metadata.topics() {
                            if !settings.topics.iter().any(|t| t == topic.name()) {
                                continue;
                            }
                            if topic.error().is_some() {
                                continue;
                            }
                            let name: Arc<str> = Arc::from(topic.name());
                            for p in topic.partitions() {
                                found.push((Arc::clone(&name), p.id()));
                            }
                        }
                        directory.set(found.clone());
                        if last_lag.elapsed() >= Duration::from_secs(5) {
                            last_lag = std::time::Instant::now();
                            let stored = positions.read().map(|g| g.clone()).unwrap_or_default();
                            for (topic, partition) in &found {
                                if let Ok((low, high)) = consumer.fetch_watermarks(
                                    topic,
                                    *partition,
                                    Duration::from_secs(2),
                                ) {
                                    let at = stored
                                        .get(&(Arc::clone(topic), *partition))
                                        .copied()
                                        .unwrap_or(low);
                                    metrics::CONSUMER_LAG
                                        .with_label_values(&[
                                            topic.as_ref(),
                                            partition.to_string().as_str(),
                                        ])
                                        .set((high - at.max(low)).max(0));
                                }
                            }
                        }
                    }
                    Err(e) => warn!(error = %e, "kafka metadata refresh failed"),
                }
                // Sleep in short steps so that shutdown is prompt.
                let deadline = std::time::Instant::now() + interval;
                while std::time::Instant::now() < deadline && !shutdown.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        })
}

/// Everything one worker's source needs.
pub struct SourceContext {
    pub settings: KafkaSettings,
    pub directory: Arc<PartitionDirectory>,
    pub ack: Arc<WorkerAck>,
    pub shutdown: Arc<AtomicBool>,
    pub tick_ms: u64,
    /// Built-in checks and the custom schemas in force, refreshed off the worker.
    pub validators: Arc<Registry>,
}

/// Builds the Kafka source of this worker.
///
/// `start` carries the offsets stored in PostgreSQL, broadcast to every
/// worker at time 0; the source assigns no partition before that time is
/// complete, so that it resumes exactly where the stored state ends.
pub fn kafka_source<'s>(
    start: Stream<'s, u64, Vec<PartitionOffset>>,
    ctx: SourceContext,
) -> Stream<'s, u64, Vec<Record>> {
    let scope = start.scope();
    let index = scope.index();
    let peers = scope.peers();
    start.unary_frontier(Pipeline, "KafkaSource", move |capability, info| {
        let activator = scope.activator_for(info.address);
        let mut capability = Some(capability);
        let mut stored: HashMap<Partition, i64> = HashMap::new();
        let mut started = false;
        let mut consumer: Option<BaseConsumer> = None;
        let mut seen_version = u64::MAX;
        // Next offset of every partition this worker reads.
        let mut next: BTreeMap<Partition, i64> = BTreeMap::new();
        // Per partition read this time: its next offset and how many messages.
        let mut moved: HashMap<Partition, (i64, u64)> = HashMap::new();
        let tick_ms = ctx.tick_ms;
        let mut pacing = crate::time::Pacing::new(
            tick_ms,
            ctx.settings.catch_up_tick_ms,
            ctx.settings.max_pending_rows,
        );
        let mut validators = CachedValidators::new(Arc::clone(&ctx.validators));
        move |(input, frontier), output| {
            input.for_each(|_cap, data| {
                for (topic, partition, offset) in data.drain(..) {
                    stored.insert((topic, partition), offset);
                }
            });
            let Some(cap) = capability.as_mut() else {
                return;
            };
            if ctx.shutdown.load(Ordering::Relaxed) {
                info!(worker = index, "kafka source stopping");
                capability = None;
                return;
            }
            pacing.advance(cap, &ctx.ack, now_ms());
            if !started {
                if frontier.less_equal(&0) {
                    activator.activate_after(Duration::from_millis(tick_ms));
                    return;
                }
                started = true;
                match ctx.settings.client_config().create::<BaseConsumer>() {
                    Ok(c) => consumer = Some(c),
                    Err(e) => warn!(worker = index, error = %e, "cannot create kafka consumer"),
                }
            }
            let Some(consumer) = consumer.as_ref() else {
                activator.activate_after(Duration::from_secs(1));
                return;
            };
            let (version, partitions) = ctx.directory.get();
            if version != seen_version {
                seen_version = version;
                let mut changed = false;
                for (topic, partition) in partitions.iter() {
                    if owner(topic, *partition, peers) != index {
                        continue;
                    }
                    let key = (Arc::clone(topic), *partition);
                    if let std::collections::btree_map::Entry::Vacant(slot) = next.entry(key) {
                        let offset = stored.get(slot.key()).copied().unwrap_or(-1);
                        slot.insert(offset);
                        changed = true;
                    }
                }
                if changed {
                    let mut tpl = TopicPartitionList::new();
                    for ((topic, partition), offset) in &next {
                        let at = if *offset >= 0 {
                            Offset::Offset(*offset)
                        } else {
                            Offset::Beginning
                        };
                        if let Err(e) = tpl.add_partition_offset(topic, *partition, at) {
                            warn!(error = %e, "bad partition offset");
                        }
                    }
                    match consumer.assign(&tpl) {
                        Ok(()) => info!(
                            worker = index,
                            partitions = next.len(),
                            "assigned kafka partitions"
                        ),
                        Err(e) => warn!(worker = index, error = %e, "kafka assign failed"),
                    }
                }
            }
            if next.is_empty() {
                // Nothing to read yet; look again when metadata may have changed.
                activator.activate_after(Duration::from_millis(tick_ms.max(100)));
                return;
            }
            if pacing.paused(&ctx.ack) {
                metrics::SOURCE_PAUSED.inc();
                activator.activate_after(Duration::from_millis(10));
                return;
            }
            let now_us = (now_ms() as i64) * 1000;
            let mut read = 0usize;
            {
                let mut session = output.session(&*cap);
                while read < ctx.settings.poll_budget {
                    let Some(result) = consumer.poll(Duration::ZERO) else {
                        break;
                    };
                    let message = match result {
                        Ok(m) => m,
                        Err(e) => {
                            debug!(worker = index, error = %e, "kafka poll error");
                            metrics::KAFKA_ERRORS.inc();
                            break;
                        }
                    };
                    read += 1;
                    let topic = message.topic();
                    let partition = message.partition();
                    let offset = message.offset();
                    let Some((key, _)) = next.get_key_value(&(Arc::from(topic), partition)) else {
                        continue;
                    };
                    let topic_arc = Arc::clone(&key.0);
                    let source = EventSource::Kafka {
                        topic: Arc::clone(&topic_arc),
                        partition,
                        offset,
                    };
                    let payload = message.payload().unwrap_or(&[]);
                    session.give(decode(
                        payload,
                        source,
                        now_us,
                        ctx.settings.time_bounds,
                        &mut validators,
                    ));
                    let slot = moved.entry((topic_arc, partition)).or_insert((0, 0));
                    *slot = (offset + 1, slot.1 + 1);
                }
                for ((topic, partition), (next_offset, messages)) in moved.drain() {
                    metrics::MESSAGES_CONSUMED
                        .with_label_values(&[topic.as_ref()])
                        .inc_by(messages);
                    next.insert((Arc::clone(&topic), partition), next_offset);
                    session.give(Record::Progress {
                        topic,
                        partition,
                        next_offset,
                    });
                }
            }
            pacing.read(read, ctx.settings.poll_budget);
            if read >= ctx.settings.poll_budget {
                activator.activate();
            } else {
                activator.activate_after(Duration::from_millis(5));
            }
        }
    })
}

/// Parses and validates one message: an event, or a dead letter saying why not.
pub(crate) fn decode(
    payload: &[u8],
    source: EventSource,
    now_us: i64,
    bounds: TimeBounds,
    validators: &mut CachedValidators,
) -> Record {
    let id = || match &source {
        EventSource::Kafka {
            topic,
            partition,
            offset,
        } => kafka_event_id(topic, *partition, *offset),
        _ => uuid::Uuid::new_v4(),
    };
    match parse_event(payload, source.clone(), id, now_us, bounds) {
        Ok(mut event) => match validators.current().validate(&mut event) {
            Ok(()) => Record::Event(Arc::new(event)),
            Err(rejection) => Record::Dead(rejection.into_dead_letter(payload, source, now_us)),
        },
        Err(err) => Record::Dead(DeadLetter::parse_failure(err, payload, source, now_us)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_spread_and_are_stable() {
        let mut seen = vec![0usize; 4];
        for topic in [
            "trading.events",
            "market.data",
            "order.events",
            "user.actions",
        ] {
            for p in 0..6 {
                let o = owner(topic, p, 4);
                assert_eq!(o, owner(topic, p, 4));
                seen[o] += 1;
            }
        }
        assert!(seen.iter().all(|n| *n > 0), "{seen:?}");
        assert_eq!(owner("x", 0, 1), 0);
    }

    #[test]
    fn directory_versions_change_only_on_change() {
        let d = PartitionDirectory::default();
        let (v0, _) = d.get();
        d.set(vec![(Arc::from("a"), 0)]);
        let (v1, p) = d.get();
        assert_ne!(v0, v1);
        assert_eq!(p.len(), 1);
        d.set(vec![(Arc::from("a"), 0)]);
        assert_eq!(d.get().0, v1);
    }
}
