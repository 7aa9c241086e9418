//! Rollups in `metric_aggregations`. Each sink commit appends its window
//! contributions to `metric_aggregation_deltas` ([`append`]: binary COPY,
//! no read, no lock) in the same transaction as the raw events they come
//! from; a compactor ([`compact`], run by [`run_compactor`]) folds pending
//! deltas into the rows and deletes them in one transaction (the long
//! intervals' rows at one turn in [`LONG_FOLD_TURNS`], see [`Folds`]).
//! Every reader ([`load`], [`series`], [`names`]) adds the pending deltas
//! in the same statement, so rollups always equal the aggregate of the
//! committed events (late ones included) and live state can be restored
//! from them, while a row of a long window is rewritten once per full
//! compaction instead of once per commit.
//!
//! The `sketch` column holds the whole mergeable state ([`Agg`], bincode);
//! `count`, `sum`, `avg`, `min`, `max` and the percentiles are derived from
//! it for SQL readers and the replaced service's clients. Those columns lag
//! the committed events by at most one compaction, and the long intervals'
//! by at most [`LONG_FOLD_TURNS`].

use std::borrow::Borrow;
use std::collections::BTreeMap;

use dataflows::event::{Event, EventSource};
use dataflows::windows::{
    contribute, finest, Agg, DimSet, DimensionGuard, Dims, Interval, Partials, WindowKey,
    WindowSpec,
};
use differential_dataflow::difference::Semigroup;
use futures::{pin_mut, TryStreamExt};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{GenericClient, Transaction};

use crate::encode::{PgMicros, RawJsonb};
use crate::partitions::{day_of, Partitions};
use crate::SinkError;

/// One stored rollup row, as read back.
#[derive(Clone, Debug)]
pub struct StoredWindow {
    pub key: WindowKey,
    pub agg: Agg,
}

fn key_arrays(keys: &[&WindowKey]) -> (Vec<String>, Vec<&'static str>, Vec<String>, Vec<i64>) {
    (
        keys.iter().map(|k| k.metric.to_string()).collect(),
        keys.iter().map(|k| k.interval.name()).collect(),
        keys.iter().map(|k| k.dims.to_json().to_string()).collect(),
        keys.iter().map(|k| k.start).collect(),
    )
}

fn row_key(row: &tokio_postgres::Row) -> Option<WindowKey> {
    let interval = Interval::parse(row.get::<_, &str>(1))?;
    let dims: serde_json::Value = serde_json::from_str(row.get::<_, &str>(2)).ok()?;
    Some(WindowKey {
        metric: row.get::<_, &str>(0).into(),
        interval,
        dims: Dims::from_json(&dims),
        start: row.get(3),
    })
}

/// Rows of `metric_name, interval, dimensions, start, sketch` as windows;
/// rows whose state cannot be read are skipped.
fn stored_windows(rows: &[tokio_postgres::Row]) -> Vec<StoredWindow> {
    rows.iter()
        .filter_map(|row| {
            let key = row_key(row)?;
            let agg = Agg::from_bytes(row.get::<_, Option<&[u8]>>(4)?)?;
            Some(StoredWindow { key, agg })
        })
        .collect()
}

/// Sums contributions per window, in key order.
fn sum_by_key<'a, K: Ord>(deltas: impl IntoIterator<Item = (K, &'a Agg)>) -> BTreeMap<K, Agg> {
    let mut merged: BTreeMap<K, Agg> = BTreeMap::new();
    for (key, agg) in deltas {
        merged.entry(key).or_default().plus_equals(agg);
    }
    merged
}

const DELTA_TYPES: &[Type] = &[Type::TEXT, Type::TEXT, Type::TEXT, Type::INT8, Type::BYTEA];

/// Appends `deltas` (summed per window) to `metric_aggregation_deltas`
/// with binary COPY, in the caller's transaction: the commit path neither
/// reads nor locks rollup rows. [`compact`] folds them in later.
///
/// `deltas` hold every configured interval's windows of the same panes;
/// only the finest interval's are stored. It divides every other one
/// (1m | 5m | 15m | 30m | 1h | 4h | 1d), so the others are sums of its
/// windows, which readers and the compactor form ([`derive`]): seven
/// times fewer rows to write with the default intervals.
pub async fn append(tx: &Transaction<'_>, deltas: &[(&WindowKey, &Agg)]) -> Result<(), SinkError> {
    let Some(finest) = finest(deltas.iter().map(|(k, _)| k.interval)) else {
        return Ok(());
    };
    let merged = sum_by_key(
        deltas
            .iter()
            .filter(|(k, _)| k.interval == finest)
            .map(|(k, a)| (*k, *a)),
    );
    copy_deltas(tx, &merged).await
}

