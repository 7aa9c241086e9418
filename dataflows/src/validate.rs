//! Validation of parsed events, shared by the REST handler and the Kafka
//! source (which calls it on the timely worker threads, right after
//! parsing).
//!
//! Two kinds of checks:
//! - the platform's own event types ([`KNOWN_TYPES`]) get fixed built-in
//!   checks of the trading fields in `properties` ([`builtin_check`]);
//!   failures are dead letters with reason `invalid_field`;
//! - a custom type with an ACTIVE definition is validated against its JSON
//!   Schema, which applies to the event's `properties` object; failures are
//!   dead letters with reason `schema_violation`. Custom types without an
//!   active definition are accepted as they are.
//!
//! Every error carries a JSON pointer into the event (`/properties/...`).
//!
//! The [`Registry`] holds one compiled validator per active definition,
//! compiled once per definition version: an `RwLock`ed map behind an `Arc`,
//! plus a version counter bumped on every change. A reader on a worker
//! thread keeps a [`CachedValidators`]: one atomic load per event, and a
//! lock plus `Arc` clone only when the version moved, so validation never
//! blocks a worker. The registry is refreshed from PostgreSQL off the
//! workers (the `sink` crate's schema sync task).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use serde_json::Value;

use crate::event::{DeadLetter, DeadReason, Event, EventSource, FieldError, KNOWN_TYPES};
use crate::metrics;
use crate::props::{Id, Num, PropsRef};

/// Most errors kept per refused event (the rest are summarised).
pub const MAX_ERRORS: usize = 64;

/// Longest error message kept, in characters.
pub const MAX_MESSAGE_CHARS: usize = 300;

/// A schema that cannot be compiled.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid JSON Schema: {0}")]
pub struct SchemaError(pub String);

/// Why a parsed event was refused, with every error found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub reason: DeadReason,
    pub errors: Vec<FieldError>,
}

impl Rejection {
    fn new(reason: DeadReason, errors: Vec<FieldError>) -> Self {
        Rejection { reason, errors }
    }

    /// A one-line summary for the `detail` column and logs.
    pub fn detail(&self) -> String {
        let mut out = String::new();
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                out.push_str("; ");
            }
            if i == 3 {
                out.push_str(&format!("and {} more", self.errors.len() - 3));
                break;
            }
            let at = if e.pointer.is_empty() {
                "(root)"
            } else {
                &e.pointer
            };
            out.push_str(&format!("{at}: {}", e.message));
        }
        out
    }

    /// The dead letter of the refused input.
    pub fn into_dead_letter(
        self,
        payload: &[u8],
        source: EventSource,
        received_at_us: i64,
    ) -> DeadLetter {
        DeadLetter {
            detail: self.detail(),
            reason: self.reason,
            errors: self.errors,
            payload: payload.to_vec(),
            source,
            received_at_us,
        }
    }
}

fn truncate(mut s: String) -> String {
    if s.chars().count() > MAX_MESSAGE_CHARS {
        s = s.chars().take(MAX_MESSAGE_CHARS).collect();
        s.push('…');
    }
    s
}

fn field_error(pointer: impl Into<String>, message: impl Into<String>) -> FieldError {
    FieldError {
        pointer: pointer.into(),
        message: truncate(message.into()),
    }
}

/// Whether `event_type` is one of the platform's own types.
pub fn is_known_type(event_type: &str) -> bool {
    KNOWN_TYPES.contains(&event_type)
}

/// Compiles a JSON Schema (drafts 4, 6, 7, 2019-09, 2020-12; the draft is
/// taken from `$schema`, 2020-12 by default). The schema is itself checked
/// against its meta-schema; formats are asserted; references outside the
/// schema document are refused (nothing is fetched).
pub fn compile(schema: &Value) -> Result<jsonschema::Validator, SchemaError> {
    if !(schema.is_object() || schema.is_boolean()) {
        return Err(SchemaError(
            "a schema must be a JSON object or a boolean".into(),
        ));
    }
    jsonschema::options()
        .should_validate_formats(true)
        .build(schema)
        .map_err(|e| SchemaError(truncate(e.to_string())))
}

/// A custom event definition as stored: the input of [`Registry::replace`].
#[derive(Clone, Debug, PartialEq)]
pub struct DefinitionSpec {
    pub name: String,
    pub version: i32,
    pub schema: Value,
}

/// One compiled definition.
pub struct CompiledSchema {
    pub name: String,
    pub version: i32,
    schema: Value,
    validator: jsonschema::Validator,
}

