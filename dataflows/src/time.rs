//! Processing-time ticks.
//!
//! A tick `t` covers the processing-time interval `[t, t + tick_ms)`. Records
//! read from Kafka during that interval carry timestamp `t`; once every
//! worker's frontier has passed `t`, the tick is complete.

use std::time::{SystemTime, UNIX_EPOCH};

use timely::dataflow::operators::{Capability, InputCapability};

use crate::durable::WorkerAck;

/// Milliseconds since the Unix epoch, from the wall clock.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Rounds `ms` down to a multiple of `tick_ms`.
pub fn tick_floor(ms: u64, tick_ms: u64) -> u64 {
    ms - ms % tick_ms.max(1)
}

/// Rounds `ms` up to a multiple of `tick_ms`.
pub fn tick_ceil(ms: u64, tick_ms: u64) -> u64 {
    let tick = tick_ms.max(1);
    ms.div_ceil(tick) * tick
}

/// When a source moves its capability to the current tick.
///
/// Normally every tick: live state advances every `tick_ms`. While the
/// source is behind (its previous read filled the whole poll budget, so
/// more is waiting), it keeps stamping what it reads with the tick it holds
/// for up to `catch_up_ms`: a backlog is then processed in ticks of up to
/// `catch_up_ms`, and the per-tick work (one update per window touched, one
/// snapshot, one commit group) is spread over more events. Live state is
/// stale while a backlog lasts anyway; as soon as a read comes back short
/// the source is caught up and ticks are `tick_ms` again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TickPolicy {
    pub tick_ms: u64,
    pub catch_up_ms: u64,
}

impl TickPolicy {
    /// Ticks of `tick_ms`, stretched up to `catch_up_ms` (never below
    /// `tick_ms`) while behind.
    pub fn new(tick_ms: u64, catch_up_ms: u64) -> TickPolicy {
        TickPolicy {
            tick_ms,
            catch_up_ms: catch_up_ms.max(tick_ms),
        }
    }

    /// The time to hold, given the time held, whether the source is behind,
    /// whether an earlier batch of its worker is still being committed
    /// while the held tick has rows (`waiting`), and the wall clock. While
    /// waiting, a tick is held up to [`WAITING_HOLD`] times `catch_up_ms`,
    /// until that batch is committed: it then goes to the sink as soon as
    /// the sink is free, and a sink slower than `catch_up_ms` makes ticks
    /// larger instead of making the sink fall behind.
    pub fn advance(&self, held: u64, behind: bool, waiting: bool, now_ms: u64) -> u64 {
        let now = tick_floor(now_ms, self.tick_ms);
        let hold = if waiting {
            self.catch_up_ms.saturating_mul(WAITING_HOLD)
        } else {
            self.catch_up_ms
        };
        if behind && now < held.saturating_add(hold) {
            held
        } else {
            now.max(held)
        }
    }
}

/// How long a source behind holds a tick that has rows while an earlier
/// batch of its worker is being committed, in multiples of `catch_up_ms`
/// (bounded, so that an outage of the sink does not stop the clock).
pub const WAITING_HOLD: u64 = 4;

/// A source's pacing: the tick it stamps what it reads with (see
/// [`TickPolicy`]), and when it stops reading to let PostgreSQL catch up.
///
/// A source reads the next tick while its previous tick's batch is being
/// committed: the worker and the sink work at the same time instead of
/// taking turns. Before, any batch larger than `max_pending_rows` (every
/// catch-up tick) paused the source until it was committed, and the sink
/// then waited for the whole next tick: a 600,000-event catch-up at -w 1
/// took 11.2-12.5 s, 9.2-10.3 s reading ahead (benchmarks/RESULTS.md).
/// Rows waiting stay bounded: the source pauses when more than
/// `max_pending_rows` rows in more than one batch wait, or when the tick
/// it holds has read twice `max_pending_rows` while a batch waits.
#[derive(Debug)]
pub struct Pacing {
    ticks: TickPolicy,
    max_pending_rows: i64,
    /// The latest read filled the poll budget: more is waiting.
    behind: bool,
    /// Messages read at the tick held.
    tick_rows: usize,
}

impl Pacing {
    pub fn new(tick_ms: u64, catch_up_ms: u64, max_pending_rows: i64) -> Pacing {
        Pacing {
            ticks: TickPolicy::new(tick_ms, catch_up_ms),
            max_pending_rows,
            behind: false,
            tick_rows: 0,
        }
    }

    /// Moves `cap` to the tick that reads are stamped with now.
    pub fn advance(&mut self, cap: &mut Capability<u64>, ack: &WorkerAck, now_ms: u64) {
        let waiting = self.tick_rows > 0 && ack.pending_batches() > 0;
        let tick = self
            .ticks
            .advance(*cap.time(), self.behind, waiting, now_ms);
        if *cap.time() < tick {
            cap.downgrade(&tick);
            self.tick_rows = 0;
        }
    }

    /// Whether to skip reading now (see [`Pacing`]).
    pub fn paused(&self, ack: &WorkerAck) -> bool {
        let max = self.max_pending_rows;
        (ack.pending_rows() > max && ack.pending_batches() > 1)
            || (ack.pending_batches() > 0 && self.tick_rows as i64 >= max.saturating_mul(2))
    }

