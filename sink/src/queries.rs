//! Reads: state to restore at start-up, history for the API, health.

use std::collections::BTreeMap;
use std::sync::Arc;

use dataflows::event::{Event, EventSource};
use dataflows::pipeline::Restored;
use dataflows::windows::WindowSpec;
use tokio_postgres::IsolationLevel;

use crate::encode::PgMicros;
use crate::{Pool, SinkError};

/// Reads, in one snapshot, the per-second counts from `from_second` on and
/// every stored Kafka offset: the state the dataflow resumes from.
pub async fn restore(
    pool: &Pool,
    from_second: i64,
    spec: &WindowSpec,
    now_ms: u64,
    users_from_second: i64,
) -> Result<Restored, SinkError> {
    let mut client = pool.get().await?;
    let tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
    let counts = tx
        .query(
            "SELECT event_type, extract(epoch FROM second)::bigint, count
             FROM event_counts WHERE second >= to_timestamp($1)",
            &[&(from_second as f64)],
        )
        .await?
        .iter()
        .map(|r| {
            (
                (r.get::<_, String>(0), r.get::<_, i64>(1)),
                r.get::<_, i64>(2),
            )
        })
        .collect();
    let offsets = tx
        .query(
            "SELECT topic, \"partition\", next_offset FROM kafka_offsets",
            &[],
        )
        .await?
        .iter()
        .map(|r| {
            (
                Arc::from(r.get::<_, String>(0)),
                r.get::<_, i32>(1),
                r.get::<_, i64>(2),
            )
        })
        .collect();
    let mut windows = Vec::new();
    for (interval, _) in &spec.intervals {
        let Some(from) = spec.covered_from(*interval, now_ms) else {
            continue;
        };
        // One window earlier than full coverage may still be partly held.
        let from = from - interval.seconds();
        for stored in crate::rollups::load(&*tx, *interval, from).await? {
            if spec.expire_at(&stored.key) > now_ms {
                windows.push((stored.key, stored.agg));
            }
        }
    }
    let (sums, users, strategies) =
        crate::dashboard::load(&*tx, from_second, users_from_second).await?;
    tx.commit().await?;
    Ok(Restored {
        counts,
        offsets,
        windows,
        sums,
        users,
        strategies,
    })
}

/// Event counts by type for event times in `[from_us, to_us)`: whole
/// seconds from `event_counts`, the partial seconds at the edges from
/// `events`.
pub async fn stats_by_type(
    pool: &Pool,
    from_us: i64,
    to_us: i64,
) -> Result<BTreeMap<String, i64>, SinkError> {
    let client = pool.get().await?;
    let mut out: BTreeMap<String, i64> = BTreeMap::new();
    if from_us >= to_us {
        return Ok(out);
    }
    let first_whole = from_us.div_euclid(1_000_000) + i64::from(from_us.rem_euclid(1_000_000) != 0);
    let last_whole = to_us.div_euclid(1_000_000);
    let mut raw_ranges = Vec::new();
    if first_whole < last_whole {
        let rows = client
            .query(
                "SELECT event_type, sum(count)::bigint FROM event_counts
                 WHERE second >= to_timestamp($1) AND second < to_timestamp($2)
                 GROUP BY event_type",
                &[&(first_whole as f64), &(last_whole as f64)],
            )
            .await?;
        for r in rows {
            *out.entry(r.get(0)).or_insert(0) += r.get::<_, i64>(1);
        }
        raw_ranges.push((from_us, first_whole * 1_000_000));
        raw_ranges.push((last_whole * 1_000_000, to_us));
    } else {
        raw_ranges.push((from_us, to_us));
    }
    for (a, b) in raw_ranges {
        if a >= b {
            continue;
        }
        let rows = client
            .query(
                "SELECT event_type, count(*) FROM events
                 WHERE \"timestamp\" >= $1 AND \"timestamp\" < $2 GROUP BY event_type",
                &[&PgMicros(a), &PgMicros(b)],
            )
            .await?;
        for r in rows {
            *out.entry(r.get(0)).or_insert(0) += r.get::<_, i64>(1);
        }
    }
    out.retain(|_, n| *n != 0);
    Ok(out)
}

/// Events with event time in `[from_us, to_us)`, newest first.
pub async fn list_events(
    pool: &Pool,
    from_us: i64,
    to_us: i64,
    event_type: Option<&str>,
    limit: i64,
) -> Result<Vec<Event>, SinkError> {
    let client = pool.get().await?;
    let rows = client
        .query(
            "SELECT id, event_type, user_id, session_id, properties::text,
                    (extract(epoch FROM \"timestamp\") * 1000000)::bigint,
                    (extract(epoch FROM created_at) * 1000000)::bigint,
                    kafka_topic, kafka_partition, kafka_offset
             FROM events
             WHERE \"timestamp\" >= $1 AND \"timestamp\" < $2
               AND ($3::text IS NULL OR event_type = $3)
             ORDER BY \"timestamp\" DESC
             LIMIT $4",
            &[&PgMicros(from_us), &PgMicros(to_us), &event_type, &limit],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            let topic: Option<String> = r.get(7);
            let source = match topic {
                Some(topic) => EventSource::Kafka {
                    topic: Arc::from(topic),
                    partition: r.get::<_, Option<i32>>(8).unwrap_or(0),
                    offset: r.get::<_, Option<i64>>(9).unwrap_or(0),
                },
                None => EventSource::Rest,
            };
            Event {
                id: r.get(0),
                event_type: r.get(1),
                user_id: r.get(2),
                session_id: r.get(3),
                properties: r.get(4),
                timestamp_us: r.get(5),
                created_at_us: r.get(6),
                source,
                parsed: Default::default(),
            }
        })
        .collect())
}

/// Whether PostgreSQL answers.
pub async fn ping(pool: &Pool) -> Result<(), SinkError> {
    let client = pool.get().await?;
    client.simple_query("SELECT 1").await?;
    Ok(())
}
