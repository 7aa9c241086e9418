//! Windowed aggregates as a differential collection.
//!
//! Collection: [`WinId`] (series, interval, window start) with [`Agg`]
//! diffs over processing-time ticks.
//!
//! - [`fold_windows`] folds everything a worker reads in a tick into
//!   one-minute panes per series ([`Partials`]) and, once the tick is
//!   complete, emits one delta per window it touched (all configured
//!   intervals derived from the panes). Those deltas are what the sink
//!   merges into `metric_aggregations` with the tick's raw rows, late
//!   ones included (the writer gives them their strings).
//! - [`retire_windows`] exchanges the deltas on their series, so that all
//!   windows of a series live on one worker, and retires each window once:
//!   when its interval's horizon passes ([`WindowSpec::expire_at`]) it emits
//!   the negation of everything the window received, which cancels it in
//!   the arrangement. Deltas of windows already past their horizon (late
//!   events) are not held in memory at all: they only reach PostgreSQL, and
//!   are counted.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use differential_dataflow::difference::{Abelian, Semigroup};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::{Capability, Operator};
use timely::dataflow::{Scope, Stream};

use crate::event::{EventSource, Record};
use crate::metrics;
use crate::panes::{contribute, DimensionGuard, Partials, SeriesId, WinId};
use crate::time::frontier_min;
use crate::windows::{Agg, WindowKey, WindowSpec};

/// A window update with strings: `(key, tick, diff)` (sink, REST, restore).
pub type WindowUpdate = (WindowKey, u64, Agg);

/// A window update inside the dataflow: `(window, tick, diff)`.
pub type WinUpdate = (WinId, u64, Agg);

type WinBuilder = CapacityContainerBuilder<Vec<WinUpdate>>;

/// Per-tick window deltas of the events among `records`, emitted when the
/// input frontier passes the tick.
pub fn fold_windows<'s>(
    records: Stream<'s, u64, Vec<Record>>,
    spec: Arc<WindowSpec>,
) -> Stream<'s, u64, Vec<WinUpdate>> {
    records.unary_frontier::<WinBuilder, _, _, _>(Pipeline, "FoldWindows", move |_, _| {
        let mut guard = DimensionGuard::default();
        let mut pending: BTreeMap<u64, (Capability<u64>, Partials)> = BTreeMap::new();
        move |(input, frontier), output| {
            input.for_each(|cap, data| {
                let Some(time) = cap.least().copied() else {
                    return;
                };
                let partials = match pending.get_mut(&time) {
                    Some((_, partials)) => partials,
                    None => {
                        let Some(retained) = cap.retain_least(0) else {
                            return;
                        };
                        &mut pending
                            .entry(time)
                            .or_insert((retained, Partials::default()))
                            .1
                    }
                };
                let refused = guard.refused;
                for record in data.iter() {
                    if let Record::Event(event) = record {
                        contribute(event, &spec, &mut guard, partials);
                        count_late(event, &spec, time);
                    }
                }
                if guard.refused > refused {
                    metrics::CARDINALITY_REFUSED.inc_by(guard.refused - refused);
                }
            });
            let bound = frontier_min(frontier);
            while let Some(entry) = pending.first_entry() {
                if *entry.key() >= bound {
                    break;
                }
                let (time, (cap, mut partials)) = entry.remove_entry();
                output.session(&cap).give_iterator(
                    partials
                        .drain_ids(&spec)
                        .into_iter()
                        .map(move |(k, a)| (k, time, a)),
                );
            }
        }
    })
}

