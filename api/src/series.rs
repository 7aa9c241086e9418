//! `GET /api/v1/metrics` and `GET /api/v1/metrics/names`.
//!
//! A series is stitched per window: windows whose start is at or after the
//! live snapshot's coverage of the interval come from memory (and the
//! answer carries `as_of`); older ones come from `metric_aggregations`,
//! cached in Redis under a key made of every parameter that shapes the
//! historical part, for `query.cache_ttl`. Each window comes from exactly
//! one side, so nothing is counted twice and nothing is missed.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::Json;
use dataflows::event::format_us;
use dataflows::windows::{Agg, DimSet, Dims, Interval};
use differential_dataflow::difference::Semigroup;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::{IntoParams, ToSchema};

use crate::openapi::ErrorBody;
use crate::params::{Query, TimeRange};
use crate::{AppError, AppState};

const AGGREGATIONS: &[&str] = &[
    "count", "sum", "avg", "min", "max", "p50", "p90", "p95", "p99",
];

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SeriesParams {
    /// `events.count.<event_type>`, `<event_type>.<property>` (e.g.
    /// `order.filled.price`), or a derived metric (`trading.*`): see
    /// `/api/v1/metrics/names`.
    #[param(value_type = String)]
    metric_name: Option<String>,
    /// One of the configured intervals; default `1h`.
    #[param(value_type = Option<IntervalName>)]
    interval: Option<String>,
    /// What `value` holds; default `avg` (`count` for count-only metrics).
    #[param(value_type = Option<Aggregation>)]
    aggregation: Option<String>,
    /// Only windows of this symbol.
    symbol: Option<String>,
    /// Only windows of this side.
    side: Option<String>,
    /// Only windows of this strategy.
    strategy_id: Option<String>,
    /// Windows starting at or after it (inclusive); default `end_time` − 24 h.
    #[param(value_type = Option<chrono::DateTime<chrono::Utc>>)]
    start_time: Option<String>,
    /// Windows starting before it; default the next whole second.
    #[param(value_type = Option<chrono::DateTime<chrono::Utc>>)]
    end_time: Option<String>,
}

/// The window lengths (`analytics.dataflow.intervals` may keep fewer).
#[derive(Serialize, ToSchema)]
#[allow(dead_code)] // a schema only
pub enum IntervalName {
    #[serde(rename = "1m")]
    M1,
    #[serde(rename = "5m")]
    M5,
    #[serde(rename = "15m")]
    M15,
    #[serde(rename = "30m")]
    M30,
    #[serde(rename = "1h")]
    H1,
    #[serde(rename = "4h")]
    H4,
    #[serde(rename = "1d")]
    D1,
}

/// The aggregations a point's `value` can hold.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)] // a schema only: see `AGGREGATIONS`
pub enum Aggregation {
    Count,
    Sum,
    Avg,
    Min,
    Max,
    P50,
    P90,
    P95,
    P99,
}

/// One window. `value` is the requested aggregation; the others are all
/// given too. Percentiles are DDSketch estimates at rank floor(q·(n−1)),
/// clamped to the window's exact [min, max]. Derived ratios
/// (`trading.order_fill_rate`) carry `placed` and `filled` instead.
#[derive(ToSchema)]
#[allow(dead_code)] // a schema only: see `point`
pub struct Point {
    /// The window's start.
    timestamp: chrono::DateTime<chrono::Utc>,
    value: Option<f64>,
    /// The dimension filter the window matches (`symbol`, `side`,
    /// `strategy_id`).
    #[schema(value_type = std::collections::HashMap<String, String>)]
    dimensions: Value,
    #[schema(required = false)]
    count: Option<i64>,
    #[schema(required = false)]
    sum: Option<f64>,
    #[schema(required = false)]
    avg: Option<f64>,
    #[schema(required = false)]
    min: Option<f64>,
    #[schema(required = false)]
    max: Option<f64>,
    #[schema(required = false)]
    p50: Option<f64>,
    #[schema(required = false)]
    p90: Option<f64>,
    #[schema(required = false)]
    p95: Option<f64>,
    #[schema(required = false)]
    p99: Option<f64>,
    #[schema(required = false)]
    placed: Option<i64>,
    #[schema(required = false)]
    filled: Option<i64>,
}

