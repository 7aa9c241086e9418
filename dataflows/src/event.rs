//! The event model and its parser.
//!
//! An [`Event`] is born here, from the JSON of a Kafka message or a REST
//! body. Bad input is data: parsing returns a [`ParseError`] with a bounded
//! [`DeadReason`], which the dataflow turns into a [`DeadLetter`] row
//! carrying the raw bytes, never a panic.

use std::borrow::Cow;
use std::sync::Arc;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::props::{PropsCell, PropsRef};

/// Namespace of the deterministic ids given to Kafka events without an `id`
/// (UUID v5 of `topic/partition/offset`).
pub const KAFKA_ID_NAMESPACE: Uuid = Uuid::from_u128(0x6a1f_4c0e_93d2_4b7a_8e51_c0ff_ee00_2025);

/// Namespace of the ids of events replayed from dead letters (UUID v5 of
/// `dead-letter/<id>`), so that replaying twice stores the event once.
pub const REPLAY_ID_NAMESPACE: Uuid = Uuid::from_u128(0x2f0c_7d61_5b3e_4e8a_a1d4_dead_1e77_2025);

/// Largest accepted payload, in bytes; larger messages are dead letters.
pub const MAX_PAYLOAD_BYTES: usize = 1024 * 1024;

/// Event types the platform publishes; any other type is a custom event.
pub const KNOWN_TYPES: &[&str] = &[
    "order.placed",
    "order.filled",
    "order.canceled",
    "order.rejected",
    "position.opened",
    "position.closed",
    "balance.updated",
    "strategy.started",
    "strategy.stopped",
    "signal.generated",
    "market.data.update",
    "alert.triggered",
    "user.login",
    "user.logout",
    "page.view",
    "button.click",
];

/// A Kafka partition: `(topic, partition)`.
pub type Partition = (Arc<str>, i32);

/// A partition and an offset in it: `(topic, partition, offset)`.
pub type PartitionOffset = (Arc<str>, i32, i64);

/// Where an input came from.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventSource {
    /// A Kafka message.
    Kafka {
        topic: Arc<str>,
        partition: i32,
        offset: i64,
    },
    /// A REST request.
    Rest,
}

/// One event, validated.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub id: Uuid,
    pub event_type: String,
    pub user_id: Option<String>,
    pub session_id: Option<String>,
    /// The `properties` object as JSON text (`{}` when absent).
    pub properties: String,
    /// Event time, microseconds since the Unix epoch.
    pub timestamp_us: i64,
    /// When the service accepted the event, microseconds since the epoch.
    pub created_at_us: i64,
    pub source: EventSource,
    /// `properties` read once, on first use ([`Event::props`]).
    #[serde(skip)]
    pub parsed: PropsCell,
}

impl Event {
    /// The typed fields of `properties`, read on the first call.
    pub fn props(&self) -> PropsRef<'_> {
        self.parsed
            .get_or_read(&self.properties)
            .with(&self.properties)
    }

    /// Replaces `properties`, and forgets what was read from the old text.
    pub fn set_properties(&mut self, properties: String) {
        self.properties = properties;
        self.parsed = PropsCell::default();
    }

    /// Event time in whole seconds since the epoch (floor).
    pub fn second(&self) -> i64 {
        self.timestamp_us.div_euclid(1_000_000)
    }

    /// The event as the API's JSON object.
    pub fn to_json(&self) -> serde_json::Value {
        let properties: serde_json::Value =
            serde_json::from_str(&self.properties).unwrap_or(serde_json::Value::Null);
        serde_json::json!({
            "id": self.id,
            "event_type": self.event_type,
            "user_id": self.user_id,
            "session_id": self.session_id,
            "properties": properties,
            "timestamp": format_us(self.timestamp_us),
            "created_at": format_us(self.created_at_us),
        })
    }
}

/// Formats microseconds since the epoch as RFC 3339.
pub fn format_us(us: i64) -> String {
    DateTime::<Utc>::from_timestamp_micros(us)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::AutoSi, true))
        .unwrap_or_default()
}

/// Why an input was refused. The set is closed so that metric labels stay bounded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DeadReason {
    EmptyPayload,
    Oversize,
    InvalidUtf8,
    MalformedJson,
    NotAnObject,
    MissingField,
    InvalidField,
    BadTimestamp,
    TimestampOutOfRange,
    /// The event violates the JSON Schema of its custom type.
    SchemaViolation,
}

