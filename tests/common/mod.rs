//! Harness for integration tests against the real services started by
//! `make services`: each test gets its own database, its own Kafka topics
//! and its own ports, and runs the real `analytics` binary as a child
//! process (so that it can be killed with SIGKILL). Every wait is a poll
//! with a deadline.

#![allow(dead_code)]

pub mod produce;

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use serde_json::Value;
use tokio_postgres::NoTls;

pub const BROKERS: &str = "127.0.0.1:9092";
pub const TOPIC_SUFFIXES: &[&str] = &[
    "trading.events",
    "market.data",
    "order.events",
    "user.actions",
];

fn admin_pg() -> String {
    "host=127.0.0.1 port=5432 user=analytics_user password=change_me dbname=analytics".to_string()
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Polls `check` until it returns `Some`, or panics after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One isolated environment: database, topics, ports, config file.
pub struct TestEnv {
    pub name: String,
    pub database: String,
    pub topics: Vec<String>,
    pub api_port: u16,
    pub metrics_port: u16,
    pub health_port: u16,
    pub config_path: PathBuf,
    pub child: Option<Child>,
    pub http: reqwest::Client,
    log_path: PathBuf,
    /// PostgreSQL port the service is told to use (a proxy's, for outage tests).
    pub db_port: u16,
    /// Redis port the service is told to use.
    pub redis_port: u16,
    /// Arguments before the `run` command (timely cluster flags).
    pub args: Vec<String>,
    /// Extra environment of the service process.
    pub env: Vec<(String, String)>,
    /// `analytics.dashboard.active_users_window` (humantime).
    pub active_users_window: String,
    /// `analytics.dashboard.strategy_timeout` (humantime).
    pub strategy_timeout: String,
    /// `security.rate_limit` as (requests_per_minute, burst); `None`: off.
    pub rate_limit: Option<(u32, u32)>,
    /// `analytics.dataflow.rollup_compaction_interval` (humantime).
    pub rollup_compaction_interval: String,
    /// `analytics.dataflow.max_pending_rows`.
    pub max_pending_rows: i64,
    /// Whether this environment created the database and topics (peers
    /// share them), so that dropping it removes them.
    owner: bool,
}

impl TestEnv {
    /// Creates the database and topics (with `partitions` each) and writes the config.
    pub async fn new(name: &str, partitions: i32) -> TestEnv {
        let unique = format!(
            "{name}_{}_{}",
            std::process::id(),
            rand::random::<u32>() % 100_000
        );
        let database = format!("it_{unique}");
        let (client, conn) = tokio_postgres::connect(&admin_pg(), NoTls)
            .await
            .expect("postgres is up: run `make services`");
        tokio::spawn(conn);
        client
            .batch_execute(&format!("CREATE DATABASE {database}"))
            .await
            .expect("create test database");
        let topics: Vec<String> = TOPIC_SUFFIXES
            .iter()
            .map(|t| format!("it.{unique}.{t}"))
            .collect();
        let admin = kafka_admin().expect("kafka admin client");
        let new_topics: Vec<NewTopic<'_>> = topics
            .iter()
            .map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(1)))
            .collect();
        let results = admin
            .create_topics(
                &new_topics,
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
            )
            .await
            .expect("create topics");
        for r in results {
            r.expect("topic created");
        }
        let dir = std::env::temp_dir().join(format!("analytics-it-{unique}"));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let env = TestEnv {
            name: name.to_string(),
            database,
            topics,
            api_port: free_port(),
            metrics_port: free_port(),
            health_port: free_port(),
            config_path: dir.join("config.yaml"),
            child: None,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("http client"),
            log_path: dir.join("service.log"),
            db_port: 5432,
            redis_port: 6379,
            args: Vec::new(),
            env: Vec::new(),
            active_users_window: "5m".into(),
            strategy_timeout: "15m".into(),
            rate_limit: None,
            rollup_compaction_interval: "1s".into(),
            max_pending_rows: 50_000,
            owner: true,
        };
        env.write_config();
        env
    }

    /// Another process of the same deployment: same database and topics,
    /// its own ports, config file and log.
    pub fn peer(&self, suffix: &str) -> TestEnv {
        let dir = self.config_path.parent().expect("config dir").join(suffix);
        std::fs::create_dir_all(&dir).expect("peer dir");
        let env = TestEnv {
            name: format!("{}-{suffix}", self.name),
            database: self.database.clone(),
            topics: self.topics.clone(),
            api_port: free_port(),
            metrics_port: free_port(),
            health_port: free_port(),
            config_path: dir.join("config.yaml"),
            child: None,
            http: self.http.clone(),
            log_path: dir.join("service.log"),
            db_port: self.db_port,
            redis_port: self.redis_port,
            args: Vec::new(),
            env: Vec::new(),
            active_users_window: "5m".into(),
            strategy_timeout: "15m".into(),
            rate_limit: self.rate_limit,
            rollup_compaction_interval: self.rollup_compaction_interval.clone(),
            max_pending_rows: self.max_pending_rows,
            owner: false,
        };
        env.write_config();
        env
    }

    /// Sets the dashboard windows (before `start`).
    pub fn set_dashboard(&mut self, active_users_window: &str, strategy_timeout: &str) {
        self.active_users_window = active_users_window.into();
        self.strategy_timeout = strategy_timeout.into();
        self.write_config();
    }

    /// Sets how often rollup deltas are compacted (before `start`).
    pub fn set_rollup_compaction_interval(&mut self, every: &str) {
        self.rollup_compaction_interval = every.into();
        self.write_config();
    }

    /// Sets `analytics.dataflow.max_pending_rows` (before `start`).
    pub fn set_max_pending_rows(&mut self, rows: i64) {
        self.max_pending_rows = rows;
        self.write_config();
    }

    /// Points the service at other PostgreSQL and Redis ports (before `start`).
    pub fn set_ports(&mut self, db_port: u16, redis_port: u16) {
        self.db_port = db_port;
        self.redis_port = redis_port;
        self.write_config();
    }

    /// Turns rate limiting on with these limits (before `start`); Redis is
    /// the one of [`TestEnv::set_ports`].
    pub fn set_rate_limit(&mut self, requests_per_minute: u32, burst: u32) {
        self.rate_limit = Some((requests_per_minute, burst));
        self.write_config();
    }

    fn write_config(&self) {
        let topics = self
            .topics
            .iter()
            .map(|t| format!("\"{t}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let yaml = format!(
            r#"server:
  host: "127.0.0.1"
  port: {api}
  shutdown_timeout: 10s
database:
  host: "127.0.0.1"
  port: {db_port}
  database: "{db}"
  user: "analytics_user"
  password: "change_me"
  max_connections: 10
redis:
  host: "127.0.0.1"
  port: {redis_port}
kafka:
  brokers: ["{brokers}"]
  consumer_group: "it-{db}"
  topics: [{topics}]
analytics:
  ingestion:
    workers: 2
  dataflow:
    tick: 100ms
    live_horizon: 25h
    rollup_compaction_interval: {rollup_compaction_interval}
    max_pending_rows: {max_pending_rows}
  dashboard:
    active_users_window: {active_users_window}
    strategy_timeout: {strategy_timeout}
metrics:
  port: {metrics}
logging:
  level: "info"
  format: "console"
health:
  port: {health}
security:
  api_key_enabled: false
  rate_limit:
    enabled: {rl_enabled}
    requests_per_minute: {rl_rpm}
    burst: {rl_burst}
"#,
            api = self.api_port,
            db = self.database,
            brokers = BROKERS,
            metrics = self.metrics_port,
            health = self.health_port,
            db_port = self.db_port,
            redis_port = self.redis_port,
            active_users_window = self.active_users_window,
            strategy_timeout = self.strategy_timeout,
            rl_enabled = self.rate_limit.is_some(),
            rl_rpm = self.rate_limit.map_or(1000, |(rpm, _)| rpm),
            rl_burst = self.rate_limit.map_or(100, |(_, burst)| burst),
            rollup_compaction_interval = self.rollup_compaction_interval,
            max_pending_rows = self.max_pending_rows,
        );
        std::fs::write(&self.config_path, yaml).expect("write config");
    }

    /// Requires API keys, cached for `cache_ttl` (humantime). Call after
    /// `set_ports`, which rewrites the file.
    pub fn enable_api_keys(&self, cache_ttl: &str) {
        let yaml = std::fs::read_to_string(&self.config_path).expect("read config");
        assert!(yaml.contains("api_key_enabled: false"), "{yaml}");
        let yaml = yaml.replace(
            "api_key_enabled: false",
            &format!("api_key_enabled: true\n  api_key_cache_ttl: {cache_ttl}"),
        );
        std::fs::write(&self.config_path, yaml).expect("write config");
    }

    /// Takes the database password from a file holding `secret`
    /// (`database.password_file`) instead of the config file.
    pub fn use_password_file(&self, secret: &str) {
        let path = self.config_path.with_file_name("db-password");
        std::fs::write(&path, secret).expect("secret file");
        let yaml = std::fs::read_to_string(&self.config_path).expect("read config");
        let yaml = yaml.replace(
            "  password: \"change_me\"\n",
            &format!("  password_file: \"{}\"\n", path.display()),
        );
        std::fs::write(&self.config_path, yaml).expect("write config");
    }

    /// Runs `analytics --config <this test's config> ARGS` to completion.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_analytics"))
            .arg("--config")
            .arg(&self.config_path)
            .args(args)
            .env("RUST_LOG", "warn")
            .output()
            .expect("run analytics")
    }

    /// `analytics api-key create`: the key, alone on stdout.
    pub fn create_key(&self, name: &str, scopes: &str) -> String {
        let out = self.cli(&["api-key", "create", "--name", name, "--scopes", scopes]);
        assert!(
            out.status.success(),
            "create {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let key = String::from_utf8(out.stdout)
            .expect("utf-8")
            .trim()
            .to_string();
        assert!(key.starts_with("ak_") && !key.contains('\n'), "{key:?}");
        key
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.api_port, path)
    }

    /// Starts the service and waits until it has published a snapshot.
    pub async fn start(&mut self) {
        self.spawn();
        self.wait_ready().await;
    }

    /// Starts the service without waiting.
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_analytics"))
            .arg("--config")
            .arg(&self.config_path)
            .args(&self.args)
            .arg("run")
            .stdout(Stdio::from(log.try_clone().expect("log handle")))
            .stderr(Stdio::from(log))
            .env("RUST_LOG", "info,rdkafka=warn")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .spawn()
            .expect("spawn analytics");
        self.child = Some(child);
    }

    /// Waits until the service has published a snapshot: `/ready` answers
    /// 200, or 503 only because the snapshot is stale (a restart that
    /// catches up on a backlog).
    pub async fn wait_ready(&mut self) {
        let url = self.url("/ready");
        let http = self.http.clone();
        let log_path = self.log_path.clone();
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if let Ok(r) = http.get(&url).send().await {
                let ok = r.status().is_success();
                let body: Value = r.json().await.unwrap_or_default();
                if ok || (body["dataflow"] == "stalled" && body["database"] == "connected") {
                    break;
                }
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!(
                    "service exited with {status}; log:\n{}",
                    std::fs::read_to_string(&log_path).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "service not ready; log:\n{}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGKILL, no goodbye.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("kill -9");
            child.wait().expect("reap");
        }
    }

    /// Waits until the process exits by itself; panics after `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "service did not exit within {timeout:?}; log:\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGTERM; the exit status, which must come within `timeout`.
    pub async fn stop_within(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let child = self.child.as_ref().expect("running");
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        self.wait_exit(timeout).await
    }

    /// SIGTERM and wait for a clean exit.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("service did not stop on SIGTERM within 30 s");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub async fn pg(&self) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(
            &format!(
                "host=127.0.0.1 port=5432 user=analytics_user password=change_me dbname={}",
                self.database
            ),
            NoTls,
        )
        .await
        .expect("connect test database");
        tokio::spawn(conn);
        client
    }

    pub async fn count(&self, sql: &str) -> i64 {
        self.pg().await.query_one(sql, &[]).await.expect(sql).get(0)
    }

    /// Waits until `sql` (a single count) returns `expected`.
    pub async fn wait_count(&self, sql: &str, expected: i64, timeout: Duration) {
        wait_for(&format!("{sql} = {expected}"), timeout, || async {
            (self.count(sql).await == expected).then_some(())
        })
        .await
    }

    /// The Prometheus text the service exposes on its metrics port.
    pub async fn prometheus(&self) -> String {
        self.http
            .get(format!("http://127.0.0.1:{}/metrics", self.metrics_port))
            .send()
            .await
            .expect("metrics answered")
            .text()
            .await
            .expect("metrics text")
    }

    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        let r = self.http.get(self.url(path)).send().await.expect("GET");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// `/api/v1/events/stats` over an explicit, second-aligned range.
    pub async fn stats(&self, start: &str, end: &str) -> Value {
        let (status, body) = self
            .get_json(&format!(
                "/api/v1/events/stats?start_time={start}&end_time={end}"
            ))
            .await;
        assert_eq!(status, 200, "{body}");
        body
    }

    /// Produces with the project's Rust client (rdkafka); waits for every ack.
    pub async fn produce(&self, records: &[(String, String, String)]) {
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", BROKERS)
            .set("acks", "all")
            .set("linger.ms", "5")
            .create()
            .expect("producer");
        let mut pending = Vec::new();
        for (topic, key, payload) in records {
            pending.push(producer.send(
                FutureRecord::to(topic).key(key).payload(payload),
                Duration::from_secs(30),
            ));
            if pending.len() >= 5_000 {
                for p in pending.drain(..) {
                    p.await.expect("delivered");
                }
            }
        }
        for p in pending {
            p.await.expect("delivered");
        }
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // A passed test's database and topics are removed; a failed one's
        // stay for inspection (its log is kept either way).
        if self.owner && !std::thread::panicking() {
            remove_resources(&self.database, &self.topics);
        }
    }
}

