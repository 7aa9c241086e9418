//! A mergeable log-bucket quantile sketch in the spirit of DDSketch, for
//! the p50/p90/p95/p99 of trading values (price, quantity, notional,
//! latency, pnl, commission) per time window.
//!
//! # Buckets and accuracy
//!
//! A value `v > 0` falls into the bucket with index
//! `k = ceil(ln(v) / ln(gamma))`, where `gamma = (1 + ALPHA) / (1 - ALPHA)`,
//! i.e. into the interval `(gamma^(k-1), gamma^k]`. The bucket's estimate is
//! `2 * gamma^k / (gamma + 1)`, which is within a factor `1 ± ALPHA` of every
//! value of the interval. Negative values use the mirrored store (the same
//! mapping on `|v|`, estimate negated); values with `|v| < MIN_MAGNITUDE`
//! go to a single zero bucket whose estimate is exactly `0.0`. Non-finite
//! values are rejected.
//!
//! [`Sketch::quantile`] returns the estimate of the bucket that holds the
//! value of rank `floor(q * (count - 1))` (0-based) of the sorted values.
//! Since bucket ids sort in value order, that bucket also holds the exact
//! quantile, so **the estimate is within `ALPHA` (0.5 %) relative of the
//! exact q-quantile** (`sorted[floor(q * (n - 1))]`), whatever the data,
//! and exactly `0.0` when that exact quantile has magnitude below
//! `MIN_MAGNITUDE`. Callers that promise 1 % have a factor two of margin.
//!
//! The size depends only on the spread of the data: a sketch holds at most
//! `ln(max / min) / ln(gamma) + 1` buckets per sign (about 100 buckets per
//! factor of e, 230 per decade), however many values it counts.
//!
//! # Sketches as differences
//!
//! A [`Sketch`] is a sparse map from bucket id to a *signed* `i64` count,
//! kept as sorted pairs with no zero entries (compactly encoded,
//! [`Pairs`]), so two sketches of the same multiset of values are
//! structurally equal (`Eq`, `Ord` and `Hash` are canonical). Adding
//! sketches ([`Sketch::merge`]) is exact and commutative, and every
//! sketch has an inverse ([`Sketch::negated`]): sketches form an
//! Abelian group, and implement differential dataflow's
//! [`IsZero`], [`Semigroup`], [`Monoid`] and [`Abelian`]. A windowed
//! aggregate is then kept as the *diff* of a collection: a window's values
//! enter as positive sketches, windows combine by addition, and a window
//! leaves memory by adding its negation, which cancels its buckets exactly
//! (no floating point is involved in counts). [`Multiply`] by `isize`/`i64`
//! lets `explode` turn a collection with integer multiplicities into sketch
//! differences.
//!
//! An intermediate sum may hold negative counts (a retraction that arrives
//! before its insertion); [`Sketch::quantile`] answers `None` for such a
//! sketch rather than a meaningless value. Counts use wrapping `i64`
//! arithmetic, so the group laws hold exactly even on overflow.
//!
//! [`Sketch::to_bytes`] / [`Sketch::from_bytes`] use bincode 2 (standard
//! configuration) via serde. Deserialisation, through any serde format,
//! checks the invariants (ids strictly increasing and in range, no zero
//! count) and rejects anything else.

use differential_dataflow::difference::{Abelian, IsZero, Monoid, Multiply, Semigroup};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Relative accuracy of every bucket estimate (0.5 %).
pub const ALPHA: f64 = 0.005;

/// Ratio of consecutive bucket bounds, `(1 + ALPHA) / (1 - ALPHA)`.
pub const GAMMA: f64 = (1.0 + ALPHA) / (1.0 - ALPHA);

/// Values with a magnitude below this go to the zero bucket.
pub const MIN_MAGNITUDE: f64 = 1e-9;

/// Id of the zero bucket. Positive values have ids `1..=max_id()`, negative
/// values the mirrored ids `-max_id()..=-1`, so ids sort in value order.
pub const ZERO_BUCKET: i32 = 0;

fn ln_gamma() -> f64 {
    GAMMA.ln()
}

/// `ceil(ln(m) / ln(gamma))` for a finite `m > 0`.
fn raw_index(m: f64) -> i32 {
    // |ln(m)| <= 745 for every positive f64, so the quotient is about
    // 75,000 at most and the cast cannot saturate.
    (m.ln() / ln_gamma()).ceil() as i32
}

/// Index of the lowest bucket, the one that holds `MIN_MAGNITUDE`.
fn min_index() -> i32 {
    raw_index(MIN_MAGNITUDE)
}

/// Largest bucket id in use: the one that holds `f64::MAX`.
fn max_id() -> i32 {
    raw_index(f64::MAX) - min_index() + 1
}

