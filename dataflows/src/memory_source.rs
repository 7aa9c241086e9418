//! An in-process source for measuring the dataflow without Kafka: the
//! same parsing, validation and `Record`s as [`crate::kafka_source`], fed
//! from a [`PayloadFeed`] instead of a consumer. Each worker reads its own
//! share of the feed as partition `worker` of a topic named by the feed,
//! with consecutive offsets, so that the sink sees the same progress marks
//! as with Kafka. Used by the dataflow-core benchmark.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::Operator;
use timely::dataflow::Stream;

use crate::event::{EventSource, PartitionOffset, Record};
use crate::kafka_source::{decode, SourceContext};
use crate::metrics;
use crate::time::now_ms;
use crate::validate::CachedValidators;

/// Where the payloads of a [`memory_source`] come from.
pub trait PayloadFeed: Send + Sync {
    /// The topic name the records carry.
    fn topic(&self) -> &str;
    /// Appends at most `budget` payloads for `worker` to `out`; returns
    /// false once this worker's share is exhausted (and appends nothing).
    fn fill(&self, worker: usize, budget: usize, out: &mut Vec<Vec<u8>>) -> bool;
}

/// Builds the in-memory source of this worker. Like the Kafka source it
/// waits for time 0 of `start` to complete, emits at the current tick,
/// pauses while too many rows wait for the sink, and releases its
/// capability when the feed is exhausted or on shutdown.
pub fn memory_source<'s>(
    start: Stream<'s, u64, Vec<PartitionOffset>>,
    ctx: SourceContext,
    feed: Arc<dyn PayloadFeed>,
) -> Stream<'s, u64, Vec<Record>> {
    let scope = start.scope();
    let index = scope.index();
    start.unary_frontier(Pipeline, "MemorySource", move |capability, info| {
        let activator = scope.activator_for(info.address);
        let mut capability = Some(capability);
        let topic: Arc<str> = Arc::from(feed.topic());
        let partition = index as i32;
        let mut offset = 0i64;
        let mut payloads = Vec::new();
        let mut validators = CachedValidators::new(Arc::clone(&ctx.validators));
        let mut pacing = crate::time::Pacing::new(
            ctx.tick_ms,
            ctx.settings.catch_up_tick_ms,
            ctx.settings.max_pending_rows,
        );
        move |(input, frontier), output| {
            input.for_each(|_cap, data| data.clear());
            let Some(cap) = capability.as_mut() else {
                return;
            };
            if ctx.shutdown.load(Ordering::Relaxed) {
                capability = None;
                return;
            }
            pacing.advance(cap, &ctx.ack, now_ms());
            if frontier.less_equal(&0) {
                activator.activate_after(Duration::from_millis(ctx.tick_ms));
                return;
            }
            if pacing.paused(&ctx.ack) {
                metrics::SOURCE_PAUSED.inc();
                activator.activate_after(Duration::from_millis(1));
                return;
            }
            payloads.clear();
            if !feed.fill(index, ctx.settings.poll_budget, &mut payloads) {
                capability = None;
                return;
            }
            pacing.read(payloads.len(), ctx.settings.poll_budget);
            let now_us = (now_ms() as i64) * 1000;
            let mut session = output.session(&*cap);
            for payload in payloads.drain(..) {
                let source = EventSource::Kafka {
                    topic: Arc::clone(&topic),
                    partition,
                    offset,
                };
                offset += 1;
                session.give(decode(
                    &payload,
                    source,
                    now_us,
                    ctx.settings.time_bounds,
                    &mut validators,
                ));
            }
            session.give(Record::Progress {
                topic: Arc::clone(&topic),
                partition,
                next_offset: offset,
            });
            activator.activate();
        }
    })
}
