//! The whole dataflow of one worker, one `build_*` per branch:
//!
//! ```text
//! start offsets (worker 0, t=0) ─broadcast─► Kafka source ─► records
//! build_windows:   records ─► FoldWindows (1m panes per series, per tick) ─┬─► finest interval: deltas ─┬─► DurableSink ─► durability ─┐
//!                                                                          │                            └─► pane diffs ──────────────┐ │
//!                  every interval + REST + restored ─exchange(series)─► RetireWindows ⇄ arrange WindowAggregates                  │ │
//!                                                   └─► retractions, REST and restored diffs ─────────────────────────────────────┤ │
//! build_counts:    records + REST records ─► CountByTypeSecond ─► arrange LiveCountsByTypeSecond ──────────────────────────────────┤ │
//! build_dashboard: records + REST records ─► sums, active users, strategies ─► arrangements ──────────────────────────────────────┴►leaders ─► PublishSnapshot ─► publisher thread (expands pane diffs)
//! ```

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use differential_dataflow::operators::arrange::arrangement::arrange_core;
use differential_dataflow::operators::arrange::TraceAgent;
use differential_dataflow::trace::implementations::{KeyBatcher, KeySpine};
use differential_dataflow::trace::TraceReader;
use differential_dataflow::AsCollection;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::core::OkErr;
use timely::dataflow::operators::vec::Map;
use timely::dataflow::operators::{Concat, Probe};
use timely::dataflow::{ProbeHandle, Stream};
use timely::worker::Worker;
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::watch;

use crate::aggregates::{
    fold_windows, restored_windows, retire_windows, window_ids, TraceSlot, WinUpdate, WindowUpdate,
};
use crate::counts::{
    committed, count_updates, restored_counts, start_offsets, CommittedQueue, Horizon,
};
use crate::dashboard::{CountSum, StrategyState};
use crate::dashboard_ops::{self, contributions};
use crate::durable::{durable_sink, SinkBatch, WorkerAck};
use crate::event::{Event, PartitionOffset, Record};
use crate::expiry::expire;
use crate::kafka_source::{kafka_source, KafkaSettings, PartitionDirectory, SourceContext};
use crate::live::LiveSnapshot;
use crate::memory_source::{memory_source, PayloadFeed};
use crate::metrics;
use crate::panes::WinId;
use crate::publish::LiveUpdate;
use crate::time::tick_ceil;
use crate::windows::{Agg, WindowKey, WindowSpec};

/// State restored from PostgreSQL before the dataflow starts (process 0 only).
#[derive(Clone, Debug, Default)]
pub struct Restored {
    /// Stored counts per `(event_type, second)` inside the horizon.
    pub counts: Vec<((String, i64), i64)>,
    /// Stored next offsets per partition.
    pub offsets: Vec<PartitionOffset>,
    /// Stored rollups of the windows still inside their horizons.
    pub windows: Vec<(WindowKey, Agg)>,
    /// Stored per-second dashboard sums inside the horizon.
    pub sums: Vec<((String, i64), CountSum)>,
    /// Users with their last event second, inside the active-user window.
    pub users: Vec<((String, i64), isize)>,
    /// Stored strategy states.
    pub strategies: Vec<(String, StrategyState)>,
}

/// What every worker of one process shares.
pub struct ProcessContext {
    pub kafka: KafkaSettings,
    pub tick_ms: u64,
    pub horizon_ms: u64,
    /// How long a user counts as active after an event, in ms of event time.
    pub active_users_ms: u64,
    pub windows: Arc<WindowSpec>,
    pub workers_per_process: usize,
    pub directory: Arc<PartitionDirectory>,
    pub sink: UnboundedSender<SinkBatch>,
    /// One per local worker.
    pub acks: Vec<Arc<WorkerAck>>,
    /// REST events committed by this process, for the live counts.
    pub committed: Arc<CommittedQueue<Event>>,
    /// Window contributions of those events, stored with them.
    pub committed_windows: Arc<CommittedQueue<(WindowKey, Agg)>>,
    pub snapshots: Arc<watch::Sender<Arc<LiveSnapshot>>>,
    pub restored: Mutex<Option<Restored>>,
    pub shutdown: Arc<AtomicBool>,
    /// Validators shared with the REST path, refreshed from PostgreSQL.
    pub validators: Arc<crate::validate::Registry>,
    /// Read payloads from memory instead of Kafka (the dataflow-core benchmark).
    pub feed: Option<Arc<dyn PayloadFeed>>,
}

