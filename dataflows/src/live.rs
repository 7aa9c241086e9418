//! Live state as tokio sees it: an immutable snapshot published once per
//! completed tick.
//!
//! [`LiveCounts`] holds event counts per `(event_type, second)` of event
//! time, for the seconds inside the live horizon, with minute and hour
//! roll-ups so that a range sum touches at most a few hundred entries. It is
//! built from persistent maps (`im`), so publishing a snapshot is a cheap
//! clone that shares structure with the previous one.

use std::sync::Arc;

use differential_dataflow::difference::{IsZero, Semigroup};
use im::{HashMap, OrdMap};

use crate::panes::WinId;
use crate::sketch::Sketch;
use crate::windows::{Agg, Dims, Interval, WindowKey};

const MINUTE: i64 = 60;
const HOUR: i64 = 3_600;

/// A value summed per second: counts (`i64`) or `(count, sum)` pairs.
pub trait Additive: Copy + Default + PartialEq + std::fmt::Debug {
    fn add(&mut self, other: Self);
}

impl Additive for i64 {
    fn add(&mut self, other: Self) {
        *self += other;
    }
}

impl Additive for (i64, i128) {
    fn add(&mut self, other: Self) {
        self.0 += other.0;
        self.1 += other.1;
    }
}

/// A per-second series at three resolutions, so that a range sum touches
/// at most a few hundred entries.
#[derive(Clone, Debug, Default)]
pub struct Levels<V: Additive> {
    seconds: OrdMap<i64, V>,
    minutes: OrdMap<i64, V>,
    hours: OrdMap<i64, V>,
}

fn bump<V: Additive>(map: &mut OrdMap<i64, V>, key: i64, diff: V) {
    let entry = map.entry(key).or_default();
    entry.add(diff);
    if *entry == V::default() {
        map.remove(&key);
    }
}

fn sum_range<V: Additive>(map: &OrdMap<i64, V>, from: i64, to: i64) -> V {
    let mut total = V::default();
    if from < to {
        for (_, v) in map.range(from..to) {
            total.add(*v);
        }
    }
    total
}

impl<V: Additive> Levels<V> {
    pub fn update(&mut self, second: i64, diff: V) {
        bump(&mut self.seconds, second, diff);
        bump(&mut self.minutes, second.div_euclid(MINUTE), diff);
        bump(&mut self.hours, second.div_euclid(HOUR), diff);
    }

    /// Sum over seconds in `[from, to)`.
    pub fn sum(&self, from: i64, to: i64) -> V {
        if from >= to {
            return V::default();
        }
        let h_from = from.div_euclid(HOUR) + i64::from(from.rem_euclid(HOUR) != 0);
        let h_to = to.div_euclid(HOUR);
        if h_from < h_to {
            let mut total = sum_range(&self.hours, h_from, h_to);
            total.add(self.sum_minutes(from, h_from * HOUR));
            total.add(self.sum_minutes(h_to * HOUR, to));
            return total;
        }
        self.sum_minutes(from, to)
    }

    fn sum_minutes(&self, from: i64, to: i64) -> V {
        if from >= to {
            return V::default();
        }
        let m_from = from.div_euclid(MINUTE) + i64::from(from.rem_euclid(MINUTE) != 0);
        let m_to = to.div_euclid(MINUTE);
        if m_from < m_to {
            let mut total = sum_range(&self.minutes, m_from, m_to);
            total.add(sum_range(&self.seconds, from, m_from * MINUTE));
            total.add(sum_range(&self.seconds, m_to * MINUTE, to));
            return total;
        }
        sum_range(&self.seconds, from, to)
    }

    pub fn is_empty(&self) -> bool {
        self.seconds.is_empty()
    }

    /// Seconds held.
    pub fn len(&self) -> usize {
        self.seconds.len()
    }
}

/// Event counts by type and second of event time.
#[derive(Clone, Debug, Default)]
pub struct LiveCounts {
    by_type: HashMap<Arc<str>, Levels<i64>>,
    entries: usize,
}

impl LiveCounts {
    /// Applies one update.
    pub fn update(&mut self, event_type: &str, second: i64, diff: i64) {
        if diff == 0 {
            return;
        }
        let levels = match self.by_type.get_mut(event_type) {
            Some(levels) => levels,
            None => self.by_type.entry(Arc::from(event_type)).or_default(),
        };
        let before = levels.seconds.len();
        levels.update(second, diff);
        let after = levels.seconds.len();
        self.entries = self.entries + after - before;
        if levels.is_empty() {
            self.by_type.remove(event_type);
        }
    }

    /// Counts per type of events whose second lies in `[from, to)`.
    pub fn by_type(&self, from: i64, to: i64) -> std::collections::BTreeMap<String, i64> {
        self.by_type
            .iter()
            .map(|(t, levels)| (t.to_string(), levels.sum(from, to)))
            .filter(|(_, n)| *n != 0)
            .collect()
    }

    /// Number of `(type, second)` entries held.
    pub fn len(&self) -> usize {
        self.entries
    }

    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }
}

