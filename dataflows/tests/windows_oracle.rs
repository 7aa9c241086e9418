//! End-to-end checks of the windowed aggregates of one worker, without Kafka
//! or PostgreSQL. `Record`s enter through a timely `InputHandle` whose time
//! the test controls, through the production window branch
//! (`pipeline::build_windows`) and `durable_sink`:
//!
//! ```text
//! records ─► FoldWindows ─┬─► durable_sink(records, deltas) ─► durability stream ─┐
//!                         └─► RetireWindows ─► arrange "WindowAggregates" ─► LiveUpdate::Window ─► publish
//! ```
//!
//! Every check compares against a from-scratch oracle written here, which
//! does not call `contribute`, `metrics_of`, `Agg::plus_equals` or
//! `WindowSpec::expire_at`: it knows which properties it wrote into each
//! event, aggregates the values itself (sums, minima and maxima in nano-units
//! through `windows::to_nano`, the sketch by inserting every value into a
//! fresh `Sketch`, which is canonical) and mirrors the expiry rule:
//!
//! * `RetireWindows` drops a delta read at tick `t` when `expire_at(key) <= t`
//!   (late: the window is already beyond its interval's horizon), and
//!   otherwise emits it at `t`, and the retraction of the whole window at
//!   `expire_at(key)`;
//! * the sink gets the finest interval's windows only (every coarser one
//!   is their sum); `derive` sums what it got into every interval, on the
//!   sink's side, as the stored rollups are accumulated, and that is
//!   compared with the oracle at every interval;
//! * `publish` applies the updates of every tick `< as_of`, so a window is in
//!   a snapshot iff some event of it was read at a tick `t < as_of` with
//!   `expire_at > t`, and `expire_at >= as_of` (its retraction not applied).
//!   For such a window every contribution read before `as_of` is held, so a
//!   window that is present is exact, below the announced coverage too; the
//!   snapshot is compared as a whole (same number of windows, same keys,
//!   same aggregates).
//!
//! The worker is driven by `worker.step()` loops bounded by a step count and
//! a deadline; nothing sleeps.
//!
//! How each test was checked to be able to fail: by deliberate bugs made in
//! this file's wiring or oracle, one at a time, then reverted (production
//! code untouched); every one made the named test fail:
//!
//! * snapshot oracle (1): (a) feeding `partials` straight into the
//!   arrangement, without `expiring` (nothing expires, late windows are
//!   held); (b) giving the harness's spec a 1m horizon of 9 minutes while
//!   the oracle keeps 10; (c) making the oracle's `live` rule
//!   `expire_at > as_of` instead of `>=` (caught thanks to `Gap::Minute`,
//!   which lands `as_of` on expiry ticks); (d) inserting every value twice
//!   into the oracle's sketch (fails on the sketch alone). (a) also fails
//!   the series test and the late-events test;
//! * rollups (2): (a) an oracle that leaves out contributions that were
//!   late when read; (b) merging the rollups of every other step only.
//!   Skipping `expiring` leaves it passing, as it should;
//! * series (3): an oracle that ignores the `side` part of the filters;
//! * bounded memory (4): without `expiring` the window count passes its
//!   bound at step 25 (12.5 minutes of event time); without the trace
//!   maintenance (compaction up to the durability frontier) the arrangement
//!   passes its bound at step 30.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

mod harness;

use dataflows::aggregates::restored_windows;
use dataflows::counts::Horizon;
use dataflows::durable::{durable_sink, SinkBatch, WorkerAck};
use dataflows::pipeline::{build_windows, WindowTrace};
use dataflows::sketch::Sketch;
use dataflows::windows::{to_nano, Agg, DimSet, Dims, Interval, WindowKey, WindowSpec};
use dataflows::{Event, EventSource, LiveSnapshot, Record};
use differential_dataflow::difference::Semigroup;
use differential_dataflow::trace::TraceReader;
use harness::{Harness, Limits, Wired, Wiring};
use proptest::prelude::*;

use timely::dataflow::Stream;
use timely::progress::Antichain;
use timely::worker::Worker;
use tokio::sync::mpsc;
use uuid::Uuid;

/// Tick length, ms.
const TICK: u64 = 100;
/// First tick of every test: a realistic epoch time (not aligned to an hour).
const T0: u64 = 1_760_000_000_000;
/// A second far after every event time used here.
const FAR_FUTURE: i64 = i64::MAX / 2_000;
/// Upper bounds on one wait for the dataflow.
const MAX_STEPS: usize = 20_000;
const MAX_WAIT: Duration = Duration::from_secs(60);
/// Extra steps taken after a wait, to give a wrong publication the chance
/// to happen before the test asserts that it did not.
const SETTLE_STEPS: usize = 30;

const TOPIC: &str = "trading-events";

