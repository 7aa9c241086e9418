//! The shared store: one GCRA bucket per identity in Redis, updated
//! atomically by a Lua script on the server's clock (`TIME`), so every
//! instance of the service draws on the same budget whatever its own clock
//! says. The script is called with `EVALSHA`; on `NOSCRIPT` (a restarted
//! or flushed Redis) it is sent once with `EVAL`, which caches it again.
//!
//! Every call has a short timeout. The connection is made off the request
//! path (by [`RedisStore::connect`], called from a probe), so a request
//! never waits for a TCP connect.

use std::sync::RwLock;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, ErrorKind, RedisError, Script};

use super::gcra::{Decision, Gcra};

/// Keep in step with [`Gcra::decide`]. KEYS[1]: the bucket; ARGV[1]: the
/// emission interval, ARGV[2]: the tolerance (both µs). Returns
/// `{allowed, µs until full, µs until a retry would pass}`.
const SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local emission = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]))
if tat == nil or tat < now then tat = now end
local new_tat = tat + emission
if new_tat - now > tolerance then
  return {0, tat - now, new_tat - tolerance - now}
end
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000))
return {1, new_tat - now, 0}
";

/// Longest a rate-limit call may take before the request falls back.
pub const OP_TIMEOUT: Duration = Duration::from_millis(150);
/// Longest a (re)connection attempt may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(250);

/// Why Redis could not decide.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("not connected")]
    NotConnected,
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("redis: {0}")]
    Redis(#[from] RedisError),
    #[error("unexpected script reply {0:?}")]
    Reply(Vec<i64>),
}

pub struct RedisStore {
    client: Option<redis::Client>,
    conn: RwLock<Option<MultiplexedConnection>>,
    hash: String,
}

impl RedisStore {
    pub fn new(url: &str) -> RedisStore {
        RedisStore {
            client: redis::Client::open(url).ok(),
            conn: RwLock::new(None),
            hash: Script::new(SCRIPT).get_hash().to_owned(),
        }
    }

    /// Connects and loads the script; on success later calls use this
    /// connection.
    pub async fn connect(&self) -> Result<(), StoreError> {
        let client = self.client.as_ref().ok_or(StoreError::NotConnected)?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(CONNECT_TIMEOUT)
            .set_response_timeout(OP_TIMEOUT);
        let attempt = async {
            let mut conn = client
                .get_multiplexed_async_connection_with_config(&config)
                .await?;
            redis::cmd("SCRIPT")
                .arg("LOAD")
                .arg(SCRIPT)
                .query_async::<String>(&mut conn)
                .await?;
            Ok::<_, RedisError>(conn)
        };
        let conn = tokio::time::timeout(CONNECT_TIMEOUT + OP_TIMEOUT, attempt)
            .await
            .map_err(|_| StoreError::Timeout(CONNECT_TIMEOUT + OP_TIMEOUT))??;
        *self.conn.write().unwrap_or_else(|p| p.into_inner()) = Some(conn);
        Ok(())
    }

    /// Drops the connection (after a failure); the next probe reconnects.
    pub fn forget(&self) {
        *self.conn.write().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Whether the connection answers PING.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.connection()?;
        tokio::time::timeout(
            OP_TIMEOUT,
            redis::cmd("PING").query_async::<String>(&mut conn),
        )
        .await
        .map_err(|_| StoreError::Timeout(OP_TIMEOUT))??;
        Ok(())
    }

    fn connection(&self) -> Result<MultiplexedConnection, StoreError> {
        self.conn
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or(StoreError::NotConnected)
    }

