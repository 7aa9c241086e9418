//! Dashboard collections in the dataflow (see [`crate::dashboard`]):
//! contributions are computed once per event, then split into per-second
//! sums, active users and strategies; `expiry::expire` adds the future-dated
//! retractions that bound the first two.

use differential_dataflow::difference::Semigroup;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::Operator;
use timely::dataflow::Stream;

use crate::dashboard::{contribution, count_sum, Contribution, CountSum, StrategyState};
use crate::event::Record;
use crate::time::{frontier_min, TickStash};
use crate::FastMap;

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

/// Splits contributions into one collection, pre-aggregated per tick: one
/// update per key and tick reaches the arrangement.
fn split<'s, K, R>(
    contributed: Stream<'s, u64, Vec<Contributed>>,
    name: &str,
    mut extract: impl FnMut(&Contributed, &mut dyn FnMut(K, R)) + 'static,
) -> Stream<'s, u64, Vec<(K, u64, R)>>
where
    K: std::hash::Hash + Eq + Clone + 'static,
    R: Semigroup + 'static,
{
    contributed.unary_frontier::<CapacityContainerBuilder<Vec<(K, u64, R)>>, _, _, _>(
        Pipeline,
        name,
        move |_, _| {
            let mut ticks: TickStash<FastMap<K, R>> = TickStash::default();
            move |(input, frontier), output| {
                input.for_each(|cap, data| {
                    let Some((_, acc)) = ticks.at(&cap, FastMap::default) else {
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
                });
                let bound = frontier_min(frontier);
                while let Some((time, cap, acc)) = ticks.pop_before(bound) {
                    output
                        .session(&cap)
                        .give_iterator(acc.into_iter().map(|(k, r)| (k, time, r)));
                }
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
