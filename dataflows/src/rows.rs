//! The stored form of events on their way to PostgreSQL.
//!
//! A worker turns the events of each tick into [`EventRows`] when it hands
//! the tick to the sink: the `events` table's rows, already encoded as
//! tuples of PostgreSQL's binary COPY format in one buffer, and the per-type
//! counts, partition days and dashboard contributions that the same
//! transaction stores. The `Event`s themselves (and the properties read
//! from them) are dropped with the tick's records, so that a batch waiting
//! for PostgreSQL holds about its stored bytes, and the single writer task
//! only sends bytes the workers encoded in parallel.
//!
//! The REST path builds the same rows from its events, so both writers
//! store an event through one encoding.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use uuid::Uuid;

use crate::dashboard::DashboardDelta;
use crate::event::{Event, EventSource};
use crate::FastMap;

/// The statement the rows of [`EventRows`] are written for: its columns,
/// in this order, are the fields of every tuple.
pub const COPY_EVENTS: &str = "COPY events (id, event_type, user_id, session_id, properties, \
     \"timestamp\", created_at, source, kafka_topic, kafka_partition, kafka_offset) \
     FROM STDIN (FORMAT binary)";

/// Fields per tuple, one per column of [`COPY_EVENTS`].
const FIELDS: i16 = 11;

/// The binary COPY file header: signature, flags, header extension length.
pub const COPY_HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";

/// The binary COPY file trailer (a field count of -1).
pub const COPY_TRAILER: &[u8] = &(-1i16).to_be_bytes();

/// Microseconds between the Unix epoch and PostgreSQL's (2000-01-01).
pub const PG_EPOCH_OFFSET_US: i64 = 946_684_800_000_000;

/// `jsonb`'s binary format version.
pub const JSONB_VERSION: u8 = 1;

/// Microseconds per day: the `events` table has one partition per day.
const DAY_US: i64 = 86_400_000_000;

/// The day (days since the epoch) of a timestamp in microseconds: the
/// daily partition it belongs to.
pub fn day_of(us: i64) -> i64 {
    us.div_euclid(DAY_US)
}

/// Events as the rows the sink stores, and what it stores beside them.
#[derive(Debug, Default)]
pub struct EventRows {
    /// The events as binary COPY tuples, without the file header and trailer.
    tuples: Vec<u8>,
    len: usize,
    /// Days since the epoch of the events' times (the partitions they need).
    days: BTreeSet<i64>,
    /// Events per second and type.
    counts: BTreeMap<i64, FastMap<String, i64>>,
    /// The events' dashboard contributions.
    pub dashboard: DashboardDelta,
    /// Σ and max of the events' `created_at_us`, for the ingest latency.
    created_sum_us: i128,
    created_max_us: i64,
}

