//! Tumbling windows over event time: keys, the aggregate diff type, and the
//! per-event extraction of window contributions.
//!
//! Collection: [`WindowKey`] (metric, interval, dimensions, window start)
//! with an [`Agg`] as its *diff*, over processing-time ticks. Count, sum and
//! the quantile sketch are abelian; min and max only ever improve while a
//! window lives (events are never retracted one by one), and a window
//! leaves memory by the negated aggregate of its contributions at
//! [`WindowSpec::expire_at`]: counts, sums and sketch buckets cancel to zero
//! and the record is dropped, whatever its min and max were.
//!
//! Sums, minima and maxima are kept exactly in nano-units (`i128`, the value
//! times 10^9 rounded to the nearest integer), so that they do not depend on
//! the order in which contributions are added.

use std::sync::Arc;

use differential_dataflow::difference::{Abelian, IsZero, Monoid, Semigroup};
use serde::{Deserialize, Serialize};

pub use crate::panes::{contribute, DimensionGuard, Partials};
use crate::sketch::{Sketch, SketchSum};
use crate::time::tick_ceil;

/// The intervals a window can have: name and length in seconds.
pub const INTERVALS: [(&str, i64); 7] = [
    ("1m", 60),
    ("5m", 300),
    ("15m", 900),
    ("30m", 1_800),
    ("1h", 3_600),
    ("4h", 14_400),
    ("1d", 86_400),
];

/// The in-memory horizon of an interval when the configuration sets none,
/// in hours: enough closed windows for a dashboard's usual look-back (two
/// hours of minutes, a day of half hours, a month of days) while memory
/// stays bounded by about 40–120 windows per key and interval.
pub fn default_horizon_hours(interval: &str) -> u64 {
    match interval {
        "1m" => 2,
        "5m" => 6,
        "15m" => 12,
        "30m" => 24,
        "1h" => 48,
        "4h" => 7 * 24,
        _ => 31 * 24,
    }
}

/// Numeric properties aggregated for every event type that carries them.
pub const DEFAULT_NUMERIC: &[&str] = &["price", "quantity", "latency_ms", "pnl", "commission"];

/// Dimensions a metric is split by, when the event has them.
pub const DIMENSIONS: [&str; 3] = ["symbol", "side", "strategy_id"];

/// One of [`INTERVALS`], by index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Interval(pub u8);

impl Interval {
    pub fn parse(name: &str) -> Option<Interval> {
        INTERVALS
            .iter()
            .position(|(n, _)| *n == name)
            .map(|i| Interval(i as u8))
    }

    pub fn name(self) -> &'static str {
        INTERVALS[self.0 as usize % INTERVALS.len()].0
    }

    pub fn seconds(self) -> i64 {
        INTERVALS[self.0 as usize % INTERVALS.len()].1
    }

    /// Start of the window holding `second`.
    pub fn window_of(self, second: i64) -> i64 {
        second.div_euclid(self.seconds()) * self.seconds()
    }
}

/// Dimension values of a row; all `None` is the total over every value.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Dims {
    pub symbol: Option<Arc<str>>,
    pub side: Option<Arc<str>>,
    pub strategy_id: Option<Arc<str>>,
}

impl Dims {
    pub fn is_total(&self) -> bool {
        self.symbol.is_none() && self.side.is_none() && self.strategy_id.is_none()
    }

    fn values(&self) -> [(&'static str, Option<&str>); 3] {
        [
            ("symbol", self.symbol.as_deref()),
            ("side", self.side.as_deref()),
            ("strategy_id", self.strategy_id.as_deref()),
        ]
    }

    /// The dimensions as a JSON object with sorted keys (`{}` for the total).
    pub fn to_json(&self) -> serde_json::Value {
        let mut map = serde_json::Map::new();
        for (k, v) in self.values() {
            if let Some(v) = v {
                map.insert(k.to_string(), serde_json::Value::String(v.to_string()));
            }
        }
        serde_json::Value::Object(map)
    }

    /// Parses the stored JSON object.
    pub fn from_json(value: &serde_json::Value) -> Dims {
        let get = |k: &str| value.get(k).and_then(|v| v.as_str()).map(Arc::from);
        Dims {
            symbol: get("symbol"),
            side: get("side"),
            strategy_id: get("strategy_id"),
        }
    }
}

/// A combination of dimensions: bit 0 `symbol`, bit 1 `side`, bit 2
/// `strategy_id`; the empty set is the total row.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct DimSet(pub u8);

/// The dimension sets kept live and rolled up when the configuration names
/// none: each dimension alone, and symbol × side (see README, "Cardinality").
pub const DEFAULT_DIMENSION_SETS: [&[&str]; 4] = [
    &["symbol"],
    &["side"],
    &["strategy_id"],
    &["symbol", "side"],
];

impl DimSet {
    /// The set of the named dimensions; `None` for an unknown name.
    pub fn parse<S: AsRef<str>>(names: &[S]) -> Option<DimSet> {
        let mut bits = 0u8;
        for name in names {
            let i = DIMENSIONS.iter().position(|d| *d == name.as_ref())?;
            bits |= 1 << i;
        }
        Some(DimSet(bits))
    }

