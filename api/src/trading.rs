//! Trading analytics reads, from the tables the sink merges exactly once
//! (see `sink::trading`): every answer is what is durable, the same rows
//! SQL users see.
//!
//! - `GET /api/v1/trading/orders/{order_id}`: one order's lifecycle; 404
//!   when no event of it has been committed;
//! - `GET /api/v1/trading/strategies?interval=&start_time=&end_time=&strategy_id=&limit=`;
//! - `GET /api/v1/trading/market/{symbol}?interval=&start_time=&end_time=&limit=`
//!   (OHLCV candles);
//! - `GET /api/v1/users/{user_id}/sessions?limit=`.
//!
//! `interval` is one of 1m, 5m, 15m, 30m, 1h, 4h, 1d (default 1h); the
//! range defaults to the last 24 hours.

use axum::extract::State;
use axum::Json;
use dataflows::windows::{Interval, INTERVALS};
use serde::Deserialize;
use serde_json::{json, Value};
use sink::trading::BucketQuery;
use utoipa::{IntoParams, ToSchema};

use crate::openapi::ErrorBody;
use crate::params::{non_empty, parse_int, Path, Query, TimeRange};
use crate::series::IntervalName;
use crate::{AppError, AppState};

/// Query parameters of the bucketed reads.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct BucketParams {
    /// Bucket length; default `1h`.
    #[param(value_type = Option<IntervalName>)]
    interval: Option<String>,
    /// Buckets starting at or after it; default `end_time` − 24 h.
    #[param(value_type = Option<chrono::DateTime<chrono::Utc>>)]
    start_time: Option<String>,
    /// Buckets starting before it; default now.
    #[param(value_type = Option<chrono::DateTime<chrono::Utc>>)]
    end_time: Option<String>,
    /// Only this strategy (`/api/v1/trading/strategies` only).
    strategy_id: Option<String>,
    /// Most rows: 1 to `analytics.query.max_results` (the default).
    #[param(value_type = Option<i64>, minimum = 1)]
    limit: Option<String>,
}

/// A number stored as PostgreSQL `numeric` (exact).
type Numeric = f64;

/// One order's lifecycle (`order_analytics`).
#[derive(ToSchema)]
#[allow(dead_code)] // a schema only: the row as `sink::trading::order` reads it
pub struct Order {
    order_id: String,
    symbol: Option<String>,
    side: Option<String>,
    strategy_id: Option<String>,
    user_id: Option<String>,
    /// `placed`, `partially_filled`, `filled`, `canceled` or `rejected`.
    status: String,
    quantity: Option<Numeric>,
    price: Option<Numeric>,
    filled_quantity: Numeric,
    fills: i64,
    avg_fill_price: Option<Numeric>,
    commission: Numeric,
    pnl: Numeric,
    is_maker: Option<bool>,
    placed_at: Option<chrono::DateTime<chrono::Utc>>,
    closed_at: Option<chrono::DateTime<chrono::Utc>>,
    latency_ms: Option<f64>,
    first_seen: chrono::DateTime<chrono::Utc>,
    updated_at: chrono::DateTime<chrono::Utc>,
}

/// One strategy bucket (`strategy_performance`).
#[derive(ToSchema)]
#[allow(dead_code)] // a schema only
pub struct StrategyBucket {
    strategy_id: String,
    interval: IntervalName,
    bucket_start: chrono::DateTime<chrono::Utc>,
    trades: i64,
    winning_trades: i64,
    losing_trades: i64,
    total_pnl: Numeric,
    gross_profit: Numeric,
    gross_loss: Numeric,
    win_rate: f64,
    profit_factor: Option<f64>,
    largest_win: Option<Numeric>,
    largest_loss: Option<Numeric>,
    avg_latency_ms: Option<f64>,
}

/// `GET /api/v1/trading/strategies`.
#[derive(ToSchema)]
#[allow(dead_code)] // a schema only
pub struct Strategies {
    interval: IntervalName,
    /// Oldest bucket first.
    strategies: Vec<StrategyBucket>,
}

/// One OHLCV candle (`market_analytics`).
#[derive(ToSchema)]
#[allow(dead_code)] // a schema only
pub struct Candle {
    symbol: String,
    interval: IntervalName,
    bucket_start: chrono::DateTime<chrono::Utc>,
    open: Option<Numeric>,
    high: Option<Numeric>,
    low: Option<Numeric>,
    close: Option<Numeric>,
    volume: Numeric,
    trades_count: i64,
    price_points: i64,
}

/// `GET /api/v1/trading/market/{symbol}`.
#[derive(ToSchema)]
#[allow(dead_code)] // a schema only
pub struct Market {
    symbol: String,
    interval: IntervalName,
    /// Oldest candle first.
    candles: Vec<Candle>,
}