impl EventRows {
    /// The rows of `events`.
    pub fn of<'a>(events: impl IntoIterator<Item = &'a Event>) -> EventRows {
        let mut rows = EventRows::default();
        for e in events {
            rows.add(e);
        }
        rows
    }

    /// Adds `event`'s row, count and dashboard contribution.
    pub fn add(&mut self, event: &Event) {
        self.encode(event);
        self.len += 1;
        self.days.insert(day_of(event.timestamp_us));
        let per_type = self.counts.entry(event.second()).or_default();
        match per_type.get_mut(event.event_type.as_str()) {
            Some(n) => *n += 1,
            None => {
                per_type.insert(event.event_type.clone(), 1);
            }
        }
        self.dashboard.add(event);
        self.created_sum_us += i128::from(event.created_at_us);
        self.created_max_us = if self.len == 1 {
            event.created_at_us
        } else {
            self.created_max_us.max(event.created_at_us)
        };
    }

    fn encode(&mut self, e: &Event) {
        let out = &mut self.tuples;
        out.extend_from_slice(&FIELDS.to_be_bytes());
        bytes_field(out, Some(e.id.as_bytes()));
        bytes_field(out, Some(e.event_type.as_bytes()));
        bytes_field(out, e.user_id.as_deref().map(str::as_bytes));
        bytes_field(out, e.session_id.as_deref().map(str::as_bytes));
        out.extend_from_slice(&(e.properties.len() as i32 + 1).to_be_bytes());
        out.push(JSONB_VERSION);
        out.extend_from_slice(e.properties.as_bytes());
        bytes_field(
            out,
            Some(&(e.timestamp_us - PG_EPOCH_OFFSET_US).to_be_bytes()),
        );
        bytes_field(
            out,
            Some(&(e.created_at_us - PG_EPOCH_OFFSET_US).to_be_bytes()),
        );
        match &e.source {
            EventSource::Kafka {
                topic,
                partition,
                offset,
            } => {
                bytes_field(out, Some(b"kafka"));
                bytes_field(out, Some(topic.as_bytes()));
                bytes_field(out, Some(&partition.to_be_bytes()));
                bytes_field(out, Some(&offset.to_be_bytes()));
            }
            EventSource::Rest => {
                bytes_field(out, Some(b"rest"));
                bytes_field(out, None);
                bytes_field(out, None);
                bytes_field(out, None);
            }
        }
    }

    /// Gives back the buffer's spare capacity (once no more rows come).
    pub fn shrink_to_fit(&mut self) {
        self.tuples.shrink_to_fit();
    }

    /// The events' binary COPY tuples, to send between [`COPY_HEADER`]
    /// and [`COPY_TRAILER`] after [`COPY_EVENTS`].
    pub fn tuples(&self) -> &[u8] {
        &self.tuples
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Days since the epoch of the events' times, ascending.
    pub fn days(&self) -> impl Iterator<Item = i64> + '_ {
        self.days.iter().copied()
    }

    /// `(second, event_type, events)`.
    pub fn counts(&self) -> impl Iterator<Item = (i64, &str, i64)> + '_ {
        self.counts
            .iter()
            .flat_map(|(s, types)| types.iter().map(|(t, n)| (*s, t.as_str(), *n)))
    }

    /// Σ over the events of `now_us - created_at_us`, each at least 0.
    pub fn latency_sum_us(&self, now_us: i64) -> u64 {
        if self.is_empty() {
            0
        } else if now_us >= self.created_max_us {
            (self.len as i128 * i128::from(now_us) - self.created_sum_us) as u64
        } else {
            // The clock went back past an event's acceptance: clamp each.
            self.events()
                .map(|e| (now_us - e.created_at_us).max(0) as u64)
                .sum()
        }
    }

    /// The events back from their rows (their properties not yet read).
    pub fn events(&self) -> impl Iterator<Item = Event> + '_ {
        let mut topics: Option<Arc<str>> = None;
        let mut rest = self.tuples.as_slice();
        std::iter::from_fn(move || {
            if rest.is_empty() {
                return None;
            }
            let decoded = decode(&mut rest, &mut topics);
            debug_assert!(decoded.is_some(), "rows the encoder wrote decode");
            decoded
        })
    }
}

/// Writes one field: its length (-1 for NULL) and its bytes.
fn bytes_field(out: &mut Vec<u8>, value: Option<&[u8]>) {
    match value {
        Some(bytes) => {
            out.extend_from_slice(&(bytes.len() as i32).to_be_bytes());
            out.extend_from_slice(bytes);
        }
        None => out.extend_from_slice(&(-1i32).to_be_bytes()),
    }
}

/// Reads one field (`None` inside for NULL); `None` if `rest` is too short.
fn read_field<'a>(rest: &mut &'a [u8]) -> Option<Option<&'a [u8]>> {
    let (len, tail) = rest.split_first_chunk::<4>()?;
    let len = i32::from_be_bytes(*len);
    if len < 0 {
        *rest = tail;
        return Some(None);
    }
    let (value, tail) = tail.split_at_checked(len as usize)?;
    *rest = tail;
    Some(Some(value))
}

fn text(field: Option<&[u8]>) -> Option<String> {
    field.and_then(|b| String::from_utf8(b.to_vec()).ok())
}

fn be<const N: usize>(field: Option<&[u8]>) -> Option<[u8; N]> {
    field?.try_into().ok()
}

