//! The publish operator: turns the updates of completed, durable ticks into
//! an immutable [`LiveSnapshot`] sent through a `tokio::sync::watch`
//! channel.
//!
//! Input: [`LiveUpdate`]s (count and window diffs) with their ticks,
//! gathered on each process's leader worker, and the durability stream
//! whose frontier is the global durability frontier. A tick is applied once
//! both frontiers have passed it, so that a snapshot never shows an event
//! that could still be lost; `as_of` is the meet of the two frontiers.

use std::collections::hash_map::Entry;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};

use differential_dataflow::difference::{IsZero, Semigroup};
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
use crate::panes::{expand_panes, SeriesId, WinId};
use crate::time::now_ms;
use crate::windows::{Agg, AggSum, Interval, WindowSpec};
use crate::FastMap;

/// A change to live state.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum LiveUpdate {
    /// `((event_type, second), diff)`.
    Count((String, i64), isize),
    /// A window and its aggregate diff.
    Window(WinId, Agg),
    /// A fold's diff to a window of the finest interval, which is also its
    /// diff to the window of every other interval that holds it (all are
    /// whole multiples of the finest): expanded by the publisher, so that
    /// one update per pane, not one per interval, crosses to the leader
    /// and waits for durability. Except for intervals whose window has left
    /// memory by the update's tick, which take nothing (as `RetireWindows`
    /// drops such updates from the arrangement).
    Pane(WinId, Agg),
    /// `((series, second), (count, sum))`.
    Sum((String, i64), CountSum),
    /// A user's active contributions.
    User(String, isize),
    /// A strategy's state diff.
    Strategy(String, StrategyState),
}

/// What the operator hands the publisher thread in one activation: the
/// updates it received (with their ticks) and the bound both frontiers
/// have passed (`None`: unchanged, or shutdown).
struct Handed {
    updates: Vec<(u64, LiveUpdate)>,
    bound: Option<u64>,
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
/// The operator only hands what it receives, and the bound both frontiers
/// have passed, to a thread of its own, which holds the ticks not yet
/// passed ([`Stash`]), applies the passed ones to the live state and sends
/// the snapshot, so that the leader worker (which gathers every worker's
/// updates) spends no time on them. When hand-offs queue up, the thread
/// takes them all and sends one snapshot, of the latest.
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
                let mut handed_bound = 0u64;
                move |(input1, frontier1), (input2, frontier2), _output| {
                    let mut updates = Vec::new();
                    input1.for_each(|_cap, data| {
                        if updates.is_empty() {
                            updates = std::mem::take(data);
                        } else {
                            updates.append(data);
                        }
                    });
                    input2.for_each(|_cap, _data| {});
                    let Some(to_thread) = to_thread.as_ref() else {
                        return;
                    };
                    let bound = crate::time::frontier_min(frontier1)
                        .min(crate::time::frontier_min(frontier2));
                    // Empty frontiers mean shutdown: the future-dated
                    // retractions flushed then must not blank the last snapshot.
                    let bound = (bound > handed_bound && bound != u64::MAX).then_some(bound);
                    if updates.is_empty() && bound.is_none() {
                        return;
                    }
                    if let Some(bound) = bound {
                        handed_bound = bound;
                    }
                    sent.fetch_add(1, Ordering::AcqRel);
                    if to_thread.send(Handed { updates, bound }).is_err() {
                        tracing::error!("the snapshot publisher thread has stopped");
                    }
                }
            },
        );
    progress
}

/// The updates of the ticks that the bound has not passed yet, in groups
/// of consecutive ticks, each released (applied) whole once the bound
/// passes its last tick.
///
/// A tick joins the latest group while the bound has passed none of that
/// group and the group would span at most a quarter of how far the tick is
/// ahead of the bound: while durability lags (the sink behind), the updates
/// of many ticks to the same windows and seconds are summed as they arrive
/// instead of each held until its tick is durable. The snapshot then lags
/// by at most a quarter more; with the bound a tick or two behind (not
/// lagging) every tick is a group of its own.
#[derive(Debug)]
pub struct Stash {
    /// First tick → the group.
    groups: BTreeMap<u64, Group>,
    /// The intervals and horizons that pane diffs expand to.
    spec: Arc<WindowSpec>,
}

