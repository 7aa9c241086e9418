//! Trading analytics: what each event contributes to the four trading
//! tables, as per-key states that merge in any order (semigroups), so that
//! the sink can fold a batch's contributions into the stored rows inside
//! the transaction that stores the batch's raw rows and Kafka offsets
//! (exactly once, like the rollups), whatever order events arrive in.
//!
//! - [`OrderState`] per `order_id`: the order's lifecycle, placed →
//!   filled / canceled / rejected, joined by `order_id`;
//! - [`StrategyPerf`] per `(strategy_id, interval, bucket)`: trades are
//!   `order.filled` events of the strategy, won or lost by their `pnl`;
//! - [`Ohlcv`] per `(symbol, interval, bucket)`: prices of
//!   `market.data.update` and `order.filled`, volume and fills;
//! - [`SessionState`] per `session_id`: first and last event, events, page
//!   views, distinct event types.
//!
//! Every sum is kept in nano-units (`value × 10⁹` as `i128`), so merging is
//! exact and independent of order. Ties in event time are broken by value,
//! so that the result never depends on arrival order either.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet};

use differential_dataflow::difference::{IsZero, Semigroup};
use serde::{Deserialize, Serialize};

use crate::event::Event;
use crate::props::{Id, Num, PropsRef};
use crate::windows::{to_nano, Interval, INTERVALS};

/// Order lifecycle kinds, ordered so that at equal event times the later
/// stage wins.
pub const PLACED: u8 = 0;
pub const FILLED: u8 = 1;
pub const CANCELED: u8 = 2;
pub const REJECTED: u8 = 3;

/// Names of the order statuses, by kind.
pub fn status_name(kind: u8) -> &'static str {
    match kind {
        PLACED => "placed",
        FILLED => "filled",
        CANCELED => "canceled",
        _ => "rejected",
    }
}

/// Keeps the smaller of two optional values (`None` is the identity).
fn keep_min<T: Ord + Clone>(slot: &mut Option<T>, other: &Option<T>) {
    if let Some(o) = other {
        if slot.as_ref().is_none_or(|s| o < s) {
            *slot = Some(o.clone());
        }
    }
}

/// Keeps the larger of two optional values (`None` is the identity).
fn keep_max<T: Ord + Clone>(slot: &mut Option<T>, other: &Option<T>) {
    if let Some(o) = other {
        if slot.as_ref().is_none_or(|s| o > s) {
            *slot = Some(o.clone());
        }
    }
}

/// What the first event of an order says about it.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct OrderAttrs {
    pub symbol: Option<String>,
    pub side: Option<String>,
    pub strategy_id: Option<String>,
    pub user_id: Option<String>,
}

/// One order, merged from its events.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct OrderState {
    /// `(event time µs, attributes)` of the earliest event of the order.
    pub attrs: Option<(i64, OrderAttrs)>,
    /// `(event time µs, quantity nano, price nano)` of the earliest `order.placed`.
    pub placed: Option<(i64, Option<i128>, Option<i128>)>,
    /// `(event time µs, kind)` of the latest lifecycle event.
    pub last: Option<(i64, u8)>,
    /// Fills, Σ filled quantity and Σ price × quantity (nano).
    pub fills: i64,
    pub filled_qty: i128,
    pub notional: i128,
    /// Σ `commission` and Σ `pnl` over the order's events (nano).
    pub commission: i128,
    pub pnl: i128,
    /// `(event time µs, is_maker)` of the latest fill that says.
    pub maker: Option<(i64, bool)>,
}

impl OrderState {
    /// `placed`, `filled`, `partially_filled` (the latest event is a fill
    /// of less than the placed quantity), `canceled` or `rejected`.
    pub fn status(&self) -> &'static str {
        let kind = self.last.map_or(PLACED, |(_, k)| k);
        if kind == FILLED {
            if let Some((_, Some(q), _)) = self.placed {
                if self.filled_qty < q {
                    return "partially_filled";
                }
            }
        }
        status_name(kind)
    }

    /// Milliseconds of event time from `order.placed` to the latest
    /// filled / canceled / rejected event, when both are known.
    pub fn latency_ms(&self) -> Option<f64> {
        let (placed, _, _) = self.placed?;
        let (at, kind) = self.last?;
        (kind != PLACED && at >= placed).then(|| (at - placed) as f64 / 1_000.0)
    }

    /// When the order ended: the latest event, if it is not a placement.
    pub fn closed_at(&self) -> Option<i64> {
        self.last.filter(|(_, k)| *k != PLACED).map(|(t, _)| t)
    }
}

