//! Dashboard state: what each event contributes to the live dashboard
//! besides the per-type counts.
//!
//! Three collections over processing-time ticks, each fed with the same
//! contributions that the sink stores with the raw rows (so that a restart
//! restores them exactly):
//! - per-second sums `(series, second)` with `(count, sum in nano-units)`
//!   diffs: order volume (price × quantity of `order.filled`) and order
//!   latency (`latency_ms` of `order.*`); retracted like the counts;
//! - users: `user_id` with `isize` diffs, `+1` when an event is read and
//!   `-1` once its second is older than the active-user window;
//! - strategies: `strategy_id` with a [`StrategyState`] diff, a semigroup
//!   that keeps the latest lifecycle event (started / stopped, by event
//!   time) and the latest activity.

use std::collections::BTreeMap;

use differential_dataflow::difference::{IsZero, Semigroup};
use serde::{Deserialize, Serialize};

use crate::event::Event;
use crate::props::{Id, Num};
use crate::windows::to_nano;
use crate::FastMap;

/// Σ price × quantity of `order.filled`.
pub const VOLUME: &str = "order_volume";
/// `latency_ms` of `order.*` events.
pub const LATENCY: &str = "order_latency_ms";

/// A per-second sum: events and the sum of their values in nano-units.
pub type CountSum = (i64, i128);

/// Lifecycle kinds, ordered so that at equal event times a stop wins.
pub const STARTED: u8 = 0;
pub const STOPPED: u8 = 1;

/// What is known of a strategy; merging keeps the latest of each part.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct StrategyState {
    /// `(event time in µs, STARTED | STOPPED)` of the latest lifecycle
    /// event; `(i64::MIN, STOPPED)` when none was seen.
    pub lifecycle: (i64, u8),
    /// Event time (µs) of the latest event carrying this strategy id.
    pub last_seen: i64,
}

impl Default for StrategyState {
    fn default() -> Self {
        StrategyState {
            lifecycle: (i64::MIN, STOPPED),
            last_seen: i64::MIN,
        }
    }
}

impl StrategyState {
    /// Running: the latest lifecycle event is a start, and the strategy was
    /// seen at or after `since_us`.
    pub fn active(&self, since_us: i64) -> bool {
        self.lifecycle.1 == STARTED && self.lifecycle.0 != i64::MIN && self.last_seen >= since_us
    }
}

impl IsZero for StrategyState {
    fn is_zero(&self) -> bool {
        *self == StrategyState::default()
    }
}

impl Semigroup for StrategyState {
    fn plus_equals(&mut self, rhs: &Self) {
        self.lifecycle = self.lifecycle.max(rhs.lifecycle);
        self.last_seen = self.last_seen.max(rhs.last_seen);
    }
}

/// What one event contributes to the dashboard.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Contribution {
    /// `(series, value)` to add to the event's second.
    pub sums: Vec<(&'static str, f64)>,
    pub user: Option<String>,
    pub strategy: Option<(String, StrategyState)>,
}

/// The dashboard contribution of `event`.
pub fn contribution(event: &Event) -> Contribution {
    let mut out = Contribution {
        user: event.user_id.clone().filter(|u| !u.is_empty()),
        ..Contribution::default()
    };
    let is_order = event.event_type.starts_with("order.");
    let lifecycle = match event.event_type.as_str() {
        "strategy.started" => Some(STARTED),
        "strategy.stopped" => Some(STOPPED),
        _ => None,
    };
    let props = event.props();
    if event.event_type == "order.filled" {
        if let (Some(p), Some(q)) = (props.num(Num::Price), props.num(Num::Quantity)) {
            if (p * q).is_finite() {
                out.sums.push((VOLUME, p * q));
            }
        }
    }
    if is_order {
        if let Some(l) = props.num(Num::LatencyMs) {
            out.sums.push((LATENCY, l));
        }
    }
    if let Some(id) = props.id(Id::StrategyId) {
        let state = StrategyState {
            lifecycle: lifecycle.map_or((i64::MIN, STOPPED), |k| (event.timestamp_us, k)),
            last_seen: event.timestamp_us,
        };
        out.strategy = Some((id.to_string(), state));
    }
    out
}

/// The `(count, sum)` diff of one value.
pub fn count_sum(value: f64) -> CountSum {
    (1, to_nano(value))
}

/// The contributions of many events, summed: what the sink adds to its
/// dashboard tables (`second_sums`, `user_last_seen`, `strategy_state`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DashboardDelta {
    /// `(second, series)` with their `(count, sum)`.
    pub sums: BTreeMap<(i64, &'static str), CountSum>,
    /// Each user's latest event second.
    pub users: FastMap<String, i64>,
    pub strategies: FastMap<String, StrategyState>,
}

impl DashboardDelta {
    /// Adds the contribution of `event`.
    pub fn add(&mut self, event: &Event) {
        let second = event.second();
        let c = contribution(event);
        for (series, value) in c.sums {
            let (n, s) = count_sum(value);
            let slot = self.sums.entry((second, series)).or_default();
            slot.0 += n;
            slot.1 += s;
        }
        if let Some(user) = c.user {
            let slot = self.users.entry(user).or_insert(second);
            *slot = (*slot).max(second);
        }
        if let Some((id, state)) = c.strategy {
            self.strategies.entry(id).or_default().plus_equals(&state);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventSource;

    fn event(t: &str, props: &str, us: i64) -> Event {
        Event {
            id: uuid::Uuid::nil(),
            event_type: t.into(),
            user_id: Some("u1".into()),
            session_id: None,
            properties: props.into(),
            timestamp_us: us,
            created_at_us: 0,
            source: EventSource::Rest,
            parsed: Default::default(),
        }
    }

    #[test]
    fn orders_contribute_volume_and_latency() {
        let c = contribution(&event(
            "order.filled",
            r#"{"price":"10.5","quantity":2,"latency_ms":7,"strategy_id":"s1"}"#,
            5,
        ));
        assert_eq!(c.sums, vec![(VOLUME, 21.0), (LATENCY, 7.0)]);
        assert_eq!(c.user.as_deref(), Some("u1"));
        let (id, state) = c.strategy.expect("strategy");
        assert_eq!(id, "s1");
        assert_eq!(state.last_seen, 5);
        assert_eq!(state.lifecycle.0, i64::MIN);
        let placed = contribution(&event("order.placed", r#"{"price":1,"quantity":1}"#, 5));
        assert!(placed.sums.is_empty(), "only fills make volume");
    }

    #[test]
    fn latest_lifecycle_and_activity_win() {
        let start = contribution(&event("strategy.started", r#"{"strategy_id":"s"}"#, 100))
            .strategy
            .expect("s")
            .1;
        let stop = contribution(&event("strategy.stopped", r#"{"strategy_id":"s"}"#, 200))
            .strategy
            .expect("s")
            .1;
        let signal = contribution(&event("signal.generated", r#"{"strategy_id":"s"}"#, 300))
            .strategy
            .expect("s")
            .1;
        let mut a = start;
        a.plus_equals(&signal);
        assert!(a.active(250));
        assert!(!a.active(301), "silent since 300");
        let mut b = signal;
        b.plus_equals(&stop);
        b.plus_equals(&start);
        assert!(
            !b.active(0),
            "the stop at 200 is the latest lifecycle event"
        );
        let mut tie = start;
        tie.plus_equals(&StrategyState {
            lifecycle: (100, STOPPED),
            last_seen: 100,
        });
        assert_eq!(tie.lifecycle, (100, STOPPED), "a stop wins a tie");
        assert!(!StrategyState::default().active(i64::MIN));
    }
}
