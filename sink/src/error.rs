//! Errors of the sink crate.

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("postgres: {}", describe(.0))]
    Postgres(#[from] tokio_postgres::Error),
    #[error("connection pool: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("pool set-up: {0}")]
    Build(#[from] deadpool_postgres::BuildError),
    #[error("migration {version} ({name}): {source}")]
    Migration {
        version: i32,
        name: String,
        source: tokio_postgres::Error,
    },
    /// A key name or scope list that cannot be stored.
    #[error("api key: {0}")]
    ApiKey(String),
    #[error("an active api key named {0:?} already exists")]
    KeyNameTaken(String),
    /// TLS set-up (certificate files), before any connection.
    #[error("postgres TLS: {0}")]
    Tls(String),
    /// PostgreSQL answered something the writer's own rows rule out.
    #[error("invariant broken: {0}")]
    Invariant(String),
}

/// The server's message for database errors (tokio-postgres' own Display
/// says only "db error"), the error itself otherwise.
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} {}: {}", db.severity(), db.code().code(), db.message()),
        None => e.to_string(),
    }
}