    /// [`DEFAULT_DIMENSION_SETS`].
    pub fn defaults() -> Vec<DimSet> {
        DEFAULT_DIMENSION_SETS
            .iter()
            .filter_map(|names| DimSet::parse(names))
            .collect()
    }

    pub fn contains(self, dimension: usize) -> bool {
        self.0 & (1 << dimension) != 0
    }

    /// The dimensions a row or filter sets.
    pub fn of(dims: &Dims) -> DimSet {
        DimSet(
            u8::from(dims.symbol.is_some())
                | u8::from(dims.side.is_some()) << 1
                | u8::from(dims.strategy_id.is_some()) << 2,
        )
    }

    /// The names, in the order of [`DIMENSIONS`].
    pub fn names(self) -> Vec<&'static str> {
        (0..DIMENSIONS.len())
            .filter(|i| self.contains(*i))
            .map(|i| DIMENSIONS[i])
            .collect()
    }
}

/// A window of one metric.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct WindowKey {
    /// Shared: a key is cloned for every update, retraction and snapshot.
    pub metric: Arc<str>,
    pub interval: Interval,
    pub dims: Dims,
    /// Window start, seconds since the epoch.
    pub start: i64,
}

/// Nano-units of a value: `round(v * 1e9)`.
pub fn to_nano(v: f64) -> i128 {
    (v * 1e9).round() as i128
}

/// A value from nano-units.
pub fn from_nano(n: i128) -> f64 {
    n as f64 / 1e9
}

/// The aggregate of a window, and the diff type of the window collection.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Agg {
    pub count: i64,
    /// Sum of the values in nano-units (0 for count-only metrics).
    pub sum: i128,
    /// Least value in nano-units; `i128::MAX` when there is none.
    pub min: i128,
    /// Largest value in nano-units; `i128::MIN` when there is none.
    pub max: i128,
    pub sketch: Sketch,
}

impl Default for Agg {
    fn default() -> Self {
        Agg {
            count: 0,
            sum: 0,
            min: i128::MAX,
            max: i128::MIN,
            sketch: Sketch::new(),
        }
    }
}

impl Agg {
    /// One occurrence of a count-only metric.
    pub fn one() -> Agg {
        Agg {
            count: 1,
            ..Agg::default()
        }
    }

    /// One value.
    pub fn of_value(v: f64) -> Agg {
        let n = to_nano(v);
        let mut sketch = Sketch::new();
        sketch.insert(v);
        Agg {
            count: 1,
            sum: n,
            min: n,
            max: n,
            sketch,
        }
    }

    /// Adds one value, given in nano-units and as its sketch bucket.
    pub fn add_value(&mut self, nano: i128, bucket: Option<i32>) {
        self.count += 1;
        self.sum += nano;
        self.min = self.min.min(nano);
        self.max = self.max.max(nano);
        if let Some(id) = bucket {
            self.sketch.add_to_bucket(id, 1);
        }
    }

    pub fn has_values(&self) -> bool {
        self.min <= self.max
    }

    pub fn avg(&self) -> Option<f64> {
        (self.count > 0 && self.has_values()).then(|| from_nano(self.sum) / self.count as f64)
    }

    pub fn min_value(&self) -> Option<f64> {
        self.has_values().then(|| from_nano(self.min))
    }

    pub fn max_value(&self) -> Option<f64> {
        self.has_values().then(|| from_nano(self.max))
    }

    pub fn sum_value(&self) -> Option<f64> {
        self.has_values().then(|| from_nano(self.sum))
    }

    /// The sketch's estimate of the value of rank `floor(q·(n−1))` (0-based,
    /// the DDSketch convention; within 0.5 % of it), clamped to the
    /// window's exact `[min, max]`: a bucket's representative value may lie
    /// outside the values it holds, an answer never does.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if !self.has_values() {
            return None;
        }
        let estimate = self.sketch.quantile(q)?;
        Some(estimate.clamp(from_nano(self.min), from_nano(self.max)))
    }

    /// The stored form (bincode 2, standard configuration): the whole
    /// mergeable state, so that a stored rollup can take late contributions
    /// and restore live state exactly.
    pub fn to_bytes(&self) -> Vec<u8> {
        bincode::serde::encode_to_vec(self, bincode::config::standard()).unwrap_or_default()
    }

    /// Decodes [`Agg::to_bytes`]; `None` for anything else.
    pub fn from_bytes(bytes: &[u8]) -> Option<Agg> {
        let (agg, read) =
            bincode::serde::decode_from_slice::<Agg, _>(bytes, bincode::config::standard()).ok()?;
        (read == bytes.len()).then_some(agg)
    }
}

