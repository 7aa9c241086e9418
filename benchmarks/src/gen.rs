//! Deterministic trading events for every benchmark: the load generator
//! writes them to Kafka, the dataflow-core benchmark feeds them from
//! memory, so both measure the same data.
//!
//! One [`Generator`] per seed yields the same sequence of events (types,
//! symbols, prices, ids, which ones are late or invalid); only the
//! timestamps follow the clock passed to [`Generator::next`]. The mix:
//!
//! - order lifecycles: `order.placed` opens an order (id, Zipf-skewed
//!   symbol, side, type, price near the symbol's current price, lognormal
//!   notional, strategy, latency), `order.filled` / `order.canceled` close a
//!   random open order with the same id, `order.rejected` refuses a new one;
//! - `market.data.update`: a geometric random walk per symbol, with volume;
//! - positions, balances, signals, alerts, strategy start/stop;
//! - user activity (`user.login`/`logout`, `page.view`, `button.click`)
//!   with Zipf-skewed users and per-user sessions;
//! - about 1 % late (event time 1 to 10 minutes old) and 0.5 % invalid
//!   (half truncated JSON, half without `event_type`), which the service
//!   turns into dead letters.

use std::collections::BTreeMap;
use std::io::Write;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Topic suffixes, in the order of [`Generated::topic`].
pub const TOPIC_SUFFIXES: [&str; 4] = [
    "trading.events",
    "market.data",
    "order.events",
    "user.actions",
];
const TRADING: usize = 0;
const MARKET: usize = 1;
const ORDERS: usize = 2;
const USERS: usize = 3;

/// The custom event type of freshness markers.
pub const MARKER_TYPE: &str = "bench.marker";

/// Per mille of each event type (they sum to 1,000).
const MIX: &[(&str, u32)] = &[
    ("market.data.update", 350),
    ("order.placed", 200),
    ("order.filled", 120),
    ("order.canceled", 50),
    ("order.rejected", 10),
    ("position.opened", 20),
    ("position.closed", 18),
    ("balance.updated", 30),
    ("signal.generated", 40),
    ("alert.triggered", 5),
    ("strategy.started", 3),
    ("strategy.stopped", 2),
    ("user.login", 20),
    ("user.logout", 17),
    ("page.view", 75),
    ("button.click", 40),
];

/// Fraction of events with an event time minutes in the past.
pub const LATE_FRACTION: f64 = 0.01;
/// Fraction of events the service must refuse.
pub const INVALID_FRACTION: f64 = 0.005;

const NAMED_SYMBOLS: &[(&str, f64)] = &[
    ("BTCUSDT", 65_000.0),
    ("ETHUSDT", 3_200.0),
    ("SOLUSDT", 150.0),
    ("BNBUSDT", 560.0),
    ("XRPUSDT", 0.55),
    ("ADAUSDT", 0.45),
    ("DOGEUSDT", 0.12),
    ("AVAXUSDT", 28.0),
    ("DOTUSDT", 6.5),
    ("LINKUSDT", 14.0),
];
const SYMBOLS: usize = 200;
const USERS_N: usize = 5_000;
const STRATEGIES: usize = 40;
const MAX_OPEN_ORDERS: usize = 20_000;
const PAGES: &[&str] = &[
    "/dashboard",
    "/markets",
    "/orders",
    "/positions",
    "/strategies",
    "/settings",
];
const BUTTONS: &[&str] = &[
    "buy",
    "sell",
    "cancel",
    "refresh",
    "export",
    "start_strategy",
];
const ALERTS: &[&str] = &["price_move", "drawdown", "margin_call", "latency_spike"];

/// Samples ranks 0..n with probability proportional to 1 / (rank + 1)^s.
#[derive(Debug, Clone)]
pub struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    pub fn new(n: usize, s: f64) -> Zipf {
        let mut total = 0.0;
        let mut cdf = Vec::with_capacity(n);
        for k in 0..n {
            total += 1.0 / ((k + 1) as f64).powf(s);
            cdf.push(total);
        }
        for c in &mut cdf {
            *c /= total;
        }
        Zipf { cdf }
    }

    pub fn sample(&self, rng: &mut StdRng) -> usize {
        let u: f64 = rng.random();
        self.cdf.partition_point(|c| *c < u).min(self.cdf.len() - 1)
    }
}

