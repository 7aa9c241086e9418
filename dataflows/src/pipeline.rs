//! The whole dataflow of one worker, wired from the pieces of this crate:
//!
//! ```text
//! start offsets (worker 0, t=0) ─broadcast─► Kafka source ─► records
//! records ─► WindowPartials ─┬──────────────────► DurableSink ─► durability stream ──┐
//! records ──────────────────────────────────────► DurableSink                        │
//! records + REST records ─► CountByTypeSecond ─► arrange (type, second) ─┐           │
//! partials (Kafka, REST, restored) ─► ExpireWindows ─► arrange windows ──┴► leaders ─► PublishSnapshot
//! ```

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use differential_dataflow::operators::arrange::TraceAgent;
use differential_dataflow::trace::implementations::KeySpine;
use differential_dataflow::trace::TraceReader;
use differential_dataflow::AsCollection;
use timely::dataflow::operators::vec::Map;
use timely::dataflow::operators::{Concat, Probe};
use timely::dataflow::ProbeHandle;
use timely::worker::Worker;
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::watch;

use crate::aggregates::{expiring, restored_windows, window_partials};
use crate::counts::{
    committed, count_updates, restored_counts, start_offsets, CommittedQueue, Horizon,
};
use crate::durable::{durable_sink, SinkBatch, WorkerAck};
use crate::event::{Event, PartitionOffset, Record};
use crate::kafka_source::{kafka_source, KafkaSettings, PartitionDirectory, SourceContext};
use crate::live::LiveSnapshot;
use crate::metrics;
use crate::publish::LiveUpdate;
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
}

/// What every worker of one process shares.
pub struct ProcessContext {
    pub kafka: KafkaSettings,
    pub tick_ms: u64,
    pub horizon_ms: u64,
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
}

type CountTrace = TraceAgent<KeySpine<(String, i64), u64, isize>>;
type WindowTrace = TraceAgent<KeySpine<WindowKey, u64, Agg>>;

/// Handles a worker keeps while it runs the dataflow.
pub struct WorkerDataflow {
    pub probe: ProbeHandle<u64>,
    trace: CountTrace,
    window_trace: WindowTrace,
    worker: usize,
}

impl WorkerDataflow {
    /// Lets the trace compact up to what the probe has seen, and reports its size.
    pub fn maintain(&mut self) {
        let mut frontier = timely::progress::Antichain::new();
        self.probe
            .with_frontier(|f| frontier.extend(f.iter().copied()));
        let worker = self.worker.to_string();
        let counts = compact(&mut self.trace, frontier.borrow());
        let windows = compact(&mut self.window_trace, frontier.borrow());
        for (name, records) in [
            ("live_counts_by_type_second", counts),
            ("window_aggregates", windows),
        ] {
            metrics::ARRANGEMENT_RECORDS
                .with_label_values(&[name, worker.as_str()])
                .set(records as i64);
        }
    }
}

/// Lets `trace` compact up to `frontier`; returns the updates it holds.
fn compact<Tr>(trace: &mut Tr, frontier: timely::progress::frontier::AntichainRef<'_, u64>) -> usize
where
    Tr: TraceReader<Time = u64>,
    Tr::Batch: differential_dataflow::trace::implementations::spine_fueled::SpineBatch,
{
    use differential_dataflow::trace::implementations::spine_fueled::SpineBatch;
    trace.set_logical_compaction(frontier);
    trace.set_physical_compaction(frontier);
    let mut records = 0usize;
    trace.map_spans(|span| records += span.inner.as_ref().map_or(0, |b| b.len()));
    records
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
    let ack = Arc::clone(&ctx.acks[local]);
    worker.dataflow::<u64, _, _>(|scope| {
        let offsets = start_offsets(scope, restored.offsets);
        let records = kafka_source(
            offsets,
            SourceContext {
                settings: ctx.kafka.clone(),
                directory: Arc::clone(&ctx.directory),
                ack: Arc::clone(&ack),
                shutdown: Arc::clone(&ctx.shutdown),
                tick_ms: ctx.tick_ms,
                validators: Arc::clone(&ctx.validators),
            },
        );
        let spec = Arc::clone(&ctx.windows);
        let partials = window_partials(records.clone(), Arc::clone(&spec));
        let durable = durable_sink(records.clone(), partials.clone(), ctx.sink.clone(), ack);
        let committed_events = committed(
            scope,
            "CommittedEvents",
            leader.then(|| Arc::clone(&ctx.committed)),
            ctx.tick_ms,
            Arc::clone(&ctx.shutdown),
            |event, _| Record::Event(event),
        );
        let committed_windows = committed(
            scope,
            "CommittedWindows",
            leader.then(|| Arc::clone(&ctx.committed_windows)),
            ctx.tick_ms,
            Arc::clone(&ctx.shutdown),
            |(key, agg), time| (key, time, agg),
        );
        let counts = count_updates(records.concat(committed_events), horizon)
            .concat(restored_counts(scope, restored.counts, horizon))
            .as_collection()
            .arrange_by_self_named("LiveCountsByTypeSecond");
        let windows = expiring(
            partials
                .concat(committed_windows)
                .concat(restored_windows(scope, restored.windows)),
            Arc::clone(&spec),
        )
        .as_collection()
        .arrange_by_self_named("WindowAggregates");
        let trace = counts.trace.clone();
        let window_trace = windows.trace.clone();
        let updates = counts
            .flat_map_ref(|key, _| Some(key.clone()))
            .inner
            .map(|(key, time, diff)| (time, LiveUpdate::Count(key, diff)))
            .concat(
                windows
                    .flat_map_ref(|key, _| Some(key.clone()))
                    .inner
                    .map(|(key, time, diff)| (time, LiveUpdate::Window(key, diff))),
            );
        let gathered = crate::route::send_to(updates, "ToLeaders", leaders);
        let probe = ProbeHandle::new();
        let durable = durable.probe_with(&probe);
        crate::publish::publish(
            gathered,
            durable,
            horizon,
            spec,
            leader.then(|| Arc::clone(&ctx.snapshots)),
        );
        WorkerDataflow {
            probe,
            trace,
            window_trace,
            worker: index,
        }
    })
}