/// A series.
#[derive(ToSchema)]
#[allow(dead_code)] // a schema only
pub struct SeriesResult {
    metric_name: String,
    interval: IntervalName,
    start_time: chrono::DateTime<chrono::Utc>,
    end_time: chrono::DateTime<chrono::Utc>,
    data_points: Vec<Point>,
    total_count: i64,
    /// The requested aggregation, or `ratio` for derived ratios.
    aggregation: String,
    /// `live` (live state, older windows from rollups) or `postgres`.
    source: String,
    /// The tick of the live windows, when any.
    #[schema(required = false)]
    as_of: Option<chrono::DateTime<chrono::Utc>>,
}

/// `GET /api/v1/metrics`.
#[derive(ToSchema)]
#[allow(dead_code)] // a schema only
pub struct Series {
    /// Whether the stored part came from Redis.
    cached: bool,
    result: SeriesResult,
}

/// `GET /api/v1/metrics/names`.
#[derive(ToSchema)]
#[allow(dead_code)] // a schema only
pub struct MetricNames {
    metric_names: Vec<String>,
    count: usize,
}

fn value_of(agg: &Agg, aggregation: &str) -> Option<f64> {
    match aggregation {
        "count" => Some(agg.count as f64),
        "sum" => agg.sum_value(),
        "avg" => agg.avg(),
        "min" => agg.min_value(),
        "max" => agg.max_value(),
        "p50" => agg.quantile(0.5),
        "p90" => agg.quantile(0.9),
        "p95" => agg.quantile(0.95),
        "p99" => agg.quantile(0.99),
        _ => None,
    }
}

fn point(start: i64, agg: &Agg, aggregation: &str, dims: &Value) -> Value {
    // Count-only metrics answer their count whatever was asked.
    let value = if agg.has_values() {
        value_of(agg, aggregation)
    } else {
        Some(agg.count as f64)
    };
    json!({
        "timestamp": format_us(start * 1_000_000),
        "value": value,
        "dimensions": dims,
        "count": agg.count,
        "sum": agg.sum_value(),
        "avg": agg.avg(),
        "min": agg.min_value(),
        "max": agg.max_value(),
        "p50": agg.quantile(0.5),
        "p90": agg.quantile(0.9),
        "p95": agg.quantile(0.95),
        "p99": agg.quantile(0.99),
    })
}

fn encode(series: &BTreeMap<i64, Agg>) -> Vec<u8> {
    let items: Vec<(i64, &Agg)> = series.iter().map(|(s, a)| (*s, a)).collect();
    bincode::serde::encode_to_vec(&items, bincode::config::standard()).unwrap_or_default()
}

fn decode(bytes: &[u8]) -> Option<BTreeMap<i64, Agg>> {
    let (items, _): (Vec<(i64, Agg)>, _) =
        bincode::serde::decode_from_slice(bytes, bincode::config::standard()).ok()?;
    Some(items.into_iter().collect())
}

/// Windows of the historical part, from Redis or PostgreSQL.
async fn history(
    state: &AppState,
    metric: &str,
    interval: Interval,
    filter: &Dims,
    from: i64,
    to: i64,
) -> Result<(BTreeMap<i64, Agg>, bool), AppError> {
    if from >= to {
        return Ok((BTreeMap::new(), false));
    }
    let key = format!(
        "analytics:metrics:v1:{metric}:{}:{}:{from}:{to}",
        interval.name(),
        filter.to_json()
    );
    if let Some(series) = state.cache.get(&key).await.and_then(|b| decode(&b)) {
        return Ok((series, true));
    }
    let client = state.pool.get().await.map_err(sink::SinkError::from)?;
    let rows = sink::rollups::series(&**client, metric, interval, filter, from, to).await?;
    let mut series: BTreeMap<i64, Agg> = BTreeMap::new();
    for row in rows {
        series
            .entry(row.key.start)
            .or_default()
            .plus_equals(&row.agg);
    }
    state.cache.set(&key, &encode(&series)).await;
    Ok((series, false))
}

