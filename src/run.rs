//! Wiring: PostgreSQL (migrations, partitions, restore), the timely
//! workers, the sink writer, Kafka offset commits, the three HTTP servers,
//! and shutdown (stop ingesting, drain the sink within the grace period,
//! exit). [`run`] reads as the lifecycle: restore, spawn background tasks,
//! start the dataflow, serve, shut down.

use std::collections::HashMap;
use std::io::BufRead;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use dataflows::counts::CommittedQueue;
use dataflows::durable::WorkerAck;
use dataflows::event::{Partition, PartitionOffset, TimeBounds};
use dataflows::kafka_source::{
    spawn_metadata_refresher, KafkaSettings, LinkSecurity, PartitionDirectory,
};
use dataflows::pipeline::{self, ProcessContext, Restored};
use dataflows::windows::{DimSet, Interval, WindowSpec};
use dataflows::LiveSnapshot;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use sink::partitions::Partitions;
use sink::{DbSettings, Pool};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{error, info, warn, Instrument};

use crate::config::Config;

/// How often the custom event schemas are re-read from PostgreSQL besides
/// the `NOTIFY` of every change (a safety net for a lost notification).
const SCHEMA_REFRESH: Duration = Duration::from_secs(5);

/// Where this process sits in the timely cluster.
#[derive(Debug, Clone)]
pub struct Cluster {
    pub workers: usize,
    pub processes: usize,
    pub process: usize,
    pub hostfile: Option<PathBuf>,
}

impl Cluster {
    fn timely_config(&self) -> anyhow::Result<timely::Config> {
        let communication = if self.processes > 1 {
            let addresses = match &self.hostfile {
                Some(path) => {
                    let file = std::fs::File::open(path)
                        .with_context(|| format!("hostfile {}", path.display()))?;
                    let lines: Vec<String> = std::io::BufReader::new(file)
                        .lines()
                        .take(self.processes)
                        .collect::<Result<_, _>>()?;
                    anyhow::ensure!(
                        lines.len() == self.processes,
                        "hostfile has {} addresses, -n is {}",
                        lines.len(),
                        self.processes
                    );
                    lines
                }
                None => (0..self.processes)
                    .map(|i| format!("127.0.0.1:{}", 2101 + i))
                    .collect(),
            };
            timely::CommunicationConfig::Cluster {
                threads: self.workers,
                process: self.process,
                addresses,
                report: false,
                zerocopy: false,
            }
        } else if self.workers > 1 {
            timely::CommunicationConfig::Process(self.workers)
        } else {
            timely::CommunicationConfig::Thread
        };
        Ok(timely::Config {
            communication,
            worker: dataflows::pipeline::worker_config(),
        })
    }
}

/// librdkafka's properties for `kafka.security`.
pub(crate) fn kafka_security(config: &Config) -> LinkSecurity {
    let k = &config.kafka.security;
    let mut out = vec![("security.protocol".to_string(), k.protocol.clone())];
    let mut set = |key: &str, value: &str| {
        if !value.is_empty() {
            out.push((key.to_string(), value.to_string()));
        }
    };
    if k.protocol.ends_with("ssl") {
        set("ssl.ca.location", &k.ca_file);
        set("ssl.certificate.location", &k.cert_file);
        set("ssl.key.location", &k.key_file);
    }
    if k.protocol.starts_with("sasl") {
        set("sasl.mechanism", &k.sasl_mechanism);
        set("sasl.username", &k.username);
        set("sasl.password", &k.password);
    }
    LinkSecurity(out)
}