/// Writes `deltas` to `metric_aggregation_deltas` with binary COPY.
async fn copy_deltas<K: Borrow<WindowKey> + Sync>(
    tx: &Transaction<'_>,
    deltas: &BTreeMap<K, Agg>,
) -> Result<(), SinkError> {
    let sink = tx
        .copy_in(
            "COPY metric_aggregation_deltas (metric_name, \"interval\", dimensions, bucket, sketch)
             FROM STDIN (FORMAT binary)",
        )
        .await?;
    let writer = BinaryCopyInWriter::new(sink, DELTA_TYPES);
    pin_mut!(writer);
    for (key, agg) in deltas {
        let key: &WindowKey = key.borrow();
        let dims = key.dims.to_json().to_string();
        let sketch = agg.to_bytes();
        let row: [&(dyn ToSql + Sync); 5] = [
            &&*key.metric,
            &key.interval.name(),
            &dims,
            &key.start,
            &sketch,
        ];
        writer.as_mut().write(&row).await?;
    }
    writer.finish().await?;
    Ok(())
}

/// `windows` summed into the windows of `intervals` that hold them (see
/// [`derive`]), those whose key `keep` accepts.
fn derive_sums<'a>(
    windows: impl IntoIterator<Item = (&'a WindowKey, &'a Agg)>,
    intervals: &[Interval],
    keep: impl Fn(&WindowKey) -> bool,
) -> BTreeMap<WindowKey, Agg> {
    let keep = &keep;
    sum_by_key(windows.into_iter().flat_map(|(key, agg)| {
        intervals
            .iter()
            .filter_map(|i| derive(key, *i))
            .filter(move |k| keep(k))
            .map(move |k| (k, agg))
    }))
}

/// The window of `interval` that holds the window `key`, when `interval`
/// is a multiple of the key's interval.
pub fn derive(key: &WindowKey, interval: Interval) -> Option<WindowKey> {
    (interval.seconds() % key.interval.seconds() == 0).then(|| WindowKey {
        metric: std::sync::Arc::clone(&key.metric),
        interval,
        dims: key.dims.clone(),
        start: interval.window_of(key.start),
    })
}

/// Windows at least this long are the compactor's long ones ([`Folds`]).
const LONG_WINDOW_SECONDS: i64 = 1_800;

/// One compaction turn in this many also folds into the long intervals
/// ([`Folds`]): once a minute with the default 10 s turns.
pub const LONG_FOLD_TURNS: u64 = 6;

/// How compaction turns split the configured intervals. A window of half
/// an hour or more stays open for many turns (and, once hours old, holds
/// the largest sketch), so folding every turn's deltas into every interval
/// rewrote the same long rows at each turn: the compactor was 43 % of
/// PostgreSQL's statement time at 8,400 events/s, and four of the seven
/// rows it rewrote per series were long ones (benchmarks/RESULTS.md). So
/// a short turn folds the finest deltas into the rows of the short
/// intervals only, and leaves their sums pending as deltas of the `carry`
/// interval's windows (the shortest long one): one delta per window and
/// turn, not one per commit.
/// A full turn, one in [`LONG_FOLD_TURNS`], folds every pending delta into
/// every interval.
///
/// The long intervals are exactly the multiples of `carry`, and the short
/// ones are not, so the readers' rule stays one rule ([`derive`]): a delta
/// counts in the windows of every interval that is a multiple of its own.
/// A finest delta counts everywhere; a carried one only in the long
/// intervals, whose rows do not hold it yet.
#[derive(Clone, Debug)]
pub struct Folds {
    all: Vec<Interval>,
    split: Option<Split>,
}

#[derive(Clone, Debug, PartialEq)]
struct Split {
    finest: Interval,
    short: Vec<Interval>,
    carry: Interval,
}