impl IsZero for OrderState {
    fn is_zero(&self) -> bool {
        *self == OrderState::default()
    }
}

impl Semigroup for OrderState {
    fn plus_equals(&mut self, rhs: &Self) {
        keep_min(&mut self.attrs, &rhs.attrs);
        keep_min(&mut self.placed, &rhs.placed);
        keep_max(&mut self.last, &rhs.last);
        keep_max(&mut self.maker, &rhs.maker);
        self.fills += rhs.fills;
        self.filled_qty += rhs.filled_qty;
        self.notional += rhs.notional;
        self.commission += rhs.commission;
        self.pnl += rhs.pnl;
    }
}

/// A strategy's trading in one bucket.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct StrategyPerf {
    pub trades: i64,
    pub wins: i64,
    pub losses: i64,
    pub pnl: i128,
    pub gross_profit: i128,
    /// Σ |pnl| of losing trades.
    pub gross_loss: i128,
    pub largest_win: Option<i128>,
    /// The most negative pnl.
    pub largest_loss: Option<i128>,
    /// `latency_ms` of the strategy's order.* events: count and Σ (nano).
    pub latency_count: i64,
    pub latency_sum: i128,
}

impl StrategyPerf {
    pub fn win_rate(&self) -> f64 {
        if self.trades > 0 {
            self.wins as f64 / self.trades as f64
        } else {
            0.0
        }
    }

    /// Gross profit / gross loss; `None` without losses.
    pub fn profit_factor(&self) -> Option<f64> {
        (self.gross_loss > 0).then(|| self.gross_profit as f64 / self.gross_loss as f64)
    }

    pub fn avg_latency_ms(&self) -> Option<f64> {
        (self.latency_count > 0).then(|| self.latency_sum as f64 / 1e9 / self.latency_count as f64)
    }
}

impl IsZero for StrategyPerf {
    fn is_zero(&self) -> bool {
        *self == StrategyPerf::default()
    }
}

impl Semigroup for StrategyPerf {
    fn plus_equals(&mut self, rhs: &Self) {
        self.trades += rhs.trades;
        self.wins += rhs.wins;
        self.losses += rhs.losses;
        self.pnl += rhs.pnl;
        self.gross_profit += rhs.gross_profit;
        self.gross_loss += rhs.gross_loss;
        keep_max(&mut self.largest_win, &rhs.largest_win);
        keep_min(&mut self.largest_loss, &rhs.largest_loss);
        self.latency_count += rhs.latency_count;
        self.latency_sum += rhs.latency_sum;
    }
}

/// A symbol's candle in one bucket. Open and close are the prices of the
/// earliest and latest price points by event time (at equal times, the
/// lower price opens and the higher closes).
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Ohlcv {
    /// `(event time µs, price nano)`.
    pub open: Option<(i64, i128)>,
    pub close: Option<(i64, i128)>,
    pub high: Option<i128>,
    pub low: Option<i128>,
    /// Σ `quantity` of fills + Σ `volume` of market data (nano).
    pub volume: i128,
    /// Fills (`order.filled`) in the bucket.
    pub trades: i64,
    /// Price points (market data updates and fills with a price).
    pub points: i64,
}

impl IsZero for Ohlcv {
    fn is_zero(&self) -> bool {
        *self == Ohlcv::default()
    }
}

impl Semigroup for Ohlcv {
    fn plus_equals(&mut self, rhs: &Self) {
        keep_min(&mut self.open, &rhs.open);
        keep_max(&mut self.close, &rhs.close);
        keep_max(&mut self.high, &rhs.high);
        keep_min(&mut self.low, &rhs.low);
        self.volume += rhs.volume;
        self.trades += rhs.trades;
        self.points += rhs.points;
    }
}