fn db_settings(config: &Config) -> DbSettings {
    DbSettings {
        host: config.database.host.clone(),
        port: config.database.port,
        database: config.database.database.clone(),
        user: config.database.user.clone(),
        password: config.database.password.clone(),
        max_connections: config.database.max_connections,
        connect_timeout: Duration::from_secs(5),
        application_name: "analytics".into(),
        max_lifetime: Some(config.database.connection_lifetime)
            .filter(|lifetime| !lifetime.is_zero()),
        tls: sink::TlsSettings {
            mode: sink::SslMode::parse(&config.database.ssl_mode).unwrap_or(sink::SslMode::Disable),
            root_cert: Some(&config.database.ssl_root_cert)
                .filter(|p| !p.is_empty())
                .map(PathBuf::from),
            client_cert: Some((&config.database.ssl_cert, &config.database.ssl_key))
                .filter(|(c, k)| !c.is_empty() && !k.is_empty())
                .map(|(c, k)| (PathBuf::from(c), PathBuf::from(k))),
        },
    }
}

pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("tokio")
        .enable_all()
        .build()?)
}

/// Connects and applies migrations, retrying while PostgreSQL is not up.
pub(crate) async fn prepare_database(config: &Config) -> anyhow::Result<Pool> {
    let pool = sink::connect_pool(&db_settings(config))?;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        match pool.get().await {
            Ok(mut client) => {
                let ran = sink::migrate::run(&mut client)
                    .await
                    .context("migrations")?;
                info!(ran, "database migrated");
                return Ok(pool);
            }
            Err(e) => {
                if let deadpool_postgres::PoolError::Backend(cause) = &e {
                    // Retrying cannot help; the message names the
                    // settings, never the password.
                    if let Some(why) = fatal_connect_error(config, cause) {
                        anyhow::bail!("{why}");
                    }
                }
                if Instant::now() >= deadline {
                    return Err(e).context("cannot reach postgresql");
                }
                warn!(error = %e, "waiting for postgresql");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Why connecting cannot succeed by retrying: refused credentials (wrong
/// password, unknown user, no `pg_hba.conf` entry), or TLS that cannot
/// work as configured.
fn fatal_connect_error(config: &Config, e: &tokio_postgres::Error) -> Option<String> {
    use tokio_postgres::error::SqlState;
    let refused = e.code().is_some_and(|code| {
        *code == SqlState::INVALID_PASSWORD
            || *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION
    });
    if refused {
        return Some(format!(
            "PostgreSQL refused the credentials of database.user {:?}: {} (check database.password or database.password_file)",
            config.database.user,
            e.as_db_error().map_or_else(|| e.to_string(), |db| db.message().to_string())
        ));
    }
    crate::secure_links::postgres_tls_refusal(config, e)
}

/// `analytics migrate`.
pub fn migrate_only(config: &Config) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        prepare_database(config).await?;
        Ok(())
    })
}

fn retention_policy(config: &Config) -> sink::retention::Policy {
    let r = &config.analytics.retention;
    sink::retention::Policy {
        raw_events: r.raw_events,
        minute_aggregates: r.minute_aggregates,
        hour_aggregates: r.hour_aggregates,
        daily_aggregates: r.daily_aggregates,
    }
}

/// `analytics retention`: one pass, printed.
pub fn retention_once(config: &Config) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let pool = prepare_database(config).await?;
        let report = sink::retention::apply(
            &pool,
            &Partitions::default(),
            retention_policy(config),
            dataflows::time::now_ms() as i64 * 1000,
        )
        .await?;
        println!(
            "dropped partitions: {:?}; deleted rows: {}",
            report.dropped_partitions, report.deleted_rows
        );
        Ok(())
    })
}

/// Applies retention every hour (the first pass a minute after start).
async fn retention_loop(pool: Pool, partitions: Arc<Partitions>, policy: sink::retention::Policy) {
    let mut next = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        tokio::time::sleep_until(next).await;
        next += Duration::from_secs(3600);
        match sink::retention::apply(
            &pool,
            &partitions,
            policy,
            dataflows::time::now_ms() as i64 * 1000,
        )
        .await
        {
            Ok(report) => info!(
                dropped = report.dropped_partitions.len(),
                deleted_rows = report.deleted_rows,
                "retention pass"
            ),
            Err(e) => warn!(error = %e, "retention pass failed; retried in an hour"),
        }
    }
}

