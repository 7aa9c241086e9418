//! The trading tables (`order_analytics`, `strategy_performance`,
//! `market_analytics`, `user_behavior`): the contributions of a batch
//! ([`TradingBatch`], folded per tick on the dataflow's workers by the
//! durable sink, or by the REST path for its events, and sealed,
//! [`SealedTrading`]) are merged into the stored states inside the
//! transaction that stores the batch's raw rows and Kafka offsets, so every
//! row always equals the fold of its committed events, exactly once.
//!
//! One generic path serves the four tables: the stored states of the
//! batch's keys are read under the table's merge lock (the keys travel as
//! typed arrays), merged with the batch's in Rust, and written back with
//! one multi-row upsert of `unnest` over one array per column (each
//! derived column as `text[]` cast to its type, the state as `bytea[]`):
//! no JSON for PostgreSQL to parse. Retention's deletes from these tables
//! take the same lock.

use dataflows::event::format_us;
use dataflows::trading::{
    from_bytes, nano_decimal, to_bytes, BucketKey, Ohlcv, OrderState, SealedTrading, SessionState,
    StrategyPerf,
};
use differential_dataflow::difference::Semigroup;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Map, Value};
use tokio_postgres::types::ToSql;
use tokio_postgres::Transaction;

use crate::encode::PgMicros;
use crate::{Pool, SinkError};

/// How one state type maps to its table.
pub trait TradingRow: Semigroup + Serialize + DeserializeOwned + Clone {
    type Key: Ord;
    const TABLE: &'static str;
    /// Primary-key columns.
    const KEY: &'static [&'static str];
    /// Derived columns written from the state (besides `state`).
    const COLUMNS: &'static [&'static str];
    /// Their SQL types, in the same order (the upsert sends each column as
    /// a `text[]` and casts it).
    const TYPES: &'static [&'static str];
    /// Extra `SET` assignments on update.
    const ON_UPDATE: &'static str = "";
    /// The key's values: the first key column's, and for bucket keys the
    /// interval's name and the bucket's start (seconds).
    fn key_parts(key: &Self::Key) -> (&str, Option<(&'static str, i64)>);
    fn columns(&self, key: &Self::Key) -> Map<String, Value>;
}

fn bucket_parts(key: &BucketKey) -> (&str, Option<(&'static str, i64)>) {
    (&key.0, Some((key.1.name(), key.2)))
}

fn dec(n: i128) -> Value {
    Value::String(nano_decimal(n))
}

fn time(us: i64) -> Value {
    Value::String(format_us(us))
}

impl TradingRow for OrderState {
    type Key = String;
    const TABLE: &'static str = "order_analytics";
    const KEY: &'static [&'static str] = &["order_id"];
    const COLUMNS: &'static [&'static str] = &[
        "symbol",
        "side",
        "strategy_id",
        "user_id",
        "status",
        "quantity",
        "price",
        "filled_quantity",
        "fills",
        "avg_fill_price",
        "commission",
        "pnl",
        "is_maker",
        "placed_at",
        "closed_at",
        "latency_ms",
        "first_seen",
    ];
    const TYPES: &'static [&'static str] = &[
        "text",
        "text",
        "text",
        "text",
        "text",
        "numeric",
        "numeric",
        "numeric",
        "bigint",
        "numeric",
        "numeric",
        "numeric",
        "boolean",
        "timestamptz",
        "timestamptz",
        "double precision",
        "timestamptz",
    ];
    const ON_UPDATE: &'static str = ", updated_at = now()";

    fn key_parts(key: &String) -> (&str, Option<(&'static str, i64)>) {
        (key, None)
    }

    fn columns(&self, _key: &String) -> Map<String, Value> {
        let attrs = self
            .attrs
            .as_ref()
            .map(|(_, a)| a.clone())
            .unwrap_or_default();
        let placed = self.placed;
        let avg = (self.filled_qty != 0).then(|| {
            // Exact to 9 decimals: notional and quantity are both nano-units.
            self.notional * 1_000_000_000 / self.filled_qty
        });
        let obj = json!({
            "symbol": attrs.symbol,
            "side": attrs.side,
            "strategy_id": attrs.strategy_id,
            "user_id": attrs.user_id,
            "status": self.status(),
            "quantity": placed.and_then(|(_, q, _)| q).map(dec),
            "price": placed.and_then(|(_, _, p)| p).map(dec),
            "filled_quantity": dec(self.filled_qty),
            "fills": self.fills,
            "avg_fill_price": avg.map(dec),
            "commission": dec(self.commission),
            "pnl": dec(self.pnl),
            "is_maker": self.maker.map(|(_, m)| m),
            "placed_at": placed.map(|(t, _, _)| time(t)),
            "closed_at": self.closed_at().map(time),
            "latency_ms": self.latency_ms(),
            "first_seen": self.attrs.as_ref().map(|(t, _)| time(*t)),
        });
        object(obj)
    }
}