impl DeadReason {
    pub const ALL: &'static [DeadReason] = &[
        DeadReason::EmptyPayload,
        DeadReason::Oversize,
        DeadReason::InvalidUtf8,
        DeadReason::MalformedJson,
        DeadReason::NotAnObject,
        DeadReason::MissingField,
        DeadReason::InvalidField,
        DeadReason::BadTimestamp,
        DeadReason::TimestampOutOfRange,
        DeadReason::SchemaViolation,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DeadReason::EmptyPayload => "empty_payload",
            DeadReason::Oversize => "oversize",
            DeadReason::InvalidUtf8 => "invalid_utf8",
            DeadReason::MalformedJson => "malformed_json",
            DeadReason::NotAnObject => "not_an_object",
            DeadReason::MissingField => "missing_field",
            DeadReason::InvalidField => "invalid_field",
            DeadReason::BadTimestamp => "bad_timestamp",
            DeadReason::TimestampOutOfRange => "timestamp_out_of_range",
            DeadReason::SchemaViolation => "schema_violation",
        }
    }

    /// The reason named `s` (the inverse of [`DeadReason::as_str`]).
    pub fn parse(s: &str) -> Option<DeadReason> {
        DeadReason::ALL.iter().copied().find(|r| r.as_str() == s)
    }
}

/// One error found in an input: where (a JSON pointer into the event, `""`
/// for the whole input) and what.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldError {
    pub pointer: String,
    pub message: String,
}

/// A refused input: why, and in words.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}: {detail}", reason.as_str())]
pub struct ParseError {
    pub reason: DeadReason,
    pub detail: String,
    /// The JSON pointer of the offending field (`""`: the whole input).
    pub pointer: &'static str,
}

impl ParseError {
    fn new(reason: DeadReason, detail: impl Into<String>) -> Self {
        ParseError {
            reason,
            detail: detail.into(),
            pointer: "",
        }
    }

    fn at(mut self, pointer: &'static str) -> Self {
        self.pointer = pointer;
        self
    }

    /// The error as the one entry of a dead letter's `errors`.
    pub fn field_error(&self) -> FieldError {
        FieldError {
            pointer: self.pointer.to_string(),
            message: self.detail.clone(),
        }
    }
}

/// A refused input as it is stored in `dead_letters`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub reason: DeadReason,
    pub detail: String,
    /// Every error found, with its JSON pointer (stored in the `errors` column).
    #[serde(default)]
    pub errors: Vec<FieldError>,
    pub payload: Vec<u8>,
    pub source: EventSource,
    pub received_at_us: i64,
}

impl DeadLetter {
    /// The dead letter of an input refused by the parser.
    pub fn parse_failure(
        err: ParseError,
        payload: &[u8],
        source: EventSource,
        received_at_us: i64,
    ) -> Self {
        DeadLetter {
            errors: vec![err.field_error()],
            reason: err.reason,
            detail: err.detail,
            payload: payload.to_vec(),
            source,
            received_at_us,
        }
    }
}

/// The `event_type` of a refused payload, when it is a JSON object with a
/// string `event_type` of at most 255 bytes (stored with the dead letter).
pub fn extract_event_type(payload: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct TypeOnly<'a> {
        #[serde(default, borrow)]
        event_type: Option<&'a RawValue>,
    }
    let wire: TypeOnly<'_> = serde_json::from_slice(payload).ok()?;
    let raw = wire.event_type?;
    let t: String = serde_json::from_str(raw.get()).ok()?;
    (!t.trim().is_empty() && t.len() <= 255 && !t.contains('\0')).then_some(t)
}

/// What the Kafka source emits, per worker, at a tick.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Record {
    /// A valid event, to be stored and counted; shared, since every branch
    /// of the dataflow reads it (a copy of a record is a reference count).
    Event(Arc<Event>),
    /// A refused message, to be stored in `dead_letters`.
    Dead(DeadLetter),
    /// Every message of `topic/partition` below `next_offset` has been emitted
    /// at this tick or an earlier one.
    Progress {
        topic: Arc<str>,
        partition: i32,
        next_offset: i64,
    },
}