    /// Records a read of `messages`, `budget` being the most one read takes.
    pub fn read(&mut self, messages: usize, budget: usize) {
        self.tick_rows += messages;
        self.behind = messages >= budget;
    }
}

/// The least time of a `u64` frontier; `u64::MAX` once it is empty.
pub fn frontier_min(frontier: &timely::progress::frontier::MutableAntichain<u64>) -> u64 {
    frontier
        .frontier()
        .iter()
        .next()
        .copied()
        .unwrap_or(u64::MAX)
}

/// The current tick.
pub fn current_tick(tick_ms: u64) -> u64 {
    tick_floor(now_ms(), tick_ms)
}

/// What an operator folds per tick until its input frontier passes the
/// tick: one state per tick, each holding a capability for its tick.
pub struct TickStash<S>(std::collections::BTreeMap<u64, (Capability<u64>, S)>);

impl<S> Default for TickStash<S> {
    fn default() -> Self {
        TickStash(std::collections::BTreeMap::new())
    }
}

impl<S> TickStash<S> {
    /// The tick of `cap` and its state, made by `new` the first time.
    pub fn at(
        &mut self,
        cap: &InputCapability<u64>,
        new: impl FnOnce() -> S,
    ) -> Option<(u64, &mut S)> {
        use std::collections::btree_map::Entry;
        let time = cap.least().copied()?;
        let (_, state) = match self.0.entry(time) {
            Entry::Occupied(held) => held.into_mut(),
            Entry::Vacant(slot) => slot.insert((cap.retain_least(0)?, new())),
        };
        Some((time, state))
    }

    /// The earliest tick held, if it lies before `bound`.
    pub fn first_before(&self, bound: u64) -> Option<u64> {
        self.0.keys().next().copied().filter(|t| *t < bound)
    }

    /// Takes the earliest tick if it lies before `bound` (the input frontier).
    pub fn pop_before(&mut self, bound: u64) -> Option<(u64, Capability<u64>, S)> {
        let entry = self.0.first_entry()?;
        if *entry.key() >= bound {
            return None;
        }
        let (time, (cap, state)) = entry.remove_entry();
        Some((time, cap, state))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_behind_holds_its_tick_up_to_the_catch_up_bound() {
        let p = TickPolicy {
            tick_ms: 100,
            catch_up_ms: 1_000,
        };
        // Caught up: every tick.
        assert_eq!(p.advance(1_000, false, false, 1_250), 1_200);
        assert_eq!(p.advance(1_000, false, true, 1_250), 1_200);
        // Behind: the held tick stays until catch_up_ms have passed.
        assert_eq!(p.advance(1_000, true, false, 1_250), 1_000);
        assert_eq!(p.advance(1_000, true, false, 1_999), 1_000);
        assert_eq!(p.advance(1_000, true, false, 2_000), 2_000);
        // Behind with a batch being committed: until it is, at most
        // WAITING_HOLD times as long.
        assert_eq!(p.advance(1_000, true, true, 2_000), 1_000);
        assert_eq!(p.advance(1_000, true, true, 4_999), 1_000);
        assert_eq!(p.advance(1_000, true, true, 5_000), 5_000);
        // Never backwards.
        assert_eq!(p.advance(2_000, false, false, 1_950), 2_000);
        // catch_up_ms equal to the tick: every tick, behind or not.
        let fixed = TickPolicy {
            tick_ms: 100,
            catch_up_ms: 100,
        };
        assert_eq!(fixed.advance(1_000, true, false, 1_100), 1_100);
    }

    #[test]
    fn a_source_reads_ahead_of_one_batch_and_pauses_beyond() {
        let ack = WorkerAck::default();
        let mut pacing = Pacing::new(100, 1_000, 1_000);
        assert!(!pacing.paused(&ack));
        // One batch far larger than the limit waits: the next tick is read.
        ack.handed(5_000);
        assert!(!pacing.paused(&ack));
        pacing.read(1_999, 4_096);
        assert!(!pacing.paused(&ack));
        // ... up to twice the limit.
        pacing.read(1, 4_096);
        assert!(pacing.paused(&ack));
        // Two batches over the limit pause it too, whatever the tick holds.
        let mut fresh = Pacing::new(100, 1_000, 1_000);
        ack.handed(10);
        assert!(fresh.paused(&ack));
        ack.acknowledge(1, 5_000);
        assert!(!fresh.paused(&ack));
        fresh.read(10, 4_096);
        assert!(!fresh.paused(&ack));
        // Nothing waits: no pause however much the tick holds.
        ack.acknowledge(2, 10);
        assert!(!pacing.paused(&ack));
    }

    #[test]
    fn rounding() {
        assert_eq!(tick_floor(1234, 100), 1200);
        assert_eq!(tick_ceil(1234, 100), 1300);
        assert_eq!(tick_ceil(1200, 100), 1200);
        assert_eq!(tick_floor(5, 0), 5);
    }
}
