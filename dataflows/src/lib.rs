//! The dataflow crate owns everything that happens to an event between the
//! wire and the live state: the event model and its parser
//! ([`event`]), the Kafka source ([`kafka_source`]), the timely/differential
//! operators that count events and gate them on durability ([`counts`],
//! [`durable`]), validation against built-in checks and custom JSON
//! Schemas ([`validate`]), and the publish operator that hands an immutable snapshot
//! of live state to tokio ([`publish`], [`live`]).
//!
//! Timestamps everywhere in the dataflow are processing-time ticks: `u64`
//! milliseconds since the Unix epoch, rounded down to the configured tick.
//! Event time is data, carried inside each record.

pub mod aggregates;
pub mod alloc;
pub mod counts;
pub mod dashboard;
pub mod dashboard_ops;
pub mod durable;
pub mod event;
pub mod expiry;
pub mod ids;
pub mod kafka_source;
pub mod live;
pub mod liveness;
pub mod memory_source;
pub mod metrics;
pub mod panes;
pub mod pipeline;
pub mod props;
pub mod publish;
pub mod route;
pub mod rows;
pub mod sketch;
pub mod time;
pub mod trading;
pub mod validate;
pub mod windows;

pub use event::{DeadLetter, DeadReason, Event, EventSource, ParseError, Record};

/// The hash map of the per-tick folds (panes, counts, sums): foldhash,
/// randomly seeded, instead of SipHash (whose rounds were 4-8 % of a
/// worker's time on these short keys) and still not predictable by
/// whoever sends the keys.
pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
/// The set of [`FastMap`]'s hash.
pub type FastSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;
pub use live::{LiveCounts, LiveSnapshot};
