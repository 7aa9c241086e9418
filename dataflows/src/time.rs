//! Processing-time ticks.
//!
//! A tick `t` covers the processing-time interval `[t, t + tick_ms)`. Records
//! read from Kafka during that interval carry timestamp `t`; once every
//! worker's frontier has passed `t`, the tick is complete.

use std::time::{SystemTime, UNIX_EPOCH};

use timely::dataflow::operators::{Capability, InputCapability};

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

    /// The time to hold, given the time held, whether the source is behind
    /// and the wall clock.
    pub fn advance(&self, held: u64, behind: bool, now_ms: u64) -> u64 {
        let now = tick_floor(now_ms, self.tick_ms);
        if behind && now < held.saturating_add(self.catch_up_ms) {
            held
        } else {
            now.max(held)
        }
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
        assert_eq!(p.advance(1_000, false, 1_250), 1_200);
        // Behind: the held tick stays until catch_up_ms have passed.
        assert_eq!(p.advance(1_000, true, 1_250), 1_000);
        assert_eq!(p.advance(1_000, true, 1_999), 1_000);
        assert_eq!(p.advance(1_000, true, 2_000), 2_000);
        // Never backwards.
        assert_eq!(p.advance(2_000, false, 1_950), 2_000);
        // catch_up_ms equal to the tick: every tick, behind or not.
        let fixed = TickPolicy {
            tick_ms: 100,
            catch_up_ms: 100,
        };
        assert_eq!(fixed.advance(1_000, true, 1_100), 1_100);
    }

    #[test]
    fn rounding() {
        assert_eq!(tick_floor(1234, 100), 1200);
        assert_eq!(tick_ceil(1234, 100), 1300);
        assert_eq!(tick_ceil(1200, 100), 1200);
        assert_eq!(tick_floor(5, 0), 5);
    }
}