/// One session, by its `session_id`.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SessionState {
    /// The smallest `user_id` seen in the session (normally the only one).
    pub user_id: Option<String>,
    /// Event time (µs) of the first and the last event.
    pub start: Option<i64>,
    pub end: Option<i64>,
    pub events: i64,
    /// `page.view` events.
    pub page_views: i64,
    pub event_types: BTreeSet<String>,
}

impl IsZero for SessionState {
    fn is_zero(&self) -> bool {
        *self == SessionState::default()
    }
}

impl Semigroup for SessionState {
    fn plus_equals(&mut self, rhs: &Self) {
        keep_min(&mut self.user_id, &rhs.user_id);
        keep_min(&mut self.start, &rhs.start);
        keep_max(&mut self.end, &rhs.end);
        self.events += rhs.events;
        self.page_views += rhs.page_views;
        self.event_types.extend(rhs.event_types.iter().cloned());
    }
}

/// What one event contributes, keys borrowed from the event where its
/// text allows. The session's state leaves `event_types` empty:
/// [`TradingBatch::add`] adds the event's type to the session's set itself,
/// so that a session already in the batch costs no new set.
#[derive(Clone, Debug, Default, PartialEq)]
struct Contribution<'a> {
    order: Option<(&'a str, OrderState)>,
    strategy: Option<(&'a str, StrategyPerf)>,
    market: Option<(&'a str, Ohlcv)>,
    session: Option<(&'a str, SessionState)>,
}

fn nano(props: &PropsRef<'_>, num: Num) -> Option<i128> {
    props.num(num).map(to_nano)
}

/// The trading contribution of `event`.
fn contribution(event: &Event) -> Contribution<'_> {
    let mut out = Contribution::default();
    let t = event.timestamp_us;
    if let Some(session) = event.session_id.as_ref().filter(|s| !s.is_empty()) {
        out.session = Some((
            session.as_str(),
            SessionState {
                user_id: event.user_id.clone().filter(|u| !u.is_empty()),
                start: Some(t),
                end: Some(t),
                events: 1,
                page_views: i64::from(event.event_type == "page.view"),
                event_types: BTreeSet::new(),
            },
        ));
    }
    let kind = match event.event_type.as_str() {
        "order.placed" => Some(PLACED),
        "order.filled" => Some(FILLED),
        "order.canceled" => Some(CANCELED),
        "order.rejected" => Some(REJECTED),
        _ => None,
    };
    let market_data = event.event_type == "market.data.update";
    if kind.is_none() && !market_data {
        return out;
    }
    let props = event.props();
    let price = nano(&props, Num::Price);
    let quantity = nano(&props, Num::Quantity);
    let symbol = props.id(Id::Symbol);
    let strategy = props.id(Id::StrategyId);
    if let Some(symbol) = symbol {
        let mut candle = Ohlcv::default();
        if let Some(p) = price.filter(|_| market_data || kind == Some(FILLED)) {
            candle.open = Some((t, p));
            candle.close = Some((t, p));
            candle.high = Some(p);
            candle.low = Some(p);
            candle.points = 1;
        }
        if market_data {
            candle.volume = nano(&props, Num::Volume).unwrap_or(0);
        } else if kind == Some(FILLED) {
            candle.volume = quantity.unwrap_or(0);
            candle.trades = 1;
        }
        if !candle.is_zero() {
            out.market = Some((symbol, candle));
        }
    }
    let Some(kind) = kind else {
        return out;
    };
    let pnl = nano(&props, Num::Pnl);
    if let Some(id) = strategy {
        let mut perf = StrategyPerf::default();
        if kind == FILLED {
            let p = pnl.unwrap_or(0);
            perf.trades = 1;
            perf.wins = i64::from(p > 0);
            perf.losses = i64::from(p < 0);
            perf.pnl = p;
            perf.gross_profit = p.max(0);
            perf.gross_loss = (-p).max(0);
            perf.largest_win = (p > 0).then_some(p);
            perf.largest_loss = (p < 0).then_some(p);
        }
        if let Some(l) = nano(&props, Num::LatencyMs) {
            perf.latency_count = 1;
            perf.latency_sum = l;
        }
        if !perf.is_zero() {
            out.strategy = Some((id, perf));
        }
    }
    if let Some(order_id) = props.id(Id::OrderId) {
        let mut order = OrderState {
            attrs: Some((
                t,
                OrderAttrs {
                    symbol: symbol.map(str::to_string),
                    side: props.id(Id::Side).map(str::to_string),
                    strategy_id: strategy.map(str::to_string),
                    user_id: event.user_id.clone().filter(|u| !u.is_empty()),
                },
            )),
            last: Some((t, kind)),
            commission: nano(&props, Num::Commission).unwrap_or(0),
            pnl: pnl.unwrap_or(0),
            ..OrderState::default()
        };
        if kind == PLACED {
            order.placed = Some((t, quantity, price));
        }
        if kind == FILLED {
            order.fills = 1;
            order.filled_qty = quantity.unwrap_or(0);
            if let (Some(p), Some(q)) = (price, quantity) {
                // nano × nano / 10⁹ stays in nano-units.
                order.notional = p * q / 1_000_000_000;
            }
            if let Some(maker) = props.is_maker() {
                order.maker = Some((t, maker));
            }
        }
        out.order = Some((order_id, order));
    }
    out
}

/// A nano-unit amount as an exact decimal string (`-1.5`, `1005`).
pub fn nano_decimal(n: i128) -> String {
    let sign = if n < 0 { "-" } else { "" };
    let abs = n.unsigned_abs();
    let (whole, frac) = (abs / 1_000_000_000, abs % 1_000_000_000);
    if frac == 0 {
        format!("{sign}{whole}")
    } else {
        let frac = format!("{frac:09}");
        format!("{sign}{whole}.{}", frac.trim_end_matches('0'))
    }
}

/// A state as stored in the `state` column (bincode).
pub fn to_bytes<S: Serialize>(state: &S) -> Vec<u8> {
    let mut out = Vec::new();
    encode_into(state, &mut out);
    out
}

/// Appends [`to_bytes`] of `state` to `out`. An error (none is expected of
/// these plain structs) appends nothing: an empty state, which
/// [`from_bytes`] refuses and its readers log.
fn encode_into<S: Serialize>(state: &S, out: &mut Vec<u8>) {
    let start = out.len();
    if bincode::serde::encode_into_std_write(state, out, bincode::config::standard()).is_err() {
        out.truncate(start);
    }
}

/// Decodes [`to_bytes`]; `None` for anything else.
pub fn from_bytes<S: serde::de::DeserializeOwned>(bytes: &[u8]) -> Option<S> {
    let (state, read) =
        bincode::serde::decode_from_slice::<S, _>(bytes, bincode::config::standard()).ok()?;
    (read == bytes.len()).then_some(state)
}

/// A bucketed key: `(id, interval, bucket start second)`.
pub type BucketKey = (String, Interval, i64);

/// Contributions of a batch of events, merged per key. Strategy and market
/// buckets are kept per one-minute pane, as the windows' fold does, and
/// spread over every interval only when written
/// ([`TradingBatch::strategies`], [`TradingBatch::markets`]): off the
/// worker, once per pane instead of once per event (every interval is a
/// whole number of minutes, and the states merge exactly). The batch is
/// hashed while events are added; the accessors give each table's rows in
/// key order, so that writers lock rows in one order.
#[derive(Clone, Debug, Default)]
pub struct TradingBatch {
    orders: IdMap<OrderState>,
    /// id → (minute start, state); a tick holds one or two minutes of an id.
    strategy_panes: IdMap<Vec<(i64, StrategyPerf)>>,
    market_panes: IdMap<Vec<(i64, Ohlcv)>>,
    sessions: IdMap<SessionState>,
}

/// Equal when every table gets the same rows, whatever order the panes
/// of an id arrived in.
impl PartialEq for TradingBatch {
    fn eq(&self, other: &Self) -> bool {
        self.orders == other.orders
            && self.sessions == other.sessions
            && self.strategies() == other.strategies()
            && self.markets() == other.markets()
    }
}

/// Panes `(id, minute start)` of one or more batches, spread over every
/// interval.
fn spread<'p, S: Semigroup + Clone + 'p>(
    batches: impl IntoIterator<Item = &'p IdMap<Vec<(i64, S)>>>,
) -> BTreeMap<BucketKey, S> {
    let mut out: BTreeMap<BucketKey, S> = BTreeMap::new();
    for (id, minutes) in batches.into_iter().flatten() {
        for (minute, state) in minutes {
            for i in 0..INTERVALS.len() {
                let interval = Interval(i as u8);
                let key = (id.clone(), interval, interval.window_of(*minute));
                match out.entry(key) {
                    Entry::Occupied(mut e) => e.get_mut().plus_equals(state),
                    Entry::Vacant(e) => {
                        e.insert(state.clone());
                    }
                }
            }
        }
    }
    out
}

/// A hash map by id: hashbrown's, for `entry_ref` (one lookup, and the id
/// copied into a `String` only when it is new), with the crate's hasher.
type IdMap<S> = hashbrown::HashMap<String, S, foldhash::fast::RandomState>;

/// Adds `state` to `key`'s, allocating the key only when it is new.
fn merge_into<'m, S: Semigroup>(map: &'m mut IdMap<S>, key: &str, state: S) -> &'m mut S {
    match map.entry_ref(key) {
        hashbrown::hash_map::EntryRef::Occupied(slot) => {
            let slot = slot.into_mut();
            slot.plus_equals(&state);
            slot
        }
        hashbrown::hash_map::EntryRef::Vacant(slot) => slot.insert(state),
    }
}

