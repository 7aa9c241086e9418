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
//! one multi-row upsert of `unnest` over one typed array per column
//! (numbers, booleans and times in binary, exact decimals as text cast to
//! `numeric`, the state as `bytea[]`): no JSON to build or parse. Retention's deletes from these tables
//! take the same lock.

use std::borrow::Cow;

use dataflows::trading::{
    from_bytes, nano_decimal, to_bytes, BucketKey, Ohlcv, OrderState, SealedTrading, SessionState,
    StrategyPerf,
};
use differential_dataflow::difference::Semigroup;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
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
    /// Derived columns written from the state (besides `state`), each with
    /// the SQL type its values are sent as.
    const COLUMNS: &'static [(&'static str, Sql)];
    /// Extra `SET` assignments on update.
    const ON_UPDATE: &'static str = "";
    /// The key's values: the first key column's, and for bucket keys the
    /// interval's name and the bucket's start (seconds).
    fn key_parts(key: &Self::Key) -> (&str, Option<(&'static str, i64)>);
    /// Appends the derived columns' values, in [`Self::COLUMNS`] order.
    fn write<'a>(&'a self, key: &'a Self::Key, row: &mut Row<'a, '_>);
}

/// A derived column's SQL type, and so the typed array its values travel
/// in: numbers, booleans and times in binary, exact decimals as text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sql {
    Text,
    /// An exact decimal, sent as its text (see [`nano_decimal`]).
    Numeric,
    /// A `text[]`, sent as an array literal.
    TextArray,
    BigInt,
    /// An `integer` column, sent as `bigint`.
    Integer,
    Double,
    Boolean,
    Time,
}

impl Sql {
    /// The parameter's array type and what the upsert's `SELECT` makes of
    /// unnest's column `col`.
    fn param(self, col: &str) -> (&'static str, String) {
        match self {
            Sql::Text => ("text[]", col.to_string()),
            Sql::Numeric => ("text[]", format!("{col}::numeric")),
            Sql::TextArray => ("text[]", format!("{col}::text[]")),
            Sql::BigInt => ("bigint[]", col.to_string()),
            Sql::Integer => ("bigint[]", format!("{col}::integer")),
            Sql::Double => ("double precision[]", col.to_string()),
            Sql::Boolean => ("boolean[]", col.to_string()),
            Sql::Time => ("timestamptz[]", col.to_string()),
        }
    }

    fn values<'a>(self, capacity: usize) -> Values<'a> {
        match self {
            Sql::Text | Sql::Numeric | Sql::TextArray => Values::Text(Vec::with_capacity(capacity)),
            Sql::BigInt | Sql::Integer => Values::Int(Vec::with_capacity(capacity)),
            Sql::Double => Values::Float(Vec::with_capacity(capacity)),
            Sql::Boolean => Values::Bool(Vec::with_capacity(capacity)),
            Sql::Time => Values::Time(Vec::with_capacity(capacity)),
        }
    }
}

/// One derived column's values for a part of the keys.
enum Values<'a> {
    Text(Vec<Option<Cow<'a, str>>>),
    Int(Vec<Option<i64>>),
    Float(Vec<Option<f64>>),
    Bool(Vec<Option<bool>>),
    Time(Vec<Option<PgMicros>>),
}

impl Values<'_> {
    #[cfg(test)]
    fn len(&self) -> usize {
        match self {
            Values::Text(v) => v.len(),
            Values::Int(v) => v.len(),
            Values::Float(v) => v.len(),
            Values::Bool(v) => v.len(),
            Values::Time(v) => v.len(),
        }
    }

    fn as_param(&self) -> &(dyn ToSql + Sync) {
        match self {
            Values::Text(v) => v,
            Values::Int(v) => v,
            Values::Float(v) => v,
            Values::Bool(v) => v,
            Values::Time(v) => v,
        }
    }
}

/// The derived columns' values of a part of the keys, one typed array per
/// column of `specs`, filled a row at a time ([`Columns::row`]).
struct Columns<'a> {
    values: Vec<Values<'a>>,
    specs: &'static [(&'static str, Sql)],
}

