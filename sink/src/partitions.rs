//! Daily range partitions of `events` and `metric_aggregations`, created
//! ahead of time and on demand (an event may carry any accepted
//! timestamp), once per process and day thanks to a cache.

use std::collections::HashSet;
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use tokio_postgres::GenericClient;
use tracing::info;

use crate::SinkError;

/// Tables partitioned by day.
pub const PARTITIONED: &[&str] = &["events", "metric_aggregations"];

pub use dataflows::rows::day_of;

fn day_literal(day: i64) -> String {
    DateTime::<Utc>::from_timestamp(day * 86_400, 0)
        .map(|t| t.format("%Y-%m-%d 00:00:00+00").to_string())
        .unwrap_or_else(|| "1970-01-01 00:00:00+00".to_string())
}

fn day_suffix(day: i64) -> String {
    DateTime::<Utc>::from_timestamp(day * 86_400, 0)
        .map(|t| t.format("%Y%m%d").to_string())
        .unwrap_or_else(|| "19700101".to_string())
}

/// Remembers which partitions exist.
#[derive(Debug, Default)]
pub struct Partitions {
    known: Mutex<HashSet<(&'static str, i64)>>,
}

impl Partitions {
    /// Makes sure `table` has a partition for each of `days`.
    pub async fn ensure<C: GenericClient>(
        &self,
        client: &C,
        table: &'static str,
        days: impl IntoIterator<Item = i64>,
    ) -> Result<(), SinkError> {
        let missing: Vec<i64> = {
            let known = self.known.lock().map(|g| g.clone()).unwrap_or_default();
            let mut days: Vec<i64> = days
                .into_iter()
                .filter(|d| !known.contains(&(table, *d)))
                .collect();
            days.sort_unstable();
            days.dedup();
            days
        };
        for day in missing {
            let sql = format!(
                "SELECT pg_advisory_xact_lock(hashtext('partition:{table}'));
                 CREATE TABLE IF NOT EXISTS {table}_{suffix} PARTITION OF {table}
                 FOR VALUES FROM ('{from}') TO ('{to}');",
                suffix = day_suffix(day),
                from = day_literal(day),
                to = day_literal(day + 1),
            );
            client
                .batch_execute(&format!("BEGIN; {sql} COMMIT;"))
                .await?;
            info!(table, day = %day_literal(day), "partition ready");
            if let Ok(mut known) = self.known.lock() {
                known.insert((table, day));
            }
        }
        Ok(())
    }

    /// Forgets a partition that was dropped.
    pub fn forget(&self, table: &'static str, day: i64) {
        if let Ok(mut known) = self.known.lock() {
            known.remove(&(table, day));
        }
    }

    /// Creates partitions from yesterday to `ahead` days from now for every
    /// partitioned table.
    pub async fn ensure_ahead<C: GenericClient>(
        &self,
        client: &C,
        now_us: i64,
        ahead: i64,
    ) -> Result<(), SinkError> {
        let today = day_of(now_us);
        for table in PARTITIONED {
            self.ensure(client, table, (today - 1)..=(today + ahead))
                .await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn day_names() {
        assert_eq!(day_of(0), 0);
        assert_eq!(day_of(-1), -1);
        assert_eq!(day_suffix(20_000), "20241004");
        assert_eq!(day_literal(20_000), "2024-10-04 00:00:00+00");
    }
}