impl IsZero for Agg {
    fn is_zero(&self) -> bool {
        self.count == 0 && self.sum == 0 && self.sketch.is_empty()
    }
}

impl Semigroup for Agg {
    fn plus_equals(&mut self, rhs: &Self) {
        self.add_scalars(rhs);
        self.sketch.merge(&rhs.sketch);
    }
}

impl Agg {
    /// [`Semigroup::plus_equals`] but for the sketch.
    pub(crate) fn add_scalars(&mut self, rhs: &Agg) {
        self.count += rhs.count;
        self.sum += rhs.sum;
        self.min = self.min.min(rhs.min);
        self.max = self.max.max(rhs.max);
    }
}

/// The sum of many aggregates, its sketch encoded once ([`SketchSum`]); a
/// sum of one is that aggregate as it is (its sketch shared, not copied).
#[derive(Debug, Default)]
pub struct AggSum {
    agg: Option<Agg>,
    sketch: Option<SketchSum>,
}

impl AggSum {
    pub fn add(&mut self, other: Agg) {
        let Some(agg) = &mut self.agg else {
            self.agg = Some(other);
            return;
        };
        agg.add_scalars(&other);
        let sketch = self.sketch.get_or_insert_with(|| {
            let mut sum = SketchSum::default();
            sum.add(&agg.sketch);
            sum
        });
        sketch.add(&other.sketch);
    }

    pub fn finish(self) -> Agg {
        let mut agg = self.agg.unwrap_or_default();
        if let Some(sketch) = self.sketch {
            agg.sketch = sketch.finish();
        }
        agg
    }
}

impl Monoid for Agg {
    fn zero() -> Self {
        Agg::default()
    }
}

impl Abelian for Agg {
    /// The retraction of a window's contributions: counts, sums and
    /// buckets negated, min and max left to the identity (see the module doc).
    fn negate(&mut self) {
        self.count = -self.count;
        self.sum = -self.sum;
        self.min = i128::MAX;
        self.max = i128::MIN;
        self.sketch = self.sketch.negated();
    }
}

/// What windows to keep, and for how long.
#[derive(Clone, Debug)]
pub struct WindowSpec {
    /// Intervals and their in-memory horizons in milliseconds.
    pub intervals: Vec<(Interval, u64)>,
    pub numeric: Vec<String>,
    /// Most distinct values per metric and dimension.
    pub max_dimension_values: usize,
    /// The dimension combinations kept as rows besides the total.
    pub dimension_sets: Vec<DimSet>,
    pub tick_ms: u64,
}

/// The shortest of `intervals`: every other configured one is a whole
/// multiple of it, so its windows sum to theirs.
pub fn finest(intervals: impl IntoIterator<Item = Interval>) -> Option<Interval> {
    intervals.into_iter().min_by_key(|i| i.seconds())
}

impl WindowSpec {
    /// The shortest configured interval ([`finest`]). The sink stores only
    /// its windows.
    pub fn finest(&self) -> Option<Interval> {
        finest(self.intervals.iter().map(|(i, _)| *i))
    }

    /// Whether rows of `set` are kept (live and in rollups); the total always is.
    pub fn keeps(&self, set: DimSet) -> bool {
        set.0 == 0 || self.dimension_sets.contains(&set)
    }

    /// The tick at which `key`'s window leaves memory.
    pub fn expire_at(&self, key: &WindowKey) -> u64 {
        self.expire_at_window(key.interval, key.start)
    }

    /// The tick at which the window of `interval` starting at `start` leaves memory.
    pub fn expire_at_window(&self, interval: Interval, start: i64) -> u64 {
        let horizon = self
            .intervals
            .iter()
            .find(|(i, _)| *i == interval)
            .map(|(_, h)| *h)
            .unwrap_or(0);
        let end_ms = (start + interval.seconds()).max(0) as u64 * 1000;
        tick_ceil(end_ms.saturating_add(horizon), self.tick_ms)
    }

    /// How long, in seconds of event time, the longest-lived window stays in
    /// memory after its start.
    pub fn memory_span_secs(&self) -> i64 {
        self.intervals
            .iter()
            .map(|(i, h)| i.seconds() + (*h / 1000) as i64)
            .max()
            .unwrap_or(0)
    }

    /// The first window start of `interval` whose window is held in full by
    /// a snapshot with frontier `as_of_ms` (earlier windows may be gone).
    pub fn covered_from(&self, interval: Interval, as_of_ms: u64) -> Option<i64> {
        let horizon = self.intervals.iter().find(|(i, _)| *i == interval)?.1 as i64;
        let len = interval.seconds();
        let edge = as_of_ms as i64 - horizon;
        let second = edge.div_euclid(1000) + i64::from(edge.rem_euclid(1000) != 0);
        let first = second - len;
        Some(first.div_euclid(len) * len + if first.rem_euclid(len) != 0 { len } else { 0 })
    }
}