#[derive(Debug, Default)]
struct Group {
    last: u64,
    /// Window diffs, summed per window as they arrive: most of a lagging
    /// group, and each window is held once per group (a vector consolidated
    /// when it doubles held up to four slots of 144 bytes per window).
    windows: FastMap<WinId, Agg>,
    /// Pane diffs (see [`LiveUpdate::Pane`]), summed per pane as they
    /// arrive, expanded to every interval when released.
    panes: FastMap<WinId, Agg>,
    /// The other updates.
    updates: Vec<LiveUpdate>,
    /// Length of `updates` after the latest consolidation.
    consolidated: usize,
}

/// Fewest updates a group holds before it is consolidated.
const CONSOLIDATE_FROM: usize = 4096;

impl Group {
    /// Adds an update of `tick`: a window diff to its window's sum, a pane
    /// diff to its pane's (or, when some interval's window of it has left
    /// memory by `tick`, to the windows of the others), any other to the
    /// updates, consolidated whenever they have doubled.
    fn push(&mut self, tick: u64, update: LiveUpdate, spec: &WindowSpec) {
        match update {
            LiveUpdate::Window(id, diff) => add_to(&mut self.windows, id, diff),
            LiveUpdate::Pane(id, diff) => {
                let live = |interval: Interval| {
                    spec.expire_at_window(interval, interval.window_of(id.start)) > tick
                };
                if spec.intervals.iter().all(|(i, _)| live(*i)) {
                    add_to(&mut self.panes, id, diff);
                } else {
                    for (interval, _) in &spec.intervals {
                        if live(*interval) {
                            add_to(&mut self.windows, window_of(&id, *interval), diff.clone());
                        }
                    }
                }
            }
            update => self.push_other(update),
        }
    }

    fn push_other(&mut self, update: LiveUpdate) {
        self.updates.push(update);
        if self.updates.len() >= CONSOLIDATE_FROM.max(2 * self.consolidated) {
            consolidate(&mut self.updates);
            self.consolidated = self.updates.len();
        }
    }

    /// Its updates, then its window diffs, with each pane's added to the
    /// window of every interval that holds it ([`expand_panes`]); sums that
    /// cancelled out are left out. A window receives one diff per group,
    /// whatever the number of its panes (applying each pane's to the live
    /// window would merge into the window's whole sketch once per pane),
    /// and the diffs come in window order: the live windows are an ordered
    /// map whose nodes are shared with the last snapshot, so neighbouring
    /// windows copy and touch the same nodes.
    fn into_updates(self, spec: &WindowSpec) -> impl Iterator<Item = LiveUpdate> {
        let mut panes: Vec<((SeriesId, i64), Agg)> = self
            .panes
            .into_iter()
            .filter(|(_, agg)| !agg.is_zero())
            .map(|(id, agg)| ((id.series, id.start), agg))
            .collect();
        panes.sort_unstable_by_key(|(key, _)| *key);
        let mut windows: Vec<(WinId, Agg)> =
            Vec::with_capacity(self.windows.len() + panes.len() * spec.intervals.len());
        expand_panes(panes, spec, &mut windows);
        windows.extend(self.windows);
        // Stable: a window's pane sum and its other diff stay adjacent.
        windows.sort_by_key(|(id, _)| *id);
        let mut summed: Vec<(WinId, Agg)> = Vec::with_capacity(windows.len());
        let mut windows = windows.into_iter().peekable();
        while let Some((id, agg)) = windows.next() {
            let mut sum = AggSum::default();
            sum.add(agg);
            while let Some((_, agg)) = windows.next_if(|(next, _)| *next == id) {
                sum.add(agg);
            }
            let agg = sum.finish();
            if !agg.is_zero() {
                summed.push((id, agg));
            }
        }
        self.updates.into_iter().chain(
            summed
                .into_iter()
                .map(|(id, agg)| LiveUpdate::Window(id, agg)),
        )
    }