/// Bounds on acceptable event times, relative to the time of parsing.
#[derive(Clone, Copy, Debug)]
pub struct TimeBounds {
    /// How far in the past an event time may lie, in microseconds.
    pub max_age_us: i64,
    /// How far in the future an event time may lie, in microseconds.
    pub max_future_us: i64,
}

impl TimeBounds {
    /// No bounds at all (for re-reading an input whose bounds are checked later).
    pub const UNBOUNDED: TimeBounds = TimeBounds {
        max_age_us: i64::MAX / 4,
        max_future_us: i64::MAX / 4,
    };

    /// Whether an event time is acceptable at `now_us`.
    pub fn admits(&self, now_us: i64, timestamp_us: i64) -> bool {
        timestamp_us >= now_us - self.max_age_us && timestamp_us <= now_us + self.max_future_us
    }
}

impl Default for TimeBounds {
    fn default() -> Self {
        TimeBounds {
            max_age_us: 90 * 86_400 * 1_000_000,
            max_future_us: 86_400 * 1_000_000,
        }
    }
}

#[derive(Deserialize)]
struct Wire<'a> {
    #[serde(default, borrow)]
    id: Option<&'a RawValue>,
    #[serde(default, borrow)]
    event_type: Option<&'a RawValue>,
    #[serde(default, borrow)]
    user_id: Option<&'a RawValue>,
    #[serde(default, borrow)]
    session_id: Option<&'a RawValue>,
    #[serde(default, borrow)]
    properties: Option<&'a RawValue>,
    #[serde(default, borrow)]
    timestamp: Option<&'a RawValue>,
}

/// The text of a JSON string without escapes, from the raw JSON of a
/// value that a parser has already checked (`RawValue`): the bytes between
/// its quotes, since a valid JSON string holds no bare quote or control
/// character. `None` for any other value, or a string with escapes.
pub fn unescaped(raw: &str) -> Option<&str> {
    let inner = raw.strip_prefix('"')?.strip_suffix('"')?;
    (!inner.contains('\\')).then_some(inner)
}

/// A string field, borrowed when it holds no escapes.
fn string_field<'a>(raw: &'a RawValue, pointer: &'static str) -> Result<Cow<'a, str>, ParseError> {
    if let Some(s) = unescaped(raw.get()) {
        return Ok(Cow::Borrowed(s));
    }
    serde_json::from_str::<String>(raw.get())
        .map(Cow::Owned)
        .map_err(|_| {
            ParseError::new(
                DeadReason::InvalidField,
                format!("{} must be a string", &pointer[1..]),
            )
            .at(pointer)
        })
}

/// Parses one event from raw bytes.
///
/// `default_id` is used when the input carries no `id` (Kafka: a UUID v5 of
/// the message position; REST: a random UUID). `now_us` is the acceptance
/// time, used for `created_at` and a missing `timestamp`.
pub fn parse_event(
    payload: &[u8],
    source: EventSource,
    default_id: impl FnOnce() -> Uuid,
    now_us: i64,
    bounds: TimeBounds,
) -> Result<Event, ParseError> {
    if payload.is_empty() {
        return Err(ParseError::new(DeadReason::EmptyPayload, "empty payload"));
    }
    if payload.len() > MAX_PAYLOAD_BYTES {
        return Err(ParseError::new(
            DeadReason::Oversize,
            format!(
                "payload of {} bytes exceeds {MAX_PAYLOAD_BYTES}",
                payload.len()
            ),
        ));
    }
    let text = std::str::from_utf8(payload)
        .map_err(|e| ParseError::new(DeadReason::InvalidUtf8, e.to_string()))?;
    // The common case in one pass: an object that reads as the event's
    // fields. Anything else takes the two passes below, which tell
    // malformed JSON from a JSON value that is not a valid event.
    if text.trim_start().starts_with('{') {
        if let Ok(wire) = serde_json::from_str::<Wire<'_>>(text) {
            return from_wire(wire, source, default_id, now_us, bounds);
        }
    }
    let value: &RawValue = serde_json::from_str(text)
        .map_err(|e| ParseError::new(DeadReason::MalformedJson, e.to_string()))?;
    parse_value(value, source, default_id, now_us, bounds)
}