#[utoipa::path(
    get,
    path = "/api/v1/metrics",
    tag = "metrics",
    params(SeriesParams),
    responses(
        (status = 200, description = "Per window: the live state when the window is inside its interval's horizon, `metric_aggregations` otherwise", body = Series),
        (status = 400, description = "A bad parameter, named in `details`", body = ErrorBody),
    )
)]
pub async fn series(
    State(state): State<AppState>,
    Query(params): Query<SeriesParams>,
) -> Result<Json<Value>, AppError> {
    let metric = params
        .metric_name
        .as_deref()
        .filter(|m| !m.is_empty())
        .ok_or_else(|| AppError::bad_param("metric_name", "is required"))?;
    let interval_name = params.interval.as_deref().unwrap_or("1h");
    let interval = Interval::parse(interval_name)
        .filter(|i| state.windows.intervals.iter().any(|(k, _)| k == i))
        .ok_or_else(|| {
            let known: Vec<&str> = state
                .windows
                .intervals
                .iter()
                .map(|(i, _)| i.name())
                .collect();
            AppError::bad_param(
                "interval",
                format!("{interval_name:?} is not one of {known:?}"),
            )
        })?;
    let aggregation = params.aggregation.as_deref().unwrap_or("avg");
    if !AGGREGATIONS.contains(&aggregation) {
        return Err(AppError::bad_param(
            "aggregation",
            format!("{aggregation:?} is not one of {AGGREGATIONS:?}"),
        ));
    }
    let (from_us, to_us) = TimeRange::of(&params.start_time, &params.end_time).resolve()?;
    let len = interval.seconds();
    let first = from_us.div_euclid(1_000_000).div_euclid(len) * len;
    let end = to_us.div_euclid(1_000_000) + i64::from(to_us.rem_euclid(1_000_000) != 0);
    let windows = (end - first + len - 1) / len;
    if windows > state.settings.max_points {
        return Err(AppError::bad_param(
            "end_time",
            format!(
                "the range spans {windows} windows of {}; at most {} are allowed",
                interval.name(),
                state.settings.max_points
            ),
        ));
    }
    let filter = Dims {
        symbol: params.symbol.filter(|s| !s.is_empty()).map(Into::into),
        side: params.side.filter(|s| !s.is_empty()).map(Into::into),
        strategy_id: params.strategy_id.filter(|s| !s.is_empty()).map(Into::into),
    };
    let snapshot = state.snapshot();
    let stitch =
        |name: &'static str| stitched(&state, &snapshot, name, interval, &filter, first, end);
    let dims = filter.to_json();
    let (points, total, cached, used_live, aggregation) = match metric {
        // Derived: fills / placements per window.
        "trading.order_fill_rate" => {
            let (placed, c1, l1) = stitch("events.count.order.placed").await?;
            let (filled, c2, l2) = stitch("events.count.order.filled").await?;
            let starts: std::collections::BTreeSet<i64> =
                placed.keys().chain(filled.keys()).copied().collect();
            let count = |m: &BTreeMap<i64, Agg>, s: &i64| m.get(s).map_or(0, |a| a.count);
            let points: Vec<Value> = starts
                .iter()
                .map(|s| {
                    let (p, f) = (count(&placed, s), count(&filled, s));
                    json!({
                        "timestamp": format_us(s * 1_000_000),
                        "value": if p > 0 { Some(f as f64 / p as f64) } else { None },
                        "dimensions": dims,
                        "placed": p,
                        "filled": f,
                    })
                })
                .collect();
            let total = placed.values().map(|a| a.count).sum::<i64>();
            (points, total, c1 && c2, l1 || l2, "ratio")
        }
        other => {
            // trading.total_volume is the notional of fills, summed by default.
            let (name, aggregation) = match other {
                "trading.total_volume" => (
                    "order.filled.notional",
                    params.aggregation.as_deref().unwrap_or("sum"),
                ),
                name => (name, aggregation),
            };
            let (series, cached, used_live) =
                stitched(&state, &snapshot, name, interval, &filter, first, end).await?;
            let points = series
                .iter()
                .map(|(s, a)| point(*s, a, aggregation, &dims))
                .collect();
            (
                points,
                series.values().map(|a| a.count).sum(),
                cached,
                used_live,
                aggregation,
            )
        }
    };
    let mut result = json!({
        "metric_name": metric,
        "interval": interval.name(),
        "start_time": format_us(from_us),
        "end_time": format_us(to_us),
        "data_points": points,
        "total_count": total,
        "aggregation": aggregation,
    });
    if used_live {
        result["as_of"] = Value::String(format_us(snapshot.as_of_ms as i64 * 1000));
    }
    // Where the windows came from: the live state (older windows from
    // rollups), or PostgreSQL alone (a range before the live state, or a
    // dimension combination not kept live: see `dimension_sets`).
    result["source"] = Value::String(if used_live { "live" } else { "postgres" }.into());
    Ok(Json(json!({"cached": cached, "result": result})))
}