impl Folds {
    /// The split of `intervals`; none when no configured interval is long,
    /// or the finest one is.
    pub fn of(intervals: &[Interval]) -> Folds {
        let finest = finest(intervals.iter().copied());
        let carry = intervals
            .iter()
            .copied()
            .filter(|i| i.seconds() >= LONG_WINDOW_SECONDS)
            .min_by_key(|i| i.seconds());
        let split = match (finest, carry) {
            (Some(finest), Some(carry))
                if carry != finest && carry.seconds() % finest.seconds() == 0 =>
            {
                Some(Split {
                    finest,
                    short: intervals
                        .iter()
                        .copied()
                        .filter(|i| i.seconds() % carry.seconds() != 0)
                        .collect(),
                    carry,
                })
            }
            _ => None,
        };
        Folds {
            all: intervals.to_vec(),
            split,
        }
    }
}

/// Folds at most `limit` pending deltas into `metric_aggregations`, in one
/// transaction that deletes what it folds: each delta counts exactly once,
/// before or after, for every reader. A `full` turn takes any deltas and
/// folds them into every interval; a short one (when `folds` has a split)
/// takes finest deltas, folds them into the short intervals and writes
/// their sums back as deltas of the carry interval ([`Folds`]). Returns
/// how many deltas were taken. The deltas are read, and the rows
/// rewritten one interval at a time, in parts of at most `fold_part_rows`
/// ([`FOLD_PART_ROWS`] in the service).
pub async fn compact(
    client: &mut tokio_postgres::Client,
    partitions: &Partitions,
    folds: &Folds,
    full: bool,
    limit: i64,
    fold_part_rows: usize,
) -> Result<usize, SinkError> {
    let tx = client.transaction().await?;
    crate::lock_merges(&tx, "metric_aggregations").await?;
    let split = folds.split.clone().filter(|_| !full);
    // A short turn takes the finest deltas only; a full one any.
    let take: Option<&str> = split.as_ref().map(|s| s.finest.name());
    let Taken {
        deltas,
        rows: taken,
        unreadable,
    } = take_deltas(&tx, limit, take, fold_part_rows).await?;
    if taken == 0 {
        return Ok(0);
    }
    if unreadable > 0 {
        tracing::error!(unreadable, "rollup deltas that cannot be decoded; dropped");
    }
    let deltas = std::sync::Arc::new(deltas);
    let into = split
        .as_ref()
        .map_or_else(|| folds.all.clone(), |s| s.short.clone());
    // One interval's sums at a time: all of them at once held seven
    // derived copies of the turn's windows beside the deltas.
    for interval in into {
        let deltas = std::sync::Arc::clone(&deltas);
        let merged = off_runtime(move || derive_sums(&*deltas, &[interval], |_| true)).await;
        fold(&tx, partitions, merged, fold_part_rows).await?;
    }
    if let Some(carry) = split.map(|s| s.carry) {
        let carried = off_runtime(move || derive_sums(&*deltas, &[carry], |_| true)).await;
        if !carried.is_empty() {
            copy_deltas(&tx, &carried).await?;
        }
    }
    tx.commit().await?;
    Ok(taken)
}

/// The deltas one compaction turn took, summed per window.
struct Taken {
    deltas: BTreeMap<WindowKey, Agg>,
    /// Rows deleted from `metric_aggregation_deltas`.
    rows: usize,
    /// Rows among them whose state could not be decoded.
    unreadable: usize,
}