/// Parses one event from an already tokenised JSON value.
pub fn parse_value(
    value: &RawValue,
    source: EventSource,
    default_id: impl FnOnce() -> Uuid,
    now_us: i64,
    bounds: TimeBounds,
) -> Result<Event, ParseError> {
    if !value.get().trim_start().starts_with('{') {
        return Err(ParseError::new(
            DeadReason::NotAnObject,
            "event must be a JSON object",
        ));
    }
    let wire: Wire<'_> = serde_json::from_str(value.get())
        .map_err(|e| ParseError::new(DeadReason::InvalidField, e.to_string()))?;
    from_wire(wire, source, default_id, now_us, bounds)
}

/// The event of an object's fields.
fn from_wire(
    wire: Wire<'_>,
    source: EventSource,
    default_id: impl FnOnce() -> Uuid,
    now_us: i64,
    bounds: TimeBounds,
) -> Result<Event, ParseError> {
    let event_type = match wire
        .event_type
        .map(|raw| string_field(raw, "/event_type"))
        .transpose()?
    {
        Some(t) if !t.trim().is_empty() => t.into_owned(),
        Some(_) => {
            return Err(
                ParseError::new(DeadReason::InvalidField, "event_type must not be empty")
                    .at("/event_type"),
            )
        }
        None => {
            return Err(
                ParseError::new(DeadReason::MissingField, "event_type is required")
                    .at("/event_type"),
            )
        }
    };
    if event_type.len() > 255 {
        return Err(
            ParseError::new(DeadReason::InvalidField, "event_type longer than 255 bytes")
                .at("/event_type"),
        );
    }
    let id = match wire.id.map(|raw| string_field(raw, "/id")).transpose()? {
        Some(s) => Uuid::parse_str(&s)
            .map_err(|e| ParseError::new(DeadReason::InvalidField, format!("id: {e}")).at("/id"))?,
        None => default_id(),
    };
    let user_id = optional_string("user_id", wire.user_id).map_err(|e| e.at("/user_id"))?;
    let session_id =
        optional_string("session_id", wire.session_id).map_err(|e| e.at("/session_id"))?;
    let properties = match wire.properties {
        None => "{}".to_string(),
        Some(raw) if raw.get() == "null" => "{}".to_string(),
        Some(raw) if raw.get().trim_start().starts_with('{') => raw.get().to_string(),
        Some(_) => {
            return Err(ParseError::new(
                DeadReason::InvalidField,
                "properties must be a JSON object",
            )
            .at("/properties"))
        }
    };
    check_storable_json(&properties).map_err(|e| {
        ParseError::new(DeadReason::InvalidField, format!("properties: {e}")).at("/properties")
    })?;
    for (pointer, text) in [
        ("/event_type", Some(event_type.as_str())),
        ("/user_id", user_id.as_deref()),
        ("/session_id", session_id.as_deref()),
    ] {
        if text.is_some_and(|t| t.contains('\0')) {
            return Err(ParseError::new(
                DeadReason::InvalidField,
                format!("{} must not contain NUL characters", &pointer[1..]),
            )
            .at(pointer));
        }
    }
    let timestamp_us = match wire
        .timestamp
        .map(|raw| string_field(raw, "/timestamp"))
        .transpose()?
    {
        None => now_us,
        Some(s) => {
            let t = DateTime::parse_from_rfc3339(&s).map_err(|e| {
                ParseError::new(DeadReason::BadTimestamp, format!("timestamp {s:?}: {e}"))
                    .at("/timestamp")
            })?;
            t.timestamp_micros()
        }
    };
    if !bounds.admits(now_us, timestamp_us) {
        return Err(ParseError::new(
            DeadReason::TimestampOutOfRange,
            format!(
                "timestamp {} outside the accepted range",
                format_us(timestamp_us)
            ),
        )
        .at("/timestamp"));
    }
    Ok(Event {
        id,
        event_type,
        user_id,
        session_id,
        properties,
        timestamp_us,
        created_at_us: now_us,
        source,
        parsed: PropsCell::default(),
    })
}

fn optional_string(field: &str, raw: Option<&RawValue>) -> Result<Option<String>, ParseError> {
    let Some(raw) = raw else { return Ok(None) };
    let text = raw.get();
    if text == "null" {
        return Ok(None);
    }
    if let Some(s) = unescaped(text) {
        return Ok(Some(s.to_string()));
    }
    if text.starts_with('"') {
        let s: String = serde_json::from_str(text)
            .map_err(|e| ParseError::new(DeadReason::InvalidField, format!("{field}: {e}")))?;
        return Ok(Some(s));
    }
    // Older producers send numeric ids; keep them as their decimal text.
    if text.bytes().all(|b| b.is_ascii_digit() || b == b'-') && !text.is_empty() {
        return Ok(Some(text.to_string()));
    }
    Err(ParseError::new(
        DeadReason::InvalidField,
        format!("{field} must be a string"),
    ))
}

