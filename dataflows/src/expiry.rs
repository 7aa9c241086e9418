//! Holding updates in memory for a while: [`expire`] follows each update
//! with its negation at a future tick, so a collection is bounded by how
//! long its keys stay, not by how many updates it saw; [`restored`] emits
//! rows read from PostgreSQL at time 0 (worker 0 only, by construction of
//! what it is given).

use std::collections::BTreeMap;

use differential_dataflow::difference::Abelian;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::operator::source;
use timely::dataflow::operators::Operator;
use timely::dataflow::{Scope, Stream};

/// Each update, and its negation at `expire_at(key)`; updates already
/// expired at their time are dropped, and their number handed to `late`.
pub fn expire<'s, K, R>(
    updates: Stream<'s, u64, Vec<(K, u64, R)>>,
    name: &str,
    expire_at: impl Fn(&K) -> u64 + 'static,
    late: impl Fn(u64) + 'static,
) -> Stream<'s, u64, Vec<(K, u64, R)>>
where
    K: Clone + 'static,
    R: Abelian + 'static,
{
    updates.unary::<CapacityContainerBuilder<Vec<(K, u64, R)>>, _, _, _>(
        Pipeline,
        name,
        move |_, _| {
            // Retractions of one batch, grouped by their time, so that each
            // time gets one session (one container), not one per update.
            let mut later: BTreeMap<u64, Vec<(K, u64, R)>> = BTreeMap::new();
            move |input, output| {
                input.for_each(|cap, data| {
                    let Some(cap) = cap.retain_least(0) else {
                        return;
                    };
                    let mut dropped = 0u64;
                    {
                        let mut now = output.session(&cap);
                        for (key, time, diff) in data.drain(..) {
                            let at = expire_at(&key);
                            if at <= time {
                                dropped += 1;
                                continue;
                            }
                            let mut retraction = diff.clone();
                            retraction.negate();
                            later
                                .entry(at)
                                .or_default()
                                .push((key.clone(), at, retraction));
                            now.give((key, time, diff));
                        }
                    }
                    for (at, updates) in std::mem::take(&mut later) {
                        output
                            .session(&cap.delayed(&at))
                            .give_iterator(updates.into_iter());
                    }
                    if dropped > 0 {
                        late(dropped);
                    }
                });
            }
        },
    )
}

/// Rows restored from PostgreSQL, emitted by worker 0 at time 0.
pub fn restored<'s, K, R>(
    scope: Scope<'s, u64>,
    name: &str,
    rows: Vec<(K, R)>,
) -> Stream<'s, u64, Vec<(K, u64, R)>>
where
    K: Clone + 'static,
    R: Clone + 'static,
{
    let mut rows = Some(rows);
    source::<_, CapacityContainerBuilder<Vec<(K, u64, R)>>, _, _>(
        scope,
        name,
        move |capability, _info| {
            let mut capability = Some(capability);
            move |output| {
                if let Some(cap) = capability.take() {
                    let time = *cap.time();
                    output.session(&cap).give_iterator(
                        rows.take()
                            .unwrap_or_default()
                            .into_iter()
                            .map(move |(k, r)| (k, time, r)),
                    );
                }
            }
        },
    )
}
