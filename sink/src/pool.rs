//! The connection pool.

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;

use crate::SinkError;

pub type Pool = deadpool_postgres::Pool;

/// How to reach PostgreSQL.
#[derive(Clone, Debug)]
pub struct DbSettings {
    pub host: String,
    pub port: u16,
    pub database: String,
    pub user: String,
    pub password: String,
    pub max_connections: usize,
    pub connect_timeout: Duration,
    pub application_name: String,
    /// A connection older than this is closed instead of reused
    /// (`database.connection_lifetime`); `None`: kept while it works.
    pub max_lifetime: Option<Duration>,
}

impl DbSettings {
    pub fn pg_config(&self) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        config
            .host(&self.host)
            .port(self.port)
            .dbname(&self.database)
            .user(&self.user)
            .password(&self.password)
            .application_name(&self.application_name)
            .connect_timeout(self.connect_timeout);
        config
    }
}

/// A pool of connections; nothing is connected until first use.
pub fn connect_pool(settings: &DbSettings) -> Result<Pool, SinkError> {
    let manager = Manager::from_config(
        settings.pg_config(),
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let mut builder = Pool::builder(manager)
        .max_size(settings.max_connections.max(2))
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(settings.connect_timeout))
        .create_timeout(Some(settings.connect_timeout))
        .recycle_timeout(Some(settings.connect_timeout));
    if let Some(lifetime) = settings.max_lifetime {
        // A failed pre-recycle hook drops the connection; the pool opens a
        // new one in its place.
        builder = builder.pre_recycle(deadpool_postgres::Hook::sync_fn(move |_, metrics| {
            if metrics.age() > lifetime {
                Err(deadpool_postgres::HookError::Message(
                    "database.connection_lifetime reached".into(),
                ))
            } else {
                Ok(())
            }
        }));
    }
    Ok(builder.build()?)
}