/// Deletes at most `limit` pending deltas (of interval `take`, or any) and
/// sums them per window as PostgreSQL returns them, `part` rows at a time
/// (decoded on the blocking threads): the rows of a whole turn (200,000 in
/// the service), their decoded windows and every interval's sums were the
/// process's largest transient allocation at 20,000 events/s
/// (benchmarks/RESULTS.md).
async fn take_deltas(
    tx: &Transaction<'_>,
    limit: i64,
    take: Option<&str>,
    part: usize,
) -> Result<Taken, SinkError> {
    let params: [&(dyn ToSql + Sync); 2] = [&limit, &take];
    let stream = tx
        .query_raw(
            "DELETE FROM metric_aggregation_deltas
             WHERE ctid = ANY(ARRAY(SELECT ctid FROM metric_aggregation_deltas
                                    WHERE $2::text IS NULL OR \"interval\" = $2 LIMIT $1))
             RETURNING metric_name, \"interval\", dimensions, bucket, sketch",
            params,
        )
        .await?;
    let stream = stream.try_chunks(part.max(1));
    pin_mut!(stream);
    let mut taken = Taken {
        deltas: BTreeMap::new(),
        rows: 0,
        unreadable: 0,
    };
    while let Some(rows) = stream.try_next().await.map_err(|e| e.1)? {
        taken = off_runtime(move || {
            let mut taken = taken;
            let windows = stored_windows(&rows);
            taken.rows += rows.len();
            taken.unreadable += rows.len() - windows.len();
            for w in windows {
                taken.deltas.entry(w.key).or_default().plus_equals(&w.agg);
            }
            taken
        })
        .await;
    }
    Ok(taken)
}

/// Runs `f` on tokio's blocking threads. A compaction's CPU work (decoding,
/// merging and summarising up to hundreds of thousands of sketches) takes
/// hundreds of milliseconds; on the runtime's two threads it held up every
/// HTTP request and the sink writer meanwhile (benchmarks/RESULTS.md,
/// "Live at half the sustained rate"). A panic in `f` is resumed here.
async fn off_runtime<T, F>(f: F) -> T
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(value) => value,
        Err(e) => std::panic::resume_unwind(
            e.try_into_panic()
                .unwrap_or_else(|e| Box::new(format!("compaction task: {e}"))),
        ),
    }
}

/// Adds `merged` to the stored rows, writing the derived columns, in
/// parts of at most `part` keys: a part's rows that exist are deleted and
/// their state returned (one join), then each of its merged rows is written
/// with binary COPY. The parts' keys are disjoint. The caller holds the merge lock,
/// and only compactions write rollup rows, so nothing else changes them
/// meanwhile; readers see the transaction whole or not at all.
async fn fold(
    tx: &Transaction<'_>,
    partitions: &Partitions,
    merged: BTreeMap<WindowKey, Agg>,
    part: usize,
) -> Result<(), SinkError> {
    partitions
        .ensure(
            tx.client(),
            "metric_aggregations",
            merged.keys().map(|k| day_of(k.start * 1_000_000)),
        )
        .await?;
    // Not the default merge join, which sorts both sides on the jsonb key
    // (spilling to disk) in every parallel worker: index probes, or a hash
    // join in memory (auto_explain showed about 70 µs a row the default way).
    tx.batch_execute(
        "SET LOCAL work_mem = '256MB'; SET LOCAL enable_mergejoin = off;
         SET LOCAL max_parallel_workers_per_gather = 0",
    )
    .await?;
    let parts = off_runtime(move || in_parts(merged, part)).await;
    for merged in parts {
        fold_part(tx, merged).await?;
    }
    Ok(())
}

/// `map` in consecutive parts of at most `part` keys (at least one).
fn in_parts<K: Ord, V>(map: BTreeMap<K, V>, part: usize) -> Vec<BTreeMap<K, V>> {
    let part = part.max(1);
    let mut parts = Vec::with_capacity(map.len().div_ceil(part));
    let mut current = BTreeMap::new();
    for (k, v) in map {
        current.insert(k, v);
        if current.len() == part {
            parts.push(std::mem::take(&mut current));
        }
    }
    if !current.is_empty() {
        parts.push(current);
    }
    parts
}