impl TradingRow for StrategyPerf {
    type Key = BucketKey;
    const TABLE: &'static str = "strategy_performance";
    const KEY: &'static [&'static str] = &["strategy_id", "interval", "bucket_start"];
    const COLUMNS: &'static [&'static str] = &[
        "trades",
        "winning_trades",
        "losing_trades",
        "total_pnl",
        "gross_profit",
        "gross_loss",
        "win_rate",
        "profit_factor",
        "largest_win",
        "largest_loss",
        "avg_latency_ms",
    ];
    const TYPES: &'static [&'static str] = &[
        "bigint",
        "bigint",
        "bigint",
        "numeric",
        "numeric",
        "numeric",
        "double precision",
        "double precision",
        "numeric",
        "numeric",
        "double precision",
    ];

    fn key_parts(key: &BucketKey) -> (&str, Option<(&'static str, i64)>) {
        bucket_parts(key)
    }

    fn columns(&self, _key: &BucketKey) -> Map<String, Value> {
        let obj = json!({
            "trades": self.trades,
            "winning_trades": self.wins,
            "losing_trades": self.losses,
            "total_pnl": dec(self.pnl),
            "gross_profit": dec(self.gross_profit),
            "gross_loss": dec(self.gross_loss),
            "win_rate": self.win_rate(),
            "profit_factor": self.profit_factor(),
            "largest_win": self.largest_win.map(dec),
            "largest_loss": self.largest_loss.map(dec),
            "avg_latency_ms": self.avg_latency_ms(),
        });
        object(obj)
    }
}

impl TradingRow for Ohlcv {
    type Key = BucketKey;
    const TABLE: &'static str = "market_analytics";
    const KEY: &'static [&'static str] = &["symbol", "interval", "bucket_start"];
    const COLUMNS: &'static [&'static str] = &[
        "open",
        "high",
        "low",
        "close",
        "volume",
        "trades_count",
        "price_points",
    ];
    const TYPES: &'static [&'static str] = &[
        "numeric", "numeric", "numeric", "numeric", "numeric", "bigint", "bigint",
    ];

    fn key_parts(key: &BucketKey) -> (&str, Option<(&'static str, i64)>) {
        bucket_parts(key)
    }

    fn columns(&self, _key: &BucketKey) -> Map<String, Value> {
        let obj = json!({
            "open": self.open.map(|(_, p)| dec(p)),
            "high": self.high.map(dec),
            "low": self.low.map(dec),
            "close": self.close.map(|(_, p)| dec(p)),
            "volume": dec(self.volume),
            "trades_count": self.trades,
            "price_points": self.points,
        });
        object(obj)
    }
}

impl TradingRow for SessionState {
    type Key = String;
    const TABLE: &'static str = "user_behavior";
    const KEY: &'static [&'static str] = &["session_id"];
    const COLUMNS: &'static [&'static str] = &[
        "user_id",
        "session_start",
        "last_event",
        "duration_seconds",
        "page_views",
        "events",
        "distinct_event_types",
        "event_types",
    ];
    const TYPES: &'static [&'static str] = &[
        "text",
        "timestamptz",
        "timestamptz",
        "double precision",
        "bigint",
        "bigint",
        "integer",
        "text[]",
    ];

    fn key_parts(key: &String) -> (&str, Option<(&'static str, i64)>) {
        (key, None)
    }

    fn columns(&self, _key: &String) -> Map<String, Value> {
        let (start, end) = (self.start.unwrap_or(0), self.end.unwrap_or(0));
        let obj = json!({
            "user_id": self.user_id,
            "session_start": time(start),
            "last_event": time(end),
            "duration_seconds": (end - start) as f64 / 1e6,
            "page_views": self.page_views,
            "events": self.events,
            "distinct_event_types": self.event_types.len(),
            "event_types": self.event_types,
        });
        object(obj)
    }
}