impl<'a> Columns<'a> {
    fn new(specs: &'static [(&'static str, Sql)], capacity: usize) -> Columns<'a> {
        Columns {
            values: specs.iter().map(|(_, sql)| sql.values(capacity)).collect(),
            specs,
        }
    }

    /// Appends one row: `write` must fill every column, in order.
    fn row(&mut self, write: impl FnOnce(&mut Row<'a, '_>)) {
        let mut row = Row {
            columns: &mut self.values,
            specs: self.specs,
            next: 0,
        };
        write(&mut row);
        debug_assert_eq!(row.next, self.specs.len(), "a column left out");
    }
}

/// Where [`TradingRow::write`] appends one row's derived values: each call
/// fills the next column, whose [`Sql`] type must match the call.
pub struct Row<'a, 'c> {
    columns: &'c mut [Values<'a>],
    specs: &'static [(&'static str, Sql)],
    next: usize,
}

impl<'a> Row<'a, '_> {
    fn column(&mut self, expected: &[Sql]) -> &mut Values<'a> {
        let (name, sql) = self.specs[self.next];
        assert!(
            expected.contains(&sql),
            "column {name} is {sql:?}, written as {expected:?}"
        );
        self.next += 1;
        &mut self.columns[self.next - 1]
    }

    fn push_text(&mut self, expected: &[Sql], value: Option<Cow<'a, str>>) {
        match self.column(expected) {
            Values::Text(v) => v.push(value),
            _ => unreachable!("a text column holds text values"),
        }
    }

    pub fn text(&mut self, value: Option<&'a str>) {
        self.push_text(&[Sql::Text], value.map(Cow::Borrowed));
    }

    /// An exact decimal of nano-units.
    pub fn dec(&mut self, value: Option<i128>) {
        self.push_text(&[Sql::Numeric], value.map(|n| Cow::Owned(nano_decimal(n))));
    }

    /// A `text[]` value.
    pub fn text_array<'s>(&mut self, items: impl IntoIterator<Item = &'s str>) {
        self.push_text(&[Sql::TextArray], Some(Cow::Owned(array_literal(items))));
    }

    pub fn int(&mut self, value: Option<i64>) {
        match self.column(&[Sql::BigInt, Sql::Integer]) {
            Values::Int(v) => v.push(value),
            _ => unreachable!("an integer column holds integers"),
        }
    }

    /// A double; NaN and infinities are stored as null.
    pub fn float(&mut self, value: Option<f64>) {
        match self.column(&[Sql::Double]) {
            Values::Float(v) => v.push(value.filter(|f| f.is_finite())),
            _ => unreachable!("a double column holds doubles"),
        }
    }

    pub fn bool(&mut self, value: Option<bool>) {
        match self.column(&[Sql::Boolean]) {
            Values::Bool(v) => v.push(value),
            _ => unreachable!("a boolean column holds booleans"),
        }
    }

    /// A time in microseconds since the Unix epoch.
    pub fn time(&mut self, us: Option<i64>) {
        match self.column(&[Sql::Time]) {
            Values::Time(v) => v.push(us.map(PgMicros)),
            _ => unreachable!("a time column holds times"),
        }
    }
}

/// Strings as a PostgreSQL array literal (`{"a","b"}`).
fn array_literal<'s>(items: impl IntoIterator<Item = &'s str>) -> String {
    let mut out = String::from("{");
    for (i, item) in items.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push('"');
        for c in item.chars() {
            if c == '"' || c == '\\' {
                out.push('\\');
            }
            out.push(c);
        }
        out.push('"');
    }
    out.push('}');
    out
}