/// [`fold`] for one part of the rows.
async fn fold_part(
    tx: &Transaction<'_>,
    merged: BTreeMap<WindowKey, Agg>,
) -> Result<(), SinkError> {
    let (merged, (names, intervals, dims, starts)) = off_runtime(move || {
        let arrays = key_arrays(&merged.keys().collect::<Vec<_>>());
        (merged, arrays)
    })
    .await;
    let existing = tx
        .query(
            "DELETE FROM metric_aggregations m
             USING unnest($1::text[], $2::text[], $3::text[], $4::bigint[]) AS u(n, i, d, b)
             WHERE m.metric_name = u.n AND m.\"interval\" = u.i
               AND m.dimensions = u.d::jsonb AND m.time_bucket = to_timestamp(u.b)
             RETURNING m.metric_name, m.\"interval\", m.dimensions::text,
                       extract(epoch FROM m.time_bucket)::bigint, m.sketch",
            &[&names, &intervals, &dims, &starts],
        )
        .await?;
    // The rows reuse the dimensions' JSON written for the DELETE above
    // (`key_arrays` lists the keys in `merged`'s order, which the merge of
    // stored states below keeps: it adds no key).
    let rows = off_runtime(move || {
        let mut merged = merged;
        for row in &existing {
            let Some(key) = row_key(row) else { continue };
            if let (Some(agg), Some(Some(old))) = (
                merged.get_mut(&key),
                row.get::<_, Option<&[u8]>>(4).map(Agg::from_bytes),
            ) {
                agg.plus_equals(&old);
            }
        }
        merged
            .iter()
            .zip(dims)
            .map(|((key, agg), dims)| RollupRow::of(key, dims, agg))
            .collect::<Vec<_>>()
    })
    .await;
    copy_rows(tx, &rows).await
}

/// A rollup row as it is written: its key's columns and [`Columns`].
struct RollupRow {
    metric: std::sync::Arc<str>,
    interval: &'static str,
    dims: String,
    start: i64,
    columns: Columns,
}

impl RollupRow {
    /// The row of `key`, whose dimensions' JSON text is `dims`.
    fn of(key: &WindowKey, dims: String, agg: &Agg) -> RollupRow {
        RollupRow {
            metric: std::sync::Arc::clone(&key.metric),
            interval: key.interval.name(),
            dims,
            start: key.start,
            columns: Columns::of(agg),
        }
    }
}

/// The readable columns of a rollup row, derived from its state.
struct Columns {
    count: i64,
    sum: Option<f64>,
    avg: Option<f64>,
    min: Option<f64>,
    max: Option<f64>,
    quantiles: [Option<f64>; 4],
    sketch: Vec<u8>,
}

impl Columns {
    fn of(agg: &Agg) -> Columns {
        Columns {
            count: agg.count,
            sum: agg.sum_value(),
            avg: agg.avg(),
            min: agg.min_value(),
            max: agg.max_value(),
            quantiles: [0.5, 0.9, 0.95, 0.99].map(|q| agg.quantile(q)),
            sketch: agg.to_bytes(),
        }
    }
}

const ROW_TYPES: &[Type] = &[
    Type::TEXT,
    Type::TEXT,
    Type::JSONB,
    Type::TIMESTAMPTZ,
    Type::INT8,
    Type::FLOAT8,
    Type::FLOAT8,
    Type::FLOAT8,
    Type::FLOAT8,
    Type::FLOAT8,
    Type::FLOAT8,
    Type::FLOAT8,
    Type::FLOAT8,
    Type::BYTEA,
];

async fn copy_rows(tx: &Transaction<'_>, rows: &[RollupRow]) -> Result<(), SinkError> {
    let sink = tx
        .copy_in(
            "COPY metric_aggregations (metric_name, \"interval\", dimensions, time_bucket, count,
                sum, avg, min, max, p50, p90, p95, p99, sketch) FROM STDIN (FORMAT binary)",
        )
        .await?;
    let writer = BinaryCopyInWriter::new(sink, ROW_TYPES);
    pin_mut!(writer);
    for r in rows {
        let c = &r.columns;
        let [q50, q90, q95, q99] = c.quantiles;
        let row: [&(dyn ToSql + Sync); 14] = [
            &&*r.metric,
            &r.interval,
            &RawJsonb(&r.dims),
            &PgMicros(r.start * 1_000_000),
            &c.count,
            &c.sum,
            &c.avg,
            &c.min,
            &c.max,
            &q50,
            &q90,
            &q95,
            &q99,
            &c.sketch,
        ];
        writer.as_mut().write(&row).await?;
    }
    writer.finish().await?;
    Ok(())
}

/// Rows and pending deltas as windows of `interval` starting in
/// `[from, to)`, one per key (summed).
fn summed(
    rows: &[tokio_postgres::Row],
    interval: Interval,
    from: i64,
    to: i64,
) -> Vec<StoredWindow> {
    sum_windows(stored_windows(rows), interval, from, to)
}

