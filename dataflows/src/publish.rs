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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};

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

/// The updates of the ticks before `as_of`, in tick order, for the
/// publisher thread.
struct Ticks {
    as_of: u64,
    /// The first of these ticks (for the freshness histogram).
    oldest: u64,
    updates: Vec<LiveUpdate>,
}

/// How far the publisher thread has got: batches of ticks handed to it and
/// batches it has published. Tests that drive a worker step by step wait on
/// it, so that a snapshot is asserted only once everything sent is in it.
#[derive(Clone, Debug, Default)]
pub struct PublishProgress {
    sent: Arc<AtomicU64>,
    published: Arc<AtomicU64>,
}

impl PublishProgress {
    /// Every batch handed to the thread is in the latest snapshot.
    pub fn idle(&self) -> bool {
        self.published.load(Ordering::Acquire) >= self.sent.load(Ordering::Acquire)
    }
}

/// Publishes snapshots from `updates` (`(tick, update)`) gated by `durable`.
///
/// The operator only gathers the updates of the ticks both frontiers have
/// passed; a thread of its own applies them to the live state and sends
/// the snapshot, so that the leader worker (which gathers every worker's
/// updates) spends no time on the live maps. When ticks queue up, the
/// thread applies them all and sends one snapshot, of the latest.
pub fn publish<'s>(
    updates: Stream<'s, u64, Vec<(u64, LiveUpdate)>>,
    durable: Stream<'s, u64, Vec<()>>,
    horizon: Horizon,
    spec: Arc<WindowSpec>,
    sender: Option<Arc<watch::Sender<Arc<LiveSnapshot>>>>,
) -> PublishProgress {
    let progress = PublishProgress::default();
    let to_thread = sender.map(|sender| spawn_publisher(sender, horizon, spec, progress.clone()));
    let sent = Arc::clone(&progress.sent);
    let _: Stream<'s, u64, Vec<()>> = updates
        .binary_frontier::<_, CapacityContainerBuilder<Vec<()>>, _, _, _, _>(
            durable,
            Pipeline,
            Pipeline,
            "PublishSnapshot",
            move |_capability, _info| {
                let mut stash: BTreeMap<u64, Vec<LiveUpdate>> = BTreeMap::new();
                let mut as_of = 0u64;
                move |(input1, frontier1), (input2, frontier2), _output| {
                    input1.for_each(|_cap, data| {
                        for (time, update) in data.drain(..) {
                            stash.entry(time).or_default().push(update);
                        }
                    });
                    input2.for_each(|_cap, _data| {});
                    let Some(to_thread) = to_thread.as_ref() else {
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
                    let mut ticks = Ticks {
                        as_of: bound,
                        oldest: bound,
                        updates: Vec::new(),
                    };
                    while let Some(entry) = stash.first_entry() {
                        if *entry.key() >= bound {
                            break;
                        }
                        ticks.oldest = ticks.oldest.min(*entry.key());
                        let updates = entry.remove();
                        if ticks.updates.is_empty() {
                            ticks.updates = updates;
                        } else {
                            ticks.updates.extend(updates);
                        }
                    }
                    as_of = bound;
                    sent.fetch_add(1, Ordering::AcqRel);
                    if to_thread.send(ticks).is_err() {
                        tracing::error!("the snapshot publisher thread has stopped");
                    }
                }
            },
        );
    progress
}

/// Starts the thread that owns the live state and sends its snapshots.
fn spawn_publisher(
    sender: Arc<watch::Sender<Arc<LiveSnapshot>>>,
    horizon: Horizon,
    spec: Arc<WindowSpec>,
    progress: PublishProgress,
) -> mpsc::Sender<Ticks> {
    let (to_thread, from_operator) = mpsc::channel::<Ticks>();
    let run = move || {
        let mut counts = LiveCounts::default();
        let mut windows = LiveWindows::default();
        let mut dashboard = LiveDashboard::default();
        while let Ok(first) = from_operator.recv() {
            let mut as_of = first.as_of;
            let mut oldest_applied = None;
            let mut next = Some(first);
            let mut batches = 0u64;
            while let Some(ticks) = next {
                batches += 1;
                as_of = as_of.max(ticks.as_of);
                if !ticks.updates.is_empty() {
                    let oldest = oldest_applied.get_or_insert(ticks.oldest);
                    *oldest = (*oldest).min(ticks.oldest);
                }
                for update in ticks.updates {
                    match update {
                        LiveUpdate::Count((event_type, second), diff) => {
                            counts.update(&event_type, second, diff as i64)
                        }
                        LiveUpdate::Window(id, diff) => windows.apply(id, &diff),
                        LiveUpdate::Sum((series, second), diff) => {
                            dashboard.add_sum(&series, second, diff)
                        }
                        LiveUpdate::User(user, diff) => dashboard.add_user(&user, diff as i64),
                        LiveUpdate::Strategy(id, diff) => dashboard.merge_strategy(&id, &diff),
                    }
                }
                next = from_operator.try_recv().ok();
            }
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
            progress.published.fetch_add(batches, Ordering::AcqRel);
        }
    };
    if let Err(e) = std::thread::Builder::new()
        .name("publish".into())
        .spawn(run)
    {
        tracing::error!(error = %e, "cannot start the snapshot publisher thread");
    }
    to_thread
}
