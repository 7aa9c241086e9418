//! The whole dataflow of one worker, wired from the pieces of this crate:
//!
//! ```text
//! start offsets (worker 0, t=0) ─broadcast─► Kafka source ─► records
//! records ─► DurableSink ─► durability stream ────────────────┐
//! records ─► CountByTypeSecond ─┐                              │
//! restored + REST counts ───────┴► arrange (type, second) ─► leaders ─► PublishSnapshot
//! ```

use crate::event::PartitionOffset;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use differential_dataflow::operators::arrange::TraceAgent;
use differential_dataflow::trace::implementations::KeySpine;
use differential_dataflow::trace::TraceReader;
use differential_dataflow::AsCollection;
use timely::dataflow::operators::{Concat, Probe};
use timely::dataflow::ProbeHandle;
use timely::worker::Worker;
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::watch;

use crate::counts::{committed_input, count_updates, start_offsets, CommittedQueue, Horizon};
use crate::durable::{durable_sink, SinkBatch, WorkerAck};
use crate::kafka_source::{kafka_source, KafkaSettings, PartitionDirectory, SourceContext};
use crate::live::LiveSnapshot;
use crate::metrics;

/// State restored from PostgreSQL before the dataflow starts (process 0 only).
#[derive(Clone, Debug, Default)]
pub struct Restored {
    /// Stored counts per `(event_type, second)` inside the horizon.
    pub counts: Vec<((String, i64), i64)>,
    /// Stored next offsets per partition.
    pub offsets: Vec<PartitionOffset>,
}

/// What every worker of one process shares.
pub struct ProcessContext {
    pub kafka: KafkaSettings,
    pub tick_ms: u64,
    pub horizon_ms: u64,
    pub workers_per_process: usize,
    pub directory: Arc<PartitionDirectory>,
    pub sink: UnboundedSender<SinkBatch>,
    /// One per local worker.
    pub acks: Vec<Arc<WorkerAck>>,
    pub committed: Arc<CommittedQueue>,
    pub snapshots: Arc<watch::Sender<Arc<LiveSnapshot>>>,
    pub restored: Mutex<Option<Restored>>,
    pub shutdown: Arc<AtomicBool>,
}

type CountTrace = TraceAgent<KeySpine<(String, i64), u64, isize>>;

/// Handles a worker keeps while it runs the dataflow.
pub struct WorkerDataflow {
    pub probe: ProbeHandle<u64>,
    trace: CountTrace,
    worker: usize,
}

impl WorkerDataflow {
    /// Lets the trace compact up to what the probe has seen, and reports its size.
    pub fn maintain(&mut self) {
        let mut frontier = timely::progress::Antichain::new();
        self.probe
            .with_frontier(|f| frontier.extend(f.iter().copied()));
        self.trace.set_logical_compaction(frontier.borrow());
        self.trace.set_physical_compaction(frontier.borrow());
        let mut records = 0usize;
        self.trace.map_spans(|span| {
            use differential_dataflow::trace::implementations::spine_fueled::SpineBatch;
            records += span.inner.as_ref().map_or(0, |b| b.len());
        });
        metrics::ARRANGEMENT_RECORDS
            .with_label_values(&["live_counts_by_type_second", &self.worker.to_string()])
            .set(records as i64);
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
            },
        );
        let durable = durable_sink(records.clone(), ctx.sink.clone(), ack);
        let committed = committed_input(
            scope,
            restored.counts,
            leader.then(|| Arc::clone(&ctx.committed)),
            horizon,
            Arc::clone(&ctx.shutdown),
        );
        let arranged = count_updates(records, horizon)
            .concat(committed)
            .as_collection()
            .arrange_by_self_named("LiveCountsByTypeSecond");
        let trace = arranged.trace.clone();
        let gathered = crate::route::send_to(
            arranged.as_collection(|key, _| key.clone()).inner,
            "ToLeaders",
            leaders,
        );
        let probe = ProbeHandle::new();
        let durable = durable.probe_with(&probe);
        crate::publish::publish(
            gathered,
            durable,
            horizon,
            leader.then(|| Arc::clone(&ctx.snapshots)),
        );
        WorkerDataflow {
            probe,
            trace,
            worker: index,
        }
    })
}