/// Window aggregates held in memory, by [`WinId`]: ordered by (series,
/// interval, start), so that the windows of a row and interval are a
/// contiguous range. Strings are looked up only to answer a query.
#[derive(Clone, Debug, Default)]
pub struct LiveWindows {
    windows: OrdMap<WinId, Held>,
}

/// A live window's aggregate in two parts: `agg`, whose sketch lacks the
/// counts of `recent`, the sketch diffs applied since they were last
/// folded into it. Merging a diff into a sketch rewrites the whole sketch,
/// and a long window's changes at every publish and grows with its age: the
/// publisher spent most of its time there (`Sketch::merge`, 15.6 % of the
/// process at 8,400 events/s, benchmarks/RESULTS.md). A diff is merged
/// into `recent` instead, and `recent` into `agg` once it has grown to an
/// eighth of it ([`FOLD_FROM`]), so a diff costs about its own size plus
/// `recent`'s, and the large sketch is rewritten only after many. Readers
/// see the sum ([`Held::whole`]), which is the same value, encoded the same
/// way, as one sketch would hold.
#[derive(Clone, Debug)]
struct Held {
    agg: Agg,
    recent: Sketch,
}

/// `recent` is folded into the window's sketch once its encoding is longer
/// than the sketch's divided by this.
const FOLD_FROM: usize = 8;

impl Held {
    fn whole(&self) -> Agg {
        let mut agg = self.agg.clone();
        agg.sketch.merge(&self.recent);
        agg
    }

    fn fold(&mut self) {
        let recent = std::mem::take(&mut self.recent);
        self.agg.sketch.merge(&recent);
    }

    /// Adds `diff`; true when the window's aggregate is then zero.
    fn add(&mut self, diff: &Agg) -> bool {
        self.agg.add_scalars(diff);
        self.recent.merge(&diff.sketch);
        let zero_scalars = self.agg.count == 0 && self.agg.sum == 0;
        if zero_scalars || self.recent.bytes_len() * FOLD_FROM > self.agg.sketch.bytes_len() {
            self.fold();
        }
        zero_scalars && self.agg.sketch.is_empty()
    }
}

impl LiveWindows {
    /// Applies one diff; a window whose aggregate cancels out is removed.
    pub fn apply(&mut self, id: WinId, diff: &Agg) {
        // One search for a held window (`entry` searches twice).
        if let Some(held) = self.windows.get_mut(&id) {
            if held.add(diff) {
                self.windows.remove(&id);
            }
        } else if !diff.is_zero() {
            // The zero aggregate plus `diff` is `diff`.
            let held = Held {
                agg: diff.clone(),
                recent: Sketch::new(),
            };
            self.windows.insert(id, held);
        }
    }

    pub fn get(&self, key: &WindowKey) -> Option<Agg> {
        self.windows.get(&WinId::lookup(key)?).map(Held::whole)
    }

    pub fn len(&self) -> usize {
        self.windows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.windows.is_empty()
    }

    /// Windows of `metric` and `interval` starting in `[from, to)` of the
    /// row whose dimensions are exactly `filter` (the total when it is
    /// empty). Only the configured dimension sets have rows: callers answer
    /// other filters elsewhere (see `WindowSpec::keeps`).
    pub fn series(
        &self,
        metric: &str,
        interval: Interval,
        filter: &Dims,
        from: i64,
        to: i64,
    ) -> std::collections::BTreeMap<i64, Agg> {
        let mut out = std::collections::BTreeMap::new();
        let key = WindowKey {
            metric: Arc::from(metric),
            interval,
            dims: filter.clone(),
            start: from,
        };
        let Some(first) = WinId::lookup(&key) else {
            return out;
        };
        if from >= to {
            return out;
        }
        let last = WinId { start: to, ..first };
        for (k, held) in self.windows.range(first..last) {
            out.insert(k.start, held.whole());
        }
        out
    }

    /// Names of the metrics held.
    pub fn names(&self) -> std::collections::BTreeSet<String> {
        let mut names = std::collections::BTreeSet::new();
        let mut last = None;
        for (k, _) in self.windows.iter() {
            if last != Some(k.series.metric) {
                last = Some(k.series.metric);
                if let Some(name) = k.series.metric.resolve() {
                    names.insert(name.to_string());
                }
            }
        }
        names
    }
}

/// Live dashboard state besides the per-type counts.
#[derive(Clone, Debug, Default)]
pub struct LiveDashboard {
    /// Per-second `(count, sum in nano-units)` by series (see `dashboard`).
    pub sums: HashMap<Arc<str>, Levels<(i64, i128)>>,
    /// Users with an event inside the active-user window, with how many.
    pub users: HashMap<Arc<str>, i64>,
    /// Every strategy seen, with its latest lifecycle event and activity.
    pub strategies: HashMap<Arc<str>, crate::dashboard::StrategyState>,
}

impl LiveDashboard {
    pub fn add_sum(&mut self, series: &str, second: i64, diff: (i64, i128)) {
        let levels = match self.sums.get_mut(series) {
            Some(levels) => levels,
            None => self.sums.entry(Arc::from(series)).or_default(),
        };
        levels.update(second, diff);
        if levels.is_empty() {
            self.sums.remove(series);
        }
    }

