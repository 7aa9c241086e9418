//! End-to-end checks of one worker's dataflow without Kafka or PostgreSQL:
//! `Record`s enter through a timely `InputHandle` whose time the test
//! controls, and go through the production pieces as `pipeline::build`
//! wires them (records → `build_windows` deltas → `durable_sink`; records →
//! `build_counts` → `publish`, gated by the durability stream). The tests cover the durability gate (a tick is
//! published only after its `SinkBatch` is acknowledged), the contents of
//! the `SinkBatch`es, the published counts against a from-scratch oracle
//! over random input (including events beyond the live horizon), and the
//! expiry of counts once the input and durability frontiers pass
//! `Horizon::expire_at`. The worker is driven by `worker.step()` loops
//! bounded by a step count and a deadline; nothing sleeps.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

mod harness;

use dataflows::aggregates::restored_windows;
use dataflows::counts::Horizon;
use dataflows::durable::{durable_sink, SinkBatch, WorkerAck};
use dataflows::pipeline::{build_counts, build_windows};
use dataflows::windows::{DimSet, Interval, WindowSpec};
use dataflows::{DeadLetter, DeadReason, Event, EventSource, LiveSnapshot, Record};
use harness::{Harness, Limits, Wired, Wiring};
use proptest::prelude::*;

use timely::dataflow::Stream;
use timely::worker::Worker;
use tokio::sync::mpsc;
use uuid::Uuid;

/// Tick length, ms.
const TICK: u64 = 100;
/// Live horizon, ms.
const HORIZON_MS: u64 = 60_000;
/// First tick of every test: a realistic epoch time, a whole second.
const T0: u64 = 1_760_000_000_000;
/// A second far after every event time used here.
const FAR_FUTURE: i64 = i64::MAX / 2_000;
/// Upper bounds on one wait for the dataflow.
const MAX_STEPS: usize = 20_000;
const MAX_WAIT: Duration = Duration::from_secs(30);
/// Extra steps taken after a wait, to give a wrong publication the chance
/// to happen before the test asserts that it did not.
const SETTLE_STEPS: usize = 50;

const TOPIC: &str = "trading-events";

fn horizon() -> Horizon {
    Horizon {
        horizon_ms: HORIZON_MS,
        tick_ms: TICK,
    }
}

/// Records → `durable_sink`; records → `count_updates` → arrangement →
/// `publish`, as `pipeline::build` wires them.
struct Counts;

impl Wiring for Counts {
    type Extra = ();

    fn wire<'s>(
        self,
        records: Stream<'s, u64, Vec<Record>>,
        sink: mpsc::UnboundedSender<SinkBatch>,
        ack: Arc<WorkerAck>,
    ) -> Wired<'s, ()> {
        let horizon = horizon();
        let spec = Arc::new(WindowSpec {
            intervals: vec![(Interval(0), HORIZON_MS)],
            numeric: Vec::new(),
            max_dimension_values: 100,
            dimension_sets: DimSet::defaults(),
            tick_ms: TICK,
        });
        let none = restored_windows(records.scope(), Vec::new());
        let windows = build_windows(records.clone(), none, Arc::clone(&spec));
        let durable = durable_sink(records.clone(), windows.deltas, sink, ack);
        let no_counts = dataflows::expiry::restored(records.scope(), "NoCounts", Vec::new());
        let updates = build_counts(records, no_counts, horizon).updates;
        Wired {
            durable,
            updates,
            horizon,
            spec,
            extra: (),
        }
    }
}

const LIMITS: Limits = Limits {
    max_steps: MAX_STEPS,
    max_wait: MAX_WAIT,
    settle_steps: SETTLE_STEPS,
};

fn new_harness(worker: &mut Worker, start: u64) -> Harness<()> {
    Harness::new(worker, start, LIMITS, Counts)
}

fn kafka(partition: i32, offset: i64) -> EventSource {
    EventSource::Kafka {
        topic: Arc::from(TOPIC),
        partition,
        offset,
    }
}

/// An event of `event_type` at `second` (plus a fraction, to check that the
/// second is floored), with a deterministic id.
fn event(id: u128, event_type: &str, second: i64, source: EventSource) -> Event {
    Event {
        id: Uuid::from_u128(id),
        event_type: event_type.to_string(),
        user_id: Some(format!("user-{}", id % 7)),
        session_id: None,
        properties: r#"{"symbol":"BTCUSDT"}"#.to_string(),
        timestamp_us: second * 1_000_000 + (id as i64 % 1_000) * 997,
        created_at_us: second * 1_000_000,
        source,
        parsed: Default::default(),
    }
}

