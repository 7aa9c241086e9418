-- Trading analytics, merged in the same transaction as the raw rows and
-- Kafka offsets they come from (exactly once). Each row keeps its merge
-- state (`state`, bincode of dataflows::trading) beside readable columns
-- derived from it; amounts are exact decimals (nano-unit sums / 10^9).

-- One row per order: placed -> filled / canceled / rejected, by order_id.
CREATE TABLE order_analytics (
    order_id        text PRIMARY KEY,
    symbol          text,
    side            text,
    strategy_id     text,
    user_id         text,
    status          text        NOT NULL,
    quantity        numeric,
    price           numeric,
    filled_quantity numeric     NOT NULL,
    fills           bigint      NOT NULL,
    avg_fill_price  numeric,
    commission      numeric     NOT NULL,
    pnl             numeric     NOT NULL,
    is_maker        boolean,
    placed_at       timestamptz,
    closed_at       timestamptz,
    latency_ms      double precision,
    first_seen      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    state           bytea       NOT NULL
);
CREATE INDEX order_analytics_strategy_idx ON order_analytics (strategy_id, first_seen);

-- Per strategy, interval (1m .. 1d) and bucket: trades are order.filled
-- events carrying strategy_id, won or lost by their pnl.
CREATE TABLE strategy_performance (
    strategy_id    text        NOT NULL,
    interval       text        NOT NULL,
    bucket_start   timestamptz NOT NULL,
    trades         bigint      NOT NULL,
    winning_trades bigint      NOT NULL,
    losing_trades  bigint      NOT NULL,
    total_pnl      numeric     NOT NULL,
    gross_profit   numeric     NOT NULL,
    gross_loss     numeric     NOT NULL,
    win_rate       double precision NOT NULL,
    profit_factor  double precision,
    largest_win    numeric,
    largest_loss   numeric,
    avg_latency_ms double precision,
    state          bytea       NOT NULL,
    PRIMARY KEY (strategy_id, interval, bucket_start)
);
CREATE INDEX strategy_performance_bucket_idx ON strategy_performance (interval, bucket_start);

-- OHLCV per symbol, interval and bucket from market.data.update and fills.
CREATE TABLE market_analytics (
    symbol       text        NOT NULL,
    interval     text        NOT NULL,
    bucket_start timestamptz NOT NULL,
    open         numeric,
    high         numeric,
    low          numeric,
    close        numeric,
    volume       numeric     NOT NULL,
    trades_count bigint      NOT NULL,
    price_points bigint      NOT NULL,
    state        bytea       NOT NULL,
    PRIMARY KEY (symbol, interval, bucket_start)
);

-- One row per session_id.
CREATE TABLE user_behavior (
    session_id           text PRIMARY KEY,
    user_id              text,
    session_start        timestamptz NOT NULL,
    last_event           timestamptz NOT NULL,
    duration_seconds     double precision NOT NULL,
    page_views           bigint      NOT NULL,
    events               bigint      NOT NULL,
    distinct_event_types integer     NOT NULL,
    event_types          text[]      NOT NULL,
    state                bytea       NOT NULL
);
CREATE INDEX user_behavior_user_idx ON user_behavior (user_id, session_start);