impl ProcessContext {
    /// The acknowledgements (and heartbeat) of the worker with this global
    /// index, which runs in this process.
    pub fn ack(&self, worker: usize) -> Arc<WorkerAck> {
        Arc::clone(&self.acks[worker % self.workers_per_process.max(1)])
    }
}

pub type CountTrace = TraceAgent<KeySpine<(String, i64), u64, isize>>;
pub use crate::aggregates::WindowTrace;
pub type SumTrace = TraceAgent<KeySpine<(String, i64), u64, CountSum>>;
pub type UserTrace = TraceAgent<KeySpine<String, u64, isize>>;
pub type StrategyTrace = TraceAgent<KeySpine<String, u64, StrategyState>>;

/// Handles a worker keeps while it runs the dataflow.
pub struct WorkerDataflow {
    pub probe: ProbeHandle<u64>,
    trace: CountTrace,
    window_trace: WindowTrace,
    dashboard_traces: (SumTrace, UserTrace, StrategyTrace),
    worker: usize,
}

impl WorkerDataflow {
    /// Lets every trace compact up to its own upper, and reports their sizes.
    ///
    /// No reader needs a trace's history: the live state is built from the
    /// arrangements' output streams, and RetireWindows sums a window's
    /// updates through the upper. Compacting to the upper, not to the
    /// durability frontier, lets a merge collapse each key's per-tick
    /// updates into one record even while the sink is behind; held back to
    /// the durability frontier, the window trace kept 5 (-w 1) to 16 (-w 2)
    /// records per live window when the sink lagged.
    pub fn maintain(&mut self) {
        let worker = self.worker.to_string();
        let counts = compact(&mut self.trace);
        let windows = compact(&mut self.window_trace);
        let (sums, users, strategies) = &mut self.dashboard_traces;
        let sums = compact(sums);
        let users = compact(users);
        let strategies = compact(strategies);
        for (name, records) in [
            ("live_counts_by_type_second", counts),
            ("window_aggregates", windows),
            ("dashboard_sums", sums),
            ("active_users", users),
            ("strategies", strategies),
        ] {
            metrics::ARRANGEMENT_RECORDS
                .with_label_values(&[name, worker.as_str()])
                .set(records as i64);
        }
    }
}

/// The timely worker configuration this dataflow runs with.
///
/// Its arrangements finish every merge they start at once (the next time
/// their operator runs), instead of spreading it over the batches that
/// follow, as differential's fueled merging does by default. A merge in
/// progress holds both of its batches and the growing result (allocated
/// for both batches' length), and the window arrangement's keys are mostly
/// in both. Finishing merges at once lowered the heap by about 5 % at
/// 20,000 events/s (benchmarks/RESULTS.md). The work is the same, done
/// sooner; a spine with no merge in progress is left as it is.
pub fn worker_config() -> timely::WorkerConfig {
    let mut config = timely::WorkerConfig::default();
    config.set::<differential_dataflow::trace::ExertionLogic>(
        "differential/default_exert_logic".to_string(),
        Arc::new(|layers: &[(usize, usize, usize)]| {
            // (level, batches at it, their length): two batches are a merge.
            let merging: usize = layers
                .iter()
                .filter(|(_, batches, _)| *batches == 2)
                .map(|(_, _, length)| *length)
                .sum();
            // Fuel counts updates merged; twice the length finishes them.
            (merging > 0).then(|| merging.saturating_mul(2).min(isize::MAX as usize))
        }),
    );
    config
}

/// Lets `trace` compact up to its upper; returns the updates it holds.
fn compact<Tr>(trace: &mut Tr) -> usize
where
    Tr: TraceReader<Time = u64>,
    Tr::Batch: differential_dataflow::trace::implementations::spine_fueled::SpineBatch,
{
    use differential_dataflow::trace::implementations::spine_fueled::SpineBatch;
    let mut upper = timely::progress::Antichain::new();
    trace.read_upper(&mut upper);
    let frontier = upper.borrow();
    trace.set_logical_compaction(frontier);
    trace.set_physical_compaction(frontier);
    let mut records = 0usize;
    trace.map_spans(|span| records += span.inner.as_ref().map_or(0, |b| b.len()));
    records
}