    fn len(&self) -> usize {
        self.updates.len() + self.windows.len() + self.panes.len()
    }
}

/// Adds `diff` to the sum held for `id`.
fn add_to(map: &mut FastMap<WinId, Agg>, id: WinId, diff: Agg) {
    match map.entry(id) {
        Entry::Occupied(mut held) => held.get_mut().plus_equals(&diff),
        Entry::Vacant(slot) => {
            slot.insert(diff);
        }
    }
}

/// The window of `interval` that holds the window `id` of a finer interval.
fn window_of(id: &WinId, interval: Interval) -> WinId {
    WinId {
        series: id.series,
        interval,
        start: interval.window_of(id.start),
    }
}

impl Stash {
    pub fn new(spec: Arc<WindowSpec>) -> Stash {
        Stash {
            groups: BTreeMap::new(),
            spec,
        }
    }

    /// Adds updates with their ticks, each at or after `bound` (the bound
    /// as known now). The group of a tick is looked up once for a run of
    /// updates of that tick.
    pub fn add(&mut self, updates: impl IntoIterator<Item = (u64, LiveUpdate)>, bound: u64) {
        let mut updates = updates.into_iter().peekable();
        while let Some((tick, first)) = updates.next() {
            let group = Self::group_of(&mut self.groups, tick, bound);
            group.push(tick, first, &self.spec);
            while let Some((_, update)) = updates.next_if(|(t, _)| *t == tick) {
                group.push(tick, update, &self.spec);
            }
        }
    }

    /// The group `tick` belongs to: the one that spans it, the latest one
    /// extended to it (see [`Stash`]), or a new one.
    fn group_of(groups: &mut BTreeMap<u64, Group>, tick: u64, bound: u64) -> &mut Group {
        let holding = groups
            .range(..=tick)
            .next_back()
            .map(|(start, group)| (*start, group.last));
        let latest = groups.last_key_value().map(|(start, _)| *start);
        let start = match holding {
            Some((start, last)) if tick <= last => start,
            Some((start, _))
                if latest == Some(start)
                    && start >= bound
                    && tick - start <= tick.saturating_sub(bound) / 4 =>
            {
                start
            }
            _ => tick,
        };
        let group = groups.entry(start).or_insert_with(|| Group {
            last: tick,
            ..Group::default()
        });
        group.last = group.last.max(tick);
        group
    }

    /// Takes the groups that `bound` has passed whole: their updates, the
    /// first of their ticks, and how far a snapshot with them reaches (the
    /// bound, or the first tick still held).
    pub fn release(&mut self, bound: u64) -> Released {
        let mut out = Released {
            updates: Vec::new(),
            oldest: None,
            as_of: bound,
        };
        while let Some(entry) = self.groups.first_entry() {
            if entry.get().last >= bound {
                out.as_of = out.as_of.min(*entry.key());
                break;
            }
            out.oldest.get_or_insert(*entry.key());
            out.updates.extend(entry.remove().into_updates(&self.spec));
        }
        out
    }

