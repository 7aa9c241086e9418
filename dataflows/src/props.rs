//! The typed record of an event's `properties`, read once.
//!
//! `properties` stays the JSON text that is stored (`events.properties`),
//! but nothing in the dataflow tokenises it more than once: the first
//! reader (validation, on the ingest path) scans it into a [`Props`]: the
//! trading identifiers (symbol, side, strategy_id, order_id), the numbers
//! every consumer reads (price, quantity, latency_ms, pnl, commission,
//! volume), `is_maker`, every other top-level number (for configured
//! metrics), and the shape of the fields the built-in checks look at.
//! Windows, dashboard, trading and validation all read that record
//! ([`Event::props`](crate::event::Event::props)).
//!
//! Identifiers are kept as spans of the text when they need no unescaping,
//! so reading them allocates nothing. A value is read as
//! `serde_json::Value` would give it ([`crate::windows::number`] and
//! [`crate::windows::identifier`]), and a repeated name keeps its last
//! value, as `serde_json::Map` does.

use std::borrow::Cow;
use std::fmt;
use std::sync::OnceLock;

use serde::de::{DeserializeSeed, MapAccess, Visitor};
use serde::Deserializer as _;
use serde_json::value::RawValue;

/// The identifier fields of [`Props`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Id {
    Symbol = 0,
    Side = 1,
    StrategyId = 2,
    OrderId = 3,
}

/// The numeric fields of [`Props`] that have a slot of their own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Num {
    Price = 0,
    Quantity = 1,
    LatencyMs = 2,
    Pnl = 3,
    Commission = 4,
    Volume = 5,
}

/// The fields whose [`Shape`] is kept (what the built-in checks look at):
/// the identifiers, in the order of [`Id`], then price and quantity.
const SHAPED: [&str; 6] = [
    "symbol",
    "side",
    "strategy_id",
    "order_id",
    "price",
    "quantity",
];
const NUM_NAMES: [&str; 6] = [
    "price",
    "quantity",
    "latency_ms",
    "pnl",
    "commission",
    "volume",
];

/// Text read from `properties`: a span of it (no escapes), or the decoded
/// string (escapes, or a number used as an identifier).
#[derive(Clone, Debug, PartialEq)]
enum Text {
    Span { start: u32, len: u32 },
    Owned(Box<str>),
}

impl Text {
    fn get<'a>(&'a self, properties: &'a str) -> &'a str {
        match self {
            Text::Span { start, len } => {
                let start = *start as usize;
                properties.get(start..start + *len as usize).unwrap_or("")
            }
            Text::Owned(s) => s,
        }
    }

    /// `s` as a span of `base` when it lies inside it, else owned.
    fn of(s: Cow<'_, str>, base: &str) -> Text {
        if let Cow::Borrowed(b) = &s {
            let offset = (b.as_ptr() as usize).wrapping_sub(base.as_ptr() as usize);
            if offset <= base.len() && offset + b.len() <= base.len() {
                if let (Ok(start), Ok(len)) = (u32::try_from(offset), u32::try_from(b.len())) {
                    return Text::Span { start, len };
                }
            }
        }
        Text::Owned(s.into_owned().into_boxed_str())
    }
}

/// How a field checked by the built-in validation was written: whether it
/// occurred more than once, and its last value's kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Shape {
    /// Occurrences of the name (saturating).
    pub occurrences: u8,
    /// The last value is not `null`.
    pub present: bool,
    /// The last value is a JSON string.
    pub string: bool,
}

/// The fields of `properties` that the dataflow reads, typed (see the
/// module doc). Read with [`Props::read`], always from the text it is
/// read with afterwards.
#[derive(Clone, Debug, PartialEq)]
pub struct Props {
    ids: [Option<Text>; 4],
    /// NaN marks an absent number: a read number is finite.
    numbers: [f64; 6],
    is_maker: Option<bool>,
    /// Every top-level name without a slot of its own whose value is a
    /// number (identifiers included), in order.
    others: Vec<(Text, f64)>,
    /// In the order of [`SHAPED`].
    shapes: [Shape; 6],
    /// Whether the text is a JSON object.
    object: bool,
}