/// A finite number from a JSON number or a numeric string.
pub fn number(v: &serde_json::Value) -> Option<f64> {
    match v {
        serde_json::Value::Number(n) => n.as_f64(),
        serde_json::Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    }
    .filter(|f| f.is_finite())
}

/// An identifier property: a non-empty string, or a number as its text.
pub fn identifier(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) if !s.is_empty() => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The spec of the unit tests here and in `panes`: 1m and 1h windows, at
/// most 2 values per dimension, the default dimension sets.
#[cfg(test)]
pub(crate) fn test_spec() -> WindowSpec {
    WindowSpec {
        intervals: vec![(Interval(0), 120_000), (Interval(4), 3_600_000)],
        numeric: DEFAULT_NUMERIC.iter().map(|s| s.to_string()).collect(),
        max_dimension_values: 2,
        dimension_sets: DimSet::defaults(),
        tick_ms: 100,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::test_spec as spec;

    #[test]
    fn quantiles_stay_inside_the_exact_min_and_max() {
        // One value: its bucket's estimate lies above it (the case seen in
        // a 1m window: p99 50,265.67 with max 50,248.93).
        let one = Agg::of_value(50_248.93);
        assert!(one.sketch.quantile(0.99).expect("estimate") > 50_248.93);
        for q in [0.0, 0.5, 0.99, 1.0] {
            assert_eq!(one.quantile(q), Some(50_248.93), "q {q}");
        }
        // Many values: every estimate within [min, max] and within 0.5 %
        // of the exact rank floor(q·(n−1)).
        let mut agg = Agg::default();
        let values: Vec<f64> = (1..=1000).map(|i| 100.0 + f64::from(i) * 0.37).collect();
        for v in &values {
            agg.plus_equals(&Agg::of_value(*v));
        }
        for q in [0.0, 0.5, 0.9, 0.95, 0.99, 1.0] {
            let got = agg.quantile(q).expect("quantile");
            let exact = values[(q * 999.0).floor() as usize];
            assert!((values[0]..=values[999]).contains(&got), "q {q}: {got}");
            assert!(
                (got - exact).abs() <= exact * 0.005,
                "q {q}: {got} vs {exact}"
            );
        }
        assert_eq!(Agg::default().quantile(0.5), None);
    }

    #[test]
    fn agg_bytes_round_trip() {
        let mut a = Agg::of_value(12.5);
        a.plus_equals(&Agg::of_value(7.25));
        assert_eq!(Agg::from_bytes(&a.to_bytes()), Some(a.clone()));
        assert_eq!(Agg::from_bytes(b"nonsense"), None);
        assert_eq!(Agg::from_bytes(&Agg::one().to_bytes()), Some(Agg::one()));
    }

    #[test]
    fn agg_is_a_diff_that_cancels() {
        let mut a = Agg::of_value(3.0);
        a.plus_equals(&Agg::of_value(-1.5));
        assert_eq!(a.count, 2);
        assert_eq!(a.min_value(), Some(-1.5));
        assert_eq!(a.max_value(), Some(3.0));
        assert_eq!(a.avg(), Some(0.75));
        let mut gone = a.clone();
        let mut neg = a.clone();
        neg.negate();
        gone.plus_equals(&neg);
        assert!(gone.is_zero());
    }

    #[test]
    fn expiry_and_coverage_agree() {
        let s = spec();
        for as_of in [1_000_000u64, 1_234_567, 9_999_999] {
            for interval in [Interval(0), Interval(4)] {
                let from = s.covered_from(interval, as_of).expect("configured");
                assert_eq!(from % interval.seconds(), 0);
                let key = |start| WindowKey {
                    metric: "m".into(),
                    interval,
                    dims: Dims::default(),
                    start,
                };
                assert!(s.expire_at(&key(from)) >= as_of, "{as_of} {interval:?}");
                assert!(
                    s.expire_at(&key(from - interval.seconds()))
                        < as_of + 1000 * interval.seconds() as u64,
                );
            }
        }
    }

    #[test]
    fn dims_json_round_trip() {
        let d = Dims {
            symbol: Some("ETH".into()),
            side: None,
            strategy_id: Some("s1".into()),
        };
        assert_eq!(
            d.to_json().to_string(),
            r#"{"strategy_id":"s1","symbol":"ETH"}"#
        );
        assert_eq!(Dims::from_json(&d.to_json()), d);
        assert!(Dims::default()
            .to_json()
            .as_object()
            .is_some_and(|m| m.is_empty()));
    }
}