/// Decodes the tuple at the start of `rest`, sharing one `Arc` per topic
/// name with the tuples before it.
fn decode(rest: &mut &[u8], topic_seen: &mut Option<Arc<str>>) -> Option<Event> {
    let (count, tail) = rest.split_first_chunk::<2>()?;
    if i16::from_be_bytes(*count) != FIELDS {
        return None;
    }
    *rest = tail;
    let mut fields = [None; FIELDS as usize];
    for slot in fields.iter_mut() {
        *slot = read_field(rest)?;
    }
    let [id, event_type, user_id, session_id, properties, timestamp, created_at, source, topic, partition, offset] =
        fields;
    let properties = properties?.split_first()?;
    if *properties.0 != JSONB_VERSION {
        return None;
    }
    let source = match source? {
        b"kafka" => {
            let name = std::str::from_utf8(topic?).ok()?;
            let topic = match topic_seen {
                Some(seen) if **seen == *name => Arc::clone(seen),
                _ => {
                    let new: Arc<str> = Arc::from(name);
                    *topic_seen = Some(Arc::clone(&new));
                    new
                }
            };
            EventSource::Kafka {
                topic,
                partition: i32::from_be_bytes(be(partition)?),
                offset: i64::from_be_bytes(be(offset)?),
            }
        }
        b"rest" => EventSource::Rest,
        _ => return None,
    };
    Some(Event {
        id: Uuid::from_bytes(be(id)?),
        event_type: text(event_type)?,
        user_id: text(user_id),
        session_id: text(session_id),
        properties: text(Some(properties.1))?,
        timestamp_us: i64::from_be_bytes(be(timestamp)?) + PG_EPOCH_OFFSET_US,
        created_at_us: i64::from_be_bytes(be(created_at)?) + PG_EPOCH_OFFSET_US,
        source,
        parsed: Default::default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn event(
        i: u8,
        user: Option<&str>,
        session: Option<&str>,
        props: &str,
        ts: i64,
        kafka: bool,
    ) -> Event {
        Event {
            id: Uuid::from_u128(u128::from(i) * 0x0101_0101_0101),
            event_type: ["order.placed", "order.filled", "user.login"][usize::from(i % 3)].into(),
            user_id: user.map(Into::into),
            session_id: session.map(Into::into),
            properties: props.into(),
            timestamp_us: ts,
            created_at_us: ts + 17,
            source: if kafka {
                EventSource::Kafka {
                    topic: Arc::from(if i.is_multiple_of(2) { "t.a" } else { "t.b" }),
                    partition: i32::from(i) - 3,
                    offset: i64::from(i) << 33,
                }
            } else {
                EventSource::Rest
            },
            parsed: Default::default(),
        }
    }

    fn arb_event() -> impl Strategy<Value = Event> {
        (
            any::<u8>(),
            proptest::option::of("[a-zé€ ]{0,6}"),
            proptest::option::of("[a-z0-9]{0,6}"),
            prop_oneof![
                Just("{}".to_string()),
                Just(
                    r#"{"price":"12.5","quantity":2,"strategy_id":"s1","latency_ms":3}"#
                        .to_string()
                ),
                "\\{\"k\":\"[a-zé]{0,10}\"\\}",
            ],
            -4_000_000_000_000_000i64..4_000_000_000_000_000,
            any::<bool>(),
        )
            .prop_map(|(i, u, s, p, ts, k)| event(i, u.as_deref(), s.as_deref(), &p, ts, k))
    }

    proptest! {
        #[test]
        fn rows_decode_to_the_events_and_count_them(events in proptest::collection::vec(arb_event(), 0..40)) {
            let rows = EventRows::of(&events);
            let back: Vec<Event> = rows.events().collect();
            prop_assert_eq!(&back, &events);
            prop_assert_eq!(rows.len(), events.len());
            let mut counts: BTreeMap<(i64, String), i64> = BTreeMap::new();
            let mut days = BTreeSet::new();
            let mut dashboard = DashboardDelta::default();
            for e in &events {
                *counts.entry((e.second(), e.event_type.clone())).or_default() += 1;
                days.insert(day_of(e.timestamp_us));
                dashboard.add(e);
            }
            let got: BTreeMap<(i64, String), i64> =
                rows.counts().map(|(s, t, n)| ((s, t.to_string()), n)).collect();
            prop_assert_eq!(got, counts);
            prop_assert_eq!(rows.days().collect::<BTreeSet<_>>(), days);
            prop_assert_eq!(&rows.dashboard, &dashboard);
            let now = events.iter().map(|e| e.created_at_us).max().unwrap_or(0);
            for now in [now, now + 5, now - 40] {
                let want: u64 = events.iter().map(|e| (now - e.created_at_us).max(0) as u64).sum();
                prop_assert_eq!(rows.latency_sum_us(now), want);
            }
        }
    }

    /// One tuple, byte by byte, as PostgreSQL's binary COPY format defines it.
    #[test]
    fn a_kafka_event_is_one_binary_copy_tuple() {
        let e = event(1, Some("u"), None, "{}", PG_EPOCH_OFFSET_US + 2, true);
        let rows = EventRows::of([&e]);
        let mut want: Vec<u8> = vec![0, 11];
        want.extend([0, 0, 0, 16]);
        want.extend(e.id.as_bytes());
        want.extend([0, 0, 0, 12]);
        want.extend(b"order.filled");
        want.extend([0, 0, 0, 1, b'u']);
        want.extend([0xff; 4]);
        want.extend([0, 0, 0, 3, 1, b'{', b'}']);
        want.extend([0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 2]);
        want.extend([0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 19]);
        want.extend([0, 0, 0, 5]);
        want.extend(b"kafka");
        want.extend([0, 0, 0, 3]);
        want.extend(b"t.b");
        want.extend([0, 0, 0, 4, 0xff, 0xff, 0xff, 0xfe]);
        want.extend([0, 0, 0, 8, 0, 0, 0, 2, 0, 0, 0, 0]);
        assert_eq!(rows.tuples(), want.as_slice());
    }
}