/// Error of [`Sketch::from_bytes`].
#[derive(Debug, thiserror::Error)]
pub enum SketchError {
    /// The bytes are not a bincode encoding of a valid sketch.
    #[error("invalid sketch encoding: {0}")]
    Decode(#[from] bincode::error::DecodeError),
    /// A valid sketch was followed by more bytes.
    #[error("{0} trailing bytes after the sketch")]
    TrailingBytes(usize),
}

/// A mergeable, negatable quantile sketch: sorted `(bucket id, count)`
/// pairs with non-zero counts. See the [module docs](self).
///
/// The pairs are encoded compactly ([`Pairs`]) in one shared allocation
/// (`Arc`) of exactly their size: a sketch is cloned for every interval of
/// a pane, every consumer of a stream, the arrangement and the published
/// snapshot, and most of those copies are never changed. A clone is a
/// reference count; a change encodes a new sketch. The encoding of a set
/// of pairs is unique and an empty sketch holds no allocation at all
/// (`None`), which keeps equality canonical.
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(try_from = "SketchRepr")]
pub struct Sketch {
    /// The pairs, encoded ([`Pairs`]); `None` when there are none.
    bytes: Option<Arc<[u8]>>,
}

impl std::fmt::Debug for Sketch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sketch")
            .field("buckets", &self.buckets())
            .finish()
    }
}

/// The same form as a struct with a `buckets` vector, so that stored
/// sketches and rollups keep their encoding.
impl Serialize for Sketch {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut state = serializer.serialize_struct("Sketch", 1)?;
        state.serialize_field("buckets", &AsSeq(self))?;
        state.end()
    }
}

/// A sketch's pairs as a sequence, serialised like a `Vec` of them.
struct AsSeq<'a>(&'a Sketch);

impl Serialize for AsSeq<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut seq = serializer.serialize_seq(Some(self.0.pairs().count()))?;
        for pair in self.0.pairs() {
            seq.serialize_element(&pair)?;
        }
        seq.end()
    }
}

/// The `(bucket id, count)` pairs of a sketch, decoded from its bytes: each
/// pair is two LEB128 varints, the id (zigzag-encoded for the first pair,
/// the positive difference from the previous id after it) and the
/// zigzag-encoded count. Ids are dense around a series' values and counts
/// are small, so a pair takes about 2-4 bytes instead of 16; a live
/// window's sketch is held in the arrangement and the live map, and
/// sketches were most of the memory of a live window.
#[derive(Clone, Debug)]
pub struct Pairs<'a> {
    bytes: &'a [u8],
    previous: Option<i32>,
}

