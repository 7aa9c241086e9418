//! The Redis cache of historical answers. Every operation has a short
//! timeout and failures read as misses, so a Redis outage only slows
//! history down; health reports it as degraded.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use tokio::sync::Mutex;

use crate::metrics::{CACHE_HITS, CACHE_MISSES};

const OP_TIMEOUT: Duration = Duration::from_millis(250);
const CONNECT_TIMEOUT: Duration = Duration::from_millis(1500);

/// A lazily connected, shared Redis connection.
#[derive(Clone)]
pub struct Cache {
    client: Option<redis::Client>,
    conn: Arc<Mutex<Option<MultiplexedConnection>>>,
    pub ttl: Duration,
    /// Put before every key: answers come from one database, so two
    /// deployments sharing a Redis must not read each other's.
    prefix: String,
}

impl Cache {
    /// `namespace` names where the cached answers come from (the
    /// database), so that deployments sharing a Redis never mix them.
    pub fn new(url: &str, ttl: Duration, namespace: &str) -> Cache {
        Cache {
            client: redis::Client::open(url).ok(),
            conn: Arc::new(Mutex::new(None)),
            ttl,
            prefix: format!("{namespace}:"),
        }
    }

    async fn connection(&self) -> Option<MultiplexedConnection> {
        let client = self.client.as_ref()?;
        let mut slot = self.conn.lock().await;
        if slot.is_none() {
            if let Ok(Ok(conn)) =
                tokio::time::timeout(CONNECT_TIMEOUT, client.get_multiplexed_async_connection())
                    .await
            {
                *slot = Some(conn);
            }
        }
        slot.clone()
    }

    async fn forget(&self) {
        *self.conn.lock().await = None;
    }

    /// Whether Redis answers PING.
    pub async fn ping(&self) -> bool {
        let Some(mut conn) = self.connection().await else {
            return false;
        };
        let cmd = redis::cmd("PING");
        let ok = matches!(
            tokio::time::timeout(CONNECT_TIMEOUT, cmd.query_async::<String>(&mut conn)).await,
            Ok(Ok(_))
        );
        if !ok {
            self.forget().await;
        }
        ok
    }

    /// The cached bytes under `key`, counted as a hit or a miss.
    pub async fn get(&self, key: &str) -> Option<Vec<u8>> {
        let found = match self.connection().await {
            Some(mut conn) => {
                let cmd = redis::cmd("GET")
                    .arg(format!("{}{key}", self.prefix))
                    .clone();
                match tokio::time::timeout(
                    OP_TIMEOUT,
                    cmd.query_async::<Option<Vec<u8>>>(&mut conn),
                )
                .await
                {
                    Ok(Ok(v)) => v,
                    _ => {
                        self.forget().await;
                        None
                    }
                }
            }
            None => None,
        };
        if found.is_some() {
            CACHE_HITS.inc();
        } else {
            CACHE_MISSES.inc();
        }
        found
    }

    /// Stores `value` under `key` for the configured TTL; failures are ignored.
    pub async fn set(&self, key: &str, value: &[u8]) {
        let Some(mut conn) = self.connection().await else {
            return;
        };
        let ttl = self.ttl.as_millis().max(1) as u64;
        let cmd = redis::cmd("SET")
            .arg(format!("{}{key}", self.prefix))
            .arg(value)
            .arg("PX")
            .arg(ttl)
            .clone();
        if !matches!(
            tokio::time::timeout(OP_TIMEOUT, cmd.query_async::<()>(&mut conn)).await,
            Ok(Ok(()))
        ) {
            self.forget().await;
        }
    }
}