/// A standard normal sample (Box–Muller).
fn normal(rng: &mut StdRng) -> f64 {
    let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

#[derive(Debug, Clone)]
struct Symbol {
    name: String,
    price: f64,
    decimals: usize,
}

#[derive(Debug, Clone)]
struct OpenOrder {
    id: u64,
    symbol: usize,
    buy: bool,
    price: f64,
    quantity: f64,
    strategy: usize,
    user: usize,
}

/// What [`Generator::next`] produced; the bytes are in
/// [`Generator::payload`] and [`Generator::key`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Generated {
    /// Index into [`TOPIC_SUFFIXES`].
    pub topic: usize,
    /// The event type of a valid event; `None` for an invalid one.
    pub event_type: Option<&'static str>,
    pub late: bool,
}

/// Counts of what was generated, for checking what the service stored.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Tally {
    pub total: u64,
    pub valid: u64,
    pub invalid: u64,
    pub late: u64,
    pub by_type: BTreeMap<String, u64>,
}

impl Tally {
    pub fn add(&mut self, g: &Generated) {
        self.total += 1;
        if g.late {
            self.late += 1;
        }
        match g.event_type {
            Some(t) => {
                self.valid += 1;
                *self.by_type.entry(t.to_string()).or_insert(0) += 1;
            }
            None => self.invalid += 1,
        }
    }

    pub fn merge(&mut self, other: &Tally) {
        self.total += other.total;
        self.valid += other.valid;
        self.invalid += other.invalid;
        self.late += other.late;
        for (t, n) in &other.by_type {
            *self.by_type.entry(t.clone()).or_insert(0) += n;
        }
    }
}

/// RFC 3339 timestamps with milliseconds, the date part cached per second.
#[derive(Debug, Default)]
struct TimeFormat {
    second: i64,
    prefix: String,
}

impl TimeFormat {
    fn write(&mut self, out: &mut Vec<u8>, us: i64) {
        let second = us.div_euclid(1_000_000);
        if second != self.second || self.prefix.is_empty() {
            self.second = second;
            self.prefix = chrono::DateTime::from_timestamp(second, 0)
                .unwrap_or_default()
                .format("%Y-%m-%dT%H:%M:%S")
                .to_string();
        }
        let ms = us.rem_euclid(1_000_000) / 1000;
        let _ = write!(out, "{}.{ms:03}Z", self.prefix);
    }
}

/// The event stream of one seed.
#[derive(Debug)]
pub struct Generator {
    rng: StdRng,
    symbols: Vec<Symbol>,
    symbol_zipf: Zipf,
    user_zipf: Zipf,
    strategy_zipf: Zipf,
    sessions: Vec<u32>,
    open: Vec<OpenOrder>,
    next_order: u64,
    mix_cdf: Vec<u32>,
    payload: Vec<u8>,
    key: Vec<u8>,
    time: TimeFormat,
}

impl Generator {
    pub fn new(seed: u64) -> Generator {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut symbols: Vec<Symbol> = NAMED_SYMBOLS
            .iter()
            .map(|(n, p)| Symbol {
                name: n.to_string(),
                price: *p,
                decimals: 0,
            })
            .collect();
        for i in symbols.len()..SYMBOLS {
            // Log-uniform base prices between 0.01 and 1,000.
            let price = 10f64.powf(rng.random_range(-2.0..3.0));
            symbols.push(Symbol {
                name: format!("S{i:03}USDT"),
                price,
                decimals: 0,
            });
        }
        for s in &mut symbols {
            s.decimals = if s.price >= 100.0 {
                2
            } else if s.price >= 1.0 {
                4
            } else {
                6
            };
        }
        let mut total = 0;
        let mix_cdf = MIX
            .iter()
            .map(|(_, w)| {
                total += w;
                total
            })
            .collect();
        Generator {
            rng,
            symbols,
            symbol_zipf: Zipf::new(SYMBOLS, 1.1),
            user_zipf: Zipf::new(USERS_N, 0.9),
            strategy_zipf: Zipf::new(STRATEGIES, 1.0),
            sessions: vec![0; USERS_N],
            open: Vec::with_capacity(MAX_OPEN_ORDERS),
            next_order: 1,
            mix_cdf,
            payload: Vec::with_capacity(512),
            key: Vec::with_capacity(32),
            time: TimeFormat::default(),
        }
    }

    /// The JSON (or, for an invalid event, the bytes) of the last event.
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    /// The Kafka key of the last event.
    pub fn key(&self) -> &[u8] {
        &self.key
    }