/// Commits consumer-group offsets to Kafka (for lag monitoring only) on a
/// thread of its own, coalescing to the newest offsets.
fn spawn_group_committer(
    settings: &KafkaSettings,
    shutdown: Arc<AtomicBool>,
) -> anyhow::Result<std::sync::mpsc::Sender<Vec<PartitionOffset>>> {
    let (tx, rx) = std::sync::mpsc::channel::<Vec<PartitionOffset>>();
    let consumer: BaseConsumer = settings.client_config().create()?;
    std::thread::Builder::new()
        .name("kafka-commit".into())
        .spawn(move || {
            let mut latest: HashMap<Partition, i64> = HashMap::new();
            loop {
                match rx.recv_timeout(Duration::from_millis(500)) {
                    Ok(list) => {
                        for (t, p, o) in list {
                            latest.insert((t, p), o);
                        }
                        while let Ok(list) = rx.try_recv() {
                            for (t, p, o) in list {
                                latest.insert((t, p), o);
                            }
                        }
                    }
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                        if shutdown.load(Ordering::Relaxed) && latest.is_empty() {
                            continue;
                        }
                    }
                    Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                }
                if latest.is_empty() {
                    continue;
                }
                let mut tpl = TopicPartitionList::new();
                for ((t, p), o) in latest.drain() {
                    let _ = tpl.add_partition_offset(&t, p, Offset::Offset(o));
                }
                if let Err(e) = consumer.commit(&tpl, CommitMode::Sync) {
                    warn!(error = %e, "kafka group offset commit failed (lag monitoring only)");
                }
            }
        })?;
    Ok(tx)
}

async fn shutdown_signal(flag: Arc<AtomicBool>) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    info!("shutdown requested");
    flag.store(true, Ordering::SeqCst);
}

/// `analytics run`: the lifecycle, one step per function below, in order.
pub fn run(config: Config, cluster: Cluster, demo_rate: Option<u32>) -> anyhow::Result<()> {
    exit_on_dataflow_panic();
    register_metrics(&config);
    let rt = runtime()?;
    let basis = Basis::of(&config);
    let mut stored = rt.block_on(restore(&config, &cluster, &basis))?;
    let background = spawn_background(&rt, &config, &basis, &stored, cluster.workers)?;
    let restored = std::mem::take(&mut stored.restored);
    let dataflow = start_dataflow(&config, &cluster, &basis, restored, &background)?;
    let state = app_state(&config, &basis, &stored, &background, &dataflow);
    let result = rt.block_on(async {
        let (servers, stop) = serve(&config, state).await?;
        let demo = demo_rate.map(|rate| {
            crate::demo::spawn(
                config.kafka_brokers(),
                kafka_security(&config),
                config.kafka.topics.clone(),
                rate,
                Arc::clone(&basis.shutdown),
            )
        });
        shutdown_signal(Arc::clone(&basis.shutdown)).await;
        // The writer ends once every sender of its channel is gone: the
        // workers' go when they finish; this one must not outlive them, or
        // every stop waits out the whole grace period.
        drop(background.sink);
        let stopping = Stopping {
            guards: dataflow.guards,
            writer: background.writer,
            servers,
            stop,
            acks: dataflow.acks,
        };
        shut_down(config.server.shutdown_timeout, stopping).await;
        if let Some(Ok(handle)) = demo {
            if handle.is_finished() {
                let _ = handle.join();
            }
        }
        anyhow::Ok(())
    });
    // Threads still blocked (an abandoned drain, librdkafka calls) must not
    // hold the process: the grace period is spent.
    rt.shutdown_background();
    info!("stopped");
    result
}

/// Every metric, with a series per known label value, before anything runs.
fn register_metrics(config: &Config) {
    dataflows::metrics::init(&config.kafka.topics);
    sink::metrics::init();
    api::metrics::init();
    if config.security.api_key_enabled {
        info!(cache_ttl = ?config.security.api_key_cache_ttl, "api keys required on /api/v1");
    }
    for (key, why) in &config.inert {
        warn!(key, why, "configuration key has no effect in this service");
    }
}