impl Iterator for Pairs<'_> {
    type Item = (i32, i64);

    fn next(&mut self) -> Option<(i32, i64)> {
        if self.bytes.is_empty() {
            return None;
        }
        let first = take_varint(&mut self.bytes);
        let id = match self.previous {
            None => unzigzag(first) as i32,
            Some(p) => (i64::from(p) + first as i64) as i32,
        };
        self.previous = Some(id);
        Some((id, unzigzag(take_varint(&mut self.bytes))))
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Reads a varint written by [`put_varint`] (the bytes are only ever this
/// module's own encoding).
fn take_varint(bytes: &mut &[u8]) -> u64 {
    let mut v = 0u64;
    let mut shift = 0;
    loop {
        let b = bytes[0];
        *bytes = &bytes[1..];
        v |= u64::from(b & 0x7f) << shift;
        if b < 0x80 {
            return v;
        }
        shift += 7;
    }
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

/// Encodes pairs given in increasing id order, leaving out zero counts,
/// into this thread's scratch buffer, then copies them into the sketch's
/// own allocation (one allocation per sketch built, of its exact size).
struct Builder {
    bytes: Vec<u8>,
    previous: Option<i32>,
}

thread_local! {
    static SCRATCH: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

impl Builder {
    fn with_capacity(pairs: usize) -> Builder {
        let mut bytes = SCRATCH.take();
        bytes.clear();
        bytes.reserve(pairs * 3);
        Builder {
            bytes,
            previous: None,
        }
    }

    fn push(&mut self, id: i32, count: i64) {
        if count == 0 {
            return;
        }
        let id_part = match self.previous {
            None => zigzag(i64::from(id)),
            Some(p) => (i64::from(id) - i64::from(p)) as u64,
        };
        put_varint(&mut self.bytes, id_part);
        put_varint(&mut self.bytes, zigzag(count));
        self.previous = Some(id);
    }

    fn finish(self) -> Sketch {
        let sketch = Sketch {
            bytes: (!self.bytes.is_empty()).then(|| Arc::from(self.bytes.as_slice())),
        };
        SCRATCH.set(self.bytes);
        sketch
    }
}

/// The sketch of `pairs` given in increasing id order, the counts of equal
/// ids summed and zero sums left out; about `hint` distinct ids.
fn encode_sorted(pairs: impl Iterator<Item = (i32, i64)>, hint: usize) -> Sketch {
    let mut builder = Builder::with_capacity(hint);
    let mut run: Option<(i32, i64)> = None;
    for (id, n) in pairs {
        match &mut run {
            Some((last, count)) if *last == id => *count = count.wrapping_add(n),
            _ => {
                if let Some((last, count)) = run.replace((id, n)) {
                    builder.push(last, count);
                }
            }
        }
    }
    if let Some((last, count)) = run {
        builder.push(last, count);
    }
    builder.finish()
}

/// The sum of many sketches, encoded once: their pairs are gathered, then
/// sorted and summed per id, where a [`Sketch::merge`] per sketch would
/// decode and encode the whole running sum each time.
#[derive(Debug, Default)]
pub struct SketchSum {
    pairs: Vec<(i32, i64)>,
}

impl SketchSum {
    pub fn add(&mut self, sketch: &Sketch) {
        self.pairs.extend(sketch.pairs());
    }

    pub fn finish(mut self) -> Sketch {
        self.pairs.sort_unstable_by_key(|(id, _)| *id);
        let hint = self.pairs.len();
        encode_sorted(self.pairs.into_iter(), hint)
    }
}

/// The serialised form of a [`Sketch`] before its invariants are checked.
#[derive(Deserialize)]
struct SketchRepr {
    buckets: Vec<(i32, i64)>,
}

impl TryFrom<SketchRepr> for Sketch {
    type Error = String;

    fn try_from(repr: SketchRepr) -> Result<Self, String> {
        let max = max_id();
        let mut previous: Option<i32> = None;
        for &(id, count) in &repr.buckets {
            if !(-max..=max).contains(&id) {
                return Err(format!("bucket id {id} out of range"));
            }
            if count == 0 {
                return Err(format!("bucket {id} has a zero count"));
            }
            if previous.is_some_and(|p| p >= id) {
                return Err(format!("bucket id {id} is not strictly increasing"));
            }
            previous = Some(id);
        }
        let mut builder = Builder::with_capacity(repr.buckets.len());
        for (id, count) in repr.buckets {
            builder.push(id, count);
        }
        Ok(builder.finish())
    }
}

impl Sketch {
    /// An empty sketch.
    pub fn new() -> Self {
        Self::default()
    }

    /// The bucket id of `v`, or `None` if `v` is not finite.
    pub fn bucket_of(v: f64) -> Option<i32> {
        if !v.is_finite() {
            return None;
        }
        let m = v.abs();
        if m < MIN_MAGNITUDE {
            return Some(ZERO_BUCKET);
        }
        let min = min_index();
        // `max` guards against `ln` rounding just below the lowest bucket.
        let id = raw_index(m).max(min) - min + 1;
        Some(if v > 0.0 { id } else { -id })
    }

    /// The value that stands for every value of bucket `id`: within `ALPHA`
    /// relative of each of them (`0.0` for the zero bucket).
    pub fn bucket_estimate(id: i32) -> f64 {
        if id == ZERO_BUCKET {
            return 0.0;
        }
        let k = f64::from(id.unsigned_abs() as i32 - 1 + min_index());
        // 2 * gamma^k / (gamma + 1); the top bucket's estimate may exceed
        // f64::MAX, and f64::MAX is then a closer estimate of its values.
        let m = ((k * ln_gamma()).exp() * (2.0 / (GAMMA + 1.0))).min(f64::MAX);
        if id > 0 {
            m
        } else {
            -m
        }
    }

    /// Counts one occurrence of `v`. Returns false, changing nothing, if
    /// `v` is not finite.
    pub fn insert(&mut self, v: f64) -> bool {
        self.insert_n(v, 1)
    }

    /// Adds `n` (possibly negative) to the count of `v`'s bucket. Returns
    /// false, changing nothing, if `v` is not finite.
    pub fn insert_n(&mut self, v: f64, n: i64) -> bool {
        let Some(id) = Self::bucket_of(v) else {
            return false;
        };
        self.add_to_bucket(id, n);
        true
    }

    /// Adds `n` (possibly negative) to bucket `id` (from [`Sketch::bucket_of`]).
    pub fn add_to_bucket(&mut self, id: i32, n: i64) {
        if n == 0 {
            return;
        }
        *self = self.merged_with(std::iter::once((id, n)), 1);
    }

    /// The sketch of one occurrence per bucket id (from
    /// [`Sketch::bucket_of`], in any order); `ids` is left sorted. Cheaper
    /// than one [`Sketch::add_to_bucket`] per value when many values are
    /// collected first: one sort instead of a sorted insert each.
    pub fn of_buckets(ids: &mut [i32]) -> Sketch {
        ids.sort_unstable();
        encode_sorted(ids.iter().map(|&id| (id, 1)), ids.len().min(64))
    }

    /// Adds `other`'s counts to this sketch, dropping buckets that reach
    /// zero.
    pub fn merge(&mut self, other: &Sketch) {
        let Some(theirs) = &other.bytes else {
            return;
        };
        if self.bytes.is_none() {
            self.bytes = Some(Arc::clone(theirs));
            return;
        }
        *self = self.merged_with(other.pairs(), other.bytes_len() / 2);
    }

    /// This sketch plus `pairs` (sorted by id, about `hint` of them), with
    /// the buckets that reach zero left out.
    fn merged_with(&self, pairs: impl Iterator<Item = (i32, i64)>, hint: usize) -> Sketch {
        let mut merged = Builder::with_capacity((self.bytes_len() / 2).max(hint));
        let mut a = self.pairs().peekable();
        let mut b = pairs.peekable();
        loop {
            let (id, count) = match (a.peek(), b.peek()) {
                (Some(&(ia, ca)), Some(&(ib, cb))) => {
                    if ia < ib {
                        a.next();
                        (ia, ca)
                    } else if ib < ia {
                        b.next();
                        (ib, cb)
                    } else {
                        a.next();
                        b.next();
                        (ia, ca.wrapping_add(cb))
                    }
                }
                (Some(&x), None) => {
                    a.next();
                    x
                }
                (None, Some(&x)) => {
                    b.next();
                    x
                }
                (None, None) => break,
            };
            merged.push(id, count);
        }
        merged.finish()
    }

    /// Every count replaced by `f(count)` (zeros left out).
    fn map_counts(&self, f: impl Fn(i64) -> i64) -> Sketch {
        let mut out = Builder::with_capacity(self.bytes_len() / 2);
        for (id, count) in self.pairs() {
            out.push(id, f(count));
        }
        out.finish()
    }

    /// Length of the pairs' encoding in bytes: what a merge into this
    /// sketch walks and writes.
    pub(crate) fn bytes_len(&self) -> usize {
        self.bytes.as_deref().map_or(0, <[u8]>::len)
    }

    /// The sorted `(bucket id, count)` pairs, none with a zero count.
    pub fn pairs(&self) -> Pairs<'_> {
        Pairs {
            bytes: self.bytes.as_deref().unwrap_or(&[]),
            previous: None,
        }
    }

    /// The additive inverse: every count negated, so that
    /// `s.merge(&s.negated())` leaves an empty sketch.
    pub fn negated(&self) -> Sketch {
        let mut s = self.clone();
        s.negate_in_place();
        s
    }

    fn negate_in_place(&mut self) {
        if self.bytes.is_some() {
            *self = self.map_counts(i64::wrapping_neg);
        }
    }

    /// True if no bucket has a non-zero count.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_none()
    }

    /// Sum of the counts (saturating at the `i64` bounds).
    pub fn count(&self) -> i64 {
        let total: i128 = self.pairs().map(|(_, c)| i128::from(c)).sum();
        i64::try_from(total).unwrap_or(if total < 0 { i64::MIN } else { i64::MAX })
    }

    /// The estimate of the q-quantile, `q` in `[0, 1]`: the estimate of the
    /// bucket holding the value of 0-based rank `floor(q * (count - 1))`.
    /// `None` if `q` is outside `[0, 1]`, if the count is not positive, or
    /// if any bucket has a negative count.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if !(0.0..=1.0).contains(&q) || self.pairs().any(|(_, c)| c < 0) {
            return None;
        }
        let count = self.count();
        if count <= 0 {
            return None;
        }
        // `as` saturates; the `min` guards against rounding past the end.
        let rank = ((q * (count - 1) as f64).floor() as i64).min(count - 1);
        let mut seen: i64 = 0;
        for (id, c) in self.pairs() {
            seen = seen.saturating_add(c);
            if seen > rank {
                return Some(Self::bucket_estimate(id));
            }
        }
        None
    }

    /// The sorted `(bucket id, count)` pairs, none with a zero count.
    pub fn buckets(&self) -> Vec<(i32, i64)> {
        self.pairs().collect()
    }

    /// The bincode 2 (standard configuration) encoding.
    pub fn to_bytes(&self) -> Vec<u8> {
        bincode::serde::encode_to_vec(self, bincode::config::standard())
            .expect("a vector of integer pairs always encodes into a Vec")
    }

    /// Decodes [`Sketch::to_bytes`]' output. Rejects, without panicking,
    /// anything that is not exactly one valid sketch.
    pub fn from_bytes(bytes: &[u8]) -> Result<Sketch, SketchError> {
        let (sketch, read) =
            bincode::serde::decode_from_slice::<Sketch, _>(bytes, bincode::config::standard())?;
        match bytes.len() - read {
            0 => Ok(sketch),
            extra => Err(SketchError::TrailingBytes(extra)),
        }
    }

    fn scaled(self, factor: i64) -> Sketch {
        self.map_counts(|count| count.wrapping_mul(factor))
    }
}