    /// `(count, sum)` of `series` over seconds in `[from, to)`.
    pub fn sum(&self, series: &str, from: i64, to: i64) -> (i64, i128) {
        self.sums
            .get(series)
            .map(|l| l.sum(from, to))
            .unwrap_or_default()
    }

    pub fn add_user(&mut self, user: &str, diff: i64) {
        let n = self.users.get(user).copied().unwrap_or(0) + diff;
        if n == 0 {
            self.users.remove(user);
        } else {
            self.users.insert(Arc::from(user), n);
        }
    }

    pub fn merge_strategy(&mut self, id: &str, diff: &crate::dashboard::StrategyState) {
        match self.strategies.get_mut(id) {
            Some(state) => state.plus_equals(diff),
            None => {
                self.strategies.insert(Arc::from(id), *diff);
            }
        }
    }
}

/// What the publish operator hands to tokio.
#[derive(Clone, Debug, Default)]
pub struct LiveSnapshot {
    /// Every event ingested and durable before this processing time
    /// (milliseconds since the epoch) is reflected; nothing after it is.
    /// Zero until the first tick completes.
    pub as_of_ms: u64,
    /// Event counts inside the horizon.
    pub counts: LiveCounts,
    /// Seconds of event time at or after this one are covered in full:
    /// every durable event with such a timestamp is counted.
    pub covered_from_second: i64,
    /// Window aggregates inside their horizons.
    pub windows: LiveWindows,
    /// Per interval, the first window start held in full.
    pub windows_covered_from: Vec<(Interval, i64)>,
    /// Users, strategies, volume and latency.
    pub dashboard: LiveDashboard,
}

impl LiveSnapshot {
    /// Whether counts over `[from, to)` (seconds) can be answered exactly.
    pub fn covers(&self, from_second: i64) -> bool {
        self.as_of_ms > 0 && from_second >= self.covered_from_second
    }

    /// The first window start of `interval` held in full, if the interval is kept.
    pub fn window_coverage(&self, interval: Interval) -> Option<i64> {
        if self.as_of_ms == 0 {
            return None;
        }
        self.windows_covered_from
            .iter()
            .find(|(i, _)| *i == interval)
            .map(|(_, s)| *s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn range_sums_match_a_scan(
            updates in proptest::collection::vec((0i64..20_000, 1i64..3), 0..200),
            from in 0i64..20_000,
            len in 0i64..20_000,
        ) {
            let mut live = LiveCounts::default();
            let mut plain = std::collections::BTreeMap::new();
            for (second, n) in &updates {
                live.update("a", *second, *n);
                *plain.entry(*second).or_insert(0i64) += n;
            }
            let to = from + len;
            let expected: i64 = plain.range(from..to).map(|(_, c)| *c).sum();
            let got = live.by_type(from, to).get("a").copied().unwrap_or(0);
            prop_assert_eq!(got, expected);
        }
    }

    proptest! {
        /// A window that receives many diffs, held in two parts, reads as
        /// the plain sum of them after every one (the same value, encoded
        /// the same way), and leaves when they all cancel out.
        #[test]
        fn a_window_in_two_parts_reads_as_the_sum_of_its_diffs(
            values in proptest::collection::vec(
                proptest::collection::vec(-1e4f64..1e4, 1..8), 1..300),
        ) {
            let key = WindowKey {
                metric: "order.filled.price".into(),
                interval: Interval::parse("1d").expect("1d"),
                dims: Dims::default(),
                start: 0,
            };
            let id = WinId::of(&key).expect("ids");
            let mut live = LiveWindows::default();
            let mut plain = Agg::default();
            let (mut split, mut folded) = (false, false);
            for batch in &values {
                let mut diff = Agg::default();
                for v in batch {
                    diff.plus_equals(&Agg::of_value(*v));
                }
                live.apply(id, &diff);
                plain.plus_equals(&diff);
                prop_assert_eq!(live.get(&key), Some(plain.clone()));
                let held = live.windows.get(&id).expect("held");
                split |= !held.recent.is_empty();
                folded |= split && held.recent.is_empty();
            }
            // Both parts are used once a window has had enough diffs.
            if values.len() >= 100 {
                prop_assert!(split && folded, "split {split}, folded {folded}");
            }
            live.apply(id, &Agg {
                count: -plain.count,
                sum: -plain.sum,
                sketch: plain.sketch.negated(),
                ..Agg::default()
            });
            prop_assert!(live.get(&key).is_none());
            prop_assert!(live.is_empty());
        }
    }

    #[test]
    fn retractions_remove_entries() {
        let mut live = LiveCounts::default();
        live.update("a", 10, 2);
        live.update("b", 10, 1);
        assert_eq!(live.len(), 2);
        live.update("a", 10, -2);
        assert_eq!(live.len(), 1);
        assert!(!live.by_type(0, 100).contains_key("a"));
        assert_eq!(live.by_type(0, 100)["b"], 1);
    }
}
