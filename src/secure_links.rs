//! Start-up checks of the secured links: a refused credential or an
//! untrusted certificate cannot be fixed by retrying, so the process says
//! which setting is wrong and exits, instead of retrying forever. A broker
//! or database that is merely unreachable is waited for as before.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use dataflows::kafka_source::KafkaSettings;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use tracing::warn;

use crate::config::Config;

/// The errors librdkafka reports while the probe runs.
#[derive(Default)]
struct Reported(Mutex<Vec<(RDKafkaErrorCode, String)>>);

impl ClientContext for Reported {
    fn error(&self, error: KafkaError, reason: &str) {
        if let (Some(code), Ok(mut seen)) = (error.rdkafka_error_code(), self.0.lock()) {
            seen.push((code, reason.to_string()));
        }
    }
}

impl ConsumerContext for Reported {}

impl Reported {
    /// The first error that retrying cannot fix.
    fn fatal(&self) -> Option<(RDKafkaErrorCode, String)> {
        let seen = self.0.lock().ok()?;
        seen.iter()
            .find(|(code, _)| {
                matches!(
                    code,
                    RDKafkaErrorCode::Authentication
                        | RDKafkaErrorCode::SaslAuthenticationFailed
                        | RDKafkaErrorCode::SSL
                )
            })
            .cloned()
    }
}

/// With `kafka.security.protocol` other than plaintext: reads the
/// cluster's metadata once, and fails on an authentication or TLS error,
/// naming the settings to check (never the password). Gives up quietly
/// after `wait` when the brokers do not answer at all.
pub fn check_kafka(
    config: &Config,
    settings: &KafkaSettings,
    wait: Duration,
) -> anyhow::Result<()> {
    let security = &config.kafka.security;
    if security.protocol == "plaintext" {
        return Ok(());
    }
    let consumer: BaseConsumer<Reported> = settings
        .client_config()
        .create_with_context(Reported::default())?;
    let deadline = Instant::now() + wait;
    loop {
        let answered = consumer
            .fetch_metadata(None, Duration::from_millis(500))
            .is_ok();
        // Serves the error callbacks.
        let _ = consumer.poll(Duration::from_millis(50));
        if let Some((code, reason)) = consumer.context().fatal() {
            let what = if code == RDKafkaErrorCode::SSL {
                format!(
                    "TLS with the brokers failed (check kafka.security.ca_file {:?} and the brokers' host names)",
                    security.ca_file
                )
            } else {
                format!(
                    "the brokers refused the {} credentials of kafka.security.username {:?} (check kafka.security.password or kafka.security.password_file)",
                    security.sasl_mechanism, security.username
                )
            };
            anyhow::bail!(
                "kafka ({} over {}): {what}: {reason}",
                settings.brokers,
                security.protocol
            );
        }
        if answered {
            return Ok(());
        }
        if Instant::now() >= deadline {
            warn!(brokers = %settings.brokers, "kafka not reachable yet; the sources keep trying");
            return Ok(());
        }
    }
}

/// Why connecting to PostgreSQL cannot succeed by retrying, if that is the
/// case: a certificate that does not verify, or a server without TLS
/// where TLS is required.
pub fn postgres_tls_refusal(config: &Config, e: &tokio_postgres::Error) -> Option<String> {
    // Each cause once: OpenSSL's message repeats through the chain.
    let mut chain = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let text = s.to_string();
        if !chain.contains(&text) {
            chain.push_str(": ");
            chain.push_str(&text);
        }
        source = s.source();
    }
    let db = &config.database;
    let fatal = chain.contains("certificate verify failed")
        || chain.contains("server does not support TLS");
    fatal.then(|| {
        format!(
            "TLS to PostgreSQL at {}:{} failed with database.ssl_mode {:?} (database.ssl_root_cert {:?}): {chain}",
            db.host, db.port, db.ssl_mode, db.ssl_root_cert
        )
    })
}
