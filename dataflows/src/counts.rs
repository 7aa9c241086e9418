//! Live counts of events by type and second of event time.
//!
//! Collection: `(event_type, second)` with `isize` multiplicities, over
//! processing-time ticks (`u64` ms). An event read at tick `t` adds `+1` at
//! `t` and a future-dated `-1` at [`Horizon::expire_at`] of its second, so
//! the arrangement holds only seconds inside the live horizon and memory is
//! bounded by the horizon, not by the number of events seen. Updates are
//! pre-aggregated per tick and worker before they are exchanged.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::operator::source;
use timely::dataflow::operators::Operator;
use timely::dataflow::{Scope, Stream};
use timely::scheduling::SyncActivator;

use crate::event::{EventSource, PartitionOffset, Record};
use crate::metrics;
use crate::time::{current_tick, frontier_min, tick_ceil, TickStash};
use crate::FastMap;

/// A count update: `((event_type, second), tick, diff)`.
pub type CountUpdate = ((String, i64), u64, isize);

type CountBuilder = CapacityContainerBuilder<Vec<CountUpdate>>;

/// How long seconds of event time stay in live state.
#[derive(Clone, Copy, Debug)]
pub struct Horizon {
    pub horizon_ms: u64,
    pub tick_ms: u64,
}

impl Horizon {
    /// The tick at which the counts of `second` leave live state.
    pub fn expire_at(&self, second: i64) -> u64 {
        let end_ms = (second.saturating_add(1)).saturating_mul(1000).max(0) as u64;
        tick_ceil(end_ms.saturating_add(self.horizon_ms), self.tick_ms)
    }

    /// The first second fully covered by a snapshot whose frontier is `as_of_ms`.
    pub fn covered_from(&self, as_of_ms: u64) -> i64 {
        let edge = as_of_ms as i64 - self.horizon_ms as i64;
        edge.div_euclid(1000) + i64::from(edge.rem_euclid(1000) != 0)
    }
}

/// Counts a worker's records by `(event_type, second)`, pre-aggregated per
/// tick, with their future retractions ([`crate::expiry::expire`]).
/// Seconds already past the live horizon are not held: they are stored raw
/// and in the per-second table, and counted here as late, per topic.
pub fn count_updates<'s>(
    records: Stream<'s, u64, Vec<Record>>,
    horizon: Horizon,
) -> Stream<'s, u64, Vec<CountUpdate>> {
    let counts = records.unary_frontier::<CountBuilder, _, _, _>(
        Pipeline,
        "CountByTypeSecond",
        move |_, _| {
            // Per tick: event type → (second, count), a tick's few seconds.
            let mut ticks: TickStash<FastMap<String, Vec<(i64, isize)>>> = TickStash::default();
            let mut late: HashMap<Arc<str>, u64> = HashMap::new();
            move |(input, frontier), output| {
                input.for_each(|cap, data| {
                    let Some((now, counts)) = ticks.at(&cap, FastMap::default) else {
                        return;
                    };
                    for record in data.iter() {
                        let Record::Event(event) = record else {
                            continue;
                        };
                        let second = event.second();
                        if horizon.expire_at(second) <= now {
                            if let EventSource::Kafka { topic, .. } = &event.source {
                                *late.entry(Arc::clone(topic)).or_insert(0) += 1;
                            }
                            continue;
                        }
                        let seconds = match counts.get_mut(event.event_type.as_str()) {
                            Some(seconds) => seconds,
                            None => counts.entry(event.event_type.clone()).or_default(),
                        };
                        match seconds.iter_mut().find(|(s, _)| *s == second) {
                            Some((_, n)) => *n += 1,
                            None => seconds.push((second, 1)),
                        }
                    }
                    for (topic, n) in late.drain() {
                        metrics::LATE_EVENTS.with_label_values(&[&topic]).inc_by(n);
                    }
                });
                let bound = frontier_min(frontier);
                while let Some((now, cap, counts)) = ticks.pop_before(bound) {
                    output
                        .session(&cap)
                        .give_iterator(counts.into_iter().flat_map(
                            move |(event_type, seconds)| {
                                seconds
                                    .into_iter()
                                    .map(move |(second, n)| ((event_type.clone(), second), now, n))
                            },
                        ));
                }
            }
        },
    );
    expire_counts(counts, horizon)
}

/// Each count and its retraction once its second leaves the horizon.
fn expire_counts<'s>(
    counts: Stream<'s, u64, Vec<CountUpdate>>,
    horizon: Horizon,
) -> Stream<'s, u64, Vec<CountUpdate>> {
    crate::expiry::expire(
        counts,
        "ExpireCounts",
        move |(_, second): &(String, i64)| horizon.expire_at(*second),
        |_| {},
    )
}