impl IsZero for Sketch {
    fn is_zero(&self) -> bool {
        self.is_empty()
    }
}

impl Semigroup for Sketch {
    fn plus_equals(&mut self, rhs: &Self) {
        self.merge(rhs);
    }
}

impl Monoid for Sketch {
    fn zero() -> Self {
        Sketch::new()
    }
}

impl Abelian for Sketch {
    fn negate(&mut self) {
        self.negate_in_place();
    }
}

/// Scales every count, as a record's sketch times its multiplicity
/// (`Collection::explode`).
impl Multiply<isize> for Sketch {
    type Output = Sketch;
    fn multiply(self, rhs: &isize) -> Sketch {
        self.scaled(*rhs as i64)
    }
}

impl Multiply<i64> for Sketch {
    type Output = Sketch;
    fn multiply(self, rhs: &i64) -> Sketch {
        self.scaled(*rhs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sketch_of(values: &[f64]) -> Sketch {
        let mut s = Sketch::new();
        for &v in values {
            s.insert(v);
        }
        s
    }

    /// Values from many decades, both signs, zero and sub-threshold
    /// magnitudes, and the extremes of f64.
    fn sweep() -> Vec<f64> {
        let mut values = vec![
            0.0,
            -0.0,
            f64::MIN_POSITIVE,
            5e-324,
            MIN_MAGNITUDE,
            MIN_MAGNITUDE * (1.0 - 1e-15),
            f64::MAX,
            f64::MAX / 1.001,
            1.0,
            GAMMA,
            GAMMA * GAMMA,
        ];
        let mut e = -12.0;
        while e <= 308.0 {
            values.push(10f64.powf(e));
            e += 0.0137;
        }
        let negatives: Vec<f64> = values.iter().map(|v| -v).collect();
        values.extend(negatives);
        values
    }

    #[test]
    fn constants_and_id_range() {
        assert!((GAMMA - 1.005 / 0.995).abs() < 1e-15);
        assert_eq!(min_index(), -2072);
        assert_eq!(Sketch::bucket_of(MIN_MAGNITUDE), Some(1));
        assert_eq!(Sketch::bucket_of(-MIN_MAGNITUDE), Some(-1));
        assert_eq!(Sketch::bucket_of(f64::MAX), Some(max_id()));
        assert_eq!(Sketch::bucket_of(f64::MIN), Some(-max_id()));
        // 230 buckets per decade over 10^-9 .. 10^308.
        assert!((72_000..74_000).contains(&max_id()), "{}", max_id());
    }

    #[test]
    fn of_buckets_equals_one_insert_per_value() {
        let values = [3.5, -2.0, 0.0, 3.5, 1e12, 3.49, -2.0, 7.0, 3.5];
        let mut by_insert = Sketch::new();
        let mut ids = Vec::new();
        for v in values {
            assert!(by_insert.insert(v));
            ids.push(Sketch::bucket_of(v).expect("finite"));
        }
        assert_eq!(Sketch::of_buckets(&mut ids), by_insert);
        assert_eq!(Sketch::of_buckets(&mut []), Sketch::new());
    }

    #[test]
    fn ids_sort_in_value_order() {
        let mut values = sweep();
        values.sort_by(f64::total_cmp);
        let ids: Vec<i32> = values
            .iter()
            .map(|&v| Sketch::bucket_of(v).expect("finite"))
            .collect();
        for (w, v) in ids.windows(2).zip(values.windows(2)) {
            assert!(w[0] <= w[1], "{} -> {}, {} -> {}", v[0], w[0], v[1], w[1]);
        }
    }

    #[test]
    fn every_bucket_estimate_is_within_alpha() {
        for v in sweep() {
            let id = Sketch::bucket_of(v).expect("finite");
            let est = Sketch::bucket_estimate(id);
            assert!(est.is_finite());
            if v.abs() < MIN_MAGNITUDE {
                assert_eq!(id, ZERO_BUCKET);
                assert_eq!(est, 0.0);
            } else {
                let rel = (est - v).abs() / v.abs();
                // ALPHA plus rounding of ln/exp near bucket bounds.
                assert!(
                    rel <= ALPHA * (1.0 + 1e-9),
                    "v={v} id={id} est={est} rel={rel}"
                );
                assert_eq!(est.signum(), v.signum());
            }
        }
    }

    #[test]
    fn bucket_bounds_are_powers_of_gamma() {
        // gamma^k is the top of bucket k; just above it starts bucket k+1.
        for k in [-2000, -7, 0, 1, 5, 100, 2500] {
            let top = GAMMA.powi(k);
            let a = Sketch::bucket_of(top * (1.0 - 1e-9)).expect("finite");
            let b = Sketch::bucket_of(top * (1.0 + 1e-9)).expect("finite");
            assert_eq!(b - a, 1, "k={k}");
        }
    }

    #[test]
    fn non_finite_values_are_rejected() {
        let mut s = sketch_of(&[1.0, 2.0]);
        let before = s.clone();
        for v in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            assert!(!s.insert(v));
            assert!(!s.insert_n(v, 5));
            assert_eq!(Sketch::bucket_of(v), None);
        }
        assert_eq!(s, before);
        assert!(s.insert(3.0));
        assert!(s.insert_n(3.0, 0));
        assert_eq!(s.count(), 3);
    }

    #[test]
    fn tiny_values_share_the_zero_bucket() {
        let s = sketch_of(&[0.0, -0.0, 1e-10, -1e-10, 5e-324]);
        assert_eq!(s.buckets(), &[(ZERO_BUCKET, 5)]);
        for q in [0.0, 0.5, 1.0] {
            assert_eq!(s.quantile(q), Some(0.0));
        }
    }

    #[test]
    fn quantile_walk() {
        assert_eq!(Sketch::new().quantile(0.5), None);
        let values = [-1000.0, -3.0, 0.0, 2.0, 7.0, 50.0, 1e6];
        let s = sketch_of(&values);
        assert_eq!(s.count(), 7);
        // rank floor(q * 6)
        for (q, exact) in [
            (0.0, -1000.0),
            (0.1, -1000.0),
            (1.0 / 6.0, -3.0),
            (0.34, 0.0),
            (0.5, 2.0),
            (0.99, 50.0),
            (1.0, 1e6),
        ] {
            let est = s.quantile(q).expect("non-empty");
            if exact == 0.0 {
                assert_eq!(est, 0.0);
            } else {
                assert!((est - exact).abs() <= ALPHA * exact.abs(), "q={q} {est}");
            }
        }
        for q in [-0.01, 1.01, f64::NAN] {
            assert_eq!(s.quantile(q), None, "q={q}");
        }
    }

    #[test]
    fn negative_counts_have_no_quantile() {
        let mut s = sketch_of(&[1.0, 2.0, 3.0]);
        s.insert_n(100.0, -1);
        assert_eq!(s.count(), 2);
        assert_eq!(s.quantile(0.5), None);
        let mut r = Sketch::new();
        r.insert_n(5.0, -2);
        assert_eq!(r.count(), -2);
        assert_eq!(r.quantile(0.0), None);
        // The retraction's insertion arrives: the sketch is whole again.
        s.insert(100.0);
        assert_eq!(s, sketch_of(&[1.0, 2.0, 3.0]));
        assert!(s.quantile(1.0).is_some());
    }

    #[test]
    fn retraction_removes_the_bucket() {
        let mut s = sketch_of(&[1.0, 10.0]);
        s.insert_n(10.0, -1);
        assert_eq!(s, sketch_of(&[1.0]));
        s.insert_n(1.0, -1);
        assert!(s.is_empty());
        assert_eq!(s, Sketch::new());
        assert_eq!(s.count(), 0);
    }

    #[test]
    fn count_saturates() {
        let mut s = Sketch::new();
        s.insert_n(1.0, i64::MAX);
        s.insert_n(2.0, i64::MAX);
        assert_eq!(s.count(), i64::MAX);
        assert_eq!(s.negated().count(), i64::MIN);
        let mut t = Sketch::new();
        t.insert_n(1.0, i64::MIN);
        t.insert_n(2.0, -1);
        assert_eq!(t.count(), i64::MIN);
    }

    #[test]
    fn difference_traits() {
        let a = sketch_of(&[1.0, 2.0, -5.0]);
        let b = sketch_of(&[2.0, 0.0, 1e9]);
        assert!(Sketch::zero().is_zero());
        assert!(!a.is_zero());
        let mut sum = a.clone();
        sum.plus_equals(&b);
        assert_eq!(sum, sketch_of(&[1.0, 2.0, -5.0, 2.0, 0.0, 1e9]));
        let mut via_ref = a.clone();
        Semigroup::<&Sketch>::plus_equals(&mut via_ref, &&b);
        assert_eq!(via_ref, sum);
        let mut neg = b.clone();
        neg.negate();
        assert_eq!(neg, b.negated());
        sum.plus_equals(&neg);
        assert_eq!(sum, a);
        let mut zero = Sketch::zero();
        zero.plus_equals(&a);
        assert_eq!(zero, a);

        let mut thrice = a.clone();
        thrice.merge(&a);
        thrice.merge(&a);
        assert_eq!(a.clone().multiply(&3isize), thrice);
        assert_eq!(a.clone().multiply(&-1i64), a.negated());
        assert!(a.clone().multiply(&0isize).is_zero());
    }

    /// The use the sketch is made for: records with `isize` multiplicities
    /// exploded into sketch differences, consolidated per key and time by
    /// differential dataflow, and a window retracted by its negative
    /// multiplicity.
    #[test]
    fn accumulates_inside_a_differential_collection() {
        use differential_dataflow::input::Input;
        use std::sync::{Arc, Mutex};

        let window_a: [f64; 4] = [10.0, 20.0, 30.0, -4.0];
        let window_b: [f64; 3] = [25.0, 1e6, 0.0];
        let seen: Arc<Mutex<Vec<(u32, u64, Sketch)>>> = Arc::default();
        let sink = Arc::clone(&seen);
        timely::execute_directly(move |worker| {
            let (mut input, probe) = worker.dataflow::<u64, _, _>(|scope| {
                let (input, values) = scope.new_collection::<(u32, u64), isize>();
                let (probe, _) = values
                    .explode(|(key, bits)| {
                        let mut s = Sketch::new();
                        s.insert(f64::from_bits(bits));
                        Some((key, s))
                    })
                    .consolidate()
                    .inspect(move |(key, time, diff)| {
                        sink.lock()
                            .expect("not poisoned")
                            .push((*key, *time, diff.clone()))
                    })
                    .probe();
                (input, probe)
            });
            for v in window_a {
                input.insert((7, v.to_bits()));
            }
            input.advance_to(1);
            for v in window_b {
                input.insert((7, v.to_bits()));
            }
            input.advance_to(2);
            for v in window_a {
                input.remove((7, v.to_bits()));
            }
            input.advance_to(3);
            input.flush();
            worker.step_while(|| probe.less_than(input.time()));
        });
        let seen = seen.lock().expect("not poisoned").clone();
        let as_of = |time: u64| {
            let mut total = Sketch::new();
            for (key, t, diff) in &seen {
                assert_eq!(*key, 7);
                assert!(!diff.is_zero());
                if *t <= time {
                    total.plus_equals(diff);
                }
            }
            total
        };
        let both: Vec<f64> = window_a.iter().chain(&window_b).copied().collect();
        assert_eq!(as_of(0), sketch_of(&window_a));
        assert_eq!(as_of(1), sketch_of(&both));
        assert_eq!(as_of(2), sketch_of(&window_b));
        // One consolidated difference per time; the last one is negative.
        assert_eq!(seen.len(), 3, "{seen:?}");
        assert!(seen.iter().any(|(_, _, d)| d.count() == -4));
    }

    #[test]
    fn bincode_round_trip() {
        for s in [
            Sketch::new(),
            sketch_of(&sweep()),
            sketch_of(&[1.0, 2.0]).negated(),
        ] {
            let bytes = s.to_bytes();
            assert_eq!(Sketch::from_bytes(&bytes).expect("round trip"), s);
        }
    }

    fn encode_raw(buckets: &[(i32, i64)]) -> Vec<u8> {
        #[derive(Serialize)]
        struct Raw<'a> {
            buckets: &'a [(i32, i64)],
        }
        bincode::serde::encode_to_vec(Raw { buckets }, bincode::config::standard())
            .expect("encodes")
    }

