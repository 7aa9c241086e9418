//! The publish operator: turns the updates of completed, durable ticks into
//! an immutable [`LiveSnapshot`] sent through a `tokio::sync::watch`
//! channel.
//!
//! Input: [`LiveUpdate`]s (count and window diffs) with their ticks,
//! gathered on each process's leader worker, and the durability stream
//! whose frontier is the global durability frontier. A tick is applied once
//! both frontiers have passed it, so that a snapshot never shows an event
//! that could still be lost; `as_of` is the meet of the two frontiers.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::Operator;
use timely::dataflow::Stream;
use tokio::sync::watch;

use crate::counts::Horizon;
use crate::dashboard::{CountSum, StrategyState};
use crate::live::{LiveCounts, LiveDashboard, LiveSnapshot, LiveWindows};
use crate::metrics;
use crate::panes::WinId;
use crate::time::now_ms;
use crate::windows::{Agg, WindowSpec};

/// A change to live state.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum LiveUpdate {
    /// `((event_type, second), diff)`.
    Count((String, i64), isize),
    /// A window and its aggregate diff.
    Window(WinId, Agg),
    /// `((series, second), (count, sum))`.
    Sum((String, i64), CountSum),
    /// A user's active contributions.
    User(String, isize),
    /// A strategy's state diff.
    Strategy(String, StrategyState),
}

/// Publishes snapshots from `updates` (`(tick, update)`) gated by `durable`.
pub fn publish<'s>(
    updates: Stream<'s, u64, Vec<(u64, LiveUpdate)>>,
    durable: Stream<'s, u64, Vec<()>>,
    horizon: Horizon,
    spec: Arc<WindowSpec>,
    sender: Option<Arc<watch::Sender<Arc<LiveSnapshot>>>>,
) {
    let _: Stream<'s, u64, Vec<()>> = updates
        .binary_frontier::<_, CapacityContainerBuilder<Vec<()>>, _, _, _, _>(
            durable,
            Pipeline,
            Pipeline,
            "PublishSnapshot",
            move |_capability, _info| {
                let mut stash: BTreeMap<u64, Vec<LiveUpdate>> = BTreeMap::new();
                let mut counts = LiveCounts::default();
                let mut windows = LiveWindows::default();
                let mut dashboard = LiveDashboard::default();
                let mut as_of = 0u64;
                move |(input1, frontier1), (input2, frontier2), _output| {
                    input1.for_each(|_cap, data| {
                        for (time, update) in data.drain(..) {
                            stash.entry(time).or_default().push(update);
                        }
                    });
                    input2.for_each(|_cap, _data| {});
                    let Some(sender) = sender.as_ref() else {
                        stash.clear();
                        return;
                    };
                    let bound = crate::time::frontier_min(frontier1)
                        .min(crate::time::frontier_min(frontier2));
                    // Empty frontiers mean shutdown: the future-dated
                    // retractions flushed then must not blank the last snapshot.
                    if bound <= as_of || bound == u64::MAX {
                        return;
                    }
                    let mut oldest_applied = None;
                    while let Some(entry) = stash.first_entry() {
                        if *entry.key() >= bound {
                            break;
                        }
                        oldest_applied.get_or_insert(*entry.key());
                        for update in entry.remove() {
                            match update {
                                LiveUpdate::Count((event_type, second), diff) => {
                                    counts.update(&event_type, second, diff as i64)
                                }
                                LiveUpdate::Window(id, diff) => windows.apply(id, &diff),
                                LiveUpdate::Sum((series, second), diff) => {
                                    dashboard.add_sum(&series, second, diff)
                                }
                                LiveUpdate::User(user, diff) => {
                                    dashboard.add_user(&user, diff as i64)
                                }
                                LiveUpdate::Strategy(id, diff) => {
                                    dashboard.merge_strategy(&id, &diff)
                                }
                            }
                        }
                    }
                    as_of = bound;
                    if let Some(oldest) = oldest_applied {
                        let lag = now_ms().saturating_sub(oldest);
                        metrics::FRESHNESS.observe(lag as f64 / 1000.0);
                    }
                    metrics::LIVE_ENTRIES.set(counts.len() as i64);
                    metrics::WINDOWS_HELD.set(windows.len() as i64);
                    let windows_covered_from = spec
                        .intervals
                        .iter()
                        .filter_map(|(i, _)| spec.covered_from(*i, as_of).map(|s| (*i, s)))
                        .collect();
                    sender.send_replace(Arc::new(LiveSnapshot {
                        as_of_ms: as_of,
                        counts: counts.clone(),
                        covered_from_second: horizon.covered_from(as_of),
                        windows: windows.clone(),
                        windows_covered_from,
                        dashboard: dashboard.clone(),
                    }));
                }
            },
        );
}
