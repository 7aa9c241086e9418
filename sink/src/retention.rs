//! Retention: whole daily partitions of `events` are dropped once every
//! event time in them is older than `raw_events`; rollups are deleted per
//! interval class (minute, hour, day) and their partitions dropped once
//! older than the longest policy, and so are the trading buckets
//! (`strategy_performance`, `market_analytics`); per-second state, dead
//! letters, orders (by close, else first event) and sessions (by last
//! event) follow `raw_events`.

use std::time::Duration;

use tracing::info;

use crate::partitions::{day_of, Partitions};
use crate::{Pool, SinkError};

/// How long each kind of row is kept.
#[derive(Clone, Copy, Debug)]
pub struct Policy {
    pub raw_events: Duration,
    pub minute_aggregates: Duration,
    pub hour_aggregates: Duration,
    pub daily_aggregates: Duration,
}

/// What one pass removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub dropped_partitions: Vec<String>,
    pub deleted_rows: u64,
}

fn cutoff_us(now_us: i64, keep: Duration) -> i64 {
    now_us - keep.as_micros() as i64
}

/// Daily partitions of `table` whose whole day lies before `before_us`.
async fn old_partitions(
    client: &tokio_postgres::Client,
    table: &str,
    before_us: i64,
) -> Result<Vec<(String, i64)>, SinkError> {
    let rows = client
        .query(
            "SELECT c.relname FROM pg_inherits i
             JOIN pg_class c ON c.oid = i.inhrelid
             JOIN pg_class p ON p.oid = i.inhparent
             WHERE p.relname = $1",
            &[&table],
        )
        .await?;
    let prefix = format!("{table}_");
    let last_whole_day = day_of(before_us) - 1;
    Ok(rows
        .iter()
        .filter_map(|r| {
            let name: String = r.get(0);
            let suffix = name.strip_prefix(&prefix)?;
            let date = chrono::NaiveDate::parse_from_str(suffix, "%Y%m%d").ok()?;
            let day = date
                .and_hms_opt(0, 0, 0)?
                .and_utc()
                .timestamp()
                .div_euclid(86_400);
            (day <= last_whole_day).then_some((name, day))
        })
        .collect())
}

/// One retention pass at `now_us`.
pub async fn apply(
    pool: &Pool,
    partitions: &Partitions,
    policy: Policy,
    now_us: i64,
) -> Result<Report, SinkError> {
    let mut client = pool.get().await?;
    let mut report = Report::default();
    let raw_cutoff = cutoff_us(now_us, policy.raw_events);
    let longest = policy
        .minute_aggregates
        .max(policy.hour_aggregates)
        .max(policy.daily_aggregates);
    for (table, before_us) in [
        ("events", raw_cutoff),
        ("metric_aggregations", cutoff_us(now_us, longest)),
    ] {
        for (name, day) in old_partitions(&client, table, before_us).await? {
            client
                .batch_execute(&format!(
                    "BEGIN; SELECT pg_advisory_xact_lock(hashtext('partition:{table}'));
                     DROP TABLE IF EXISTS {name}; COMMIT;"
                ))
                .await?;
            partitions.forget(table, day);
            info!(table, partition = %name, "dropped partition past retention");
            report.dropped_partitions.push(name);
        }
    }
    let seconds = |us: i64| us as f64 / 1e6;
    // (statement, cutoff, the trading table it deletes from: those deletes
    // take the table's merge lock, like every merge into it, so a merge
    // never writes back a row read before the delete).
    let mut deletes: Vec<(String, f64, Option<&str>)> = Vec::new();
    // Bucketed rows per interval class: rollups and the trading buckets.
    for (table, bucket) in [
        ("metric_aggregations", "time_bucket"),
        ("strategy_performance", "bucket_start"),
        ("market_analytics", "bucket_start"),
    ] {
        for (intervals, keep) in [
            ("'1m', '5m', '15m', '30m'", policy.minute_aggregates),
            ("'1h', '4h'", policy.hour_aggregates),
            ("'1d'", policy.daily_aggregates),
        ] {
            deletes.push((
                format!(
                    "DELETE FROM {table} WHERE \"interval\" IN ({intervals}) AND {bucket} < to_timestamp($1)"
                ),
                seconds(cutoff_us(now_us, keep)),
                (table != "metric_aggregations").then_some(table),
            ));
        }
    }
    // Rows that follow the raw events: per-second state, orders last
    // touched (closed, else first seen) and sessions last active before
    // the cutoff.
    for (sql, merged) in [
        (
            "DELETE FROM event_counts WHERE second < to_timestamp($1)",
            None,
        ),
        (
            "DELETE FROM second_sums WHERE second < to_timestamp($1)",
            None,
        ),
        (
            "DELETE FROM order_analytics WHERE coalesce(closed_at, first_seen) < to_timestamp($1)",
            Some("order_analytics"),
        ),
        (
            "DELETE FROM user_behavior WHERE last_event < to_timestamp($1)",
            Some("user_behavior"),
        ),
    ] {
        deletes.push((sql.to_string(), seconds(raw_cutoff), merged));
    }
    for (sql, cutoff, merged) in deletes {
        match merged {
            Some(table) => {
                let tx = client.transaction().await?;
                crate::lock_merges(&tx, table).await?;
                report.deleted_rows += tx.execute(&sql, &[&cutoff]).await?;
                tx.commit().await?;
            }
            None => report.deleted_rows += client.execute(&sql, &[&cutoff]).await?,
        }
    }
    report.deleted_rows += client
        .execute(
            "DELETE FROM dead_letters WHERE received_at < to_timestamp($1)",
            &[&seconds(raw_cutoff)],
        )
        .await?;
    Ok(report)
}