    #[test]
    fn from_bytes_rejects_invalid_input() {
        // The raw encoding is the sketch's own format.
        let s = sketch_of(&[-3.0, 0.0, 1.0, 1.0, 1e300]);
        assert_eq!(encode_raw(&s.buckets()), s.to_bytes());
        let valid = encode_raw(&[(3, 1), (7, -2)]);
        assert!(Sketch::from_bytes(&valid).is_ok());
        for invalid in [
            encode_raw(&[(7, 1), (3, 1)]),
            encode_raw(&[(3, 1), (3, 1)]),
            encode_raw(&[(3, 0)]),
            encode_raw(&[(max_id() + 1, 1)]),
            encode_raw(&[(i32::MIN, 1)]),
        ] {
            assert!(Sketch::from_bytes(&invalid).is_err(), "{invalid:?}");
        }
        let mut trailing = valid.clone();
        trailing.push(0);
        assert!(matches!(
            Sketch::from_bytes(&trailing),
            Err(SketchError::TrailingBytes(1))
        ));
        assert!(Sketch::from_bytes(&[]).is_err());
        assert!(Sketch::from_bytes(&valid[..valid.len() - 1]).is_err());
        // A length prefix of u64::MAX entries with no data behind it.
        let mut huge = vec![0xFD];
        huge.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(Sketch::from_bytes(&huge).is_err());
    }