    /// Updates held (tests).
    pub fn len(&self) -> usize {
        self.groups.values().map(Group::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }
}

/// What [`Stash::release`] took.
#[derive(Debug)]
pub struct Released {
    pub updates: Vec<LiveUpdate>,
    /// The first tick released, if any.
    pub oldest: Option<u64>,
    /// Every tick before this one is released.
    pub as_of: u64,
}

/// The key of an update, what [`consolidate`] sums by.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
enum UpdateKey<'a> {
    Count(&'a (String, i64)),
    Window(&'a WinId),
    Pane(&'a WinId),
    Sum(&'a (String, i64)),
    User(&'a str),
    Strategy(&'a str),
}

impl LiveUpdate {
    fn key(&self) -> UpdateKey<'_> {
        match self {
            LiveUpdate::Count(k, _) => UpdateKey::Count(k),
            LiveUpdate::Window(id, _) => UpdateKey::Window(id),
            LiveUpdate::Pane(id, _) => UpdateKey::Pane(id),
            LiveUpdate::Sum(k, _) => UpdateKey::Sum(k),
            LiveUpdate::User(u, _) => UpdateKey::User(u),
            LiveUpdate::Strategy(s, _) => UpdateKey::Strategy(s),
        }
    }

    /// Adds the diff of `other`, an update of the same key.
    fn absorb(&mut self, other: &LiveUpdate) {
        match (self, other) {
            (LiveUpdate::Count(_, d), LiveUpdate::Count(_, e)) => *d += e,
            (LiveUpdate::Window(_, a), LiveUpdate::Window(_, b))
            | (LiveUpdate::Pane(_, a), LiveUpdate::Pane(_, b)) => a.plus_equals(b),
            (LiveUpdate::Sum(_, a), LiveUpdate::Sum(_, b)) => a.plus_equals(b),
            (LiveUpdate::User(_, d), LiveUpdate::User(_, e)) => *d += e,
            (LiveUpdate::Strategy(_, a), LiveUpdate::Strategy(_, b)) => a.plus_equals(b),
            _ => unreachable!("absorb is called on updates of one key"),
        }
    }

    /// Applying it changes nothing.
    fn is_zero(&self) -> bool {
        match self {
            LiveUpdate::Count(_, d) | LiveUpdate::User(_, d) => *d == 0,
            LiveUpdate::Window(_, a) | LiveUpdate::Pane(_, a) => a.is_zero(),
            LiveUpdate::Sum(_, s) => s.is_zero(),
            LiveUpdate::Strategy(..) => false,
        }
    }
}

/// Sums the updates of each key into one, and drops those that change
/// nothing.
fn consolidate(updates: &mut Vec<LiveUpdate>) {
    updates.sort_unstable_by(|a, b| a.key().cmp(&b.key()));
    let mut kept = 0;
    for i in 0..updates.len() {
        if kept > 0 && updates[kept - 1].key() == updates[i].key() {
            let (done, rest) = updates.split_at_mut(i);
            done[kept - 1].absorb(&rest[0]);
        } else {
            updates.swap(kept, i);
            kept += 1;
        }
    }
    updates.truncate(kept);
    updates.retain(|u| !u.is_zero());
}

/// Starts the thread that owns the live state and sends its snapshots.
fn spawn_publisher(
    sender: Arc<watch::Sender<Arc<LiveSnapshot>>>,
    horizon: Horizon,
    spec: Arc<WindowSpec>,
    progress: PublishProgress,
) -> mpsc::Sender<Handed> {
    let (to_thread, from_operator) = mpsc::channel::<Handed>();
    let run = move || {
        let mut counts = LiveCounts::default();
        let mut windows = LiveWindows::default();
        let mut dashboard = LiveDashboard::default();
        let mut stash = Stash::new(Arc::clone(&spec));
        let mut bound = 0u64;
        let mut as_of = 0u64;
        while let Ok(first) = from_operator.recv() {
            let mut next = Some(first);
            let mut handed = 0u64;
            while let Some(Handed { updates, bound: b }) = next {
                handed += 1;
                stash.add(updates, bound);
                bound = bound.max(b.unwrap_or(0));
                next = from_operator.try_recv().ok();
            }
            let released = stash.release(bound);
            if released.as_of > as_of {
                as_of = released.as_of;
                if let Some(oldest) = released.oldest {
                    let lag = now_ms().saturating_sub(oldest);
                    metrics::FRESHNESS.observe(lag as f64 / 1000.0);
                }
                for update in released.updates {
                    match update {
                        LiveUpdate::Count((event_type, second), diff) => {
                            counts.update(&event_type, second, diff as i64)
                        }
                        LiveUpdate::Window(id, diff) => windows.apply(id, &diff),
                        LiveUpdate::Pane(id, _) => {
                            tracing::error!(?id, "a pane diff left the stash unexpanded")
                        }
                        LiveUpdate::Sum((series, second), diff) => {
                            dashboard.add_sum(&series, second, diff)
                        }
                        LiveUpdate::User(user, diff) => dashboard.add_user(&user, diff as i64),
                        LiveUpdate::Strategy(id, diff) => dashboard.merge_strategy(&id, &diff),
                    }
                }
                metrics::LIVE_ENTRIES.set(counts.len() as i64);
                metrics::WINDOWS_HELD.set(windows.len() as i64);
                if let Some((allocated, resident)) = crate::alloc::heap_bytes() {
                    metrics::HEAP_ALLOCATED.set(allocated as i64);
                    metrics::HEAP_RESIDENT.set(resident as i64);
                }
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
            progress.published.fetch_add(handed, Ordering::AcqRel);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn count(second: i64, diff: isize) -> LiveUpdate {
        LiveUpdate::Count(("order_placed".into(), second), diff)
    }

    #[test]
    fn ticks_near_the_bound_stay_apart() {
        let mut stash = Stash::new(Arc::new(crate::windows::test_spec()));
        // The bound 100 ms behind: each tick is its own group.
        stash.add([(1_000, count(1, 1))], 900);
        stash.add([(1_100, count(1, 1))], 1_000);
        stash.add([(1_200, count(1, 1))], 1_100);
        let released = stash.release(1_150);
        assert_eq!(released.as_of, 1_150);
        assert_eq!(released.oldest, Some(1_000));
        assert_eq!(released.updates, vec![count(1, 1), count(1, 1)]);
        assert_eq!(stash.len(), 1);
        let released = stash.release(1_201);
        assert_eq!((released.as_of, released.oldest), (1_201, Some(1_200)));
        assert!(stash.is_empty());
    }

    #[test]
    fn lagging_ticks_are_grouped_and_released_whole() {
        let mut stash = Stash::new(Arc::new(crate::windows::test_spec()));
        // The bound 10 s behind: a group may span 2.5 s.
        stash.add([(10_000, count(1, 1))], 0);
        stash.add([(10_100, count(1, 2))], 0);
        stash.add([(12_400, count(2, 1))], 2_000);
        // Past a quarter of the lag: a new group.
        stash.add([(15_000, count(2, 1))], 5_000);
        // The bound inside the first group: nothing of it is released, and
        // the snapshot reaches only its first tick.
        let released = stash.release(10_200);
        assert_eq!((released.as_of, released.oldest), (10_000, None));
        assert!(released.updates.is_empty());
        let released = stash.release(12_401);
        assert_eq!((released.as_of, released.oldest), (12_401, Some(10_000)));
        let mut updates = released.updates;
        consolidate(&mut updates);
        assert_eq!(updates, vec![count(1, 3), count(2, 1)]);
        // A tick inside a held group joins it, whatever the bound.
        stash.add([(15_000, count(2, 1))], 14_999);
        let released = stash.release(15_001);
        assert_eq!(released.updates, vec![count(2, 1), count(2, 1)]);
    }

    #[test]
    fn a_group_that_the_bound_entered_takes_no_later_tick() {
        let mut stash = Stash::new(Arc::new(crate::windows::test_spec()));
        stash.add([(10_000, count(1, 1))], 0);
        // Bound 10_000 has not passed the group, bound 10_050 has entered it.
        stash.add([(10_100, count(1, 1))], 10_050);
        let released = stash.release(10_101);
        assert_eq!(released.as_of, 10_101);
        assert_eq!(released.updates.len(), 2);
        assert_eq!(stash.len(), 0);
        stash.add([(20_000, count(1, 1))], 0);
        stash.add([(20_010, count(1, 1))], 0);
        let released = stash.release(20_005);
        assert_eq!((released.as_of, released.updates.len()), (20_000, 0));
        stash.add([(20_020, count(1, 1))], 20_005);
        let released = stash.release(20_011);
        assert_eq!((released.as_of, released.updates.len()), (20_011, 2));
        assert_eq!(stash.len(), 1);
    }

    #[test]
    fn window_diffs_are_summed_per_window_as_they_arrive() {
        use crate::panes::SeriesId;
        let window = |start: i64| WinId {
            series: SeriesId::default(),
            interval: Interval(0),
            start,
        };
        let diff = |id: WinId, v: f64| LiveUpdate::Window(id, Agg::of_value(v));
        let mut stash = Stash::new(Arc::new(crate::windows::test_spec()));
        stash.add([(10_000, diff(window(0), 1.0))], 0);
        stash.add(
            [
                (10_100, diff(window(0), 2.0)),
                (10_100, diff(window(60), 3.0)),
            ],
            0,
        );
        let mut gone = Agg::of_value(3.0);
        differential_dataflow::difference::Abelian::negate(&mut gone);
        stash.add([(10_200, LiveUpdate::Window(window(60), gone))], 0);
        assert_eq!(stash.len(), 2, "one sum per window");
        let released = stash.release(10_201);
        let mut expected = Agg::of_value(1.0);
        expected.plus_equals(&Agg::of_value(2.0));
        assert_eq!(
            released.updates,
            vec![LiveUpdate::Window(window(0), expected)],
            "the window that cancelled out is left out"
        );
    }

    #[test]
    fn panes_expand_to_one_sum_per_window_in_window_order() {
        use crate::panes::SeriesId;
        let spec = Arc::new(crate::windows::test_spec());
        let finest = spec.intervals[0].0;
        let coarsest = spec
            .intervals
            .last()
            .expect("the test spec has intervals")
            .0;
        let pane = |start: i64| WinId {
            series: SeriesId::default(),
            interval: finest,
            start,
        };
        let mut stash = Stash::new(Arc::clone(&spec));
        stash.add(
            [
                (10_000, LiveUpdate::Pane(pane(0), Agg::of_value(1.0))),
                (10_000, LiveUpdate::Pane(pane(60), Agg::of_value(2.0))),
                (10_000, LiveUpdate::Pane(pane(0), Agg::of_value(4.0))),
                (
                    10_000,
                    LiveUpdate::Window(window_of(&pane(0), coarsest), Agg::of_value(8.0)),
                ),
            ],
            0,
        );
        let released = stash.release(10_001);
        // The same sums, one merge at a time.
        let mut expected: BTreeMap<WinId, Agg> = BTreeMap::new();
        for (start, v) in [(0, 1.0), (60, 2.0), (0, 4.0)] {
            for (interval, _) in &spec.intervals {
                expected
                    .entry(window_of(&pane(start), *interval))
                    .or_default()
                    .plus_equals(&Agg::of_value(v));
            }
        }
        expected
            .entry(window_of(&pane(0), coarsest))
            .or_default()
            .plus_equals(&Agg::of_value(8.0));
        let expected: Vec<LiveUpdate> = expected
            .into_iter()
            .map(|(id, agg)| LiveUpdate::Window(id, agg))
            .collect();
        assert_eq!(released.updates, expected);
    }

    #[test]
    fn consolidation_sums_per_key_and_drops_nothing_changes() {
        let mut updates = vec![
            count(2, 1),
            LiveUpdate::User("u1".into(), 1),
            count(1, 1),
            count(2, -1),
            LiveUpdate::User("u1".into(), 1),
            LiveUpdate::Sum(("volume".into(), 1), (1, 5)),
            LiveUpdate::Sum(("volume".into(), 1), (2, 7)),
        ];
        consolidate(&mut updates);
        assert_eq!(
            updates,
            vec![
                count(1, 1),
                LiveUpdate::Sum(("volume".into(), 1), (3, 12)),
                LiveUpdate::User("u1".into(), 2),
            ]
        );
    }
}
