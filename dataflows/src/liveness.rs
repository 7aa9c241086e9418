//! What the health endpoints say about this process's dataflow.
//!
//! Two different questions, answered from two different facts:
//!
//! - **Is the process broken?** (liveness) Every worker records the wall
//!   clock before each step ([`WorkerAck::beat`]). A worker steps at least
//!   once per tick even when it has nothing to do, and keeps stepping while
//!   its source is paused because PostgreSQL is slow or down. A worker that
//!   has not stepped for `stuck_after` is stuck inside an operator: the
//!   process is broken and only a restart helps. A panicked worker or
//!   communication thread, or a lost cluster peer, ends the process outright
//!   (see the binary's panic hook), so it never has to be detected here.
//! - **Is the live state current?** (readiness) The published snapshot's
//!   `as_of` advances once every worker of the cluster has made a tick
//!   durable. If it is older than `max_staleness`, answers would be stale:
//!   the dataflow is `stalled`. That happens while a dependency (PostgreSQL)
//!   holds commits back, or while a backlog makes each commit slower than
//!   the bound. A source paused by back-pressure whose ticks still complete
//!   within the bound is not stalled.

use std::sync::Arc;
use std::time::Duration;

use crate::durable::WorkerAck;

/// The state reported as `"dataflow"` by `/health`, `/ready` and `/livez`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataflowState {
    /// No snapshot published yet (restore, first tick).
    Starting,
    /// The snapshot is at most `max_staleness` old.
    Running,
    /// The snapshot is older than `max_staleness`; workers still step.
    Stalled,
    /// A worker has not stepped for `stuck_after`.
    Failed,
}

impl DataflowState {
    pub fn as_str(self) -> &'static str {
        match self {
            DataflowState::Starting => "starting",
            DataflowState::Running => "running",
            DataflowState::Stalled => "stalled",
            DataflowState::Failed => "failed",
        }
    }
}

/// The local workers' heartbeats and the bounds they are judged by.
#[derive(Clone, Debug)]
pub struct DataflowWatch {
    pub workers: Vec<Arc<WorkerAck>>,
    /// `health.max_staleness`.
    pub max_staleness: Duration,
    /// `health.liveness_timeout`.
    pub stuck_after: Duration,
}

impl DataflowWatch {
    /// The state at wall clock `now_ms` of a process whose latest snapshot
    /// is as of `as_of_ms` (0: none yet).
    pub fn state(&self, as_of_ms: u64, now_ms: u64) -> DataflowState {
        let stuck = self.stuck_after.as_millis() as u64;
        let broken = self.workers.iter().any(|w| {
            let last = w.last_step_ms();
            last > 0 && now_ms.saturating_sub(last) > stuck
        });
        if broken {
            DataflowState::Failed
        } else if as_of_ms == 0 {
            DataflowState::Starting
        } else if now_ms.saturating_sub(as_of_ms) > self.max_staleness.as_millis() as u64 {
            DataflowState::Stalled
        } else {
            DataflowState::Running
        }
    }

    /// Seconds between `as_of_ms` and `now_ms` (0 before the first snapshot).
    pub fn age_seconds(as_of_ms: u64, now_ms: u64) -> f64 {
        if as_of_ms == 0 {
            0.0
        } else {
            now_ms.saturating_sub(as_of_ms) as f64 / 1000.0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn watch(beats: &[u64]) -> DataflowWatch {
        DataflowWatch {
            workers: beats
                .iter()
                .map(|&b| {
                    let ack = Arc::new(WorkerAck::default());
                    ack.beat(b);
                    ack
                })
                .collect(),
            max_staleness: Duration::from_secs(5),
            stuck_after: Duration::from_secs(30),
        }
    }

    #[test]
    fn states_follow_the_snapshot_age_and_the_heartbeats() {
        let now = 1_000_000;
        let w = watch(&[now - 50, now - 200]);
        assert_eq!(w.state(0, now), DataflowState::Starting);
        assert_eq!(w.state(now - 100, now), DataflowState::Running);
        assert_eq!(w.state(now - 5_000, now), DataflowState::Running);
        assert_eq!(w.state(now - 5_001, now), DataflowState::Stalled);
        // One stuck worker breaks the process, whatever the snapshot says.
        let stuck = watch(&[now - 50, now - 30_001]);
        assert_eq!(stuck.state(now - 100, now), DataflowState::Failed);
        assert_eq!(stuck.state(0, now), DataflowState::Failed);
        // A worker that has not started yet is not stuck.
        let fresh = watch(&[0]);
        assert_eq!(fresh.state(0, now), DataflowState::Starting);
    }

    #[test]
    fn age_is_zero_before_the_first_snapshot() {
        assert_eq!(DataflowWatch::age_seconds(0, 5_000), 0.0);
        assert_eq!(DataflowWatch::age_seconds(3_500, 5_000), 1.5);
    }
}
