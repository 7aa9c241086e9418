//! The connection pool, and TLS to PostgreSQL with libpq's `sslmode`
//! semantics (OpenSSL, as libpq itself uses).

use std::path::PathBuf;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, RecyclingMethod, Runtime};
use openssl::ssl::{SslConnector, SslFiletype, SslMethod, SslVerifyMode};
use postgres_openssl::MakeTlsConnector;
use tokio_postgres::config::SslMode as WireMode;

use crate::SinkError;

/// `database.ssl_mode`, as libpq's `sslmode` (`allow` is not offered).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslMode {
    /// Plain TCP only.
    Disable,
    /// TLS when the server offers it, plain otherwise; no verification.
    Prefer,
    /// TLS only; the chain is verified only when a root certificate is
    /// configured (as libpq does when its root file exists).
    Require,
    /// TLS only; the chain must lead to a trusted root; any host name.
    VerifyCa,
    /// TLS only; the chain must be trusted and name the host connected to.
    VerifyFull,
}

impl SslMode {
    pub const NAMES: [&'static str; 5] =
        ["disable", "prefer", "require", "verify-ca", "verify-full"];

    pub fn parse(s: &str) -> Option<SslMode> {
        Some(match s {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }
}

/// How connections to PostgreSQL are secured.
#[derive(Clone, Debug)]
pub struct TlsSettings {
    pub mode: SslMode,
    /// PEM roots to trust (`database.ssl_root_cert`); `None` with a
    /// verifying mode: the system's trust store.
    pub root_cert: Option<PathBuf>,
    /// A client certificate chain and its key (`database.ssl_cert`,
    /// `database.ssl_key`), sent when the server asks for one.
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

impl Default for TlsSettings {
    fn default() -> TlsSettings {
        TlsSettings {
            mode: SslMode::Disable,
            root_cert: None,
            client_cert: None,
        }
    }
}

impl TlsSettings {
    /// The connector every connection uses (with `disable`, it is never
    /// asked to negotiate TLS). Fails on unreadable certificate files.
    pub fn connector(&self) -> Result<MakeTlsConnector, SinkError> {
        let tls =
            |e: openssl::error::ErrorStack, what: &str| SinkError::Tls(format!("{what}: {e}"));
        let mut builder =
            SslConnector::builder(SslMethod::tls_client()).map_err(|e| tls(e, "TLS set-up"))?;
        let verify = match self.mode {
            SslMode::Disable | SslMode::Prefer => false,
            SslMode::Require => self.root_cert.is_some(),
            SslMode::VerifyCa | SslMode::VerifyFull => true,
        };
        if verify {
            builder.set_verify(SslVerifyMode::PEER);
            match &self.root_cert {
                Some(path) => builder
                    .set_ca_file(path)
                    .map_err(|e| tls(e, &format!("database.ssl_root_cert {}", path.display())))?,
                None => builder
                    .set_default_verify_paths()
                    .map_err(|e| tls(e, "the system's trusted certificates"))?,
            }
        } else {
            builder.set_verify(SslVerifyMode::NONE);
        }
        if let Some((cert, key)) = &self.client_cert {
            builder
                .set_certificate_chain_file(cert)
                .map_err(|e| tls(e, &format!("database.ssl_cert {}", cert.display())))?;
            builder
                .set_private_key_file(key, SslFiletype::PEM)
                .map_err(|e| tls(e, &format!("database.ssl_key {}", key.display())))?;
            builder
                .check_private_key()
                .map_err(|e| tls(e, "database.ssl_key does not match database.ssl_cert"))?;
        }
        let mut connector = MakeTlsConnector::new(builder.build());
        if self.mode != SslMode::VerifyFull {
            connector.set_callback(|config, _| {
                config.set_verify_hostname(false);
                Ok(())
            });
        }
        Ok(connector)
    }

    fn wire_mode(&self) -> WireMode {
        match self.mode {
            SslMode::Disable => WireMode::Disable,
            SslMode::Prefer => WireMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => WireMode::Require,
        }
    }
}

pub type Pool = deadpool_postgres::Pool;

/// How to reach PostgreSQL.
#[derive(Clone, Debug)]
pub struct DbSettings {
    pub host: String,
    pub port: u16,
    pub database: String,
    pub user: String,
    pub password: String,
    pub max_connections: usize,
    pub connect_timeout: Duration,
    pub application_name: String,
    /// A connection older than this is closed instead of reused
    /// (`database.connection_lifetime`); `None`: kept while it works.
    pub max_lifetime: Option<Duration>,
    pub tls: TlsSettings,
}

impl DbSettings {
    pub fn pg_config(&self) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        config
            .host(&self.host)
            .port(self.port)
            .dbname(&self.database)
            .user(&self.user)
            .password(&self.password)
            .application_name(&self.application_name)
            .connect_timeout(self.connect_timeout)
            .ssl_mode(self.tls.wire_mode());
        config
    }

    /// One connection outside the pool (the `LISTEN` connection).
    pub async fn connect(
        &self,
    ) -> Result<
        (
            tokio_postgres::Client,
            tokio_postgres::Connection<
                tokio_postgres::Socket,
                postgres_openssl::TlsStream<tokio_postgres::Socket>,
            >,
        ),
        SinkError,
    > {
        Ok(self.pg_config().connect(self.tls.connector()?).await?)
    }
}

/// A pool of connections; nothing is connected until first use.
pub fn connect_pool(settings: &DbSettings) -> Result<Pool, SinkError> {
    let manager = Manager::from_config(
        settings.pg_config(),
        settings.tls.connector()?,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let mut builder = Pool::builder(manager)
        .max_size(settings.max_connections.max(2))
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(settings.connect_timeout))
        .create_timeout(Some(settings.connect_timeout))
        .recycle_timeout(Some(settings.connect_timeout));
    if let Some(lifetime) = settings.max_lifetime {
        // A failed pre-recycle hook drops the connection; the pool opens a
        // new one in its place.
        builder = builder.pre_recycle(deadpool_postgres::Hook::sync_fn(move |_, metrics| {
            if metrics.age() > lifetime {
                Err(deadpool_postgres::HookError::Message(
                    "database.connection_lifetime reached".into(),
                ))
            } else {
                Ok(())
            }
        }));
    }
    Ok(builder.build()?)
}