/// What every step shares: settings derived from the configuration, the
/// validators and the shutdown flag.
struct Basis {
    tick_ms: u64,
    horizon_ms: u64,
    window_spec: Arc<WindowSpec>,
    time_bounds: TimeBounds,
    validators: Arc<dataflows::validate::Registry>,
    shutdown: Arc<AtomicBool>,
}

impl Basis {
    fn of(config: &Config) -> Basis {
        let tick_ms = config.analytics.dataflow.tick.as_millis().max(1) as u64;
        Basis {
            tick_ms,
            horizon_ms: config.analytics.dataflow.live_horizon.as_millis() as u64,
            window_spec: Arc::new(window_spec(config, tick_ms)),
            time_bounds: TimeBounds {
                max_age_us: config.analytics.retention.raw_events.as_micros() as i64,
                max_future_us: config.analytics.dataflow.max_future.as_micros() as i64,
            },
            validators: Arc::new(dataflows::validate::Registry::default()),
            shutdown: Arc::new(AtomicBool::new(false)),
        }
    }
}

/// What [`restore`] reads from PostgreSQL.
struct Stored {
    pool: Pool,
    partitions: Arc<Partitions>,
    schemas: Arc<sink::schema_sync::SchemaSync>,
    restored: Restored,
}

/// Migrations, partitions, custom event schemas (in force before the first
/// message is read), and on process 0 the live state stored in PostgreSQL.
async fn restore(config: &Config, cluster: &Cluster, basis: &Basis) -> anyhow::Result<Stored> {
    let pool = prepare_database(config).await?;
    let schemas = Arc::new(sink::schema_sync::SchemaSync::new(
        pool.clone(),
        Arc::clone(&basis.validators),
    ));
    schemas.reload().await.context("custom event definitions")?;
    let partitions = Arc::new(Partitions::default());
    let client = pool.get().await?;
    partitions
        .ensure_ahead(
            &**client,
            dataflows::time::now_ms() as i64 * 1000,
            config.analytics.dataflow.partitions_ahead_days,
        )
        .await?;
    drop(client);
    let restored = if cluster.process == 0 {
        let now_ms = dataflows::time::now_ms();
        let from_second = (now_ms as i64 - basis.horizon_ms as i64) / 1000 - 2;
        let users_ms = config.analytics.dashboard.active_users_window.as_millis() as i64;
        let users_from = (now_ms as i64 - users_ms) / 1000 - 2;
        let r = sink::queries::restore(&pool, from_second, &basis.window_spec, now_ms, users_from)
            .await?;
        info!(
            counts = r.counts.len(),
            offsets = r.offsets.len(),
            windows = r.windows.len(),
            users = r.users.len(),
            strategies = r.strategies.len(),
            "restored state from postgresql"
        );
        r
    } else {
        Restored::default()
    };
    Ok(Stored {
        pool,
        partitions,
        schemas,
        restored,
    })
}

/// The background tasks and the channels that join them to the dataflow
/// and the API.
struct Background {
    kafka: KafkaSettings,
    directory: Arc<PartitionDirectory>,
    sink: tokio::sync::mpsc::UnboundedSender<dataflows::durable::SinkBatch>,
    writer: tokio::task::JoinHandle<()>,
    feed: sink::writer::EventFeed,
    stats: Arc<sink::metrics::IngestionStats>,
    sink_degraded: Arc<AtomicBool>,
}

