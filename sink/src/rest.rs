//! The REST write path: events POSTed to the API are committed here, in
//! their own transaction, before the request is answered; ids already
//! stored over REST are skipped, so a retried POST is stored once.

use std::collections::HashSet;

use dataflows::event::{DeadLetter, Event};
use dataflows::rows::EventRows;
use dataflows::windows::{Agg, WindowKey};
use uuid::Uuid;

use crate::metrics;
use crate::partitions::{day_of, Partitions};
use crate::writer::{copy_events, insert_dead_letters, upsert_counts};
use crate::{Pool, SinkError};

/// What a REST commit stored.
#[derive(Debug, Default)]
pub struct Committed {
    /// The events that were new (not stored by an earlier request with the same id).
    pub events: Vec<Event>,
    /// Their window contributions, merged into the rollups.
    pub windows: Vec<(WindowKey, Agg)>,
}

/// Commits `events` (and refused inputs) with the window contributions of
/// the new ones, computed by `windows` once the new ones are known.
pub async fn commit_rest(
    pool: &Pool,
    partitions: &Partitions,
    events: &[Event],
    dead: &[DeadLetter],
    windows: impl FnOnce(&[&Event]) -> Vec<(WindowKey, Agg)>,
) -> Result<Committed, SinkError> {
    let mut client = pool.get().await?;
    partitions
        .ensure(
            &**client,
            "events",
            events.iter().map(|e| day_of(e.timestamp_us)),
        )
        .await?;
    let tx = client.transaction().await?;
    let ids: Vec<Uuid> = events.iter().map(|e| e.id).collect();
    let fresh: HashSet<Uuid> = tx
        .query(
            "INSERT INTO rest_event_ids (id) SELECT * FROM unnest($1::uuid[])
             ON CONFLICT DO NOTHING RETURNING id",
            &[&ids],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut seen = HashSet::new();
    let new: Vec<&Event> = events
        .iter()
        .filter(|e| fresh.contains(&e.id) && seen.insert(e.id))
        .collect();
    let rows = EventRows::of(new.iter().copied());
    copy_events(&tx, &[&rows]).await?;
    upsert_counts(&tx, &[&rows]).await?;
    crate::dashboard::merge(&tx, &[&rows.dashboard]).await?;
    let trading = dataflows::trading::TradingBatch::of(new.iter().copied()).seal();
    crate::trading::merge(&tx, &[&trading]).await?;
    let contributions = windows(&new);
    let refs: Vec<(&WindowKey, &Agg)> = contributions.iter().map(|(k, a)| (k, a)).collect();
    crate::rollups::append(&tx, &refs).await?;
    let dead_refs: Vec<&DeadLetter> = dead.iter().collect();
    insert_dead_letters(&tx, &dead_refs).await?;
    tx.commit().await?;
    metrics::EVENTS_INGESTED
        .with_label_values(&["rest"])
        .inc_by(new.len() as u64);
    metrics::DEAD_LETTERS
        .with_label_values(&["rest"])
        .inc_by(dead.len() as u64);
    for d in dead {
        metrics::EVENTS_FAILED
            .with_label_values(&[d.reason.as_str()])
            .inc();
    }
    Ok(Committed {
        events: new.into_iter().cloned().collect(),
        windows: contributions,
    })
}