/// The fields of a `json!({...})` literal.
fn object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// A JSON column value as the text PostgreSQL reads for its type: `None`
/// for null, strings as they are (numerics and times are formatted as
/// strings already), numbers and booleans as JSON writes them, an array of
/// strings as an array literal (`{"a","b"}`).
fn sql_text(value: Value) -> Option<String> {
    match value {
        Value::Null => None,
        Value::String(s) => Some(s),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Array(items) => {
            let mut out = String::from("{");
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push('"');
                let text = match item {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                for c in text.chars() {
                    if c == '"' || c == '\\' {
                        out.push('\\');
                    }
                    out.push(c);
                }
                out.push('"');
            }
            out.push('}');
            Some(out)
        }
        Value::Object(_) => Some(value.to_string()),
    }
}

/// Keys merged per statement pair (the read of the stored states, the
/// upsert). One pair for a whole group sent all of its states as one
/// `bytea[]`: 34–59 MB in single heap-profile dumps at 20,000 events/s
/// with the sink behind, plus the connection's write buffer grown to send
/// it; parts of 20,000 orders still took 80 MB of encoded parameters
/// (benchmarks/RESULTS.md). Debug builds, which the integration tests
/// run, use parts of 16 keys so that their batches span several parts.
pub const PART_KEYS: usize = if cfg!(debug_assertions) { 16 } else { 5_000 };

/// Merges `deltas` (sorted by key, consumed one part at a time) into
/// `S::TABLE`, in parts of at most [`PART_KEYS`] keys.
pub async fn merge_table<S: TradingRow>(
    tx: &Transaction<'_>,
    deltas: impl IntoIterator<Item = (S::Key, S)>,
) -> Result<(), SinkError> {
    let mut deltas = deltas.into_iter().peekable();
    if deltas.peek().is_none() {
        return Ok(());
    }
    // Every merge into the table (the sink writer of every process, the
    // REST path) and retention's deletes hold this lock until their
    // transaction ends, so the states read below cannot change before the
    // upsert: no row locks (`FOR UPDATE` doubled the read, writing a lock
    // into every row).
    crate::lock_merges(tx, S::TABLE).await?;
    loop {
        let (keys, states): (Vec<S::Key>, Vec<S>) = deltas.by_ref().take(PART_KEYS).unzip();
        if keys.is_empty() {
            return Ok(());
        }
        merge_part(tx, &keys, states).await?;
    }
}