/// Adds `state` to the pane `(key, minute)`.
fn merge_pane<S: Semigroup>(map: &mut IdMap<Vec<(i64, S)>>, key: &str, minute: i64, state: S) {
    let minutes = map.entry_ref(key).or_default();
    match minutes.iter_mut().find(|(m, _)| *m == minute) {
        Some((_, slot)) => slot.plus_equals(&state),
        None => minutes.push((minute, state)),
    }
}

impl TradingBatch {
    /// Adds the contribution of `event`.
    pub fn add(&mut self, event: &Event) {
        let c = contribution(event);
        let minute = Interval(0).window_of(event.second());
        if let Some((id, s)) = c.order {
            merge_into(&mut self.orders, id, s);
        }
        if let Some((id, s)) = c.session {
            let slot = merge_into(&mut self.sessions, id, s);
            if !slot.event_types.contains(&event.event_type) {
                slot.event_types.insert(event.event_type.clone());
            }
        }
        if let Some((id, s)) = c.strategy {
            merge_pane(&mut self.strategy_panes, id, minute, s);
        }
        if let Some((symbol, s)) = c.market {
            merge_pane(&mut self.market_panes, symbol, minute, s);
        }
    }

    /// Strategy performance per (strategy, interval, bucket start).
    pub fn strategies(&self) -> BTreeMap<BucketKey, StrategyPerf> {
        spread([&self.strategy_panes])
    }