/// One session (`user_behavior`).
#[derive(ToSchema)]
#[allow(dead_code)] // a schema only
pub struct Session {
    session_id: String,
    user_id: Option<String>,
    session_start: chrono::DateTime<chrono::Utc>,
    last_event: chrono::DateTime<chrono::Utc>,
    duration_seconds: f64,
    page_views: i64,
    events: i64,
    distinct_event_types: i32,
    event_types: Vec<String>,
    /// The last event is less than `analytics.dashboard.session_timeout` ago.
    active: bool,
}

/// `GET /api/v1/users/{user_id}/sessions`.
#[derive(ToSchema)]
#[allow(dead_code)] // a schema only
pub struct Sessions {
    user_id: String,
    /// Latest first.
    sessions: Vec<Session>,
}

fn interval(params: &BucketParams) -> Result<&'static str, AppError> {
    match non_empty(&params.interval) {
        None => Ok("1h"),
        Some(name) => Interval::parse(name).map(Interval::name).ok_or_else(|| {
            let names: Vec<&str> = INTERVALS.iter().map(|(n, _)| *n).collect();
            AppError::bad_param("interval", format!("{name:?} is not one of {names:?}"))
        }),
    }
}

fn limit(state: &AppState, value: &Option<String>) -> Result<i64, AppError> {
    Ok(
        parse_int("limit", non_empty(value), 1, state.settings.max_results)?
            .unwrap_or(state.settings.max_results),
    )
}

/// The bucketed read that `params` ask for, of `id` (a strategy or symbol).
fn bucket_query<'a>(
    state: &AppState,
    params: &BucketParams,
    id: Option<&'a str>,
) -> Result<BucketQuery<'a>, AppError> {
    let interval = interval(params)?;
    let (start_us, end_us) = TimeRange::of(&params.start_time, &params.end_time).resolve()?;
    Ok(BucketQuery {
        interval,
        start_us,
        end_us,
        id,
        limit: limit(state, &params.limit)?,
    })
}

#[utoipa::path(
    get,
    path = "/api/v1/trading/orders/{order_id}",
    tag = "trading",
    params(("order_id" = String, Path, description = "The order's `order_id` property")),
    responses(
        (status = 200, description = "The order as durable in PostgreSQL", body = Order),
        (status = 404, description = "No event of this order is committed", body = ErrorBody),
    )
)]
pub async fn order(
    State(state): State<AppState>,
    Path(order_id): Path<String>,
) -> Result<Json<Value>, AppError> {
    sink::trading::order(&state.pool, &order_id)
        .await?
        .map(Json)
        .ok_or(AppError::NotFound)
}

#[utoipa::path(
    get,
    path = "/api/v1/trading/strategies",
    tag = "trading",
    params(BucketParams),
    responses(
        (status = 200, description = "Strategy buckets starting in the range", body = Strategies),
        (status = 400, description = "A bad parameter, named in `details`", body = ErrorBody),
    )
)]
pub async fn strategies(
    State(state): State<AppState>,
    Query(params): Query<BucketParams>,
) -> Result<Json<Value>, AppError> {
    let query = bucket_query(&state, &params, non_empty(&params.strategy_id))?;
    let rows = sink::trading::strategies(&state.pool, &query).await?;
    Ok(Json(
        json!({"interval": query.interval, "strategies": rows}),
    ))
}

#[utoipa::path(
    get,
    path = "/api/v1/trading/market/{symbol}",
    tag = "trading",
    params(("symbol" = String, Path, description = "e.g. BTCUSDT"), BucketParams),
    responses(
        (status = 200, description = "Candles starting in the range", body = Market),
        (status = 400, description = "A bad parameter, named in `details`", body = ErrorBody),
    )
)]
pub async fn market(
    State(state): State<AppState>,
    Path(symbol): Path<String>,
    Query(params): Query<BucketParams>,
) -> Result<Json<Value>, AppError> {
    let query = bucket_query(&state, &params, Some(&symbol))?;
    let rows = sink::trading::market(&state.pool, &query).await?;
    Ok(Json(
        json!({"symbol": symbol, "interval": query.interval, "candles": rows}),
    ))
}

/// Query parameters of the sessions read.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SessionParams {
    /// Most sessions: 1 to `analytics.query.max_results` (the default).
    #[param(value_type = Option<i64>, minimum = 1)]
    limit: Option<String>,
}

#[utoipa::path(
    get,
    path = "/api/v1/users/{user_id}/sessions",
    tag = "trading",
    params(("user_id" = String, Path), SessionParams),
    responses(
        (status = 200, description = "The user's sessions", body = Sessions),
        (status = 400, description = "A bad parameter, named in `details`", body = ErrorBody),
    )
)]
pub async fn sessions(
    State(state): State<AppState>,
    Path(user_id): Path<String>,
    Query(params): Query<SessionParams>,
) -> Result<Json<Value>, AppError> {
    let rows = sink::trading::sessions(
        &state.pool,
        &user_id,
        state.settings.session_timeout.as_secs_f64(),
        limit(&state, &params.limit)?,
    )
    .await?;
    Ok(Json(json!({"user_id": user_id, "sessions": rows})))
}