fn bucket_parts(key: &BucketKey) -> (&str, Option<(&'static str, i64)>) {
    (&key.0, Some((key.1.name(), key.2)))
}

impl TradingRow for OrderState {
    type Key = String;
    const TABLE: &'static str = "order_analytics";
    const KEY: &'static [&'static str] = &["order_id"];
    const COLUMNS: &'static [(&'static str, Sql)] = &[
        ("symbol", Sql::Text),
        ("side", Sql::Text),
        ("strategy_id", Sql::Text),
        ("user_id", Sql::Text),
        ("status", Sql::Text),
        ("quantity", Sql::Numeric),
        ("price", Sql::Numeric),
        ("filled_quantity", Sql::Numeric),
        ("fills", Sql::BigInt),
        ("avg_fill_price", Sql::Numeric),
        ("commission", Sql::Numeric),
        ("pnl", Sql::Numeric),
        ("is_maker", Sql::Boolean),
        ("placed_at", Sql::Time),
        ("closed_at", Sql::Time),
        ("latency_ms", Sql::Double),
        ("first_seen", Sql::Time),
    ];
    const ON_UPDATE: &'static str = ", updated_at = now()";

    fn key_parts(key: &String) -> (&str, Option<(&'static str, i64)>) {
        (key, None)
    }

    fn write<'a>(&'a self, _key: &'a String, row: &mut Row<'a, '_>) {
        let attrs = self.attrs.as_ref().map(|(_, a)| a);
        let placed = self.placed;
        row.text(attrs.and_then(|a| a.symbol.as_deref()));
        row.text(attrs.and_then(|a| a.side.as_deref()));
        row.text(attrs.and_then(|a| a.strategy_id.as_deref()));
        row.text(attrs.and_then(|a| a.user_id.as_deref()));
        row.text(Some(self.status()));
        row.dec(placed.and_then(|(_, q, _)| q));
        row.dec(placed.and_then(|(_, _, p)| p));
        row.dec(Some(self.filled_qty));
        row.int(Some(self.fills));
        // Exact to 9 decimals: notional and quantity are both nano-units.
        row.dec((self.filled_qty != 0).then(|| self.notional * 1_000_000_000 / self.filled_qty));
        row.dec(Some(self.commission));
        row.dec(Some(self.pnl));
        row.bool(self.maker.map(|(_, m)| m));
        row.time(placed.map(|(t, _, _)| t));
        row.time(self.closed_at());
        row.float(self.latency_ms());
        row.time(self.attrs.as_ref().map(|(t, _)| *t));
    }
}

impl TradingRow for StrategyPerf {
    type Key = BucketKey;
    const TABLE: &'static str = "strategy_performance";
    const KEY: &'static [&'static str] = &["strategy_id", "interval", "bucket_start"];
    const COLUMNS: &'static [(&'static str, Sql)] = &[
        ("trades", Sql::BigInt),
        ("winning_trades", Sql::BigInt),
        ("losing_trades", Sql::BigInt),
        ("total_pnl", Sql::Numeric),
        ("gross_profit", Sql::Numeric),
        ("gross_loss", Sql::Numeric),
        ("win_rate", Sql::Double),
        ("profit_factor", Sql::Double),
        ("largest_win", Sql::Numeric),
        ("largest_loss", Sql::Numeric),
        ("avg_latency_ms", Sql::Double),
    ];

    fn key_parts(key: &BucketKey) -> (&str, Option<(&'static str, i64)>) {
        bucket_parts(key)
    }

    fn write<'a>(&'a self, _key: &'a BucketKey, row: &mut Row<'a, '_>) {
        row.int(Some(self.trades));
        row.int(Some(self.wins));
        row.int(Some(self.losses));
        row.dec(Some(self.pnl));
        row.dec(Some(self.gross_profit));
        row.dec(Some(self.gross_loss));
        row.float(Some(self.win_rate()));
        row.float(self.profit_factor());
        row.dec(self.largest_win);
        row.dec(self.largest_loss);
        row.float(self.avg_latency_ms());
    }
}

