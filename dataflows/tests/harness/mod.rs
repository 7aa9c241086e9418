//! The harness shared by the probe-driven dataflow tests: one worker's
//! dataflow, wired by the test (a [`Wiring`]) from a timely input whose time
//! the test controls to a durability stream and the live updates, which the
//! harness probes and hands to `publish`. The worker is driven by
//! `worker.step()` loops bounded by a step count and a deadline; nothing
//! sleeps.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use dataflows::counts::Horizon;
use dataflows::durable::{SinkBatch, WorkerAck};
use dataflows::publish::{publish, LiveUpdate, PublishProgress};
use dataflows::windows::WindowSpec;
use dataflows::{LiveSnapshot, Record};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::operators::{Input, Probe};
use timely::dataflow::{InputHandle, ProbeHandle, Stream};
use timely::worker::Worker;
use tokio::sync::{mpsc, watch};

pub type RecordInput = InputHandle<u64, CapacityContainerBuilder<Vec<Record>>>;

/// `timely::execute_directly` with the service's worker configuration
/// (`pipeline::worker_config`: how its arrangements merge), so that the
/// tests run the dataflow as the service does.
pub fn execute_directly<T>(func: impl FnOnce(&mut Worker) -> T) -> T {
    use timely::communication::allocator::thread::Thread;
    use timely::communication::Allocator;
    let alloc = Allocator::Thread(Thread::default());
    let mut worker = Worker::new(
        dataflows::pipeline::worker_config(),
        alloc,
        Some(Instant::now()),
    );
    let result = func(&mut worker);
    while worker.has_dataflows() {
        worker.step_or_park(None);
    }
    result
}

/// Upper bounds on one wait for the dataflow, and the extra steps taken
/// after a wait to give a wrong publication the chance to happen before
/// the test asserts that it did not.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_steps: usize,
    pub max_wait: Duration,
    pub settle_steps: usize,
}

/// What a test's wiring hands back to the harness.
pub struct Wired<'s, X> {
    /// The durability stream (the output of `durable_sink`).
    pub durable: Stream<'s, u64, Vec<()>>,
    /// The live updates that `publish` applies.
    pub updates: Stream<'s, u64, Vec<(u64, LiveUpdate)>>,
    pub horizon: Horizon,
    pub spec: Arc<WindowSpec>,
    /// Whatever else the test keeps (a trace, or nothing).
    pub extra: X,
}

/// How a test wires the operators it checks between the input records and
/// `publish`, the way `pipeline::build` wires them.
pub trait Wiring {
    type Extra;
    fn wire<'s>(
        self,
        records: Stream<'s, u64, Vec<Record>>,
        sink: mpsc::UnboundedSender<SinkBatch>,
        ack: Arc<WorkerAck>,
    ) -> Wired<'s, Self::Extra>;
}

/// One worker's dataflow and the handles the test drives it with.
pub struct Harness<X> {
    input: Option<RecordInput>,
    /// Frontier of the durability stream.
    pub durable: ProbeHandle<u64>,
    /// Frontier of the updates that reach `publish`.
    pub updates: ProbeHandle<u64>,
    pub batches: mpsc::UnboundedReceiver<SinkBatch>,
    pub ack: Arc<WorkerAck>,
    snapshots: watch::Receiver<Arc<LiveSnapshot>>,
    /// The publisher thread's progress: snapshots are read once it is idle.
    published: PublishProgress,
    horizon: Horizon,
    pub extra: X,
    dataflow: usize,
    limits: Limits,
}