/// [`merge_table`] for one part of the keys, under its lock: `merged`
/// holds the part's contributions and becomes the merged states.
async fn merge_part<S: TradingRow>(
    tx: &Transaction<'_>,
    keys: &[S::Key],
    mut merged: Vec<S>,
) -> Result<(), SinkError> {
    let table = S::TABLE;
    // The keys as typed arrays (not JSON), in key order: the id, and for
    // bucket keys the interval and the bucket's start (unused otherwise).
    let parts: Vec<(&str, Option<(&'static str, i64)>)> =
        keys.iter().map(|k| S::key_parts(k)).collect();
    let ids: Vec<&str> = parts.iter().map(|(id, _)| *id).collect();
    let (intervals, starts): (Vec<&str>, Vec<i64>) =
        parts.iter().map(|(_, b)| b.unwrap_or(("", 0))).unzip();
    let rows = match S::KEY {
        [id, interval, start] => {
            tx.query(
                &format!(
                    "SELECT u.ord, t.state
                     FROM unnest($1::text[], $2::text[], $3::bigint[]) WITH ORDINALITY AS u(k, i, b, ord)
                     JOIN {table} t ON t.{id} = u.k AND t.{interval} = u.i
                      AND t.{start} = to_timestamp(u.b)
                     ORDER BY u.ord"
                ),
                &[&ids, &intervals, &starts],
            )
            .await?
        }
        [id] => {
            tx.query(
                &format!(
                    "SELECT u.ord, t.state
                     FROM unnest($1::text[]) WITH ORDINALITY AS u(k, ord)
                     JOIN {table} t ON t.{id} = u.k
                     ORDER BY u.ord"
                ),
                &[&ids],
            )
            .await?
        }
        other => unreachable!("key columns {other:?}: one id, or id, interval and bucket start"),
    };
    for row in rows {
        let ord: i64 = row.get(0);
        let Some(slot) = usize::try_from(ord - 1)
            .ok()
            .and_then(|i| merged.get_mut(i))
        else {
            continue;
        };
        // A state that cannot be decoded is replaced by the batch's (and
        // logged): refusing the batch would stall ingestion forever.
        match from_bytes::<S>(row.get::<_, &[u8]>(1)) {
            Some(mut stored) => {
                stored.plus_equals(slot);
                *slot = stored;
            }
            None => tracing::error!(table, "undecodable trading state replaced"),
        }
    }
    // The rows as one typed array per column: the key's (as read above),
    // each derived column as text cast to its type, the state as bytea.
    let mut texts: Vec<Vec<Option<String>>> =
        vec![Vec::with_capacity(keys.len()); S::COLUMNS.len()];
    let mut states: Vec<Vec<u8>> = Vec::with_capacity(keys.len());
    for (k, merged) in keys.iter().zip(&merged) {
        let mut columns = merged.columns(k);
        for (column, out) in S::COLUMNS.iter().zip(texts.iter_mut()) {
            out.push(columns.remove(*column).and_then(sql_text));
        }
        states.push(to_bytes(merged));
    }
    // unnest's arguments: (parameter, its array type, what the SELECT
    // makes of its column `u.aN`).
    let mut args: Vec<(&(dyn ToSql + Sync), &str, String)> = vec![(&ids, "text[]", "u.a0".into())];
    if S::KEY.len() == 3 {
        args.push((&intervals, "text[]", "u.a1".into()));
        args.push((&starts, "bigint[]", "to_timestamp(u.a2)".into()));
    }
    for (column, sql_type) in texts.iter().zip(S::TYPES) {
        let n = args.len();
        args.push((column, "text[]", format!("u.a{n}::{sql_type}")));
    }
    let n = args.len();
    args.push((&states, "bytea[]", format!("u.a{n}")));
    let inputs: Vec<String> = (1..=args.len())
        .zip(&args)
        .map(|(n, (_, array_type, _))| format!("${n}::{array_type}"))
        .collect();
    let aliases: Vec<String> = (0..args.len()).map(|n| format!("a{n}")).collect();
    let selected: Vec<&str> = args.iter().map(|(_, _, s)| s.as_str()).collect();
    let params: Vec<&(dyn ToSql + Sync)> = args.iter().map(|(p, _, _)| *p).collect();
    let mut columns: Vec<&str> = S::KEY.to_vec();
    columns.extend_from_slice(S::COLUMNS);
    columns.push("state");
    let list = columns.join(", ");
    let set = S::COLUMNS
        .iter()
        .chain(std::iter::once(&"state"))
        .map(|c| format!("{c} = EXCLUDED.{c}"))
        .collect::<Vec<_>>()
        .join(", ");
    let conflict = S::KEY.join(", ");
    tx.execute(
        &format!(
            "INSERT INTO {table} ({list})
             SELECT {} FROM unnest({}) AS u({})
             ON CONFLICT ({conflict}) DO UPDATE SET {set}{}",
            selected.join(", "),
            inputs.join(", "),
            aliases.join(", "),
            S::ON_UPDATE
        ),
        &params,
    )
    .await?;
    Ok(())
}

/// Merges the trading contributions of `batches` into the four tables.
pub async fn merge(tx: &Transaction<'_>, batches: &[&SealedTrading]) -> Result<(), SinkError> {
    if batches.iter().all(|b| b.is_empty()) {
        return Ok(());
    }
    merge_table(tx, SealedTrading::orders(batches)).await?;
    merge_table(tx, SealedTrading::strategies(batches)).await?;
    merge_table(tx, SealedTrading::markets(batches)).await?;
    merge_table(tx, SealedTrading::sessions(batches)).await?;
    Ok(())
}

/// One order's row as JSON (without its merge state).
pub async fn order(pool: &Pool, order_id: &str) -> Result<Option<Value>, SinkError> {
    let client = pool.get().await?;
    let row = client
        .query_opt(
            "SELECT to_jsonb(t) - 'state' FROM order_analytics t WHERE order_id = $1",
            &[&order_id],
        )
        .await?;
    Ok(row.map(|r| r.get(0)))
}

/// A bucketed read: `interval`, buckets starting in `[start, end)` (µs).
#[derive(Clone, Debug)]
pub struct BucketQuery<'a> {
    pub interval: &'a str,
    pub start_us: i64,
    pub end_us: i64,
    /// Only this strategy or symbol.
    pub id: Option<&'a str>,
    pub limit: i64,
}

async fn buckets(
    pool: &Pool,
    table: &str,
    id_column: &str,
    q: &BucketQuery<'_>,
) -> Result<Vec<Value>, SinkError> {
    let client = pool.get().await?;
    let rows = client
        .query(
            &format!(
                "SELECT to_jsonb(t) - 'state' FROM {table} t
                 WHERE interval = $1 AND bucket_start >= $2 AND bucket_start < $3
                   AND ($4::text IS NULL OR {id_column} = $4)
                 ORDER BY bucket_start, {id_column}
                 LIMIT $5"
            ),
            &[
                &q.interval,
                &PgMicros(q.start_us),
                &PgMicros(q.end_us),
                &q.id,
                &q.limit,
            ],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Rows of `strategy_performance`, oldest bucket first.
pub async fn strategies(pool: &Pool, q: &BucketQuery<'_>) -> Result<Vec<Value>, SinkError> {
    buckets(pool, "strategy_performance", "strategy_id", q).await
}

/// Candles of `market_analytics`, oldest first.
pub async fn market(pool: &Pool, q: &BucketQuery<'_>) -> Result<Vec<Value>, SinkError> {
    buckets(pool, "market_analytics", "symbol", q).await
}

/// A user's sessions, latest first; `active` while the last event is less
/// than `timeout_secs` old (wall clock).
pub async fn sessions(
    pool: &Pool,
    user_id: &str,
    timeout_secs: f64,
    limit: i64,
) -> Result<Vec<Value>, SinkError> {
    let client = pool.get().await?;
    let rows = client
        .query(
            "SELECT (to_jsonb(t) - 'state')
                    || jsonb_build_object('active', t.last_event + make_interval(secs => $2) > now())
             FROM user_behavior t WHERE user_id = $1
             ORDER BY session_start DESC, session_id LIMIT $3",
            &[&user_id, &timeout_secs, &limit],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_name_every_column_once() {
        fn check<S: TradingRow + Default>(key: &S::Key) {
            let cols = S::default().columns(key);
            let mut names: Vec<&str> = cols.keys().map(String::as_str).collect();
            names.sort_unstable();
            let mut expected = S::COLUMNS.to_vec();
            expected.sort_unstable();
            assert_eq!(names, expected, "{}", S::TABLE);
            assert_eq!(S::TYPES.len(), S::COLUMNS.len(), "{}", S::TABLE);
            // merge_table reads one id column, or id, interval and start.
            let (_, bucket) = S::key_parts(key);
            assert_eq!(
                S::KEY.len(),
                if bucket.is_some() { 3 } else { 1 },
                "{}",
                S::TABLE
            );
        }
        check::<OrderState>(&"o".to_string());
        let bucket = ("s".to_string(), dataflows::windows::Interval(0), 60);
        check::<StrategyPerf>(&bucket);
        check::<Ohlcv>(&bucket);
        check::<SessionState>(&"x".to_string());
        assert_eq!(
            sql_text(json!(["a", "b\"c", "d\\e"])).as_deref(),
            Some(r#"{"a","b\"c","d\\e"}"#)
        );
        assert_eq!(sql_text(json!(null)), None);
        assert_eq!(sql_text(json!(12.5)).as_deref(), Some("12.5"));
        assert_eq!(sql_text(json!(true)).as_deref(), Some("true"));
    }
}
