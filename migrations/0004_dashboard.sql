-- Dashboard state, written in the same transaction as the raw rows it
-- comes from, so that live state can be restored exactly at start-up.

-- Per-second sums: order volume (price x quantity of fills) and order
-- latency; sums in nano-units (value x 10^9, exact).
CREATE TABLE second_sums (
    second   timestamptz    NOT NULL,
    series   text           NOT NULL,
    count    bigint         NOT NULL,
    sum_nano numeric(40, 0) NOT NULL,
    PRIMARY KEY (second, series)
);

-- The latest event second of every user (active users are those seen
-- within the configured window).
CREATE TABLE user_last_seen (
    user_id     text   PRIMARY KEY,
    last_second bigint NOT NULL
);
CREATE INDEX user_last_seen_second_idx ON user_last_seen (last_second);

-- The latest lifecycle event and activity of every strategy (event time, µs).
CREATE TABLE strategy_state (
    strategy_id    text     PRIMARY KEY,
    lifecycle_at   bigint   NOT NULL,
    lifecycle_kind smallint NOT NULL,
    last_seen      bigint   NOT NULL
);
