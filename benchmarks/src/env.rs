//! Isolated environments for one measurement, as the integration tests
//! make them: a fresh PostgreSQL database and four fresh Kafka topics per
//! run ([`Fixture`]), and a child process serving HTTP on its own ports
//! ([`Child`]): the real `analytics` binary with a generated config, or
//! `bench baseline`. Every wait is a poll with a deadline.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::ClientConfig;
use tokio_postgres::NoTls;

use crate::loadgen::LoadSpec;

/// Where the shared services are.
#[derive(Debug, Clone)]
pub struct Services {
    pub brokers: String,
    pub pg_host: String,
    pub pg_port: u16,
    pub pg_user: String,
    pub pg_password: String,
    /// The database to connect to for `CREATE DATABASE`.
    pub pg_admin_db: String,
    pub redis_host: String,
    pub redis_port: u16,
}

impl Services {
    pub fn pg_conn(&self, database: &str) -> String {
        format!(
            "host={} port={} user={} password={} dbname={}",
            self.pg_host, self.pg_port, self.pg_user, self.pg_password, database
        )
    }
}

pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A fresh database and four fresh topics, dropped by [`Fixture::cleanup`].
#[derive(Debug)]
pub struct Fixture {
    pub name: String,
    pub database: String,
    pub topics: Vec<String>,
    pub services: Services,
    pub dir: PathBuf,
}

impl Fixture {
    pub async fn new(services: &Services, name: &str, partitions: i32) -> anyhow::Result<Fixture> {
        let unique = format!(
            "{name}_{}_{}",
            chrono::Utc::now().format("%Y%m%d%H%M%S"),
            rand::random::<u32>() % 100_000
        );
        let database = format!("bench_{unique}");
        let (client, conn) =
            tokio_postgres::connect(&services.pg_conn(&services.pg_admin_db), NoTls)
                .await
                .context("postgresql is up (make services)")?;
        tokio::spawn(conn);
        client
            .batch_execute(&format!("CREATE DATABASE {database}"))
            .await
            .context("create database")?;
        let topics = LoadSpec::topics_for(&format!("bench.{unique}."));
        let admin = admin(&services.brokers)?;
        let new_topics: Vec<NewTopic<'_>> = topics
            .iter()
            .map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(1)))
            .collect();
        for r in admin
            .create_topics(
                &new_topics,
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
            )
            .await
            .context("create topics")?
        {
            r.map_err(|(t, e)| anyhow::anyhow!("create topic {t}: {e}"))?;
        }
        let dir = std::env::temp_dir().join(format!("analytics-bench-{unique}"));
        std::fs::create_dir_all(&dir)?;
        Ok(Fixture {
            name: unique,
            database,
            topics,
            services: services.clone(),
            dir,
        })
    }

    /// Drops the database and deletes the topics (they can hold gigabytes).
    pub async fn cleanup(&self) -> anyhow::Result<()> {
        let (client, conn) =
            tokio_postgres::connect(&self.services.pg_conn(&self.services.pg_admin_db), NoTls)
                .await?;
        tokio::spawn(conn);
        // FORCE cannot end an autovacuum worker (a superuser's process) for
        // a non-superuser; try again until it ends. After a soak's millions
        // of rows one ran for more than a minute (the database was left
        // behind with a 60 s limit), so wait up to ten.
        let deadline = std::time::Instant::now() + Duration::from_secs(600);
        loop {
            let dropped = client
                .batch_execute(&format!(
                    "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                    self.database
                ))
                .await;
            match dropped {
                Ok(()) => break,
                Err(_) if std::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_secs(1)).await
                }
                Err(e) => return Err(e).context("drop database"),
            }
        }
        let admin = admin(&self.services.brokers)?;
        let names: Vec<&str> = self.topics.iter().map(String::as_str).collect();
        admin
            .delete_topics(
                &names,
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
            )
            .await
            .context("delete topics")?;
        Ok(())
    }
}

fn admin(brokers: &str) -> anyhow::Result<AdminClient<DefaultClientContext>> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .context("kafka admin client")
}

/// The `analytics` config for a fixture: its database, topics and ports;
/// rate limits and API keys off (the reads phase is one client at
/// thousands of requests per second); logs at `log_level`;
/// `analytics_extra`, YAML lines indented by two, goes into the `analytics`
/// section.
pub fn analytics_config(
    fx: &Fixture,
    workers: usize,
    api: u16,
    metrics: u16,
    health: u16,
    log_level: &str,
    analytics_extra: &str,
) -> String {
    let s = &fx.services;
    let topics = fx
        .topics
        .iter()
        .map(|t| format!("\"{t}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        r#"server:
  host: "127.0.0.1"
  port: {api}
  shutdown_timeout: 30s
database:
  host: "{pg_host}"
  port: {pg_port}
  database: "{db}"
  user: "{pg_user}"
  password: "{pg_password}"
  max_connections: 10
redis:
  host: "{redis_host}"
  port: {redis_port}
kafka:
  brokers: ["{brokers}"]
  consumer_group: "bench-{db}"
  topics: [{topics}]
analytics:
  ingestion:
    workers: {workers}
{analytics_extra}metrics:
  port: {metrics}
logging:
  level: "{log_level}"
  format: "console"
health:
  port: {health}
security:
  api_key_enabled: false
  rate_limit:
    enabled: false
"#,
        pg_host = s.pg_host,
        pg_port = s.pg_port,
        db = fx.database,
        pg_user = s.pg_user,
        pg_password = s.pg_password,
        redis_host = s.redis_host,
        redis_port = s.redis_port,
        brokers = s.brokers,
    )
}

/// A child process serving the API on `api_port`.
#[derive(Debug)]
pub struct Child {
    pub what: String,
    pub api_port: u16,
    pub child: Option<std::process::Child>,
    pub log_path: PathBuf,
}

impl Child {
    /// Starts `program args`, logging to `log_path`.
    pub fn spawn(
        what: &str,
        program: &Path,
        args: &[String],
        api_port: u16,
        log_path: PathBuf,
        rust_log: &str,
    ) -> anyhow::Result<Child> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)?;
        let child = Command::new(program)
            .args(args)
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .env("RUST_LOG", rust_log)
            .spawn()
            .with_context(|| format!("start {}", program.display()))?;
        Ok(Child {
            what: what.into(),
            api_port,
            child: Some(child),
            log_path,
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.api_port)
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let start = log.len().saturating_sub(4_000);
        log.get(start..).unwrap_or_default().to_string()
    }

    /// Waits until `path` answers 200.
    pub async fn wait_ready(&mut self, http: &reqwest::Client, path: &str) -> anyhow::Result<()> {
        let url = format!("{}{path}", self.base_url());
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Ok(r) = http.get(&url).send().await {
                if r.status().is_success() {
                    return Ok(());
                }
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                anyhow::bail!(
                    "{} exited with {status}; log:\n{}",
                    self.what,
                    self.log_tail()
                );
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "{} not ready after 120 s; log:\n{}",
                self.what,
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGTERM, then SIGKILL after 30 s.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                if Instant::now() > deadline {
                    eprintln!("{} did not stop on SIGTERM within 30 s; killing", self.what);
                    let _ = child.kill();
                    let _ = child.wait();
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Resident set size of a process, in KiB (`VmRSS` of `/proc/PID/status`).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}