impl std::fmt::Debug for CompiledSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledSchema")
            .field("name", &self.name)
            .field("version", &self.version)
            .finish()
    }
}

impl CompiledSchema {
    pub fn new(spec: DefinitionSpec) -> Result<Self, SchemaError> {
        let validator = compile(&spec.schema)?;
        metrics::SCHEMA_COMPILATIONS.inc();
        Ok(CompiledSchema {
            name: spec.name,
            version: spec.version,
            schema: spec.schema,
            validator,
        })
    }

    /// Every error of `properties` (at most [`MAX_ERRORS`]), pointers
    /// relative to the event.
    pub fn errors(&self, properties: &Value) -> Vec<FieldError> {
        let mut errors = Vec::new();
        let mut more = 0usize;
        for e in self.validator.iter_errors(properties) {
            if errors.len() < MAX_ERRORS {
                errors.push(field_error(
                    format!("/properties{}", e.instance_path()),
                    e.masked().to_string(),
                ));
            } else {
                more += 1;
            }
        }
        if more > 0 {
            errors.push(field_error(
                "/properties",
                format!("{more} more errors not listed"),
            ));
        }
        errors
    }
}

/// The validators in force at one version of the registry.
#[derive(Debug, Default)]
pub struct ValidatorSet {
    by_name: HashMap<String, Arc<CompiledSchema>>,
    version: u64,
}

impl ValidatorSet {
    /// The registry version this set belongs to.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The compiled definition of `name`, when one is active.
    pub fn get(&self, name: &str) -> Option<&Arc<CompiledSchema>> {
        self.by_name.get(name)
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// Checks a parsed event: built-in checks for known types, the schema of
    /// its definition for custom types. A known type's fixed-spelling value
    /// written in another case (`"side": "buy"`) is accepted and rewritten
    /// in its canonical form (`"BUY"`), which is what is stored.
    pub fn validate(&self, event: &mut Event) -> Result<(), Rejection> {
        if is_known_type(&event.event_type) {
            if let Some(side) = builtin_check(&event.event_type, event.props())? {
                let rewritten = with_side(&event.properties, side);
                event.set_properties(rewritten);
            }
            return Ok(());
        }
        let Some(compiled) = self.by_name.get(&event.event_type) else {
            return Ok(());
        };
        let properties: Value = serde_json::from_str(&event.properties).map_err(|e| {
            Rejection::new(
                DeadReason::InvalidField,
                vec![field_error("/properties", e.to_string())],
            )
        })?;
        let errors = compiled.errors(&properties);
        if errors.is_empty() {
            Ok(())
        } else {
            Err(Rejection::new(DeadReason::SchemaViolation, errors))
        }
    }
}

/// What [`Registry::replace`] did.
#[derive(Debug, Default)]
pub struct Refresh {
    /// Whether the set in force changed (and the version moved).
    pub changed: bool,
    /// Definitions compiled by this call (new or new versions).
    pub compiled: usize,
    /// Stored definitions whose schema does not compile; they are not in force.
    pub failed: Vec<(String, SchemaError)>,
}

/// The shared registry of compiled validators.
#[derive(Debug, Default)]
pub struct Registry {
    current: RwLock<Arc<ValidatorSet>>,
    version: AtomicU64,
    /// Serialises writers, so that a slow compile cannot overwrite a newer set.
    writer: Mutex<()>,
}

impl Registry {
    /// The set in force: a read lock and an `Arc` clone.
    pub fn snapshot(&self) -> Arc<ValidatorSet> {
        let guard = match self.current.read() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        Arc::clone(&guard)
    }