/// Builds this worker's dataflow and steps it until shutdown: parks at
/// most a tick when idle, lets the arrangements compact once a second.
pub fn run_worker(worker: &mut Worker, ctx: &ProcessContext) {
    let mut dataflow = build(worker, ctx);
    // Reports the arrangement sizes from the start.
    dataflow.maintain();
    let park = std::time::Duration::from_millis(ctx.tick_ms);
    let mut last_maintenance = std::time::Instant::now();
    let ack = ctx.ack(worker.index());
    let injected_panic = injected_panic_at(worker.index());
    loop {
        ack.beat(crate::time::now_ms());
        if injected_panic.is_some_and(|at| std::time::Instant::now() >= at) {
            panic!("injected worker panic (ANALYTICS_TEST_WORKER_PANIC_AFTER_MS)");
        }
        worker.step_or_park(Some(park));
        if last_maintenance.elapsed() >= std::time::Duration::from_secs(1) {
            dataflow.maintain();
            last_maintenance = std::time::Instant::now();
        }
        if ctx.shutdown.load(std::sync::atomic::Ordering::Relaxed) && dataflow.probe.done() {
            break;
        }
    }
}

/// Test-only switch, compiled into debug builds only (release builds, the
/// ones `make run` and the benchmarks use, do not read it): with
/// `ANALYTICS_TEST_WORKER_PANIC_AFTER_MS=N`, worker 0 panics N ms after its
/// dataflow starts, so that the integration tests can check that a worker
/// panic ends the process.
#[cfg(debug_assertions)]
fn injected_panic_at(worker: usize) -> Option<std::time::Instant> {
    if worker != 0 {
        return None;
    }
    let ms: u64 = std::env::var("ANALYTICS_TEST_WORKER_PANIC_AFTER_MS")
        .ok()?
        .parse()
        .ok()?;
    Some(std::time::Instant::now() + std::time::Duration::from_millis(ms))
}

#[cfg(not(debug_assertions))]
fn injected_panic_at(_worker: usize) -> Option<std::time::Instant> {
    None
}

/// An update of a per-`(name, second)` collection: `((name, second), tick, diff)`.
pub type SecondUpdate<R> = ((String, i64), u64, R);

/// A branch of live state: its arrangement(s) and the live updates they emit.
pub struct Branch<'s, T> {
    pub traces: T,
    pub updates: Stream<'s, u64, Vec<(u64, LiveUpdate)>>,
}

/// Counts per `(event_type, second)` of every record (Kafka and REST) and
/// the `restored` ones, each expiring at its live horizon.
pub fn build_counts<'s>(
    records: Stream<'s, u64, Vec<Record>>,
    restored: Stream<'s, u64, Vec<SecondUpdate<isize>>>,
    horizon: Horizon,
) -> Branch<'s, CountTrace> {
    let counts = count_updates(records, horizon)
        .concat(restored)
        .as_collection()
        .arrange_by_self_named("LiveCountsByTypeSecond");
    let trace = counts.trace.clone();
    let updates = counts
        .flat_map_ref(|key, _| Some(key.clone()))
        .inner
        .map(|(key, time, diff)| (time, LiveUpdate::Count(key, diff)));
    Branch {
        traces: trace,
        updates,
    }
}

/// What the dashboard branch restores from PostgreSQL (worker 0, time 0).
pub struct DashboardRestored<'s> {
    pub sums: Stream<'s, u64, Vec<SecondUpdate<CountSum>>>,
    pub users: Stream<'s, u64, Vec<SecondUpdate<isize>>>,
    pub strategies: Stream<'s, u64, Vec<(String, u64, StrategyState)>>,
}

