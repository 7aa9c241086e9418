//! The durability gate between the dataflow and PostgreSQL.
//!
//! [`durable_sink`] collects each worker's [`Record`]s per tick. When the
//! worker's input frontier passes a tick, the tick's rows and the Kafka
//! offsets they came from go to the sink task as one [`SinkBatch`]. The
//! operator keeps a capability on its (data-less) output for every tick that
//! is not yet committed, and drops it when the sink acknowledges the tick
//! through the worker's [`WorkerAck`]. The output's frontier is therefore
//! the global durability frontier: every tick before it is committed in
//! PostgreSQL on every worker of the cluster.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::{Capability, Operator};
use timely::dataflow::Stream;
use timely::scheduling::SyncActivator;
use tokio::sync::mpsc::UnboundedSender;
use tracing::warn;

use crate::aggregates::WinUpdate;
use crate::event::{DeadLetter, Partition, PartitionOffset, Record};
use crate::panes::WinId;
use crate::rows::EventRows;
use crate::time::TickStash;
use crate::trading::{SealedTrading, TradingBatch};
use crate::windows::{Agg, WindowKey};

/// The rows of one worker for one or more ticks, handed to the sink.
#[derive(Debug)]
pub struct SinkBatch {
    /// The worker's index in the cluster.
    pub worker: usize,
    /// The latest tick whose rows this batch completes.
    pub tick: u64,
    /// The tick's events, as the rows stored for them.
    pub events: EventRows,
    pub dead: Vec<DeadLetter>,
    /// `(topic, partition, next_offset)` reached by the rows of this batch.
    pub offsets: Vec<PartitionOffset>,
    /// Window contributions of `events` at the finest configured interval
    /// (the only one stored), to merge into the stored rollups: one per
    /// window (see [`SinkBatch::rollup_keys`] for their strings).
    pub rollups: Vec<(WinId, Agg)>,
    /// Trading-table contributions of `events`, merged in the same transaction.
    pub trading: SealedTrading,
    /// Where to report the commit.
    pub ack: Arc<WorkerAck>,
}

impl SinkBatch {
    /// The rollup contributions with their strings.
    pub fn rollup_keys(&self) -> Vec<(WindowKey, Agg)> {
        self.rollups
            .iter()
            .filter_map(|(id, agg)| Some((id.key()?, agg.clone())))
            .collect()
    }

    pub fn rows(&self) -> usize {
        self.events.len() + self.dead.len()
    }
}

/// Shared between one worker, the sink task and the health checks: what is
/// committed, and when the worker last stepped.
#[derive(Default)]
pub struct WorkerAck {
    /// One past the latest committed tick (0: nothing committed yet).
    durable_upto: AtomicU64,
    pending_rows: AtomicI64,
    /// Batches handed to the sink and not yet committed.
    pending_batches: AtomicI64,
    activator: Mutex<Option<SyncActivator>>,
    /// Wall clock (ms since the epoch) of the worker's latest step; 0 until
    /// its dataflow runs.
    last_step_ms: AtomicU64,
}

impl std::fmt::Debug for WorkerAck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerAck")
            .field("durable_upto", &self.durable_upto.load(Ordering::Relaxed))
            .field("pending_rows", &self.pending_rows.load(Ordering::Relaxed))
            .field(
                "pending_batches",
                &self.pending_batches.load(Ordering::Relaxed),
            )
            .finish()
    }
}

impl WorkerAck {
    /// Called by the sink once `tick` and every earlier tick of this worker
    /// are committed, with the number of rows that became durable: once
    /// per batch.
    pub fn acknowledge(&self, tick: u64, rows: usize) {
        self.durable_upto.fetch_max(tick + 1, Ordering::AcqRel);
        self.pending_rows.fetch_sub(rows as i64, Ordering::AcqRel);
        self.pending_batches.fetch_sub(1, Ordering::AcqRel);
        if let Ok(guard) = self.activator.lock() {
            if let Some(activator) = guard.as_ref() {
                // An error means the worker is gone; nothing is left to wake.
                let _ = activator.activate();
            }
        }
    }

    /// Rows handed to the sink and not yet committed.
    pub fn pending_rows(&self) -> i64 {
        self.pending_rows.load(Ordering::Acquire)
    }

    /// Batches handed to the sink and not yet committed.
    pub fn pending_batches(&self) -> i64 {
        self.pending_batches.load(Ordering::Acquire)
    }