    /// Bumped after every change of the set in force.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// Makes exactly `active` the set in force. A definition whose name,
    /// version and schema are unchanged keeps its compiled validator; the
    /// others are compiled (outside the read path: readers keep the old set
    /// until the swap).
    pub fn replace(&self, active: Vec<DefinitionSpec>) -> Refresh {
        let _writer = match self.writer.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        let old = self.snapshot();
        let mut refresh = Refresh::default();
        let mut by_name = HashMap::with_capacity(active.len());
        for spec in active {
            match old.by_name.get(&spec.name) {
                Some(c) if c.version == spec.version && c.schema == spec.schema => {
                    by_name.insert(spec.name, Arc::clone(c));
                }
                _ => {
                    let name = spec.name.clone();
                    match CompiledSchema::new(spec) {
                        Ok(c) => {
                            refresh.compiled += 1;
                            by_name.insert(name, Arc::new(c));
                        }
                        Err(e) => refresh.failed.push((name, e)),
                    }
                }
            }
        }
        let same = by_name.len() == old.by_name.len()
            && by_name
                .iter()
                .all(|(n, c)| old.by_name.get(n).is_some_and(|o| Arc::ptr_eq(o, c)));
        if !same {
            let version = self.version.load(Ordering::Acquire) + 1;
            let set = Arc::new(ValidatorSet { by_name, version });
            metrics::CUSTOM_SCHEMAS.set(set.len() as i64);
            {
                let mut guard = match self.current.write() {
                    Ok(g) => g,
                    Err(poisoned) => poisoned.into_inner(),
                };
                *guard = set;
            }
            self.version.store(version, Ordering::Release);
            refresh.changed = true;
        }
        refresh
    }
}

/// A worker's view of the registry: re-reads the set only when the
/// registry's version moved.
#[derive(Debug)]
pub struct CachedValidators {
    registry: Arc<Registry>,
    seen: u64,
    set: Arc<ValidatorSet>,
}

impl CachedValidators {
    pub fn new(registry: Arc<Registry>) -> Self {
        let seen = registry.version();
        let set = registry.snapshot();
        CachedValidators {
            registry,
            seen,
            set,
        }
    }

    /// The set in force now.
    pub fn current(&mut self) -> &ValidatorSet {
        let version = self.registry.version();
        if version != self.seen {
            self.set = self.registry.snapshot();
            self.seen = version;
        }
        &self.set
    }
}

/// Built-in checks of a known type's `properties`, as read once into
/// `props`: `order.*` events need a non-empty string `symbol`; wherever
/// present, `symbol`, `order_id` and `strategy_id` are strings, `side` is
/// `BUY` or `SELL` in any case (surrounding blanks ignored), and `price`
/// and `quantity` are finite numbers or numeric strings; none of these
/// names is repeated. `null` counts as absent. `Ok(Some(side))` asks for
/// `side` to be stored as `side` (it was written in another spelling).
pub fn builtin_check(
    event_type: &str,
    props: PropsRef<'_>,
) -> Result<Option<&'static str>, Rejection> {
    let read = props.props();
    if !read.is_object() {
        return Err(Rejection::new(
            DeadReason::InvalidField,
            vec![field_error(
                "/properties",
                "properties must be a JSON object",
            )],
        ));
    }
    let shape = |name: &str| read.shape_of(name).unwrap_or_default();
    let mut errors = Vec::new();
    for (name, written) in read.shapes() {
        if written.occurrences > 1 {
            errors.push(field_error(
                format!("/properties/{name}"),
                format!("{name} is given more than once"),
            ));
        }
    }
    let symbol = shape("symbol");
    if event_type.starts_with("order.") && !symbol.present {
        errors.push(field_error(
            "/properties/symbol",
            format!("symbol is required for {event_type}"),
        ));
    }
    if symbol.present
        && !(symbol.string && props.id(Id::Symbol).is_some_and(|s| !s.trim().is_empty()))
    {
        errors.push(field_error(
            "/properties/symbol",
            "symbol must be a non-empty string",
        ));
    }
    let mut rewrite = None;
    let side = shape("side");
    if side.present {
        let written = props.id(Id::Side).filter(|_| side.string);
        match written.map(canonical_side) {
            Some(Some((side, exact))) => {
                if !exact {
                    rewrite = Some(side);
                }
            }
            _ => errors.push(field_error(
                "/properties/side",
                "side must be \"BUY\" or \"SELL\" (any case)",
            )),
        }
    }
    for (name, num) in [("price", Num::Price), ("quantity", Num::Quantity)] {
        if shape(name).present && props.num(num).is_none() {
            errors.push(field_error(
                format!("/properties/{name}"),
                format!("{name} must be a number or a numeric string"),
            ));
        }
    }
    for name in ["order_id", "strategy_id"] {
        let s = shape(name);
        if s.present && !s.string {
            errors.push(field_error(
                format!("/properties/{name}"),
                format!("{name} must be a string"),
            ));
        }
    }
    if errors.is_empty() {
        Ok(rewrite)
    } else {
        Err(Rejection::new(DeadReason::InvalidField, errors))
    }
}

/// `BUY` or `SELL` for a side in any case, and whether it was written
/// exactly so.
fn canonical_side(written: &str) -> Option<(&'static str, bool)> {
    ["BUY", "SELL"].into_iter().find_map(|side| {
        written
            .trim()
            .eq_ignore_ascii_case(side)
            .then_some((side, written == side))
    })
}

