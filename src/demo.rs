//! The built-in demo producer for `make run`: realistic trading events
//! (order lifecycles, market data, strategies, user activity) written to the
//! configured topics at a fixed rate, so that the dashboard moves.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dataflows::kafka_source::LinkSecurity;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientConfig;
use serde_json::json;
use tracing::{info, warn};

const SYMBOLS: &[(&str, f64)] = &[
    ("BTCUSDT", 50_000.0),
    ("ETHUSDT", 3_000.0),
    ("SOLUSDT", 150.0),
    ("BNBUSDT", 550.0),
    ("XRPUSDT", 0.6),
];

fn topic_for<'a>(topics: &'a [String], wanted: &'a str) -> &'a str {
    topics
        .iter()
        .find(|t| t.as_str() == wanted)
        .or_else(|| topics.first())
        .map(String::as_str)
        .unwrap_or(wanted)
}

/// One generated event: `(topic, key, json)`.
fn next_event(
    rng: &mut StdRng,
    topics: &[String],
    now: chrono::DateTime<chrono::Utc>,
) -> (String, String, String) {
    // Skewed symbol choice: the first symbols trade most.
    let s = (rng.random::<f64>().powi(2) * SYMBOLS.len() as f64) as usize;
    let (symbol, base) = SYMBOLS[s.min(SYMBOLS.len() - 1)];
    let price = base * (1.0 + (rng.random::<f64>() - 0.5) * 0.01);
    let user = format!("user{}", rng.random_range(0..200));
    let session = format!("session{}", rng.random_range(0..400));
    let strategy = format!("strategy{}", rng.random_range(0..8));
    let order_id = format!("ord-{:016x}", rng.random::<u64>());
    let side = if rng.random::<bool>() { "BUY" } else { "SELL" };
    let quantity = (rng.random::<f64>() * 2.0 * 1000.0).round() / 1000.0 + 0.001;
    let roll = rng.random_range(0..100);
    let (topic, event_type, properties) = match roll {
        0..=29 => (
            "market.data",
            "market.data.update",
            json!({"symbol": symbol, "price": price, "volume": quantity * 10.0}),
        ),
        30..=49 => (
            "order.events",
            "order.placed",
            json!({"order_id": order_id, "symbol": symbol, "side": side, "price": price, "quantity": quantity, "strategy_id": strategy}),
        ),
        50..=62 => (
            "order.events",
            "order.filled",
            json!({"order_id": order_id, "symbol": symbol, "side": side, "price": price, "quantity": quantity, "latency_ms": rng.random_range(1..40), "commission": price * quantity * 0.0004, "strategy_id": strategy}),
        ),
        63..=67 => (
            "order.events",
            "order.canceled",
            json!({"order_id": order_id, "symbol": symbol, "side": side}),
        ),
        68..=69 => (
            "order.events",
            "order.rejected",
            json!({"order_id": order_id, "symbol": symbol, "side": side, "reason": "insufficient_margin"}),
        ),
        70..=74 => (
            "trading.events",
            "signal.generated",
            json!({"symbol": symbol, "strategy_id": strategy, "strength": rng.random::<f64>()}),
        ),
        75..=77 => (
            "trading.events",
            "position.opened",
            json!({"symbol": symbol, "side": side, "quantity": quantity, "price": price}),
        ),
        78..=79 => (
            "trading.events",
            "position.closed",
            json!({"symbol": symbol, "pnl": (rng.random::<f64>() - 0.45) * 100.0}),
        ),
        80 => (
            "trading.events",
            "strategy.started",
            json!({"strategy_id": strategy}),
        ),
        81 => (
            "trading.events",
            "strategy.stopped",
            json!({"strategy_id": strategy}),
        ),
        82..=83 => (
            "trading.events",
            "balance.updated",
            json!({"asset": "USDT", "balance": rng.random_range(1_000.0..100_000.0)}),
        ),
        84 => (
            "trading.events",
            "alert.triggered",
            json!({"symbol": symbol, "level": "warning"}),
        ),
        85..=92 => ("user.actions", "page.view", json!({"page": "/dashboard"})),
        93..=96 => (
            "user.actions",
            "button.click",
            json!({"button": "place_order"}),
        ),
        97..=98 => ("user.actions", "user.login", json!({})),
        _ => ("user.actions", "user.logout", json!({})),
    };
    let body = json!({
        "event_type": event_type,
        "user_id": user,
        "session_id": session,
        "properties": properties,
        "timestamp": now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    });
    (topic_for(topics, topic).to_string(), user, body.to_string())
}

/// Produces `rate` events per second until `shutdown`.
pub fn spawn(
    brokers: String,
    security: LinkSecurity,
    topics: Vec<String>,
    rate: u32,
    shutdown: Arc<AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("demo-producer".into())
        .spawn(move || {
            let mut config = ClientConfig::new();
            config
                .set("bootstrap.servers", &brokers)
                .set("linger.ms", "5");
            security.apply(&mut config);
            let producer: BaseProducer = match config.create() {
                Ok(p) => p,
                Err(e) => {
                    warn!(error = %e, "demo producer cannot start");
                    return;
                }
            };
            info!(rate, "demo producer started");
            let mut rng = StdRng::seed_from_u64(7);
            let started = Instant::now();
            let mut sent: u64 = 0;
            while !shutdown.load(Ordering::Relaxed) {
                let due = (started.elapsed().as_secs_f64() * f64::from(rate)) as u64;
                while sent < due {
                    let (topic, key, body) = next_event(&mut rng, &topics, chrono::Utc::now());
                    if let Err((e, _)) =
                        producer.send(BaseRecord::to(&topic).key(&key).payload(&body))
                    {
                        warn!(error = %e, "demo produce failed");
                        break;
                    }
                    sent += 1;
                }
                producer.poll(Duration::from_millis(10));
            }
            let _ = producer.flush(Duration::from_secs(2));
        })
}
