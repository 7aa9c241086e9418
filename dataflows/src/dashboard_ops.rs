//! Dashboard collections in the dataflow (see [`crate::dashboard`]):
//! contributions are computed once per event, then split into per-second
//! sums, users per second and strategies. `expiry::expire` adds the
//! future-dated retractions that bound the sums; [`active_users`] turns the
//! users per second into one record per active user.

use std::collections::BTreeMap;

use differential_dataflow::difference::Semigroup;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::{Capability, Operator};
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
/// `(user, tick, diff)`: a user becoming active (+1) or inactive (−1).
pub type ActiveUpdate = (String, u64, isize);
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

/// One record per active user: `users` are `((user, second), tick, count)`
/// (the users per second of each tick, and the restored ones at time 0,
/// each saying that the user had an event in that second). A user enters
/// at the first tick at which one of its seconds is live, and leaves once,
/// at `expire_at` of the latest second seen by then; a later second seen
/// before that pushes the exit back. A second already expired at its tick
/// is dropped.
///
/// At every tick the output holds exactly the users that a record per
/// `(user, second)`, added at its tick and retracted at `expire_at(second)`,
/// would hold, but as one record per user instead of one per user and
/// second: with the bench mix at 20,000 events/s and a five-minute window,
/// about 5,000 records per worker instead of about 1.2 million, and one
/// update per user per visit instead of two per user per second.
///
/// Ticks are taken in order once the input frontier has passed them, and
/// an exit at tick `e` is decided once the frontier has passed `e` (a
/// second seen at `e` itself still keeps the user).
pub fn active_users<'s>(
    users: Stream<'s, u64, Vec<UserUpdate>>,
    expire_at: impl Fn(i64) -> u64 + 'static,
) -> Stream<'s, u64, Vec<ActiveUpdate>> {
    users.unary_frontier::<CapacityContainerBuilder<Vec<ActiveUpdate>>, _, _, _>(
        Pipeline,
        "ActiveUsers",
        move |_, _| {
            // Each tick's users, with their latest second in it.
            let mut ticks: TickStash<FastMap<String, i64>> = TickStash::default();
            // Active users, with the tick at which they leave.
            let mut active: FastMap<String, u64> = FastMap::default();
            // Each active user once, at a tick at or before its exit; a user
            // whose exit moved is filed again under its new exit there.
            let mut checks: BTreeMap<u64, (Capability<u64>, Vec<String>)> = BTreeMap::new();
            move |(input, frontier), output| {
                input.for_each(|cap, data| {
                    let Some((_, latest)) = ticks.at(&cap, FastMap::default) else {
                        return;
                    };
                    for ((user, second), _, _) in data.drain(..) {
                        match latest.get_mut(&user) {
                            Some(held) => *held = (*held).max(second),
                            None => {
                                latest.insert(user, second);
                            }
                        }
                    }
                });
                let bound = frontier_min(frontier);
                loop {
                    let tick = ticks.first_before(bound);
                    let check = checks.keys().next().copied().filter(|c| *c < bound);
                    match (tick, check) {
                        (Some(t), c) if c.is_none_or(|c| t <= c) => {
                            let Some((time, cap, latest)) = ticks.pop_before(bound) else {
                                break;
                            };
                            let mut session = output.session(&cap);
                            for (user, second) in latest {
                                let exit = expire_at(second);
                                if exit <= time {
                                    continue;
                                }
                                if let Some(held) = active.get_mut(&user) {
                                    *held = (*held).max(exit);
                                    continue;
                                }
                                session.give((user.clone(), time, 1));
                                active.insert(user.clone(), exit);
                                file_check(&mut checks, &cap, exit, user);
                            }
                        }
                        (_, Some(_)) => {
                            let Some((at, (cap, due))) = checks.pop_first() else {
                                break;
                            };
                            let mut session = output.session(&cap);
                            for user in due {
                                match active.get(&user).copied() {
                                    Some(exit) if exit <= at => {
                                        active.remove(&user);
                                        session.give((user, at, -1));
                                    }
                                    Some(exit) => file_check(&mut checks, &cap, exit, user),
                                    None => {}
                                }
                            }
                        }
                        _ => break,
                    }
                }
            }
        },
    )
}