    /// Candles per (symbol, interval, bucket start).
    pub fn markets(&self) -> BTreeMap<BucketKey, Ohlcv> {
        spread([&self.market_panes])
    }

    /// The batch as the sink keeps it until it is committed.
    pub fn seal(self) -> SealedTrading {
        SealedTrading {
            orders: Encoded::of(&self.orders),
            sessions: Encoded::of(&self.sessions),
            strategy_panes: self.strategy_panes,
            market_panes: self.market_panes,
        }
    }

    pub fn of<'a>(events: impl IntoIterator<Item = &'a Event>) -> TradingBatch {
        let mut batch = TradingBatch::default();
        for e in events {
            batch.add(e);
        }
        batch
    }
}

/// One table's states encoded as stored ([`to_bytes`]), in key order, in
/// two buffers: a pending order costs the bytes of its id and its encoding
/// (about 150) instead of a hash-table slot of about 350 bytes, a third to
/// a half of them empty, and five small allocations.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Encoded {
    keys: String,
    states: Vec<u8>,
    /// Per entry, where its key ends in `keys` and its state in `states`.
    ends: Vec<(usize, usize)>,
}

impl Encoded {
    fn of<S: Serialize>(map: &IdMap<S>) -> Encoded {
        let mut entries: Vec<(&String, &S)> = map.iter().collect();
        entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let mut out = Encoded {
            keys: String::with_capacity(entries.iter().map(|(k, _)| k.len()).sum()),
            states: Vec::new(),
            ends: Vec::with_capacity(entries.len()),
        };
        for (key, state) in entries {
            out.keys.push_str(key);
            encode_into(state, &mut out.states);
            out.ends.push((out.keys.len(), out.states.len()));
        }
        out.states.shrink_to_fit();
        out
    }