/// Dashboard state: per-second sums (volume, latency, …) expiring at the
/// live horizon, one record per user active within `active_users_ms` after
/// the end of its latest event second, and strategy states.
pub fn build_dashboard<'s>(
    records: Stream<'s, u64, Vec<Record>>,
    restored: DashboardRestored<'s>,
    horizon: Horizon,
    active_users_ms: u64,
) -> Branch<'s, (SumTrace, UserTrace, StrategyTrace)> {
    let contributed = contributions(records);
    let sums = expire(
        dashboard_ops::sums(contributed.clone()).concat(restored.sums),
        "ExpireSums",
        move |(_, second): &(String, i64)| horizon.expire_at(*second),
        |_| {},
    )
    .as_collection()
    .arrange_by_self_named("DashboardSums");
    let tick_ms = horizon.tick_ms;
    let users = dashboard_ops::active_users(
        dashboard_ops::users(contributed.clone()).concat(restored.users),
        move |second| {
            tick_ceil(
                ((second + 1).max(0) as u64) * 1000 + active_users_ms,
                tick_ms,
            )
        },
    )
    .as_collection()
    .arrange_by_self_named("ActiveUsers");
    let strategies = dashboard_ops::strategies(contributed)
        .concat(restored.strategies)
        .as_collection()
        .arrange_by_self_named("Strategies");
    let traces = (
        sums.trace.clone(),
        users.trace.clone(),
        strategies.trace.clone(),
    );
    let updates = sums
        .flat_map_ref(|key, _| Some(key.clone()))
        .inner
        .map(|(key, time, diff)| (time, LiveUpdate::Sum(key, diff)))
        .concat(
            users
                .flat_map_ref(|key, _| Some(key.clone()))
                .inner
                .map(|(user, time, diff)| (time, LiveUpdate::User(user, diff))),
        )
        .concat(
            strategies
                .flat_map_ref(|key, _| Some(key.clone()))
                .inner
                .map(|(id, time, diff)| (time, LiveUpdate::Strategy(id, diff))),
        );
    Branch { traces, updates }
}

/// The window branch, as [`build`] wires it: the records' per-tick window
/// deltas (for the sink), and the windows held in memory (those deltas plus
/// `extra`: restored rollups and REST contributions), exchanged on their
/// series, retired once at their horizon, arranged, and turned into live updates.
pub struct Windows<'s> {
    /// Every delta of the records at the finest interval, late ones
    /// included (for the sink, which stores only those: every coarser
    /// window is a sum of them).
    pub deltas: Stream<'s, u64, Vec<WinUpdate>>,
    pub trace: WindowTrace,
    pub updates: Stream<'s, u64, Vec<(u64, LiveUpdate)>>,
}

/// Builds the window branch (see [`Windows`]).
// `ok_err` routes each update by a `Result` that it unpacks at once; boxing
// its large `Err` would add an allocation per update for nothing.
#[allow(clippy::result_large_err)]
pub fn build_windows<'s>(
    records: Stream<'s, u64, Vec<Record>>,
    extra: Stream<'s, u64, Vec<WindowUpdate>>,
    spec: Arc<WindowSpec>,
) -> Windows<'s> {
    // The coarser intervals' deltas would wait in the sink's batches for
    // nothing (it stores the finest only): seven times the rollups of a
    // tick with the default intervals, held while the sink is behind. They
    // are split off (moved, not copied) and go to RetireWindows only.
    let finest = spec.finest();
    let (deltas, coarser): (
        Stream<'s, u64, Vec<WinUpdate>>,
        Stream<'s, u64, Vec<WinUpdate>>,
    ) = fold_windows(records, Arc::clone(&spec)).ok_err(move |update| {
        if Some(update.0.interval) == finest {
            Ok(update)
        } else {
            Err(update)
        }
    });
    // The live state takes the fold's deltas as pane diffs (finest only,
    // expanded to every interval by the publisher): one update per pane
    // crosses to the leader and waits there for durability, not one per
    // interval. Retractions and other updates go as window diffs.
    let panes = deltas
        .clone()
        .map(|(id, time, agg)| (time, LiveUpdate::Pane(id, agg)));
    let slot: TraceSlot = Rc::new(RefCell::new(None));
    // Arranged where RetireWindows put each series (no second exchange),
    // so that it can read what it retires from this worker's trace.
    let retired = retire_windows(
        deltas.clone().concat(coarser),
        window_ids(extra),
        spec,
        Rc::clone(&slot),
    );
    // Only the updates the live state takes as window diffs are copied (to
    // both the arrangement and the live state); the fold's go on, moved.
    let (live, arrange_only): (
        Stream<'s, u64, Vec<WinUpdate>>,
        Stream<'s, u64, Vec<WinUpdate>>,
    ) = retired.ok_err(|(id, time, agg, live)| {
        if live {
            Ok((id, time, agg))
        } else {
            Err((id, time, agg))
        }
    });
    let keyed = live
        .clone()
        .concat(arrange_only)
        .map(|(id, time, agg)| ((id, ()), time, agg));
    let arranged = arrange_core::<_, _, KeyBatcher<WinId, u64, Agg>, KeySpine<WinId, u64, Agg>>(
        keyed,
        Pipeline,
        "WindowAggregates",
        KeyBatcher::new,
    );
    *slot.borrow_mut() = Some(arranged.trace.clone());
    let trace = arranged.trace.clone();
    let updates = live
        .map(|(id, time, agg)| (time, LiveUpdate::Window(id, agg)))
        .concat(panes);
    Windows {
        deltas,
        trace,
        updates,
    }
}

