//! Window contributions on the hot path: what one event adds to which
//! series, folded into one-minute panes, and expanded to the configured
//! intervals once per tick.
//!
//! A *series* ([`SeriesId`]) is a metric and one row of its dimensions: the
//! total (no dimension set) or a configured [`DimSet`] whose dimensions the
//! event all carries. Metric names and dimension values are [`Sym`] ids,
//! so a series is 32 bytes that compare as integers. A *pane* is a series
//! and a minute of event time; every interval (1m … 1d) is an aligned
//! multiple of a minute, so a window's contribution is the sum of its
//! panes'. [`Partials`] folds events into panes (one hash-map update per
//! event and dimension row, holding the panes of every metric of the
//! event's type; never one per interval) and [`Partials::drain_ids`]
//! expands a tick's panes into window deltas ([`WinId`], [`Agg`]): one per
//! window touched in the tick, whatever the number of events.
//!
//! Properties are read from the event's typed record ([`crate::props`]),
//! read once per event.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::event::Event;
use crate::ids::Sym;
use crate::props::{Id, Num, PropsRef};
use crate::sketch::Sketch;
use crate::windows::{to_nano, Agg, AggSum, Dims, Interval, WindowKey, WindowSpec};
use crate::FastMap;

/// A metric and one dimension row of it; [`Sym::NONE`] marks a dimension
/// that the row does not set.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct SeriesId {
    pub metric: Sym,
    /// symbol, side, strategy_id.
    pub dims: [Sym; 3],
}

/// A window of a series, as the dataflow holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct WinId {
    pub series: SeriesId,
    pub interval: Interval,
    /// Window start, seconds since the epoch.
    pub start: i64,
}

impl WinId {
    /// The window with its strings, for the API and PostgreSQL; `None` if an
    /// id is unknown to this process (never for ids interned here).
    pub fn key(&self) -> Option<WindowKey> {
        let dim = |i: usize| {
            let s = self.series.dims[i];
            if s.is_none() {
                Some(None)
            } else {
                s.resolve().map(Some)
            }
        };
        Some(WindowKey {
            metric: self.series.metric.resolve()?,
            interval: self.interval,
            dims: Dims {
                symbol: dim(0)?,
                side: dim(1)?,
                strategy_id: dim(2)?,
            },
            start: self.start,
        })
    }

    /// The ids of a stored or REST window; `None` on an id collision.
    pub fn of(key: &WindowKey) -> Option<WinId> {
        Self::ids(key, Sym::intern)
    }

    /// The ids of a window whose strings this process knows; `None` otherwise.
    pub fn lookup(key: &WindowKey) -> Option<WinId> {
        Self::ids(key, Sym::lookup)
    }

    fn ids(key: &WindowKey, sym: impl Fn(&str) -> Option<Sym>) -> Option<WinId> {
        let dim = |v: &Option<std::sync::Arc<str>>| match v {
            None => Some(Sym::NONE),
            Some(s) => sym(s),
        };
        Some(WinId {
            series: SeriesId {
                metric: sym(&key.metric)?,
                dims: [
                    dim(&key.dims.symbol)?,
                    dim(&key.dims.side)?,
                    dim(&key.dims.strategy_id)?,
                ],
            },
            interval: key.interval,
            start: key.start,
        })
    }
}

/// Admitted values of one dimension: value → (its id, last event second seen).
type Seen = FastMap<Box<str>, (Sym, i64)>;

/// Caps distinct dimension values per metric and dimension; what it refuses
/// is counted. A value not seen in event time for longer than windows stay
/// in memory is forgotten when room is needed, so a slowly changing set of
/// symbols is not refused forever. A value is interned ([`Sym`]) only once
/// admitted, so refused values cost no memory.
#[derive(Debug, Default)]
pub struct DimensionGuard {
    /// metric → per dimension: value → (its id, last event second seen).
    seen: FastMap<Sym, [Seen; 3]>,
    pub refused: u64,
}

