//! Dashboard collections in the dataflow (see [`crate::dashboard`]):
//! contributions are computed once per event, then split into per-second
//! sums, active users and strategies; [`expire`] adds the future-dated
//! retractions that bound the first two.

use std::collections::HashMap;

use differential_dataflow::difference::{Abelian, Semigroup};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::operator::source;
use timely::dataflow::operators::Operator;
use timely::dataflow::{Scope, Stream};

use crate::dashboard::{contribution, count_sum, Contribution, CountSum, StrategyState};
use crate::event::Record;

/// `(event second, contribution)`.
pub type Contributed = (i64, Contribution);
/// `((series, second), tick, (count, sum))`.
pub type SumUpdate = ((String, i64), u64, CountSum);
/// `((user, second), tick, diff)`.
pub type UserUpdate = ((String, i64), u64, isize);
/// `(strategy, tick, state)`.
pub type StrategyUpdate = (String, u64, StrategyState);

/// The dashboard contribution of every event among `records`.
pub fn contributions<'s>(
    records: Stream<'s, u64, Vec<Record>>,
) -> Stream<'s, u64, Vec<Contributed>> {
    records.unary::<CapacityContainerBuilder<Vec<Contributed>>, _, _, _>(
        Pipeline,
        "DashboardContributions",
        |_, _| {
            move |input, output| {
                input.for_each(|cap, data| {
                    let mut session = output.session(&cap);
                    for record in data.iter() {
                        if let Record::Event(event) = record {
                            let c = contribution(event);
                            if c != Contribution::default() {
                                session.give((event.second(), c));
                            }
                        }
                    }
                });
            }
        },
    )
}

/// Splits contributions into one collection, pre-aggregated per batch.
fn split<'s, K, R>(
    contributed: Stream<'s, u64, Vec<Contributed>>,
    name: &str,
    mut extract: impl FnMut(&Contributed, &mut dyn FnMut(K, R)) + 'static,
) -> Stream<'s, u64, Vec<(K, u64, R)>>
where
    K: std::hash::Hash + Eq + Clone + 'static,
    R: Semigroup + 'static,
{
    contributed.unary::<CapacityContainerBuilder<Vec<(K, u64, R)>>, _, _, _>(
        Pipeline,
        name,
        move |_, _| {
            let mut acc: HashMap<K, R> = HashMap::new();
            move |input, output| {
                input.for_each(|cap, data| {
                    let Some(time) = cap.least().copied() else {
                        return;
                    };
                    for item in data.iter() {
                        extract(item, &mut |k, r| match acc.get_mut(&k) {
                            Some(slot) => slot.plus_equals(&r),
                            None => {
                                acc.insert(k, r);
                            }
                        });
                    }
                    output
                        .session(&cap)
                        .give_iterator(acc.drain().map(|(k, r)| (k, time, r)));
                });
            }
        },
    )
}

/// Volume and latency per second.
pub fn sums<'s>(contributed: Stream<'s, u64, Vec<Contributed>>) -> Stream<'s, u64, Vec<SumUpdate>> {
    split(contributed, "DashboardSums", |(second, c), emit| {
        for (series, value) in &c.sums {
            emit((series.to_string(), *second), count_sum(*value));
        }
    })
}

/// Users per second.
pub fn users<'s>(
    contributed: Stream<'s, u64, Vec<Contributed>>,
) -> Stream<'s, u64, Vec<UserUpdate>> {
    split(contributed, "DashboardUsers", |(second, c), emit| {
        if let Some(user) = &c.user {
            emit((user.clone(), *second), 1isize);
        }
    })
}

/// Strategy states.
pub fn strategies<'s>(
    contributed: Stream<'s, u64, Vec<Contributed>>,
) -> Stream<'s, u64, Vec<StrategyUpdate>> {
    split(contributed, "DashboardStrategies", |(_, c), emit| {
        if let Some((id, state)) = &c.strategy {
            emit(id.clone(), *state);
        }
    })
}

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
            move |input, output| {
                input.for_each(|cap, data| {
                    let Some(cap) = cap.retain_least(0) else {
                        return;
                    };
                    let mut dropped = 0u64;
                    for (key, time, diff) in data.drain(..) {
                        let at = expire_at(&key);
                        if at <= time {
                            dropped += 1;
                            continue;
                        }
                        let mut retraction = diff.clone();
                        retraction.negate();
                        output.session(&cap).give((key.clone(), time, diff));
                        output
                            .session(&cap.delayed(&at))
                            .give((key, at, retraction));
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