impl<X: 'static> Harness<X> {
    /// Builds the dataflow with `wiring`, moves the input to `start` and
    /// waits for the first snapshot.
    pub fn new<W: Wiring<Extra = X>>(
        worker: &mut Worker,
        start: u64,
        limits: Limits,
        wiring: W,
    ) -> Self {
        let (sink, batches) = mpsc::unbounded_channel();
        let ack = Arc::new(WorkerAck::default());
        let (sender, snapshots) = watch::channel(Arc::new(LiveSnapshot::default()));
        let sender = Arc::new(sender);
        let durable_probe = ProbeHandle::new();
        let updates_probe = ProbeHandle::new();
        let dataflow = worker.next_dataflow_index();
        let sink_ack = Arc::clone(&ack);
        let (mut input, horizon, extra, published) = worker.dataflow::<u64, _, _>(|scope| {
            let (input, records) = scope.new_input::<Vec<Record>>();
            let wired = wiring.wire(records, sink, sink_ack);
            let durable = wired.durable.probe_with(&durable_probe);
            let updates = wired.updates.probe_with(&updates_probe);
            let published = publish(updates, durable, wired.horizon, wired.spec, Some(sender));
            (input, wired.horizon, wired.extra, published)
        });
        input.advance_to(start);
        let mut harness = Harness {
            input: Some(input),
            durable: durable_probe,
            updates: updates_probe,
            batches,
            ack,
            snapshots,
            published,
            horizon,
            extra,
            dataflow,
            limits,
        };
        harness.step_until(worker, "the first snapshot", |h| {
            h.snapshot().as_of_ms == start
        });
        harness
    }

    pub fn input(&mut self) -> &mut RecordInput {
        self.input.as_mut().expect("input is open until finish")
    }

    pub fn send(&mut self, record: Record) {
        self.input().send(record);
    }

    pub fn time(&mut self) -> u64 {
        *self.input().time()
    }

    pub fn advance(&mut self, to: u64) {
        self.input().advance_to(to);
    }

    pub fn snapshot(&self) -> Arc<LiveSnapshot> {
        Arc::clone(&self.snapshots.borrow())
    }

    /// Waits until the publisher thread has published every tick handed to
    /// it (the worker is not stepped meanwhile, so no new one arrives), or
    /// until `deadline`.
    fn await_publisher(&self, deadline: Instant) {
        while !self.published.idle() && Instant::now() < deadline {
            std::thread::yield_now();
        }
    }

    /// Steps the worker until `done` holds; panics after a bounded wait.
    pub fn step_until(
        &mut self,
        worker: &mut Worker,
        what: &str,
        mut done: impl FnMut(&mut Self) -> bool,
    ) {
        let deadline = Instant::now() + self.limits.max_wait;
        for _ in 0..self.limits.max_steps {
            self.await_publisher(deadline);
            if done(self) {
                return;
            }
            if Instant::now() > deadline {
                break;
            }
            worker.step();
        }
        self.await_publisher(deadline);
        if done(self) {
            return;
        }
        panic!(
            "timed out waiting for {what}: as_of {}, durable frontier {:?}, updates frontier {:?}",
            self.snapshot().as_of_ms,
            frontier(&self.durable),
            frontier(&self.updates),
        );
    }

    pub fn settle(&mut self, worker: &mut Worker) {
        for _ in 0..self.limits.settle_steps {
            worker.step();
        }
        self.await_publisher(Instant::now() + self.limits.max_wait);
    }

    /// Waits for the next `SinkBatch` and checks that it is for `tick`.
    pub fn recv_batch(&mut self, worker: &mut Worker, tick: u64) -> SinkBatch {
        let mut got = None;
        self.step_until(worker, &format!("the SinkBatch of tick {tick}"), |h| {
            if got.is_none() {
                got = h.batches.try_recv().ok();
            }
            got.is_some()
        });
        let batch = got.expect("step_until returned, so a batch arrived");
        assert_eq!(batch.tick, tick, "batches arrive in tick order");
        batch
    }

    pub fn no_batch_waiting(&self) -> bool {
        self.batches.is_empty()
    }

    /// Waits until the published snapshot is as of `as_of`, then settles.
    pub fn await_as_of(&mut self, worker: &mut Worker, as_of: u64) -> Arc<LiveSnapshot> {
        self.step_until(worker, &format!("a snapshot as of {as_of}"), |h| {
            h.snapshot().as_of_ms == as_of
        });
        self.settle(worker);
        let snapshot = self.snapshot();
        assert_eq!(
            snapshot.as_of_ms, as_of,
            "the snapshot moved past the expected frontier"
        );
        assert_eq!(
            snapshot.covered_from_second,
            self.horizon.covered_from(as_of)
        );
        snapshot
    }

    /// Closes the input, acknowledges whatever the sink still receives and
    /// runs the dataflow to completion, so that `execute_directly` returns.
    pub fn finish(mut self, worker: &mut Worker) {
        drop(self.input.take());
        let deadline = Instant::now() + self.limits.max_wait;
        let mut steps = 0;
        while worker.has_dataflows() && steps < self.limits.max_steps && Instant::now() < deadline {
            while let Ok(batch) = self.batches.try_recv() {
                self.ack.acknowledge(batch.tick, batch.rows());
            }
            worker.step();
            steps += 1;
        }
        if worker.has_dataflows() {
            worker.drop_dataflow(self.dataflow);
            panic!("the dataflow did not shut down after its input closed and every batch was acknowledged");
        }
        assert_eq!(
            self.ack.pending_rows(),
            0,
            "every row handed to the sink was acknowledged"
        );
    }
}

pub fn frontier(probe: &ProbeHandle<u64>) -> Vec<u64> {
    probe.with_frontier(|f| f.iter().copied().collect())
}