/// 1m windows kept 10 minutes, 5m windows 20 minutes, 1h windows 2 hours.
const INTERVALS: [(Interval, u64); 3] = [
    (Interval(0), 10 * 60_000),
    (Interval(1), 20 * 60_000),
    (Interval(4), 2 * 3_600_000),
];

/// The numeric properties aggregated here (`commission` is written into
/// some events but is not one of them).
const NUMERIC: [&str; 3] = ["price", "quantity", "pnl"];

fn spec() -> Arc<WindowSpec> {
    Arc::new(WindowSpec {
        intervals: INTERVALS.to_vec(),
        numeric: NUMERIC.iter().map(|s| s.to_string()).collect(),
        // Far above the few values used: the guard never refuses here.
        max_dimension_values: 100,
        dimension_sets: DimSet::defaults(),
        tick_ms: TICK,
    })
}

/// Horizon of the (unused) live counts, required by `publish`.
fn count_horizon() -> Horizon {
    Horizon {
        horizon_ms: 60_000,
        tick_ms: TICK,
    }
}

/// Records → the production window branch (`pipeline::build_windows`);
/// its deltas → `durable_sink`, its updates → `publish`, as
/// `pipeline::build` wires them; the trace is kept for [`maintain`].
struct Windows;

impl Wiring for Windows {
    type Extra = WindowTrace;

    fn wire<'s>(
        self,
        records: Stream<'s, u64, Vec<Record>>,
        sink: mpsc::UnboundedSender<SinkBatch>,
        ack: Arc<WorkerAck>,
    ) -> Wired<'s, WindowTrace> {
        let spec = spec();
        let none = restored_windows(records.scope(), Vec::new());
        let windows = build_windows(records.clone(), none, Arc::clone(&spec));
        let durable = durable_sink(records, windows.deltas, sink, ack);
        let updates = windows.updates;
        let trace = windows.trace;
        Wired {
            durable,
            updates,
            horizon: count_horizon(),
            spec,
            extra: trace,
        }
    }
}

const LIMITS: Limits = Limits {
    max_steps: MAX_STEPS,
    max_wait: MAX_WAIT,
    settle_steps: SETTLE_STEPS,
};

fn new_harness(worker: &mut Worker, start: u64) -> Harness<WindowTrace> {
    Harness::new(worker, start, LIMITS, Windows)
}

/// What `WorkerDataflow::maintain` does: lets the trace compact up to the
/// durability frontier. Returns the number of updates it holds.
fn maintain(h: &mut Harness<WindowTrace>) -> usize {
    use differential_dataflow::trace::implementations::spine_fueled::SpineBatch;
    let mut at = Antichain::new();
    h.durable.with_frontier(|f| at.extend(f.iter().copied()));
    h.extra.set_logical_compaction(at.borrow());
    h.extra.set_physical_compaction(at.borrow());
    let mut records = 0usize;
    h.extra
        .map_spans(|span| records += span.inner.as_ref().map_or(0, |b| b.len()));
    records
}

// ---------------------------------------------------------------------------
// Generated events and what the oracle knows about them.

const TYPES: [&str; 4] = [
    "order.filled",
    "order.placed",
    "position.closed",
    "page.view",
];
const SYMBOLS: [&str; 3] = ["BTCUSDT", "ETHUSDT", "SOLUSDT"];
const SIDES: [&str; 2] = ["BUY", "SELL"];

/// How a numeric property is written into an event.
#[derive(Clone, Copy, Debug)]
enum Num {
    Absent,
    /// A JSON number.
    Number(f64),
    /// A JSON string holding the number, padded with spaces.
    Text(f64),
    /// Something that is not a finite number.
    Junk(u8),
}

impl Num {
    fn json(self) -> Option<String> {
        match self {
            Num::Absent => None,
            Num::Number(v) => Some(format!("{v}")),
            Num::Text(v) => Some(format!("\" {v} \"")),
            Num::Junk(k) => {
                Some(["\"n/a\"", "null", "true", "\"NaN\"", "\"inf\"", "{}"][k as usize % 6].into())
            }
        }
    }

    /// The value the event carries, as the oracle sees it.
    fn value(self) -> Option<f64> {
        match self {
            Num::Number(v) | Num::Text(v) => Some(v),
            Num::Absent | Num::Junk(_) => None,
        }
    }
}

/// How a dimension is written into an event.
#[derive(Clone, Copy, Debug)]
enum Label {
    Absent,
    Text(&'static str),
    Number(i64),
}

impl Label {
    fn json(self) -> Option<String> {
        match self {
            Label::Absent => None,
            Label::Text(s) => Some(format!("\"{s}\"")),
            Label::Number(n) => Some(n.to_string()),
        }
    }

