//! The generic cell rate algorithm (GCRA) and the local, in-process
//! limiter built on it.
//!
//! A bucket is one number, its *theoretical arrival time* (TAT, in
//! microseconds): the instant at which it would be full again. A request at
//! `now` advances it to `max(tat, now) + T`, where `T = 60 s / rpm` is the
//! emission interval, and is allowed when the result lies at most
//! `tolerance = burst × T` ahead of `now`; so a full bucket lets `burst`
//! requests through at once, then one every `T`. A refused request leaves
//! the TAT unchanged. A bucket whose TAT has passed is full and equals no
//! bucket at all, which is what lets the local limiter evict idle
//! identities freely. The Redis script (`redis_store.rs`) computes exactly
//! the same thing atomically on the server's clock.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// The limiter's parameters, in microseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gcra {
    /// `T`: one request's worth of time.
    pub emission_us: u64,
    /// `burst × T`: how far ahead of now a TAT may run.
    pub tolerance_us: u64,
    pub burst: u32,
}

/// The answer for one request, with what its headers say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// `X-RateLimit-Limit`: the bucket size (`burst`).
    pub limit: u32,
    /// `X-RateLimit-Remaining`: requests that would pass right now.
    pub remaining: u32,
    /// Until the bucket is full again (`X-RateLimit-Reset`).
    pub reset_after: Duration,
    /// Until a refused request would pass (`Retry-After`); zero when allowed.
    pub retry_after: Duration,
}

impl Decision {
    /// Whole seconds, rounded up, as the headers carry them.
    pub fn seconds_up(d: Duration) -> u64 {
        d.as_micros().div_ceil(1_000_000) as u64
    }
}

impl Gcra {
    /// `requests_per_minute` sustained, `burst` at once (both at least 1).
    pub fn new(requests_per_minute: u32, burst: u32) -> Gcra {
        let emission_us = (60_000_000 / u64::from(requests_per_minute.max(1))).max(1);
        let burst = burst.max(1);
        Gcra {
            emission_us,
            tolerance_us: emission_us * u64::from(burst),
            burst,
        }
    }

    /// Decides a request at `now_us` on a bucket with `tat` (`None`: full);
    /// returns the decision and, when allowed, the bucket's new TAT.
    pub fn decide(&self, tat: Option<u64>, now_us: u64) -> (Decision, Option<u64>) {
        let tat = tat.unwrap_or(now_us).max(now_us);
        let new_tat = tat + self.emission_us;
        if new_tat - now_us > self.tolerance_us {
            let retry = new_tat - self.tolerance_us - now_us;
            (self.decision(false, tat - now_us, retry), None)
        } else {
            (self.decision(true, new_tat - now_us, 0), Some(new_tat))
        }
    }

    /// The decision for a bucket that is `reset_us` from full; shared with
    /// the Redis store, whose script returns exactly these two numbers.
    pub fn decision(&self, allowed: bool, reset_us: u64, retry_us: u64) -> Decision {
        let remaining = self.tolerance_us.saturating_sub(reset_us) / self.emission_us;
        Decision {
            allowed,
            limit: self.burst,
            remaining: remaining.min(u64::from(self.burst)) as u32,
            reset_after: Duration::from_micros(reset_us),
            retry_after: Duration::from_micros(retry_us),
        }
    }
}

/// The in-process limiter used while Redis is unreachable. Memory is
/// bounded by `max_identities` buckets: full buckets are dropped first
/// (they equal no bucket), then, if every bucket is still in use, the tenth
/// nearest to full (those identities get a slightly early refill).
#[derive(Debug)]
pub struct LocalLimiter {
    gcra: Gcra,
    max_identities: usize,
    state: Mutex<LocalState>,
}

#[derive(Debug, Default)]
struct LocalState {
    buckets: HashMap<String, u64>,
    last_sweep_us: u64,
}

/// Full buckets are swept at least this often, so idle identities do not
/// linger until the map is full.
const SWEEP_EVERY_US: u64 = 60_000_000;

impl LocalLimiter {
    pub fn new(gcra: Gcra, max_identities: usize) -> LocalLimiter {
        LocalLimiter {
            gcra,
            max_identities: max_identities.max(1),
            state: Mutex::new(LocalState::default()),
        }
    }

    /// Decides a request of `identity` at `now_us` (any monotonic clock).
    pub fn check_at(&self, identity: &str, now_us: u64) -> Decision {
        // A poisoned lock only means another request panicked mid-update of
        // plain numbers; the map is still usable.
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let (decision, new_tat) = self
            .gcra
            .decide(state.buckets.get(identity).copied(), now_us);
        if let Some(new_tat) = new_tat {
            if !state.buckets.contains_key(identity)
                && (state.buckets.len() >= self.max_identities
                    || now_us.saturating_sub(state.last_sweep_us) >= SWEEP_EVERY_US)
            {
                self.evict(&mut state, now_us);
            }
            state.buckets.insert(identity.to_owned(), new_tat);
        }
        decision
    }