/// An admin client of the test broker.
fn kafka_admin() -> rdkafka::error::KafkaResult<AdminClient<DefaultClientContext>> {
    ClientConfig::new()
        .set("bootstrap.servers", BROKERS)
        .create()
}

/// Drops `database` and deletes `topics`, reporting failures on stderr.
/// Runs on a thread of its own with its own runtime: `Drop` may run inside
/// a test's runtime, which cannot be blocked on.
fn remove_resources(database: &str, topics: &[String]) {
    let (database, topics) = (database.to_string(), topics.to_vec());
    let cleanup = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("cleanup runtime");
        runtime.block_on(async {
            let dropped = async {
                let (client, conn) =
                    tokio_postgres::connect(&format!("{} connect_timeout=5", admin_pg()), NoTls)
                        .await?;
                tokio::spawn(conn);
                client
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"))
                    .await
            };
            if let Err(e) = dropped.await {
                eprintln!("test cleanup: database {database} not dropped: {e}");
            }
            let names: Vec<&str> = topics.iter().map(String::as_str).collect();
            let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
            let deleted = async { kafka_admin()?.delete_topics(&names, &options).await }.await;
            match deleted {
                Ok(results) => {
                    for (topic, e) in results.into_iter().filter_map(Result::err) {
                        eprintln!("test cleanup: topic {topic} not deleted: {e}");
                    }
                }
                Err(e) => eprintln!("test cleanup: topics {names:?} not deleted: {e}"),
            }
        });
    });
    let _ = cleanup.join();
}

