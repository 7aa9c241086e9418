//! Windowed aggregates as a differential collection.
//!
//! Collection: [`WindowKey`] with [`Agg`] diffs over processing-time ticks.
//! [`window_partials`] pre-aggregates each worker's events per input batch
//! (consolidation before exchange); the same partials go to the sink, which
//! merges them into `metric_aggregations` in the transaction that stores
//! the raw rows. [`expiring`] adds the future-dated retraction that makes a
//! window leave memory once its interval's horizon has passed; partials of
//! windows already beyond the horizon (late events) are not held in memory
//! at all: they only reach PostgreSQL, and are counted.

use std::sync::Arc;

use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::Operator;
use timely::dataflow::{Scope, Stream};

use crate::event::{EventSource, Record};
use crate::metrics;
use crate::windows::{contribute, Agg, DimensionGuard, Partials, WindowKey, WindowSpec};

/// A window update: `(key, tick, diff)`.
pub type WindowUpdate = (WindowKey, u64, Agg);

type WindowBuilder = CapacityContainerBuilder<Vec<WindowUpdate>>;

/// Per-batch window contributions of the events among `records`.
pub fn window_partials<'s>(
    records: Stream<'s, u64, Vec<Record>>,
    spec: Arc<WindowSpec>,
) -> Stream<'s, u64, Vec<WindowUpdate>> {
    records.unary::<WindowBuilder, _, _, _>(Pipeline, "WindowPartials", move |_, _| {
        let mut guard = DimensionGuard::default();
        let mut partials = Partials::default();
        move |input, output| {
            input.for_each(|cap, data| {
                let Some(time) = cap.least().copied() else {
                    return;
                };
                let refused = guard.refused;
                for record in data.iter() {
                    if let Record::Event(event) = record {
                        contribute(event, &spec, &mut guard, &mut partials);
                        count_late(event, &spec, time);
                    }
                }
                if guard.refused > refused {
                    metrics::CARDINALITY_REFUSED.inc_by(guard.refused - refused);
                }
                output
                    .session(&cap)
                    .give_iterator(partials.drain().map(|(k, a)| (k, time, a)));
            });
        }
    })
}

/// Holds partials in memory until their window's horizon: each update is
/// followed by its retraction at [`WindowSpec::expire_at`]. Windows already
/// past it are dropped here (they live on in PostgreSQL) and counted late.
pub fn expiring<'s>(
    partials: Stream<'s, u64, Vec<WindowUpdate>>,
    spec: Arc<WindowSpec>,
) -> Stream<'s, u64, Vec<WindowUpdate>> {
    crate::expiry::expire(
        partials,
        "ExpireWindows",
        move |key| spec.expire_at(key),
        |late| metrics::LATE_WINDOW_UPDATES.inc_by(late),
    )
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
        let key = WindowKey {
            metric: Arc::from(""),
            interval: *interval,
            dims: Default::default(),
            start: interval.window_of(second),
        };
        if spec.expire_at(&key) <= now {
            metrics::LATE_WINDOW_EVENTS
                .with_label_values(&[topic.as_ref(), interval.name()])
                .inc();
        }
    }
}
