//! Logging: `tracing` with JSON or console output, to stdout or a file
//! (or stderr, for the commands that print results on stdout).

use std::fs::OpenOptions;
use std::sync::Mutex;

use tracing_subscriber::EnvFilter;

use crate::config::LoggingConfig;

/// Keeps the log file open for the life of the process.
pub struct LogGuard;

pub fn init(config: &LoggingConfig) -> anyhow::Result<LogGuard> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new(format!(
            "{level},rdkafka=warn,tower_http=warn,h2=warn,hyper=warn",
            level = config.level
        ))
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(true);
    let result = match (config.output.as_str(), config.format.as_str()) {
        ("file", format) => {
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&config.file_path)?;
            let builder = builder.with_writer(Mutex::new(file)).with_ansi(false);
            if format == "json" {
                builder.json().try_init()
            } else {
                builder.try_init()
            }
        }
        ("stderr", format) => {
            let builder = builder.with_writer(std::io::stderr);
            if format == "json" {
                builder.json().try_init()
            } else {
                builder.try_init()
            }
        }
        (_, "json") => builder.json().try_init(),
        _ => builder.try_init(),
    };
    result.map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(LogGuard)
}
