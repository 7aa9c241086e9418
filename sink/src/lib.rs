//! PostgreSQL access for the service: the migrations runner
//! ([`migrate`]), partition management ([`partitions`]), the group-commit
//! writer that makes dataflow ticks durable ([`writer`]), the REST write
//! path ([`rest`]), restore and history queries ([`queries`]), API keys
//! ([`api_keys`]), custom event definitions ([`custom_events`]) and the
//! task that keeps the validators current ([`schema_sync`]), dead-letter
//! reads ([`dead_letters`]).
//!
//! Raw rows and rollup deltas go in with binary COPY; offsets, dead letters and per-second
//! counts with multi-row statements over `unnest`, all in one transaction
//! per group of ticks. No row-at-a-time INSERT on the hot path.

pub mod api_keys;
pub mod custom_events;
pub mod dashboard;
pub mod dead_letters;
pub mod encode;
pub mod error;
pub mod metrics;
pub mod migrate;
pub mod partitions;
pub mod pool;
pub mod queries;
pub mod rest;
pub mod retention;
pub mod rollups;
pub mod schema_sync;
pub mod trading;
pub mod writer;

pub use error::SinkError;

/// Serialises read-merge-write merges into `table` across concurrent
/// transactions (the sink writer of every process, the REST path and
/// retention's deletes for the trading tables, every process's compactor
/// for the rollups) until this one ends. Without it, two transactions that
/// both find no row for a new key would both insert their own part, and
/// the later upsert would overwrite the earlier one. A transaction takes
/// tables in one fixed order, so that they cannot deadlock.
pub async fn lock_merges(
    tx: &tokio_postgres::Transaction<'_>,
    table: &str,
) -> Result<(), SinkError> {
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtext('merge:' || $1::text))",
        &[&table],
    )
    .await?;
    Ok(())
}
pub use pool::{connect_pool, DbSettings, Pool, SslMode, TlsSettings};
