-- Raw events, partitioned by day on event time. Partitions are created
-- ahead (and on demand) by the service; retention drops whole partitions.
CREATE TABLE events (
    id              uuid        NOT NULL,
    event_type      text        NOT NULL,
    user_id         text,
    session_id      text,
    properties      jsonb       NOT NULL DEFAULT '{}'::jsonb,
    "timestamp"     timestamptz NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    source          text        NOT NULL,
    kafka_topic     text,
    kafka_partition integer,
    kafka_offset    bigint
) PARTITION BY RANGE ("timestamp");

CREATE INDEX events_timestamp_idx ON events ("timestamp");
CREATE INDEX events_type_timestamp_idx ON events (event_type, "timestamp");

-- Next offset to read per partition, written in the same transaction as
-- the rows it covers.
CREATE TABLE kafka_offsets (
    topic       text        NOT NULL,
    "partition" integer     NOT NULL,
    next_offset bigint      NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, "partition")
);

-- Every refused input, with its reason and the raw payload.
CREATE TABLE dead_letters (
    id              bigserial   PRIMARY KEY,
    received_at     timestamptz NOT NULL DEFAULT now(),
    source          text        NOT NULL,
    kafka_topic     text,
    kafka_partition integer,
    kafka_offset    bigint,
    reason          text        NOT NULL,
    detail          text        NOT NULL,
    errors          jsonb,
    event_type      text,
    payload         bytea       NOT NULL,
    replayed_at     timestamptz
);
CREATE INDEX dead_letters_received_idx ON dead_letters (received_at);
CREATE INDEX dead_letters_reason_idx ON dead_letters (reason, received_at);
CREATE UNIQUE INDEX dead_letters_kafka_idx ON dead_letters (kafka_topic, kafka_partition, kafka_offset)
    WHERE kafka_topic IS NOT NULL;

-- Exact event counts per type and second of event time, upserted in the
-- same transaction as the raw rows; live state is restored from it.
CREATE TABLE event_counts (
    second     timestamptz NOT NULL,
    event_type text        NOT NULL,
    count      bigint      NOT NULL,
    PRIMARY KEY (second, event_type)
);

-- Ids of events accepted over REST, so that a retried POST is stored once.
CREATE TABLE rest_event_ids (
    id         uuid        PRIMARY KEY,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Rollups per metric, interval and window (filled by the windowed
-- aggregates); the sketch is a bincode-encoded mergeable quantile sketch.
CREATE TABLE metric_aggregations (
    metric_name text             NOT NULL,
    "interval"  text             NOT NULL,
    time_bucket timestamptz      NOT NULL,
    count       bigint           NOT NULL,
    sum         double precision,
    avg         double precision,
    min         double precision,
    max         double precision,
    p50         double precision,
    p90         double precision,
    p95         double precision,
    p99         double precision,
    dimensions  jsonb            NOT NULL DEFAULT '{}'::jsonb,
    sketch      bytea,
    updated_at  timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (metric_name, "interval", dimensions, time_bucket)
) PARTITION BY RANGE (time_bucket);

-- Custom event types and their JSON Schemas.
CREATE TABLE custom_event_definitions (
    id           uuid        PRIMARY KEY,
    name         text        NOT NULL UNIQUE,
    display_name text        NOT NULL DEFAULT '',
    description  text        NOT NULL DEFAULT '',
    schema       jsonb       NOT NULL,
    version      integer     NOT NULL DEFAULT 1,
    is_active    boolean     NOT NULL DEFAULT true,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);