    /// `(key, encoded state)` in key order.
    fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> + '_ {
        let mut from = (0, 0);
        self.ends.iter().map(move |&(key_end, state_end)| {
            let entry = (&self.keys[from.0..key_end], &self.states[from.1..state_end]);
            from = (key_end, state_end);
            entry
        })
    }

    fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }
}

/// A batch's trading contributions as the sink keeps them until they are
/// committed ([`TradingBatch::seal`]): orders and sessions encoded, the
/// strategy and market panes (a few per id) as they are. The accessors
/// merge several batches per key, in key order, so that writers lock rows
/// in one order.
#[derive(Clone, Debug, Default)]
pub struct SealedTrading {
    orders: Encoded,
    sessions: Encoded,
    strategy_panes: IdMap<Vec<(i64, StrategyPerf)>>,
    market_panes: IdMap<Vec<(i64, Ohlcv)>>,
}

impl SealedTrading {
    /// Order states of `batches`, merged per order id, in id order.
    pub fn orders<'a>(batches: &[&'a SealedTrading]) -> MergedStates<'a, OrderState> {
        MergedStates::of(batches.iter().map(|b| &b.orders))
    }

    /// Session states of `batches`, merged per session id, in id order.
    pub fn sessions<'a>(batches: &[&'a SealedTrading]) -> MergedStates<'a, SessionState> {
        MergedStates::of(batches.iter().map(|b| &b.sessions))
    }

    /// Strategy performance of `batches` per (strategy, interval, bucket start).
    pub fn strategies(batches: &[&SealedTrading]) -> BTreeMap<BucketKey, StrategyPerf> {
        spread(batches.iter().map(|b| &b.strategy_panes))
    }

    /// Candles of `batches` per (symbol, interval, bucket start).
    pub fn markets(batches: &[&SealedTrading]) -> BTreeMap<BucketKey, Ohlcv> {
        spread(batches.iter().map(|b| &b.market_panes))
    }

    pub fn is_empty(&self) -> bool {
        self.orders.is_empty()
            && self.sessions.is_empty()
            && self.strategy_panes.is_empty()
            && self.market_panes.is_empty()
    }
}

/// The encoded states of several batches, decoded and merged per key, in
/// key order: one key's state at a time, so a writer holds decoded only
/// what it is writing.
pub struct MergedStates<'a, S> {
    entries: Vec<(&'a str, &'a [u8])>,
    next: usize,
    state: std::marker::PhantomData<S>,
}

impl<'a, S> MergedStates<'a, S> {
    fn of(tables: impl Iterator<Item = &'a Encoded>) -> Self {
        let mut entries: Vec<(&str, &[u8])> = tables.flat_map(Encoded::iter).collect();
        // Each table is sorted already; a stable sort keeps it cheap.
        entries.sort_by(|a, b| a.0.cmp(b.0));
        MergedStates {
            entries,
            next: 0,
            state: std::marker::PhantomData,
        }
    }
}