    /// Decides a request on `bucket` in Redis.
    pub async fn check(&self, gcra: &Gcra, bucket: &str) -> Result<Decision, StoreError> {
        let mut conn = self.connection()?;
        let call = async {
            let reply = match self
                .invoke(&mut conn, "EVALSHA", &self.hash, gcra, bucket)
                .await
            {
                Err(e) if e.kind() == ErrorKind::NoScriptError => {
                    self.invoke(&mut conn, "EVAL", SCRIPT, gcra, bucket).await
                }
                other => other,
            }?;
            Ok::<_, StoreError>(reply)
        };
        let reply = tokio::time::timeout(OP_TIMEOUT, call)
            .await
            .map_err(|_| StoreError::Timeout(OP_TIMEOUT))??;
        match reply.as_slice() {
            &[allowed, reset_us, retry_us] if reset_us >= 0 && retry_us >= 0 => {
                Ok(gcra.decision(allowed == 1, reset_us as u64, retry_us as u64))
            }
            _ => Err(StoreError::Reply(reply)),
        }
    }

    async fn invoke(
        &self,
        conn: &mut MultiplexedConnection,
        command: &str,
        script_or_hash: &str,
        gcra: &Gcra,
        bucket: &str,
    ) -> Result<Vec<i64>, RedisError> {
        redis::cmd(command)
            .arg(script_or_hash)
            .arg(1)
            .arg(bucket)
            .arg(gcra.emission_us)
            .arg(gcra.tolerance_us)
            .query_async::<Vec<i64>>(conn)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Needs the Redis of `make services` on 127.0.0.1:6379.
    async fn store() -> RedisStore {
        let store = RedisStore::new("redis://127.0.0.1:6379/0");
        store
            .connect()
            .await
            .expect("redis is up: run `make services`");
        store
    }

    fn bucket(name: &str) -> String {
        format!(
            "analytics:ratelimit:test:{name}:{}:{:?}",
            std::process::id(),
            std::time::SystemTime::now()
        )
    }

    #[tokio::test]
    async fn the_script_agrees_with_the_local_gcra() {
        let store = store().await;
        let gcra = Gcra::new(1, 3);
        let key = bucket("agree");
        for remaining in [2, 1, 0] {
            let d = store.check(&gcra, &key).await.expect("decided");
            assert!(d.allowed);
            assert_eq!(d.remaining, remaining);
            assert_eq!(d.limit, 3);
        }
        let refused = store.check(&gcra, &key).await.expect("decided");
        assert!(!refused.allowed);
        assert_eq!(refused.remaining, 0);
        // About one emission interval (60 s) until the next token, three
        // until full; the Redis clock moved a little meanwhile.
        let retry = refused.retry_after.as_secs_f64();
        assert!((59.0..=60.0).contains(&retry), "retry after {retry}");
        let reset = refused.reset_after.as_secs_f64();
        assert!((179.0..=180.0).contains(&reset), "reset after {reset}");
        let mut conn = store.connection().expect("connected");
        let ttl: i64 = redis::cmd("PTTL")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .expect("PTTL");
        assert!(
            (179_000..=180_000).contains(&ttl),
            "bucket expires when full: {ttl}"
        );
        let _: () = redis::cmd("DEL")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .expect("DEL");
    }

    #[tokio::test]
    async fn noscript_falls_back_to_eval() {
        // A hash Redis has never seen stands for a flushed script cache.
        let mut store = store().await;
        store.hash = "0".repeat(40);
        let gcra = Gcra::new(60, 2);
        let key = bucket("noscript");
        let first = store.check(&gcra, &key).await.expect("decided by EVAL");
        assert!(first.allowed);
        assert_eq!(first.remaining, 1);
        let second = store.check(&gcra, &key).await.expect("decided by EVAL");
        assert_eq!(second.remaining, 0);
        assert!(!store.check(&gcra, &key).await.expect("decided").allowed);
        let mut conn = store.connection().expect("connected");
        let _: () = redis::cmd("DEL")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .expect("DEL");
    }

    #[tokio::test]
    async fn unreachable_fails_fast() {
        let store = RedisStore::new("redis://127.0.0.1:1/0");
        assert!(matches!(
            store.check(&Gcra::new(60, 1), "x").await,
            Err(StoreError::NotConnected)
        ));
        let started = std::time::Instant::now();
        assert!(store.connect().await.is_err());
        assert!(started.elapsed() < CONNECT_TIMEOUT + OP_TIMEOUT + Duration::from_millis(100));
    }
}