fn dead(tag: u8, source: EventSource) -> DeadLetter {
    DeadLetter {
        reason: DeadReason::MalformedJson,
        detail: format!("bad payload {tag}"),
        errors: Vec::new(),
        payload: vec![b'{', tag],
        source,
        received_at_us: T0 as i64 * 1_000,
    }
}

fn progress(partition: i32, next_offset: i64) -> Record {
    Record::Progress {
        topic: Arc::from(TOPIC),
        partition,
        next_offset,
    }
}

/// Counts per type over every second, as `LiveCounts::by_type` reports them.
fn all_counts(snapshot: &LiveSnapshot) -> BTreeMap<String, i64> {
    snapshot.counts.by_type(i64::MIN / 2, FAR_FUTURE)
}

fn counts_of(pairs: &[(&str, i64)]) -> BTreeMap<String, i64> {
    pairs.iter().map(|(t, n)| (t.to_string(), *n)).collect()
}

/// The current second of the tick `t`.
fn second_of(t: u64) -> i64 {
    (t / 1000) as i64
}

#[test]
fn durability_gate_holds_ticks_until_acknowledged() {
    harness::execute_directly(|worker| {
        let mut h = new_harness(worker, T0);
        assert!(all_counts(&h.snapshot()).is_empty());
        let t = T0;
        let now = second_of(t);

        let mut id = 0u128;
        let mut fed = Vec::new();
        for (event_type, n, age) in [
            ("order.placed", 3, 1),
            ("page.view", 2, 5),
            ("order.filled", 1, 0),
        ] {
            for _ in 0..n {
                id += 1;
                fed.push(event(id, event_type, now - age, kafka(0, id as i64)));
            }
        }
        id += 1;
        fed.push(event(id, "user.login", now, EventSource::Rest));
        for e in &fed {
            h.send(Record::Event(e.clone().into()));
        }
        h.send(Record::Dead(dead(1, kafka(0, 100))));
        h.send(progress(0, 101));
        let expected_t = counts_of(&[
            ("order.placed", 3),
            ("page.view", 2),
            ("order.filled", 1),
            ("user.login", 1),
        ]);

        // The tick is not complete while the input is still at it.
        h.settle(worker);
        assert!(
            h.no_batch_waiting(),
            "a batch was sent before its tick completed"
        );

        // Tick t + 1 gets more events, left unacknowledged for a while.
        h.advance(t + TICK);
        id += 1;
        h.send(Record::Event(
            event(id, "order.placed", now, kafka(1, 7)).into(),
        ));
        id += 1;
        h.send(Record::Event(
            event(id, "alert.triggered", now, kafka(1, 8)).into(),
        ));
        h.advance(t + 2 * TICK);

        let batch_t = h.recv_batch(worker, t);
        assert_eq!(batch_t.rows(), fed.len() + 1);
        let batch_t1 = h.recv_batch(worker, t + TICK);
        assert_eq!(batch_t1.rows(), 2);

        // The counts of t and t + 1 have reached `publish`; only durability
        // holds them back.
        h.step_until(worker, "the count updates to pass t + 1", |h| {
            !h.updates.less_equal(&(t + TICK))
        });
        h.settle(worker);
        let before = h.snapshot();
        assert!(
            before.as_of_ms <= t,
            "as_of {} passed the unacknowledged tick {t}",
            before.as_of_ms
        );
        assert!(
            all_counts(&before).is_empty(),
            "unacknowledged events were published: {:?}",
            all_counts(&before)
        );
        assert!(
            h.durable.less_equal(&t),
            "durability frontier passed an unacknowledged tick"
        );
        assert_eq!(
            h.ack.pending_rows(),
            (batch_t.rows() + batch_t1.rows()) as i64
        );

        // Acknowledging t publishes t and nothing of t + 1.
        h.ack.acknowledge(t, batch_t.rows());
        let after = h.await_as_of(worker, t + TICK);
        assert!(after.as_of_ms > t);
        assert_eq!(all_counts(&after), expected_t);
        assert_eq!(
            after.counts.by_type(now - 1, now),
            counts_of(&[("order.placed", 3)])
        );
        assert_eq!(
            after.counts.by_type(now, now + 1),
            counts_of(&[("order.filled", 1), ("user.login", 1)])
        );
        assert_eq!(h.ack.pending_rows(), batch_t1.rows() as i64);

        // Acknowledging t + 1 publishes the rest.
        h.ack.acknowledge(t + TICK, batch_t1.rows());
        let last = h.await_as_of(worker, t + 2 * TICK);
        assert_eq!(
            all_counts(&last),
            counts_of(&[
                ("order.placed", 4),
                ("page.view", 2),
                ("order.filled", 1),
                ("user.login", 1),
                ("alert.triggered", 1),
            ])
        );
        assert_eq!(h.ack.pending_rows(), 0);
        h.finish(worker);
    });
}

