//! Prometheus metrics of the dataflow, registered in the default registry.
//! Names follow `analytics_<what>_<unit>[_total]`; labels are bounded
//! (topic and partition come from configuration, not from input).

use std::sync::LazyLock;

use prometheus::{
    register_gauge, register_histogram, register_int_counter, register_int_counter_vec,
    register_int_gauge, register_int_gauge_vec, Gauge, Histogram, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec,
};

/// Unwraps the registration of a metric defined in code. Registration fails
/// only on a programming error (a duplicate name), so it aborts loudly.
pub fn or_die<T>(r: prometheus::Result<T>, name: &str) -> T {
    match r {
        Ok(m) => m,
        Err(e) => panic!("metric {name} cannot be registered: {e}"),
    }
}

pub static MESSAGES_CONSUMED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    or_die(
        register_int_counter_vec!(
            "analytics_kafka_messages_consumed_total",
            "Kafka messages read by the sources, per topic",
            &["topic"]
        ),
        "analytics_kafka_messages_consumed_total",
    )
});

pub static KAFKA_ERRORS: LazyLock<IntCounter> = LazyLock::new(|| {
    or_die(
        register_int_counter!(
            "analytics_kafka_errors_total",
            "Errors returned by Kafka polls"
        ),
        "analytics_kafka_errors_total",
    )
});

pub static SOURCE_PAUSED: LazyLock<IntCounter> = LazyLock::new(|| {
    or_die(
        register_int_counter!(
            "analytics_source_paused_total",
            "Source activations skipped because too many rows wait for PostgreSQL"
        ),
        "analytics_source_paused_total",
    )
});

pub static CONSUMER_LAG: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    or_die(
        register_int_gauge_vec!(
            "analytics_consumer_lag_messages",
            "High watermark minus the offset committed in PostgreSQL",
            &["topic", "partition"]
        ),
        "analytics_consumer_lag_messages",
    )
});

pub static LATE_EVENTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    or_die(
        register_int_counter_vec!(
            "analytics_late_events_total",
            "Events whose event time lies beyond the live horizon (stored, not held live)",
            &["topic"]
        ),
        "analytics_late_events_total",
    )
});

pub static FRESHNESS: LazyLock<Histogram> = LazyLock::new(|| {
    or_die(
        register_histogram!(
            "analytics_freshness_seconds",
            "From the start of the tick an event was read in to its snapshot being published",
            vec![0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.5, 5.0, 10.0]
        ),
        "analytics_freshness_seconds",
    )
});

pub static ARRANGEMENT_RECORDS: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    or_die(
        register_int_gauge_vec!(
            "analytics_arrangement_records",
            "Updates held in an arrangement's trace, per worker",
            &["arrangement", "worker"]
        ),
        "analytics_arrangement_records",
    )
});

pub static LIVE_AS_OF_AGE: LazyLock<Gauge> = LazyLock::new(|| {
    or_die(
        register_gauge!(
            "analytics_live_as_of_age_seconds",
            "Age of the published live snapshot's as_of (wall clock minus as_of), set when scraped; 0 before the first snapshot"
        ),
        "analytics_live_as_of_age_seconds",
    )
});

pub static LIVE_ENTRIES: LazyLock<IntGauge> = LazyLock::new(|| {
    or_die(
        register_int_gauge!(
            "analytics_live_count_entries",
            "(event_type, second) entries in the published live state"
        ),
        "analytics_live_count_entries",
    )
});

pub static CARDINALITY_REFUSED: LazyLock<IntCounter> = LazyLock::new(|| {
    or_die(
        register_int_counter!(
            "analytics_cardinality_refused_total",
            "Dimension values refused by the cardinality guard (the event still counts in the metric's total)"
        ),
        "analytics_cardinality_refused_total",
    )
});

pub static LATE_WINDOW_EVENTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    or_die(
        register_int_counter_vec!(
            "analytics_late_window_events_total",
            "Events read after their window of an interval left memory (their rollup is corrected in PostgreSQL)",
            &["topic", "interval"]
        ),
        "analytics_late_window_events_total",
    )
});

pub static LATE_WINDOW_UPDATES: LazyLock<IntCounter> = LazyLock::new(|| {
    or_die(
        register_int_counter!(
            "analytics_late_window_updates_total",
            "Window updates not held in memory because their window is beyond its horizon"
        ),
        "analytics_late_window_updates_total",
    )
});

pub static WINDOWS_HELD: LazyLock<IntGauge> = LazyLock::new(|| {
    or_die(
        register_int_gauge!(
            "analytics_live_windows",
            "Windows held in the published live state"
        ),
        "analytics_live_windows",
    )
});

pub static HEAP_ALLOCATED: LazyLock<IntGauge> = LazyLock::new(|| {
    or_die(
        register_int_gauge!(
            "analytics_heap_allocated_bytes",
            "Bytes held in heap allocations (jemalloc stats.allocated), refreshed at each live publish"
        ),
        "analytics_heap_allocated_bytes",
    )
});

pub static HEAP_RESIDENT: LazyLock<IntGauge> = LazyLock::new(|| {
    or_die(
        register_int_gauge!(
            "analytics_heap_resident_bytes",
            "Bytes of heap memory resident, allocator metadata and dirty pages not yet returned included (jemalloc stats.resident), refreshed at each live publish"
        ),
        "analytics_heap_resident_bytes",
    )
});

pub static SCHEMA_COMPILATIONS: LazyLock<IntCounter> = LazyLock::new(|| {
    or_die(
        register_int_counter!(
            "analytics_schema_compilations_total",
            "JSON Schemas of custom event definitions compiled (once per definition version)"
        ),
        "analytics_schema_compilations_total",
    )
});

pub static CUSTOM_SCHEMAS: LazyLock<IntGauge> = LazyLock::new(|| {
    or_die(
        register_int_gauge!(
            "analytics_custom_schemas_active",
            "Active custom event definitions whose compiled schema is in force"
        ),
        "analytics_custom_schemas_active",
    )
});

/// Registers every metric of the dataflow and creates the series of each
/// known label value (`topics`: the configured Kafka topics), so that
/// `/metrics` lists them from the start, at 0, instead of once each first
/// happens (dashboards and alerts then see 0, not "no data").
pub fn init(topics: &[String]) {
    for topic in topics {
        MESSAGES_CONSUMED.with_label_values(&[topic.as_str()]);
        LATE_EVENTS.with_label_values(&[topic.as_str()]);
    }
    LazyLock::force(&KAFKA_ERRORS);
    LazyLock::force(&SOURCE_PAUSED);
    LazyLock::force(&CONSUMER_LAG);
    LazyLock::force(&FRESHNESS);
    LazyLock::force(&ARRANGEMENT_RECORDS);
    LazyLock::force(&LIVE_AS_OF_AGE);
    LazyLock::force(&LIVE_ENTRIES);
    LazyLock::force(&CARDINALITY_REFUSED);
    LazyLock::force(&LATE_WINDOW_EVENTS);
    LazyLock::force(&LATE_WINDOW_UPDATES);
    LazyLock::force(&WINDOWS_HELD);
    LazyLock::force(&HEAP_ALLOCATED);
    LazyLock::force(&HEAP_RESIDENT);
    LazyLock::force(&SCHEMA_COMPILATIONS);
    LazyLock::force(&CUSTOM_SCHEMAS);
}