    /// Records a batch of `rows` handed to the sink.
    pub(crate) fn handed(&self, rows: usize) {
        self.pending_rows.fetch_add(rows as i64, Ordering::AcqRel);
        self.pending_batches.fetch_add(1, Ordering::AcqRel);
    }

    /// Every tick before this one is committed.
    pub fn durable_upto(&self) -> u64 {
        self.durable_upto.load(Ordering::Acquire)
    }

    /// Called by the worker after each step.
    pub fn beat(&self, now_ms: u64) {
        self.last_step_ms.store(now_ms, Ordering::Release);
    }

    /// When the worker last stepped (0: not yet).
    pub fn last_step_ms(&self) -> u64 {
        self.last_step_ms.load(Ordering::Acquire)
    }

    fn register(&self, activator: SyncActivator) {
        if let Ok(mut guard) = self.activator.lock() {
            *guard = Some(activator);
        }
    }
}

#[derive(Default)]
struct Pending {
    events: EventRows,
    dead: Vec<DeadLetter>,
    offsets: BTreeMap<Partition, i64>,
    rollups: Vec<(WinId, Agg)>,
    trading: TradingBatch,
}

impl Pending {
    fn add_record(&mut self, record: Record) {
        match record {
            Record::Event(e) => {
                self.trading.add(&e);
                self.events.add(&e);
            }
            Record::Dead(d) => self.dead.push(d),
            Record::Progress {
                topic,
                partition,
                next_offset,
            } => {
                let slot = self
                    .offsets
                    .entry((topic, partition))
                    .or_insert(next_offset);
                *slot = (*slot).max(next_offset);
            }
        }
    }
}

/// Hands completed ticks to the sink: the tick's records, the window
/// partials computed from them (`rollups`, merged into `metric_aggregations`
/// in the same transaction) and their trading contributions, folded here
/// per tick on the worker. The output frontier is the durability frontier.
pub fn durable_sink<'s>(
    records: Stream<'s, u64, Vec<Record>>,
    rollups: Stream<'s, u64, Vec<WinUpdate>>,
    sink: UnboundedSender<SinkBatch>,
    ack: Arc<WorkerAck>,
) -> Stream<'s, u64, Vec<()>> {
    let scope = records.scope();
    let worker = scope.index();
    records.binary_frontier::<_, CapacityContainerBuilder<Vec<()>>, _, _, _, _>(
        rollups,
        Pipeline,
        Pipeline,
        "DurableSink",
        move |_capability, info| {
            ack.register(scope.worker().sync_activator_for(info.address.to_vec()));
            let mut stash: TickStash<Pending> = TickStash::default();
            let mut inflight: Vec<(u64, Capability<u64>)> = Vec::new();
            move |(records, frontier1), (rollups, frontier2), _output| {
                records.for_each(|cap, data| {
                    if let Some((_, pending)) = stash.at(&cap, Pending::default) {
                        for record in data.drain(..) {
                            pending.add_record(record);
                        }
                    }
                });
                rollups.for_each(|cap, data| {
                    if let Some((_, pending)) = stash.at(&cap, Pending::default) {
                        // One delta per window and tick from `fold_windows`.
                        pending
                            .rollups
                            .extend(data.drain(..).map(|(id, _, agg)| (id, agg)));
                    }
                });
                let complete =
                    crate::time::frontier_min(frontier1).min(crate::time::frontier_min(frontier2));
                while let Some((tick, capability, mut pending)) = stash.pop_before(complete) {
                    pending.events.shrink_to_fit();
                    let batch = SinkBatch {
                        worker,
                        tick,
                        events: pending.events,
                        dead: pending.dead,
                        offsets: pending
                            .offsets
                            .into_iter()
                            .map(|((t, p), o)| (t, p, o))
                            .collect(),
                        rollups: pending.rollups,
                        trading: pending.trading.seal(),
                        ack: Arc::clone(&ack),
                    };
                    if batch.rows() == 0 && batch.offsets.is_empty() && batch.rollups.is_empty() {
                        continue;
                    }
                    ack.handed(batch.rows());
                    if sink.send(batch).is_err() {
                        warn!(worker, tick, "sink is gone; tick will never be durable");
                    }
                    inflight.push((tick, capability));
                }
                let durable = ack.durable_upto();
                inflight.retain(|(tick, _)| *tick >= durable);
            }
        },
    )
}