fn sorted_events<E: std::borrow::Borrow<Event>>(events: &[E]) -> Vec<Event> {
    let mut events: Vec<Event> = events.iter().map(|e| e.borrow().clone()).collect();
    events.sort_by_key(|e| e.id);
    events
}

fn sorted_dead(dead: &[DeadLetter]) -> Vec<DeadLetter> {
    let mut dead = dead.to_vec();
    dead.sort_by_key(|d| d.payload.clone());
    dead
}

fn sorted_offsets(offsets: &[(Arc<str>, i32, i64)]) -> Vec<(String, i32, i64)> {
    let mut offsets: Vec<_> = offsets
        .iter()
        .map(|(t, p, o)| (t.to_string(), *p, *o))
        .collect();
    offsets.sort();
    offsets
}

#[test]
fn sink_batches_hold_exactly_their_ticks_rows_and_offsets() {
    harness::execute_directly(|worker| {
        let mut h = new_harness(worker, T0);
        let t = T0;
        let now = second_of(t);

        // Tick t: events and dead letters from two partitions and REST, and
        // progress reported out of order.
        let events_t = [
            event(1, "order.placed", now, kafka(0, 10)),
            event(2, "order.placed", now - 3, kafka(1, 3)),
            event(3, "page.view", now, EventSource::Rest),
            // Beyond the horizon: not counted live, but still stored.
            event(4, "order.filled", now - 86_400, kafka(0, 11)),
        ];
        let dead_t = [dead(1, kafka(0, 12)), dead(2, EventSource::Rest)];
        h.send(Record::Event(events_t[0].clone().into()));
        h.send(progress(0, 11));
        h.send(Record::Event(events_t[1].clone().into()));
        h.send(progress(1, 4));
        h.send(Record::Dead(dead_t[0].clone()));
        h.send(progress(0, 13));
        h.send(progress(0, 9));
        h.send(Record::Event(events_t[2].clone().into()));
        h.send(Record::Dead(dead_t[1].clone()));
        h.send(Record::Event(events_t[3].clone().into()));
        h.send(progress(0, 12));

        // Tick t + 1: one event and its progress.
        h.advance(t + TICK);
        let events_t1 = [event(5, "order.canceled", now, kafka(0, 13))];
        h.send(Record::Event(events_t1[0].clone().into()));
        h.send(progress(0, 14));

        // Tick t + 2: nothing. Tick t + 3: progress only.
        h.advance(t + 3 * TICK);
        h.send(progress(1, 4));
        h.send(progress(2, 1));
        h.advance(t + 4 * TICK);

        let batch = h.recv_batch(worker, t);
        assert_eq!(batch.worker, 0);
        assert!(
            Arc::ptr_eq(&batch.ack, &h.ack),
            "the batch carries its worker's ack"
        );
        assert_eq!(
            sorted_events(&batch.events.events().collect::<Vec<_>>()),
            sorted_events(&events_t)
        );
        assert_eq!(sorted_dead(&batch.dead), sorted_dead(&dead_t));
        assert_eq!(
            sorted_offsets(&batch.offsets),
            [(TOPIC.to_string(), 0, 13), (TOPIC.to_string(), 1, 4)]
        );
        assert_eq!(batch.rows(), 6);

        let batch1 = h.recv_batch(worker, t + TICK);
        assert_eq!(
            sorted_events(&batch1.events.events().collect::<Vec<_>>()),
            events_t1
        );
        assert!(batch1.dead.is_empty());
        assert_eq!(
            sorted_offsets(&batch1.offsets),
            [(TOPIC.to_string(), 0, 14)]
        );

        // No batch for the empty tick t + 2; a row-less batch for t + 3.
        let batch3 = h.recv_batch(worker, t + 3 * TICK);
        assert_eq!(batch3.rows(), 0);
        assert_eq!(
            sorted_offsets(&batch3.offsets),
            [(TOPIC.to_string(), 1, 4), (TOPIC.to_string(), 2, 1)]
        );
        h.settle(worker);
        assert!(h.no_batch_waiting(), "an unexpected batch was sent");
        assert_eq!(h.ack.pending_rows(), 7);

        // One cumulative acknowledgement releases every tick up to it.
        h.ack
            .acknowledge(t + 3 * TICK, batch.rows() + batch1.rows() + batch3.rows());
        let snapshot = h.await_as_of(worker, t + 4 * TICK);
        assert_eq!(h.ack.pending_rows(), 0);
        assert_eq!(
            all_counts(&snapshot),
            counts_of(&[("order.placed", 2), ("page.view", 1), ("order.canceled", 1)])
        );
        h.finish(worker);
    });
}

