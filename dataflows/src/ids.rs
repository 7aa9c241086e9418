//! Integer ids for the strings inside the dataflow: metric names and
//! dimension values become [`Sym`]s, 8-byte ids that compare, hash and move
//! as integers. Strings exist only at the edges (API answers, PostgreSQL
//! rows), where [`Sym::resolve`] turns an id back into its text.
//!
//! An id is a fixed 64-bit hash of the text, so every process of a cluster
//! computes the same id for the same string without coordination. The
//! process-wide dictionary (id → text) checks collisions: a string whose id
//! is already taken by another string is refused ([`Sym::intern`] answers
//! `None`; the caller counts it like a cardinality refusal), never merged
//! with it. When a `Sym` crosses a process boundary it is serialised as its
//! text and interned again on arrival, so the receiving process can resolve
//! it too. Threads of one process exchange `Sym`s without serialisation.
//!
//! The dictionary only grows: it holds each distinct metric name and each
//! dimension value admitted by the cardinality guard once per process.

use std::sync::{Arc, LazyLock, RwLock};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::FastMap;

/// The id of a string; `Sym::NONE` (0) stands for "no value".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Sym(pub u64);

static DICTIONARY: LazyLock<RwLock<FastMap<u64, Arc<str>>>> =
    LazyLock::new(|| RwLock::new(FastMap::default()));

/// FNV-1a over the bytes, then a SplitMix64 finaliser: fixed, so ids agree
/// across processes and builds; 0 is reserved for [`Sym::NONE`].
fn hash(text: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^= h >> 31;
    h.max(1)
}

impl Sym {
    pub const NONE: Sym = Sym(0);

    pub fn is_none(self) -> bool {
        self.0 == 0
    }

    /// The id of `text`, entered in the dictionary; `None` when another
    /// string already holds that id (a hash collision).
    pub fn intern(text: &str) -> Option<Sym> {
        let id = hash(text);
        if let Ok(dict) = DICTIONARY.read() {
            if let Some(known) = dict.get(&id) {
                return (&**known == text).then_some(Sym(id));
            }
        }
        let mut dict = DICTIONARY.write().unwrap_or_else(|e| e.into_inner());
        let known = dict.entry(id).or_insert_with(|| Arc::from(text));
        (&**known == text).then_some(Sym(id))
    }

    /// The id of `text` if this process has interned it, without entering it.
    pub fn lookup(text: &str) -> Option<Sym> {
        let id = hash(text);
        let dict = DICTIONARY.read().ok()?;
        (dict.get(&id).map(|k| &**k) == Some(text)).then_some(Sym(id))
    }

    /// The text of this id; `None` for [`Sym::NONE`] or an id never interned here.
    pub fn resolve(self) -> Option<Arc<str>> {
        if self.is_none() {
            return None;
        }
        DICTIONARY.read().ok()?.get(&self.0).cloned()
    }

    /// Strings held by the dictionary of this process.
    pub fn dictionary_len() -> usize {
        DICTIONARY.read().map(|d| d.len()).unwrap_or(0)
    }
}

/// Across processes a `Sym` travels as its text (or null for none).
impl Serialize for Sym {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.resolve().as_deref().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Sym {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text: Option<String> = Option::deserialize(deserializer)?;
        match text {
            None => Ok(Sym::NONE),
            Some(t) => Sym::intern(&t)
                .ok_or_else(|| serde::de::Error::custom(format!("id collision for {t:?}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interning_is_stable_and_resolves() {
        let a = Sym::intern("BTCUSDT").expect("no collision");
        assert_eq!(Sym::intern("BTCUSDT"), Some(a));
        assert_ne!(Sym::intern("ETHUSDT"), Some(a));
        assert_eq!(a.resolve().as_deref(), Some("BTCUSDT"));
        assert!(!a.is_none());
        assert_eq!(Sym::NONE.resolve(), None);
        // Fixed across processes and runs: the id is a function of the text.
        assert_eq!(a.0, hash("BTCUSDT"));
    }

    #[test]
    fn a_taken_id_refuses_another_string() {
        let id = hash("collision-test-a");
        DICTIONARY
            .write()
            .expect("lock")
            .insert(hash("collision-test-b"), Arc::from("collision-test-a"));
        assert_eq!(Sym::intern("collision-test-b"), None);
        assert_eq!(Sym::intern("collision-test-a"), Some(Sym(id)));
    }

    #[test]
    fn serialises_as_text_and_interns_on_arrival() {
        let a = Sym::intern("strat7").expect("no collision");
        let json = serde_json::to_string(&(a, Sym::NONE)).expect("encode");
        assert_eq!(json, r#"["strat7",null]"#);
        let back: (Sym, Sym) = serde_json::from_str(&json).expect("decode");
        assert_eq!(back, (a, Sym::NONE));
    }
}