    /// The dimension value, as the oracle sees it: empty text is no value.
    fn value(self) -> Option<String> {
        match self {
            Label::Text(s) if !s.is_empty() => Some(s.to_string()),
            Label::Number(n) => Some(n.to_string()),
            Label::Text(_) | Label::Absent => None,
        }
    }
}

#[derive(Clone, Debug)]
struct Gen {
    ty: usize,
    /// Event second relative to the second of the tick it is read at.
    delta_s: i64,
    micros: i64,
    price: Num,
    quantity: Num,
    pnl: Num,
    commission: Num,
    symbol: Label,
    side: Label,
    strategy: Label,
}

impl Gen {
    fn properties(&self) -> String {
        let mut fields = vec![r#""venue":"binance""#.to_string()];
        for (name, num) in [
            ("price", self.price),
            ("quantity", self.quantity),
            ("pnl", self.pnl),
            ("commission", self.commission),
        ] {
            if let Some(json) = num.json() {
                fields.push(format!("\"{name}\":{json}"));
            }
        }
        for (name, label) in [
            ("symbol", self.symbol),
            ("side", self.side),
            ("strategy_id", self.strategy),
        ] {
            if let Some(json) = label.json() {
                fields.push(format!("\"{name}\":{json}"));
            }
        }
        format!("{{{}}}", fields.join(","))
    }

    /// The event read at `tick` (its second is `delta_s` from the tick's),
    /// and what the oracle records about it.
    fn feed(&self, id: u64, tick: u64) -> (Event, Fed) {
        let second = (tick / 1000) as i64 + self.delta_s;
        let ty = TYPES[self.ty % TYPES.len()];
        let event = Event {
            id: Uuid::from_u128(u128::from(id)),
            event_type: ty.to_string(),
            user_id: None,
            session_id: None,
            properties: self.properties(),
            timestamp_us: second * 1_000_000 + self.micros,
            created_at_us: (tick * 1000) as i64,
            source: EventSource::Kafka {
                topic: Arc::from(TOPIC),
                partition: 0,
                offset: id as i64,
            },
            parsed: Default::default(),
        };
        let mut metrics = vec![(format!("events.count.{ty}"), None)];
        for (name, num) in [
            ("price", self.price),
            ("quantity", self.quantity),
            ("pnl", self.pnl),
        ] {
            if let Some(v) = num.value() {
                metrics.push((format!("{ty}.{name}"), Some(v)));
            }
        }
        if let (Some(p), Some(q)) = (self.price.value(), self.quantity.value()) {
            metrics.push((format!("{ty}.notional"), Some(p * q)));
        }
        let fed = Fed {
            tick,
            second,
            metrics,
            dims: Dims {
                symbol: self.symbol.value().map(Into::into),
                side: self.side.value().map(Into::into),
                strategy_id: self.strategy.value().map(Into::into),
            },
        };
        (event, fed)
    }
}

/// An event as the oracle knows it.
#[derive(Clone, Debug)]
struct Fed {
    /// The tick it was read at.
    tick: u64,
    second: i64,
    /// `(metric, value)`, value `None` for the count metric.
    metrics: Vec<(String, Option<f64>)>,
    dims: Dims,
}

/// The tick at which a window leaves memory: the end of the window plus the
/// interval's horizon, rounded up to a tick.
fn expire_at(interval: Interval, start: i64) -> u64 {
    let horizon = INTERVALS
        .iter()
        .find(|(i, _)| *i == interval)
        .map(|(_, h)| *h)
        .expect("a configured interval");
    let end_ms = (start + interval.seconds()).max(0) as u64 * 1000;
    (end_ms + horizon).div_ceil(TICK) * TICK
}

/// Whether the contribution of an event read at `tick` to a window that
/// expires at `expire` is in a snapshot as of `as_of`.
fn live(tick: u64, expire: u64, as_of: u64) -> bool {
    tick < as_of && expire > tick && expire >= as_of
}

/// A window's aggregate, accumulated from the raw values.
#[derive(Clone, Debug, Default)]
struct Acc {
    count: i64,
    values: Vec<f64>,
}

impl Acc {
    fn add(&mut self, value: Option<f64>) {
        self.count += 1;
        if let Some(v) = value {
            self.values.push(v);
        }
    }