/// One tick of random input.
#[derive(Clone, Debug)]
struct Step {
    /// `(type index, seconds relative to the tick's second)`.
    events: Vec<(usize, i64)>,
    /// Also feed a dead letter at this tick.
    dead_letter: bool,
    /// Ticks until the next one.
    gap: u64,
    /// Leave this tick's batch unacknowledged for now.
    defer_ack: bool,
}

const TYPES: &[&str] = &["order.placed", "order.filled", "page.view"];

fn step_strategy() -> impl Strategy<Value = Step> {
    let delta = prop_oneof![
        6 => -70i64..=2,
        1 => -7_200i64..-70,
    ];
    let gap = prop_oneof![
        8 => 1u64..=3,
        1 => 50u64..=700,
    ];
    // Mostly a few events per tick; sometimes enough to fill several input
    // containers, so that one tick reaches the operators in several batches.
    let events = prop_oneof![
        8 => proptest::collection::vec((0..TYPES.len(), delta.clone()), 0..6),
        1 => proptest::collection::vec((0..TYPES.len(), delta), 40..120),
    ];
    (
        events,
        proptest::bool::weighted(0.2),
        gap,
        proptest::bool::weighted(0.3),
    )
        .prop_map(|(events, dead_letter, gap, defer_ack)| Step {
            events,
            dead_letter,
            gap,
            defer_ack,
        })
}

/// Counts, from scratch, of the events in `fed` (`(tick, type, second)`)
/// that a snapshot as of `as_of` must show for seconds at or after `from`:
/// read before `as_of`, not already expired when read, and not yet retracted
/// (the retraction at `expire_at(second)` is applied once `as_of` passes it).
fn oracle(
    fed: &[(u64, &str, i64)],
    as_of: u64,
    from: i64,
    check_expiry: bool,
) -> BTreeMap<String, i64> {
    let horizon = horizon();
    let mut counts = BTreeMap::new();
    for (tick, event_type, second) in fed {
        if *tick >= as_of || *second < from {
            continue;
        }
        let expire = horizon.expire_at(*second);
        if check_expiry && (expire <= *tick || expire < as_of) {
            continue;
        }
        *counts.entry(event_type.to_string()).or_insert(0) += 1;
    }
    counts
}

fn run_oracle(steps: Vec<Step>) {
    harness::execute_directly(move |worker| {
        let mut h = new_harness(worker, T0);
        let mut fed: Vec<(u64, &str, i64)> = Vec::new();
        let mut unacked: Vec<SinkBatch> = Vec::new();
        let mut id = 0u128;
        let last = steps.len().saturating_sub(1);
        for (i, step) in steps.iter().enumerate() {
            let t = h.time();
            let now = second_of(t);
            for (ty, delta) in &step.events {
                id += 1;
                let second = now + delta;
                h.send(Record::Event(
                    event(id, TYPES[*ty], second, kafka(0, id as i64)).into(),
                ));
                fed.push((t, TYPES[*ty], second));
            }
            if step.dead_letter {
                id += 1;
                h.send(Record::Dead(dead((id % 256) as u8, kafka(0, id as i64))));
            }
            let rows = step.events.len() + usize::from(step.dead_letter);
            let next = t + step.gap * TICK;
            h.advance(next);
            if rows > 0 {
                let batch = h.recv_batch(worker, t);
                assert_eq!(batch.events.len(), step.events.len());
                assert_eq!(batch.rows(), rows);
                unacked.push(batch);
            }
            if !step.defer_ack || i == last {
                if let Some(tick) = unacked.iter().map(|b| b.tick).max() {
                    let rows: usize = unacked.iter().map(SinkBatch::rows).sum();
                    h.ack.acknowledge(tick, rows);
                    unacked.clear();
                }
            }
            let expected_as_of = unacked
                .iter()
                .map(|b| b.tick)
                .min()
                .unwrap_or(next)
                .min(next);
            let snapshot = h.await_as_of(worker, expected_as_of);
            let as_of = snapshot.as_of_ms;
            let from = snapshot.covered_from_second;

            let covered = snapshot.counts.by_type(from, FAR_FUTURE);
            assert_eq!(
                covered,
                oracle(&fed, as_of, from, true),
                "covered counts at step {i}, as_of {as_of}, covered from {from}"
            );
            // The coverage promise: every durable event at or after
            // `covered_from_second` is counted, none has expired yet.
            assert_eq!(
                covered,
                oracle(&fed, as_of, from, false),
                "coverage promise at step {i}, as_of {as_of}, covered from {from}"
            );
            assert_eq!(
                all_counts(&snapshot),
                oracle(&fed, as_of, i64::MIN, true),
                "all counts at step {i}, as_of {as_of}"
            );
            let live_entries: std::collections::BTreeSet<(&str, i64)> = fed
                .iter()
                .filter(|(tick, _, second)| {
                    let expire = horizon().expire_at(*second);
                    *tick < as_of && expire > *tick && expire >= as_of
                })
                .map(|(_, ty, second)| (*ty, *second))
                .collect();
            assert_eq!(
                snapshot.counts.len(),
                live_entries.len(),
                "live entries at step {i}"
            );
        }
        h.finish(worker);
    });
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 48,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn published_counts_match_a_from_scratch_oracle(
        steps in proptest::collection::vec(step_strategy(), 1..40),
    ) {
        run_oracle(steps);
    }
}