/// Largest exponent, in absolute value, of a number in `properties`.
pub const MAX_JSON_EXPONENT: i64 = 400;

/// Most digits in the mantissa of a number in `properties`.
pub const MAX_JSON_DIGITS: usize = 1000;

/// Checks that valid JSON text can be stored as PostgreSQL `jsonb`, which
/// refuses what JSON allows: `\u0000`, unpaired surrogate escapes, and
/// numbers beyond `numeric` (which `jsonb` also expands to all their
/// digits, so exponents and mantissas are bounded well below that). One
/// such row would otherwise fail every retry of the transaction carrying it.
pub fn check_storable_json(text: &str) -> Result<(), &'static str> {
    let b = text.as_bytes();
    let hex4 = |at: usize| -> Option<u32> {
        let h = b.get(at..at + 4)?;
        u32::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok()
    };
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'"' => {
                i += 1;
                loop {
                    let Some(off) = b[i..].iter().position(|&c| c == b'"' || c == b'\\') else {
                        return Ok(());
                    };
                    i += off;
                    if b[i] == b'"' {
                        i += 1;
                        break;
                    }
                    if b.get(i + 1) != Some(&b'u') {
                        i += 2;
                        continue;
                    }
                    let cp = hex4(i + 2).ok_or("bad unicode escape")?;
                    i += 6;
                    if cp == 0 {
                        return Err("\\u0000 cannot be stored");
                    }
                    if (0xDC00..0xE000).contains(&cp) {
                        return Err("unpaired surrogate escape");
                    }
                    if (0xD800..0xDC00).contains(&cp) {
                        let low = (b.get(i) == Some(&b'\\') && b.get(i + 1) == Some(&b'u'))
                            .then(|| hex4(i + 2))
                            .flatten();
                        match low {
                            Some(lo) if (0xDC00..0xE000).contains(&lo) => i += 6,
                            _ => return Err("unpaired surrogate escape"),
                        }
                    }
                }
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                // Where the first `e` or `E` is: the exponent follows it.
                let mut exponent_at = None;
                while let Some(&c) = b.get(i) {
                    match c {
                        b'-' | b'+' | b'.' | b'0'..=b'9' => {}
                        b'e' | b'E' => {
                            exponent_at.get_or_insert(i);
                        }
                        _ => break,
                    }
                    i += 1;
                }
                let mantissa = &b[start..exponent_at.unwrap_or(i)];
                if mantissa.len() > MAX_JSON_DIGITS
                    && mantissa.iter().filter(|c| c.is_ascii_digit()).count() > MAX_JSON_DIGITS
                {
                    return Err("number has too many digits");
                }
                if let Some(at) = exponent_at {
                    if text[at + 1..i]
                        .parse::<i64>()
                        .map_or(true, |e| e.abs() > MAX_JSON_EXPONENT)
                    {
                        return Err("number exponent out of range");
                    }
                }
            }
            _ => i += 1,
        }
    }
    Ok(())
}

/// The id of the event replayed from dead letter `dead_letter_id`.
pub fn replay_event_id(dead_letter_id: i64) -> Uuid {
    Uuid::new_v5(
        &REPLAY_ID_NAMESPACE,
        format!("dead-letter/{dead_letter_id}").as_bytes(),
    )
}

/// The deterministic id of a Kafka message without an `id`: the UUID v5 of
/// `topic/partition/offset` in [`KAFKA_ID_NAMESPACE`], exactly as
/// `Uuid::new_v5` makes it (stored ids depend on it), with the SHA-1 of the
/// `sha1` crate, which uses the CPU's SHA instructions where there are any
/// (uuid's own, portable one was 3 % of a worker's time in `bench core`),
/// and without building the name in a buffer.
pub fn kafka_event_id(topic: &str, partition: i32, offset: i64) -> Uuid {
    use sha1::{Digest, Sha1};
    let mut sha = Sha1::new();
    sha.update(KAFKA_ID_NAMESPACE.as_bytes());
    sha.update(topic.as_bytes());
    let mut digits = [0u8; 20];
    sha.update(b"/");
    sha.update(decimal(&mut digits, i64::from(partition)));
    sha.update(b"/");
    sha.update(decimal(&mut digits, offset));
    let hash = sha.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&hash[..16]);
    uuid::Builder::from_sha1_bytes(bytes).into_uuid()
}