/// Items committed outside the dataflow (REST events, and the window
/// contributions stored with them), waiting for the process's leader
/// worker to feed them to live state.
pub struct CommittedQueue<T> {
    items: Mutex<Vec<T>>,
    activator: Mutex<Option<SyncActivator>>,
}

impl<T> Default for CommittedQueue<T> {
    fn default() -> Self {
        CommittedQueue {
            items: Mutex::new(Vec::new()),
            activator: Mutex::new(None),
        }
    }
}

impl<T> std::fmt::Debug for CommittedQueue<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommittedQueue").finish_non_exhaustive()
    }
}

impl<T> CommittedQueue<T> {
    /// Queues items already committed in PostgreSQL.
    pub fn push(&self, items: impl IntoIterator<Item = T>) {
        if let Ok(mut guard) = self.items.lock() {
            guard.extend(items);
        }
        if let Ok(guard) = self.activator.lock() {
            if let Some(a) = guard.as_ref() {
                let _ = a.activate();
            }
        }
    }

    fn take(&self) -> Vec<T> {
        self.items
            .lock()
            .map(|mut g| std::mem::take(&mut *g))
            .unwrap_or_default()
    }
}

/// On every process's leader worker, what `queue` receives, emitted at the
/// current tick (already durable: it bypasses the sink); elsewhere an
/// empty stream.
pub fn committed<'s, T, D>(
    scope: Scope<'s, u64>,
    name: &str,
    queue: Option<Arc<CommittedQueue<T>>>,
    tick_ms: u64,
    shutdown: Arc<AtomicBool>,
    mut convert: impl FnMut(T, u64) -> D + 'static,
) -> Stream<'s, u64, Vec<D>>
where
    T: 'static,
    D: Clone + 'static,
{
    source::<_, CapacityContainerBuilder<Vec<D>>, _, _>(scope, name, move |capability, info| {
        let activator = scope.activator_for(std::rc::Rc::clone(&info.address));
        if let Some(q) = queue.as_ref() {
            if let Ok(mut guard) = q.activator.lock() {
                *guard = Some(scope.worker().sync_activator_for(info.address.to_vec()));
            }
        }
        let mut capability = Some(capability);
        move |output| {
            let (Some(cap), Some(q)) = (capability.as_mut(), queue.as_ref()) else {
                capability = None;
                return;
            };
            if shutdown.load(Ordering::Relaxed) {
                capability = None;
                return;
            }
            let tick = current_tick(tick_ms);
            if *cap.time() < tick {
                cap.downgrade(&tick);
            }
            let time = *cap.time();
            output
                .session(&*cap)
                .give_iterator(q.take().into_iter().map(|item| convert(item, time)));
            activator.activate_after(Duration::from_millis(tick_ms));
        }
    })
}

/// Counts restored from PostgreSQL, emitted by worker 0 at time 0 with
/// their retractions.
pub fn restored_counts<'s>(
    scope: Scope<'s, u64>,
    restored: Vec<((String, i64), i64)>,
    horizon: Horizon,
) -> Stream<'s, u64, Vec<CountUpdate>> {
    let rows = restored
        .into_iter()
        .map(|(key, n)| (key, n as isize))
        .collect();
    expire_counts(
        crate::expiry::restored(scope, "RestoredCounts", rows),
        horizon,
    )
}

/// The offsets stored in PostgreSQL, emitted by worker 0 at time 0 and
/// broadcast, so that every worker's source starts from them.
pub fn start_offsets<'s>(
    scope: Scope<'s, u64>,
    offsets: Vec<PartitionOffset>,
) -> Stream<'s, u64, Vec<PartitionOffset>> {
    let workers = (0..scope.peers()).collect();
    let mut offsets = Some(offsets);
    let stream = source::<_, CapacityContainerBuilder<Vec<PartitionOffset>>, _, _>(
        scope,
        "StartOffsets",
        move |capability, _info| {
            let mut capability = Some(capability);
            move |output| {
                if let Some(cap) = capability.take() {
                    output
                        .session(&cap)
                        .give_iterator(offsets.take().unwrap_or_default().into_iter());
                }
            }
        },
    );
    crate::route::send_to(stream, "BroadcastOffsets", workers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_and_coverage_agree() {
        let h = Horizon {
            horizon_ms: 60_000,
            tick_ms: 100,
        };
        // Second 100 ends at 101_000 ms, expires 60 s later.
        assert_eq!(h.expire_at(100), 161_000);
        for as_of in [161_000u64, 161_050, 161_999, 170_000] {
            let from = h.covered_from(as_of);
            // Every second at or after `from` is still held at `as_of`...
            assert!(h.expire_at(from) >= as_of, "as_of {as_of} from {from}");
            // ...and coverage is conservative by at most two seconds.
            assert!(h.expire_at(from - 2) < as_of + 1000, "as_of {as_of}");
        }
    }
}
