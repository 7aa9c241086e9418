//! Reading dead letters back (`GET /api/v1/dead-letters`) and marking
//! replays. Rows are written by the writers ([`crate::writer::insert_dead_letters`]).
//!
//! Pages run newest first by `id`; a cursor is the last `id` of the
//! previous page (the next page holds smaller ids), so pages stay stable
//! while new dead letters arrive.

use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio_postgres::Row;
use uuid::Uuid;

use crate::encode::PgMicros;
use crate::{Pool, SinkError};

/// Most payload bytes returned per row by [`list`]; [`get`] returns it all.
pub const LIST_PAYLOAD_BYTES: i32 = 64 * 1024;

/// A stored dead letter.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredDeadLetter {
    pub id: i64,
    pub received_at: DateTime<Utc>,
    pub source: String,
    pub kafka_topic: Option<String>,
    pub kafka_partition: Option<i32>,
    pub kafka_offset: Option<i64>,
    pub reason: String,
    pub detail: String,
    pub errors: Option<Value>,
    pub event_type: Option<String>,
    /// The payload, or its first [`LIST_PAYLOAD_BYTES`] in a listing.
    pub payload: Vec<u8>,
    /// The stored payload's full length.
    pub payload_bytes: i32,
    pub replayed_at: Option<DateTime<Utc>>,
    pub replayed_event_id: Option<Uuid>,
}

impl StoredDeadLetter {
    fn from_row(r: &Row) -> Self {
        StoredDeadLetter {
            id: r.get("id"),
            received_at: r.get("received_at"),
            source: r.get("source"),
            kafka_topic: r.get("kafka_topic"),
            kafka_partition: r.get("kafka_partition"),
            kafka_offset: r.get("kafka_offset"),
            reason: r.get("reason"),
            detail: r.get("detail"),
            errors: r.get("errors"),
            event_type: r.get("event_type"),
            payload: r.get("payload"),
            payload_bytes: r.get("payload_bytes"),
            replayed_at: r.get("replayed_at"),
            replayed_event_id: r.get("replayed_event_id"),
        }
    }

    /// Microseconds since the epoch of `received_at`.
    pub fn received_at_us(&self) -> i64 {
        self.received_at.timestamp_micros()
    }
}

/// Filters of a listing; `None` matches everything.
#[derive(Clone, Debug, Default)]
pub struct DeadLetterFilter {
    /// `received_at` in `[from_us, to_us)`.
    pub from_us: Option<i64>,
    pub to_us: Option<i64>,
    pub reason: Option<String>,
    pub event_type: Option<String>,
    pub source: Option<String>,
}

/// One page of a listing.
#[derive(Clone, Copy, Debug)]
pub struct Page {
    pub limit: i64,
    /// Only ids below this one.
    pub before_id: Option<i64>,
    pub offset: i64,
}

const COLUMNS: &str = "id, received_at, source, kafka_topic, kafka_partition, kafka_offset, \
     reason, detail, errors, event_type, replayed_at, replayed_event_id, \
     octet_length(payload) AS payload_bytes";

/// Dead letters matching `filter`, newest first.
pub async fn list(
    pool: &Pool,
    filter: &DeadLetterFilter,
    page: Page,
) -> Result<Vec<StoredDeadLetter>, SinkError> {
    let client = pool.get().await?;
    let rows = client
        .query(
            &format!(
                "SELECT {COLUMNS}, substring(payload FROM 1 FOR $9) AS payload
                 FROM dead_letters
                 WHERE ($1::timestamptz IS NULL OR received_at >= $1)
                   AND ($2::timestamptz IS NULL OR received_at < $2)
                   AND ($3::text IS NULL OR reason = $3)
                   AND ($4::text IS NULL OR event_type = $4)
                   AND ($5::text IS NULL OR source = $5)
                   AND ($6::bigint IS NULL OR id < $6)
                 ORDER BY id DESC
                 LIMIT $7 OFFSET $8"
            ),
            &[
                &filter.from_us.map(PgMicros),
                &filter.to_us.map(PgMicros),
                &filter.reason,
                &filter.event_type,
                &filter.source,
                &page.before_id,
                &page.limit,
                &page.offset,
                &LIST_PAYLOAD_BYTES,
            ],
        )
        .await?;
    Ok(rows.iter().map(StoredDeadLetter::from_row).collect())
}

/// One dead letter with its whole payload.
pub async fn get(pool: &Pool, id: i64) -> Result<Option<StoredDeadLetter>, SinkError> {
    let client = pool.get().await?;
    let row = client
        .query_opt(
            &format!("SELECT {COLUMNS}, payload FROM dead_letters WHERE id = $1"),
            &[&id],
        )
        .await?;
    Ok(row.as_ref().map(StoredDeadLetter::from_row))
}

/// Records that dead letter `id` was replayed as `event_id`; keeps the time
/// of the first replay. Returns that time.
pub async fn mark_replayed(
    pool: &Pool,
    id: i64,
    event_id: Uuid,
) -> Result<Option<DateTime<Utc>>, SinkError> {
    let client = pool.get().await?;
    let row = client
        .query_opt(
            "UPDATE dead_letters
             SET replayed_at = COALESCE(replayed_at, now()), replayed_event_id = $2
             WHERE id = $1 RETURNING replayed_at",
            &[&id, &event_id],
        )
        .await?;
    Ok(row.and_then(|r| r.get(0)))
}