/// [`summed`] of decoded windows.
fn sum_windows(
    stored: Vec<StoredWindow>,
    interval: Interval,
    from: i64,
    to: i64,
) -> Vec<StoredWindow> {
    derive_sums(stored.iter().map(|w| (&w.key, &w.agg)), &[interval], |k| {
        k.start >= from && k.start < to
    })
    .into_iter()
    .map(|(key, agg)| StoredWindow { key, agg })
    .collect()
}

/// Stored windows of `interval` starting at or after `from_start` (a
/// window start), with their pending deltas (one statement, so one
/// snapshot: a compaction is seen whole or not at all).
pub async fn load<C: GenericClient>(
    client: &C,
    interval: Interval,
    from_start: i64,
) -> Result<Vec<StoredWindow>, SinkError> {
    let rows = client
        .query(
            "SELECT metric_name, \"interval\", dimensions::text,
                    extract(epoch FROM time_bucket)::bigint, sketch
             FROM metric_aggregations
             WHERE \"interval\" = $1 AND time_bucket >= to_timestamp($2::bigint)
             UNION ALL
             SELECT metric_name, \"interval\", dimensions, bucket, sketch
             FROM metric_aggregation_deltas
             WHERE bucket >= $2",
            &[&interval.name(), &from_start],
        )
        .await?;
    Ok(summed(&rows, interval, from_start, i64::MAX))
}

/// Stored windows of one metric and interval with starts in `[from, to)`,
/// of the row whose dimensions are exactly `filter` (the total when it is
/// empty), pending deltas included: rollups exist for the configured
/// dimension sets only.
pub async fn series<C: GenericClient>(
    client: &C,
    metric: &str,
    interval: Interval,
    filter: &Dims,
    from: i64,
    to: i64,
) -> Result<Vec<StoredWindow>, SinkError> {
    let rows = client
        .query(
            "SELECT metric_name, \"interval\", dimensions::text,
                    extract(epoch FROM time_bucket)::bigint, sketch
             FROM metric_aggregations
             WHERE metric_name = $1 AND \"interval\" = $2 AND dimensions = $3::text::jsonb
               AND time_bucket >= to_timestamp($4::bigint) AND time_bucket < to_timestamp($5::bigint)
             UNION ALL
             SELECT metric_name, \"interval\", dimensions, bucket, sketch
             FROM metric_aggregation_deltas
             WHERE metric_name = $1 AND dimensions = $3
               AND bucket >= $4 AND bucket < $5 + $6",
            &[
                &metric,
                &interval.name(),
                &filter.to_json().to_string(),
                &from,
                &to,
                &interval.seconds(),
            ],
        )
        .await?;
    Ok(summed(&rows, interval, from, to))
}

