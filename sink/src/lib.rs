//! PostgreSQL access for the service: the migrations runner
//! ([`migrate`]), partition management ([`partitions`]), the group-commit
//! writer that makes dataflow ticks durable ([`writer`]), the REST write
//! path ([`rest`]), restore and history queries ([`queries`]), and API
//! keys ([`api_keys`]).
//!
//! Raw rows go in with binary COPY; offsets, dead letters and per-second
//! counts with multi-row statements over `unnest`, all in one transaction
//! per group of ticks. No row-at-a-time INSERT on the hot path.

pub mod api_keys;
pub mod dashboard;
pub mod encode;
pub mod error;
pub mod metrics;
pub mod migrate;
pub mod partitions;
pub mod pool;
pub mod queries;
pub mod rest;
pub mod rollups;
pub mod writer;

pub use error::SinkError;
pub use pool::{connect_pool, DbSettings, Pool};
