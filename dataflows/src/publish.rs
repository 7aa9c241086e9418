//! The publish operator: turns the count updates of completed, durable
//! ticks into an immutable [`LiveSnapshot`] sent through a
//! `tokio::sync::watch` channel.
//!
//! Inputs: count updates `((event_type, second), tick, diff)` gathered on
//! each process's leader worker, and the durability stream whose frontier is
//! the global durability frontier. A tick is applied once both frontiers
//! have passed it, so that a snapshot never shows an event that could still
//! be lost; `as_of` is the meet of the two frontiers.

use std::collections::BTreeMap;
use std::sync::Arc;

use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::Operator;
use timely::dataflow::Stream;
use tokio::sync::watch;

use crate::counts::{CountUpdate, Horizon};
use crate::live::{LiveCounts, LiveSnapshot};
use crate::metrics;
use crate::time::now_ms;

/// A count change: `((event_type, second), diff)`.
type CountDiff = ((String, i64), isize);

fn frontier_time(frontier: &timely::progress::frontier::MutableAntichain<u64>) -> u64 {
    frontier
        .frontier()
        .iter()
        .next()
        .copied()
        .unwrap_or(u64::MAX)
}

/// Publishes snapshots from `updates` gated by `durable`.
pub fn publish<'s>(
    updates: Stream<'s, u64, Vec<CountUpdate>>,
    durable: Stream<'s, u64, Vec<()>>,
    horizon: Horizon,
    sender: Option<Arc<watch::Sender<Arc<LiveSnapshot>>>>,
) {
    let _: Stream<'s, u64, Vec<()>> = updates
        .binary_frontier::<_, timely::container::CapacityContainerBuilder<Vec<()>>, _, _, _, _>(
            durable,
            Pipeline,
            Pipeline,
            "PublishSnapshot",
            move |_capability, _info| {
                let mut stash: BTreeMap<u64, Vec<CountDiff>> = BTreeMap::new();
                let mut counts = LiveCounts::default();
                let mut as_of = 0u64;
                move |(input1, frontier1), (input2, frontier2), _output| {
                    input1.for_each(|_cap, data| {
                        for (key, time, diff) in data.drain(..) {
                            stash.entry(time).or_default().push((key, diff));
                        }
                    });
                    input2.for_each(|_cap, _data| {});
                    let Some(sender) = sender.as_ref() else {
                        stash.clear();
                        return;
                    };
                    let bound = frontier_time(frontier1).min(frontier_time(frontier2));
                    // Empty frontiers mean shutdown: the future-dated retractions
                    // flushed then must not blank the last snapshot.
                    if bound <= as_of || bound == u64::MAX {
                        return;
                    }
                    let mut oldest_applied = None;
                    while let Some(entry) = stash.first_entry() {
                        if *entry.key() >= bound {
                            break;
                        }
                        let tick = *entry.key();
                        oldest_applied.get_or_insert(tick);
                        for ((event_type, second), diff) in entry.remove() {
                            counts.update(&event_type, second, diff as i64);
                        }
                    }
                    as_of = bound;
                    if let Some(oldest) = oldest_applied {
                        let lag = now_ms().saturating_sub(oldest);
                        metrics::FRESHNESS.observe(lag as f64 / 1000.0);
                    }
                    metrics::LIVE_ENTRIES.set(counts.len() as i64);
                    sender.send_replace(Arc::new(LiveSnapshot {
                        as_of_ms: as_of,
                        counts: counts.clone(),
                        covered_from_second: horizon.covered_from(as_of),
                    }));
                }
            },
        );
}