/// Schema sync, retention, Kafka metadata refresh, Kafka group commits
/// (for lag monitoring), and the sink writer (one lane per local worker).
fn spawn_background(
    rt: &tokio::runtime::Runtime,
    config: &Config,
    basis: &Basis,
    stored: &Stored,
    workers: usize,
) -> anyhow::Result<Background> {
    rt.spawn(
        Arc::clone(&stored.schemas)
            .run(db_settings(config), SCHEMA_REFRESH)
            .instrument(tracing::info_span!("schema_sync")),
    );
    rt.spawn(
        retention_loop(
            stored.pool.clone(),
            Arc::clone(&stored.partitions),
            retention_policy(config),
        )
        .instrument(tracing::info_span!("retention")),
    );
    rt.spawn(
        sink::rollups::run_compactor(
            stored.pool.clone(),
            Arc::clone(&stored.partitions),
            basis
                .window_spec
                .intervals
                .iter()
                .map(|(i, _)| *i)
                .collect(),
            config.analytics.dataflow.rollup_compaction_interval,
        )
        .instrument(tracing::info_span!("rollup_compaction")),
    );
    let kafka = KafkaSettings {
        brokers: config.kafka_brokers(),
        group_id: config.kafka.consumer_group.clone(),
        topics: config.kafka.topics.clone(),
        session_timeout_ms: config.kafka.session_timeout.as_millis() as u64,
        poll_budget: config.analytics.dataflow.poll_budget,
        max_pending_rows: config.analytics.dataflow.max_pending_rows,
        catch_up_tick_ms: config.analytics.dataflow.catch_up_tick.as_millis() as u64,
        time_bounds: basis.time_bounds,
        security: kafka_security(config),
    };
    crate::secure_links::check_kafka(config, &kafka, Duration::from_secs(15))?;
    let directory = Arc::new(PartitionDirectory::default());
    let positions: sink::writer::Positions = Arc::new(RwLock::new(
        stored
            .restored
            .offsets
            .iter()
            .map(|(t, p, o)| ((Arc::clone(t), *p), *o))
            .collect(),
    ));
    // Runs until shutdown; nothing waits for it.
    spawn_metadata_refresher(
        kafka.clone(),
        Arc::clone(&directory),
        Arc::clone(&positions),
        Duration::from_secs(5),
        Arc::clone(&basis.shutdown),
    )?;
    let group_commits = Mutex::new(spawn_group_committer(&kafka, Arc::clone(&basis.shutdown))?);
    let (sink, sink_rx) = tokio::sync::mpsc::unbounded_channel();
    let (feed, _) = tokio::sync::broadcast::channel(4096);
    let stats = Arc::new(sink::metrics::IngestionStats::default());
    let sink_degraded = Arc::new(AtomicBool::new(false));
    let writer = rt.spawn(sink::writer::run(
        sink::writer::WriterContext {
            pool: stored.pool.clone(),
            partitions: Arc::clone(&stored.partitions),
            stats: Arc::clone(&stats),
            positions,
            on_commit: Some(Box::new(move |offsets| {
                if let Ok(tx) = group_commits.lock() {
                    let _ = tx.send(offsets.to_vec());
                }
            })),
            degraded: Arc::clone(&sink_degraded),
            max_group_rows: config.analytics.dataflow.max_commit_rows,
            feed: Some(feed.clone()),
        },
        sink_rx,
        workers,
    ));
    Ok(Background {
        kafka,
        directory,
        sink,
        writer,
        feed,
        stats,
        sink_degraded,
    })
}

/// The running dataflow and what the API reads of it.
struct Dataflow {
    guards: timely::communication::WorkerGuards<()>,
    acks: Vec<Arc<WorkerAck>>,
    snapshots: watch::Receiver<Arc<LiveSnapshot>>,
    committed: Arc<CommittedQueue<dataflows::Event>>,
    committed_windows:
        Arc<CommittedQueue<(dataflows::windows::WindowKey, dataflows::windows::Agg)>>,
}