/// Windows of one metric and interval with starts in `[from, to)` for a
/// dimension row that is not kept as rollups, computed from the stored raw
/// events by the dataflow's own contribution code: exact, at the cost of
/// reading every event of the metric's type in the range.
pub async fn raw_series<C: GenericClient>(
    client: &C,
    spec: &WindowSpec,
    metric: &str,
    interval: Interval,
    filter: &Dims,
    from: i64,
    to: i64,
) -> Result<BTreeMap<i64, Agg>, SinkError> {
    let mut out = BTreeMap::new();
    let Some(event_type) = dataflows::panes::event_type_of(metric, spec) else {
        return Ok(out);
    };
    if from >= to {
        return Ok(out);
    }
    let len = interval.seconds();
    let until = interval.window_of(to - 1) + len;
    let rows = client
        .query(
            "SELECT properties::text,
                    (extract(epoch FROM \"timestamp\") * 1000000)::bigint
             FROM events
             WHERE event_type = $1
               AND \"timestamp\" >= to_timestamp($2) AND \"timestamp\" < to_timestamp($3)",
            &[&event_type, &(from as f64), &(until as f64)],
        )
        .await?;
    let one = WindowSpec {
        intervals: vec![(interval, u64::MAX)],
        numeric: spec.numeric.clone(),
        max_dimension_values: usize::MAX,
        dimension_sets: vec![DimSet::of(filter)],
        tick_ms: spec.tick_ms,
    };
    let mut guard = DimensionGuard::default();
    let mut partials = Partials::default();
    for row in rows {
        let event = Event {
            id: uuid::Uuid::nil(),
            event_type: event_type.to_string(),
            user_id: None,
            session_id: None,
            properties: row.get(0),
            timestamp_us: row.get(1),
            created_at_us: 0,
            source: EventSource::Rest,
            parsed: Default::default(),
        };
        contribute(&event, &one, &mut guard, &mut partials);
    }
    for (key, agg) in partials.drain(&one) {
        if &*key.metric == metric && key.dims == *filter && key.start >= from && key.start < to {
            out.insert(key.start, agg);
        }
    }
    Ok(out)
}

pub async fn names<C: GenericClient>(client: &C) -> Result<Vec<String>, SinkError> {
    Ok(client
        .query(
            "SELECT metric_name FROM metric_aggregations
             UNION SELECT metric_name FROM metric_aggregation_deltas ORDER BY 1",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// Most deltas folded in one compaction transaction.
const COMPACTION_ROWS: i64 = 200_000;

/// Rows rewritten per statement pair of a compaction (the DELETE of the
/// stored rows, their COPY back). One pair for a whole transaction's rows
/// sent its keys as one Bind message: at 20,000 events/s with the service
/// behind, jemalloc's heap profile found that message (about 67 MB) and the
/// connection's write buffer grown to hold it (55 MB) among the largest
/// allocations of the process (benchmarks/RESULTS.md). In parts, both stay
/// near a part's size, for the same statements' work. The taken deltas are
/// decoded in parts of the same size.
pub const FOLD_PART_ROWS: usize = 20_000;

/// Runs a compaction turn every `every` until the process ends: each
/// folds the pending deltas (all of them, in transactions of at most
/// [`COMPACTION_ROWS`]) into the rows of `intervals`, the long ones at one
/// turn in [`LONG_FOLD_TURNS`], the first included ([`Folds`]). Every
/// process of a cluster runs one; the merge lock serialises them. A failed
/// compaction leaves its deltas pending (readers still count them) and is
/// retried at the next turn.
pub async fn run_compactor(
    pool: crate::Pool,
    partitions: std::sync::Arc<Partitions>,
    intervals: Vec<Interval>,
    every: std::time::Duration,
) {
    let folds = Folds::of(&intervals);
    let mut turns = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    turns.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for turn in 0u64.. {
        turns.tick().await;
        let full = turn % LONG_FOLD_TURNS == 0;
        let started = std::time::Instant::now();
        let mut folded = 0;
        let result = async {
            let mut client = pool.get().await?;
            loop {
                let n = compact(
                    &mut client,
                    &partitions,
                    &folds,
                    full,
                    COMPACTION_ROWS,
                    FOLD_PART_ROWS,
                )
                .await?;
                folded += n;
                if (n as i64) < COMPACTION_ROWS {
                    return Ok::<(), SinkError>(());
                }
            }
        }
        .await;
        if folded > 0 {
            crate::metrics::ROLLUP_DELTAS_FOLDED.inc_by(folded as u64);
            crate::metrics::ROLLUP_COMPACTION_SECONDS.observe(started.elapsed().as_secs_f64());
        }
        if let Err(e) = result {
            tracing::warn!(error = %e, folded, "rollup compaction failed; deltas stay pending");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_keep_every_key_once_in_order() {
        let map: BTreeMap<u32, u32> = (0..10).map(|k| (k, k * 2)).collect();
        let parts = in_parts(map.clone(), 4);
        assert_eq!(
            parts.iter().map(BTreeMap::len).collect::<Vec<_>>(),
            [4, 4, 2]
        );
        let joined: Vec<(u32, u32)> = parts.into_iter().flatten().collect();
        assert_eq!(joined, map.into_iter().collect::<Vec<_>>());
        assert_eq!(in_parts(BTreeMap::<u32, u32>::new(), 4).len(), 0);
        assert_eq!(in_parts((0..3).map(|k| (k, k)).collect(), 0).len(), 3);
    }

    fn window(interval: &str, start: i64, values: &[f64]) -> StoredWindow {
        let mut agg = Agg::default();
        for v in values {
            agg.plus_equals(&Agg::of_value(*v));
        }
        StoredWindow {
            key: WindowKey {
                metric: "order.filled.price".into(),
                interval: Interval::parse(interval).expect("interval"),
                dims: Dims::default(),
                start,
            },
            agg,
        }
    }

    #[test]
    fn derive_maps_a_window_into_the_multiples_of_its_interval() {
        let one = window("1m", 3_660, &[]).key;
        let hour = derive(&one, Interval::parse("1h").expect("1h")).expect("1h is 60 minutes");
        assert_eq!((hour.interval.name(), hour.start), ("1h", 3_600));
        let five = window("5m", 3_600, &[]).key;
        assert!(derive(&five, Interval::parse("1m").expect("1m")).is_none());
        assert_eq!(derive(&five, five.interval).expect("itself").start, 3_600);
    }

    fn intervals(names: &[&str]) -> Vec<Interval> {
        names
            .iter()
            .map(|n| Interval::parse(n).expect("interval"))
            .collect()
    }

    #[test]
    fn folds_split_the_intervals_at_the_shortest_long_one() {
        let all = intervals(&["1m", "5m", "15m", "30m", "1h", "4h", "1d"]);
        let split = Folds::of(&all).split.expect("a split");
        assert_eq!(
            split,
            Split {
                finest: all[0],
                short: intervals(&["1m", "5m", "15m"]),
                carry: all[3],
            }
        );
        // Without a 30m interval the hour carries; 15m is short.
        let split = Folds::of(&intervals(&["5m", "15m", "1h", "1d"]))
            .split
            .expect("a split");
        assert_eq!(
            (split.short, split.carry),
            (intervals(&["5m", "15m"]), intervals(&["1h"])[0])
        );
        // No long interval, or only long ones: every turn is full.
        assert!(Folds::of(&intervals(&["1m", "5m", "15m"])).split.is_none());
        assert!(Folds::of(&intervals(&["1h", "1d"])).split.is_none());
    }

    #[test]
    fn a_carried_delta_counts_in_the_long_intervals_only() {
        // A short turn folded panes of [3600, 5400) into the 15m rows and
        // left their sum as a 30m delta: the 15m rows hold it, the 30m, 1h
        // and 1d ones (none stored yet) do not. A 1m delta is pending.
        let sums = |interval: &str| {
            let mut stored = vec![
                window("30m", 3_600, &[1.0, 2.0]),
                window("1m", 3_660, &[4.0]),
            ];
            if interval == "15m" {
                // A reader reads the rows of the asked interval only.
                stored.extend([window("15m", 3_600, &[1.0]), window("15m", 4_500, &[2.0])]);
            }
            sum_windows(stored, intervals(&[interval])[0], 0, 86_400)
                .iter()
                .map(|w| (w.key.start, w.agg.count, w.agg.sum_value()))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            sums("15m"),
            vec![(3_600, 2, Some(5.0)), (4_500, 1, Some(2.0))]
        );
        assert_eq!(sums("30m"), vec![(3_600, 3, Some(7.0))]);
        assert_eq!(sums("1h"), vec![(3_600, 3, Some(7.0))]);
        assert_eq!(sums("1d"), vec![(0, 3, Some(7.0))]);
    }

    #[test]
    fn rows_and_pending_deltas_sum_per_window_of_the_asked_interval() {
        let five = Interval::parse("5m").expect("5m");
        let stored = vec![
            // The stored 5m row of [3600, 3900) and two pending 1m panes of it.
            window("5m", 3_600, &[1.0, 9.0]),
            window("1m", 3_600, &[0.5]),
            window("1m", 3_840, &[20.0]),
            // A pane of the next window, and one before the range.
            window("1m", 3_900, &[7.0]),
            window("1m", 3_000, &[3.0]),
            // A 15m delta cannot be split into 5m windows.
            window("15m", 3_600, &[11.0]),
        ];
        let got = sum_windows(stored, five, 3_600, 4_200);
        let starts: Vec<i64> = got.iter().map(|w| w.key.start).collect();
        assert_eq!(starts, vec![3_600, 3_900]);
        let first = &got[0].agg;
        assert_eq!((first.count, first.sum_value()), (4, Some(30.5)));
        assert_eq!(
            (first.min_value(), first.max_value()),
            (Some(0.5), Some(20.0))
        );
        assert_eq!(first.sketch.count(), 4);
        assert_eq!(got[1].agg.count, 1);
        assert!(got.iter().all(|w| w.key.interval == five));
    }
}