/// Updates with strings (restored rollups, REST contributions) as ids; a
/// window whose strings collide with another's id is left out of memory
/// (it stays in PostgreSQL) and counted as a cardinality refusal.
pub fn window_ids<'s>(
    updates: Stream<'s, u64, Vec<WindowUpdate>>,
) -> Stream<'s, u64, Vec<WinUpdate>> {
    updates.unary::<WinBuilder, _, _, _>(Pipeline, "WindowIds", |_, _| {
        move |input, output| {
            input.for_each(|cap, data| {
                output
                    .session(&cap)
                    .give_iterator(data.drain(..).filter_map(|(key, t, agg)| {
                        let id = WinId::of(&key);
                        if id.is_none() {
                            metrics::CARDINALITY_REFUSED.inc();
                        }
                        Some((id?, t, agg))
                    }));
            });
        }
    })
}

/// The worker a series lives on.
fn series_hash(series: &SeriesId) -> u64 {
    let mut h = series.metric.0;
    for d in series.dims {
        h = (h ^ d.0).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
    h ^ (h >> 29)
}

/// Exchanges window deltas on their series and retires each window once,
/// at [`WindowSpec::expire_at`], by the negation of all it received.
pub fn retire_windows<'s>(
    updates: Stream<'s, u64, Vec<WinUpdate>>,
    spec: Arc<WindowSpec>,
) -> Stream<'s, u64, Vec<WinUpdate>> {
    let pact = Exchange::new(|(id, _, _): &WinUpdate| series_hash(&id.series));
    updates.unary_frontier::<WinBuilder, _, _, _>(pact, "RetireWindows", move |_, _| {
        // What each live window has received, to retract it whole.
        let mut live: HashMap<WinId, Agg> = HashMap::new();
        // Windows by the tick they leave memory, with a capability for it.
        let mut schedule: BTreeMap<u64, (Capability<u64>, Vec<WinId>)> = BTreeMap::new();
        move |(input, frontier), output| {
            input.for_each(|cap, data| {
                let Some(cap) = cap.retain_least(0) else {
                    return;
                };
                let mut late = 0u64;
                let mut session = output.session(&cap);
                for (id, time, diff) in data.drain(..) {
                    let at = spec.expire_at_window(id.interval, id.start);
                    if at <= time {
                        late += 1;
                        continue;
                    }
                    match live.entry(id) {
                        std::collections::hash_map::Entry::Occupied(mut e) => {
                            e.get_mut().plus_equals(&diff)
                        }
                        std::collections::hash_map::Entry::Vacant(e) => {
                            e.insert(diff.clone());
                            schedule
                                .entry(at)
                                .or_insert_with(|| (cap.delayed(&at), Vec::new()))
                                .1
                                .push(id);
                        }
                    }
                    session.give((id, time, diff));
                }
                if late > 0 {
                    metrics::LATE_WINDOW_UPDATES.inc_by(late);
                }
            });
            let bound = frontier_min(frontier);
            while let Some(entry) = schedule.first_entry() {
                if *entry.key() > bound {
                    break;
                }
                let (at, (cap, ids)) = entry.remove_entry();
                output
                    .session(&cap)
                    .give_iterator(ids.into_iter().filter_map(|id| {
                        let mut agg = live.remove(&id)?;
                        agg.negate();
                        Some((id, at, agg))
                    }));
            }
        }
    })
}

/// Windows restored from PostgreSQL, emitted by worker 0 at time 0.
pub fn restored_windows<'s>(
    scope: Scope<'s, u64>,
    rows: Vec<(WindowKey, Agg)>,
) -> Stream<'s, u64, Vec<WindowUpdate>> {
    crate::expiry::restored(scope, "RestoredWindows", rows)
}

/// Counts, per topic and interval, an event whose window has already left
/// memory when it is read.
fn count_late(event: &crate::event::Event, spec: &WindowSpec, now: u64) {
    let EventSource::Kafka { topic, .. } = &event.source else {
        return;
    };
    let second = event.second();
    for (interval, _) in &spec.intervals {
        if spec.expire_at_window(*interval, interval.window_of(second)) <= now {
            metrics::LATE_WINDOW_EVENTS
                .with_label_values(&[topic.as_ref(), interval.name()])
                .inc();
        }
    }
}