/// Builds this worker's dataflow.
pub fn build(worker: &mut Worker, ctx: &ProcessContext) -> WorkerDataflow {
    let index = worker.index();
    let local = index % ctx.workers_per_process.max(1);
    let leader = local == 0;
    let peers = worker.peers();
    let per_process = ctx.workers_per_process.max(1);
    let leaders: Vec<usize> = (0..peers).step_by(per_process).collect();
    let restored = if index == 0 {
        ctx.restored
            .lock()
            .ok()
            .and_then(|mut g| g.take())
            .unwrap_or_default()
    } else {
        Restored::default()
    };
    let horizon = Horizon {
        horizon_ms: ctx.horizon_ms,
        tick_ms: ctx.tick_ms,
    };
    let ack = ctx.ack(index);
    worker.dataflow::<u64, _, _>(|scope| {
        let offsets = start_offsets(scope, restored.offsets);
        let source = SourceContext {
            settings: ctx.kafka.clone(),
            directory: Arc::clone(&ctx.directory),
            ack: Arc::clone(&ack),
            shutdown: Arc::clone(&ctx.shutdown),
            tick_ms: ctx.tick_ms,
            validators: Arc::clone(&ctx.validators),
        };
        let records = match &ctx.feed {
            Some(feed) => memory_source(offsets, source, Arc::clone(feed)),
            None => kafka_source(offsets, source),
        };
        let spec = Arc::clone(&ctx.windows);
        let committed_events = committed(
            scope,
            "CommittedEvents",
            leader.then(|| Arc::clone(&ctx.committed)),
            ctx.tick_ms,
            Arc::clone(&ctx.shutdown),
            |event, _| Record::Event(Arc::new(event)),
        );
        let committed_windows = committed(
            scope,
            "CommittedWindows",
            leader.then(|| Arc::clone(&ctx.committed_windows)),
            ctx.tick_ms,
            Arc::clone(&ctx.shutdown),
            |(key, agg), time| (key, time, agg),
        );
        let all_records = records.clone().concat(committed_events);
        let dashboard = build_dashboard(
            all_records.clone(),
            DashboardRestored {
                sums: crate::expiry::restored(scope, "RestoredSums", restored.sums),
                users: crate::expiry::restored(scope, "RestoredUsers", restored.users),
                strategies: crate::expiry::restored(
                    scope,
                    "RestoredStrategies",
                    restored.strategies,
                ),
            },
            horizon,
            ctx.active_users_ms,
        );
        let counts = build_counts(
            all_records,
            restored_counts(scope, restored.counts, horizon),
            horizon,
        );
        let windows = build_windows(
            records.clone(),
            committed_windows.concat(restored_windows(scope, restored.windows)),
            Arc::clone(&spec),
        );
        let durable = durable_sink(records, windows.deltas, ctx.sink.clone(), ack);
        let updates = counts
            .updates
            .concat(windows.updates)
            .concat(dashboard.updates);
        let gathered = crate::route::send_to(updates, "ToLeaders", leaders);
        let probe = ProbeHandle::new();
        let durable = durable.probe_with(&probe);
        let _ = crate::publish::publish(
            gathered,
            durable,
            horizon,
            spec,
            leader.then(|| Arc::clone(&ctx.snapshots)),
        );
        WorkerDataflow {
            probe,
            trace: counts.traces,
            window_trace: windows.trace,
            dashboard_traces: dashboard.traces,
            worker: index,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrangements_finish_the_merges_in_progress_and_only_those() {
        let config = worker_config();
        let logic = config
            .get::<differential_dataflow::trace::ExertionLogic>("differential/default_exert_logic")
            .expect("the service sets an exertion logic");
        // (level, batches at the level, their length), largest level first.
        assert_eq!(logic(&[(3, 1, 800), (2, 0, 0), (1, 1, 100)]), None);
        assert_eq!(logic(&[]), None);
        assert_eq!(
            logic(&[(3, 2, 1_600), (2, 1, 300), (1, 2, 60)]),
            Some(2 * (1_600 + 60))
        );
    }
}