impl DimensionGuard {
    /// The ids of the admitted values (`None` where absent or refused); an
    /// event with any present value refused counts once in `refused`.
    fn admit(
        &mut self,
        metric: Sym,
        values: &[Option<&str>; 3],
        cap: usize,
        second: i64,
        forget_after: i64,
    ) -> [Option<Sym>; 3] {
        let sets = self.seen.entry(metric).or_default();
        let mut out = [None; 3];
        let mut refused = false;
        for (i, value) in values.iter().enumerate() {
            let Some(value) = *value else {
                continue;
            };
            let set = &mut sets[i];
            if let Some((id, last)) = set.get_mut(value) {
                *last = (*last).max(second);
                out[i] = Some(*id);
                continue;
            }
            if set.len() >= cap {
                set.retain(|_, (_, last)| *last >= second - forget_after);
            }
            // Interned only once there is room: refused values stay out of
            // the dictionary.
            let id = if set.len() < cap {
                Sym::intern(value)
            } else {
                None
            };
            match id {
                Some(id) => {
                    set.insert(value.into(), (id, second));
                    out[i] = Some(id);
                }
                None => refused = true,
            }
        }
        if refused {
            self.refused += 1;
        }
        out
    }
}

/// The metric ids of one event type: its count, then one per numeric
/// property of the spec, then its notional.
#[derive(Debug)]
struct MetricIds {
    count: Option<Sym>,
    values: Vec<Option<Sym>>,
}

impl MetricIds {
    fn new(event_type: &str, spec: &WindowSpec) -> MetricIds {
        let values = spec
            .numeric
            .iter()
            .map(String::as_str)
            .chain([NOTIONAL])
            .map(|p| Sym::intern(&format!("{event_type}.{p}")))
            .collect();
        MetricIds {
            count: Sym::intern(&format!("{COUNT_PREFIX}{event_type}")),
            values,
        }
    }

    /// Metrics of the type: its count, then its values.
    fn len(&self) -> usize {
        1 + self.values.len()
    }

    /// The id of metric `m` (0: the count, then the values in order).
    fn metric(&self, m: usize) -> Option<Sym> {
        match m {
            0 => self.count,
            m => self.values.get(m - 1).copied().flatten(),
        }
    }
}

/// The name of an event type's count metric is this followed by the type.
const COUNT_PREFIX: &str = "events.count.";

/// The derived `price × quantity` metric's property name.
const NOTIONAL: &str = "notional";

/// The event type whose events feed `metric` (the inverse of the names
/// [`contribute`] gives), or `None` for a name it never gives.
pub fn event_type_of<'m>(metric: &'m str, spec: &WindowSpec) -> Option<&'m str> {
    metric.strip_prefix(COUNT_PREFIX).or_else(|| {
        let (event_type, property) = metric.rsplit_once('.')?;
        (property == NOTIONAL || spec.numeric.iter().any(|p| p == property)).then_some(event_type)
    })
}

/// A dimension value: an identifier of at most 128 bytes.
fn dimension<'a>(props: &PropsRef<'a>, id: Id) -> Option<&'a str> {
    props.id(id).filter(|s| s.len() <= 128)
}

/// One series' minute while a tick is folded: the aggregate without its
/// sketch, and the bucket id of every value, turned into the sketch once
/// when the tick is drained ([`Sketch::of_buckets`]).
#[derive(Debug, Default)]
struct Pane {
    agg: Agg,
    buckets: Vec<i32>,
}

impl Pane {
    fn into_agg(mut self) -> Agg {
        self.agg.sketch = Sketch::of_buckets(&mut self.buckets);
        self.agg
    }
}

/// Window contributions of events, folded per series and minute of event
/// time. See the [module docs](self).
///
/// The panes of one event type's metrics for one dimension row and minute
/// are held together, one per metric of the type in the order of its
/// [`MetricIds`] (count, numeric properties, notional): an event costs one
/// map update per row, not one per metric and row. A pane no event reached
/// has a count of 0 and yields nothing.
#[derive(Debug, Default)]
pub struct Partials {
    /// (event type, dimension row, minute) → one pane per metric of the type.
    rows: FastMap<(u32, [Sym; 3], i64), Vec<Pane>>,
    /// Event type → its index in `types`.
    names: FastMap<String, u32>,
    types: Vec<MetricIds>,
}