/// Starts the timely workers (connecting to the cluster's peers first).
fn start_dataflow(
    config: &Config,
    cluster: &Cluster,
    basis: &Basis,
    restored: Restored,
    background: &Background,
) -> anyhow::Result<Dataflow> {
    let (snap_tx, snapshots) = watch::channel(Arc::new(LiveSnapshot::default()));
    let committed = Arc::new(CommittedQueue::default());
    let committed_windows = Arc::new(CommittedQueue::default());
    let acks: Vec<Arc<WorkerAck>> = (0..cluster.workers)
        .map(|_| Arc::new(WorkerAck::default()))
        .collect();
    let ctx = Arc::new(ProcessContext {
        kafka: background.kafka.clone(),
        tick_ms: basis.tick_ms,
        horizon_ms: basis.horizon_ms,
        active_users_ms: config.analytics.dashboard.active_users_window.as_millis() as u64,
        windows: Arc::clone(&basis.window_spec),
        workers_per_process: cluster.workers,
        directory: Arc::clone(&background.directory),
        sink: background.sink.clone(),
        acks: acks.clone(),
        committed: Arc::clone(&committed),
        committed_windows: Arc::clone(&committed_windows),
        snapshots: Arc::new(snap_tx),
        restored: Mutex::new(Some(restored)),
        shutdown: Arc::clone(&basis.shutdown),
        validators: Arc::clone(&basis.validators),
        feed: None,
    });
    let guards = timely::execute(cluster.timely_config()?, move |worker| {
        pipeline::run_worker(worker, &ctx);
        if !ctx.shutdown.load(Ordering::SeqCst) {
            error!(
                worker = worker.index(),
                "dataflow worker stopped without a shutdown request; exiting (status {EXIT_DATAFLOW_FAILED}) so that the supervisor restarts the process"
            );
            std::process::exit(EXIT_DATAFLOW_FAILED);
        }
        info!(worker = worker.index(), "worker finished");
    })
    .map_err(|e| anyhow::anyhow!("timely: {e}"))?;
    info!(
        workers = cluster.workers,
        processes = cluster.processes,
        process = cluster.process,
        "dataflow started"
    );
    Ok(Dataflow {
        guards,
        acks,
        snapshots,
        committed,
        committed_windows,
    })
}

/// The handlers' shared state.
fn app_state(
    config: &Config,
    basis: &Basis,
    stored: &Stored,
    background: &Background,
    dataflow: &Dataflow,
) -> api::AppState {
    api::AppState::new(api::Shared {
        settings: Arc::new(api::ApiSettings {
            default_limit: config.analytics.query.default_limit,
            max_results: config.analytics.query.max_results,
            max_body_bytes: config.server.max_body_bytes,
            max_batch_events: config.server.max_batch_events,
            request_timeout: config.server.write_timeout,
            cors_enabled: config.security.cors.enabled,
            cors_origins: config.security.cors.allowed_origins.clone(),
            cors_methods: config.security.cors.allowed_methods.clone(),
            cors_headers: config.security.cors.allowed_headers.clone(),
            time_bounds: basis.time_bounds,
            max_points: config.analytics.query.max_points,
            orders_window_secs: config.analytics.dashboard.orders_window.as_secs() as i64,
            strategy_timeout_us: config.analytics.dashboard.strategy_timeout.as_micros() as i64,
            session_timeout: config.analytics.dashboard.session_timeout,
            api_key_enabled: config.security.api_key_enabled,
            api_key_cache_ttl: config.security.api_key_cache_ttl,
            read_timeout: config.server.read_timeout,
            query_timeout: config.analytics.query.timeout,
            health_path: config.health.path.clone(),
        }),
        pool: stored.pool.clone(),
        partitions: Arc::clone(&stored.partitions),
        snapshots: dataflow.snapshots.clone(),
        committed: Arc::clone(&dataflow.committed),
        committed_windows: Arc::clone(&dataflow.committed_windows),
        feed: background.feed.clone(),
        windows: Arc::clone(&basis.window_spec),
        guard: Arc::new(std::sync::Mutex::new(Default::default())),
        cache: api::cache::Cache::new(
            &redis_url(config),
            config.analytics.query.cache_ttl,
            &format!(
                "{}:{}/{}",
                config.database.host, config.database.port, config.database.database
            ),
        ),
        stats: Arc::clone(&background.stats),
        sink_degraded: Arc::clone(&background.sink_degraded),
        rate_limiter: rate_limiter(config),
        schemas: Arc::clone(&stored.schemas),
        dataflow: Arc::new(dataflows::liveness::DataflowWatch {
            workers: dataflow.acks.clone(),
            max_staleness: config.health.max_staleness,
            stuck_after: config.health.liveness_timeout,
        }),
        live_answers: Default::default(),
    })
}