/// Counts by type, as the oracle sees them.
pub fn by_type(events: &[Value]) -> BTreeMap<String, i64> {
    let mut out = BTreeMap::new();
    for e in events {
        *out.entry(e["event_type"].as_str().expect("type").to_string())
            .or_insert(0) += 1;
    }
    out
}

/// The stats body's `by_type` as a map.
pub fn stats_map(body: &Value) -> BTreeMap<String, i64> {
    body["by_type"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_i64().unwrap_or(-1)))
                .collect()
        })
        .unwrap_or_default()
}

/// Deterministic trading events with event times spread over the last
/// `spread_s` seconds before `base` (whole seconds), keyed over many keys.
pub fn trading_events(
    n: usize,
    seed: u64,
    base: chrono::DateTime<chrono::Utc>,
    spread_s: i64,
) -> Vec<Value> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let types = [
        "order.placed",
        "order.filled",
        "order.canceled",
        "order.rejected",
        "market.data.update",
        "strategy.started",
        "signal.generated",
        "page.view",
        "user.login",
    ];
    (0..n)
        .map(|i| {
            // Skewed: earlier types are much more frequent.
            let t = ((rng.random::<f64>().powi(3)) * types.len() as f64) as usize;
            let ts = base - chrono::Duration::milliseconds(rng.random_range(0..spread_s * 1000));
            serde_json::json!({
                "event_type": types[t.min(types.len() - 1)],
                "user_id": format!("user{}", rng.random_range(0..500)),
                "session_id": format!("s{}", i % 997),
                "properties": {"symbol": "BTCUSDT", "price": 50_000.0 + rng.random::<f64>() * 100.0, "quantity": rng.random::<f64>(), "seq": i},
                "timestamp": ts.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            })
        })
        .collect()
}