impl<S: Semigroup + serde::de::DeserializeOwned> Iterator for MergedStates<'_, S> {
    type Item = (String, S);

    fn next(&mut self) -> Option<(String, S)> {
        loop {
            let (key, _) = *self.entries.get(self.next)?;
            let mut merged: Option<S> = None;
            while let Some(&(_, bytes)) = self.entries.get(self.next).filter(|(k, _)| *k == key) {
                self.next += 1;
                match (from_bytes::<S>(bytes), merged.as_mut()) {
                    (Some(state), Some(acc)) => acc.plus_equals(&state),
                    (Some(state), None) => merged = Some(state),
                    (None, _) => {
                        tracing::error!(key, "undecodable trading contribution skipped")
                    }
                }
            }
            if let Some(state) = merged {
                return Some((key.to_owned(), state));
            }
        }
    }
}

/// The unsealed batch's own view, the oracle the tests compare with.
#[cfg(test)]
impl TradingBatch {
    /// Order states per order id.
    fn orders(&self) -> BTreeMap<String, OrderState> {
        sorted(&self.orders)
    }

    /// Session states per session id.
    fn sessions(&self) -> BTreeMap<String, SessionState> {
        sorted(&self.sessions)
    }
}

/// A map's entries in key order.
#[cfg(test)]
fn sorted<S: Clone>(map: &IdMap<S>) -> BTreeMap<String, S> {
    map.iter().map(|(k, s)| (k.clone(), s.clone())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventSource;
    use proptest::prelude::*;

    fn event(t: &str, props: &str, us: i64, session: Option<&str>) -> Event {
        Event {
            id: uuid::Uuid::nil(),
            event_type: t.into(),
            user_id: Some("u1".into()),
            session_id: session.map(str::to_string),
            properties: props.into(),
            timestamp_us: us,
            created_at_us: 0,
            source: EventSource::Rest,
            parsed: Default::default(),
        }
    }

    #[test]
    fn an_order_lifecycle_joins_by_order_id() {
        let placed = event(
            "order.placed",
            r#"{"order_id":"o1","symbol":"AAPL","side":"BUY","quantity":10,"price":100,"strategy_id":"s"}"#,
            1_000_000,
            None,
        );
        let fill = |q: u32, us: i64| {
            event(
                "order.filled",
                &format!(
                    r#"{{"order_id":"o1","symbol":"AAPL","quantity":{q},"price":"100.5","commission":0.25,"pnl":-1.5,"is_maker":true,"strategy_id":"s"}}"#
                ),
                us,
                None,
            )
        };
        let partial = TradingBatch::of([&fill(4, 1_250_000), &placed]);
        let o = &partial.orders["o1"];
        assert_eq!(o.status(), "partially_filled");
        assert_eq!(o.latency_ms(), Some(250.0));
        let done = TradingBatch::of([&fill(4, 1_250_000), &placed, &fill(6, 1_500_000)]);
        let o = &done.orders["o1"];
        assert_eq!(o.status(), "filled");
        assert_eq!(o.fills, 2);
        assert_eq!(o.filled_qty, to_nano(10.0));
        assert_eq!(o.notional, to_nano(1005.0));
        assert_eq!(o.commission, to_nano(0.5));
        assert_eq!(o.pnl, to_nano(-3.0));
        assert_eq!(o.maker, Some((1_500_000, true)));
        assert_eq!(o.latency_ms(), Some(500.0));
        let attrs = &o.attrs.as_ref().expect("attrs").1;
        assert_eq!(attrs.side.as_deref(), Some("BUY"));
        let perf = &done.strategies()[&("s".to_string(), Interval(0), 0)];
        assert_eq!((perf.trades, perf.wins, perf.losses), (2, 0, 2));
        assert_eq!(perf.largest_loss, Some(to_nano(-1.5)));
        assert_eq!(perf.profit_factor(), Some(0.0), "losses and no profit");
    }

    #[test]
    fn candles_take_open_and_close_by_event_time() {
        let md = |p: f64, v: f64, us: i64| {
            event(
                "market.data.update",
                &format!(r#"{{"symbol":"X","price":{p},"volume":{v}}}"#),
                us,
                None,
            )
        };
        let b = TradingBatch::of([
            &md(3.0, 1.0, 3_000_000),
            &md(1.0, 1.0, 1_000_000),
            &md(5.0, 2.0, 2_000_000),
            &md(0.5, 1.0, 61_000_000),
        ]);
        let c = &b.markets()[&("X".to_string(), Interval(0), 0)];
        assert_eq!(c.open, Some((1_000_000, to_nano(1.0))));
        assert_eq!(c.close, Some((3_000_000, to_nano(3.0))));
        assert_eq!((c.high, c.low), (Some(to_nano(5.0)), Some(to_nano(1.0))));
        assert_eq!(c.volume, to_nano(4.0));
        assert_eq!(c.points, 3);
        let hour = &b.markets()[&("X".to_string(), Interval(4), 0)];
        assert_eq!(hour.points, 4);
        assert_eq!(hour.close, Some((61_000_000, to_nano(0.5))));
    }

    #[test]
    fn decimals_are_exact() {
        assert_eq!(nano_decimal(to_nano(-1.5)), "-1.5");
        assert_eq!(nano_decimal(to_nano(1005.0)), "1005");
        assert_eq!(nano_decimal(1), "0.000000001");
        assert_eq!(nano_decimal(-999_999_999), "-0.999999999");
        let s = TradingBatch::of([&event("page.view", "{}", 5, Some("x"))]);
        let back: Option<SessionState> = from_bytes(&to_bytes(&s.sessions["x"]));
        assert_eq!(back.as_ref(), Some(&s.sessions["x"]));
    }

    #[test]
    fn sessions_count_views_and_types() {
        let b = TradingBatch::of([
            &event("page.view", "{}", 5, Some("x")),
            &event("page.view", "{}", 2, Some("x")),
            &event("button.click", "{}", 9, Some("x")),
            &event("button.click", "{}", 9, None),
        ]);
        let s = &b.sessions["x"];
        assert_eq!(
            (s.start, s.end, s.events, s.page_views),
            (Some(2), Some(9), 3, 2)
        );
        assert_eq!(s.event_types.len(), 2);
        assert_eq!(b.sessions.len(), 1);
    }

    fn arb_event() -> impl Strategy<Value = Event> {
        (
            prop::sample::select(vec![
                "order.placed",
                "order.filled",
                "order.canceled",
                "order.rejected",
                "market.data.update",
                "page.view",
            ]),
            0i64..3,
            -5i64..5,
            1i64..4,
            0i64..200,
            prop::option::of(0i64..2),
            any::<bool>(),
        )
            .prop_map(|(t, order, pnl, q, sec, session, maker)| {
                let props = format!(
                    r#"{{"order_id":"o{order}","symbol":"S{}","strategy_id":"st{}","price":{},"quantity":{q},"pnl":{pnl},"is_maker":{maker},"latency_ms":{q}}}"#,
                    order % 2,
                    order % 2,
                    100 + pnl
                );
                event(
                    t,
                    &props,
                    sec * 1_000_000,
                    session.map(|s| format!("sess{s}")).as_deref(),
                )
            })
    }

    proptest! {
        /// Splitting a batch anywhere, sealing the halves and merging them
        /// gives the batch's own result: the state is a semigroup whose
        /// result does not depend on arrival order, and sealing keeps it.
        #[test]
        fn merging_is_order_independent(events in prop::collection::vec(arb_event(), 1..40), cut in 0usize..40) {
            let cut = cut.min(events.len());
            let whole = TradingBatch::of(&events);
            let mut reversed: Vec<&Event> = events.iter().collect();
            reversed.reverse();
            let (a, b) = events.split_at(cut);
            let (a, b) = (TradingBatch::of(a).seal(), TradingBatch::of(b).seal());
            let merged = SealedTrading::orders(&[&b, &a]).collect::<BTreeMap<_, _>>();
            prop_assert_eq!(merged, whole.orders());
            let merged = SealedTrading::sessions(&[&b, &a]).collect::<BTreeMap<_, _>>();
            prop_assert_eq!(merged, whole.sessions());
            prop_assert_eq!(SealedTrading::strategies(&[&b, &a]), whole.strategies());
            prop_assert_eq!(SealedTrading::markets(&[&b, &a]), whole.markets());
            prop_assert_eq!(&TradingBatch::of(reversed), &whole);
        }
    }
}