impl TradingRow for Ohlcv {
    type Key = BucketKey;
    const TABLE: &'static str = "market_analytics";
    const KEY: &'static [&'static str] = &["symbol", "interval", "bucket_start"];
    const COLUMNS: &'static [(&'static str, Sql)] = &[
        ("open", Sql::Numeric),
        ("high", Sql::Numeric),
        ("low", Sql::Numeric),
        ("close", Sql::Numeric),
        ("volume", Sql::Numeric),
        ("trades_count", Sql::BigInt),
        ("price_points", Sql::BigInt),
    ];

    fn key_parts(key: &BucketKey) -> (&str, Option<(&'static str, i64)>) {
        bucket_parts(key)
    }

    fn write<'a>(&'a self, _key: &'a BucketKey, row: &mut Row<'a, '_>) {
        row.dec(self.open.map(|(_, p)| p));
        row.dec(self.high);
        row.dec(self.low);
        row.dec(self.close.map(|(_, p)| p));
        row.dec(Some(self.volume));
        row.int(Some(self.trades));
        row.int(Some(self.points));
    }
}

impl TradingRow for SessionState {
    type Key = String;
    const TABLE: &'static str = "user_behavior";
    const KEY: &'static [&'static str] = &["session_id"];
    const COLUMNS: &'static [(&'static str, Sql)] = &[
        ("user_id", Sql::Text),
        ("session_start", Sql::Time),
        ("last_event", Sql::Time),
        ("duration_seconds", Sql::Double),
        ("page_views", Sql::BigInt),
        ("events", Sql::BigInt),
        ("distinct_event_types", Sql::Integer),
        ("event_types", Sql::TextArray),
    ];

    fn key_parts(key: &String) -> (&str, Option<(&'static str, i64)>) {
        (key, None)
    }

    fn write<'a>(&'a self, _key: &'a String, row: &mut Row<'a, '_>) {
        let (start, end) = (self.start.unwrap_or(0), self.end.unwrap_or(0));
        row.text(self.user_id.as_deref());
        row.time(Some(start));
        row.time(Some(end));
        row.float(Some((end - start) as f64 / 1e6));
        row.int(Some(self.page_views));
        row.int(Some(self.events));
        row.int(Some(self.event_types.len() as i64));
        row.text_array(self.event_types.iter().map(String::as_str));
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

/// The keys as typed arrays (not JSON), in order: the ids, and for bucket
/// keys the intervals and the buckets' starts (unused otherwise).
fn key_arrays<'k, S: TradingRow + 'k>(
    keys: impl IntoIterator<Item = &'k S::Key>,
) -> (Vec<&'k str>, Vec<&'static str>, Vec<i64>) {
    let mut ids = Vec::new();
    let mut intervals = Vec::new();
    let mut starts = Vec::new();
    for key in keys {
        let (id, bucket) = S::key_parts(key);
        let (interval, start) = bucket.unwrap_or(("", 0));
        ids.push(id);
        intervals.push(interval);
        starts.push(start);
    }
    (ids, intervals, starts)
}

/// [`merge_table`] for one part of the keys, under its lock: `merged`
/// holds the part's contributions and becomes the merged states.
async fn merge_part<S: TradingRow>(
    tx: &Transaction<'_>,
    keys: &[S::Key],
    mut merged: Vec<S>,
) -> Result<(), SinkError> {
    let table = S::TABLE;
    let (ids, intervals, starts) = key_arrays::<S>(keys);
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
    let mut stored = vec![false; keys.len()];
    for row in rows {
        let ord: i64 = row.get(0);
        let Some(i) = usize::try_from(ord - 1).ok().filter(|i| *i < keys.len()) else {
            continue;
        };
        stored[i] = true;
        let slot = &mut merged[i];
        // A state that cannot be decoded is replaced by the batch's (and
        // logged): refusing the batch would stall ingestion forever.
        match from_bytes::<S>(row.get::<_, &[u8]>(1)) {
            Some(mut state) => {
                state.plus_equals(slot);
                *slot = state;
            }
            None => tracing::error!(table, "undecodable trading state replaced"),
        }
    }
    // Rows the read did not find are new: a plain INSERT, which costs
    // PostgreSQL about a third less than an upsert's speculative insertion
    // (nobody else can have written them since: every writer holds the
    // table's merge lock). The others are updated.
    let (new, old): (Vec<_>, Vec<_>) = keys
        .iter()
        .zip(&merged)
        .zip(stored)
        .partition(|(_, stored)| !*stored);
    let new: Vec<(&S::Key, &S)> = new.into_iter().map(|(row, _)| row).collect();
    let old: Vec<(&S::Key, &S)> = old.into_iter().map(|(row, _)| row).collect();
    write_rows(tx, new, false).await?;
    write_rows(tx, old, true).await?;
    Ok(())
}

/// Writes `rows` (their keys and merged states) into `S::TABLE`: inserts
/// them, or when `stored`, overwrites the stored rows of their keys.
async fn write_rows<S: TradingRow>(
    tx: &Transaction<'_>,
    rows: Vec<(&S::Key, &S)>,
    stored: bool,
) -> Result<(), SinkError> {
    if rows.is_empty() {
        return Ok(());
    }
    let table = S::TABLE;
    let (ids, intervals, starts) = key_arrays::<S>(rows.iter().map(|(k, _)| *k));
    // The rows as one typed array per column: the key's, the derived
    // columns' (see [`Sql`]), the state as bytea.
    let mut columns = Columns::new(S::COLUMNS, rows.len());
    let mut states: Vec<Vec<u8>> = Vec::with_capacity(rows.len());
    for (k, merged) in &rows {
        columns.row(|row| merged.write(k, row));
        states.push(to_bytes(*merged));
    }
    // unnest's arguments: (parameter, its array type, what the SELECT
    // makes of its column `u.aN`).
    let mut args: Vec<(&(dyn ToSql + Sync), &str, String)> = vec![(&ids, "text[]", "u.a0".into())];
    if S::KEY.len() == 3 {
        args.push((&intervals, "text[]", "u.a1".into()));
        args.push((&starts, "bigint[]", "to_timestamp(u.a2)".into()));
    }
    for (column, (_, sql)) in columns.values.iter().zip(S::COLUMNS) {
        let n = args.len();
        let (array_type, selected) = sql.param(&format!("u.a{n}"));
        args.push((column.as_param(), array_type, selected));
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
    let mut names: Vec<&str> = S::KEY.to_vec();
    names.extend(S::COLUMNS.iter().map(|(c, _)| *c));
    names.push("state");
    let list = names.join(", ");
    let on_conflict = if stored {
        let set = S::COLUMNS
            .iter()
            .map(|(c, _)| c)
            .chain(std::iter::once(&"state"))
            .map(|c| format!("{c} = EXCLUDED.{c}"))
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "ON CONFLICT ({}) DO UPDATE SET {set}{}",
            S::KEY.join(", "),
            S::ON_UPDATE
        )
    } else {
        String::new()
    };
    tx.execute(
        &format!(
            "INSERT INTO {table} ({list})
             SELECT {} FROM unnest({}) AS u({}) {on_conflict}",
            selected.join(", "),
            inputs.join(", "),
            aliases.join(", "),
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
    fn rows_write_every_column_once_with_its_type() {
        fn check<S: TradingRow + Default>(key: &S::Key) {
            let state = S::default();
            let mut columns = Columns::new(S::COLUMNS, 1);
            // A call whose type differs from the column's panics.
            columns.row(|row| {
                state.write(key, row);
                assert_eq!(row.next, S::COLUMNS.len(), "{}", S::TABLE);
            });
            assert!(columns.values.iter().all(|v| v.len() == 1), "{}", S::TABLE);
            let mut names: Vec<&str> = S::COLUMNS.iter().map(|(c, _)| *c).collect();
            names.sort_unstable();
            names.dedup();
            assert_eq!(names.len(), S::COLUMNS.len(), "{}", S::TABLE);
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
            array_literal(["a", "b\"c", "d\\e"]),
            r#"{"a","b\"c","d\\e"}"#
        );
        assert_eq!(array_literal([]), "{}");
    }

    #[test]
    #[should_panic(expected = "column trades is BigInt")]
    fn a_value_of_another_type_is_refused() {
        Columns::new(StrategyPerf::COLUMNS, 1).row(|row| row.dec(Some(1)));
    }
}