impl Partials {
    /// Panes held.
    pub fn len(&self) -> usize {
        self.rows
            .values()
            .map(|panes| panes.iter().filter(|p| p.agg.count != 0).count())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The window deltas of the panes held, emptying them (see
    /// [`expand_panes`]).
    pub fn drain_ids(&mut self, spec: &WindowSpec) -> Vec<(WinId, Agg)> {
        let types = &self.types;
        let mut panes: Vec<((SeriesId, i64), Agg)> = self
            .rows
            .drain()
            .flat_map(|((ty, dims, minute), panes)| {
                let ids = &types[ty as usize];
                panes
                    .into_iter()
                    .enumerate()
                    .filter(|(_, pane)| pane.agg.count != 0)
                    .filter_map(move |(m, pane)| {
                        let metric = ids.metric(m)?;
                        Some(((SeriesId { metric, dims }, minute), pane.into_agg()))
                    })
            })
            .collect();
        panes.sort_unstable_by_key(|(key, _)| *key);
        let mut out = Vec::with_capacity(panes.len() * spec.intervals.len());
        expand_panes(panes, spec, &mut out);
        out
    }

    /// [`Partials::drain_ids`] with strings, for the REST write path.
    pub fn drain(&mut self, spec: &WindowSpec) -> impl Iterator<Item = (WindowKey, Agg)> {
        self.drain_ids(spec)
            .into_iter()
            .filter_map(|(id, agg)| Some((id.key()?, agg)))
    }

    /// The window deltas as a map (tests, small batches).
    pub fn into_map(mut self, spec: &WindowSpec) -> HashMap<WindowKey, Agg> {
        self.drain(spec).collect()
    }

    /// The index of `event_type`, its metric ids made on first sight.
    fn type_index(&mut self, event_type: &str, spec: &WindowSpec) -> u32 {
        if let Some(ty) = self.names.get(event_type) {
            return *ty;
        }
        let ty = self.types.len() as u32;
        self.types.push(MetricIds::new(event_type, spec));
        self.names.insert(event_type.to_string(), ty);
        ty
    }

    /// The panes of a row (one per metric of the type).
    fn row(&mut self, ty: u32, dims: [Sym; 3], minute: i64) -> &mut Vec<Pane> {
        let metrics = self.types[ty as usize].len();
        self.rows
            .entry((ty, dims, minute))
            .or_insert_with(|| (0..metrics).map(|_| Pane::default()).collect())
    }
}

/// What an event adds to a pane: its value in nano-units and sketch
/// bucket, or `None` for a count-only metric.
type Value = Option<(i128, Option<i32>)>;

impl Pane {
    fn add(&mut self, value: Value) {
        match value {
            Some((nano, bucket)) => {
                self.agg.add_value(nano, None);
                self.buckets.extend(bucket);
            }
            None => self.agg.count += 1,
        }
    }
}

/// Adds to `out` the window deltas of `panes` (sorted by series and
/// minute): every pane added to the window of each configured interval
/// that holds it, one delta per window, in window order. The panes of one
/// window are adjacent: no map of windows is built, and a window's sum is
/// encoded once ([`AggSum`]).
pub fn expand_panes(
    panes: Vec<((SeriesId, i64), Agg)>,
    spec: &WindowSpec,
    out: &mut Vec<(WinId, Agg)>,
) {
    let mut group: Vec<(i64, Agg)> = Vec::new();
    let mut panes = panes.into_iter().peekable();
    while let Some(((series, minute), agg)) = panes.next() {
        group.clear();
        group.push((minute, agg));
        while let Some(((_, minute), agg)) = panes.next_if(|((s, _), _)| *s == series) {
            group.push((minute, agg));
        }
        for (interval, _) in &spec.intervals {
            let id = |start| WinId {
                series,
                interval: *interval,
                start,
            };
            let mut window: Option<(i64, AggSum)> = None;
            for (minute, agg) in &group {
                let start = interval.window_of(*minute);
                if !matches!(&window, Some((s, _)) if *s == start) {
                    if let Some((start, sum)) = window.replace((start, AggSum::default())) {
                        out.push((id(start), sum.finish()));
                    }
                }
                if let Some((_, sum)) = &mut window {
                    sum.add(agg.clone());
                }
            }
            if let Some((start, sum)) = window {
                out.push((id(start), sum.finish()));
            }
        }
    }
}

/// Adds the contributions of `event` to `into`: for every metric, the
/// total row and, for each configured dimension set whose dimensions the
/// event carries and the guard admits, the row of those values.
pub fn contribute(
    event: &Event,
    spec: &WindowSpec,
    guard: &mut DimensionGuard,
    into: &mut Partials,
) {
    let second = event.second();
    let minute = second.div_euclid(60) * 60;
    let props = event.props();
    let ty = into.type_index(&event.event_type, spec);
    let metric_ids = &into.types[ty as usize];
    // (metric index in the type's row, value)
    let mut metrics: Vec<(usize, Option<f64>)> = Vec::with_capacity(5);
    metrics.push((0, None));
    for (i, name) in spec.numeric.iter().enumerate() {
        if let Some(v) = props.number(name) {
            metrics.push((1 + i, Some(v)));
        }
    }
    if let (Some(p), Some(q)) = (props.num(Num::Price), props.num(Num::Quantity)) {
        let notional = p * q;
        if notional.is_finite() {
            metrics.push((metric_ids.len() - 1, Some(notional)));
        }
    }
    let values: [Option<&str>; 3] = [
        dimension(&props, Id::Symbol),
        dimension(&props, Id::Side),
        dimension(&props, Id::StrategyId),
    ];
    let split = values.iter().any(Option::is_some) && !spec.dimension_sets.is_empty();
    let forget_after = spec.memory_span_secs();
    // (metric index, value, admitted dimension values) of every metric
    // whose name has an id.
    let mut admitted: Vec<(usize, Value, [Option<Sym>; 3])> = Vec::with_capacity(metrics.len());
    for (m, value) in metrics {
        let Some(metric) = metric_ids.metric(m) else {
            // The metric's name collides with another's id: never merged.
            guard.refused += 1;
            continue;
        };
        let value = value.map(|v| (to_nano(v), Sketch::bucket_of(v)));
        let ids = if split {
            guard.admit(
                metric,
                &values,
                spec.max_dimension_values,
                second,
                forget_after,
            )
        } else {
            [None; 3]
        };
        admitted.push((m, value, ids));
    }
    if admitted.is_empty() {
        return;
    }
    let total = into.row(ty, [Sym::NONE; 3], minute);
    for (m, value, _) in &admitted {
        total[*m].add(*value);
    }
    if !split {
        return;
    }
    for set in &spec.dimension_sets {
        if set.0 == 0 {
            continue;
        }
        // The row of the previous metric: the guard admits the same values
        // for every metric of an event but near its cap.
        let mut current: Option<([Sym; 3], &mut Vec<Pane>)> = None;
        for (m, value, ids) in &admitted {
            let mut dims = [Sym::NONE; 3];
            let complete = (0..3).all(|i| {
                if !set.contains(i) {
                    return true;
                }
                match ids[i] {
                    Some(id) => {
                        dims[i] = id;
                        true
                    }
                    None => false,
                }
            });
            if !complete {
                continue;
            }
            let row = match current {
                Some((held, row)) if held == dims => row,
                _ => into.row(ty, dims, minute),
            };
            row[*m].add(*value);
            current = Some((dims, row));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventSource;

    use crate::windows::test_spec as spec;

    fn event(t: &str, props: &str, second: i64) -> Event {
        Event {
            id: uuid::Uuid::nil(),
            event_type: t.into(),
            user_id: None,
            session_id: None,
            properties: props.into(),
            timestamp_us: second * 1_000_000 + 250_000,
            created_at_us: 0,
            source: EventSource::Rest,
            parsed: Default::default(),
        }
    }

    #[test]
    fn contributions_cover_metrics_intervals_and_dimensions() {
        let mut into = Partials::default();
        let mut guard = DimensionGuard::default();
        let e = event(
            "order.filled",
            r#"{"symbol":"BTC","side":"BUY","price":"100.5","quantity":2}"#,
            3_725,
        );
        contribute(&e, &spec(), &mut guard, &mut into);
        let into = into.into_map(&spec());
        // 4 metrics (count, price, quantity, notional) × 2 intervals × 4
        // rows (total, symbol, side, symbol × side; no strategy_id here).
        assert_eq!(into.len(), 32);
        let key = WindowKey {
            metric: "order.filled.notional".into(),
            interval: Interval(0),
            dims: Dims::default(),
            start: 3_720,
        };
        let agg = &into[&key];
        assert_eq!(agg.count, 1);
        assert_eq!(agg.sum, 201_000_000_000);
        assert_eq!(agg.min_value(), Some(201.0));
        let hour = WindowKey {
            metric: "events.count.order.filled".into(),
            interval: Interval(4),
            dims: Dims {
                symbol: Some("BTC".into()),
                side: Some("BUY".into()),
                strategy_id: None,
            },
            start: 3_600,
        };
        assert_eq!(into[&hour].count, 1);
        assert!(!into[&hour].has_values());
    }

    #[test]
    fn panes_of_one_tick_sum_into_each_window_once() {
        let mut into = Partials::default();
        let mut guard = DimensionGuard::default();
        // Minutes 0, 1 and 61 (in that order of arrival: 61 first): three
        // 1m windows, two 1h windows, the first holding two panes.
        for second in [3_665, 5, 70, 71] {
            let e = event("page.view", r#"{"latency_ms":2}"#, second);
            contribute(&e, &spec(), &mut guard, &mut into);
        }
        let deltas = into.drain_ids(&spec());
        let mut seen = std::collections::HashSet::new();
        assert!(
            deltas.iter().all(|(id, _)| seen.insert(*id)),
            "one delta per window"
        );
        let into: HashMap<WindowKey, Agg> = deltas
            .into_iter()
            .filter_map(|(id, agg)| Some((id.key()?, agg)))
            .collect();
        let at = |interval: u8, start: i64| {
            let key = WindowKey {
                metric: "page.view.latency_ms".into(),
                interval: Interval(interval),
                dims: Dims::default(),
                start,
            };
            into.get(&key).map(|agg| (agg.count, agg.sketch.count()))
        };
        assert_eq!(at(0, 0), Some((1, 1)));
        assert_eq!(at(0, 60), Some((2, 2)));
        assert_eq!(at(0, 3_660), Some((1, 1)));
        assert_eq!(at(4, 0), Some((3, 3)));
        assert_eq!(at(4, 3_600), Some((1, 1)));
    }

    #[test]
    fn guard_caps_values_and_counts_refusals() {
        let mut into = Partials::default();
        let mut guard = DimensionGuard::default();
        for s in ["A", "B", "C", "A"] {
            let e = event("page.view", &format!(r#"{{"symbol":"{s}"}}"#), 10);
            contribute(&e, &spec(), &mut guard, &mut into);
        }
        assert_eq!(guard.refused, 1);
        let into = into.into_map(&spec());
        let total = WindowKey {
            metric: "events.count.page.view".into(),
            interval: Interval(0),
            dims: Dims::default(),
            start: 0,
        };
        assert_eq!(
            into[&total].count, 4,
            "refused values still count in the total"
        );
        assert!(!into.keys().any(|k| k.dims.symbol.as_deref() == Some("C")));
    }

    #[test]
    fn the_guard_admits_per_metric_and_rows_follow_it() {
        let spec = WindowSpec {
            max_dimension_values: 1,
            ..spec()
        };
        let mut into = Partials::default();
        let mut guard = DimensionGuard::default();
        // The count metric takes symbol X first, so it refuses Y; the price
        // metric first sees Y and takes it.
        for props in [r#"{"symbol":"X"}"#, r#"{"symbol":"Y","price":2}"#] {
            contribute(&event("tick", props, 10), &spec, &mut guard, &mut into);
        }
        assert_eq!(guard.refused, 1);
        let into = into.into_map(&spec);
        let key = |metric: &str, symbol: &str| WindowKey {
            metric: metric.into(),
            interval: Interval(0),
            dims: Dims {
                symbol: Some(symbol.into()),
                side: None,
                strategy_id: None,
            },
            start: 0,
        };
        assert_eq!(into[&key("events.count.tick", "X")].count, 1);
        assert!(!into.contains_key(&key("events.count.tick", "Y")));
        assert_eq!(into[&key("tick.price", "Y")].count, 1);
        assert!(!into.contains_key(&key("tick.price", "X")));
    }

    #[test]
    fn a_refused_value_is_not_interned() {
        let mut into = Partials::default();
        let mut guard = DimensionGuard::default();
        for s in ["only-here-1", "only-here-2", "only-here-refused"] {
            let e = event("page.view", &format!(r#"{{"symbol":"{s}"}}"#), 10);
            contribute(&e, &spec(), &mut guard, &mut into);
        }
        assert_eq!(guard.refused, 1);
        assert!(Sym::lookup("only-here-2").is_some());
        assert_eq!(Sym::lookup("only-here-refused"), None);
    }

    #[test]
    fn every_metric_name_maps_back_to_its_event_type() {
        let mut into = Partials::default();
        let e = event(
            "order.filled",
            r#"{"price":2,"quantity":3,"latency_ms":4,"pnl":-1,"commission":0.1}"#,
            10,
        );
        contribute(&e, &spec(), &mut DimensionGuard::default(), &mut into);
        let names: std::collections::BTreeSet<String> = into
            .into_map(&spec())
            .keys()
            .map(|k| k.metric.to_string())
            .collect();
        // count, five numeric properties and notional.
        assert_eq!(names.len(), 7, "{names:?}");
        for name in &names {
            assert_eq!(event_type_of(name, &spec()), Some("order.filled"), "{name}");
        }
        assert_eq!(event_type_of("order.filled.volume", &spec()), None);
    }

    #[test]
    fn guard_forgets_values_not_seen_for_longer_than_memory() {
        let mut into = Partials::default();
        let mut guard = DimensionGuard::default();
        let s = spec();
        let span = s.memory_span_secs();
        assert_eq!(span, 3_600 + 3_600);
        let at =
            |sym: &str, second| event("page.view", &format!(r#"{{"symbol":"{sym}"}}"#), second);
        contribute(&at("A", 0), &s, &mut guard, &mut into);
        contribute(&at("B", 0), &s, &mut guard, &mut into);
        contribute(&at("C", span), &s, &mut guard, &mut into);
        assert_eq!(guard.refused, 1, "A and B are still within memory");
        contribute(&at("B", span), &s, &mut guard, &mut into);
        contribute(&at("C", span + 1), &s, &mut guard, &mut into);
        assert_eq!(guard.refused, 1, "A is forgotten, C takes its place");
        let into = into.into_map(&spec());
        assert!(into.keys().any(|k| k.dims.symbol.as_deref() == Some("C")));
    }

    #[test]
    fn dimension_sets_make_one_row_each_and_only_when_complete() {
        let mut into = Partials::default();
        let mut guard = DimensionGuard::default();
        let e = event("page.view", r#"{"symbol":"BTC","strategy_id":"s1"}"#, 10);
        contribute(&e, &spec(), &mut guard, &mut into);
        let rows: std::collections::BTreeSet<String> = into
            .into_map(&spec())
            .keys()
            .filter(|k| k.interval == Interval(0))
            .map(|k| k.dims.to_json().to_string())
            .collect();
        // total, symbol, strategy_id; no side, so neither side nor symbol × side.
        assert_eq!(
            rows.into_iter().collect::<Vec<_>>(),
            vec![r#"{"strategy_id":"s1"}"#, r#"{"symbol":"BTC"}"#, "{}"]
        );
    }

    #[test]
    fn win_ids_round_trip_through_window_keys() {
        let key = WindowKey {
            metric: "order.filled.price".into(),
            interval: Interval(2),
            dims: Dims {
                symbol: Some("ETH".into()),
                side: None,
                strategy_id: Some("s9".into()),
            },
            start: 900,
        };
        let id = WinId::of(&key).expect("no collision");
        assert_eq!(id.key(), Some(key));
    }
}