/// One series over window starts `[first, end)`: windows the snapshot
/// holds in full come from it, older ones from history. Returns the
/// windows, whether history came from the cache, and whether live state was used.
async fn stitched(
    state: &AppState,
    snapshot: &dataflows::LiveSnapshot,
    metric: &str,
    interval: Interval,
    filter: &Dims,
    first: i64,
    end: i64,
) -> Result<(BTreeMap<i64, Agg>, bool, bool), AppError> {
    if !state.windows.keeps(DimSet::of(filter)) {
        // Not kept live nor as rollups: exact, from the raw events.
        let client = state.pool.get().await.map_err(sink::SinkError::from)?;
        let series = sink::rollups::raw_series(
            &**client,
            &state.windows,
            metric,
            interval,
            filter,
            first,
            end,
        )
        .await?;
        return Ok((series, false, false));
    }
    let live_from = snapshot
        .window_coverage(interval)
        .map(|c| c.max(first))
        .unwrap_or(end);
    let (mut series, cached) =
        history(state, metric, interval, filter, first, live_from.min(end)).await?;
    series.extend(
        snapshot
            .windows
            .series(metric, interval, filter, live_from, end),
    );
    Ok((series, cached, live_from < end))
}

/// `GET /api/v1/metrics/names`: metrics held live or stored.
#[utoipa::path(
    get,
    path = "/api/v1/metrics/names",
    tag = "metrics",
    responses((status = 200, description = "Metric names held live or stored, sorted", body = MetricNames))
)]
pub async fn names(State(state): State<AppState>) -> Result<Json<Value>, AppError> {
    let mut names = state.snapshot().windows.names();
    const KEY: &str = "analytics:metrics:v1:names";
    let stored: Vec<String> = match state
        .cache
        .get(KEY)
        .await
        .and_then(|b| serde_json::from_slice(&b).ok())
    {
        Some(v) => v,
        None => {
            let client = state.pool.get().await.map_err(sink::SinkError::from)?;
            let v = sink::rollups::names(&**client).await?;
            state
                .cache
                .set(KEY, &serde_json::to_vec(&v).unwrap_or_default())
                .await;
            v
        }
    };
    names.extend(stored);
    // Derived metrics exist where their sources do.
    if names.contains("events.count.order.placed") {
        names.insert("trading.order_fill_rate".to_string());
    }
    if names.contains("order.filled.notional") {
        names.insert("trading.total_volume".to_string());
    }
    Ok(Json(json!({"metric_names": names, "count": names.len()})))
}
