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
//!   when its interval's horizon passes ([`WindowSpec::expire_at`]) it reads
//!   the window's aggregate from the arrangement it feeds (arranged on the
//!   same worker, without a second exchange) and emits its negation, which
//!   cancels it. The operator itself holds only the ticks at which windows
//!   leave; which windows leave at a tick is read from the arrangement.
//!   Deltas of windows already past their horizon (late events) are not
//!   held in memory at all: they only reach PostgreSQL, and are counted.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;

use differential_dataflow::difference::{Abelian, IsZero, Semigroup};
use differential_dataflow::operators::arrange::TraceAgent;
use differential_dataflow::trace::cursor::{cursor_list, Cursor};
use differential_dataflow::trace::implementations::KeySpine;
use differential_dataflow::trace::TraceReader;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::{Capability, Operator};
use timely::dataflow::{Scope, Stream};
use timely::progress::Antichain;

use crate::event::{EventSource, Record};
use crate::metrics;
use crate::panes::{contribute, DimensionGuard, Partials, SeriesId, WinId};
use crate::time::{frontier_min, TickStash};
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
        let mut pending: TickStash<Partials> = TickStash::default();
        move |(input, frontier), output| {
            input.for_each(|cap, data| {
                let Some((time, partials)) = pending.at(&cap, Partials::default) else {
                    return;
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
            while let Some((time, cap, mut partials)) = pending.pop_before(bound) {
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

/// The arranged windows: [`WinId`] with [`Agg`] diffs.
pub type WindowTrace = TraceAgent<KeySpine<WinId, u64, Agg>>;

/// Where [`retire_windows`] finds the arrangement it feeds, once it exists.
pub type TraceSlot = Rc<RefCell<Option<WindowTrace>>>;

/// A window update out of [`retire_windows`], and whether the live state
/// takes it as a window diff (`true`: a retraction, or an update that did
/// not come from the fold; the fold's reach the live state as pane diffs
/// instead, see `LiveUpdate::Pane`).
pub type RetiredUpdate = (WinId, u64, Agg, bool);

type RetiredBuilder = CapacityContainerBuilder<Vec<RetiredUpdate>>;

/// Exchanges window deltas (`folded`, from [`fold_windows`], and `other`,
/// from REST and restores) on their series and retires each window once,
/// at [`WindowSpec::expire_at`], by the negation of all it received.
///
/// The operator keeps only the ticks at which windows leave (with a
/// capability for each); the windows that leave at a tick, and the
/// aggregates it retracts, are read from the arrangement `slot` (fed by
/// this operator on the same worker), once that arrangement holds every
/// update before the retirement tick. A window is thus held once in the
/// dataflow. When the input ends, nothing is retracted: the dataflow stops.
pub fn retire_windows<'s>(
    folded: Stream<'s, u64, Vec<WinUpdate>>,
    other: Stream<'s, u64, Vec<WinUpdate>>,
    spec: Arc<WindowSpec>,
    slot: TraceSlot,
) -> Stream<'s, u64, Vec<RetiredUpdate>> {
    let pact = || Exchange::new(|(id, _, _): &WinUpdate| series_hash(&id.series));
    let scope = folded.scope();
    folded.binary_frontier::<_, RetiredBuilder, _, _, _, _>(
        other,
        pact(),
        pact(),
        "RetireWindows",
        move |_, info| {
            let activator = scope.activator_for(Rc::clone(&info.address));
            // The ticks at which windows of this worker leave memory, each
            // with a capability for it. Which windows leave is read from the
            // arrangement at that tick (every window it holds was scheduled).
            let mut schedule: BTreeMap<u64, Capability<u64>> = BTreeMap::new();
            let mut upper = Antichain::new();
            move |(folded, frontier1), (other, frontier2), output| {
                let mut late = 0u64;
                let mut take = |cap: timely::dataflow::operators::InputCapability<u64>,
                                data: &mut Vec<WinUpdate>,
                                from_fold: bool| {
                    let Some(cap) = cap.retain_least(0) else {
                        return;
                    };
                    let mut session = output.session(&cap);
                    // Consecutive updates often leave at the same tick: one map
                    // lookup for a run of them.
                    let mut scheduled = None;
                    for (id, time, diff) in data.drain(..) {
                        let at = spec.expire_at_window(id.interval, id.start);
                        if at <= time {
                            late += 1;
                            continue;
                        }
                        if scheduled != Some(at) {
                            schedule.entry(at).or_insert_with(|| cap.delayed(&at));
                            scheduled = Some(at);
                        }
                        session.give((id, time, diff, !from_fold));
                    }
                };
                folded.for_each(|cap, data| take(cap, data, true));
                other.for_each(|cap, data| take(cap, data, false));
                if late > 0 {
                    metrics::LATE_WINDOW_UPDATES.inc_by(late);
                }
                if frontier1.frontier().is_empty() && frontier2.frontier().is_empty() {
                    schedule.clear();
                    return;
                }
                let bound = frontier_min(frontier1).min(frontier_min(frontier2));
                let mut slot = slot.borrow_mut();
                let Some(trace) = slot.as_mut() else {
                    return;
                };
                // Everything before the trace's upper is in it; this handle
                // never reads before that again.
                trace.read_upper(&mut upper);
                trace.set_logical_compaction(upper.borrow());
                trace.set_physical_compaction(upper.borrow());
                // One tick at a time: its capability holds the arrangement's
                // upper at or below it, so the next tick cannot be read yet.
                let Some(entry) = schedule.first_entry() else {
                    return;
                };
                let at = *entry.key();
                // Only once the inputs have passed `at`, as an arrangement's
                // output would: a retraction handed on while `at` is still
                // the frontier reaches the publisher with the ticks before
                // it, and (durability lagging) joins their stash group,
                // which then waits for `at` to be durable too.
                if at >= bound {
                    return;
                }
                if upper.less_than(&at) {
                    // Updates before `at` are still on their way into the
                    // arrangement: look again at the next step.
                    activator.activate();
                    return;
                }
                let cap = entry.remove();
                let Some(batches) = trace.batches_through(upper.borrow()) else {
                    tracing::error!("window arrangement cannot be read through its own upper");
                    return;
                };
                let retractions = retractions(batches, at, |id| {
                    spec.expire_at_window(id.interval, id.start)
                });
                output.session(&cap).give_iterator(retractions.into_iter());
                // The arrangement can now pass `at`; the next tick is read then.
                if !schedule.is_empty() {
                    activator.activate();
                }
            }
        },
    )
}

/// The negation of every window in `batches` that leaves memory at `at`.
///
/// One walk over the arrangement's keys: a window is not held anywhere
/// else to say when it leaves. A window that left at an earlier tick is
/// skipped by its tick, without summing its updates (which, with its
/// retraction, cancel out).
fn retractions(
    batches: Vec<<WindowTrace as TraceReader>::Batch>,
    at: u64,
    leaves: impl Fn(&WinId) -> u64,
) -> Vec<RetiredUpdate> {
    let mut out = Vec::new();
    let (mut cursor, storage) = cursor_list(batches);
    while let Some(id) = cursor.get_key(&storage) {
        if leaves(id) == at {
            let mut agg = Agg::default();
            cursor.map_times(&storage, |_, diff| agg.plus_equals(diff));
            if !agg.is_zero() {
                agg.negate();
                out.push((*id, at, agg, true));
            }
        }
        cursor.step_key(&storage);
    }
    out
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
