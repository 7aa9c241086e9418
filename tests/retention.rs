//! Retention against the real PostgreSQL: `analytics retention` drops the
//! daily `events` partitions past `raw_events` and `metric_aggregations`
//! partitions past the longest rollup policy, deletes rollups per interval
//! class and old per-second state, and keeps everything younger.

mod common;

use chrono::{Duration as Days, Utc};
use common::*;

fn day_name(table: &str, days_ago: i64) -> (String, String, String) {
    let day = (Utc::now() - Days::days(days_ago)).date_naive();
    let next = day.succ_opt().expect("next day");
    (
        format!("{table}_{}", day.format("%Y%m%d")),
        day.format("%Y-%m-%d 00:00:00+00").to_string(),
        next.format("%Y-%m-%d 00:00:00+00").to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_drops_old_partitions_and_rows_and_keeps_the_rest() {
    let mut env = TestEnv::new("retention", 1).await;
    env.start().await;
    env.stop().await;
    let pg = env.pg().await;
    // Raw events: one 100 days old (default raw_events is 90d), one today.
    let (old_events, from, to) = day_name("events", 100);
    pg.batch_execute(&format!(
        "CREATE TABLE {old_events} PARTITION OF events FOR VALUES FROM ('{from}') TO ('{to}');
         INSERT INTO events (id, event_type, \"timestamp\", source) VALUES
           (gen_random_uuid(), 'old', '{from}'::timestamptz + interval '1 hour', 'rest'),
           (gen_random_uuid(), 'new', now(), 'rest');
         INSERT INTO event_counts (second, event_type, count) VALUES
           ('{from}'::timestamptz, 'old', 1), (date_trunc('second', now()), 'new', 1);"
    ))
    .await
    .expect("old events");
    // Rollups 400 days old: the 1m row goes (365d), the 1d row stays (3650d);
    // a partition 4,000 days old goes whole.
    for days in [400, 4_000] {
        let (name, from, to) = day_name("metric_aggregations", days);
        pg.batch_execute(&format!(
            "CREATE TABLE {name} PARTITION OF metric_aggregations FOR VALUES FROM ('{from}') TO ('{to}');
             INSERT INTO metric_aggregations (metric_name, \"interval\", time_bucket, count, dimensions) VALUES
               ('m', '1m', '{from}', 1, '{{}}'), ('m', '1d', '{from}', 1, '{{}}');"
        ))
        .await
        .expect("old rollups");
    }
    // Trading rows: old and new of each table.
    pg.batch_execute(&format!(
        "INSERT INTO strategy_performance (strategy_id, \"interval\", bucket_start, trades, winning_trades,
           losing_trades, total_pnl, gross_profit, gross_loss, win_rate, state) VALUES
           ('old', '1m', now() - interval '400 days', 1, 0, 0, 0, 0, 0, 0, ''),
           ('old', '1d', now() - interval '400 days', 1, 0, 0, 0, 0, 0, 0, ''),
           ('new', '1m', now(), 1, 0, 0, 0, 0, 0, 0, '');
         INSERT INTO market_analytics (symbol, \"interval\", bucket_start, volume, trades_count, price_points, state) VALUES
           ('OLD', '1h', now() - interval '800 days', 0, 0, 0, ''),
           ('NEW', '1h', now(), 0, 0, 0, '');
         INSERT INTO order_analytics (order_id, status, filled_quantity, fills, commission, pnl, first_seen, closed_at, state) VALUES
           ('old', 'filled', 0, 0, 0, 0, '{from}', '{from}', ''),
           ('old-open-closed-now', 'filled', 0, 0, 0, 0, '{from}', now(), ''),
           ('new', 'placed', 0, 0, 0, 0, now(), NULL, '');
         INSERT INTO user_behavior (session_id, session_start, last_event, duration_seconds, page_views, events,
           distinct_event_types, event_types, state) VALUES
           ('old', '{from}', '{from}', 0, 0, 1, 1, '{{x}}', ''),
           ('new', now(), now(), 0, 0, 1, 1, '{{x}}', '');",
    ))
    .await
    .expect("trading rows");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_analytics"))
        .arg("--config")
        .arg(&env.config_path)
        .arg("retention")
        .output()
        .expect("run analytics retention");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains(&old_events), "{stdout}");

    let exists = |name: String| {
        let pg = &pg;
        async move {
            pg.query_one("SELECT to_regclass($1) IS NOT NULL", &[&name])
                .await
                .expect("regclass")
                .get::<_, bool>(0)
        }
    };
    assert!(
        !exists(old_events).await,
        "the 100-day-old events partition is dropped"
    );
    assert!(!exists(day_name("metric_aggregations", 4_000).0).await);
    assert!(exists(day_name("metric_aggregations", 400).0).await);
    assert_eq!(
        env.count("SELECT count(*) FROM events WHERE event_type = 'old'")
            .await,
        0
    );
    assert_eq!(
        env.count("SELECT count(*) FROM events WHERE event_type = 'new'")
            .await,
        1
    );
    assert_eq!(
        env.count("SELECT count(*) FROM event_counts WHERE event_type = 'old'")
            .await,
        0
    );
    assert_eq!(
        env.count("SELECT count(*) FROM event_counts WHERE event_type = 'new'")
            .await,
        1
    );
    assert_eq!(
        env.count("SELECT count(*) FROM metric_aggregations WHERE \"interval\" = '1m'")
            .await,
        0
    );
    assert_eq!(
        env.count("SELECT count(*) FROM metric_aggregations WHERE \"interval\" = '1d'")
            .await,
        1,
        "daily rollups are kept for 3,650 days"
    );
    let ids = |sql: &'static str| {
        let pg = &pg;
        async move {
            let mut ids: Vec<String> = pg
                .query(sql, &[])
                .await
                .expect(sql)
                .iter()
                .map(|r| r.get(0))
                .collect();
            ids.sort();
            ids
        }
    };
    assert_eq!(
        ids("SELECT strategy_id || ':' || \"interval\" FROM strategy_performance").await,
        ["new:1m", "old:1d"],
        "minute buckets go after 365 days, daily ones stay"
    );
    assert_eq!(
        ids("SELECT symbol FROM market_analytics").await,
        ["NEW"],
        "hour buckets go after 730 days"
    );
    assert_eq!(
        ids("SELECT order_id FROM order_analytics").await,
        ["new", "old-open-closed-now"],
        "orders follow their close"
    );
    assert_eq!(ids("SELECT session_id FROM user_behavior").await, ["new"]);
}