type Servers = Vec<tokio::task::JoinHandle<std::io::Result<()>>>;

/// Binds and serves the API, health and metrics ports until the returned
/// sender says stop.
async fn serve(
    config: &Config,
    state: api::AppState,
) -> anyhow::Result<(Servers, watch::Sender<bool>)> {
    let (stop, stop_rx) = watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|v| *v).await;
        }
    };
    let host = config.server.host.as_str();
    let bind = |port: u16| async move {
        TcpListener::bind((host, port))
            .await
            .with_context(|| format!("bind {host}:{port}"))
    };
    let api_listener = bind(config.server.port).await?;
    let tls = &config.server.tls;
    let api_server = if tls.cert_file.is_empty() {
        tokio::spawn(api::serve(
            api_listener,
            api::router(state.clone()),
            stopped(),
        ))
    } else {
        let acceptor = api::tls::acceptor(tls.cert_file.as_ref(), tls.key_file.as_ref())
            .map_err(|e| anyhow::anyhow!(e))?;
        tokio::spawn(api::serve(
            api::tls::TlsListener::new(api_listener, acceptor)?,
            api::router(state.clone()),
            stopped(),
        ))
    };
    let mut servers = vec![
        api_server,
        tokio::spawn(api::serve(
            bind(config.health.port).await?,
            api::health_router(state.clone()),
            stopped(),
        )),
    ];
    if config.metrics.enabled {
        servers.push(tokio::spawn(api::serve(
            bind(config.metrics.port).await?,
            api::metrics_router(&config.metrics.path, state.snapshots.clone()),
            stopped(),
        )));
    }
    info!(
        port = config.server.port,
        https = !tls.cert_file.is_empty(),
        health = config.health.port,
        metrics = config.metrics.port,
        "serving"
    );
    Ok((servers, stop))
}

/// Exit status of a process whose dataflow failed (`EX_SOFTWARE`).
const EXIT_DATAFLOW_FAILED: i32 = 70;

/// Ends the process on a panic of a timely thread (worker, or the send and
/// receive threads of a cluster, which panic when a peer is lost): the
/// dataflow cannot go on without it, and serving frozen live state as if it
/// were current is worse than a restart, which resumes exactly once from
/// the offsets and rows in PostgreSQL. Every surviving process of a cluster
/// exits the same way, since each of them loses its peer.
fn exit_on_dataflow_panic() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        let thread = std::thread::current();
        let name = thread.name().unwrap_or_default();
        if name.starts_with("timely") {
            error!(
                thread = name,
                cause = %info,
                "dataflow thread panicked; exiting (status {EXIT_DATAFLOW_FAILED}) so that the supervisor restarts the process"
            );
            std::process::exit(EXIT_DATAFLOW_FAILED);
        }
    }));
}

/// What shutdown waits for.
struct Stopping {
    guards: timely::communication::WorkerGuards<()>,
    writer: tokio::task::JoinHandle<()>,
    servers: Servers,
    stop: watch::Sender<bool>,
    acks: Vec<Arc<WorkerAck>>,
}