    fn agg(&self) -> Agg {
        let nanos: Vec<i128> = self.values.iter().map(|v| to_nano(*v)).collect();
        let mut sketch = Sketch::new();
        for v in &self.values {
            assert!(sketch.insert(*v), "generated values are finite");
        }
        Agg {
            count: self.count,
            sum: nanos.iter().sum(),
            min: nanos.iter().copied().min().unwrap_or(i128::MAX),
            max: nanos.iter().copied().max().unwrap_or(i128::MIN),
            sketch,
        }
    }
}

/// The dimension sets kept (the default configuration), written out here.
const SETS: [&[&str]; 4] = [
    &["symbol"],
    &["side"],
    &["strategy_id"],
    &["symbol", "side"],
];

/// Every window an event contributes to, with the value it adds: for each
/// metric and interval, the total row and the row of each kept dimension
/// set whose dimensions the event all carries.
fn contributions(fed: &Fed) -> Vec<(WindowKey, Option<f64>)> {
    let mut out = Vec::new();
    for (metric, value) in &fed.metrics {
        for (interval, _) in INTERVALS {
            let len = interval.seconds();
            let start = fed.second.div_euclid(len) * len;
            let mut rows = vec![Dims::default()];
            for set in SETS {
                let has = |d: &str| set.contains(&d);
                let pick = |d: &str, v: &Option<Arc<str>>| if has(d) { v.clone() } else { None };
                let complete = (!has("symbol") || fed.dims.symbol.is_some())
                    && (!has("side") || fed.dims.side.is_some())
                    && (!has("strategy_id") || fed.dims.strategy_id.is_some());
                if complete {
                    rows.push(Dims {
                        symbol: pick("symbol", &fed.dims.symbol),
                        side: pick("side", &fed.dims.side),
                        strategy_id: pick("strategy_id", &fed.dims.strategy_id),
                    });
                }
            }
            for dims in rows {
                let key = WindowKey {
                    metric: metric.as_str().into(),
                    interval,
                    dims,
                    start,
                };
                out.push((key, *value));
            }
        }
    }
    out
}

/// From scratch: the aggregate of every window over the contributions that
/// `keep` admits.
fn oracle(fed: &[Fed], keep: impl Fn(&Fed, &WindowKey) -> bool) -> BTreeMap<WindowKey, Agg> {
    let mut accs: BTreeMap<WindowKey, Acc> = BTreeMap::new();
    for f in fed {
        for (key, value) in contributions(f) {
            if keep(f, &key) {
                accs.entry(key).or_default().add(value);
            }
        }
    }
    accs.into_iter().map(|(k, a)| (k, a.agg())).collect()
}

/// The finest interval's windows summed into every configured interval,
/// as the sink's readers and compactor form them from the stored deltas;
/// asserts that only the finest interval's windows reached the sink.
fn derive(finest: &BTreeMap<WindowKey, Agg>) -> BTreeMap<WindowKey, Agg> {
    let mut out: BTreeMap<WindowKey, Agg> = BTreeMap::new();
    for (key, agg) in finest {
        assert_eq!(
            key.interval, INTERVALS[0].0,
            "only the finest interval's windows reach the sink: {key:?}"
        );
        for (interval, _) in INTERVALS {
            let coarse = WindowKey {
                interval,
                start: interval.window_of(key.start),
                ..key.clone()
            };
            out.entry(coarse).or_default().plus_equals(agg);
        }
    }
    out
}

/// What a snapshot as of `as_of` must hold.
fn oracle_live(fed: &[Fed], as_of: u64) -> BTreeMap<WindowKey, Agg> {
    oracle(fed, |f, k| {
        live(f.tick, expire_at(k.interval, k.start), as_of)
    })
}

/// Asserts that two maps are equal, naming the first difference.
fn assert_same_map<K: Ord + std::fmt::Debug, V: PartialEq + std::fmt::Debug>(
    expected: &BTreeMap<K, V>,
    actual: &BTreeMap<K, V>,
    what: &str,
) {
    for (k, v) in expected {
        match actual.get(k) {
            Some(a) => assert_eq!(a, v, "{what}: aggregate of {k:?}"),
            None => panic!("{what}: {k:?} is missing (expected {v:?})"),
        }
    }
    if let Some((k, v)) = actual.iter().find(|(k, _)| !expected.contains_key(k)) {
        panic!("{what}: unexpected {k:?} = {v:?}");
    }
}

/// The snapshot's windows equal the oracle's, as a whole.
fn check_windows(snapshot: &LiveSnapshot, fed: &[Fed], step: usize) {
    let as_of = snapshot.as_of_ms;
    let expected = oracle_live(fed, as_of);
    for (key, agg) in &expected {
        assert_eq!(
            snapshot.windows.get(key).as_ref(),
            Some(agg),
            "step {step}, as_of {as_of}: window {key:?} (expires at {})",
            expire_at(key.interval, key.start)
        );
    }
    // With every expected key present and equal, equal sizes mean nothing
    // else is held: no expired window, no window of a late event.
    assert_eq!(
        snapshot.windows.len(),
        expected.len(),
        "step {step}, as_of {as_of}: windows held besides the expected ones"
    );

    // The coverage promise, independently of the expiry rule: every event
    // read before as_of is in the windows at or after the coverage. (With
    // horizons that are whole seconds, the coverage is exact: a window below
    // it has always expired, which the whole-snapshot comparison above
    // checks too.)
    let read = oracle(fed, |f, _| f.tick < as_of);
    for (interval, horizon) in INTERVALS {
        let from = snapshot
            .window_coverage(interval)
            .expect("every configured interval has a coverage");
        let len = interval.seconds();
        assert_eq!(from.rem_euclid(len), 0, "coverage is a window start");
        assert!(
            expire_at(interval, from) >= as_of,
            "step {step}: the first covered window of {interval:?} has expired"
        );
        assert!(
            from * 1000 <= as_of as i64 - horizon as i64,
            "step {step}: coverage {from} of {interval:?} is needlessly late at {as_of}"
        );
        for (key, agg) in read
            .iter()
            .filter(|(k, _)| k.interval == interval && k.start >= from)
        {
            assert_eq!(
                snapshot.windows.get(key).as_ref(),
                Some(agg),
                "step {step}, as_of {as_of}: covered window {key:?}"
            );
        }
    }
}

/// `LiveWindows::series` with dimension filters equals the oracle restricted
/// to the events with those dimension values, merged over the others.
fn check_series(snapshot: &LiveSnapshot, fed: &[Fed], step: usize) {
    let as_of = snapshot.as_of_ms;
    let mut metrics: BTreeSet<String> = snapshot.windows.names();
    metrics.extend(
        fed.iter()
            .flat_map(|f| f.metrics.iter().map(|(m, _)| m.clone())),
    );
    let mut filters: Vec<Dims> = vec![Dims::default()];
    for s in SYMBOLS {
        filters.push(Dims {
            symbol: Some(s.into()),
            ..Dims::default()
        });
    }
    filters.push(Dims {
        side: Some("BUY".into()),
        ..Dims::default()
    });
    filters.push(Dims {
        symbol: Some("ETHUSDT".into()),
        side: Some("SELL".into()),
        ..Dims::default()
    });
    for filter in &filters {
        for (interval, _) in INTERVALS {
            let coverage = snapshot
                .window_coverage(interval)
                .expect("configured interval");
            // (metric, start) -> values of the matching events.
            let mut accs: BTreeMap<(String, i64), Acc> = BTreeMap::new();
            for f in fed {
                let matches = if filter.is_total() {
                    true
                } else {
                    !f.dims.is_total()
                        && (filter.symbol.is_none() || f.dims.symbol == filter.symbol)
                        && (filter.side.is_none() || f.dims.side == filter.side)
                };
                if !matches {
                    continue;
                }
                let len = interval.seconds();
                let start = f.second.div_euclid(len) * len;
                if !live(f.tick, expire_at(interval, start), as_of) {
                    continue;
                }
                for (metric, value) in &f.metrics {
                    accs.entry((metric.clone(), start)).or_default().add(*value);
                }
            }
            for metric in &metrics {
                for from in [coverage, i64::MIN / 2] {
                    let got = snapshot
                        .windows
                        .series(metric, interval, filter, from, FAR_FUTURE);
                    let expected: BTreeMap<i64, Agg> = accs
                        .range((metric.clone(), from)..(metric.clone(), FAR_FUTURE))
                        .map(|((_, start), acc)| (*start, acc.agg()))
                        .collect();
                    assert_same_map(
                        &expected,
                        &got,
                        &format!(
                            "step {step}, as_of {as_of}: series {metric} {interval:?} {filter:?} from {from}"
                        ),
                    );
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Random scenarios.

/// One tick of random input.
#[derive(Clone, Debug)]
struct Step {
    events: Vec<Gen>,
    /// Where the next tick is.
    gap: Gap,
    /// Leave this tick's batch unacknowledged for now.
    defer_ack: bool,
}

/// How far the input moves after a step.
#[derive(Clone, Copy, Debug)]
enum Gap {
    /// This many ticks.
    Ticks(u64),
    /// To the `n`-th next whole minute, plus some ticks: every window here
    /// expires at a whole minute, so this hits `expire_at == as_of` and the
    /// tick after it.
    Minute(u64, u64),
}

impl Gap {
    fn next(self, t: u64) -> u64 {
        match self {
            Gap::Ticks(n) => t + n * TICK,
            Gap::Minute(n, ticks) => (t / 60_000 + n) * 60_000 + ticks * TICK,
        }
    }
}

/// A skewed positive value on a 1/64 grid: log-uniform from 1/64 to 2^25,
/// so that decimal text parses back to exactly the same `f64`.
fn magnitude() -> impl Strategy<Value = f64> + Clone {
    prop_oneof![
        6 => (6u32..14, 1u64..64).prop_map(|(e, m)| (m << e) as f64 / 64.0),
        2 => (14u32..25, 1u64..64).prop_map(|(e, m)| (m << e) as f64 / 64.0),
        1 => (1u64..64).prop_map(|m| m as f64 / 64.0),
        1 => Just(0.0),
    ]
}

fn signed() -> impl Strategy<Value = f64> + Clone {
    (magnitude(), proptest::bool::weighted(0.45)).prop_map(|(v, neg)| if neg { -v } else { v })
}

fn num(value: impl Strategy<Value = f64> + Clone) -> impl Strategy<Value = Num> {
    prop_oneof![
        3 => Just(Num::Absent),
        5 => value.clone().prop_map(Num::Number),
        1 => value.prop_map(Num::Text),
        1 => (0u8..6).prop_map(Num::Junk),
    ]
}

fn label(values: &'static [&'static str]) -> impl Strategy<Value = Label> {
    prop_oneof![
        3 => Just(Label::Absent),
        5 => proptest::sample::select(values).prop_map(Label::Text),
        1 => Just(Label::Text("")),
    ]
}

fn gen_strategy() -> impl Strategy<Value = Gen> {
    // Event seconds relative to the reading tick's: mostly recent and out
    // of order, some late for the 1m/5m windows (beyond 10 or 20 minutes),
    // some late for every interval (beyond 2 h), some ahead of processing.
    let delta = prop_oneof![
        6 => -150i64..=5,
        2 => -2_700i64..-150,
        1 => -16_000i64..-2_700,
        1 => 5i64..5_000,
    ];
    let strategy = prop_oneof![
        6 => Just(Label::Absent),
        1 => Just(Label::Text("s1")),
        1 => Just(Label::Number(7)),
    ];
    (
        (0..TYPES.len(), delta, 0i64..1_000_000),
        (
            num(magnitude()),
            num((1u64..6_400).prop_map(|m| m as f64 / 64.0)),
            num(signed()),
            num(magnitude()),
        ),
        (label(&SYMBOLS), label(&SIDES), strategy),
    )
        .prop_map(
            |(
                (ty, delta_s, micros),
                (price, quantity, pnl, commission),
                (symbol, side, strategy),
            )| {
                Gen {
                    ty,
                    delta_s,
                    micros,
                    price,
                    quantity,
                    pnl,
                    commission,
                    symbol,
                    side,
                    strategy,
                }
            },
        )
}

fn step_strategy() -> impl Strategy<Value = Step> {
    // Mostly a few ticks, sometimes 10 s to 10 min, sometimes up to 1 h, so
    // that windows of every interval expire during a run.
    let gap = prop_oneof![
        6 => (1u64..=3).prop_map(Gap::Ticks),
        2 => (100u64..=6_000).prop_map(Gap::Ticks),
        1 => (6_000u64..=36_000).prop_map(Gap::Ticks),
        2 => (1u64..=2, 0u64..=1).prop_map(|(minutes, ticks)| Gap::Minute(minutes, ticks)),
    ];
    let events = prop_oneof![
        8 => proptest::collection::vec(gen_strategy(), 0..6),
        1 => proptest::collection::vec(gen_strategy(), 20..60),
    ];
    (events, gap, proptest::bool::weighted(0.3)).prop_map(|(events, gap, defer_ack)| Step {
        events,
        gap,
        defer_ack,
    })
}

/// Which checks a scenario runs at every step.
#[derive(Clone, Copy)]
struct Checks {
    windows: bool,
    rollups: bool,
    series: bool,
}

/// Feeds `steps`, acknowledging batches (some late, cumulatively), and runs
/// `checks` against the snapshot of every step.
fn run_scenario(steps: Vec<Step>, checks: Checks) {
    harness::execute_directly(move |worker| {
        let mut h = new_harness(worker, T0);
        let mut fed: Vec<Fed> = Vec::new();
        let mut stored: HashMap<WindowKey, Agg> = HashMap::new();
        let mut unacked: Vec<SinkBatch> = Vec::new();
        let mut id = 0u64;
        let last = steps.len().saturating_sub(1);
        for (i, step) in steps.iter().enumerate() {
            let t = h.time();
            for g in &step.events {
                id += 1;
                let (event, f) = g.feed(id, t);
                h.send(Record::Event(event.into()));
                fed.push(f);
            }
            let next = step.gap.next(t);
            h.advance(next);
            if !step.events.is_empty() {
                let batch = h.recv_batch(worker, t);
                assert_eq!(batch.events.len(), step.events.len());
                if checks.rollups {
                    // Each batch's rollups are exactly its own events'
                    // contributions at the finest interval, late ones
                    // included, and sum to them at every interval.
                    let own: Vec<Fed> = fed.iter().filter(|f| f.tick == t).cloned().collect();
                    let rollups: BTreeMap<WindowKey, Agg> =
                        batch.rollup_keys().into_iter().collect();
                    assert_eq!(rollups.len(), batch.rollups.len(), "one rollup per window");
                    assert_same_map(
                        &oracle(&own, |_, k| k.interval == INTERVALS[0].0),
                        &rollups,
                        &format!("step {i}: rollups of the batch of tick {t}"),
                    );
                    assert_same_map(
                        &oracle(&own, |_, _| true),
                        &derive(&rollups),
                        &format!("step {i}: every interval from the batch of tick {t}"),
                    );
                }
                for (key, agg) in batch.rollup_keys() {
                    stored.entry(key).or_default().plus_equals(&agg);
                }
                unacked.push(batch);
            }
            if !step.defer_ack || i == last {
                if let Some(tick) = unacked.iter().map(|b| b.tick).max() {
                    let rows: usize = unacked.iter().map(SinkBatch::rows).sum();
                    h.ack.acknowledge(tick, rows);
                    unacked.clear();
                }
            }
            let expected_as_of = unacked
                .iter()
                .map(|b| b.tick)
                .min()
                .unwrap_or(next)
                .min(next);
            let snapshot = h.await_as_of(worker, expected_as_of);
            maintain(&mut h);
            if checks.windows {
                check_windows(&snapshot, &fed, i);
            }
            if checks.rollups {
                // What PostgreSQL holds once every batch so far commits:
                // the whole truth over every event fed, late ones included.
                let stored: BTreeMap<WindowKey, Agg> =
                    stored.iter().map(|(k, a)| (k.clone(), a.clone())).collect();
                assert_same_map(
                    &oracle(&fed, |_, _| true),
                    &derive(&stored),
                    &format!("step {i}: merged rollups"),
                );
            }
            if checks.series {
                check_series(&snapshot, &fed, i);
            }
        }
        h.finish(worker);
    });
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 32,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// 1. The published windows equal a from-scratch oracle at every tick.
    #[test]
    fn published_windows_match_a_from_scratch_oracle(
        steps in proptest::collection::vec(step_strategy(), 1..40),
    ) {
        run_scenario(steps, Checks { windows: true, rollups: false, series: false });
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 16,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// 2. The merged rollups handed to the sink equal the whole truth.
    #[test]
    fn merged_rollups_equal_the_whole_truth(
        steps in proptest::collection::vec(step_strategy(), 1..40),
    ) {
        run_scenario(steps, Checks { windows: false, rollups: true, series: false });
    }

    /// 3. Series stitched over dimension rows equal the filtered oracle.
    #[test]
    fn filtered_series_match_the_oracle(
        steps in proptest::collection::vec(step_strategy(), 1..30),
    ) {
        run_scenario(steps, Checks { windows: false, rollups: false, series: true });
    }
}

/// The case the oracle test once found (shrunk): a window retires at the
/// very tick the input has just reached while durability lags. Its
/// retraction must not join the stash's group of earlier ticks, or that
/// group (and the snapshot) waits for the next tick once the sink catches
/// up, instead of reaching the new bound.
#[test]
fn a_retirement_at_the_frontier_does_not_hold_back_the_snapshot() {
    let plain = Gen {
        ty: 0,
        delta_s: 0,
        micros: 0,
        price: Num::Absent,
        quantity: Num::Absent,
        pnl: Num::Absent,
        commission: Num::Absent,
        symbol: Label::Absent,
        side: Label::Absent,
        strategy: Label::Absent,
    };
    let steps = vec![
        Step {
            events: vec![],
            gap: Gap::Ticks(3040),
            defer_ack: false,
        },
        Step {
            events: vec![plain.clone()],
            gap: Gap::Ticks(5760),
            defer_ack: true,
        },
        Step {
            events: vec![plain],
            gap: Gap::Minute(1, 0),
            defer_ack: false,
        },
    ];
    run_scenario(
        steps,
        Checks {
            windows: true,
            rollups: true,
            series: true,
        },
    );
}

/// A deterministic companion to the oracle test: an event already beyond
/// every horizon (3 h old), and one beyond the 1m and 5m horizons only
/// (55 min old, in the previous hour: T0 is 3,200 s into its hour), reach the
/// rollups in full and memory only where their window is still live.
#[test]
fn late_events_reach_the_rollups_and_only_live_windows() {
    harness::execute_directly(|worker| {
        let mut h = new_harness(worker, T0);
        let t = h.time();
        let gen = |delta_s| Gen {
            ty: 0,
            delta_s,
            micros: 0,
            price: Num::Number(100.5),
            quantity: Num::Absent,
            pnl: Num::Absent,
            commission: Num::Absent,
            symbol: Label::Text("BTCUSDT"),
            side: Label::Absent,
            strategy: Label::Absent,
        };
        let mut fed = Vec::new();
        for (id, delta) in [(1, -3 * 3_600), (2, -3_300), (3, -5)] {
            let (event, f) = gen(delta).feed(id, t);
            h.send(Record::Event(event.into()));
            fed.push(f);
        }
        h.advance(t + TICK);
        let batch = h.recv_batch(worker, t);
        let rollups: BTreeMap<WindowKey, Agg> = batch.rollup_keys().into_iter().collect();
        // 2 metrics × 2 rows per event at the finest interval, no window
        // shared; summed, 2 metrics × 3 intervals × 2 rows per event.
        assert_eq!(rollups.len(), 12);
        assert_same_map(
            &oracle(&fed, |_, k| k.interval == INTERVALS[0].0),
            &rollups,
            "rollups",
        );
        let every = derive(&rollups);
        assert_eq!(every.len(), 36);
        assert_same_map(
            &oracle(&fed, |_, _| true),
            &every,
            "rollups, every interval",
        );
        h.ack.acknowledge(t, batch.rows());
        let snapshot = h.await_as_of(worker, t + TICK);
        // The 3 h old event nowhere; the 55 min old one in its 1h windows
        // only; the recent one everywhere.
        let held = |f: &Fed| {
            contributions(f)
                .into_iter()
                .filter(|(k, _)| snapshot.windows.get(k).is_some())
                .count()
        };
        assert_eq!(held(&fed[0]), 0, "a window beyond its horizon is in memory");
        assert_eq!(held(&fed[1]), 4, "only the 1h windows of the late event");
        assert_eq!(held(&fed[2]), 12);
        assert_eq!(snapshot.windows.len(), 16);
        check_windows(&snapshot, &fed, 0);
        h.finish(worker);
    });
}

// ---------------------------------------------------------------------------
// 4. Bounded memory.

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// 12 hours of event time at one event per 3 seconds, read 30 seconds at a
/// time with processing time moving along with event time: the windows held
/// and the arrangement stay below a bound set by the horizons.
#[test]
fn memory_stays_bounded_by_the_horizons() {
    const STEP_S: u64 = 30;
    const EVENTS_PER_STEP: u64 = 10;
    const HOURS: u64 = 12;
    // Metrics: order.filled count, price, quantity, notional; position.closed
    // count, pnl. Rows (the kept dimension sets): the total, 3 symbols,
    // 2 sides and 3 symbols × 2 sides (no strategy_id here).
    const METRICS: usize = 6;
    const ROWS: usize = 1 + 3 + 2 + 3 * 2;
    // Windows of one series still held: those ending within the horizon
    // before as_of, up to the one holding the current second.
    let per_series: usize = INTERVALS
        .iter()
        .map(|(i, h)| (*h / 1000 / i.seconds() as u64) as usize + 2)
        .sum();
    let window_bound = METRICS * ROWS * per_series;
    // The arrangement holds, per window, its consolidated contributions and,
    // until a merge cancels them, the retraction; plus batches not merged yet.
    let trace_bound = 3 * window_bound;

    harness::execute_directly(move |worker| {
        let mut h = new_harness(worker, T0);
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut id = 0u64;
        let steps = HOURS * 3_600 / STEP_S;
        let mut max_windows = 0usize;
        let mut max_trace = 0usize;
        let mut late_max_windows = 0usize;
        for step in 0..steps {
            let t = h.time();
            let now = (t / 1000) as i64;
            for _ in 0..EVENTS_PER_STEP {
                id += 1;
                // Out of order within the last 30 s, one in 20 up to 3 h late.
                let delta_s = if rng.below(20) == 0 {
                    -(rng.below(3 * 3_600) as i64)
                } else {
                    -(rng.below(STEP_S) as i64)
                };
                let symbol = Label::Text(SYMBOLS[rng.below(3) as usize]);
                let side = Label::Text(SIDES[rng.below(2) as usize]);
                let filled = rng.below(2) == 0;
                let g = Gen {
                    ty: if filled { 0 } else { 2 },
                    delta_s,
                    micros: rng.below(1_000_000) as i64,
                    price: if filled {
                        Num::Number((1 + rng.below(1 << 20)) as f64 / 64.0)
                    } else {
                        Num::Absent
                    },
                    quantity: if filled {
                        Num::Number((1 + rng.below(640)) as f64 / 64.0)
                    } else {
                        Num::Absent
                    },
                    pnl: if filled {
                        Num::Absent
                    } else {
                        Num::Number(rng.below(1 << 16) as f64 / 64.0 - 512.0)
                    },
                    commission: Num::Absent,
                    symbol,
                    side,
                    strategy: Label::Absent,
                };
                let (event, _) = g.feed(id, t);
                assert!(event.second() <= now);
                h.send(Record::Event(event.into()));
            }
            let next = t + STEP_S * 1000;
            h.advance(next);
            let batch = h.recv_batch(worker, t);
            h.ack.acknowledge(t, batch.rows());
            let snapshot = h.await_as_of(worker, next);
            let trace = maintain(&mut h);
            let windows = snapshot.windows.len();
            max_windows = max_windows.max(windows);
            max_trace = max_trace.max(trace);
            if step >= steps / 2 {
                late_max_windows = late_max_windows.max(windows);
            }
            assert!(
                windows <= window_bound,
                "step {step}: {windows} windows held, bound {window_bound}"
            );
            assert!(
                trace <= trace_bound,
                "step {step}: {trace} updates in the arrangement, bound {trace_bound}"
            );
        }
        // Not vacuous: in steady state most of the bound is in use (an hour
        // of 1m windows alone would be 5 times the 1m share of it).
        assert!(
            late_max_windows * 2 > window_bound,
            "only {late_max_windows} windows held at most, bound {window_bound}"
        );
        eprintln!(
            "bounded memory: at most {max_windows} windows (bound {window_bound}), \
             {max_trace} arrangement updates (bound {trace_bound}), {id} events"
        );
        h.finish(worker);
    });
}
