//! One typed configuration: the YAML format of the replaced service
//! (`config.example.yaml` loads unchanged), environment overrides, and
//! range validation that names the bad key. Loaded once in `main` and
//! passed down; there is no global.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot parse {path}: {source}")]
    Parse {
        path: String,
        source: serde_yaml::Error,
    },
    #[error("invalid environment variable {var}={value:?}: {why}")]
    Env {
        var: &'static str,
        value: String,
        why: String,
    },
    #[error("invalid configuration value {key}: {why}")]
    Invalid { key: &'static str, why: String },
}

macro_rules! section {
    ($name:ident { $($(#[$m:meta])* $field:ident : $ty:ty = $default:expr),* $(,)? }) => {
        #[derive(Clone, Debug, Deserialize)]
        #[serde(default)]
        pub struct $name { $($(#[$m])* pub $field: $ty),* }
        impl Default for $name {
            fn default() -> Self { $name { $($field: $default),* } }
        }
    };
}

section!(ServerConfig {
    host: String = "0.0.0.0".into(),
    port: u16 = 9097,
    #[serde(with = "humantime_serde")]
    read_timeout: Duration = Duration::from_secs(30),
    #[serde(with = "humantime_serde")]
    write_timeout: Duration = Duration::from_secs(30),
    #[serde(with = "humantime_serde")]
    shutdown_timeout: Duration = Duration::from_secs(10),
    /// Largest accepted request body, in bytes.
    max_body_bytes: usize = 1024 * 1024,
    /// Most events in one POSTed batch.
    max_batch_events: usize = 10_000,
    tls: ServerTlsConfig = ServerTlsConfig::default(),
});

section!(ServerTlsConfig {
    /// PEM certificate chain and key: when both are set, the API port
    /// serves HTTPS only (health and metrics ports stay plain HTTP).
    cert_file: String = String::new(),
    key_file: String = String::new(),
});

section!(DatabaseConfig {
    host: String = "127.0.0.1".into(),
    port: u16 = 5432,
    database: String = "analytics".into(),
    user: String = "analytics_user".into(),
    password: String = "change_me".into(),
    /// A file holding the password (as orchestrators mount secrets); read
    /// at start-up, trailing newline removed. Excludes `password`.
    password_file: String = String::new(),
    /// libpq's `sslmode`: disable, prefer, require, verify-ca, verify-full.
    ssl_mode: String = "disable".into(),
    /// PEM file of the roots to trust (libpq's `sslrootcert`); unset with
    /// verify-ca or verify-full: the system's trusted certificates.
    ssl_root_cert: String = String::new(),
    /// Client certificate chain and key (PEM) for servers that ask for one.
    ssl_cert: String = String::new(),
    ssl_key: String = String::new(),
    max_connections: usize = 50,
    max_idle_connections: usize = 10,
    #[serde(with = "humantime_serde")]
    connection_lifetime: Duration = Duration::from_secs(300),
});

section!(RedisConfig {
    host: String = "127.0.0.1".into(),
    port: u16 = 6379,
    password: String = String::new(),
    /// As `database.password_file`.
    password_file: String = String::new(),
    db: i64 = 0,
    pool_size: usize = 10,
    min_idle_conns: usize = 5,
});

section!(KafkaConfig {
    brokers: Vec<String> = vec!["127.0.0.1:9092".into()],
    consumer_group: String = "analytics-consumer-group".into(),
    topics: Vec<String> = vec![
        "trading.events".into(),
        "market.data".into(),
        "order.events".into(),
        "user.actions".into(),
    ],
    enable_auto_commit: bool = false,
    #[serde(with = "humantime_serde")]
    session_timeout: Duration = Duration::from_secs(30),
    security: KafkaSecurityConfig = KafkaSecurityConfig::default(),
});

section!(KafkaSecurityConfig {
    /// plaintext, ssl, sasl_plaintext or sasl_ssl (librdkafka's
    /// `security.protocol`).
    protocol: String = "plaintext".into(),
    /// PEM roots to trust for the brokers' certificates; unset: the
    /// system's trusted certificates.
    ca_file: String = String::new(),
    /// Client certificate and key (PEM), for brokers that ask for one.
    cert_file: String = String::new(),
    key_file: String = String::new(),
    /// SCRAM-SHA-256, SCRAM-SHA-512 or PLAIN (SASL protocols only).
    sasl_mechanism: String = "SCRAM-SHA-512".into(),
    username: String = String::new(),
    password: String = String::new(),
    /// As `database.password_file`.
    password_file: String = String::new(),
});

section!(IngestionConfig {
    batch_size: usize = 1000,
    #[serde(with = "humantime_serde")]
    batch_timeout: Duration = Duration::from_secs(5),
    workers: usize = 2,
    buffer_size: usize = 10_000,
});

section!(AggregationConfig {
    intervals: Vec<String> = interval_names().map(str::to_string).collect(),
    workers: usize = 2,
    /// How long closed windows of each interval stay in memory and take
    /// late events there (humantime); unset intervals use [`default_horizon`].
    horizons: std::collections::BTreeMap<String, String> = Default::default(),
    /// Numeric properties aggregated besides price, quantity, latency_ms,
    /// pnl and commission (notional = price × quantity is always derived).
    numeric_properties: Vec<String> = Vec::new(),
    /// Most distinct values per metric and dimension (symbol, side, strategy_id).
    max_dimension_values: usize = 1_000,
    /// Dimension combinations kept as live rows and rollups besides the
    /// total (each a list of symbol, side, strategy_id); other filtered
    /// queries are answered from the raw events in PostgreSQL.
    dimension_sets: Vec<Vec<String>> = dataflows::windows::DEFAULT_DIMENSION_SETS
        .iter()
        .map(|set| set.iter().map(|d| d.to_string()).collect())
        .collect(),
});

/// The in-memory horizon of an interval when the configuration sets none
/// (see [`dataflows::windows::default_horizon_hours`]).
pub fn default_horizon(interval: &str) -> Duration {
    Duration::from_secs(dataflows::windows::default_horizon_hours(interval) * 3600)
}

section!(RetentionConfig {
    #[serde(with = "humantime_serde")]
    raw_events: Duration = Duration::from_secs(90 * 86_400),
    #[serde(with = "humantime_serde")]
    minute_aggregates: Duration = Duration::from_secs(365 * 86_400),
    #[serde(with = "humantime_serde")]
    hour_aggregates: Duration = Duration::from_secs(730 * 86_400),
    #[serde(with = "humantime_serde")]
    daily_aggregates: Duration = Duration::from_secs(3650 * 86_400),
});

section!(QueryConfig {
    max_results: i64 = 10_000,
    default_limit: i64 = 100,
    #[serde(with = "humantime_serde")]
    timeout: Duration = Duration::from_secs(30),
    #[serde(with = "humantime_serde")]
    cache_ttl: Duration = Duration::from_secs(60),
    /// Most windows one /api/v1/metrics answer may span.
    max_points: i64 = 10_000,
});

section!(DataflowConfig {
    /// Processing-time tick of the dataflow.
    #[serde(with = "humantime_serde")]
    tick: Duration = Duration::from_millis(100),
    /// Longest tick while a source is behind (reads full poll budgets):
    /// a backlog is processed in fewer, larger ticks.
    #[serde(with = "humantime_serde")]
    catch_up_tick: Duration = Duration::from_secs(1),
    /// How long seconds of event time stay in live state (and answer
    /// `/events/stats` from memory).
    #[serde(with = "humantime_serde")]
    live_horizon: Duration = Duration::from_secs(25 * 3600),
    /// Pause a worker's Kafka polling while more than this many of its rows
    /// wait for PostgreSQL in more than one batch, or while a batch waits
    /// and the tick being read holds twice this many (see
    /// `dataflows::time::Pacing`). Each costs about 500 bytes while it waits; 50,000
    /// instead of 100,000 (and 200,000 before it) kept a ten-minute run at
    /// 20,000 events/s under 1 GiB and did not measurably slow catch-up
    /// (benchmarks/RESULTS.md).
    max_pending_rows: i64 = 50_000,
    /// Most rows committed in one PostgreSQL transaction.
    max_commit_rows: usize = 50_000,
    /// How often pending rollup deltas are folded into
    /// `metric_aggregations` (readers count pending ones, so this bounds
    /// only how far that table's own columns lag).
    #[serde(with = "humantime_serde")]
    rollup_compaction_interval: Duration = Duration::from_secs(10),
    /// Most Kafka messages one worker reads per activation.
    poll_budget: usize = 4096,
    /// Daily partitions created ahead of today.
    partitions_ahead_days: i64 = 3,
    /// How far in the future an event time may lie.
    #[serde(with = "humantime_serde")]
    max_future: Duration = Duration::from_secs(86_400),
});

section!(DashboardConfig {
    /// A user is active for this long after an event (event time).
    #[serde(with = "humantime_serde")]
    active_users_window: Duration = Duration::from_secs(300),
    /// Orders, fills, volume, latency and error rate cover this much event time.
    #[serde(with = "humantime_serde")]
    orders_window: Duration = Duration::from_secs(3600),
    /// A started strategy with no event for this long no longer counts as active.
    #[serde(with = "humantime_serde")]
    strategy_timeout: Duration = Duration::from_secs(900),
    /// A user session with no event for this long has ended.
    #[serde(with = "humantime_serde")]
    session_timeout: Duration = Duration::from_secs(1800),
});

section!(AnalyticsConfig {
    ingestion: IngestionConfig = IngestionConfig::default(),
    aggregation: AggregationConfig = AggregationConfig::default(),
    retention: RetentionConfig = RetentionConfig::default(),
    query: QueryConfig = QueryConfig::default(),
    dataflow: DataflowConfig = DataflowConfig::default(),
    dashboard: DashboardConfig = DashboardConfig::default(),
});

section!(MetricsConfig {
    enabled: bool = true,
    port: u16 = 9098,
    path: String = "/metrics".into(),
});

section!(LoggingConfig {
    level: String = "info".into(),
    format: String = "json".into(),
    output: String = "stdout".into(),
    file_path: String = String::new(),
});

section!(HealthConfig {
    port: u16 = 9099,
    path: String = "/health".into(),
    /// `/ready` answers 503 (`"dataflow": "stalled"`) when the published
    /// snapshot is older than this.
    #[serde(with = "humantime_serde")]
    max_staleness: Duration = Duration::from_secs(5),
    /// `/livez` answers 503 (`"dataflow": "failed"`) when a worker has not
    /// stepped for this long.
    #[serde(with = "humantime_serde")]
    liveness_timeout: Duration = Duration::from_secs(30),
});

section!(RateLimitConfig {
    enabled: bool = true,
    requests_per_minute: u32 = 1000,
    burst: u32 = 100,
    /// Take the client address from `X-Forwarded-For` (its last hop): only
    /// behind a proxy that sets it.
    trust_forwarded_for: bool = false,
    /// Most identities the local fallback limiter holds.
    max_local_identities: usize = 100_000,
});

section!(CorsConfig {
    enabled: bool = true,
    allowed_origins: Vec<String> = vec!["http://localhost:3000".into(), "http://localhost:8080".into()],
    allowed_methods: Vec<String> = ["GET", "POST", "PUT", "DELETE"].iter().map(|s| s.to_string()).collect(),
    allowed_headers: Vec<String> = vec!["Content-Type".into(), "Authorization".into()],
});

section!(SecurityConfig {
    api_key_enabled: bool = false,
    /// How long a verified (or refused) API key stays cached in memory: a
    /// revocation takes effect within this time; `0s` looks up every request.
    #[serde(with = "humantime_serde")]
    api_key_cache_ttl: Duration = Duration::from_secs(30),
    rate_limit: RateLimitConfig = RateLimitConfig::default(),
    cors: CorsConfig = CorsConfig::default(),
});

section!(Config {
    server: ServerConfig = ServerConfig::default(),
    database: DatabaseConfig = DatabaseConfig::default(),
    redis: RedisConfig = RedisConfig::default(),
    kafka: KafkaConfig = KafkaConfig::default(),
    analytics: AnalyticsConfig = AnalyticsConfig::default(),
    metrics: MetricsConfig = MetricsConfig::default(),
    logging: LoggingConfig = LoggingConfig::default(),
    health: HealthConfig = HealthConfig::default(),
    security: SecurityConfig = SecurityConfig::default(),
    /// Keys of the replaced service's format that the file sets and that
    /// have no effect here, with why (logged as warnings at start-up).
    #[serde(skip)]
    inert: Vec<(&'static str, &'static str)> = Vec::new(),
    /// Secret keys the file sets inline (checked against their `*_file`).
    #[serde(skip)]
    inline_secrets: Vec<&'static str> = Vec::new(),
});

/// Each secret: the key, its `*_file` form, and the environment variables
/// that set them.
type Secret = (&'static str, &'static str, &'static str, &'static str);

const SECRETS: [Secret; 3] = [
    (
        "database.password",
        "database.password_file",
        "DB_PASSWORD",
        "DB_PASSWORD_FILE",
    ),
    (
        "redis.password",
        "redis.password_file",
        "REDIS_PASSWORD",
        "REDIS_PASSWORD_FILE",
    ),
    (
        "kafka.security.password",
        "kafka.security.password_file",
        "KAFKA_PASSWORD",
        "KAFKA_PASSWORD_FILE",
    ),
];

/// Keys of the format with no meaning in this design, and why. Every other
/// key takes effect (README, "Configuration").
pub const INERT_KEYS: &[(&str, &str)] = &[
    (
        "database.max_idle_connections",
        "the pool keeps up to database.max_connections connections open and closes each after database.connection_lifetime",
    ),
    (
        "redis.pool_size",
        "one multiplexed Redis connection serves every request",
    ),
    (
        "redis.min_idle_conns",
        "one multiplexed Redis connection serves every request",
    ),
    (
        "kafka.enable_auto_commit",
        "offsets are stored in PostgreSQL in the transaction of the rows they carried (exactly once); Kafka's group offsets are committed after it, for lag monitoring only",
    ),
    (
        "analytics.ingestion.batch_size",
        "events are batched per processing-time tick: see analytics.dataflow.poll_budget and analytics.dataflow.max_commit_rows",
    ),
    (
        "analytics.ingestion.batch_timeout",
        "events are batched per processing-time tick: see analytics.dataflow.tick",
    ),
    (
        "analytics.ingestion.buffer_size",
        "the sources pause while analytics.dataflow.max_pending_rows rows wait for PostgreSQL",
    ),
    (
        "analytics.aggregation.workers",
        "aggregation runs in the ingestion dataflow, on analytics.ingestion.workers worker threads (-w)",
    ),
];

/// The window lengths, from the one list the dataflow holds.
fn interval_names() -> impl Iterator<Item = &'static str> {
    dataflows::windows::INTERVALS.iter().map(|(name, _)| *name)
}

fn known_interval(name: &str) -> Result<(), String> {
    if interval_names().any(|n| n == name) {
        Ok(())
    } else {
        let known: Vec<&str> = interval_names().collect();
        Err(format!("{name:?} is not one of {known:?}"))
    }
}

impl Config {
    /// Loads `path` (or the defaults), applies `env`, validates.
    pub fn load(
        path: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let mut config = match path {
            None => Config::default(),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.display().to_string(),
                    source,
                })?;
                Config::from_yaml(&text).map_err(|source| ConfigError::Parse {
                    path: path.display().to_string(),
                    source,
                })?
            }
        };
        config.apply_env(&env)?;
        config.read_secret_files(&env)?;
        config.validate()?;
        Ok(config)
    }

    pub fn from_yaml(text: &str) -> Result<Config, serde_yaml::Error> {
        if text.trim().is_empty() {
            return Ok(Config::default());
        }
        let mut config: Config = serde_yaml::from_str(text)?;
        let tree: serde_yaml::Value = serde_yaml::from_str(text)?;
        let set = |key: &str| {
            key.split('.')
                .try_fold(&tree, |node, part| node.get(part))
                .is_some()
        };
        config.inert = INERT_KEYS
            .iter()
            .filter(|(key, _)| set(key))
            .copied()
            .collect();
        config.inline_secrets = SECRETS
            .iter()
            .map(|(key, ..)| *key)
            .filter(|key| set(key))
            .collect();
        Ok(config)
    }

    /// SERVER_PORT, DB_HOST, DB_PORT, DB_NAME, DB_USER, DB_PASSWORD,
    /// REDIS_HOST, REDIS_PORT, KAFKA_BROKERS (comma separated), LOG_LEVEL.
    /// Reads each `*_file` secret (`database.password_file`,
    /// `redis.password_file`, or the environment's `DB_PASSWORD_FILE`,
    /// `REDIS_PASSWORD_FILE`), without its trailing newline. A secret set
    /// both inline (in the file or its environment variable) and as a file
    /// is refused. Errors name the key and the path, never the secret.
    fn read_secret_files(
        &mut self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<(), ConfigError> {
        let inline_secrets = self.inline_secrets.clone();
        for (&(key, file_key, var, file_var), value, file) in self.secret_fields() {
            let inline = inline_secrets.contains(&key) || env(var).is_some();

            if let Some(path) = env(file_var) {
                *file = path;
            }
            if file.is_empty() {
                continue;
            }
            if inline {
                return Err(ConfigError::Invalid {
                    key: file_key,
                    why: format!("{key} (or {var}) is set too: set only one"),
                });
            }
            let text = std::fs::read_to_string(&*file).map_err(|source| ConfigError::Read {
                path: format!("{file_key} {file}"),
                source,
            })?;
            *value = text.trim_end_matches(['\n', '\r']).to_string();
        }
        Ok(())
    }

    /// Each secret of [`SECRETS`], with its value and its file's path.
    fn secret_fields(&mut self) -> [(&'static Secret, &mut String, &mut String); 3] {
        [
            (
                &SECRETS[0],
                &mut self.database.password,
                &mut self.database.password_file,
            ),
            (
                &SECRETS[1],
                &mut self.redis.password,
                &mut self.redis.password_file,
            ),
            (
                &SECRETS[2],
                &mut self.kafka.security.password,
                &mut self.kafka.security.password_file,
            ),
        ]
    }

    /// This configuration with every secret replaced by `***` (for
    /// `analytics check-config`).
    pub fn redacted(&self) -> Config {
        let mut shown = self.clone();
        for (_, secret, _) in shown.secret_fields() {
            if !secret.is_empty() {
                *secret = "***".into();
            }
        }
        shown
    }

    pub fn apply_env(&mut self, env: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        fn port(var: &'static str, value: String) -> Result<u16, ConfigError> {
            value
                .trim()
                .parse()
                .map_err(|e: std::num::ParseIntError| ConfigError::Env {
                    var,
                    value,
                    why: e.to_string(),
                })
        }
        if let Some(v) = env("SERVER_PORT") {
            self.server.port = port("SERVER_PORT", v)?;
        }
        if let Some(v) = env("DB_HOST") {
            self.database.host = v;
        }
        if let Some(v) = env("DB_PORT") {
            self.database.port = port("DB_PORT", v)?;
        }
        if let Some(v) = env("DB_NAME") {
            self.database.database = v;
        }
        if let Some(v) = env("DB_USER") {
            self.database.user = v;
        }
        for (&(_, _, var, _), value, _) in self.secret_fields() {
            if let Some(v) = env(var) {
                *value = v;
            }
        }
        if let Some(v) = env("REDIS_HOST") {
            self.redis.host = v;
        }
        if let Some(v) = env("REDIS_PORT") {
            self.redis.port = port("REDIS_PORT", v)?;
        }
        if let Some(v) = env("KAFKA_BROKERS") {
            self.kafka.brokers = v
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect();
        }
        if let Some(v) = env("LOG_LEVEL") {
            self.logging.level = v;
        }
        Ok(())
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        fn range<T: PartialOrd + std::fmt::Display>(
            key: &'static str,
            v: T,
            lo: T,
            hi: T,
        ) -> Result<(), ConfigError> {
            if v < lo || v > hi {
                return Err(ConfigError::Invalid {
                    key,
                    why: format!("{v} is outside {lo}..={hi}"),
                });
            }
            Ok(())
        }
        fn invalid(key: &'static str, why: impl Into<String>) -> ConfigError {
            ConfigError::Invalid {
                key,
                why: why.into(),
            }
        }
        range("server.port", self.server.port, 1, 65535)?;
        range("metrics.port", self.metrics.port, 1, 65535)?;
        range("health.port", self.health.port, 1, 65535)?;
        range(
            "health.max_staleness (ms)",
            self.health.max_staleness.as_millis() as u64,
            200,
            3_600_000,
        )?;
        range(
            "health.liveness_timeout (ms)",
            self.health.liveness_timeout.as_millis() as u64,
            1_000,
            3_600_000,
        )?;
        if self.health.max_staleness <= self.analytics.dataflow.tick * 2 {
            return Err(invalid(
                "health.max_staleness",
                "must be more than two ticks (analytics.dataflow.tick)",
            ));
        }
        range("database.port", self.database.port, 1, 65535)?;
        range("redis.port", self.redis.port, 1, 65535)?;
        range(
            "server.max_body_bytes",
            self.server.max_body_bytes,
            1024,
            64 * 1024 * 1024,
        )?;
        range(
            "server.max_batch_events",
            self.server.max_batch_events,
            1,
            100_000,
        )?;
        range(
            "database.max_connections",
            self.database.max_connections,
            2,
            1000,
        )?;
        range("redis.db", self.redis.db, 0, 15)?;
        range(
            "analytics.ingestion.batch_size",
            self.analytics.ingestion.batch_size,
            1,
            1_000_000,
        )?;
        range(
            "analytics.ingestion.workers",
            self.analytics.ingestion.workers,
            1,
            256,
        )?;
        range(
            "analytics.aggregation.workers",
            self.analytics.aggregation.workers,
            1,
            256,
        )?;
        range(
            "analytics.query.max_results",
            self.analytics.query.max_results,
            1,
            1_000_000,
        )?;
        range(
            "analytics.query.default_limit",
            self.analytics.query.default_limit,
            1,
            self.analytics.query.max_results,
        )?;
        let df = &self.analytics.dataflow;
        range(
            "analytics.dataflow.tick",
            df.tick.as_millis() as u64,
            1,
            10_000,
        )?;
        if df.catch_up_tick < df.tick || df.catch_up_tick > Duration::from_secs(60) {
            return Err(invalid(
                "analytics.dataflow.catch_up_tick",
                "must be at least analytics.dataflow.tick and at most 60s",
            ));
        }
        range(
            "analytics.dataflow.live_horizon",
            df.live_horizon.as_secs(),
            60,
            31 * 86_400,
        )?;
        range(
            "analytics.dataflow.max_pending_rows",
            df.max_pending_rows,
            1_000,
            100_000_000,
        )?;
        range(
            "analytics.dataflow.max_commit_rows",
            df.max_commit_rows,
            1,
            10_000_000,
        )?;
        range(
            "analytics.dataflow.rollup_compaction_interval",
            df.rollup_compaction_interval.as_millis() as u64,
            10,
            3_600_000,
        )?;
        range(
            "analytics.dataflow.poll_budget",
            df.poll_budget,
            1,
            1_000_000,
        )?;
        range(
            "analytics.dataflow.partitions_ahead_days",
            df.partitions_ahead_days,
            0,
            366,
        )?;
        range(
            "analytics.retention.raw_events",
            self.analytics.retention.raw_events.as_secs(),
            86_400,
            100 * 365 * 86_400,
        )?;
        range(
            "security.rate_limit.requests_per_minute",
            self.security.rate_limit.requests_per_minute,
            1,
            10_000_000,
        )?;
        range(
            "security.rate_limit.burst",
            self.security.rate_limit.burst,
            1,
            10_000_000,
        )?;
        range(
            "security.api_key_cache_ttl",
            self.security.api_key_cache_ttl.as_secs(),
            0,
            3600,
        )?;
        range(
            "security.rate_limit.max_local_identities",
            self.security.rate_limit.max_local_identities,
            1,
            100_000_000,
        )?;
        if self.kafka.brokers.is_empty() {
            return Err(invalid("kafka.brokers", "at least one broker is required"));
        }
        if self.kafka.topics.is_empty() {
            return Err(invalid("kafka.topics", "at least one topic is required"));
        }
        if self.kafka.consumer_group.trim().is_empty() {
            return Err(invalid("kafka.consumer_group", "must not be empty"));
        }
        for i in &self.analytics.aggregation.intervals {
            known_interval(i).map_err(|e| invalid("analytics.aggregation.intervals", e))?;
        }
        if self.analytics.aggregation.intervals.is_empty() {
            return Err(invalid(
                "analytics.aggregation.intervals",
                "at least one interval is required",
            ));
        }
        for (interval, horizon) in &self.analytics.aggregation.horizons {
            known_interval(interval).map_err(|e| invalid("analytics.aggregation.horizons", e))?;
            let d = humantime::parse_duration(horizon).map_err(|e| {
                invalid(
                    "analytics.aggregation.horizons",
                    format!("{interval}: {horizon:?}: {e}"),
                )
            })?;
            range(
                "analytics.aggregation.horizons",
                d.as_secs(),
                60,
                366 * 86_400,
            )?;
        }
        for set in &self.analytics.aggregation.dimension_sets {
            if set.is_empty() || dataflows::windows::DimSet::parse(set).is_none() {
                return Err(invalid(
                    "analytics.aggregation.dimension_sets",
                    format!(
                        "{set:?}: each set names one or more of {:?}",
                        dataflows::windows::DIMENSIONS
                    ),
                ));
            }
        }
        range(
            "analytics.aggregation.max_dimension_values",
            self.analytics.aggregation.max_dimension_values,
            1,
            1_000_000,
        )?;
        range(
            "analytics.query.max_points",
            self.analytics.query.max_points,
            1,
            1_000_000,
        )?;
        if !["trace", "debug", "info", "warn", "error"].contains(&self.logging.level.as_str()) {
            return Err(invalid(
                "logging.level",
                format!(
                    "{:?} is not one of debug, info, warn, error",
                    self.logging.level
                ),
            ));
        }
        if !["json", "console"].contains(&self.logging.format.as_str()) {
            return Err(invalid("logging.format", "must be json or console"));
        }
        match self.logging.output.as_str() {
            "stdout" => {}
            "file" if !self.logging.file_path.is_empty() => {}
            "file" => {
                return Err(invalid(
                    "logging.file_path",
                    "required when logging.output is file",
                ))
            }
            other => {
                return Err(invalid(
                    "logging.output",
                    format!("{other:?} is not stdout or file"),
                ))
            }
        }
        if !self.metrics.path.starts_with('/') {
            return Err(invalid("metrics.path", "must start with /"));
        }
        if self.server.tls.cert_file.is_empty() != self.server.tls.key_file.is_empty() {
            return Err(invalid(
                "server.tls.key_file",
                "server.tls.cert_file and server.tls.key_file go together",
            ));
        }
        if sink::SslMode::parse(&self.database.ssl_mode).is_none() {
            return Err(invalid(
                "database.ssl_mode",
                "must be one of disable, prefer, require, verify-ca, verify-full",
            ));
        }
        if self.database.ssl_cert.is_empty() != self.database.ssl_key.is_empty() {
            return Err(invalid(
                "database.ssl_key",
                "database.ssl_cert and database.ssl_key go together",
            ));
        }
        let k = &self.kafka.security;
        if !["plaintext", "ssl", "sasl_plaintext", "sasl_ssl"].contains(&k.protocol.as_str()) {
            return Err(invalid(
                "kafka.security.protocol",
                "must be one of plaintext, ssl, sasl_plaintext, sasl_ssl",
            ));
        }
        if k.cert_file.is_empty() != k.key_file.is_empty() {
            return Err(invalid(
                "kafka.security.key_file",
                "kafka.security.cert_file and kafka.security.key_file go together",
            ));
        }
        if k.protocol.starts_with("sasl") {
            if !["SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN"].contains(&k.sasl_mechanism.as_str()) {
                return Err(invalid(
                    "kafka.security.sasl_mechanism",
                    "must be SCRAM-SHA-256, SCRAM-SHA-512 or PLAIN",
                ));
            }
            if k.username.is_empty() {
                return Err(invalid(
                    "kafka.security.username",
                    "is required with a sasl protocol",
                ));
            }
        }
        Ok(())
    }

    /// The in-memory horizon of each configured interval.
    pub fn horizons(&self) -> Vec<(String, Duration)> {
        self.analytics
            .aggregation
            .intervals
            .iter()
            .map(|i| {
                let h = self
                    .analytics
                    .aggregation
                    .horizons
                    .get(i)
                    .and_then(|h| humantime::parse_duration(h).ok())
                    .unwrap_or_else(|| default_horizon(i));
                (i.clone(), h)
            })
            .collect()
    }

    pub fn kafka_brokers(&self) -> String {
        self.kafka.brokers.join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../config/config.example.yaml");

    #[test]
    fn example_loads_unchanged() {
        let c = Config::from_yaml(EXAMPLE).expect("example parses");
        c.validate().expect("example is valid");
        assert_eq!(c.server.port, 9097);
        assert_eq!(c.server.shutdown_timeout, Duration::from_secs(10));
        assert_eq!(c.database.user, "analytics_user");
        assert_eq!(c.database.connection_lifetime, Duration::from_secs(300));
        assert_eq!(c.kafka.topics.len(), 4);
        assert_eq!(
            c.analytics.retention.raw_events,
            Duration::from_secs(90 * 86_400)
        );
        assert_eq!(
            c.analytics.aggregation.intervals,
            vec!["1m", "5m", "15m", "1h", "1d"]
        );
        assert_eq!(c.analytics.query.cache_ttl, Duration::from_secs(60));
        assert!(c.security.api_key_enabled);
        assert_eq!(c.security.api_key_cache_ttl, Duration::from_secs(30));
        assert_eq!(c.security.rate_limit.burst, 100);
        assert!(c.security.rate_limit.enabled);
        assert!(!c.security.rate_limit.trust_forwarded_for);
        assert_eq!(c.security.cors.allowed_origins.len(), 2);
    }

    #[test]
    fn every_key_of_the_format_takes_effect_or_is_reported_inert() {
        let yaml = r#"
server:
  read_timeout: 7s
database:
  max_idle_connections: 3
  connection_lifetime: 2m
redis:
  pool_size: 4
  min_idle_conns: 1
kafka:
  enable_auto_commit: true
analytics:
  ingestion:
    batch_size: 10
    batch_timeout: 1s
    buffer_size: 20
    workers: 3
  aggregation:
    workers: 5
  query:
    timeout: 9s
health:
  path: "/status"
"#;
        let c = Config::from_yaml(yaml).expect("parses");
        c.validate().expect("valid");
        // Wired: each is read where it acts (run.rs, api, sink::pool, main.rs).
        assert_eq!(c.server.read_timeout, Duration::from_secs(7));
        assert_eq!(c.database.connection_lifetime, Duration::from_secs(120));
        assert_eq!(c.analytics.query.timeout, Duration::from_secs(9));
        assert_eq!(c.health.path, "/status");
        assert_eq!(c.analytics.ingestion.workers, 3);
        // Inert: named with a reason, exactly the keys the file set.
        let inert: Vec<&str> = c.inert.iter().map(|(k, _)| *k).collect();
        let all: Vec<&str> = INERT_KEYS.iter().map(|(k, _)| *k).collect();
        assert_eq!(inert, all);
        assert!(c.inert.iter().all(|(_, why)| why.len() > 20));
        // Unset keys are not reported.
        let quiet = Config::from_yaml("server:\n  port: 9000\n").expect("parses");
        assert!(quiet.inert.is_empty());
        let example = Config::from_yaml(EXAMPLE).expect("example parses");
        assert!(example
            .inert
            .iter()
            .any(|(k, _)| *k == "analytics.ingestion.batch_size"));
    }

    #[test]
    fn secrets_come_from_files_without_their_newline() {
        let dir = std::env::temp_dir().join(format!("analytics-secrets-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let (db, redis, config) = (dir.join("db"), dir.join("redis"), dir.join("c.yaml"));
        std::fs::write(&db, "s3cret\n").expect("db secret");
        std::fs::write(&redis, "r3dis").expect("redis secret");
        let load = |yaml: String, env: &[(&str, String)]| {
            std::fs::write(&config, yaml).expect("config");
            let env: Vec<(String, String)> = env
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect();
            Config::load(Some(&config), |k| {
                env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
            })
        };
        let c = load(
            format!(
                "database:\n  password_file: \"{}\"\nredis:\n  password_file: \"{}\"\n",
                db.display(),
                redis.display()
            ),
            &[],
        )
        .expect("loads");
        assert_eq!(c.database.password, "s3cret");
        assert_eq!(c.redis.password, "r3dis");
        let shown = format!("{:?}", c.redacted());
        assert!(
            !shown.contains("s3cret") && !shown.contains("r3dis"),
            "{shown}"
        );
        // The environment's *_FILE form.
        let c = load(
            String::new(),
            &[("DB_PASSWORD_FILE", db.display().to_string())],
        );
        assert_eq!(c.expect("loads").database.password, "s3cret");
        // Both forms at once: refused, naming the key, not the secret.
        let both = load(
            format!(
                "database:\n  password: \"inline-pw\"\n  password_file: \"{}\"\n",
                db.display()
            ),
            &[],
        )
        .expect_err("both refused")
        .to_string();
        assert!(both.contains("database.password_file"), "{both}");
        assert!(
            !both.contains("inline-pw") && !both.contains("s3cret"),
            "{both}"
        );
        // A missing file: the key and the path.
        let missing = load(
            "database:\n  password_file: \"/nonexistent/pw\"\n".into(),
            &[],
        )
        .expect_err("missing file")
        .to_string();
        assert!(
            missing.contains("database.password_file /nonexistent/pw"),
            "{missing}"
        );
        // Kafka's SASL password, from the file or KAFKA_PASSWORD_FILE.
        let c = load(
            format!(
                "kafka:
  security:
    protocol: sasl_ssl
    username: u
    password_file: \"{}\"
",
                redis.display()
            ),
            &[],
        )
        .expect("loads");
        assert_eq!(c.kafka.security.password, "r3dis");
        assert!(!format!("{:?}", c.redacted()).contains("r3dis"));
        let c = load(
            "kafka:
  security:
    protocol: sasl_ssl
    username: u
"
            .into(),
            &[("KAFKA_PASSWORD_FILE", db.display().to_string())],
        );
        assert_eq!(c.expect("loads").kafka.security.password, "s3cret");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn secured_links_are_checked_naming_the_key() {
        let refused = |yaml: &str, key: &str| {
            let c = Config::from_yaml(yaml).expect("parses");
            let e = c.validate().expect_err(yaml).to_string();
            assert!(e.contains(key), "{yaml}: {e}");
        };
        refused("database:\n  ssl_mode: allow\n", "database.ssl_mode");
        refused("database:\n  ssl_cert: /c.pem\n", "database.ssl_key");
        refused(
            "server:\n  tls:\n    cert_file: /c.pem\n",
            "server.tls.key_file",
        );
        refused(
            "kafka:\n  security:\n    protocol: tls\n",
            "kafka.security.protocol",
        );
        refused(
            "kafka:\n  security:\n    protocol: sasl_ssl\n    sasl_mechanism: GSSAPI\n    username: u\n",
            "kafka.security.sasl_mechanism",
        );
        refused(
            "kafka:\n  security:\n    protocol: sasl_plaintext\n",
            "kafka.security.username",
        );
        for mode in sink::SslMode::NAMES {
            let c = Config::from_yaml(&format!("database:\n  ssl_mode: {mode}\n")).expect("parses");
            c.validate().expect(mode);
        }
        let c = Config::from_yaml(
            "kafka:\n  security:\n    protocol: sasl_ssl\n    ca_file: /ca.pem\n    username: u\n    password: p\n",
        )
        .expect("parses");
        c.validate().expect("valid");
        let props = crate::run::kafka_security(&c);
        let get = |k: &str| {
            props
                .0
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("security.protocol"), Some("sasl_ssl"));
        assert_eq!(get("ssl.ca.location"), Some("/ca.pem"));
        assert_eq!(get("sasl.mechanism"), Some("SCRAM-SHA-512"));
        assert_eq!(get("sasl.password"), Some("p"));
        assert_eq!(get("ssl.certificate.location"), None);
    }

    #[test]
    fn env_overrides() {
        let mut c = Config::default();
        let env = |k: &str| match k {
            "SERVER_PORT" => Some("8000".to_string()),
            "DB_HOST" => Some("db".to_string()),
            "KAFKA_BROKERS" => Some("a:1, b:2".to_string()),
            "LOG_LEVEL" => Some("debug".to_string()),
            _ => None,
        };
        c.apply_env(env).expect("valid env");
        assert_eq!(c.server.port, 8000);
        assert_eq!(c.database.host, "db");
        assert_eq!(c.kafka.brokers, vec!["a:1", "b:2"]);
        assert_eq!(c.logging.level, "debug");
        let err = c
            .apply_env(|k| (k == "DB_PORT").then(|| "x".to_string()))
            .expect_err("bad port");
        assert!(err.to_string().contains("DB_PORT"), "{err}");
    }

    #[test]
    fn validation_names_the_key() {
        let cases = [
            ("server:\n  port: 0\n", "server.port"),
            (
                "analytics:\n  query:\n    max_results: 10\n    default_limit: 100\n",
                "analytics.query.default_limit",
            ),
            (
                "analytics:\n  aggregation:\n    intervals: [\"2m\"]\n",
                "analytics.aggregation.intervals",
            ),
            ("logging:\n  level: loud\n", "logging.level"),
            ("kafka:\n  brokers: []\n", "kafka.brokers"),
            (
                "analytics:\n  aggregation:\n    horizons: {\"1m\": soon}\n",
                "analytics.aggregation.horizons",
            ),
            (
                "analytics:\n  aggregation:\n    horizons: {\"1m\": 1s}\n",
                "analytics.aggregation.horizons",
            ),
            (
                "analytics:\n  ingestion:\n    workers: 0\n",
                "analytics.ingestion.workers",
            ),
            (
                "security:\n  api_key_cache_ttl: 2h\n",
                "security.api_key_cache_ttl",
            ),
            (
                "security:\n  rate_limit:\n    requests_per_minute: 0\n",
                "security.rate_limit.requests_per_minute",
            ),
            (
                "security:\n  rate_limit:\n    max_local_identities: 0\n",
                "security.rate_limit.max_local_identities",
            ),
        ];
        for (yaml, key) in cases {
            let c = Config::from_yaml(yaml).expect("parses");
            let err = c.validate().expect_err(yaml);
            assert!(err.to_string().contains(key), "{yaml}: {err}");
        }
        let err = Config::from_yaml("server:\n  read_timeout: soon\n").expect_err("bad duration");
        assert!(err.to_string().contains("read_timeout"), "{err}");
    }

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().expect("defaults valid");
    }
}