    /// The next event, stamped `now_us` (or minutes earlier when late).
    pub fn next(&mut self, now_us: i64) -> Generated {
        self.payload.clear();
        self.key.clear();
        let roll = self.rng.random_range(0..1000u32);
        let kind = self
            .mix_cdf
            .partition_point(|c| *c <= roll)
            .min(MIX.len() - 1);
        let event_type = MIX[kind].0;
        let late = self.rng.random::<f64>() < LATE_FRACTION;
        let invalid = self.rng.random::<f64>() < INVALID_FRACTION;
        let missing_type = invalid && self.rng.random::<bool>();
        let ts = if late {
            now_us - self.rng.random_range(60_000_000..600_000_000i64)
        } else {
            now_us
        };
        let topic = self.write_event(event_type, ts, missing_type);
        if invalid && !missing_type {
            // Cut before the closing brace: never valid JSON.
            let cut = self.payload.len() / 2;
            self.payload.truncate(cut);
        }
        Generated {
            topic,
            event_type: (!invalid).then_some(event_type),
            late,
        }
    }

    /// A freshness marker: the custom type [`MARKER_TYPE`] with sequence
    /// number `seq`, stamped `ts_us`.
    pub fn marker(&mut self, seq: u64, ts_us: i64) -> Generated {
        self.payload.clear();
        self.key.clear();
        self.key.extend_from_slice(b"bench-marker");
        let _ = write!(
            self.payload,
            r#"{{"event_type":"{MARKER_TYPE}","user_id":"bench-marker","properties":{{"seq":{seq}}},"timestamp":""#
        );
        self.time.write(&mut self.payload, ts_us);
        self.payload.extend_from_slice(b"\"}");
        Generated {
            topic: TRADING,
            event_type: Some(MARKER_TYPE),
            late: false,
        }
    }

    fn user(&mut self) -> usize {
        self.user_zipf.sample(&mut self.rng)
    }

    fn symbol(&mut self) -> usize {
        self.symbol_zipf.sample(&mut self.rng)
    }

    /// Moves the symbol's price one step of a random walk and returns it.
    fn tick_price(&mut self, s: usize) -> f64 {
        let step = 0.0005 * normal(&mut self.rng);
        let sym = &mut self.symbols[s];
        sym.price *= step.exp();
        sym.price
    }

    /// Quantity for a lognormal notional around 2,000 USDT.
    fn quantity(&mut self, price: f64) -> f64 {
        let notional = (2_000f64.ln() + 1.2 * normal(&mut self.rng)).exp();
        (notional / price).max(1e-6)
    }

    fn latency_ms(&mut self) -> f64 {
        (3f64.ln() + 0.8 * normal(&mut self.rng)).exp()
    }

