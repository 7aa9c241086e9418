//! Processing-time ticks.
//!
//! A tick `t` covers the processing-time interval `[t, t + tick_ms)`. Records
//! read from Kafka during that interval carry timestamp `t`; once every
//! worker's frontier has passed `t`, the tick is complete.

use std::time::{SystemTime, UNIX_EPOCH};

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding() {
        assert_eq!(tick_floor(1234, 100), 1200);
        assert_eq!(tick_ceil(1234, 100), 1300);
        assert_eq!(tick_ceil(1200, 100), 1200);
        assert_eq!(tick_floor(5, 0), 5);
    }
}
