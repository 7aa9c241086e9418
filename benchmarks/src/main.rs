//! `bench`: the benchmark harness (see `benchmarks/README.md`).
//!
//! ```text
//! bench loadgen --rate N | --max  --duration S [--events N] --seed X [--brokers B] [--topic-prefix P]
//! bench core -w N --events M [--seed X]
//! bench baseline --topics a,b,c,d --database DB --port P [...]
//! bench all [--quick] [--phases core,ingest,...]
//! ```

use std::sync::atomic::AtomicBool;
use std::time::Duration;

use benchmarks::all::{AllArgs, ServiceArgs};
use benchmarks::baseline::BaselineArgs;
use benchmarks::loadgen::{self, LoadSpec};
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "bench", about = "Benchmarks of the analytics service")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Write generated trading events to the four topics.
    Loadgen {
        /// Events per second.
        #[arg(long, conflicts_with = "max", required_unless_present = "max")]
        rate: Option<f64>,
        /// As fast as the producer accepts them.
        #[arg(long)]
        max: bool,
        /// Seconds.
        #[arg(long, default_value_t = 60)]
        duration: u64,
        /// Stop after this many events, if sooner than `--duration`.
        #[arg(long)]
        events: Option<u64>,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        #[arg(long, env = "KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
        brokers: String,
        /// Prefix of the topic names (`""`: trading.events, market.data, ...).
        #[arg(long, default_value = "")]
        topic_prefix: String,
    },
    /// The dataflow alone: in-memory events through N worker threads, no services.
    Core {
        #[arg(short = 'w', long = "workers", default_value_t = 1)]
        workers: usize,
        #[arg(long, default_value_t = 2_000_000)]
        events: u64,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Processing-time tick, ms (the service's default is 100).
        #[arg(long, default_value_t = benchmarks::core::TICK_MS)]
        tick_ms: u64,
        /// Longest tick while the source is behind, ms (the service's
        /// `analytics.dataflow.catch_up_tick`, default 1000); equal to
        /// `--tick-ms` for fixed ticks.
        #[arg(long, default_value_t = benchmarks::core::CATCH_UP_TICK_MS)]
        catch_up_tick_ms: u64,
        /// Longest wait for the snapshot to count every event, seconds.
        #[arg(long, default_value_t = 600)]
        max_wait: u64,
        /// Print the result as one JSON line instead of text.
        #[arg(long)]
        json: bool,
    },
    /// The replaced design: batch INSERT consumer + SQL API, until SIGTERM.
    Baseline {
        /// The four topics, comma separated.
        #[arg(long, value_delimiter = ',', required = true)]
        topics: Vec<String>,
        #[arg(long)]
        database: String,
        #[arg(long, default_value_t = 9197)]
        port: u16,
        #[arg(long)]
        group: Option<String>,
        #[arg(long, default_value_t = 1_000)]
        batch_rows: usize,
        /// Longest wait before a partial batch is written, ms.
        #[arg(long, default_value_t = 100)]
        flush_ms: u64,
        #[command(flatten)]
        services: ServiceArgs,
    },
    /// Every benchmark, ours and the baseline, on fresh databases and topics.
    All(Box<AllArgs>),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Loadgen {
            rate,
            max,
            duration,
            events,
            seed,
            brokers,
            topic_prefix,
        } => {
            let spec = LoadSpec {
                brokers,
                topics: LoadSpec::topics_for(&topic_prefix),
                rate: if max { None } else { rate },
                duration: Duration::from_secs(duration),
                events,
                seed,
            };
            let report = loadgen::run(&spec, None, &AtomicBool::new(false))?;
            println!(
                "produced {} events ({} valid, {} invalid, {} late) in {:.2} s: {:.0} events/s; delivered {}, failed {}",
                report.tally.total,
                report.tally.valid,
                report.tally.invalid,
                report.tally.late,
                report.send_s,
                report.rate,
                report.delivered,
                report.failed
            );
            println!("{}", serde_json::to_string(&report)?);
            anyhow::ensure!(report.failed == 0, "{} messages failed", report.failed);
        }
        Command::Core {
            workers,
            events,
            seed,
            tick_ms,
            catch_up_tick_ms,
            max_wait,
            json,
        } => {
            let r = benchmarks::core::run(
                workers,
                events,
                seed,
                tick_ms,
                catch_up_tick_ms,
                Duration::from_secs(max_wait),
            )?;
            if json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                println!(
                    "dataflow core -w {}: {} events ({} invalid) in {:.3} s: {:.0} events/s, {:.0} per worker (generation {:.1} s, not timed); {} live windows, RSS {:.0} -> {:.0} MiB, {} bytes per live window (heap {}, of which the snapshot {}){}",
                    r.workers,
                    r.events,
                    r.invalid,
                    r.seconds,
                    r.events_per_s,
                    r.events_per_s_per_worker,
                    r.generate_s,
                    r.live_windows,
                    r.rss_before_mib,
                    r.rss_end_mib,
                    r.bytes_per_live_window
                        .map_or("-".to_string(), |b| format!("{b:.0}")),
                    r.heap_bytes_per_live_window
                        .map_or("-".to_string(), |b| format!("{b:.0}")),
                    r.snapshot_bytes_per_live_window
                        .map_or("-".to_string(), |b| format!("{b:.0}")),
                    if r.completed {
                        String::new()
                    } else {
                        format!("; INCOMPLETE: {} of {} valid events counted", r.reflected, r.valid)
                    }
                );
            }
        }
        Command::Baseline {
            topics,
            database,
            port,
            group,
            batch_rows,
            flush_ms,
            services,
        } => {
            benchmarks::baseline::run(BaselineArgs {
                brokers: services.brokers.clone(),
                topics,
                group: group.unwrap_or_else(|| format!("baseline-{database}")),
                db: services.db_settings(&database),
                port,
                batch_rows,
                flush_ms,
            })?;
        }
        Command::All(args) => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            let results = rt.block_on(benchmarks::all::run(*args))?;
            if !results.errors.is_empty() {
                anyhow::bail!("{} phase(s) failed", results.errors.len());
            }
        }
    }
    Ok(())
}