    /// Buckets held now.
    pub fn len(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .buckets
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn evict(&self, state: &mut LocalState, now_us: u64) {
        state.last_sweep_us = now_us;
        state.buckets.retain(|_, tat| *tat > now_us);
        if state.buckets.len() < self.max_identities {
            return;
        }
        // Every bucket is in use: drop the tenth nearest to full.
        let drop = (state.buckets.len() / 10).max(1);
        let mut tats: Vec<u64> = state.buckets.values().copied().collect();
        let (_, threshold, _) = tats.select_nth_unstable(drop - 1);
        let threshold = *threshold;
        state.buckets.retain(|_, tat| *tat > threshold);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000;

    #[test]
    fn parameters() {
        let g = Gcra::new(60, 5);
        assert_eq!(g.emission_us, S);
        assert_eq!(g.tolerance_us, 5 * S);
        let g = Gcra::new(1000, 100);
        assert_eq!(g.emission_us, 60_000);
        assert_eq!(g.tolerance_us, 6 * S);
    }

    #[test]
    fn burst_then_refusal_then_recovery() {
        // 60 per minute: one token a second, five at once.
        let local = LocalLimiter::new(Gcra::new(60, 5), 100);
        let t0 = 1_000 * S;
        for i in 0..5u32 {
            let d = local.check_at("a", t0);
            assert!(d.allowed, "request {i} of the burst");
            assert_eq!(d.limit, 5);
            assert_eq!(d.remaining, 4 - i);
            assert_eq!(d.reset_after, Duration::from_secs(u64::from(i) + 1));
            assert_eq!(d.retry_after, Duration::ZERO);
        }
        let refused = local.check_at("a", t0);
        assert!(!refused.allowed);
        assert_eq!(refused.remaining, 0);
        assert_eq!(refused.retry_after, Duration::from_secs(1));
        assert_eq!(refused.reset_after, Duration::from_secs(5));
        // Refusals do not consume: still refused just before the token.
        let almost = local.check_at("a", t0 + S - 1);
        assert!(!almost.allowed);
        assert_eq!(almost.retry_after, Duration::from_micros(1));
        assert_eq!(Decision::seconds_up(almost.retry_after), 1);
        // One token a second, no more.
        let d = local.check_at("a", t0 + S);
        assert!(d.allowed);
        assert_eq!(d.remaining, 0);
        assert!(!local.check_at("a", t0 + S).allowed);
        // Another identity is unaffected.
        assert_eq!(local.check_at("b", t0).remaining, 4);
        // After a long pause the bucket is full again: the whole burst passes.
        let later = t0 + 60 * S;
        for i in 0..5u32 {
            let d = local.check_at("a", later);
            assert!(d.allowed);
            assert_eq!(d.remaining, 4 - i);
        }
        assert!(!local.check_at("a", later).allowed);
    }

    #[test]
    fn sustained_rate_is_the_configured_one() {
        // 600 per minute (one per 100 ms), burst 10: requests every
        // millisecond for 10 s (the last at 9.999 s) get the burst, then one
        // at each of 100 ms, 200 ms, ..., 9,900 ms.
        let local = LocalLimiter::new(Gcra::new(600, 10), 10);
        let t0 = 5 * S;
        let passed = (0..10_000u64)
            .filter(|ms| local.check_at("x", t0 + ms * 1000).allowed)
            .count();
        assert_eq!(passed, 10 + 99);
    }

    #[test]
    fn remaining_recovers_gradually() {
        let g = Gcra::new(60, 3);
        let (d, tat) = g.decide(None, 0);
        assert_eq!(d.remaining, 2);
        let (_, tat) = g.decide(tat, 0);
        let (d, tat) = g.decide(tat, 0);
        assert_eq!(d.remaining, 0);
        // 1.5 s later one and a half tokens came back: one is usable.
        let (d, _) = g.decide(tat, 1_500_000);
        assert!(d.allowed);
        assert_eq!(d.remaining, 0);
        assert_eq!(d.reset_after, Duration::from_micros(2_500_000));
        assert_eq!(Decision::seconds_up(d.reset_after), 3);
    }

    #[test]
    fn memory_is_bounded_and_idle_identities_go_first() {
        let local = LocalLimiter::new(Gcra::new(60, 2), 100);
        let t0 = 10 * S;
        // An attacker cycling identities never grows the map past its bound.
        for i in 0..10_000u64 {
            local.check_at(&format!("id{i}"), t0 + i);
            assert!(local.len() <= 100);
        }
        // Once their buckets are full again they are swept.
        local.check_at("late", t0 + 3_600 * S);
        assert_eq!(local.len(), 1);
        // A busy identity survives eviction by idle ones.
        let local = LocalLimiter::new(Gcra::new(60, 2), 10);
        assert!(local.check_at("busy", t0).allowed);
        assert!(local.check_at("busy", t0).allowed);
        for i in 0..9u64 {
            local.check_at(&format!("idle{i}"), t0 - 10 * S + i);
        }
        local.check_at("new", t0);
        assert!(!local.check_at("busy", t0).allowed, "busy was evicted");
    }
}