/// Stops within `grace` of the signal (`server.shutdown_timeout`): the
/// sources have stopped reading; the workers and the sink writer get what
/// is left of `grace` after a reserve for the HTTP servers to close. Rows
/// not committed by then are abandoned, logged, and read again from Kafka
/// at the next start (their offsets were not committed either), so nothing
/// is lost or stored twice.
async fn shut_down(grace: Duration, stopping: Stopping) {
    let Stopping {
        guards,
        writer,
        servers,
        stop,
        acks,
    } = stopping;
    let deadline = tokio::time::Instant::now() + grace;
    let reserve = (grace / 5).min(Duration::from_secs(2));
    let workers = tokio::task::spawn_blocking(move || guards.join());
    match tokio::time::timeout_at(deadline - reserve, workers).await {
        Ok(Ok(results)) => {
            for r in results {
                if let Err(e) = r {
                    error!(error = %e, "worker failed");
                }
            }
            // The workers end only once the sink acknowledged everything.
            if tokio::time::timeout_at(deadline - reserve / 2, writer)
                .await
                .is_err()
            {
                warn!("sink writer did not finish in time");
            }
        }
        Ok(Err(e)) => error!(error = %e, "worker join failed"),
        Err(_) => {
            let pending: i64 = acks.iter().map(|a| a.pending_rows()).sum();
            let committed_upto = acks.iter().map(|a| a.durable_upto()).min().unwrap_or(0);
            warn!(
                pending_rows = pending,
                committed_upto_tick = committed_upto,
                grace = ?grace,
                "shutdown grace period spent: abandoning the rows not yet committed; they are read again from Kafka at the next start"
            );
        }
    }
    let _ = stop.send(true);
    for (i, result) in futures::future::join_all(
        servers
            .into_iter()
            .map(|s| tokio::time::timeout_at(deadline, s)),
    )
    .await
    .into_iter()
    .enumerate()
    {
        match result {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => error!(server = i, error = %e, "HTTP server failed"),
            Ok(Err(e)) => error!(server = i, error = %e, "HTTP server task failed"),
            Err(_) => warn!(server = i, "HTTP server did not close in time"),
        }
    }
}

/// Which windows to keep, from `analytics.aggregation`.
fn window_spec(config: &Config, tick_ms: u64) -> WindowSpec {
    let mut numeric: Vec<String> = dataflows::windows::DEFAULT_NUMERIC
        .iter()
        .map(|s| s.to_string())
        .collect();
    for extra in &config.analytics.aggregation.numeric_properties {
        if !numeric.contains(extra) {
            numeric.push(extra.clone());
        }
    }
    WindowSpec {
        intervals: config
            .horizons()
            .into_iter()
            .filter_map(|(name, horizon)| {
                Interval::parse(&name).map(|i| (i, horizon.as_millis() as u64))
            })
            .collect(),
        numeric,
        max_dimension_values: config.analytics.aggregation.max_dimension_values,
        dimension_sets: {
            let mut sets: Vec<DimSet> = Vec::new();
            for set in &config.analytics.aggregation.dimension_sets {
                if let Some(set) = DimSet::parse(set).filter(|s| !sets.contains(s)) {
                    sets.push(set);
                }
            }
            sets
        },
        tick_ms,
    }
}

fn rate_limiter(config: &Config) -> api::ratelimit::RateLimiter {
    let limits = &config.security.rate_limit;
    if !limits.enabled {
        return api::ratelimit::RateLimiter::disabled();
    }
    info!(
        requests_per_minute = limits.requests_per_minute,
        burst = limits.burst,
        trust_forwarded_for = limits.trust_forwarded_for,
        "rate limiting /api/v1"
    );
    api::ratelimit::RateLimiter::new(&api::ratelimit::RateLimitSettings {
        requests_per_minute: limits.requests_per_minute,
        burst: limits.burst,
        trust_forwarded_for: limits.trust_forwarded_for,
        redis_url: redis_url(config),
        max_local_identities: limits.max_local_identities,
    })
}

fn redis_url(config: &Config) -> String {
    if config.redis.password.is_empty() {
        format!(
            "redis://{}:{}/{}",
            config.redis.host, config.redis.port, config.redis.db
        )
    } else {
        format!(
            "redis://:{}@{}:{}/{}",
            config.redis.password, config.redis.host, config.redis.port, config.redis.db
        )
    }
}
