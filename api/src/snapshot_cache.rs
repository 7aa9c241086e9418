//! Answers computed once per published snapshot: the first reader of a
//! snapshot serializes the answer, every later reader of the same snapshot
//! (and the same key) gets those bytes. A read of the dashboard costs a
//! lock and a reference count, not a walk of the live state and a JSON
//! serialization.

use std::sync::{Arc, RwLock, Weak};

use axum::body::Bytes;
use dataflows::LiveSnapshot;

/// One entry: the latest snapshot asked for, with a key (a range, or `()`).
/// A `Weak` names the snapshot without keeping it alive, and cannot be
/// mistaken for a later snapshot at the same address.
#[derive(Debug)]
pub struct PerSnapshot<K> {
    slot: RwLock<Option<(Weak<LiveSnapshot>, K, Bytes)>>,
}

impl<K> Default for PerSnapshot<K> {
    fn default() -> Self {
        PerSnapshot {
            slot: RwLock::new(None),
        }
    }
}

impl<K: PartialEq + Clone> PerSnapshot<K> {
    /// The answer for `snapshot` and `key`: the stored bytes when they are
    /// of the same snapshot and key, else `make()`, stored for the next
    /// reader. `None` (no answer yet) is not stored.
    pub fn get_or_make(
        &self,
        snapshot: &Arc<LiveSnapshot>,
        key: &K,
        make: impl FnOnce() -> Option<Bytes>,
    ) -> Option<Bytes> {
        let same = |(weak, k, _): &(Weak<LiveSnapshot>, K, Bytes)| {
            std::ptr::eq(weak.as_ptr(), Arc::as_ptr(snapshot)) && k == key
        };
        if let Ok(slot) = self.slot.read() {
            if let Some(entry) = slot.as_ref().filter(|e| same(e)) {
                return Some(entry.2.clone());
            }
        }
        let bytes = make()?;
        if let Ok(mut slot) = self.slot.write() {
            // A reader of a newer snapshot may have been faster: keep its.
            let newer = slot
                .as_ref()
                .and_then(|(weak, _, _)| weak.upgrade())
                .is_some_and(|held| held.as_of_ms > snapshot.as_of_ms);
            if !newer {
                *slot = Some((Arc::downgrade(snapshot), key.clone(), bytes.clone()));
            }
        }
        Some(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[test]
    fn one_computation_per_snapshot_and_key() {
        let cache = PerSnapshot::<i64>::default();
        let made = Cell::new(0);
        let make = |text: &'static str| {
            made.set(made.get() + 1);
            Some(Bytes::from_static(text.as_bytes()))
        };
        let first = Arc::new(LiveSnapshot {
            as_of_ms: 1_000,
            ..Default::default()
        });
        assert_eq!(
            cache.get_or_make(&first, &1, || make("a")).as_deref(),
            Some(&b"a"[..])
        );
        assert_eq!(
            cache.get_or_make(&first, &1, || make("x")).as_deref(),
            Some(&b"a"[..])
        );
        assert_eq!(made.get(), 1);
        // Another key of the same snapshot.
        assert_eq!(
            cache.get_or_make(&first, &2, || make("b")).as_deref(),
            Some(&b"b"[..])
        );
        // A new snapshot, even one with the same as_of.
        let second = Arc::new(LiveSnapshot {
            as_of_ms: 1_000,
            ..Default::default()
        });
        assert_eq!(
            cache.get_or_make(&second, &2, || make("c")).as_deref(),
            Some(&b"c"[..])
        );
        assert_eq!(made.get(), 3);
        // No answer yet: nothing stored.
        let none = PerSnapshot::<()>::default();
        assert_eq!(none.get_or_make(&first, &(), || None), None);
        assert_eq!(
            none.get_or_make(&first, &(), || make("d")).as_deref(),
            Some(&b"d"[..])
        );
        // A reader of an older snapshot does not displace a newer answer.
        let newer = Arc::new(LiveSnapshot {
            as_of_ms: 2_000,
            ..Default::default()
        });
        cache.get_or_make(&newer, &1, || make("n"));
        cache.get_or_make(&first, &1, || make("o"));
        assert_eq!(
            cache.get_or_make(&newer, &1, || make("z")).as_deref(),
            Some(&b"n"[..])
        );
    }
}
