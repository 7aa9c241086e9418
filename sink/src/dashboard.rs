//! Dashboard state in PostgreSQL (`second_sums`, `user_last_seen`,
//! `strategy_state`): merged in the same transaction as the raw rows,
//! read back at start-up.

use std::collections::{BTreeMap, HashMap};

use dataflows::dashboard::{CountSum, DashboardDelta, StrategyState};
use differential_dataflow::difference::Semigroup;
use tokio_postgres::{GenericClient, Transaction};

use crate::SinkError;

/// Merges the dashboard contributions `deltas`; keys are sorted so that
/// concurrent writers lock rows in one order.
pub async fn merge(tx: &Transaction<'_>, deltas: &[&DashboardDelta]) -> Result<(), SinkError> {
    let mut sums: BTreeMap<(i64, &'static str), CountSum> = BTreeMap::new();
    let mut users: BTreeMap<&str, i64> = BTreeMap::new();
    let mut strategies: BTreeMap<&str, StrategyState> = BTreeMap::new();
    for delta in deltas {
        for (key, (n, s)) in &delta.sums {
            let slot = sums.entry(*key).or_default();
            slot.0 += n;
            slot.1 += s;
        }
        for (user, second) in &delta.users {
            let slot = users.entry(user).or_insert(*second);
            *slot = (*slot).max(*second);
        }
        for (id, state) in &delta.strategies {
            strategies.entry(id).or_default().plus_equals(state);
        }
    }
    if !sums.is_empty() {
        let seconds: Vec<i64> = sums.keys().map(|(s, _)| *s).collect();
        let series: Vec<&str> = sums.keys().map(|(_, n)| *n).collect();
        let counts: Vec<i64> = sums.values().map(|(c, _)| *c).collect();
        let totals: Vec<String> = sums.values().map(|(_, s)| s.to_string()).collect();
        tx.execute(
            "INSERT INTO second_sums (second, series, count, sum_nano)
             SELECT to_timestamp(s), n, c, t::numeric
             FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::text[]) AS u(s, n, c, t)
             ON CONFLICT (second, series) DO UPDATE
             SET count = second_sums.count + EXCLUDED.count,
                 sum_nano = second_sums.sum_nano + EXCLUDED.sum_nano",
            &[&seconds, &series, &counts, &totals],
        )
        .await?;
    }
    if !users.is_empty() {
        let ids: Vec<&str> = users.keys().copied().collect();
        let last: Vec<i64> = users.values().copied().collect();
        tx.execute(
            "INSERT INTO user_last_seen (user_id, last_second)
             SELECT * FROM unnest($1::text[], $2::bigint[])
             ON CONFLICT (user_id) DO UPDATE
             SET last_second = GREATEST(user_last_seen.last_second, EXCLUDED.last_second)",
            &[&ids, &last],
        )
        .await?;
    }
    if !strategies.is_empty() {
        let ids: Vec<&str> = strategies.keys().copied().collect();
        let at: Vec<i64> = strategies.values().map(|s| s.lifecycle.0).collect();
        let kind: Vec<i16> = strategies
            .values()
            .map(|s| i16::from(s.lifecycle.1))
            .collect();
        let seen: Vec<i64> = strategies.values().map(|s| s.last_seen).collect();
        tx.execute(
            "INSERT INTO strategy_state AS s (strategy_id, lifecycle_at, lifecycle_kind, last_seen)
             SELECT * FROM unnest($1::text[], $2::bigint[], $3::smallint[], $4::bigint[])
             ON CONFLICT (strategy_id) DO UPDATE SET
               lifecycle_at = CASE
                 WHEN (EXCLUDED.lifecycle_at, EXCLUDED.lifecycle_kind) > (s.lifecycle_at, s.lifecycle_kind)
                 THEN EXCLUDED.lifecycle_at ELSE s.lifecycle_at END,
               lifecycle_kind = CASE
                 WHEN (EXCLUDED.lifecycle_at, EXCLUDED.lifecycle_kind) > (s.lifecycle_at, s.lifecycle_kind)
                 THEN EXCLUDED.lifecycle_kind ELSE s.lifecycle_kind END,
               last_seen = GREATEST(s.last_seen, EXCLUDED.last_seen)",
            &[&ids, &at, &kind, &seen],
        )
        .await?;
    }
    Ok(())
}

/// What the dataflow restores: sums from `from_second` on, users seen at or
/// after `users_from_second` (with their last second), every strategy.
pub type RestoredDashboard = (
    Vec<((String, i64), CountSum)>,
    Vec<((String, i64), isize)>,
    Vec<(String, StrategyState)>,
);

pub async fn load<C: GenericClient>(
    client: &C,
    from_second: i64,
    users_from_second: i64,
) -> Result<RestoredDashboard, SinkError> {
    let sums = client
        .query(
            "SELECT series, extract(epoch FROM second)::bigint, count, sum_nano::text
             FROM second_sums WHERE second >= to_timestamp($1)",
            &[&(from_second as f64)],
        )
        .await?
        .iter()
        .filter_map(|r| {
            let sum: i128 = r.get::<_, &str>(3).parse().ok()?;
            Some((
                (r.get::<_, String>(0), r.get::<_, i64>(1)),
                (r.get::<_, i64>(2), sum),
            ))
        })
        .collect();
    let users = client
        .query(
            "SELECT user_id, last_second FROM user_last_seen WHERE last_second >= $1",
            &[&users_from_second],
        )
        .await?
        .iter()
        .map(|r| ((r.get::<_, String>(0), r.get::<_, i64>(1)), 1isize))
        .collect();
    let strategies = client
        .query(
            "SELECT strategy_id, lifecycle_at, lifecycle_kind, last_seen FROM strategy_state",
            &[],
        )
        .await?
        .iter()
        .map(|r| {
            let state = StrategyState {
                lifecycle: (r.get::<_, i64>(1), r.get::<_, i16>(2) as u8),
                last_seen: r.get(3),
            };
            (r.get::<_, String>(0), state)
        })
        .collect::<HashMap<_, _>>()
        .into_iter()
        .collect();
    Ok((sums, users, strategies))
}
