//! Strict parsing of query parameters; errors name the parameter.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use chrono::DateTime;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::json;
use utoipa::IntoParams;

use crate::AppError;

const DAY_US: i64 = 86_400 * 1_000_000;

/// `axum::extract::Query` refusing with the API's JSON 400 (a repeated
/// or undecodable parameter) instead of axum's plain text.
#[derive(Debug)]
pub struct Query<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, AppError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Query(q.0))
            .map_err(|e| refused("query string", e.body_text()))
    }
}

/// `axum::extract::Path`, refusing with the API's JSON 400.
#[derive(Debug)]
pub struct Path<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for Path<T> {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, AppError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| Path(p.0))
            .map_err(|e| refused("path", e.body_text()))
    }
}

fn refused(part: &str, why: String) -> AppError {
    AppError::BadRequest {
        message: format!("invalid {part}: {why}"),
        details: json!({"parameter": null, "reason": why}),
    }
}

/// `start_time` and `end_time` query parameters (RFC 3339).
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TimeRange {
    /// Start of the range (inclusive); default `end_time` − 24 h.
    #[param(value_type = Option<chrono::DateTime<chrono::Utc>>)]
    pub start_time: Option<String>,
    /// End of the range (exclusive); default the next whole second.
    #[param(value_type = Option<chrono::DateTime<chrono::Utc>>)]
    pub end_time: Option<String>,
}

impl TimeRange {
    pub fn of(start_time: &Option<String>, end_time: &Option<String>) -> Self {
        TimeRange {
            start_time: start_time.clone(),
            end_time: end_time.clone(),
        }
    }

    /// `[start, end)` in microseconds; by default the 24 hours ending at
    /// the next whole second.
    pub fn resolve(&self) -> Result<(i64, i64), AppError> {
        parse_range(
            self.start_time.as_deref(),
            self.end_time.as_deref(),
            dataflows::time::now_ms() as i64 * 1000,
            DAY_US,
        )
    }
}

/// Parses an RFC 3339 time into microseconds since the epoch.
pub fn parse_time(param: &str, value: Option<&str>) -> Result<Option<i64>, AppError> {
    match value {
        None => Ok(None),
        Some("") => Ok(None),
        Some(s) => DateTime::parse_from_rfc3339(s)
            .map(|t| Some(t.timestamp_micros()))
            .map_err(|e| {
                AppError::bad_param(param, format!("{s:?} is not an RFC 3339 time ({e})"))
            }),
    }
}

/// A time range with defaults: `[now - default_span, now)` rounded up to
/// the next whole second, when absent.
pub fn parse_range(
    start: Option<&str>,
    end: Option<&str>,
    now_us: i64,
    default_span_us: i64,
) -> Result<(i64, i64), AppError> {
    let end_us = match parse_time("end_time", end)? {
        Some(t) => t,
        None => (now_us.div_euclid(1_000_000) + 1) * 1_000_000,
    };
    let start_us = match parse_time("start_time", start)? {
        Some(t) => t,
        None => end_us - default_span_us,
    };
    if end_us < start_us {
        return Err(AppError::bad_param(
            "end_time",
            "end_time is before start_time",
        ));
    }
    Ok((start_us, end_us))
}

/// The value of an optional parameter, `None` when empty.
pub fn non_empty(v: &Option<String>) -> Option<&str> {
    v.as_deref().filter(|s| !s.is_empty())
}

/// An optional integer parameter within `[min, max]`.
pub fn parse_int(
    param: &str,
    value: Option<&str>,
    min: i64,
    max: i64,
) -> Result<Option<i64>, AppError> {
    let Some(s) = value else { return Ok(None) };
    match s.parse::<i64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(Some(n)),
        Ok(_) => Err(AppError::bad_param(
            param,
            format!("must be between {min} and {max}"),
        )),
        Err(_) => Err(AppError::bad_param(
            param,
            format!("{s:?} is not an integer"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        let now = 1_760_000_000_500_000;
        let (s, e) = parse_range(None, None, now, 10_000_000).expect("defaults");
        assert_eq!(e, 1_760_000_001_000_000);
        assert_eq!(s, e - 10_000_000);
        let (s, e) = parse_range(
            Some("2025-10-09T08:53:20Z"),
            Some("2025-10-09T08:53:21.5Z"),
            now,
            0,
        )
        .expect("explicit");
        assert_eq!(s, 1_760_000_000_000_000);
        assert_eq!(e, 1_760_000_001_500_000);
        let err = parse_range(Some("yesterday"), None, now, 0).expect_err("bad");
        assert!(err.to_string().contains("start_time"));
        let err = parse_range(
            Some("2025-10-09T08:53:22Z"),
            Some("2025-10-09T08:53:21Z"),
            now,
            0,
        )
        .expect_err("reversed");
        assert!(err.to_string().contains("end_time"));
    }
}