/// Which of the four topics an event goes to.
pub fn topic_of<'a>(topics: &'a [String], event_type: &str) -> &'a str {
    let idx = if event_type.starts_with("order.") {
        2
    } else if event_type.starts_with("market.") {
        1
    } else if event_type.starts_with("user.") || event_type.starts_with("page.") {
        3
    } else {
        0
    };
    &topics[idx]
}

/// A TCP proxy to a local port that a test can cut and restore, to take a
/// dependency "down" for one service without touching the shared server.
pub struct Proxy {
    pub port: u16,
    up: tokio::sync::watch::Sender<bool>,
}

impl Proxy {
    pub async fn start(target_port: u16) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let (up, _) = tokio::sync::watch::channel(true);
        let up_rx = up.subscribe();
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                if !*up_rx.borrow() {
                    drop(inbound);
                    continue;
                }
                let mut cut = up_rx.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) =
                        tokio::net::TcpStream::connect(("127.0.0.1", target_port)).await
                    else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.wait_for(|up| !*up) => {}
                    }
                });
            }
        });
        Proxy { port, up }
    }

    /// Drops every connection and refuses new ones.
    pub fn cut(&self) {
        self.up.send_replace(false);
    }

    pub fn restore(&self) {
        self.up.send_replace(true);
    }
}