#[test]
fn counts_expire_once_the_frontiers_pass_expire_at() {
    harness::execute_directly(|worker| {
        let horizon = horizon();
        let mut h = new_harness(worker, T0);
        let t = T0;
        let s = second_of(t) - 10;
        let expire = horizon.expire_at(s);
        assert_eq!(expire, (s as u64 + 1) * 1000 + HORIZON_MS);

        h.send(Record::Event(
            event(1, "alert.triggered", s, kafka(0, 1)).into(),
        ));
        h.advance(t + TICK);
        let batch = h.recv_batch(worker, t);
        h.ack.acknowledge(t, batch.rows());
        let snapshot = h.await_as_of(worker, t + TICK);
        assert_eq!(all_counts(&snapshot), counts_of(&[("alert.triggered", 1)]));
        assert!(snapshot.covers(s));

        // Counted while as_of < expire_at(s), and at as_of == expire_at(s):
        // the retraction at that tick is not reflected yet.
        for as_of in [expire - 10 * TICK, expire - TICK, expire] {
            h.advance(as_of);
            let snapshot = h.await_as_of(worker, as_of);
            assert_eq!(
                snapshot.counts.by_type(s, s + 1),
                counts_of(&[("alert.triggered", 1)]),
                "as_of {as_of}, expire_at {expire}"
            );
        }
        // Gone once the frontiers pass expire_at(s).
        h.advance(expire + TICK);
        let snapshot = h.await_as_of(worker, expire + TICK);
        assert!(
            all_counts(&snapshot).is_empty(),
            "still counted after expiry: {:?}",
            all_counts(&snapshot)
        );
        assert!(snapshot.counts.is_empty());
        assert!(!snapshot.covers(s));
        h.finish(worker);
    });
}

#[test]
fn expiry_waits_for_the_durability_frontier() {
    harness::execute_directly(|worker| {
        let horizon = horizon();
        let mut h = new_harness(worker, T0);
        let t = T0;
        let s = second_of(t) - 30;
        let expire = horizon.expire_at(s);

        h.send(Record::Event(
            event(1, "order.filled", s, kafka(0, 1)).into(),
        ));
        h.advance(t + TICK);
        let batch = h.recv_batch(worker, t);
        h.ack.acknowledge(t, batch.rows());
        h.await_as_of(worker, t + TICK);

        // An event read at the tick before expiry is left unacknowledged,
        // while the input runs past the expiry.
        let held = expire - TICK;
        h.advance(held);
        h.send(Record::Event(
            event(2, "user.login", second_of(held), kafka(0, 2)).into(),
        ));
        h.advance(expire + 5 * TICK);
        let batch = h.recv_batch(worker, held);
        h.step_until(worker, "the retraction to reach publish", |h| {
            !h.updates.less_equal(&(expire + TICK))
        });
        let snapshot = h.await_as_of(worker, held);
        assert_eq!(
            all_counts(&snapshot),
            counts_of(&[("order.filled", 1)]),
            "the retraction must wait for the durability frontier, and the held tick must not show"
        );

        h.ack.acknowledge(held, batch.rows());
        let snapshot = h.await_as_of(worker, expire + 5 * TICK);
        assert_eq!(all_counts(&snapshot), counts_of(&[("user.login", 1)]));
        h.finish(worker);
    });
}
