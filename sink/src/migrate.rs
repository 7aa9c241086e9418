//! Versioned migrations, embedded from `migrations/` and applied in order
//! under an advisory lock, each in its own transaction.

use tokio_postgres::Client;
use tracing::info;

use crate::SinkError;

/// `(version, name, sql)` of every migration, in order.
pub const MIGRATIONS: &[(i32, &str, &str)] = &[
    (1, "init", include_str!("../../migrations/0001_init.sql")),
    (
        2,
        "api_keys",
        include_str!("../../migrations/0002_api_keys.sql"),
    ),
    (
        3,
        "custom_events",
        include_str!("../../migrations/0003_custom_events.sql"),
    ),
    (
        4,
        "dashboard",
        include_str!("../../migrations/0004_dashboard.sql"),
    ),
    (
        5,
        "trading",
        include_str!("../../migrations/0005_trading.sql"),
    ),
    (
        6,
        "rollup_deltas",
        include_str!("../../migrations/0006_rollup_deltas.sql"),
    ),
    (
        7,
        "hot_updates",
        include_str!("../../migrations/0007_hot_updates.sql"),
    ),
];

const LOCK_KEY: i64 = 0x616e_616c_7974_6963; // "analytic"

/// Applies the migrations not yet applied; returns how many ran. Several
/// processes may start at once: the advisory lock serialises them, and the
/// later ones find everything applied.
pub async fn run(client: &mut Client) -> Result<usize, SinkError> {
    client
        .execute("SELECT pg_advisory_lock($1)", &[&LOCK_KEY])
        .await?;
    let result = apply(client).await;
    client
        .execute("SELECT pg_advisory_unlock($1)", &[&LOCK_KEY])
        .await?;
    result
}

async fn apply(client: &mut Client) -> Result<usize, SinkError> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                version integer PRIMARY KEY,
                name text NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now())",
        )
        .await?;
    let applied: Vec<i32> = client
        .query("SELECT version FROM schema_migrations", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut ran = 0;
    for (version, name, sql) in MIGRATIONS {
        if applied.contains(version) {
            continue;
        }
        let tx = client.transaction().await?;
        let wrap = |source| SinkError::Migration {
            version: *version,
            name: name.to_string(),
            source,
        };
        tx.batch_execute(sql).await.map_err(wrap)?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
            &[version, name],
        )
        .await
        .map_err(wrap)?;
        tx.commit().await.map_err(wrap)?;
        info!(version, name, "applied migration");
        ran += 1;
    }
    Ok(ran)
}
