//! `analytics`: the real-time trading analytics service.
//!
//! The binary owns the command line, configuration, logging, and the
//! wiring of timely workers (threads of their own) to one tokio runtime
//! (axum, the PostgreSQL writer, Kafka offset commits). See `run.rs`.

mod config;
mod demo;
mod keys;
mod logging;
mod run;
mod secure_links;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "analytics",
    version,
    about = "Real-time trading analytics service"
)]
struct Cli {
    /// YAML configuration file (the replaced service's format).
    #[arg(long, short = 'c', global = true, env = "ANALYTICS_CONFIG")]
    config: Option<PathBuf>,
    /// Timely worker threads per process (default: analytics.ingestion.workers).
    #[arg(long = "workers", short = 'w', global = true)]
    workers: Option<usize>,
    /// Processes in the timely cluster.
    #[arg(long = "processes", short = 'n', global = true, default_value_t = 1)]
    processes: usize,
    /// This process's index in the cluster.
    #[arg(long = "process", short = 'p', global = true, default_value_t = 0)]
    process: usize,
    /// File with one `host:port` per process, in process order.
    #[arg(long = "hostfile", global = true)]
    hostfile: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the service (the default).
    Run {
        /// Also run the built-in demo producer, feeding trading events to Kafka.
        #[arg(long)]
        demo: bool,
        /// Events per second produced by the demo producer.
        #[arg(long, default_value_t = 200)]
        demo_rate: u32,
    },
    /// Apply database migrations and exit.
    Migrate,
    /// Load and validate the configuration, print it, and exit.
    CheckConfig,
    /// Apply the retention policy once (the service also does it hourly).
    Retention,
    /// Manage API keys (stored hashed in PostgreSQL).
    #[command(subcommand)]
    ApiKey(keys::KeyCommand),
    /// Print the API's OpenAPI 3.1 document (as served at
    /// `/api/v1/openapi.json`) and exit.
    Openapi,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = config::Config::load(cli.config.as_deref(), |k| std::env::var(k).ok())
        .context("configuration")?;
    // `api-key` prints keys and listings on stdout: its logs go to stderr.
    let mut log_config = config.logging.clone();
    if matches!(cli.command, Some(Command::ApiKey(_))) && log_config.output == "stdout" {
        log_config.output = "stderr".into();
    }
    let _guard = logging::init(&log_config).context("logging")?;
    let cluster = run::Cluster {
        workers: cli
            .workers
            .unwrap_or(config.analytics.ingestion.workers)
            .max(1),
        processes: cli.processes.max(1),
        process: cli.process,
        hostfile: cli.hostfile,
    };
    match cli.command.unwrap_or(Command::Run {
        demo: false,
        demo_rate: 200,
    }) {
        Command::Run { demo, demo_rate } => run::run(config, cluster, demo.then_some(demo_rate)),
        Command::Migrate => run::migrate_only(&config),
        Command::Retention => run::retention_once(&config),
        Command::ApiKey(command) => keys::run(&config, command),
        Command::Openapi => {
            println!("{}", api::openapi_document().to_pretty_json()?);
            Ok(())
        }
        Command::CheckConfig => {
            println!("{:#?}", config.redacted());
            Ok(())
        }
    }
}