/// `properties` (a JSON object, already parsed once) with `side` set.
fn with_side(properties: &str, side: &str) -> String {
    match serde_json::from_str::<serde_json::Map<String, Value>>(properties) {
        Ok(mut map) => {
            map.insert("side".into(), Value::String(side.into()));
            Value::Object(map).to_string()
        }
        Err(_) => properties.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(event_type: &str, properties: Value) -> Event {
        Event {
            id: uuid::Uuid::nil(),
            event_type: event_type.into(),
            user_id: None,
            session_id: None,
            properties: properties.to_string(),
            timestamp_us: 0,
            created_at_us: 0,
            source: EventSource::Rest,
            parsed: Default::default(),
        }
    }

    fn spec(name: &str, version: i32, schema: Value) -> DefinitionSpec {
        DefinitionSpec {
            name: name.into(),
            version,
            schema,
        }
    }

    fn deposit_schema() -> Value {
        json!({
            "type": "object",
            "required": ["amount", "currency"],
            "properties": {
                "amount": {"type": "number", "minimum": 0},
                "currency": {"type": "string", "enum": ["USD", "EUR"]},
                "tags": {"type": "array", "items": {"type": "string"}}
            }
        })
    }

    #[test]
    fn schema_accepts_and_rejects_with_pointers() {
        let registry = Registry::default();
        registry.replace(vec![spec("deposit", 1, deposit_schema())]);
        let set = registry.snapshot();
        assert!(set
            .validate(&mut event(
                "deposit",
                json!({"amount": 5, "currency": "USD"})
            ))
            .is_ok());
        let err = set
            .validate(&mut event(
                "deposit",
                json!({"amount": -1, "currency": "GBP", "tags": ["a", 7]}),
            ))
            .expect_err("three violations");
        assert_eq!(err.reason, DeadReason::SchemaViolation);
        let mut pointers: Vec<&str> = err.errors.iter().map(|e| e.pointer.as_str()).collect();
        pointers.sort();
        assert_eq!(
            pointers,
            vec![
                "/properties/amount",
                "/properties/currency",
                "/properties/tags/1"
            ]
        );
        let missing = set
            .validate(&mut event("deposit", json!({})))
            .expect_err("required");
        assert_eq!(missing.errors.len(), 2, "{missing:?}");
        assert!(missing.errors.iter().all(|e| e.pointer == "/properties"));
        // A type without a definition is accepted as it is.
        assert!(set.validate(&mut event("other", json!({"x": 1}))).is_ok());
    }

    #[test]
    fn messages_do_not_echo_huge_values() {
        let registry = Registry::default();
        registry.replace(vec![spec(
            "note",
            1,
            json!({"properties": {"text": {"type": "string", "maxLength": 10}}}),
        )]);
        let huge = "x".repeat(100_000);
        let err = registry
            .snapshot()
            .validate(&mut event("note", json!({ "text": huge })))
            .expect_err("too long");
        assert!(err.errors[0].message.len() <= MAX_MESSAGE_CHARS * 4);
        assert!(err.detail().len() < 2_000);
    }

    #[test]
    fn errors_are_bounded() {
        let registry = Registry::default();
        registry.replace(vec![spec(
            "many",
            1,
            json!({"properties": {"xs": {"items": {"type": "string"}}}}),
        )]);
        let xs: Vec<i32> = (0..1000).collect();
        let err = registry
            .snapshot()
            .validate(&mut event("many", json!({ "xs": xs })))
            .expect_err("1000 violations");
        assert_eq!(err.errors.len(), MAX_ERRORS + 1);
        assert!(err.errors[MAX_ERRORS].message.contains("936 more"));
    }

    #[test]
    fn invalid_schemas_do_not_compile() {
        for bad in [
            json!({"type": "no-such-type"}),
            json!({"minimum": "five"}),
            json!(42),
            json!({"$ref": "http://example.com/schema.json"}),
            json!({"properties": {"a": {"pattern": "(unclosed"}}}),
        ] {
            assert!(compile(&bad).is_err(), "{bad}");
        }
        assert!(compile(&json!(true)).is_ok());
        assert!(compile(&deposit_schema()).is_ok());
    }

    #[test]
    fn compiled_once_per_version_and_versions_move() {
        let registry = Registry::default();
        let v0 = registry.version();
        let r = registry.replace(vec![spec("a", 1, json!({"type": "object"}))]);
        assert!(r.changed);
        assert_eq!(r.compiled, 1);
        let v1 = registry.version();
        assert!(v1 > v0);
        let first = Arc::clone(registry.snapshot().get("a").expect("a"));
        let r = registry.replace(vec![spec("a", 1, json!({"type": "object"}))]);
        assert!(!r.changed);
        assert_eq!(r.compiled, 0);
        assert_eq!(registry.version(), v1);
        assert!(Arc::ptr_eq(
            &first,
            registry.snapshot().get("a").expect("a")
        ));
        let r = registry.replace(vec![spec("a", 2, json!({"type": "object"}))]);
        assert!(r.changed && r.compiled == 1);
        let r = registry.replace(vec![spec("b", 1, json!({"type": 7}))]);
        assert_eq!(r.failed.len(), 1);
        assert!(registry.snapshot().is_empty(), "a was removed, b failed");
    }

    #[test]
    fn cached_reader_follows_the_version() {
        let registry = Arc::new(Registry::default());
        let mut cached = CachedValidators::new(Arc::clone(&registry));
        assert!(cached.current().is_empty());
        registry.replace(vec![spec("a", 1, json!({"required": ["x"]}))]);
        let e = event("a", json!({}));
        assert!(cached.current().validate(&mut e.clone()).is_err());
        registry.replace(Vec::new());
        assert!(cached.current().validate(&mut e.clone()).is_ok());
    }

    fn check(event_type: &str, properties: &str) -> Result<Option<&'static str>, Rejection> {
        builtin_check(
            event_type,
            crate::props::Props::read(properties).with(properties),
        )
    }

    #[test]
    fn builtin_checks() {
        let ok = [
            (
                "order.placed",
                json!({"symbol": "BTCUSDT", "side": "BUY", "price": 50000, "quantity": "0.1", "order_id": "o1", "strategy_id": "s1"}),
            ),
            ("order.canceled", json!({"symbol": "ETHUSDT", "side": null})),
            (
                "market.data.update",
                json!({"symbol": "BTCUSDT", "price": "50000.5"}),
            ),
            ("page.view", json!({})),
            ("position.opened", json!({"side": "SELL", "quantity": 1e-3})),
        ];
        for (t, p) in ok {
            assert!(check(t, &p.to_string()).is_ok(), "{t} {p}");
        }
        let bad = [
            ("order.placed", json!({}), vec!["/properties/symbol"]),
            (
                "order.filled",
                json!({"symbol": 7}),
                vec!["/properties/symbol"],
            ),
            (
                "order.placed",
                json!({"symbol": "X", "side": "bye"}),
                vec!["/properties/side"],
            ),
            (
                "order.placed",
                json!({"symbol": "X", "side": 1}),
                vec!["/properties/side"],
            ),
            (
                "order.placed",
                json!({"symbol": "X", "price": "cheap", "quantity": true}),
                vec!["/properties/price", "/properties/quantity"],
            ),
            (
                "strategy.started",
                json!({"strategy_id": 5, "order_id": ["x"]}),
                vec!["/properties/order_id", "/properties/strategy_id"],
            ),
            (
                "market.data.update",
                json!({"price": "NaN"}),
                vec!["/properties/price"],
            ),
        ];
        for (t, p, pointers) in bad {
            let err = check(t, &p.to_string()).expect_err("refused");
            assert_eq!(err.reason, DeadReason::InvalidField);
            let mut got: Vec<&str> = err.errors.iter().map(|e| e.pointer.as_str()).collect();
            got.sort();
            assert_eq!(got, pointers, "{t} {p}");
        }
    }

    #[test]
    fn side_is_accepted_in_any_case_and_stored_canonical() {
        let registry = Registry::default();
        for (written, stored) in [("buy", "BUY"), (" Sell ", "SELL"), ("BUY", "BUY")] {
            let mut e = event(
                "order.placed",
                json!({"symbol": "X", "side": written, "price": 1.5}),
            );
            registry.snapshot().validate(&mut e).expect("accepted");
            let p: Value = serde_json::from_str(&e.properties).expect("json");
            assert_eq!(p["side"], stored, "{written}");
            assert_eq!(p["symbol"], "X");
            assert_eq!(p["price"], 1.5);
        }
        let exact = r#"{"side":"SELL","symbol":"X"}"#;
        assert_eq!(check("order.placed", exact).ok(), Some(None));
    }

    #[test]
    fn builtin_types_ignore_definitions() {
        let registry = Registry::default();
        registry.replace(vec![spec("page.view", 1, json!(false))]);
        assert!(registry
            .snapshot()
            .validate(&mut event("page.view", json!({})))
            .is_ok());
    }
}