/// Files `user`'s check under `exit`, with a capability for `exit` taken
/// from `cap` (an earlier tick's) when it is the first there.
fn file_check(
    checks: &mut BTreeMap<u64, (Capability<u64>, Vec<String>)>,
    cap: &Capability<u64>,
    exit: u64,
    user: String,
) {
    checks
        .entry(exit)
        .or_insert_with(|| (cap.delayed(&exit), Vec::new()))
        .1
        .push(user);
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

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::sync::{Arc, Mutex};

    use proptest::prelude::*;
    use timely::dataflow::operators::{Input, Inspect, Probe};

    use super::*;

    /// How long a second keeps its user active, in ticks of one.
    const WINDOW: u64 = 5;

    fn exit(second: i64) -> u64 {
        second.max(0) as u64 + WINDOW
    }

    /// `active_users` over `ticks` (tick `t` carries `ticks[t]`, as
    /// `(user, second)` pairs), every update it emits.
    fn run(ticks: Vec<Vec<(u8, i64)>>) -> Vec<ActiveUpdate> {
        let seen: Arc<Mutex<Vec<ActiveUpdate>>> = Arc::default();
        let sink = Arc::clone(&seen);
        timely::execute_directly(move |worker| {
            let (mut input, probe) = worker.dataflow::<u64, _, _>(|scope| {
                let (input, users) = scope.new_input::<Vec<UserUpdate>>();
                let (probe, _) = active_users(users, exit)
                    .inspect(move |u| sink.lock().expect("not poisoned").push(u.clone()))
                    .probe();
                (input, probe)
            });
            for (t, users) in ticks.into_iter().enumerate() {
                input.advance_to(t as u64);
                for (user, second) in users {
                    input.send(((format!("u{user}"), second), t as u64, 1));
                }
                worker.step();
            }
            drop(input);
            worker.step_while(|| !probe.done());
        });
        let seen = seen.lock().expect("not poisoned").clone();
        seen
    }

    proptest! {
        /// At every tick the users held are those a record per (user,
        /// second), added at its tick and retracted at its exit, would
        /// hold; each user is held at most once, and never updated twice
        /// at one tick.
        #[test]
        fn holds_what_a_record_per_user_and_second_would(
            ticks in proptest::collection::vec(
                proptest::collection::vec((0u8..4, -8i64..4), 0..4),
                1..25,
            ),
        ) {
            let records: Vec<(String, u64, u64)> = ticks
                .iter()
                .enumerate()
                .flat_map(|(t, users)| {
                    users.iter().map(move |(user, offset)| {
                        (format!("u{user}"), t as u64, exit(t as i64 + offset))
                    })
                })
                .collect();
            let shifted: Vec<Vec<(u8, i64)>> = ticks
                .iter()
                .enumerate()
                .map(|(t, users)| users.iter().map(|(u, o)| (*u, t as i64 + o)).collect())
                .collect();
            let updates = run(shifted);
            let mut per_tick: BTreeSet<(String, u64)> = BTreeSet::new();
            for (user, time, _) in &updates {
                prop_assert!(per_tick.insert((user.clone(), *time)), "{updates:?}");
            }
            let last = records.iter().map(|r| r.2).max().unwrap_or(0) + 2;
            for now in 0..last {
                let mut held: BTreeMap<&str, isize> = BTreeMap::new();
                for (user, time, diff) in &updates {
                    if *time <= now {
                        *held.entry(user.as_str()).or_default() += diff;
                    }
                }
                prop_assert!(held.values().all(|n| *n == 0 || *n == 1), "{now}: {updates:?}");
                let held: BTreeSet<&str> =
                    held.into_iter().filter(|(_, n)| *n == 1).map(|(u, _)| u).collect();
                let expected: BTreeSet<&str> = records
                    .iter()
                    .filter(|(_, tick, exit)| *tick <= now && now < *exit)
                    .map(|(u, _, _)| u.as_str())
                    .collect();
                prop_assert_eq!(held, expected, "at {}: {:?}", now, updates);
            }
        }
    }
}
