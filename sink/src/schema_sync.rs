//! Keeps the validator registry ([`dataflows::validate::Registry`]) equal
//! to the active definitions stored in PostgreSQL, off the timely workers.
//!
//! [`SchemaSync::reload`] reads the active definitions and hands them to
//! the registry, which compiles only new definition versions; reloads are
//! serialised, so an older read never replaces a newer one. It runs:
//! - at start-up, before the dataflow reads its first message;
//! - right after a change made through this process's API (so the change is
//!   in force on this process before the API answers);
//! - on every notification of [`NOTIFY_CHANNEL`] (a change made by any
//!   process, or by hand), received on a dedicated `LISTEN` connection that
//!   is re-opened when it drops;
//! - every `interval`, as a safety net for a lost notification.

use std::sync::Arc;
use std::time::Duration;

use dataflows::validate::{Refresh, Registry};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_postgres::AsyncMessage;
use tracing::{debug, info, warn, Instrument};

use crate::custom_events::{load_active, NOTIFY_CHANNEL};
use crate::{DbSettings, Pool, SinkError};

/// The registry and how to refresh it.
#[derive(Debug)]
pub struct SchemaSync {
    pool: Pool,
    registry: Arc<Registry>,
    lock: tokio::sync::Mutex<()>,
}

impl SchemaSync {
    pub fn new(pool: Pool, registry: Arc<Registry>) -> Self {
        SchemaSync {
            pool,
            registry,
            lock: tokio::sync::Mutex::new(()),
        }
    }

    /// The registry this task keeps current.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// Reads the active definitions and puts them in force.
    pub async fn reload(&self) -> Result<Refresh, SinkError> {
        let _serial = self.lock.lock().await;
        let active = load_active(&self.pool).await?;
        let refresh = self.registry.replace(active);
        for (name, error) in &refresh.failed {
            warn!(name = %name, error = %error, "stored custom event schema does not compile; not in force");
        }
        if refresh.changed {
            info!(
                version = self.registry.version(),
                compiled = refresh.compiled,
                active = self.registry.snapshot().len(),
                "custom event schemas refreshed"
            );
        }
        Ok(refresh)
    }

    /// Runs forever: reloads on every notification and every `interval`.
    pub async fn run(self: Arc<Self>, db: DbSettings, interval: Duration) {
        let (wake_tx, mut wake_rx) = mpsc::unbounded_channel::<()>();
        tokio::spawn(listen(db, wake_tx).instrument(tracing::info_span!("schema_listener")));
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                woke = wake_rx.recv() => {
                    if woke.is_none() {
                        // The listener is gone; keep the periodic refresh.
                        ticker.tick().await;
                    }
                    // Coalesce a burst of notifications into one reload.
                    while wake_rx.try_recv().is_ok() {}
                }
            }
            if let Err(e) = self.reload().await {
                warn!(error = %e, "custom event schema refresh failed");
            }
        }
    }
}

/// Holds a `LISTEN` connection, re-opening it when it drops; sends a wake-up
/// for every notification and after every (re)connection, since
/// notifications sent while it was down are lost.
async fn listen(db: DbSettings, wake: mpsc::UnboundedSender<()>) {
    let mut backoff = Duration::from_millis(200);
    loop {
        match db.connect().await {
            Ok((client, mut connection)) => {
                let (msg_tx, mut msg_rx) = mpsc::unbounded_channel();
                let driver = tokio::spawn(async move {
                    let mut messages =
                        futures::stream::poll_fn(move |cx| connection.poll_message(cx));
                    while let Some(message) = messages.next().await {
                        match message {
                            Ok(AsyncMessage::Notification(_)) => {
                                if msg_tx.send(()).is_err() {
                                    break;
                                }
                            }
                            Ok(_) => {}
                            Err(e) => {
                                debug!(error = %e, "schema listener connection ended");
                                break;
                            }
                        }
                    }
                });
                match client
                    .batch_execute(&format!("LISTEN {NOTIFY_CHANNEL}"))
                    .await
                {
                    Ok(()) => {
                        backoff = Duration::from_millis(200);
                        debug!("listening for custom event definition changes");
                        if wake.send(()).is_err() {
                            return;
                        }
                        while msg_rx.recv().await.is_some() {
                            if wake.send(()).is_err() {
                                return;
                            }
                        }
                    }
                    Err(e) => warn!(error = %e, "cannot LISTEN for schema changes"),
                }
                driver.abort();
                drop(client);
            }
            Err(e) => debug!(error = %e, "schema listener cannot connect"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}