/// `n` in decimal, as `Display` writes it, in the end of `buf` (room for
/// every `i64`: 19 digits and a sign).
fn decimal(buf: &mut [u8; 20], n: i64) -> &[u8] {
    let mut at = buf.len();
    let mut rest = n.unsigned_abs();
    loop {
        at -= 1;
        buf[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    if n < 0 {
        at -= 1;
        buf[at] = b'-';
    }
    &buf[at..]
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_760_000_000_000_000;

    fn parse(s: &[u8]) -> Result<Event, ParseError> {
        parse_event(s, EventSource::Rest, Uuid::nil, NOW, TimeBounds::default())
    }

    #[test]
    fn parses_full_event() {
        let e = parse(br#"{"id":"7d9f3c1e-8a4b-4c2d-9e1f-0a1b2c3d4e5f","event_type":"order.placed","user_id":"u1","session_id":"s1","properties":{"symbol":"BTCUSDT","price":50000},"timestamp":"2025-10-09T08:53:20Z"}"#).expect("valid");
        assert_eq!(e.event_type, "order.placed");
        assert_eq!(e.user_id.as_deref(), Some("u1"));
        assert_eq!(e.properties, r#"{"symbol":"BTCUSDT","price":50000}"#);
        assert_eq!(e.timestamp_us, 1_759_999_999_000_000 + 1_000_000);
        assert_eq!(e.created_at_us, NOW);
    }

    #[test]
    fn defaults() {
        let e = parse(br#"{"event_type":"page.view"}"#).expect("valid");
        assert_eq!(e.id, Uuid::nil());
        assert_eq!(e.timestamp_us, NOW);
        assert_eq!(e.properties, "{}");
        assert_eq!(e.user_id, None);
    }

    #[test]
    fn numeric_user_id_is_kept_as_text() {
        let e = parse(br#"{"event_type":"page.view","user_id":42}"#).expect("valid");
        assert_eq!(e.user_id.as_deref(), Some("42"));
    }

    #[test]
    fn reasons() {
        let cases: &[(&[u8], DeadReason)] = &[
            (b"", DeadReason::EmptyPayload),
            (b"\xff\xfe", DeadReason::InvalidUtf8),
            (b"{not json", DeadReason::MalformedJson),
            (b"[1,2]", DeadReason::NotAnObject),
            (br#"{"user_id":"u"}"#, DeadReason::MissingField),
            (br#"{"event_type":""}"#, DeadReason::InvalidField),
            (br#"{"event_type":7}"#, DeadReason::InvalidField),
            (
                br#"{"event_type":"a","id":"nope"}"#,
                DeadReason::InvalidField,
            ),
            (
                br#"{"event_type":"a","properties":[1]}"#,
                DeadReason::InvalidField,
            ),
            (
                br#"{"event_type":"a","user_id":{"x":1}}"#,
                DeadReason::InvalidField,
            ),
            (
                br#"{"event_type":"a","timestamp":"yesterday"}"#,
                DeadReason::BadTimestamp,
            ),
            (
                br#"{"event_type":"a","timestamp":"1999-01-01T00:00:00Z"}"#,
                DeadReason::TimestampOutOfRange,
            ),
        ];
        for (input, reason) in cases {
            let err = parse(input).expect_err("must be refused");
            assert_eq!(
                err.reason,
                *reason,
                "input {:?}: {}",
                String::from_utf8_lossy(input),
                err
            );
        }
        let big = vec![b' '; MAX_PAYLOAD_BYTES + 1];
        assert_eq!(
            parse(&big).expect_err("oversize").reason,
            DeadReason::Oversize
        );
    }

    #[test]
    fn pointers_and_field_errors() {
        let cases: &[(&[u8], &str)] = &[
            (br#"{"user_id":"u"}"#, "/event_type"),
            (br#"{"event_type":7}"#, "/event_type"),
            (br#"{"event_type":"a","id":"nope"}"#, "/id"),
            (br#"{"event_type":"a","timestamp":5}"#, "/timestamp"),
            (
                br#"{"event_type":"a","timestamp":"yesterday"}"#,
                "/timestamp",
            ),
            (br#"{"event_type":"a","session_id":[1]}"#, "/session_id"),
            (br#"{"event_type":"a","properties":"x"}"#, "/properties"),
            (b"[1]", ""),
        ];
        for (input, pointer) in cases {
            let err = parse(input).expect_err("refused");
            assert_eq!(err.pointer, *pointer, "{}", String::from_utf8_lossy(input));
            assert_eq!(err.field_error().pointer, *pointer);
        }
    }

    #[test]
    fn what_postgres_cannot_store_is_refused() {
        for bad in [
            r#"{"event_type":"a","properties":{"x":"\u0000"}}"#,
            r#"{"event_type":"a","properties":{"\u0000":1}}"#,
            r#"{"event_type":"a","properties":{"x":"\ud800"}}"#,
            r#"{"event_type":"a","properties":{"x":"\udc00 "}}"#,
            r#"{"event_type":"a","properties":{"x":1e401}}"#,
            r#"{"event_type":"a","properties":{"x":[1E-100000]}}"#,
            r#"{"event_type":"a\u0000"}"#,
            r#"{"event_type":"a","user_id":"\u0000"}"#,
        ] {
            let err = parse(bad.as_bytes()).expect_err(bad);
            assert_eq!(err.reason, DeadReason::InvalidField, "{bad}");
        }
        let long = format!(
            r#"{{"event_type":"a","properties":{{"x":{}}}}}"#,
            "9".repeat(1001)
        );
        assert!(parse(long.as_bytes()).is_err());
        for good in [
            r#"{"event_type":"a","properties":{"x":"\\u0000","y":"\ud83d\ude00","z":1e308,"w":-5e-324,"v":"1e999"}}"#,
            r#"{"event_type":"a","properties":{"x":"\"","y":"\\"}}"#,
        ] {
            parse(good.as_bytes()).expect(good);
        }
    }

    #[test]
    fn event_type_of_refused_payloads() {
        assert_eq!(
            extract_event_type(br#"{"event_type":"deposit","x":"#).as_deref(),
            None
        );
        assert_eq!(
            extract_event_type(br#"{"event_type":"deposit","properties":{"a":[1]}}"#).as_deref(),
            Some("deposit")
        );
        assert_eq!(extract_event_type(br#"{"event_type":7}"#), None);
        assert_eq!(extract_event_type(b"\xff"), None);
        assert_eq!(extract_event_type(br#"{"event_type":"a\u0000"}"#), None);
    }

    #[test]
    fn kafka_ids_are_deterministic() {
        assert_eq!(kafka_event_id("t", 1, 2), kafka_event_id("t", 1, 2));
        // The name hashed is `topic/partition/offset`: stored ids depend on it.
        let long = "t".repeat(400);
        for (topic, partition, offset) in
            [("t", 1, 2), ("market.data", -3, i64::MIN), (&long, 0, 7)]
        {
            assert_eq!(
                kafka_event_id(topic, partition, offset),
                Uuid::new_v5(
                    &KAFKA_ID_NAMESPACE,
                    format!("{topic}/{partition}/{offset}").as_bytes()
                )
            );
        }
        assert_ne!(kafka_event_id("t", 1, 2), kafka_event_id("t", 1, 3));
        assert_ne!(kafka_event_id("t", 1, 2), kafka_event_id("u", 1, 2));
    }

    proptest::proptest! {
        #[test]
        fn kafka_ids_are_uuid_v5_of_the_name(
            topic in "[a-z.]{0,300}",
            partition in proptest::prelude::any::<i32>(),
            offset in proptest::prelude::any::<i64>(),
        ) {
            proptest::prop_assert_eq!(
                kafka_event_id(&topic, partition, offset),
                Uuid::new_v5(
                    &KAFKA_ID_NAMESPACE,
                    format!("{topic}/{partition}/{offset}").as_bytes()
                )
            );
        }
    }

    #[test]
    fn json_round_trip() {
        let e = parse(br#"{"event_type":"x","properties":{"a":1}}"#).expect("valid");
        let v = e.to_json();
        assert_eq!(v["properties"]["a"], 1);
        assert_eq!(v["event_type"], "x");
    }
}
