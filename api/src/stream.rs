//! `GET /api/v1/stream`: Server-Sent Events. A `dashboard` event with the
//! dashboard of every snapshot published (at most one per tick; a slow
//! client gets the latest, never a backlog) and, with
//! `?events=<type,...>` (or `*`), an `event` per committed event of those
//! types. A client too slow for the event feed skips ahead: it gets a
//! `lagged` event with the number of events it missed, and memory stays
//! bounded by the feed's capacity.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures::Stream;
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;
use utoipa::IntoParams;

use crate::params::Query;
use crate::AppState;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StreamParams {
    /// Event types to follow, comma separated, or `*` for all; absent:
    /// dashboard events only.
    events: Option<String>,
}

enum Filter {
    None,
    All,
    Types(Vec<String>),
}

impl Filter {
    fn wants(&self, event_type: &str) -> bool {
        match self {
            Filter::None => false,
            Filter::All => true,
            Filter::Types(types) => types.iter().any(|t| t == event_type),
        }
    }
}

#[utoipa::path(
    get,
    path = "/api/v1/stream",
    tag = "live",
    params(StreamParams),
    responses((
        status = 200,
        description = "Server-Sent Events: `dashboard` (data: the dashboard JSON, as `GET /api/v1/dashboard/metrics`), `event` (data: a stored event) and `lagged` (data: how many events a slow client missed). The stream does not end.",
        content_type = "text/event-stream",
        body = String,
    ))
)]
pub async fn stream(
    State(state): State<AppState>,
    Query(params): Query<StreamParams>,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let filter = match params.events.as_deref().map(str::trim) {
        None | Some("") => Filter::None,
        Some("*") => Filter::All,
        Some(list) => Filter::Types(list.split(',').map(|t| t.trim().to_string()).collect()),
    };
    let mut snapshots = state.snapshots.clone();
    let mut feed = state.feed.subscribe();
    // Capacity one: a slow client holds the producer back instead of
    // growing a buffer; the producer ends when the client is gone.
    let (tx, rx) = tokio::sync::mpsc::channel::<SseEvent>(1);
    tokio::spawn(async move {
        let mut last_as_of = 0;
        loop {
            let snapshot = Arc::clone(&snapshots.borrow_and_update());
            if snapshot.as_of_ms != last_as_of {
                last_as_of = snapshot.as_of_ms;
                if let Some(body) = crate::dashboard::serialized(&state, &snapshot) {
                    let event = SseEvent::default()
                        .event("dashboard")
                        .data(String::from_utf8_lossy(&body));
                    if tx.send(event).await.is_err() {
                        return;
                    }
                }
            }
            let event = tokio::select! {
                changed = snapshots.changed() => match changed {
                    Ok(()) => continue,
                    Err(_) => return,
                },
                received = feed.recv(), if !matches!(filter, Filter::None) => match received {
                    Ok(event) if filter.wants(&event.event_type) => {
                        SseEvent::default().event("event").data(event.to_json().to_string())
                    }
                    Ok(_) => continue,
                    Err(RecvError::Lagged(missed)) => {
                        SseEvent::default().event("lagged").data(format!("{{\"missed\":{missed}}}"))
                    }
                    Err(RecvError::Closed) => return,
                },
            };
            if tx.send(event).await.is_err() {
                return;
            }
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|event| (Ok(event), rx))
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}