    /// Values that often share buckets, plus anything f64 can hold
    /// (non-finite values must be skipped identically everywhere).
    fn value() -> impl Strategy<Value = f64> {
        prop_oneof![
            (-1e4..1e4f64),
            (1..50i32).prop_map(f64::from),
            Just(0.0),
            (-1e-9..1e-9f64),
            any::<f64>(),
        ]
    }

    proptest! {
        /// A sum encoded once equals the same sketches merged one by one,
        /// retractions included (zero sums left out, canonical form).
        #[test]
        fn a_sketch_sum_equals_merging_one_by_one(
            parts in prop::collection::vec(
                (prop::collection::vec(value(), 0..50), any::<bool>()),
                0..8,
            ),
        ) {
            let mut sum = SketchSum::default();
            let mut merged = Sketch::new();
            for (values, retract) in &parts {
                let mut part = sketch_of(values);
                if *retract {
                    part = part.negated();
                }
                sum.add(&part);
                merged.merge(&part);
            }
            prop_assert_eq!(sum.finish(), merged);
        }
    }

    proptest! {
        #[test]
        /// Merging against a plain map of counts, built without
        /// `merged_with`: dense and sparse ids, both signs of id and count,
        /// counts that cancel, and the varint lengths' edges (ids 63/64
        /// apart, counts about 2^6 and 2^13), so that the merge's encoding
        /// is checked against one built from the summed counts.
        fn merge_equals_a_map_of_counts(
            a in prop::collection::btree_map(-300i32..300, -70i64..70, 0..120),
            b in prop::collection::vec((-300i32..300, prop_oneof![-70i64..70, -9000i64..9000]), 0..40),
            spread in prop_oneof![Just(1i32), Just(64), Just(127)],
        ) {
            let of_map = |m: &std::collections::BTreeMap<i32, i64>| {
                encode_sorted(m.iter().map(|(&id, &n)| (id, n)), m.len())
            };
            let a: std::collections::BTreeMap<i32, i64> =
                a.into_iter().map(|(id, n)| (id * spread, n)).collect();
            let mut b_map = std::collections::BTreeMap::new();
            for (id, n) in b {
                *b_map.entry(id * spread).or_insert(0i64) += n;
            }
            let mut expected = a.clone();
            for (&id, &n) in &b_map {
                *expected.entry(id).or_insert(0) += n;
            }
            let mut merged = of_map(&a);
            merged.merge(&of_map(&b_map));
            prop_assert_eq!(merged.buckets(), of_map(&expected).buckets());
            prop_assert_eq!(&merged, &of_map(&expected));
            // Taking `a` back out leaves `b`; its negation, nothing.
            let mut back = merged.clone();
            back.merge(&of_map(&a).negated());
            prop_assert_eq!(&back, &of_map(&b_map));
            back.merge(&of_map(&b_map).negated());
            prop_assert!(back.is_empty());
        }

        fn merge_is_the_sketch_of_the_union(
            a in prop::collection::vec(value(), 0..200),
            b in prop::collection::vec(value(), 0..200),
        ) {
            let sa = sketch_of(&a);
            let sb = sketch_of(&b);
            let union: Vec<f64> = a.iter().chain(&b).copied().collect();
            let mut merged = sa.clone();
            merged.merge(&sb);
            prop_assert_eq!(&merged, &sketch_of(&union));
            let mut other_way = sb.clone();
            other_way.merge(&sa);
            prop_assert_eq!(&other_way, &merged);
            // Insertion order does not matter.
            let mut reversed = union.clone();
            reversed.reverse();
            prop_assert_eq!(&sketch_of(&reversed), &merged);
            // Removing a window: A ∪ B - A == B, and X - X == 0.
            merged.merge(&sa.negated());
            prop_assert_eq!(&merged, &sb);
            merged.merge(&sb.negated());
            prop_assert!(merged.is_empty());
            prop_assert_eq!(merged, Sketch::new());
            let mut retracted = sa.clone();
            for &v in &a {
                retracted.insert_n(v, -1);
            }
            prop_assert!(retracted.is_empty());
            // Canonical form.
            for s in [&sa, &sb] {
                prop_assert!(s.buckets().windows(2).all(|w| w[0].0 < w[1].0));
                prop_assert!(s.buckets().iter().all(|&(_, c)| c != 0));
                prop_assert_eq!(s.count(), s.buckets().iter().map(|&(_, c)| c).sum::<i64>());
            }
        }

        #[test]
        fn bytes_round_trip(a in prop::collection::vec(value(), 0..200), neg in any::<bool>()) {
            let s = if neg { sketch_of(&a).negated() } else { sketch_of(&a) };
            prop_assert_eq!(Sketch::from_bytes(&s.to_bytes()).ok(), Some(s));
        }

        #[test]
        fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(s) = Sketch::from_bytes(&bytes) {
                // Whatever decodes is a canonical sketch.
                prop_assert!(s.buckets().windows(2).all(|w| w[0].0 < w[1].0));
                prop_assert!(s.buckets().iter().all(|&(id, c)| c != 0 && id.abs() <= max_id()));
                if let Some(q) = s.quantile(0.5) {
                    prop_assert!(q.is_finite());
                }
            }
        }
    }
}