/// No fields: what text that is not a JSON object reads as.
impl Default for Props {
    fn default() -> Self {
        Props {
            ids: Default::default(),
            numbers: [f64::NAN; 6],
            is_maker: None,
            others: Vec::new(),
            shapes: [Shape::default(); 6],
            object: false,
        }
    }
}

impl Props {
    /// Reads `properties` (a JSON object's text; anything else reads as no
    /// fields, with [`Props::is_object`] false).
    pub fn read(properties: &str) -> Props {
        let mut props = Props::default();
        if properties.len() <= 2 {
            props.object = properties == "{}";
            return props;
        }
        let mut de = serde_json::Deserializer::from_str(properties);
        let read = de
            .deserialize_map(Reader {
                base: properties,
                props: &mut props,
            })
            .and_then(|()| de.end());
        if read.is_err() {
            return Props::default();
        }
        props.object = true;
        props
    }

    fn field(&mut self, base: &str, name: &str, raw: &RawValue) {
        let shaped = SHAPED.iter().position(|n| *n == name);
        if let Some(i) = shaped {
            self.shape(i, raw);
        }
        if let Some(i) = NUM_NAMES.iter().position(|n| *n == name) {
            self.numbers[i] = number(raw).unwrap_or(f64::NAN);
            return;
        }
        if let Some(i) = shaped.filter(|i| *i < self.ids.len()) {
            self.ids[i] = identifier(raw).map(|s| Text::of(s, base));
        } else if name == "is_maker" {
            self.is_maker = match raw.get() {
                "true" => Some(true),
                "false" => Some(false),
                _ => None,
            };
        }
        // Any other name may be a configured metric: its number is kept.
        if !self.others.is_empty() {
            self.others.retain(|(k, _)| k.get(base) != name);
        }
        if let Some(v) = number(raw) {
            self.others.push((Text::of(Cow::Borrowed(name), base), v));
        }
    }

    fn shape(&mut self, i: usize, raw: &RawValue) {
        let text = raw.get();
        let shape = &mut self.shapes[i];
        shape.occurrences = shape.occurrences.saturating_add(1);
        shape.present = text != "null";
        shape.string = text.starts_with('"');
    }

    /// Whether the text read was a JSON object.
    pub fn is_object(&self) -> bool {
        self.object
    }

    /// How `name` (symbol, side, strategy_id, order_id, price or quantity)
    /// was written; `None` for another name.
    pub fn shape_of(&self, name: &str) -> Option<Shape> {
        let i = SHAPED.iter().position(|n| *n == name)?;
        Some(self.shapes[i])
    }

    /// Every field whose shape is kept, with its shape.
    pub fn shapes(&self) -> impl Iterator<Item = (&'static str, Shape)> + '_ {
        SHAPED.into_iter().zip(self.shapes)
    }

    /// The props read with the text they were read from.
    pub fn with<'a>(&'a self, properties: &'a str) -> PropsRef<'a> {
        PropsRef {
            props: self,
            text: properties,
        }
    }
}

/// [`Props`] and the text they were read from: the accessors.
#[derive(Clone, Copy, Debug)]
pub struct PropsRef<'a> {
    props: &'a Props,
    text: &'a str,
}

impl<'a> PropsRef<'a> {
    /// An identifier: a non-empty string, or a number as its text.
    pub fn id(&self, id: Id) -> Option<&'a str> {
        self.props.ids[id as usize]
            .as_ref()
            .map(|t| t.get(self.text))
    }

    /// A finite number from a JSON number or a numeric string.
    pub fn num(&self, num: Num) -> Option<f64> {
        self.slot(num as usize)
    }

    /// The number of slot `i` (in the order of [`NUM_NAMES`]).
    fn slot(&self, i: usize) -> Option<f64> {
        let v = self.props.numbers[i];
        (!v.is_nan()).then_some(v)
    }

    /// The number under any name (as [`PropsRef::num`]).
    pub fn number(&self, name: &str) -> Option<f64> {
        match NUM_NAMES.iter().position(|n| *n == name) {
            Some(i) => self.slot(i),
            None => self
                .props
                .others
                .iter()
                .find(|(k, _)| k.get(self.text) == name)
                .map(|(_, v)| *v),
        }
    }

    /// `is_maker` when it is `true` or `false`.
    pub fn is_maker(&self) -> Option<bool> {
        self.props.is_maker
    }

    pub fn props(&self) -> &'a Props {
        self.props
    }
}