/// Kafka records for `events`: each to its topic, keyed over `keys` keys.
pub fn kafka_records(
    topics: &[String],
    events: &[Value],
    keys: usize,
) -> Vec<(String, String, String)> {
    events
        .iter()
        .enumerate()
        .map(|(i, e)| {
            (
                topic_of(topics, e["event_type"].as_str().expect("type")).to_string(),
                format!("k{}", i % keys.max(1)),
                e.to_string(),
            )
        })
        .collect()
}

/// A standard normal sample (Box–Muller).
pub fn normal(rng: &mut rand::rngs::StdRng) -> f64 {
    use rand::Rng;
    let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// Nano-units, as the service keeps sums, minima and maxima.
pub fn to_nano(v: f64) -> i128 {
    (v * 1e9).round() as i128
}

/// The exact q-quantile with the sketch's rank convention.
pub fn exact_quantile(sorted: &[f64], q: f64) -> f64 {
    sorted[(q * (sorted.len() - 1) as f64).floor() as usize]
}

/// `name=N` of a tool's one-line summary (`schemathesis: cases=1850 …`).
pub fn summary_field(summary: &str, name: &str) -> u64 {
    summary
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} in {summary:?}"))
}

/// Runs `command`: whether it succeeded, and its stdout and stderr.
pub fn run_report(command: &mut Command) -> (bool, String) {
    let out = command.output().expect("run a test tool");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), report)
}