    fn begin(&mut self, event_type: &str, missing_type: bool) {
        self.payload.push(b'{');
        if !missing_type {
            let _ = write!(self.payload, r#""event_type":"{event_type}","#);
        }
    }

    fn user_fields(&mut self, user: usize) {
        let session = self.sessions[user];
        let _ = write!(
            self.payload,
            r#""user_id":"user{user}","session_id":"s{user}-{session}","#
        );
    }

    fn finish(&mut self, ts_us: i64) {
        self.payload.extend_from_slice(br#","timestamp":""#);
        self.time.write(&mut self.payload, ts_us);
        self.payload.extend_from_slice(b"\"}");
    }

    fn order_props(&mut self, o: &OpenOrder, price: f64) {
        let sym = &self.symbols[o.symbol];
        let side = if o.buy { "BUY" } else { "SELL" };
        let d = sym.decimals;
        let _ = write!(
            self.payload,
            r#""order_id":"o{:012x}","symbol":"{}","side":"{side}","price":{price:.d$},"quantity":{:.6},"strategy_id":"strat{}""#,
            o.id, sym.name, o.quantity, o.strategy
        );
    }

    fn new_order(&mut self) -> OpenOrder {
        let symbol = self.symbol();
        let price = self.symbols[symbol].price * (1.0 + 0.001 * normal(&mut self.rng));
        let quantity = self.quantity(price);
        let id = self.next_order;
        self.next_order += 1;
        OpenOrder {
            id,
            symbol,
            buy: self.rng.random(),
            price,
            quantity,
            strategy: self.strategy_zipf.sample(&mut self.rng),
            user: self.user(),
        }
    }

    fn take_open(&mut self) -> Option<OpenOrder> {
        if self.open.is_empty() {
            return None;
        }
        let i = self.rng.random_range(0..self.open.len());
        Some(self.open.swap_remove(i))
    }

    /// Writes one event into `payload` and `key`; returns its topic.
    fn write_event(&mut self, event_type: &'static str, ts: i64, missing_type: bool) -> usize {
        self.begin(event_type, missing_type);
        let topic = match event_type {
            "market.data.update" => {
                let s = self.symbol();
                let price = self.tick_price(s);
                let volume = self.quantity(price) * 10.0;
                let spread = price * 0.0002;
                let sym = &self.symbols[s];
                let d = sym.decimals;
                let _ = write!(
                    self.payload,
                    r#""properties":{{"symbol":"{}","price":{price:.d$},"bid":{:.d$},"ask":{:.d$},"volume":{volume:.4}}}"#,
                    sym.name,
                    price - spread,
                    price + spread
                );
                self.key.extend_from_slice(sym.name.as_bytes());
                MARKET
            }
            "order.placed" | "order.rejected" => {
                let order = self.new_order();
                let latency = self.latency_ms();
                self.user_fields(order.user);
                self.payload.extend_from_slice(br#""properties":{"#);
                self.order_props(&order, order.price);
                let order_type = if self.rng.random_range(0..4) == 0 {
                    "MARKET"
                } else {
                    "LIMIT"
                };
                let _ = write!(
                    self.payload,
                    r#","order_type":"{order_type}","latency_ms":{latency:.3}"#
                );
                if event_type == "order.rejected" {
                    self.payload
                        .extend_from_slice(br#","reason":"insufficient_margin""#);
                }
                self.payload.push(b'}');
                let _ = write!(self.key, "o{:012x}", order.id);
                if event_type == "order.placed" {
                    if self.open.len() >= MAX_OPEN_ORDERS {
                        let i = self.rng.random_range(0..self.open.len());
                        self.open.swap_remove(i);
                    }
                    self.open.push(order);
                }
                ORDERS
            }
            "order.filled" | "order.canceled" => {
                let order = match self.take_open() {
                    Some(o) => o,
                    None => self.new_order(),
                };
                let latency = self.latency_ms();
                self.user_fields(order.user);
                self.payload.extend_from_slice(br#""properties":{"#);
                if event_type == "order.filled" {
                    let fill = self.tick_price(order.symbol);
                    self.order_props(&order, fill);
                    let commission = fill * order.quantity * 0.0004;
                    let _ = write!(
                        self.payload,
                        r#","latency_ms":{latency:.3},"commission":{commission:.6}"#
                    );
                } else {
                    self.order_props(&order, order.price);
                    let _ = write!(
                        self.payload,
                        r#","latency_ms":{latency:.3},"reason":"user_request""#
                    );
                }
                self.payload.push(b'}');
                let _ = write!(self.key, "o{:012x}", order.id);
                ORDERS
            }
            "position.opened" | "position.closed" => {
                let user = self.user();
                let s = self.symbol();
                let price = self.symbols[s].price;
                let quantity = self.quantity(price);
                let pnl = 50.0 * normal(&mut self.rng);
                self.user_fields(user);
                let sym = &self.symbols[s];
                let d = sym.decimals;
                let _ = write!(
                    self.payload,
                    r#""properties":{{"symbol":"{}","side":"{}","price":{price:.d$},"quantity":{quantity:.6}"#,
                    sym.name,
                    if pnl > 0.0 { "BUY" } else { "SELL" }
                );
                if event_type == "position.closed" {
                    let _ = write!(self.payload, r#","pnl":{pnl:.2}"#);
                }
                self.payload.push(b'}');
                let _ = write!(self.key, "user{user}");
                TRADING
            }
            "balance.updated" => {
                let user = self.user();
                let change = 100.0 * normal(&mut self.rng);
                let balance = self.rng.random_range(100.0..1_000_000.0f64);
                self.user_fields(user);
                let _ = write!(
                    self.payload,
                    r#""properties":{{"asset":"USDT","balance":{balance:.2},"change":{change:.2}}}"#
                );
                let _ = write!(self.key, "user{user}");
                TRADING
            }
            "signal.generated" => {
                let s = self.symbol();
                let strategy = self.strategy_zipf.sample(&mut self.rng);
                let strength: f64 = self.rng.random();
                let buy: bool = self.rng.random();
                let _ = write!(
                    self.payload,
                    r#""properties":{{"symbol":"{}","strategy_id":"strat{strategy}","signal":"{}","strength":{strength:.4}}}"#,
                    self.symbols[s].name,
                    if buy { "BUY" } else { "SELL" }
                );
                let _ = write!(self.key, "strat{strategy}");
                TRADING
            }
            "alert.triggered" => {
                let s = self.symbol();
                let alert = ALERTS[self.rng.random_range(0..ALERTS.len())];
                let severity = ["info", "warning", "critical"][self.rng.random_range(0..3)];
                let _ = write!(
                    self.payload,
                    r#""properties":{{"alert_type":"{alert}","severity":"{severity}","symbol":"{}"}}"#,
                    self.symbols[s].name
                );
                let _ = write!(self.key, "alert-{alert}");
                TRADING
            }
            "strategy.started" | "strategy.stopped" => {
                let strategy = self.strategy_zipf.sample(&mut self.rng);
                let user = self.user();
                let s = self.symbol();
                self.user_fields(user);
                let _ = write!(
                    self.payload,
                    r#""properties":{{"strategy_id":"strat{strategy}","name":"momentum-{strategy}","symbol":"{}"}}"#,
                    self.symbols[s].name
                );
                let _ = write!(self.key, "strat{strategy}");
                TRADING
            }
            _ => {
                // user.login, user.logout, page.view, button.click
                let user = self.user();
                if event_type == "user.login" {
                    self.sessions[user] += 1;
                }
                self.user_fields(user);
                let props = match event_type {
                    "page.view" => {
                        let page = PAGES[self.rng.random_range(0..PAGES.len())];
                        format!(
                            r#"{{"page":"{page}","duration_ms":{}}}"#,
                            self.rng.random_range(50..30_000)
                        )
                    }
                    "button.click" => {
                        let button = BUTTONS[self.rng.random_range(0..BUTTONS.len())];
                        format!(r#"{{"button":"{button}"}}"#)
                    }
                    _ => {
                        let device =
                            ["web", "ios", "android", "desktop"][self.rng.random_range(0..4)];
                        format!(r#"{{"device":"{device}"}}"#)
                    }
                };
                let _ = write!(self.payload, r#""properties":{props}"#);
                let _ = write!(self.key, "user{user}");
                USERS
            }
        };
        self.finish(ts);
        topic
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_760_000_000_123_456;

    #[test]
    fn same_seed_same_events() {
        let mut a = Generator::new(7);
        let mut b = Generator::new(7);
        for i in 0..5_000 {
            let ga = a.next(NOW + i);
            let gb = b.next(NOW + i);
            assert_eq!(ga, gb);
            assert_eq!(a.payload(), b.payload());
            assert_eq!(a.key(), b.key());
        }
        let mut c = Generator::new(8);
        let differs = (0..100).any(|i| {
            a.next(NOW + i);
            c.next(NOW + i);
            a.payload() != c.payload()
        });
        assert!(differs);
    }

    #[test]
    fn valid_events_parse_and_invalid_ones_do_not() {
        let mut g = Generator::new(42);
        let mut tally = Tally::default();
        for i in 0..200_000 {
            let meta = g.next(NOW + i);
            tally.add(&meta);
            let parsed: Result<serde_json::Value, _> = serde_json::from_slice(g.payload());
            match meta.event_type {
                Some(t) => {
                    let v = parsed.expect("valid JSON");
                    assert_eq!(v["event_type"], t);
                    let ts = v["timestamp"].as_str().expect("timestamp");
                    chrono::DateTime::parse_from_rfc3339(ts).expect("RFC 3339");
                    if t.starts_with("order.") {
                        assert!(v["properties"]["symbol"].is_string());
                        assert!(v["properties"]["order_id"].is_string());
                    }
                }
                None => {
                    if let Ok(v) = parsed {
                        assert!(v.get("event_type").is_none(), "{v}");
                    }
                }
            }
        }
        let invalid = tally.invalid as f64 / tally.total as f64;
        let late = tally.late as f64 / tally.total as f64;
        assert!((0.003..0.007).contains(&invalid), "{invalid}");
        assert!((0.008..0.012).contains(&late), "{late}");
        assert_eq!(tally.valid + tally.invalid, tally.total);
        assert_eq!(tally.by_type.values().sum::<u64>(), tally.valid);
        let placed = tally.by_type["order.placed"] as f64 / tally.valid as f64;
        assert!((0.18..0.22).contains(&placed), "{placed}");
    }

    #[test]
    fn symbols_are_skewed() {
        let mut rng = StdRng::seed_from_u64(1);
        let z = Zipf::new(200, 1.1);
        let mut counts = vec![0u32; 200];
        for _ in 0..100_000 {
            counts[z.sample(&mut rng)] += 1;
        }
        assert!(counts[0] > 10 * counts[50]);
        assert!(counts[199] > 0);
    }

    #[test]
    fn markers_are_custom_events() {
        let mut g = Generator::new(1);
        let meta = g.marker(12, NOW);
        let v: serde_json::Value = serde_json::from_slice(g.payload()).expect("json");
        assert_eq!(meta.event_type, Some(MARKER_TYPE));
        assert_eq!(v["properties"]["seq"], 12);
        assert_eq!(v["timestamp"], "2025-10-09T08:53:20.123Z");
    }
}