/// Reads a map's entries into [`Props`] without building a value tree.
struct Reader<'p, 't> {
    base: &'t str,
    props: &'p mut Props,
}

impl<'de, 'p, 't> Visitor<'de> for Reader<'p, 't> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(CowStr(name)) = map.next_key::<CowStr<'de>>()? {
            let raw = map.next_value_seed(RawSeed)?;
            self.props.field(self.base, &name, raw);
        }
        Ok(())
    }
}

struct RawSeed;

impl<'de> DeserializeSeed<'de> for RawSeed {
    type Value = &'de RawValue;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<&'de RawValue, D::Error> {
        serde::Deserialize::deserialize(d)
    }
}

/// A JSON string, borrowed from the text unless it has escapes (serde's
/// own `Cow<str>` always copies).
struct CowStr<'de>(Cow<'de, str>);

impl<'de> serde::Deserialize<'de> for CowStr<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = CowStr<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<CowStr<'de>, E> {
                Ok(CowStr(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<CowStr<'de>, E> {
                Ok(CowStr(Cow::Owned(v.to_string())))
            }
            fn visit_string<E>(self, v: String) -> Result<CowStr<'de>, E> {
                Ok(CowStr(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// The string a raw JSON string holds.
fn string(raw: &str) -> Option<Cow<'_, str>> {
    if let Some(s) = crate::event::unescaped(raw) {
        return Some(Cow::Borrowed(s));
    }
    serde_json::from_str::<CowStr<'_>>(raw).ok().map(|s| s.0)
}

/// A finite number from a JSON number or a numeric string (as
/// [`crate::windows::number`]).
fn number(raw: &RawValue) -> Option<f64> {
    let raw = raw.get();
    if let Some(inner) = raw.strip_prefix('"') {
        // Most strings are names ("BTCUSDT", "strat7"): a first character
        // that no trimmed finite number starts with ends the read.
        let first = inner.as_bytes().first().copied().unwrap_or(b'"');
        if first.is_ascii() && !b"0123456789+-. \t\n\r\x0b\x0c\\".contains(&first) {
            return None;
        }
        string(raw)?.trim().parse::<f64>().ok()
    } else if raw.starts_with(|c: char| c == '-' || c.is_ascii_digit()) {
        serde_json::from_str::<f64>(raw).ok()
    } else {
        None
    }
    .filter(|f| f.is_finite())
}

/// An identifier: a non-empty string, or a number as its text (as
/// [`crate::windows::identifier`]).
fn identifier(raw: &RawValue) -> Option<Cow<'_, str>> {
    let raw = raw.get();
    if raw.starts_with('"') {
        string(raw).filter(|s| !s.is_empty())
    } else if raw.starts_with(|c: char| c == '-' || c.is_ascii_digit()) {
        let n: serde_json::Number = serde_json::from_str(raw).ok()?;
        Some(Cow::Owned(n.to_string()))
    } else {
        None
    }
}

/// An event's [`Props`], read on first use and kept with the event.
///
/// A clone starts empty (and reads again when asked), so that a cloned
/// event whose `properties` is then changed never answers from the old
/// text; the event's own text must not change once read, except through
/// [`Event::set_properties`](crate::event::Event::set_properties).
#[derive(Default)]
pub struct PropsCell(OnceLock<(usize, Props)>);

impl PropsCell {
    /// The props of `properties`, read now if not yet.
    pub fn get_or_read(&self, properties: &str) -> &Props {
        let (text_at, props) = self
            .0
            .get_or_init(|| (properties.as_ptr() as usize, Props::read(properties)));
        debug_assert_eq!(
            *text_at,
            properties.as_ptr() as usize,
            "properties changed after they were read"
        );
        props
    }
}

impl Clone for PropsCell {
    fn clone(&self) -> Self {
        PropsCell::default()
    }
}

impl PartialEq for PropsCell {
    /// Always equal: the props are a function of the event's text.
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl fmt::Debug for PropsCell {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.get() {
            Some((_, props)) => props.fmt(f),
            None => f.write_str("(not read)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn props_read_numbers_and_identifiers_like_serde_json_values() {
        let text = r#"{"price":"  12.5 ","quantity":3,"symbol":7,"side":"","x":{"a":1},"price":1e2,"s\u0079mbol2":"e\"sc","bid":"1.5","ask":true,"bid":2,"strategy_id":"s\u0031","order_id":"o-1","volume":"NaN","pnl":-3.25,"ask2":"\u0033.5","is_maker":1,"q":"+.5"}"#;
        let props = Props::read(text);
        let p = props.with(text);
        let map: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(text).expect("valid JSON");
        for name in [
            "price",
            "quantity",
            "symbol",
            "side",
            "x",
            "symbol2",
            "missing",
            "bid",
            "ask",
            "strategy_id",
            "order_id",
            "volume",
            "pnl",
            "ask2",
            "is_maker",
            "q",
        ] {
            assert_eq!(
                p.number(name),
                map.get(name).and_then(crate::windows::number),
                "{name}"
            );
        }
        for (id, name) in [
            (Id::Symbol, "symbol"),
            (Id::Side, "side"),
            (Id::StrategyId, "strategy_id"),
            (Id::OrderId, "order_id"),
        ] {
            assert_eq!(
                p.id(id).map(str::to_string),
                map.get(name).and_then(crate::windows::identifier),
                "{name}"
            );
        }
        assert_eq!(p.num(Num::Price), Some(100.0), "the last of a name wins");
        assert_eq!(p.number("bid"), Some(2.0), "the last of a name wins");
        assert_eq!(p.num(Num::Pnl), Some(-3.25));
        assert_eq!(p.number("ask2"), Some(3.5), "escapes are read");
        assert_eq!(
            p.number("symbol"),
            Some(7.0),
            "an identifier may be a number"
        );
        assert_eq!(p.is_maker(), None);
        assert_eq!(p.num(Num::Volume), None, "NaN is not a number here");
        assert_eq!(p.id(Id::OrderId), Some("o-1"));
        assert!(
            matches!(props.ids[Id::OrderId as usize], Some(Text::Span { .. })),
            "an unescaped identifier is a span of the text"
        );
        assert!(
            props
                .others
                .iter()
                .any(|(k, v)| matches!(k, Text::Span { .. }) && k.get(text) == "bid" && *v == 2.0),
            "an unescaped name is a span of the text"
        );
        let price = props.shape_of("price").expect("checked");
        assert_eq!(price.occurrences, 2);
        assert!(price.present && !price.string, "the last price is 1e2");
        assert!(props.is_object());
    }

    #[test]
    fn other_text_reads_as_no_fields() {
        for text in [
            "{}",
            "",
            "not json",
            "[1]",
            r#"{"price":1"#,
            r#"{"price":1} x"#,
        ] {
            let props = Props::read(text);
            assert_eq!(props.with(text).num(Num::Price), None, "{text}");
            assert_eq!(props.is_object(), text == "{}", "{text}");
        }
        let text = r#"{"is_maker":true,"other":"x"}"#;
        let props = Props::read(text);
        assert_eq!(props.with(text).is_maker(), Some(true));
        assert_eq!(props.with(text).number("other"), None);
        assert_eq!(
            props.shape_of("symbol"),
            Some(Shape::default()),
            "absent: never seen"
        );
    }

    #[test]
    fn a_clone_reads_its_own_text() {
        let cell = PropsCell::default();
        let text = String::from(r#"{"price":1}"#);
        assert_eq!(
            cell.get_or_read(&text).with(&text).num(Num::Price),
            Some(1.0)
        );
        let copy = cell.clone();
        let other = String::from(r#"{"price":2}"#);
        assert_eq!(
            copy.get_or_read(&other).with(&other).num(Num::Price),
            Some(2.0)
        );
    }
}
