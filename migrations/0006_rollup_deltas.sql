-- Rollup contributions, appended by each sink commit (binary COPY, no
-- read, no lock) and folded into metric_aggregations by the compactor
-- (sink/src/rollups.rs), which deletes the deltas it folds in the same
-- transaction. Every reader of rollups adds the pending deltas, so answers
-- stay exact between compactions; metric_aggregations alone lags by at most
-- one compaction. `dimensions` is the canonical JSON text the service
-- writes, `bucket` the window start in seconds since the Unix epoch.
CREATE TABLE metric_aggregation_deltas (
    metric_name text   NOT NULL,
    "interval"  text   NOT NULL,
    dimensions  text   NOT NULL,
    bucket      bigint NOT NULL,
    sketch      bytea  NOT NULL
) WITH (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 50000,
        autovacuum_vacuum_insert_scale_factor = 0, autovacuum_vacuum_insert_threshold = 50000);

-- History reads (one metric, a range of buckets) add the pending deltas.
CREATE INDEX metric_aggregation_deltas_series
    ON metric_aggregation_deltas (metric_name, bucket);
