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

use axum::extract::{Path, Query, State};
use axum::Json;
use dataflows::windows::{Interval, INTERVALS};
use serde::Deserialize;
use serde_json::{json, Value};
use sink::trading::BucketQuery;

use crate::params::{non_empty, parse_int, TimeRange};
use crate::{AppError, AppState};

/// Query parameters of the bucketed reads.
#[derive(Debug, Default, Deserialize)]
pub struct BucketParams {
    interval: Option<String>,
    start_time: Option<String>,
    end_time: Option<String>,
    strategy_id: Option<String>,
    limit: Option<String>,
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
    let (start_us, end_us) = TimeRange {
        start_time: params.start_time.clone(),
        end_time: params.end_time.clone(),
    }
    .resolve()?;
    Ok(BucketQuery {
        interval,
        start_us,
        end_us,
        id,
        limit: limit(state, &params.limit)?,
    })
}

pub async fn order(
    State(state): State<AppState>,
    Path(order_id): Path<String>,
) -> Result<Json<Value>, AppError> {
    sink::trading::order(&state.pool, &order_id)
        .await?
        .map(Json)
        .ok_or(AppError::NotFound)
}

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
#[derive(Debug, Default, Deserialize)]
pub struct SessionParams {
    limit: Option<String>,
}

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
