//! Rollups in `metric_aggregations`: window contributions are merged into
//! the stored rows in the same transaction as the raw events they come
//! from, so that the rollups always equal the aggregate of the committed
//! events (late ones included) and live state can be restored from them.
//!
//! The `sketch` column holds the whole mergeable state ([`Agg`], bincode);
//! `count`, `sum`, `avg`, `min`, `max` and the percentiles are derived from
//! it for SQL readers and the replaced service's clients.

use std::collections::BTreeMap;

use dataflows::event::{Event, EventSource};
use dataflows::windows::{
    contribute, Agg, DimSet, DimensionGuard, Dims, Interval, Partials, WindowKey, WindowSpec,
};
use differential_dataflow::difference::Semigroup;
use tokio_postgres::{GenericClient, Transaction};

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

/// Merges `deltas` into the stored rows (locked `FOR UPDATE`, keys in a
/// fixed order so that concurrent writers cannot deadlock).
pub async fn merge(
    tx: &Transaction<'_>,
    partitions: &Partitions,
    deltas: &[(&WindowKey, &Agg)],
) -> Result<(), SinkError> {
    if deltas.is_empty() {
        return Ok(());
    }
    crate::lock_merges(tx, "metric_aggregations").await?;
    let mut merged: BTreeMap<&WindowKey, Agg> = BTreeMap::new();
    for (key, agg) in deltas {
        merged.entry(*key).or_default().plus_equals(agg);
    }
    partitions
        .ensure(
            tx.client(),
            "metric_aggregations",
            merged.keys().map(|k| day_of(k.start * 1_000_000)),
        )
        .await?;
    let keys: Vec<&WindowKey> = merged.keys().copied().collect();
    let (names, intervals, dims, starts) = key_arrays(&keys);
    let existing = tx
        .query(
            "SELECT m.metric_name, m.\"interval\", m.dimensions::text,
                    extract(epoch FROM m.time_bucket)::bigint, m.sketch
             FROM metric_aggregations m
             JOIN unnest($1::text[], $2::text[], $3::text[], $4::bigint[]) AS u(n, i, d, b)
               ON m.metric_name = u.n AND m.\"interval\" = u.i
              AND m.dimensions = u.d::jsonb AND m.time_bucket = to_timestamp(u.b)
             ORDER BY 1, 2, 3, 4
             FOR UPDATE OF m",
            &[&names, &intervals, &dims, &starts],
        )
        .await?;
    for row in &existing {
        let (Some(key), Some(bytes)) = (row_key(row), row.get::<_, Option<&[u8]>>(4)) else {
            continue;
        };
        if let (Some(agg), Some(stored)) = (merged.get_mut(&key), Agg::from_bytes(bytes)) {
            agg.plus_equals(&stored);
        }
    }
    let aggs: Vec<&Agg> = merged.values().collect();
    let counts: Vec<i64> = aggs.iter().map(|a| a.count).collect();
    let sums: Vec<Option<f64>> = aggs.iter().map(|a| a.sum_value()).collect();
    let avgs: Vec<Option<f64>> = aggs.iter().map(|a| a.avg()).collect();
    let mins: Vec<Option<f64>> = aggs.iter().map(|a| a.min_value()).collect();
    let maxs: Vec<Option<f64>> = aggs.iter().map(|a| a.max_value()).collect();
    let q = |p: f64| -> Vec<Option<f64>> { aggs.iter().map(|a| a.quantile(p)).collect() };
    let (p50, p90, p95, p99) = (q(0.5), q(0.9), q(0.95), q(0.99));
    let sketches: Vec<Vec<u8>> = aggs.iter().map(|a| a.to_bytes()).collect();
    tx.execute(
        "INSERT INTO metric_aggregations
            (metric_name, \"interval\", dimensions, time_bucket, count, sum, avg, min, max,
             p50, p90, p95, p99, sketch, updated_at)
         SELECT n, i, d::jsonb, to_timestamp(b), c, s, a, mi, ma, q50, q90, q95, q99, sk, now()
         FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::bigint[],
                     $6::float8[], $7::float8[], $8::float8[], $9::float8[],
                     $10::float8[], $11::float8[], $12::float8[], $13::float8[], $14::bytea[])
           AS u(n, i, d, b, c, s, a, mi, ma, q50, q90, q95, q99, sk)
         ON CONFLICT (metric_name, \"interval\", dimensions, time_bucket) DO UPDATE SET
            count = EXCLUDED.count, sum = EXCLUDED.sum, avg = EXCLUDED.avg,
            min = EXCLUDED.min, max = EXCLUDED.max, p50 = EXCLUDED.p50, p90 = EXCLUDED.p90,
            p95 = EXCLUDED.p95, p99 = EXCLUDED.p99, sketch = EXCLUDED.sketch,
            updated_at = EXCLUDED.updated_at",
        &[
            &names, &intervals, &dims, &starts, &counts, &sums, &avgs, &mins, &maxs, &p50, &p90,
            &p95, &p99, &sketches,
        ],
    )
    .await?;
    Ok(())
}

/// Stored windows of `interval` starting at or after `from_start`.
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
             WHERE \"interval\" = $1 AND time_bucket >= to_timestamp($2)",
            &[&interval.name(), &(from_start as f64)],
        )
        .await?;
    Ok(stored_windows(&rows))
}

/// Stored windows of one metric and interval with starts in `[from, to)`,
/// of the row whose dimensions are exactly `filter` (the total when it is
/// empty): rollups exist for the configured dimension sets only.
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
               AND time_bucket >= to_timestamp($4) AND time_bucket < to_timestamp($5)
             ORDER BY time_bucket",
            &[
                &metric,
                &interval.name(),
                &filter.to_json().to_string(),
                &(from as f64),
                &(to as f64),
            ],
        )
        .await?;
    Ok(stored_windows(&rows))
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
            "SELECT DISTINCT metric_name FROM metric_aggregations ORDER BY 1",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}
